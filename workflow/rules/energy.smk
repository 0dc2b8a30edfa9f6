# Energy stage: the expected yield of every installation (pvlake.energy), the hourly
# profile per coarse H3 cell, and the model's checks (ModelChain, measured NREL power).
ENERGY = config["energy"]
ENERGY_OUTPUTS = {
    "table": LAYOUT.energy_parquet(),
    "profile": LAYOUT.energy_profile(),
    "report": LAYOUT.energy_report(),
    "validation": LAYOUT.energy_validation(),
}
TARGETS.extend(str(p) for p in ENERGY_OUTPUTS.values())

# What the lake publishes from this stage (its rule takes this list as it is).
LAKE_TABLES.extend([
    {"layer": "curated", "name": "pv_energy", "path": str(LAYOUT.energy_parquet()), "crs": None,
     "comment": "Expected yield per installation: capacity_kw (DC) and its source, array type, tilt/azimuth "
                "and their source, weather_source, annual_kwh, specific_yield_kwh_per_kwp, capacity_factor, "
                "kwh_01..kwh_12 (UTC months), flags with reasons (curated/pv_energy.parquet)"},
    {"layer": "curated", "name": "pv_energy_profile", "path": str(LAYOUT.energy_profile()), "crs": None,
     "comment": "Hourly AC power (kW) of the installations with a capacity, summed per coarse H3 cell, "
                "reference-year UTC hours (curated/pv_energy_profile.parquet)"},
])


rule energy:
    """Capacity, orientation and weather of every installation, its yield with pvlib's
    PVWatts-style chain, and the checks against ModelChain and measured power."""
    input:
        notebook="notebooks/energy.ipynb",
        prepared=str(LAYOUT.prepared_parquet()),
    output:
        **{k: str(v) for k, v in ENERGY_OUTPUTS.items()},
    log:
        notebook=str(LAYOUT.executed_notebook("energy", "energy")),
        text=str(LAYOUT.log("energy", "energy")),
    params:
        nb=notebook_params(data_dir=config["data_dir"], settings=ENERGY),
    threads: 1
    resources:
        mem_mb=3000,
        runtime=120,
    shell:
        '"$PYTHON" -m pvlake.notebook {input.notebook:q} {log.notebook:q}'
        " --params {params.nb:q} --log {log.text:q}"
