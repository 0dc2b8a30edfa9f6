"""How the cost of harmonize + dedup grows with the number of records: 45,000, 450,000 and
4,500,000 synthetic records (the generators of bench_harmonize.py and bench_dedup.py),
each step in its own child process so that its peak memory (VmHWM) is its own.

    .venv/bin/python workflow/scripts/bench_scaling.py [--sizes 45000 450000 4500000]
        [--partitions 16] [--partition-resolution 5] [--skip-single-above N] [--workdir DIR]

- harmonize: the harmonize benchmark's label files (a mixed GeoJSON with 60% of the
  records, a projected GeoPackage with 25%, bare JSON points with 15%); "one process"
  harmonizes every dataset in one process, "per dataset" each in its own, as the workflow's
  jobs do (harmonize has no partitioning: its largest dataset sets its peak).
- dedup: the dedup benchmark's records with 15% planted duplicates in eight regions; above
  450,000 records, blocks of 450,000 with their own seeds (each block's four datasets its
  own), so records get denser in the same regions. "one process" is pvlake.dedup.dedup;
  "partitioned" is pvlake.partition's split, one process per partition (run one after
  another here: on a cluster they run side by side) and the merge. The partitioned
  prepared file is compared byte for byte with the one-process file.

Prints a table: wall and CPU time of the work (each process's start-up and imports, ~2-3 s,
excluded), peak memory of the largest process, and the growth exponent between
consecutive sizes (log time ratio / log size ratio; 1 is linear).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import cpu_s, peak_rss_mb  # noqa: E402

BLOCK = 450_000
"""Records generated at a time for the dedup set (the generator holds one block)."""


def _timed(step) -> dict:
    """The step's wall and CPU time (imports excluded: they are done before) and the
    process's peak memory."""
    start, cpu = time.perf_counter(), cpu_s()
    result = step() or {}
    return {**result, "wall_s": time.perf_counter() - start, "cpu_s": cpu_s() - cpu, "peak_rss_mb": peak_rss_mb()}


# -- child steps: each runs in a fresh process and prints its figures as JSON ------------


def child_harmonize(manifest: Path, out_dir: Path, datasets: list[str]) -> dict:
    from pvlake.harmonize import harmonize_dataset, write_staging
    from pvlake.manifest import load_manifest

    def run():
        specs = load_manifest(manifest)
        rows = 0
        for name in datasets or list(specs):
            staging, report = harmonize_dataset(specs[name], h3_resolution=12, progress=False)
            write_staging(staging, report, out_dir / f"{name}.parquet", out_dir / f"{name}.report.json")
            rows += len(staging)
        return {"rows": rows}

    return _timed(run)


def child_dedup_single(staging_dir: Path, out_dir: Path) -> dict:
    from pvlake import partition as pt

    paths = sorted(staging_dir.glob("*.parquet"))
    return _timed(lambda: {"installations": pt.run_dedup(paths, out_dir / "single.parquet", out_dir / "single.json")[
        "installations"]})


def _files(work_dir: Path, count: int):
    from pvlake import partition as pt
    from pvlake.layout import Layout

    return pt.PartitionFiles.in_layout(Layout(work_dir), count)


def child_dedup_split(staging_dir: Path, work_dir: Path, count: int, resolution: int) -> dict:
    from pvlake import dedup as dd
    from pvlake import partition as pt

    def run():
        report = pt.split(sorted(staging_dir.glob("*.parquet")), _files(work_dir, count), dd.DedupParams(),
                          pt.PartitionParams(count, resolution), progress=False)
        return {"halo": report["records_in_several_partitions"], "largest": max(report["records_per_partition"])}

    return _timed(run)


def child_dedup_partition(work_dir: Path, count: int, part: int) -> dict:
    from pvlake import dedup as dd
    from pvlake import partition as pt

    files = _files(work_dir, count)
    return _timed(lambda: {"records": pt.partition_pairs(files.parts[part], files.pairs[part], dd.DedupParams(),
                                                         part)["records"]})


def child_dedup_merge(staging_dir: Path, work_dir: Path, count: int, out_dir: Path) -> dict:
    from pvlake import partition as pt

    def run():
        report, _ = pt.merge(sorted(staging_dir.glob("*.parquet")), _files(work_dir, count),
                             out_dir / "partitioned.parquet", out_dir / "partitioned.json", progress=False)
        return {"installations": report["installations"]}

    return _timed(run)


CHILDREN = {
    "harmonize": lambda a: child_harmonize(Path(a[0]), Path(a[1]), a[2:]),
    "dedup-single": lambda a: child_dedup_single(Path(a[0]), Path(a[1])),
    "dedup-split": lambda a: child_dedup_split(Path(a[0]), Path(a[1]), int(a[2]), int(a[3])),
    "dedup-partition": lambda a: child_dedup_partition(Path(a[0]), int(a[1]), int(a[2])),
    "dedup-merge": lambda a: child_dedup_merge(Path(a[0]), Path(a[1]), int(a[2]), Path(a[3])),
}


def in_child(step: str, *args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", step, *map(str, args)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{step} failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- inputs ----------------------------------------------------------------------------


def dedup_staging(n: int, folder: Path) -> int:
    """The dedup benchmark's records, written as staging files, a block at a time."""
    import geopandas as gpd
    from bench_dedup import synthetic_staging

    from pvlake.io import write_geoparquet

    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for block, start in enumerate(range(0, n, BLOCK)):
        staging = synthetic_staging(min(BLOCK, n - start), seed=7 + block)
        staging["pv_id"] = [f"{block:02x}{i[2:]}" for i in staging["pv_id"]]  # unique across blocks
        for name, rows in staging.groupby("dataset", sort=True):
            dataset = f"{name}_{block:02d}" if n > BLOCK else name
            rows = rows.assign(dataset=dataset).reset_index(drop=True)
            write_geoparquet(gpd.GeoDataFrame(rows, geometry="geometry", crs=4326), folder / f"{dataset}.parquet")
        written += len(staging)
        del staging
    return written


# -- the benchmark ---------------------------------------------------------------------


def run_size(n: int, workdir: Path, partitions: int, resolution: int, single: bool) -> dict:
    from bench_harmonize import generate

    from pvlake.manifest import load_manifest

    out: dict = {"n": n}
    labels = workdir / f"labels_{n}"
    labels.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    manifest = generate(labels, n)
    print(f"  {n:,}: label files generated in {time.perf_counter() - t:.0f} s", flush=True)
    (labels / "staging").mkdir(exist_ok=True)
    out["harmonize_one"] = in_child("harmonize", manifest, labels / "staging")
    per_dataset = [in_child("harmonize", manifest, labels / "staging", name) for name in load_manifest(manifest)]
    out["harmonize_jobs"] = {
        "wall_s": sum(r["wall_s"] for r in per_dataset), "cpu_s": sum(r["cpu_s"] for r in per_dataset),
        "critical_s": max(r["wall_s"] for r in per_dataset), "peak_rss_mb": max(r["peak_rss_mb"] for r in per_dataset),
    }
    shutil.rmtree(labels)

    staging = workdir / f"staging_{n}"
    t = time.perf_counter()
    records = dedup_staging(n, staging)
    print(f"  {n:,}: {records:,} dedup records generated in {time.perf_counter() - t:.0f} s", flush=True)
    results = workdir / f"out_{n}"
    results.mkdir(exist_ok=True)
    if single:
        out["dedup_one"] = in_child("dedup-single", staging, results)
    work = workdir / f"work_{n}"
    split = in_child("dedup-split", staging, work, partitions, resolution)
    parts = [in_child("dedup-partition", work, partitions, p) for p in range(partitions)]
    merge = in_child("dedup-merge", staging, work, partitions, results)
    steps = [split, *parts, merge]
    out["dedup_partitioned"] = {
        "wall_s": sum(s["wall_s"] for s in steps), "cpu_s": sum(s["cpu_s"] for s in steps),
        "critical_s": split["wall_s"] + max(p["wall_s"] for p in parts) + merge["wall_s"],
        "peak_rss_mb": max(s["peak_rss_mb"] for s in steps),
        "peaks_mb": {"split": split["peak_rss_mb"], "partition": max(p["peak_rss_mb"] for p in parts),
                     "merge": merge["peak_rss_mb"]},
        "halo": split["halo"], "largest_partition": split["largest"],
    }
    if single:
        out["identical"] = filecmp.cmp(results / "single.parquet", results / "partitioned.parquet", shallow=False)
    shutil.rmtree(staging)
    shutil.rmtree(work)
    shutil.rmtree(results)
    return out


def exponent(a: dict, b: dict, key: str) -> float:
    return math.log(b[key] / a[key]) / math.log(b["n"] / a["n"])


def print_table(runs: list[dict]) -> None:
    methods = [("harmonize_one", "harmonize, one process"), ("harmonize_jobs", "harmonize, one process per dataset"),
               ("dedup_one", "dedup, one process"), ("dedup_partitioned", "dedup, partitioned")]
    print("\n| step | records | wall s | CPU s | peak MB (largest process) | growth exponent (wall / CPU) |")
    print("|---|---|---|---|---|---|")
    for key, label in methods:
        previous = None
        for run in runs:
            if key not in run:
                continue
            r = {**run[key], "n": run["n"]}
            growth = f"{exponent(previous, r, 'wall_s'):.2f} / {exponent(previous, r, 'cpu_s'):.2f}" if previous else ""
            extra = f" (critical path {r['critical_s']:.1f} s)" if "critical_s" in r else ""
            print(f"| {label} | {r['n']:,} | {r['wall_s']:.1f}{extra} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:,.0f} | {growth} |")
            previous = r
    for run in runs:
        p = run["dedup_partitioned"]
        print(f"- {run['n']:,}: partitions' peaks split {p['peaks_mb']['split']:,.0f} / partition "
              f"{p['peaks_mb']['partition']:,.0f} / merge {p['peaks_mb']['merge']:,.0f} MB; largest partition "
              f"{p['largest_partition']:,} records; {p['halo']:,} records in more than one partition"
              + (f"; partitioned file identical to one process: {run['identical']}" if "identical" in run else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[45_000, 450_000, 4_500_000])
    parser.add_argument("--partitions", type=int, default=16, help="dedup.partitions")
    parser.add_argument("--partition-resolution", type=int, default=5, help="dedup.partition_resolution")
    parser.add_argument("--skip-single-above", type=int, default=None,
                        help="run one-process dedup only up to this many records")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](args.child[1:])))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    print(f"harmonize + dedup at {', '.join(f'{n:,}' for n in args.sizes)} records; dedup.partitions "
          f"{args.partitions}, partition_resolution {args.partition_resolution}; {os.cpu_count()} CPUs; {workdir}")
    runs = []
    for n in args.sizes:
        single = args.skip_single_above is None or n <= args.skip_single_above
        runs.append(run_size(n, workdir, args.partitions, args.partition_resolution, single))
        print(f"  {n:,}: {json.dumps(runs[-1])}", flush=True)
    print_table(runs)
    print(f"targets: growth exponent <= 1.1; peak memory per process < 4096 MB at 4,500,000 partitioned; "
          f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
