import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pyproj
import pytest
import shapely

from pvlake.errors import DatasetError
from pvlake.harmonize import SCHEMA, SCHEMA_DOC, harmonize_dataset, make_pv_ids, report_table, write_staging
from pvlake.lake import connect
from pvlake.manifest import parse_entry


def spec(path, **entry):
    entry.setdefault("repo", "local")
    return parse_entry("ds", {"path": str(path), **entry}, path)


@pytest.fixture
def mixed_geojson(tmp_path):
    """Points, polygons, a bow-tie, an empty and a null geometry, an exact duplicate."""
    box = shapely.box(-79.79, 36.07, -79.789, 36.071)
    feats = [
        {"type": "Feature", "properties": {"sid": 10, "km2": 0.01, "mw": 2.0, "yr": 2019.0, "note": "a"},
         "geometry": shapely.geometry.mapping(box)},
        {"type": "Feature", "properties": {"sid": 11, "km2": None, "mw": None, "yr": None, "note": "b"},
         "geometry": {"type": "Point", "coordinates": [-80.19, 25.76]}},
        {"type": "Feature", "properties": {"sid": 12, "note": "bowtie"},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [0.001, 0.001], [0.001, 0], [0, 0.001], [0, 0]]]}},
        {"type": "Feature", "properties": {"sid": 13}, "geometry": {"type": "Polygon", "coordinates": []}},
        {"type": "Feature", "properties": {"sid": 14}, "geometry": None},
        {"type": "Feature", "properties": {"sid": 10, "km2": 0.01, "mw": 2.0, "yr": 2019.0, "note": "a"},
         "geometry": shapely.geometry.mapping(box)},
    ]
    (tmp_path / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return tmp_path


def run(path, **entry):
    entry.setdefault("label_fmt", "geojson")
    return harmonize_dataset(spec(path, **entry), h3_resolution=12, progress=False)


def test_canonical_schema_and_counts(mixed_geojson):
    gdf, report = run(
        mixed_geojson, keep_cols=["note", "missing_col"], id_col="sid",
        columns={"source_area_m2": {"col": "km2", "unit": "km2"}, "capacity_mw": {"col": "mw"},
                 "install_year": {"col": "yr"}},
    )
    assert list(gdf.columns) == list(SCHEMA) + ["geometry"]
    assert set(SCHEMA_DOC) == set(gdf.columns)
    assert gdf.crs.to_epsg() == 4326
    assert gdf.is_valid.all()
    assert report["rows_read"] == 6 and report["rows_written"] == 4 and report["repaired"] == 1
    assert report["dropped"] == {"empty_geometry": 1, "null_geometry": 1}
    assert report["files"][0]["keep_cols_missing"] == ["missing_col"]
    assert list(gdf["source_row"]) == [0, 1, 2, 5]
    assert list(gdf["geom_type"]) == ["Polygon", "Point", "MultiPolygon", "Polygon"]
    first = gdf.iloc[0]
    assert first["source_id"] == "10" and first["capacity_mw"] == 2.0 and first["install_year"] == 2019
    assert first["source_area_m2"] == pytest.approx(10_000)
    assert json.loads(first["attributes"]) == {"note": "a"}
    assert np.isnan(gdf.iloc[1]["area_m2"]) and pd.isna(gdf.iloc[1]["install_year"])
    assert 9_000 < first["area_m2"] < 10_500
    assert gdf.iloc[1]["centroid_lon"] == -80.19
    assert all(len(c) == 15 for c in gdf["h3_cell"])


def test_geometry_types_outside_the_declared_ones_are_reported(mixed_geojson):
    _, report = run(mixed_geojson, geom_type={"features": "Polygon"})
    assert report["unexpected_geom_types"] == {"Point": 1}
    _, report = run(mixed_geojson, geom_type=["Point", "Polygon"])
    assert report["unexpected_geom_types"] == {}


def test_pv_ids_are_unique_stable_and_geometry_based_without_ids(mixed_geojson):
    a, _ = run(mixed_geojson)
    b, _ = run(mixed_geojson)
    assert a["pv_id"].is_unique  # the exact duplicate (rows 0 and 5) gets its own id
    assert list(a["pv_id"]) == list(b["pv_id"])
    assert a["source_id"].isna().all()


def test_pv_id_does_not_depend_on_row_order():
    g = np.array([shapely.Point(1, 2), shapely.Point(3, 4)], dtype=object)
    files = np.array(["a.json", "a.json"], dtype=object)
    none = np.array([None, None], dtype=object)
    ids = make_pv_ids("d", files, none, g)
    rev = make_pv_ids("d", files, none, g[::-1])
    assert list(ids) == list(rev[::-1])
    assert make_pv_ids("other", files[:1], none[:1], g[:1])[0] != ids[0]
    by_id = make_pv_ids("d", files, np.array(["7", "7"], dtype=object), g)
    assert by_id[0] != by_id[1]


def test_pv_id_of_a_record_does_not_depend_on_the_other_files(tmp_path):
    # the same farm in three yearly files (and twice in one): each record keeps its id
    # whichever of the other files are read, and ids stay unique
    farm, other = [10.5, 45.25], [11.0, 46.0]
    years = {"2021.json": [farm, other, farm], "2022.json": [farm, other], "2023.json": [other, farm]}
    folder = tmp_path / "points"
    folder.mkdir()
    for name, points in years.items():
        (folder / name).write_text(json.dumps(points))

    def ids(include: list[str]) -> dict[tuple[str, int], str]:
        spec = parse_entry("gsf", {"repo": "local", "path": str(folder), "label_fmt": "json",
                                   "file_filters": {"include_patterns": include}}, tmp_path)
        staging, _ = harmonize_dataset(spec, progress=False)
        assert staging["pv_id"].is_unique
        return dict(zip(zip(staging["source_file"], staging["source_row"]), staging["pv_id"]))

    everything = ids(["*.json"])
    assert len(everything) == 7
    for subset in (["2022.json"], ["2023.json"], ["2021.json", "2023.json"], ["2022.json", "2023.json"]):
        part = ids(subset)
        assert part == {k: everything[k] for k in part}, subset


def test_write_staging_is_geoparquet_1_1_read_by_geopandas_and_duckdb(mixed_geojson, tmp_path):
    gdf, report = run(mixed_geojson)
    out = tmp_path / "out" / "ds.parquet"
    write_staging(gdf, report, out, tmp_path / "out" / "ds.report.json")
    assert sorted(p.name for p in out.parent.iterdir()) == ["ds.parquet", "ds.report.json"]  # no temp left
    geo = json.loads(pq.read_schema(out).metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    assert geo["columns"]["geometry"]["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    back = gpd.read_parquet(out)
    assert back.crs.to_epsg() == 4326 and len(back) == len(gdf)
    con = connect()
    n, kind = con.execute(f"SELECT count(*), any_value(typeof(geometry)) FROM '{out}'").fetchone()
    assert n == len(gdf) and kind.startswith("GEOMETRY")
    assert json.loads((tmp_path / "out" / "ds.report.json").read_text()) == report


def test_report_table_has_a_total_row(mixed_geojson):
    _, report = run(mixed_geojson)
    table = report_table(report)
    assert list(table["source_file"]) == ["labels.geojson", "total"]
    assert table.iloc[-1]["dropped"] == 2


def test_unknown_format_fails_before_reading(tmp_path):
    with pytest.raises(DatasetError, match="unknown label_fmt 'kml'"):
        run(tmp_path, label_fmt="kml")


def test_empty_output_keeps_the_schema(tmp_path):
    (tmp_path / "x.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": None}]}))
    gdf, report = run(tmp_path)
    assert len(gdf) == 0 and list(gdf.columns) == list(SCHEMA) + ["geometry"]
    assert report["dropped"] == {"null_geometry": 1}


# -- the real reference files (../shared/real) -------------------------------------------

@pytest.mark.real
def test_india_farms_areas_match_an_equal_area_projection(real_dir):
    gdf, report = run(real_dir / "ind_solar_farms_2022", keep_cols=["fid", "Area", "State"],
                      columns={"source_area_m2": {"col": "Area", "unit": "m2"}})
    assert len(gdf) == 1363 and gdf.is_valid.all()
    assert report["repaired"] > 0  # the file has invalid MultiPolygons
    # Reference: planar area in an Albers equal-area conic for India (area-preserving
    # everywhere by construction), compared row by row.
    albers = "+proj=aea +lat_1=12 +lat_2=28 +lat_0=20 +lon_0=80 +ellps=WGS84"
    expected = gdf.geometry.to_crs(albers).area.to_numpy()
    rel = np.abs(gdf["area_m2"].to_numpy() / expected - 1)
    assert rel.max() < 0.005, gdf.iloc[int(rel.argmax())][["source_row", "area_m2"]]
    # its Area attribute describes the unsimplified shapes: kept, not used as area_m2
    assert not np.allclose(gdf["area_m2"], gdf["source_area_m2"], rtol=0.005)


@pytest.mark.real
def test_chinapv_filters_keep_only_positive_samples(real_dir):
    gdf, report = run(real_dir / "chn_med_res_pv_2024", label_fmt="shp",
                      file_filters={"include_patterns": ["PV_.*\\.shp$"], "exclude_patterns": ["NPV_.*"],
                                    "use_regex": True})
    counts = gdf.groupby("source_file").size().to_dict()
    assert counts == {"PV_Test_2015.shp": 687, "PV_Test_2020.shp": 817, "PV_Train_2020.shp": 1852}
    assert not gdf.geometry.has_z.any() and gdf.is_valid.all()
    assert gdf["pv_id"].is_unique


@pytest.mark.real
def test_glosofarid_point_arrays_load(real_dir):
    gdf, report = run(real_dir / "glosofarid_2024", label_fmt="json", crs="EPSG:4326")
    assert report["rows_read"] == 4000 * 3 + 2000 * 2 == len(gdf)
    assert (gdf["geom_type"] == "Point").all() and gdf["area_m2"].isna().all()
    assert gdf["pv_id"].is_unique  # repeated farms inside one file still get distinct ids
    assert gdf["centroid_lon"].between(-180, 180).all() and gdf["centroid_lat"].between(-90, 90).all()


# --- coordinates at the edges: the antimeridian, the poles, impossible values ---------


def write_features(path, geoms, crs=None, driver=None):
    gdf = gpd.GeoDataFrame({"sid": list(range(len(geoms)))}, geometry=list(geoms), crs=crs)
    gdf.to_file(path, driver=driver)
    return path


def pacific_farm_3832(lon=180.0, lat=-17.0, width_m=300.0, height_m=200.0):
    """A farm centred on (lon, lat) drawn in EPSG:3832 (PDC Mercator, usual for Pacific data)."""
    x, y = pyproj.Transformer.from_crs(4326, 3832, always_xy=True).transform(lon, lat)
    return shapely.box(x - width_m / 2, y - height_m / 2, x + width_m / 2, y + height_m / 2)


def test_farm_across_the_antimeridian_is_cut_and_measured_on_the_farm(tmp_path):
    path = write_features(tmp_path / "pacific.gpkg", [pacific_farm_3832(), pacific_farm_3832(179.5)], crs="EPSG:3832")
    gdf, report = run(tmp_path, label_fmt="gpkg")
    crossing, inland = gdf.iloc[0], gdf.iloc[1]
    assert crossing["geom_type"] == "MultiPolygon" and report["split_at_antimeridian"] == 1
    lon_parts = [shapely.bounds(p) for p in crossing.geometry.geoms]
    assert sorted(round(b[0]) for b in lon_parts) == [-180, 180]  # one part each side, cut at ±180
    assert all(b[2] - b[0] < 0.01 for b in lon_parts)
    assert abs(abs(crossing["centroid_lon"]) - 180.0) < 0.01 and crossing["centroid_lat"] == pytest.approx(-17.0, abs=0.01)
    # area is the farm's (Mercator scale 1/cos(lat) squared), the same as the inland twin's
    assert crossing["area_m2"] == pytest.approx(60_000 * np.cos(np.radians(17.0)) ** 2, rel=0.01)
    assert crossing["area_m2"] == pytest.approx(inland["area_m2"], rel=1e-3)
    import h3

    lat, lon = h3.cell_to_latlng(crossing["h3_cell"])
    assert abs(abs(lon) - 180.0) < 0.01 and lat == pytest.approx(-17.0, abs=0.01)
    assert path.exists()


def test_multipolygon_already_cut_at_180_keeps_its_centroid_on_the_farm(tmp_path):
    cut = shapely.MultiPolygon([shapely.box(179.998, -16.001, 180.0, -15.999), shapely.box(-180.0, -16.001, -179.998, -15.999)])
    write_features(tmp_path / "cut.geojson", [cut], crs="EPSG:4326", driver="GeoJSON")
    gdf, report = run(tmp_path)
    row = gdf.iloc[0]
    assert report["split_at_antimeridian"] == 0 and row.geometry.equals(cut)
    assert abs(abs(row["centroid_lon"]) - 180.0) < 1e-6 and row["centroid_lat"] == pytest.approx(-16.0)
    twin = shapely.box(10.0, -16.001, 10.004, -15.999)  # the same 0.004° x 0.002° farm, in one piece
    assert row["area_m2"] == pytest.approx(abs(pyproj.Geod(ellps="WGS84").geometry_area_perimeter(twin)[0]), rel=1e-6)


def test_valid_files_at_the_antimeridian_and_the_poles_pass(tmp_path):
    points = [[180.0, 10.0], [-180.0, -10.0], [0.0, 90.0], [135.0, -90.0], [179.9999999, 89.9999]]
    (tmp_path / "edges.json").write_text(json.dumps(points))
    gdf, report = run(tmp_path, label_fmt="json")
    assert report["rows_written"] == 5 and report["dropped"] == {}
    assert gdf["h3_cell"].notna().all()


def test_json_point_arrays_without_a_crs_are_wgs84_by_default(tmp_path):
    (tmp_path / "pts.json").write_text(json.dumps([[10.5, 45.25], [-70.1, -33.4]]))
    gdf, report = run(tmp_path, label_fmt="json", crs=None)
    assert report["files"][0]["crs_from"] == "default" and report["files"][0]["crs"] == "OGC:CRS84"
    assert list(gdf["centroid_lon"]) == [10.5, -70.1]


def test_projected_coordinates_read_as_degrees_are_refused_with_a_hint(tmp_path):
    # UTM metres in a CSV whose manifest says WGS84
    rows = "x,y\n" + "\n".join(f"{500000 + 10 * i},{4650000 + 5 * i}" for i in range(20))
    (tmp_path / "utm.csv").write_text(rows)
    with pytest.raises(DatasetError) as err:
        run(tmp_path, label_fmt="csv", lon_col="x", lat_col="y", crs="WGS84")
    message = str(err.value)
    assert "dataset 'ds' file utm.csv" in message and "20 of 20 geometries" in message
    assert "EPSG:4326" in message and "CRS from manifest" in message
    assert "coordinates look projected" in message and "set `crs` in the manifest" in message


def test_swapped_coordinate_columns_are_refused_with_a_hint(tmp_path):
    # a North American file: lon -100, lat 45, with the manifest naming the columns the wrong way round
    rows = "lat,lon\n" + "\n".join(f"{45.0 + i * 0.01},{-100.0 + i * 0.01}" for i in range(10))
    (tmp_path / "swapped.csv").write_text(rows)
    with pytest.raises(DatasetError, match="swapped.csv.*look swapped"):
        run(tmp_path, label_fmt="csv", lon_col="lat", lat_col="lon", crs="WGS84")


def test_a_few_impossible_rows_are_dropped_and_counted(tmp_path):
    points = [[10.0 + i * 0.01, 45.0] for i in range(8)] + [[190.0, 45.0], [10.0, 95.0]]
    (tmp_path / "pts.json").write_text(json.dumps(points))
    gdf, report = run(tmp_path, label_fmt="json")
    assert report["rows_written"] == 8 and report["dropped"] == {"out_of_range_coordinates": 2}
    assert gdf["centroid_lon"].between(-180, 180).all()


def test_untransformable_points_and_polygons_are_dropped_with_their_reason(tmp_path):
    # UTM 31N: 50,000 km east of the zone's origin is no place on Earth (PROJ returns inf)
    good = [shapely.Point(500_000, 4_650_000 + 100 * i) for i in range(8)]
    bad = [shapely.Point(5e7, 1e7), shapely.box(5e7, 1e7, 5.1e7, 1.1e7)]
    write_features(tmp_path / "utm.gpkg", good + bad, crs="EPSG:32631")
    gdf, report = run(tmp_path, label_fmt="gpkg")
    assert report["rows_written"] == 8
    assert report["dropped"] == {"non_finite_coordinates": 2}
    assert np.isfinite(gdf[["centroid_lon", "centroid_lat"]].to_numpy()).all()


def test_a_file_proj_cannot_transform_is_refused(tmp_path):
    write_features(tmp_path / "nowhere.gpkg", [shapely.Point(5e7, 1e7 + i) for i in range(3)], crs="EPSG:32631")
    with pytest.raises(DatasetError, match=r"nowhere.gpkg.*3 of 3 geometries.*EPSG:32631 \(CRS from file\).*PROJ could not"):
        run(tmp_path, label_fmt="gpkg")


# --- what used to be lost silently: a wrong id_col, unparseable numbers, collections -----


def test_an_id_col_the_file_lacks_is_refused_with_the_columns_present(mixed_geojson):
    with pytest.raises(DatasetError, match=r"file labels.geojson: id_col 'sidd' is not a column of this file; "
                                           r"columns present: sid, km2, mw, yr, note"):
        run(mixed_geojson, id_col="sidd")


def test_a_geopackage_fid_is_readable_as_id_col(tmp_path):
    gdf = gpd.GeoDataFrame({"name": ["a", "b", "c"]}, geometry=[shapely.Point(i, i) for i in range(3)], crs=4326)
    gdf.to_file(tmp_path / "pv.gpkg", layer="pv")
    staging, _ = run(tmp_path, label_fmt="gpkg", id_col="fid")
    assert list(staging["source_id"]) == ["1", "2", "3"]  # the GeoPackage primary key


def decimal_comma_geojson(path):
    feats = [{"type": "Feature", "properties": {"kw": kw, "yr": yr}, "geometry": {"type": "Point", "coordinates": [i, i]}}
             for i, (kw, yr) in enumerate([("12,5", "2019"), ("1.234,5", "2020"), (7.5, None), ("n/a", "unknown"), ("", None)])]
    (path / "pv.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def test_unparseable_attribute_values_are_counted_per_column(tmp_path):
    columns = {"capacity_mw": {"col": "kw", "unit": "kW"}, "install_year": {"col": "yr"}}
    staging, report = run(decimal_comma_geojson(tmp_path), columns=columns)
    assert report["unparseable"] == {"kw": 3, "yr": 1}  # "12,5", "1.234,5", "n/a"; "unknown"
    assert report["files"][0]["unparseable"] == {"kw": 3, "yr": 1}
    assert staging["capacity_mw"].notna().sum() == 1  # only the JSON number 7.5
    assert "kw: 3" in report_table(report)["unparseable"].iloc[-1]


def test_decimal_commas_are_read_where_the_manifest_says_so(tmp_path):
    columns = {"capacity_mw": {"col": "kw", "unit": "kW"}, "install_year": {"col": "yr"}}
    staging, report = run(decimal_comma_geojson(tmp_path), columns=columns, decimal=",")
    assert report["unparseable"] == {"kw": 1, "yr": 1}  # "n/a" and "unknown" only
    np.testing.assert_allclose(staging["capacity_mw"].to_numpy()[:3], [0.0125, 1.2345, 0.0075])


def test_a_semicolon_csv_with_decimal_commas_is_read(tmp_path):
    (tmp_path / "pv.csv").write_text("id;lon;lat;kw\n1;12,5;45,25;3,2\n2;-3,75;51,5;10\n3;x;51,5;4\n")
    staging, report = run(tmp_path, label_fmt="csv", lon_col="lon", lat_col="lat", crs="WGS84", decimal=",",
                          id_col="id", columns={"capacity_mw": {"col": "kw", "unit": "kW"}})
    assert list(staging["centroid_lon"]) == [12.5, -3.75] and list(staging["centroid_lat"]) == [45.25, 51.5]
    np.testing.assert_allclose(staging["capacity_mw"], [0.0032, 0.01])
    assert report["unparseable"] == {"lon": 1} and report["dropped"] == {"null_geometry": 1}


def test_a_tab_separated_csv_and_a_manifest_delimiter(tmp_path):
    (tmp_path / "pv.csv").write_text("lon\tlat\n10.5\t45.0\n11.5\t46.0\n")
    staging, _ = run(tmp_path, label_fmt="csv", lon_col="lon", lat_col="lat", crs="WGS84")
    assert list(staging["centroid_lon"]) == [10.5, 11.5]
    (tmp_path / "pv.csv").write_text("lon|lat\n10.5|45.0\n")
    staging, _ = run(tmp_path, label_fmt="csv", lon_col="lon", lat_col="lat", crs="WGS84", delimiter="|")
    assert list(staging["centroid_lat"]) == [45.0]


def test_geometry_collections_keep_their_polygons_and_are_counted(tmp_path):
    blocks = shapely.GeometryCollection([shapely.box(10, 10, 10.001, 10.001), shapely.box(10.002, 10, 10.003, 10.001),
                                         shapely.Point(10.0015, 10.0005)])
    points_only = shapely.GeometryCollection([shapely.Point(1, 1)])
    gdf = gpd.GeoDataFrame({"n": [1, 2]}, geometry=[blocks, points_only], crs=4326)
    gdf.to_file(tmp_path / "pv.geojson", driver="GeoJSON")
    staging, report = run(tmp_path)
    assert report["polygons_from_collections"] == 1
    assert report["dropped"] == {"unsupported_type:GeometryCollection": 1}
    assert staging["geom_type"].tolist() == ["MultiPolygon"] and len(staging.geometry.iloc[0].geoms) == 2
