"""Benchmark the STAC search stage: a synthetic static catalogue of 20,000 Sentinel-2-like
items searched for 100,000 installations, grouped by H3 cell, against one search per
installation.

    .venv/bin/python workflow/scripts/bench_stac.py [--items 20000] [--n 100000]
        [--h3-resolution 4] [--skip-baseline]

The catalogue: MGRS-like 109.8 km tiles (pvlake.sample_stac) over eight real regions,
dates spread over 2023-2024 with uniform cloud cover, one JSON file per item as a static
catalogue stores them (catalog.json -> collection.json -> items). The installations:
rooftop and farm rectangles (10-400 m) and points, scattered around the regions' centres.
The timed run is the whole stage (walk the catalogue, group, search, match, select, write
the four outputs) in a fresh child process, so its peak memory (ru_maxrss) is its own.
The baseline runs the same code with every installation in a group of its own (H3
resolution 15 cells are ~1 m²): one search per installation.
"""

from __future__ import annotations

import argparse
import datetime as dt
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

REGIONS = {  # name: (lon, lat, spread in degrees)
    "greensboro": (-79.79, 36.07, 1.0), "miami": (-80.19, 25.76, 0.8), "fresno": (-119.79, 36.74, 1.0),
    "london": (-0.12, 51.51, 1.5), "cornwall": (-5.05, 50.26, 1.0), "rajasthan": (72.0, 27.0, 3.0),
    "jiangsu": (119.5, 32.5, 2.0), "qinghai": (95.0, 36.5, 3.0),
}
M_PER_DEG = 111_320.0


def synthetic_installations(n: int, rng: np.random.Generator) -> gpd.GeoDataFrame:
    """``n`` installations around the regions: 70 % rectangles 10-400 m, 30 % points."""
    names = list(REGIONS)
    region = rng.integers(0, len(names), n)
    centre = np.array([REGIONS[names[r]] for r in region])
    lon = centre[:, 0] + rng.normal(0, 1, n) * centre[:, 2] / 2
    lat = centre[:, 1] + rng.normal(0, 1, n) * centre[:, 2] / 3
    size_m = np.where(rng.random(n) < 0.9, rng.uniform(10, 40, n), rng.uniform(100, 400, n))
    half_lon = size_m / 2 / (M_PER_DEG * np.cos(np.radians(lat)))
    half_lat = size_m / 2 / M_PER_DEG
    polygons = shapely.box(lon - half_lon, lat - half_lat, lon + half_lon, lat + half_lat)
    points = shapely.points(lon, lat)
    geometry = np.where(rng.random(n) < 0.7, polygons, points)
    frame = gpd.GeoDataFrame({"pv_id": [f"{i:012x}" for i in range(n)]}, geometry=geometry, crs="EPSG:4326")
    frame["centroid_lon"], frame["centroid_lat"] = lon, lat
    return frame


def synthetic_catalogue(folder: Path, installations: gpd.GeoDataFrame, n_items: int, rng: np.random.Generator) -> int:
    """Write a static catalogue of ``n_items`` items on the tiles over the installations."""
    from pvlake.sample_stac import COLLECTION, Tile, make_item, tiles_over

    keys = set()
    sample = installations.sample(min(len(installations), 5000), random_state=1)
    for lon, lat in zip(sample["centroid_lon"], sample["centroid_lat"]):
        keys.update(tiles_over(float(lon), float(lat)))
    tiles = [Tile(*k) for k in sorted(keys)]
    per_tile = -(-n_items // len(tiles))
    start = dt.datetime(2023, 1, 1, 10, 30, tzinfo=dt.timezone.utc)
    links = []
    (folder / COLLECTION).mkdir(parents=True, exist_ok=True)
    count = 0
    for t, tile in enumerate(tiles):
        days = np.sort(rng.choice(730, size=per_tile, replace=False))
        for d in days:
            if count == n_items:
                break
            item = make_item(tile, start + dt.timedelta(days=int(d)), rng.uniform(0, 100),
                             "sentinel-2a" if d % 2 else "sentinel-2b", tile.footprint)
            item_dir = folder / COLLECTION / item.id
            item_dir.mkdir(exist_ok=True)
            doc = item.to_dict(include_self_link=False, transform_hrefs=False)
            doc["links"] = [{"rel": "collection", "href": "../collection.json"}, {"rel": "parent", "href": "../collection.json"},
                            {"rel": "root", "href": "../../catalog.json"}]
            (item_dir / f"{item.id}.json").write_text(json.dumps(doc, separators=(",", ":")))
            links.append({"rel": "item", "href": f"./{item.id}/{item.id}.json", "type": "application/geo+json"})
            count += 1
    collection = {
        "type": "Collection", "stac_version": "1.1.0", "id": COLLECTION, "description": "synthetic", "license": "other",
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [["2023-01-01T00:00:00Z", None]]}},
        "links": [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}] + links,
    }
    (folder / COLLECTION / "collection.json").write_text(json.dumps(collection))
    catalog = {"type": "Catalog", "stac_version": "1.1.0", "id": "bench", "description": "synthetic",
               "links": [{"rel": "root", "href": "./catalog.json"}, {"rel": "child", "href": f"./{COLLECTION}/collection.json"}]}
    (folder / "catalog.json").write_text(json.dumps(catalog))
    return count


def run_child(folder: Path, h3_resolution: int) -> dict:
    """The timed stage run (in the child process)."""
    from pvlake import stac
    from pvlake.layout import Layout

    layout = Layout(folder / f"out-{h3_resolution}")
    settings = stac.StageSettings(h3_resolution=h3_resolution)
    cpu0 = sum(os.times()[:2])
    t0 = time.perf_counter()
    report = stac.run_stage(folder / "pv_installations.parquet", folder / "manifest.json", layout, settings,
                            progress=False)
    return {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": sum(os.times()[:2]) - cpu0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "searches": report["searches"],
        "groups": report["catalogs"]["bench"]["groups"],
        "items_found": report["items"],
        "matches": report["matches"],
        "with_scenes": report["with_scenes"],
        "skipped": report["skipped"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--h3-resolution", type=int, default=4)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(Path(args.child[0]), int(args.child[1]))))
        return
    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory(prefix="bench-stac-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        installations = synthetic_installations(args.n, rng)
        installations.to_parquet(folder / "pv_installations.parquet")
        n_items = synthetic_catalogue(folder / "catalogue", installations, args.items, rng)
        manifest = {"bench": {
            "catalog_type": "static", "catalog_uri": "catalogue/catalog.json", "include_collections": ["sentinel-2-l2a"],
            "search_parameters": {"max_cloud_cover": 30, "date_range": "2023-01-01/2024-12-31",
                                  "buffer_meters": 500, "max_items_per_location": 3},
            "cql_filter": "eo:cloud_cover < 30", "priority": 1, "skip": False,
        }}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        print(f"synthetic set: {args.n:,} installations, static catalogue of {n_items:,} items "
              f"(written in {time.perf_counter() - t0:.0f} s, not timed)")
        runs = {"grouped": args.h3_resolution} | ({} if args.skip_baseline else {"one search per installation": 15})
        results = {}
        for name, res in runs.items():
            out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(res)],
                                 capture_output=True, text=True, check=True)
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[name]
            print(f"{name} (H3 res {res}): wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, "
                  f"peak {r['peak_rss_mb']:,.0f} MB, searches {r['searches']:,} ({r['groups']:,} groups), "
                  f"items found {r['items_found']:,}, matches {r['matches']:,}, "
                  f"installations with scenes {r['with_scenes']:,}, skipped {r['skipped']}")
        grouped = results["grouped"]
        print(f"searches: {grouped['searches']:,} for {args.n:,} installations "
              f"= {args.n / grouped['searches']:.0f}x fewer than one search per installation")
        if "one search per installation" in results:
            base = results["one search per installation"]
            same = (base["matches"], base["with_scenes"]) == (grouped["matches"], grouped["with_scenes"])
            print(f"speed-up against one search per installation: {base['wall_s'] / grouped['wall_s']:.1f}x wall time, "
                  f"{base['searches'] / grouped['searches']:.0f}x fewer searches; same selection: {same}")
        print(f"target: < 60 s, < 2048 MB, >= 20x fewer searches; load average during the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
