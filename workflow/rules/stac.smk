# STAC stage, search half: the satellite scenes over every installation (pvlake.stac).
STAC = config["stac"]
STAC_OUTPUTS = [LAYOUT.stac_items(), LAYOUT.stac_matches(), LAYOUT.stac_skipped(), LAYOUT.stac_report()]
TARGETS.extend(str(p) for p in STAC_OUTPUTS)

# What the lake publishes from this stage (its rule takes this list as it is).
LAKE_TABLES.extend([
    {"layer": "stac", "name": "items", "path": str(LAYOUT.stac_items()), "crs": "EPSG:4326",
     "comment": "Every STAC item the search found, once (stac-geoparquet: stac/items.parquet)"},
    {"layer": "stac", "name": "matches", "path": str(LAYOUT.stac_matches()), "crs": None,
     "comment": "Scenes selected per installation, catalogue, collection and period (stac/matches.parquet)"},
    {"layer": "stac", "name": "skipped", "path": str(LAYOUT.stac_skipped()), "crs": None,
     "comment": "Installations without a usable scene and why (stac/skipped.parquet)"},
])


rule stac:
    """Scenes over every installation: grouped searches of the manifest's catalogues,
    selection per period, the catalogue as stac-geoparquet."""
    input:
        notebook="notebooks/stac.ipynb",
        prepared=str(LAYOUT.prepared_parquet()),
        manifest=STAC["manifest"],
        catalogs=stac_catalog_files,
    output:
        catalogue=str(LAYOUT.stac_items()),
        matches=str(LAYOUT.stac_matches()),
        skipped=str(LAYOUT.stac_skipped()),
        report=str(LAYOUT.stac_report()),
    log:
        notebook=str(LAYOUT.executed_notebook("stac", "stac")),
        text=str(LAYOUT.log("stac", "stac")),
    params:
        nb=notebook_params(
            data_dir=config["data_dir"],
            stac_manifest=STAC["manifest"],
            settings={k: v for k, v in STAC.items() if k != "manifest"},
        ),
    threads: 1
    resources:
        # requests run in threads (stac.workers); 100,000 installations: ~1 GB (bench_stac.py)
        mem_mb=3000,
        runtime=120,
    shell:
        '"$PYTHON" -m pvlake.notebook {input.notebook:q} {log.notebook:q}'
        " --params {params.nb:q} --log {log.text:q}"
