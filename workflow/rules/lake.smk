from types import SimpleNamespace


TARGETS.append(str(LAYOUT.lake_summary()))

LAKE_CONFIG = config.get("lake") or {}


rule lake:
    """The lake's only writer: every layer published as one DuckLake snapshot, then
    compacted. One job writes, so `snakemake -j8` never meets the catalog's lock."""
    input:
        notebook="notebooks/lake.ipynb",
        # Every dataset's label files (or download provenance): the raw layer's input.
        raw=lambda wc: sorted({f for d in DATASETS for f in dataset_inputs(SimpleNamespace(dataset=d))}),
        staging=[str(LAYOUT.staging_parquet(d)) for d in DATASETS],
        reports=[str(LAYOUT.staging_report(d)) for d in DATASETS],
        prepared=str(LAYOUT.prepared_parquet()),
        # the files of the tables later stages declare (LAKE_TABLES, see the Snakefile)
        declared=[t["path"] for t in LAKE_TABLES],
    output:
        # Only the summary: Snakemake deletes a job's outputs before it runs, and the
        # catalog and data files must outlive every run (they hold the history).
        summary=str(LAYOUT.lake_summary()),
    log:
        notebook=str(LAYOUT.executed_notebook("lake", "lake")),
        text=str(LAYOUT.log("lake", "lake")),
    params:
        # The manifest entries decide what the raw layer reads.
        fingerprints=[MANIFEST[d].fingerprint for d in DATASETS],
        nb=notebook_params(
            data_dir=config["data_dir"],
            manifest=config["manifest"],
            catalog=LAKE_CONFIG.get("catalog"),
            data_path=LAKE_CONFIG.get("data_path"),
            s3=LAKE_CONFIG.get("s3") or {},
            tables=LAKE_TABLES,
        ),
    threads: 1
    resources:
        # 1,350,000 rows published with a peak of ~0.7 GB (bench_lake.py)
        mem_mb=3000,
        runtime=60,
    shell:
        '"$PYTHON" -m pvlake.notebook {input.notebook:q} {log.notebook:q}'
        " --params {params.nb:q} --log {log.text:q}"
