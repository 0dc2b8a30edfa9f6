"""Cubes stage (STAC part 2): image chips, PV label masks and cloud masks for every
installation, versioned in Icechunk, with a baseline segmentation.

From the STAC stage's selection (``stac/matches.parquet``, ``stac/items.parquet``) and the
prepared installations, it

1. plans **chips** (:func:`plan_chips`): a square on an explicit pixel grid (an odc-geo
   ``GeoBox``: the installation's local UTM zone, native 10 m, ``chip_size_px`` pixels,
   centred on the installation and snapped to the 10 m grid, so Sentinel-2 pixels are
   never resampled in their own zone). Installations inside one chip share it; a farm
   larger than a chip gets a tiled set of chips covering it;
2. gives each chip the scenes the search selected for its installations, one time step per
   **solar day** (:func:`assign_scenes`; scenes of one day are mosaicked);
3. loads the pixels lazily with **odc-stac** (default) or **stackstac** (:data:`LOADERS`),
   one load per group of chips sharing scenes with the chips sliced out, and computes them
   with Dask (threads, or a ``distributed`` scheduler) in batches, so a failing asset
   skips only its chips (:func:`load_chips`);
4. rasterises a **label mask** from every prepared installation touching the chip (polygons
   as shapes, points as a disc marked uncertain) on exactly the chip's GeoBox
   (:func:`label_mask`), and a **valid mask** from the scene classification band
   (:func:`valid_mask`);
5. writes them to Zarr v3 arrays in an **Icechunk** repository, one commit per run, only
   chips whose scenes or installations changed being loaded again (:class:`ChipStore`),
   and the chip index as GeoParquet (:func:`run_stage`);
6. trains and evaluates a pixel classifier with a spatial split (:func:`run_baseline`) and
   serves the chips as numpy arrays to any training loop (:func:`iter_chips`).

References
----------
- Sentinel-2 L2A scene classification (SCL) classes: ESA, *Sentinel-2 MSI Level-2A
  Algorithm Theoretical Basis Document*, S2-PDGS-MPC-ATBD-L2A.
- odc-stac: https://odc-stac.readthedocs.io; stackstac: https://stackstac.readthedocs.io;
  Icechunk: https://icechunk.io.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
from pyproj import Transformer
from tqdm import tqdm

from .io import atomic_path, write_geoparquet, write_json
from .layout import Layout

DEFAULT_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
"""Reflectance bands loaded when the STAC manifest names none for the collection."""

SCL_BAND = "scl"
"""The Sentinel-2 L2A scene classification asset (loaded where the items have it)."""

SCL_CLASSES = {
    0: "no_data", 1: "saturated_or_defective", 2: "dark_area", 3: "cloud_shadow", 4: "vegetation",
    5: "not_vegetated", 6: "water", 7: "unclassified", 8: "cloud_medium_probability",
    9: "cloud_high_probability", 10: "thin_cirrus", 11: "snow",
}
"""Sentinel-2 L2A scene classification values (ESA L2A ATBD)."""

SCL_INVALID = (0, 1, 3, 8, 9, 10)
"""SCL classes masked as invalid by default: no data, defective, shadow, clouds, cirrus."""

SCL_CLOUD = (8, 9, 10)
"""SCL classes counted as cloud (the chip's ``cloud_fraction``)."""

LABEL_BACKGROUND, LABEL_PV, LABEL_UNCERTAIN = 0, 1, 2
"""Values of the label mask: not PV, PV (a polygon covers the pixel centre), uncertain
(a point installation's disc: somewhere here, extent unknown)."""

LOADERS = ("odc", "stackstac")

SKIP_REASONS = {
    "no_scene": "the STAC search selected no scene for the installation (see stac/skipped.parquet)",
    "asset_unreadable": "a scene asset could not be read (missing, HTTP error or corrupt)",
    "no_valid_pixels": "no pixel of any date is valid (clouds, shadows, outside the scenes' data)",
}
"""Why an installation or a chip is left out of the cube (``cubes/skipped.parquet``)."""


class CubeError(Exception):
    """Bad input to the cubes stage: names the file or setting and the reason."""

    def __init__(self, where: str, reason: str):
        self.where, self.reason = where, reason
        super().__init__(f"cubes: {where}: {reason}")


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class CubeSettings:
    """The ``cubes`` configuration of the workflow (see workflow/config/README.md).

    Attributes
    ----------
    chip_size_px : int
        Chip width and height, pixels.
    resolution_m : float
        Pixel size, metres (Sentinel-2's native 10 m bands).
    max_dates : int
        Time steps per chip: the clearest solar days among the selected scenes.
    point_radius_m : float
        Radius of the disc marked uncertain around a point installation, metres.
    loader : str
        ``odc`` (odc-stac) or ``stackstac``.
    scheduler : str or None
        A ``distributed`` scheduler address (``tcp://host:8786``); None: Dask threads.
    workers : int
        Threads of the threaded scheduler.
    batch_chips : int
        Chips computed per Dask call (a failure retries a batch chip by chip).
    batch_mb : int
        Read chunks held per Dask call, MB: a batch ends before its chips' chunks exceed it
        (scattered chips each need their own chunks).
    chunk_px : int
        Read chunk of the lazy loads, pixels: the COGs' block size reads each block once.
    scl_invalid, scl_cloud : tuple of int
        SCL classes masked as invalid, and counted as cloud.
    href_map : dict
        Asset href prefixes replaced before reading (a local mirror of a catalogue).
    """

    chip_size_px: int = 256
    resolution_m: float = 10.0
    max_dates: int = 4
    point_radius_m: float = 10.0
    loader: str = "odc"
    scheduler: str | None = None
    workers: int = 2
    batch_chips: int = 32
    batch_mb: int = 1024
    chunk_px: int = 1024
    scl_invalid: tuple[int, ...] = SCL_INVALID
    scl_cloud: tuple[int, ...] = SCL_CLOUD
    href_map: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if self.loader not in LOADERS:
            raise CubeError("cubes.loader", f"must be one of {', '.join(LOADERS)} (got {self.loader!r})")

    @classmethod
    def from_config(cls, config: Mapping) -> CubeSettings:
        keys = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in config.items() if k in keys}
        for k in ("scl_invalid", "scl_cloud"):
            if k in values:
                values[k] = tuple(int(v) for v in values[k])
        values["href_map"] = dict(values.get("href_map") or {})
        return cls(**values)

    @property
    def chip_size_m(self) -> float:
        return self.chip_size_px * self.resolution_m


# ---------------------------------------------------------------- chip plan


def utm_epsg(lon_deg: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    """EPSG code of the UTM zone of each point (326xx north, 327xx south)."""
    zone = np.floor((np.asarray(lon_deg, float) + 180) / 6).astype(int) % 60 + 1
    return np.where(np.asarray(lat_deg) >= 0, 32600, 32700) + zone


@dataclass(frozen=True)
class Chip:
    """One chip: a square of pixels on an explicit grid, and what it holds.

    Attributes
    ----------
    chip_id : str
        ``<epsg>_<west_m>_<north_m>_<size_px>``: stable while the grid is.
    epsg : int
        UTM zone of the chip.
    west_m, north_m : float
        Upper-left corner, metres in ``epsg``.
    size_px : int
    resolution_m : float
    pv_ids : tuple of str
        Installations the chip was made for: wholly inside it, or a large farm it tiles.
    kind : str
        ``installation`` (centred on one) or ``farm_tile`` (one of a farm's tiles).
    item_ids : tuple of str
        Scenes to load, sorted by solar day, time and id.
    days : tuple of str
        Solar day (``YYYY-MM-DD``) of each time step.
    day_items : tuple of tuple of str
        The scenes mosaicked for each day.
    """

    chip_id: str
    epsg: int
    west_m: float
    north_m: float
    size_px: int
    resolution_m: float
    pv_ids: tuple[str, ...]
    kind: str = "installation"
    item_ids: tuple[str, ...] = ()
    days: tuple[str, ...] = ()
    day_items: tuple[tuple[str, ...], ...] = ()

    @property
    def size_m(self) -> float:
        return self.size_px * self.resolution_m

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north), metres in the chip's CRS."""
        return (self.west_m, self.north_m - self.size_m, self.west_m + self.size_m, self.north_m)

    @property
    def affine(self):
        from affine import Affine

        return Affine(self.resolution_m, 0.0, self.west_m, 0.0, -self.resolution_m, self.north_m)

    @property
    def geobox(self):
        """The chip's pixel grid as an odc-geo GeoBox (CRS, affine, shape)."""
        from odc.geo.geobox import GeoBox

        return GeoBox((self.size_px, self.size_px), self.affine, f"EPSG:{self.epsg}")

    def footprint_lonlat(self) -> shapely.Polygon:
        """The chip's square in lon/lat (edges densified every 16 pixels)."""
        square = shapely.box(*self.bounds).segmentize(self.resolution_m * 16)
        xy = np.asarray(square.exterior.coords)
        lon, lat = Transformer.from_crs(self.epsg, 4326, always_xy=True).transform(xy[:, 0], xy[:, 1])
        return shapely.Polygon(np.column_stack([lon, lat]))


def chip_id(epsg: int, west_m: float, north_m: float, size_px: int) -> str:
    return f"{epsg}_{int(round(west_m))}_{int(round(north_m))}_{size_px}"


def _snap(v: np.ndarray, res: float) -> np.ndarray:
    return np.round(np.asarray(v) / res) * res


def plan_chips(installations: gpd.GeoDataFrame, size_px: int = 256, resolution_m: float = 10.0) -> list[Chip]:
    """Chips covering every installation.

    In pv_id order, each installation not yet wholly inside a chip gets one centred on
    it (the centre of its bounding box, snapped to the pixel grid), in its own UTM zone;
    every installation of that zone wholly inside the new chip is listed in it and needs
    no chip of its own. An installation wider or taller than a chip gets a grid of chips
    covering its bounding box, centred on it.

    Parameters
    ----------
    installations : geopandas.GeoDataFrame
        ``pv_id`` and geometries, EPSG:4326.
    size_px : int
    resolution_m : float

    Returns
    -------
    list of Chip
        Sorted by chip id; ``item_ids`` empty (see :func:`assign_scenes`).
    """
    if len(installations) == 0:
        return []
    frame = installations.sort_values("pv_id", kind="stable").reset_index(drop=True)
    points = shapely.get_coordinates(shapely.point_on_surface(frame.geometry.to_numpy()))
    epsg = utm_epsg(points[:, 0], points[:, 1])
    size_m = size_px * resolution_m
    chips: dict[str, Chip] = {}
    for zone in np.unique(epsg):
        members = np.flatnonzero(epsg == zone)
        local = frame.iloc[members].to_crs(int(zone))
        bounds = shapely.bounds(local.geometry.to_numpy())
        pv_ids = local["pv_id"].to_numpy()
        covered = np.zeros(len(local), dtype=bool)

        def inside(west: float, north: float) -> np.ndarray:
            return ((bounds[:, 0] >= west) & (bounds[:, 2] <= west + size_m)
                    & (bounds[:, 1] >= north - size_m) & (bounds[:, 3] <= north))

        for i in range(len(local)):
            if covered[i]:
                continue
            west_i, south_i, east_i, north_i = bounds[i]
            cx, cy = (west_i + east_i) / 2, (south_i + north_i) / 2
            nx = max(1, math.ceil((east_i - west_i) / size_m))
            ny = max(1, math.ceil((north_i - south_i) / size_m))
            kind = "installation" if nx == ny == 1 else "farm_tile"
            west0 = float(_snap(cx - nx * size_m / 2, resolution_m))
            north0 = float(_snap(cy + ny * size_m / 2, resolution_m))
            for row in range(ny):
                for col in range(nx):
                    west, north = west0 + col * size_m, north0 - row * size_m
                    held = inside(west, north)
                    ids = set(pv_ids[held]) | ({pv_ids[i]} if kind == "farm_tile" else set())
                    covered |= held
                    cid = chip_id(int(zone), west, north, size_px)
                    if cid in chips:  # two farms' grids meeting on the same square
                        ids |= set(chips[cid].pv_ids)
                    chips[cid] = Chip(cid, int(zone), west, north, size_px, resolution_m,
                                      tuple(sorted(ids)), kind)
            covered[i] = True
    return [chips[k] for k in sorted(chips)]


def items_frame(items: Sequence[Mapping]) -> pd.DataFrame:
    """Per STAC item: ``item_id``, ``collection``, ``datetime`` (UTC), ``cloud_cover``,
    ``solar_day`` (the acquisition date in local solar time at the item's centre, as
    odc-stac's ``groupby="solar_day"`` computes it), and ``epsg``."""
    rows = []
    for it in items:
        props = it["properties"]
        when = pd.Timestamp(props.get("datetime") or props.get("start_datetime")).tz_convert("UTC")
        lon = shapely.geometry.shape(it["geometry"]).centroid.x
        code = props.get("proj:code") or (f"EPSG:{props['proj:epsg']}" if props.get("proj:epsg") else None)
        rows.append({
            "item_id": it["id"], "collection": it.get("collection"), "datetime": when,
            "cloud_cover": props.get("eo:cloud_cover"),
            "solar_day": (when + pd.Timedelta(seconds=int(lon * 240))).strftime("%Y-%m-%d"),
            "epsg": int(code.split(":")[1]) if code else None,
        })
    return pd.DataFrame(rows, columns=["item_id", "collection", "datetime", "cloud_cover", "solar_day", "epsg"])


def assign_scenes(chips: list[Chip], matches: pd.DataFrame, scenes: pd.DataFrame, max_dates: int) -> list[Chip]:
    """Each chip with the scenes the search selected for its installations.

    Scenes of one solar day form one time step (mosaicked); where a chip has more days
    than ``max_dates``, the clearest (lowest mean ``eo:cloud_cover``) are kept. Days are in
    time order; the scenes of a day by time and id (the first valid pixel wins).

    Parameters
    ----------
    chips : list of Chip
    matches : pandas.DataFrame
        ``stac/matches.parquet`` (``pv_id``, ``item_id``).
    scenes : pandas.DataFrame
        :func:`items_frame` of the items.
    max_dates : int

    Returns
    -------
    list of Chip
        Chips without any selected scene are left out.
    """
    by_pv: dict[str, set] = {}
    for pv_id, item_id in zip(matches["pv_id"], matches["item_id"]):
        by_pv.setdefault(pv_id, set()).add(item_id)
    info = {row.item_id: (row.solar_day, row.datetime, row.cloud_cover)
            for row in scenes.itertuples(index=False)}
    out = []
    for chip in chips:
        ids = sorted((i for i in set().union(*(by_pv.get(p, set()) for p in chip.pv_ids)) if i in info),
                     key=lambda i: (info[i][0], info[i][1], i))
        if not ids:
            continue
        per_day: dict[str, list[str]] = {}
        for i in ids:
            per_day.setdefault(info[i][0], []).append(i)
        cloud = {d: np.mean([info[i][2] if info[i][2] is not None else np.inf for i in v]) for d, v in per_day.items()}
        keep = sorted(sorted(per_day, key=lambda d: (cloud[d], d))[:max_dates])
        day_items = tuple(tuple(per_day[d]) for d in keep)
        out.append(replace(chip, item_ids=tuple(i for d in day_items for i in d), days=tuple(keep),
                           day_items=day_items))
    return out


def read_items(path: str | Path) -> list[dict]:
    """The STAC items of a stac-geoparquet file (``stac/items.parquet``) as dicts."""
    import pyarrow.parquet as pq
    from stac_geoparquet.arrow import stac_table_to_items

    return list(stac_table_to_items(pq.read_table(path)))


def plan_stage_chips(installations: gpd.GeoDataFrame, matches: pd.DataFrame, items: Sequence[Mapping],
                     settings: CubeSettings) -> list[Chip]:
    """The stage's chips: :func:`plan_chips` over the installations with selected scenes,
    then :func:`assign_scenes`."""
    with_scenes = installations[installations["pv_id"].isin(matches["pv_id"])]
    chips = plan_chips(with_scenes, settings.chip_size_px, settings.resolution_m)
    return assign_scenes(chips, matches, items_frame(items), settings.max_dates)


# ---------------------------------------------------------------- loading


def _absolute(target: str) -> str:
    """A local replacement as an absolute path: readers resolve a relative asset href
    against the item's own location, not the working directory (a relative ``data_dir``)."""
    if "://" in target or Path(target).is_absolute():
        return target
    return str(Path(target).resolve()) + ("/" if target.endswith("/") else "")


class HrefMap:
    """Asset hrefs with a prefix replaced (the longest matching prefix wins): a local
    mirror of a catalogue's assets, or the sample's rendered imagery. Picklable, so Dask
    workers of a ``distributed`` cluster apply it too.

    Parameters
    ----------
    mapping : dict
        ``{prefix: replacement}``.
    """

    def __init__(self, mapping: Mapping[str, str] | None = None):
        self.mapping = sorted(((str(a), _absolute(str(b))) for a, b in (mapping or {}).items()),
                              key=lambda ab: -len(ab[0]))

    def __call__(self, href: str) -> str:
        for prefix, replacement in self.mapping:
            if href.startswith(prefix):
                return replacement + href[len(prefix):]
        return href


def stac_bands(manifest: str | Path | None, items: Sequence[Mapping]) -> tuple[tuple[str, ...], str | None]:
    """Reflectance bands to load and the scene classification band, if any.

    The bands are those the STAC manifest lists for the collection (``collection_sensors``)
    that the items have, :data:`DEFAULT_BANDS` where it lists none; ``scl`` is loaded where
    every item has it."""
    bands: list[str] = []
    collections = {it.get("collection") for it in items}
    if manifest:
        from .stac import active_catalogs, load_stac_manifest

        for spec in active_catalogs(load_stac_manifest(manifest)):
            sensors = spec.entry.get("collection_sensors") or {}
            for collection in spec.collections:
                if collection in collections:
                    bands += [b for b in (sensors.get(collection) or {}).get("bands", []) if b not in bands]
    bands = [b for b in bands if b != SCL_BAND] or list(DEFAULT_BANDS)
    have = set.intersection(*(set(it.get("assets", {})) for it in items)) if items else set()
    missing = [b for b in bands if b not in have]
    if items and missing:
        raise CubeError("stac/items.parquet", f"items lack the band asset(s) {', '.join(missing)}")
    return tuple(bands), (SCL_BAND if SCL_BAND in have else None)


def pystac_items(items: Sequence[Mapping], href_map: HrefMap | None = None) -> list:
    """pystac Items for the loaders, hrefs mapped, with ``proj:epsg`` copied from
    ``proj:code`` (stackstac 0.5.1 reads only ``proj:epsg``; pystac 1.15 writes only
    ``proj:code``)."""
    import copy

    import pystac

    out = []
    for it in items:
        it = copy.deepcopy(dict(it))
        code = it["properties"].get("proj:code")
        if code and code.upper().startswith("EPSG:") and "proj:epsg" not in it["properties"]:
            it["properties"]["proj:epsg"] = int(code.split(":")[1])
        if href_map is not None:
            for asset in it.get("assets", {}).values():
                asset["href"] = href_map(asset["href"])
        out.append(pystac.Item.from_dict(it, preserve_dict=False))
    return out


@dataclass(frozen=True)
class ChipGroup:
    """Chips of one UTM zone near each other, loaded with one lazy load over the box
    that holds them (aligned to the chunk grid of a scene in that zone), one time step
    per scene; each chip then takes its own scenes and mosaics them per day.

    Attributes
    ----------
    item_ids : tuple of str
        Every scene of the group's chips, by solar day, time and id.
    """

    epsg: int
    chips: tuple[Chip, ...]
    item_ids: tuple[str, ...]
    west_m: float
    north_m: float
    width_px: int
    height_px: int
    resolution_m: float

    @property
    def geobox(self):
        from affine import Affine
        from odc.geo.geobox import GeoBox

        return GeoBox((self.height_px, self.width_px),
                      Affine(self.resolution_m, 0, self.west_m, 0, -self.resolution_m, self.north_m), f"EPSG:{self.epsg}")

    def offset(self, chip: Chip) -> tuple[int, int]:
        """Row and column of the chip's corner in the group's grid."""
        return (int(round((self.north_m - chip.north_m) / self.resolution_m)),
                int(round((chip.west_m - self.west_m) / self.resolution_m)))


def group_chips(chips: Sequence[Chip], items: Mapping[str, Mapping], chunk_px: int,
                max_group_px: int = 16384) -> list[ChipGroup]:
    """Chips grouped for loading: same zone, in one square of ``max_group_px`` (164 km at
    10 m: larger than a Sentinel-2 tile, so neighbouring chips share their read chunks). The
    group's box is snapped outwards to the ``chunk_px`` grid of its first scene in the
    chips' zone, so a read chunk covers whole COG blocks of that size (each block is
    decompressed once)."""
    buckets: dict[tuple, list[Chip]] = {}
    for chip in chips:
        span = max_group_px * chip.resolution_m
        key = (chip.epsg, math.floor(chip.west_m / span), math.floor(chip.north_m / span))
        buckets.setdefault(key, []).append(chip)
    groups = []
    for key in sorted(buckets):
        members = buckets[key]
        res = members[0].resolution_m
        west = min(c.west_m for c in members)
        north = max(c.north_m for c in members)
        east = max(c.west_m + c.size_m for c in members)
        south = min(c.north_m - c.size_m for c in members)
        order = {}
        for c in members:
            for day, ids in zip(c.days, c.day_items):
                for i in ids:
                    order[i] = (day, items[i]["properties"]["datetime"], i)
        item_ids = tuple(sorted(order, key=order.get))
        for i in item_ids:
            props = items[i]["properties"]
            transform = props.get("proj:transform")
            if props.get("proj:code") == f"EPSG:{key[0]}" and transform and abs(transform[0] - res) < 1e-9:
                step = chunk_px * res
                ox, oy = transform[2], transform[5]
                west = ox + math.floor(round((west - ox) / step, 9)) * step
                north = oy - math.floor(round((oy - north) / step, 9)) * step
                break
        width = int(round((east - west) / res))
        height = int(round((north - south) / res))
        groups.append(ChipGroup(key[0], tuple(members), item_ids, west, north, width, height, res))
    return groups


def lazy_group(group: ChipGroup, items: Sequence, bands: Sequence[str], loader: str, chunk_px: int):
    """One lazy load of a group's box: a Dask-backed DataArray ``(time, band, y, x)``,
    uint16, nodata 0, one time step per scene of ``items`` (pystac Items in the group's
    order, hrefs already mapped: :func:`pystac_items`)."""
    if loader == "odc":
        import odc.stac

        # as on cloud storage: no directory listing per file opened (sidecar files)
        odc.stac.configure_rio(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
        ds = odc.stac.load(items, bands=list(bands), geobox=group.geobox, groupby="id",
                           chunks={"x": chunk_px, "y": chunk_px}, dtype="uint16", resampling="nearest",
                           fail_on_error=True)
        return ds[list(bands)].to_dataarray("band").transpose("time", "band", "y", "x")
    import stackstac

    west, north = group.west_m, group.north_m
    bounds = (west, north - group.height_px * group.resolution_m, west + group.width_px * group.resolution_m, north)
    return stackstac.stack(list(items), assets=list(bands), epsg=group.epsg, resolution=group.resolution_m,
                           bounds=bounds, snap_bounds=False, chunksize=chunk_px, dtype=np.dtype("uint16"),
                           fill_value=np.uint16(0), rescale=False, xy_coords="center", sortby_date=False,
                           properties=False, band_coords=False, errors_as_nodata=())


def mosaic_days(scenes: np.ndarray, day_sizes: Sequence[int]) -> np.ndarray:
    """Scenes ``(scene, band, y, x)`` mosaicked per day ``(day, band, y, x)``: the scenes
    of a day (consecutive, ``day_sizes`` of them) fill each band's nodata (0) pixels in
    order, the first valid value winning (odc-stac's ``groupby="solar_day"`` fusing;
    stackstac's ``mosaic(reverse=True)``)."""
    out = np.empty((len(day_sizes), *scenes.shape[1:]), scenes.dtype)
    start = 0
    for d, n in enumerate(day_sizes):
        day = scenes[start].copy()
        for k in range(start + 1, start + n):
            empty = day == 0
            day[empty] = scenes[k][empty]
        out[d] = day
        start += n
    return out


@dataclass
class ChipPixels:
    """One loaded chip: image ``(time, band, y, x)`` uint16 and SCL ``(time, y, x)`` uint8
    (None where the collection has none), one time step per solar day."""

    chip: Chip
    image: np.ndarray
    scl: np.ndarray | None


def _block_ranges(offset: int, size: int, chunks: Sequence[int]) -> list[tuple[int, int, int]]:
    """The chunks a [offset, offset + size) slice touches: (chunk index, start within the
    chunk, start within the slice) of each."""
    edges = np.r_[0, np.cumsum(chunks)]
    first = int(np.searchsorted(edges, offset, side="right")) - 1
    out = []
    k = first
    while k < len(chunks) and edges[k] < offset + size:
        start = max(offset, int(edges[k]))
        out.append((k, start - int(edges[k]), start - offset))
        k += 1
    return out


def chunk_bytes(data) -> int:
    """Bytes of the largest read chunk of a lazy ``(time, band, y, x)`` load: every band of
    one scene, ``chunk_px`` square."""
    return int(data.shape[1] * max(data.chunks[2]) * max(data.chunks[3]) * data.dtype.itemsize)


def _batches(chips: Sequence[Chip], blocks_of, max_chips: int, max_blocks: int):
    """Consecutive chips in batches of at most ``max_chips`` chips whose read chunks number
    at most ``max_blocks`` (a chip needing more is a batch of its own): scattered chips each
    need chunks of their own, so the chip count alone does not bound memory.

    Yields (chips, {chip_id: read chunk keys}).
    """
    batch: list[Chip] = []
    wanted: dict[str, list] = {}
    keys: set = set()
    for chip in chips:
        mine = blocks_of(chip)
        if batch and (len(batch) >= max_chips or len(keys | set(mine)) > max_blocks):
            yield batch, wanted
            batch, wanted, keys = [], {}, set()
        batch.append(chip)
        wanted[chip.chip_id] = mine
        keys |= set(mine)
    if batch:
        yield batch, wanted


def load_chips(groups: Sequence[ChipGroup], items: Mapping[str, Mapping], bands: Sequence[str], scl_band: str | None,
               settings: CubeSettings, progress: bool = False) -> Iterator[ChipPixels | tuple[Chip, str]]:
    """Load every chip of ``groups``, ``batch_chips`` at a time, with Dask.

    Each batch computes the read chunks its chips touch (every band of a scene at once, in
    parallel, each chunk once: with chunks on the COGs' block grid, each block is decoded
    once) and cuts the chips out of them in numpy; chunks shared with the next batch are
    kept. A failing batch is retried chip by chip.

    Yields
    ------
    ChipPixels, or (Chip, reason)
        ``(chip, message)`` for a chip whose scenes could not be read (missing, HTTP error,
        corrupt); the other chips proceed.
    """
    import dask

    href_map = HrefMap(settings.href_map)
    all_bands = list(bands) + ([scl_band] if scl_band else [])
    needed = sorted({i for g in groups for i in g.item_ids})
    prepared = dict(zip(needed, pystac_items([items[i] for i in needed], href_map)))
    client = None
    if settings.scheduler:
        from distributed import Client

        client = Client(settings.scheduler)
    if client:
        compute = dict(scheduler=client)
    elif settings.workers > 1:
        compute = dict(scheduler="threads", num_workers=settings.workers)
    else:
        compute = dict(scheduler="sync")
    size = settings.chip_size_px
    bar = tqdm(total=sum(len(g.chips) for g in groups), desc=f"load chips ({settings.loader})", unit="chip",
               disable=not progress)

    def blocks_of(group: ChipGroup, data, chip: Chip) -> list[tuple]:
        row, col = group.offset(chip)
        position = {i: t for t, i in enumerate(group.item_ids)}
        return [(position[i], yb, xb) for i in chip.item_ids
                for yb, _, _ in _block_ranges(row, size, data.chunks[2])
                for xb, _, _ in _block_ranges(col, size, data.chunks[3])]

    def cut(group: ChipGroup, data, chip: Chip, blocks: Mapping) -> ChipPixels:
        row, col = group.offset(chip)
        position = {i: t for t, i in enumerate(group.item_ids)}
        cube = np.zeros((len(chip.item_ids), len(all_bands), size, size), np.uint16)
        for k, i in enumerate(chip.item_ids):
            for yb, y0, ys in _block_ranges(row, size, data.chunks[2]):
                for xb, x0, xs in _block_ranges(col, size, data.chunks[3]):
                    block = blocks[(position[i], yb, xb)]
                    h = min(block.shape[-2] - y0, size - ys)
                    w = min(block.shape[-1] - x0, size - xs)
                    cube[k, :, ys:ys + h, xs:xs + w] = block[:, y0:y0 + h, x0:x0 + w]
        cube = mosaic_days(cube, [len(d) for d in chip.day_items])
        image = np.ascontiguousarray(cube[:, :len(bands)])
        scl = cube[:, len(bands)].astype(np.uint8) if scl_band else None
        return ChipPixels(chip, image, scl)

    def fetch(data, keys: Iterable[tuple]) -> dict:
        keys = sorted(set(keys))
        arrays = dask.compute(*[data.blocks[t, :, yb, xb] for t, yb, xb in keys], **compute)
        return {k: a[0] for k, a in zip(keys, arrays)}

    try:
        for group in groups:
            data = lazy_group(group, [prepared[i] for i in group.item_ids], all_bands, settings.loader,
                              settings.chunk_px).data
            # chips in reading order, so consecutive batches share chunks
            chips = sorted(group.chips, key=lambda c: (-c.north_m, c.west_m))
            cache: dict = {}
            for batch, wanted in _batches(chips, lambda c: blocks_of(group, data, c), settings.batch_chips,
                                          settings.batch_mb * 2**20 // chunk_bytes(data)):
                keys = {k for ks in wanted.values() for k in ks}
                cache = {k: v for k, v in cache.items() if k in keys}
                try:
                    cache.update(fetch(data, keys - set(cache)))
                    results = [cut(group, data, c, cache) for c in batch]
                except Exception:  # noqa: BLE001 - find the failing chips one by one
                    results = []
                    for c in batch:
                        try:
                            mine = {k: cache[k] for k in wanted[c.chip_id] if k in cache}
                            mine.update(fetch(data, set(wanted[c.chip_id]) - set(mine)))
                            cache.update(mine)
                            results.append(cut(group, data, c, mine))
                        except Exception as exc:  # noqa: BLE001 - the reason goes to the report
                            results.append((c, f"{type(exc).__name__}: {exc}"[:500]))
                yield from results
                bar.update(len(batch))
    finally:
        bar.close()
        if client is not None:
            client.close()


# ---------------------------------------------------------------- masks


def label_mask(chip: Chip, geometries: np.ndarray, point_radius_m: float) -> np.ndarray:
    """The label mask of a chip, on exactly its GeoBox.

    Polygons mark the pixels whose centre they cover :data:`LABEL_PV`; points (an
    installation located but not outlined) mark a disc of ``point_radius_m``
    :data:`LABEL_UNCERTAIN`; a polygon wins over a disc. Rasterised with the chip's
    affine (``rasterio.features.rasterize``), so mask and image share every pixel edge.

    Parameters
    ----------
    chip : Chip
    geometries : numpy.ndarray of shapely geometries
        The installations touching the chip, lon/lat.
    point_radius_m : float
    """
    from rasterio.features import rasterize

    size = (chip.size_px, chip.size_px)
    if len(geometries) == 0:
        return np.zeros(size, np.uint8)
    to_chip = Transformer.from_crs(4326, chip.epsg, always_xy=True)
    local = shapely.transform(np.asarray(geometries, dtype=object),
                              lambda xy: np.column_stack(to_chip.transform(xy[:, 0], xy[:, 1])))
    kind = shapely.get_type_id(local)
    points = np.isin(kind, (0, 4))
    polygons = np.isin(kind, (3, 6))
    shapes = [(g, LABEL_UNCERTAIN) for g in shapely.buffer(local[points], point_radius_m, quad_segs=16)]
    shapes += [(g, LABEL_PV) for g in local[polygons]]
    if not shapes:
        return np.zeros(size, np.uint8)
    return rasterize(shapes, out_shape=size, transform=chip.affine, fill=LABEL_BACKGROUND, dtype="uint8")


def valid_mask(image: np.ndarray, scl: np.ndarray | None, scl_invalid: Sequence[int]) -> np.ndarray:
    """Pixels usable per date ``(time, y, x)``: every band has data and, where the
    collection has a scene classification, its class is not in ``scl_invalid``."""
    valid = (image != 0).all(axis=1)
    if scl is not None:
        valid &= ~np.isin(scl, np.asarray(scl_invalid, dtype=scl.dtype))
    return valid


def cloud_fraction(scl: np.ndarray | None, scl_cloud: Sequence[int]) -> np.ndarray:
    """Share of each date's pixels classified cloud ``(time,)``; NaN without SCL."""
    if scl is None:
        return np.full(0, np.nan)
    return np.isin(scl, np.asarray(scl_cloud, dtype=scl.dtype)).mean(axis=(1, 2))


# ---------------------------------------------------------------- the Icechunk store


def chip_fingerprint(chip: Chip, items: Mapping[str, Mapping], bands: Sequence[str], scl_band: str | None,
                     mask_installations: tuple[np.ndarray, np.ndarray], settings: CubeSettings) -> str:
    """What a chip's stored arrays depend on: its grid, its scenes (ids, days, the hrefs of
    the bands read), the installations under its mask and the mask settings. Unchanged
    fingerprint: the chip is not loaded again."""
    href_map = HrefMap(settings.href_map)
    key = {
        "chip": [chip.chip_id, chip.epsg, chip.west_m, chip.north_m, chip.size_px, chip.resolution_m],
        "days": [list(d) for d in chip.day_items], "day_names": list(chip.days),
        "hrefs": {i: [href_map(items[i]["assets"][b]["href"]) for b in (*bands, *([scl_band] if scl_band else []))]
                  for i in chip.item_ids},
        "mask": sorted(zip(map(str, mask_installations[0]), shapely.to_wkb(mask_installations[1], hex=True))),
        "point_radius_m": settings.point_radius_m, "scl_invalid": sorted(settings.scl_invalid),
        "scl_cloud": sorted(settings.scl_cloud),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _quiet_icechunk() -> None:
    import icechunk

    # the local-filesystem warning on every open is about concurrent commits, which the
    # stage never makes (one writer, one commit per run)
    icechunk.set_logs_filter("error")


def open_repository(path: str | Path, create: bool = True):
    """The Icechunk repository at ``path`` (local filesystem), created if asked and absent."""
    import icechunk

    _quiet_icechunk()
    storage = icechunk.local_filesystem_storage(str(Path(path).resolve()))
    if create:
        return icechunk.Repository.open_or_create(storage)
    if not icechunk.Repository.exists(storage):
        raise CubeError(str(path), "no Icechunk repository there (run the cubes stage first)")
    return icechunk.Repository.open(storage)


class ChipStore:
    """The chips as Zarr v3 arrays in an Icechunk repository (one commit per run).

    Arrays (dimension names as in the Zarr metadata; ``xarray.open_zarr`` reads them):
    ``image`` (chip, time, band, y, x) uint16; ``scl``, ``valid`` (chip, time, y, x) uint8;
    ``label`` (chip, y, x) uint8; ``datetime`` (chip, time) seconds since 1970 (CF); and
    per chip ``chip_id``, ``fingerprint``, ``active`` (in the current index), ``epsg``,
    ``easting`` (chip, x), ``northing`` (chip, y) (pixel centres, metres), ``solar_day``
    and ``item_ids`` (chip, time), ``cloud_fraction``, ``valid_fraction`` (chip, time),
    ``pv_pixels``, ``uncertain_pixels`` (chip). A chip keeps its position across runs; a
    chip no longer planned is marked inactive, not deleted (earlier snapshots keep it).

    Parameters
    ----------
    path : str or Path
        The repository folder (``<data_dir>/cubes``).
    bands : sequence of str
    size_px, max_dates : int
    """

    def __init__(self, path: str | Path, bands: Sequence[str], size_px: int, max_dates: int):
        import zarr

        self.repo = open_repository(path)
        self.session = self.repo.writable_session("main")
        self.bands, self.size, self.times = list(bands), int(size_px), int(max_dates)
        self.root = zarr.open_group(self.session.store, mode="a", zarr_format=3)
        layout = {"bands": self.bands, "size_px": self.size, "max_dates": self.times}
        if "image" in self.root and self.root.attrs.get("layout") != layout:
            # bands, chip size or time steps changed: the old arrays cannot hold the new
            # chips; this commit starts them again (earlier snapshots keep the old ones)
            for name in list(self.root.array_keys()):
                del self.root[name]
        if "image" not in self.root:
            self._create()
        self.root.attrs.update({"layout": layout, "label_values": {"background": LABEL_BACKGROUND, "pv": LABEL_PV,
                                                                   "uncertain": LABEL_UNCERTAIN}})
        ids = self.root["chip_id"][:] if self.root["chip_id"].shape[0] else np.array([], dtype=str)
        fps = self.root["fingerprint"][:] if len(ids) else np.array([], dtype=str)
        self.position = {str(c): i for i, c in enumerate(ids)}
        self.fingerprints = {str(c): str(f) for c, f in zip(ids, fps)}
        self._pending: dict[str, dict[int, object]] = {}

    def _create(self) -> None:
        s, t, b = self.size, self.times, len(self.bands)

        def array(name, shape, dtype, chunks, dims, fill, **attrs):
            self.root.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill,
                                   dimension_names=dims, attributes=attrs, overwrite=True)

        array("image", (0, t, b, s, s), "uint16", (1, 1, b, s, s), ["chip", "time", "band", "y", "x"], 0,
              long_name="reflectance digital numbers (see the items' raster:bands)", nodata=0)
        array("scl", (0, t, s, s), "uint8", (1, 1, s, s), ["chip", "time", "y", "x"], 0,
              long_name="Sentinel-2 L2A scene classification", flag_values=list(SCL_CLASSES),
              flag_meanings=" ".join(SCL_CLASSES.values()))
        array("valid", (0, t, s, s), "uint8", (1, 1, s, s), ["chip", "time", "y", "x"], 0,
              long_name="1 where every band has data and the SCL class is not invalid")
        array("label", (0, s, s), "uint8", (1, s, s), ["chip", "y", "x"], 0,
              long_name="PV label: 0 background, 1 PV, 2 uncertain (point installations)")
        array("datetime", (0, t), "float64", (4096, t), ["chip", "time"], np.nan,
              units="seconds since 1970-01-01T00:00:00", calendar="proleptic_gregorian")
        array("cloud_fraction", (0, t), "float32", (4096, t), ["chip", "time"], np.nan)
        array("valid_fraction", (0, t), "float32", (4096, t), ["chip", "time"], np.nan)
        array("solar_day", (0, t), str, (4096, t), ["chip", "time"], "")
        array("item_ids", (0, t), str, (4096, t), ["chip", "time"], "")
        array("easting", (0, s), "float64", (4096, s), ["chip", "x"], np.nan, units="m")
        array("northing", (0, s), "float64", (4096, s), ["chip", "y"], np.nan, units="m")
        for name, dtype, fill in (("chip_id", str, ""), ("fingerprint", str, ""), ("epsg", "int32", 0),
                                  ("pv_pixels", "int32", 0), ("uncertain_pixels", "int32", 0), ("active", "bool", False)):
            array(name, (0,), dtype, (4096,), ["chip"], fill)
        array("band", (len(self.bands),), str, (len(self.bands),), ["band"], "")
        self.root["band"][:] = np.array(self.bands)

    def unchanged(self, chip: Chip, fingerprint: str) -> bool:
        return self.fingerprints.get(chip.chip_id) == fingerprint

    def reserve(self, chip_ids: Sequence[str]) -> None:
        """Positions for chips not yet in the store (appended)."""
        new = [c for c in chip_ids if c not in self.position]
        if not new:
            return
        n0 = len(self.position)
        n = n0 + len(new)
        for name in self.root.array_keys():
            arr = self.root[name]
            if arr.metadata.dimension_names and arr.metadata.dimension_names[0] == "chip":
                arr.resize((n, *arr.shape[1:]))
        self.root["chip_id"][n0:n] = np.array(new)
        for i, c in enumerate(new):
            self.position[c] = n0 + i

    def write(self, chip: Chip, fingerprint: str, image: np.ndarray, scl: np.ndarray | None, valid: np.ndarray,
              label: np.ndarray, datetimes: Sequence[pd.Timestamp], clouds: np.ndarray) -> None:
        """Store one chip at its position (time steps beyond its days stay empty)."""
        i = self.position[chip.chip_id]
        n = image.shape[0]
        full = np.zeros((self.times, *image.shape[1:]), np.uint16)
        full[:n] = image
        self.root["image"][i] = full
        pad = np.zeros((self.times, self.size, self.size), np.uint8)
        if scl is not None:
            pad[:n] = scl
        self.root["scl"][i] = pad
        pad = np.zeros((self.times, self.size, self.size), np.uint8)
        pad[:n] = valid
        self.root["valid"][i] = pad
        self.root["label"][i] = label
        row = lambda values, fill: np.array(list(values) + [fill] * (self.times - n))  # noqa: E731
        x0, y0, res = chip.west_m, chip.north_m, chip.resolution_m
        # The per-chip arrays share chunks of 4096 chips: written once per run (flush), not
        # rewritten for every chip.
        pending = {
            "datetime": row([t.timestamp() for t in datetimes], np.nan),
            "cloud_fraction": row(clouds if len(clouds) else [np.nan] * n, np.nan).astype("float32"),
            "valid_fraction": row(valid.mean(axis=(1, 2)), np.nan).astype("float32"),
            "solar_day": row(chip.days, ""),
            "item_ids": row((" ".join(d) for d in chip.day_items), ""),
            "easting": x0 + (np.arange(self.size) + 0.5) * res,
            "northing": y0 - (np.arange(self.size) + 0.5) * res,
            "epsg": chip.epsg,
            "pv_pixels": int((label == LABEL_PV).sum()),
            "uncertain_pixels": int((label == LABEL_UNCERTAIN).sum()),
            "fingerprint": fingerprint,
        }
        for name, value in pending.items():
            self._pending.setdefault(name, {})[i] = value
        self.fingerprints[chip.chip_id] = fingerprint

    def flush(self) -> None:
        """Write the per-chip values of the chips written since the last flush."""
        for name, values in self._pending.items():
            arr = self.root[name]
            data = arr[:]
            for i, value in values.items():
                data[i] = value
            arr[:] = data
        self._pending = {}

    def commit(self, active: Iterable[str], message: str, run: Mapping) -> str:
        """Mark the chips of this run's index active, record the run, commit; the snapshot id."""
        self.flush()
        flags = np.zeros(len(self.position), dtype=bool)
        for c in active:
            flags[self.position[c]] = True
        if len(flags):
            self.root["active"][:] = flags
        self.root.attrs["run"] = dict(run)
        return self.session.commit(message)

    def per_chip(self) -> pd.DataFrame:
        """The small per-chip arrays as a frame (index: chip_id)."""
        names = ("fingerprint", "epsg", "pv_pixels", "uncertain_pixels", "datetime", "cloud_fraction",
                 "valid_fraction", "solar_day", "item_ids")
        data = {name: list(self.root[name][:]) for name in names}
        frame = pd.DataFrame(data, index=pd.Index([str(c) for c in self.root["chip_id"][:]], name="chip_id"))
        frame["position"] = np.arange(len(frame))
        return frame


def open_cube(path: str | Path, snapshot_id: str | None = None, active_only: bool = True):
    """The chips as an xarray Dataset (lazy), at the latest commit or at ``snapshot_id``.

    Parameters
    ----------
    path : str or Path
        ``<data_dir>/cubes``.
    snapshot_id : str, optional
        An earlier run's snapshot (``chips.parquet``'s ``snapshot_id``, or the repository's
        ancestry): that run's chips, as they were.
    active_only : bool
        Only the chips of that run's index.
    """
    import xarray as xr

    repo = open_repository(path, create=False)
    session = repo.readonly_session(snapshot_id=snapshot_id) if snapshot_id else repo.readonly_session(branch="main")
    ds = xr.open_zarr(session.store, consolidated=False, zarr_format=3)
    ds = ds.set_coords([c for c in ("chip_id", "band", "datetime", "easting", "northing", "epsg", "solar_day")
                        if c in ds])
    if active_only and "active" in ds:
        ds = ds.isel(chip=np.flatnonzero(ds["active"].values))
    return ds


# ---------------------------------------------------------------- the stage


INDEX_COLUMNS = (
    "chip_id", "kind", "epsg", "west_m", "north_m", "size_px", "resolution_m", "pv_ids", "n_pv", "mask_pv_ids",
    "item_ids", "solar_days", "datetimes", "cloud_fraction", "valid_fraction", "mean_cloud_fraction",
    "mean_valid_fraction", "pv_pixels", "uncertain_pixels", "store_position", "loaded", "fingerprint", "snapshot_id",
)
"""Columns of ``cubes/chips.parquet`` (and the lake table ``cubes.chips``) before ``geometry``."""

SKIPPED_COLUMNS = {"pv_id": pa.string(), "chip_id": pa.string(), "reason": pa.string(), "detail": pa.string()}
"""Columns of ``cubes/skipped.parquet``: one row per installation left out (with the chip,
where the chip was the problem)."""


def mask_members(chips: Sequence[Chip], geometries: np.ndarray) -> list[np.ndarray]:
    """Positions of the installations touching each chip (every installation counts,
    not only those the chip was made for)."""
    tree = shapely.STRtree(geometries)
    return [np.sort(tree.query(chip.footprint_lonlat(), predicate="intersects")) for chip in chips]


def run_stage(layout: Layout, stac_manifest: str | Path | None, settings: CubeSettings,
              progress: bool = True) -> dict:
    """The cubes stage: chips, masks and the chip index for every installation with scenes.

    Returns
    -------
    dict
        The report also written to ``cubes/report.json``.
    """
    started = time.perf_counter()
    items_list = read_items(layout.stac_items())
    items = {it["id"]: it for it in items_list}
    matches = pd.read_parquet(layout.stac_matches(), columns=["pv_id", "item_id"])
    stac_skipped = pd.read_parquet(layout.stac_skipped(), columns=["pv_id", "reason"])
    installations = gpd.read_parquet(layout.prepared_parquet(), columns=["pv_id", "geometry"])
    installations = installations.sort_values("pv_id", kind="stable").reset_index(drop=True)
    used = [items[i] for i in sorted(set(matches["item_id"]) & set(items))]
    bands, scl_band = stac_bands(stac_manifest, used)
    chips = plan_stage_chips(installations, matches, items_list, settings)
    geometries = installations.geometry.to_numpy()
    pv_ids = installations["pv_id"].to_numpy()
    members = mask_members(chips, geometries)
    fingerprints = [chip_fingerprint(c, items, bands, scl_band, (pv_ids[m], geometries[m]), settings)
                    for c, m in zip(chips, members)]
    store = ChipStore(layout.cubes_dir(), bands, settings.chip_size_px, settings.max_dates)
    todo = [k for k, (c, f) in enumerate(zip(chips, fingerprints)) if not store.unchanged(c, f)]
    store.reserve([chips[k].chip_id for k in todo])
    by_id = {c.chip_id: k for k, c in enumerate(chips)}
    groups = group_chips([chips[k] for k in todo], items, settings.chunk_px)
    skipped_rows: list[dict] = []
    written: set[str] = set()
    for result in load_chips(groups, items, bands, scl_band, settings, progress):
        if isinstance(result, tuple):
            chip, message = result
            skipped_rows += [{"pv_id": p, "chip_id": chip.chip_id, "reason": "asset_unreadable", "detail": message}
                             for p in chip.pv_ids]
            continue
        chip = result.chip
        k = by_id[chip.chip_id]
        valid = valid_mask(result.image, result.scl, settings.scl_invalid)
        if not valid.any():
            skipped_rows += [{"pv_id": p, "chip_id": chip.chip_id, "reason": "no_valid_pixels",
                              "detail": f"{len(chip.days)} date(s), every pixel invalid"} for p in chip.pv_ids]
            continue
        label = label_mask(chip, geometries[members[k]], settings.point_radius_m)
        when = scenes_time(chip, items)
        clouds = cloud_fraction(result.scl, settings.scl_cloud)
        store.write(chip, fingerprints[k], result.image, result.scl, valid, label, when, clouds)
        written.add(chip.chip_id)
    reused = {chips[k].chip_id for k in range(len(chips)) if k not in set(todo)}
    active = sorted(reused | written)
    run = {"chips": len(active), "loaded": len(written), "reused": len(reused), "loader": settings.loader,
           "finished": pd.Timestamp.now(tz="UTC").isoformat()}
    snapshot = store.commit(active, f"cubes: {len(active)} chips ({len(written)} loaded, {len(reused)} reused)", run)
    index = chip_index(chips, members, pv_ids, store.per_chip(), set(active), written, snapshot)
    write_geoparquet(index, layout.cubes_index())
    for row in stac_skipped.itertuples(index=False):
        skipped_rows.append({"pv_id": row.pv_id, "chip_id": None, "reason": "no_scene",
                             "detail": f"STAC search: {row.reason}"})
    skipped = pd.DataFrame(skipped_rows, columns=list(SKIPPED_COLUMNS)).sort_values(["reason", "pv_id", "chip_id"])
    table = pa.Table.from_pandas(skipped, schema=pa.schema(list(SKIPPED_COLUMNS.items())), preserve_index=False)
    import pyarrow.parquet as pq

    with atomic_path(layout.cubes_skipped()) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    chip_skips = skipped.dropna(subset=["chip_id"]).drop_duplicates("chip_id")
    report = {
        "installations": len(installations),
        "installations_in_chips": int(index["pv_ids"].explode().nunique()) if len(index) else 0,
        "chips_planned": len(chips),
        "chips": len(active),
        "chips_loaded": len(written),
        "chips_reused": len(reused),
        "chips_skipped": {r: int((chip_skips["reason"] == r).sum()) for r in ("asset_unreadable", "no_valid_pixels")},
        "installations_skipped": {r: int(skipped.loc[skipped["reason"] == r, "pv_id"].nunique()) for r in SKIP_REASONS},
        "farm_tiles": int((index["kind"] == "farm_tile").sum()) if len(index) else 0,
        "bands": list(bands),
        "scl_band": scl_band,
        "chip_size_px": settings.chip_size_px,
        "resolution_m": settings.resolution_m,
        "max_dates": settings.max_dates,
        "loader": settings.loader,
        "scheduler": "distributed" if settings.scheduler else f"threads ({settings.workers})",
        "snapshot_id": snapshot,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(report, layout.cubes_report())
    return report


def scenes_time(chip: Chip, items: Mapping[str, Mapping]) -> list[pd.Timestamp]:
    """Acquisition time of each of a chip's days (its first scene's)."""
    return [pd.Timestamp(items[d[0]]["properties"]["datetime"]).tz_convert("UTC") for d in chip.day_items]


def chip_index(chips: Sequence[Chip], members: Sequence[np.ndarray], pv_ids: np.ndarray, stored: pd.DataFrame,
               active: set[str], loaded: set[str], snapshot: str) -> gpd.GeoDataFrame:
    """The chip index (:data:`INDEX_COLUMNS` and the footprint, EPSG:4326), by chip id."""
    rows = []
    for chip, m in zip(chips, members):
        if chip.chip_id not in active:
            continue
        s = stored.loc[chip.chip_id]
        n = len(chip.days)
        clouds = [float(v) for v in s["cloud_fraction"][:n]]
        valid = [float(v) for v in s["valid_fraction"][:n]]
        rows.append({
            "chip_id": chip.chip_id, "kind": chip.kind, "epsg": chip.epsg, "west_m": chip.west_m,
            "north_m": chip.north_m, "size_px": chip.size_px, "resolution_m": chip.resolution_m,
            "pv_ids": list(chip.pv_ids), "n_pv": len(chip.pv_ids), "mask_pv_ids": sorted(map(str, pv_ids[m])),
            "item_ids": list(chip.item_ids), "solar_days": list(chip.days),
            "datetimes": [pd.Timestamp(v, unit="s", tz="UTC") for v in s["datetime"][:n]],
            "cloud_fraction": clouds, "valid_fraction": valid,
            "mean_cloud_fraction": float(np.nanmean(clouds)) if n else np.nan,
            "mean_valid_fraction": float(np.mean(valid)) if n else np.nan,
            "pv_pixels": int(s["pv_pixels"]), "uncertain_pixels": int(s["uncertain_pixels"]),
            "store_position": int(s["position"]), "loaded": chip.chip_id in loaded,
            "fingerprint": str(s["fingerprint"]), "snapshot_id": snapshot,
            "geometry": chip.footprint_lonlat(),
        })
    frame = pd.DataFrame(rows, columns=[*INDEX_COLUMNS, "geometry"])
    frame["datetimes"] = frame["datetimes"].astype(object)
    return gpd.GeoDataFrame(frame, geometry="geometry", crs="EPSG:4326").sort_values("chip_id").reset_index(drop=True)


# ---------------------------------------------------------------- reading chips (PyTorch-free)


@dataclass(frozen=True)
class ChipSample:
    """One chip as numpy arrays, for any training loop.

    Attributes
    ----------
    image : numpy.ndarray
        ``(time, band, y, x)`` uint16 digital numbers (reflectance = DN x scale + offset of
        the items' ``raster:bands``; Sentinel-2 L2A: x 0.0001 - 0.1).
    mask : numpy.ndarray
        ``(y, x)`` uint8 label mask (:data:`LABEL_PV`, :data:`LABEL_UNCERTAIN`).
    meta : dict
        ``chip_id``, ``epsg``, ``transform`` (GDAL affine of the chip's grid), ``bands``,
        ``datetimes``, ``solar_days``, ``item_ids``, ``valid`` ``(time, y, x)`` bool,
        ``scl`` ``(time, y, x)``, ``cloud_fraction``.
    """

    image: np.ndarray
    mask: np.ndarray
    meta: dict


def iter_chips(path: str | Path, snapshot_id: str | None = None, chip_ids: Sequence[str] | None = None,
               min_valid_fraction: float = 0.0) -> Iterator[ChipSample]:
    """The chips of the store as (image, mask, metadata) numpy arrays, one at a time.

    No deep-learning framework needed; a torchgeo- or PyTorch-style dataset wraps it
    (see docs/cubes.md). Only each chip's real time steps are returned, those with at
    least ``min_valid_fraction`` valid pixels.

    Parameters
    ----------
    path : str or Path
        ``<data_dir>/cubes``.
    snapshot_id : str, optional
        Read an earlier run's chips.
    chip_ids : sequence of str, optional
        These chips only (default: every chip of that run's index, in store order).
    min_valid_fraction : float
    """
    ds = open_cube(path, snapshot_id)
    ids = [str(c) for c in ds["chip_id"].values]
    wanted = range(len(ids)) if chip_ids is None else [ids.index(c) for c in chip_ids]
    bands = [str(b) for b in ds["band"].values]
    for i in wanted:
        one = ds.isel(chip=i).compute()
        keep = np.flatnonzero((one["solar_day"].values != "") & (one["valid_fraction"].values >= min_valid_fraction))
        res = float(one["easting"].values[1] - one["easting"].values[0])
        west = float(one["easting"].values[0]) - res / 2
        north = float(one["northing"].values[0]) + res / 2
        yield ChipSample(
            image=one["image"].values[keep],
            mask=one["label"].values,
            meta={
                "chip_id": ids[i], "epsg": int(one["epsg"].values), "transform": (res, 0.0, west, 0.0, -res, north),
                "bands": bands, "datetimes": one["datetime"].values[keep], "solar_days": one["solar_day"].values[keep],
                "item_ids": [str(v).split() for v in one["item_ids"].values[keep]],
                "valid": one["valid"].values[keep].astype(bool), "scl": one["scl"].values[keep],
                "cloud_fraction": one["cloud_fraction"].values[keep],
            },
        )


# ---------------------------------------------------------------- baseline segmentation


@dataclass(frozen=True)
class BaselineSettings:
    """The ``cubes.baseline`` configuration (see workflow/config/README.md).

    Attributes
    ----------
    h3_resolution : int
        Chips whose centres share an H3 cell of this resolution form one split group.
    test_fraction : float
        Share of chips (whole groups) held out for evaluation.
    dates : str
        ``clearest``: each chip's date with the most valid pixels; ``all``: every date.
    train_pixels : int
        Pixels sampled for training (PV pixels first, up to half; weights restore the
        true class shares).
    max_iter, max_leaf_nodes : int
        Of the gradient-boosted trees.
    threads : int
        OpenMP threads of scikit-learn (on a busy machine, more threads spin and are slower).
    seed : int
    """

    h3_resolution: int = 5
    test_fraction: float = 0.3
    dates: str = "clearest"
    train_pixels: int = 200_000
    max_iter: int = 40
    max_leaf_nodes: int = 15
    threads: int = 1
    seed: int = 0

    @classmethod
    def from_config(cls, config: Mapping | None) -> BaselineSettings:
        return cls(**{k: v for k, v in (config or {}).items() if k in cls.__dataclass_fields__})


FEATURES = ("blue", "green", "red", "nir", "swir16", "swir22", "ndvi", "ndwi", "ndbi", "blue_red")
"""Pixel features of the baseline, where the bands exist: surface reflectances, NDVI
(Rouse et al. 1974), NDWI (McFeeters 1996), NDBI (Zha et al. 2003) and the blue/red ratio
(PV modules are bluish, dark roofs and soil reddish)."""


def pixel_features(image: np.ndarray, bands: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Features ``(n_features, ...)`` float32 from digital numbers ``(band, ...)``
    (Sentinel-2 L2A scaling: reflectance = DN x 0.0001 - 0.1)."""
    refl = image.astype(np.float32) * 1e-4 - 0.1
    b = {name: refl[k] for k, name in enumerate(bands)}

    def ratio(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (a - c) / np.maximum(np.abs(a + c), 1e-3)

    feats, names = [refl[k] for k in range(len(bands))], list(bands)
    for name, need, fn in (("ndvi", ("nir", "red"), lambda: ratio(b["nir"], b["red"])),
                           ("ndwi", ("green", "nir"), lambda: ratio(b["green"], b["nir"])),
                           ("ndbi", ("swir16", "nir"), lambda: ratio(b["swir16"], b["nir"])),
                           ("blue_red", ("blue", "red"), lambda: b["blue"] / np.maximum(b["red"], 1e-3))):
        if all(n in b for n in need):
            feats.append(fn())
            names.append(name)
    return np.stack(feats).astype(np.float32), names


def split_groups(index: gpd.GeoDataFrame, h3_resolution: int, test_fraction: float, seed: int) -> pd.DataFrame:
    """A spatial split of the chips: ``chip_id``, ``group``, ``split``.

    Chips are grouped by the H3 cell (``h3_resolution``) of their centre, and groups
    holding chips that touch or overlap are merged (a cell border may cut a cluster of
    chips), so neighbouring chips are never on both sides. Whole groups, in a seeded random
    order, go to the test set until it holds ``test_fraction`` of the chips.
    """
    import h3

    n = len(index)
    if n == 0:
        return pd.DataFrame({"chip_id": [], "group": [], "split": []})
    centres = shapely.get_coordinates(shapely.centroid(index.geometry.to_numpy()))
    cells = [h3.latlng_to_cell(lat, lon, h3_resolution) for lon, lat in centres]
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    first: dict[str, int] = {}
    for i, c in enumerate(cells):
        union(i, first.setdefault(c, i))
    a, b = shapely.STRtree(index.geometry.to_numpy()).query(index.geometry.to_numpy(), predicate="intersects")
    for i, j in zip(a, b):
        union(int(i), int(j))
    roots = [find(i) for i in range(n)]
    group_cells: dict[int, str] = {}
    for r, c in zip(roots, cells):
        group_cells[r] = min(group_cells.get(r, c), c)
    group = [group_cells[r] for r in roots]
    names = sorted(set(group))
    order = np.random.default_rng(seed).permutation(len(names))
    sizes = pd.Series(group).value_counts()
    test, held = set(), 0
    for k in order:
        if held >= test_fraction * n:
            break
        test.add(names[k])
        held += int(sizes[names[k]])
    return pd.DataFrame({"chip_id": index["chip_id"].to_numpy(), "group": group,
                         "split": ["test" if g in test else "train" for g in group]})


def _chip_dates(valid_fraction: np.ndarray, days: np.ndarray, mode: str) -> np.ndarray:
    real = np.flatnonzero(days != "")
    if mode == "all" or len(real) == 0:
        return real
    return real[[int(np.nanargmax(valid_fraction[real]))]]


def scores(tp: int, fp: int, fn: int) -> dict:
    """IoU, precision, recall and F1 of the PV class (NaN where undefined)."""
    nan = float("nan")
    return {
        "iou": tp / (tp + fp + fn) if tp + fp + fn else nan,
        "precision": tp / (tp + fp) if tp + fp else nan,
        "recall": tp / (tp + fn) if tp + fn else nan,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
    }


SCORE_COLUMNS = ["chip_id", "group", "split", "pixels", "tp", "fp", "fn", "tn", "iou", "precision", "recall", "f1"]


def _scores_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    for col in ("pixels", "tp", "fp", "fn", "tn"):
        table[col] = table[col].astype("Int64")
    for col in ("iou", "precision", "recall", "f1"):
        table[col] = table[col].astype("float64")
    return table


def _untrained_baseline(layout: Layout, settings: BaselineSettings, split: pd.DataFrame, started: float,
                        reason: str) -> dict:
    """The baseline's outputs when it cannot be trained: the split without scores, and a
    report that says why (``trained: false``)."""
    table = _scores_table(split[["chip_id", "group", "split"]].to_dict("records"))
    with atomic_path(layout.baseline_scores()) as tmp:
        table.to_parquet(tmp, index=False)
    report = {
        "model": "sklearn HistGradientBoostingClassifier",
        "trained": False,
        "reason": reason,
        "test_chips": int((split["split"] == "test").sum()),
        "train_chips": int((split["split"] == "train").sum()),
        "groups": int(split["group"].nunique()),
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(report, layout.baseline_report())
    return report


def run_baseline(layout: Layout, settings: BaselineSettings, progress: bool = True) -> dict:
    """Train and evaluate the baseline PV pixel classifier on the cube's chips.

    A histogram gradient-boosted tree classifier (scikit-learn; Ke et al. 2017, LightGBM)
    on :func:`pixel_features`, trained on pixels of the training chips and evaluated on the
    test chips of a spatial split (:func:`split_groups`). Pixels that are invalid (SCL) or
    uncertain in the label mask are neither trained on nor scored.

    Returns
    -------
    dict
        Also written to ``cubes/baseline.json``: ``trained`` (false, with a ``reason``, when
        the training chips lack PV or background pixels), overall scores, confusion matrix
        ``[[tn, fp], [fn, tp]]``, pixel and chip counts, features, settings, seconds.
        Per-chip split and scores go to ``cubes/baseline_scores.parquet``.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    index = gpd.read_parquet(layout.cubes_index())
    split = split_groups(index, settings.h3_resolution, settings.test_fraction, settings.seed)
    import zarr

    # plain Zarr reads of whole chunks: one chip-date at a time, no Dask graph per chip
    root = zarr.open_group(open_repository(layout.cubes_dir(), create=False).readonly_session(branch="main").store,
                           mode="r", zarr_format=3)
    ids = [str(c) for c in root["chip_id"][:]]
    position = {c: i for i, c in enumerate(ids)}
    bands = [str(b) for b in root["band"][:]]
    rng = np.random.default_rng(settings.seed)
    vf, days = root["valid_fraction"][:], root["solar_day"][:]

    def chip_pixels(chip: str):
        i = position[chip]
        t = _chip_dates(vf[i], days[i], settings.dates)
        image = np.stack([root["image"][i, k] for k in t])  # (time, band, y, x)
        label = root["label"][i]
        valid = np.stack([root["valid"][i, k] for k in t]).astype(bool)
        usable = valid & (label[None] != LABEL_UNCERTAIN)
        feats, names = pixel_features(np.moveaxis(image, 1, 0), bands)  # (feature, time, y, x)
        pv = np.broadcast_to(label[None] == LABEL_PV, usable.shape)
        return feats[:, usable].T, pv[usable], names

    train_ids = split.loc[split["split"] == "train", "chip_id"]
    xs, ys = [], []
    names: list[str] = []
    for chip in tqdm(train_ids, desc="baseline: training pixels", unit="chip", disable=not progress):
        x, y, names = chip_pixels(chip)
        xs.append(x)
        ys.append(y)
    x_all = np.concatenate(xs) if xs else np.empty((0, 0), np.float32)
    y_all = np.concatenate(ys) if ys else np.empty(0, bool)
    if y_all.sum() == 0 or (~y_all).sum() == 0:
        # Not an error of the run: a region whose labels are all points (uncertain pixels)
        # or whose chips all fell to the test side has nothing to learn from; say so.
        return _untrained_baseline(layout, settings, split, started,
                                   f"the {len(train_ids)} training chips hold {int(y_all.sum()):,} PV and "
                                   f"{int((~y_all).sum()):,} background pixels (valid, not uncertain): "
                                   "a classifier needs both")
    pv, bg = np.flatnonzero(y_all), np.flatnonzero(~y_all)
    n_pv = min(len(pv), settings.train_pixels // 2)
    n_bg = min(len(bg), settings.train_pixels - n_pv)
    pick = np.r_[rng.choice(pv, n_pv, replace=False), rng.choice(bg, n_bg, replace=False)]
    # weights give each class its true share again, so 0.5 stays the right threshold
    weight = np.where(y_all[pick], len(pv) / n_pv, len(bg) / n_bg)
    limits = threadpool_limits(settings.threads)
    model = HistGradientBoostingClassifier(max_iter=settings.max_iter, max_leaf_nodes=settings.max_leaf_nodes,
                                           random_state=settings.seed, early_stopping=False)
    model.fit(x_all[pick], y_all[pick], sample_weight=weight)
    del x_all, y_all
    rows = []
    for chip, group, side in tqdm(split.itertuples(index=False), total=len(split), desc="baseline: evaluation",
                                  unit="chip", disable=not progress):
        row = {"chip_id": chip, "group": group, "split": side}
        if side == "test":
            x, y, _ = chip_pixels(chip)
            pred = model.predict(x).astype(bool) if len(x) else np.empty(0, bool)
            tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
            fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
            row.update({"pixels": len(y), "tp": tp, "fp": fp, "fn": fn, "tn": tn, **scores(tp, fp, fn)})
        rows.append(row)
    limits.unregister()
    table = _scores_table(rows)
    with atomic_path(layout.baseline_scores()) as tmp:
        table.to_parquet(tmp, index=False)
    test = table[table["split"] == "test"]
    tp, fp, fn, tn = (int(test[c].sum()) for c in ("tp", "fp", "fn", "tn"))
    report = {
        "model": "sklearn HistGradientBoostingClassifier",
        "trained": True,
        "features": names,
        "overall": scores(tp, fp, fn),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "confusion_labels": ["background", "pv"],
        "test_chips": int(len(test)),
        "train_chips": int((table["split"] == "train").sum()),
        "groups": int(split["group"].nunique()),
        "test_groups": int(test["group"].nunique()),
        "train_pixels_available": int(len(pv) + len(bg)),
        "train_pixels_used": int(len(pick)),
        "test_pixels": int(tp + fp + fn + tn),
        "per_chip_median": {k: float(test[k].median()) for k in ("iou", "precision", "recall", "f1")},
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(report, layout.baseline_report())
    return report
