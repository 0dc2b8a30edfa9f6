"""pvlake.maps: colours, legends, layers, offline assets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import lonboard
import numpy as np
import pandas as pd
import pytest
import shapely

from pvlake import maps

NODE_MODULES = Path(__file__).resolve().parents[1] / "book" / "node_modules"


def installations(n_points: int, n_polygons: int) -> gpd.GeoDataFrame:
    """Points and small square polygons (with some MultiPolygons) around the globe."""
    rng = np.random.default_rng(7)
    lon = rng.uniform(-170, 170, n_points + n_polygons)
    lat = rng.uniform(-60, 70, n_points + n_polygons)
    points = shapely.points(lon[:n_points], lat[:n_points])
    boxes = shapely.box(lon[n_points:], lat[n_points:], lon[n_points:] + 1e-3, lat[n_points:] + 1e-3)
    boxes[::10] = [shapely.MultiPolygon([b]) for b in boxes[::10]]
    n = n_points + n_polygons
    return gpd.GeoDataFrame({
        "pv_id": [f"id{i}" for i in range(n)],
        "dataset": np.where(np.arange(n) % 3 == 0, "a", "b"),
        "area_m2": np.r_[np.full(n_points, np.nan), rng.uniform(10, 1e6, n_polygons)],
        "source_datasets": [["a", "b"]] * n,
    }, geometry=np.r_[points, boxes], crs="EPSG:4326")


def test_offline_module_points_lonboard_at_the_assets_next_to_it():
    esm = maps.LONBOARD_ESM
    assert "cdn.jsdelivr.net/npm/parquet-wasm" not in esm
    assert "geoarrow-js@0.3.0/dist/earcut-worker" not in esm
    assert "${__pvlake_assets__}parquet_wasm_bg.wasm" in esm
    assert '__pvlake_assets__+"earcut-worker.min.js"' in esm
    assert esm.startswith('const __pvlake_assets__ = new URL("./", import.meta.url).href;')
    assert set(maps.RUNTIME_ASSETS) == {"parquet_wasm_bg.wasm", "earcut-worker.min.js"}
    assert re.fullmatch(rf"lonboard-{re.escape(lonboard.__version__)}-[0-9a-f]{{12}}\.js", maps.LONBOARD_MODULE)


def test_map_widget_state_carries_a_loader_not_lonboards_module():
    esm = maps.OfflineMap._esm
    assert len(esm) < 1000  # lonboard's module is 3.4 MB
    assert f'const lonboard = import(__pvlake_assets__ + "{maps.LONBOARD_MODULE}");' in esm
    # the model is ready at once (anywidget allows 2 s); only render waits for the module
    assert esm.count("await") == 1 and "return (await lonboard).default.render(context);" in esm
    m = maps.installations_map(installations(3, 3))
    assert m.map.get_state()["_esm"] == esm


def test_offline_module_refuses_a_bundle_it_does_not_know():
    with pytest.raises(RuntimeError, match="expected one CDN URL"):
        maps.offline_module("console.log('another lonboard')")


def test_categorical_colors_one_colour_per_value_and_grey_for_missing():
    values = pd.Series(["b", "a", None, "b", "c"])
    rgba, legend = maps.categorical_colors(values, "dataset")
    assert rgba.shape == (5, 4) and rgba.dtype == np.uint8
    assert (rgba[0] == rgba[3]).all()
    assert len({tuple(c) for c in rgba[[0, 1, 4]]}) == 3
    assert tuple(rgba[2]) == maps.MISSING_RGBA
    # names sorted: "a" gets the palette's first colour whatever the row order
    again, _ = maps.categorical_colors(pd.Series(["c", "a"]), "dataset")
    assert (again[1] == rgba[1]).all()
    assert "a (1)" in legend and "b (2)" in legend and "no value (1)" in legend


def test_categorical_legend_is_capped():
    values = pd.Series([f"file{i:02d}" for i in range(maps.MAX_LEGEND_ENTRIES + 5)])
    _, legend = maps.categorical_colors(values, "source_file")
    assert "… and 5 more categories" in legend
    assert f"file{maps.MAX_LEGEND_ENTRIES + 4:02d}" not in legend


def test_continuous_colors_span_the_ramp():
    import matplotlib

    values = pd.Series([10.0, np.nan, 1000.0, 100.0])
    rgba, legend = maps.continuous_colors(values, "area_m2", cmap="viridis", log_scale=True)
    ramp = matplotlib.colormaps["viridis"]
    assert tuple(rgba[0]) == tuple(ramp(0.0, bytes=True))
    assert tuple(rgba[2]) == tuple(ramp(1.0, bytes=True))
    assert tuple(rgba[3]) == tuple(ramp(0.5, bytes=True))  # halfway on a log scale
    assert tuple(rgba[1]) == maps.MISSING_RGBA
    assert "10" in legend and "1,000" in legend and "log scale" in legend and "no value (1)" in legend


def test_installations_map_splits_points_and_polygons():
    gdf = installations(30, 20)
    m = maps.installations_map(gdf, color_by="dataset", tooltip=["pv_id", "source_datasets"])
    layers = {type(layer): layer for layer in m.map.layers}
    assert set(layers) == {lonboard.PolygonLayer, lonboard.ScatterplotLayer}
    assert layers[lonboard.ScatterplotLayer].table.num_rows == 30
    assert layers[lonboard.PolygonLayer].table.num_rows == 20
    # only the tooltip columns (plus the colour column) travel to the browser
    names = set(layers[lonboard.ScatterplotLayer].table.schema.names)
    assert {"pv_id", "source_datasets", "dataset"} <= names and "area_m2" not in names
    assert m.map.basemap is None  # a basemap would be fetched from the internet
    assert "dataset" in m.legend.value
    bundle = m._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_installations_map_numeric_colour_and_list_tooltips():
    gdf = installations(5, 5)
    frame = maps.tooltip_frame(gdf, ["pv_id", "source_datasets"])
    assert frame["source_datasets"].iloc[0] == "a; b"
    m = maps.installations_map(gdf, color_by="area_m2", log_scale=True)
    assert "log scale" in m.legend.value and "no value (5)" in m.legend.value


def test_installations_map_handles_hundreds_of_thousands_of_features():
    gdf = installations(150_000, 150_000)
    m = maps.installations_map(gdf)
    assert sum(layer.table.num_rows for layer in m.map.layers) == 300_000


def test_installations_map_rejects_bad_input():
    gdf = installations(2, 2)
    with pytest.raises(KeyError, match="color_by"):
        maps.installations_map(gdf, color_by="nope")
    with pytest.raises(KeyError, match="tooltip columns"):
        maps.installations_map(gdf, tooltip=["pv_id", "nope"])
    lines = gdf.set_geometry([shapely.LineString([(0, 0), (1, 1)])] * 4)
    with pytest.raises(ValueError, match="neither points nor polygons"):
        maps.installations_map(lines)


def test_install_jupyter_assets_registers_a_static_path_the_server_reads(tmp_path):
    config_file = tmp_path / "etc/jupyter/jupyter_server_config.json"
    config_file.parent.mkdir(parents=True)
    config_file.write_text(json.dumps({"ServerApp": {"extra_static_paths": ["/elsewhere"]}, "Other": {"x": 1}}))
    (tmp_path / "share/pvlake/static/pvlake").mkdir(parents=True)
    (tmp_path / "share/pvlake/static/pvlake/lonboard-old.js").write_text("stale")
    for _ in range(2):  # idempotent
        folder = maps.install_jupyter_assets(NODE_MODULES, prefix=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*maps.RUNTIME_ASSETS, maps.LONBOARD_MODULE])
    assert (folder / "parquet_wasm_bg.wasm").read_bytes()[:4] == b"\0asm"
    assert (folder / maps.LONBOARD_MODULE).read_text() == maps.LONBOARD_ESM
    config = json.loads(config_file.read_text())
    assert config["Other"] == {"x": 1}
    assert config["ServerApp"]["extra_static_paths"] == ["/elsewhere", str(folder.parent)]
    # the setting reaches a Jupyter server that reads this environment's configuration
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "nowhere"), "JUPYTER_CONFIG_PATH": str(config_file.parent)}
    shown = subprocess.run([sys.executable, "-m", "jupyter_server", "--show-config-json"],
                           capture_output=True, text=True, check=True, env=env)
    assert str(folder.parent) in json.loads(shown.stdout)["ServerApp"]["extra_static_paths"]


def test_write_runtime_assets_says_what_to_run_when_npm_packages_are_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="setup.sh"):
        maps.write_runtime_assets(tmp_path / "node_modules", tmp_path / "out")
