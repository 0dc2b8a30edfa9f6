"""Benchmark the energy stage: annual yield of 450,000 installations over one year of
hourly weather in thousands of weather cells, against pvlib's per-system ModelChain.

    .venv/bin/python workflow/scripts/bench_energy.py [--n 450000] [--cells 4000]
        [--h3-resolution 3] [--modelchain 200] [--exact 1]

The installations are spread over ``--cells`` distinct H3 cells (resolution 3, ~12,400 km²,
the stage's default weather cell) at random places between 45 deg S and 62 deg N, with
heavy-tailed counts per cell (a few cells hold thousands, most a few dozen), as the real
inventories cluster. 4,000 cells is this project's estimate of what the global run's
~450,000 installations occupy at resolution 3 (UK rooftops fill a few dozen cells; the
global farm inventories of tens of thousands of sites, GM-SEUS, India and China spread over
thousands). Of the installations, 80 % have an area (70 % of those roof-sized), 20 % a
capacity, ~3 % their own tilt (0-40 deg), azimuth (90-270 deg) and mount, a third of them
trackers (30 % of the installations in one cell in ten: such attributes come from regional
datasets like GM-SEUS); 0.5 % sit near pvlib's Greensboro and Miami station files; the rest
get clear-sky weather (the offline default).

The timed run is the whole stage (system parameters, weather cells, weather, model,
profile, writing the outputs) in a fresh child process (its peak memory, VmHWM, is its own),
with the configured defaults (``grid`` method, 2 worker threads). In the same child,
``--modelchain`` installations are then run through pvlib's ModelChain one by one (the
per-system loop), timed, and extrapolated to all installations for the speed-up; their
agreement with the stage is printed. Finally the installations of a random tenth of the
cells are run by both methods, ``grid`` and ``exact`` (every installation computed), to
show what the grid saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h3
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import peak_rss_mb  # noqa: E402

STATIONS = {"greensboro": (36.07, -79.79), "miami": (25.70, -80.40)}


def synthetic_installations(n: int, n_cells: int, resolution: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` installations in ``n_cells`` H3 cells (see the module docstring)."""
    cells: set[str] = set()
    while len(cells) < n_cells:
        lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-45)), np.sin(np.radians(62)), n_cells)))
        lon = rng.uniform(-180, 180, n_cells)
        cells.update(h3.latlng_to_cell(a, b, resolution) for a, b in zip(lat, lon))
    cells_list = sorted(cells)[:n_cells]
    centres = np.array([h3.cell_to_latlng(c) for c in cells_list])
    weights = rng.lognormal(0.0, 1.5, n_cells)
    counts = rng.multinomial(n, weights / weights.sum())
    owner = np.repeat(np.arange(n_cells), counts)
    # within ~15 km of the centre: inside the cell (edge ~60 km at resolution 3)
    lat = centres[owner, 0] + rng.normal(0, 0.1, n)
    lon = centres[owner, 1] + rng.normal(0, 0.1, n) / np.cos(np.radians(centres[owner, 0]))
    near = rng.random(n) < 0.005
    which = rng.integers(0, len(STATIONS), n)
    station = np.array(list(STATIONS.values()))[which]
    lat = np.where(near, station[:, 0] + rng.normal(0, 0.1, n), lat)
    lon = np.where(near, station[:, 1] + rng.normal(0, 0.1, n), lon)
    has_area = rng.random(n) < 0.8
    roof = rng.random(n) < 0.7
    area = np.where(roof, rng.lognormal(np.log(30), 0.6, n), rng.lognormal(np.log(40_000), 1.3, n))
    capacity_mw = np.where(rng.random(n) < 0.2, area * np.where(roof, 170e-6, 80e-6) * rng.uniform(0.7, 1.3, n), np.nan)
    # own orientations come from a few regional datasets (GM-SEUS: US arrays): 30 % of the
    # installations of one cell in ten, 3 % of all
    own = np.isin(owner, rng.choice(n_cells, n_cells // 10, replace=False)) & (rng.random(n) < 0.3)
    mount = np.where(rng.random(n) < 1 / 3, "single_axis", "fixed")
    attributes = [json.dumps({"tilt": round(float(t), 1), "azimuth": round(float(a), 1), "mount": str(m)}) if o else None
                  for o, t, a, m in zip(own, rng.uniform(0, 40, n), rng.uniform(90, 270, n), mount)]
    return pd.DataFrame({
        "pv_id": [f"{i:012x}" for i in range(n)], "centroid_lon": lon, "centroid_lat": lat,
        "area_m2": np.where(has_area, area, np.nan), "capacity_mw": capacity_mw, "attributes": attributes,
    })


def run_child(folder: Path, n_modelchain: int, n_exact: int) -> dict:
    """The timed stage run, then the ModelChain loop and the exact method (in the child)."""
    from pvlake import energy
    from pvlake.layout import Layout

    warnings.filterwarnings("ignore", category=RuntimeWarning)
    settings = energy.EnergySettings()
    layout = Layout(folder / "out")
    cpu0 = sum(os.times()[:2])
    t0 = time.perf_counter()
    run = energy.run_stage(folder / "pv_installations.parquet", layout, settings, progress=False)
    wall = time.perf_counter() - t0
    cpu = sum(os.times()[:2]) - cpu0
    peak = peak_rss_mb()
    agreement = energy.modelchain_agreement(run, settings, n=n_modelchain, seed=0, progress=False)
    subset = {}
    if n_exact:
        # every installation of a random tenth of the cells, by both methods
        cells = run.systems["weather_cell"].dropna().drop_duplicates().sample(frac=0.1, random_state=0)
        ids = run.systems.loc[run.systems["weather_cell"].isin(cells), "pv_id"]
        installations = energy.read_installations(folder / "pv_installations.parquet")
        installations = installations[installations["pv_id"].isin(ids)]
        for method in ("grid", "exact"):
            chosen = dataclasses.replace(settings, model=dataclasses.replace(settings.model, method=method))
            t1 = time.perf_counter()
            energy.energy_table(installations, chosen, layout.weather_cache(), progress=False)
            subset[method] = time.perf_counter() - t1
        subset |= {"installations": len(installations), "cells": len(cells)}
    return {
        "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "installations": run.report["installations"],
        "weather_cells": run.report["weather_cells"], "with_energy": run.report["with_energy"],
        "by_weather_source": run.report["by_weather_source"], "profile_cells": run.report["profile_cells"],
        "modelchain_systems": len(agreement), "modelchain_s_per_system": float(agreement["modelchain_s"].mean()),
        "modelchain_max_abs_difference_pct": float(agreement["difference_pct"].abs().max()),
        "subset": subset,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=450_000)
    parser.add_argument("--cells", type=int, default=4_000)
    parser.add_argument("--h3-resolution", type=int, default=3)
    parser.add_argument("--modelchain", type=int, default=200)
    parser.add_argument("--exact", type=int, default=1, help="0: skip the grid/exact comparison on a tenth of the cells")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(Path(args.child[0]), int(args.child[1]), int(args.child[2]))))
        return
    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory(prefix="bench-energy-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        synthetic_installations(args.n, args.cells, args.h3_resolution, rng).to_parquet(folder / "pv_installations.parquet")
        print(f"synthetic set: {args.n:,} installations in {args.cells:,} H3 res-{args.h3_resolution} cells "
              f"(written in {time.perf_counter() - t0:.0f} s, not timed)")
        out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(args.modelchain), str(args.exact)],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"energy stage: {r['installations']:,} installations, {r['weather_cells']:,} weather cells "
          f"({', '.join(f'{k}: {v:,}' for k, v in r['by_weather_source'].items())}), {r['profile_cells']:,} profile cells")
    print(f"  wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, peak {r['peak_rss_mb']:,.0f} MB "
          f"({r['wall_s'] / r['installations'] * 1e6:.0f} us per installation)")
    loop_s = r["modelchain_s_per_system"] * r["installations"]
    print(f"per-system ModelChain loop: {r['modelchain_s_per_system'] * 1000:.1f} ms per system (measured on "
          f"{r['modelchain_systems']} systems in this run), extrapolated {loop_s:,.0f} s for {r['installations']:,}; "
          f"speed-up {loop_s / r['wall_s']:,.0f}x; largest difference to ModelChain {r['modelchain_max_abs_difference_pct']:.3f} %")
    if r["subset"]:
        sub = r["subset"]
        print(f"grid against exact (every installation computed) on the {sub['installations']:,} installations of "
              f"{sub['cells']:,} random cells: {sub['grid']:.1f} s against {sub['exact']:.1f} s "
              f"({sub['exact'] / sub['grid']:.1f}x)")
    print(f"target: < 60 s, < 4096 MB on 2 cores, >= 500x; load average during the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
