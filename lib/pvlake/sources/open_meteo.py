"""Archived numerical weather forecasts from Open-Meteo's Historical Forecast API.

The forecasting stage's perfect-prognosis setting stands observed weather in for a
forecast; with internet, genuine forecasts can take its place. Open-Meteo
(https://open-meteo.com/en/docs/historical-forecast-api) archives its high-resolution
weather models' output from 2022 on (the first hours of every model run, stitched into
a continuous series) and serves it without a key at
``https://historical-forecast-api.open-meteo.com/v1/forecast``.

In the manner of pvlib ``iotools``: :func:`get_open_meteo_forecast` asks the service,
keeps its JSON answer verbatim in a cache file and reads it back with
:func:`read_open_meteo_forecast`, so a live answer and a stored one go through one parser.

Traps handled by the parser: radiation values are means over the *preceding* hour
(labelled at the hour's end; Open-Meteo's documentation: "solar radiation is averaged
over the past hour"), temperatures and wind are instantaneous at their label; wind is
asked in m/s (km/h is the API's default); times are asked in UTC (``timezone=GMT``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import requests

from . import weather as wx

SERVICE = "open-meteo"

URL = "https://historical-forecast-api.open-meteo.com/v1/forecast"
"""The Historical Forecast API endpoint."""

FIRST_DATE = "2022-01-01"
"""The archive's first day (its documentation: "past weather forecasts from 2022 onwards")."""

HOURLY_VARIABLES = {
    "shortwave_radiation": "ghi",
    "direct_normal_irradiance": "dni",
    "diffuse_radiation": "dhi",
    "temperature_2m": "temp_air",
    "wind_speed_10m": "wind_speed",
}
"""Open-Meteo hourly variables asked for -> pvlib names."""

RADIATION = ("ghi", "dni", "dhi")
"""Variables that are means over the preceding hour (the others are instantaneous)."""


def read_open_meteo_forecast(path: str | Path) -> pd.DataFrame:
    """An Open-Meteo forecast answer (JSON, as :func:`get_open_meteo_forecast` stores it).

    Returns
    -------
    pandas.DataFrame
        Hourly rows indexed by the **start** of each hour (UTC; the hour whose mean the
        radiation is): ``ghi``, ``dni``, ``dhi`` (W/m²), ``temp_air`` (°C, at the hour's
        end as labelled by the API, the nearest value to the hour's middle it gives) and
        ``wind_speed`` (m/s). ``attrs`` holds the grid point's ``latitude``,
        ``longitude`` and ``elevation``.

    Raises
    ------
    pvlake.sources.weather.WeatherServiceError
        When the file is not an Open-Meteo hourly answer with these variables in UTC.
    """
    try:
        answer = json.loads(Path(path).read_text(encoding="utf-8"))
        if int(answer.get("utc_offset_seconds", 0)) != 0:
            raise ValueError(f"times are not UTC (utc_offset_seconds {answer['utc_offset_seconds']})")
        units = answer.get("hourly_units", {})
        if units.get("wind_speed_10m") not in (None, "m/s"):
            raise ValueError(f"wind speed in {units['wind_speed_10m']}, not m/s")
        hourly = answer["hourly"]
        ends = pd.DatetimeIndex(pd.to_datetime(hourly["time"])).tz_localize("UTC")
        frame = pd.DataFrame({ours: np.asarray(hourly[theirs], dtype=float)
                              for theirs, ours in HOURLY_VARIABLES.items()}, index=ends)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise wx.WeatherServiceError(SERVICE, str(path), f"not an Open-Meteo hourly forecast answer ({exc})") from exc
    frame.index = (ends - pd.Timedelta("1h")).rename("time_utc")
    frame.attrs = {k: float(answer[k]) for k in ("latitude", "longitude", "elevation") if k in answer}
    return frame


def get_open_meteo_forecast(latitude: float, longitude: float, start_date: str, end_date: str,
                            cache_path: str | Path, *, session: requests.Session, url: str = URL,
                            models: str | None = None) -> pd.DataFrame:
    """Archived hourly forecasts at a point for whole UTC days, fetched once and cached.

    Parameters
    ----------
    latitude, longitude : float
        Degrees.
    start_date, end_date : str
        First and last day (``YYYY-MM-DD``, inclusive; not before :data:`FIRST_DATE`).
    cache_path : str or Path
        Where the answer is stored (``.json``); an existing file is read, not fetched.
    session : requests.Session
        The project's HTTP session (:func:`pvlake.sources.http.http_session`).
    url : str
        The API endpoint (:data:`URL`).
    models : str, optional
        Open-Meteo's ``models`` parameter (e.g. ``gfs_seamless``); None lets it choose
        the best model for the place.

    Returns
    -------
    pandas.DataFrame
        As :func:`read_open_meteo_forecast`.

    Raises
    ------
    pvlake.sources.weather.WeatherServiceError
        On a refusal (Open-Meteo answers 400 with ``{"error": true, "reason": ...}``,
        e.g. a date outside the archive), an error status after the session's retries,
        or no answer.
    """
    cache_path = Path(cache_path)
    if not cache_path.exists():
        params = {"latitude": round(float(latitude), 4), "longitude": round(float(longitude), 4),
                  "start_date": str(start_date), "end_date": str(end_date),
                  "hourly": ",".join(HOURLY_VARIABLES), "timezone": "GMT", "wind_speed_unit": "ms"}
        if models:
            params["models"] = models
        wx._fetch(session, SERVICE, url, params, cache_path)
    return read_open_meteo_forecast(cache_path)


def cache_file(folder: str | Path, key: str, start_date: str, end_date: str, models: str | None = None) -> Path:
    """Where the Open-Meteo answer for ``key`` (a weather cell), these days and these
    models (None: Open-Meteo's best match) is kept."""
    return Path(folder) / SERVICE / f"{key}_{start_date}_{end_date}_{models or 'best_match'}.json"
