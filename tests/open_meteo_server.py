"""A real HTTP server on 127.0.0.1 that answers like Open-Meteo's Historical Forecast API,
for the forecasting stage's protocol tests.

``GET /v1/forecast?latitude=..&longitude=..&start_date=YYYY-MM-DD&end_date=YYYY-MM-DD
&hourly=a,b&timezone=GMT&wind_speed_unit=ms[&models=..]`` answers Open-Meteo's JSON
(``latitude``, ``longitude``, ``generationtime_ms``, ``utc_offset_seconds``, ``timezone``,
``timezone_abbreviation``, ``elevation``, ``hourly_units``, ``hourly`` with ``time`` as
``YYYY-MM-DDTHH:MM``), one value per hour of the requested days. Radiation is the mean of
the preceding hour (labelled at its end), as the API documents; wind is in km/h unless
``wind_speed_unit=ms``. Refusals are Open-Meteo's: HTTP 400 with
``{"error": true, "reason": ...}`` for a missing coordinate, an unknown variable, a date
outside the archive or an end before the start.

The weather is real: pvlib's Greensboro TMY3 year, each requested hour taking the typical
year's value of the same calendar hour, moved to the point's solar time. Faults can be
planted (an HTTP status with ``Retry-After: 0``); every request is recorded.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from pvlake.sources import weather as wx

PATH = "/v1/forecast"
FIRST_DATE = "2022-01-01"
LAST_DATE = "2026-11-27"
VARIABLES = {"shortwave_radiation": ("ghi", "W/m²"), "direct_normal_irradiance": ("dni", "W/m²"),
             "diffuse_radiation": ("dhi", "W/m²"), "temperature_2m": ("temp_air", "°C"),
             "wind_speed_10m": ("wind_speed", "km/h")}


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args, state: "OpenMeteoServer", **kwargs):
        self.state = state
        super().__init__(*args, **kwargs)

    def log_message(self, *args):  # keep test output quiet
        pass

    def _json(self, status: int, obj, headers: dict | None = None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.state.record(query)
        fault = self.state.next_fault()
        if fault is not None:
            self._json(fault, {"error": True, "reason": "planted fault"}, {"Retry-After": "0"})
            return
        if parts.path != PATH:
            self._json(404, {"error": True, "reason": "Not Found"})
            return
        status, answer = self.state.answer(query)
        self._json(status, answer)


class OpenMeteoServer:
    """The server, started on a free port; ``close()`` stops it.

    Attributes
    ----------
    url : str
        The endpoint (``http://127.0.0.1:<port>/v1/forecast``), as ``forecast.open_meteo.url`` takes it.
    seen : list of dict
        Query parameters of every request.
    """

    def __init__(self):
        self.seen: list[dict] = []
        self._faults: list[int] = []
        self._lock = threading.Lock()
        station = wx.read_station(wx.PVLIB_STATIONS[0], 2023)
        self._station_lon = station.longitude
        self._elevation = station.altitude_m
        # the typical year by calendar hour (values are hour means at mid-hour)
        data = station.data
        self._year = data.set_axis(pd.MultiIndex.from_arrays([data.index.month, data.index.day, data.index.hour]))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Handler(*a, state=self, **k))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{PATH}"

    def record(self, query: dict) -> None:
        with self._lock:
            self.seen.append(query)

    def plant(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, in order."""
        with self._lock:
            self._faults.extend(statuses)

    def next_fault(self) -> int | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self._faults.clear()

    def hour_values(self, starts: pd.DatetimeIndex, longitude: float) -> pd.DataFrame:
        """The weather of hours starting at ``starts`` (UTC) at a longitude: the typical
        year's calendar hour, moved to the point's solar time (Feb 29 takes Feb 28)."""
        moved = starts + pd.Timedelta(hours=round((longitude - self._station_lon) / 15))
        day = np.where((moved.month == 2) & (moved.day == 29), 28, moved.day)
        keys = pd.MultiIndex.from_arrays([moved.month, day, moved.hour])
        return self._year.reindex(keys).set_axis(starts)

    def answer(self, query: dict) -> tuple[int, dict]:
        try:
            lat, lon = float(query["latitude"]), float(query["longitude"])
        except (KeyError, ValueError):
            return 400, {"error": True, "reason": "Parameter 'latitude' and 'longitude' must have the same number of elements"}
        names = [v for v in query.get("hourly", "").split(",") if v]
        unknown = [v for v in names if v not in VARIABLES]
        if unknown:
            return 400, {"error": True, "reason": f"Cannot initialize ForecastVariable from invalid String value {unknown[0]} for key hourly"}
        start, end = query.get("start_date"), query.get("end_date")
        if not start or not end:
            return 400, {"error": True, "reason": "Parameter 'start_date' and 'end_date' must be set together"}
        if start < FIRST_DATE or end > LAST_DATE:
            return 400, {"error": True, "reason": f"Parameter 'start_date' is out of allowed range from {FIRST_DATE} to {LAST_DATE}"}
        if end < start:
            return 400, {"error": True, "reason": "End-date must be larger or equals than start-date"}
        if query.get("timezone", "GMT") not in ("GMT", "UTC"):
            return 400, {"error": True, "reason": "this server answers in GMT only"}
        ends = pd.date_range(pd.Timestamp(start, tz="UTC") + pd.Timedelta("1h"), pd.Timestamp(end, tz="UTC") + pd.Timedelta("1D"),
                             freq="h")
        # the API labels hour t with the mean of [t - 1 h, t) and its first label is 00:00
        labels = ends - pd.Timedelta("1h")
        values = self.hour_values(labels - pd.Timedelta("1h"), lon)
        km_h = query.get("wind_speed_unit", "kmh") != "ms"
        hourly = {"time": [t.strftime("%Y-%m-%dT%H:%M") for t in labels]}
        units = {"time": "iso8601"}
        for name in names:
            column, unit = VARIABLES[name]
            series = values[column].to_numpy(float)
            if name == "wind_speed_10m" and km_h:
                series = series * 3.6
            elif name == "wind_speed_10m":
                unit = "m/s"
            hourly[name] = [None if not np.isfinite(v) else round(float(v), 1) for v in series]
            units[name] = unit
        return 200, {"latitude": round(lat, 3), "longitude": round(lon, 3), "generationtime_ms": 0.5,
                     "utc_offset_seconds": 0, "timezone": "GMT", "timezone_abbreviation": "GMT",
                     "elevation": self._elevation, "hourly_units": units, "hourly": hourly}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
