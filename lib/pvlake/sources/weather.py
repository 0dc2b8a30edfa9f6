"""Hourly weather for the energy stage: station files, PVGIS and the NSRDB.

In the manner of pvlib ``iotools``: ``read_<source>`` parses a local file and
``get_<source>`` asks the service, stores its answer verbatim in a cache file and reads
that file with the same ``read_<source>``, so a live answer and a stored one go through
one parser.

- :func:`read_tmy3` / :func:`read_tmy2`: the typical meteorological years that pvlib ships
  in ``pvlib/data`` (:data:`PVLIB_STATIONS`: Greensboro NC and Sand Point AK in TMY3
  format, Miami FL in TMY2; Wilcox & Marion 2008, Marion & Urban 1995).
- :func:`get_pvgis_tmy` / :func:`read_pvgis_tmy`: the PVGIS typical meteorological year
  (JRC, ``<url>tmy``; Huld et al. 2012), parsed by :func:`pvlib.iotools.read_pvgis_tmy`.
- :func:`get_nsrdb_tmy` / :func:`read_nsrdb`: an NSRDB typical year (Sengupta et al. 2018)
  from the NREL developer API in the SAM CSV format that the PSM3 and PSM4 endpoints
  share, parsed by :func:`pvlib.iotools.read_nsrdb_psm4`. The API key and e-mail come from
  the environment (:data:`NSRDB_KEY_ENV`, :data:`NSRDB_EMAIL_ENV`) and never appear in a
  message, log or cache file name.

Every reader returns a :class:`Weather`: one typical year on a common clock
(:func:`typical_year`): UTC timestamps of a reference year, each at the instant its
values describe (the middle of an hour-averaged interval, the satellite time of an
instantaneous value), whole minutes, 8,760 rows, with ``ghi``, ``dni``, ``dhi`` (W/m²),
``temp_air`` (°C), ``wind_speed`` (m/s), ``pressure`` (Pa) and, where the source has a
real one, ``albedo``. Two traps of the station files are handled here: TMY3 pressure is
in mbar (pvlib wants Pa), and the Greensboro file's ``albedo`` column is all zeros (a
missing value, not snow-free black ground), so it is dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib
import requests

from ..io import atomic_path
from .http import failure_reason, http_reason

WEATHER_COLUMNS = ("ghi", "dni", "dhi", "temp_air", "wind_speed", "pressure")
"""Columns every :class:`Weather` has; ``albedo`` is added where the source measures it."""

HOURS_PER_YEAR = 8760

NSRDB_KEY_ENV = "NSRDB_API_KEY"
"""Environment variable holding the NREL developer API key (https://developer.nrel.gov/signup/)."""

NSRDB_EMAIL_ENV = "NSRDB_EMAIL"
"""Environment variable holding the e-mail address the NSRDB API requires with each request."""

NSRDB_ATTRIBUTES = ("ghi", "dni", "dhi", "air_temperature", "wind_speed", "surface_pressure", "surface_albedo")
"""NSRDB request attributes: what the energy model reads."""


class WeatherServiceError(Exception):
    """A weather service did not give a usable answer.

    Parameters
    ----------
    service : str
        ``pvgis`` or ``nsrdb``.
    where : str
        The request (URL without query: it may hold the API key) or file concerned.
    reason : str
        What went wrong.
    """

    def __init__(self, service: str, where: str, reason: str):
        self.service, self.where, self.reason = service, where, reason
        super().__init__(f"{service} ({where}): {reason}")


@dataclass(frozen=True)
class Weather:
    """One typical year of hourly weather at one site.

    Attributes
    ----------
    data : pandas.DataFrame
        :data:`WEATHER_COLUMNS` (and maybe ``albedo``), 8,760 rows indexed by UTC
        timestamps of the reference year (see :func:`typical_year`).
    latitude, longitude : float
        Where the weather is (degrees); solar position is computed there.
    altitude_m : float
        Site elevation above sea level.
    source : str
        What the data are, as the energy table's ``weather_source`` names it.
    meta : dict
        The source's own metadata (station, database, months selected...).
    """

    data: pd.DataFrame
    latitude: float
    longitude: float
    altitude_m: float
    source: str
    meta: dict = field(default_factory=dict, compare=False)


# ------------------------------------------------------------------ common clock


def typical_year(data: pd.DataFrame, year: int, shift: pd.Timedelta | str = "0min") -> pd.DataFrame:
    """A typical year moved onto the common clock: UTC, one reference year, whole minutes.

    Typical years stitch months of different years together and label them in local
    time; the energy stage shares solar position between sites with the same clock, so
    every series is brought to the same 8,760 timestamps (up to a sub-hour offset).

    Parameters
    ----------
    data : pandas.DataFrame
        8,760 hourly rows with a timezone-aware index (Feb 29 rows are dropped).
    year : int
        Reference year (not a leap year).
    shift : Timedelta or str
        Added to every timestamp first, to move the label to the instant the values
        describe (``-30min`` for hour-ending averages).

    Returns
    -------
    pandas.DataFrame
        Rows sorted by their new UTC timestamps (values from the last hours of Dec 31
        local time wrap to Jan 1 UTC, which is night on both sides of the seam).

    Raises
    ------
    ValueError
        When ``year`` is a leap year, the index is not timezone-aware, or the rows do
        not make one timestamp per hour of the year.
    """
    if pd.Timestamp(year=year, month=1, day=1).is_leap_year:
        raise ValueError(f"reference year {year} is a leap year; typical years have 8,760 hours")
    index = pd.DatetimeIndex(data.index)
    if index.tz is None:
        raise ValueError("weather timestamps carry no time zone")
    keep = ~((index.month == 2) & (index.day == 29))
    index, data = index[keep], data[keep]
    # The year replaced on the wall clock first (months come from different years; pvlib
    # labels the last hour of a leap-year Feb 28 "Mar 1 00:00"), then the shift, then
    # UTC, whose Dec 31 / Jan 1 seam is wrapped into the same year.
    local = _with_year(index, year).tz_localize(index.tz)
    utc = (local + pd.Timedelta(shift)).tz_convert("UTC").round("min")
    moved = _with_year(utc, year).tz_localize("UTC")
    out = data.set_axis(pd.DatetimeIndex(moved, name="time_utc")).sort_index()
    steps = np.diff(out.index.asi8)
    if len(out) != HOURS_PER_YEAR or (len(steps) and (steps != 3_600_000_000_000).any()):
        raise ValueError(
            f"{len(out):,} rows that are not one per hour of a year (a typical year has {HOURS_PER_YEAR:,})"
        )
    return out


def _with_year(index: pd.DatetimeIndex, year: int) -> pd.DatetimeIndex:
    """The naive wall-clock times of ``index`` in ``year``."""
    return pd.DatetimeIndex(pd.to_datetime(
        {"year": year, "month": index.month, "day": index.day, "hour": index.hour, "minute": index.minute}
    ))


def _weather_frame(data: pd.DataFrame, albedo: pd.Series | None = None) -> pd.DataFrame:
    frame = data[list(WEATHER_COLUMNS)].astype(float)
    # A constant 0 (or a gap) is no measurement: the model's configured albedo applies.
    if albedo is not None and (albedo > 0).all():
        frame["albedo"] = albedo.astype(float)
    return frame


# ------------------------------------------------------------------ pvlib's station files


@dataclass(frozen=True)
class Station:
    """A typical-year weather file shipped in ``pvlib/data``."""

    station_id: str
    file_format: str
    file_name: str
    name: str

    @property
    def path(self) -> Path:
        return Path(pvlib.__file__).parent / "data" / self.file_name


PVLIB_STATIONS = (
    Station("723170", "tmy3", "723170TYA.CSV", "Greensboro, NC"),
    Station("703165", "tmy3", "703165TY.csv", "Sand Point, AK"),
    Station("12839", "tmy2", "12839.tm2", "Miami, FL"),
)
"""The real typical-year files pvlib ships: the offline weather near these stations."""


def read_tmy3(path: str | Path, year: int, name: str | None = None) -> Weather:
    """A TMY3 file (NREL, Wilcox & Marion 2008) as a :class:`Weather`.

    Values are hour-ending averages in local standard time: each is labelled at the
    middle of its hour. Pressure mbar -> Pa; an all-zero ``Alb`` column is dropped.
    """
    data, meta = pvlib.iotools.read_tmy3(path, map_variables=True)
    data = data.assign(pressure=data["pressure"] * 100.0)
    frame = typical_year(_weather_frame(data, data.get("albedo")), year, "-30min")
    label = name or meta["Name"].strip('"').title()
    return Weather(frame, float(meta["latitude"]), float(meta["longitude"]), float(meta["altitude"]),
                   f"TMY3 {meta['USAF']} ({label})", {**meta, "file": Path(path).name})


def read_tmy2(path: str | Path, year: int, name: str | None = None) -> Weather:
    """A TMY2 file (NREL, Marion & Urban 1995) as a :class:`Weather`.

    pvlib labels each hour at its start: values are moved to the middle of the hour.
    The file stores temperature in 0.1 °C, wind in 0.1 m/s and pressure in mbar.
    """
    raw, meta = pvlib.iotools.read_tmy2(path)
    data = pd.DataFrame({
        "ghi": raw["GHI"], "dni": raw["DNI"], "dhi": raw["DHI"],
        "temp_air": raw["DryBulb"] / 10.0, "wind_speed": raw["Wspd"] / 10.0, "pressure": raw["Pressure"] * 100.0,
    }, index=raw.index)
    frame = typical_year(_weather_frame(data), year, "30min")
    label = name or f"{meta['City'].title()}, {meta['State']}"
    return Weather(frame, float(meta["latitude"]), float(meta["longitude"]), float(meta["altitude"]),
                   f"TMY2 {meta['WBAN']} ({label})", {**meta, "file": Path(path).name})


@lru_cache(maxsize=8)
def read_station(station: Station, year: int) -> Weather:
    """The weather of one of :data:`PVLIB_STATIONS` (parsed once per process: pvlib's
    TMY2 reader takes seconds)."""
    reader = read_tmy3 if station.file_format == "tmy3" else read_tmy2
    return reader(station.path, year, station.name)


TMY3_HEADER = ("USAF", "Name", "State", "TZ", "latitude", "longitude", "altitude")
TMY2_HEADER = "WBAN,City,State,TZ,latitude,longitude,altitude"


def station_sites() -> pd.DataFrame:
    """Where the :data:`PVLIB_STATIONS` are: ``station_id``, ``name``, ``latitude``,
    ``longitude``, from the first line of each file (as pvlib's readers parse it)."""
    rows = []
    for station in PVLIB_STATIONS:
        with open(station.path, encoding="latin-1") as fh:
            line = fh.readline()
        if station.file_format == "tmy3":
            meta = dict(zip(TMY3_HEADER, line.rstrip("\n").split(",")))
        else:
            meta = pvlib.iotools.tmy._parsemeta_tmy2(TMY2_HEADER, line)
        rows.append({"station_id": station.station_id, "name": station.name,
                     "latitude": float(meta["latitude"]), "longitude": float(meta["longitude"])})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ services


def _fetch(session: requests.Session, service: str, url: str, params: dict, dest: Path,
           secrets: tuple[str, ...] = ()) -> None:
    """GET ``url`` and store the body in ``dest`` (atomically) when the answer is 200.

    Messages name the URL without its query, and every ``secrets`` value (an API key in
    the query) is blanked out of them, whatever the error says.
    """

    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    try:
        response = session.get(url, params=params)
    except requests.RequestException as exc:
        raise WeatherServiceError(service, url, scrub(failure_reason(session, url, exc))) from None
    if response.status_code != 200:
        reason = http_reason(response)
        try:
            detail = response.json()
        except ValueError:
            detail = None
        if isinstance(detail, dict):
            # PVGIS explains a refusal in {"message": ...}, the NSRDB in {"errors": [...]}
            # or {"error": {"message": ...}}, Open-Meteo in {"error": true, "reason": ...}
            error = detail.get("error")
            message = (detail.get("message") or "; ".join(map(str, detail.get("errors") or []))
                       or (error.get("message") if isinstance(error, dict) else None) or detail.get("reason"))
            reason += f": {message}" if message else ""
        raise WeatherServiceError(service, url, scrub(reason))
    with atomic_path(dest) as tmp:
        tmp.write_bytes(response.content)


def read_pvgis_tmy(path: str | Path, year: int) -> Weather:
    """A PVGIS TMY answer (JSON, as :func:`get_pvgis_tmy` stores it) as a :class:`Weather`.

    PVGIS labels its hours in UTC at the full hour; they are used as labelled. ``SP`` is
    already in Pa.

    Raises
    ------
    WeatherServiceError
        When the file is not a PVGIS TMY answer.
    """
    try:
        data, meta = pvlib.iotools.read_pvgis_tmy(path, pvgis_format="json", map_variables=True)
        location = meta["inputs"]["location"]
        latitude, longitude = float(location["latitude"]), float(location["longitude"])
        altitude = float(location.get("elevation") or 0.0)
        frame = typical_year(_weather_frame(data), year)
    except (KeyError, TypeError, ValueError) as exc:
        raise WeatherServiceError("pvgis", str(path), f"not a PVGIS TMY answer ({exc})") from exc
    return Weather(frame, latitude, longitude, altitude, "PVGIS TMY",
                   {"months_selected": meta.get("months_selected"), "meteo_data": meta["inputs"].get("meteo_data"),
                    "file": Path(path).name})


def get_pvgis_tmy(latitude: float, longitude: float, cache_path: str | Path, *, session: requests.Session,
                  url: str, year: int, usehorizon: bool = True) -> Weather:
    """The PVGIS typical meteorological year at a point, fetched once and cached.

    Parameters
    ----------
    latitude, longitude : float
        Degrees.
    cache_path : str or Path
        Where the answer is stored (``.json``); an existing file is read, not fetched.
    session : requests.Session
        The project's HTTP session (:func:`pvlake.sources.http.http_session`).
    url : str
        PVGIS API base, ending with ``/`` (``https://re.jrc.ec.europa.eu/api/v5_3/``);
        the request goes to ``<url>tmy``.
    year : int
        Reference year of the returned timestamps.
    usehorizon : bool
        Let PVGIS shade the irradiance with its terrain horizon.

    Raises
    ------
    WeatherServiceError
        On a refusal (PVGIS answers 400 with a reason, e.g. a point at sea), an error
        status after the session's retries, or no answer.
    """
    cache_path = Path(cache_path)
    if not cache_path.exists():
        params = {"lat": round(float(latitude), 4), "lon": round(float(longitude), 4), "outputformat": "json",
                  "usehorizon": int(bool(usehorizon))}
        _fetch(session, "pvgis", url.rstrip("/") + "/tmy", params, cache_path)
    return read_pvgis_tmy(cache_path, year)


def read_nsrdb(path: str | Path, year: int) -> Weather:
    """An NSRDB file in SAM CSV format (PSM3 or PSM4, as :func:`get_nsrdb_tmy` stores it)
    as a :class:`Weather`.

    Values are instantaneous at their timestamps (local standard time, or UTC when the
    file says ``Time Zone`` 0). ``Pressure`` mbar -> Pa; ``Surface Albedo`` is kept.

    Raises
    ------
    WeatherServiceError
        When the file is not an NSRDB SAM CSV.
    """
    try:
        data, meta = pvlib.iotools.read_nsrdb_psm4(path, map_variables=True)
        data = data.assign(pressure=data["pressure"] * 100.0)
        frame = typical_year(_weather_frame(data, data.get("albedo")), year)
    except (KeyError, ValueError, IndexError, StopIteration) as exc:
        raise WeatherServiceError("nsrdb", str(path), f"not an NSRDB SAM CSV with the needed columns ({exc})") from exc
    return Weather(frame, float(meta["latitude"]), float(meta["longitude"]), float(meta["altitude"]),
                   "NSRDB TMY", {k: meta.get(k) for k in ("Source", "Location ID", "Version")} | {"file": Path(path).name})


def get_nsrdb_tmy(latitude: float, longitude: float, cache_path: str | Path, *, session: requests.Session,
                  url: str, year: int, names: str = "tmy", environ=os.environ) -> Weather:
    """An NSRDB typical year at a point, fetched once and cached.

    Parameters
    ----------
    latitude, longitude : float
        Degrees.
    cache_path : str or Path
        Where the answer is stored (``.csv``); an existing file is read, not fetched.
    session : requests.Session
        The project's HTTP session.
    url : str
        The download endpoint (``.../nsrdb-GOES-tmy-v4-0-0-download.csv``; the retired
        ``psm3-2-2-tmy-download.csv`` took the same request).
    year : int
        Reference year of the returned timestamps.
    names : str
        The typical year wanted (``tmy``, ``tgy``, ``tdy``, or a versioned one).
    environ : mapping
        Where :data:`NSRDB_KEY_ENV` and :data:`NSRDB_EMAIL_ENV` are read.

    Raises
    ------
    WeatherServiceError
        Without an API key, on a refusal (403 for a bad key, 400 with the API's
        ``errors``) or no answer.
    """
    cache_path = Path(cache_path)
    if not cache_path.exists():
        api_key = environ.get(NSRDB_KEY_ENV)
        if not api_key:
            raise WeatherServiceError("nsrdb", url, f"no API key: set the environment variable {NSRDB_KEY_ENV}")
        params = {
            "api_key": api_key, "email": environ.get(NSRDB_EMAIL_ENV, ""), "names": names,
            "wkt": f"POINT({float(longitude):.4f} {float(latitude):.4f})", "interval": 60, "utc": "true",
            "leap_day": "false", "attributes": ",".join(NSRDB_ATTRIBUTES), "reason": "pvlake energy stage",
        }
        _fetch(session, "nsrdb", url, params, cache_path, secrets=(api_key,))
    return read_nsrdb(cache_path, year)


def cache_file(folder: str | Path, service: str, key: str) -> Path:
    """Where the answer of ``service`` for ``key`` (an H3 cell) is kept."""
    suffix = {"pvgis": ".json", "nsrdb": ".csv"}[service]
    return Path(folder) / service / f"{key}{suffix}"

