"""Shared fixtures: repository locations, the real reference files, small manifests."""

from __future__ import annotations

import json
import subprocess
import sys
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


def snakemake(*args: str) -> subprocess.CompletedProcess:
    """Run the project's Snakemake workflow from the repository root."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> Path:
    """The default workflow run on the embedded sample, once per test session, in a
    temporary data_dir (returned)."""
    data_dir = tmp_path_factory.mktemp("sample_run")
    run = snakemake("-j8", "--config", f"data_dir={data_dir}")
    assert run.returncode == 0, run.stderr[-4000:]
    return data_dir
