"""The lakehouse: DuckDB with its extensions loaded offline, and the DuckLake that keeps
every layer of the pipeline under version control.

DuckDB downloads extensions from the internet by default; here they come from the PyPI
wheels pinned in the lock file (``duckdb-extension-<name>``), loaded by file path.

The lake is a DuckLake: a metadata catalog (by default the DuckDB file
``<data_dir>/lake/catalog.ducklake``; PostgreSQL where several processes write) plus
Parquet data files (``<data_dir>/lake/data/``, or an S3-compatible URL). Its schemas are
the pipeline's layers:

- ``raw``: one table per dataset, every feature of its label files as read (source
  attributes, geometry in the source CRS, ``source_crs``, ``crs_from``, ``source_file``,
  ``source_row``);
- ``staging``: one table per dataset, its harmonized GeoParquet;
- ``prepared``: ``pv_installations``, the de-duplicated installations;
- any layer a later stage declares (:func:`declared_table`): the STAC stage's ``stac``
  tables, for instance. A stage's rule file lists the tables it publishes (layer, name,
  Parquet file, CRS) and the ``lake`` rule passes the list on, so this module knows no
  stage.

:func:`publish` rewrites only the tables whose input changed, all in one transaction,
so one publish is one DuckLake snapshot (time travel: ``AT (VERSION => n)``) and a
publish with nothing new commits nothing. :func:`compact` then merges small data files.
DuckLake keeps no CRS on GEOMETRY columns: staging and prepared geometries are EPSG:4326,
raw ones are in the CRS named on each row; column comments in the catalog say so.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from tqdm import tqdm

from .harmonize import dataset_root
from .io import sha256_file, write_json
from .layout import Layout
from .manifest import DatasetSpec
from .sources import SourceFrame, find_label_files, read_labels

EXTENSION_PACKAGES = {
    "spatial": "duckdb_extension_spatial",
    "ducklake": "duckdb_extension_ducklake",
    "httpfs": "duckdb_extension_httpfs",
    "sqlite_scanner": "duckdb_extension_sqlite_scanner",
    "postgres_scanner": "duckdb_extension_postgres_scanner",
    # rustac's embedded DuckDB loads these two besides spatial (pvlake.stac.rustac_client)
    "icu": "duckdb_extension_icu",
    "parquet": "duckdb_extension_parquet",
    # Not in the lock file: only a MotherDuck-hosted catalog needs it (see README).
    "motherduck": "duckdb_extension_motherduck",
}

LAKE = "lake"
"""Name the lake is attached under: tables are ``lake.<layer>.<table>``."""

LAYERS = ("raw", "staging", "prepared")
"""The layers this module builds itself, in pipeline order; stages declare further
ones (:func:`declared_table`). Every schema of the lake but DuckDB's ``main`` is a layer."""

SYSTEM_SCHEMAS = ("main",)

PUBLISH_AUTHOR = "pvlake"
PUBLISH_MESSAGE = "publish"
COMPACT_MESSAGE = "compact"
"""Author and messages of the snapshots :func:`publish` and :func:`compact` commit; a
publish snapshot's extra info (JSON) records each written table's input fingerprint and
row count."""

CATALOG_EXTENSIONS = {"postgres:": "postgres_scanner", "sqlite:": "sqlite_scanner", "md:": "motherduck"}
"""Metadata catalog prefixes (after ``ducklake:``) and the extension each needs; any
other catalog is a DuckDB file."""

S3_SECRET_ENV = {
    "KEY_ID": "AWS_ACCESS_KEY_ID",
    "SECRET": "AWS_SECRET_ACCESS_KEY",
    "SESSION_TOKEN": "AWS_SESSION_TOKEN",
    "REGION": "AWS_REGION",
}
"""S3 secret fields read from environment variables (never from configuration)."""

S3_RETRIES = {"http_retries": 8, "http_retry_wait_ms": 250, "http_retry_backoff": 2}
"""DuckDB ``httpfs`` retry settings for an S3 data path: a request that fails is tried
again after 0.25, 0.5, 1, ... 32 s (~1 minute in all), so an object store that restarts
during a publish is waited for (DuckDB's default gives up after ~2 s). ``lake.s3.http_retries``
sets the number of retries."""

WGS84_COMMENT = "EPSG:4326 (WGS84 lon/lat); DuckLake keeps no CRS on GEOMETRY columns"
RAW_GEOMETRY_COMMENT = (
    "geometry as read, in the CRS named by source_crs on the same row; "
    "DuckLake keeps no CRS on GEOMETRY columns"
)

RAW_PROVENANCE = ("geometry", "source_crs", "crs_from", "source_file", "source_row")
"""Columns every raw table ends with; a source attribute of the same name gets ``_attr``."""


def extension_path(name: str) -> Path:
    """File of a DuckDB extension shipped by its PyPI wheel, for this DuckDB version."""
    try:
        package = importlib.import_module(EXTENSION_PACKAGES[name])
    except ModuleNotFoundError as exc:
        wheel = EXTENSION_PACKAGES[name].replace("_", "-")
        raise ModuleNotFoundError(
            f"DuckDB extension {name!r} needs the PyPI package {wheel}=={duckdb.__version__}"
        ) from exc
    path = Path(package.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise FileNotFoundError(f"DuckDB extension {name!r} for DuckDB {duckdb.__version__} not found at {path}")
    return path


def connect(database: str = ":memory:", extensions: tuple[str, ...] = ("spatial",)) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that never fetches anything, with ``extensions`` loaded."""
    con = duckdb.connect(
        database, config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    for name in extensions:
        con.execute(f"LOAD '{extension_path(name)}'")
    return con


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + str(name).replace('"', '""') + '"'


@dataclass(frozen=True)
class LakeLocation:
    """Where a DuckLake lives.

    Attributes
    ----------
    catalog : str
        Metadata catalog, as written after ``ducklake:`` in ``ATTACH``: a DuckDB file
        path, ``postgres:<libpq connection string>``, ``sqlite:<path>`` or
        ``md:__ducklake_metadata_<database>`` (MotherDuck). Never holds a password:
        libpq reads ``PGPASSWORD`` (or ``~/.pgpass``) itself.
    data_path : str
        Folder (absolute) or URL (``s3://bucket/prefix/``) of the Parquet data files.
    """

    catalog: str
    data_path: str

    @classmethod
    def resolve(cls, layout: Layout, catalog: str | None = None, data_path: str | None = None) -> LakeLocation:
        """The configured location, defaulting to the layout's ``lake/`` folder.

        Local paths are made absolute: DuckDB resolves relative ones against the
        working directory of whoever opens the lake.
        """
        catalog = catalog or str(layout.lake_catalog())
        data_path = data_path or str(layout.lake_data())
        if not any(catalog.startswith(p) for p in CATALOG_EXTENSIONS):
            catalog = str(Path(catalog).resolve())
        if "://" not in data_path:
            data_path = str(Path(data_path).resolve()) + "/"
        return cls(catalog, data_path)

    @property
    def local_catalog(self) -> Path | None:
        """The catalog file when the catalog is a DuckDB file, else None."""
        return None if any(self.catalog.startswith(p) for p in CATALOG_EXTENSIONS) else Path(self.catalog)

    @property
    def local_data(self) -> Path | None:
        """The data folder when it is on local disk, else None."""
        return None if "://" in self.data_path else Path(self.data_path)

    def extensions(self) -> tuple[str, ...]:
        """DuckDB extensions needed to open this lake (spatial for GEOMETRY columns)."""
        names = ["spatial", "ducklake"]
        names += [ext for prefix, ext in CATALOG_EXTENSIONS.items() if self.catalog.startswith(prefix)]
        if self.local_data is None:
            names.append("httpfs")
        return tuple(names)

    def attach_sql(self, alias: str = LAKE, read_only: bool = False) -> str:
        """The ``ATTACH`` statement that opens this lake as ``alias``.

        A local data folder is passed with ``OVERRIDE_DATA_PATH``: DuckLake records the
        folder it was created with, and this lets the whole ``lake/`` folder move (or be
        opened from another working directory) without rewriting the catalog.
        """
        options = [f"DATA_PATH {sql_literal(self.data_path)}"]
        if self.local_data is not None:
            options.append("OVERRIDE_DATA_PATH true")
        if read_only:
            options.append("READ_ONLY")
        return f"ATTACH {sql_literal('ducklake:' + self.catalog)} AS {alias} ({', '.join(options)})"


def s3_secret_sql(s3: Mapping | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """A ``CREATE TEMPORARY SECRET`` for an S3-compatible data path.

    Credentials come from environment variables only (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``); ``s3`` (the
    ``lake.s3`` configuration) adds what is not secret: ``endpoint`` (``host:port`` of an
    S3-compatible store), ``region``, ``url_style`` (``path`` for MinIO and most
    self-hosted stores) and ``use_ssl`` (its ``http_retries`` goes to :data:`S3_RETRIES`).
    The secret lives in memory for the connection only.
    """
    s3 = dict(s3 or {})
    options = {"TYPE": "s3"}
    options.update({key: environ[var] for key, var in S3_SECRET_ENV.items() if environ.get(var)})
    for key in ("endpoint", "region", "url_style"):
        if s3.get(key):
            options[key.upper()] = s3[key]
    body = ", ".join(f"{k} {sql_literal(v)}" if k != "TYPE" else f"TYPE {v}" for k, v in options.items())
    if s3.get("use_ssl") is not None:
        body += f", USE_SSL {'true' if s3['use_ssl'] else 'false'}"
    return f"CREATE OR REPLACE TEMPORARY SECRET pvlake_s3 ({body})"


def open_lake(
    layout: Layout,
    read_only: bool = True,
    catalog: str | None = None,
    data_path: str | None = None,
    s3: Mapping | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake attached as ``lake``.

    Parameters
    ----------
    layout : Layout
        Locations under ``data_dir``; the default lake is ``<data_dir>/lake/``.
    read_only : bool
        Attach read-only (any number of readers), or as the writer. A DuckDB-file
        catalog takes one writer process at a time and no reader while it writes.
    catalog, data_path : str, optional
        Configuration ``lake.catalog`` / ``lake.data_path`` (see :class:`LakeLocation`).
    s3 : mapping, optional
        Configuration ``lake.s3`` for an S3-compatible data path (see :func:`s3_secret_sql`).

    Raises
    ------
    FileNotFoundError
        When reading a DuckDB-file lake that has not been published yet.
    LakeBusyError
        When another process holds a DuckDB-file catalog this connection cannot share.
    """
    location = LakeLocation.resolve(layout, catalog, data_path)
    local = location.local_catalog
    if local is not None and read_only and not local.exists():
        raise FileNotFoundError(f"no lake at {local}: run the pipeline (snakemake -j8) to publish one")
    con = connect(extensions=location.extensions())
    if location.local_data is None:
        con.execute(s3_secret_sql(s3))
        retries = {**S3_RETRIES, **{k: v for k, v in (s3 or {}).items() if k in S3_RETRIES and v is not None}}
        for name, value in retries.items():
            con.execute(f"SET {name} = {int(value)}")
    if not read_only:
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
        if location.local_data is not None:
            location.local_data.mkdir(parents=True, exist_ok=True)
    try:
        _attach(con, location.attach_sql(read_only=read_only))
    except duckdb.IOException as exc:
        con.close()
        raise busy_error(location.catalog, exc) or exc
    return con


class LakeBusyError(RuntimeError):
    """A DuckDB-file catalog is held by another process (one writer, or readers, at a time)."""


LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


def _command_line(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip() or None
    except OSError:
        return None


def busy_error(catalog: str, exc: Exception) -> LakeBusyError | None:
    """DuckDB's "Could not set lock" as one message: who holds the lake, what to do."""
    if "Could not set lock" not in str(exc):
        return None
    holder = LOCK_HOLDER.search(str(exc))
    who = "another process"
    if holder:
        pid = int(holder["pid"])
        who = f"process {pid} ({_command_line(pid) or holder['program']})"
    return LakeBusyError(
        f"the lake catalog {catalog} is open in {who}: a DuckDB-file catalog lets one process "
        "write, and none read while it does. Close that connection (con.close(), or shut down "
        "the notebook's kernel) or let that run finish, then rerun. Several readers and writers "
        "at once need a PostgreSQL catalog (config lake.catalog)."
    )


class LakeStorageError(RuntimeError):
    """The object store of an S3 data path failed during a publish (nothing was committed)."""


def storage_error(location: LakeLocation, s3: Mapping | None, exc: Exception) -> LakeStorageError | None:
    """An I/O failure on a remote data path as one message: which store, that the catalog
    is unchanged, what to do. None for any other failure."""
    if location.local_data is not None or not isinstance(exc, duckdb.IOException):
        return None
    text = str(exc)
    if not any(mark in text for mark in ("HTTP", "s3://", "S3")):
        return None
    store = (s3 or {}).get("endpoint") or "AWS S3"
    return LakeStorageError(
        f"the lake's object store ({store}, data path {location.data_path}) failed during the publish "
        f"and did not recover within the retries: {text.splitlines()[0]}. No snapshot was committed, so the "
        "catalog still describes the previous publish; rerun (snakemake reruns the lake rule) once the store "
        "answers. Files written before the failure are unreferenced and can be removed with "
        "ducklake_delete_orphaned_files."
    )


def _attach(con: duckdb.DuckDBPyConnection, sql: str, attempts: int = 5) -> None:
    """Run ``sql`` (an ATTACH); retry when another writer was creating the same new
    catalog at that moment: its metadata tables are there on the next try."""
    for attempt in range(attempts):
        try:
            con.execute(sql)
            return
        except duckdb.Error as exc:
            if "Failed to initialize DuckLake" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt)


def connect_lake(data_dir: str | Path = "data", **location) -> duckdb.DuckDBPyConnection:
    """The pipeline's lake, read-only, in one line: ``con = connect_lake("data")``.

    Tables are ``lake.raw.<dataset>``, ``lake.staging.<dataset>`` and
    ``lake.prepared.pv_installations``; ``location`` takes ``catalog``, ``data_path``
    and ``s3`` as :func:`open_lake` does.
    """
    return open_lake(Layout(data_dir), read_only=True, **location)


@dataclass(frozen=True)
class LakeTable:
    """One table of the lake and how to build it from its input.

    Attributes
    ----------
    layer : str
        Schema: ``raw``, ``staging`` or ``prepared``.
    name : str
        Table name.
    fingerprint : str
        SHA-256 of everything the table is built from; the table is rewritten only when
        it differs from the one recorded at its last publish.
    comment : str
        What the table holds (kept in the catalog as the table comment).
    geometry_comment : str or None
        The CRS of its ``geometry`` column (DuckLake keeps none); None for a table
        without geometry.
    build : callable
        ``build(con, target)`` creates or replaces the table named ``target``.
    """

    layer: str
    name: str
    fingerprint: str
    comment: str
    geometry_comment: str | None
    build: Callable[[duckdb.DuckDBPyConnection, str], None]

    @property
    def qualified(self) -> str:
        """``<layer>.<name>``."""
        return f"{self.layer}.{self.name}"


def _load_parquet(path: Path, con: duckdb.DuckDBPyConnection, target: str, exclude: tuple[str, ...] = ("bbox",)) -> None:
    # GeoParquet 1.1's bbox covering column only repeats the geometry's extent for readers
    # of the file; in the lake it would be one more column to keep in sync.
    names = pq.read_schema(path).names
    dropped = ", ".join(sql_identifier(c) for c in exclude if c in names)
    select = f"* EXCLUDE ({dropped})" if dropped else "*"
    con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT {select} FROM read_parquet({sql_literal(path)})")


def parquet_table(layer: str, name: str, path: str | Path, comment: str) -> LakeTable:
    """A lake table copied from an EPSG:4326 GeoParquet file (staging, prepared)."""
    path = Path(path)
    return LakeTable(layer, name, sha256_file(path), comment, WGS84_COMMENT, partial(_load_parquet, path))


def declared_table(entry: Mapping) -> LakeTable:
    """A lake table as a stage's rule file declares it.

    Parameters
    ----------
    entry : mapping
        ``layer`` (schema), ``name``, ``path`` (the Parquet or GeoParquet file the
        table copies), ``crs`` of its ``geometry`` column (e.g. ``EPSG:4326``; null for a
        table without geometry), ``comment``, and optionally ``exclude`` (columns left
        out; none by default: a stac-geoparquet ``bbox`` is an item field, not only a
        covering).

    Raises
    ------
    FileNotFoundError
        When the file is missing.
    """
    path = Path(entry["path"])
    if not path.exists():
        raise FileNotFoundError(f"lake table {entry['layer']}.{entry['name']}: {path} does not exist")
    crs = entry.get("crs")
    geometry_comment = f"{crs}; DuckLake keeps no CRS on GEOMETRY columns" if crs else None
    exclude = tuple(entry.get("exclude") or ())
    return LakeTable(entry["layer"], entry["name"], sha256_file(path), entry["comment"], geometry_comment,
                     partial(_load_parquet, path, exclude=exclude))


def staging_table(layout: Layout, dataset: str) -> LakeTable:
    """``staging.<dataset>`` from the harmonized GeoParquet."""
    return parquet_table(
        "staging", dataset, layout.staging_parquet(dataset),
        f"Dataset {dataset} harmonized into the canonical schema (pvlake.harmonize), "
        f"from staging/{dataset}.parquet",
    )


def prepared_table(layout: Layout) -> LakeTable:
    """``prepared.pv_installations`` from the de-duplicated GeoParquet."""
    path = layout.prepared_parquet()
    return parquet_table(
        "prepared", path.stem, path,
        "De-duplicated PV installations of every dataset (pvlake.dedup): canonical schema "
        "plus n_sources, source_datasets, merged_ids",
    )


def _arrow_column(values: pd.Series) -> pa.Array:
    try:
        return pa.Array.from_pandas(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # An object column mixing Python types (possible in CSV and GeoJSON properties)
        # has no single Arrow type: keep its values as text.
        return pa.array([None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else str(v)
                         for v in values], pa.string())


def raw_arrow(sf: SourceFrame) -> pa.Table:
    """One file's features as read: source attributes, geometry in the source CRS as WKB,
    the CRS (``source_crs``, and ``crs_from``: file, manifest or GeoJSON default) and
    provenance (``source_file``, 0-based ``source_row``)."""
    frame = sf.frame
    attrs = frame.drop(columns=frame.geometry.name)
    attrs = attrs.rename(columns={c: f"{c}_attr" for c in RAW_PROVENANCE if c in attrs.columns})
    n = len(frame)
    columns = {str(c): _arrow_column(attrs[c]) for c in attrs.columns}
    columns["geometry"] = pa.array(shapely.to_wkb(frame.geometry.to_numpy()), pa.binary())
    columns["source_crs"] = pa.array([frame.crs.to_string()] * n, pa.string())
    columns["crs_from"] = pa.array([sf.crs_from] * n, pa.string())
    columns["source_file"] = pa.array([sf.source_file] * n, pa.string())
    columns["source_row"] = pa.array(np.arange(n, dtype=np.int64))
    return pa.table(columns)


def unify_schema(tables: Iterable[pa.Table]) -> pa.Schema:
    """One schema for the files of a dataset, whose columns may differ (ChinaPV's do).

    Columns come in order of first appearance, provenance last; a column keeps the type
    the files agree on (all-null columns take any type, integers widen to floats) and
    becomes text where they disagree otherwise (an integer in one file, text in another).
    """
    types: dict[str, list[pa.DataType]] = {}
    for table in tables:
        for field in table.schema:
            types.setdefault(field.name, []).append(field.type)
    names = [n for n in types if n not in RAW_PROVENANCE] + [n for n in RAW_PROVENANCE if n in types]
    fields = []
    for name in names:
        try:
            merged = pa.unify_schemas([pa.schema([(name, t)]) for t in types[name]], promote_options="permissive")
            fields.append(merged.field(name))
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            fields.append(pa.field(name, pa.string()))
    return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns: missing ones null, others cast."""
    columns = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.table(columns, schema=schema)


def _load_raw(spec: DatasetSpec, files: list, progress: bool, con: duckdb.DuckDBPyConnection, target: str) -> None:
    tables = [
        raw_arrow(read_labels(spec, lf))
        for lf in tqdm(files, desc=f"raw {spec.name}", unit="file", disable=not progress)
    ]
    schema = unify_schema(tables)
    select = "SELECT * REPLACE (ST_GeomFromWKB(geometry) AS geometry) FROM raw_file"
    # One insert per source file: the lake's data files follow the source's, and
    # compaction merges the small ones afterwards.
    for i, table in enumerate(tables):
        con.register("raw_file", conform(table, schema))
        try:
            con.execute(f"CREATE OR REPLACE TABLE {target} AS {select}" if i == 0 else f"INSERT INTO {target} {select}")
        finally:
            con.unregister("raw_file")


def raw_table(spec: DatasetSpec, layout: Layout, progress: bool = True) -> LakeTable:
    """``raw.<dataset>``: the dataset's label files as read.

    Its fingerprint covers the manifest entry (file filters, CRS, layer decide what is
    read) and the bytes of every selected file.

    Raises
    ------
    DatasetError
        When the dataset's files cannot be listed.
    """
    files = find_label_files(spec, dataset_root(spec, layout))
    hashes = {path: sha256_file(path) for path in sorted({lf.path for lf in files})}
    digest = hashlib.sha256(spec.fingerprint.encode())
    for lf in files:
        digest.update(f"\n{lf.source_file}\t{hashes[lf.path]}".encode())
    comment = (
        f"Dataset {spec.name} as read from its {spec.label_fmt} label files: source attributes, "
        "geometry in the source CRS (source_crs), provenance source_file/source_row"
    )
    return LakeTable("raw", spec.name, digest.hexdigest(), comment, RAW_GEOMETRY_COMMENT,
                     partial(_load_raw, spec, files, progress))


def pipeline_tables(
    layout: Layout, specs: Iterable[DatasetSpec], progress: bool = True, declared: Iterable[Mapping] = ()
) -> list[LakeTable]:
    """Every table of the pipeline's lake: raw and staging per dataset, prepared, then the
    tables later stages declare (:func:`declared_table`)."""
    tables = []
    for spec in specs:
        tables.append(raw_table(spec, layout, progress))
        tables.append(staging_table(layout, spec.name))
    tables.append(prepared_table(layout))
    tables += [declared_table(entry) for entry in declared]
    return tables


def published_fingerprints(con: duckdb.DuckDBPyConnection, alias: str = LAKE) -> dict[str, str]:
    """Input fingerprint of each table as of its last publish (from snapshot extra info)."""
    rows = con.execute(
        f"SELECT commit_extra_info FROM {alias}.snapshots() WHERE author = ? AND commit_message = ? "
        "ORDER BY snapshot_id", [PUBLISH_AUTHOR, PUBLISH_MESSAGE],
    ).fetchall()
    out: dict[str, str] = {}
    for (info,) in rows:
        out.update({name: t["sha256"] for name, t in json.loads(info)["tables"].items()})
    return out


def lake_tables(con: duckdb.DuckDBPyConnection, alias: str = LAKE) -> list[str]:
    """``<layer>.<table>`` of every table now in the lake's layer schemas, sorted."""
    rows = con.execute(
        "SELECT schema_name || '.' || table_name FROM duckdb_tables() "
        "WHERE database_name = ? AND NOT list_contains(?, schema_name) ORDER BY 1",
        [alias, list(SYSTEM_SCHEMAS)],
    ).fetchall()
    return [r[0] for r in rows]


def _write(con: duckdb.DuckDBPyConnection, table: LakeTable, alias: str) -> int:
    target = f"{alias}.{sql_identifier(table.layer)}.{sql_identifier(table.name)}"
    table.build(con, target)
    con.execute(f"COMMENT ON TABLE {target} IS {sql_literal(table.comment)}")
    if table.geometry_comment is not None:
        con.execute(f"COMMENT ON COLUMN {target}.geometry IS {sql_literal(table.geometry_comment)}")
    return con.execute(f"SELECT count(*) FROM {target}").fetchone()[0]


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    # A failed COMMIT has already ended the transaction; any other failure has not.
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException:
        pass


def pending_changes(
    con: duckdb.DuckDBPyConnection, tables: list[LakeTable], prune: bool, alias: str = LAKE
) -> tuple[list[LakeTable], list[str]]:
    """Tables whose input differs from their last publish (or that are missing), and the
    layer tables a pruning publish would drop; read-only."""
    published = published_fingerprints(con, alias)
    present = set(lake_tables(con, alias))
    changed = [t for t in tables if t.qualified not in present or published.get(t.qualified) != t.fingerprint]
    stale = sorted(present - {t.qualified for t in tables}) if prune else []
    return changed, stale


def _publish_once(
    con: duckdb.DuckDBPyConnection, tables: list[LakeTable], prune: bool, progress: bool, alias: str
) -> dict:
    changed, stale = pending_changes(con, tables, prune, alias)
    result = {"snapshot_id": None, "written": [t.qualified for t in changed], "dropped": stale}
    if not changed and not stale:
        return result
    con.execute("BEGIN")
    try:
        for layer in sorted({t.layer for t in changed}):
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {alias}.{sql_identifier(layer)}")
        info = {}
        for table in tqdm(changed, desc="publish", unit="table", disable=not progress):
            info[table.qualified] = {"sha256": table.fingerprint, "rows": _write(con, table, alias)}
        for name in stale:
            layer, table_name = name.split(".", 1)
            con.execute(f"DROP TABLE {alias}.{sql_identifier(layer)}.{sql_identifier(table_name)}")
        extra = json.dumps({"tables": info, "dropped": stale}, sort_keys=True)
        con.execute(f"CALL {alias}.set_commit_message(?, ?, extra_info => ?)", [PUBLISH_AUTHOR, PUBLISH_MESSAGE, extra])
        con.execute("COMMIT")
    except BaseException:
        _rollback(con)
        raise
    result["snapshot_id"] = con.execute(f"SELECT id FROM ducklake_last_committed_snapshot('{alias}')").fetchone()[0]
    return result


def _retry_conflicts(action: Callable[[], dict], attempts: int) -> dict:
    """Run ``action`` again when its commit lost a race with another writer's."""
    attempt = 1
    while True:
        try:
            return action()
        except duckdb.TransactionException as exc:
            if "conflict" not in str(exc).lower() or attempt >= attempts:
                raise
            attempt += 1


def publish(
    con: duckdb.DuckDBPyConnection,
    tables: list[LakeTable],
    prune: bool = False,
    progress: bool = True,
    alias: str = LAKE,
    attempts: int = 5,
) -> dict:
    """Write the tables whose input changed, in one transaction: one DuckLake snapshot.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        A connection from :func:`open_lake` with ``read_only=False``.
    tables : list of LakeTable
        What the lake should hold; a table whose fingerprint matches its last publish is
        left as it is.
    prune : bool
        Also drop layer tables not in ``tables`` (the pipeline's publish, which lists
        every table; not for a writer publishing a part of the lake).
    progress : bool
        Show a tqdm bar over the tables written.
    attempts : int
        Tries when another writer's commit conflicts (two writers creating the same
        schema or replacing the same table): each retry re-reads what is published.

    Returns
    -------
    dict
        ``snapshot_id`` committed (None when nothing changed), ``written`` and
        ``dropped`` tables.
    """
    return _retry_conflicts(partial(_publish_once, con, tables, prune, progress, alias), attempts)


def file_counts(con: duckdb.DuckDBPyConnection, alias: str = LAKE) -> dict[str, int]:
    """Data files of the lake: ``current`` (read by the latest snapshot) and ``stored``
    (kept for any snapshot, time travel included)."""
    current, stored = con.execute(
        f"SELECT count(*) FILTER (WHERE end_snapshot IS NULL), count(*) "
        f"FROM __ducklake_metadata_{alias}.ducklake_data_file"
    ).fetchone()
    return {"current": current, "stored": stored}


SHARED_CLEANUP_DELAY = "1 hour"
"""How long the files a compaction replaced stay in a lake that other processes may be
reading or writing (any catalog but a DuckDB file): a transaction that began before the
compaction still reads them. A DuckDB-file catalog has one process at a time, so its
replaced files go at once."""


def _compact_once(con: duckdb.DuckDBPyConnection, alias: str, tables: list[str] | None, shared: bool) -> dict:
    before = file_counts(con, alias)
    con.execute("BEGIN")
    try:
        if tables is None:
            merged = con.execute(f"SELECT * FROM ducklake_merge_adjacent_files('{alias}')").fetchall()
        else:
            merged = []
            for name in tables:
                layer, table = name.split(".", 1)
                merged += con.execute(f"SELECT * FROM ducklake_merge_adjacent_files('{alias}', ?, schema => ?)",
                                      [table, layer]).fetchall()
        if merged:
            con.execute(f"CALL {alias}.set_commit_message(?, ?)", [PUBLISH_AUTHOR, COMPACT_MESSAGE])
        con.execute("COMMIT")
    except BaseException:
        _rollback(con)
        raise
    if shared:
        con.execute(f"CALL ducklake_cleanup_old_files('{alias}', older_than => now() - INTERVAL '{SHARED_CLEANUP_DELAY}')")
    else:
        con.execute(f"CALL ducklake_cleanup_old_files('{alias}', cleanup_all => true)")
    return {
        "files_before": before,
        "files_after": file_counts(con, alias),
        "merged": [
            {"table": f"{schema}.{table}", "files_processed": processed, "files_created": created}
            for schema, table, processed, created in merged
        ],
    }


def compact(
    con: duckdb.DuckDBPyConnection, alias: str = LAKE, attempts: int = 5, tables: list[str] | None = None,
    shared: bool = False,
) -> dict:
    """Merge adjacent small data files, then delete the files the merge replaced.

    ``tables`` (``<layer>.<table>``) limits the merge to those tables: a writer publishing
    its own tables beside others then never rewrites, nor deletes, files another writer is
    reading. ``shared`` (a catalog other processes use) keeps the replaced files for
    :data:`SHARED_CLEANUP_DELAY`.

    Snapshots are never expired, so every earlier publish stays readable with
    ``AT (VERSION => n)``: a merged file keeps each row's snapshot range, and the files
    it replaces are no longer read by any snapshot (DuckLake schedules only those for
    deletion). A merge commits a snapshot of its own (message ``compact``); with nothing
    to merge, none.

    Returns
    -------
    dict
        ``files_before`` and ``files_after`` (:func:`file_counts`), ``merged`` (per
        table: files processed and created).
    """
    return _retry_conflicts(partial(_compact_once, con, alias, tables, shared), attempts)


def table_rows(con: duckdb.DuckDBPyConnection, alias: str = LAKE, version: int | None = None) -> dict[str, int]:
    """Row count of every layer table, now or at snapshot ``version`` (time travel)."""
    names = lake_tables(con, alias) if version is None else tables_at(con, version, alias)
    at = "" if version is None else f" AT (VERSION => {int(version)})"
    out = {}
    for name in names:
        layer, table = name.split(".", 1)
        out[name] = con.execute(
            f"SELECT count(*) FROM {alias}.{sql_identifier(layer)}.{sql_identifier(table)}{at}"
        ).fetchone()[0]
    return out


def tables_at(con: duckdb.DuckDBPyConnection, version: int, alias: str = LAKE) -> list[str]:
    """``<layer>.<table>`` of the layer tables that existed at snapshot ``version``
    (from the DuckLake metadata tables, whose rows carry their snapshot range)."""
    meta = f"__ducklake_metadata_{alias}"
    rows = con.execute(
        f"SELECT s.schema_name || '.' || t.table_name FROM {meta}.ducklake_table t "
        f"JOIN {meta}.ducklake_schema s USING (schema_id) "
        "WHERE t.begin_snapshot <= $v AND (t.end_snapshot IS NULL OR t.end_snapshot > $v) "
        "AND s.begin_snapshot <= $v AND (s.end_snapshot IS NULL OR s.end_snapshot > $v) "
        "AND NOT list_contains($system, s.schema_name) ORDER BY 1",
        {"v": int(version), "system": list(SYSTEM_SCHEMAS)},
    ).fetchall()
    return [r[0] for r in rows]


def snapshots(con: duckdb.DuckDBPyConnection, alias: str = LAKE) -> pd.DataFrame:
    """The lake's snapshots: id, time, changes and commit message."""
    return con.execute(
        f"SELECT snapshot_id, snapshot_time, changes, author, commit_message FROM {alias}.snapshots() "
        "ORDER BY snapshot_id"
    ).df()


def publish_snapshots(con: duckdb.DuckDBPyConnection, alias: str = LAKE) -> list[int]:
    """Ids of the snapshots committed by :func:`publish`, oldest first."""
    rows = con.execute(
        f"SELECT snapshot_id FROM {alias}.snapshots() WHERE author = ? AND commit_message = ? ORDER BY snapshot_id",
        [PUBLISH_AUTHOR, PUBLISH_MESSAGE],
    ).fetchall()
    return [r[0] for r in rows]


def compare_versions(con: duckdb.DuckDBPyConnection, version: int, alias: str = LAKE) -> pd.DataFrame:
    """Rows per layer table at snapshot ``version`` and now (0 where a table was absent)."""
    old, new = table_rows(con, alias, version), table_rows(con, alias)
    names = sorted(set(old) | set(new))
    frame = pd.DataFrame({
        "table": names,
        f"rows_v{int(version)}": [old.get(n, 0) for n in names],
        "rows_now": [new.get(n, 0) for n in names],
    })
    frame["change"] = frame["rows_now"] - frame[f"rows_v{int(version)}"]
    return frame


def row_changes(con: duckdb.DuckDBPyConnection, table: str, version: int, alias: str = LAKE) -> dict[str, int]:
    """Rows of ``table`` (``<layer>.<name>``) added and removed since snapshot ``version``.

    Compares whole rows (geometry, where the table has one, as WKB) between ``AT (VERSION => version)`` and now, so
    it holds across a table being replaced, which DuckLake's change feed does not follow.
    """
    layer, name = table.split(".", 1)
    target = f"{alias}.{sql_identifier(layer)}.{sql_identifier(name)}"
    has_geometry = con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE database_name = ? AND schema_name = ? AND table_name = ? "
        "AND column_name = 'geometry'", [alias, layer, name],
    ).fetchone()[0]
    rows = ("SELECT * REPLACE (ST_AsWKB(geometry) AS geometry) FROM " if has_geometry else "SELECT * FROM ") + target
    then = f"{rows} AT (VERSION => {int(version)})"
    added = con.execute(f"SELECT count(*) FROM ({rows} EXCEPT ALL {then})").fetchone()[0]
    removed = con.execute(f"SELECT count(*) FROM ({then} EXCEPT ALL {rows})").fetchone()[0]
    return {"added": added, "removed": removed}


def summary(con: duckdb.DuckDBPyConnection, location: LakeLocation, alias: str = LAKE) -> dict:
    """What the lake holds now: snapshot id, catalog and data path, rows per table."""
    snapshot = con.execute(f"SELECT id FROM ducklake_current_snapshot('{alias}')").fetchone()[0]
    return {
        "snapshot_id": snapshot,
        "catalog": location.catalog,
        "data_path": location.data_path,
        "tables": table_rows(con, alias),
    }


def publish_pipeline(
    layout: Layout,
    tables: list[LakeTable],
    catalog: str | None = None,
    data_path: str | None = None,
    s3: Mapping | None = None,
    prune: bool = True,
    progress: bool = True,
) -> dict:
    """The lake stage: publish ``tables``, compact, write ``publish.json`` atomically.

    In the workflow only the ``lake`` rule calls this, with every table
    (:func:`pipeline_tables`), so parallel jobs never contend for a DuckDB-file catalog.
    With a PostgreSQL catalog several processes may call it at once, each with its own
    tables and ``prune=False``.

    Returns
    -------
    dict
        The content of ``publish.json``: :func:`summary` plus ``published`` (the
        :func:`publish` result) and ``compaction`` (the :func:`compact` result).

    Raises
    ------
    LakeStorageError
        When an S3 data path's object store fails beyond the retries (:data:`S3_RETRIES`).
    """
    location = LakeLocation.resolve(layout, catalog, data_path)
    result = _unchanged_result(layout, tables, location, prune, catalog=catalog, data_path=data_path, s3=s3)
    if result is None:
        con = open_lake(layout, read_only=False, catalog=catalog, data_path=data_path, s3=s3)
        try:
            published = publish(con, tables, prune=prune, progress=progress)
            # only what this publish wrote: unchanged tables were compacted when written
            compaction = compact(con, tables=published["written"], shared=location.local_catalog is None)
            result = {**summary(con, location), "published": published, "compaction": compaction}
        except duckdb.Error as exc:
            raise storage_error(location, s3, exc) or exc
        finally:
            con.close()
    write_json(result, layout.lake_summary())
    return result


def _unchanged_result(layout: Layout, tables: list[LakeTable], location: LakeLocation, prune: bool, **where) -> dict | None:
    """The publish result when a DuckDB-file lake already holds exactly ``tables``, found
    through a read-only connection: a reader (a notebook's ``connect_lake()``) shares
    that, so a rerun with nothing new succeeds while the lake is being read. None when
    something would change (or the catalog is not a local file)."""
    if location.local_catalog is None or not location.local_catalog.exists():
        return None
    con = open_lake(layout, read_only=True, **where)
    try:
        changed, stale = pending_changes(con, tables, prune)
        if changed or stale:
            return None
        files = file_counts(con)
        return {**summary(con, location), "published": {"snapshot_id": None, "written": [], "dropped": []},
                "compaction": {"files_before": files, "files_after": files, "merged": []}}
    finally:
        con.close()
