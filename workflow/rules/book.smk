# The book: the last step. It renders the executed notebooks of every stage included
# before it (so the Snakefile includes this file last) into the Jupyter Book thesis
# appendix, <book_dir>/html/index.html, the one output outside data_dir.

# Executed notebooks are their rules' logs, which cannot be inputs: the book depends on
# the stage outputs, which are rewritten together with their notebooks.
BOOK_STAGE_OUTPUTS = list(TARGETS)
BOOK_SOURCES = sorted(str(p) for ext in ("yml", "md", "svg") for p in Path("book").glob(f"*.{ext}") if p.name != "README.md")
BOOK_SOURCES += sorted(str(p) for p in Path("book/_css").glob("*"))
# The user guide: a manual page added or edited rebuilds the book.
BOOK_SOURCES += sorted(str(p) for p in Path("docs").rglob("*") if p.is_file())
BOOK_HTML = str(Path(config["book_dir"]) / "html" / "index.html")
TARGETS.append(BOOK_HTML)


rule book:
    """The executed stage notebooks, a reproducibility page and the dataset references
    as a self-contained Jupyter Book (no CDN: scripts come from book/node_modules)."""
    input:
        stages=BOOK_STAGE_OUTPUTS,
        sources=BOOK_SOURCES,
        npm_lock="book/package-lock.json",
        lock="requirements.lock",
        manifest=config["manifest"],
    output:
        html=BOOK_HTML,
    log:
        str(LAYOUT.log("book", "book")),
    params:
        data_dir=config["data_dir"],
        book_dir=lambda wc, output: str(Path(output.html).parent.parent),
        config=json.dumps(config, sort_keys=True),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        '"$PYTHON" -m pvlake.book --data-dir {params.data_dir:q} --manifest {input.manifest:q}'
        " --book-dir {params.book_dir:q} --template book --node-modules book/node_modules --docs docs"
        " --lock {input.lock:q} --config {params.config:q} > {log:q} 2>&1"
