import json

import pytest

from pvlake.errors import DatasetError
from pvlake.manifest import FileFilters, active_datasets, load_manifest, parse_entry


def test_regex_filters_exclude_negative_samples():
    ff = FileFilters(("PV_.*\\.shp$",), ("NPV_.*",), use_regex=True)
    assert ff.accepts("PV_Test_2015.shp")
    assert ff.accepts("ChinaPV.zip/PV_Train_2020.shp")
    assert not ff.accepts("NPV_Test_2015.shp")  # "PV_" matches inside, the exclude wins
    assert not ff.accepts("PV_Test_2015.dbf")


def test_anchored_regex_matches_the_base_name():
    ff = FileFilters(("^GMSEUS_Arrays_Final\\.gpkg$",), (), use_regex=True)
    assert ff.accepts("GMSEUS_v1_0/GMSEUS_Arrays_Final.gpkg")
    assert not ff.accepts("GMSEUS_v1_0/GMSEUS_Panels_Final.gpkg")


def test_glob_filters_and_path_patterns():
    ff = FileFilters(("*.geojson",), ("*.csv",))
    assert ff.accepts("ukpvgeo_geometries.geojson")
    assert not ff.accepts("ukpvgeo_points.csv")
    assert FileFilters(("data/*.json",)).accepts("data/a.json")
    assert not FileFilters(("data/*.json",)).accepts("other/a.json")
    assert FileFilters().accepts("anything.bin")


OVERRIDES = {
    # uspvdbGeoJSON.zip holds GeoJSON, not the shapefile the upstream entry names
    "usa_eia_large_scale_pv_2023": {"label_fmt", "file_filters"},
    # GloSoFarID runs here: its bare [lon, lat] arrays are WGS84
    "global_pv_inventory_sent2_2024": {"crs", "skip", "file_filters"},
}


def test_upstream_manifest_works_as_is(real_dir):
    upstream_path = real_dir.parent / "reference" / "doi_manifest.json"
    upstream = load_manifest(upstream_path)
    for name in active_datasets(upstream):
        upstream[name].check()


def test_our_real_manifest_keeps_every_upstream_field(real_dir, repo_root):
    upstream = json.loads((real_dir.parent / "reference" / "doi_manifest.json").read_text())
    ours = load_manifest(repo_root / "workflow" / "manifests" / "upstream.json")
    assert set(ours) == set(upstream)
    for name, entry in upstream.items():
        for key, value in entry.items():
            if key not in OVERRIDES.get(name, ()):
                assert ours[name].entry[key] == value, (name, key)
    for name in active_datasets(ours):
        ours[name].check()
    assert "chn_jiangsu_vhr_pv_2021" not in active_datasets(ours)  # pixel masks: skip


def test_relative_path_resolves_against_the_manifest(tmp_path, write_manifest):
    path = write_manifest({"a": {"repo": "local", "path": "files/x.geojson", "label_fmt": "geojson"}})
    spec = load_manifest(path)["a"]
    assert spec.path == (tmp_path / "files" / "x.geojson").resolve()


def test_columns_convert_units():
    spec = parse_entry("d", {"columns": {"source_area_m2": {"col": "a", "unit": "km2"},
                                         "capacity_mw": {"col": "p", "unit": "kW"},
                                         "install_year": "y"}}, base_dir=None)
    assert spec.columns["source_area_m2"].factor == 1e6
    assert spec.columns["capacity_mw"].factor == 1e-3
    assert spec.columns["install_year"].col == "y"


@pytest.mark.parametrize(
    "entry, reason",
    [
        ({"repo": "local", "path": "x", "label_fmt": "pixel_mask"}, "unknown label_fmt 'pixel_mask'"),
        ({"repo": "ftp", "path": "x", "label_fmt": "geojson"}, "unknown repo 'ftp'"),
        ({"repo": "local", "label_fmt": "geojson"}, "needs a 'path'"),
        ({"repo": "local", "path": "x", "label_fmt": "csv"}, "needs 'lon_col' and 'lat_col'"),
        ({"repo": "local", "path": "x", "label_fmt": "shp", "columns": {"power": "p"}}, "unknown attribute 'power'"),
        ({"repo": "local", "path": "x", "label_fmt": "shp", "columns": {"capacity_mw": {"col": "p", "unit": "hp"}}},
         "unit 'hp'"),
    ],
)
def test_check_names_dataset_and_reason(tmp_path, entry, reason):
    spec = parse_entry("my_dataset", entry, tmp_path)
    with pytest.raises(DatasetError, match=reason) as info:
        spec.check()
    assert "my_dataset" in str(info.value)


def test_fingerprint_changes_with_the_entry(tmp_path):
    a = parse_entry("d", {"repo": "local", "path": "x", "label_fmt": "shp"}, tmp_path)
    b = parse_entry("d", {"label_fmt": "shp", "path": "x", "repo": "local"}, tmp_path)
    c = parse_entry("d", {"repo": "local", "path": "x", "label_fmt": "shp", "keep_cols": ["a"]}, tmp_path)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_invalid_manifest_is_refused(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_manifest(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_manifest(bad)


@pytest.mark.parametrize(
    "geom_type, expected",
    [
        ({"features": ["Point", "Polygon", "MultiPolygon"]}, {"Point", "Polygon", "MultiPolygon"}),
        ({"features": "Polygon"}, {"Polygon"}),
        (["Point"], {"Point"}),
        ({"Polygon": ["Point"]}, {"Polygon", "Point"}),
        (None, set()),
    ],
)
def test_declared_geom_types_accepts_every_upstream_shape(tmp_path, geom_type, expected):
    assert parse_entry("d", {"geom_type": geom_type}, tmp_path).declared_geom_types == expected
