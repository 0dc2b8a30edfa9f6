"""The whole workflow on the awkward sample (pvlake.edge_cases) plus the upstream GloSoFarID
entry as the thesis manifest has it, in folders whose paths have spaces: `snakemake -j8`
completes within 4 GB and gives the right installations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import yaml
from scipy.spatial import cKDTree

from conftest import REAL, ROOT, project_with_spaces, with_test_book_dir
from pvlake.edge_cases import write_edge_cases
from pvlake.layout import Layout

pytestmark = pytest.mark.workflow

GLOSOFARID = "global_pv_inventory_sent2_2024"
UPSTREAM_MANIFEST = ROOT.parent / "shared" / "reference" / "doi_manifest.json"
MEMORY_LIMIT_MB = 4096


def glosofarid_files() -> dict[str, bytes]:
    """The real GloSoFarID point files where present, else the embedded sample's copies."""
    folder = REAL / "glosofarid_2024"
    if not folder.is_dir():
        folder = ROOT / "data" / "sample" / "glosofarid_2024"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}


def upstream_glosofarid_entry() -> dict:
    """The thesis manifest's entry, unchanged but for ``skip`` (it is skipped upstream)."""
    if UPSTREAM_MANIFEST.exists():
        entry = json.loads(UPSTREAM_MANIFEST.read_text())[GLOSOFARID]
    else:  # the same entry as the thesis manifest gives it
        entry = {"doi": "https://github.com/yzyly1992/GloSoFarID/tree/main/data_coordinates", "repo": "github",
                 "compression": None, "label_fmt": "json", "crs": None, "geom_type": ["Point"], "has_imgs": True,
                 "label_count": 6793, "skip": True}
    assert entry["crs"] is None and entry["label_fmt"] == "json"
    return {**entry, "skip": False}


@pytest.fixture(scope="module")
def edge_run(tmp_path_factory):
    from repository_server import RepositoryServer

    base = tmp_path_factory.mktemp("edge cases")
    inputs = base / "awkward inputs"
    expected = write_edge_cases(inputs)
    server = RepositoryServer(base / "served")
    files = glosofarid_files()
    server.github("yzyly1992", "GloSoFarID", {f"data_coordinates/{name}": data for name, data in files.items()})
    manifest = json.loads((inputs / "manifest.json").read_text())
    manifest[GLOSOFARID] = upstream_glosofarid_entry()
    manifest_path = inputs / "manifest with upstream entry.json"
    manifest_path.write_text(json.dumps(manifest, indent=2))
    config = base / "repositories.yaml"
    # Every stage runs; the chips are small and of one date, since what this run checks is
    # harmonize and dedup at the edges and the memory of every job (the cubes at full chip
    # size: the session's sample run and bench_cubes.py).
    config.write_text(yaml.safe_dump({"repositories": server.repositories(),
                                      "cubes": {"chip_size_px": 64, "max_dates": 1}}))
    data_dir = base / "my data"
    project = project_with_spaces(base)
    snakemake = [str(project / ".venv" / "bin" / "python"), "-m", "snakemake", "-s", str(project / "Snakefile"), "-j8",
                 "--configfile", str(config),
                 *with_test_book_dir(("--config", f"manifest={manifest_path}", f"data_dir={data_dir}"))]
    # a parent process of its own, so that the peak memory it reports is this run's only
    measure = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print('peak_rss_mb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, file=sys.stderr); "
               "sys.exit(rc)")
    try:
        run = subprocess.run([sys.executable, "-c", measure, *snakemake], cwd=project, capture_output=True, text=True,
                             timeout=1200)
    finally:
        server.close()
    assert run.returncode == 0, run.stderr[-5000:]
    peak_mb = float(run.stderr.strip().splitlines()[-1].split()[-1])
    n_points = sum(len(json.loads(data)) for data in files.values())
    return {"data_dir": data_dir, "expected": expected, "peak_mb": peak_mb, "n_points": n_points}


def installation_of(layout: Layout) -> tuple[dict, gpd.GeoDataFrame]:
    """(dataset, source_file, source_row) -> the installation's pv_id, and the prepared layer."""
    prepared = gpd.read_parquet(layout.prepared_parquet())
    member_of = {m: pv_id for pv_id, members in zip(prepared["pv_id"], prepared["merged_ids"]) for m in members}
    out = {}
    for path in sorted((layout.data_dir / "staging").glob("*.parquet")):
        staging = pd.read_parquet(path, columns=["pv_id", "dataset", "source_file", "source_row"])
        for pv_id, d, f, r in staging.itertuples(index=False):
            out[d, f, int(r)] = member_of[pv_id]
    return out, prepared


def test_the_run_completes_within_4_gb(edge_run):
    assert 0 < edge_run["peak_mb"] < MEMORY_LIMIT_MB
    print(f"edge-case run: peak memory of one process {edge_run['peak_mb']:.0f} MB")


def test_every_planted_site_is_exactly_one_installation(edge_run):
    where, prepared = installation_of(Layout(edge_run["data_dir"]))
    seen = set()
    for group in edge_run["expected"]["installations"]:
        ids = {where[r["dataset"], r["source_file"], r["source_row"]] for r in group}
        assert len(ids) == 1, group[:3]  # merged, across 180 degrees and at 60-70 degrees north too
        (pv_id,) = ids
        assert pv_id not in seen, group[:3]  # and never merged with another planted site
        seen.add(pv_id)
        row = prepared[prepared["pv_id"] == pv_id].iloc[0]
        assert row["n_sources"] == len(group)


def test_the_antimeridian_farm_is_on_the_farm(edge_run):
    where, prepared = installation_of(Layout(edge_run["data_dir"]))
    farm = edge_run["expected"]["antimeridian_farm"]
    r = farm["records"][0]
    row = prepared[prepared["pv_id"] == where[r["dataset"], r["source_file"], r["source_row"]]].iloc[0]
    dlon = (row["centroid_lon"] - farm["centroid_lon"] + 180) % 360 - 180
    assert abs(dlon) < 0.01 and abs(row["centroid_lat"] - farm["centroid_lat"]) < 0.01
    assert row["geom_type"] == "MultiPolygon" and row["n_datasets"] == 2
    assert 50_000 < row["area_m2"] < 70_000  # 300 m x 200 m


def test_the_upstream_glosofarid_entry_runs_unchanged(edge_run):
    layout = Layout(edge_run["data_dir"])
    report = json.loads(layout.staging_report(GLOSOFARID).read_text())
    assert report["rows_written"] == edge_run["n_points"]
    assert {f["crs_from"] for f in report["files"]} == {"default"}
    # its installations, against an independent search: a k-d tree on the unit sphere finds
    # every pair within 55 m, the geodesic distance decides (< 50 m), then connected components
    staging = gpd.read_parquet(layout.staging_parquet(GLOSOFARID))
    lon, lat = np.radians(staging["centroid_lon"].to_numpy()), np.radians(staging["centroid_lat"].to_numpy())
    xyz = np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    pairs = cKDTree(xyz).query_pairs(55.0 / 6_356_752.0, output_type="ndarray")
    deg = np.degrees
    dist = pyproj.Geod(ellps="WGS84").inv(deg(lon[pairs[:, 0]]), deg(lat[pairs[:, 0]]), deg(lon[pairs[:, 1]]),
                                          deg(lat[pairs[:, 1]]))[2]
    close = pairs[dist < 50]
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(close)), (close[:, 0], close[:, 1])), shape=(len(staging),) * 2)
    expected = connected_components(graph, directed=False)[1]
    where, _ = installation_of(layout)
    found = np.array([where[GLOSOFARID, f, int(r)] for f, r in zip(staging["source_file"], staging["source_row"])])
    assert pd.factorize(found)[0].tolist() == pd.factorize(expected)[0].tolist()
