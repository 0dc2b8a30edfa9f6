"""Benchmark the context stage: N synthetic installations (default 450,000) enriched with
their country from Natural Earth's 1:10m admin-0 countries, then the curated tables.

    .venv/bin/python workflow/scripts/bench_context.py [--n 450000] [--baseline]

The synthetic set spreads installations over eighteen real regions, several on coasts
(some fall in the sea: offshore or unmatched) and on borders (Basel, Strasbourg, the
Rio Grande, the Pearl River delta), 65% small polygons (rooftops 4-40 m, a few farms up
to 800 m) and 35% points, plus a farm cut at the antimeridian (Chukotka). The enrichment
runs in a fresh child process so that its peak memory (ru_maxrss) is its own; the target
is under 20 s and 2 GB on 2 cores. ``--baseline`` also times geopandas' ``sjoin``
(intersects, the unsplit countries) on the same installations, which assigns no border
share and no offshore country.
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

from pvlake.dedup import M_PER_DEG

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import cpu_s  # noqa: E402

REGIONS = {  # name: (lon, lat, spread in degrees)
    "greensboro": (-79.79, 36.07, 1.0), "miami": (-80.19, 25.76, 0.8), "fresno": (-119.79, 36.74, 1.0),
    "london": (-0.12, 51.51, 1.5), "cornwall": (-5.05, 50.26, 1.0), "rajasthan": (72.0, 27.0, 3.0),
    "jiangsu": (119.5, 32.5, 2.0), "qinghai": (95.0, 36.5, 3.0), "bavaria": (11.5, 48.5, 1.5),
    "basel": (7.6, 47.6, 0.4), "strasbourg": (7.8, 48.6, 0.3), "netherlands": (5.0, 52.3, 1.0),
    "andalusia": (-5.0, 37.5, 1.5), "kanto": (139.7, 35.9, 1.0), "nsw": (151.0, -33.5, 1.5),
    "atacama": (-69.5, -23.5, 1.5), "rio_grande": (-106.4, 31.7, 0.5), "pearl_river": (113.9, 22.4, 0.4),
}


def synthetic_installations(n: int, seed: int = 11) -> gpd.GeoDataFrame:
    """Prepared-schema installations (the columns the context stage reads)."""
    from pvlake import geo

    rng = np.random.default_rng(seed)
    region = rng.integers(0, len(REGIONS), n)
    centres = np.array(list(REGIONS.values()))[region]
    lon = centres[:, 0] + rng.uniform(-1, 1, n) * centres[:, 2]
    lat = centres[:, 1] + rng.uniform(-1, 1, n) * centres[:, 2] * 0.6
    is_poly = rng.random(n) < 0.65
    size_m = np.where(rng.random(n) < 0.03, rng.uniform(100, 800, n), rng.uniform(4, 40, n))
    k = size_m / 2 / M_PER_DEG
    boxes = shapely.box(lon - k / np.cos(np.radians(lat)), lat - k, lon + k / np.cos(np.radians(lat)), lat + k)
    geoms = np.where(is_poly, boxes, shapely.points(lon, lat))
    geoms[0] = shapely.MultiPolygon([shapely.box(179.99, 66.30, 180.0, 66.31), shapely.box(-180.0, 66.30, -179.99, 66.31)])
    c_lon, c_lat = geo.centroid_lonlat(geoms)
    datasets = np.array(["a", "b", "c", "d"])[rng.integers(0, 4, n)]
    return gpd.GeoDataFrame({
        "pv_id": [f"{i:016x}" for i in range(n)],
        "dataset": datasets,
        "geom_type": shapely.get_type_id(geoms).astype(str),
        "area_m2": np.where(is_poly, size_m**2, np.nan),
        "centroid_lon": c_lon, "centroid_lat": c_lat,
        "capacity_mw": np.where(rng.random(n) < 0.2, rng.uniform(0.005, 50, n), np.nan),
        "n_datasets": np.where(rng.random(n) < 0.1, 2, 1),
        "source_datasets": [[d] for d in datasets],
    }, geometry=geoms, crs="EPSG:4326").assign(
        geom_type=lambda g: g.geom_type)


def run_child(method: str, path: Path) -> dict:
    from pvlake import context as cx

    installations = gpd.read_parquet(path)
    start, cpu0 = time.perf_counter(), cpu_s()
    if method == "pvlake":
        boundaries, source = cx.read_natural_earth()
        enriched = cx.enrich(installations, boundaries, source, progress=False)
        enrich_s = time.perf_counter() - start
        cx.country_stats(enriched, boundaries)
        cx.country_dataset_stats(enriched)
        cx.h3_stats(enriched, 3)
        matches = {k: int(v) for k, v in enriched["boundary_match"].value_counts().items()}
        countries = int(enriched["country_name"].nunique())
    else:
        boundaries, _ = cx.read_natural_earth()
        joined = gpd.sjoin(installations[["pv_id", "geometry"]], boundaries[["country_name", "geometry"]],
                           predicate="intersects", how="left")
        enrich_s = time.perf_counter() - start
        matches = {"matched": int(joined["country_name"].notna().sum())}
        countries = int(joined["country_name"].nunique())
    wall = time.perf_counter() - start
    return {"enrich_s": enrich_s, "wall_s": wall, "cpu_s": cpu_s() - cpu0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "matches": matches, "countries": countries}




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=450_000)
    parser.add_argument("--baseline", action="store_true", help="also time geopandas sjoin")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child[0], Path(args.child[1]))))
        return
    t = time.perf_counter()
    installations = synthetic_installations(args.n)
    print(f"generated {len(installations):,} installations in {len(REGIONS)} regions "
          f"({(installations.geom_type != 'Point').mean():.0%} polygons) in {time.perf_counter() - t:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "installations.parquet"
        installations.to_parquet(path)
        for method in ["pvlake"] + (["geopandas"] if args.baseline else []):
            out = subprocess.run([sys.executable, __file__, "--child", method, str(path)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = "enrich" if method == "pvlake" else "sjoin"
            print(f"{method:>9}: {label} {r['enrich_s']:6.1f} s, with curated tables {r['wall_s']:6.1f} s wall, "
                  f"{r['cpu_s']:6.1f} s CPU, peak {r['peak_rss_mb']:,.0f} MB; {r['countries']} countries, "
                  f"matches {r['matches']}")
    print(f"target: 450k in < 20 s and < 2048 MB on 2 cores; load average during the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
