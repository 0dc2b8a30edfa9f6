"""Vectorised geometry helpers shared by the stages: reprojection, coordinate checks,
antimeridian handling, repair, geodesic measures and H3 cells. Inputs and outputs are
numpy arrays of shapely geometries in lon/lat degrees unless a name says otherwise.

Geometries that cross the 180th meridian follow RFC 7946 (section 3.1.9): they are cut
into a MultiPolygon with parts on either side of +-180 degrees, and every measure that
needs a contiguous shape (centroid, extent) is taken on the shape "unwrapped" into one
longitude range, then wrapped back into -180..180.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyproj
import shapely
from h3ronpy import cells_to_string
from h3ronpy.vector import coordinates_to_cells

WGS84 = pyproj.CRS.from_epsg(4326)
GEOD = pyproj.Geod(ellps="WGS84")

POLYGONAL = ("Polygon", "MultiPolygon")


def to_wgs84(geoms: np.ndarray, crs: pyproj.CRS | str) -> np.ndarray:
    """Reproject geometries to EPSG:4326 in lon/lat order and drop Z.

    Parameters
    ----------
    geoms : numpy.ndarray of shapely geometries (None allowed)
    crs : pyproj.CRS or str
        The geometries' CRS.
    """
    geoms = shapely.force_2d(np.asarray(geoms, dtype=object))
    src = pyproj.CRS.from_user_input(crs)
    if src.equals(WGS84, ignore_axis_order=True):
        return geoms
    tf = pyproj.Transformer.from_crs(src, WGS84, always_xy=True)
    return shapely.transform(geoms, lambda xy: np.column_stack(tf.transform(xy[:, 0], xy[:, 1])))


LON_LIMIT = 180.0
LAT_LIMIT = 90.0
COORDINATE_TOLERANCE_DEG = 1e-7
"""Reprojection can overshoot +-180/+-90 by rounding (~1 cm); such values are clipped."""


def coordinate_faults(geoms: np.ndarray) -> np.ndarray:
    """Why each geometry's coordinates are impossible in EPSG:4326, or None.

    Returns
    -------
    numpy.ndarray of object
        ``non_finite_coordinates`` (a coordinate PROJ could not transform: inf or NaN),
        ``out_of_range_coordinates`` (longitude beyond +-180 or latitude beyond +-90,
        e.g. projected metres read as degrees, swapped columns), or None.
    """
    geoms = np.asarray(geoms, dtype=object)
    out = np.full(len(geoms), None, dtype=object)
    xy, owner = shapely.get_coordinates(geoms, return_index=True)
    if not len(xy):
        return out
    finite = np.isfinite(xy).all(axis=1)
    limit_lon = LON_LIMIT + COORDINATE_TOLERANCE_DEG
    limit_lat = LAT_LIMIT + COORDINATE_TOLERANCE_DEG
    outside = finite & ((np.abs(xy[:, 0]) > limit_lon) | (np.abs(xy[:, 1]) > limit_lat))
    out[np.unique(owner[outside])] = "out_of_range_coordinates"
    out[np.unique(owner[~finite])] = "non_finite_coordinates"
    return out


def clip_to_range(geoms: np.ndarray) -> np.ndarray:
    """Clip coordinates that overshoot +-180/+-90 by at most the tolerance (rounding)."""
    geoms = np.asarray(geoms, dtype=object)
    xmin, ymin, xmax, ymax = shapely.bounds(geoms).T
    with np.errstate(invalid="ignore"):
        over = (np.abs(xmin) > LON_LIMIT) | (np.abs(xmax) > LON_LIMIT) | (np.abs(ymin) > LAT_LIMIT) | (np.abs(ymax) > LAT_LIMIT)
    if not over.any():
        return geoms
    geoms = geoms.copy()
    geoms[over] = shapely.transform(
        geoms[over],
        lambda xy: np.column_stack([np.clip(xy[:, 0], -LON_LIMIT, LON_LIMIT), np.clip(xy[:, 1], -LAT_LIMIT, LAT_LIMIT)]),
    )
    return geoms


def wrap_lon(lon: np.ndarray) -> np.ndarray:
    """Longitudes wrapped into [-180, 180)."""
    return (np.asarray(lon, dtype=float) + 180.0) % 360.0 - 180.0


def _unwrapped_ring(xy: np.ndarray) -> np.ndarray:
    """Ring coordinates with the +-360 degree jumps of antimeridian crossings removed, so
    consecutive vertices are never more than 180 degrees of longitude apart."""
    xy = np.array(xy, dtype=float)
    jumps = np.round(np.diff(xy[:, 0]) / 360.0)
    xy[1:, 0] -= 360.0 * np.cumsum(jumps)
    return xy


def _has_crossing_edge(poly) -> bool:
    return any(
        (np.abs(np.diff(np.asarray(ring.coords)[:, 0])) > LON_LIMIT).any()
        for ring in (poly.exterior, *poly.interiors)
    )


_WINDOWS = tuple(
    (shapely.box(west, -LAT_LIMIT - 1, west + 360.0, LAT_LIMIT + 1), -(west + 180.0))
    for west in (-540.0, -180.0, 180.0)
)
"""Longitude windows of one turn each, with the shift that brings a window into -180..180."""


def _cut_at_antimeridian(poly) -> list:
    """Polygons of ``poly`` (one whose edges cross +-180) cut at the meridian and
    wrapped, each part inside -180..180."""
    exterior = _unwrapped_ring(poly.exterior.coords)
    holes = []
    for ring in poly.interiors:
        hole = _unwrapped_ring(ring.coords)
        hole[:, 0] += 360.0 * np.round((exterior[0, 0] - hole[0, 0]) / 360.0)
        holes.append(hole)
    unwrapped = shapely.Polygon(exterior, holes)
    if not unwrapped.is_valid:
        unwrapped = _polygonal_part(shapely.make_valid(unwrapped, method="structure", keep_collapsed=False))
    parts = []
    for window, shift in _WINDOWS:
        piece = _polygonal_part(shapely.intersection(unwrapped, window)) if unwrapped is not None else None
        if piece is not None:
            piece = shapely.transform(piece, lambda xy, s=shift: xy + np.array([s, 0.0]))
            parts.extend(shapely.get_parts(piece))
    return parts


def split_antimeridian(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut polygons whose edges cross the 180th meridian into parts on either side.

    A reprojected shape that straddles +-180 degrees (a Pacific farm in EPSG:3832, say)
    comes out of PROJ with edges from +179.99 to -179.99: read as planar lon/lat, such a
    polygon spans the whole globe. An edge more than 180 degrees of longitude long is
    taken the short way across the meridian (as geodesic measures already take it), and
    the polygon becomes a MultiPolygon cut at +-180 as RFC 7946 recommends. Shapes
    already cut that way have no such edge and are left unchanged.

    Returns
    -------
    geoms : numpy.ndarray
        The geometries, crossing polygons replaced by their cut MultiPolygons.
    split : numpy.ndarray of bool
        Rows that were cut.
    """
    geoms = np.asarray(geoms, dtype=object).copy()
    split = np.zeros(len(geoms), dtype=bool)
    xmin, _, xmax, _ = shapely.bounds(geoms).T
    with np.errstate(invalid="ignore"):
        wide = np.flatnonzero((xmax - xmin) > LON_LIMIT)
    for i in wide:
        g = geoms[i]
        if g.geom_type not in POLYGONAL:
            continue
        polys = list(shapely.get_parts(g))
        if not any(_has_crossing_edge(p) for p in polys):
            continue
        parts = []
        for p in polys:
            parts.extend(_cut_at_antimeridian(p) if _has_crossing_edge(p) else [p])
        if parts:
            geoms[i] = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
            split[i] = True
    return geoms, split


def unwrap_antimeridian(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geometries with parts on both sides of +-180 moved into one longitude range.

    A shape whose extent exceeds 180 degrees of longitude but fits in less once its
    western-hemisphere longitudes are read as 180..360 is an antimeridian shape; it is
    returned shifted (longitudes may exceed 180), every other geometry unchanged.

    Returns
    -------
    geoms : numpy.ndarray
        Contiguous geometries (for centroids, extents, local frames; not for storage).
    unwrapped : numpy.ndarray of bool
        Rows that were shifted.
    """
    geoms = np.asarray(geoms, dtype=object)
    unwrapped = np.zeros(len(geoms), dtype=bool)
    xmin, _, xmax, _ = shapely.bounds(geoms).T
    with np.errstate(invalid="ignore"):
        wide = np.flatnonzero((xmax - xmin) > LON_LIMIT)
    if not len(wide):
        return geoms, unwrapped
    shifted = shapely.transform(geoms[wide], lambda xy: np.column_stack([np.where(xy[:, 0] < 0, xy[:, 0] + 360.0, xy[:, 0]), xy[:, 1]]))
    sxmin, _, sxmax, _ = shapely.bounds(shifted).T
    ok = (sxmax - sxmin) <= LON_LIMIT
    geoms = geoms.copy()
    geoms[wide[ok]] = shifted[ok]
    unwrapped[wide[ok]] = True
    return geoms, unwrapped


def _polygonal_part(geom):
    """Polygonal content of a repaired geometry (make_valid can return collections)."""
    if geom is None or geom.is_empty:
        return None
    kind = geom.geom_type
    if kind in POLYGONAL:
        return geom
    if kind == "GeometryCollection":
        polys = []
        for part in geom.geoms:
            if part.geom_type == "Polygon":
                polys.append(part)
            elif part.geom_type == "MultiPolygon":
                polys.extend(part.geoms)
        if not polys:
            return None
        return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)
    return None


def polygonal_collections(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GeometryCollections replaced by their polygonal parts (a Polygon or MultiPolygon).

    Some exports wrap a site's panel blocks in a GeometryCollection; its polygons are the
    installation, as after a repair (stray points or lines in it are not). Collections
    without a polygon are left for :func:`repair` to drop as unsupported.

    Returns
    -------
    geoms : numpy.ndarray
    converted : numpy.ndarray of bool
        Rows whose collection was replaced by its polygonal parts.
    """
    geoms = np.asarray(geoms, dtype=object)
    converted = np.zeros(len(geoms), dtype=bool)
    live = ~shapely.is_missing(geoms)
    collections = np.flatnonzero(live & (shapely.get_type_id(geoms) == 7))
    if not len(collections):
        return geoms, converted
    geoms = geoms.copy()
    for i in collections:
        part = _polygonal_part(geoms[i])
        if part is not None:
            geoms[i] = part
            converted[i] = True
    return geoms, converted


def repair(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make geometries usable: repair invalid polygons, flag what cannot be kept.

    Invalid polygons go through ``shapely.make_valid`` (structure method) and keep their
    polygonal parts; every polygon is then oriented (exterior counter-clockwise, holes
    clockwise, as RFC 7946 asks) so that ring-signed areas add up correctly.

    Returns
    -------
    geoms : numpy.ndarray
        Repaired geometries (None where dropped).
    repaired : numpy.ndarray of bool
        Rows whose geometry was invalid and was repaired.
    drop_reason : numpy.ndarray of object
        None for kept rows, else one of ``null_geometry``, ``empty_geometry``,
        ``unsupported_type:<type>``, ``unrepairable``.
    """
    geoms = np.asarray(geoms, dtype=object).copy()
    n = len(geoms)
    reason = np.full(n, None, dtype=object)
    repaired = np.zeros(n, dtype=bool)

    null = shapely.is_missing(geoms)
    reason[null] = "null_geometry"
    empty = ~null & shapely.is_empty(geoms)
    reason[empty] = "empty_geometry"

    types = np.full(n, -1)
    live = ~(null | empty)
    types[live] = shapely.get_type_id(geoms[live])
    # shapely type ids: 0 Point, 3 Polygon, 4 MultiPoint, 6 MultiPolygon
    single_multipoint = live & (types == 4) & (shapely.get_num_geometries(geoms) == 1)
    geoms[single_multipoint] = shapely.get_geometry(geoms[single_multipoint], 0)
    types[single_multipoint] = 0
    unsupported = live & ~np.isin(types, (0, 3, 6))
    for i in np.flatnonzero(unsupported):
        reason[i] = f"unsupported_type:{geoms[i].geom_type}"

    poly = live & ~unsupported & np.isin(types, (3, 6))
    invalid = poly & ~shapely.is_valid(geoms)
    if invalid.any():
        fixed = shapely.make_valid(geoms[invalid], method="structure", keep_collapsed=False)
        fixed = np.array([_polygonal_part(g) for g in fixed], dtype=object)
        idx = np.flatnonzero(invalid)
        lost = shapely.is_missing(fixed)
        reason[idx[lost]] = "unrepairable"
        geoms[idx] = fixed
        repaired[idx[~lost]] = True
    dropped = np.array([r is not None for r in reason], dtype=bool)
    poly &= ~dropped
    geoms[poly] = shapely.orient_polygons(geoms[poly], exterior_cw=False)
    geoms[dropped] = None
    return geoms, repaired, reason


def geodesic_area_m2(geoms: np.ndarray) -> np.ndarray:
    """Area on the WGS84 ellipsoid (Karney's algorithm, via pyproj), NaN for points.

    Geometries must be oriented (see :func:`repair`): pyproj signs each ring's area by
    its orientation and sums the parts of a MultiPolygon, so mixed orientations cancel.
    """
    out = np.full(len(geoms), np.nan)
    for i, g in enumerate(geoms):
        if g is not None and g.geom_type in POLYGONAL:
            out[i] = abs(GEOD.geometry_area_perimeter(g)[0])
    return out


def centroid_lonlat(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid longitude and latitude in degrees (the point itself for points).

    Shapes across the antimeridian are measured unwrapped (:func:`unwrap_antimeridian`)
    and their centroid wrapped back, so a farm cut at +-180 gets its centroid on the
    farm, not at longitude 0.
    """
    c = shapely.centroid(unwrap_antimeridian(geoms)[0])
    return wrap_lon(shapely.get_x(c)), shapely.get_y(c)


def unwrapped_bounds(geoms: np.ndarray) -> np.ndarray:
    """(xmin, ymin, xmax, ymax) per geometry, taken on the unwrapped shape: the extent
    of an antimeridian shape is its few hundred metres, not the whole globe (xmax may
    then exceed 180)."""
    return shapely.bounds(unwrap_antimeridian(geoms)[0])


def local_xy_m(lon0_deg: np.ndarray, lat0_deg: np.ndarray, lon_deg: np.ndarray, lat_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in metres in the azimuthal equidistant frame of each origin.

    East (x) and north (y) of ``(lon0, lat0)`` along the geodesic on the WGS84 ellipsoid,
    as PROJ's ``aeqd`` projection centred there gives them: distances from the origin are
    exact, and shapes within a few kilometres keep their metric shape at any latitude and
    across the antimeridian.
    """
    azimuth_deg, _, dist_m = GEOD.inv(lon0_deg, lat0_deg, lon_deg, lat_deg)
    azimuth = np.radians(azimuth_deg)
    return dist_m * np.sin(azimuth), dist_m * np.cos(azimuth)


def point_geometry_distance_m(lon_deg: np.ndarray, lat_deg: np.ndarray, geoms: np.ndarray) -> np.ndarray:
    """Distance in metres from each point to the geometry of the same row (0 inside).

    Each geometry is projected into the azimuthal equidistant frame of its point
    (:func:`local_xy_m`) and measured there, so the distance is geodesic (to well under
    a millimetre over tens of metres) at every latitude and across the antimeridian,
    unlike a nearest point searched in lon/lat degrees.
    """
    geoms = np.array(geoms, dtype=object)
    xy, owner = shapely.get_coordinates(geoms, return_index=True)
    x, y = local_xy_m(np.asarray(lon_deg)[owner], np.asarray(lat_deg)[owner], xy[:, 0], xy[:, 1])
    local = shapely.set_coordinates(geoms, np.column_stack([x, y]))
    return shapely.distance(shapely.Point(0.0, 0.0), local)


KEY_DECIMALS = 9
"""Coordinates are rounded to this many decimals (~0.1 mm) in geometry keys, so a
last-bit difference between PROJ versions cannot change a key."""


def geometry_keys(geoms: np.ndarray) -> np.ndarray:
    """Hex WKB of each geometry, normalised (ring start and order) and rounded: equal keys
    mean the same shape whatever its vertex order."""
    rounded = shapely.transform(shapely.normalize(geoms), lambda xy: np.round(xy, KEY_DECIMALS))
    return shapely.to_wkb(rounded, hex=True)


def h3_cells(lon: np.ndarray, lat: np.ndarray, resolution: int) -> np.ndarray:
    """H3 cell (hexadecimal string) containing each lon/lat point, None where NaN."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    ok = np.isfinite(lon) & np.isfinite(lat)
    out = np.full(len(lon), None, dtype=object)
    if ok.any():
        cells = pa.array(coordinates_to_cells(lat[ok], lon[ok], resolution))
        out[ok] = pa.array(cells_to_string(cells)).to_numpy(zero_copy_only=False)
    return out
