"""Imagery of the embedded sample's STAC catalogue: sparse Sentinel-2-like COGs.

The sample catalogue (:mod:`pvlake.sample_stac`) describes 10,980 x 10,980 pixel tiles with
one cloud-optimised GeoTIFF per band, as Sentinel-2 L2A ships them. Rendering and keeping
whole tiles would take an hour and gigabytes; this module renders, deterministically, only
the 256 x 256 blocks the cubes stage reads: for each scene the STAC search selected, the
blocks under the chips :func:`pvlake.cubes.plan_chips` plans with the same settings. Other
blocks are not written (a *sparse* GeoTIFF: GDAL ``SPARSE_OK``), and read as nodata. A file
is rendered again only when what it depends on changed (a fingerprint kept next to it).

The synthetic world, the same whichever tile or date shows it:

- **ground**: parcels of about 100 m on a frame tied to longitude and latitude (so the
  tiles of two UTM zones that overlap show the same fields), each a land-cover class with a
  Sentinel-2-like surface reflectance spectrum and a brightness factor; vegetation follows
  the season of the acquisition date (hemisphere-aware);
- **PV**: every prepared installation (points as discs of :data:`POINT_RADIUS_M`) with a PV
  module spectrum (dark, bluish, flat in the near infrared), mixed into each pixel in
  proportion to the area it covers (4 x 4 supersampling); dark roofs and asphalt with a
  similar but reddish spectrum are the confusers;
- **clouds**: a smooth noise field per acquisition date (the same over overlapping tiles),
  thresholded so that the cloudy share of a scene equals its ``eo:cloud_cover``, with
  shadows offset from them; the ``scl`` band classifies every pixel as the Sentinel-2 L2A
  processor does (vegetation, not vegetated, water, cloud shadow, cloud medium/high
  probability, thin cirrus; 0 outside the scene's footprint).

Digital numbers follow the items' ``raster:bands``: reflectance = DN x 0.0001 - 0.1.

Run by the workflow (rule ``sample_imagery``)::

    python -m pvlake.sample_imagery DATA_DIR '{"<catalogue folder>": "<output folder>"}' REPORT.json
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer
from tqdm import tqdm

from .io import write_json

BLOCK_PX = 256
"""Block (internal tile) size of the COGs, pixels."""

GENERATOR_VERSION = 1
"""Part of every file's fingerprint: bump when the rendering changes."""

POINT_RADIUS_M = 20.0
"""A point installation is drawn as a disc of this radius (its true extent is unknown)."""

SUPERSAMPLE = 4
PARCEL_M = 100.0
CLOUD_SPACING_M = (2500.0, 700.0)
SHADOW_OFFSET_M = (-350.0, 250.0)

BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")

# name, SCL class, surface reflectance (blue, green, red, nir, swir16, swir22), share of parcels
CLASSES = (
    ("cropland", 4, (0.040, 0.075, 0.050, 0.380, 0.210, 0.110), 0.32),
    ("grassland", 4, (0.050, 0.085, 0.070, 0.290, 0.250, 0.150), 0.22),
    ("forest", 4, (0.025, 0.050, 0.030, 0.300, 0.150, 0.070), 0.10),
    ("bare_soil", 5, (0.110, 0.150, 0.190, 0.250, 0.330, 0.290), 0.14),
    ("built_up", 5, (0.100, 0.110, 0.120, 0.170, 0.200, 0.180), 0.10),
    ("dark_roof", 5, (0.068, 0.076, 0.088, 0.112, 0.128, 0.116), 0.08),
    ("water", 6, (0.060, 0.055, 0.035, 0.020, 0.010, 0.006), 0.04),
)
PV_REFLECTANCE = (0.092, 0.088, 0.078, 0.108, 0.146, 0.118)
CLOUD_REFLECTANCE = (0.55, 0.55, 0.56, 0.58, 0.42, 0.30)

_CLASS_REFL = np.array([c[2] for c in CLASSES], dtype=np.float32)  # (classes, bands)
_CLASS_SCL = np.array([c[1] for c in CLASSES], dtype=np.uint8)
_CLASS_EDGES = np.cumsum([c[3] for c in CLASSES]) / sum(c[3] for c in CLASSES)
_VEGETATION = _CLASS_SCL == 4


# ---------------------------------------------------------------- deterministic noise


def hash01(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) for each integer pair (a splitmix64-style mix):
    the same pair and salt always give the same number, on every machine."""
    with np.errstate(over="ignore"):
        x = (np.asarray(i, np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.asarray(j, np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
             ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
        x ^= x >> np.uint64(31)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def lattice(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """:func:`hash01` of integer lattice coordinates (float arrays of whole numbers),
    hashed once per distinct lattice point of their bounding range and gathered: the
    hash costs per lattice point, not per pixel."""
    i0, j0 = i.min(), j.min()
    ni, nj = int(i.max() - i0) + 1, int(j.max() - j0) + 1
    if ni * nj > 1 << 22:
        return hash01(i, j, salt)
    gi, gj = np.meshgrid(np.arange(ni) + i0, np.arange(nj) + j0, indexing="ij")
    return hash01(gi, gj, salt)[(i - i0).astype(np.intp), (j - j0).astype(np.intp)]


def value_noise(gx: np.ndarray, gy: np.ndarray, spacing_m: float, salt: int) -> np.ndarray:
    """Smooth noise in [0, 1]: lattice values every ``spacing_m`` blended with smoothstep."""
    u, v = gx / spacing_m, gy / spacing_m
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    ii = np.concatenate([i, i + 1, i, i + 1])
    jj = np.concatenate([j, j, j + 1, j + 1])
    a, b, c, d = np.split(lattice(ii, jj, salt), 4)
    return (a + (b - a) * fu) * (1 - fv) + (c + (d - c) * fu) * fv


def salt_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def global_xy(lon: np.ndarray, lat: np.ndarray, lat_ref: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Metres east and north on a frame tied to longitude and latitude: the ground's
    coordinates whatever UTM zone a tile uses (east scaled at the middle of the
    one-degree latitude band, so parcels stay square)."""
    lat_ref = np.floor(lat) + 0.5 if lat_ref is None else lat_ref
    return lon * 111_320.0 * np.cos(np.radians(lat_ref)), lat * 110_574.0


# ---------------------------------------------------------------- one tile's ground


class TileGround:
    """The ground under one tile's blocks: class, brightness, PV cover (scene-independent).

    Parameters
    ----------
    epsg : int
        The tile's CRS.
    transform : sequence of float
        The tile's ``proj:transform`` (GDAL order a, b, c, d, e, f).
    installations : tuple of (numpy.ndarray, numpy.ndarray)
        pv_ids and shapely geometries (lon/lat) of the installations near the tile.
    """

    def __init__(self, epsg: int, transform, installations: tuple[np.ndarray, np.ndarray]):
        self.epsg = int(epsg)
        self.transform = [float(v) for v in transform[:6]]
        self.to_lonlat = Transformer.from_crs(self.epsg, 4326, always_xy=True)
        pv_ids, geoms = installations
        to_tile = Transformer.from_crs(4326, self.epsg, always_xy=True)
        local = shapely.transform(np.asarray(geoms, dtype=object), lambda xy: np.column_stack(to_tile.transform(xy[:, 0], xy[:, 1])))
        points = shapely.get_type_id(local) == 0
        local[points] = shapely.buffer(local[points], POINT_RADIUS_M, quad_segs=8)
        self.pv_geoms = local
        # each installation's own brightness (module type, age, soiling)
        self.pv_factor = np.array([0.85 + 0.3 * float(hash01(0, 0, salt_of(p))) for p in pv_ids])
        self.tree = shapely.STRtree(local)

    def block_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.transform
        west, north = c + col * BLOCK_PX * a, f + row * BLOCK_PX * e
        return west, north + BLOCK_PX * e, west + BLOCK_PX * a, north

    def block(self, row: int, col: int, rect: tuple[int, int, int, int]) -> dict:
        """Class, brightness, PV fraction and PV brightness of the pixels ``rect``
        (row0, row1, col0, col1 within the block) of a block."""
        west, south, east, north = self.block_box(row, col)
        res = (east - west) / BLOCK_PX
        r0, r1, c0, c1 = rect
        # pixel centres -> lon/lat at three corners; the block is small enough for an
        # affine map to the ground frame (error below a metre)
        px = np.array([west + res / 2, east - res / 2, west + res / 2])
        py = np.array([north - res / 2, north - res / 2, south + res / 2])
        lon, lat = self.to_lonlat.transform(px, py)
        lat_ref = np.floor(lat.mean()) + 0.5
        gx, gy = global_xy(np.asarray(lon), np.asarray(lat), lat_ref)
        cols = np.arange(c0, c1, dtype=np.float64)[None, :] / (BLOCK_PX - 1)
        rows = np.arange(r0, r1, dtype=np.float64)[:, None] / (BLOCK_PX - 1)
        gxx = gx[0] + cols * (gx[1] - gx[0]) + rows * (gx[2] - gx[0])
        gyy = gy[0] + cols * (gy[1] - gy[0]) + rows * (gy[2] - gy[0])
        # parcels: rows of fields, each row shifted by its own offset (no checkerboard)
        prow = np.floor(gyy / PARCEL_M)
        pcol = np.floor(gxx / PARCEL_M + lattice(prow, np.zeros_like(prow), 7))
        draw = lattice(pcol, prow, 11)
        cls = np.searchsorted(_CLASS_EDGES, draw, side="right").clip(0, len(CLASSES) - 1).astype(np.uint8)
        bright = (0.85 + 0.3 * lattice(pcol, prow, 13)).astype(np.float32)
        shape = (r1 - r0, c1 - c0)
        pv_frac = np.zeros(shape, np.float32)
        pv_fac = np.ones(shape, np.float32)
        rw, rn = west + c0 * res, north - r0 * res
        hits = self.tree.query(shapely.box(rw, north - r1 * res, west + c1 * res, rn), predicate="intersects")
        if len(hits):
            from affine import Affine
            from rasterio.features import rasterize

            # only the window around the installations, at 4 x 4 samples per pixel
            hw, hs, he, hn = shapely.total_bounds(self.pv_geoms[hits])
            q0 = max(int((hw - rw) // res), 0)
            q1 = min(int((he - rw) // res) + 1, shape[1])
            p0 = max(int((rn - hn) // res), 0)
            p1 = min(int((rn - hs) // res) + 1, shape[0])
            fine = rasterize(((g, k + 1) for k, g in zip(hits, self.pv_geoms[hits])),
                             out_shape=((p1 - p0) * SUPERSAMPLE, (q1 - q0) * SUPERSAMPLE),
                             transform=Affine(res / SUPERSAMPLE, 0, rw + q0 * res, 0, -res / SUPERSAMPLE,
                                              rn - p0 * res),
                             fill=0, dtype="int32")
            factor = np.r_[0.0, self.pv_factor][fine]
            cover = (fine > 0).reshape(p1 - p0, SUPERSAMPLE, q1 - q0, SUPERSAMPLE).sum(axis=(1, 3))
            pv_frac[p0:p1, q0:q1] = cover / SUPERSAMPLE**2
            fsum = factor.reshape(p1 - p0, SUPERSAMPLE, q1 - q0, SUPERSAMPLE).sum(axis=(1, 3))
            pv_fac[p0:p1, q0:q1] = np.where(cover > 0, fsum / np.maximum(cover, 1), 1.0)
        return {"rect": rect, "gx": gxx, "gy": gyy, "cls": cls, "bright": bright, "pv_frac": pv_frac, "pv_fac": pv_fac}


# ---------------------------------------------------------------- one scene


class Scene:
    """One acquisition of one tile: its clouds, shadows, season and footprint.

    Parameters
    ----------
    item : dict
        The STAC item.
    ground : TileGround
        The ground of its tile.
    """

    def __init__(self, item: dict, ground: TileGround):
        props = item["properties"]
        self.item_id = item["id"]
        self.ground = ground
        self.when = pd.Timestamp(props["datetime"]).tz_convert("UTC")
        self.cloud_cover = float(props.get("eo:cloud_cover") or 0.0)
        to_tile = Transformer.from_crs(4326, ground.epsg, always_xy=True)
        self.footprint = shapely.transform(shapely.geometry.shape(item["geometry"]),
                                           lambda xy: np.column_stack(to_tile.transform(xy[:, 0], xy[:, 1])))
        shapely.prepare(self.footprint)
        # the same clouds over every tile of one acquisition day
        self.salt = salt_of(f"clouds {self.when:%Y-%m-%d}")
        lat = shapely.geometry.shape(item["geometry"]).centroid.y
        peak_doy = 196 if lat >= 0 else 15
        phase = np.cos(2 * np.pi * (self.when.dayofyear - peak_doy) / 365.25)
        season = np.ones(len(BANDS), np.float32)
        season[BANDS.index("nir")] = 0.8 + 0.2 * phase
        season[BANDS.index("red")] = 1.1 - 0.15 * phase
        season[BANDS.index("green")] = 1.0 + 0.05 * phase
        self.class_refl = np.where(_VEGETATION[:, None], _CLASS_REFL * season, _CLASS_REFL).T.astype(np.float32)
        self.threshold = self._threshold(item)

    def cloud_noise(self, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
        big, small = CLOUD_SPACING_M
        return 0.65 * value_noise(gx, gy, big, self.salt) + 0.35 * value_noise(gx, gy, small, self.salt + 1)

    def _threshold(self, item: dict) -> float:
        """The noise level above which a pixel is cloudy, so that the cloudy share of the
        scene equals its ``eo:cloud_cover`` (quantile over 4,096 points of the footprint)."""
        if self.cloud_cover <= 0:
            return 2.0
        rng = np.random.default_rng(salt_of(self.item_id))
        west, south, east, north = shapely.bounds(self.footprint)
        x = rng.uniform(west, east, 8192)
        y = rng.uniform(south, north, 8192)
        inside = shapely.contains_xy(self.footprint, x, y)
        lon, lat = self.ground.to_lonlat.transform(x[inside][:4096], y[inside][:4096])
        gx, gy = global_xy(np.asarray(lon), np.asarray(lat))
        return float(np.quantile(self.cloud_noise(gx, gy), 1 - self.cloud_cover / 100))

    def render(self, ground: dict, row: int, col: int,
               rect: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """Digital numbers (bands, y, x) and SCL (y, x) of the pixels ``rect`` of one block
        (within the rectangle ``ground`` was made for); None outside the scene."""
        box = shapely.box(*self.ground.block_box(row, col))
        if not shapely.intersects(self.footprint, box):
            return None
        g0, _, h0, _ = ground["rect"]
        r0, r1, c0, c1 = rect
        sub = (slice(r0 - g0, r1 - g0), slice(c0 - h0, c1 - h0))
        cls, bright, frac = ground["cls"][sub], ground["bright"][sub], ground["pv_frac"][sub]
        refl = self.class_refl[:, cls] * bright
        refl = refl * (1 - frac) + np.asarray(PV_REFLECTANCE, np.float32)[:, None, None] * (ground["pv_fac"][sub] * frac)
        alpha = np.zeros(cls.shape, np.float32)
        shadow = np.zeros(cls.shape, bool)
        if self.threshold < 1:
            # clouds at 20 m (they are smooth), shadows where the cloud field is offset
            gx, gy = ground["gx"][sub][::2, ::2], ground["gy"][sub][::2, ::2]
            dx, dy = SHADOW_OFFSET_M

            def upsampled(values: np.ndarray) -> np.ndarray:
                return np.repeat(np.repeat(values, 2, 0), 2, 1)[:cls.shape[0], :cls.shape[1]]

            noise = upsampled(self.cloud_noise(gx, gy))
            shade = upsampled(self.cloud_noise(gx + dx, gy + dy))
            alpha = np.clip((noise - self.threshold) / 0.06, 0, 1).astype(np.float32)
            shadow = (shade > self.threshold) & (alpha == 0)
            refl = np.where(shadow, refl * 0.45, refl)
            refl = refl * (1 - alpha) + np.asarray(CLOUD_REFLECTANCE, np.float32)[:, None, None] * alpha
        dn = np.clip(np.rint(refl * 10_000 + 1_000), 1, 65_535).astype(np.uint16)
        scl = _CLASS_SCL[cls]
        scl[frac >= 0.5] = 5
        scl[shadow] = 3
        scl[alpha > 0] = 10
        scl[alpha >= 1 / 3] = 8
        scl[alpha >= 2 / 3] = 9
        if not shapely.contains(self.footprint, box):
            from affine import Affine
            from rasterio.features import geometry_mask

            west, _, east, north = self.ground.block_box(row, col)
            res = (east - west) / BLOCK_PX
            outside = geometry_mask([self.footprint], cls.shape,
                                    Affine(res, 0, west + c0 * res, 0, -res, north - r0 * res))
            dn[:, outside] = 0
            scl[outside] = 0
        return dn, scl


# ---------------------------------------------------------------- files


def write_scene(item: dict, scene: Scene, grounds: dict, rects: dict, paths: dict[str, Path]) -> int:
    """Write one scene's COGs (one per band, plus ``scl``): only the blocks of ``rects``
    hold data, and of each only its rectangle (the rest of the block reads as nodata).

    Returns
    -------
    int
        Blocks written.
    """
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    props = item["properties"]
    height, width = props["proj:shape"]
    a, b, c, d, e, f = props["proj:transform"][:6]
    common = dict(driver="GTiff", width=width, height=height, count=1, crs=f"EPSG:{scene.ground.epsg}",
                  transform=Affine(a, b, c, d, e, f), nodata=0, tiled=True, blockxsize=BLOCK_PX,
                  blockysize=BLOCK_PX, compress="deflate", predictor=2, zlevel=1, sparse_ok=True)
    written = 0
    files = {}
    try:
        for band, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            files[band] = rasterio.open(path.with_suffix(".tif.part"), "w",
                                        dtype="uint8" if band == "scl" else "uint16", **common)
            files[band].set_band_description(1, band)
        for (row, col), rect in sorted(rects.items()):
            out = scene.render(grounds[(row, col)], row, col, rect)
            if out is None:
                continue
            dn, scl = out
            r0, r1, c0, c1 = rect
            window = Window(col * BLOCK_PX + c0, row * BLOCK_PX + r0, c1 - c0, r1 - r0)
            for k, band in enumerate(BANDS):
                if band in files:
                    files[band].write(dn[k], 1, window=window)
            if "scl" in files:
                files["scl"].write(scl, 1, window=window)
            written += 1
    finally:
        for f_ in files.values():
            f_.close()
    for band, path in paths.items():
        path.with_suffix(".tif.part").replace(path)
    return written


def _fingerprint(item: dict, blocks: dict, pv: tuple[np.ndarray, np.ndarray]) -> str:
    props = item["properties"]
    key = {
        "generator": GENERATOR_VERSION, "id": item["id"], "geometry": item["geometry"],
        "datetime": props["datetime"], "cloud": props.get("eo:cloud_cover"), "transform": props["proj:transform"],
        "shape": props["proj:shape"], "code": props.get("proj:code"),
        "blocks": sorted([list(k), list(v)] for k, v in blocks.items()),
        "installations": sorted(zip(map(str, pv[0]), shapely.to_wkb(pv[1], hex=True))),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def render_tile(job: dict) -> dict:
    """Render the scenes of one tile (a process-pool task): ground once, then each scene."""
    started = time.perf_counter()
    ground = TileGround(job["epsg"], job["transform"], job["installations"])
    grounds: dict = {}
    stats = {"rendered": 0, "reused": 0, "blocks": 0}
    for scene_job in job["scenes"]:
        item, blocks, paths = scene_job["item"], scene_job["blocks"], scene_job["paths"]
        stamp = next(iter(paths.values())).parent / f".{item['id']}.render.json"
        fingerprint = _fingerprint(item, blocks, job["installations"])
        if stamp.exists() and all(p.exists() for p in paths.values()) \
                and json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
            stats["reused"] += 1
            continue
        for block in blocks:
            if block not in grounds:
                grounds[block] = ground.block(*block, job["rects"][block])
        stats["blocks"] += write_scene(item, Scene(item, ground), grounds, blocks, paths)
        stamp.write_text(json.dumps({"fingerprint": fingerprint, "blocks": len(blocks)}) + "\n")
        stats["rendered"] += 1
    stats["seconds"] = time.perf_counter() - started
    return stats


@functools.lru_cache(maxsize=None)
def _transformer(src: int, dst: int) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def scene_blocks(chips, items: dict[str, dict]) -> dict[str, dict[tuple[int, int], tuple[int, int, int, int]]]:
    """Per scene, the blocks under the chips that read it, each with the rectangle
    (row0, row1, col0, col1 within the block) those chips need (one pixel of margin)."""
    needed: dict[str, dict] = defaultdict(dict)
    for chip in chips:
        square = shapely.box(*chip.bounds).segmentize(chip.resolution_m * 32)
        ring = np.asarray(square.exterior.coords)
        for item_id in chip.item_ids:
            props = items[item_id]["properties"]
            epsg = int(props["proj:code"].split(":")[1])
            a, _, c, _, e, f = props["proj:transform"][:6]
            x, y = ring[:, 0], ring[:, 1]
            if epsg != chip.epsg:
                x, y = _transformer(chip.epsg, epsg).transform(x, y)
            height, width = props["proj:shape"]
            col0 = max(int((np.min(x) - c) // a) - 1, 0)
            col1 = min(int((np.max(x) - c) // a) + 2, width)
            row0 = max(int((np.max(y) - f) // e) - 1, 0)
            row1 = min(int((np.min(y) - f) // e) + 2, height)
            if col1 <= col0 or row1 <= row0:
                continue
            for r in range(row0 // BLOCK_PX, (row1 - 1) // BLOCK_PX + 1):
                for q in range(col0 // BLOCK_PX, (col1 - 1) // BLOCK_PX + 1):
                    rect = (max(row0 - r * BLOCK_PX, 0), min(row1 - r * BLOCK_PX, BLOCK_PX),
                            max(col0 - q * BLOCK_PX, 0), min(col1 - q * BLOCK_PX, BLOCK_PX))
                    old = needed[item_id].get((r, q))
                    needed[item_id][(r, q)] = rect if old is None else _union(old, rect)
    return needed


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


SAMPLE_CATALOG_ID = "pvlake-sample"
"""The ``id`` of the root catalogue :mod:`pvlake.sample_stac` writes."""


def sample_catalogs(stac_manifest: str | Path) -> dict[str, Path]:
    """The local static catalogues of a STAC manifest that are pvlake samples (their
    imagery is rendered, not downloaded): entry name -> folder of ``catalog.json``."""
    from .stac import active_catalogs, load_stac_manifest

    found = {}
    for spec in active_catalogs(load_stac_manifest(stac_manifest)):
        if spec.catalog_type != "static" or spec.is_url:
            continue
        try:
            root = json.loads(Path(spec.catalog_uri).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if root.get("id") == SAMPLE_CATALOG_ID:
            found[spec.name] = Path(spec.catalog_uri).resolve().parent
    return found


def render_sample_imagery(data_dir: str | Path, catalogs: dict[str | Path, str | Path], report_path: str | Path,
                          settings=None, workers: int = 2, progress: bool = True) -> dict:
    """Render the COGs of every scene the cubes stage will read from sample catalogues.

    Parameters
    ----------
    data_dir : str or Path
        The run's data folder (reads the STAC stage's outputs and the prepared installations).
    catalogs : dict
        Folder of a sample catalogue's ``catalog.json`` -> where its assets go, in the
        catalogue's folder structure (the cubes stage maps the hrefs there:
        ``cubes.href_map``). Assets of other catalogues are left alone.
    report_path : str or Path
        The JSON report (scenes, files, blocks, rendered and reused scenes, seconds).
    settings : pvlake.cubes.CubeSettings, optional
        The chip plan's settings (chip size, resolution, dates per chip).
    workers : int
        Processes (one tile each at a time).
    """
    import geopandas as gpd

    from .cubes import CubeSettings, plan_stage_chips, read_items
    from .layout import Layout

    started = time.perf_counter()
    layout = Layout(data_dir)
    settings = settings or CubeSettings()
    roots = {Path(c).resolve(): Path(o) for c, o in catalogs.items()}
    items = {it["id"]: it for it in read_items(layout.stac_items())}
    matches = pd.read_parquet(layout.stac_matches(), columns=["pv_id", "item_id"])
    installations = gpd.read_parquet(layout.prepared_parquet(), columns=["pv_id", "geometry"])
    chips = plan_stage_chips(installations, matches, list(items.values()), settings)
    needed = scene_blocks(chips, items)
    tree = shapely.STRtree(installations.geometry.to_numpy())
    tiles: dict[tuple, dict] = {}
    for item_id in sorted(needed):
        item = items[item_id]
        paths = {}
        for band, asset in sorted(item["assets"].items()):
            href = Path(asset["href"])
            if not href.is_absolute() or not (band in BANDS or band == "scl"):
                continue
            for root, out_dir in roots.items():
                if href.resolve().is_relative_to(root):
                    paths[band] = out_dir / href.resolve().relative_to(root)
        if not paths:
            continue
        props = item["properties"]
        key = (props["proj:code"], tuple(props["proj:transform"][:6]))
        if key not in tiles:
            near = tree.query(shapely.geometry.shape(item["geometry"]), predicate="intersects")
            near = np.sort(near)
            tiles[key] = {"epsg": int(props["proj:code"].split(":")[1]), "transform": props["proj:transform"],
                          "installations": (installations["pv_id"].to_numpy()[near],
                                            installations.geometry.to_numpy()[near]),
                          "scenes": []}
        tiles[key]["scenes"].append({"item": item, "blocks": dict(sorted(needed[item_id].items())), "paths": paths})
    jobs = [tiles[k] for k in sorted(tiles)]
    for job in jobs:
        # the tile's ground is made once for the union of its scenes' rectangles
        rects: dict = {}
        for scene in job["scenes"]:
            for block, rect in scene["blocks"].items():
                rects[block] = rect if block not in rects else _union(rects[block], rect)
        job["rects"] = rects
    totals = {"rendered": 0, "reused": 0, "blocks": 0}
    bar = tqdm(total=sum(len(j["scenes"]) for j in jobs), desc="render sample scenes", unit="scene",
               disable=not progress)
    with ProcessPoolExecutor(max(1, workers)) as pool:
        for job, stats in zip(jobs, pool.map(render_tile, jobs)):
            for k in totals:
                totals[k] += stats[k]
            bar.update(len(job["scenes"]))
    bar.close()
    report = {
        "scenes": sum(len(j["scenes"]) for j in jobs),
        "tiles": len(jobs),
        "files": sum(len(s["paths"]) for j in jobs for s in j["scenes"]),
        "chips": len(chips),
        **totals,
        "block_px": BLOCK_PX,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(report, report_path)
    return report


def main(argv: list[str] | None = None) -> int:
    from .cubes import CubeSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("catalogs", help='JSON object: sample catalogue folder -> output folder')
    parser.add_argument("report", help="the JSON report to write")
    parser.add_argument("--chip-size-px", type=int, default=256)
    parser.add_argument("--resolution-m", type=float, default=10.0)
    parser.add_argument("--max-dates", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    settings = CubeSettings(chip_size_px=args.chip_size_px, resolution_m=args.resolution_m, max_dates=args.max_dates)
    report = render_sample_imagery(args.data_dir, json.loads(args.catalogs), args.report, settings, args.workers)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
