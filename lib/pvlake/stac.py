"""STAC stage, search half: the satellite scenes each PV installation will be cut from.

Imagery stays where it is (Earth Search, Planetary Computer, static catalogues); this
stage finds it. From ``prepared/pv_installations.parquet`` and a STAC manifest
(:func:`load_stac_manifest`), it

1. buffers each installation by the catalogue's ``buffer_meters`` (its *footprint*);
2. groups installations by the H3 parent cell of a point on their surface and searches
   each group's footprint bounding box once (:func:`group_searches`), so a global run of
   450,000 installations makes thousands of searches, not hundreds of thousands;
3. searches API catalogues with pystac-client (bbox, datetime, collections, the cloud
   filter as a CQL2 ``filter`` or a ``query``, every page followed) through the project's
   HTTP session (timeouts, bounded retries with backoff on 429/5xx honouring
   ``Retry-After``), with every answer cached on disk under a key made from the request;
   static catalogues are walked once with pystac (pystac-client cannot search them) and
   the same filters are applied in Python (the CQL2 filter with ``cql2``);
4. assigns every scene back to each installation whose footprint it fully covers and
   selects, per catalogue, collection and period, the ``max_items_per_location`` least
   cloudy ones, a tie going to the more recent scene (:func:`select_scenes`);
5. explains every installation left without a scene (:data:`REASONS`).

Outputs (:func:`run_stage`): every item found, once, as stac-geoparquet
(``stac/items.parquet``), the selection (``stac/matches.parquet``), the installations
without a scene and why (``stac/skipped.parquet``) and a JSON report with the request
counts (``stac/search_report.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import cql2
import geopandas as gpd
import h3
import numpy as np
import pandas as pd
import pyarrow as pa
import pystac
import requests
import shapely
from tqdm import tqdm

from .io import atomic_path, write_json
from .layout import Layout
from .sources.http import failure_reason, http_reason, http_session

CATALOG_TYPES = ("api", "static")

REASONS = {
    "too_cloudy": "scenes cover the footprint, but every one fails the cloud filter",
    "partial_cover": "scenes reach the footprint, but none covers all of it",
    "no_scene": "no scene of the catalogues reaches the footprint in the date range",
}
"""Why an installation has no usable scene, most informative first: an installation
gets the first reason that holds for it."""

PERIODS = {"year": "Y", "quarter": "Q", "month": "M", "all": None}
"""Selection periods (config ``stac.period``) and their pandas period codes; ``all`` is
one period spanning the whole ``date_range``."""

CLOUD_COVER = "eo:cloud_cover"

WGS84_A_M = 6_378_137.0
WGS84_E2 = 6.694379990141317e-3

SIGNERS = ("planetary_computer",)
"""Asset URL signing schemes a manifest entry may name (``url_signing``)."""

MATCH_COLUMNS = {
    "pv_id": pa.string(),
    "catalog": pa.string(),
    "collection": pa.string(),
    "item_id": pa.string(),
    "datetime": pa.timestamp("us", tz="UTC"),
    "period": pa.string(),
    "cloud_cover": pa.float64(),
    "coverage_fraction": pa.float64(),
    "rank": pa.int32(),
}
"""Columns of ``stac/matches.parquet`` (and the lake table ``stac.matches``)."""

SKIPPED_COLUMNS = {
    "pv_id": pa.string(),
    "reason": pa.string(),
    "scenes_reaching": pa.int32(),
    "scenes_covering_cloudy": pa.int32(),
    "best_coverage_fraction": pa.float64(),
    "centroid_lon": pa.float64(),
    "centroid_lat": pa.float64(),
}
"""Columns of ``stac/skipped.parquet``: installations with no usable scene, the reason,
how many scenes reached the footprint at all, how many covered it but failed the cloud
filter, and the largest fraction of the footprint one scene covered."""


class StacError(Exception):
    """A STAC manifest, catalogue or search failure.

    Parameters
    ----------
    catalog : str
        The manifest entry (catalogue name) concerned.
    where : str
        The file or URL concerned.
    reason : str
        What went wrong.
    """

    def __init__(self, catalog: str, where: str, reason: str):
        self.catalog, self.where, self.reason = catalog, where, reason
        super().__init__(f"STAC catalogue {catalog!r} ({where}): {reason}")


# ---------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class CatalogSpec:
    """One entry of the STAC manifest.

    Attributes
    ----------
    name : str
        The entry's key.
    catalog_type : str
        ``api`` (a STAC API, searched with pystac-client) or ``static`` (a static
        catalogue, walked with pystac).
    catalog_uri : str
        Landing page of the API, or the static root ``catalog.json`` (a URL or a path;
        relative paths are resolved against the manifest's folder).
    collections : tuple of str
        ``include_collections``.
    max_cloud_cover : float
        Per cent; a scene qualifies when its ``eo:cloud_cover`` is at most this.
    date_range : tuple of str
        First and last day (ISO dates), inclusive.
    buffer_m : float
        ``buffer_meters``: the footprint is the installation grown by this, metres.
    max_items : int
        ``max_items_per_location``: scenes kept per installation, collection and period.
    cql_filter : str or None
        A CQL2 text filter every qualifying scene also passes.
    priority : int
        Lower first (order of the catalogues in reports).
    url_signing : str or None
        ``planetary_computer`` for Planetary Computer assets (see :func:`sign_items`).
    entry : dict
        The entry as written.
    """

    name: str
    catalog_type: str
    catalog_uri: str
    collections: tuple[str, ...]
    max_cloud_cover: float
    date_range: tuple[str, str]
    buffer_m: float
    max_items: int
    cql_filter: str | None
    priority: int
    url_signing: str | None
    entry: dict = field(repr=False, compare=False)

    def filter_json(self) -> dict:
        """The qualifying-scene filter as CQL2 JSON: the cloud limit, and the entry's
        ``cql_filter`` when it has one."""
        cloud = {"op": "<=", "args": [{"property": CLOUD_COVER}, float(self.max_cloud_cover)]}
        if not self.cql_filter:
            return cloud
        return {"op": "and", "args": [cloud, cql2.parse_text(self.cql_filter).to_json()]}

    def datetime_interval(self) -> str:
        """``date_range`` as the RFC 3339 interval a STAC search takes (whole days)."""
        return f"{self.date_range[0]}T00:00:00Z/{self.date_range[1]}T23:59:59Z"

    @property
    def is_url(self) -> bool:
        return is_url(self.catalog_uri)


def is_url(href: str) -> bool:
    return urlsplit(str(href)).scheme in ("http", "https")


def _spec(name: str, entry: Mapping, folder: Path, path: Path) -> CatalogSpec:
    def fail(reason: str):
        raise StacError(name, str(path), reason)

    if not isinstance(entry, Mapping):
        fail("the entry is not a JSON object")
    catalog_type = entry.get("catalog_type")
    if catalog_type not in CATALOG_TYPES:
        fail(f"catalog_type must be one of {', '.join(CATALOG_TYPES)} (got {catalog_type!r})")
    uri = entry.get("catalog_uri")
    if not uri or not isinstance(uri, str):
        fail("catalog_uri is missing")
    if not is_url(uri):
        if catalog_type == "api":
            fail(f"an api catalogue needs an http(s) catalog_uri (got {uri!r})")
        uri = str((folder / uri).resolve())
    collections = entry.get("include_collections")
    if not collections or not all(isinstance(c, str) for c in collections):
        fail("include_collections must list at least one collection id")
    params = entry.get("search_parameters") or {}
    missing = [k for k in ("max_cloud_cover", "date_range", "buffer_meters", "max_items_per_location") if k not in params]
    if missing:
        fail(f"search_parameters lacks {', '.join(missing)}")
    try:
        start, end = (pd.Timestamp(d).date().isoformat() for d in str(params["date_range"]).split("/"))
    except ValueError:
        fail(f"date_range must be 'YYYY-MM-DD/YYYY-MM-DD' (got {params['date_range']!r})")
    if start > end:
        fail(f"date_range ends before it starts ({params['date_range']})")
    cloud = params["max_cloud_cover"]
    if not isinstance(cloud, (int, float)) or not 0 <= cloud <= 100:
        fail(f"max_cloud_cover must be a percentage 0-100 (got {cloud!r})")
    buffer_m = params["buffer_meters"]
    if not isinstance(buffer_m, (int, float)) or buffer_m < 0:
        fail(f"buffer_meters must be a non-negative number (got {buffer_m!r})")
    max_items = params["max_items_per_location"]
    if not isinstance(max_items, int) or max_items < 1:
        fail(f"max_items_per_location must be a positive integer (got {max_items!r})")
    cql_filter = entry.get("cql_filter") or None
    if cql_filter is not None:
        try:
            cql2.parse_text(cql_filter)
        except (cql2.ParseError, ValueError) as exc:
            fail(f"cql_filter is not CQL2 text ({exc})")
    signing = entry.get("url_signing")
    if signing is not None and signing not in SIGNERS:
        fail(f"url_signing must be one of {', '.join(SIGNERS)} (got {signing!r})")
    return CatalogSpec(
        name=name, catalog_type=catalog_type, catalog_uri=uri, collections=tuple(collections),
        max_cloud_cover=float(cloud), date_range=(start, end), buffer_m=float(buffer_m), max_items=max_items,
        cql_filter=cql_filter, priority=int(entry.get("priority", 1)), url_signing=signing, entry=dict(entry),
    )


def load_stac_manifest(path: str | Path) -> dict[str, CatalogSpec]:
    """Read and check a STAC manifest (the thesis project's ``stac_manifest.json`` shape).

    Entries without ``catalog_type`` (the reference manifest's vector datasets, such as
    Overture Maps) are not imagery catalogues and are rejected; entries with
    ``"skip": true`` are read and checked but not searched (:func:`active_catalogs`).

    Raises
    ------
    StacError
        Naming the entry, the file and the reason, for the first entry that is wrong.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StacError("*", str(path), "the STAC manifest does not exist") from exc
    except json.JSONDecodeError as exc:
        raise StacError("*", str(path), f"not valid JSON ({exc})") from exc
    if not isinstance(entries, dict) or not entries:
        raise StacError("*", str(path), "a STAC manifest is a JSON object of catalogue entries")
    return {name: _spec(name, entry, path.parent, path) for name, entry in entries.items()}


def active_catalogs(specs: Mapping[str, CatalogSpec]) -> list[CatalogSpec]:
    """The entries to search (``skip`` false), by priority then name."""
    return sorted((s for s in specs.values() if not s.entry.get("skip")), key=lambda s: (s.priority, s.name))


# ---------------------------------------------------------------- footprints and groups


def metres_per_degree(lat_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metres per degree of longitude and of latitude on the WGS84 ellipsoid."""
    phi = np.radians(lat_deg)
    w = np.sqrt(1 - WGS84_E2 * np.sin(phi) ** 2)
    lon_m = np.pi / 180 * WGS84_A_M * np.cos(phi) / w
    lat_m = np.pi / 180 * WGS84_A_M * (1 - WGS84_E2) / w**3
    return lon_m, lat_m


def buffered_footprints(geometries: np.ndarray, buffer_m: float, quad_segs: int = 8) -> np.ndarray:
    """Each geometry grown by ``buffer_m`` metres: the area a scene must cover.

    The buffer is drawn in a local metric frame around a point on each geometry's
    surface (equirectangular with the ellipsoid's scale at that latitude: below 0.1 %
    error within a few kilometres), so one vectorised call serves any number of
    installations anywhere on Earth. Footprints that cross the antimeridian come back
    as MultiPolygons split at +/-180 degrees, as STAC items are.

    Parameters
    ----------
    geometries : numpy.ndarray of shapely geometries
        Lon/lat (EPSG:4326).
    buffer_m : float
        Metres.
    """
    geometries = np.asarray(geometries, dtype=object)
    origin = shapely.get_coordinates(shapely.point_on_surface(geometries))
    lon_m, lat_m = metres_per_degree(origin[:, 1])
    scale = np.column_stack([lon_m, lat_m])
    coords, index = shapely.get_coordinates(geometries, return_index=True)
    local = shapely.set_coordinates(geometries.copy(), (coords - origin[index]) * scale[index])
    grown = shapely.buffer(local, buffer_m, quad_segs=quad_segs) if buffer_m > 0 else local
    coords, index = shapely.get_coordinates(grown, return_index=True)
    footprints = shapely.set_coordinates(grown, coords / scale[index] + origin[index])
    return wrap_antimeridian(footprints)


_WORLD = shapely.box(-180, -90, 180, 90)


def wrap_antimeridian(geometries: np.ndarray) -> np.ndarray:
    """Geometries reaching past +/-180 degrees, cut there and the outer part shifted by
    360 degrees (a MultiPolygon on both sides); others unchanged."""
    xmin, _, xmax, _ = shapely.bounds(geometries).T
    out = geometries.copy()
    for i in np.flatnonzero((xmin < -180) | (xmax > 180)):
        g = geometries[i]
        parts = [shapely.intersection(shapely.affinity.translate(g, xoff=dx), _WORLD) for dx in (-360, 0, 360)]
        polygons = [p for part in parts for p in getattr(part, "geoms", [part]) if p.geom_type == "Polygon" and not p.is_empty]
        out[i] = shapely.MultiPolygon(polygons)
    return out


def group_cells(geometries: np.ndarray, h3_resolution: int) -> np.ndarray:
    """The H3 cell (resolution ``h3_resolution``) of a point on each geometry's surface.

    A point on the surface, not the centroid: it lies inside the installation, so a
    scene that covers the footprint always contains it.
    """
    points = shapely.get_coordinates(shapely.point_on_surface(np.asarray(geometries, dtype=object)))
    return np.array([h3.latlng_to_cell(lat, lon, h3_resolution) for lon, lat in points], dtype=object)


@dataclass(frozen=True)
class GroupSearch:
    """One search: the installations of one H3 cell, and the bounding box they need.

    Attributes
    ----------
    cell : str
        H3 cell of the group (with ``#e``/``#w`` when the group spans the antimeridian
        and is searched as two boxes).
    bbox : tuple of float
        (west, south, east, north), degrees, snapped outwards to ``snap_deg``.
    members : numpy.ndarray
        Positions of the group's installations in the input.
    """

    cell: str
    bbox: tuple[float, float, float, float]
    members: np.ndarray


def _snap(bounds: np.ndarray, snap_deg: float) -> tuple[float, float, float, float]:
    west, south, east, north = bounds
    lo = lambda v: math.floor(round(v / snap_deg, 9)) * snap_deg  # noqa: E731
    hi = lambda v: math.ceil(round(v / snap_deg, 9)) * snap_deg  # noqa: E731
    return (round(max(lo(west), -180.0), 9), round(max(lo(south), -90.0), 9),
            round(min(hi(east), 180.0), 9), round(min(hi(north), 90.0), 9))


def group_searches(footprints: np.ndarray, cells: np.ndarray, snap_deg: float = 0.01) -> list[GroupSearch]:
    """One search per H3 cell over the bounding box of its installations' footprints.

    The box is snapped outwards to a ``snap_deg`` grid, so the request (and its cache
    key) stays the same when an installation is added inside it. A group whose
    footprints lie on both sides of the antimeridian is searched as two boxes.

    Returns
    -------
    list of GroupSearch
        Sorted by cell, so requests go out in a stable order.
    """
    if len(footprints) == 0:
        return []
    bounds = shapely.bounds(footprints)
    order = np.argsort(cells, kind="stable")
    sorted_cells = cells[order]
    starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    searches = []
    for members in np.split(order, starts[1:]):
        cell = str(cells[members[0]])
        box = bounds[members]
        if box[:, 2].max() - box[:, 0].min() > 180:
            # footprints at both ends of the longitude range (a cell on the antimeridian):
            # one box per side, not one around the world
            parts = shapely.get_parts(footprints[members])
            part_bounds = shapely.bounds(parts)
            for side, pick in (("w", part_bounds[:, 0] < 0), ("e", part_bounds[:, 0] >= 0)):
                b = part_bounds[pick]
                searches.append(GroupSearch(f"{cell}#{side}", _snap(np.r_[b[:, 0].min(), b[:, 1].min(),
                                                                            b[:, 2].max(), b[:, 3].max()], snap_deg), members))
            continue
        searches.append(GroupSearch(cell, _snap(np.r_[box[:, 0].min(), box[:, 1].min(), box[:, 2].max(),
                                                      box[:, 3].max()], snap_deg), members))
    return sorted(searches, key=lambda g: g.cell)


def period_labels(datetimes: pd.Series, period: str) -> pd.Series:
    """The selection period of each scene time (``2023``, ``2023Q1``, ``2023-01`` or ``all``)."""
    if PERIODS[period] is None:
        return pd.Series("all", index=datetimes.index, dtype=object)
    return datetimes.dt.tz_convert("UTC").dt.tz_localize(None).dt.to_period(PERIODS[period]).astype(str)


# ---------------------------------------------------------------- HTTP, cache, counters


@dataclass
class SearchStats:
    """What one catalogue's search cost.

    Attributes
    ----------
    searches : int
        Group searches answered (from the network or the cache).
    diagnosis_searches : int
        Searches for scenes that fail the cloud filter (only for groups with
        installations left without a scene, to name the reason).
    http_requests : int
        HTTP answers received (pages, catalogue documents; a retried request counts once).
    cache_hits : int
        Searches or documents answered from the disk cache, with no request.
    items_found : int
        Distinct qualifying items the searches returned.
    """

    searches: int = 0
    diagnosis_searches: int = 0
    http_requests: int = 0
    cache_hits: int = 0
    items_found: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        """Count ``n`` more of ``name`` (searches run in threads)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


@dataclass(frozen=True)
class HttpSettings:
    """How the stage talks to catalogues (config ``stac``).

    Attributes
    ----------
    connect_timeout_s, read_timeout_s : float
        Seconds to connect, and to wait for the next bytes of an answer.
    attempts : int
        Tries per request (connection failures, timeouts, 429/5xx with backoff,
        ``Retry-After`` honoured).
    page_size : int
        Items per page of an API search (``limit``); pages are followed to the end.
    workers : int
        Parallel requests (API group searches, static catalogue documents).
    """

    connect_timeout_s: float = 30.0
    read_timeout_s: float = 120.0
    attempts: int = 5
    page_size: int = 500
    workers: int = 4

    def session(self, stats: SearchStats) -> requests.Session:
        """The project's HTTP session (:func:`pvlake.sources.http.http_session`) with
        ``POST`` retried too (a STAC search is a query), counting answers in ``stats``."""
        session = http_session(attempts=self.attempts, timeout_s=(self.connect_timeout_s, self.read_timeout_s),
                               pool_size=max(10, self.workers), retry_methods=frozenset({"GET", "HEAD", "POST"}))

        def count(response, *args, **kwargs):
            stats.add("http_requests")

        session.hooks["response"].append(count)
        return session


class DiskCache:
    """JSON answers on disk, one file per request key (SHA-256 of the request).

    Parameters
    ----------
    folder : Path or None
        Where the files go; None disables the cache.
    """

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None

    @staticmethod
    def key(request: Mapping) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def get(self, key: str):
        if self.folder is None:
            return None
        path = self.folder / key[:2] / f"{key}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def put(self, key: str, value) -> None:
        if self.folder is None:
            return
        with atomic_path(self.folder / key[:2] / f"{key}.json") as tmp:
            tmp.write_text(json.dumps(value, separators=(",", ":")), encoding="utf-8")


# ---------------------------------------------------------------- catalogues


class _HttpStacIO(pystac.StacIO):
    """pystac I/O over the project's session (timeouts, retries) with the disk cache:
    walking a remote static catalogue twice fetches each document once."""

    def __init__(self, spec: CatalogSpec, session: requests.Session, cache: DiskCache, stats: SearchStats):
        self.spec, self.session, self.cache, self.stats = spec, session, cache, stats

    def read_text(self, source, *args, **kwargs) -> str:
        href = str(source.href if isinstance(source, pystac.Link) else source)
        if not is_url(href):
            try:
                return Path(href).read_text(encoding="utf-8")
            except OSError as exc:
                raise StacError(self.spec.name, href, f"cannot read the catalogue file ({exc.strerror})") from exc
        key = DiskCache.key({"GET": href})
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.add("cache_hits")
            return cached["text"]
        try:
            response = self.session.get(href)
        except requests.RequestException as exc:
            raise StacError(self.spec.name, href, failure_reason(self.session, href, exc)) from exc
        if response.status_code != 200:
            raise StacError(self.spec.name, href, http_reason(response))
        self.cache.put(key, {"text": response.text})
        return response.text

    def write_text(self, dest, txt: str, *args, **kwargs) -> None:
        raise StacError(self.spec.name, str(dest), "the stage never writes into a catalogue")


def absolute_hrefs(item: dict, href: str) -> dict:
    """``item`` with asset and link hrefs made absolute against the item's own location
    (static catalogues use relative ones, which break once the item leaves its folder)."""
    for asset in item.get("assets", {}).values():
        asset["href"] = _join(href, asset["href"])
    item["links"] = [
        {**link, "href": _join(href, link["href"])} for link in item.get("links", []) if link.get("rel") != "self"
    ] + [{"rel": "self", "href": href, "type": "application/geo+json"}]
    return item


def _join(base: str, href: str) -> str:
    if is_url(href) or os.path.isabs(href):
        return href
    if is_url(base):
        return urljoin(base, href)
    return os.path.normpath(os.path.join(os.path.dirname(base), href))


class ItemTable:
    """Items in memory with the columns the matching needs, one row per item.

    Attributes
    ----------
    items : list of dict
        The STAC items (GeoJSON dicts).
    frame : pandas.DataFrame
        ``collection``, ``item_id``, ``datetime`` (UTC), ``cloud_cover``, and
        ``geometry`` (shapely) per item.
    """

    def __init__(self, items: list[dict]):
        self.items = items
        self.frame = pd.DataFrame({
            "collection": pd.Series([it.get("collection") for it in items], dtype=object),
            "item_id": pd.Series([it["id"] for it in items], dtype=object),
            "datetime": pd.to_datetime(pd.Series([_item_time(it) for it in items], dtype=object), utc=True,
                                       format="ISO8601"),
            "cloud_cover": pd.Series([it["properties"].get(CLOUD_COVER) for it in items], dtype="float64"),
        })
        self.frame["geometry"] = shapely.from_geojson([json.dumps(it["geometry"]) for it in items]) if items else []


def _item_time(item: dict) -> str | None:
    props = item["properties"]
    return props.get("datetime") or props.get("start_datetime")


class StaticCatalog:
    """A static catalogue, walked once with pystac; searches filter it in Python.

    The walk follows ``child`` links (skipping collections not in
    ``include_collections``) and ``item`` links, fetching documents ``workers`` at a time;
    items keep absolute hrefs. Each search then applies the API's semantics: bbox
    intersection, datetime interval, collections, and the CQL2 filter (``cql2``).
    """

    def __init__(self, spec: CatalogSpec, settings: HttpSettings, cache: DiskCache, stats: SearchStats,
                 progress: bool = False):
        self.spec, self.stats = spec, stats
        self.io = _HttpStacIO(spec, settings.session(stats), cache, stats)
        items = self._walk(settings.workers, progress)
        table = ItemTable(items)
        frame = table.frame
        start, end = (pd.Timestamp(t) for t in spec.datetime_interval().split("/"))
        keep = frame["collection"].isin(spec.collections) & frame["datetime"].between(start, end)
        keep &= frame["geometry"].notna().to_numpy()
        qualify = cql2.Expr(spec.filter_json())
        self.items = [items[i] for i in np.flatnonzero(keep)]
        self.frame = frame[keep].reset_index(drop=True)
        self.qualifies = np.array([qualify.matches(it) for it in self.items], dtype=bool)
        self.tree = shapely.STRtree(self.frame["geometry"].to_numpy())

    def _walk(self, workers: int, progress: bool) -> list[dict]:
        try:
            root = pystac.read_file(self.spec.catalog_uri, stac_io=self.io)
        except (pystac.STACError, json.JSONDecodeError, KeyError, ValueError) as exc:
            raise StacError(self.spec.name, self.spec.catalog_uri, f"not a STAC catalogue ({exc})") from exc
        item_hrefs: list[str] = []
        nodes = [root]
        with ThreadPoolExecutor(workers) as pool:
            while nodes:
                children = []
                for node in nodes:
                    item_hrefs += [link.get_absolute_href() for link in node.get_links(pystac.RelType.ITEM)]
                    children += [link.get_absolute_href() for link in node.get_links(pystac.RelType.CHILD)]
                docs = pool.map(lambda href: (href, self.io.read_json(href)), children)
                nodes = []
                for href, doc in docs:
                    is_collection = doc.get("type") == "Collection"
                    if is_collection and doc.get("id") not in self.spec.collections:
                        continue
                    kind = pystac.Collection if is_collection else pystac.Catalog
                    nodes.append(kind.from_dict(doc, href=href, migrate=False, preserve_dict=False))
            bar = tqdm(total=len(item_hrefs), desc=f"walk {self.spec.name}", unit="item", disable=not progress)
            items = []
            for href, doc in zip(item_hrefs, pool.map(lambda h: self.io.read_json(h), item_hrefs)):
                items.append(absolute_hrefs(doc, href))
                bar.update()
            bar.close()
        return items

    def search(self, bbox: tuple[float, float, float, float], qualifying: bool = True) -> list[dict]:
        """Items intersecting ``bbox`` that pass (or, with ``qualifying=False``, fail)
        the cloud filter."""
        hits = self.tree.query(shapely.box(*bbox), predicate="intersects")
        hits = np.sort(hits[self.qualifies[hits] == qualifying])
        self.stats.add("searches" if qualifying else "diagnosis_searches")
        return [self.items[i] for i in hits]


class ApiCatalog:
    """A STAC API searched with pystac-client through the project's HTTP session.

    Every group search is one ``POST /search`` (bbox, datetime, collections, ``limit``)
    with the cloud filter as CQL2 JSON where the API conforms to the Filter extension,
    else as a ``query`` (Query extension; only ``max_cloud_cover`` then applies). Pages
    are followed to the end; the whole answer is cached under the request's key.
    """

    def __init__(self, spec: CatalogSpec, settings: HttpSettings, cache: DiskCache, stats: SearchStats):
        from pystac_client import Client
        from pystac_client.conformance import ConformanceClasses
        from pystac_client.exceptions import APIError
        from pystac_client.stac_api_io import StacApiIO

        self.spec, self.settings, self.cache, self.stats = spec, settings, cache, stats
        self._api_error = APIError
        timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        io = StacApiIO(timeout=timeout, max_retries=None)
        io.session = settings.session(stats)
        try:
            self.client = Client.open(spec.catalog_uri, stac_io=io, timeout=timeout)
        except APIError as exc:
            raise StacError(spec.name, spec.catalog_uri, f"the STAC API did not answer ({_api_reason(exc)})") from exc
        self.use_filter = self.client.conforms_to(ConformanceClasses.FILTER)
        if not self.use_filter:
            if not self.client.conforms_to(ConformanceClasses.QUERY):
                raise StacError(spec.name, spec.catalog_uri,
                                "the API supports neither the Filter nor the Query extension: no cloud filter")
            if spec.cql_filter:
                raise StacError(spec.name, spec.catalog_uri,
                                "cql_filter is set but the API does not support the Filter extension")

    def request(self, bbox: tuple[float, float, float, float], qualifying: bool) -> dict:
        """The search parameters (also the cache key's content)."""
        params = {
            "collections": list(self.spec.collections),
            "bbox": list(bbox),
            "datetime": self.spec.datetime_interval(),
            "limit": self.settings.page_size,
        }
        if self.use_filter:
            expr = self.spec.filter_json()
            params["filter"] = expr if qualifying else {"op": "not", "args": [expr]}
            params["filter_lang"] = "cql2-json"
        else:
            op = "lte" if qualifying else "gt"
            params["query"] = {CLOUD_COVER: {op: self.spec.max_cloud_cover}}
        return params

    def search(self, bbox: tuple[float, float, float, float], qualifying: bool = True) -> list[dict]:
        """Every item of the group's search, from the cache or page by page."""
        params = self.request(bbox, qualifying)
        key = DiskCache.key({"url": self.spec.catalog_uri, "search": params})
        self.stats.add("searches" if qualifying else "diagnosis_searches")
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.add("cache_hits")
            return cached["features"]
        features = []
        try:
            search = self.client.search(method="POST", **params)
            for page in search.pages_as_dicts():
                features += page.get("features", [])
        except self._api_error as exc:
            status = getattr(exc, "status_code", None)
            reason = f"HTTP {status}: {_api_reason(exc)}" if status else _api_reason(exc)
            raise StacError(self.spec.name, f"{self.spec.catalog_uri} search bbox={list(bbox)}", reason) from exc
        self.cache.put(key, {"request": params, "features": features})
        return features


def _api_reason(exc: Exception) -> str:
    """pystac-client wraps transport failures in APIError(str(error)); name the common ones."""
    text = str(exc)
    if "Read timed out" in text:
        return f"timed out: the server sent nothing within the read timeout ({text[:200]})"
    if "Max retries exceeded" in text or "too many" in text.lower():
        return f"gave up after the retries ({text[:300]})"
    return text[:500] or type(exc).__name__


def open_catalog(spec: CatalogSpec, settings: HttpSettings, cache: DiskCache, stats: SearchStats,
                 progress: bool = False) -> StaticCatalog | ApiCatalog:
    """The searcher for a manifest entry."""
    if spec.catalog_type == "static":
        return StaticCatalog(spec, settings, cache, stats, progress)
    return ApiCatalog(spec, settings, cache, stats)


def run_searches(catalog, groups: list[GroupSearch], qualifying: bool = True, workers: int = 1,
                 progress: bool = False, desc: str = "search") -> list[list[dict]]:
    """The answer to every group search, in ``groups`` order; a tqdm bar shows groups
    done and items returned so far (an item returned to two groups counts twice)."""
    bar = tqdm(total=len(groups), desc=desc, unit="group", disable=not progress)
    found = 0

    def one(group: GroupSearch) -> list[dict]:
        return catalog.search(group.bbox, qualifying)

    results = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for features in pool.map(one, groups):
            results.append(features)
            found += len(features)
            bar.update()
            bar.set_postfix(items_returned=found, refresh=False)
    bar.close()
    return results


# ---------------------------------------------------------------- matching and selection


def unique_items(answers: Iterable[list[dict]]) -> list[dict]:
    """Items of several answers, once each (by collection and id), sorted by them."""
    seen: dict[tuple[str, str], dict] = {}
    for features in answers:
        for item in features:
            seen.setdefault((item.get("collection") or "", item["id"]), item)
    return [seen[k] for k in sorted(seen)]


@dataclass(frozen=True)
class Coverage:
    """Which scenes touch which footprints, and how much of each they cover.

    Scenes that share one footprint geometry (a tile seen on many dates) are tested
    once: pairs are between footprints and distinct scene *shapes*.

    Attributes
    ----------
    fp, shape : numpy.ndarray of int
        The touching (footprint, shape) pairs.
    fraction : numpy.ndarray of float
        Share of the footprint the shape covers: 1.0 exactly when it covers all of it.
    item_shape : numpy.ndarray of int
        The shape of each scene.
    """

    fp: np.ndarray
    shape: np.ndarray
    fraction: np.ndarray
    item_shape: np.ndarray

    def items_per_pair(self) -> np.ndarray:
        """Number of scenes behind each pair."""
        return np.bincount(self.item_shape)[self.shape] if len(self.shape) else np.empty(0, np.int64)

    def restricted(self, fps: np.ndarray) -> Coverage:
        """The pairs of the footprints ``fps`` only."""
        keep = np.isin(self.fp, fps)
        return Coverage(self.fp[keep], self.shape[keep], self.fraction[keep], self.item_shape)


def coverage(footprints: np.ndarray, geometries: np.ndarray) -> Coverage:
    """Every (footprint, scene shape) pair that touches, with the covered fraction.

    Parameters
    ----------
    footprints : numpy.ndarray of shapely geometries
        Buffered installations, lon/lat.
    geometries : numpy.ndarray of shapely geometries
        Scene footprints, lon/lat.
    """
    empty = np.empty(0, np.int64)
    if len(geometries) == 0:
        return Coverage(empty, empty, np.empty(0), empty)
    unique_wkb, item_shape = np.unique(shapely.to_wkb(geometries), return_inverse=True)
    shapes = shapely.from_wkb(unique_wkb)
    if len(footprints) == 0:
        return Coverage(empty, empty, np.empty(0), item_shape)
    fp, shape = shapely.STRtree(shapes).query(footprints, predicate="intersects")
    order = np.lexsort((shape, fp))
    fp, shape = fp[order], shape[order]
    fraction = np.ones(len(fp))
    partial = ~shapely.covers(shapes[shape], footprints[fp])
    if partial.any():
        inter = shapely.intersection(shapes[shape[partial]], footprints[fp[partial]])
        fraction[partial] = np.minimum(shapely.area(inter) / shapely.area(footprints[fp[partial]]), 1 - 1e-12)
    return Coverage(fp, shape, fraction, item_shape)


def _group_starts(keys: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.empty(0, np.int64)


def select_scenes(cov: Coverage, scenes: pd.DataFrame, max_items: int, period: str) -> pd.DataFrame:
    """The usable scenes of each installation: per collection and period, the
    ``max_items`` least cloudy among those covering the whole footprint, a tie going to
    the more recent scene (then to the smaller item id, so the choice is stable).

    Installations covered by the same set of scene shapes get the same selection, so
    it is made once per distinct set (a few hundred for a continent) and repeated:
    the cost does not grow with installations times scenes.

    Parameters
    ----------
    cov : Coverage
        From :func:`coverage`, for the scenes of ``scenes``.
    scenes : pandas.DataFrame
        :class:`ItemTable` frame of qualifying scenes.
    max_items : int
        Scenes kept per installation, collection and period.
    period : str
        A key of :data:`PERIODS`.

    Returns
    -------
    pandas.DataFrame
        ``fp``, ``item``, ``collection``, ``item_id``, ``datetime``, ``period``,
        ``cloud_cover``, ``coverage_fraction``, ``rank`` (1 = best), sorted by ``fp``,
        collection, period and rank.
    """
    columns = ["fp", "item", "collection", "item_id", "datetime", "period", "cloud_cover", "coverage_fraction", "rank"]
    full = cov.fraction >= 1.0
    fp, shape = cov.fp[full], cov.shape[full]
    if len(fp) == 0:
        dtypes = {"fp": "int64", "item": "int64", "period": object, "coverage_fraction": "float64", "rank": "int32"}
        return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c) or scenes[c].dtype) for c in columns})
    # per item: sort keys of the selection
    periods = period_labels(scenes["datetime"], period)
    collection_code = pd.factorize(scenes["collection"].fillna(""), sort=True)[0]
    period_code = pd.factorize(periods, sort=True)[0]
    cloud = scenes["cloud_cover"].fillna(np.inf).to_numpy()
    newest_first = -scenes["datetime"].astype("int64").to_numpy()
    id_rank = scenes["item_id"].rank(method="dense").to_numpy()
    order_items = np.argsort(cov.item_shape, kind="stable")
    shape_starts = np.r_[0, np.cumsum(np.bincount(cov.item_shape))]
    # installations with the same covering shapes share one selection
    starts = _group_starts(fp)
    signatures: dict[bytes, list[int]] = {}
    for i, (a, b) in enumerate(zip(starts, np.r_[starts[1:], len(fp)])):
        signatures.setdefault(shape[a:b].tobytes(), []).append(i)
    fp_of = fp[starts]
    rows_item, rows_rank, rows_fp = [], [], []
    for key, members in signatures.items():
        shapes_here = np.frombuffer(key, dtype=shape.dtype)
        items = np.concatenate([order_items[shape_starts[s]:shape_starts[s + 1]] for s in shapes_here])
        o = np.lexsort((id_rank[items], newest_first[items], cloud[items], period_code[items], collection_code[items]))
        items = items[o]
        group = collection_code[items] * (period_code.max() + 1) + period_code[items]
        g_starts = _group_starts(group)
        rank = np.arange(len(items)) - np.repeat(g_starts, np.diff(np.r_[g_starts, len(items)])) + 1
        keep = rank <= max_items
        items, rank = items[keep], rank[keep]
        member_fps = fp_of[members]
        rows_item.append(np.tile(items, len(member_fps)))
        rows_rank.append(np.tile(rank, len(member_fps)))
        rows_fp.append(np.repeat(member_fps, len(items)))
    item = np.concatenate(rows_item)
    out = scenes.iloc[item][["collection", "item_id", "datetime", "cloud_cover"]].reset_index(drop=True)
    out.insert(0, "fp", np.concatenate(rows_fp))
    out.insert(1, "item", item)
    out["period"] = periods.to_numpy()[item]
    out["coverage_fraction"] = 1.0
    out["rank"] = np.concatenate(rows_rank).astype("int32")
    out = out.sort_values(["fp", "collection", "period", "rank"], kind="stable").reset_index(drop=True)
    return out[columns]


def skip_reasons(n: int, usable: np.ndarray, qualifying: Coverage, cloudy: Coverage) -> pd.DataFrame:
    """Why each installation without a usable scene has none (:data:`REASONS`).

    Parameters
    ----------
    n : int
        Number of installations.
    usable : numpy.ndarray of bool
        Installations with at least one selected scene.
    qualifying, cloudy : Coverage
        The footprints against the scenes that pass, and those that fail, the cloud filter.

    Returns
    -------
    pandas.DataFrame
        One row per installation without a usable scene: ``fp``, ``reason``,
        ``scenes_reaching``, ``scenes_covering_cloudy``, ``best_coverage_fraction``.
    """
    reaching = np.zeros(n, np.int64)
    cloudy_full = np.zeros(n, np.int64)
    best = np.zeros(n)
    for cov in (qualifying, cloudy):
        np.add.at(reaching, cov.fp, cov.items_per_pair())
        np.maximum.at(best, cov.fp, cov.fraction)
    full = cloudy.fraction >= 1.0
    np.add.at(cloudy_full, cloudy.fp[full], cloudy.items_per_pair()[full])
    fps = np.flatnonzero(~usable)
    reason = np.where(cloudy_full[fps] > 0, "too_cloudy", np.where(reaching[fps] > 0, "partial_cover", "no_scene"))
    return pd.DataFrame({
        "fp": fps,
        "reason": reason,
        "scenes_reaching": reaching[fps].astype("int32"),
        "scenes_covering_cloudy": cloudy_full[fps].astype("int32"),
        "best_coverage_fraction": best[fps],
    })


@dataclass
class CatalogResult:
    """One catalogue's search: the items found, the selection, the skipped."""

    spec: CatalogSpec
    items: list[dict]
    matches: pd.DataFrame
    unmatched: pd.DataFrame
    stats: SearchStats
    groups: int


def search_catalog(
    spec: CatalogSpec,
    geometries: np.ndarray,
    settings: HttpSettings,
    h3_resolution: int,
    period: str = "year",
    cache: DiskCache | None = None,
    snap_deg: float = 0.01,
    progress: bool = False,
) -> CatalogResult:
    """Search one catalogue for every installation and select its scenes.

    Parameters
    ----------
    spec : CatalogSpec
        The manifest entry.
    geometries : numpy.ndarray of shapely geometries
        The installations, lon/lat.
    settings : HttpSettings
        Timeouts, retries, page size, parallel requests.
    h3_resolution : int
        Resolution of the H3 cells that group installations into one search.
    period : str
        Selection period (:data:`PERIODS`).
    cache : DiskCache, optional
        Answers already fetched; none by default.
    snap_deg : float
        Grid the search boxes are snapped outwards to.
    progress : bool
        tqdm bars (groups done, items found).

    Returns
    -------
    CatalogResult
        ``matches`` and ``unmatched`` refer to installations by position (``fp``).
    """
    cache = cache or DiskCache(None)
    stats = SearchStats()
    footprints = buffered_footprints(geometries, spec.buffer_m)
    groups = group_searches(footprints, group_cells(geometries, h3_resolution), snap_deg)
    catalog = open_catalog(spec, settings, cache, stats, progress)
    workers = settings.workers if spec.catalog_type == "api" else 1
    answers = run_searches(catalog, groups, True, workers, progress, desc=f"search {spec.name}")
    items = unique_items(answers)
    stats.items_found = len(items)
    scenes = ItemTable(items).frame
    cov = coverage(footprints, scenes["geometry"].to_numpy())
    selected = select_scenes(cov, scenes, spec.max_items, period)
    usable = np.zeros(len(geometries), dtype=bool)
    usable[selected["fp"].to_numpy()] = True
    # name the reason only where there is something to explain: diagnosis searches for
    # the scenes the cloud filter rejects, in the groups of unmatched installations
    lacking = [g for g in groups if not usable[g.members].all()]
    cloudy = unique_items(run_searches(catalog, lacking, False, workers, progress, desc=f"diagnose {spec.name}"))
    unmatched_fp = np.flatnonzero(~usable)
    c_cov = coverage(footprints[unmatched_fp], ItemTable(cloudy).frame["geometry"].to_numpy())
    c_cov = Coverage(unmatched_fp[c_cov.fp], c_cov.shape, c_cov.fraction, c_cov.item_shape)
    unmatched = skip_reasons(len(geometries), usable, cov.restricted(unmatched_fp), c_cov)
    return CatalogResult(spec, items, selected, unmatched, stats, len(groups))


def combine_skipped(results: list[CatalogResult], n: int) -> pd.DataFrame:
    """Installations without a usable scene in any catalogue, with the most
    informative reason any catalogue gave (:data:`REASONS` order)."""
    usable = np.zeros(n, dtype=bool)
    for r in results:
        usable[r.matches["fp"].to_numpy()] = True
    frames = [r.unmatched for r in results]
    if not frames:
        nothing = coverage(np.empty(0, dtype=object), np.empty(0, dtype=object))
        return skip_reasons(n, usable, nothing, nothing)
    allr = pd.concat(frames, ignore_index=True)
    allr = allr[~usable[allr["fp"].to_numpy()]]
    allr["_order"] = allr["reason"].map({r: i for i, r in enumerate(REASONS)})
    out = allr.groupby("fp", sort=True).agg(
        _order=("_order", "min"), scenes_reaching=("scenes_reaching", "sum"),
        scenes_covering_cloudy=("scenes_covering_cloudy", "sum"), best_coverage_fraction=("best_coverage_fraction", "max"),
    ).reset_index()
    out.insert(1, "reason", np.array(list(REASONS))[out.pop("_order").to_numpy()])
    return out


# ---------------------------------------------------------------- outputs


def write_items(items: list[dict], path: str | Path, collections: Mapping[str, dict] | None = None) -> None:
    """Write STAC items as stac-geoparquet (the ``stac-geoparquet`` specification),
    sorted by collection and id, atomically.

    An empty list writes a valid empty file (the schema's core columns only)."""
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    items = sorted(items, key=lambda it: (it.get("collection") or "", it["id"]))
    with atomic_path(path) as tmp:
        if items:
            to_parquet(parse_stac_items_to_arrow(items), tmp, collections=collections)
        else:
            empty = pa.table({"id": pa.array([], pa.string()), "collection": pa.array([], pa.string()),
                              "datetime": pa.array([], pa.timestamp("us", tz="UTC")),
                              "geometry": pa.array([], pa.binary())})
            to_parquet(empty, tmp)


def write_table(frame: pd.DataFrame, columns: Mapping[str, pa.DataType], path: str | Path) -> None:
    """A plain Parquet file with exactly ``columns`` (zstd), atomically."""
    import pyarrow.parquet as pq

    schema = pa.schema(list(columns.items()))
    table = pa.Table.from_pandas(frame[list(columns)], schema=schema, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


@dataclass(frozen=True)
class StageSettings:
    """The ``stac`` configuration of the workflow (see workflow/config/README.md)."""

    h3_resolution: int = 4
    period: str = "year"
    snap_deg: float = 0.01
    http: HttpSettings = field(default_factory=HttpSettings)

    @classmethod
    def from_config(cls, config: Mapping) -> StageSettings:
        http = {k: config[k] for k in ("connect_timeout_s", "read_timeout_s", "attempts", "page_size", "workers")
                if k in config}
        return cls(h3_resolution=int(config.get("h3_resolution", 4)), period=config.get("period", "year"),
                   snap_deg=float(config.get("snap_deg", 0.01)), http=HttpSettings(**http))


def run_stage(
    prepared: str | Path,
    manifest: str | Path,
    layout: Layout,
    settings: StageSettings,
    progress: bool = True,
) -> dict:
    """The STAC search stage: every active catalogue of ``manifest`` searched for every
    installation of ``prepared``; writes the stage's four files.

    Returns
    -------
    dict
        The report also written to ``stac/search_report.json``: per catalogue the
        groups, searches, HTTP requests, cache hits, items found and installations with
        scenes; totals; skipped installations by reason.
    """
    specs = active_catalogs(load_stac_manifest(manifest))
    installations = gpd.read_parquet(prepared, columns=["pv_id", "centroid_lon", "centroid_lat", "geometry"])
    installations = installations.sort_values("pv_id", kind="stable").reset_index(drop=True)
    geometries = installations.geometry.to_numpy()
    cache = DiskCache(layout.stac_cache())
    started = time.perf_counter()
    results = [
        search_catalog(spec, geometries, settings.http, settings.h3_resolution, settings.period, cache,
                       settings.snap_deg, progress)
        for spec in specs
    ]
    pv_ids = installations["pv_id"].to_numpy()
    matches = pd.concat(
        [r.matches.assign(catalog=r.spec.name) for r in results] or [pd.DataFrame(columns=list(MATCH_COLUMNS) + ["fp"])],
        ignore_index=True,
    )
    matches["pv_id"] = pv_ids[matches["fp"].to_numpy().astype(np.int64)] if len(matches) else []
    matches = matches.sort_values(["pv_id", "catalog", "collection", "period", "rank"], kind="stable")
    skipped = combine_skipped(results, len(installations))
    skipped["pv_id"] = pv_ids[skipped["fp"].to_numpy()]
    for col in ("centroid_lon", "centroid_lat"):
        skipped[col] = installations[col].to_numpy()[skipped["fp"].to_numpy()]
    items = unique_items(r.items for r in results)
    write_items(items, layout.stac_items())
    write_table(matches, MATCH_COLUMNS, layout.stac_matches())
    write_table(skipped.sort_values("pv_id"), SKIPPED_COLUMNS, layout.stac_skipped())
    report = {
        "installations": len(installations),
        "with_scenes": int(len(installations) - len(skipped)),
        "skipped": {reason: int((skipped["reason"] == reason).sum()) for reason in REASONS},
        "items": len(items),
        "matches": len(matches),
        "searches": sum(r.stats.searches + r.stats.diagnosis_searches for r in results),
        "http_requests": sum(r.stats.http_requests for r in results),
        "cache_hits": sum(r.stats.cache_hits for r in results),
        "seconds": round(time.perf_counter() - started, 3),
        "catalogs": {
            r.spec.name: {
                "catalog_type": r.spec.catalog_type,
                "catalog_uri": r.spec.catalog_uri,
                "collections": list(r.spec.collections),
                "groups": r.groups,
                "searches": r.stats.searches,
                "diagnosis_searches": r.stats.diagnosis_searches,
                "http_requests": r.stats.http_requests,
                "cache_hits": r.stats.cache_hits,
                "items_found": r.stats.items_found,
                "installations_with_scenes": int(r.matches["fp"].nunique()),
            }
            for r in results
        },
    }
    write_json(report, layout.stac_report())
    return report


# ---------------------------------------------------------------- reading assets


def sign_items(items: list[dict], spec: CatalogSpec) -> list[dict]:
    """Items whose asset hrefs can be read: signed for catalogues that need it.

    Planetary Computer serves its assets from Azure Blob Storage with short-lived SAS
    tokens; ``planetary-computer`` fetches them (from ``PC_SDK_SAS_URL``, with the
    subscription key in ``PC_SDK_SUBSCRIPTION_KEY`` when set: environment only) and
    appends them. Catalogues without ``url_signing`` are returned as they are. The
    stored catalogue (``stac/items.parquet``) keeps the unsigned hrefs: a token expires.
    """
    if spec.url_signing is None:
        return items
    import planetary_computer

    return [planetary_computer.sign(pystac.Item.from_dict(it, preserve_dict=True)).to_dict(transform_hrefs=False)
            for it in items]


# ---------------------------------------------------------------- querying the catalogue


RUSTAC_EXTENSIONS = ("spatial", "icu", "parquet")
"""DuckDB extensions rustac's DuckDB client loads to read stac-geoparquet."""


def rustac_client(extension_dir: str | Path):
    """A ``rustac.DuckdbClient`` that never downloads anything.

    rustac embeds its own DuckDB (1.5.5 in rustac 0.9.17, the version of the project's
    extension wheels) and by default installs its extensions from the internet. Here
    ``extension_dir`` gets links to the wheels' extension files in DuckDB's
    ``<dir>/v<version>/<platform>/`` layout, and the client only loads them.
    """
    import duckdb
    import rustac

    from .lake import extension_path

    platform = duckdb.execute("PRAGMA platform").fetchone()[0]
    folder = Path(extension_dir) / f"v{duckdb.__version__}" / platform
    folder.mkdir(parents=True, exist_ok=True)
    for name in RUSTAC_EXTENSIONS:
        link = folder / f"{name}.duckdb_extension"
        target = extension_path(name)
        if not (link.is_symlink() and link.resolve() == target.resolve()):
            link.unlink(missing_ok=True)
            link.symlink_to(target)
    return rustac.DuckdbClient(extension_directory=Path(extension_dir), install_extensions=False)
