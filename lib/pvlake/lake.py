"""DuckDB connections with the project's extensions loaded offline.

DuckDB downloads extensions from the internet by default; here they come from the PyPI
wheels pinned in the lock file (``duckdb-extension-<name>``), loaded by file path.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import duckdb

EXTENSION_PACKAGES = {
    "spatial": "duckdb_extension_spatial",
    "ducklake": "duckdb_extension_ducklake",
    "httpfs": "duckdb_extension_httpfs",
    "sqlite_scanner": "duckdb_extension_sqlite_scanner",
    "postgres_scanner": "duckdb_extension_postgres_scanner",
}


def extension_path(name: str) -> Path:
    """File of a DuckDB extension shipped by its PyPI wheel, for this DuckDB version."""
    package = importlib.import_module(EXTENSION_PACKAGES[name])
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
