"""A real HTTP server on 127.0.0.1 that answers like PVGIS's TMY API and the NSRDB's
typical-year download, for the energy stage's protocol tests.

- ``GET /api/v5_3/tmy?lat=..&lon=..&outputformat=json&usehorizon=..``: PVGIS's JSON
  (``inputs.location``, ``inputs.meteo_data``, ``outputs.months_selected``,
  ``outputs.tmy_hourly`` with ``time(UTC)``, ``T2m``, ``G(h)``, ``Gb(n)``, ``Gd(h)``,
  ``WS10m``, ``SP``..., ``meta``); a point "at sea" gets PVGIS's 400 with a ``message``.
- ``GET /api/nsrdb/v2/solar/nsrdb-GOES-tmy-v4-0-0-download.csv?api_key=..&wkt=POINT(lon lat)&..``:
  the SAM CSV the NSRDB answers (two metadata lines, a header, 8,760 rows); a wrong key
  gets 403 with the API's JSON error, missing parameters a 400 with ``errors``.

The weather in both answers is real: pvlib's Greensboro TMY3 file, relabelled and moved to
the point's solar time. Faults can
be planted per path (an HTTP status with ``Retry-After: 0``); every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pvlib

from pvlake.sources import weather as wx

PVGIS_PATH = "/api/v5_3/tmy"
NSRDB_PATH = "/api/nsrdb/v2/solar/nsrdb-GOES-tmy-v4-0-0-download.csv"
SEA_MESSAGE = "Location over the sea. Please, select another location"


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    path: str
    query: dict
    raw_query: str


def _greensboro() -> tuple:
    """Greensboro's typical year on a UTC clock with each month in the year the TMY3 file
    took it from (as PVGIS and the NSRDB label theirs), hour starts; and the station's
    metadata."""
    station = wx.PVLIB_STATIONS[0]
    raw, meta = pvlib.iotools.read_tmy3(station.path, map_variables=True)
    years = raw.groupby(raw.index.month).apply(lambda part: part.index.year.value_counts().idxmax())
    data = wx.read_tmy3(station.path, 2023).data
    data = data.assign(relative_humidity=70.0, wind_direction=180.0)
    starts = data.index - np.timedelta64(30, "m")
    labels = [t.replace(year=int(years[t.month])) for t in starts]
    return data.set_axis(labels), meta


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args, state: "WeatherServer", **kwargs):
        self.state = state
        super().__init__(*args, **kwargs)

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def do_GET(self):
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.state.record(Seen(parts.path, query, parts.query))
        fault = self.state.next_fault(parts.path)
        if fault is not None:
            self._send(fault, b"", "text/plain", {"Retry-After": "0"})
            return
        if parts.path == PVGIS_PATH:
            self._pvgis(query)
        elif parts.path == NSRDB_PATH:
            self._nsrdb(query)
        else:
            self._json(404, {"message": "not found"})

    def _pvgis(self, query: dict):
        try:
            lat, lon = float(query["lat"]), float(query["lon"])
        except (KeyError, ValueError):
            self._json(400, {"message": "Required parameters lat, lon"})
            return
        if query.get("outputformat") != "json":
            self._json(400, {"message": "this server answers outputformat=json only"})
            return
        if self.state.at_sea(lat, lon):
            self._json(400, {"message": SEA_MESSAGE, "status": 400})
            return
        self._json(200, self.state.pvgis_answer(lat, lon))

    def _nsrdb(self, query: dict):
        missing = [k for k in ("api_key", "wkt", "names", "email") if k not in query]
        if "api_key" in missing:
            self._json(403, {"error": {"code": "API_KEY_MISSING", "message": "No api_key was supplied."}})
            return
        if query["api_key"] != self.state.api_key:
            self._json(403, {"error": {"code": "API_KEY_INVALID", "message": "An invalid api_key was supplied."}})
            return
        if missing:
            self._json(400, {"errors": [f"{k} is required" for k in missing]})
            return
        point = re.fullmatch(r"POINT\(\s*(-?[\d.]+)\s+(-?[\d.]+)\s*\)", query["wkt"])
        if not point:
            self._json(400, {"errors": ["wkt must be POINT(lon lat)"]})
            return
        lon, lat = float(point.group(1)), float(point.group(2))
        self._send(200, self.state.nsrdb_answer(lat, lon).encode(), "text/csv")


class WeatherServer:
    """The server, started on a free port; ``close()`` stops it.

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:<port>``.
    pvgis_url, nsrdb_url : str
        What the energy settings take (``pvgis.url``, ``nsrdb.url``).
    api_key : str
        The NSRDB key the server accepts.
    sea : list of tuple
        (lat_min, lat_max, lon_min, lon_max) boxes PVGIS refuses as "at sea".
    seen : list of Seen
    """

    def __init__(self, api_key: str = "test-key-0123456789"):
        self.api_key = api_key
        self.sea: list[tuple[float, float, float, float]] = []
        self.seen: list[Seen] = []
        self._faults: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._data, self._meta = _greensboro()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Handler(*a, state=self, **k))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.pvgis_url = self.url + PVGIS_PATH.removesuffix("tmy")
        self.nsrdb_url = self.url + NSRDB_PATH

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def plant(self, path: str, *statuses: int) -> None:
        """Answer the next requests to ``path`` with these statuses, in order."""
        with self._lock:
            self._faults.setdefault(path, []).extend(statuses)

    def next_fault(self, path: str) -> int | None:
        with self._lock:
            queue = self._faults.get(path)
            return queue.pop(0) if queue else None

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self._faults.clear()
            self.sea.clear()

    def requests_to(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def at_sea(self, lat: float, lon: float) -> bool:
        return any(a <= lat <= b and c <= lon <= d for a, b, c, d in self.sea)

    def _at(self, lon: float):
        """The Greensboro year moved in time to the point's longitude (its noon at the
        point's solar noon), on the same UTC labels."""
        hours = round((lon - float(self._meta["longitude"])) / 15)
        return self._data.set_axis(self._data.index).apply(lambda col: np.roll(col.to_numpy(), -hours))

    def pvgis_answer(self, lat: float, lon: float) -> dict:
        """PVGIS's TMY JSON at a point: the Greensboro year, in UTC, months from their years."""
        data = self._at(lon)
        index = data.index
        rows = [{
            "time(UTC)": t.strftime("%Y%m%d:%H%M"), "T2m": float(r.temp_air), "RH": float(r.relative_humidity),
            "G(h)": float(r.ghi), "Gb(n)": float(r.dni), "Gd(h)": float(r.dhi), "IR(h)": 300.0,
            "WS10m": float(r.wind_speed), "WD10m": float(r.wind_direction), "SP": float(r.pressure),
        } for t, r in zip(index, data.itertuples())]
        months = sorted({(t.month, t.year) for t in index})
        return {
            "inputs": {"location": {"latitude": lat, "longitude": lon, "elevation": float(self._meta["altitude"])},
                       "meteo_data": {"radiation_db": "PVGIS-SARAH3", "meteo_db": "ERA5", "year_min": 2005,
                                      "year_max": 2023, "use_horizon": True, "horizon_db": "DEM-calculated"}},
            "outputs": {"months_selected": [{"month": m, "year": y} for m, y in months[:12]], "tmy_hourly": rows},
            "meta": {"inputs": {"location": {"description": "Selected location"}},
                     "outputs": {"tmy_hourly": {"type": "time series", "timestamp": "hourly"}}},
        }

    def nsrdb_answer(self, lat: float, lon: float) -> str:
        """The NSRDB SAM CSV at a point (UTC, instantaneous values at half past)."""
        data = self._at(lon)
        header = ("Source,Location ID,City,State,Country,Latitude,Longitude,Time Zone,Elevation,Local Time Zone,"
                  "DHI Units,DNI Units,GHI Units,Temperature Units,Pressure Units,Wind Speed Units,"
                  "Surface Albedo Units,Version")
        meta = f"NSRDB,1234567,-,-,-,{lat:.2f},{lon:.2f},0,{int(self._meta['altitude'])},-5,w/m2,w/m2,w/m2,c,mbar,m/s,N/A,4.1.0"
        lines = [header, meta, "Year,Month,Day,Hour,Minute,DHI,DNI,GHI,Temperature,Pressure,Wind Speed,Surface Albedo"]
        for t, r in zip(data.index + np.timedelta64(30, "m"), data.itertuples()):
            lines.append(f"{t.year},{t.month},{t.day},{t.hour},{t.minute},{r.dhi:g},{r.dni:g},{r.ghi:g},"
                         f"{r.temp_air:g},{r.pressure / 100:g},{r.wind_speed:g},0.18")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
