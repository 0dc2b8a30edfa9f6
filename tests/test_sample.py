"""Tests of the embedded sample (pvlake.sample) and of its ground truth.

The files are read back the way the harmonize stage reads them (manifest file
filters, pyogrio, ``/vsizip/`` for zip members), so the ground truth is checked
against what the pipeline will see, not against the generator's memory.
"""

from __future__ import annotations

import functools
import itertools
import json
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from pyproj import CRS, Geod, Transformer

from pvlake import sample
from pvlake.manifest import DatasetSpec, load_manifest

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"
MAX_SAMPLE_BYTES = 5 * 1024 * 1024
# Distinct installations stand at least this far apart, so only planted duplicates look alike.
DISTINCT_GAP_M = 500.0


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    sample.write_sample(out)
    return out


@pytest.fixture(scope="module")
def manifest() -> dict[str, DatasetSpec]:
    return load_manifest(SAMPLE_DIR / "manifest.json")


@pytest.fixture(scope="module")
def truth() -> dict:
    return json.loads((SAMPLE_DIR / "ground_truth.json").read_text())


def sample_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "README.md")


def assert_same_gpkg(committed: Path, fresh: Path) -> None:
    layers = pyogrio.list_layers(committed)
    np.testing.assert_array_equal(layers, pyogrio.list_layers(fresh))
    for layer in layers[:, 0]:
        a = pyogrio.read_dataframe(committed, layer=layer)
        b = pyogrio.read_dataframe(fresh, layer=layer)
        assert a.crs == b.crs
        pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
        assert shapely.equals_exact(a.geometry.values, b.geometry.values, tolerance=0).all()
        assert list(shapely.to_wkb(a.geometry.values)) == list(shapely.to_wkb(b.geometry.values))


def test_regenerating_reproduces_committed_files(regenerated: Path) -> None:
    assert sample_files(SAMPLE_DIR) == sample_files(regenerated)
    for name in sample_files(SAMPLE_DIR):
        if name.endswith(".gpkg"):
            # GeoPackages embed timestamps, so they are compared by content.
            assert_same_gpkg(SAMPLE_DIR / name, regenerated / name)
        else:
            assert (SAMPLE_DIR / name).read_bytes() == (regenerated / name).read_bytes(), name


def test_sample_is_small_and_every_format_opens() -> None:
    assert sum((SAMPLE_DIR / f).stat().st_size for f in sample_files(SAMPLE_DIR)) < MAX_SAMPLE_BYTES
    chn = SAMPLE_DIR / sample.CHN / sample.CHN_ZIP
    shapefiles = [m for m in zipfile.ZipFile(chn).namelist() if m.endswith(".shp")]
    assert len(shapefiles) == 5
    for member in shapefiles:
        info = pyogrio.read_info(f"/vsizip/{chn}/{member}")
        assert info["crs"] == "EPSG:4326" and info["features"] > 0
    for name, crs in ((sample.GLOBAL_GPKG, "EPSG:4326"), (sample.GLOBAL_ECKERT_GPKG, "ESRI:54012")):
        path = SAMPLE_DIR / sample.GLOBAL / name
        assert dict(pyogrio.list_layers(path)) == {sample.SOLAR_LAYER: "Polygon", sample.WIND_LAYER: "Point"}
        assert CRS(pyogrio.read_info(path, layer=sample.SOLAR_LAYER)["crs"]) == CRS(crs)
    for path in (SAMPLE_DIR / sample.UK).glob("*.geojson"):
        assert pyogrio.read_info(path)["features"] == 300
    assert pyogrio.read_info(SAMPLE_DIR / sample.USGS / sample.USGS_FILE)["crs"] == "EPSG:4269"


# Reading the sample as the harmonize stage does: manifest file filters, then plain pyogrio.


def selected_sources(spec: DatasetSpec) -> list[tuple[str, str, str | None]]:
    """(source_file, path GDAL opens, layer) of every file the manifest entry selects."""
    if spec.compression == "zip":
        names = [f"{z.name}/{m}" for z in sorted(spec.path.glob("*.zip")) for m in zipfile.ZipFile(z).namelist()]
    else:
        names = sorted(p.name for p in spec.path.iterdir())
    sources = []
    for name in filter(spec.filters.accepts, names):
        path = f"/vsizip/{spec.path / name}" if "/" in name else str(spec.path / name)
        sources.append((f"{name}:{spec.layer}" if spec.layer else name, path, spec.layer))
    return sources


def read_source(path: str, layer: str | None, label_fmt: str) -> gpd.GeoSeries:
    if label_fmt == "json":
        points = json.loads(Path(path).read_text())
        return gpd.GeoSeries(shapely.points(np.array(points)), crs="EPSG:4326")
    return pyogrio.read_dataframe(path, layer=layer, columns=[]).geometry.to_crs("EPSG:4326")


@pytest.fixture(scope="module")
def records(manifest: dict[str, DatasetSpec]) -> gpd.GeoDataFrame:
    frames = []
    for dataset, spec in manifest.items():
        for source_file, path, layer in selected_sources(spec):
            geometry = read_source(path, layer, spec.label_fmt)
            frames.append(gpd.GeoDataFrame(
                {"dataset": dataset, "source_file": source_file, "source_row": np.arange(len(geometry))},
                geometry=geometry.values, crs="EPSG:4326"))
    return pd.concat(frames, ignore_index=True).set_index(["dataset", "source_file", "source_row"], drop=False)


def has_geometry(geoms: gpd.GeoSeries) -> np.ndarray:
    return ~shapely.is_missing(geoms.values) & ~shapely.is_empty(geoms.values)


def key(ref: dict) -> tuple[str, str, int]:
    return ref["dataset"], ref["source_file"], ref["source_row"]


def test_manifest_selects_only_pv_label_files(manifest: dict[str, DatasetSpec]) -> None:
    selected = {d: sorted(s for s, _, _ in selected_sources(e)) for d, e in manifest.items()}
    assert selected == {
        sample.UK: [sample.UK_FILE],
        sample.USGS: [sample.USGS_FILE],
        sample.CHN: sorted([sample.CHN_TEST_2015, sample.CHN_TEST_2020, sample.CHN_TRAIN_2020]),
        sample.GLOBAL: [sample.GLOBAL_SOLAR],
        sample.IND: [sample.IND_FILE],
        sample.GSF: [sample.GSF_2021_GLOBAL, sample.GSF_2022_GLOBAL, sample.GSF_2022_US, sample.GSF_2023_US],
    }


def test_defects_are_real(records: gpd.GeoDataFrame, truth: dict) -> None:
    empty = {key(r): r["kind"] for r in truth["empty_geometries"]}
    geoms = records.geometry
    assert empty == {k: "null" if g is None else "empty" for k, g in geoms.items() if g is None or g.is_empty}
    present = geoms[has_geometry(geoms)]
    invalid = {key(r) for r in truth["invalid_geometries"]}
    assert invalid == set(present.index[~shapely.is_valid(present.values)])
    assert truth["expected_rows"] == present.groupby(level="dataset").size().reindex(sample.DATASETS).to_dict()


def test_inconsistent_orientation_is_real(records: gpd.GeoDataFrame, truth: dict) -> None:
    listed = {key(r) for r in truth["inconsistent_orientation"]}
    valid = records.geometry[records.geom_type.eq("MultiPolygon") & records.is_valid]
    mixed = {k for k, g in valid.items() if len({shapely.is_ccw(p.exterior) for p in g.geoms}) > 1}
    assert listed == mixed and len(listed) >= 2
    geod = Geod(ellps="WGS84")
    for k in listed:
        signed_m2 = geod.geometry_area_perimeter(valid[k])[0]
        parts_m2 = sum(abs(geod.geometry_area_perimeter(p)[0]) for p in valid[k].geoms)
        # A signed area sum over the parts mostly cancels out.
        assert abs(signed_m2) < 0.5 * parts_m2


# The dedup stage's duplicate rules, measured in a local UTM zone.


@functools.cache
def to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs("EPSG:4326", epsg, always_xy=True)


def utm_epsg(geometry: shapely.Geometry) -> int:
    point = geometry.representative_point()
    return (32600 if point.y >= 0 else 32700) + int((point.x + 180) // 6) + 1


def in_metres(a: shapely.Geometry, b: shapely.Geometry) -> tuple[shapely.Geometry, shapely.Geometry]:
    """Both geometries in the UTM zone of the first, repaired so overlaps can be measured."""
    transformer = to_utm(utm_epsg(a))

    def project(g: shapely.Geometry) -> shapely.Geometry:
        return shapely.transform(g, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))

    return shapely.make_valid(project(a)), shapely.make_valid(project(b))


def is_point(g: shapely.Geometry) -> bool:
    return g.geom_type == "Point"


def overlap_ratio(a: shapely.Geometry, b: shapely.Geometry) -> float:
    return a.intersection(b).area / min(a.area, b.area)


def is_duplicate(a: shapely.Geometry, b: shapely.Geometry) -> bool:
    """The dedup stage's rules: overlap >= 0.5 of the smaller, point inside (or within 10 m), points < 50 m."""
    a, b = in_metres(a, b)
    if is_point(a) and is_point(b):
        return a.distance(b) < 50
    if is_point(a) or is_point(b):
        return a.distance(b) <= 10
    return overlap_ratio(a, b) >= 0.5


def test_planted_duplicates_clearly_satisfy_their_rule(records: gpd.GeoDataFrame, truth: dict) -> None:
    clusters = truth["duplicate_clusters"]
    assert {c["kind"] for c in clusters} == {
        "exact_within_file", "spatial_within_dataset", "cross_dataset", "point_in_polygon", "point_point"}
    for cluster in clusters:
        geoms = [records.geometry[key(r)] for r in cluster["records"]]
        min_overlap = 0.8 if cluster["kind"] == "spatial_within_dataset" else 0.7
        for a, b in itertools.combinations(geoms, 2):
            a, b = in_metres(a, b)
            if cluster["kind"] == "exact_within_file":
                assert a.equals_exact(b, tolerance=0)
            elif is_point(a) and is_point(b):
                assert 5 <= a.distance(b) <= 30
            elif is_point(a) or is_point(b):
                assert a.within(b) or b.within(a)
            else:
                assert overlap_ratio(a, b) >= min_overlap, cluster


def test_planted_cross_dataset_cases(truth: dict) -> None:
    clusters = truth["duplicate_clusters"]
    spans = {(c["kind"], frozenset(r["dataset"] for r in c["records"]), c["place"]) for c in clusters}
    for datasets, place in (
        ({sample.UK, sample.GLOBAL}, "Swindon"),
        ({sample.IND, sample.GLOBAL}, "Bhadla"),
        ({sample.CHN, sample.GLOBAL}, "Golmud"),
        ({sample.USGS, sample.GLOBAL}, "Fresno"),
    ):
        assert ("cross_dataset", frozenset(datasets), place) in spans
    for place in ("Greensboro", "Kendall"):
        assert ("point_in_polygon", frozenset({sample.GLOBAL, sample.GSF}), place) in spans
    chn_files = {r["source_file"] for c in clusters if c["place"] == "Golmud" for r in c["records"]}
    assert chn_files == {sample.CHN_TEST_2015, sample.CHN_TRAIN_2020, sample.GLOBAL_SOLAR}


def test_nothing_else_looks_like_a_duplicate(records: gpd.GeoDataFrame, truth: dict) -> None:
    cluster_of = {key(r): i for i, c in enumerate(truth["duplicate_clusters"]) for r in c["records"]}
    present = records[has_geometry(records.geometry)].reset_index(drop=True)
    # 0.02 degrees is over 1 km at the sample's latitudes: every pair nearer than the 500 m gap is a candidate.
    pairs = gpd.sjoin(present, present, predicate="dwithin", distance=0.02)
    pairs = pairs[pairs.index < pairs["index_right"]]
    fid = pyogrio.read_dataframe(SAMPLE_DIR / sample.IND / sample.IND_FILE, read_geometry=False)["fid"]
    for left, right in zip(pairs.index, pairs["index_right"]):
        a, b = present.iloc[left], present.iloc[right]
        ka, kb = (tuple(r[["dataset", "source_file", "source_row"]]) for r in (a, b))
        if ka in cluster_of and cluster_of.get(ka) == cluster_of.get(kb):
            continue
        ga, gb = in_metres(a.geometry, b.geometry)
        if ka[0] == kb[0] == sample.IND and fid[ka[2]] == fid[kb[2]]:
            # Blocks of one farm mapped as separate features: adjacent, never overlapping.
            assert ga.intersection(gb).area == 0 and ga.distance(gb) > 5
        else:
            assert ga.distance(gb) >= DISTINCT_GAP_M, (ka, kb)
        assert not is_duplicate(a.geometry, b.geometry)
