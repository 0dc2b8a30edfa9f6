"""Screenshots of the built book's maps for the README (headless Debian Chromium).

    .venv/bin/python workflow/scripts/book_screenshots.py book/_build/html docs/screenshots

Serves the book on 127.0.0.1, blocks every other address, and saves one PNG per page
given (default: the UK harmonize chapter and the dedup chapter), cropped to the map and
its legend.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("pages", nargs="*", default=["harmonize-uk_crowdsourced_pv_2020", "harmonize-chn_med_res_pv_2024"])
    args = parser.parse_args()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(args.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for name in args.pages:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith((base, "blob:")) else r.abort())
            page.goto(f"{base}{name}.html")
            widget = page.locator(".widget-vbox:has(canvas)").first
            widget.locator("canvas").first.wait_for(state="visible", timeout=120_000)
            widget.scroll_into_view_if_needed()
            page.wait_for_timeout(3000)
            widget.screenshot(path=str(args.out / f"{name}.png"))
            print(args.out / f"{name}.png")
        browser.close()
    server.shutdown()


if __name__ == "__main__":
    main()
