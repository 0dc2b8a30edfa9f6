"""Atomic writes: a file appears under its final name only once it is complete."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it into place on success.

    The temporary file lives in the same folder (same filesystem, so the rename is
    atomic) and is removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_geoparquet(gdf: gpd.GeoDataFrame, path: str | Path) -> None:
    """Write GeoParquet 1.1 (CRS as PROJJSON, bbox covering column) atomically."""
    with atomic_path(path) as tmp:
        gdf.to_parquet(
            tmp, index=False, compression="zstd", schema_version="1.1.0", write_covering_bbox=True
        )


def write_json(obj, path: str | Path) -> None:
    """Write JSON (indented, keys in insertion order, trailing newline) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
