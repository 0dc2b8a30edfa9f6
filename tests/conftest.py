"""Shared fixtures: repository locations, the real reference files, small manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """The real PV files copied next to the project (absent on some machines)."""
    if not REAL.is_dir():
        pytest.skip(f"real reference files not present at {REAL}")
    return REAL


@pytest.fixture
def write_manifest(tmp_path):
    """Write a manifest JSON into tmp_path and return its path."""

    def _write(entries: dict, name: str = "manifest.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(entries, indent=2))
        return path

    return _write
