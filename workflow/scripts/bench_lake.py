"""Benchmark the lake stage on N synthetic installations (default 450,000, the size of the
real global set) and print wall time and peak memory of three publishes: the first (every
layer written), an unchanged rerun (nothing written, no snapshot) and a rerun after one
dataset changed (only its staging table rewritten).

The label files come from ``bench_harmonize.generate`` (mixed GeoJSON, projected
GeoPackage, JSON points); harmonize writes the staging files and a prepared-like file
(the staging rows with n_sources, source_datasets, merged_ids) stands in for dedup.

    .venv/bin/python workflow/scripts/bench_lake.py [--n 450000] [--workdir DIR]

Every step runs in a fresh child process so that its peak memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prepare_inputs(workdir: Path, n: int) -> None:
    """Label files, staging files of every dataset and a prepared-like GeoParquet."""
    import geopandas as gpd
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_harmonize import generate
    from pvlake.harmonize import harmonize_dataset, write_staging
    from pvlake.io import write_geoparquet
    from pvlake.layout import Layout
    from pvlake.manifest import load_manifest

    layout = Layout(workdir / "data")
    frames = []
    for name, spec in load_manifest(generate(workdir, n)).items():
        staging, report = harmonize_dataset(spec, h3_resolution=12, progress=False)
        write_staging(staging, report, layout.staging_parquet(name), layout.staging_report(name))
        frames.append(staging)
    prepared = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:4326")
    prepared["n_sources"] = 1
    prepared["source_datasets"] = [[d] for d in prepared["dataset"]]
    prepared["merged_ids"] = [[i] for i in prepared["pv_id"]]
    write_geoparquet(prepared, layout.prepared_parquet())


def change_one_dataset(workdir: Path) -> None:
    """Drop 1,000 rows of one staging file, as a rerun of harmonize might."""
    import geopandas as gpd

    from pvlake.io import write_geoparquet
    from pvlake.layout import Layout

    path = Layout(workdir / "data").staging_parquet("bench_points")
    write_geoparquet(gpd.read_parquet(path).iloc[:-1000], path)


def publish(workdir: Path) -> dict:
    """One publish of every layer, as the lake rule runs it; timing and memory."""
    from pvlake import lake
    from pvlake.layout import Layout
    from pvlake.manifest import load_manifest

    start = time.perf_counter()
    layout = Layout(workdir / "data")
    specs = load_manifest(workdir / "manifest.json")
    result = lake.publish_pipeline(layout, lake.pipeline_tables(layout, list(specs.values()), progress=False),
                                   progress=False)
    return {
        "rows": sum(result["tables"].values()),
        "written": result["published"]["written"],
        "snapshot_id": result["published"]["snapshot_id"],
        "files": result["compaction"]["files_after"],
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def step(name: str, workdir: Path, n: int = 0) -> dict | None:
    """Run one step in a fresh child process (the parent stays small, so each child's
    peak memory is its own)."""
    child = subprocess.run([sys.executable, __file__, "--step", name, "--workdir", str(workdir), "--n", str(n)],
                           check=True, capture_output=True, text=True)
    lines = child.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


def report(label: str, r: dict) -> None:
    print(f"{label}: {len(r['written'])} table(s) written, snapshot {r['snapshot_id']}, "
          f"{r['rows']:,} rows in the lake, {r['files']['current']} data files; "
          f"{r['wall_s']:.1f} s wall, peak memory {r['peak_rss_mb']:,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=450_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--step", choices=["prepare", "change", "publish"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "prepare":
        prepare_inputs(args.workdir, args.n)
    elif args.step == "change":
        change_one_dataset(args.workdir)
    elif args.step == "publish":
        print(json.dumps(publish(args.workdir)))
    if args.step:
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_lake_"))
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    step("prepare", workdir, args.n)
    print(f"generated and harmonized {args.n:,} synthetic installations in {time.perf_counter() - t:.1f} s ({workdir})")
    report("first publish", step("publish", workdir))
    report("unchanged rerun", step("publish", workdir))
    step("change", workdir)
    report("rerun, one dataset changed", step("publish", workdir))


if __name__ == "__main__":
    main()
