"""The energy stage (pvlake.energy): system parameters, weather cells, the vectorised model
against pvlib (solar position, clear sky, transposition, the per-system ModelChain), the
stage's outputs, online weather through a local PVGIS/NSRDB-like server, and the sample run."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pvlib
import pytest

from pvlake import energy as en
from pvlake.geo import h3_cells
from pvlake.layout import Layout
from pvlake.lake import connect_lake
from pvlake.sources import weather as wx
from weather_server import NSRDB_PATH, PVGIS_PATH

YEAR = 2023
SETTINGS = en.EnergySettings()

warnings.filterwarnings("ignore", category=RuntimeWarning)  # pvlib divides by zero at night


def installations(rows: list[dict]) -> pd.DataFrame:
    """Prepared-table-like rows (defaults: a point at Cambridge UK without attributes)."""
    base = {"centroid_lon": 0.12, "centroid_lat": 52.2, "area_m2": np.nan, "capacity_mw": np.nan, "attributes": None}
    return pd.DataFrame([{"pv_id": f"pv{i:03d}", **base, **row} for i, row in enumerate(rows)])


def station(index: int = 0) -> wx.Weather:
    return wx.read_station(wx.PVLIB_STATIONS[index], YEAR)


# ------------------------------------------------------------------ solar position, clear sky, sky


def test_solar_position_equals_pvlib_spa():
    rng = np.random.default_rng(3)
    lat, lon, alt = rng.uniform(-60, 70, 5), rng.uniform(-180, 180, 5), rng.uniform(0, 3000, 5)
    times = en.year_clock(YEAR, 30)[::7]
    temp = rng.uniform(-20, 35, (len(times), 5))
    pressure = rng.uniform(70_000, 102_000, (len(times), 5))
    ours = en.solar_position(times, lat, lon, alt, pressure, temp)
    for j in range(5):
        ref = pvlib.solarposition.get_solarposition(times, lat[j], lon[j], alt[j], pressure=pressure[:, j],
                                                    temperature=temp[:, j])
        np.testing.assert_allclose(ours["apparent_zenith"][:, j], ref["apparent_zenith"], atol=1e-9)
        np.testing.assert_allclose(ours["zenith"][:, j], ref["zenith"], atol=1e-9)
        np.testing.assert_allclose(ours["azimuth"][:, j], ref["azimuth"], atol=1e-9)


@pytest.mark.parametrize("n_points", [3, en.POINT_READS + 5])
def test_grid_lookups_equal_pvlib(n_points):
    """Linke turbidity and altitude read point by point or as one block equal pvlib's lookups."""
    rng = np.random.default_rng(n_points)
    lat, lon = rng.uniform(-60, 70, n_points), rng.uniform(-180, 180, n_points)
    times = en.year_clock(YEAR)
    linke = en.linke_basis(times) @ en._padded(en.linke_monthly(lat, lon)).T
    altitude = en.lookup_altitude_m(lat, lon)
    for j in (0, n_points - 1):
        ref = pvlib.clearsky.lookup_linke_turbidity(times, lat[j], lon[j])
        np.testing.assert_allclose(linke[:, j], ref.to_numpy(), atol=1e-12)
        assert altitude[j] == pvlib.location.lookup_altitude(lat[j], lon[j])


def test_clearsky_weather_equals_pvlib_ineichen():
    lat, lon, alt = 40.0, -105.0, 1650.0
    w = en.clearsky_weather(lat, lon, alt, YEAR, SETTINGS.clearsky)
    times = w.data.index
    pressure = pvlib.atmosphere.alt2pres(alt)
    sun = pvlib.solarposition.get_solarposition(times, lat, lon, alt, pressure=pressure,
                                                temperature=SETTINGS.clearsky["temp_air_c"])
    airmass = pvlib.atmosphere.get_absolute_airmass(pvlib.atmosphere.get_relative_airmass(sun["apparent_zenith"]), pressure)
    ref = pvlib.clearsky.ineichen(sun["apparent_zenith"], airmass, pvlib.clearsky.lookup_linke_turbidity(times, lat, lon),
                                  altitude=alt, dni_extra=pvlib.irradiance.get_extra_radiation(times))
    for k in ("ghi", "dni", "dhi"):
        np.testing.assert_allclose(w.data[k], ref[k].fillna(0), atol=1e-9)
    assert w.source == en.CLEARSKY_SOURCE and w.data["ghi"].max() > 900


@pytest.mark.parametrize("transposition", ["perez", "haydavies"])
def test_sky_terms_rebuild_pvlib_sky_diffuse(transposition):
    w = station(0)
    times = w.data.index
    sun = pvlib.solarposition.get_solarposition(times, w.latitude, w.longitude, w.altitude_m,
                                                pressure=w.data["pressure"], temperature=w.data["temp_air"])
    zen, az = sun["apparent_zenith"].to_numpy(), sun["azimuth"].to_numpy()
    dni_extra = pvlib.irradiance.get_extra_radiation(times).to_numpy()
    airmass = pvlib.atmosphere.get_relative_airmass(zen)
    d = en.sky_terms(zen, w.data["dni"].to_numpy(), w.data["dhi"].to_numpy(), dni_extra, airmass, transposition)
    for tilt, azimuth in ((0, 180), (30, 180), (60, 95), (89, 300)):
        ref = pvlib.irradiance.get_sky_diffuse(tilt, azimuth, zen, az, w.data["dni"], w.data["ghi"], w.data["dhi"],
                                               dni_extra=dni_extra, airmass=airmass, model=transposition).to_numpy()
        facing = np.maximum(pvlib.irradiance.aoi_projection(tilt, azimuth, zen, az), 0)
        cos_t, sin_t = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
        if transposition == "perez":
            ours = np.maximum(d["iso"] * (1 + cos_t) + d["horizon"] * sin_t + d["circumsolar"] * facing, 0)
        else:
            ours = np.maximum(d["iso"] * (1 + cos_t), 0) + np.maximum(d["circumsolar"] * facing, 0)
        np.testing.assert_allclose(ours, ref, atol=1e-9, equal_nan=True)


def test_clear_sky_is_an_upper_bound_at_the_stations():
    gap = en.station_clearsky_gap(SETTINGS).set_index("station")
    assert (gap["real_below_clearsky_pct"] > 15).all()
    assert gap.loc["TMY3 723170 (Greensboro, NC)", "real_kwh_per_kwp"] == pytest.approx(1390, abs=15)


# ------------------------------------------------------------------ the array model against ModelChain


def test_physical_iam_table_equals_pvlib():
    cos_aoi = np.concatenate([np.random.default_rng(1).uniform(-0.3, 1.0, 200_000), [0.0, 1e-9, 0.5, 1.0]])
    with np.errstate(invalid="ignore"):
        ref = np.nan_to_num(pvlib.iam.physical(np.degrees(np.arccos(np.clip(cos_aoi, -1, 1)))))
    np.testing.assert_allclose(en.physical_iam(cos_aoi), np.where(cos_aoi > 0, ref, 0.0), atol=1e-10)


MODELS = {
    "perez-sapm-physical": en.ModelSettings(),
    "haydavies-faiman-no_loss": en.ModelSettings(transposition="haydavies", temperature="faiman", aoi_model="no_loss"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_hourly_ac_power_equals_modelchain(name):
    """The (hours x surfaces) maths gives ModelChain's hourly AC power, for fixed ground
    and rooftop arrays and single-axis trackers, with every model choice."""
    model = MODELS[name]
    w = station(1)  # Sand Point: has a real albedo column
    surfaces = en.Surfaces(np.array([0.0, 35.0, 20.0, 0.0]), np.array([180.0, 200.0, 90.0, 170.0]),
                           np.array(["ground", "ground", "rooftop", "single_axis"], dtype=object))
    ours = en.ac_power(w.data, w.latitude, w.longitude, w.altitude_m, surfaces, model)
    for j in range(len(surfaces)):
        mc = en.reference_modelchain(w, surfaces.tilt_deg[j], surfaces.azimuth_deg[j], 1.0, surfaces.array_type[j], model)
        mc.run_model(w.data)
        ref = mc.results.ac.fillna(0).to_numpy() / 1000.0
        np.testing.assert_allclose(ours[j].to_numpy(), ref, atol=1e-9)
    assert ours.sum().between(500, 3000).all()


def test_modelchain_uses_the_stage_parameters():
    model = en.ModelSettings(dc_ac_ratio=1.3, losses={"soiling": 5})
    mc = en.reference_modelchain(station(0), 25.0, 180.0, 250.0, "rooftop", model)
    array = mc.system.arrays[0]
    assert array.module_parameters == {"pdc0": 250_000.0, "gamma_pdc": model.gamma_pdc_per_c}
    assert array.temperature_model_parameters == pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["close_mount_glass_glass"]
    assert mc.system.inverter_parameters["pdc0"] * model.eta_inv_nom == pytest.approx(250_000 / 1.3)
    assert mc.system.pvwatts_losses() == pytest.approx(model.losses_percent)
    assert (mc.dc_model.__name__, mc.ac_model.__name__, mc.transposition_model) == ("pvwatts_dc", "pvwatts_inverter", "perez")


def test_grid_nodes_and_weights():
    model = SETTINGS.model
    surfaces = en.Surfaces(np.array([30.0, 31.0, 20.0, 0.0, 10.0]), np.array([180.0, 183.0, 358.0, 90.0, 190.0]),
                           np.array(["ground", "ground", "rooftop", "ground", "single_axis"], dtype=object))
    rows, cols, weights, nodes = en.grid_nodes(surfaces, model)
    np.testing.assert_allclose(np.bincount(rows, weights), 1.0)
    on_node = rows == 0
    assert on_node.sum() == 1 and (nodes.tilt_deg[cols[on_node]], nodes.azimuth_deg[cols[on_node]]) == (30.0, 180.0)
    # interpolation reproduces the surface's own tilt and azimuth
    for i in (1, 2):
        sel = rows == i
        assert np.sum(weights[sel] * nodes.tilt_deg[cols[sel]]) == pytest.approx(surfaces.tilt_deg[i])
    # azimuth wraps at north: 358 deg lies between the 355 and 0 deg nodes
    assert set(nodes.azimuth_deg[cols[rows == 2]]) == {355.0, 0.0}
    # a horizontal tracker axis is the same both ways: 190 deg is the 10 deg node
    tracker = rows == 4
    assert tracker.sum() == 1 and nodes.azimuth_deg[cols[tracker]][0] == 10.0 and nodes.array_type[cols[tracker]][0] == "single_axis"
    assert set(nodes.array_type[cols[rows == 2]]) == {"rooftop"}


def test_shared_grid_nodes_compute_lonely_surfaces_as_they_are():
    """Defaults sharing nodes go through the grid; a surface whose nodes nobody else uses
    is computed as it is (one node, weight 1)."""
    lat = 52.0 + np.linspace(0, 0.5, 20)
    surfaces = en.Surfaces(np.append(en.default_tilt_deg(lat, SETTINGS.orientation), 33.3),
                           np.append(en.default_azimuth_deg(lat), 123.4), np.full(21, "ground", dtype=object))
    rows, cols, weights, nodes = en.shared_grid_nodes(surfaces, SETTINGS.model)
    np.testing.assert_allclose(np.bincount(rows, weights, minlength=21), 1.0)
    lonely = rows == 20
    assert lonely.sum() == 1 and weights[lonely][0] == 1.0
    assert (nodes.tilt_deg[cols[lonely]][0], nodes.azimuth_deg[cols[lonely]][0]) == (33.3, 123.4)
    assert len(nodes) <= 4 + 1  # the defaults share a few grid nodes


# ------------------------------------------------------------------ system parameters


def test_capacity_sources_and_impossible_attributes():
    cap = SETTINGS.capacity
    table = en.system_parameters(installations([
        {"capacity_mw": 0.004, "area_m2": 25.0},                      # 0: source (160 W/m2)
        {"area_m2": 30.0},                                            # 1: rooftop estimate
        {"area_m2": 50_000.0},                                        # 2: ground estimate
        {"area_m2": 0.0},                                             # 3: zero area
        {"area_m2": -12.0, "capacity_mw": 1.5},                       # 4: negative area, source capacity kept
        {"capacity_mw": -1.0, "area_m2": 40.0},                       # 5: negative capacity -> area
        {"capacity_mw": 5.0, "area_m2": 100.0},                       # 6: 50 kW/m2: impossible -> area
        {},                                                           # 7: nothing
    ]), SETTINGS)
    t = table.set_index("pv_id")
    assert t.loc["pv000", ["capacity_kw", "capacity_source"]].tolist() == [4.0, "source"]
    assert t.loc["pv001", "capacity_kw"] == pytest.approx(30 * cap["rooftop_cover_ratio"] * cap["module_w_per_m2"] / 1000)
    assert t.loc["pv001", "array_type"] == "rooftop" and t.loc["pv002", "array_type"] == "ground"
    assert t.loc["pv002", "capacity_kw"] == pytest.approx(50_000 * cap["ground_cover_ratio"] * cap["module_w_per_m2"] / 1000)
    assert set(t.loc["pv003", "flags"]) == {"area_not_positive", "no_capacity"} and np.isnan(t.loc["pv003", "capacity_kw"])
    assert t.loc["pv004", "capacity_source"] == "source" and "area_not_positive" in t.loc["pv004", "flags"]
    assert t.loc["pv005", "capacity_source"] == "area estimate" and "capacity_not_positive" in t.loc["pv005", "flags"]
    assert t.loc["pv006", "capacity_source"] == "area estimate" and t.loc["pv006", "flags"] == ["capacity_exceeds_area"]
    assert "5,000.0 kW on 100 m² is 50,000 W/m²" in t.loc["pv006", "flag_reasons"]
    assert t.loc["pv007", "capacity_source"] == "none" and t.loc["pv007", "flags"] == ["no_capacity"]
    # never zero
    assert not (table["capacity_kw"] == 0).any()
    with_default = en.system_parameters(installations([{}]),
                                        dataclasses.replace(SETTINGS, capacity={**cap, "default_kw": 4.0}))
    assert with_default.loc[0, ["capacity_kw", "capacity_source"]].tolist() == [4.0, "default"]
    assert with_default.loc[0, "flags"] == ["default_capacity"] and "4 kW" in with_default.loc[0, "flag_reasons"]


def test_orientation_from_source_attributes_or_latitude():
    table = en.system_parameters(installations([
        {"attributes": json.dumps({"tilt": 25, "azimuth": 200, "mount": "Fixed"})},
        {"attributes": json.dumps({"rowAzimuth": 170.5, "rowMount": "single_axis"})},
        {"attributes": json.dumps({"tilt": 120, "azimuth": "n/a"})},
        {"attributes": json.dumps({"mount": "dual_axis"})},
        {"centroid_lat": -33.9, "centroid_lon": 18.4},
        {"attributes": json.dumps({"other": 1})},
        {"centroid_lat": np.nan, "centroid_lon": np.nan},
    ]), SETTINGS).set_index("pv_id")
    assert t_row(table, "pv000") == (25.0, 200.0, "source", "ground")
    # a tracker's azimuth is its axis (N-S unless stated), tilt 0 (horizontal axis)
    assert t_row(table, "pv001") == (0.0, 180.0, "source", "single_axis")
    lat_tilt = 0.76 * 52.2 + 3.1
    assert t_row(table, "pv002")[:3] == (pytest.approx(lat_tilt), 180.0, "latitude default")
    assert set(table.loc["pv002", "flags"]) == {"tilt_out_of_range", "azimuth_invalid", "no_capacity"}
    assert "mount_not_modelled" in table.loc["pv003", "flags"] and table.loc["pv003", "array_type"] == "ground"
    assert t_row(table, "pv004")[:3] == (pytest.approx(0.76 * 33.9 + 3.1), 0.0, "latitude default")  # faces north
    assert table.loc["pv005", "orientation_source"] == "latitude default" and table.loc["pv005", "flags"] == ["no_capacity"]


def t_row(table, pv_id):
    row = table.loc[pv_id]
    return (row["tilt_deg"], row["azimuth_deg"], row["orientation_source"], row["array_type"])


def test_settings_from_config_merge_nested_keys_and_refuse_leap_years():
    settings = en.EnergySettings.from_config({
        "weather": "pvgis", "pvgis": {"url": "http://mirror/api/"}, "capacity": {"default_kw": 3.0},
        "model": {"sapm": {"ground": "open_rack_glass_glass"}, "losses": {"soiling": 5}, "method": "exact"},
        "validation": {"modelchain_systems": 10},  # the chapter's, not the stage's
    })
    assert settings.pvgis["url"] == "http://mirror/api/" and settings.pvgis["usehorizon"] is True
    assert settings.capacity["default_kw"] == 3.0 and settings.capacity["module_w_per_m2"] == 200.0
    assert settings.model.sapm == {"ground": "open_rack_glass_glass", "rooftop": "close_mount_glass_glass"}
    assert settings.model.losses_percent == pytest.approx(pvlib.pvsystem.pvwatts_losses(soiling=5))
    assert settings.model.method == "exact"
    with pytest.raises(ValueError, match="leap year"):
        en.EnergySettings.from_config({"year": 2024})
    with pytest.raises(ValueError, match="must divide 90"):
        en.ModelSettings(grid_tilt_step_deg=7.0)


def test_weather_cells_offline_and_online_coverage():
    # Greensboro airport is ~1.5 km from the TMY3 station; Cambridge UK is far from all three
    cells = en.assign_weather_cells(np.array([36.09, 52.2, np.nan]), np.array([-79.94, 0.12, np.nan]), SETTINGS)
    assert cells.loc[0, ["weather_cell", "weather_kind", "station_id"]].tolist() == ["station:723170", "station", "723170"]
    assert cells.loc[0, "weather_distance_km"] < 3
    assert cells.loc[1, "weather_kind"] == "clearsky" and cells.loc[1, "weather_cell"].startswith("h3:83")
    assert cells.loc[1, "weather_distance_km"] < 80  # to the centre of its res-3 cell
    assert cells.loc[2, "weather_cell"] is None and not cells.loc[2, "covered"]
    online = en.assign_weather_cells(np.array([36.09, 52.2]), np.array([-79.94, 0.12]),
                                     dataclasses.replace(SETTINGS, weather="nsrdb"))
    assert online["weather_kind"].tolist()[0] == "nsrdb" and online["covered"].tolist() == [True, False]


# ------------------------------------------------------------------ the stage


@pytest.fixture(scope="module")
def sample_installations(sample_run) -> pd.DataFrame:
    return en.read_installations(Layout(sample_run).prepared_parquet())


def test_modelchain_agreement_on_200_sample_installations(sample_installations, tmp_path):
    """The issue's check: on the same weather, the vectorised (grid-interpolated) annual
    energy of 200 random installations is within 0.5 % of per-system ModelChain runs."""
    run = en.energy_table(sample_installations, SETTINGS, tmp_path, progress=False)
    agreement = en.modelchain_agreement(run, SETTINGS, n=200, seed=7, progress=False)
    assert len(agreement) == 200
    assert agreement["difference_pct"].abs().max() < 0.5, agreement.nlargest(5, "difference_pct")
    assert set(agreement["weather_source"]) >= {en.CLEARSKY_SOURCE}


@pytest.mark.parametrize("method", ["grid", "exact"])
def test_modelchain_agreement_with_source_orientations_and_trackers(sample_installations, tmp_path, method):
    """Installations with their own tilt, azimuth (any direction) and mount: the grid
    interpolation stays within 0.5 %, the exact method matches to rounding."""
    rng = np.random.default_rng(11)
    frame = sample_installations.copy()
    n = len(frame)
    mount = rng.choice(["fixed", "single_axis"], n)
    frame["attributes"] = [json.dumps({"tilt": round(t, 2), "azimuth": round(a, 2), "mount": m})
                           for t, a, m in zip(rng.uniform(0, 70, n), rng.uniform(0, 360, n), mount)]
    settings = dataclasses.replace(SETTINGS, model=dataclasses.replace(SETTINGS.model, method=method))
    run = en.energy_table(frame, settings, tmp_path, progress=False)
    agreement = en.modelchain_agreement(run, settings, n=40, seed=3, progress=False)
    assert set(agreement["array_type"]) == {"ground", "rooftop", "single_axis"}
    assert agreement["difference_pct"].abs().max() < (0.5 if method == "grid" else 1e-9)


def test_energy_table_sums_profile_and_reasons(sample_installations, tmp_path):
    run = en.energy_table(sample_installations, SETTINGS, tmp_path, progress=False)
    table, profile = run.table, run.profile.to_pandas()
    assert list(table["pv_id"]) == sorted(sample_installations["pv_id"])
    monthly = table[[f"kwh_{m:02d}" for m in range(1, 13)]].sum(axis=1)
    has_energy = table["annual_kwh"].notna()
    np.testing.assert_allclose(monthly[has_energy], table.loc[has_energy, "annual_kwh"], rtol=1e-9)
    np.testing.assert_allclose(table["capacity_factor"], table["specific_yield_kwh_per_kwp"] / 8760)
    # the profile of each cell holds the energy of its installations with a capacity
    cells = h3_cells(run.systems["longitude"].to_numpy(), run.systems["latitude"].to_numpy(),
                        SETTINGS.profile_h3_resolution)
    expected = pd.Series(run.systems.set_index("pv_id").index.map(table.set_index("pv_id")["annual_kwh"]).to_numpy(),
                         index=cells).groupby(level=0).sum()
    got = profile.groupby("h3_cell", observed=True)["ac_kw"].sum()
    np.testing.assert_allclose(got.sort_index(), expected.reindex(got.index).sort_index(), rtol=1e-9)
    assert profile.groupby("h3_cell", observed=True).size().eq(8760).all() and (profile["ac_kw"] >= 0).all()
    # offline: every row is either a station year or a flagged clear-sky upper bound
    clear = table["weather_source"] == en.CLEARSKY_SOURCE
    assert table.loc[clear, "flags"].map(lambda f: "clearsky_upper_bound" in f).all()
    assert table.loc[~clear, "weather_source"].str.startswith(("TMY3", "TMY2")).all()
    # real weather is below the clear-sky bound at the same place: the Greensboro farms
    stations = table[~clear]
    assert stations["specific_yield_kwh_per_kwp"].between(1100, 1700).all()
    assert run.report["weather_cells"] == table["weather_cell"].nunique()


def test_online_weather_one_request_per_cell_with_fallback_and_cache(weather_server, tmp_path):
    """PVGIS per H3 cell: one request per cell, a refused cell centre (at sea) asked again
    at its installations' mean location, a cell refused twice flagged, a rerun from the
    cache without a request."""
    rows = [
        {"centroid_lat": 36.07, "centroid_lon": -79.79},   # Greensboro
        {"centroid_lat": 36.08, "centroid_lon": -79.80},   # same cell
        {"centroid_lat": 51.50, "centroid_lon": -0.12},    # London
        {"centroid_lat": 40.40, "centroid_lon": -3.70},    # Madrid: centre "at sea", installation not
        {"centroid_lat": -33.90, "centroid_lon": 18.40},   # Cape Town: refused everywhere
    ]
    settings = dataclasses.replace(SETTINGS, weather="pvgis", pvgis={**SETTINGS.pvgis, "url": weather_server.pvgis_url},
                                   http={"connect_timeout_s": 5, "read_timeout_s": 10, "attempts": 2})
    madrid_centre = en.assign_weather_cells(np.array([40.40]), np.array([-3.70]), settings).loc[0]
    weather_server.sea.extend([(madrid_centre.site_lat - 1e-3, madrid_centre.site_lat + 1e-3,
                                madrid_centre.site_lon - 1e-3, madrid_centre.site_lon + 1e-3),
                               (-40.0, -30.0, 10.0, 25.0)])
    run = en.energy_table(installations(rows), settings, tmp_path, progress=False)
    table = run.table.set_index("pv_id")
    asked = weather_server.requests_to(PVGIS_PATH)
    assert len(asked) == 2 + 2 + 2  # Greensboro and London once, Madrid and Cape Town twice
    assert table.loc["pv000", "weather_cell"] == table.loc["pv001", "weather_cell"]
    assert table.loc[["pv000", "pv002", "pv003"], "weather_source"].eq("PVGIS TMY").all()
    assert table.loc[["pv000", "pv002", "pv003"], "specific_yield_kwh_per_kwp"].between(1000, 2000).all()
    assert table.loc["pv004", "flags"] == ["no_capacity", "weather_unavailable"]
    assert "Location over the sea" in table.loc["pv004", "flag_reasons"]
    assert np.isnan(table.loc["pv004", "specific_yield_kwh_per_kwp"])
    assert "clearsky_upper_bound" not in sum(table["flags"], [])
    before = len(weather_server.seen)
    again = en.energy_table(installations(rows), settings, tmp_path, progress=False)
    assert len(weather_server.seen) - before == 2  # only the refused cell is asked again
    pd.testing.assert_frame_equal(again.table, run.table)


def test_online_weather_all_refused_is_one_error(weather_server, tmp_path):
    settings = dataclasses.replace(SETTINGS, weather="pvgis", pvgis={**SETTINGS.pvgis, "url": weather_server.pvgis_url},
                                   http={"connect_timeout_s": 5, "read_timeout_s": 10, "attempts": 1})
    weather_server.sea.append((-90.0, 90.0, -180.0, 180.0))
    with pytest.raises(wx.WeatherServiceError, match="no usable answer for any of 1 cells"):
        en.energy_table(installations([{}]), settings, tmp_path, progress=False)


def test_nsrdb_coverage_and_key_stay_out_of_outputs(weather_server, tmp_path, monkeypatch):
    monkeypatch.setenv(wx.NSRDB_KEY_ENV, weather_server.api_key)
    monkeypatch.setenv(wx.NSRDB_EMAIL_ENV, "someone@example.org")
    settings = dataclasses.replace(SETTINGS, weather="nsrdb", nsrdb={**SETTINGS.nsrdb, "url": weather_server.nsrdb_url})
    layout = Layout(tmp_path / "data")
    prepared = tmp_path / "prepared.parquet"
    installations([{"centroid_lat": 36.07, "centroid_lon": -79.79, "area_m2": 20.0}, {}]).to_parquet(prepared)
    run = en.run_stage(prepared, layout, settings, progress=False)
    table = run.table.set_index("pv_id")
    assert table.loc["pv000", "weather_source"] == "NSRDB TMY" and table.loc["pv000", "annual_kwh"] > 0
    assert "outside_weather_coverage" in table.loc["pv001", "flags"] and table.loc["pv001", "weather_cell"] is None
    assert len(weather_server.requests_to(NSRDB_PATH)) == 1
    for path in (layout.energy_parquet(), layout.energy_profile(), layout.energy_report()):
        assert weather_server.api_key.encode() not in path.read_bytes()
    assert [p.name for p in (layout.weather_cache() / "nsrdb").iterdir()] == [f"{run.systems.loc[0, 'weather_cell'][3:]}.csv"]


# ------------------------------------------------------------------ the sample run


def test_sample_run_energy_table_in_the_lake_and_chapter_in_the_book(sample_run, sample_book):
    layout = Layout(sample_run)
    table = pd.read_parquet(layout.energy_parquet())
    prepared = pd.read_parquet(layout.prepared_parquet(), columns=["pv_id"])
    assert list(table.columns) == list(en.ENERGY_COLUMNS) and len(table) == len(prepared)
    assert not (table["capacity_kw"] == 0).any()
    report = json.loads(layout.energy_report().read_text())
    assert report["by_weather_source"]["TMY3 723170 (Greensboro, NC)"] > 0
    assert report["by_weather_source"]["TMY2 12839 (Miami, FL)"] > 0
    con = connect_lake(sample_run)
    try:
        rows = con.sql("SELECT count(*) FROM lake.curated.pv_energy").fetchone()[0]
        by_source = con.sql("SELECT weather_source, count(*) FROM lake.curated.pv_energy GROUP BY ALL").df()
        hours = con.sql("SELECT count(DISTINCT time_utc) FROM lake.curated.pv_energy_profile").fetchone()[0]
    finally:
        con.close()
    assert rows == len(table) and hours == 8760
    assert by_source.set_index("weather_source")["count_star()"].to_dict() == table["weather_source"].value_counts().to_dict()
    validation = json.loads(layout.energy_validation().read_text())
    assert validation["modelchain"]["within_target"]
    assert all(all(m["targets_met"].values()) for m in validation["measured"].values())
    html = (sample_book / "energy-energy.html").read_text(encoding="utf-8")
    assert "Agreement with pvlib" in html and "Validation on measured PV power" in html and "Flagged installations" in html
    assert layout.executed_notebook("energy", "energy").exists()
