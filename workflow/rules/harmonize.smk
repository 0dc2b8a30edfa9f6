rule harmonize:
    """One dataset's label files into the canonical GeoParquet schema."""
    input:
        manifest=config["manifest"],
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
    shell:
        "{PYTHON} -m pvlake.notebook {input.notebook} {log.notebook}"
        " --params {params.nb:q} --log {log.text}"
