"""Benchmark the dedup stage on N synthetic installations (default 450,000) with a
realistic duplicate rate (~15%), against a straightforward geopandas approach (sjoin +
overlay in a local UTM projection), and check both give identical clusters.

    .venv/bin/python workflow/scripts/bench_dedup.py [--n 450000] [--skip-baseline]
        [--h3-resolution 10] [--flood 0]

The synthetic set: unique sites in eight real regions (65% polygons - rooftops 4-40 m and
a few farms up to 800 m - and 35% points), then duplicates making up ~15% of all records:
shifted polygon copies, exact copies, points inside polygons and points 3-40 m from points,
spread over four datasets. ``--flood K`` adds K records at one identical point (a
postcode-centroid artefact). Each method runs in a fresh child process so that its peak
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
import pandas as pd
import pyproj
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pvlake.dedup import M_PER_DEG

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import cpu_s  # noqa: E402

REGIONS = {  # name: (lon, lat, spread in degrees)
    "greensboro": (-79.79, 36.07, 1.0), "miami": (-80.19, 25.76, 0.8), "fresno": (-119.79, 36.74, 1.0),
    "london": (-0.12, 51.51, 1.5), "cornwall": (-5.05, 50.26, 1.0), "rajasthan": (72.0, 27.0, 3.0),
    "jiangsu": (119.5, 32.5, 2.0), "qinghai": (95.0, 36.5, 3.0),
}
DUPLICATE_SHARE = 0.15


def _rects(rng, lon, lat, size_m, aspect, theta) -> np.ndarray:
    k = 1 / (M_PER_DEG * np.cos(np.radians(lat)))
    hw, hh = size_m / 2, size_m * aspect / 2
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], float)
    dx, dy = corners[None, :, 0] * hw[:, None], corners[None, :, 1] * hh[:, None]
    x = lon[:, None] + (dx * np.cos(theta)[:, None] - dy * np.sin(theta)[:, None]) * k[:, None]
    y = lat[:, None] + (dx * np.sin(theta)[:, None] + dy * np.cos(theta)[:, None]) / M_PER_DEG
    return shapely.polygons(np.stack([x, y], axis=-1))


def synthetic_staging(n: int, seed: int = 7) -> gpd.GeoDataFrame:
    """Staging-schema records with planted duplicates (about ``DUPLICATE_SHARE`` of n)."""
    from pvlake import geo
    from pvlake.harmonize import SCHEMA

    rng = np.random.default_rng(seed)
    n_dup = int(n * DUPLICATE_SHARE)
    n_base = n - n_dup
    region = rng.integers(0, len(REGIONS), n_base)
    centres = np.array(list(REGIONS.values()))[region]
    lon = centres[:, 0] + rng.uniform(-1, 1, n_base) * centres[:, 2]
    lat = centres[:, 1] + rng.uniform(-1, 1, n_base) * centres[:, 2] * 0.6
    is_poly = rng.random(n_base) < 0.65
    size_m = np.where(rng.random(n_base) < 0.03, rng.uniform(100, 800, n_base), rng.uniform(4, 40, n_base))
    theta = rng.uniform(0, np.pi, n_base)
    aspect = rng.uniform(0.5, 1.0, n_base)
    geoms = np.where(is_poly, _rects(rng, lon, lat, size_m, aspect, theta), shapely.points(lon, lat))

    kind = rng.choice(4, n_dup, p=[0.30, 0.20, 0.25, 0.25])
    polys, points = np.flatnonzero(is_poly), np.flatnonzero(~is_poly)
    src = np.where(kind <= 2, rng.choice(polys, n_dup), rng.choice(points, n_dup))
    shift = rng.uniform(0.05, 0.3, n_dup) * size_m[src]  # overlap ratio 0.7-0.95
    k = 1 / (M_PER_DEG * np.cos(np.radians(lat[src])))
    shifted = _rects(rng, lon[src] + shift * k, lat[src], size_m[src], aspect[src], theta[src])
    inside = shapely.points(lon[src], lat[src])  # a polygon's centre lies inside it
    bearing = rng.uniform(0, 2 * np.pi, n_dup)
    dist = rng.uniform(3, 40, n_dup)
    near = shapely.points(lon[src] + dist * np.cos(bearing) * k, lat[src] + dist * np.sin(bearing) / M_PER_DEG)
    dup = np.select([kind == 0, kind == 1, kind == 2], [shifted, geoms[src], inside], near)

    geoms = np.concatenate([geoms, dup])
    cx, cy = geo.centroid_lonlat(geoms)
    n_all = len(geoms)
    frame = pd.DataFrame({
        "pv_id": [f"{i:016x}" for i in rng.permutation(n_all)],
        "dataset": np.array(["alpha", "beta", "gamma", "delta"])[rng.integers(0, 4, n_all)],
        "source_id": None,
        "geom_type": shapely.get_type_id(geoms),
        "area_m2": np.nan, "centroid_lon": cx, "centroid_lat": cy, "h3_cell": None,
        "capacity_mw": np.nan, "install_year": None, "source_area_m2": np.nan, "attributes": None,
        "source_file": "synthetic", "source_row": np.arange(n_all),
    })
    frame["geom_type"] = frame["geom_type"].map({0: "Point", 3: "Polygon"})
    return gpd.GeoDataFrame(frame.astype(SCHEMA), geometry=geoms, crs=4326)


def baseline_pairs(staging: gpd.GeoDataFrame, params) -> tuple[np.ndarray, np.ndarray]:
    """Duplicate pairs the straightforward geopandas way, region by region in UTM."""
    left, right = [], []
    keys = pd.DataFrame({"k": staging.geometry.normalize().to_wkb()})
    for members in keys.groupby("k").groups.values():
        if len(members) > 1:
            m = np.asarray(members)
            left.append(np.repeat(m[0], len(m) - 1))
            right.append(m[1:])
    region = np.argmin(
        [(staging["centroid_lon"] - x) ** 2 + (staging["centroid_lat"] - y) ** 2 for x, y, _ in REGIONS.values()],
        axis=0,
    )
    for r in np.unique(region):
        part = staging[region == r]
        part = part.to_crs(part.estimate_utm_crs())
        part["idx"] = part.index
        polys = part[part["geom_type"] != "Point"][["idx", "geometry"]]
        pts = part[part["geom_type"] == "Point"][["idx", "geometry"]]
        polys = polys.assign(area=polys.area)
        inter = gpd.overlay(polys, polys, how="intersection", keep_geom_type=True)
        inter = inter[inter["idx_1"] < inter["idx_2"]]
        ok = inter.area >= params.overlap_threshold * np.minimum(inter["area_1"], inter["area_2"])
        left.append(inter["idx_1"][ok].to_numpy())
        right.append(inter["idx_2"][ok].to_numpy())
        # distances are decided geodesically, as the rules define them; UTM only
        # finds candidates (its scale error would flip pairs at exactly the threshold)
        near_poly = gpd.sjoin(pts, polys.assign(geometry=polys.buffer(params.point_buffer_m * 1.01)),
                              predicate="within")
        a, b = near_poly["idx_left"].to_numpy(), near_poly["idx_right"].to_numpy()
        ok = _geodesic_gap_m(part.geometry, a, b, part.crs) <= params.point_buffer_m
        left.append(a[ok])
        right.append(b[ok])
        circles = pts.assign(geometry=pts.buffer(params.point_merge_m * 1.01))
        pp = gpd.sjoin(circles, pts, predicate="intersects")
        pp = pp[pp["idx_left"] < pp["idx_right"]]
        a, b = pp["idx_left"].to_numpy(), pp["idx_right"].to_numpy()
        ok = _geodesic_gap_m(part.geometry, a, b, part.crs) < params.point_merge_m
        left.append(a[ok])
        right.append(b[ok])
    return np.concatenate(left), np.concatenate(right)


def _geodesic_gap_m(projected: gpd.GeoSeries, a: np.ndarray, b: np.ndarray, crs) -> np.ndarray:
    """Geodesic distance between the nearest points of geometries a and b: the nearest
    points are found in the (conformal, locally metric) UTM frame, then measured on the
    ellipsoid, as the rules define distances."""
    ends = shapely.get_coordinates(shapely.shortest_line(projected.loc[a].to_numpy(), projected.loc[b].to_numpy()))
    lon, lat = pyproj.Transformer.from_crs(crs, 4326, always_xy=True).transform(ends[:, 0], ends[:, 1])
    return pyproj.Geod(ellps="WGS84").inv(lon[0::2], lat[0::2], lon[1::2], lat[1::2])[2]


def labels_from_pairs(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return pd.factorize(connected_components(graph, directed=False)[1])[0]


def with_flood(staging: gpd.GeoDataFrame, k: int) -> gpd.GeoDataFrame:
    """``staging`` plus k records of a fifth dataset at one identical point."""
    if not k:
        return staging
    first = staging.iloc[[0]]
    lon, lat = REGIONS["london"][:2]
    flood = first.loc[first.index.repeat(k)].reset_index(drop=True).assign(
        dataset="flood", geom_type="Point", area_m2=np.nan, centroid_lon=lon, centroid_lat=lat,
        source_row=np.arange(k), pv_id=[f"flood{i:08d}" for i in range(k)],
    )
    flood = flood.set_geometry(gpd.GeoSeries(shapely.points(np.full(k, lon), np.full(k, lat)), crs=staging.crs))
    return gpd.GeoDataFrame(pd.concat([staging, flood], ignore_index=True), geometry="geometry", crs=staging.crs)


def run_method(method: str, staging_path: Path, h3_resolution: int) -> dict:
    """Run one method on the stored staging set; return time, memory and cluster labels."""
    from pvlake.dedup import DedupParams, dedup

    staging = gpd.read_parquet(staging_path)
    params = DedupParams(h3_resolution=h3_resolution)
    start, cpu0 = time.perf_counter(), cpu_s()
    if method == "pvlake":
        prepared, _, labels = dedup(staging, {}, params)
    else:
        labels = labels_from_pairs(len(staging), *baseline_pairs(staging, params))
    wall = time.perf_counter() - start
    np.save(staging_path.with_suffix(f".{method}.npy"), labels)
    return {"wall_s": wall, "cpu_s": cpu_s() - cpu0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "installations": int(labels.max() + 1)}




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=450_000)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--h3-resolution", type=int, default=10, help="dedup.h3_resolution")
    parser.add_argument("--flood", type=int, default=0, help="records added at one identical point")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "STAGING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_method(args.child[0], Path(args.child[1]), args.h3_resolution)))
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench_dedup_"))
    t = time.perf_counter()
    staging = with_flood(synthetic_staging(args.n), args.flood)
    path = workdir / "staging.parquet"
    staging.to_parquet(path)
    print(f"generated {len(staging):,} records ({DUPLICATE_SHARE:.0%} planted duplicates, "
          f"{args.flood:,} at one identical point) in {time.perf_counter() - t:.1f} s; "
          f"dedup.h3_resolution {args.h3_resolution}")
    results = {}
    for method in ["pvlake"] + ([] if args.skip_baseline else ["geopandas"]):
        out = subprocess.run([sys.executable, __file__, "--child", method, str(path),
                              "--h3-resolution", str(args.h3_resolution)],
                             check=True, capture_output=True, text=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[method]
        print(f"{method:>9}: {r['wall_s']:7.1f} s wall, {r['cpu_s']:7.1f} s CPU, peak {r['peak_rss_mb']:,.0f} MB, "
              f"{r['installations']:,} installations")
    if "geopandas" in results:
        ours = np.load(path.with_suffix(".pvlake.npy"))
        theirs = np.load(path.with_suffix(".geopandas.npy"))
        same = bool(np.array_equal(pd.factorize(ours)[0], pd.factorize(theirs)[0]))
        ratio = results["geopandas"]["wall_s"] / results["pvlake"]["wall_s"]
        cpu_ratio = results["geopandas"]["cpu_s"] / results["pvlake"]["cpu_s"]
        print(f"speed-up {ratio:.1f}x wall, {cpu_ratio:.1f}x CPU (target >= 10x); identical clusters: {same}")
    print(f"target: 450k in < 60 s and < 4096 MB; load average during the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
