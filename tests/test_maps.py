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
import pyarrow as pa
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


def layers_by_role(m: maps.InstallationsMap) -> dict[str, object]:
    """The layers of an installations map by what they draw, from the bottom: context
    (not pickable), polygon markers (right under the polygons), polygons, points."""
    layers = list(m.map.layers)
    roles = {"context": layers.pop(0)} if layers and not layers[0].pickable else {}
    polygons = [i for i, layer in enumerate(layers) if isinstance(layer, lonboard.PolygonLayer)]
    if polygons:
        roles["polygons"] = layers[polygons[0]]
        if polygons[0] > 0:
            roles["markers"] = layers[polygons[0] - 1]
        layers = layers[polygons[0] + 1:]
    if layers:
        roles["points"] = layers[0]
    return roles


def test_installations_map_splits_points_and_polygons():
    gdf = installations(30, 20)
    m = maps.installations_map(gdf, color_by="dataset", tooltip=["pv_id", "source_datasets"])
    layers = layers_by_role(m)
    assert set(layers) == {"context", "markers", "polygons", "points"}
    assert layers["points"].table.num_rows == 30
    assert layers["polygons"].table.num_rows == 20
    assert layers["markers"].table.num_rows == 20
    # only the tooltip columns (plus the colour column) travel to the browser
    names = set(layers["points"].table.schema.names)
    assert {"pv_id", "source_datasets", "dataset"} <= names and "area_m2" not in names
    assert set(layers["markers"].table.schema.names) == set(layers["polygons"].table.schema.names)
    assert m.map.basemap is None  # a basemap would be fetched from the internet
    assert "dataset" in m.legend.value
    bundle = m._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_every_installation_stays_visible_at_any_zoom():
    gdf = installations(0, 5)
    m = maps.installations_map(gdf)
    layers = layers_by_role(m)
    markers = layers["markers"]
    # a marker at each polygon's centroid, never under MIN_MARKER_PX, half the polygon's size in metres
    assert markers.radius_min_pixels == maps.MIN_MARKER_PX
    assert layers["polygons"].line_width_min_pixels == 1
    radius = np.asarray(markers.get_radius)
    lat = shapely.get_y(shapely.centroid(gdf.geometry.to_numpy()))
    side_m = 1e-3 * 111_320 * np.sqrt(np.cos(np.radians(lat)))
    expected = maps.MARKER_SCALE * np.sqrt(1e-6 * 111_320**2 * np.cos(np.radians(lat)) / np.pi)
    assert np.allclose(radius, expected, rtol=1e-3) and (radius < side_m).all()


def test_marker_of_a_polygon_cut_at_the_antimeridian_sits_on_it():
    cut = shapely.MultiPolygon([shapely.box(179.999, -17.001, 180.0, -17.0), shapely.box(-180.0, -17.001, -179.999, -17.0)])
    gdf = gpd.GeoDataFrame({"dataset": ["a"]}, geometry=[cut], crs="EPSG:4326")
    markers = layers_by_role(maps.installations_map(gdf))["markers"]
    lon, lat = maps.geo.centroid_lonlat(np.array([cut], dtype=object))
    assert abs(abs(lon[0]) - 180.0) < 1e-3 and abs(lat[0] + 17.0005) < 1e-6
    view = maps.fit_view(np.array([cut], dtype=object))
    assert abs(abs(view["longitude"]) - 180.0) < 0.01 and view["zoom"] == maps.MAX_ZOOM
    assert markers.table.num_rows == 1


def test_fit_view_frames_the_data():
    uk = shapely.points([-5.0, 1.5, -2.0], [50.0, 52.0, 58.0])
    view = maps.fit_view(uk, width_px=720, height_px=500)
    assert abs(view["longitude"] + 1.75) < 1e-6 and 53.0 < view["latitude"] < 55.0
    # the data's latitude range fits the map's height less the padding
    span_px = 512 * 2 ** view["zoom"] * (maps._mercator_y(58) - maps._mercator_y(50)) / (2 * np.pi)
    assert span_px == pytest.approx(500 * (1 - 2 * maps.VIEW_PADDING), rel=1e-6)
    # across the antimeridian: Fiji and Alaska, not the whole globe
    pacific = maps.fit_view(shapely.points([178.5, -179.5, -170.0], [-18.0, -17.0, 60.0]))
    assert abs(pacific["longitude"] + 175.75) < 1e-6 and pacific["zoom"] > 1.5
    # around the world: the usual world view, centred between the extreme installations
    world = maps.fit_view(shapely.points([-120.0, 0.0, 140.0, 60.0], [40.0, 0.0, -30.0, 10.0]))
    assert abs(world["longitude"] - 10.0) < 1e-6 and world["zoom"] < 1.0
    assert maps.fit_view(np.array([], dtype=object)) == {"longitude": 0.0, "latitude": 20.0, "zoom": 0.5}


def test_longitude_arc():
    assert maps.longitude_arc(np.array([10.0, 20.0]), np.array([12.0, 25.0])) == (10.0, 25.0)
    west, east = maps.longitude_arc(np.array([170.0, -175.0]), np.array([172.0, -170.0]))
    assert (west, east) == (170.0, 190.0)
    # an unwrapped extent past +180
    assert maps.longitude_arc(np.array([179.0]), np.array([181.0])) == (179.0, 181.0)
    assert maps.longitude_arc(np.array([-180.0]), np.array([180.0])) is None


def test_context_outlines_come_from_natural_earth_offline_and_fit_the_view():
    view = maps.fit_view(shapely.points([-5.0, 1.5], [50.0, 58.0]))
    geoms = maps.context_geometries(view)
    assert len(geoms) >= 3  # Great Britain, Ireland, France at least
    xmin, ymin, xmax, ymax = shapely.total_bounds(geoms)
    assert xmin >= -60 and xmax <= 60 and ymin >= 20 and ymax <= 90
    london = shapely.Point(-0.12, 51.5)
    assert shapely.intersects(geoms, london).any()
    # generalised: far fewer vertices than Natural Earth's 1:10m
    full = maps._countries()[0]
    assert shapely.get_num_coordinates(geoms).sum() < 0.2 * shapely.get_num_coordinates(full).sum()
    world = maps.context_geometries({"longitude": 0.0, "latitude": 0.0, "zoom": 0.3})
    assert len(world) > 150 and shapely.get_num_coordinates(world).sum() < 40_000
    m = maps.installations_map(installations(3, 3))
    context = layers_by_role(m)["context"]
    assert tuple(context.get_fill_color) == maps.CONTEXT_FILL_RGBA and context.filled
    assert not context.pickable


def test_basemap_is_optional_and_context_can_be_left_out():
    gdf = installations(3, 3)
    online = maps.installations_map(gdf, basemap=True)
    assert online.map.basemap is not None and online.map.basemap.style.startswith("https://")
    assert layers_by_role(online)["context"].filled is False  # the basemap draws the land
    bare = maps.installations_map(gdf, context=False)
    assert "context" not in layers_by_role(bare)


def test_choropleth_map_colours_areas_over_the_context():
    import pvlake.context as cx

    ne, _ = cx.read_natural_earth()
    areas = ne[ne["country_iso3"].isin(["CZE", "DEU", "POL"])].sort_values("country_iso3")
    areas = areas.assign(installations=[10, 1000, 100])
    m = maps.choropleth_map(areas)
    context, layer = m.map.layers
    assert not context.pickable and layer.pickable and layer.table.num_rows == 3
    assert "installations" in m.legend.value and "log scale" in m.legend.value
    assert set(layer.table.schema.names) >= {"country_iso3", "country_name", "installations"}
    # the palest yellows are left out: every area stands out from the land colour
    fill = np.asarray(pa.chunked_array(layer.get_fill_color).combine_chunks().flatten()).reshape(-1, 4)[:, :3].astype(int)
    assert (np.abs(fill - np.array(maps.CONTEXT_FILL_RGBA[:3])).sum(axis=1) > 60).all()
    assert 5 < m.map.view_state.longitude < 25 and 45 < m.map.view_state.latitude < 56


def test_installations_map_numeric_colour_and_list_tooltips():
    gdf = installations(5, 5)
    frame = maps.tooltip_frame(gdf, ["pv_id", "source_datasets"])
    assert frame["source_datasets"].iloc[0] == "a; b"
    m = maps.installations_map(gdf, color_by="area_m2", log_scale=True)
    assert "log scale" in m.legend.value and "no value (5)" in m.legend.value


def test_installations_map_handles_hundreds_of_thousands_of_features():
    gdf = installations(150_000, 150_000)
    m = maps.installations_map(gdf)
    layers = layers_by_role(m)
    assert layers["points"].table.num_rows + layers["polygons"].table.num_rows == 300_000
    assert layers["markers"].table.num_rows == 150_000


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
