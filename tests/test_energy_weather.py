"""Weather for the energy stage (pvlake.sources.weather): station files, the common clock,
and the PVGIS / NSRDB clients at the protocol level against a local server."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pvlib
import pytest

from pvlake.sources import weather as wx
from pvlake.sources.http import http_session
from weather_server import NSRDB_PATH, PVGIS_PATH, SEA_MESSAGE

YEAR = 2023


def session():
    return http_session(attempts=3, timeout_s=(5.0, 10.0))


# ------------------------------------------------------------------ the common clock


def test_typical_year_moves_local_hour_ending_values_to_utc_midpoints():
    local = pd.date_range("1990-01-01 01:00", periods=8760, freq="h", tz="Etc/GMT+5")  # hour-ending, UTC-5
    data = pd.DataFrame({"v": np.arange(8760.0)}, index=local)
    out = wx.typical_year(data, YEAR, "-30min")
    assert len(out) == 8760 and out.index.tz is not None
    assert out.index[0] == pd.Timestamp(f"{YEAR}-01-01 00:30", tz="UTC")
    assert (np.diff(out.index.asi8) == 3_600_000_000_000).all()
    # local Jan 1 00:00-01:00 (first value) is 05:00-06:00 UTC
    assert out.loc[pd.Timestamp(f"{YEAR}-01-01 05:30", tz="UTC"), "v"] == 0
    # the last local hours of Dec 31 wrap to the first UTC hours of Jan 1
    assert out.loc[pd.Timestamp(f"{YEAR}-01-01 00:30", tz="UTC"), "v"] == 8760 - 5


def test_typical_year_refuses_leap_years_gaps_and_naive_clocks():
    index = pd.date_range("1990-01-01", periods=8760, freq="h", tz="UTC")
    data = pd.DataFrame({"v": 1.0}, index=index)
    with pytest.raises(ValueError, match="leap year"):
        wx.typical_year(data, 2024)
    with pytest.raises(ValueError, match="8,760"):
        wx.typical_year(data.iloc[:-3], YEAR)
    with pytest.raises(ValueError, match="time zone"):
        wx.typical_year(data.tz_localize(None), YEAR)


def test_months_from_leap_years_keep_8760_hours():
    """A TMY stitched from a leap-year February (28 days, its last hour-ending label
    "Mar 1 00:00" as pvlib gives it, Greensboro's February is from 1996) stays whole."""
    parts = [pd.date_range(f"{1996 if m == 2 else 1990}-{m:02d}-01 01:00", periods=24 * pd.Period(f"1990-{m:02d}").days_in_month,
                           freq="h", tz="Etc/GMT+5") for m in range(1, 13)]
    parts[1] = parts[1][:-1].append(pd.DatetimeIndex([pd.Timestamp("1996-03-01 00:00", tz="Etc/GMT+5")]))
    index = parts[0].append(parts[1:])
    data = pd.DataFrame({"v": np.arange(8760.0)}, index=index)
    out = wx.typical_year(data, YEAR, "-30min")
    assert len(out) == 8760
    # Feb 28's last hour (local 23:00-24:00 = 04:00-05:00 UTC Mar 1) kept its value
    assert out.loc[pd.Timestamp(f"{YEAR}-03-01 04:30", tz="UTC"), "v"] == 31 * 24 + 28 * 24 - 1


# ------------------------------------------------------------------ pvlib's station files


def test_station_files_units_and_traps():
    greensboro, sand_point, miami = (wx.read_station(s, YEAR) for s in wx.PVLIB_STATIONS)
    raw, _ = pvlib.iotools.read_tmy3(wx.PVLIB_STATIONS[0].path, map_variables=True)
    # pressure in Pa, not the file's mbar
    assert greensboro.data["pressure"].mean() == pytest.approx(raw["pressure"].mean() * 100)
    assert 90_000 < miami.data["pressure"].min() < 110_000
    # Greensboro's albedo column is all zeros: dropped (the model's albedo applies);
    # Sand Point's is real and kept
    assert (raw["albedo"] == 0).all() and "albedo" not in greensboro.data
    assert sand_point.data["albedo"].between(0.1, 0.3).all()
    # TMY2 stores 0.1 degC and 0.1 m/s
    assert 15 < miami.data["temp_air"].mean() < 30 and miami.data["wind_speed"].max() < 30
    for w in (greensboro, sand_point, miami):
        assert list(w.data.columns[:6]) == list(wx.WEATHER_COLUMNS)
        assert w.data.index[0] == pd.Timestamp(f"{YEAR}-01-01 00:30", tz="UTC")
        assert w.data["ghi"].sum() == pytest.approx(w.data["ghi"].sum())
    assert greensboro.source == "TMY3 723170 (Greensboro, NC)" and miami.source == "TMY2 12839 (Miami, FL)"
    # annual GHI of the file is kept whole by the relabelling
    assert greensboro.data["ghi"].sum() == pytest.approx(raw["ghi"].sum())


def test_station_midday_is_at_solar_noon():
    """The relabelled clock puts the sun's peak where solar position says it is."""
    w = wx.read_station(wx.PVLIB_STATIONS[0], YEAR)
    june = w.data[w.data.index.month == 6]
    peak = june["ghi"].groupby(june.index.day).idxmax()
    solar_noon_utc = 12 - w.longitude / 15  # ~17.3 h
    hours = pd.Series([t.hour + t.minute / 60 for t in peak])
    assert abs(hours.median() - solar_noon_utc) < 1.0


# ------------------------------------------------------------------ PVGIS


def test_pvgis_tmy_fetched_once_cached_and_parsed(weather_server, tmp_path):
    cache = tmp_path / "pvgis" / "cell.json"
    w = wx.get_pvgis_tmy(45.0, 8.0, cache, session=session(), url=weather_server.pvgis_url, year=YEAR)
    assert cache.exists() and json.loads(cache.read_text())["outputs"]["tmy_hourly"]
    assert (w.latitude, w.longitude, w.source) == (45.0, 8.0, "PVGIS TMY")
    assert len(w.data) == 8760 and w.data.index[0] == pd.Timestamp(f"{YEAR}-01-01 00:00", tz="UTC")
    assert 90_000 < w.data["pressure"].mean() < 101_325  # SP is in Pa
    seen = weather_server.requests_to(PVGIS_PATH)
    assert len(seen) == 1
    assert seen[0].query["outputformat"] == "json" and float(seen[0].query["lat"]) == 45.0
    again = wx.get_pvgis_tmy(45.0, 8.0, cache, session=session(), url=weather_server.pvgis_url, year=YEAR)
    assert len(weather_server.requests_to(PVGIS_PATH)) == 1  # from the cache
    pd.testing.assert_frame_equal(again.data, w.data)


def test_pvgis_refusal_names_the_reason_and_leaves_no_cache(weather_server, tmp_path):
    weather_server.sea.append((40.0, 50.0, 0.0, 10.0))
    cache = tmp_path / "sea.json"
    with pytest.raises(wx.WeatherServiceError, match=SEA_MESSAGE) as err:
        wx.get_pvgis_tmy(45.0, 8.0, cache, session=session(), url=weather_server.pvgis_url, year=YEAR)
    assert "HTTP 400" in err.value.reason and not cache.exists()


def test_pvgis_server_errors_are_retried(weather_server, tmp_path):
    weather_server.plant(PVGIS_PATH, 503, 500)
    w = wx.get_pvgis_tmy(10.0, 20.0, tmp_path / "c.json", session=session(), url=weather_server.pvgis_url, year=YEAR)
    assert len(w.data) == 8760 and len(weather_server.requests_to(PVGIS_PATH)) == 3


def test_pvgis_answer_that_is_not_a_tmy_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"outputs": {}}))
    with pytest.raises(wx.WeatherServiceError, match="not a PVGIS TMY answer"):
        wx.read_pvgis_tmy(bad, YEAR)


# ------------------------------------------------------------------ NSRDB


def test_nsrdb_typical_year_with_key_from_environment(weather_server, tmp_path):
    env = {wx.NSRDB_KEY_ENV: weather_server.api_key, wx.NSRDB_EMAIL_ENV: "someone@example.org"}
    w = wx.get_nsrdb_tmy(36.1, -79.9, tmp_path / "n.csv", session=session(), url=weather_server.nsrdb_url,
                         year=YEAR, environ=env)
    assert w.source == "NSRDB TMY" and len(w.data) == 8760
    assert w.data.index[0] == pd.Timestamp(f"{YEAR}-01-01 00:30", tz="UTC")
    assert 90_000 < w.data["pressure"].mean() < 101_325 and (w.data["albedo"] == 0.18).all()
    (seen,) = weather_server.requests_to(NSRDB_PATH)
    assert seen.query["api_key"] == weather_server.api_key and seen.query["wkt"] == "POINT(-79.9000 36.1000)"
    assert seen.query["utc"] == "true" and seen.query["names"] == "tmy"
    # the cache file is the answer, and its name carries no key
    assert weather_server.api_key not in str(tmp_path / "n.csv") and (tmp_path / "n.csv").read_text().startswith("Source,")


def test_nsrdb_without_key_asks_nothing(weather_server, tmp_path):
    with pytest.raises(wx.WeatherServiceError, match=wx.NSRDB_KEY_ENV):
        wx.get_nsrdb_tmy(36.1, -79.9, tmp_path / "n.csv", session=session(), url=weather_server.nsrdb_url,
                         year=YEAR, environ={})
    assert weather_server.requests_to(NSRDB_PATH) == []


def test_nsrdb_errors_never_show_the_key(weather_server, tmp_path):
    secret = "wrong-secret-key-4711"
    env = {wx.NSRDB_KEY_ENV: secret}
    with pytest.raises(wx.WeatherServiceError) as err:
        wx.get_nsrdb_tmy(36.1, -79.9, tmp_path / "a.csv", session=session(), url=weather_server.nsrdb_url,
                         year=YEAR, environ=env)
    assert "HTTP 403" in str(err.value) and "invalid api_key" in str(err.value) and secret not in str(err.value)
    # an unreachable service: the error text of the transport names the URL with its query
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(wx.WeatherServiceError) as err:
        wx.get_nsrdb_tmy(36.1, -79.9, tmp_path / "b.csv", session=http_session(attempts=1),
                         url=f"http://127.0.0.1:{port}/api/x.csv", year=YEAR, environ=env)
    assert secret not in str(err.value) and "unreachable" in str(err.value)
    assert err.value.__cause__ is None


def test_cache_files_per_service_and_cell(tmp_path):
    assert wx.cache_file(tmp_path, "pvgis", "831c00fffffffff") == tmp_path / "pvgis" / "831c00fffffffff.json"
    assert wx.cache_file(tmp_path, "nsrdb", "831c00fffffffff").suffix == ".csv"
