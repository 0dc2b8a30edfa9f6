"""The dataset manifest: which PV label datasets exist, where they live, how to read them.

The format is the upstream thesis project's ``doi_manifest.json`` (fields ``doi``, ``repo``,
``compression``, ``label_fmt``, ``crs``, ``geom_type``, ``file_filters``, ``keep_cols``,
``skip``, ``max_mb``), so that file works as is, extended with:

- ``"repo": "local"`` and ``"path"``: a file or folder on disk, relative to the manifest;
- ``layer``: the GeoPackage layer to read (name or regular expression);
- ``lon_col`` / ``lat_col``: coordinate columns of a CSV;
- ``delimiter``: a CSV's field separator (detected among ``, ; tab |`` when absent);
- ``decimal``: ``","`` where numbers are written with a decimal comma (``"12,5"``);
- ``id_col``: a column holding a unique source id;
- ``columns``: canonical attributes taken from source columns with their unit, e.g.
  ``{"capacity_mw": {"col": "power", "unit": "MW"}}``;
- ``priority``: integer, higher wins when duplicates are merged.

An entry is checked when its dataset is processed (:meth:`DatasetSpec.check`), so one
bad entry fails that dataset only.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import DatasetError

LABEL_FORMATS: dict[str, tuple[str, ...]] = {
    "geojson": (".geojson", ".json"),
    "shp": (".shp",),
    "gpkg": (".gpkg",),
    "csv": (".csv",),
    "json": (".json",),
}
"""Readable ``label_fmt`` values and the file extensions each reads."""

GEOMETRY_TYPES = ("Point", "MultiPoint", "Polygon", "MultiPolygon")

REPOSITORIES = ("local", "zenodo", "figshare", "sciencebase", "github", "direct_download", "url")

ARCHIVE_SUFFIXES = (".zip",)

DECIMAL_MARKS = (".", ",")

CANONICAL_COLUMNS: dict[str, dict[str, float]] = {
    "capacity_mw": {"W": 1e-6, "kW": 1e-3, "MW": 1.0, "GW": 1e3},
    "source_area_m2": {"m2": 1.0, "km2": 1e6, "ha": 1e4},
    "install_year": {"year": 1.0},
}
"""Canonical attributes a manifest may map from source columns: unit -> factor to canonical."""

DEFAULT_UNITS = {"capacity_mw": "MW", "source_area_m2": "m2", "install_year": "year"}


@dataclass(frozen=True)
class FileFilters:
    """Include/exclude patterns on file names (regex or glob).

    A pattern containing ``/`` is matched against the path relative to the dataset root,
    any other pattern against the base name (as the upstream manifest's ``^name$`` regexes
    expect). Regexes use :func:`re.search`; globs use :func:`fnmatch.fnmatchcase`.
    """

    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    use_regex: bool = False

    def _hit(self, pattern: str, relpath: str) -> bool:
        target = relpath if "/" in pattern else PurePosixPath(relpath).name
        if self.use_regex:
            return re.search(pattern, target) is not None
        return fnmatch.fnmatchcase(target, pattern)

    def accepts(self, relpath: str) -> bool:
        """True when ``relpath`` passes the include patterns and no exclude pattern."""
        if self.include_patterns and not any(self._hit(p, relpath) for p in self.include_patterns):
            return False
        return not any(self._hit(p, relpath) for p in self.exclude_patterns)


@dataclass(frozen=True)
class ColumnSource:
    """A canonical attribute's source column and the factor that converts its unit."""

    col: str
    factor: float


@dataclass(frozen=True)
class DatasetSpec:
    """One manifest entry, normalised."""

    name: str
    entry: dict
    repo: str | None
    label_fmt: str | None
    path: Path | None
    crs: str | None
    compression: str | None
    filters: FileFilters
    keep_cols: tuple[str, ...]
    id_col: str | None
    columns: dict[str, ColumnSource] = field(default_factory=dict)
    layer: str | None = None
    lon_col: str | None = None
    lat_col: str | None = None
    delimiter: str | None = None
    decimal: str = "."
    priority: int = 0
    skip: bool = False

    @property
    def declared_geom_types(self) -> set[str]:
        """Geometry types the entry's ``geom_type`` names, whatever its upstream shape
        (a string, a list, or ``{"features": ...}``); empty when it names none."""
        found: set[str] = set()

        def walk(node):
            if isinstance(node, str):
                if node in GEOMETRY_TYPES:
                    found.add(node)
            elif isinstance(node, dict):
                for key, value in node.items():
                    walk(key)
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(self.entry.get("geom_type"))
        return found

    @property
    def fingerprint(self) -> str:
        """Hash of the entry: changes exactly when the entry changes."""
        blob = json.dumps(self.entry, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def check(self) -> None:
        """Raise :class:`DatasetError` when the entry cannot be processed."""
        if self.label_fmt not in LABEL_FORMATS:
            raise DatasetError(
                self.name, None,
                f"unknown label_fmt {self.label_fmt!r}; readable formats: {', '.join(LABEL_FORMATS)}",
            )
        if self.repo not in REPOSITORIES:
            raise DatasetError(self.name, None, f"unknown repo {self.repo!r}; known: {', '.join(REPOSITORIES)}")
        if self.repo == "local" and self.path is None:
            raise DatasetError(self.name, None, "a 'local' dataset needs a 'path'")
        if self.label_fmt == "csv" and not (self.lon_col and self.lat_col):
            raise DatasetError(self.name, None, "label_fmt 'csv' needs 'lon_col' and 'lat_col'")
        if self.decimal not in DECIMAL_MARKS:
            raise DatasetError(self.name, None, f"decimal {self.decimal!r} unknown; use one of {', '.join(map(repr, DECIMAL_MARKS))}")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise DatasetError(self.name, None, f"delimiter {self.delimiter!r} must be one character")
        for canonical, unit_spec in (self.entry.get("columns") or {}).items():
            if canonical not in CANONICAL_COLUMNS:
                raise DatasetError(
                    self.name, None,
                    f"'columns' maps unknown attribute {canonical!r}; known: {', '.join(CANONICAL_COLUMNS)}",
                )
            unit = _column_unit(canonical, unit_spec)
            if unit not in CANONICAL_COLUMNS[canonical]:
                raise DatasetError(
                    self.name, None,
                    f"unit {unit!r} of {canonical!r} unknown; use one of {', '.join(CANONICAL_COLUMNS[canonical])}",
                )


def _column_unit(canonical: str, spec: dict | str) -> str:
    if isinstance(spec, dict) and "unit" in spec:
        return spec["unit"]
    return DEFAULT_UNITS[canonical]


def _columns(entry: dict) -> dict[str, ColumnSource]:
    out = {}
    for canonical, spec in (entry.get("columns") or {}).items():
        if canonical not in CANONICAL_COLUMNS:
            continue  # reported by DatasetSpec.check
        unit = _column_unit(canonical, spec)
        col = spec if isinstance(spec, str) else spec.get("col")
        factor = CANONICAL_COLUMNS[canonical].get(unit)
        if col and factor is not None:
            out[canonical] = ColumnSource(col, factor)
    return out


def parse_entry(name: str, entry: dict, base_dir: Path) -> DatasetSpec:
    """Normalise one manifest entry.

    Parameters
    ----------
    name : str
        The dataset key.
    entry : dict
        The entry as written in the manifest.
    base_dir : Path
        Folder that a relative ``path`` is resolved against (the manifest's folder).
    """
    ff = entry.get("file_filters") or {}
    path = entry.get("path")
    return DatasetSpec(
        name=name,
        entry=entry,
        repo=entry.get("repo"),
        label_fmt=entry.get("label_fmt"),
        path=(base_dir / path).resolve() if path else None,
        crs=entry.get("crs"),
        compression=entry.get("compression"),
        filters=FileFilters(
            include_patterns=tuple(ff.get("include_patterns") or ()),
            exclude_patterns=tuple(ff.get("exclude_patterns") or ()),
            use_regex=bool(ff.get("use_regex", False)),
        ),
        keep_cols=tuple(entry.get("keep_cols") or ()),
        id_col=entry.get("id_col"),
        columns=_columns(entry),
        layer=entry.get("layer"),
        delimiter=entry.get("delimiter"),
        decimal=entry.get("decimal") or ".",
        lon_col=entry.get("lon_col"),
        lat_col=entry.get("lat_col"),
        priority=int(entry.get("priority", 0)),
        skip=bool(entry.get("skip", False)),
    )


def load_manifest(path: str | Path) -> dict[str, DatasetSpec]:
    """Read a manifest file into :class:`DatasetSpec` objects, sorted by dataset key.

    Raises
    ------
    ValueError
        When the file is not a JSON object of entries (nothing could be run from it).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"manifest {path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"manifest {path}: expected a JSON object of dataset entries")
    base = path.resolve().parent
    return {name: parse_entry(name, data[name], base) for name in sorted(data)}


def active_datasets(manifest: dict[str, DatasetSpec]) -> list[str]:
    """Dataset keys the pipeline runs: all entries not marked ``skip``."""
    return [name for name, spec in manifest.items() if not spec.skip]
