"""Partitioned dedup: the same installations as one process, whatever the split."""

from __future__ import annotations

import filecmp
import json
import shutil
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from pvlake import dedup as dd
from pvlake import partition as pt
from pvlake.harmonize import empty_staging, harmonize_dataset, write_staging
from pvlake.io import write_geoparquet
from pvlake.layout import Layout
from pvlake.manifest import active_datasets, load_manifest

from conftest import ROOT, snakemake
from test_dedup import farm_lonlat, local_to_lonlat, offset_m, square_m, staging_of


def write_staging_files(staging: gpd.GeoDataFrame, folder: Path) -> list[Path]:
    """One staging GeoParquet per dataset, as harmonize writes them."""
    paths = []
    for name, rows in staging.groupby("dataset", sort=True):
        path = folder / f"{name}.parquet"
        write_geoparquet(gpd.GeoDataFrame(rows.reset_index(drop=True), geometry="geometry", crs=4326), path)
        paths.append(path)
    return paths


def both_ways(paths: list[Path], out: Path, partition: pt.PartitionParams, priority=None, params=dd.DedupParams(),
              truth=None) -> tuple[Path, dict, Path, dict, dict]:
    """One-process and partitioned dedup of the same staging files; returns each one's
    prepared file and report, and the split report."""
    single = pt.run_dedup(paths, out / "single.parquet", out / "single.json", priority, params, truth=truth)
    files = pt.PartitionFiles.in_layout(Layout(out / "split"), partition.count)
    split = pt.split(paths, files, params, partition, batch_rows=500, progress=False)
    for part in range(partition.count):
        pt.partition_pairs(files.parts[part], files.pairs[part], params, part)
    merged = pt.run_dedup(paths, out / "merged.parquet", out / "merged.json", priority, params, partition, files, truth)
    return out / "single.parquet", single, out / "merged.parquet", merged, split


def assert_same_installations(single_path, single_report, merged_path, merged_report) -> None:
    # byte for byte: same rows, order, representatives, attributes, provenance and metadata
    assert filecmp.cmp(single_path, merged_path, shallow=False)
    assert {k: v for k, v in merged_report.items() if k != "partitions"} == single_report


@pytest.fixture(scope="module")
def sample_staging_files(sample_dir, tmp_path_factory) -> tuple[list[Path], dict, dict]:
    """The embedded sample harmonized into staging files, with priorities and ground truth."""
    specs = load_manifest(sample_dir / "manifest.json")
    layout = Layout(tmp_path_factory.mktemp("partition sample"))
    paths = []
    for name in active_datasets(specs):
        staging, report = harmonize_dataset(specs[name], None, 12, progress=False)
        write_staging(staging, report, layout.staging_parquet(name), layout.staging_report(name))
        paths.append(layout.staging_parquet(name))
    truth = json.loads((sample_dir / "ground_truth.json").read_text())
    return paths, {d: specs[d].priority for d in specs}, truth


@pytest.mark.parametrize("count, resolution", [(2, 5), (3, 7), (7, 3), (16, 6)])
def test_sample_partitioned_equals_one_process(sample_staging_files, tmp_path, count, resolution):
    paths, priority, truth = sample_staging_files
    single, s_report, merged, m_report, split = both_ways(
        paths, tmp_path, pt.PartitionParams(count, resolution), priority, truth=truth)
    assert_same_installations(single, s_report, merged, m_report)
    assert m_report["score"]["precision"] == m_report["score"]["recall"] == 1.0
    # a record in k partitions is counted k times: the halo adds the extra counts
    extra = sum(split["records_per_partition"]) - split["records"]
    assert extra >= split["records_in_several_partitions"] and (extra > 0) == (split["records_in_several_partitions"] > 0)
    assert [job["records"] for job in m_report["partitions"]["jobs"]] == split["records_per_partition"]


def test_clusters_across_partition_borders_are_merged_once(tmp_path):
    # a chain of points 40 m apart running across many res-7 cell edges (each cell its own
    # partition), plus overlapping farms and a rooftop with a point 8 m outside it
    lon, lat = -79.79, 36.07
    chain = [{"geometry": offset_m(lon, lat, 40.0 * k, 0), "dataset": "a" if k % 2 else "b"} for k in range(200)]
    farms = [{"geometry": square_m(lon, lat + 0.05, 900), "dataset": "c"},
             {"geometry": square_m(lon, lat + 0.05, 900, 200), "dataset": "d", "capacity_mw": 4.2}]
    roof = [{"geometry": square_m(lon - 0.05, lat, 12), "dataset": "e"},
            {"geometry": offset_m(lon - 0.05, lat, -8, 6), "dataset": "f", "install_year": 2019}]
    paths = write_staging_files(staging_of(chain + farms + roof), tmp_path / "staging")
    single, s_report, merged, m_report, split = both_ways(paths, tmp_path, pt.PartitionParams(12, 7))
    assert_same_installations(single, s_report, merged, m_report)
    prepared = gpd.read_parquet(merged)
    assert len(prepared) == 3 and sorted(prepared["n_sources"]) == [2, 2, 200]
    assert split["coarse_cells"] >= 3 and split["records_in_several_partitions"] > 0
    assert sum(job["pairs"] for job in m_report["partitions"]["jobs"]) == sum(s_report["pairs_per_rule"].values())


@pytest.mark.parametrize("lat", [-17.0, 66.0, 84.0])
def test_antimeridian_high_latitudes_and_identical_floods(tmp_path, lat):
    farm = farm_lonlat(180.0, lat)
    uncut = local_to_lonlat(180.0, lat + 0.5, shapely.box(-150, -100, 150, 100))  # as from outside harmonize
    records = [
        {"geometry": farm, "dataset": "a"}, {"geometry": farm, "dataset": "b"},
        {"geometry": farm_lonlat(180.0, lat, east_m=60), "dataset": "c"},
        {"geometry": uncut, "dataset": "d"},
        {"geometry": farm_lonlat(180.0, lat + 0.5, east_m=40), "dataset": "e"},
        {"geometry": local_to_lonlat(180.0, lat + 1, shapely.Point(-10.5, 0)), "dataset": "f"},
        {"geometry": local_to_lonlat(180.0, lat + 1, shapely.Point(10.5, 0)), "dataset": "g"},
        {"geometry": local_to_lonlat(180.0, lat - 1, shapely.box(-16, -4, -1, 4)), "dataset": "h"},
        {"geometry": local_to_lonlat(180.0, lat - 1, shapely.Point(4, 0)), "dataset": "i"},
    ] + [{"geometry": shapely.Point(179.999, lat - 0.3), "dataset": "flood"}] * 300
    staging = staging_of(records)
    assert shapely.bounds(staging.geometry.iloc[3])[2] - shapely.bounds(staging.geometry.iloc[3])[0] > 359
    paths = write_staging_files(staging, tmp_path / "staging")
    single, s_report, merged, m_report, split = both_ways(paths, tmp_path, pt.PartitionParams(4, 6))
    assert_same_installations(single, s_report, merged, m_report)
    assert split["cut_at_180"] == 1  # the uncut farm, cut for the search and in the output
    prepared = gpd.read_parquet(merged)
    assert prepared.geometry.bounds["maxx"].max() <= 180 and len(prepared) == 5
    assert s_report["distinct_geometries"] == len(records) - 1 - 299


def test_benchmark_set_of_450k_records_gives_the_same_installations(tmp_path):
    """The dedup benchmark's synthetic set (workflow/scripts/bench_dedup.py): 450,000
    records with 15% planted duplicates in eight regions."""
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    from bench_dedup import synthetic_staging

    paths = write_staging_files(synthetic_staging(450_000), tmp_path / "staging")
    priority = {"alpha": 3, "gamma": 1}
    files = pt.PartitionFiles.in_layout(Layout(tmp_path / "split"), 6)
    split = pt.split(paths, files, dd.DedupParams(), pt.PartitionParams(6, 5), progress=False)
    for part in range(6):
        pt.partition_pairs(files.parts[part], files.pairs[part], dd.DedupParams(), part)
    merged = pt.merge(paths, files, tmp_path / "merged.parquet", tmp_path / "merged.json", priority, progress=False)[0]
    assert max(split["records_per_partition"]) < 1.1 * 450_000 / 6
    single = pt.run_dedup(paths, tmp_path / "single.parquet", tmp_path / "single.json", priority)
    assert_same_installations(tmp_path / "single.parquet", single, tmp_path / "merged.parquet", merged)
    assert single["installations"] == 380_188


def test_no_records_at_all_gives_the_same_empty_layer(tmp_path):
    path = tmp_path / "staging" / "empty.parquet"
    write_geoparquet(empty_staging(), path)
    single, s_report, merged, m_report, split = both_ways([path], tmp_path, pt.PartitionParams(3, 5))
    assert split["records"] == 0 and s_report["installations"] == 0
    assert_same_installations(single, s_report, merged, m_report)


def test_pack_cells_balances_and_is_deterministic():
    rng = np.random.default_rng(1)
    cells = rng.permutation(np.arange(1000, 1400, dtype=np.uint64))
    loads = rng.integers(1, 100, len(cells))
    parts = pt.pack_cells(cells, loads, 7)
    totals = np.bincount(parts, weights=loads, minlength=7)
    assert totals.max() - totals.min() <= loads.max()
    assert (pt.pack_cells(cells, loads, 7) == parts).all()


def test_a_pair_is_owned_by_the_lowest_partition_both_records_share():
    parts = pa.array([[2], [1, 2], [1, 2, 5], [0, 3], [2, 3]], pa.list_(pa.int32()))
    a = np.array([0, 1, 1, 2, 3])
    b = np.array([1, 2, 0, 4, 4])
    assert pt.owned(a, b, parts, 2).tolist() == [True, False, True, True, True]
    assert pt.owned(a, b, parts, 1).tolist() == [True, True, True, True, True]
    assert pt.owned(a[3:], b[3:], parts, 3).tolist() == [False, True]


def test_geometry_types_are_read_from_wkb_headers():
    geoms = [shapely.Point(1, 2), shapely.box(0, 0, 1, 1), shapely.MultiPolygon([shapely.box(0, 0, 1, 1)]),
             shapely.Point(1, 2, 3)]
    for byte_order, expected in ((1, {"Point", "Polygon", "MultiPolygon", "Point Z"}),
                                 (0, {"Point", "Polygon", "MultiPolygon", "Point Z"})):
        wkb = pa.array(shapely.to_wkb(geoms, byte_order=byte_order, flavor="iso"), pa.binary())
        assert pt.wkb_geometry_types(wkb) == expected
        assert pt.wkb_geometry_types(wkb.slice(1, 2)) == {"Polygon", "MultiPolygon"}


def test_partition_settings_are_checked():
    with pytest.raises(ValueError, match="outside 0..7"):
        pt.PartitionParams(4, 8)
    with pytest.raises(ValueError, match="at least 1"):
        pt.PartitionParams(0)


@pytest.mark.workflow
def test_workflow_partitioned_dedup_equals_the_sample_run(sample_run, tmp_path):
    """`dedup.partitions: 3`: a split job, three partition jobs and the merge in the dedup
    notebook give the sample run's prepared layer byte for byte."""
    data_dir = tmp_path / "partitioned data"
    shutil.copytree(sample_run / "staging", data_dir / "staging")
    config = tmp_path / "partitioned.yaml"
    config.write_text("dedup:\n  partitions: 3\n  partition_resolution: 6\n")
    layout = Layout(data_dir)
    run = snakemake("-j2", "--configfile", str(config), "--config", f"data_dir={data_dir}", "--",
                    str(layout.prepared_parquet()))
    assert run.returncode == 0, run.stderr[-4000:]
    for rule in ("dedup_split", "dedup_partition", "dedup"):
        assert f"rule {rule}:" in run.stdout + run.stderr
    assert filecmp.cmp(layout.prepared_parquet(), Layout(sample_run).prepared_parquet(), shallow=False)
    report = json.loads(layout.dedup_report().read_text())
    assert report.pop("partitions")["partition"] == {"count": 3, "h3_resolution": 6}
    assert report == json.loads(Layout(sample_run).dedup_report().read_text())
    assert not layout.dedup_partition(0).exists()  # temporary: removed once its pairs are written
    nb = json.loads(layout.executed_notebook("dedup", "dedup").read_text())
    text = "".join(str(o) for c in nb["cells"] for o in c.get("outputs", []))
    assert "in 3 partitions" in text and "records sit in more than one partition" in text
