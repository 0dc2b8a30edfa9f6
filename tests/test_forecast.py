"""The forecasting stage (pvlake.forecast): no leakage, time splits, baselines, scores,
the Open-Meteo client at the protocol level, and the sample run's outputs."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from pvlake import energy as en
from pvlake import forecast as fc
from pvlake.lake import connect_lake
from pvlake.layout import Layout
from pvlake.sources import measured as ms
from pvlake.sources import open_meteo as om
from pvlake.sources import weather as wx
from pvlake.sources.http import http_session

warnings.filterwarnings("ignore", category=RuntimeWarning)

SERF = ms.NREL_SYSTEMS["serf_east"]
SETTINGS = fc.ForecastSettings()
ISSUE_TIME_COLUMNS = sorted(set(fc.FEATURES[("intraday", "issue_time")]) | set(fc.FEATURES[("day_ahead", "issue_time")]))
WEATHER_COLUMNS = ["kt_ghi", "temp_air", "k_physical"]


@pytest.fixture(scope="module")
def serf() -> fc.SystemSeries:
    energy = en.EnergySettings()
    return fc.system_series(SERF, energy.model, en.ValidationSettings(), energy.clearsky)


def all_rows(series: fc.SystemSeries) -> pd.DataFrame:
    rows = [fc.forecast_rows(series.hourly.index, p, SETTINGS, series.system.longitude).assign(product=p)
            for p in fc.PRODUCTS]
    return pd.concat(rows, ignore_index=True)


def same(a: pd.DataFrame, b: pd.DataFrame) -> pd.Series:
    """Row by row: every value equal (NaN equal to NaN)."""
    return ((a == b) | (a.isna() & b.isna())).all(axis=1)


# ------------------------------------------------------------------ no leakage


def test_no_feature_sees_a_planted_future_power_value(serf):
    """A huge power value planted in one hour changes no feature of a forecast issued before
    that hour has ended, and does change the features issued right after (so the check can
    see a leak)."""
    rows = all_rows(serf)
    capacity = 5.0
    planted_hour = pd.Timestamp("2016-08-20 18:00", tz="UTC")
    planted = serf.hourly.copy()
    planted.loc[planted_hour, ["measured_kw", "raw_kw"]] = 1000.0
    before = fc.features(serf.hourly, rows, capacity, SETTINGS)
    after = fc.features(planted, rows, capacity, SETTINGS)
    known = rows["issue_time"] >= planted_hour + pd.Timedelta("1h")
    unchanged = same(before, after)
    assert unchanged[~known].all(), rows[~known & ~unchanged].head()
    assert not unchanged[known & (rows["issue_time"] == planted_hour + pd.Timedelta("1h"))].any()


def test_no_feature_sees_a_planted_future_sample_through_the_cleaning(serf):
    """The same from the raw 15-minute samples: one planted sample, through the hourly
    means, reaches no forecast issued before it was measured, although it changes
    pvanalytics' day/night flags of earlier days (which only select the hours trained on
    and scored)."""
    power = ms.read_measured_power(SERF)
    stamp = pd.Timestamp("2016-08-20 18:30", tz="UTC")
    planted = power.copy()
    planted[stamp] = 3 * power.max()
    hourly = {}
    for name, series in (("before", power), ("after", planted)):
        flags = ms.quality_flags(series, SERF.freq)
        hourly[name] = serf.hourly.assign(measured_kw=fc.hourly_measured(series, flags, SERF.freq),
                                          raw_kw=fc.hourly_raw(series, SERF.freq))
        hourly[f"{name} flags"] = flags
    rows = all_rows(serf)
    before = fc.features(hourly["before"], rows, 5.0, SETTINGS)
    after = fc.features(hourly["after"], rows, 5.0, SETTINGS)
    unchanged = same(before, after)
    assert unchanged[rows["issue_time"] < stamp].all()
    assert not unchanged.all()
    earlier = hourly["before flags"].index < stamp - pd.Timedelta("1D")
    assert (hourly["before flags"]["night"] != hourly["after flags"]["night"])[earlier].any()


def test_no_issue_time_feature_sees_weather_and_setting_2_sees_only_its_target_hour(serf):
    rows = all_rows(serf)
    hour = pd.Timestamp("2016-08-20 19:00", tz="UTC")
    planted = serf.hourly.copy()
    planted.loc[hour, ["ghi", "temp_air", "physical_per_kw"]] = [5000.0, 80.0, 9.0]
    before = fc.features(serf.hourly, rows, 5.0, SETTINGS)
    after = fc.features(planted, rows, 5.0, SETTINGS)
    assert same(before[ISSUE_TIME_COLUMNS], after[ISSUE_TIME_COLUMNS]).all()
    changed = ~same(before[WEATHER_COLUMNS], after[WEATHER_COLUMNS])
    assert changed.any() and (rows.loc[changed, "target_time"] == hour).all()


def test_timestamp_check_finds_the_daylight_saving_clock_and_its_correction():
    shifts = fc.timestamp_shifts(ms.NREL_SYSTEMS["system_50"])
    assert shifts["transitions"] == 5 and len(shifts["as labelled"]) == 5 and shifts["as read"] == []
    assert fc.timestamp_shifts(SERF)["as labelled"] == []


def test_settings_from_config_and_their_checks():
    settings = fc.ForecastSettings.from_config({"systems": ["serf_east"], "ml": {"max_iter": 10},
                                                "intraday_horizons_h": [1, 3]})
    assert settings.systems == ("serf_east",) and settings.intraday_horizons_h == (1, 3)
    assert settings.ml["max_iter"] == 10 and settings.ml["max_leaf_nodes"] == SETTINGS.ml["max_leaf_nodes"]
    with pytest.raises(ValueError, match="forecast.systems"):
        fc.ForecastSettings.from_config({"systems": ["system_99"]})
    with pytest.raises(ValueError, match="gap_days"):
        fc.ForecastSettings.from_config({"gap_days": 0.1})


# ------------------------------------------------------------------ rows and splits


def test_forecast_rows_horizons_and_issue_times():
    hours = pd.date_range("2016-07-01", "2016-07-10", freq="h", tz="UTC")
    intraday = fc.forecast_rows(hours, "intraday", SETTINGS, -105.17)
    assert sorted(intraday["horizon_h"].unique()) == [1, 2, 3, 4, 5, 6]
    gap = intraday["target_time"] + pd.Timedelta("1h") - intraday["issue_time"]
    assert (gap == pd.to_timedelta(intraday["horizon_h"], unit="h")).all()
    day_ahead = fc.forecast_rows(hours, "day_ahead", SETTINGS, -105.17)
    # issued at local standard midnight (UTC-7) for the next local day: 25-48 h to the hours' ends
    assert (day_ahead["issue_time"].dt.hour == 7).all()
    assert day_ahead["horizon_h"].min() == 25 and day_ahead["horizon_h"].max() == 48
    assert day_ahead.groupby("issue_time").size().iloc[:-1].eq(24).all()  # the data end cuts the last day
    later = fc.forecast_rows(hours, "day_ahead", dataclasses.replace(SETTINGS, day_ahead_issue_hour=10), -105.17)
    assert later["horizon_h"].min() == 15 and later["horizon_h"].max() == 38


def test_time_folds_train_gap_then_test(serf):
    folds = fc.time_folds(serf.hourly["measured_kw"], SETTINGS)
    assert len(folds) == SETTINGS.folds
    for a, b in zip(folds, folds[1:]):
        assert a.test_end == b.test_start
    for f in folds:
        assert f.test_start - f.train_end == pd.Timedelta(days=SETTINGS.gap_days)
        assert f.test_end > f.test_start
    assert folds[-1].test_end > serf.hourly["measured_kw"].dropna().index[-1]
    with pytest.raises(ValueError, match="too few"):
        fc.time_folds(serf.hourly["measured_kw"].iloc[: 24 * 20], SETTINGS)


def test_evaluation_trains_only_on_hours_before_each_fold(serf, monkeypatch):
    seen = []
    real = fc.fit_trees

    def spy(feats, relative, columns, settings):
        seen.append(feats.index)
        return real(feats, relative, columns, settings)

    monkeypatch.setattr(fc, "fit_trees", spy)
    evaluation = fc.evaluate_system(serf, SETTINGS, progress=False)
    rows = {p: fc.forecast_rows(serf.hourly.index, p, SETTINGS, SERF.longitude) for p in fc.PRODUCTS}
    fits = iter(seen)
    for product in fc.PRODUCTS:
        for fold in evaluation.folds:
            for _ in fc.SETTINGS:
                trained = rows[product].loc[next(fits)]
                assert (trained["target_time"] + pd.Timedelta("1h") <= fold.train_end).all()
    tested = evaluation.forecasts
    for fold in evaluation.folds:
        part = tested[tested["fold"] == fold.number]
        assert part["issue_time"].min() >= fold.test_start and part["issue_time"].max() < fold.test_end
    # every method scored on the same pairs, in both settings; the physical chain only in setting 2
    counts = tested.groupby(["setting", "method"]).size()
    assert counts.nunique() == 1
    assert "physical" not in tested.loc[tested["setting"] == "issue_time", "method"].unique()


# ------------------------------------------------------------------ baselines and scores


def test_smart_persistence_carries_the_clear_sky_index():
    hours = pd.date_range("2016-07-01", periods=24 * 6, freq="h", tz="UTC")
    solar = np.clip(np.sin(2 * np.pi * ((hours.hour - 7 + 24) % 24) / 24 - np.pi / 2), 0, None)
    hourly = pd.DataFrame({"measured_kw": 0.6 * solar * 4.0, "raw_kw": 0.6 * solar * 4.0, "clear_per_kw": solar,
                           "ghi": 0.0, "ghi_clear": 0.0, "temp_air": 20.0, "physical_per_kw": solar,
                           "elevation_deg": 0.0, "cos_aoi": 0.0}, index=hours)
    for product in fc.PRODUCTS:
        rows = fc.forecast_rows(hours, product, SETTINGS, -105.0)
        feats = fc.features(hourly, rows, 4.0, SETTINGS)
        made = fc.baselines(feats, pd.Series(0.6, index=range(24)), pd.DatetimeIndex(rows["target_time"]), product)
        truth = hourly["measured_kw"].reindex(rows["target_time"]).to_numpy() / 4.0
        defined = np.isfinite(made["smart_persistence"])
        assert defined.mean() > 0.8
        np.testing.assert_allclose(made["smart_persistence"][defined], truth[defined], atol=1e-9)
        np.testing.assert_allclose(made["climatology"], truth, atol=1e-9)


def test_scores_and_skill_by_hand():
    t = pd.date_range("2016-07-01 12:00", periods=4, freq="h", tz="UTC")
    base = {"system": "s", "setting": "issue_time", "product": "intraday", "fold": 1, "issue_time": t, "target_time": t,
            "horizon_h": 1, "measured_w": [100.0, 200.0, 0.0, 300.0], "daylight": [True, True, False, True]}
    frame = pd.concat([pd.DataFrame({**base, "method": "smart_persistence", "forecast_w": [200.0, 200.0, 0.0, 100.0]}),
                       pd.DataFrame({**base, "method": "ml", "forecast_w": [150.0, 200.0, 0.0, 300.0]})])
    table = fc.score(frame, {"s": 1.0}).set_index(["hours", "method"])
    ml, sp = table.loc[("daylight", "ml")], table.loc[("daylight", "smart_persistence")]
    assert ml["n"] == 3 and ml["mae_pct"] == pytest.approx(100 * 50 / 3 / 1000)
    assert ml["rmse_pct"] == pytest.approx(100 * np.sqrt(2500 / 3) / 1000)
    assert sp["mbe_pct"] == pytest.approx(100 * (100 - 200) / 3 / 1000)
    assert ml["skill"] == pytest.approx(1 - np.sqrt(2500 / 3) / np.sqrt((100 ** 2 + 200 ** 2) / 3))
    assert table.loc[("all", "ml"), "n"] == 4 and sp["skill"] == 0


# ------------------------------------------------------------------ Open-Meteo at the protocol level


def session():
    return http_session(attempts=3, timeout_s=(5.0, 10.0))


def test_open_meteo_forecast_request_parse_and_cache(open_meteo_server, tmp_path):
    cache = om.cache_file(tmp_path, "cell", "2023-06-21", "2023-06-22")
    frame = om.get_open_meteo_forecast(39.74, -105.18, "2023-06-21", "2023-06-22", cache,
                                       session=session(), url=open_meteo_server.url)
    assert len(open_meteo_server.seen) == 1
    query = open_meteo_server.seen[0]
    assert query["timezone"] == "GMT" and query["wind_speed_unit"] == "ms"
    assert set(query["hourly"].split(",")) == set(om.HOURLY_VARIABLES)
    assert query["start_date"] == "2023-06-21" and query["end_date"] == "2023-06-22"
    # the API labels 00:00-23:00 of each day with the mean of the hour before: the frame's
    # hours start at 23:00 of the day before; radiation of [t, t+1h) is the value labelled t+1h
    assert frame.index[0] == pd.Timestamp("2023-06-20 23:00", tz="UTC") and len(frame) == 48
    answer = json.loads(cache.read_text())
    label = answer["hourly"]["time"].index("2023-06-21T19:00")
    assert frame.loc[pd.Timestamp("2023-06-21 18:00", tz="UTC"), "ghi"] == answer["hourly"]["shortwave_radiation"][label]
    assert frame["ghi"].max() > 500 and frame["wind_speed"].max() < 30  # m/s, not km/h
    assert frame.attrs["latitude"] == pytest.approx(39.74)
    again = om.get_open_meteo_forecast(39.74, -105.18, "2023-06-21", "2023-06-22", cache,
                                       session=session(), url=open_meteo_server.url)
    assert len(open_meteo_server.seen) == 1 and again.equals(frame)


def test_open_meteo_refusal_and_retry(open_meteo_server, tmp_path):
    with pytest.raises(wx.WeatherServiceError, match="HTTP 400.*out of allowed range") as info:
        om.get_open_meteo_forecast(39.74, -105.18, "2016-07-01", "2016-07-02", tmp_path / "old.json",
                                   session=session(), url=open_meteo_server.url)
    assert info.value.service == "open-meteo" and "?" not in info.value.where
    assert not (tmp_path / "old.json").exists()
    open_meteo_server.plant(503, 503)
    frame = om.get_open_meteo_forecast(39.74, -105.18, "2023-01-10", "2023-01-10", tmp_path / "ok.json",
                                       session=session(), url=open_meteo_server.url)
    assert len(frame) == 24 and len(open_meteo_server.seen) == 4


def test_open_meteo_reader_refuses_other_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"utc_offset_seconds": 3600, "hourly": {"time": []}}))
    with pytest.raises(wx.WeatherServiceError, match="not UTC"):
        om.read_open_meteo_forecast(bad)
    bad.write_text("<html>")
    with pytest.raises(wx.WeatherServiceError, match="not an Open-Meteo"):
        om.read_open_meteo_forecast(bad)


def test_day_ahead_forecast_of_installations_from_open_meteo(open_meteo_server, serf, tmp_path):
    """The saved model applied to installations with Open-Meteo's forecasts: one request per
    weather cell, the local day's 24 hours, relative output within clear-sky bounds."""
    capacity = fc.estimate_capacity_kw(serf.hourly, serf.hourly.index[-1])
    saved = fc.train_final_model([serf], {"serf_east": capacity}, SETTINGS, [])
    installations = pd.DataFrame({"pv_id": ["a", "b", "c"], "centroid_lon": [-105.17, -105.16, 11.0],
                                  "centroid_lat": [39.74, 39.75, 48.1], "area_m2": [40.0, 20000.0, 500.0],
                                  "capacity_mw": [np.nan, 1.0, np.nan]})
    settings = dataclasses.replace(SETTINGS, weather="open_meteo", apply_date="2023-06-21",
                                   open_meteo={"url": open_meteo_server.url, "models": None})
    table = fc.apply_day_ahead(installations, (saved.model, saved.features), en.EnergySettings(), settings,
                               tmp_path, progress=False)
    assert list(table.columns) == list(fc.PV_FORECAST_COLUMNS)
    assert table.groupby("pv_id").size().to_dict() == {"a": 24, "b": 24, "c": 24}
    assert len(open_meteo_server.seen) == 2  # two H3 cells
    assert table["weather_source"].str.startswith("Open-Meteo").all()
    relative = table["relative_output_kw_per_kwp"]
    assert relative.between(0, SETTINGS.max_clearsky_index * table["clear_sky_kw_per_kwp"] + 1e-9).all()
    assert relative.max() > 0.3
    # local standard days: Colorado's starts at 07:00 UTC, Bavaria's at 23:00 UTC the day before
    first = table.groupby("pv_id")["time_utc"].min()
    assert first["a"] == pd.Timestamp("2023-06-21 07:00", tz="UTC")
    assert first["c"] == pd.Timestamp("2023-06-20 23:00", tz="UTC")


# ------------------------------------------------------------------ the sample run


def test_sample_run_forecast_tables_model_lake_and_chapter(sample_run, sample_book):
    layout = Layout(sample_run)
    evaluation = pd.read_parquet(layout.forecast_eval())
    assert list(evaluation.columns) == list(fc.EVAL_COLUMNS)
    assert set(evaluation["setting"]) == set(fc.SETTINGS) and set(evaluation["system"]) == set(SETTINGS.systems)
    assert str(evaluation["issue_time"].dt.tz) == "UTC" and (evaluation["target_time"] >= evaluation["issue_time"]).all()
    assert set(evaluation.loc[evaluation["setting"] == "issue_time", "method"]) == set(fc.METHODS) - {"physical"}
    report = json.loads(layout.forecast_report().read_text())
    assert report["seconds"]["total_s"] < 120
    metadata = json.loads(layout.forecast_model_metadata().read_text())
    assert metadata["features"] == list(fc.FEATURES[("day_ahead", "perfect_prognosis")])
    assert {"training", "rolling_origin_metrics", "versions", "caveat"} <= set(metadata)
    model, columns = fc.load_model(layout.forecast_model())
    assert list(columns) == metadata["features"]
    pv = pd.read_parquet(layout.pv_forecast())
    con = connect_lake(sample_run)
    try:
        counts = {t: con.sql(f"SELECT count(*) FROM lake.curated.{t}").fetchone()[0]
                  for t in ("forecast_eval", "forecast_scores", "pv_forecast")}
    finally:
        con.close()
    assert counts["forecast_eval"] == len(evaluation) and counts["pv_forecast"] == len(pv) > 0
    html = (sample_book / "forecast-forecast.html").read_text(encoding="utf-8")
    assert "Skill by horizon" in html and "perfect prognosis" in html and "A week of forecasts" in html
    assert layout.executed_notebook("forecast", "forecast").exists()
