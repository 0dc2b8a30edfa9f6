from pvlake.download import download_fingerprint


# Datasets not read in place are downloaded; harmonize takes their MANIFEST.json as input.
TARGETS.extend(str(LAYOUT.raw_manifest(d)) for d in DATASETS if MANIFEST[d].repo != "local")


rule download:
    """One dataset's files from its repository, verified, into <data_dir>/raw/<dataset>/
    with MANIFEST.json (the provenance) written last."""
    input:
        notebook="notebooks/download.ipynb",
    output:
        manifest=str(LAYOUT.raw_manifest("{dataset}")),
    log:
        notebook=str(LAYOUT.executed_notebook("download", "{dataset}")),
        text=str(LAYOUT.log("download", "{dataset}")),
    params:
        # Hash of the fields that decide what is fetched: editing keep_cols re-harmonizes
        # a dataset without downloading it again.
        fingerprint=lambda wc: download_fingerprint(MANIFEST[wc.dataset]),
        nb=lambda wc: notebook_params(
            dataset=wc.dataset,
            manifest=config["manifest"],
            data_dir=config["data_dir"],
            # Service base URLs and fetch settings: configuration, never secrets.
            repositories=config["repositories"],
            download=config["download"],
        ),
    threads: 1
    resources:
        # network-bound: a few files in flight (download.workers threads) and a long allowance
        mem_mb=1000,
        runtime=240,
    shell:
        '"$PYTHON" -m pvlake.notebook {input.notebook:q} {log.notebook:q}'
        " --params {params.nb:q} --log {log.text:q}"
