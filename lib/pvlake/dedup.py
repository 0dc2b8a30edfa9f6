"""Dedup stage: one installation per real PV site across and within datasets.

Records are duplicates when one of these rules holds for a candidate pair found through
H3 cells (a pair of equal geometries is reported as ``exact``):

- ``polygon_polygon``: intersection area / smaller area >= ``overlap_threshold``;
- ``point_polygon``: the point lies inside the polygon or within ``point_buffer_m`` of it;
- ``point_point``: the points are closer than ``point_merge_m`` (geodesic distance).

Duplicates form clusters (connected components of the duplicate graph). Each cluster
becomes one installation whose geometry and id are its representative's: polygons before
points, then the dataset with the higher manifest ``priority``, then the more detailed
shape (more vertices), then the smaller ``pv_id``. ``capacity_mw`` and ``install_year``
come from the first record in that same order that has a value.

Candidate pairs come from H3: large polygons are covered by every cell they intersect
at ``h3_resolution`` (so two polygons that overlap always share a cell); points sit in their
cell and look at the cells within reach of the largest point distance, so no pair within
``point_buffer_m`` or ``point_merge_m`` is missed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import geopandas as gpd
import h3
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely
from h3ronpy import grid_disk
from h3ronpy.vector import ContainmentMode, coordinates_to_cells, wkb_to_cells
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from . import geo
from .harmonize import SCHEMA
from .io import write_geoparquet, write_json

M_PER_DEG = 111_320.0
"""Metres per degree of latitude (and of longitude at the equator), for local extents."""

RULES = ("exact", "polygon_polygon", "point_polygon", "point_point")

BOX_MARGIN = 1.05
"""Slack on half a bounding-box diagonal measured at the centroid's latitude: over a
large shape at high latitude the metres per degree of longitude vary by a few percent."""

MIN_RESOLUTION, MAX_RESOLUTION = 8, 11
"""Candidate-cell resolutions dedup accepts; every one gives the same duplicates, they
differ in cost (450,000 records on 2 cores: res 7 37 s / 4.6 GB, 8 6.6 s / 1.3 GB,
10 4 s / 0.9 GB, 11 10 s / 1.3 GB, 12 33 s / 3.1 GB)."""

MAX_POINT_RINGS = 8
"""Most rings of cells a point may search (217 cells): beyond, memory grows with the
square of the point distances over the cell size."""

PROVENANCE = {"n_sources": "int64", "n_datasets": "int64", "source_datasets": "list<string>", "merged_ids": "list<string>"}
"""Columns the prepared layer adds to the canonical schema."""

PROVENANCE_DOC = {
    "n_sources": "number of staging records merged into this installation (1 = no duplicate)",
    "n_datasets": "number of distinct datasets among them",
    "source_datasets": "sorted list of those datasets",
    "merged_ids": "staging pv_ids of every merged record, the representative's first",
}


@dataclass(frozen=True)
class DedupParams:
    """Thresholds of the duplicate rules (config key ``dedup``).

    Attributes
    ----------
    h3_resolution : int
        Resolution of the candidate cells (10: cells of ~15,000 m², edges ~76 m).
    overlap_threshold : float
        Minimum intersection area / smaller area for two polygons to be one site.
    point_buffer_m : float
        A point this close to a polygon (metres) is the same site.
    point_merge_m : float
        Two points closer than this (metres) are the same site.
    """

    h3_resolution: int = 10
    overlap_threshold: float = 0.5
    point_buffer_m: float = 10.0
    point_merge_m: float = 50.0

    def __post_init__(self) -> None:
        if not MIN_RESOLUTION <= self.h3_resolution <= MAX_RESOLUTION:
            raise ValueError(
                f"dedup h3_resolution {self.h3_resolution} is outside {MIN_RESOLUTION}..{MAX_RESOLUTION}: "
                "finer cells make every point search more rings (res 12 needs ~3 GB and res 13 ~20 GB "
                "for 450,000 records), coarser ones pair every large polygon in a crowded cell"
            )
        rings = point_rings(self)
        if rings > MAX_POINT_RINGS:
            raise ValueError(
                f"point distances of {max(self.point_merge_m, self.point_buffer_m):g} m need {rings} rings of "
                f"resolution-{self.h3_resolution} cells around every point (at most {MAX_POINT_RINGS}): "
                "lower dedup h3_resolution"
            )


def load_staging(paths: list[str | Path], pv_ids: list[str] | None = None) -> gpd.GeoDataFrame:
    """All staging tables in one frame, in a deterministic order (dataset, file, row);
    only the records of ``pv_ids`` when given (read with a Parquet filter)."""
    filters = None if pv_ids is None else [("pv_id", "in", list(pv_ids))]
    frames = [gpd.read_parquet(p, filters=filters) for p in sorted(map(str, paths))]
    frames = [f for f in frames if len(f)]
    if not frames:
        return gpd.GeoDataFrame(columns=list(SCHEMA) + ["geometry"], geometry="geometry", crs=geo.WGS84)
    gdf = pd.concat(frames, ignore_index=True)
    gdf = gdf.sort_values(["dataset", "source_file", "source_row"], kind="stable", ignore_index=True)
    return gpd.GeoDataFrame(gdf, geometry="geometry", crs=geo.WGS84)


# -- candidate pairs -------------------------------------------------------------------


def _pairs_sharing_a_key(keys: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of owners that share a key, once."""
    order = np.lexsort((owners, keys))
    keys, owners = keys[order], owners[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    left, right = [], []
    for size in np.unique(sizes[sizes > 1]):
        # all groups of one size at once: an (n_groups, size) block of owners
        block = owners[starts[sizes == size][:, None] + np.arange(size)]
        a, b = np.triu_indices(size, k=1)
        left.append(block[:, a].ravel())
        right.append(block[:, b].ravel())
    if not left:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return _unique_pairs(np.concatenate(left), np.concatenate(right))


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct integers (numpy 2's hash-based ``np.unique`` is ~50x slower here)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _unique_pairs(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keep = lo != hi
    packed = sorted_unique(lo[keep].astype(np.int64) << 32 | hi[keep].astype(np.int64))
    return packed >> 32, packed & 0xFFFFFFFF


def min_edge_m(resolution: int) -> float:
    """A safe lower bound on H3 edge length: edges vary about twofold over the globe."""
    return h3.average_hexagon_edge_length(resolution, "m") / 2


def disk_k(resolution: int, distance_m: float) -> int:
    """Grid-disk radius (in rings) that surely reaches every place within ``distance_m``
    of any point of the centre cell: each ring adds at least one edge length."""
    return max(1, math.ceil(distance_m / min_edge_m(resolution)))


def point_rings(params: DedupParams) -> int:
    """Rings of cells a point searches: its partner may be a point ``point_merge_m``
    away, or an anchored polygon whose centroid is ``point_buffer_m`` plus one edge away."""
    edge = min_edge_m(params.h3_resolution)
    return disk_k(params.h3_resolution, max(params.point_merge_m, params.point_buffer_m + edge))


def half_extent_m(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """Half the bounding-box diagonal of each geometry in metres (local scale; a shape
    cut at the antimeridian is measured unwrapped)."""
    xmin, ymin, xmax, ymax = geo.unwrapped_bounds(gdf.geometry.to_numpy()).T
    dx = (xmax - xmin) * M_PER_DEG * np.cos(np.radians(gdf["centroid_lat"].to_numpy()))
    dy = (ymax - ymin) * M_PER_DEG
    return 0.5 * np.hypot(dx, dy)


def _flat_cells(cells) -> tuple[np.ndarray, np.ndarray]:
    """Flattened cells of a list array and the count per input row."""
    cells = pa.array(cells)
    return cells.flatten().to_numpy().astype(np.uint64), np.diff(cells.offsets.to_numpy())


def polygon_cells(geoms: np.ndarray, owners: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(cell, owner) covering every cell each polygon intersects, possibly a few more.

    A cell meets a polygon either with its centre inside (``ContainsCentroid`` cells) or
    with the boundary crossing it; the boundary, cut into pieces shorter than one
    minimum edge, keeps a vertex within that reach of every crossing, so the one-ring
    disks of the vertices' cells hold every crossed cell. ~8x faster than h3ronpy's
    exact ``IntersectsBoundary`` on farm-sized polygons.
    """
    wkb = pa.array(shapely.to_wkb(geoms))
    inner, counts = _flat_cells(wkb_to_cells(wkb, resolution, containment_mode=ContainmentMode.ContainsCentroid))
    inner_owner = np.repeat(owners, counts)
    edges = shapely.segmentize(shapely.boundary(geoms), min_edge_m(resolution) / M_PER_DEG)
    xy, part = shapely.get_coordinates(edges, return_index=True)
    vertex_cells = coordinates_to_cells(xy[:, 1], xy[:, 0], resolution).to_numpy().astype(np.uint64)
    # consecutive vertices mostly share a cell: ring each distinct (polygon, cell) once
    vertex_cells, vertex_owner = distinct_cells(vertex_cells, owners[part])
    ring, counts = _flat_cells(grid_disk(pa.array(vertex_cells), 1))
    return distinct_cells(np.concatenate([inner, ring]), np.concatenate([inner_owner, np.repeat(vertex_owner, counts)]))


def distinct_cells(cells: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (cell, owner) pairs."""
    codes, uniq = pd.factorize(cells)
    packed = sorted_unique(codes.astype(np.int64) << 32 | owners)
    return uniq[packed >> 32], packed & 0xFFFFFFFF


def _join_on_cells(
    cells: np.ndarray, ids: np.ndarray, reg_cells: np.ndarray, reg_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(id, registered id) for every looked-up cell that is registered: a hash join
    (pandas' hash table finds each cell's run in the sorted registrations)."""
    order = np.argsort(reg_cells, kind="stable")
    reg_cells, reg_ids = reg_cells[order], reg_ids[order]
    start = np.flatnonzero(np.r_[True, reg_cells[1:] != reg_cells[:-1]])
    uniq, count = reg_cells[start], np.diff(np.r_[start, len(reg_cells)])
    slot = pd.Index(uniq).get_indexer(cells)
    hit = slot >= 0
    lo, n, ids = start[slot[hit]], count[slot[hit]], ids[hit]
    # positions lo[k] .. lo[k] + n[k] - 1 for every hit k, without a Python loop
    first = np.cumsum(n) - n
    pos = np.repeat(lo - first, n) + np.arange(n.sum())
    return np.repeat(ids, n), reg_ids[pos]


@dataclass(frozen=True)
class CellPlan:
    """Where each record meets the H3 grid of the candidate search.

    Attributes
    ----------
    large_cells, large_owner : numpy.ndarray
        (cell, record) for every cell a large polygon registers (:func:`polygon_cells`).
    anchored : numpy.ndarray
        Records anchored at their centroid's cell: points and small polygons.
    anchor_cells : numpy.ndarray of uint64
        That cell, per anchored record.
    rings : numpy.ndarray of int
        Rings of cells each anchored record looks up around its anchor.
    """

    large_cells: np.ndarray
    large_owner: np.ndarray
    anchored: np.ndarray
    anchor_cells: np.ndarray
    rings: np.ndarray

    def lookups(self):
        """(cells, record) each anchored record looks up, one ring size at a time."""
        for ring in np.unique(self.rings):
            sel = self.rings == ring
            cells, counts = _flat_cells(grid_disk(pa.array(self.anchor_cells[sel]), int(ring)))
            yield cells, np.repeat(self.anchored[sel], counts)


def cell_plan(gdf: gpd.GeoDataFrame, params: DedupParams) -> CellPlan:
    """How every record takes part in the candidate search (see :func:`candidate_pairs`)."""
    res = params.h3_resolution
    edge = min_edge_m(res)
    is_point = (gdf["geom_type"] == "Point").to_numpy()
    extent = half_extent_m(gdf)
    anchored_poly = ~is_point & (extent <= edge)
    large = np.flatnonzero(~is_point & ~anchored_poly)
    anchored = np.flatnonzero(is_point | anchored_poly)
    large_cells, large_owner = polygon_cells(gdf.geometry.to_numpy()[large], large, res)
    anchor_cells = coordinates_to_cells(
        gdf["centroid_lat"].to_numpy()[anchored], gdf["centroid_lon"].to_numpy()[anchored], res,
    ).to_numpy().astype(np.uint64)
    rings = np.where(is_point[anchored], point_rings(params), np.where(extent[anchored] <= edge / 2, 1, 2))
    return CellPlan(large_cells, large_owner, anchored, anchor_cells, rings)


def candidate_pairs(gdf: gpd.GeoDataFrame, params: DedupParams) -> tuple[np.ndarray, np.ndarray]:
    """Record pairs that a rule could accept, found through H3 cells.

    Large polygons register every cell they intersect (:func:`polygon_cells`) and pair
    with each other per shared cell (overlapping shapes always share one). Points and polygons with a half extent up
    to one minimum edge (most rooftops) register only their centroid's cell and look up
    the registered cells within reach: two rings for a polygon (one when it is under half
    an edge), enough rings for a point to cover the point rules' distances. Covering a
    shape by all the cells it touches costs ~50 µs; anchoring is ~100x cheaper, and no
    pair within reach is missed.

    Whether two records are candidates depends on those two records only (the cells each
    registers and looks up, :func:`reach_cells`), which is what lets
    :mod:`pvlake.partition` split the search without missing a pair.
    """
    plan = cell_plan(gdf, params)
    i, j = _pairs_sharing_a_key(plan.large_cells, plan.large_owner)
    if not len(plan.anchored):
        return i, j
    reg_cells = np.concatenate([plan.large_cells, plan.anchor_cells])
    reg_owner = np.concatenate([plan.large_owner, plan.anchored])
    i, j = [i], [j]
    for cells, owners in plan.lookups():
        a, b = _join_on_cells(cells, owners, reg_cells, reg_owner)
        i.append(a)
        j.append(b)
    return _unique_pairs(np.concatenate(i), np.concatenate(j))


def reach_cells(gdf: gpd.GeoDataFrame, params: DedupParams) -> tuple[np.ndarray, np.ndarray]:
    """(cell, record) for every cell a record registers or looks up in the candidate
    search, possibly repeated: two records are candidates only if they share one."""
    plan = cell_plan(gdf, params)
    cells, owners = [plan.large_cells], [plan.large_owner]
    for looked_up, by in plan.lookups():
        cells.append(looked_up)
        owners.append(by)
    return np.concatenate(cells), np.concatenate(owners)


# -- duplicate rules -------------------------------------------------------------------


def _geodesic_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    return geo.GEOD.inv(lon1, lat1, lon2, lat2)[2]


def _boxes_touch(bounds: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # shapes cut at the antimeridian have boxes spanning the globe: they always pass
    return (
        (bounds[a, 0] <= bounds[b, 2]) & (bounds[b, 0] <= bounds[a, 2])
        & (bounds[a, 1] <= bounds[b, 3]) & (bounds[b, 1] <= bounds[a, 3])
    )


def classify_pairs(
    gdf: gpd.GeoDataFrame, i: np.ndarray, j: np.ndarray, params: DedupParams
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Candidate pairs that are duplicates, by rule (see :data:`RULES`).

    A duplicate pair whose two geometries are equal (``shapely.equals``: the same point
    set, whatever the vertex order) counts as ``exact``; the others count under the
    spatial rule that accepted them. The polygon overlap ratio is computed in lon/lat
    degrees: over a few kilometres the degree-to-metre scale is constant, so it cancels
    out of a ratio of areas (shapes across the antimeridian are cut at +-180, see
    :func:`pvlake.geo.split_antimeridian`, so both sides of a pair are cut alike). The
    point-to-shape distance is geodesic, measured in the point's azimuthal equidistant
    frame (:func:`pvlake.geo.point_geometry_distance_m`). Cheap bounding-box and
    flat-earth tests go first; longitude differences wrap around +-180.
    """
    geoms = gdf.geometry.to_numpy()
    is_point = (gdf["geom_type"] == "Point").to_numpy()
    lon = gdf["centroid_lon"].to_numpy()
    lat = gdf["centroid_lat"].to_numpy()
    bounds = shapely.bounds(geoms)
    out = {}

    pp = ~is_point[i] & ~is_point[j]
    a, b = i[pp], j[pp]
    keep = _boxes_touch(bounds, a, b)
    a, b = a[keep], b[keep]
    keep = shapely.intersects(geoms[a], geoms[b])
    a, b = a[keep], b[keep]
    equal = shapely.equals(geoms[a], geoms[b])
    c, d = a[~equal], b[~equal]  # equal shapes overlap fully: no intersection needed
    inter = shapely.area(shapely.intersection(geoms[c], geoms[d]))
    smaller = np.minimum(shapely.area(geoms[c]), shapely.area(geoms[d]))
    keep = inter >= params.overlap_threshold * smaller
    polygon_exact = (a[equal], b[equal])
    polygons = (c[keep], d[keep])

    mixed = is_point[i] != is_point[j]
    pt = np.where(is_point[i], i, j)[mixed]
    pg = np.where(is_point[i], j, i)[mixed]
    # a point within the buffer of a shape is within half its extent (plus the buffer)
    # of its bounding box's centre: a cheap geodesic test before projecting the shape
    ub = geo.unwrapped_bounds(geoms[pg])
    centre_lon, centre_lat = geo.wrap_lon(0.5 * (ub[:, 0] + ub[:, 2])), 0.5 * (ub[:, 1] + ub[:, 3])
    reach_m = BOX_MARGIN * half_extent_m(gdf.iloc[pg]) + params.point_buffer_m + 1.0
    keep = _geodesic_m(lon[pt], lat[pt], centre_lon, centre_lat) <= reach_m
    pt, pg = pt[keep], pg[keep]
    dist_m = geo.point_geometry_distance_m(lon[pt], lat[pt], geoms[pg])
    keep = dist_m <= params.point_buffer_m
    out["point_polygon"] = _unique_pairs(pt[keep], pg[keep])

    both = is_point[i] & is_point[j]
    a, b = i[both], j[both]
    flat_m = np.hypot(geo.wrap_lon(lon[a] - lon[b]) * np.cos(np.radians(lat[a])), lat[a] - lat[b]) * M_PER_DEG
    keep = flat_m < 1.01 * params.point_merge_m + 1.0
    a, b = a[keep], b[keep]
    dist = _geodesic_m(lon[a], lat[a], lon[b], lat[b])
    keep = (dist < params.point_merge_m) | (dist == 0)
    points = (a[keep], b[keep])

    same = shapely.equals(geoms[points[0]], geoms[points[1]])
    out["exact"] = (np.r_[polygon_exact[0], points[0][same]], np.r_[polygon_exact[1], points[1][same]])
    out["polygon_polygon"] = polygons
    out["point_point"] = (points[0][~same], points[1][~same])
    return {rule: out[rule] for rule in RULES}


def cluster_labels(n: int, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Connected components of the duplicate graph: one label per record, numbered in
    order of each cluster's first record (deterministic)."""
    i = np.concatenate([p[0] for p in pairs] + [np.empty(0, np.int64)])
    j = np.concatenate([p[1] for p in pairs] + [np.empty(0, np.int64)])
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return pd.factorize(labels)[0]


# -- merge -----------------------------------------------------------------------------


def pv_id_rank(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """Each row's position in ``pv_id`` order (integers then sort much faster than strings)."""
    return _rank(gdf["pv_id"].to_numpy(dtype=str))


def _rank(ids: np.ndarray) -> np.ndarray:
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    return rank


def representative_order(gdf: gpd.GeoDataFrame, priority: dict[str, int], id_rank: np.ndarray | None = None) -> np.ndarray:
    """Row order by preference: polygons first, higher dataset priority, more vertices,
    smaller pv_id."""
    id_rank = pv_id_rank(gdf) if id_rank is None else id_rank
    return preference_order(
        (gdf["geom_type"] == "Point").to_numpy(), gdf["dataset"].to_numpy(dtype=str),
        shapely.get_num_coordinates(gdf.geometry.to_numpy()), id_rank, priority,
    )


def preference_order(
    is_point: np.ndarray, dataset: np.ndarray, n_vertices: np.ndarray, id_rank: np.ndarray, priority: dict[str, int]
) -> np.ndarray:
    """:func:`representative_order` from plain columns (no geometry needed)."""
    codes, names = pd.factorize(dataset)
    prio = np.array([priority.get(d, 0) for d in names], dtype=np.int64)[codes]
    return np.lexsort((id_rank, -np.asarray(n_vertices), -prio, is_point))


def _list_column(values: np.ndarray, counts: np.ndarray) -> pd.arrays.ArrowExtensionArray:
    """Consecutive runs of ``values`` (lengths ``counts``) as an Arrow list column."""
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)
    values = pa.array(values, pa.string())
    if isinstance(values, pa.ChunkedArray):  # pyarrow chunks a large numpy string array
        values = values.combine_chunks()
    return pd.arrays.ArrowExtensionArray(pa.ListArray.from_arrays(offsets, values))


def dataset_counts(datasets: np.ndarray, labels: np.ndarray) -> tuple[csr_matrix, np.ndarray]:
    """Records per (cluster, dataset) as a sparse matrix (clusters x datasets, CSR with
    sorted column indices), with the sorted dataset names. Dense, it would take clusters x
    datasets x 8 bytes: 1.2 GB for 3.8 million installations of 40 datasets."""
    codes, names = pd.factorize(datasets, sort=True)
    n_clusters = labels.max() + 1 if len(labels) else 0
    counts = coo_matrix((np.ones(len(labels), np.int64), (labels, codes)), shape=(n_clusters, len(names))).tocsr()
    counts.sum_duplicates()
    counts.sort_indices()
    return counts, names


FILLED = ("capacity_mw", "install_year")
"""Attributes an installation takes from the first record (in preference order) that has one."""


@dataclass(frozen=True)
class ClusterMerge:
    """What each installation is made of, in output order (by ``pv_id``).

    Attributes
    ----------
    representative : numpy.ndarray of int
        Record whose columns and geometry the installation keeps.
    filled : pandas.DataFrame
        :data:`FILLED` attributes of each installation (first non-null in preference order).
    provenance : pandas.DataFrame
        :data:`PROVENANCE` columns.
    """

    representative: np.ndarray
    filled: pd.DataFrame
    provenance: pd.DataFrame


def merge_columns(records: pd.DataFrame, n_vertices: np.ndarray, labels: np.ndarray, priority: dict[str, int]) -> ClusterMerge:
    """The merge of :func:`merge_clusters` from plain columns: ``records`` needs ``pv_id``,
    ``dataset``, ``geom_type`` and the :data:`FILLED` columns; ``n_vertices`` is each
    record's vertex count. No geometry is touched, so millions of records merge in
    little memory."""
    ids = records["pv_id"].to_numpy(dtype=str)
    datasets = records["dataset"].to_numpy(dtype=str)
    id_rank = _rank(ids)
    rank = np.empty(len(records), dtype=np.int64)
    rank[preference_order((records["geom_type"] == "Point").to_numpy(), datasets, n_vertices, id_rank, priority)] = (
        np.arange(len(records)))
    # by cluster, then preference: cluster k's rows are run k, its representative first
    order = np.lexsort((rank, labels))
    runs = labels[order]
    starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]]) if len(runs) else np.empty(0, np.int64)
    sizes = np.diff(np.r_[starts, len(order)]).astype(np.int64)
    by_id = np.argsort(id_rank[order[starts]], kind="stable")  # output position -> cluster
    representative = order[starts][by_id]
    filled = records[list(FILLED)].iloc[representative].reset_index(drop=True)
    in_multi = np.repeat(sizes > 1, sizes)
    if in_multi.any():
        # first non-null attribute in preference order, for the merged clusters only
        members = records[list(FILLED)].iloc[order[in_multi]].assign(_cluster=runs[in_multi])
        firsts = members.groupby("_cluster", sort=True).first()
        position = np.empty(len(by_id), dtype=np.int64)
        position[by_id] = np.arange(len(by_id))
        for col in FILLED:
            filled.loc[position[firsts.index.to_numpy()], col] = firsts[col].to_numpy()
    counts, names = dataset_counts(datasets, labels)
    n_datasets = np.diff(counts.indptr).astype("int64")
    source_datasets = _list_column(names[counts.indices], n_datasets)
    merged = _list_column(ids[order], sizes)
    provenance = pd.DataFrame({
        "n_sources": sizes[by_id].astype("int64"),
        "n_datasets": n_datasets[by_id],
        "source_datasets": source_datasets.take(by_id),
        "merged_ids": merged.take(by_id),
    })
    return ClusterMerge(representative, filled, provenance)


def merge_clusters(gdf: gpd.GeoDataFrame, labels: np.ndarray, priority: dict[str, int]) -> gpd.GeoDataFrame:
    """One row per cluster, sorted by ``pv_id``: the representative's columns plus provenance.

    ``labels`` number the clusters 0..K-1 (as :func:`cluster_labels` does).
    """
    merge = merge_columns(gdf, shapely.get_num_coordinates(gdf.geometry.to_numpy()), labels, priority)
    out = gdf.iloc[merge.representative].reset_index(drop=True)
    out[list(FILLED)] = merge.filled
    out[list(PROVENANCE)] = merge.provenance
    out = out[list(SCHEMA) + list(PROVENANCE) + ["geometry"]]
    return gpd.GeoDataFrame(out, geometry="geometry", crs=geo.WGS84)


# -- reports ---------------------------------------------------------------------------


def overlap_matrix(gdf: gpd.GeoDataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Rows A, columns B: how many of A's records share their installation with a record
    of B (the diagonal counts A's records merged with another record of A)."""
    counts, names = dataset_counts(gdf["dataset"].to_numpy(dtype=str), labels)
    matrix = (counts.T @ (counts > 0).astype(np.int64)).toarray()
    # a record is "also in its own dataset" only when a second record of it is there
    np.fill_diagonal(matrix, np.asarray(counts.multiply(counts > 1).sum(axis=0)).ravel())
    return pd.DataFrame(matrix, index=pd.Index(names, name="dataset"), columns=names)


def _pairs_of(groups: list[list]) -> set[tuple]:
    out = set()
    for members in groups:
        members = sorted(members)
        out.update((a, b) for k, a in enumerate(members) for b in members[k + 1:])
    return out


def score_against_truth(gdf: gpd.GeoDataFrame, labels: np.ndarray, truth: dict) -> dict:
    """Pairwise precision and recall of the clusters against planted duplicate clusters.

    Records are identified by (dataset, source_file, source_row); only records present in
    the staging tables are scored (ground-truth records dropped upstream are ignored).
    """
    keys = list(zip(gdf["dataset"], gdf["source_file"], gdf["source_row"].astype(int)))
    known = set(keys)
    truth_groups = [
        [k for r in c["records"] if (k := (r["dataset"], r["source_file"], int(r["source_row"]))) in known]
        for c in truth["duplicate_clusters"]
    ]
    predicted = pd.Series(keys).groupby(labels).agg(list)
    truth_pairs = _pairs_of(truth_groups)
    found_pairs = _pairs_of([g for g in predicted if len(g) > 1])
    tp = len(truth_pairs & found_pairs)
    return {
        "true_pairs": len(truth_pairs),
        "found_pairs": len(found_pairs),
        "true_positives": tp,
        "precision": tp / len(found_pairs) if found_pairs else 1.0,
        "recall": tp / len(truth_pairs) if truth_pairs else 1.0,
        "missed": sorted(map(list, truth_pairs - found_pairs)),
        "spurious": sorted(map(list, found_pairs - truth_pairs)),
    }


def with_antimeridian_cut(staging: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``staging`` with any polygon that crosses +-180 cut there (harmonize already cuts
    them; frames from elsewhere may not be)."""
    geoms, split = geo.split_antimeridian(staging.geometry.to_numpy())
    if not split.any():
        return staging
    return staging.set_geometry(gpd.GeoSeries(geoms, index=staging.index, crs=staging.crs))


def identical_geometry_groups(gdf: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Records with byte-identical geometries, grouped.

    A flood of records at one place (a postcode centroid, 0,0 placeholders) would make
    candidate pairs grow with the square of its size; grouping first keeps dedup linear:
    only one record per group enters the pair search, the others join it as exact copies.

    Returns
    -------
    group : numpy.ndarray of int
        Group of each record, numbered in order of first appearance.
    first : numpy.ndarray of int
        Row of each group's first record.
    """
    group, _ = pd.factorize(shapely.to_wkb(gdf.geometry.to_numpy()))
    first = np.full(group.max() + 1 if len(group) else 0, len(group), dtype=np.int64)
    np.minimum.at(first, group, np.arange(len(group)))
    return group.astype(np.int64), first


@dataclass(frozen=True)
class Duplicates:
    """Duplicate pairs among the rows of one frame.

    Attributes
    ----------
    by_rule : dict
        Rule -> (rows, rows): the pairs each rule accepted, between the first records of
        identical-geometry groups (:func:`identical_geometry_groups`).
    copies : tuple of numpy.ndarray
        (group's first row, repeated row) for every record whose geometry repeats an
        earlier one's.
    candidates : tuple of numpy.ndarray
        The candidate pairs examined (between first records).
    """

    by_rule: dict[str, tuple[np.ndarray, np.ndarray]]
    copies: tuple[np.ndarray, np.ndarray]
    candidates: tuple[np.ndarray, np.ndarray]


def find_duplicates(staging: gpd.GeoDataFrame, params: DedupParams) -> Duplicates:
    """Candidate search and duplicate rules over ``staging`` (already cut at ±180), with
    identical geometries collapsed first so that a flood of them costs linear time."""
    group, first = identical_geometry_groups(staging)
    distinct = staging.iloc[first].reset_index(drop=True)
    ci, cj = candidate_pairs(distinct, params)
    pairs = classify_pairs(distinct, ci, cj, params)
    repeated = np.flatnonzero(first[group] != np.arange(len(group)))
    return Duplicates(
        {rule: (first[a], first[b]) for rule, (a, b) in pairs.items()},
        (first[group[repeated]], repeated),  # every repeat to its group's first record
        (first[ci], first[cj]),
    )


def pairs_per_rule(by_rule: dict[str, tuple[np.ndarray, np.ndarray]], copies: tuple[np.ndarray, np.ndarray], n: int) -> dict[str, int]:
    """Record pairs per rule as if every record had been paired with every other: a pair
    of group firsts stands for size(a) x size(b) record pairs, and a group of s identical
    geometries adds s(s-1)/2 exact pairs."""
    size = 1 + np.bincount(copies[0], minlength=n).astype(np.int64)
    out = {rule: int((size[a] * size[b]).sum()) for rule, (a, b) in by_rule.items()}
    out["exact"] += int((size * (size - 1) // 2).sum())
    return out


def dedup_report(
    records: pd.DataFrame,
    labels: np.ndarray,
    by_rule: dict[str, tuple[np.ndarray, np.ndarray]],
    copies: tuple[np.ndarray, np.ndarray],
    candidates: int,
    params: DedupParams,
    truth: dict | None = None,
) -> dict:
    """The dedup report from plain columns (``dataset``, ``source_file``, ``source_row``
    of every record), its cluster labels and the pairs found."""
    size_counts = np.bincount(np.bincount(labels)) if len(labels) else np.zeros(1, int)
    report = {
        "params": asdict(params),
        "records": int(len(records)),
        "installations": int(labels.max() + 1) if len(labels) else 0,
        "distinct_geometries": int(len(records) - len(copies[0])),
        "candidate_pairs": int(candidates),
        "pairs_per_rule": pairs_per_rule(by_rule, copies, len(records)),
        "cluster_sizes": {str(k): int(v) for k, v in enumerate(size_counts) if v},
        "records_per_dataset": {k: int(v) for k, v in records["dataset"].value_counts().sort_index().items()},
        "overlap_matrix": json.loads(overlap_matrix(records, labels).to_json(orient="index")),
    }
    if truth is not None:
        report["score"] = score_against_truth(records, labels, truth)
    return report


def dedup(
    staging: gpd.GeoDataFrame,
    priority: dict[str, int] | None = None,
    params: DedupParams = DedupParams(),
    truth: dict | None = None,
) -> tuple[gpd.GeoDataFrame, dict, np.ndarray]:
    """De-duplicate staging records into installations, in one process.

    Parameters
    ----------
    staging : geopandas.GeoDataFrame
        Canonical staging rows of every dataset (see :func:`load_staging`).
    priority : dict, optional
        Dataset -> manifest ``priority`` (higher wins the representative).
    params : DedupParams
        Rule thresholds and candidate resolution.
    truth : dict, optional
        Ground truth (``duplicate_clusters``) to score the clusters against.

    Returns
    -------
    prepared : geopandas.GeoDataFrame
        One row per installation: canonical schema plus :data:`PROVENANCE` columns.
    report : dict
        Pairs per rule, cluster-size histogram, per-dataset overlap matrix, scores.
    labels : numpy.ndarray
        Cluster label of each staging row.

    See Also
    --------
    pvlake.partition : the same installations from records split over many processes.
    """
    priority = priority or {}
    staging = with_antimeridian_cut(staging)
    found = find_duplicates(staging, params)
    labels = cluster_labels(len(staging), list(found.by_rule.values()) + [found.copies])
    prepared = merge_clusters(staging, labels, priority)
    report = dedup_report(staging, labels, found.by_rule, found.copies, len(found.candidates[0]), params, truth)
    return prepared, report, labels


def write_prepared(prepared: gpd.GeoDataFrame, report: dict, parquet_path: str | Path, report_path: str | Path) -> None:
    """Write the prepared GeoParquet and the dedup report, each atomically.

    The list columns are written as plain lists: pandas cannot restore an Arrow list dtype
    from the Parquet file's pandas metadata, so readers would fail.
    """
    lists = {c: prepared[c].tolist() for c in ("source_datasets", "merged_ids")}
    write_geoparquet(prepared.assign(**lists), parquet_path)
    write_json(report, report_path)


def pairs_table(report: dict) -> pd.DataFrame:
    """Duplicate pairs found per rule, as a table."""
    return pd.DataFrame(
        {"rule": list(report["pairs_per_rule"]), "pairs": list(report["pairs_per_rule"].values())}
    )


def read_merged(parquet_path: str | Path) -> gpd.GeoDataFrame:
    """The installations of a prepared GeoParquet made of more than one record (read with
    a Parquet filter: the rest of the file stays on disk)."""
    return gpd.read_parquet(parquet_path, filters=[("n_sources", ">", 1)])


def merged_records(staging: gpd.GeoDataFrame, labels: np.ndarray, prepared: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The staging records of every installation made of more than one record, each with
    its installation's id (``installation_id``, the representative's ``pv_id``)."""
    member_of = {
        member: pv_id
        for pv_id, members in zip(prepared["pv_id"], prepared["merged_ids"])
        if len(members) > 1
        for member in members
    }
    merged = staging[staging["pv_id"].isin(member_of)].copy()
    merged["installation_id"] = merged["pv_id"].map(member_of)
    return merged.sort_values(["installation_id", "pv_id"], ignore_index=True)
