"""Benchmark the harmonize step on N synthetic installations (default 450,000, the size
of the real global set) and print wall time and peak memory.

The mix follows the real sources: about 60% rooftop/farm labels in a GeoJSON of mixed
Points, Polygons and MultiPolygons (like the UK set), 25% farm polygons in a GeoPackage in
a projected CRS (reprojected on read), 15% bare JSON ``[lon, lat]`` points (like
GloSoFarID); 0.5% of the polygons are invalid bow-ties to repair.

    .venv/bin/python workflow/scripts/bench_harmonize.py [--n 450000] [--workdir DIR]

Generation runs first; harmonize then runs in a fresh child process so that its peak
memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import cpu_s  # noqa: E402

SHARES = {"geojson": 0.60, "gpkg": 0.25, "json": 0.15}


def synthetic_polygons(rng: np.random.Generator, n: int, lon0: float, lat0: float, spread_deg: float) -> np.ndarray:
    """Rotated rectangles 5-400 m across scattered around (lon0, lat0)."""
    lon = lon0 + rng.uniform(-spread_deg, spread_deg, n)
    lat = lat0 + rng.uniform(-spread_deg, spread_deg, n)
    half_w = rng.lognormal(np.log(8), 1.0, n).clip(2.5, 400) / 111_320 / np.cos(np.radians(lat))
    half_h = half_w * rng.uniform(0.4, 1.0, n)
    theta = rng.uniform(0, np.pi, n)
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], dtype=float)
    dx = corners[None, :, 0] * half_w[:, None]
    dy = corners[None, :, 1] * half_h[:, None]
    x = lon[:, None] + dx * np.cos(theta)[:, None] - dy * np.sin(theta)[:, None]
    y = lat[:, None] + dx * np.sin(theta)[:, None] + dy * np.cos(theta)[:, None]
    return shapely.polygons(np.stack([x, y], axis=-1))


def generate(workdir: Path, n: int, seed: int = 1) -> Path:
    """Write the synthetic dataset files and a manifest; return the manifest path."""
    rng = np.random.default_rng(seed)
    counts = {k: int(round(n * v)) for k, v in SHARES.items()}
    counts["geojson"] += n - sum(counts.values())

    m = counts["geojson"]
    n_points = int(m * 0.35)
    polys = synthetic_polygons(rng, m - n_points, -1.5, 52.5, 2.5)
    n_multi = len(polys) // 10
    # two-part MultiPolygons: the second part 0.02° east, clear of the first
    shifted = shapely.transform(polys[:n_multi], lambda xy: xy + [0.02, 0.0])
    polys[:n_multi] = shapely.multipolygons(np.stack([polys[:n_multi], shifted], axis=1))
    n_bad = max(1, len(polys) // 200)
    bad = shapely.get_coordinates(polys[-n_bad:]).reshape(n_bad, 5, 2)[:, [0, 2, 1, 3, 0]]
    polys[-n_bad:] = shapely.polygons(bad)
    points = shapely.points(rng.uniform(-4, 1, n_points), rng.uniform(50, 55, n_points))
    uk = gpd.GeoDataFrame(
        {"osm_id": np.arange(m), "area_sqm": rng.uniform(10, 5000, m)},
        geometry=np.concatenate([points, polys]), crs=4326,
    )
    uk.to_file(workdir / "mixed.geojson", driver="GeoJSON")

    farms = gpd.GeoDataFrame(
        {"sol_id": np.arange(counts["gpkg"]), "power": rng.uniform(1, 300, counts["gpkg"])},
        geometry=synthetic_polygons(rng, counts["gpkg"], 10.0, 40.0, 20.0), crs=4326,
    ).to_crs("ESRI:54012")
    farms.to_file(workdir / "farms.gpkg", layer="solar")

    pts = np.column_stack([rng.uniform(-120, 140, counts["json"]), rng.uniform(-40, 60, counts["json"])])
    (workdir / "points.json").write_text(json.dumps(pts.round(7).tolist()))

    manifest = {
        "bench_mixed": {"repo": "local", "path": "mixed.geojson", "label_fmt": "geojson",
                        "keep_cols": ["osm_id", "area_sqm"], "id_col": "osm_id"},
        "bench_farms": {"repo": "local", "path": "farms.gpkg", "label_fmt": "gpkg",
                        "keep_cols": ["sol_id"], "columns": {"capacity_mw": {"col": "power", "unit": "MW"}}},
        "bench_points": {"repo": "local", "path": "points.json", "label_fmt": "json", "crs": "EPSG:4326"},
    }
    path = workdir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def harmonize_all(manifest_path: Path, out_dir: Path) -> dict:
    """Harmonize and write every dataset of the manifest; return timing and memory."""
    from pvlake.harmonize import harmonize_dataset, write_staging
    from pvlake.manifest import load_manifest

    start, cpu0 = time.perf_counter(), cpu_s()
    rows = 0
    for name, spec in load_manifest(manifest_path).items():
        staging, report = harmonize_dataset(spec, h3_resolution=12, progress=False)
        write_staging(staging, report, out_dir / f"{name}.parquet", out_dir / f"{name}.report.json")
        rows += len(staging)
    return {
        "rows": rows,
        "wall_s": time.perf_counter() - start,
        "cpu_s": cpu_s() - cpu0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=450_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(harmonize_all(args.child, args.child.parent / "staging")))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_harmonize_"))
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    manifest = generate(workdir, args.n)
    print(f"generated {args.n:,} synthetic installations in {time.perf_counter() - t:.1f} s ({workdir})")
    child = subprocess.run([sys.executable, __file__, "--child", str(manifest)], check=True,
                           capture_output=True, text=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"harmonize: {result['rows']:,} rows in {result['wall_s']:.1f} s wall ({result['cpu_s']:.1f} s CPU), "
          f"peak memory {result['peak_rss_mb']:,.0f} MB (target: 450k in < 60 s and < 4096 MB); "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
