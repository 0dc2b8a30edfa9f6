# Forecasting stage: intraday and day-ahead forecasts of the measured NREL systems, scored
# on a rolling origin against the standard baselines (pvlake.forecast); the trained
# day-ahead model and its forecast for the installations. Needs only the prepared
# installations (and the energy stage's settings), so it runs alongside the other stages.
FORECAST = config["forecast"]
FORECAST_OUTPUTS = {
    "eval": LAYOUT.forecast_eval(),
    "scores": LAYOUT.forecast_scores(),
    "report": LAYOUT.forecast_report(),
    "pv_forecast": LAYOUT.pv_forecast(),
    "model": LAYOUT.forecast_model(),
    "model_metadata": LAYOUT.forecast_model_metadata(),
}
TARGETS.extend(str(p) for p in FORECAST_OUTPUTS.values())

# What the lake publishes from this stage (its rule takes this list as it is).
LAKE_TABLES.extend([
    {"layer": "curated", "name": "forecast_eval", "path": str(LAYOUT.forecast_eval()), "crs": None,
     "comment": "Every forecast of the rolling-origin evaluation: system, setting (issue_time = issue-time "
                "information only; perfect_prognosis = observed weather stands in for a forecast, an upper "
                "bound), method, product, fold, issue_time, target_time (hour start, UTC), horizon_h, "
                "forecast_w, measured_w, daylight (curated/forecast_eval.parquet)"},
    {"layer": "curated", "name": "forecast_scores", "path": str(LAYOUT.forecast_scores()), "crs": None,
     "comment": "MAE, RMSE, mean bias (% of capacity) and skill vs smart persistence per system, setting, "
                "product, hours (daylight/all), horizon and method (curated/forecast_scores.parquet)"},
    {"layer": "curated", "name": "pv_forecast", "path": str(LAYOUT.pv_forecast()), "crs": None,
     "comment": "Day-ahead relative output (kW/kWp) per installation and hour of forecast.apply_date, from "
                "the model trained on a few NREL systems in Colorado (an extrapolation elsewhere), with the "
                "pvlib chain and clear-sky power on the same weather (curated/pv_forecast.parquet)"},
])


rule forecast:
    """Rolling-origin evaluation of persistence, smart persistence, climatology, the pvlib
    chain and gradient-boosted trees in two labelled settings; the saved day-ahead model
    and its forecast for every installation."""
    input:
        notebook="notebooks/forecast.ipynb",
        prepared=str(LAYOUT.prepared_parquet()),
    output:
        **{k: str(v) for k, v in FORECAST_OUTPUTS.items()},
    log:
        notebook=str(LAYOUT.executed_notebook("forecast", "forecast")),
        text=str(LAYOUT.log("forecast", "forecast")),
    params:
        nb=notebook_params(data_dir=config["data_dir"], settings=FORECAST, energy=config["energy"]),
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        '"$PYTHON" -m pvlake.notebook {input.notebook:q} {log.notebook:q}'
        " --params {params.nb:q} --log {log.text:q}"
