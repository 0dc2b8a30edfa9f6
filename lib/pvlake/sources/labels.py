"""Finding and reading the label files of a dataset.

``find_label_files`` lists what the manifest selects (file filters applied, zip archives
opened member by member), and ``read_labels`` parses one file into a GeoDataFrame in its
source CRS, whatever the format: GeoJSON, ESRI Shapefile (plain or zipped), GeoPackage
(layer picked), CSV of lon/lat columns, or a bare JSON array of ``[lon, lat]`` pairs.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyogrio
import pyproj
import shapely

from ..errors import DatasetError
from ..manifest import ARCHIVE_SUFFIXES, LABEL_FORMATS, DatasetSpec

JUNK = re.compile(r"(^|/)(__MACOSX|\.DS_Store|Thumbs\.db)(/|$)|(^|/)\._")
"""Archive and OS clutter that is never a label file."""

PROVENANCE_FILES = {"MANIFEST.json"}
"""Files the download stage writes next to the data; never label files."""

SOLAR_LAYER = re.compile(r"solar|photovolt|(^|_)pv(_|$)", re.IGNORECASE)

GEOJSON_HEAD_BYTES = 65536

NULLABLE_INTEGERS = {
    pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(),
}


@dataclass(frozen=True)
class LabelFile:
    """One file to read, on disk or inside a zip archive.

    Attributes
    ----------
    source_file : str
        Provenance name: POSIX path relative to the dataset root; a zip member is
        ``<archive>/<member>``.
    path : Path
        The file on disk (the archive itself for a member).
    member : str or None
        Member name inside the archive at ``path``.
    """

    source_file: str
    path: Path
    member: str | None = None

    @property
    def gdal_path(self) -> str:
        """Path GDAL opens (``/vsizip/`` for archive members)."""
        if self.member is None:
            return str(self.path)
        return f"/vsizip/{self.path}/{self.member}"

    def read_bytes(self, limit: int | None = None) -> bytes:
        """Content of the file (at most ``limit`` bytes)."""
        if self.member is None:
            with open(self.path, "rb") as fh:
                return fh.read(limit) if limit else fh.read()
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as fh:
            return fh.read(limit) if limit else fh.read()

    def size_bytes(self) -> int:
        """Uncompressed size of the file."""
        if self.member is None:
            return self.path.stat().st_size
        with zipfile.ZipFile(self.path) as zf:
            return zf.getinfo(self.member).file_size


def _candidates(spec: DatasetSpec, root: Path) -> list[tuple[str, Path]]:
    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise DatasetError(spec.name, str(root), "path does not exist")
    found = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not JUNK.search(rel) and rel not in PROVENANCE_FILES:
            found.append((rel, p))
    return found


def _members(spec: DatasetSpec, rel: str, archive: Path) -> list[LabelFile]:
    try:
        with zipfile.ZipFile(archive) as zf:
            names = sorted(i.filename for i in zf.infolist() if not i.is_dir())
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(spec.name, str(archive), f"not a readable zip archive ({exc})") from exc
    return [LabelFile(f"{rel}/{m}", archive, m) for m in names if not JUNK.search(m)]


def find_label_files(spec: DatasetSpec, root: str | Path | None = None) -> list[LabelFile]:
    """List the label files the manifest selects for a dataset, sorted.

    Zip archives are opened and the file filters apply to their members, as they would
    after extraction. Only files with an extension of the dataset's ``label_fmt`` are read.

    Parameters
    ----------
    spec : DatasetSpec
        The dataset's manifest entry.
    root : str or Path, optional
        Where the files are; defaults to the entry's ``path`` (``local`` datasets).

    Raises
    ------
    DatasetError
        When the root does not exist, an archive is unreadable, or nothing matches.
    """
    root = Path(root) if root is not None else spec.path
    if root is None:
        raise DatasetError(spec.name, None, "no path to read the dataset from")
    suffixes = LABEL_FORMATS[spec.label_fmt]
    seen, selected = [], []
    for rel, path in _candidates(spec, root):
        if path.suffix.lower() in ARCHIVE_SUFFIXES:
            inner = _members(spec, rel, path)
        else:
            inner = [LabelFile(rel, path)]
        for lf in inner:
            seen.append(lf.source_file)
            if spec.filters.accepts(lf.source_file) and lf.source_file.lower().endswith(suffixes):
                selected.append(lf)
    if not selected:
        listing = ", ".join(seen[:20]) + (" ..." if len(seen) > 20 else "") or "none"
        raise DatasetError(
            spec.name, str(root),
            f"no {spec.label_fmt} file matches the file filters "
            f"(include {list(spec.filters.include_patterns)}, exclude {list(spec.filters.exclude_patterns)}); "
            f"files present: {listing}",
        )
    return selected


THOUSANDS_DOTS = re.compile(r"^[+-]?\d{1,3}(\.\d{3})+$")
GROUPING = re.compile(r"[.\s\u00a0\u202f]")


def _decimal_comma_to_point(text: str) -> str:
    """``"1.234,5"`` -> ``"1234.5"``; ``"1.234"`` (dots grouping thousands) -> ``"1234"``;
    text with a dot but no comma that is no thousands grouping (``"7.5"``, a number GDAL
    turned into text) is left as it is."""
    if "," in text:
        return GROUPING.sub("", text).replace(",", ".")
    if THOUSANDS_DOTS.match(text):
        return text.replace(".", "")
    return text


def parse_numbers(values, decimal: str = ".") -> tuple[np.ndarray, np.ndarray]:
    """Numbers of a source column as floats, and which values were there but did not parse.

    Parameters
    ----------
    values : array-like
        The column as read (numbers, strings, nulls).
    decimal : str
        ``","`` reads text such as ``"1.234,5"`` as 1234.5 (decimal comma, dot or space
        thousands); numbers already typed as such are taken as they are.

    Returns
    -------
    numbers : numpy.ndarray of float
        NaN where a value is missing or unparseable.
    unparseable : numpy.ndarray of bool
        Non-empty values that are not numbers (``"n/a"``, ``"12,5"`` without ``decimal=","``).
    """
    column = pd.Series(values, copy=False)
    if column.dtype.kind in "biuf":
        return column.to_numpy(dtype=float, na_value=np.nan), np.zeros(len(column), dtype=bool)
    column = column.astype(object)
    text = column.map(lambda v: v.strip() if isinstance(v, str) else v)
    present = text.notna().to_numpy() & (text != "").to_numpy()
    if decimal == ",":
        is_text = text.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        text = text.copy()
        text[is_text] = text[is_text].map(_decimal_comma_to_point)
    numbers = pd.to_numeric(text.where(present), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return numbers, present & np.isnan(numbers)


@dataclass
class SourceFrame:
    """Features of one file in their source CRS, before harmonization.

    Attributes
    ----------
    frame : geopandas.GeoDataFrame
        Source attributes plus ``geometry`` (CRS set), one row per feature in file order.
    source_file : str
        Provenance name (``<file>:<layer>`` for a GeoPackage layer).
    crs_from : str
        Where the CRS came from: ``file``, ``manifest``, ``geojson-default`` (RFC 7946) or
        ``default`` (a bare JSON array of [lon, lat], read as WGS84 lon/lat).
    unparseable : dict
        Coordinate column -> count of values that were there but are not numbers (their
        rows have no geometry).
    """

    frame: gpd.GeoDataFrame
    source_file: str
    crs_from: str
    unparseable: dict[str, int] = field(default_factory=dict)


def parse_crs(spec: DatasetSpec, lf: LabelFile, value: str) -> pyproj.CRS:
    """The manifest's CRS name ("WGS84", "NAD83", "EPSG:4326", ...) as a pyproj CRS."""
    try:
        return pyproj.CRS.from_user_input(value)
    except pyproj.exceptions.CRSError as exc:
        raise DatasetError(spec.name, lf.source_file, f"manifest crs {value!r} is not a known CRS") from exc


def _resolve_crs(spec: DatasetSpec, lf: LabelFile, declared) -> tuple[pyproj.CRS, str]:
    if declared is not None:
        return pyproj.CRS.from_user_input(declared), "file"
    if spec.crs:
        return parse_crs(spec, lf, spec.crs), "manifest"
    raise DatasetError(
        spec.name, lf.source_file,
        "no CRS: the file declares none and the manifest entry has no 'crs'",
    )


def _geojson_declares_crs(lf: LabelFile) -> bool:
    # GDAL reports EPSG:4326 for every GeoJSON, so look for the legacy "crs" member itself;
    # writers put it before "features".
    head = lf.read_bytes(GEOJSON_HEAD_BYTES)
    cut = head.find(b'"features"')
    return b'"crs"' in (head if cut < 0 else head[:cut])


def pick_layer(spec: DatasetSpec, lf: LabelFile) -> str | None:
    """The GeoPackage layer to read: the manifest's ``layer`` or the single solar/PV one."""
    layers = [str(name) for name, gtype in pyogrio.list_layers(lf.gdal_path) if gtype is not None]
    if spec.layer:
        exact = [n for n in layers if n == spec.layer]
        hits = exact or [n for n in layers if re.fullmatch(spec.layer, n)]
        if len(hits) != 1:
            raise DatasetError(
                spec.name, lf.source_file,
                f"layer {spec.layer!r} matches {len(hits)} layers; layers present: {', '.join(layers)}",
            )
        return hits[0]
    if len(layers) == 1:
        return layers[0]
    solar = [n for n in layers if SOLAR_LAYER.search(n)]
    if len(solar) == 1:
        return solar[0]
    raise DatasetError(
        spec.name, lf.source_file,
        f"several layers ({', '.join(layers)}); name one with the manifest's 'layer'",
    )


def _reads_fid(spec: DatasetSpec, info: dict) -> bool:
    """Whether the manifest's ``id_col`` names the layer's feature id (a GeoPackage's
    ``fid`` primary key, a shapefile's implicit FID), which is not an attribute field."""
    if not spec.id_col or spec.id_col in set(info["fields"]):
        return False
    return spec.id_col.lower() == (info.get("fid_column") or "fid").lower()


def _read_vector(spec: DatasetSpec, lf: LabelFile) -> SourceFrame:
    layer = pick_layer(spec, lf) if spec.label_fmt == "gpkg" else None
    info = pyogrio.read_info(lf.gdal_path, layer=layer)
    fid = _reads_fid(spec, info)
    # Nullable integers stay integers (ids with gaps would otherwise become floats).
    frame = pyogrio.read_dataframe(
        lf.gdal_path, layer=layer, use_arrow=True, fid_as_index=fid,
        arrow_to_pandas_kwargs={"types_mapper": NULLABLE_INTEGERS.get},
    )
    if fid:
        frame[spec.id_col] = frame.index.to_numpy()
        frame = frame.reset_index(drop=True)
    declared = info["crs"]
    if spec.label_fmt == "geojson" and not _geojson_declares_crs(lf) and declared in ("EPSG:4326", "OGC:CRS84"):
        declared = None
        if not spec.crs:
            # RFC 7946: a GeoJSON without a crs member is WGS84 lon/lat.
            frame = frame.set_crs("OGC:CRS84", allow_override=True)
            return SourceFrame(frame, lf.source_file, "geojson-default")
    crs, crs_from = _resolve_crs(spec, lf, declared)
    frame = frame.set_crs(crs, allow_override=True)
    name = f"{lf.source_file}:{layer}" if layer else lf.source_file
    return SourceFrame(frame, name, crs_from)


def _points_frame(spec, lf, attrs: pd.DataFrame, lon, lat, default_crs: str | None = None,
                  names: tuple[str, str] = ("lon", "lat")) -> SourceFrame:
    if default_crs is not None and not spec.crs:
        crs, crs_from = pyproj.CRS.from_user_input(default_crs), "default"
    else:
        crs, crs_from = _resolve_crs(spec, lf, None)
    lon, bad_lon = parse_numbers(lon, spec.decimal)
    lat, bad_lat = parse_numbers(lat, spec.decimal)
    geoms = shapely.points(lon, lat)
    geoms[~(np.isfinite(lon) & np.isfinite(lat))] = None
    unparseable = {name: int(bad.sum()) for name, bad in zip(names, (bad_lon, bad_lat)) if bad.any()}
    return SourceFrame(gpd.GeoDataFrame(attrs, geometry=geoms, crs=crs), lf.source_file, crs_from, unparseable)


CSV_DELIMITERS = ",;\t|"
CSV_SNIFF_BYTES = 65536


def csv_delimiter(spec: DatasetSpec, lf: LabelFile) -> str:
    """The manifest's ``delimiter``, else the one the file's first lines use consistently
    (European exports separate fields with ``;`` because ``,`` is their decimal mark)."""
    if spec.delimiter:
        return spec.delimiter
    head = lf.read_bytes(CSV_SNIFF_BYTES).decode("utf-8", errors="replace")
    lines = head.splitlines()
    sample = "\n".join(lines[:-1] if len(lines) > 1 and not head.endswith("\n") else lines)
    try:
        return csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _read_csv(spec: DatasetSpec, lf: LabelFile) -> SourceFrame:
    delimiter = csv_delimiter(spec, lf)
    try:
        df = pd.read_csv(io.BytesIO(lf.read_bytes()), sep=delimiter)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(spec.name, lf.source_file, f"not a readable CSV ({exc})") from exc
    missing = [c for c in (spec.lon_col, spec.lat_col) if c not in df.columns]
    if missing:
        raise DatasetError(
            spec.name, lf.source_file,
            f"CSV lacks coordinate column(s) {missing}; columns present: {', '.join(map(str, df.columns))} "
            f"(fields separated by {delimiter!r}; set 'delimiter' in the manifest if that is wrong)",
        )
    return _points_frame(spec, lf, df, df[spec.lon_col], df[spec.lat_col], names=(spec.lon_col, spec.lat_col))


def _read_json_points(spec: DatasetSpec, lf: LabelFile) -> SourceFrame:
    try:
        data = json.loads(lf.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(spec.name, lf.source_file, f"not valid JSON ({exc})") from exc
    ok = isinstance(data, list) and all(
        isinstance(p, list) and len(p) >= 2 and all(isinstance(v, (int, float)) for v in p[:2]) for p in data
    )
    if not ok:
        raise DatasetError(spec.name, lf.source_file, "expected a JSON array of [lon, lat] pairs")
    xy = np.asarray([p[:2] for p in data], dtype=float).reshape(-1, 2)
    # A bare array cannot declare a CRS: read it as RFC 7946 reads GeoJSON, WGS84 lon/lat
    # (harmonize's coordinate check refuses files that are not).
    return _points_frame(spec, lf, pd.DataFrame(index=range(len(xy))), xy[:, 0], xy[:, 1], default_crs="OGC:CRS84")


def read_labels(spec: DatasetSpec, lf: LabelFile) -> SourceFrame:
    """Read one label file of a dataset in its source CRS.

    Raises
    ------
    DatasetError
        When the file is empty, corrupt, has no features, or has no CRS from anywhere.
    """
    if lf.size_bytes() == 0:
        raise DatasetError(spec.name, lf.source_file, "file is empty (0 bytes)")
    try:
        if spec.label_fmt == "csv":
            sf = _read_csv(spec, lf)
        elif spec.label_fmt == "json":
            sf = _read_json_points(spec, lf)
        else:
            sf = _read_vector(spec, lf)
    except pyogrio.errors.DataSourceError as exc:
        raise DatasetError(spec.name, lf.source_file, f"cannot be read as {spec.label_fmt} ({exc})") from exc
    except (pyogrio.errors.DataLayerError, pyogrio.errors.FieldError, pyogrio.errors.GeometryError) as exc:
        raise DatasetError(spec.name, lf.source_file, f"corrupt {spec.label_fmt} content ({exc})") from exc
    if len(sf.frame) == 0:
        raise DatasetError(spec.name, lf.source_file, "contains no features")
    return sf
