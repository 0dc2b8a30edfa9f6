"""Run a stage notebook with papermill in the project's own kernel.

Used by every Snakemake rule::

    python -m pvlake.notebook notebooks/harmonize.ipynb OUT.ipynb --params '{"dataset": "x"}' --log LOG

The executed notebook is written even when a cell fails (it holds the traceback), the
log receives the cells' output, and a failure prints one line, ``<Error>: <message>``,
and exits 1, so Snakemake shows the reason rather than a papermill traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "pvlake"
"""Kernel installed by the set-up script with ``ipykernel install --sys-prefix``."""


def project_kernel_env() -> None:
    """Make Jupyter find this environment's kernels before any user-level ones."""
    share = str(Path(sys.prefix) / "share" / "jupyter")
    paths = os.environ.get("JUPYTER_PATH", "")
    if share not in paths.split(os.pathsep):
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (share, paths) if p)


def ipc_kernel_manager(socket_dir: str | Path) -> type:
    """A kernel manager class whose kernels talk over IPC sockets in ``socket_dir``.

    Parallel papermill runs (``snakemake -j8``) over TCP race for free ports: a kernel can
    die with "Address already in use" and leave papermill waiting. Unix sockets in a
    folder of each run's own cannot collide.
    """
    from jupyter_client import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = str(Path(socket_dir) / "kernel")

    return IPCKernelManager


def run_notebook(source: str | Path, output: str | Path, parameters: dict, log_path: str | Path | None = None) -> None:
    """Execute ``source`` with ``parameters`` into ``output``.

    Raises
    ------
    papermill.PapermillExecutionError
        When a cell fails; ``output`` then holds the executed notebook with the traceback.
    """
    import papermill as pm

    project_kernel_env()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    handlers = []
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("papermill").addHandler(handler)
        logging.getLogger("papermill").setLevel(logging.INFO)
        handlers.append(handler)
    try:
        with tempfile.TemporaryDirectory(prefix="pvlake-kernel-") as socket_dir:
            pm.execute_notebook(
                str(source), str(output), parameters=parameters, kernel_name=KERNEL_NAME,
                progress_bar=False, log_output=bool(log_path), cwd=None,
                kernel_manager_class=ipc_kernel_manager(socket_dir),
            )
    finally:
        for handler in handlers:
            logging.getLogger("papermill").removeHandler(handler)
            handler.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--params", default="{}", help="notebook parameters as a JSON object")
    parser.add_argument("--log", default=None, help="file receiving the cells' output")
    args = parser.parse_args(argv)
    from papermill.exceptions import PapermillExecutionError

    try:
        run_notebook(args.source, args.output, json.loads(args.params), args.log)
    except PapermillExecutionError as exc:
        message = f"{exc.ename}: {exc.evalue} (executed notebook: {args.output})"
        if args.log:
            with open(args.log, "a", encoding="utf-8") as fh:
                fh.write(message + "\n")
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
