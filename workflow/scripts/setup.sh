#!/usr/bin/env bash
# Set up the project environment in .venv from the committed lock file, install the
# project (editable) and its Jupyter kernel into that environment only.
#   bash workflow/scripts/setup.sh          # what `snakemake -j8` needs
#   bash workflow/scripts/setup.sh --test   # plus what the test suite needs
# Re-running is cheap: it reinstalls only what differs from the lock.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# uv installs the ~260 pinned wheels in seconds; it is itself pinned here.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.8"
.venv/bin/uv pip install --quiet --python .venv/bin/python --require-hashes -r requirements.lock
.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .

# The kernel papermill runs: this environment's Python, never a user-level kernel.
.venv/bin/python -m ipykernel install --sys-prefix --name pvlake --display-name "Python (pvlake)" >/dev/null

# --- book and maps: browser scripts from the npm registry (pinned in book/package-lock.json),
# served by the book's own _static and by the Jupyter server instead of CDNs (offline) ---
if ! command -v npm >/dev/null; then
  command -v apt-get >/dev/null || { echo "setup: npm (Node.js >= 18) is required for the book's assets" >&2; exit 1; }
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
npm ci --prefix book --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null
.venv/bin/python -m pvlake.maps install-assets book/node_modules >/dev/null
# --- end book ---

if [ "${1:-}" = "--test" ]; then
  : # test-only system packages are installed here as later stages need them
  # --- lake: PostgreSQL server programs for the throwaway catalog server of tests/test_lake.py ---
  if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
  fi
  # --- end lake ---
  # --- stac: PostGIS for the pgstac-backed local STAC API of tests/test_stac_api.py ---
  if ! ls /usr/share/postgresql/15/extension/postgis.control >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql-15-postgis-3 >/dev/null
  fi
  # --- end stac ---
  # --- book: headless Chromium for the browser tests (tests/test_book_browser.py) ---
  if ! command -v chromium >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  fi
  # --- end book ---
  # --- scale-out: a single-node Slurm cluster (slurmctld, slurmd, munged) for tests/test_scaleout.py ---
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  fi
  # --- end scale-out ---
fi
echo "setup: .venv ready ($(.venv/bin/python --version), pvlake $(.venv/bin/python -c 'import pvlake; print(pvlake.__version__)'))"
