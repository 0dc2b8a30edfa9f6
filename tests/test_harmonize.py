import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
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
    ids = make_pv_ids("d", np.array([None, None], dtype=object), g)
    rev = make_pv_ids("d", np.array([None, None], dtype=object), g[::-1])
    assert list(ids) == list(rev[::-1])
    assert make_pv_ids("other", np.array([None], dtype=object), g[:1])[0] != ids[0]
    by_id = make_pv_ids("d", np.array(["7", "7"], dtype=object), g)
    assert by_id[0] != by_id[1]


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
