TARGETS.append(str(LAYOUT.prepared_parquet()))
TARGETS.append(str(LAYOUT.dedup_report()))


rule dedup:
    """Exact and spatial duplicates across and within datasets, merged with provenance."""
    input:
        notebook="notebooks/dedup.ipynb",
        staging=[str(LAYOUT.staging_parquet(d)) for d in DATASETS],
    output:
        parquet=str(LAYOUT.prepared_parquet()),
        report=str(LAYOUT.dedup_report()),
    log:
        notebook=str(LAYOUT.executed_notebook("dedup", "dedup")),
        text=str(LAYOUT.log("dedup", "dedup")),
    params:
        python=PYTHON,
        nb=lambda wc: notebook_params(
            manifest=config["manifest"],
            data_dir=config["data_dir"],
            dedup={k: v for k, v in config["dedup"].items() if k != "ground_truth"},
            ground_truth=ground_truth_path(),
        ),
    shell:
        "{params.python:q} -m pvlake.notebook {input.notebook:q} {log.notebook:q}"
        " --params {params.nb:q} --log {log.text:q}"
