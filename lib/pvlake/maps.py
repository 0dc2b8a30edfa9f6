"""Interactive maps of PV installations (lonboard / deck.gl), working offline.

:func:`installations_map` turns a GeoDataFrame of installations into a lonboard map:
points and polygons in their own layers, coloured by a categorical column (one colour
per value) or a numeric one (a colour ramp), with a legend and hover tooltips. The data
go to the browser as GeoArrow (Parquet-encoded), never as GeoJSON, so hundreds of
thousands of features stay responsive.

lonboard's front end is one 3.4 MB JavaScript module that fetches two more files from a
CDN at run time (the parquet-wasm decoder and the polygon triangulation worker).
:class:`OfflineMap` is lonboard's map with that module served by the page's own server
instead of embedded in every map's widget state: its ``_esm`` is a loader of a few lines
(:func:`module_loader`) that imports the module (:data:`LONBOARD_MODULE`, lonboard's
module with the two CDN URLs pointed next to itself) from the folder that also holds the
two files (:data:`RUNTIME_ASSETS`): the book's ``_static/pvlake/``, or JupyterLab's
``static/pvlake/`` (the set-up script runs ``python -m pvlake.maps install-assets`` to
register it with the Jupyter server). A page then compiles the module once, however many
maps it shows, and a browser caches it across pages.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import ipywidgets
import lonboard
import matplotlib
import numpy as np
import pandas as pd
import shapely

from . import geo
from .dedup import M_PER_DEG

RUNTIME_ASSETS: dict[str, str] = {
    "parquet_wasm_bg.wasm": "parquet-wasm/esm/parquet_wasm_bg.wasm",
    "earcut-worker.min.js": "@geoarrow/geoarrow-js/dist/earcut-worker.min.js",
}
"""Files lonboard 0.16 fetches from a CDN at run time: served name -> path in node_modules
(versions pinned in book/package-lock.json: parquet-wasm 0.7.1, @geoarrow/geoarrow-js 0.3.0)."""

ASSET_FOLDER = "pvlake"
"""Folder of :data:`RUNTIME_ASSETS` and :data:`LONBOARD_MODULE` under the book's ``_static``
and Jupyter's ``static``."""

# Where the assets are, decided in the browser: a Jupyter page carries its server's base
# URL in #jupyter-config-data; a Sphinx page its root (relative) in data-content_root.
# (The loader runs from a blob: URL, which relative URLs cannot be resolved against.)
_ASSET_BASE_JS = f"""const __pvlake_assets__ = (() => {{
  const jupyter = document.getElementById("jupyter-config-data");
  if (jupyter) {{
    const base = JSON.parse(jupyter.textContent).baseUrl || "/";
    return new URL(base + "static/{ASSET_FOLDER}/", window.location.href).href;
  }}
  const root = document.documentElement.dataset.content_root ?? "./";
  return new URL(root + "_static/{ASSET_FOLDER}/", document.baseURI).href;
}})();
"""

# lonboard's module, served from the asset folder, finds the other assets next to itself
_MODULE_BASE_JS = 'const __pvlake_assets__ = new URL("./", import.meta.url).href;\n'

_CDN_REWRITES: tuple[tuple[re.Pattern, str], ...] = (
    # inside a template literal: `https://cdn.jsdelivr.net/npm/parquet-wasm@${v}/esm/...`
    (re.compile(r"https://cdn\.jsdelivr\.net/npm/parquet-wasm@\$\{\w+\}/esm/parquet_wasm_bg\.wasm"),
     "${__pvlake_assets__}parquet_wasm_bg.wasm"),
    # a plain string literal: the worker's default URL
    (re.compile(r'"https://cdn\.jsdelivr\.net/npm/@geoarrow/geoarrow-js@[\d.]+/dist/earcut-worker\.min\.js"'),
     '__pvlake_assets__+"earcut-worker.min.js"'),
)

POINT_RADIUS_M = 30.0
"""Radius of a point installation on the map; points never shrink below
:data:`MIN_MARKER_PX`."""

MIN_MARKER_PX = 2.5
"""Smallest radius of a point, or of the marker of a polygon, in pixels: what keeps an
installation visible at any zoom (a rooftop is far below a pixel in a country view)."""

MARKER_SCALE = 0.5
"""A polygon's marker radius as a fraction of the polygon's equivalent radius
(``sqrt(area / pi)``): zoomed in, the marker sits inside the shape drawn over it; zoomed
out, it stays :data:`MIN_MARKER_PX` wide where the shape vanishes."""

CONTEXT_FILL_RGBA = (236, 235, 229, 255)
"""Land (country areas) under the data: a quiet, nearly grey paper colour."""

CONTEXT_LINE_RGBA = (160, 160, 160, 255)
"""Country outlines."""

MAP_WIDTH_PX = 720
"""Width the initial view is fitted for (a book page's text column; JupyterLab is wider)."""

VIEW_PADDING = 0.08
"""Share of the map left empty on each side of the data at the initial view."""

MAX_ZOOM = 16.0
"""Closest initial view (a single installation is shown at street scale, not at 1 m)."""

MISSING_RGBA = (150, 150, 150, 200)
"""Colour of features whose ``color_by`` value is missing."""

MAX_LEGEND_ENTRIES = 20
"""Categories listed in a legend; the rest are summarised in one line."""

DEFAULT_TOOLTIP = ("pv_id", "dataset", "source_id", "geom_type", "area_m2", "capacity_mw", "install_year")
"""Columns shown when hovering a feature, where the data have them."""


def offline_module(esm: str) -> str:
    """lonboard's front-end module with its CDN fetches redirected next to the module file.

    Parameters
    ----------
    esm : str
        The JavaScript module lonboard ships (``lonboard/static/index.js``).

    Returns
    -------
    str
        The module, prefixed with the resolver of its own folder (``import.meta.url``).

    Raises
    ------
    RuntimeError
        When a CDN URL is not found exactly once (another lonboard version).
    """
    for pattern, replacement in _CDN_REWRITES:
        esm, n = pattern.subn(lambda _: replacement, esm)
        if n != 1:
            raise RuntimeError(
                f"lonboard {lonboard.__version__}: expected one CDN URL matching {pattern.pattern!r}, found {n};"
                " pvlake.maps supports the lonboard version pinned in pyproject.toml"
            )
    return _MODULE_BASE_JS + esm


def module_loader(module_name: str) -> str:
    """The ``_esm`` of a map: a widget whose ``render`` is lonboard's, from the asset folder.

    The module is imported by URL, so a page evaluates it once however many maps it shows
    and the browser caches it, where an embedded module would be parsed, compiled and run
    (parquet-wasm instantiated) again for each map. The import starts with the model but
    only ``render`` waits for it: anywidget rejects a model whose widget has not loaded
    and initialised 2 s after the model was created ("[anywidget] Failed to initialize
    model."), and lonboard's module takes ~1 s to load on an idle 2-core machine, several
    under load; a view has no such deadline. lonboard 0.16's widget has only ``render``.
    """
    return _ASSET_BASE_JS + f"""const lonboard = import(__pvlake_assets__ + "{module_name}");
export default {{
  async render(context) {{
    return (await lonboard).default.render(context);
  }},
}};
"""


LONBOARD_ESM = offline_module((Path(lonboard.__file__).parent / "static" / "index.js").read_text(encoding="utf-8"))
"""lonboard's module as the asset folder serves it (CDN URLs rewritten)."""

LONBOARD_MODULE = f"lonboard-{lonboard.__version__}-{hashlib.sha256(LONBOARD_ESM.encode()).hexdigest()[:12]}.js"
"""File name of :data:`LONBOARD_ESM` in the asset folder; the content hash in it keeps a
page from loading the module of another lonboard or pvlake version."""


class OfflineMap(lonboard.Map):
    """A lonboard map that loads its front end and run-time assets from the page's own server."""

    _esm = module_loader(LONBOARD_MODULE)


def _css_rgba(rgba: Sequence[int]) -> str:
    r, g, b, a = (int(v) for v in rgba)
    return f"rgba({r}, {g}, {b}, {a / 255:.2f})"


def _swatch(css_colour: str, label: str) -> str:
    return (
        '<span style="display:inline-flex;align-items:center;margin:0 12px 2px 0;white-space:nowrap">'
        f'<span style="display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;'
        f'background:{css_colour}"></span>{html.escape(label)}</span>'
    )


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _legend(title: str, body: str) -> str:
    return (
        '<div class="pvlake-legend" style="font-size:13px;line-height:1.5;margin:4px 0">'
        f"<b>{html.escape(title)}</b><br>{body}</div>"
    )


def categorical_colors(values: pd.Series, title: str) -> tuple[np.ndarray, str]:
    """One colour per distinct value, and the legend that names them.

    Values are ordered by name, so colours are the same in every run; missing values
    are grey. Up to 10 categories use matplotlib's ``tab10``, more use ``tab20`` (cycled
    past 20).

    Parameters
    ----------
    values : pandas.Series
        The categorical column.
    title : str
        Legend title (usually the column name).

    Returns
    -------
    rgba : numpy.ndarray
        ``(len(values), 4)`` uint8 colours.
    legend_html : str
        Swatch, value and feature count per category.
    """
    missing = values.isna().to_numpy()
    labels = values.astype("string").fillna("")
    categories = sorted(set(labels[~missing]))
    palette = matplotlib.colormaps["tab10" if len(categories) <= 10 else "tab20"].colors
    table = np.array([[*(round(255 * c) for c in palette[i % len(palette)]), 220] for i in range(len(categories))]
                     + [MISSING_RGBA], dtype=np.uint8)
    codes = pd.Categorical(labels, categories=categories).codes.copy()
    codes[missing] = len(categories)
    counts = np.bincount(codes, minlength=len(categories) + 1)
    entries = [_swatch(_css_rgba(table[i]), f"{c} ({counts[i]:,})") for i, c in enumerate(categories)]
    if len(entries) > MAX_LEGEND_ENTRIES:
        rest = len(entries) - MAX_LEGEND_ENTRIES
        entries = entries[:MAX_LEGEND_ENTRIES] + [f"<span>… and {rest:,} more categories</span>"]
    if counts[-1]:
        entries.append(_swatch(_css_rgba(MISSING_RGBA), f"no value ({counts[-1]:,})"))
    return table[codes], _legend(title, "".join(entries))


def continuous_colors(
    values: pd.Series, title: str, cmap: str | matplotlib.colors.Colormap = "viridis", log_scale: bool = False
) -> tuple[np.ndarray, str]:
    """A colour ramp over a numeric column, and a legend bar with its range.

    Parameters
    ----------
    values : pandas.Series
        The numeric column; missing (and, with ``log_scale``, non-positive) values are grey.
    title : str
        Legend title (usually the column name, with its unit).
    cmap : str or matplotlib.colors.Colormap, default "viridis"
        A matplotlib colormap (or its name).
    log_scale : bool, default False
        Spread the colours over the logarithm of the values (areas span decades).

    Returns
    -------
    rgba : numpy.ndarray
        ``(len(values), 4)`` uint8 colours.
    legend_html : str
        Gradient bar from the minimum to the maximum value.
    """
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    valid = np.isfinite(x) & ((x > 0) if log_scale else True)
    rgba = np.tile(np.array(MISSING_RGBA, dtype=np.uint8), (len(x), 1))
    ramp = cmap if isinstance(cmap, matplotlib.colors.Colormap) else matplotlib.colormaps[cmap]
    stops = ", ".join(_css_rgba(ramp(t, bytes=True)) for t in np.linspace(0, 1, 9))
    if valid.any():
        vmin, vmax = float(x[valid].min()), float(x[valid].max())
        norm = (matplotlib.colors.LogNorm if log_scale else matplotlib.colors.Normalize)(vmin, vmax)
        scaled = np.clip(np.nan_to_num(norm(x[valid]).filled(0.5), nan=0.5), 0, 1)
        rgba[valid] = ramp(scaled, bytes=True)
        scale = " (log scale)" if log_scale else ""
        body = (
            f'<span style="display:inline-flex;align-items:center;gap:6px">{_number(vmin)}'
            f'<span style="display:inline-block;width:180px;height:12px;background:linear-gradient(to right, {stops})">'
            f"</span>{_number(vmax)}{scale}</span>"
        )
    else:
        body = ""
    n_missing = int((~valid).sum())
    if n_missing:
        body += " " + _swatch(_css_rgba(MISSING_RGBA), f"no value ({n_missing:,})")
    return rgba, _legend(title, body)


def tooltip_frame(gdf: gpd.GeoDataFrame, columns: Sequence[str]) -> gpd.GeoDataFrame:
    """The columns a tooltip shows plus the geometry; list values joined as text.

    Only these columns travel to the browser, which keeps large maps light.
    """
    frame = gdf[[*columns, gdf.geometry.name]].copy()
    for col in columns:
        if frame[col].dtype == object and frame[col].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            frame[col] = frame[col].map(
                lambda v: "; ".join(map(str, v)) if isinstance(v, (list, tuple, np.ndarray)) else v
            )
    return frame


def _equivalent_radius_m(geoms: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    """``sqrt(area / pi)`` of polygons, area from degrees scaled at their latitude (a
    marker size, not a measurement)."""
    area_m2 = shapely.area(geoms) * M_PER_DEG**2 * np.cos(np.radians(lat_deg))
    return np.sqrt(np.maximum(area_m2, 0.0) / np.pi)


def marker_layer(polygons: gpd.GeoDataFrame, rgba: np.ndarray) -> lonboard.ScatterplotLayer:
    """A marker at each polygon's centroid, so polygons smaller than a pixel still show.

    The marker is :data:`MARKER_SCALE` of the polygon's equivalent radius and never smaller
    than :data:`MIN_MARKER_PX`: zoomed out it is what the reader sees, zoomed in it hides
    inside the shape drawn over it. It carries the polygon's tooltip columns.
    """
    lon, lat = geo.centroid_lonlat(polygons.geometry.to_numpy())
    radius = MARKER_SCALE * _equivalent_radius_m(geo.unwrap_antimeridian(polygons.geometry.to_numpy())[0], lat)
    markers = gpd.GeoDataFrame(polygons.drop(columns=polygons.geometry.name), geometry=shapely.points(lon, lat),
                               crs=polygons.crs)
    return lonboard.ScatterplotLayer.from_geopandas(
        markers, get_fill_color=rgba, get_radius=radius, radius_min_pixels=MIN_MARKER_PX,
        pickable=True, auto_highlight=True,
    )


def installation_layers(gdf: gpd.GeoDataFrame, rgba: np.ndarray, markers: bool = True) -> list:
    """Layers of installations: polygon markers (:func:`marker_layer`), polygons, points.

    Parameters
    ----------
    gdf : geopandas.GeoDataFrame
        Points and polygons, EPSG:4326.
    rgba : numpy.ndarray
        ``(len(gdf), 4)`` uint8 colours.
    markers : bool, default True
        Also mark each polygon at its centroid (visible at every zoom).

    Raises
    ------
    ValueError
        When a geometry is neither a point nor a polygon (or is missing).
    """
    dims = shapely.get_dimensions(gdf.geometry.to_numpy())
    points, polygons = dims == 0, dims == 2
    if not (points | polygons).all():
        raise ValueError(f"{int((~(points | polygons)).sum())} geometries are neither points nor polygons")
    layers = []
    if polygons.any():
        if markers:
            layers.append(marker_layer(gdf[polygons], rgba[polygons]))
        fill = rgba[polygons].copy()
        fill[:, 3] = np.minimum(fill[:, 3], 170)
        layers.append(lonboard.PolygonLayer.from_geopandas(
            gdf[polygons], get_fill_color=fill, get_line_color=rgba[polygons],
            # a roof is sub-pixel at country scale: the outline keeps it visible
            line_width_min_pixels=1, pickable=True, auto_highlight=True,
        ))
    if points.any():
        layers.append(lonboard.ScatterplotLayer.from_geopandas(
            gdf[points], get_fill_color=rgba[points], get_radius=POINT_RADIUS_M,
            radius_min_pixels=MIN_MARKER_PX, pickable=True, auto_highlight=True,
        ))
    return layers


# ---------------------------------------------------------------- geographic context and view


def _mercator_y(lat_deg: float) -> float:
    return float(np.log(np.tan(np.pi / 4 + np.radians(lat_deg) / 2)))


def longitude_arc(xmin: np.ndarray, xmax: np.ndarray, bin_deg: float = 0.5) -> tuple[float, float] | None:
    """The shortest longitude range holding every extent ``[xmin, xmax]`` (degrees).

    The extents are laid on the circle of longitudes, and the range starts after its widest
    empty stretch: data on both sides of +-180 (Fiji, Alaska's Aleutians) get one narrow
    range across the antimeridian, not the whole globe. ``xmax`` may exceed 180 (unwrapped
    extents, :func:`pvlake.geo.unwrapped_bounds`).

    Returns
    -------
    (west, east) or None
        ``west`` in [-180, 180), ``east >= west`` (may exceed 180); None when the data
        leave no empty stretch wider than ``bin_deg`` (a world view).
    """
    xmin, xmax = np.asarray(xmin, dtype=float), np.asarray(xmax, dtype=float)
    n_bins = int(round(360 / bin_deg))
    start = np.floor((geo.wrap_lon(xmin) + 180.0) / bin_deg).astype(int) % n_bins
    length = np.ceil((xmax - xmin) / bin_deg).astype(int) + 1
    if (length >= n_bins).any():
        return None
    cover = np.zeros(2 * n_bins + 1, dtype=int)
    np.add.at(cover, start, 1)
    np.add.at(cover, start + length, -1)
    covered = np.cumsum(cover)[:2 * n_bins]
    covered = (covered[:n_bins] + covered[n_bins:]) > 0
    if covered.all():
        return None
    # widest empty run on the circle: runs of the doubled mask, cut at n_bins
    empty = np.r_[~covered, ~covered].astype(np.int8)
    edges = np.flatnonzero(np.diff(np.r_[0, empty, 0]))
    runs = edges.reshape(-1, 2)
    widest = runs[np.argmax(np.minimum(runs[:, 1] - runs[:, 0], n_bins))]
    cut = -180.0 + bin_deg * (widest[0] + min(widest[1] - widest[0], n_bins) / 2)
    west = cut + (xmin - cut) % 360.0
    east = west + (xmax - xmin)
    lo, hi = float(west.min()), float(east.max())
    shift = 360.0 * np.floor((lo + 180.0) / 360.0)
    return lo - shift, hi - shift


def fit_view(
    geoms: np.ndarray, width_px: int = MAP_WIDTH_PX, height_px: int = 500, padding: float = VIEW_PADDING,
) -> dict:
    """The initial view (deck.gl ``longitude``, ``latitude``, ``zoom``) that frames the data.

    Web Mercator at zoom ``z`` is ``512 * 2**z`` pixels around the world; the zoom is the
    largest at which the data's longitude range (:func:`longitude_arc`) and Mercator height
    fit inside the map less ``padding`` on each side, at most :data:`MAX_ZOOM`.
    """
    bounds = geo.unwrapped_bounds(np.asarray(geoms, dtype=object))
    bounds = bounds[np.isfinite(bounds).all(axis=1)]
    if not len(bounds):
        return {"longitude": 0.0, "latitude": 20.0, "zoom": 0.5}
    arc = longitude_arc(bounds[:, 0], bounds[:, 2])
    if arc is None or arc[1] - arc[0] > 180.0:
        # data around the world: the usual world view, centred between the westernmost and
        # easternmost installation (not on the ocean the widest empty stretch happens to be)
        lon = geo.centroid_lonlat(np.asarray(geoms, dtype=object))[0]
        lon = lon[np.isfinite(lon)]
        arc = (float(lon.min()), float(lon.max())) if len(lon) else (-180.0, 180.0)
    west, east = arc
    y0 = _mercator_y(float(np.clip(bounds[:, 1].min(), -85.0, 85.0)))
    y1 = _mercator_y(float(np.clip(bounds[:, 3].max(), -85.0, 85.0)))
    usable_w, usable_h = width_px * (1 - 2 * padding), height_px * (1 - 2 * padding)
    zoom = min(np.log2(usable_w * 360.0 / (512.0 * max(east - west, 1e-6))),
               np.log2(usable_h * 2 * np.pi / (512.0 * max(y1 - y0, 1e-9))))
    return {
        "longitude": float(geo.wrap_lon((west + east) / 2)),
        "latitude": float(np.degrees(np.arctan(np.sinh((y0 + y1) / 2)))),
        "zoom": float(np.clip(zoom, 0.0, MAX_ZOOM)),
    }


CONTEXT_PIXELS = 2.0
"""Outlines are simplified to about this many pixels of the initial view."""


@lru_cache(maxsize=1)
def _countries() -> tuple[np.ndarray, np.ndarray]:
    # imported here: pvlake.context reads boundaries, maps only draws them
    from .context import read_natural_earth

    geoms = read_natural_earth()[0].geometry.to_numpy()
    return geoms, shapely.bounds(geoms)


def _generalised(geoms: np.ndarray, tolerance_deg: float) -> np.ndarray:
    # snapping to half the tolerance keeps few significant bits: the layer's Parquet
    # shrinks about fivefold, at no visible cost
    simple = shapely.set_precision(shapely.simplify(geoms, tolerance_deg, preserve_topology=True), tolerance_deg / 2)
    return simple[~shapely.is_empty(simple) & np.isin(shapely.get_type_id(simple), (3, 6))]


@lru_cache(maxsize=4)
def _world(tolerance_deg: float) -> np.ndarray:
    return _generalised(_countries()[0], tolerance_deg)


def context_geometries(view: dict, width_px: int = MAP_WIDTH_PX, height_px: int = 500) -> np.ndarray:
    """Country areas around a view, generalised to its scale (Natural Earth 1:10m, offline).

    The countries are taken within twice the view's extent (so panning and zooming out
    keep some context), clipped there, and simplified to :data:`CONTEXT_PIXELS` pixels of
    the initial view (a power of two in degrees).
    """
    deg_per_px = 360.0 / (512.0 * 2 ** view["zoom"])
    tolerance = float(2.0 ** np.floor(np.log2(max(CONTEXT_PIXELS * deg_per_px, 1e-4))))
    half_w, half_h = width_px * deg_per_px, height_px * deg_per_px
    if half_w >= 120.0:
        return _world(tolerance)
    geoms, bounds = _countries()
    lat0, lat1 = max(view["latitude"] - half_h, -90.0), min(view["latitude"] + half_h, 90.0)
    west, east = view["longitude"] - half_w, view["longitude"] + half_w
    clipped = []
    for shift in (-360.0, 0.0, 360.0):
        x0, x1 = max(west + shift, -180.0), min(east + shift, 180.0)
        if x0 >= x1:
            continue
        near = (bounds[:, 0] <= x1) & (bounds[:, 2] >= x0) & (bounds[:, 1] <= lat1) & (bounds[:, 3] >= lat0)
        clipped += [shapely.clip_by_rect(g, x0, lat0, x1, lat1) for g in geoms[near]]
    return _generalised(np.array(clipped, dtype=object), tolerance) if clipped else np.array([], dtype=object)


def context_layer(view: dict, basemap: bool = False, height_px: int = 500) -> lonboard.PolygonLayer | None:
    """Country areas and outlines under the data, in a quiet style.

    Land is filled with :data:`CONTEXT_FILL_RGBA` (so coastlines show on the blank
    background), unless a basemap draws the land: then only the outlines.
    """
    geoms = context_geometries(view, height_px=height_px)
    if not len(geoms):
        return None
    return lonboard.PolygonLayer.from_geopandas(
        gpd.GeoDataFrame(geometry=geoms, crs="EPSG:4326"),
        get_fill_color=CONTEXT_FILL_RGBA, filled=not basemap, get_line_color=CONTEXT_LINE_RGBA,
        get_line_width=0, line_width_min_pixels=0.8, pickable=False,
    )


def _map(layers: list, geoms: np.ndarray, height_px: int, basemap: bool, context: bool) -> OfflineMap:
    view = fit_view(geoms, height_px=height_px)
    under = context_layer(view, basemap=basemap, height_px=height_px) if context else None
    return OfflineMap(
        ([under] if under is not None else []) + layers, view_state=view, height=height_px, show_tooltip=True,
        basemap=lonboard.basemap.MaplibreBasemap() if basemap else None,
    )


@dataclass
class InstallationsMap:
    """A lonboard map with its legend; displays as both, stacked.

    Attributes
    ----------
    map : OfflineMap
        The lonboard map (layers, view state, ...).
    legend : ipywidgets.HTML
        The legend, an HTML widget (rendered by JupyterLab and by the book).
    """

    map: OfflineMap
    legend: ipywidgets.HTML
    widget: ipywidgets.VBox = field(init=False, repr=False)

    def __post_init__(self):
        self.widget = ipywidgets.VBox([self.map, self.legend])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _colours(frame: gpd.GeoDataFrame, color_by: str, cmap, log_scale: bool) -> tuple[np.ndarray, str]:
    if pd.api.types.is_numeric_dtype(frame[color_by]) and not pd.api.types.is_bool_dtype(frame[color_by]):
        return continuous_colors(frame[color_by], color_by, cmap=cmap, log_scale=log_scale)
    return categorical_colors(frame[color_by], color_by)


def _tooltip_columns(gdf: gpd.GeoDataFrame, color_by: str, tooltip: Sequence[str] | None,
                     default: Sequence[str]) -> list[str]:
    if color_by not in gdf.columns:
        raise KeyError(f"color_by column {color_by!r} not in the data (columns: {', '.join(gdf.columns)})")
    columns = [c for c in (tooltip if tooltip is not None else default) if c in gdf.columns]
    missing = set(tooltip or ()) - set(columns)
    if missing:
        raise KeyError(f"tooltip columns not in the data: {', '.join(sorted(missing))}")
    return columns + ([color_by] if color_by not in columns else [])


def installations_map(
    gdf: gpd.GeoDataFrame,
    color_by: str = "dataset",
    tooltip: Sequence[str] | None = None,
    *,
    log_scale: bool = False,
    cmap: str = "viridis",
    height_px: int = 500,
    context: bool = True,
    basemap: bool = False,
) -> InstallationsMap:
    """An interactive map of PV installations, coloured by one column.

    The map opens on the data (:func:`fit_view`), over country areas and outlines drawn
    from Natural Earth (offline); polygons also get a marker at their centroid, so every
    installation shows at every zoom.

    Parameters
    ----------
    gdf : geopandas.GeoDataFrame
        Installations with Point, Polygon or MultiPolygon geometries (mixed is fine),
        e.g. a staging or prepared table; reprojected to EPSG:4326 if needed.
    color_by : str, default "dataset"
        Column that sets the colour: a numeric column gets a colour ramp, any other one
        colour per value.
    tooltip : sequence of str, optional
        Columns shown when hovering a feature; by default the key canonical attributes
        present (:data:`DEFAULT_TOOLTIP`). ``color_by`` is always included.
    log_scale : bool, default False
        For a numeric ``color_by``: spread the colours over the values' logarithm.
    cmap : str, default "viridis"
        For a numeric ``color_by``: the matplotlib colormap.
    height_px : int, default 500
        Height of the map in pixels.
    context : bool, default True
        Draw country areas and outlines under the data (:func:`context_layer`).
    basemap : bool, default False
        Draw lonboard's basemap (CARTO Positron tiles) under the data. It is fetched
        from the internet when the map is shown: for JupyterLab with internet access, never
        in the book (which must work offline).

    Returns
    -------
    InstallationsMap
        Displays as the map with its legend; ``.map`` is the lonboard map.
    """
    columns = _tooltip_columns(gdf, color_by, tooltip, DEFAULT_TOOLTIP)
    if gdf.crs is not None and not gdf.crs.equals("EPSG:4326"):
        gdf = gdf.to_crs("EPSG:4326")
    frame = tooltip_frame(gdf, columns)
    rgba, legend = _colours(frame, color_by, cmap, log_scale)
    layers = installation_layers(frame, rgba)
    return InstallationsMap(
        map=_map(layers, frame.geometry.to_numpy(), height_px, basemap, context),
        legend=ipywidgets.HTML(legend),
    )


CHOROPLETH_CMAP = matplotlib.colors.ListedColormap(
    matplotlib.colormaps["YlOrRd"](np.linspace(0.3, 1.0, 256)), name="YlOrRd_from_0.3")
"""Yellow-orange-red without its palest third, which would vanish on the land colour."""

AREA_TOOLTIP = ("country_iso3", "country_name", "h3_cell", "installations", "total_area_m2", "capacity_mw")
"""Columns shown when hovering an area of a choropleth, where the data have them."""


def choropleth_map(
    areas: gpd.GeoDataFrame,
    color_by: str = "installations",
    tooltip: Sequence[str] | None = None,
    *,
    log_scale: bool = True,
    cmap: str | matplotlib.colors.Colormap = CHOROPLETH_CMAP,
    height_px: int = 500,
    basemap: bool = False,
) -> InstallationsMap:
    """Areas (countries, H3 cells) coloured by a column, over the country context.

    Parameters
    ----------
    areas : geopandas.GeoDataFrame
        One polygon per row, e.g. the curated per-country or per-H3-cell tables
        (:func:`pvlake.context.country_stats`, :func:`pvlake.context.h3_stats`); rows
        without a geometry are left out.
    color_by : str, default "installations"
        Column that sets the colour (numeric: a colour ramp; other: one colour per value).
    tooltip : sequence of str, optional
        Columns shown when hovering an area; by default those of :data:`AREA_TOOLTIP` present.
    log_scale : bool, default True
        Spread the colours over the values' logarithm (counts span decades).
    cmap : str or matplotlib.colors.Colormap, default :data:`CHOROPLETH_CMAP`
        The matplotlib colormap of a numeric ``color_by``.
    height_px : int, default 500
    basemap : bool, default False
        As in :func:`installations_map`.
    """
    areas = areas[~areas.geometry.isna() & ~areas.geometry.is_empty]
    columns = _tooltip_columns(areas, color_by, tooltip, AREA_TOOLTIP)
    frame = tooltip_frame(areas, columns)
    rgba, legend = _colours(frame, color_by, cmap, log_scale)
    fill = rgba.copy()
    fill[:, 3] = 230
    # outlined in their own colour: areas smaller than a pixel (fine H3 cells in a world
    # view) stay visible
    layer = lonboard.PolygonLayer.from_geopandas(
        frame, get_fill_color=fill, get_line_color=rgba, line_width_min_pixels=1,
        pickable=True, auto_highlight=True,
    )
    return InstallationsMap(
        map=_map([layer], frame.geometry.to_numpy(), height_px, basemap, context=True),
        legend=ipywidgets.HTML(legend),
    )


def read_lake_installations(con, table: str = "prepared.pv_installations") -> gpd.GeoDataFrame:
    """A lake table of installations as a GeoDataFrame, ready for :func:`installations_map`.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        A connection with the lake attached as ``lake`` (:func:`pvlake.lake.open_lake`).
    table : str, default "prepared.pv_installations"
        ``<layer>.<table>`` in the lake, e.g. ``staging.<dataset>``.

    Returns
    -------
    geopandas.GeoDataFrame
        The table in EPSG:4326: DuckLake keeps no CRS, and the staging and prepared
        layers are EPSG:4326 by construction.
    """
    arrow = con.sql(f"SELECT * EXCLUDE (geometry), ST_AsWKB(geometry) AS geometry FROM lake.{table}").fetch_arrow_table()
    geometry = shapely.from_wkb(arrow.column("geometry").to_numpy(zero_copy_only=False))
    return gpd.GeoDataFrame(arrow.drop_columns("geometry").to_pandas(), geometry=geometry, crs="EPSG:4326")


def install_jupyter_assets(node_modules: str | Path, prefix: str | Path = sys.prefix) -> Path:
    """Write the maps' assets into an environment and let its Jupyter server serve them.

    The files land in ``<prefix>/share/pvlake/static/pvlake/``, and that folder's parent
    joins ``ServerApp.extra_static_paths`` in ``<prefix>/etc/jupyter/jupyter_server_config.json``
    (merged into the file's other settings), so a map in JupyterLab loads them from
    ``<base_url>/static/pvlake/``. (Only ``jpserver_extensions`` is read from the
    ``jupyter_server_config.d/`` folder, so the setting cannot go there.)

    Returns
    -------
    pathlib.Path
        The folder the files were written to.
    """
    static = (Path(prefix) / "share" / "pvlake" / "static").resolve()
    write_runtime_assets(node_modules, static / ASSET_FOLDER)
    config_file = Path(prefix) / "etc" / "jupyter" / "jupyter_server_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    paths = config.setdefault("ServerApp", {}).setdefault("extra_static_paths", [])
    if str(static) not in paths:
        paths.append(str(static))
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    return static / ASSET_FOLDER


def write_runtime_assets(node_modules: str | Path, dest: str | Path) -> None:
    """Fill ``dest`` (emptied first) with :data:`LONBOARD_MODULE` and :data:`RUNTIME_ASSETS`
    (copied from an npm ``node_modules`` folder).

    Raises
    ------
    FileNotFoundError
        When a file is missing (npm packages not installed: run the set-up script).
    """
    sources = {name: Path(node_modules) / relpath for name, relpath in RUNTIME_ASSETS.items()}
    for source in sources.values():
        if not source.is_file():
            raise FileNotFoundError(f"{source} missing: run `bash workflow/scripts/setup.sh` (npm ci in book/)")
    dest = Path(dest)
    # modules of earlier lonboard versions would only pile up
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name, source in sources.items():
        shutil.copyfile(source, dest / name)
    (dest / LONBOARD_MODULE).write_text(LONBOARD_ESM, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the maps' run-time assets for JupyterLab.")
    parser.add_argument("command", choices=["install-assets"])
    parser.add_argument("node_modules", help="npm node_modules folder holding the pinned packages")
    args = parser.parse_args(argv)
    print(f"maps: assets in {install_jupyter_assets(args.node_modules)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
