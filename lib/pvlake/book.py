"""Book stage: the executed stage notebooks of the last run as a Jupyter Book appendix.

The committed sources in ``book/`` (configuration, introduction, references page) are
copied into ``<book_dir>/source/`` together with what the run produced: one chapter per
stage from its executed notebooks (not re-executed), the data-source and schema tables
the introduction includes, a BibTeX file of the dataset papers, and a reproducibility
page. jupyter-book 1 (Sphinx) then renders ``<book_dir>/html/``.

The HTML is self-contained: the scripts a page would fetch from CDNs (require.js, the
widget manager, anywidget, MathJax, lonboard's run-time assets) come from npm packages
pinned in ``book/package-lock.json`` and are copied into the book's ``_static`` folder
(:data:`NPM_ASSETS`), so the book works from any static file server with no internet.
lonboard's own module is served once from there too (:mod:`pvlake.maps`), not embedded
in every page with a map.

Run by the ``book`` rule::

    python -m pvlake.book --data-dir data --manifest data/sample/manifest.json \\
        --book-dir book/_build --template book --node-modules book/node_modules \\
        --lock requirements.lock --config '{...}'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

import yaml

from . import __version__
from .harmonize import SCHEMA, SCHEMA_DOC, dataset_root
from .io import sha256_file
from .layout import Layout
from .manifest import DatasetSpec, active_datasets, load_manifest
from .maps import ASSET_FOLDER, write_runtime_assets
from .sources import find_label_files

STAGE_ORDER = ("download", "harmonize", "dedup", "context", "energy", "forecast", "stac", "cubes", "lake")
"""Pipeline order of the chapters; a stage not listed comes after these, by name."""

WIDGET_FONTS = ("*.woff", "*.woff2", "*.ttf", "*.eot", "*.svg")
"""The widget manager's icon fonts (Font Awesome)."""

NPM_ASSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "require.js": ("requirejs/require.js", ()),
    "anywidget.js": ("anywidget/dist/index.js", ()),
    "@jupyter-widgets/html-manager/dist": ("@jupyter-widgets/html-manager/dist", ("embed-amd.js", *WIDGET_FONTS)),
    # the manager resolves its fonts next to its module id, @jupyter-widgets/html-manager,
    # or next to its file, depending on which of its chunks loads first: serve both places
    "@jupyter-widgets": ("@jupyter-widgets/html-manager/dist", WIDGET_FONTS),
    "mathjax": ("mathjax/es5", ("tex-mml-chtml.js", "output/chtml/fonts/woff-v2/*", "input/tex/extensions/**/*",
                                "a11y/*", "sre/**/*", "ui/*")),
}
"""Files under the book's ``_static``: destination -> (path in node_modules, glob patterns
of the files to take when it is a folder). The maps' assets are written by
:func:`pvlake.maps.write_runtime_assets` into ``_static/pvlake/``."""

DOI_PREFIXES = ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:")


def normalize_doi(value: str | None) -> str | None:
    """The bare DOI (``10.x/y``) of a DOI string or doi.org URL; None for anything else."""
    if not value:
        return None
    for prefix in DOI_PREFIXES:
        if value.lower().startswith(prefix):
            value = value[len(prefix):]
    return value if value.startswith("10.") else None


def link(value: str | None) -> str:
    """A Markdown link for a DOI or URL (empty for none)."""
    if not value:
        return ""
    doi = normalize_doi(value)
    return f"[{doi}](https://doi.org/{doi})" if doi else f"<{value}>"


# ---------------------------------------------------------------- bibliography


def _bibtex_text(value: str) -> str:
    # braces keep the case; these characters are special to (pybtex's) LaTeX parser
    return re.sub(r"([&%#$_])", r"\\\1", value).replace("{", "").replace("}", "")


def bibtex_entry(spec: DatasetSpec) -> str:
    """A ``@misc`` BibTeX entry for a dataset's paper (or, without one, the data).

    The manifest has titles and DOIs but no authors, so ``@misc`` (author optional)
    is the honest type; the key is the dataset name.
    """
    entry = spec.entry
    paper = entry.get("paper_doi")
    data = entry.get("doi")
    fields = {"title": "{" + _bibtex_text(entry.get("paper_title") or spec.name) + "}"}
    cited = paper or data
    if normalize_doi(cited):
        fields["doi"] = normalize_doi(cited)
    elif cited:
        fields["url"] = cited
    notes = []
    if paper and data:
        notes.append(f"Data: {normalize_doi(data) and 'https://doi.org/' + normalize_doi(data) or data}")
    if entry.get("licence"):
        notes.append(f"Licence: {entry['licence']}")
    if notes:
        fields["note"] = _bibtex_text(". ".join(notes))
    body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields.items())
    return f"@misc{{{spec.name},\n{body}\n}}\n"


def bibtex(specs: Collection[DatasetSpec]) -> str:
    """The BibTeX file of every dataset, in manifest order."""
    return "\n".join(bibtex_entry(s) for s in specs)


# ---------------------------------------------------------------- introduction tables


def datasets_table(specs: Collection[DatasetSpec], layout: Layout) -> str:
    """Markdown table of the data sources: citation, data DOI, licence, format, rows."""
    rows = ["| dataset | paper | data | licence | format | installations |", "|---|---|---|---|---|---:|"]
    for spec in specs:
        report_path = layout.staging_report(spec.name)
        written = json.loads(report_path.read_text())["rows_written"] if report_path.exists() else None
        rows.append(
            f"| `{spec.name}` | {{cite:p}}`{spec.name}` | {link(spec.entry.get('doi'))} "
            f"| {spec.entry.get('licence', 'not stated')} | {spec.label_fmt} "
            f"| {'' if written is None else f'{written:,}'} |"
        )
    return "\n".join(rows) + "\n"


def schema_table() -> str:
    """Markdown table of the canonical staging schema."""
    rows = ["| column | type | meaning |", "|---|---|---|"]
    types = {**SCHEMA, "geometry": "WKB"}
    rows += [f"| `{c}` | {types[c]} | {doc} |" for c, doc in SCHEMA_DOC.items()]
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------- chapters


def notebook_parameters(path: str | Path) -> dict:
    """The parameters papermill ran a notebook with."""
    meta = json.loads(Path(path).read_text(encoding="utf-8")).get("metadata", {})
    return meta.get("papermill", {}).get("parameters", {})


def stage_key(stage: str) -> tuple[int, str]:
    """Sort key: pipeline order, then unknown stages by name."""
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def executed_notebooks(layout: Layout, datasets: Collection[str]) -> dict[str, list[Path]]:
    """The last run's executed notebooks, by stage in pipeline order.

    A notebook run for a dataset the manifest no longer lists (its ``dataset``
    parameter) is a leftover of an earlier run and is left out.
    """
    pattern = layout.executed_notebook("*", "*").relative_to(layout.data_dir)
    found: dict[str, list[Path]] = {}
    for nb in sorted(layout.data_dir.glob(str(pattern))):
        dataset = notebook_parameters(nb).get("dataset")
        if dataset is None or dataset in datasets:
            found.setdefault(nb.parent.name, []).append(nb)
    return dict(sorted(found.items(), key=lambda kv: stage_key(kv[0])))


def book_notebook(source: str | Path, dest: str | Path) -> None:
    """Copy an executed notebook into the book, hiding the notebook's default parameters.

    papermill's injected-parameters cell (what the run used) stays visible; the
    defaults it overrode would only mislead.
    """
    nb = json.loads(Path(source).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    Path(dest).write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")


def stage_page(stage: str, notebooks: list[Path]) -> str:
    """The chapter page of a stage with one notebook per dataset (or other unit)."""
    names = ", ".join(f"`{nb.stem}`" for nb in notebooks)
    return (
        f"# {stage.capitalize()}\n\n"
        f"The `{stage}` stage ran its notebook (`notebooks/{stage}.ipynb`) once per unit of work: "
        f"{names}. Each section below is one of those executed notebooks, as the last run left it "
        "(the book does not re-run them).\n"
    )


def write_chapters(chapters: Mapping[str, list[Path]], source: Path) -> list[dict]:
    """Copy the chapters' notebooks into ``source`` (flat: ``<stage>-<name>.ipynb``) and
    return their table-of-contents entries."""
    toc = []
    for stage, notebooks in chapters.items():
        for nb in notebooks:
            book_notebook(nb, source / f"{stage}-{nb.stem}.ipynb")
        if len(notebooks) == 1:
            toc.append({"file": f"{stage}-{notebooks[0].stem}"})
            continue
        (source / f"{stage}.md").write_text(stage_page(stage, notebooks), encoding="utf-8")
        toc.append({
            "file": stage,
            "sections": [{"file": f"{stage}-{nb.stem}", "title": nb.stem} for nb in notebooks],
        })
    return toc


GUIDE_ORDER = (
    "setup", "manifest", "download", "harmonize", "dedup", "context", "stac", "cubes", "energy", "forecast",
    "lake", "scaleout", "book", "sample", "benchmarks", "testing",
)
"""Reading order of the user guide's pages (``docs/<name>.md``); others follow by name."""

GUIDE_FOLDER = "guide"

MARKDOWN_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+)\)")


def _repository_links_as_paths(markdown: str, page: Path, docs: Path) -> str:
    """Links from a guide page to repository files outside ``docs/`` (they work on GitHub)
    written as the path in code instead: the book has no page for them, and a link it
    cannot resolve fails the build."""

    def plain(match: re.Match) -> str:
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return match[0]
        resolved = (page.parent / target.split("#")[0]).resolve()
        if resolved.is_relative_to(docs.resolve()):
            return match[0]
        path = resolved.relative_to(docs.resolve().parent).as_posix() if resolved.is_relative_to(docs.resolve().parent) else target
        text = match["text"]
        return text if text.strip("`") == path else f"{text} (`{path}`)"

    return MARKDOWN_LINK.sub(plain, markdown)


def write_guide(docs: Path, source: Path) -> list[dict]:
    """Copy the user guide (``docs/*.md`` and the files they show) into ``source/guide/``
    and return its table-of-contents entries, in :data:`GUIDE_ORDER`."""
    if not docs.is_dir():
        return []
    dest = source / GUIDE_FOLDER
    shutil.copytree(docs, dest, ignore=shutil.ignore_patterns("*.md"))
    pages = sorted(docs.glob("*.md"), key=lambda p: (GUIDE_ORDER.index(p.stem) if p.stem in GUIDE_ORDER else len(GUIDE_ORDER), p.stem))
    for page in pages:
        text = _repository_links_as_paths(page.read_text(encoding="utf-8"), page, docs)
        (dest / page.name).write_text(text, encoding="utf-8")
    return [{"file": f"{GUIDE_FOLDER}/{p.stem}"} for p in pages]


def table_of_contents(chapters: list[dict], guide: list[dict] = ()) -> dict:
    """The jupyter-book ``_toc.yml``: introduction, stage chapters, the user guide,
    appendix pages."""
    parts = [{"caption": "Pipeline stages", "chapters": chapters}] if chapters else []
    if guide:
        parts.append({"caption": "User guide", "chapters": list(guide)})
    parts.append({"caption": "Provenance", "chapters": [{"file": "reproducibility"}, {"file": "references"}]})
    return {"format": "jb-book", "root": "intro", "parts": parts}


# ---------------------------------------------------------------- reproducibility


def locked_versions(lock: str | Path) -> dict[str, str]:
    """``name -> version`` of every package pinned in a pip-compile / uv lock file."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", Path(lock).read_text(), flags=re.M)
    return dict(sorted({name.lower(): version for name, version in pins}.items()))


def npm_versions(package_lock: str | Path) -> dict[str, str]:
    """Versions of the npm packages the book serves (the direct dependencies)."""
    packages = json.loads(Path(package_lock).read_text())["packages"]
    return {name: packages[f"node_modules/{name}"]["version"] for name in sorted(packages[""]["dependencies"])}


def input_files(spec: DatasetSpec, layout: Layout) -> tuple[str, list[dict]]:
    """Where a dataset's input checksums come from, and one record per input file.

    A downloaded dataset has the download stage's provenance (``MANIFEST.json``: path,
    size, sha256, source URL, retrieval time); a local one gets the sha256 of the files
    its filters select, computed here.
    """
    provenance = layout.raw_manifest(spec.name)
    if spec.repo != "local":
        if not provenance.exists():
            return f"no provenance yet ({provenance.name} missing)", []
        return f"download provenance `{provenance.name}`", json.loads(provenance.read_text())["files"]
    paths = sorted({lf.path for lf in find_label_files(spec, dataset_root(spec, layout))})
    return "local files selected by the manifest, hashed at book build", [
        {"path": p.name, "size_bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths
    ]


def markdown_records(records: list[dict]) -> str:
    """A Markdown table of dict records (columns: every key, in first-seen order)."""
    if not records:
        return "_none_\n"
    columns = list(dict.fromkeys(k for r in records for k in r))

    def cell(v) -> str:
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in records]
    return "\n".join(lines) + "\n"


def run_date(chapters: Mapping[str, list[Path]]) -> str:
    """When the run ended: the latest end time papermill recorded in its notebooks."""
    ends = [
        json.loads(nb.read_text(encoding="utf-8"))["metadata"].get("papermill", {}).get("end_time")
        for notebooks in chapters.values() for nb in notebooks
    ]
    ends = [e for e in ends if e]
    return max(ends) if ends else "no stage notebook in this run"


def git_commit(repo: str | Path) -> str:
    """The checked-out commit (with ``+ local changes`` when the tree is dirty), or 'unknown'."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" + local changes" if dirty.stdout.strip() else "")


def _dropdown(title: str, body: str) -> str:
    return f":::{{dropdown}} {title}\n{body}\n:::\n"


def reproducibility_page(
    layout: Layout,
    manifest_path: Path,
    specs: Collection[DatasetSpec],
    config: Mapping,
    chapters: Mapping[str, list[Path]],
    lock: Path,
    package_lock: Path,
) -> str:
    """The reproducibility page: run, code, configuration, inputs, lake snapshot, packages."""
    publish = layout.lake_summary()
    snapshot = json.loads(publish.read_text()).get("snapshot_id") if publish.exists() else None
    parts = [
        "# Reproducibility\n",
        "Everything on this page was recorded from the run that produced this book. To reproduce it, "
        "check out the commit, then run the [commands in the introduction](intro.md) with this configuration.\n",
        "## Run\n",
        markdown_records([
            {"item": "run ended (UTC, last stage notebook)", "value": run_date(chapters)},
            {"item": "code (git commit)", "value": git_commit(package_lock.parent)},
            {"item": "pvlake", "value": __version__},
            {"item": "Python", "value": f"{platform.python_version()} ({platform.system()} {platform.machine()})"},
            {"item": "DuckLake snapshot id", "value": snapshot if snapshot is not None
             else "not published (the run has no lake publish yet)"},
        ]),
        "## Configuration\n",
        "```yaml\n" + yaml.safe_dump(dict(config), sort_keys=True) + "```\n",
        "## Manifest\n",
        f"`{manifest_path}` (sha256 `{sha256_file(manifest_path)}`), datasets used: "
        + ", ".join(f"`{s.name}`" for s in specs) + ".\n",
        _dropdown("Manifest entries used", "```json\n" + json.dumps({s.name: s.entry for s in specs}, indent=2) + "\n```"),
        "## Input checksums\n",
    ]
    for spec in specs:
        origin, records = input_files(spec, layout)
        parts += [f"### `{spec.name}`\n", f"From the {origin}.\n", markdown_records(records)]
    parts += [
        "## Stage notebooks\n",
        markdown_records([
            {"stage": stage, "notebook": nb.stem, **{k: nb_meta.get(k) for k in ("start_time", "duration")}}
            for stage, notebooks in chapters.items() for nb in notebooks
            for nb_meta in [json.loads(nb.read_text(encoding="utf-8"))["metadata"].get("papermill", {})]
        ]),
        "## Package versions\n",
        f"Python packages pinned in `{lock.name}` (installed by the set-up script) and npm packages pinned "
        f"in `book/{package_lock.name}` (the scripts this book serves itself).\n",
        markdown_records([{"npm package": n, "version": v} for n, v in npm_versions(package_lock).items()]),
        _dropdown(f"All {len(locked_versions(lock))} Python packages",
                  markdown_records([{"package": n, "version": v} for n, v in locked_versions(lock).items()])),
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------- assets and build


def copy_npm_assets(node_modules: str | Path, static: str | Path) -> None:
    """Copy :data:`NPM_ASSETS` into a folder Sphinx copies into ``_static``.

    Not into the source's own ``_static``: jupyter-book would load every script found
    there on every page.

    Raises
    ------
    FileNotFoundError
        When the npm packages are not installed (run the set-up script).
    """
    node_modules = Path(node_modules)
    if not node_modules.is_dir():
        raise FileNotFoundError(f"{node_modules} missing: run `bash workflow/scripts/setup.sh` (npm ci in book/)")
    for dest, (relpath, patterns) in NPM_ASSETS.items():
        source = node_modules / relpath
        files = {p: Path(static) / dest / p.relative_to(source) for pat in patterns for p in source.glob(pat)
                 if p.is_file()} if patterns else {source: Path(static) / dest}
        if not files or not all(src.exists() for src in files):
            raise FileNotFoundError(f"{source} incomplete: run `bash workflow/scripts/setup.sh` (npm ci in book/)")
        for src, target in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)


def assemble(
    layout: Layout,
    manifest_path: Path,
    config: Mapping,
    template: Path,
    source: Path,
    node_modules: Path,
    lock: Path,
    docs: Path = Path("docs"),
) -> dict[str, list[Path]]:
    """Write the complete book source into ``source`` (emptied first): the committed
    template, the run's chapters, the user guide from ``docs``, the generated pages.

    Returns
    -------
    dict
        The chapters: stage -> executed notebooks.
    """
    if source.exists():
        shutil.rmtree(source)
    shutil.copytree(template, source, ignore=shutil.ignore_patterns("node_modules", "_build", "package*.json", "README.md"))
    manifest = load_manifest(manifest_path)
    specs = [manifest[name] for name in active_datasets(manifest)]
    chapters = executed_notebooks(layout, {s.name for s in specs})
    toc = table_of_contents(write_chapters(chapters, source), write_guide(docs, source))
    (source / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False), encoding="utf-8")
    (source / "references.bib").write_text(bibtex(specs), encoding="utf-8")
    (source / "_datasets.md").write_text(datasets_table(specs, layout), encoding="utf-8")
    (source / "_schema.md").write_text(schema_table(), encoding="utf-8")
    (source / "reproducibility.md").write_text(
        reproducibility_page(layout, manifest_path, specs, config, chapters, lock, template / "package-lock.json"),
        encoding="utf-8",
    )
    copy_npm_assets(node_modules, source / "_vendor")
    write_runtime_assets(node_modules, source / "_vendor" / ASSET_FOLDER)
    return chapters


def jupyter_book_command() -> str:
    """The ``jupyter-book`` script of this environment (never one found elsewhere on PATH)."""
    return str(Path(sys.executable).with_name("jupyter-book"))


def build_html(source: Path, html_dir: Path) -> Path:
    """Render ``source`` with jupyter-book into ``html_dir``, replacing it as a whole.

    The book is built in a scratch folder next to ``html_dir`` and swapped in only when
    the build succeeded, so a failed build leaves the previous book, and a rebuilt one
    has no stale pages. Sphinx warnings fail the build.

    Returns
    -------
    pathlib.Path
        ``html_dir / "index.html"``.
    """
    scratch = html_dir.parent / f".build-{os.getpid()}"
    old = html_dir.parent / f".old-{os.getpid()}"
    try:
        run = subprocess.run(
            [jupyter_book_command(), "build", str(source), "--path-output", str(scratch), "-W", "--keep-going", "-q"],
            capture_output=True, text=True,
        )
        if run.returncode != 0:
            raise RuntimeError(f"jupyter-book build failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
        if html_dir.exists():
            os.replace(html_dir, old)
        os.replace(scratch / "_build" / "html", html_dir)
    finally:
        for tmp in (scratch, old):
            if tmp.exists():
                shutil.rmtree(tmp)
    return html_dir / "index.html"


REQUIREJS_CONFIG_JS = (
    "var require = {baseUrl: new URL("
    "(document.documentElement.dataset.content_root ?? './') + '_static/', document.baseURI).href};"
)
"""require.js configuration (a global ``require`` object before require.js loads): the
widget manager's ``require(["anywidget"])`` then finds ``_static/anywidget.js`` from
any page, and the manager's icon fonts resolve under ``_static/``."""


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    # sphinx-thebe 0.3.1 and sphinx-togglebutton register their inline scripts once per
    # read pass, and jupyter-book 1 runs two: the second `const THEBE_JS_URL` is a
    # JavaScript error on every page.
    scripts = context.get("script_files", [])
    seen = set()
    unique = []
    for script in scripts:
        # the second copy of an inline script has filename '' instead of None
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app) -> dict:
    """Sphinx extension of the book (``sphinx.extra_extensions`` in ``book/_config.yml``)."""
    app.add_js_file(None, body=REQUIREJS_CONFIG_JS, priority=100)
    app.add_css_file("pvlake.css")
    # early: a handler that returns a template name ends the event for later ones
    app.connect("html-page-context", _unique_scripts, priority=1)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--book-dir", required=True, help="gets source/ (assembled) and html/ (the book)")
    parser.add_argument("--template", default="book", help="committed book sources")
    parser.add_argument("--node-modules", default="book/node_modules")
    parser.add_argument("--lock", default="requirements.lock")
    parser.add_argument("--docs", default="docs", help="the user guide's pages")
    parser.add_argument("--config", default="{}", help="the run's configuration as JSON")
    args = parser.parse_args(argv)
    book_dir = Path(args.book_dir)
    assemble(
        Layout(args.data_dir), Path(args.manifest), json.loads(args.config), Path(args.template),
        book_dir / "source", Path(args.node_modules), Path(args.lock), Path(args.docs),
    )
    print(f"book: {build_html(book_dir / 'source', book_dir / 'html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
