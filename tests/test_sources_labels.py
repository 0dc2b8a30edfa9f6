import json
import zipfile

import geopandas as gpd
import pytest
import shapely

from pvlake.errors import DatasetError
from pvlake.manifest import parse_entry
from pvlake.sources import find_label_files, read_labels


def spec(tmp_path, **entry):
    entry.setdefault("repo", "local")
    entry.setdefault("path", str(tmp_path))
    return parse_entry("ds", entry, tmp_path)


def frame(n=3, crs="EPSG:4326", lon=-79.79, lat=36.07):
    geoms = [shapely.box(lon + i * 0.01, lat, lon + i * 0.01 + 1e-3, lat + 1e-3) for i in range(n)]
    return gpd.GeoDataFrame({"pid": list(range(n)), "power": [1.5] * n}, geometry=geoms, crs="EPSG:4326").to_crs(crs)


def write_shapefile_zip(tmp_path, names, prj=True):
    shp_dir = tmp_path / "shp"
    shp_dir.mkdir()
    for name in names:
        frame().to_file(shp_dir / f"{name}.shp")
        if not prj:
            (shp_dir / f"{name}.prj").unlink()
    archive = tmp_path / "data" / "set.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(shp_dir.iterdir()):
            zf.write(p, p.name)
        zf.writestr("__MACOSX/._PV_a.shp", b"junk")
    return archive


def test_zip_members_are_filtered_like_extracted_files(tmp_path):
    write_shapefile_zip(tmp_path, ["PV_a", "PV_b", "NPV_a"])
    s = spec(tmp_path, path=str(tmp_path / "data"), label_fmt="shp",
             file_filters={"include_patterns": ["PV_.*\\.shp$"], "exclude_patterns": ["NPV_.*"], "use_regex": True})
    files = find_label_files(s)
    assert [f.source_file for f in files] == ["set.zip/PV_a.shp", "set.zip/PV_b.shp"]
    sf = read_labels(s, files[0])
    assert len(sf.frame) == 3 and sf.crs_from == "file" and sf.frame.crs.to_epsg() == 4326


def test_shapefile_without_prj_needs_the_manifest_crs(tmp_path):
    write_shapefile_zip(tmp_path, ["PV_a"], prj=False)
    s = spec(tmp_path, path=str(tmp_path / "data"), label_fmt="shp")
    with pytest.raises(DatasetError, match=r"dataset 'ds' file set.zip/PV_a.shp: no CRS"):
        read_labels(s, find_label_files(s)[0])
    s = spec(tmp_path, path=str(tmp_path / "data"), label_fmt="shp", crs="WGS84")
    assert read_labels(s, find_label_files(s)[0]).crs_from == "manifest"


def test_geojson_declared_crs_wins_and_is_reported(tmp_path):
    f = tmp_path / "nad83.geojson"
    frame(crs="EPSG:4269").to_file(f, driver="GeoJSON")
    assert '"crs"' in f.read_text()[:500]
    s = spec(tmp_path, label_fmt="geojson", crs="WGS84")
    sf = read_labels(s, find_label_files(s)[0])
    assert sf.crs_from == "file" and sf.frame.crs.to_epsg() == 4269


def test_geojson_without_crs_member_uses_manifest_then_rfc7946(tmp_path):
    f = tmp_path / "plain.geojson"
    f.write_text(frame().to_json(drop_id=True))
    assert '"crs"' not in f.read_text()
    s = spec(tmp_path, label_fmt="geojson", crs="NAD83")
    sf = read_labels(s, find_label_files(s)[0])
    assert sf.crs_from == "manifest" and sf.frame.crs.to_epsg() == 4269
    s = spec(tmp_path, label_fmt="geojson")
    sf = read_labels(s, find_label_files(s)[0])
    assert sf.crs_from == "geojson-default"


def test_geopackage_solar_layer_is_picked(tmp_path):
    f = tmp_path / "farms.gpkg"
    frame(4).to_file(f, layer="global_solar_2020")
    frame(2).assign(geometry=lambda d: d.geometry.representative_point()).to_file(f, layer="global_wind_2020")
    s = spec(tmp_path, label_fmt="gpkg")
    sf = read_labels(s, find_label_files(s)[0])
    assert sf.source_file == "farms.gpkg:global_solar_2020" and len(sf.frame) == 4
    s = spec(tmp_path, label_fmt="gpkg", layer="global_wind_2020")
    assert len(read_labels(s, find_label_files(s)[0]).frame) == 2
    s = spec(tmp_path, label_fmt="gpkg", layer="nothing")
    with pytest.raises(DatasetError, match="layer 'nothing' matches 0 layers; layers present"):
        read_labels(s, find_label_files(s)[0])


def test_geopackage_with_ambiguous_layers_is_refused(tmp_path):
    f = tmp_path / "x.gpkg"
    frame().to_file(f, layer="a")
    frame().to_file(f, layer="b")
    s = spec(tmp_path, label_fmt="gpkg")
    with pytest.raises(DatasetError, match="several layers"):
        read_labels(s, find_label_files(s)[0])


def test_csv_points_from_named_columns(tmp_path):
    (tmp_path / "p.csv").write_text("id,lon,lat\n1,-80.19,25.76\n2,,25.8\n3,abc,1\n")
    s = spec(tmp_path, label_fmt="csv", lon_col="lon", lat_col="lat", crs="EPSG:4326")
    sf = read_labels(s, find_label_files(s)[0])
    assert sf.frame.geometry.iloc[0].equals(shapely.Point(-80.19, 25.76))
    assert sf.frame.geometry.iloc[1:].isna().all()  # missing or non-numeric coordinates
    s = spec(tmp_path, label_fmt="csv", lon_col="x", lat_col="lat", crs="EPSG:4326")
    with pytest.raises(DatasetError, match=r"lacks coordinate column\(s\) \['x'\]"):
        read_labels(s, find_label_files(s)[0])


def test_csv_without_crs_is_refused(tmp_path):
    (tmp_path / "p.csv").write_text("lon,lat\n1,2\n")
    s = spec(tmp_path, label_fmt="csv", lon_col="lon", lat_col="lat")
    with pytest.raises(DatasetError, match="no CRS"):
        read_labels(s, find_label_files(s)[0])


def test_json_point_arrays(tmp_path):
    (tmp_path / "2021.json").write_text(json.dumps([[-79.79, 36.07], [78.28, 13.09, 5]]))
    (tmp_path / "bad.json").write_text(json.dumps({"type": "FeatureCollection"}))
    s = spec(tmp_path, label_fmt="json", crs="EPSG:4326")
    good, bad = find_label_files(s)
    assert [(p.x, p.y) for p in read_labels(s, good).frame.geometry] == [(-79.79, 36.07), (78.28, 13.09)]
    with pytest.raises(DatasetError, match=r"file bad.json: expected a JSON array of \[lon, lat\] pairs"):
        read_labels(s, bad)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "file is empty"),
        (b'{"type": "FeatureCollection", "features": [', "cannot be read as geojson"),
        (b'{"type": "FeatureCollection", "features": []}', "contains no features"),
    ],
)
def test_bad_geojson_files(tmp_path, content, reason):
    (tmp_path / "x.geojson").write_bytes(content)
    s = spec(tmp_path, label_fmt="geojson")
    with pytest.raises(DatasetError, match=f"dataset 'ds' file x.geojson: {reason}"):
        read_labels(s, find_label_files(s)[0])


def test_corrupt_zip_is_named(tmp_path):
    (tmp_path / "set.zip").write_bytes(b"PK\x03\x04 not really")
    s = spec(tmp_path, label_fmt="shp")
    with pytest.raises(DatasetError, match="set.zip: not a readable zip archive"):
        find_label_files(s)


def test_filter_matching_nothing_lists_what_is_there(tmp_path):
    (tmp_path / "a.geojson").write_text("{}")
    s = spec(tmp_path, label_fmt="geojson", file_filters={"include_patterns": ["*.gpkg"]})
    with pytest.raises(DatasetError, match=r"no geojson file matches the file filters .* files present: a.geojson"):
        find_label_files(s)


def test_missing_path(tmp_path):
    s = spec(tmp_path, path=str(tmp_path / "nowhere"), label_fmt="geojson")
    with pytest.raises(DatasetError, match="path does not exist"):
        find_label_files(s)
