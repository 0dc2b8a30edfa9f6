"""Benchmark the forecasting stage: the whole of it on the sample, as the rule runs it.

    .venv/bin/python workflow/scripts/bench_forecast.py [--data-dir /tmp/bench_forecast]
        [--prepared <data_dir>/prepared/pv_installations.parquet] [--threads 1]

Reads the measured NREL systems from pvanalytics' wheel, runs pvanalytics' checks, models
them with the energy stage's chain, evaluates every method on a rolling origin (both
products, both settings), retrains the saved day-ahead model and, given a prepared table
(the sample run's), forecasts its installations: exactly ``pvlake.forecast.run_stage``
with the config's defaults. It runs in a fresh child process so that the peak memory
(ru_maxrss) is its own, and prints the stage's own timing and the wall time. The target
(issue 12) is under 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, warnings
warnings.filterwarnings("ignore", category=RuntimeWarning)
from pvlake import energy as en, forecast as fc
from pvlake.layout import Layout
data_dir, prepared, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
layout = Layout(data_dir)
settings = fc.ForecastSettings(threads=threads)
run = fc.run_stage(prepared, layout, settings, en.EnergySettings(), en.ValidationSettings(), progress=False)
print(json.dumps({"seconds": run.report["seconds"], "forecasts": run.report["forecasts"],
                  "installations": run.report["pv_forecast"]["installations"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared/pv_installations.parquet"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.prepared.exists():
        sys.exit(f"{args.prepared} does not exist: run the sample pipeline first (snakemake -j8), or pass --prepared")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench_forecast_"))
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", CHILD, str(data_dir), str(args.prepared), str(args.threads)],
                           capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = json.loads(child.stdout.strip().splitlines()[-1])
    seconds = result["seconds"]
    print(f"forecast stage on {result['forecasts']:,} forecasts and {result['installations']:,} installations "
          f"({args.threads} thread(s)):")
    print(f"  data {seconds['data_s']:.1f} s, evaluation {seconds['evaluation_s']:.1f} s, final model "
          f"{seconds['final_model_s']:.1f} s, installations {seconds['apply_s']:.1f} s; stage total {seconds['total_s']:.1f} s")
    print(f"  wall time with interpreter start and imports: {wall:.1f} s; peak memory {peak_mb:,.0f} MB")
    print(f"  target < 120 s: {'met' if wall < 120 else 'NOT met'}")


if __name__ == "__main__":
    main()
