"""Harmonize stage: every PV label dataset into one canonical GeoParquet schema.

Each source file is read in its own CRS, reprojected to EPSG:4326, repaired, measured
(geodesic area, centroid, H3 cell) and given a stable ``pv_id``; the manifest's
``keep_cols`` ride along as JSON and its ``columns`` map fills the canonical attributes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from tqdm import tqdm

from . import geo
from .errors import DatasetError
from .io import write_geoparquet, write_json
from .manifest import DatasetSpec
from .sources import LabelFile, SourceFrame, find_label_files, read_labels
from .sources.labels import parse_numbers

SCHEMA: dict[str, str] = {
    "pv_id": "string",
    "dataset": "string",
    "source_id": "string",
    "geom_type": "string",
    "area_m2": "float64",
    "centroid_lon": "float64",
    "centroid_lat": "float64",
    "h3_cell": "string",
    "capacity_mw": "float64",
    "install_year": "Int32",
    "source_area_m2": "float64",
    "attributes": "string",
    "source_file": "string",
    "source_row": "int64",
}
"""Canonical columns and their pandas dtypes (``geometry`` comes last)."""

SCHEMA_DOC: dict[str, str] = {
    "pv_id": "stable id: hash of dataset, source file and source id (or normalised geometry when there is none)",
    "dataset": "manifest key of the source dataset",
    "source_id": "the source's own id (manifest 'id_col'), null when it has none",
    "geom_type": "Point, Polygon or MultiPolygon",
    "area_m2": "geodesic area on the WGS84 ellipsoid in m² (null for points)",
    "centroid_lon": "centroid longitude, degrees EPSG:4326",
    "centroid_lat": "centroid latitude, degrees EPSG:4326",
    "h3_cell": "H3 cell of the centroid at the configured resolution (hex string)",
    "capacity_mw": "installed capacity in MW where the source has it (manifest 'columns')",
    "install_year": "installation year where the source has it (manifest 'columns')",
    "source_area_m2": "the source's own area figure converted to m² (not the geometry's area)",
    "attributes": "JSON object of the manifest's keep_cols, as in the source",
    "source_file": "file the row came from, relative to the dataset root (zip members as archive/member, GeoPackage layers as file:layer)",
    "source_row": "0-based index of the feature in that file or layer",
    "geometry": "valid geometry in EPSG:4326 (polygons oriented counter-clockwise)",
}
"""One-line description of every canonical column (README and book)."""

def _json_value(v):
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (pd.Timestamp,)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return v if isinstance(v, (int, str, bool)) else str(v)


CANONICAL_ATTRIBUTES = ("capacity_mw", "install_year", "source_area_m2")
"""Canonical columns a manifest's ``columns`` map fills from source columns."""


def keep_cols_json(frame: pd.DataFrame, keep_cols: tuple[str, ...]) -> np.ndarray:
    """Row-wise JSON objects of the kept source columns present in ``frame``."""
    cols = [c for c in keep_cols if c in frame.columns]
    if not cols:
        return np.full(len(frame), None, dtype=object)
    values = frame[cols].astype(object).to_numpy()
    return np.array(
        [json.dumps({c: _json_value(v) for c, v in zip(cols, row)}, ensure_ascii=False) for row in values],
        dtype=object,
    )


def source_ids(frame: pd.DataFrame, id_col: str | None) -> np.ndarray:
    """The source id column as strings (integral floats without ``.0``), None where missing."""
    out = np.full(len(frame), None, dtype=object)
    if not id_col or id_col not in frame.columns:
        return out
    for i, v in enumerate(frame[id_col].astype(object).to_numpy()):
        v = _json_value(v)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out[i] = None if v is None or v == "" else str(v)
    return out


def make_pv_ids(dataset: str, source_file: np.ndarray, source_id: np.ndarray, geoms: np.ndarray) -> np.ndarray:
    """Stable, unique ids: hash of dataset, source file and source id (or rounded
    geometry when the row has none).

    The file is part of the key because ids and geometries repeat across a dataset's
    files (a per-file row number, a farm seen again next year): with it, a record's id
    does not depend on which other files are read. A key that repeats inside one file
    (an exact duplicate, a reused id) gets its occurrence number in that file's row
    order, so ids stay unique and reproducible.
    """
    wkb = geo.geometry_keys(geoms)
    seen: Counter = Counter()
    ids = np.empty(len(geoms), dtype=object)
    for i, (file, sid, g) in enumerate(zip(source_file, source_id, wkb)):
        key = f"geom:{g}" if sid is None or pd.isna(sid) else f"id:{sid}"
        n = seen[file, key]
        seen[file, key] += 1
        if n:
            key = f"{key}#{n}"
        ids[i] = hashlib.sha1(f"{dataset}\x1f{file}\x1f{key}".encode()).hexdigest()[:16]
    return ids


def canonical_attribute(frame: pd.DataFrame, spec: DatasetSpec, name: str) -> tuple[np.ndarray, int]:
    """A canonical attribute (manifest ``columns``) in its canonical unit, and how many
    source values were there but did not parse as numbers (they become null)."""
    src = spec.columns.get(name)
    if src is None or src.col not in frame.columns:
        return np.full(len(frame), np.nan), 0
    values, unparseable = parse_numbers(frame[src.col], spec.decimal)
    return values * src.factor, int(unparseable.sum())


def check_id_col(spec: DatasetSpec, sf: SourceFrame) -> None:
    """Refuse a file without the manifest's ``id_col``: its ids would silently become
    geometry hashes."""
    if spec.id_col and spec.id_col not in sf.frame.columns:
        present = [c for c in sf.frame.columns if c != sf.frame.geometry.name]
        raise DatasetError(
            spec.name, sf.source_file,
            f"id_col {spec.id_col!r} is not a column of this file; columns present: {', '.join(map(str, present)) or 'none'}",
        )


def unexpected_geom_types(found: Counter, declared: set[str]) -> dict[str, int]:
    """Counts of found geometry types whose family (point or polygon) the manifest's
    ``geom_type`` does not declare; empty when nothing is declared."""
    if not declared:
        return {}
    families = {"Point": "point", "MultiPoint": "point", "Polygon": "polygon", "MultiPolygon": "polygon"}
    allowed = {families[t] for t in declared}
    return {t: n for t, n in sorted(found.items()) if families.get(t) not in allowed}


MAX_FAULTY_SHARE = 0.5
"""A file with more than this share of its geometries at impossible coordinates is
refused (its CRS is wrong); below it, the faulty rows are dropped and counted."""


def coordinate_hint(source_geoms: np.ndarray, source_crs, faults: np.ndarray) -> str:
    """What most likely went wrong with a file whose coordinates are impossible."""
    faulty = pd.notna(faults)
    xy = shapely.get_coordinates(np.asarray(source_geoms, dtype=object)[faulty])
    xy = xy[np.isfinite(xy).all(axis=1)]
    if not len(xy):
        return "the file's own coordinates are not finite numbers"
    x, y = np.abs(xy[:, 0]), np.abs(xy[:, 1])
    if source_crs is not None and source_crs.is_geographic:
        if np.median(np.maximum(x, y)) > 360:
            return (f"the coordinates look projected (values up to {np.max(np.maximum(x, y)):,.0f}): "
                    "set `crs` in the manifest to the file's projected CRS")
        if np.mean((y > geo.LAT_LIMIT) & (x <= geo.LAT_LIMIT)) > 0.5:
            return "longitude and latitude look swapped: check `lon_col`/`lat_col` (or the CRS's axis order)"
    elif np.all((x <= geo.LON_LIMIT) & (y <= geo.LAT_LIMIT)):
        return "the coordinates look like degrees: set `crs` in the manifest to WGS84 if they are"
    if np.mean(faults[faulty] == "non_finite_coordinates") > 0.5:
        return "PROJ could not transform them from this CRS: check that it is the file's (or set `crs` in the manifest)"
    return "check that this CRS is the file's (or set `crs` in the manifest)"


def check_coordinates(spec: DatasetSpec, sf: SourceFrame, faults: np.ndarray) -> None:
    """Refuse a file whose geometries are mostly at impossible coordinates.

    Raises
    ------
    DatasetError
        Naming the dataset, the file, the CRS and where it came from, with a hint.
    """
    faulty = pd.notna(faults)
    present = ~shapely.is_missing(sf.frame.geometry.to_numpy())
    n_present = int(present.sum())
    n_faulty = int(faulty.sum())
    if n_present and n_faulty > MAX_FAULTY_SHARE * n_present:
        crs = sf.frame.crs
        raise DatasetError(
            spec.name, sf.source_file,
            f"{n_faulty:,} of {n_present:,} geometries have impossible coordinates after reprojection "
            f"from {crs.to_string() if crs is not None else 'no CRS'} (CRS from {sf.crs_from}): "
            f"longitude beyond +-180, latitude beyond +-90 or not transformable; "
            f"{coordinate_hint(sf.frame.geometry.to_numpy(), crs, faults)}",
        )


def harmonize_frame(sf: SourceFrame, spec: DatasetSpec, h3_resolution: int) -> tuple[gpd.GeoDataFrame, dict]:
    """Canonical rows of one source file (without ``pv_id``) and its counts.

    Returns
    -------
    frame : geopandas.GeoDataFrame
        Kept rows in file order, canonical columns except ``pv_id``.
    stats : dict
        ``rows_read``, ``repaired``, ``split_at_antimeridian``,
        ``polygons_from_collections``, ``dropped`` (reason -> count), ``unparseable``
        (source column -> values that are not numbers, made null), ``rows_written``.

    Raises
    ------
    DatasetError
        When most coordinates are impossible after reprojection (:func:`check_coordinates`)
        or the file lacks the manifest's ``id_col`` (:func:`check_id_col`).
    """
    src = sf.frame
    check_id_col(spec, sf)
    geoms = geo.to_wgs84(src.geometry.to_numpy(), src.crs)
    faults = geo.coordinate_faults(geoms)
    check_coordinates(spec, sf, faults)
    faulty = pd.notna(faults)
    geoms[faulty] = None
    geoms, from_collections = geo.polygonal_collections(geoms)
    geoms, split = geo.split_antimeridian(geo.clip_to_range(geoms))
    geoms, repaired, reason = geo.repair(geoms)
    reason[faulty] = faults[faulty]
    keep = np.array([r is None for r in reason], dtype=bool)
    kept = src.loc[keep]
    geoms = geoms[keep]
    lon, lat = geo.centroid_lonlat(geoms)
    attributes, unparseable = {}, dict(sf.unparseable)
    for name in CANONICAL_ATTRIBUTES:
        attributes[name], n_bad = canonical_attribute(kept, spec, name)
        if n_bad:
            unparseable[spec.columns[name].col] = n_bad
    year = attributes["install_year"]
    out = gpd.GeoDataFrame(
        {
            "dataset": spec.name,
            "source_id": source_ids(kept, spec.id_col),
            "geom_type": shapely.get_type_id(geoms),
            "area_m2": geo.geodesic_area_m2(geoms),
            "centroid_lon": lon,
            "centroid_lat": lat,
            "h3_cell": geo.h3_cells(lon, lat, h3_resolution),
            "capacity_mw": attributes["capacity_mw"],
            "install_year": pd.array(np.where(np.isfinite(year), np.round(year), np.nan), dtype="Float64").astype("Int32"),
            "source_area_m2": attributes["source_area_m2"],
            "attributes": keep_cols_json(kept, spec.keep_cols),
            "source_file": sf.source_file,
            "source_row": np.flatnonzero(keep),
        },
        geometry=geoms,
        crs=geo.WGS84,
    )
    out["geom_type"] = out["geom_type"].map({0: "Point", 3: "Polygon", 6: "MultiPolygon"})
    stats = {
        "source_file": sf.source_file,
        "crs": src.crs.to_string(),
        "crs_from": sf.crs_from,
        "rows_read": int(len(src)),
        "repaired": int(repaired.sum()),
        "split_at_antimeridian": int(split.sum()),
        "polygons_from_collections": int(from_collections.sum()),
        "dropped": dict(sorted(Counter(r for r in reason if r is not None).items())),
        "unparseable": dict(sorted(unparseable.items())),
        "rows_written": int(keep.sum()),
        "keep_cols_missing": [c for c in spec.keep_cols if c not in src.columns],
    }
    return out, stats


def empty_staging() -> gpd.GeoDataFrame:
    """A zero-row frame with the canonical schema."""
    cols = {name: pd.Series(dtype=dtype) for name, dtype in SCHEMA.items()}
    return gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries([], crs=geo.WGS84))


def finalize(frames: list[gpd.GeoDataFrame], dataset: str) -> gpd.GeoDataFrame:
    """Concatenate per-file rows, assign ``pv_id`` and fix column order and dtypes."""
    parts = [f for f in frames if len(f)]
    gdf = pd.concat(parts, ignore_index=True) if parts else empty_staging()
    gdf = gdf.sort_values(["source_file", "source_row"], kind="stable", ignore_index=True)
    gdf["pv_id"] = make_pv_ids(
        dataset, gdf["source_file"].to_numpy(dtype=object), gdf["source_id"].to_numpy(dtype=object), gdf.geometry.to_numpy()
    )
    gdf = gdf[list(SCHEMA) + ["geometry"]].astype(SCHEMA)
    return gpd.GeoDataFrame(gdf, geometry="geometry", crs=geo.WGS84)


def harmonize_dataset(
    spec: DatasetSpec,
    root: str | Path | None = None,
    h3_resolution: int = 12,
    progress: bool = True,
) -> tuple[gpd.GeoDataFrame, dict]:
    """Harmonize every selected file of one dataset.

    Parameters
    ----------
    spec : DatasetSpec
        The dataset's manifest entry.
    root : str or Path, optional
        Folder holding the files (the download folder); defaults to the entry's ``path``.
    h3_resolution : int
        Resolution of ``h3_cell``.
    progress : bool
        Show a tqdm bar over files.

    Returns
    -------
    staging : geopandas.GeoDataFrame
        Canonical schema (see :data:`SCHEMA`), sorted by ``source_file``, ``source_row``.
    report : dict
        Per-file and total counts of rows read, repaired, dropped (by reason), written.

    Raises
    ------
    DatasetError
        For any bad input, naming the dataset, the file and the reason.
    """
    spec.check()
    files: list[LabelFile] = find_label_files(spec, root)
    frames, per_file = [], []
    for lf in tqdm(files, desc=f"harmonize {spec.name}", unit="file", disable=not progress):
        frame, stats = harmonize_frame(read_labels(spec, lf), spec, h3_resolution)
        frames.append(frame)
        per_file.append(stats)
    staging = finalize(frames, spec.name)
    dropped: Counter = Counter()
    unparseable: Counter = Counter()
    for s in per_file:
        dropped.update(s["dropped"])
        unparseable.update(s["unparseable"])
    report = {
        "dataset": spec.name,
        "label_fmt": spec.label_fmt,
        "manifest_fingerprint": spec.fingerprint,
        "h3_resolution": h3_resolution,
        "rows_read": sum(s["rows_read"] for s in per_file),
        "repaired": sum(s["repaired"] for s in per_file),
        "split_at_antimeridian": sum(s["split_at_antimeridian"] for s in per_file),
        "polygons_from_collections": sum(s["polygons_from_collections"] for s in per_file),
        "dropped": dict(sorted(dropped.items())),
        "unparseable": dict(sorted(unparseable.items())),
        "rows_written": int(len(staging)),
        "geom_types": dict(sorted(Counter(staging["geom_type"]).items())),
        "unexpected_geom_types": unexpected_geom_types(Counter(staging["geom_type"]), spec.declared_geom_types),
        "files": per_file,
    }
    return staging, report


def write_staging(staging: gpd.GeoDataFrame, report: dict, parquet_path: str | Path, report_path: str | Path) -> None:
    """Write the staging GeoParquet and its JSON report, each atomically."""
    write_geoparquet(staging, parquet_path)
    write_json(report, report_path)


def retire_stale_staging(layout, datasets: list[str]) -> list[str]:
    """Move the staging outputs of datasets not in ``datasets`` (renamed or removed from
    the manifest) to ``retired/staging/``, so that nobody reading ``staging/`` picks up
    stale rows; returns the files moved. A later file of the same name replaces the
    retired one."""
    folder = layout.staging_parquet("x").parent
    keep = {p.name for d in datasets for p in (layout.staging_parquet(d), layout.staging_report(d))}
    stale = sorted(p for p in folder.glob("*") if p.is_file() and p.name not in keep
                   and (p.name.endswith(".parquet") or p.name.endswith(".report.json")))
    if stale:
        layout.retired_dir("staging").mkdir(parents=True, exist_ok=True)
    for path in stale:
        os.replace(path, layout.retired_dir("staging") / path.name)
    return [p.name for p in stale]


def dataset_root(spec: DatasetSpec, layout) -> Path | None:
    """Where a dataset's files are: its own ``path`` when local, else the download folder."""
    return None if spec.repo == "local" else layout.raw_dir(spec.name)


def report_table(report: dict) -> pd.DataFrame:
    """Per-file counts of a harmonize report, one row per file plus a total row."""

    def counts(part: dict) -> dict:
        return {
            "rows_read": part["rows_read"],
            "repaired": part["repaired"],
            "cut_at_180": part["split_at_antimeridian"],
            "from_collections": part["polygons_from_collections"],
            "dropped": sum(part["dropped"].values()),
            "why_dropped": ", ".join(f"{k}: {v}" for k, v in part["dropped"].items()),
            "unparseable": ", ".join(f"{k}: {v}" for k, v in part["unparseable"].items()),
            "rows_written": part["rows_written"],
        }

    rows = [{"source_file": f["source_file"], "crs": f"{f['crs']} ({f['crs_from']})", **counts(f)}
            for f in report["files"]]
    rows.append({"source_file": "total", "crs": "EPSG:4326 (output)", **counts(report)})
    return pd.DataFrame(rows)
