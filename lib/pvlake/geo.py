"""Vectorised geometry helpers shared by the stages: reprojection, repair, geodesic
measures and H3 cells. Inputs and outputs are numpy arrays of shapely geometries."""

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
    """Centroid longitude and latitude in degrees (the point itself for points)."""
    c = shapely.centroid(geoms)
    return shapely.get_x(c), shapely.get_y(c)


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
