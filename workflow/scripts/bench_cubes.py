"""Benchmark of the cubes stage's chip loading: 1,000 chips (4 bands, 2 dates) from local COGs.

Writes two Sentinel-2-like scenes (one COG per band, 1024-pixel blocks, DEFLATE, as Sentinel-2
L2A COGs are) over a 61 km square, picks 1,000 random 256 x 256 chips on the 10 m grid, and
loads them

1. with the stage's loader (:func:`pvlake.cubes.load_chips`: odc-stac, one lazy load per group
   of chips, Dask threads on every core), and
2. with plain rasterio windowed reads of the same pixels (each file opened once, one thread),

each in a fresh child process (peak memory per method), after the files were read once (page
cache warm for both). Both must give identical pixels. Prints chips/s, peak memory and the
ratio of the stage's rate to rasterio's.

    python workflow/scripts/bench_cubes.py [--chips 1000] [--size-px 6144] [--loader odc]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

BANDS = ("blue", "green", "red", "nir")
EPSG = 32631
WEST, NORTH = 600_000.0, 5_700_000.0
RES = 10.0


def write_scenes(root: Path, size_px: int, seed: int = 0) -> list[dict]:
    """Two scenes x four bands of smooth fields with sensor noise (real imagery's entropy)."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    transform = Affine(RES, 0, WEST, 0, -RES, NORTH)
    coarse = rng.uniform(800, 3500, (len(BANDS), size_px // 64 + 1, size_px // 64 + 1))
    items = []
    for k, when in enumerate(("2024-05-02T10:30:00Z", "2024-07-21T10:30:00Z")):
        item_id = f"S2B_31UFT_{when[:10].replace('-', '')}_0_L2A"
        assets = {}
        for b, band in enumerate(BANDS):
            field = np.kron(coarse[b], np.ones((64, 64)))[:size_px, :size_px]
            data = (field * (1 + 0.1 * k) + rng.normal(0, 40, (size_px, size_px))).clip(1, 65535).astype(np.uint16)
            path = root / item_id / f"{band}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", driver="COG", width=size_px, height=size_px, count=1, dtype="uint16",
                               crs=f"EPSG:{EPSG}", transform=transform, nodata=0, blocksize=1024,
                               compress="deflate", predictor=2, overviews="none") as dst:
                dst.write(data, 1)
            assets[band] = {"href": str(path), "type": "image/tiff; application=geotiff; profile=cloud-optimized"}
        items.append({
            "type": "Feature", "stac_version": "1.1.0", "id": item_id, "collection": "sentinel-2-l2a",
            "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
            "geometry": None, "bbox": None, "links": [], "assets": assets,
            "properties": {"datetime": when, "proj:code": f"EPSG:{EPSG}", "proj:shape": [size_px, size_px],
                           "proj:transform": [RES, 0.0, WEST, 0.0, -RES, NORTH]},
        })
    from pyproj import Transformer
    import shapely

    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    square = shapely.box(WEST, NORTH - size_px * RES, WEST + size_px * RES, NORTH).segmentize(5000)
    footprint = shapely.transform(square, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    for it in items:
        it["geometry"] = shapely.geometry.mapping(footprint)
        it["bbox"] = list(footprint.bounds)
    return items


def chip_corners(n: int, size_px: int, chip_px: int, seed: int = 1) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(r), int(c)) for r, c in rng.integers(0, size_px - chip_px, (n, 2))]


def digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def run_stage_loader(items: list[dict], corners, chip_px: int, loader: str, workers: int) -> dict:
    import dask.array  # noqa: F401 - imports are not part of the timing (rasterio's neither)
    import odc.stac  # noqa: F401
    import stackstac  # noqa: F401

    from pvlake import cubes

    by_id = {it["id"]: it for it in items}
    days = tuple(it["properties"]["datetime"][:10] for it in items)
    chips = [cubes.Chip(f"{r}_{c}", EPSG, WEST + c * RES, NORTH - r * RES, chip_px, RES, (f"pv{k}",),
                        item_ids=tuple(by_id), days=days, day_items=tuple((i,) for i in by_id))
             for k, (r, c) in enumerate(corners)]
    settings = cubes.CubeSettings(chip_size_px=chip_px, loader=loader, workers=workers, batch_chips=250, chunk_px=1024)
    # warm-up outside the timing: the modules the first read imports (rasterio's: below)
    list(cubes.load_chips(cubes.group_chips(chips[:1], by_id, 1024), by_id, BANDS[:1], None, settings))
    started = time.perf_counter()
    groups = cubes.group_chips(chips, by_id, settings.chunk_px)
    loaded = {r.chip.chip_id: r.image for r in cubes.load_chips(groups, by_id, BANDS, None, settings)}
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "digest": digest(loaded[c.chip_id] for c in chips), "groups": len(groups)}


def run_rasterio(items: list[dict], corners, chip_px: int) -> dict:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(items[0]["assets"][BANDS[0]]["href"]) as src:  # warm-up, as for the stage
        src.read(1, window=Window(0, 0, chip_px, chip_px))
    started = time.perf_counter()
    files = [[rasterio.open(it["assets"][b]["href"]) for b in BANDS] for it in items]
    out = []
    for r, c in corners:
        window = Window(c, r, chip_px, chip_px)
        out.append(np.stack([np.stack([f.read(1, window=window) for f in bands]) for bands in files]))
    for bands in files:
        for f in bands:
            f.close()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "digest": digest(out)}


def child(method: str, queue, *args) -> None:
    result = (run_rasterio if method == "rasterio" else run_stage_loader)(*args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def measure(method: str, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(method, queue, *args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chips", type=int, default=1000)
    parser.add_argument("--chip-px", type=int, default=256)
    parser.add_argument("--size-px", type=int, default=6144)
    parser.add_argument("--loader", default="odc", choices=["odc", "stackstac"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each method; the best is reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_cubes_") as tmp:
        t0 = time.perf_counter()
        items = write_scenes(Path(tmp), args.size_px)
        for it in items:  # page cache warm for both methods
            for asset in it["assets"].values():
                Path(asset["href"]).read_bytes()
        setup_s = time.perf_counter() - t0
        corners = chip_corners(args.chips, args.size_px, args.chip_px)
        stage = [measure("stage", items, corners, args.chip_px, args.loader, args.workers) for _ in range(args.repeat)]
        plain = [measure("rasterio", items, corners, args.chip_px) for _ in range(args.repeat)]
        best_stage = min(stage, key=lambda r: r["seconds"])
        best_plain = min(plain, key=lambda r: r["seconds"])
        assert best_stage["digest"] == best_plain["digest"], "the two methods read different pixels"
        rate_stage = args.chips / best_stage["seconds"]
        rate_plain = args.chips / best_plain["seconds"]
        report = {
            "chips": args.chips, "bands": len(BANDS), "dates": 2, "chip_px": args.chip_px,
            "scene_px": args.size_px, "cog_block_px": 1024, "setup_s": round(setup_s, 1),
            "cpu_count": os.cpu_count(), "load_average": [round(v, 1) for v in os.getloadavg()],
            f"stage_{args.loader}_chips_per_s": round(rate_stage, 1),
            "stage_workers": args.workers, "stage_groups": best_stage["groups"],
            "stage_peak_rss_mb": round(best_stage["peak_rss_mb"]),
            "rasterio_chips_per_s": round(rate_plain, 1),
            "rasterio_peak_rss_mb": round(best_plain["peak_rss_mb"]),
            "ratio_stage_to_rasterio": round(rate_stage / rate_plain, 2),
            "identical_pixels": True,
            "runs_s": {"stage": [round(r["seconds"], 2) for r in stage], "rasterio": [round(r["seconds"], 2) for r in plain]},
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
