"""Forecasting stage: intraday and day-ahead PV power forecasts, scored on measured power.

The data are the real measured AC power of NREL systems with their NSRDB PSM3 weather
that pvanalytics ships (:mod:`pvlake.sources.measured`), cleaned with pvanalytics' own
quality checks, at hourly resolution (:func:`system_series`). Every forecast is a row
(issue time, target hour): an hour ``[s, s + 1 h)`` is *known* from ``s + 1 h`` on, and
``horizon_h`` is the time from the issue to the target hour's end.

- **Products** (:func:`forecast_rows`): intraday, issued every hour for the next
  hours (1-6 h by default); day-ahead, issued once a day at a fixed hour of local
  standard time for the whole next local day (24-48 h ahead when issued at midnight).
- **Two settings, never mixed** (:data:`SETTINGS`): ``issue_time`` (what is known at the
  issue time: measured power up to it, clear-sky power, sun position, calendar) and
  ``perfect_prognosis`` (observed weather at the target stands in for a numerical
  weather forecast: an upper bound on what a real forecast would give).
- **Methods** (:data:`METHODS`): persistence; smart persistence (the clear-sky index
  carried forward from what is known at the issue time: the last hour for intraday, the
  last 24 hours for day-ahead; Pedro & Coimbra 2012); climatology (the training period's
  mean clear-sky index per hour of day times the clear-sky power); the energy stage's
  pvlib chain driven by the (forecast) weather (setting 2 only); gradient-boosted trees
  (scikit-learn's HistGradientBoostingRegressor, after Ke et al. 2017) on engineered
  features (:data:`FEATURES`), fitted to the clear-sky index.
- **No leakage**: features come from :func:`issue_state` (only hours that ended by the
  issue time, by construction) and from target-time quantities known in advance; splits
  are by time with a gap (:func:`time_folds`), evaluated on a rolling origin (each fold's
  model is trained on everything before its test block, less the gap).
- **Metrics** (:func:`score`): MAE, RMSE and mean bias normalised by the capacity, on
  daylight hours and on all hours, per horizon, product and setting, and the skill
  1 - RMSE / RMSE(smart persistence) (Coimbra, Kleissl & Marquez 2013).

Applying it (:func:`apply_day_ahead`): the day-ahead perfect-prognosis model uses no
measured power, so it forecasts the relative output (kW per kWp) of any installation
from weather: that of the energy stage (or Open-Meteo's archived forecasts).
"""

from __future__ import annotations

import json
import math
import platform
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pvlib
import sklearn
from pvanalytics.features import daytime
from pvanalytics.quality import time as pv_time
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from . import __version__
from . import energy as en
from .io import atomic_path, write_json
from .layout import Layout
from .sources import measured as ms
from .sources import open_meteo as om
from .sources.http import http_session

PRODUCTS = ("intraday", "day_ahead")

SETTINGS = {
    "issue_time": "setting 1, issue-time information only: measured power up to the issue time, clear-sky power, "
                  "sun position and calendar; no weather",
    "perfect_prognosis": "setting 2, perfect prognosis: observed weather at the target time stands in for a weather "
                         "forecast; an upper bound on what a real forecast gives",
}
"""The two evaluation settings and how they are labelled."""

METHODS = ("persistence", "smart_persistence", "climatology", "physical", "ml")
"""Forecast methods; ``physical`` needs weather, so it is in setting 2 only."""

REFERENCE = "smart_persistence"
"""The method skill scores are relative to."""

EVAL_COLUMNS = {
    "system": pa.string(),
    "setting": pa.string(),
    "method": pa.string(),
    "product": pa.string(),
    "fold": pa.int16(),
    "issue_time": pa.timestamp("us", tz="UTC"),
    "target_time": pa.timestamp("us", tz="UTC"),
    "horizon_h": pa.int16(),
    "forecast_w": pa.float64(),
    "measured_w": pa.float64(),
    "daylight": pa.bool_(),
}
"""Columns of ``curated/forecast_eval.parquet``: every forecast of the evaluation.
``target_time`` is the start of the target hour (hourly mean power), ``horizon_h`` the
hours from the issue to the target hour's end, ``daylight`` whether the clear-sky power
of the target hour is above zero."""

PV_FORECAST_COLUMNS = {
    "pv_id": pa.string(),
    "time_utc": pa.timestamp("us", tz="UTC"),
    "relative_output_kw_per_kwp": pa.float64(),
    "physical_kw_per_kwp": pa.float64(),
    "clear_sky_kw_per_kwp": pa.float64(),
    "weather_source": pa.string(),
}
"""Columns of ``curated/pv_forecast.parquet``: per installation and hour (start, UTC) of
the forecast day, the model's mean AC power per kWp of DC capacity, the energy stage's
chain on the same weather, and clear-sky power."""

FEATURES = {
    ("intraday", "issue_time"): ("horizon_h", "clear_target", "elevation_deg", "cos_aoi", "doy_sin", "doy_cos",
                                 "k_last", "k_mean_3h", "k_24h", "rel_last", "clear_last", "k_same_hour",
                                 "rel_same_hour"),
    ("intraday", "perfect_prognosis"): ("horizon_h", "clear_target", "elevation_deg", "cos_aoi", "doy_sin", "doy_cos",
                                        "k_last", "k_mean_3h", "k_24h", "rel_last", "clear_last", "k_same_hour",
                                        "rel_same_hour", "kt_ghi", "temp_air", "k_physical"),
    ("day_ahead", "issue_time"): ("horizon_h", "clear_target", "elevation_deg", "cos_aoi", "doy_sin", "doy_cos",
                                  "k_24h", "k_last", "k_same_hour", "rel_same_hour"),
    ("day_ahead", "perfect_prognosis"): ("clear_target", "elevation_deg", "cos_aoi", "kt_ghi", "temp_air",
                                         "k_physical"),
}
"""Features of the trees per product and setting.

Target-time quantities known in advance: ``clear_target`` (clear-sky power per kWp),
``elevation_deg`` (sun), ``cos_aoi`` (sun on the module plane), ``doy_sin``/``doy_cos``
(season). Issue-time quantities (:func:`issue_state`): ``k_last`` (last clear-sky index),
``k_mean_3h``, ``k_24h`` (index of the last 24 hours), ``rel_last`` (last power per
kWp), ``clear_last``, ``k_same_hour``/``rel_same_hour`` (the target's hour of the last
day known). Weather at the target (setting 2): ``kt_ghi`` (GHI over clear-sky GHI),
``temp_air``, ``k_physical`` (the pvlib chain's power over clear-sky power). The
day-ahead setting-2 model uses no measured power and nothing site-specific, so it
applies to installations without measurements (:func:`apply_day_ahead`)."""

CAVEAT = ("trained on measured power of NREL systems in Golden, Colorado (pvanalytics' data): a few US systems "
          "of one design; elsewhere it is an extrapolation")


# ================================================================== settings


@dataclass(frozen=True)
class ForecastSettings:
    """The forecasting stage's configuration (config ``forecast``); see the config README."""

    systems: tuple = ("system_50", "serf_east")
    intraday_horizons_h: tuple = (1, 2, 3, 4, 5, 6)
    day_ahead_issue_hour: int = 0
    test_fraction: float = 0.5
    folds: int = 3
    gap_days: float = 2.0
    min_clearsky_share: float = 0.05
    max_clearsky_index: float = 1.5
    carry_hours: int = 24
    ml: Mapping = field(default_factory=lambda: {"max_iter": 60, "learning_rate": 0.1, "max_leaf_nodes": 15,
                                                 "min_samples_leaf": 40, "l2_regularization": 1.0})
    threads: int = 1
    seed: int = 0
    apply_date: str = "2023-06-21"
    weather: str = "energy"
    open_meteo: Mapping = field(default_factory=lambda: {"url": om.URL, "models": None})
    http: Mapping = field(default_factory=lambda: {"connect_timeout_s": 30.0, "read_timeout_s": 120.0, "attempts": 5})

    def __post_init__(self):
        unknown = set(self.systems) - set(ms.NREL_SYSTEMS)
        if unknown or not self.systems:
            raise ValueError(f"forecast.systems {sorted(unknown) or '[]'}: choose from {', '.join(ms.NREL_SYSTEMS)}")
        if not self.intraday_horizons_h or min(self.intraday_horizons_h) < 1 or max(self.intraday_horizons_h) > 23:
            raise ValueError("forecast.intraday_horizons_h: whole hours from 1 to 23")
        if not 0 <= self.day_ahead_issue_hour <= 23:
            raise ValueError("forecast.day_ahead_issue_hour: 0-23 (local standard time)")
        if self.gap_days * 24 < max(self.intraday_horizons_h):
            raise ValueError("forecast.gap_days must cover the longest intraday horizon")
        if self.weather not in ("energy", "open_meteo"):
            raise ValueError(f"forecast.weather {self.weather!r}: energy or open_meteo")

    @classmethod
    def from_config(cls, config: Mapping | None) -> ForecastSettings:
        """Settings from the config's ``forecast`` section (missing keys keep their defaults)."""
        values = {}
        for f in fields(cls):
            if f.name not in (config or {}):
                continue
            value = config[f.name]
            default = getattr(cls(), f.name)
            if isinstance(default, tuple):
                value = tuple(value)
            elif isinstance(default, Mapping):
                value = {**default, **value}
            values[f.name] = value
        return cls(**values)


# ================================================================== hourly data


@dataclass
class SystemSeries:
    """One measured system at hourly resolution.

    Attributes
    ----------
    system : pvlake.sources.measured.MeasuredSystem
    hourly : pandas.DataFrame
        Regular hourly UTC index of hour starts: ``measured_kw`` (mean AC power, NaN when
        a sample of the hour failed a quality check: the targets), ``raw_kw`` (mean AC power
        as measured: what the features read, :func:`hourly_raw`), ``ghi``, ``ghi_clear``,
        ``temp_air`` (hourly means of the weather), ``clear_per_kw`` and
        ``physical_per_kw`` (the energy stage's chain per kWp under clear-sky and observed
        weather), ``elevation_deg``, ``cos_aoi`` (mid-hour sun).
    quality : dict
        pvanalytics' flag counts on the 15-minute samples, its timestamp-shift check
        (:func:`timestamp_shifts`), and the hours kept.
    """

    system: ms.MeasuredSystem
    hourly: pd.DataFrame
    quality: dict


def hour_means(kw: pd.Series, freq: str, label: str = "end") -> pd.Series:
    """Hourly means (index: hour starts, regular) of sub-hourly values; an hour with any
    value missing is NaN (a partial hour's mean is not its mean). ``label`` says where in
    its interval a value is labelled (``end``: PVDAQ) so that each falls into the hour it
    describes."""
    step = pd.Timedelta(freq)
    starts = kw.index - (step if label == "end" else pd.Timedelta(0))
    grouped = kw.groupby(starts.floor("h"))
    mean = grouped.mean().where(grouped.count() == round(pd.Timedelta("1h") / step))
    return mean.asfreq("h")


def hourly_measured(power_w: pd.Series, flags: pd.DataFrame, freq: str, label: str = "end") -> pd.Series:
    """Hourly mean AC power (kW) after pvanalytics' checks: what is trained on and scored.

    A night sample counts as 0 (production is nil; inverters draw a little); a daytime
    sample counts when it passed every check (:func:`pvlake.sources.measured.quality_flags`);
    an hour with a sample that failed is NaN.
    """
    kept = flags["usable"] | flags["night"]
    kw = (power_w.clip(lower=0) / 1000.0).where(flags["usable"], 0.0).where(kept)
    return hour_means(kw, freq, label).rename("measured_kw")


def hourly_raw(power_w: pd.Series, freq: str, label: str = "end") -> pd.Series:
    """Hourly mean AC power (kW) as measured, negative values set to 0: what the features
    read. pvanalytics' checks look at whole days and at the whole series (its day/night
    classification is normalised by the series), so a value measured later can change how
    an earlier one is flagged; a forecast issued in real time has only the raw values."""
    return hour_means(power_w.clip(lower=0) / 1000.0, freq, label).rename("raw_kw")


def hourly_weather(weather: pd.DataFrame, hours: pd.DatetimeIndex) -> pd.DataFrame:
    """Hourly means of instantaneous weather values (interpolated in time to the middle
    of each quarter of the hour, then averaged)."""
    quarters = np.array([7.5, 22.5, 37.5, 52.5]) * 60e9
    instants = pd.DatetimeIndex((hours.asi8[:, None] + quarters[None, :].astype(np.int64)).ravel(), tz="UTC")
    grid = weather.reindex(weather.index.union(instants)).interpolate("time", limit_area="inside").reindex(instants)
    return grid.groupby(np.repeat(np.arange(len(hours)), 4)).mean().set_axis(hours)


def sun_terms(hours: pd.DatetimeIndex, latitude: float, longitude: float, altitude_m: float, tilt_deg: np.ndarray,
              azimuth_deg: np.ndarray) -> dict:
    """Mid-hour sun elevation (degrees, (H, 1)) and the cosine of the angle of incidence on
    each plane ((H, n), 0 when the sun is behind it), :func:`pvlake.energy.solar_position`."""
    sun = en.solar_position(hours + pd.Timedelta("30min"), [latitude], [longitude], [altitude_m])
    cos_aoi = pvlib.irradiance.aoi_projection(np.asarray(tilt_deg)[None, :], np.asarray(azimuth_deg)[None, :],
                                              sun["apparent_zenith"], sun["azimuth"])
    return {"elevation_deg": 90.0 - sun["apparent_zenith"], "cos_aoi": np.clip(cos_aoi, 0.0, None)}


def per_kw(irradiance: pd.DataFrame, latitude: float, longitude: float, altitude_m: float, surfaces: en.Surfaces,
           model: en.ModelSettings) -> np.ndarray:
    """AC power per kWp ((H, n)) of hourly means of ``ghi``, ``dni``, ``dhi``,
    ``temp_air``, ``wind_speed`` (index: hour starts), with the energy stage's chain
    (:func:`pvlake.energy.ac_power`) at each hour's middle."""
    frame = irradiance.set_axis(irradiance.index + pd.Timedelta("30min"))
    return en.ac_power(frame, latitude, longitude, altitude_m, surfaces, model).to_numpy()


def system_series(system: ms.MeasuredSystem, model: en.ModelSettings, validation: en.ValidationSettings,
                  clearsky: Mapping) -> SystemSeries:
    """Read a measured system, run pvanalytics' checks, and put power, weather and the
    energy stage's modelled power (clear-sky and observed weather) on one hourly clock.

    The observed GHI is split into beam and diffuse as the energy stage's validation does
    (``validation.decomposition``), with its wind and inverter sizing; clear-sky power uses
    the PSM3 file's own clear-sky irradiance and the energy stage's clear-sky temperature
    and wind (``clearsky``).
    """
    power_w = ms.read_measured_power(system)
    flags = ms.quality_flags(power_w, system.freq)
    measured = hourly_measured(power_w, flags, system.freq, validation.power_label)
    weather = ms.read_measured_weather(system)
    hours = measured.index
    means = hourly_weather(weather, hours)
    altitude = float(en.lookup_altitude_m([system.latitude], [system.longitude])[0])
    surfaces = en.Surfaces(np.array([system.tilt_deg]), np.array([system.azimuth_deg]),
                           np.array([validation.array_type], dtype=object))
    run_model = replace(model, dc_ac_ratio=validation.dc_ac_ratio)
    sky = means.dropna(subset=["ghi", "temp_air"])
    split = en.split_ghi(sky["ghi"].clip(lower=0), system.latitude, system.longitude, altitude, sky["temp_air"],
                         validation.decomposition)
    observed = split.set_axis(sky.index).assign(temp_air=sky["temp_air"], wind_speed=validation.wind_speed_m_s)
    clear = pd.DataFrame({"ghi": means["ghi_clear"], "dni": means["dni_clear"], "dhi": means["dhi_clear"],
                          "temp_air": float(clearsky["temp_air_c"]), "wind_speed": float(clearsky["wind_speed_m_s"])},
                         index=hours).fillna(0.0)
    sun = sun_terms(hours, system.latitude, system.longitude, altitude, surfaces.tilt_deg, surfaces.azimuth_deg)
    hourly = pd.DataFrame({
        "measured_kw": measured, "raw_kw": hourly_raw(power_w, system.freq, validation.power_label).reindex(hours),
        "ghi": means["ghi"], "ghi_clear": means["ghi_clear"], "temp_air": means["temp_air"],
        "clear_per_kw": per_kw(clear, system.latitude, system.longitude, altitude, surfaces, run_model)[:, 0],
        "physical_per_kw": pd.Series(per_kw(observed, system.latitude, system.longitude, altitude, surfaces,
                                            run_model)[:, 0], index=sky.index).reindex(hours),
        "elevation_deg": sun["elevation_deg"][:, 0], "cos_aoi": sun["cos_aoi"][:, 0],
    }, index=hours)
    quality = {c: int(flags[c].sum()) for c in ms.QUALITY_CHECKS} | {"timestamp_shifts": timestamp_shifts(system)} | {
        "samples": len(flags), "usable": int(flags["usable"].sum()), "hours": len(hourly),
        "hours_kept": int(hourly["measured_kw"].notna().sum()),
        "daylight_hours_kept": int((hourly["measured_kw"].notna() & (hourly["clear_per_kw"] > 0)).sum())}
    return SystemSeries(system, hourly, quality)


DAYLIGHT_SAVING_ZONES = {"system_50": "America/Denver", "serf_east": "America/Denver"}
"""The time zone whose daylight-saving transitions the timestamp check looks for (both
systems are in Golden, Colorado)."""


def timestamp_shifts(system: ms.MeasuredSystem) -> dict:
    """pvanalytics' timestamp-shift check on the power, as labelled and as read.

    Each day's midday (the middle of sunrise and sunset of pvanalytics' day/night mask,
    :func:`pvanalytics.features.daytime.get_sunrise` / ``get_sunset``) in local standard
    time; :func:`pvanalytics.quality.time.has_dst` finds the daylight-saving transitions
    of :data:`DAYLIGHT_SAVING_ZONES` across which it jumps by 45 minutes or more.

    Returns
    -------
    dict
        ``transitions`` in the data's span, and per reading (``as labelled``: the file's
        offset taken at its word; ``as read``: with :func:`pvlake.sources.measured.read_measured_power`'s
        correction) the dates where a shift is found.
    """
    zone = DAYLIGHT_SAVING_ZONES[system.key]
    standard = f"Etc/GMT{-standard_offset_h(system.longitude):+d}"
    out = {}
    for label, clock in (("as labelled", "fixed"), ("as read", system.power_clock)):
        power = ms.read_measured_power(replace(system, power_clock=clock)).tz_convert(standard)
        day = daytime.power_or_irradiance(power.fillna(0.0), freq=system.freq)
        sunrise = daytime.get_sunrise(day, freq=system.freq, data_alignment="R")
        sunset = daytime.get_sunset(day, freq=system.freq, data_alignment="R")
        midday = sunrise + (sunset - sunrise) / 2
        daily = midday.groupby(midday.index.floor("D")).first()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no data around a transition: not a shift
            shifted = pv_time.has_dst(daily, zone, missing="warn")
        out["transitions"] = int(pv_time.dst_dates(daily.index, zone).sum())
        out[label] = [d.isoformat() for d in shifted[shifted].index.date]
    return out


# ================================================================== splits


@dataclass(frozen=True)
class Fold:
    """One origin of the rolling evaluation: forecasts issued in ``[test_start, test_end)``
    are scored by a model trained on target hours that ended by ``train_end``
    (``test_start`` less the gap)."""

    number: int
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def time_folds(measured: pd.Series, settings: ForecastSettings) -> list[Fold]:
    """Rolling-origin folds over the days with measurements: the last ``test_fraction``
    of the days in ``folds`` consecutive test blocks of whole days; each fold trains on
    everything before its block less ``gap_days``.

    Raises
    ------
    ValueError
        When the data are too short for a block of at least one week per fold.
    """
    present = measured.dropna().index
    first, last = present[0].floor("D"), present[-1].floor("D") + pd.Timedelta("1D")
    days = (last - first).days
    block = int(days * settings.test_fraction) // settings.folds
    if block < 7:
        raise ValueError(f"{days} days of data: too few for {settings.folds} test blocks of a week")
    start = last - pd.Timedelta(days=block * settings.folds)
    gap = pd.Timedelta(days=settings.gap_days)
    return [Fold(i + 1, start + pd.Timedelta(days=block * i) - gap, start + pd.Timedelta(days=block * i),
                 start + pd.Timedelta(days=block * (i + 1))) for i in range(settings.folds)]


def estimate_capacity_kw(hourly: pd.DataFrame, before: pd.Timestamp) -> float:
    """DC capacity (kW) that makes the energy stage's chain match the measured energy of
    the daylight hours before ``before`` (the first fold's training data only)."""
    rows = hourly[(hourly.index + pd.Timedelta("1h") <= before) & (hourly["clear_per_kw"] > 0)]
    rows = rows.dropna(subset=["measured_kw", "physical_per_kw"])
    return float(rows["measured_kw"].sum() / rows["physical_per_kw"].sum())


# ================================================================== forecasts and features


def standard_offset_h(longitude: float) -> int:
    """Hours from UTC of local standard time, from the longitude (15 degrees an hour;
    no daylight saving): the clock of the day-ahead issue and of its target day."""
    return int(round(longitude / 15.0))


def forecast_rows(hours: pd.DatetimeIndex, product: str, settings: ForecastSettings, longitude: float) -> pd.DataFrame:
    """Every (issue time, target hour) pair of a product within ``hours``.

    Returns
    -------
    pandas.DataFrame
        ``issue_time``, ``target_time`` (start of the target hour), ``horizon_h`` (hours
        from the issue to the target hour's end).
    """
    first, last = hours[0], hours[-1]
    one_h = pd.Timedelta("1h")
    if product == "intraday":
        issue = np.repeat(hours.asi8, len(settings.intraday_horizons_h))
        horizon = np.tile(np.asarray(settings.intraday_horizons_h, dtype=np.int64), len(hours))
        target = issue + (horizon - 1) * one_h.value
    elif product == "day_ahead":
        offset = pd.Timedelta(hours=standard_offset_h(longitude))
        local_days = pd.date_range((first + offset).floor("D"), (last + offset).floor("D"), freq="D")
        issues = (local_days + pd.Timedelta(hours=settings.day_ahead_issue_hour) - offset).asi8
        next_day = (local_days + pd.Timedelta("1D") - offset).asi8
        issue = np.repeat(issues, 24)
        target = (next_day[:, None] + np.arange(24)[None, :] * one_h.value).ravel()
        horizon = (target + one_h.value - issue) // one_h.value
    else:
        raise ValueError(f"product {product!r}: one of {', '.join(PRODUCTS)}")
    keep = (issue >= first.value) & (target <= last.value)
    return pd.DataFrame({"issue_time": pd.DatetimeIndex(issue[keep], tz="UTC"),
                         "target_time": pd.DatetimeIndex(target[keep], tz="UTC"),
                         "horizon_h": horizon[keep].astype(np.int64)})


def clearsky_index(relative: pd.Series, clear_per_kw: pd.Series, settings: ForecastSettings) -> pd.Series:
    """Power over clear-sky power, where the clear-sky power is at least
    ``min_clearsky_share`` of the capacity (near sunrise and sunset the ratio of two small
    numbers says nothing), clipped to ``[0, max_clearsky_index]``."""
    k = relative / clear_per_kw
    return k.where(clear_per_kw >= settings.min_clearsky_share).clip(0.0, settings.max_clearsky_index)


def issue_state(hourly: pd.DataFrame, capacity_kw: float, settings: ForecastSettings) -> pd.DataFrame:
    """What is known at each issue time: built only from hours that ended by it, from the
    raw measurements (``raw_kw``).

    Row ``t`` sees the hour ``[t - 1 h, t)`` and earlier ones: every column is a function
    of the series shifted by one hour, through backward-looking windows only.

    Returns
    -------
    pandas.DataFrame
        On the hourly index (issue times): ``rel_last`` (last power per kWp, carried over
        up to ``carry_hours``), ``k_last`` (last defined clear-sky index, carried over),
        ``k_mean_3h`` (mean index of the last 3 hours), ``k_24h`` (energy over clear-sky
        energy of the last 24 hours), ``clear_last`` (clear-sky power of the last hour).
    """
    relative = hourly["raw_kw"] / capacity_kw
    k = clearsky_index(relative, hourly["clear_per_kw"], settings)
    ended = pd.DataFrame({"rel": relative, "clear": hourly["clear_per_kw"], "k": k}).shift(1)
    counted = ended["rel"].notna()
    day_energy = ended["rel"].rolling(24, min_periods=18).sum()
    day_clear = ended["clear"].where(counted).rolling(24, min_periods=18).sum()
    return pd.DataFrame({
        "rel_last": ended["rel"].ffill(limit=settings.carry_hours),
        "k_last": ended["k"].ffill(limit=settings.carry_hours),
        "k_mean_3h": ended["k"].rolling(3, min_periods=1).mean(),
        "k_24h": (day_energy / day_clear).where(day_clear > settings.min_clearsky_share).clip(
            0.0, settings.max_clearsky_index),
        "clear_last": ended["clear"],
    }, index=hourly.index)


def features(hourly: pd.DataFrame, rows: pd.DataFrame, capacity_kw: float, settings: ForecastSettings) -> pd.DataFrame:
    """Every feature of :data:`FEATURES` for forecast rows, as known at their issue time.

    Issue-time columns are looked up in :func:`issue_state` at the issue time; the
    target's hour of the last day known at the issue time is ``ceil(horizon / 24)`` days
    before it (it ended by the issue time); target-time columns are clear-sky power, sun,
    calendar, and (setting 2 only) the weather.
    """
    state = issue_state(hourly, capacity_kw, settings).reindex(pd.DatetimeIndex(rows["issue_time"]))
    target = hourly.reindex(pd.DatetimeIndex(rows["target_time"]))
    relative = hourly["raw_kw"] / capacity_kw
    k = clearsky_index(relative, hourly["clear_per_kw"], settings)
    days_back = np.ceil(rows["horizon_h"].to_numpy() / 24.0).astype(np.int64)
    same_hour = pd.DatetimeIndex(rows["target_time"]) - pd.to_timedelta(days_back, unit="D")
    doy = 2 * np.pi * pd.DatetimeIndex(rows["target_time"]).dayofyear.to_numpy() / 365.25
    clear = target["clear_per_kw"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        kt = np.where(target["ghi_clear"] > 0, target["ghi"] / target["ghi_clear"], np.nan)
        k_physical = np.where(clear > 0, target["physical_per_kw"].to_numpy() / clear, np.nan)
    out = pd.DataFrame({
        "horizon_h": rows["horizon_h"].to_numpy(), "clear_target": clear,
        "elevation_deg": target["elevation_deg"].to_numpy(), "cos_aoi": target["cos_aoi"].to_numpy(),
        "doy_sin": np.sin(doy), "doy_cos": np.cos(doy),
        **{c: state[c].to_numpy() for c in ("k_last", "k_mean_3h", "k_24h", "rel_last", "clear_last")},
        "k_same_hour": k.reindex(same_hour).to_numpy(), "rel_same_hour": relative.reindex(same_hour).to_numpy(),
        "kt_ghi": np.clip(kt, 0.0, settings.max_clearsky_index), "temp_air": target["temp_air"].to_numpy(),
        "k_physical": np.clip(k_physical, 0.0, settings.max_clearsky_index),
    }, index=rows.index)
    return out


def baselines(feats: pd.DataFrame, climatology_k: pd.Series, target_hours: pd.DatetimeIndex,
              product: str) -> dict[str, np.ndarray]:
    """Persistence, smart persistence and climatology, per kWp.

    - persistence: the last hour's power (intraday); the target's hour of the last day
      known (day-ahead);
    - smart persistence: the clear-sky index carried forward (intraday: the last hour's;
      day-ahead: that of the last 24 hours) times the target's clear-sky power;
    - climatology: the training period's mean clear-sky index at the target's hour of
      day (UTC) times the target's clear-sky power.
    """
    clear = feats["clear_target"].to_numpy()
    if product == "intraday":
        persistence, k = feats["rel_last"].to_numpy(), feats["k_last"].to_numpy()
    else:
        persistence, k = feats["rel_same_hour"].to_numpy(), feats["k_24h"].to_numpy()
    climate = climatology_k.reindex(target_hours.hour).to_numpy()
    night = clear <= 0
    return {"persistence": persistence,
            "smart_persistence": np.where(night, 0.0, k * clear),
            "climatology": np.where(night, 0.0, climate * clear)}


def climatology_index(hourly: pd.DataFrame, capacity_kw: float, before: pd.Timestamp,
                      settings: ForecastSettings) -> pd.Series:
    """Mean clear-sky index per hour of day (UTC) of the hours that ended by ``before``
    (0-23; hours never defined get the overall mean)."""
    part = hourly[hourly.index + pd.Timedelta("1h") <= before]
    k = clearsky_index(part["measured_kw"] / capacity_kw, part["clear_per_kw"], settings)
    by_hour = k.groupby(k.index.hour).mean().reindex(range(24))
    return by_hour.fillna(k.mean())


def regressor(settings: ForecastSettings):
    """The gradient-boosted trees (scikit-learn's HistGradientBoostingRegressor, squared
    error; LightGBM-style histograms, Ke et al. 2017)."""
    params = {k: settings.ml[k] for k in ("max_iter", "learning_rate", "max_leaf_nodes", "min_samples_leaf",
                                           "l2_regularization")}
    return HistGradientBoostingRegressor(early_stopping=False, random_state=settings.seed, **params)


def fit_trees(feats: pd.DataFrame, relative: np.ndarray, columns: tuple, settings: ForecastSettings):
    """Trees fitted to the clear-sky index of the rows whose clear-sky power is at least
    ``min_clearsky_share`` of the capacity: the index carries over between seasons and
    sites better than power does. (Weighting the rows by the squared clear-sky power would
    make the loss the squared error of power, but scikit-learn 1.9 bins weighted data ~25x
    slower, and the errors on the test folds came out the same.)"""
    clear = feats["clear_target"].to_numpy()
    use = (clear >= settings.min_clearsky_share) & np.isfinite(relative)
    k = np.clip(relative[use] / clear[use], 0.0, 3.0)
    model = regressor(settings)
    # scikit-learn's OpenMP threads, unlimited, spin on a busy machine (evaluation 116 s, not 4 s)
    with threadpool_limits(settings.threads):
        model.fit(feats.loc[use, list(columns)].to_numpy(float), k)
    return model


def predict_trees(model, feats: pd.DataFrame, columns: tuple, settings: ForecastSettings) -> np.ndarray:
    """Power per kWp from fitted trees: predicted clear-sky index times clear-sky power
    (0 when the clear-sky power is 0)."""
    clear = feats["clear_target"].to_numpy()
    with threadpool_limits(settings.threads):
        k = model.predict(feats[list(columns)].to_numpy(float)) if len(feats) else np.zeros(0)
    return np.where(clear > 0, np.clip(k, 0.0, settings.max_clearsky_index) * clear, 0.0)


# ================================================================== evaluation


@dataclass
class SystemEvaluation:
    """The evaluation of one system: every forecast (long, :data:`EVAL_COLUMNS`), its
    capacity estimate, folds, and the rows dropped because a method had no forecast."""

    system: ms.MeasuredSystem
    capacity_kw: float
    folds: list
    forecasts: pd.DataFrame
    dropped: dict
    quality: dict


def evaluate_system(series: SystemSeries, settings: ForecastSettings, progress: bool = True) -> SystemEvaluation:
    """Rolling-origin evaluation of every method on one system.

    For each product and fold: baselines and the physical chain on the fold's test
    rows, trees fitted on the training rows (target hours that ended by the fold's
    ``train_end``) per setting. A (issue, target) pair enters the evaluation when its
    measurement and every method's forecast exist, so that all methods are scored on the
    same hours.
    """
    hourly, system = series.hourly, series.system
    folds = time_folds(hourly["measured_kw"], settings)
    capacity = estimate_capacity_kw(hourly, folds[0].train_end)
    relative = hourly["measured_kw"] / capacity
    parts, dropped = [], {}
    rows = {p: forecast_rows(hourly.index, p, settings, system.longitude) for p in PRODUCTS}
    feats = {p: features(hourly, r, capacity, settings) for p, r in rows.items()}
    steps = [(p, f) for p in PRODUCTS for f in folds]
    for product, fold in tqdm(steps, desc=f"forecast {system.key}", disable=not progress, mininterval=2):
        every = rows[product]
        train = (every["target_time"] + pd.Timedelta("1h") <= fold.train_end).to_numpy()
        test = ((every["issue_time"] >= fold.test_start) & (every["issue_time"] < fold.test_end)).to_numpy()
        train_rows, test_rows = every[train], every[test]
        train_f, test_f = feats[product][train], feats[product][test]
        target_rel = relative.reindex(pd.DatetimeIndex(train_rows["target_time"])).to_numpy()
        climate = climatology_index(hourly, capacity, fold.train_end, settings)
        hours = pd.DatetimeIndex(test_rows["target_time"])
        wide = pd.DataFrame(baselines(test_f, climate, hours, product), index=test_rows.index)
        wide["physical"] = np.where(test_f["clear_target"] > 0, hourly["physical_per_kw"].reindex(hours).to_numpy(), 0.0)
        for setting in SETTINGS:
            columns = FEATURES[(product, setting)]
            model = fit_trees(train_f, target_rel, columns, settings)
            wide[f"ml:{setting}"] = predict_trees(model, test_f, columns, settings)
        wide["measured"] = relative.reindex(hours).to_numpy()
        complete = wide.notna().all(axis=1)
        dropped[f"{product} fold {fold.number}"] = int((~complete & wide["measured"].notna()).sum())
        wide = wide[complete]
        base = test_rows.loc[wide.index].assign(product=product, fold=fold.number,
                                                daylight=test_f.loc[wide.index, "clear_target"].to_numpy() > 0)
        for setting in SETTINGS:
            methods = ["persistence", "smart_persistence", "climatology"]
            methods += ["physical"] if setting == "perfect_prognosis" else []
            for method in methods + ["ml"]:
                column = f"ml:{setting}" if method == "ml" else method
                parts.append(base.assign(setting=setting, method=method,
                                         forecast_w=wide[column].to_numpy() * capacity * 1000.0,
                                         measured_w=wide["measured"].to_numpy() * capacity * 1000.0))
    forecasts = pd.concat(parts, ignore_index=True).assign(system=system.key)
    return SystemEvaluation(system, capacity, folds, forecasts[list(EVAL_COLUMNS)], dropped, series.quality)


def eval_table(evaluations: list[SystemEvaluation]) -> pa.Table:
    """Every forecast of the evaluation, sorted (system, setting, method, issue, target)."""
    frame = pd.concat([e.forecasts for e in evaluations], ignore_index=True)
    frame = frame.sort_values(["system", "setting", "method", "product", "issue_time", "target_time"], kind="stable")
    frame = frame.astype({"fold": "int16", "horizon_h": "int16"})
    return pa.Table.from_pandas(frame, schema=pa.schema(EVAL_COLUMNS), preserve_index=False)


def _errors(group: pd.DataFrame, capacity_w: float) -> pd.Series:
    diff = group["forecast_w"] - group["measured_w"]
    return pd.Series({"n": len(group), "mae_pct": 100 * diff.abs().mean() / capacity_w,
                      "rmse_pct": 100 * math.sqrt((diff ** 2).mean()) / capacity_w,
                      "mbe_pct": 100 * diff.mean() / capacity_w})


def score(forecasts: pd.DataFrame, capacities_kw: Mapping[str, float], by: tuple = ("horizon_h",)) -> pd.DataFrame:
    """MAE, RMSE and mean bias error in % of the DC capacity, and the skill
    1 - RMSE / RMSE(smart persistence) of the same system, setting, product, hours and group.

    Parameters
    ----------
    forecasts : pandas.DataFrame
        :data:`EVAL_COLUMNS` rows.
    capacities_kw : mapping
        System -> estimated DC capacity.
    by : tuple
        Extra grouping columns (``("horizon_h",)``: per horizon; ``()``: per product).

    Returns
    -------
    pandas.DataFrame
        ``system``, ``setting``, ``product``, ``hours`` (``daylight`` or ``all``), the
        ``by`` columns, ``method``, ``n``, ``mae_pct``, ``rmse_pct``, ``mbe_pct``, ``skill``.
    """
    keys = ["system", "setting", "product", *by, "method"]
    out = []
    for hours, subset in (("daylight", forecasts[forecasts["daylight"]]), ("all", forecasts)):
        for system, part in subset.groupby("system"):
            capacity_w = capacities_kw[system] * 1000.0
            scores = part.groupby(keys).apply(_errors, capacity_w, include_groups=False).reset_index()
            out.append(scores.assign(hours=hours))
    table = pd.concat(out, ignore_index=True)
    group = ["system", "setting", "product", "hours", *by]
    reference = table[table["method"] == REFERENCE].set_index(group)["rmse_pct"]
    ref = reference.reindex(pd.MultiIndex.from_frame(table[group])).to_numpy()
    table["skill"] = 1.0 - table["rmse_pct"] / ref
    table["n"] = table["n"].astype(int)
    order = {m: i for i, m in enumerate(METHODS)}
    table = table.sort_values(group + ["method"], key=lambda c: c.map(order) if c.name == "method" else c)
    return table[["system", "setting", "product", "hours", *by, "method", "n", "mae_pct", "rmse_pct", "mbe_pct",
                  "skill"]].reset_index(drop=True)


def verdicts(summary: pd.DataFrame) -> list[dict]:
    """The issue's two tests per system and product, on daylight hours: does the ML model
    beat smart persistence in each setting, and the physical chain in setting 2?"""
    day = summary[summary["hours"] == "daylight"].set_index(["system", "product", "setting", "method"])["rmse_pct"]
    rows = []
    for system, product in sorted({(s, p) for s, p, _, _ in day.index}):
        for setting in SETTINGS:
            ml, sp = day[(system, product, setting, "ml")], day[(system, product, setting, REFERENCE)]
            rows.append({"system": system, "product": product, "setting": setting, "against": REFERENCE,
                         "ml_rmse_pct": ml, "against_rmse_pct": sp, "beats": bool(ml < sp)})
        ml, phys = day[(system, product, "perfect_prognosis", "ml")], day[(system, product, "perfect_prognosis", "physical")]
        rows.append({"system": system, "product": product, "setting": "perfect_prognosis", "against": "physical",
                     "ml_rmse_pct": ml, "against_rmse_pct": phys, "beats": bool(ml < phys)})
    return rows


# ================================================================== the saved model


@dataclass
class SavedModel:
    """The day-ahead perfect-prognosis trees trained on every system's full history."""

    model: object
    features: tuple
    metadata: dict


def train_final_model(series: list[SystemSeries], capacities_kw: Mapping[str, float],
                      settings: ForecastSettings, metrics: list[dict]) -> SavedModel:
    """Fit the day-ahead perfect-prognosis trees on every hour of every system (their
    evaluation is the rolling-origin one, ``metrics``) and describe them."""
    columns = FEATURES[("day_ahead", "perfect_prognosis")]
    frames, targets, spans = [], [], {}
    for s in series:
        cap = capacities_kw[s.system.key]
        rows = forecast_rows(s.hourly.index, "day_ahead", settings, s.system.longitude)
        frames.append(features(s.hourly, rows, cap, settings))
        targets.append((s.hourly["measured_kw"] / cap).reindex(pd.DatetimeIndex(rows["target_time"])).to_numpy())
        kept = s.hourly["measured_kw"].dropna().index
        spans[s.system.key] = {"first_hour": kept[0].isoformat(), "last_hour": kept[-1].isoformat(),
                               "capacity_kw_estimated": round(cap, 4), "hours": int(len(kept))}
    feats = pd.concat(frames, ignore_index=True)
    model = fit_trees(feats, np.concatenate(targets), columns, settings)
    metadata = {
        "model": "sklearn HistGradientBoostingRegressor", "target": "clear-sky index of hourly AC power",
        "product": "day_ahead", "setting": "perfect_prognosis", "setting_label": SETTINGS["perfect_prognosis"],
        "features": list(columns),
        "parameters": dict(settings.ml), "training": spans, "rolling_origin_metrics": metrics,
        "caveat": CAVEAT,
        "versions": {"pvlake": __version__, "scikit-learn": sklearn.__version__, "pvlib": pvlib.__version__,
                     "numpy": np.__version__, "pandas": pd.__version__, "python": platform.python_version()},
    }
    return SavedModel(model, columns, metadata)


def save_model(saved: SavedModel, model_path: str | Path, metadata_path: str | Path) -> None:
    """The fitted trees (joblib) and their metadata (JSON), each written atomically."""
    import joblib

    with atomic_path(model_path) as tmp:
        joblib.dump({"model": saved.model, "features": list(saved.features)}, tmp)
    write_json(saved.metadata, metadata_path)


def load_model(model_path: str | Path) -> tuple[object, tuple]:
    """The trees and their feature names as :func:`save_model` wrote them."""
    import joblib

    stored = joblib.load(model_path)
    return stored["model"], tuple(stored["features"])


# ================================================================== applying it


def day_window(date: str, longitude: float, year: int | None = None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The UTC span of a local standard day (``year`` replaces the date's year: the
    reference year of a typical-year weather series)."""
    day = pd.Timestamp(date)
    if year is not None:
        day = day.replace(year=year)
    start = day.tz_localize("UTC") - pd.Timedelta(hours=standard_offset_h(longitude))
    return start, start + pd.Timedelta("1D")


def clear_sky_hours(latitude: float, longitude: float, altitude_m: float, hours: pd.DatetimeIndex,
                    clearsky: Mapping) -> pd.DataFrame:
    """Clear-sky weather at a site for some hours (index: hour starts; values at their
    middle), as the energy stage computes it: Ineichen with pvlib's monthly Linke
    turbidity, the configured air temperature and wind (``energy.clearsky``)."""
    times = hours + pd.Timedelta("30min")
    pressure = float(pvlib.atmosphere.alt2pres(altitude_m))
    sun = en.solar_position(times, [latitude], [longitude], [altitude_m], pressure, clearsky["temp_air_c"])
    linke = en.linke_basis(times) @ en._padded(en.linke_monthly([latitude], [longitude])).T
    dni_extra = np.asarray(en.sun_time_terms(times)["dni_extra"])[:, None]
    sky = en.clearsky_irradiance(sun["apparent_zenith"], altitude_m, linke, dni_extra)
    return pd.DataFrame({"ghi": sky["ghi"][:, 0], "dni": sky["dni"][:, 0], "dhi": sky["dhi"][:, 0],
                         "temp_air": float(clearsky["temp_air_c"]), "wind_speed": float(clearsky["wind_speed_m_s"])},
                        index=hours).fillna(0.0)


def cell_day_weather(cell: en.CellWeather, date: str, energy: en.EnergySettings) -> tuple[pd.DataFrame, str]:
    """The hourly weather (index: hour starts) of one energy weather cell on a local day of
    its typical year: the energy stage's weather for that calendar day."""
    start, end = day_window(date, cell.longitude, energy.year)
    if cell.data is None:
        hours = pd.date_range(start, end, freq="h", inclusive="left")
        return clear_sky_hours(cell.latitude, cell.longitude, cell.altitude_m, hours, energy.clearsky), cell.source
    part = cell.data[(cell.data.index >= start) & (cell.data.index < end)]
    return part.set_axis(part.index.floor("h")), cell.source


def open_meteo_day_weather(cell: en.CellWeather, date: str, settings: ForecastSettings, cache_dir: str | Path,
                           session) -> tuple[pd.DataFrame, str]:
    """The archived Open-Meteo forecast of one cell's site for a local day (cached)."""
    start, end = day_window(date, cell.longitude)
    # the API labels each day's hours 00:00-23:00 with the mean of the hour before: the
    # last hour of a UTC day is labelled 00:00 of the next one
    first, last = start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")
    key, models = cell.cell.replace(":", "_"), settings.open_meteo.get("models")
    data = om.get_open_meteo_forecast(cell.latitude, cell.longitude, first, last,
                                      om.cache_file(cache_dir, key, first, last, models), session=session,
                                      url=settings.open_meteo["url"], models=models)
    part = data[(data.index >= start) & (data.index < end)]
    return part, f"Open-Meteo historical forecast ({settings.open_meteo.get('models') or 'best match'})"


def apply_day_ahead(installations: pd.DataFrame, saved_model: tuple, energy: en.EnergySettings,
                    settings: ForecastSettings, cache_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Day-ahead relative output (kW per kWp) of every installation with a weather cell
    for ``settings.apply_date`` (local standard day), with the saved trees.

    The installations' orientation and weather cells are the energy stage's
    (:func:`pvlake.energy.system_parameters`, :func:`pvlake.energy.assign_weather_cells`,
    :func:`pvlake.energy.load_cell_weather`); the weather of the day is the cell's
    typical-year weather on that calendar day (``forecast.weather: energy``) or the
    archived Open-Meteo forecast of the cell's site (``open_meteo``). Clear-sky power
    is computed at the cell as the energy stage computes clear sky (:func:`clear_sky_hours`).

    Returns
    -------
    pandas.DataFrame
        :data:`PV_FORECAST_COLUMNS`, sorted by ``pv_id`` and time.
    """
    model, columns = saved_model
    systems = en.system_parameters(installations, energy)
    cells = en.assign_weather_cells(systems["latitude"].to_numpy(), systems["longitude"].to_numpy(), energy)
    systems = pd.concat([systems.drop(columns=["flags", "flag_reasons"], errors="ignore"), cells], axis=1)
    systems = systems.dropna(subset=["weather_cell"])
    sites = systems.groupby("weather_cell").agg(
        weather_kind=("weather_kind", "first"), station_id=("station_id", "first"), site_lat=("site_lat", "first"),
        site_lon=("site_lon", "first"), fallback_lat=("latitude", "mean"), fallback_lon=("longitude", "mean"))
    weather, _ = en.load_cell_weather(sites.reset_index(), energy, cache_dir, progress)
    session = None
    if settings.weather == "open_meteo":
        http = settings.http
        session = http_session(attempts=int(http["attempts"]),
                               timeout_s=(float(http["connect_timeout_s"]), float(http["read_timeout_s"])))
    parts = []
    for cell_id, members in tqdm(systems.groupby("weather_cell"), desc="forecast cells", disable=not progress,
                                 mininterval=2):
        cell = weather.get(cell_id)
        if cell is None:
            continue
        if settings.weather == "open_meteo":
            day, source = open_meteo_day_weather(cell, settings.apply_date, settings, cache_dir, session)
        else:
            day, source = cell_day_weather(cell, settings.apply_date, energy)
        if not day.empty:
            parts.append(_cell_inputs(cell, day, source, members, energy, settings))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in PV_FORECAST_COLUMNS})
    frame = pd.concat(parts, ignore_index=True)
    # one prediction for every cell: the trees' per-call overhead is paid once
    frame["relative_output_kw_per_kwp"] = predict_trees(model, frame, columns, settings)
    frame = frame.sort_values(["pv_id", "time_utc"], kind="stable").reset_index(drop=True)
    return frame[list(PV_FORECAST_COLUMNS)]


def _cell_inputs(cell: en.CellWeather, day: pd.DataFrame, source: str, members: pd.DataFrame,
                 energy: en.EnergySettings, settings: ForecastSettings) -> pd.DataFrame:
    """Per installation and hour of one cell's day: the day-ahead model's features, the
    pvlib chain and clear-sky power per kWp."""
    hours = pd.DatetimeIndex(day.index)
    surfaces = en.Surfaces(members["tilt_deg"].to_numpy(float), members["azimuth_deg"].to_numpy(float),
                           members["array_type"].to_numpy(object))
    clear_sky = clear_sky_hours(cell.latitude, cell.longitude, cell.altitude_m, hours, energy.clearsky)
    weather = day[["ghi", "dni", "dhi", "temp_air", "wind_speed"]].fillna(0.0)
    clear = per_kw(clear_sky, cell.latitude, cell.longitude, cell.altitude_m, surfaces, energy.model)
    physical = per_kw(weather, cell.latitude, cell.longitude, cell.altitude_m, surfaces, energy.model)
    sun = sun_terms(hours, cell.latitude, cell.longitude, cell.altitude_m, surfaces.tilt_deg, surfaces.azimuth_deg)
    n_hours, n = clear.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        kt = np.where(clear_sky["ghi"].to_numpy() > 0, weather["ghi"].to_numpy() / clear_sky["ghi"].to_numpy(), np.nan)
        k_physical = np.where(clear > 0, physical / clear, np.nan)
    return pd.DataFrame({
        "pv_id": np.tile(members["pv_id"].to_numpy(object), n_hours), "time_utc": np.repeat(hours, n),
        "clear_target": clear.ravel(), "elevation_deg": np.repeat(sun["elevation_deg"][:, 0], n),
        "cos_aoi": sun["cos_aoi"].ravel(), "kt_ghi": np.repeat(np.clip(kt, 0.0, settings.max_clearsky_index), n),
        "temp_air": np.repeat(weather["temp_air"].to_numpy(), n),
        "k_physical": np.clip(k_physical, 0.0, settings.max_clearsky_index).ravel(),
        "physical_kw_per_kwp": physical.ravel(), "clear_sky_kw_per_kwp": clear.ravel(), "weather_source": source,
    })


# ================================================================== the stage


@dataclass
class ForecastRun:
    """What :func:`run_stage` computed: per-system evaluations, the scores per horizon
    and per product, the verdicts, the saved model, the installations' forecast, timing."""

    evaluations: list
    by_horizon: pd.DataFrame
    summary: pd.DataFrame
    verdicts: list
    saved: SavedModel
    pv_forecast: pd.DataFrame
    report: dict


def run_stage(prepared: str | Path, layout: Layout, settings: ForecastSettings, energy: en.EnergySettings,
              validation: en.ValidationSettings, progress: bool = True) -> ForecastRun:
    """Evaluate, train, apply and write: ``layout.forecast_eval()``, ``layout.forecast_scores()``,
    ``layout.forecast_model()`` with ``layout.forecast_model_metadata()``,
    ``layout.pv_forecast()`` and ``layout.forecast_report()``."""
    timing = {}
    started = time.perf_counter()
    series = [system_series(ms.NREL_SYSTEMS[key], energy.model, validation, energy.clearsky)
              for key in settings.systems]
    timing["data_s"] = time.perf_counter() - started
    evaluations = [evaluate_system(s, settings, progress) for s in series]
    timing["evaluation_s"] = time.perf_counter() - started - timing["data_s"]
    capacities = {e.system.key: e.capacity_kw for e in evaluations}
    forecasts = pd.concat([e.forecasts for e in evaluations], ignore_index=True)
    by_horizon = score(forecasts, capacities)
    summary = score(forecasts, capacities, by=())
    checks = verdicts(summary)
    mark = time.perf_counter()
    chosen = summary[(summary["product"] == "day_ahead") & (summary["setting"] == "perfect_prognosis")
                     & (summary["method"] == "ml")]
    saved = train_final_model(series, capacities, settings, chosen.round(4).to_dict(orient="records"))
    save_model(saved, layout.forecast_model(), layout.forecast_model_metadata())
    timing["final_model_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    pv_forecast = apply_day_ahead(en.read_installations(prepared), (saved.model, saved.features), energy,
                                  settings, layout.weather_cache(), progress)
    timing["apply_s"] = time.perf_counter() - mark
    en.write_table(eval_table(evaluations), EVAL_COLUMNS, layout.forecast_eval())
    with atomic_path(layout.forecast_scores()) as tmp:
        by_horizon.to_parquet(tmp, index=False)
    en.write_table(pv_forecast, PV_FORECAST_COLUMNS, layout.pv_forecast())
    timing["total_s"] = time.perf_counter() - started
    report = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "setting_labels": SETTINGS,
        "systems": {e.system.key: {"name": e.system.name, "metadata_source": e.system.metadata_source,
                                   "latitude": e.system.latitude, "longitude": e.system.longitude,
                                   "tilt_deg": e.system.tilt_deg, "azimuth_deg": e.system.azimuth_deg,
                                   "capacity_kw_estimated": round(e.capacity_kw, 4),
                                   "capacity_estimated_on": f"hours before {e.folds[0].train_end.isoformat()}",
                                   "folds": [{"fold": f.number, "train_end": f.train_end.isoformat(),
                                              "test_start": f.test_start.isoformat(),
                                              "test_end": f.test_end.isoformat()} for f in e.folds],
                                   "quality": e.quality, "pairs_dropped_missing_forecast": e.dropped}
                    for e in evaluations},
        "summary": summary.round(4).to_dict(orient="records"),
        "verdicts": checks,
        "forecasts": int(len(forecasts)),
        "pv_forecast": {"date": settings.apply_date, "weather": settings.weather, "rows": int(len(pv_forecast)),
                        "installations": int(pv_forecast["pv_id"].nunique()) if len(pv_forecast) else 0,
                        "caveat": CAVEAT},
        "seconds": {k: round(v, 2) for k, v in timing.items()},
    }
    write_json(json.loads(json.dumps(report, default=str)), layout.forecast_report())
    return ForecastRun(evaluations, by_horizon, summary, checks, saved, pv_forecast, report)
