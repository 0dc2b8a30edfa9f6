TARGETS.extend(str(LAYOUT.staging_parquet(d)) for d in DATASETS)
TARGETS.extend(str(LAYOUT.staging_report(d)) for d in DATASETS)


rule harmonize:
    """One dataset's label files into the canonical GeoParquet schema."""
    input:
        # Not the manifest file itself: editing one entry must not rerun every dataset;
        # the entry's fingerprint (params) and its files (input) track what matters.
        notebook="notebooks/harmonize.ipynb",
        files=dataset_inputs,
    output:
        parquet=str(LAYOUT.staging_parquet("{dataset}")),
        report=str(LAYOUT.staging_report("{dataset}")),
    log:
        notebook=str(LAYOUT.executed_notebook("harmonize", "{dataset}")),
        text=str(LAYOUT.log("harmonize", "{dataset}")),
    params:
        # The entry's hash: editing one manifest entry reruns only that dataset.
        fingerprint=lambda wc: MANIFEST[wc.dataset].fingerprint,
        nb=lambda wc: notebook_params(
            dataset=wc.dataset,
            manifest=config["manifest"],
            data_dir=config["data_dir"],
            h3_resolution=config["h3_resolution"],
        ),
    threads: 1
    resources:
        # the dataset's features in memory: several times its label files on disk (bench_harmonize.py)
        mem_mb=lambda wc, input: int(1500 + 8 * input.size_mb),
        runtime=lambda wc, input: int(15 + input.size_mb / 20),
    shell:
        '"$PYTHON" -m pvlake.notebook {input.notebook:q} {log.notebook:q}'
        " --params {params.nb:q} --log {log.text:q}"
