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

if [ "${1:-}" = "--test" ]; then
  : # test-only system packages are installed here as later stages need them
fi
echo "setup: .venv ready ($(.venv/bin/python --version), pvlake $(.venv/bin/python -c 'import pvlake; print(pvlake.__version__)'))"
