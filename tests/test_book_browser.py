"""The built book and the exploration notebook in a real browser (headless Chromium).

Every request that leaves 127.0.0.1 is blocked, so a page that still needs a CDN fails
here as it would for a reader of the archived appendix with no internet.
"""

from __future__ import annotations

import io
import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from pvlake.maps import CONTEXT_FILL_RGBA, LONBOARD_MODULE

pytestmark = pytest.mark.workflow

MAP_TIMEOUT_MS = 120_000
DRAWN_PIXELS = 200
"""A map counts as drawn when this many pixels of its canvas show the geographic context
(land in :data:`pvlake.maps.CONTEXT_FILL_RGBA`) and this many show data."""

CONTEXT_TOLERANCE = 12
"""Largest summed RGB difference from the land colour of a context pixel."""

DATA_SATURATION = 40
"""A data pixel (an installation, a coloured area) is saturated: max - min of its RGB
channels above this. The context layer is grey (land, outlines, sea), never that."""

SLOW_CPU = 4
"""Chromium's CPU throttling rate for the slow-machine check: the embedded lonboard module
missed anywidget's 2 s deadline from a rate of 3 on an idle 2-core machine."""


def map_pixels(png: bytes) -> tuple[int, int]:
    """Pixels of a map screenshot that show the context layer (land), and the data."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)
    land = np.abs(rgb - np.array(CONTEXT_FILL_RGBA[:3])).sum(axis=1) <= CONTEXT_TOLERANCE
    data = (rgb.max(axis=1) - rgb.min(axis=1)) > DATA_SATURATION
    return int(land.sum()), int(data.sum())


def watch(page, allowed_prefix: str) -> dict[str, list]:
    """Block requests outside ``allowed_prefix`` and record what the page requested and
    what went wrong on it."""
    seen = {"blocked": [], "failed": [], "errors": [], "requested": []}

    def route(r):
        if r.request.url.startswith((allowed_prefix, "blob:", "data:")):
            r.continue_()
        else:
            seen["blocked"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("request", lambda req: seen["requested"].append(req.url.split("?")[0]))
    page.on("requestfailed", lambda req: seen["failed"].append(req.url))
    page.on("response", lambda res: seen["failed"].append(res.url) if res.status >= 400 else None)
    page.on("console", lambda msg: seen["errors"].append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    return seen


def problems_seen(seen: dict[str, list]) -> list[str]:
    return [f"{kind}: {seen[kind][:5]}" for kind in ("blocked", "failed", "errors") if seen[kind]]


def map_drawn(page, widget) -> bool:
    """Wait until the WebGL canvas of a map widget shows both the country context and the
    data at its initial view (polling screenshots of its box: deck.gl has no "drawn"
    event); False if it does not."""
    canvas = widget.locator("canvas").first
    canvas.wait_for(state="visible", timeout=MAP_TIMEOUT_MS)
    canvas.scroll_into_view_if_needed(timeout=MAP_TIMEOUT_MS)
    deadline = time.monotonic() + MAP_TIMEOUT_MS / 1000
    while min(map_pixels(page.screenshot(clip=canvas.bounding_box()))) < DRAWN_PIXELS:
        if time.monotonic() > deadline:
            return False
        page.wait_for_timeout(100)
    return True


def blank_maps(page, n_maps: int) -> list[str]:
    """The maps (of the first ``n_maps`` map widgets on the page) that did not show their
    context and their data."""
    widgets = page.locator(".widget-vbox").filter(has=page.locator("canvas"))
    found = []
    for i in range(n_maps):
        if not map_drawn(page, widgets.nth(i)):
            canvas = widgets.nth(i).locator("canvas").first
            land, data = map_pixels(page.screenshot(clip=canvas.bounding_box()))
            found.append(f"map {i + 1} of {n_maps}: {land} context pixels, {data} data pixels")
    return found


def maps_on(html: str) -> int:
    """Number of lonboard maps in a book page's embedded widget state."""
    found = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', html, re.S)
    if not found:
        return 0
    state = json.loads(found.group(1).replace("<\\/", "</"))["state"]
    return sum(m["state"].get("_anywidget_id") == "pvlake.maps.OfflineMap" for m in state.values())


def book_maps(sample_book) -> dict[str, int]:
    """Page name -> number of maps, for every chapter page of the book."""
    return {
        p.name: maps_on(p.read_text()) for p in sorted(sample_book.glob("*.html"))
        if p.name not in ("genindex.html", "search.html")
    }


def check_book_page(page, base: str, name: str, n_maps: int) -> list[str]:
    """Open a book page offline; its problems: requests blocked or failed, console errors,
    maps that did not draw or did not load parquet-wasm from the book itself."""
    seen = watch(page, base)
    page.goto(base + name, wait_until="load")
    problems = blank_maps(page, n_maps)
    if n_maps and f"{base}_static/pvlake/parquet_wasm_bg.wasm" not in seen["requested"]:
        problems.append("parquet-wasm not loaded from the book's _static/pvlake/")
    # late requests and errors (fonts, MathJax, the maps' workers) count too
    page.wait_for_load_state("networkidle")
    return problems + problems_seen(seen)


def test_every_book_page_opens_offline_and_its_maps_draw(chromium, book_server, sample_book):
    pages = book_maps(sample_book)
    assert {"intro.html", "reproducibility.html", "references.html"} <= set(pages)
    assert sum(n for name, n in pages.items() if name.startswith("harmonize-")) == 6, pages
    assert pages["context-context.html"] == 3, pages  # choropleth, H3 cells, installations
    # one browser context, as one reader: the book's scripts come from the HTTP cache after the first page
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    problems = {}
    for name, n_maps in pages.items():
        page = context.new_page()
        found = check_book_page(page, book_server, name, n_maps)
        if found:
            problems[name] = found
        page.close()
    context.close()
    assert not problems, json.dumps(problems, indent=1)


def test_book_maps_initialise_in_time_on_a_slow_cpu(chromium, book_server, sample_book):
    """anywidget rejects a map whose widget module has not loaded 2 s after the map's model
    was created ("[anywidget] Failed to initialize model."), which a busy machine reached
    when each map carried lonboard's whole module; the maps must initialise in time even
    with Chromium's CPU slowed down."""
    name = next(name for name, n in book_maps(sample_book).items() if n)
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    context.new_cdp_session(page).send("Emulation.setCPUThrottlingRate", {"rate": SLOW_CPU})
    problems = check_book_page(page, book_server, name, 1)
    context.close()
    assert not problems, problems


def test_exploration_notebook_runs_in_jupyterlab_and_shows_the_map(chromium, jupyterlab, sample_run, repo_root):
    import nbformat

    base, token, root = jupyterlab
    nb = nbformat.read(repo_root / "notebooks" / "explore.ipynb", as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = f"data_dir = {str(sample_run)!r}"
    nbformat.write(nb, root / "explore.ipynb")
    n_maps = sum("installations_map(" in c.source for c in nb.cells if c.cell_type == "code")

    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    seen = watch(page, base)
    page.goto(f"{base}lab/tree/explore.ipynb?token={token}", wait_until="domcontentloaded")
    # the notebook's own kernel has started: "Run All" any earlier asks for a kernel instead
    page.locator(".jp-StatusBar-Item", has_text=re.compile(r"^Python \(pvlake\) \| Idle$")).wait_for(
        timeout=MAP_TIMEOUT_MS)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
    blank = blank_maps(page, n_maps)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = [t for t in errors.all_inner_texts() if "Error" in t]
    context.close()
    assert n_maps == 2 and not blank, blank
    assert not tracebacks, tracebacks
    # the maps' front end and run-time assets came from the Jupyter server, nothing else was asked for
    for asset in (LONBOARD_MODULE, "parquet_wasm_bg.wasm"):
        assert f"{base}static/pvlake/{asset}" in seen["requested"], asset
    assert not problems_seen(seen), problems_seen(seen)


def test_user_guide_pages_open_offline_and_wide_tables_fit_the_page(chromium, book_server, sample_book):
    guide = sorted(p.name for p in (sample_book / "guide").glob("*.html"))
    assert {"download.html", "harmonize.html", "dedup.html", "lake.html", "book.html"} <= set(guide)
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        for name in ["intro.html"] + [f"guide/{g}" for g in guide]:
            problems = check_book_page(page, book_server, name, 0)
            # no table runs past the article's column (the data sources table once did)
            overflow = page.evaluate("""() => {
                const article = document.querySelector('.bd-article');
                const right = article.getBoundingClientRect().right;
                return [...article.querySelectorAll('table')]
                    .filter(t => t.getBoundingClientRect().right > right + 1
                                 || t.parentElement.scrollWidth > t.parentElement.clientWidth + 1)
                    .map(t => t.innerText.slice(0, 60));
            }""")
            assert not problems and not overflow, (name, problems, overflow)
    finally:
        context.close()
