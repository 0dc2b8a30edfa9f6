"""A small Sentinel-2-like static STAC catalogue over the embedded sample's sites.

The STAC stage searches it offline exactly as it searches a real static catalogue. It
mimics Sentinel-2 L2A on Earth Search (collection ``sentinel-2-l2a``):

- **tiles** on the MGRS grid: 109.8 km UTM squares every 100 km, named like real ones
  (``31UCU``), so neighbouring tiles overlap by 9.8 km and tiles of two UTM zones overlap
  at zone edges (Cambridge, at 0.1 deg E, sits in tiles of zones 30 and 31): installations
  near a tile edge straddle it and are covered by the neighbour;
- **dates**: three acquisitions per tile and year (2023, 2024), one clear, one half
  clear, one cloudy, in random order, at about 10:30 local solar time;
- **items** as pystac 1.15 writes them: ``proj:code`` (no ``proj:epsg``), ``proj:shape``
  and ``proj:transform``, ``eo:cloud_cover``, and per asset ``eo:bands`` and
  ``raster:bands``; seven 10 m assets, one per band as real Sentinel-2 ships them
  (``blue``, ``green``, ``red``, ``nir``, ``swir16``, ``swir22``, ``scl``), whose hrefs
  point at cloud-optimised GeoTIFFs next to each item JSON (the cubes stage renders
  them; they are not committed).

Planted cases, recorded in ``stac/planted.json`` for the tests:

- ``no_scene``: the catalogue has no tile over Mildura (Australia);
- ``too_cloudy``: every acquisition over Upington (South Africa) is 60-100 % cloudy;
- ``partial_cover``: over Aswan (Egypt) every acquisition ends at a swath edge that runs
  north-south through the middle of one solar farm (real Sentinel-2 tiles at the edge
  of an orbit's swath have such partial footprints); farms east of it have no scene;
- ``tie``: on the one tile over a Phoenix installation that no other tile covers, two 2024
  acquisitions have the same cloud cover: the selection must keep the more recent one.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import shapely
from pyproj import Transformer
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterBand, RasterExtension
from pystac.stac_io import DefaultStacIO
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

COLLECTION = "sentinel-2-l2a"
YEARS = (2023, 2024)
DATES_PER_YEAR = 3
TILE_STEP_M = 100_000.0
TILE_SIZE_M = 109_800.0
PIXEL_M = 10.0
COORD_DIGITS = 6  # ~10 cm: finer than a 10 m pixel, and small JSON

NO_SCENE_PLACE = "Mildura"
CLOUDY_PLACE = "Upington"
PARTIAL_PLACE = "Aswan"
TIE_PLACE = "Phoenix"

# name, common name, centre wavelength (um), full width at half maximum (um), Sentinel-2 band
BANDS = (
    ("blue", "blue", 0.490, 0.098, "B02"),
    ("green", "green", 0.560, 0.045, "B03"),
    ("red", "red", 0.665, 0.038, "B04"),
    ("nir", "nir", 0.842, 0.145, "B08"),
    ("swir16", "swir16", 1.610, 0.143, "B11"),
    ("swir22", "swir22", 2.190, 0.242, "B12"),
)
SCL = "scl"

LAT_BANDS = "CDEFGHJKLMNPQRSTUVWX"
COL_LETTERS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"


def utm_zone(lon_deg: float) -> int:
    """UTM zone number (1-60) of a longitude."""
    return int((lon_deg + 180) // 6) % 60 + 1


def utm_epsg(zone: int, north: bool) -> int:
    return (32600 if north else 32700) + zone


def zone_bounds(zone: int) -> tuple[float, float]:
    """West and east longitude of a UTM zone."""
    west = -180.0 + 6.0 * (zone - 1)
    return west, west + 6.0


def mgrs_tile(zone: int, north: bool, col: int, row: int, lat_deg: float) -> str:
    """MGRS tile name (``31UCU``) of the 100 km square with lower-left corner
    (``col`` x 100 km, ``row`` x 100 km) in UTM ``zone`` (false northing included)."""
    band = LAT_BANDS[min(max(int((lat_deg + 80) // 8), 0), len(LAT_BANDS) - 1)]
    letter_col = COL_LETTERS[(zone - 1) % 3][(col - 1) % 8]
    letter_row = ROW_LETTERS[(row + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone:02d}{band}{letter_col}{letter_row}"


class Tile:
    """One Sentinel-2-like tile: a 109.8 km UTM square."""

    def __init__(self, zone: int, north: bool, col: int, row: int):
        self.zone, self.north, self.col, self.row = zone, north, col, row
        self.epsg = utm_epsg(zone, north)
        self.west_m = col * TILE_STEP_M
        self.north_m = (row + 1) * TILE_STEP_M
        to_lonlat = Transformer.from_crs(self.epsg, 4326, always_xy=True)
        square = box(self.west_m, self.north_m - TILE_SIZE_M, self.west_m + TILE_SIZE_M, self.north_m)
        ring = np.asarray(square.segmentize(TILE_SIZE_M / 2).exterior.coords)
        lon, lat = to_lonlat.transform(ring[:, 0], ring[:, 1])
        self.footprint = shapely.Polygon(np.column_stack([lon, lat]))
        centre_lon, centre_lat = to_lonlat.transform(self.west_m + TILE_SIZE_M / 2, self.north_m - TILE_SIZE_M / 2)
        self.centre = (float(centre_lon), float(centre_lat))
        self.name = mgrs_tile(zone, north, col, row, centre_lat)

    @property
    def key(self) -> tuple[int, bool, int, int]:
        return (self.zone, self.north, self.col, self.row)


def tiles_over(lon: float, lat: float) -> list[tuple[int, bool, int, int]]:
    """Keys of the tiles (this zone's and the neighbouring zones') containing a point.

    A zone's tiles are those whose 100 km core square reaches into the zone's longitude
    strip; their 109.8 km extent then reaches past its edge, as on the real grid.
    """
    north = lat >= 0
    zone = utm_zone(lon)
    keys = []
    for z in (zone - 1, zone, zone + 1):
        z = (z - 1) % 60 + 1
        to_utm = Transformer.from_crs(4326, utm_epsg(z, north), always_xy=True)
        to_lonlat = Transformer.from_crs(utm_epsg(z, north), 4326, always_xy=True)
        e, n = to_utm.transform(lon, lat)
        cols = {int(e // TILE_STEP_M)} | ({int(e // TILE_STEP_M) - 1} if e % TILE_STEP_M <= TILE_SIZE_M - TILE_STEP_M else set())
        rows = {int(n // TILE_STEP_M)} | ({int(n // TILE_STEP_M) + 1} if TILE_STEP_M - n % TILE_STEP_M <= TILE_SIZE_M - TILE_STEP_M else set())
        west, east = zone_bounds(z)
        for col in sorted(cols):
            core_west, _ = to_lonlat.transform(col * TILE_STEP_M, n)
            core_east, _ = to_lonlat.transform((col + 1) * TILE_STEP_M, n)
            if core_east <= west or core_west >= east:
                continue
            keys += [(z, north, col, row) for row in sorted(rows)]
    return keys


def _rounded(geometry: BaseGeometry) -> dict[str, Any]:
    geometry = shapely.set_precision(geometry, 10.0 ** -COORD_DIGITS)
    return json.loads(json.dumps(mapping(shapely.geometry.polygon.orient(geometry, 1))))


class CompactStacIO(DefaultStacIO):
    """Writes compact JSON with a trailing newline: small files, the same bytes on every
    machine (pystac's default output depends on whether orjson is installed)."""

    def json_dumps(self, json_dict: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        return json.dumps(json_dict, separators=(",", ":"), ensure_ascii=False) + "\n"


def nearest_place(lon: float, lat: float, places: dict) -> str:
    names = list(places)
    lats = np.array([places[n].lat for n in names])
    lons = np.array([places[n].lon for n in names])
    d = np.hypot((lons - lon) * np.cos(np.radians(lat)), lats - lat)
    return names[int(np.argmin(d))]


def acquisition(rng: np.random.Generator, year: int, lon: float) -> dt.datetime:
    """A date in ``year`` at about 10:30 local solar time (Sentinel-2's descending node)."""
    day = dt.date(year, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    utc_hours = (10.5 - lon / 15.0) % 24
    seconds = int(round(utc_hours * 3600))
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=seconds)


def make_item(tile: Tile, when: dt.datetime, cloud: float, platform: str, geometry: BaseGeometry) -> pystac.Item:
    """One acquisition of one tile, as pystac writes Sentinel-2 L2A items."""
    item_id = f"S2{platform[-1].upper()}_{tile.name}_{when:%Y%m%d}_0_L2A"
    geom = _rounded(geometry)
    item = pystac.Item(item_id, geom, list(np.round(shapely.bounds(shapely.geometry.shape(geom)), COORD_DIGITS)),
                       when, {"platform": platform, "constellation": "sentinel-2", "instruments": ["msi"],
                              "gsd": PIXEL_M, "grid:code": f"MGRS-{tile.name}"},
                       collection=COLLECTION)
    EOExtension.ext(item, add_if_missing=True).cloud_cover = round(float(cloud), 2)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code = f"EPSG:{tile.epsg}"
    size = int(TILE_SIZE_M / PIXEL_M)
    proj.shape = [size, size]
    proj.transform = [PIXEL_M, 0.0, tile.west_m, 0.0, -PIXEL_M, tile.north_m]
    RasterExtension.add_to(item)
    for name, common, centre, width, s2band in BANDS:
        asset = pystac.Asset(f"./{name}.tif", title=f"{common} ({s2band}) - 10m", media_type=pystac.MediaType.COG,
                             roles=["data", "reflectance"])
        item.add_asset(name, asset)
        EOExtension.ext(asset).bands = [Band.create(name=s2band, common_name=common, center_wavelength=centre,
                                                    full_width_half_max=width)]
        RasterExtension.ext(asset).bands = [RasterBand.create(nodata=0, data_type="uint16", spatial_resolution=PIXEL_M,
                                                              scale=0.0001, offset=-0.1)]
    scl = pystac.Asset(f"./{SCL}.tif", title="Scene classification map (SCL)", media_type=pystac.MediaType.COG,
                       roles=["data"])
    item.add_asset(SCL, scl)
    RasterExtension.ext(scl).bands = [RasterBand.create(nodata=0, data_type="uint8", spatial_resolution=PIXEL_M)]
    return item


def write_sample_catalog(installations: list[BaseGeometry], places: dict, out_dir: Path | str,
                         seed: int) -> dict[str, Any]:
    """Write the catalogue (``catalog.json``, the collection, one folder per item) and
    ``planted.json`` into ``out_dir``.

    Parameters
    ----------
    installations : list of shapely geometries
        Every PV feature the sample's manifest selects (lon/lat).
    places : dict
        The sample's places (``pvlake.sample.PLACES``).
    out_dir : Path or str
        The catalogue folder (emptied of earlier items first).
    seed : int
        The sample's seed; the catalogue draws from its own generator.

    Returns
    -------
    dict
        The planted cases that were written.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng([seed, 2])
    centres = [g.centroid for g in installations]
    at_place = [nearest_place(c.x, c.y, places) for c in centres]
    # the planted partial cover: a swath edge through the middle of the first farm at Aswan
    farm = next(g for g, p in zip(installations, at_place) if p == PARTIAL_PLACE and g.geom_type != "Point")
    tiles: dict[tuple, Tile] = {}
    tile_places: dict[tuple, set[str]] = {}
    for c, place in zip(centres, at_place):
        if place == NO_SCENE_PLACE:
            continue
        for key in tiles_over(c.x, c.y):
            if key not in tiles:
                tiles[key] = Tile(*key)
            tile_places.setdefault(key, set()).add(place)
    # the planted tie: on the one tile over an installation that no other tile covers
    tie_key = next(keys[0] for c, place in zip(centres, at_place)
                   if place == TIE_PLACE and len(keys := tiles_over(c.x, c.y)) == 1)
    edge_zone = utm_zone(farm.centroid.x)
    to_utm = Transformer.from_crs(4326, utm_epsg(edge_zone, farm.centroid.y >= 0), always_xy=True)
    edge_e, _ = to_utm.transform(farm.centroid.x, farm.centroid.y)

    collection = pystac.Collection(
        COLLECTION,
        "Sentinel-2-like Level-2A tiles over the embedded sample's PV sites (synthetic; "
        "generated by pvlake.sample_stac).",
        pystac.Extent(pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
                      pystac.TemporalExtent([[dt.datetime(YEARS[0], 1, 1, tzinfo=dt.timezone.utc),
                                              dt.datetime(YEARS[-1], 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)]])),
        title="Sentinel-2 L2A (embedded sample)",
        license="other",
        summaries=pystac.Summaries({"platform": ["sentinel-2a", "sentinel-2b"], "constellation": ["sentinel-2"],
                                    "gsd": [PIXEL_M], "instruments": ["msi"]}),
    )
    tie_tile = tiles[tie_key].name
    items = []
    for key in sorted(tiles):
        tile = tiles[key]
        places_here = tile_places[key]
        geometry = tile.footprint
        if PARTIAL_PLACE in places_here and tile.zone == edge_zone:
            to_lonlat = Transformer.from_crs(tile.epsg, 4326, always_xy=True)
            west = box(tile.west_m, tile.north_m - TILE_SIZE_M, edge_e, tile.north_m)
            ring = np.asarray(west.segmentize(TILE_SIZE_M / 2).exterior.coords)
            lon, lat = to_lonlat.transform(ring[:, 0], ring[:, 1])
            geometry = shapely.Polygon(np.column_stack([lon, lat]))
        for year in YEARS:
            if CLOUDY_PLACE in places_here:
                clouds = rng.uniform(60, 100, DATES_PER_YEAR)
            else:
                clouds = rng.permutation([rng.uniform(0, 12), rng.uniform(12, 28), rng.uniform(45, 100)])
            dates = sorted({acquisition(rng, year, tile.centre[0]) for _ in range(DATES_PER_YEAR)})
            while len(dates) < DATES_PER_YEAR:
                dates = sorted(set(dates) | {acquisition(rng, year, tile.centre[0])})
            if key == tie_key and year == YEARS[-1]:
                clouds = np.array([5.0, 20.0, 20.0])
            for i, (when, cloud) in enumerate(zip(dates, clouds)):
                platform = "sentinel-2a" if (i + key[2]) % 2 == 0 else "sentinel-2b"
                items.append(make_item(tile, when, cloud, platform, geometry))
    for item in sorted(items, key=lambda it: it.id):
        collection.add_item(item)
    catalog = pystac.Catalog("pvlake-sample", "Embedded sample catalogue of the ice-mELT DuckLake compendium.",
                             title="pvlake embedded sample")
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(out_dir.resolve()))
    for old in sorted(out_dir.glob(f"{COLLECTION}/*/*.json")):
        old.unlink()
    catalog.save(pystac.CatalogType.SELF_CONTAINED, stac_io=CompactStacIO())
    tie_items = sorted((it for it in items if tie_tile in it.id and it.datetime.year == YEARS[-1]),
                       key=lambda it: it.datetime)
    planted = {
        "no_scene": {"place": NO_SCENE_PLACE},
        "too_cloudy": {"place": CLOUDY_PLACE},
        "partial_cover": {"place": PARTIAL_PLACE, "farm_centroid": [round(farm.centroid.x, 7), round(farm.centroid.y, 7)]},
        "tie": {"place": TIE_PLACE, "tile": tie_tile, "year": YEARS[-1],
                "kept": tie_items[-1].id, "dropped": tie_items[-2].id, "cloud_cover": 20.0},
        "tiles": len(tiles),
        "items": len(items),
    }
    (out_dir / "planted.json").write_text(json.dumps(planted, indent=2) + "\n", encoding="utf-8")
    return planted
