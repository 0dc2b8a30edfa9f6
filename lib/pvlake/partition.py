"""Dedup beyond one machine's memory: records split over partitions of coarse H3 cells,
each partition searched for duplicates in its own process (a Snakemake job, so a cluster
runs them side by side), and the clusters merged at the end into exactly the
installations the one-process :func:`pvlake.dedup.dedup` gives.

Three steps, each with memory bounded by its share of the records:

1. :func:`split` streams the staging files in batches. For every record it takes the
   cells of the candidate search that the record registers or looks up
   (:func:`pvlake.dedup.reach_cells`: the cells a large polygon covers, the rings a point
   or rooftop searches around its own cell) and their parents at the coarse
   ``h3_resolution``. Those coarse cells are the record's partitions' cells: a record sits
   in every partition holding one of them, so its halo is exactly the reach of the rules
   (a point 40 m from a cell edge also lands in the cell across it). Coarse cells are
   packed into ``count`` partitions of about equal size (largest first, into the
   emptiest). It writes one Parquet file per partition and one file of per-record columns
   for the merge (no geometry).
2. :func:`partition_pairs` runs the candidate search and the duplicate rules
   (:func:`pvlake.dedup.find_duplicates`) on one partition. Two records are candidates
   only if they share a cell of the search, and both records then sit in the partition of
   that cell's parent, so every pair the one-process search finds is found in a partition
   that holds both records. A pair found in several partitions is kept by the lowest one
   they share (its owner), so pairs and candidate counts add up without repeats.
3. :func:`merge` labels the clusters from all pairs (connected components), picks
   representatives and provenance on plain columns (:func:`pvlake.dedup.merge_columns`)
   and writes the prepared GeoParquet with Arrow, taking each representative's row from
   its staging file: no geometry object is made except for the rare shape cut at ±180.

References
----------
Uber H3: a hexagonal hierarchical geospatial indexing system, https://h3geo.org (cell
parents: every cell has exactly one parent at each coarser resolution).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from h3ronpy import change_resolution
from tqdm import tqdm

from . import dedup as dd
from . import geo
from .io import atomic_path, write_json

MAX_PARTITION_RESOLUTION = 7
"""Finest coarse cells allowed (~5 km² at res 7): the candidate search's own cells are
res 8-11, and a coarse cell must hold many of them."""

SEARCH_COLUMNS = ["geom_type", "centroid_lon", "centroid_lat", "geometry"]
"""Staging columns the candidate search and the rules read."""

RECORD_COLUMNS = ["pv_id", "dataset", "geom_type", "capacity_mw", "install_year", "source_file", "source_row"]
"""Staging columns the merge reads (besides each record's vertex count)."""

BATCH_ROWS = 200_000
"""Staging rows read at a time by :func:`split` and :func:`merge`."""

COPY = "copy"
"""Pair kind of a record whose geometry repeats its group's first record's."""


@dataclass(frozen=True)
class PartitionParams:
    """How dedup is split (config keys ``dedup.partitions`` and ``dedup.partition_resolution``).

    Attributes
    ----------
    count : int
        Number of partitions; 1 runs dedup in one process (:func:`pvlake.dedup.dedup`).
    h3_resolution : int
        Resolution of the coarse cells packed into partitions (5: ~250 km² cells).
    """

    count: int = 1
    h3_resolution: int = 5

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"dedup partitions must be at least 1, not {self.count}")
        if not 0 <= self.h3_resolution <= MAX_PARTITION_RESOLUTION:
            raise ValueError(
                f"dedup partition_resolution {self.h3_resolution} is outside 0..{MAX_PARTITION_RESOLUTION}: "
                "partitions are made of coarse cells, each holding many cells of the candidate search (res 8-11)"
            )


@dataclass(frozen=True)
class PartitionFiles:
    """Where the steps of a partitioned dedup read and write (see :class:`pvlake.layout.Layout`)."""

    records: Path
    parts: list[Path]
    pairs: list[Path]
    split_report: Path

    @classmethod
    def in_layout(cls, layout, count: int) -> PartitionFiles:
        return cls(layout.dedup_records(), [layout.dedup_partition(p) for p in range(count)],
                   [layout.dedup_pairs(p) for p in range(count)], layout.dedup_split_report())


# -- split -----------------------------------------------------------------------------


def staging_files(paths: list[str | Path]) -> list[Path]:
    """Staging files in dataset order (the order :func:`pvlake.dedup.load_staging` sorts rows in)."""
    return sorted(map(Path, paths), key=lambda p: p.stem)


def staging_batches(paths: list[Path], columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` over every staging file in turn; row numbers run on
    across files (the records' global rows)."""
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            yield batch


def search_frame(batch: pa.RecordBatch | pa.Table) -> gpd.GeoDataFrame:
    """The search columns of a batch as a GeoDataFrame (geometry decoded from WKB)."""
    frame = pd.DataFrame({c: batch.column(c).to_numpy(zero_copy_only=False) for c in SEARCH_COLUMNS[:-1]})
    geoms = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
    return gpd.GeoDataFrame(frame, geometry=geoms, crs=geo.WGS84)


def coarse_cells(gdf: gpd.GeoDataFrame, params: dd.DedupParams, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(record, coarse cell) for every coarse cell holding a cell the record registers or
    looks up in the candidate search, each once."""
    cells, owners = dd.reach_cells(gdf, params)
    parents = np.asarray(pa.array(change_resolution(pa.array(cells, pa.uint64()), resolution)), dtype=np.uint64)
    if len(parents) != len(cells):
        raise ValueError("invalid H3 cells in the candidate search")
    parents, owners = dd.distinct_cells(parents, owners)
    return owners, parents


def pack_cells(cells: np.ndarray, loads: np.ndarray, count: int) -> np.ndarray:
    """Partition of each coarse cell: the heaviest cell first, into the least loaded
    partition (ties: the lower cell id, the lower partition), which keeps partitions
    within one cell's load of each other and is deterministic."""
    order = np.lexsort((cells, -loads))
    heap = [(0, p) for p in range(count)]
    out = np.empty(len(cells), dtype=np.int32)
    for k in order:
        load, p = heapq.heappop(heap)
        out[k] = p
        heapq.heappush(heap, (load + int(loads[k]), p))
    return out


RECORDS_SCHEMA = pa.schema([
    ("pv_id", pa.string()), ("dataset", pa.string()), ("geom_type", pa.string()), ("capacity_mw", pa.float64()),
    ("install_year", pa.int32()), ("source_file", pa.string()), ("source_row", pa.int64()),
    ("n_vertices", pa.int64()), ("cut", pa.bool_()),
])
"""The split's per-record file: :data:`RECORD_COLUMNS`, vertex count, cut at ±180 for the search."""


def _record_table(batch: pa.RecordBatch, n_vertices: np.ndarray, cut: np.ndarray) -> pa.Table:
    table = pa.Table.from_batches([batch]).select(RECORD_COLUMNS)
    table = table.append_column("n_vertices", pa.array(n_vertices, pa.int64())).append_column("cut", pa.array(cut))
    return table.cast(RECORDS_SCHEMA)


def split(
    staging_paths: list[str | Path],
    files: PartitionFiles,
    params: dd.DedupParams,
    partition: PartitionParams,
    batch_rows: int = BATCH_ROWS,
    progress: bool = True,
) -> dict:
    """Split the staging records into ``partition.count`` partition files.

    Writes ``files.records`` (one row per record, in global row order: the
    :data:`RECORD_COLUMNS`, ``n_vertices`` and ``cut``, whether the shape had to be cut at
    ±180 for the search), one Parquet file per partition (the :data:`SEARCH_COLUMNS` plus
    ``_row``, the global row, and ``_parts``, every partition the record sits in) and
    ``files.split_report``; each file atomically.

    Returns
    -------
    dict
        The split report: records, partitions, records per partition, records in more
        than one partition (the halo), coarse cells.
    """
    paths = staging_files(staging_paths)
    n_files = len(files.parts)
    if n_files != partition.count:
        raise ValueError(f"{n_files} partition files for {partition.count} partitions")
    rows, cells, cut_geoms = [], [], {}
    offset = 0
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    bar = tqdm(total=total, desc="split: coarse cells", unit="record", disable=not progress)
    with atomic_path(files.records) as tmp, pq.ParquetWriter(tmp, RECORDS_SCHEMA, compression="zstd") as writer:
        for batch in staging_batches(paths, sorted(set(SEARCH_COLUMNS) | set(RECORD_COLUMNS)), batch_rows):
            gdf = search_frame(batch)
            geoms, was_cut = geo.split_antimeridian(gdf.geometry.to_numpy())
            if was_cut.any():
                gdf = gdf.set_geometry(gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs))
                cut_geoms.update({offset + int(k): shapely.to_wkb(geoms[k]) for k in np.flatnonzero(was_cut)})
            owner, cell = coarse_cells(gdf, params, partition.h3_resolution)
            rows.append(owner + offset)
            cells.append(cell)
            writer.write_table(_record_table(batch, shapely.get_num_coordinates(geoms), was_cut))
            offset += batch.num_rows
            bar.update(batch.num_rows)
    bar.close()
    rows = np.concatenate(rows) if rows else np.empty(0, np.int64)
    cells = np.concatenate(cells) if cells else np.empty(0, np.uint64)

    uniq, inverse, loads = np.unique(cells, return_inverse=True, return_counts=True)
    part_of_cell = pack_cells(uniq, loads, partition.count)
    # (row, partition), each once, sorted by row then partition
    packed = dd.sorted_unique(rows.astype(np.int64) << 16 | part_of_cell[inverse].astype(np.int64))
    member_row, member_part = packed >> 16, (packed & 0xFFFF).astype(np.int32)
    _write_partitions(paths, files.parts, member_row, member_part, offset, cut_geoms, batch_rows, progress)

    per_record = np.bincount(member_row, minlength=offset)
    report = {
        "params": asdict(params),
        "partition": asdict(partition),
        "records": int(offset),
        "coarse_cells": int(len(uniq)),
        "records_per_partition": np.bincount(member_part, minlength=partition.count).astype(int).tolist(),
        "records_in_several_partitions": int((per_record > 1).sum()),
        "cut_at_180": len(cut_geoms),
    }
    write_json(report, files.split_report)
    return report


def _write_partitions(
    paths: list[Path], outputs: list[Path], member_row: np.ndarray, member_part: np.ndarray, n_records: int,
    cut_geoms: dict[int, bytes], batch_rows: int, progress: bool,
) -> None:
    """Second pass over the staging files: each batch's rows into the files of the
    partitions they sit in (a record in several partitions goes to each)."""
    schema = pa.schema([("_row", pa.int64()), ("_parts", pa.list_(pa.int32())), ("geom_type", pa.string()),
                        ("centroid_lon", pa.float64()), ("centroid_lat", pa.float64()), ("geometry", pa.binary())])
    starts = np.searchsorted(member_row, np.arange(n_records + 1))
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p)) for p in outputs]
        writers = [stack.enter_context(pq.ParquetWriter(t, schema, compression="zstd")) for t in tmps]
        offset = 0
        bar = stack.enter_context(tqdm(total=len(member_row), desc="split: partitions", unit="record",
                                       disable=not progress))
        for batch in staging_batches(paths, SEARCH_COLUMNS, batch_rows):
            lo, hi = starts[offset], starts[offset + batch.num_rows]
            local, part = member_row[lo:hi] - offset, member_part[lo:hi]
            counts = np.bincount(local, minlength=batch.num_rows)
            parts = pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32)), pa.array(part))
            geometry = batch.column("geometry").cast(pa.binary())
            if cut_geoms:
                geometry = _with_cut(geometry, offset, cut_geoms)
            table = pa.table({
                "_row": pa.array(np.arange(offset, offset + batch.num_rows, dtype=np.int64)), "_parts": parts,
                **{c: batch.column(c) for c in SEARCH_COLUMNS[:-1]}, "geometry": geometry,
            }, schema=schema)
            for p in np.unique(part):
                writers[p].write_table(table.take(pa.array(local[part == p])))
            offset += batch.num_rows
            bar.update(hi - lo)
        # writers close before their files are renamed into place (contexts exit in reverse)


def _with_cut(geometry: pa.Array, offset: int, cut_geoms: dict[int, bytes]) -> pa.Array:
    """``geometry`` (WKB) with the shapes cut at ±180 in the search put in."""
    hit = [k for k in range(offset, offset + len(geometry)) if k in cut_geoms]
    if not hit:
        return geometry
    values = geometry.to_numpy(zero_copy_only=False).copy()
    for k in hit:
        values[k - offset] = cut_geoms[k]
    return pa.array(values, pa.binary())


# -- one partition -----------------------------------------------------------------------


def read_partition(path: str | Path) -> tuple[gpd.GeoDataFrame, np.ndarray, pa.ListArray]:
    """A partition file as (search frame, global rows, partitions of each record)."""
    table = pq.read_table(path)
    parts = table.column("_parts").combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.int32()))
    return search_frame(table), table.column("_row").to_numpy(), parts


def owned(a: np.ndarray, b: np.ndarray, parts: pa.ListArray, part: int) -> np.ndarray:
    """Whether partition ``part`` is the lowest partition that records ``a`` and ``b``
    (local rows, pairwise) share. A pair found here is found in every partition holding
    both records; only its owner keeps it. Most records sit in one partition, so only
    pairs of records that both sit in a lower partition too are looked at closely."""
    values = parts.flatten().to_numpy()
    offsets = parts.offsets.to_numpy()
    counts = np.diff(offsets)
    below = np.bincount(np.repeat(np.arange(len(counts)), counts)[values < part], minlength=len(counts)) > 0
    check = np.flatnonzero(below[a] & below[b])
    out = np.ones(len(a), dtype=bool)
    if not len(check):
        return out

    def explode(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pair, partition) for every partition of each pair's record."""
        n = counts[rows]
        pos = np.repeat(offsets[rows] - (np.cumsum(n) - n), n) + np.arange(n.sum())
        return np.repeat(np.arange(len(rows), dtype=np.int64), n), values[pos].astype(np.int64)

    width = int(values.max()) + 1
    pair_a, part_a = explode(a[check])
    pair_b, part_b = explode(b[check])
    low = part_a < part
    shared = np.isin(pair_a[low] * width + part_a[low], pair_b * width + part_b)
    out[check[np.unique(pair_a[low][shared])]] = False
    return out


def partition_pairs(part_path: str | Path, pairs_path: str | Path, params: dd.DedupParams, part: int) -> dict:
    """Duplicate pairs of one partition, in global rows, written to ``pairs_path``.

    The Parquet file holds ``a``, ``b`` (global rows) and ``rule`` (a rule of
    :data:`pvlake.dedup.RULES`, or :data:`COPY` for a repeated geometry) for the pairs
    this partition owns (:func:`owned`); its metadata ``pvlake`` holds the counts. Returns
    those counts and the seconds taken.
    """
    start = time.perf_counter()
    gdf, rows, parts = read_partition(part_path)
    found = dd.find_duplicates(gdf, params)
    a, b, rule = [], [], []
    for name, (i, j) in [*found.by_rule.items(), (COPY, found.copies)]:
        keep = owned(i, j, parts, part)
        a.append(rows[i[keep]])
        b.append(rows[j[keep]])
        rule.append(np.full(keep.sum(), name, dtype=object))
    ci, cj = found.candidates
    info = {"partition": part, "records": int(len(gdf)), "candidate_pairs": int(owned(ci, cj, parts, part).sum()),
            "pairs": int(sum(len(x) for x in a))}
    table = pa.table({"a": np.concatenate(a).astype(np.int64), "b": np.concatenate(b).astype(np.int64),
                      "rule": pa.array(np.concatenate(rule), pa.string()).dictionary_encode()})
    table = table.replace_schema_metadata({"pvlake": json.dumps(info)})
    with atomic_path(pairs_path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return {**info, "seconds": time.perf_counter() - start}


# -- merge -------------------------------------------------------------------------------


def read_pairs(paths: list[str | Path]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray], list[dict]]:
    """Pairs of every partition by rule, the copies, and each partition's counts."""
    tables = [pq.read_table(p) for p in paths]
    infos = [json.loads(t.schema.metadata[b"pvlake"]) for t in tables]
    table = pa.concat_tables([t.cast(tables[0].schema) for t in tables]) if tables else None
    a = table.column("a").to_numpy() if table else np.empty(0, np.int64)
    b = table.column("b").to_numpy() if table else np.empty(0, np.int64)
    rule = table.column("rule").cast(pa.string()).to_numpy(zero_copy_only=False) if table else np.empty(0, object)
    by_rule = {name: (a[rule == name], b[rule == name]) for name in dd.RULES}
    return by_rule, (a[rule == COPY], b[rule == COPY]), infos


def read_records(path: str | Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The split's per-record columns (pandas dtypes of the staging schema), vertex counts
    and cut flags."""
    table = pq.read_table(path)
    records = table.select(RECORD_COLUMNS).to_pandas(types_mapper={pa.int32(): pd.Int32Dtype()}.get)
    return records, table.column("n_vertices").to_numpy(), table.column("cut").to_numpy(zero_copy_only=False)


def merge(
    staging_paths: list[str | Path],
    files: PartitionFiles,
    parquet_path: str | Path,
    report_path: str | Path,
    priority: dict[str, int] | None = None,
    params: dd.DedupParams = dd.DedupParams(),
    truth: dict | None = None,
    progress: bool = True,
) -> tuple[dict, np.ndarray]:
    """Merge the partitions' pairs into installations; write the prepared GeoParquet and
    the dedup report (the one-process report plus ``partitions``).

    Returns
    -------
    report : dict
        As :func:`pvlake.dedup.dedup` reports, plus ``partitions`` (the split report and
        each partition's records, candidate pairs and seconds).
    labels : numpy.ndarray
        Cluster label of each record, in global row order.
    """
    records, n_vertices, cut = read_records(files.records)
    by_rule, copies, infos = read_pairs(files.pairs)
    labels = dd.cluster_labels(len(records), list(by_rule.values()) + [copies])
    result = dd.merge_columns(records, n_vertices, labels, priority or {})
    candidates = sum(i["candidate_pairs"] for i in infos)
    report = dd.dedup_report(records, labels, by_rule, copies, candidates, params, truth)
    split_report = json.loads(Path(files.split_report).read_text())
    report["partitions"] = {**{k: split_report[k] for k in ("partition", "coarse_cells", "records_per_partition",
                                                            "records_in_several_partitions")},
                            "jobs": infos}
    if len(records):
        del records
        write_prepared_arrow(staging_files(staging_paths), result, cut, parquet_path, progress=progress)
        write_json(report, report_path)
    else:  # no record at all: the one-process path's empty table
        dd.write_prepared(dd.merge_clusters(dd.load_staging(staging_paths), labels, priority or {}), report,
                          parquet_path, report_path)
    return report, labels


def _representative_rows(paths: list[Path], representative: np.ndarray, progress: bool) -> list[tuple[np.ndarray, pa.Table]]:
    """Per staging file holding representatives: their output positions (ascending) and
    their full staging rows in that order."""
    by_row = np.argsort(representative, kind="stable")  # output positions, by record row
    reps = representative[by_row]
    out, offset = [], 0
    for path in tqdm(paths, desc="merge: representatives", unit="file", disable=not progress):
        n = pq.ParquetFile(path).metadata.num_rows
        lo, hi = np.searchsorted(reps, [offset, offset + n])
        if hi > lo:
            local, where = reps[lo:hi] - offset, by_row[lo:hi]
            order = np.argsort(where, kind="stable")
            table = pq.read_table(path).replace_schema_metadata(None).take(pa.array(local[order]))
            out.append((where[order], table))
        offset += n
    return out


GEOMETRY_TYPES = {1: "Point", 2: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
                  6: "MultiPolygon", 7: "GeometryCollection"}
"""ISO WKB geometry type codes (plus 1000 for Z, 2000 for M, 3000 for ZM) and GeoParquet's names."""


def wkb_geometry_types(wkb: pa.Array | pa.ChunkedArray) -> set[str]:
    """Geometry types named in WKB headers (a byte order byte, then a uint32 type code),
    as GeoParquet's ``geometry_types`` names them; no geometry is decoded."""
    wkb = (wkb.combine_chunks() if isinstance(wkb, pa.ChunkedArray) else wkb).cast(pa.binary())
    if not len(wkb):
        return set()
    offsets = np.frombuffer(wkb.buffers()[1], dtype=np.int32)[wkb.offset: wkb.offset + len(wkb)]
    head = np.frombuffer(wkb.buffers()[2], dtype=np.uint8)[offsets[:, None] + np.arange(5)].astype(np.uint32)
    little = head[:, 0] == 1
    code = np.where(little, head[:, 1] | head[:, 2] << 8 | head[:, 3] << 16 | head[:, 4] << 24,
                    head[:, 4] | head[:, 3] << 8 | head[:, 2] << 16 | head[:, 1] << 24)
    return {GEOMETRY_TYPES[c % 1000] + (" Z" if c // 1000 in (1, 3) else "") for c in np.unique(code).tolist()}


def prepared_schema(staging_path: Path) -> pa.Schema:
    """The Arrow schema (with its pandas and GeoParquet metadata) that
    :func:`pvlake.dedup.write_prepared` writes, taken from a one-installation file written
    that way from the first row of a staging file; the geo metadata's ``bbox`` and
    ``geometry_types`` are those of that row only."""
    first = next(pq.ParquetFile(staging_path).iter_batches(batch_size=1))
    frame = pa.Table.from_batches([first]).replace_schema_metadata(pq.read_schema(staging_path).metadata).to_pandas()
    one = gpd.GeoDataFrame(frame.drop(columns=["bbox"]), geometry=shapely.from_wkb(frame["geometry"]), crs=geo.WGS84)
    with tempfile.TemporaryDirectory() as tmp:
        dd.write_prepared(dd.merge_clusters(one, np.zeros(1, dtype=np.int64), {}), {},
                          Path(tmp) / "one.parquet", Path(tmp) / "one.json")
        schema = pq.read_schema(Path(tmp) / "one.parquet")
    # Parquet names a list's values "element" on reading; pyarrow writes them as "item"
    return pa.schema([f.with_type(pa.list_(f.type.value_type)) if pa.types.is_list(f.type) else f for f in schema],
                     metadata=schema.metadata)


@dataclass(frozen=True)
class _CutShapes:
    """Representatives whose shape was cut at ±180 for the search (rare): their output
    positions, cut WKB and bounds."""

    positions: np.ndarray
    wkb: np.ndarray
    bounds: np.ndarray

    @classmethod
    def of(cls, per_file: list[tuple[np.ndarray, pa.Table]], positions: np.ndarray) -> _CutShapes:
        wkb, found = [], []
        for pos, table in per_file:
            hit = np.flatnonzero(np.isin(pos, positions))
            if len(hit):
                wkb.append(table.column("geometry").take(pa.array(hit)).to_numpy(zero_copy_only=False))
                found.append(pos[hit])
        found = np.concatenate(found) if found else np.empty(0, np.int64)
        geoms = geo.split_antimeridian(shapely.from_wkb(np.concatenate(wkb)))[0] if wkb else np.empty(0, object)
        order = np.argsort(found)
        return cls(found[order], np.asarray(shapely.to_wkb(geoms[order]), dtype=object), shapely.bounds(geoms[order]))

    def patch(self, chunk: pa.Table, start: int) -> pa.Table:
        lo, hi = np.searchsorted(self.positions, [start, start + chunk.num_rows])
        if hi == lo:
            return chunk
        rows = self.positions[lo:hi] - start
        wkb = chunk.column("geometry").to_numpy(zero_copy_only=False).copy()
        wkb[rows] = self.wkb[lo:hi]
        box = np.column_stack([f.to_numpy() for f in chunk.column("bbox").combine_chunks().flatten()])
        box[rows] = self.bounds[lo:hi]
        bbox = pa.StructArray.from_arrays([pa.array(box[:, k]) for k in range(4)], ["xmin", "ymin", "xmax", "ymax"])
        chunk = chunk.set_column(chunk.schema.get_field_index("geometry"), "geometry", pa.array(wkb, pa.binary()))
        return chunk.set_column(chunk.schema.get_field_index("bbox"), "bbox", bbox)


def _extent(per_file: list[tuple[np.ndarray, pa.Table]], cut: _CutShapes) -> tuple[list[float], list[str]]:
    """Bounds and geometry types of every representative (GeoParquet ``bbox`` and
    ``geometry_types``), from the bbox columns and WKB headers."""
    boxes, types = [cut.bounds], set()
    if len(cut.positions):
        types |= wkb_geometry_types(pa.array(cut.wkb, pa.binary()))
    for pos, table in per_file:
        keep = ~np.isin(pos, cut.positions)
        box = np.column_stack([f.to_numpy() for f in table.column("bbox").combine_chunks().flatten()])
        boxes.append(box[keep])
        types |= wkb_geometry_types(table.column("geometry").filter(pa.array(keep)))
    box = np.concatenate(boxes)
    return [box[:, 0].min(), box[:, 1].min(), box[:, 2].max(), box[:, 3].max()], sorted(types)


def write_prepared_arrow(
    paths: list[Path], result: dd.ClusterMerge, cut: np.ndarray, parquet_path: str | Path,
    chunk_rows: int = 500_000, progress: bool = True,
) -> None:
    """Write the prepared GeoParquet from staging rows with Arrow, in ``pv_id`` order,
    as :func:`pvlake.dedup.write_prepared` would write the same installations: same
    columns, types, pandas and GeoParquet 1.1 metadata and bbox covering column.

    Each staging file's representatives are taken in output order; every chunk of output
    rows then gathers its contiguous slice of each file's rows, so memory holds the
    representatives' rows once, not twice.
    """
    per_file = _representative_rows(paths, result.representative, progress)
    if not per_file:
        raise ValueError("no staging records to write")
    cut_shapes = _CutShapes.of(per_file, np.flatnonzero(cut[result.representative]))
    schema = prepared_schema(next(p for p in paths if pq.ParquetFile(p).metadata.num_rows))
    meta = dict(schema.metadata)
    geo_meta = json.loads(meta[b"geo"])
    bbox, types = _extent(per_file, cut_shapes)
    geo_meta["columns"]["geometry"].update(bbox=bbox, geometry_types=types)
    meta[b"geo"] = json.dumps(geo_meta).encode()
    schema = schema.with_metadata(meta)
    n_out = len(result.representative)
    with atomic_path(parquet_path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for start in tqdm(range(0, n_out, chunk_rows), desc="merge: write", unit="chunk", disable=not progress):
            stop = min(start + chunk_rows, n_out)
            pieces, where = [], []
            for pos, table in per_file:
                lo, hi = np.searchsorted(pos, [start, stop])
                if hi > lo:
                    pieces.append(table.slice(lo, hi - lo))
                    where.append(pos[lo:hi])
            chunk = pa.concat_tables(pieces, promote_options="permissive")
            chunk = chunk.take(pa.array(np.argsort(np.concatenate(where), kind="stable")))
            chunk = cut_shapes.patch(_with_provenance(chunk, result, start, stop), start)
            writer.write_table(chunk.select(schema.names).cast(schema))


def _with_provenance(chunk: pa.Table, result: dd.ClusterMerge, start: int, stop: int) -> pa.Table:
    """Representative rows with the merged attributes and provenance of output rows
    ``start:stop``."""
    for col in dd.FILLED:
        values = pa.array(result.filled[col].iloc[start:stop], from_pandas=True)
        chunk = chunk.set_column(chunk.schema.get_field_index(col), col, values.cast(chunk.schema.field(col).type))
    for col in dd.PROVENANCE:
        chunk = chunk.append_column(col, pa.array(result.provenance[col].iloc[start:stop].array))
    return chunk


def partitions_table(report: dict) -> pd.DataFrame:
    """Records, owned candidate pairs and owned duplicate pairs per partition (a merged
    report's ``partitions``)."""
    return pd.DataFrame(report["partitions"]["jobs"], columns=["partition", "records", "candidate_pairs", "pairs"])


def run_dedup(
    staging_paths: list[str | Path],
    parquet_path: str | Path,
    report_path: str | Path,
    priority: dict[str, int] | None = None,
    params: dd.DedupParams = dd.DedupParams(),
    partition: PartitionParams = PartitionParams(),
    files: PartitionFiles | None = None,
    truth: dict | None = None,
) -> dict:
    """The dedup stage's result, written: in one process (``partition.count`` 1) or merged
    from the partitions' pairs in ``files`` (the split and partition jobs ran before).
    Returns the report."""
    if partition.count == 1:
        prepared, report, _ = dd.dedup(dd.load_staging(staging_paths), priority, params, truth)
        dd.write_prepared(prepared, report, parquet_path, report_path)
        return report
    return merge(staging_paths, files, parquet_path, report_path, priority, params, truth)[0]


# -- command line (the workflow's split and partition jobs) ------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pvlake.partition", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    s = sub.add_parser("split", help="staging files -> partition files and per-record columns")
    s.add_argument("--staging", nargs="*", default=[], help="staging GeoParquet files")
    s.add_argument("--data-dir", required=True)
    s.add_argument("--dedup", required=True, help="dedup rule parameters (JSON)")
    s.add_argument("--partitions", type=int, required=True)
    s.add_argument("--resolution", type=int, required=True)
    p = sub.add_parser("pairs", help="one partition file -> its duplicate pairs")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dedup", required=True)
    p.add_argument("--part", type=int, required=True)
    p.add_argument("--partitions", type=int, required=True)
    args = parser.parse_args(argv)

    from .layout import Layout

    layout = Layout(args.data_dir)
    params = dd.DedupParams(**json.loads(args.dedup))
    start = time.perf_counter()
    if args.step == "split":
        partition = PartitionParams(args.partitions, args.resolution)
        report = split(args.staging, PartitionFiles.in_layout(layout, args.partitions), params, partition)
        print(f"split {report['records']:,} records into {args.partitions} partitions "
              f"({report['records_per_partition']} records; {report['records_in_several_partitions']:,} in more "
              f"than one) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    else:
        files = PartitionFiles.in_layout(layout, args.partitions)
        info = partition_pairs(files.parts[args.part], files.pairs[args.part], params, args.part)
        print(f"partition {args.part}: {info['records']:,} records, {info['candidate_pairs']:,} candidate pairs "
              f"owned, {info['seconds']:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
