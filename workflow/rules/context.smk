# Context stage: the country and region of every installation, and the curated statistics
# per country and per coarse H3 cell (pvlake.context).
from pvlake.context import natural_earth_path

CONTEXT = config["context"]
CONTEXT_OUTPUTS = {
    "installations": LAYOUT.context_installations(),
    "countries": LAYOUT.country_stats(),
    "country_datasets": LAYOUT.country_datasets(),
    "h3": LAYOUT.h3_stats(),
    "report": LAYOUT.context_report(),
}
TARGETS.extend(str(p) for p in CONTEXT_OUTPUTS.values())

# What the lake publishes from this stage (its rule takes this list as it is).
LAKE_TABLES.extend([
    {"layer": "curated", "name": "pv_installations_context", "path": str(LAYOUT.context_installations()),
     "crs": "EPSG:4326", "exclude": ["bbox"],
     "comment": "Prepared installations with country_iso3, country_name, region_name, boundary_source, "
                "boundary_match, country_share, boundary_distance_m (curated/pv_installations_context.parquet)"},
    {"layer": "curated", "name": "country_stats", "path": str(LAYOUT.country_stats()), "crs": "EPSG:4326",
     "exclude": ["bbox"],
     "comment": "Installations, area, reported capacity, multi-dataset and border counts per country, "
                "with its boundary (curated/country_stats.parquet)"},
    {"layer": "curated", "name": "country_datasets", "path": str(LAYOUT.country_datasets()), "crs": None,
     "comment": "Installations per country and source dataset, share of the country each dataset maps "
                "(curated/country_datasets.parquet)"},
    {"layer": "curated", "name": "h3_stats", "path": str(LAYOUT.h3_stats()), "crs": "EPSG:4326", "exclude": ["bbox"],
     "comment": "Installations and area per coarse H3 cell, with its hexagon (curated/h3_stats.parquet)"},
])


rule context:
    """Country and region of every installation (Natural Earth offline, or Overture Maps
    divisions over HTTP), and the curated per-country and per-H3-cell tables."""
    input:
        notebook="notebooks/context.ipynb",
        prepared=str(LAYOUT.prepared_parquet()),
        # the local boundaries file (Natural Earth), so a new one reruns the stage; Overture
        # is read remotely at a pinned release
        boundaries=lambda wc: [CONTEXT["natural_earth_path"] or str(natural_earth_path())]
        if CONTEXT["boundaries"] == "natural_earth" else [],
    output:
        **{key: str(path) for key, path in CONTEXT_OUTPUTS.items()},
    log:
        notebook=str(LAYOUT.executed_notebook("context", "context")),
        text=str(LAYOUT.log("context", "context")),
    params:
        nb=notebook_params(data_dir=config["data_dir"], context=CONTEXT),
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    shell:
        '"$PYTHON" -m pvlake.notebook {input.notebook:q} {log.notebook:q}'
        " --params {params.nb:q} --log {log.text:q}"
