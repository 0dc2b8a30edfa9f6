# Cubes stage (STAC part 2): image chips, PV label and cloud masks for every installation
# with scenes, versioned in an Icechunk repository, and a baseline segmentation (pvlake.cubes).
from pvlake.sample_imagery import sample_catalogs

CUBES = config["cubes"]
# The embedded sample's catalogue ships no imagery: it is rendered into data_dir (rule
# sample_imagery) and the cubes stage reads the sample's asset hrefs from there.
SAMPLE_IMAGERY = {str(folder): str(LAYOUT.sample_imagery_dir() / name)
                  for name, folder in sample_catalogs(STAC["manifest"]).items()}
CUBES_SETTINGS = {**CUBES, "href_map": {**SAMPLE_IMAGERY, **(CUBES.get("href_map") or {})}}
CUBES_OUTPUTS = {
    "index": LAYOUT.cubes_index(),
    "skipped": LAYOUT.cubes_skipped(),
    "report": LAYOUT.cubes_report(),
    "scores": LAYOUT.baseline_scores(),
    "baseline": LAYOUT.baseline_report(),
}
TARGETS.extend(str(p) for p in CUBES_OUTPUTS.values())

# What the lake publishes from this stage (its rule takes this list as it is).
LAKE_TABLES.extend([
    {"layer": "cubes", "name": "chips", "path": str(LAYOUT.cubes_index()), "crs": "EPSG:4326",
     "comment": "Every chip of the Icechunk store cubes/: footprint, EPSG, pv_ids, scenes, dates, cloud and "
                "valid fractions, snapshot id (cubes/chips.parquet)"},
    {"layer": "cubes", "name": "skipped", "path": str(LAYOUT.cubes_skipped()), "crs": None,
     "comment": "Installations and chips left out of the cube and why (cubes/skipped.parquet)"},
    {"layer": "cubes", "name": "baseline_scores", "path": str(LAYOUT.baseline_scores()), "crs": None,
     "comment": "Spatial split and per-chip IoU, precision, recall, F1 of the baseline PV segmentation "
                "(cubes/baseline_scores.parquet)"},
])


rule sample_imagery:
    """Sentinel-2-like COGs for the scenes the cubes stage reads from the embedded sample's
    catalogue: only the blocks under the chips, deterministic, re-rendered only where the
    scenes, the chips or the installations changed."""
    input:
        catalogue=str(LAYOUT.stac_items()),
        matches=str(LAYOUT.stac_matches()),
        prepared=str(LAYOUT.prepared_parquet()),
    output:
        report=str(LAYOUT.sample_imagery_report()),
    log:
        text=str(LAYOUT.log("cubes", "sample_imagery")),
    params:
        data_dir=config["data_dir"],
        catalogs=json.dumps(SAMPLE_IMAGERY, sort_keys=True),
        chip_size_px=CUBES["chip_size_px"],
        resolution_m=CUBES["resolution_m"],
        max_dates=CUBES["max_dates"],
        workers=CUBES["workers"],
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        '"$PYTHON" -m pvlake.sample_imagery {params.data_dir:q} {params.catalogs:q} {output.report:q}'
        " --chip-size-px {params.chip_size_px} --resolution-m {params.resolution_m}"
        " --max-dates {params.max_dates} --workers {params.workers} > {log.text:q} 2>&1"


rule cubes:
    """Chips, label and cloud masks for every installation with scenes (odc-stac or
    stackstac, Dask), one Icechunk commit per run, the chip index, and the baseline
    segmentation's scores."""
    input:
        notebook="notebooks/cubes.ipynb",
        catalogue=str(LAYOUT.stac_items()),
        matches=str(LAYOUT.stac_matches()),
        skipped=str(LAYOUT.stac_skipped()),
        prepared=str(LAYOUT.prepared_parquet()),
        manifest=STAC["manifest"],
        imagery=[str(LAYOUT.sample_imagery_report())] if SAMPLE_IMAGERY else [],
    output:
        **{k: str(v) for k, v in CUBES_OUTPUTS.items()},
    log:
        notebook=str(LAYOUT.executed_notebook("cubes", "cubes")),
        text=str(LAYOUT.log("cubes", "cubes")),
    params:
        nb=notebook_params(data_dir=config["data_dir"], stac_manifest=STAC["manifest"], settings=CUBES_SETTINGS),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        '"$PYTHON" -m pvlake.notebook {input.notebook:q} {log.notebook:q}'
        " --params {params.nb:q} --log {log.text:q}"
