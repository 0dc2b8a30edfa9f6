"""pvlake.book: the assembled sources and the built book of the sample run."""

from __future__ import annotations

import json
import re

import pytest

from pvlake import book, maps
from pvlake.layout import Layout
from pvlake.manifest import active_datasets, load_manifest


@pytest.fixture(scope="module")
def sample_specs(sample_dir):
    manifest = load_manifest(sample_dir / "manifest.json")
    return [manifest[name] for name in active_datasets(manifest)]


def test_normalize_doi():
    assert book.normalize_doi("https://doi.org/10.1038/s41597-020-0469-8") == "10.1038/s41597-020-0469-8"
    assert book.normalize_doi("10.5281/zenodo.4059881") == "10.5281/zenodo.4059881"
    assert book.normalize_doi("https://github.com/qingfengxitu/ChinaPV") is None
    assert book.link("https://github.com/x/y") == "<https://github.com/x/y>"


def test_bibtex_has_one_entry_per_dataset_with_its_paper(sample_specs):
    from pybtex.database import parse_string

    bib = parse_string(book.bibtex(sample_specs), "bibtex")
    assert set(bib.entries) == {s.name for s in sample_specs}
    uk = bib.entries["uk_crowdsourced_pv_2020"]
    assert uk.fields["doi"] == "10.1038/s41597-020-00739-0"
    assert "harmonised, high-coverage" in uk.fields["title"]
    assert "10.5281/zenodo.4059881" in uk.fields["note"] and "CC-BY-4.0" in uk.fields["note"]


def test_locked_and_npm_versions(repo_root):
    locked = book.locked_versions(repo_root / "requirements.lock")
    assert locked["lonboard"] == "0.16.0" and locked["jupyter-book"] == "1.0.4.post1"
    npm = book.npm_versions(repo_root / "book" / "package-lock.json")
    assert npm["parquet-wasm"] == "0.7.1" and npm["@jupyter-widgets/html-manager"] == "1.0.15"


def test_executed_notebooks_leave_out_datasets_no_longer_in_the_manifest(tmp_path):
    layout = Layout(tmp_path)
    for stage, name, params in [("harmonize", "kept", {"dataset": "kept"}), ("harmonize", "gone", {"dataset": "gone"}),
                                ("dedup", "dedup", {}), ("zzz", "x", {})]:
        path = layout.executed_notebook(stage, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"cells": [], "metadata": {"papermill": {"parameters": params}}}))
    found = book.executed_notebooks(layout, {"kept"})
    assert list(found) == ["harmonize", "dedup", "zzz"]  # pipeline order, unknown stages last
    assert [p.stem for p in found["harmonize"]] == ["kept"]


def test_book_notebook_hides_only_the_default_parameters(tmp_path):
    nb = {"cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "x = 1", "outputs": []},
        {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "x = 2", "outputs": []},
    ], "metadata": {"widgets": {"state": "kept"}}}
    (tmp_path / "in.ipynb").write_text(json.dumps(nb))
    book.book_notebook(tmp_path / "in.ipynb", tmp_path / "out.ipynb")
    out = json.loads((tmp_path / "out.ipynb").read_text())
    assert out["cells"][0]["metadata"]["tags"] == ["parameters", "remove-cell"]
    assert out["cells"][1]["metadata"]["tags"] == ["injected-parameters"]
    assert out["metadata"]["widgets"] == {"state": "kept"}


@pytest.mark.workflow
def test_sample_book_has_a_chapter_per_stage_and_dataset(sample_book, sample_run, sample_specs):
    assert (sample_book / "index.html").exists()
    for spec in sample_specs:
        page = (sample_book / f"harmonize-{spec.name}.html").read_text()
        # the executed notebook, with its map's widget state embedded, not re-executed
        assert "application/vnd.jupyter.widget-state+json" in page
        # but not lonboard's 3.4 MB module: the book serves that once, from _static/pvlake/
        assert maps.LONBOARD_MODULE in page and len(page) < 1_000_000
        assert json.loads((sample_run / "staging" / f"{spec.name}.report.json").read_text())["rows_written"] > 0
    assert "harmonize" in (sample_book / "harmonize.html").read_text().lower()
    source = sample_book.parent / "source"
    assert (source / "_toc.yml").exists() and (source / "references.bib").exists()


@pytest.mark.workflow
def test_sample_book_loads_nothing_from_the_internet(sample_book):
    for page in sample_book.glob("*.html"):
        html = page.read_text()
        for url in re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="([^"]+)"', html):
            assert not re.match(r"(https?:)?//", url), f"{page.name} loads {url}"
    for asset in ["require.js", "anywidget.js", "@jupyter-widgets/html-manager/dist/embed-amd.js",
                  "mathjax/tex-mml-chtml.js", "pvlake/parquet_wasm_bg.wasm", "pvlake/earcut-worker.min.js",
                  f"pvlake/{maps.LONBOARD_MODULE}", "favicon.svg"]:
        assert (sample_book / "_static" / asset).is_file(), asset


@pytest.mark.workflow
def test_sample_book_reproducibility_page(sample_book, sample_run, sample_dir):
    page = (sample_book / "reproducibility.html").read_text()
    assert str(sample_run) in page  # the configuration used
    assert book.sha256_file(sample_dir / "manifest.json") in page
    gpkg = next((sample_dir / "global_harmonized_large_solar_farms_2020").glob("*WGS84.gpkg"))
    assert book.sha256_file(gpkg) in page  # input checksums of local datasets
    publish = sample_run / "lake" / "publish.json"
    if publish.exists():
        assert f"<td><p>{json.loads(publish.read_text())['snapshot_id']}</p></td>" in page
    assert "lonboard" in page and "0.16.0" in page and "parquet-wasm" in page


@pytest.mark.workflow
def test_sample_book_references_cite_every_paper(sample_book, sample_specs):
    references = (sample_book / "references.html").read_text()
    intro = (sample_book / "intro.html").read_text()
    for spec in sample_specs:
        assert book.normalize_doi(spec.entry["paper_doi"]) in references
        assert f"id{spec.name}" in intro or spec.name in intro


def test_build_html_keeps_the_previous_book_when_the_build_fails(tmp_path):
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_text("previous")
    source = tmp_path / "source"
    source.mkdir()
    (source / "_config.yml").write_text("title: broken\n")
    (source / "_toc.yml").write_text("format: jb-book\nroot: missing\n")
    with pytest.raises(RuntimeError, match="jupyter-book build failed"):
        book.build_html(source, html)
    assert (html / "index.html").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["html", "source"]  # no scratch left


# --- the user guide: docs/*.md rendered in the book -------------------------------------

from pvlake.book import GUIDE_ORDER, write_guide  # noqa: E402


def test_guide_pages_keep_links_to_each_other_and_name_repository_files(tmp_path):
    docs = tmp_path / "docs"
    (docs / "img").mkdir(parents=True)
    (docs / "img" / "a.png").write_bytes(b"png")
    (docs / "dedup.md").write_text("# Dedup\n\nSee [the lake](lake.md#snapshots), [config](../workflow/config/README.md), "
                                   "[`lib/pvlake/dedup.py`](../lib/pvlake/dedup.py), [site](https://example.org) "
                                   "and ![a map](img/a.png).\n")
    (docs / "lake.md").write_text("# Lake\n")
    (docs / "zeta.md").write_text("# Zeta\n")
    source = tmp_path / "source"
    source.mkdir()
    toc = write_guide(docs, source)
    assert toc == [{"file": "guide/dedup"}, {"file": "guide/lake"}, {"file": "guide/zeta"}]  # guide order, then by name
    text = (source / "guide" / "dedup.md").read_text()
    assert "[the lake](lake.md#snapshots)" in text and "[site](https://example.org)" in text
    assert "config (`workflow/config/README.md`)" in text and "`lib/pvlake/dedup.py`," in text
    assert "![a map](img/a.png)" in text and (source / "guide" / "img" / "a.png").exists()


def test_readme_is_a_front_door_and_every_manual_is_in_the_guide(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    docs = sorted(p.stem for p in (repo_root / "docs").glob("*.md"))
    assert set(docs) <= set(GUIDE_ORDER), "give a new manual its place in GUIDE_ORDER"
    # every relative link of the README and the manuals resolves on GitHub (in the tree)
    for page in [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if not re.match(r"^[a-z]+:", target) and not target.startswith("#"):
                assert (page.parent / target.split("#")[0]).exists(), (page.name, target)
    for stage in ("download", "harmonize", "dedup", "lake", "book", "benchmarks"):
        assert f"(docs/{stage}.md)" in readme, stage


def test_sample_book_has_the_user_guide(sample_book, repo_root):
    toc_pages = [p.stem for p in sorted((repo_root / "docs").glob("*.md"))]
    for stem in toc_pages:
        html = (sample_book / "guide" / f"{stem}.html").read_text()
        assert "User guide" in html
    intro = (sample_book / "index.html").read_text() if (sample_book / "index.html").exists() else ""
    assert "guide/" in (sample_book / "intro.html").read_text() + intro
