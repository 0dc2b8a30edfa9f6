"""The built book and the exploration notebook in a real browser (headless Chromium).

Every request that leaves 127.0.0.1 is blocked, so a page that still needs a CDN fails
here as it would for a reader of the archived appendix with no internet.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.workflow

MAP_TIMEOUT_MS = 120_000


def drawn_pixels(png: bytes) -> int:
    """Pixels of a screenshot that differ from its most common colour (the background)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return int((np.abs(rgb.astype(int) - background).sum(axis=1) > 30).sum())


def watch(page, allowed_prefix: str) -> dict[str, list]:
    """Block requests outside ``allowed_prefix`` and record what went wrong on the page."""
    seen = {"blocked": [], "failed": [], "errors": [], "ok": []}

    def route(r):
        if r.request.url.startswith((allowed_prefix, "blob:", "data:")):
            r.continue_()
        else:
            seen["blocked"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("requestfailed", lambda req: seen["failed"].append(req.url))
    page.on("response", lambda res: (seen["failed"] if res.status >= 400 else seen["ok"]).append(res.url))
    page.on("console", lambda msg: seen["errors"].append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
    return seen


def map_canvas_drawn(page, canvas) -> int:
    """Drawn pixels in the map's WebGL canvas (a screenshot of its box on the page)."""
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(1500)  # let deck.gl finish its first frames after scrolling
    box = canvas.bounding_box()
    return drawn_pixels(page.screenshot(clip=box))


def book_pages(sample_book) -> list[str]:
    return sorted(p.name for p in sample_book.glob("*.html") if p.name not in ("genindex.html", "search.html"))


def test_every_book_page_opens_offline_and_its_maps_draw(chromium, book_server, sample_book):
    pages = book_pages(sample_book)
    with_maps = [p for p in pages if "application/vnd.jupyter.widget-view+json" in (sample_book / p).read_text()]
    assert {"intro.html", "reproducibility.html", "references.html"} <= set(pages)
    assert sum(p.startswith("harmonize-") for p in with_maps) == 6, with_maps
    problems = {}
    for name in pages:
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        seen = watch(page, book_server)
        page.goto(book_server + name, wait_until="load")
        if name in with_maps:
            canvas = page.locator(".widget-vbox canvas").first
            canvas.wait_for(state="visible", timeout=MAP_TIMEOUT_MS)
            if map_canvas_drawn(page, canvas) < 200:
                problems.setdefault(name, []).append("map canvas is blank")
            assert any(u.endswith("/_static/pvlake/parquet_wasm_bg.wasm") for u in seen["ok"]), name
        else:
            page.wait_for_load_state("networkidle")
        for kind in ("blocked", "failed", "errors"):
            if seen[kind]:
                problems.setdefault(name, []).append(f"{kind}: {seen[kind][:5]}")
        page.close()
    assert not problems, json.dumps(problems, indent=1)


def test_exploration_notebook_runs_in_jupyterlab_and_shows_the_map(chromium, jupyterlab, sample_run, repo_root):
    import nbformat

    base, token, root = jupyterlab
    nb = nbformat.read(repo_root / "notebooks" / "explore.ipynb", as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = f"data_dir = {str(sample_run)!r}"
    nbformat.write(nb, root / "explore.ipynb")

    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    seen = watch(page, base)
    page.goto(f"{base}lab/tree/explore.ipynb?token={token}", wait_until="domcontentloaded")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=MAP_TIMEOUT_MS)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=MAP_TIMEOUT_MS)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
    canvas = page.locator(".jp-OutputArea canvas").first
    canvas.wait_for(state="visible", timeout=MAP_TIMEOUT_MS)
    assert map_canvas_drawn(page, canvas) >= 200
    # the map's run-time assets came from the Jupyter server, not a CDN
    assert any(u.split("?")[0].endswith("/static/pvlake/parquet_wasm_bg.wasm") for u in seen["ok"]), seen["ok"][-20:]
    assert not [u for u in seen["blocked"] if "jsdelivr" in u or "unpkg" in u], seen["blocked"]
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert not [t for t in errors.all_inner_texts() if "Error" in t]
