"""Energy stage: the expected yield of every PV installation, from documented assumptions.

For each installation of ``prepared/pv_installations.parquet``:

1. **System parameters** (:func:`system_parameters`): DC capacity from the source's
   ``capacity_mw``, else from the area (module cover ratio x module power density, one
   pair for rooftop-sized and one for ground-mounted areas), else a configured default;
   tilt, azimuth and mount from the source's attributes where present, else the
   equator-facing latitude rule (tilt = 0.76 |lat| + 3.1 deg, Landau's fit of the
   annual optimum); impossible attributes (non-positive area or capacity, a capacity the
   area cannot hold, a source tilt outside 0-90 deg) are flagged with the reason.
2. **Weather cells** (:func:`assign_weather_cells`): installations near one of pvlib's
   station files share its real typical year; elsewhere installations in one H3 cell
   share one weather series (clear-sky Ineichen with Linke turbidity offline, labelled
   an upper bound; PVGIS or NSRDB online, fetched once per cell and cached).
3. **Model** (:func:`ac_power_per_kw`): pvlib's PVWatts-style chain at hourly resolution,
   solar position (NREL SPA, Reda & Andreas 2004), plane-of-array transposition (Perez
   et al. 1990 or Hay & Davies 1980), angle-of-incidence losses (physical, De Soto et
   al. 2006), cell temperature (SAPM, King et al. 2004, or Faiman 2008), PVWatts DC with
   a temperature coefficient, PVWatts losses and inverter (Dobos 2014). The model is
   linear in capacity, so it runs per kWp.
4. **Vectorised**: sites are processed in chunks sharing one clock; solar position, sky
   and weather are computed once per cell as (hours x cells) arrays, the hour-only half of
   the SPA once per chunk; per cell only the hours with light are kept, and the array
   maths runs over (hours x surfaces) blocks reduced at once to annual, monthly and
   profile sums. The surfaces are either the installations themselves
   (``method: exact``) or the nodes of a tilt x azimuth grid around them, whose yields
   are interpolated bilinearly (``method: grid``, the lookup-table approach: the
   specific yield of a system design depends only on weather, tilt and azimuth).
   :func:`reference_modelchain` builds the per-system :class:`pvlib.modelchain.ModelChain`
   the results are checked against.

Outputs (:func:`run_stage`): ``curated/pv_energy.parquet`` (one row per installation,
:data:`ENERGY_COLUMNS`) and ``curated/pv_energy_profile.parquet`` (hourly AC power summed
per coarse H3 cell, :data:`PROFILE_COLUMNS`), plus a JSON report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path

import h3
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pvlib
from pvlib import spa
from pyproj import Geod
from tqdm import tqdm

from .geo import h3_cells
from .io import atomic_path, write_json
from .layout import Layout
from .sources import weather as wx
from .sources.http import http_session

GEOD = Geod(ellps="WGS84")

DELTA_T_S = 67.0
"""TT - UT1 (s) for the SPA: pvlib's default in :func:`pvlib.solarposition.spa_python`."""

ATMOS_REFRACT_DEG = 0.5667
"""Apparent sun elevation at sunset (SPA's refraction constant, pvlib's default)."""

ARRAY_TYPES = ("ground", "rooftop", "single_axis")
"""How an installation is mounted: fixed on the ground, fixed on a roof (hotter: less air
behind the modules), or on horizontal single-axis trackers."""

CAPACITY_SOURCES = ("source", "area estimate", "default", "none")
ORIENTATION_SOURCES = ("source", "latitude default")

WEATHER_KINDS = ("station", "clearsky", "pvgis", "nsrdb")
CLEARSKY_SOURCE = "clear-sky Ineichen/Linke (upper bound)"

FLAGS = {
    "area_not_positive": "the source area is zero or negative: not used",
    "capacity_not_positive": "the source capacity is zero or negative: not used",
    "capacity_exceeds_area": "the source capacity is more than the area can hold: the area estimate is used",
    "no_capacity": "no capacity and no area: no energy in kWh, specific yield only",
    "default_capacity": "no capacity and no area: the configured default capacity is used",
    "tilt_out_of_range": "the source tilt is outside 0-90 deg: the latitude default is used",
    "azimuth_invalid": "the source azimuth is not a number: the latitude default is used",
    "mount_not_modelled": "the source mount type is not fixed or single-axis: modelled as fixed",
    "no_location": "no coordinates: no weather, no energy",
    "outside_weather_coverage": "the latitude/longitude is outside the weather source's coverage: no energy",
    "weather_unavailable": "the weather service gave no usable answer for the cell: no energy",
    "clearsky_upper_bound": "clear-sky weather (no clouds): an upper bound, not an estimate",
}
"""Flag codes of the energy table and what each means."""

ENERGY_COLUMNS = {
    "pv_id": pa.string(),
    "capacity_kw": pa.float64(),
    "capacity_source": pa.string(),
    "array_type": pa.string(),
    "tilt_deg": pa.float64(),
    "azimuth_deg": pa.float64(),
    "orientation_source": pa.string(),
    "weather_source": pa.string(),
    "weather_cell": pa.string(),
    "weather_distance_km": pa.float64(),
    "annual_kwh": pa.float64(),
    "specific_yield_kwh_per_kwp": pa.float64(),
    "capacity_factor": pa.float64(),
    **{f"kwh_{m:02d}": pa.float64() for m in range(1, 13)},
    "flags": pa.list_(pa.string()),
    "flag_reasons": pa.string(),
}
"""Columns of ``curated/pv_energy.parquet`` (and the lake table ``curated.pv_energy``).
``capacity_kw`` is DC (kWp); ``tilt_deg``/``azimuth_deg`` are the module plane for fixed
arrays and the axis (tilt 0) for single-axis trackers; azimuths are degrees clockwise from
north; ``kwh_01`` ... ``kwh_12`` are the months (UTC); ``capacity_factor`` is annual AC
energy over DC capacity x 8,760 h."""

PROFILE_COLUMNS = {
    "h3_cell": pa.dictionary(pa.int32(), pa.string()),
    "time_utc": pa.timestamp("us", tz="UTC"),
    "ac_kw": pa.float64(),
    "installations": pa.int32(),
    "capacity_kw": pa.float64(),
}
"""Columns of ``curated/pv_energy_profile.parquet``: per coarse H3 cell and hour of the
reference year, the AC power of its installations with a capacity, summed."""

MONTHS = 12

POINT_READS = 200
"""Up to this many points, pvlib's global grid files are read point by point; from it on,
as one block."""


# ================================================================== settings


@dataclass(frozen=True)
class ModelSettings:
    """The PVWatts-style chain (config ``energy.model``); see the config README."""

    transposition: str = "perez"
    temperature: str = "sapm"
    sapm: Mapping = field(default_factory=lambda: {"ground": "open_rack_glass_polymer",
                                                   "rooftop": "close_mount_glass_glass"})
    faiman: Mapping = field(default_factory=lambda: {"ground": {"u0": 25.0, "u1": 6.84},
                                                     "rooftop": {"u0": 20.0, "u1": 0.0}})
    aoi_model: str = "physical"
    gamma_pdc_per_c: float = -0.0037
    dc_ac_ratio: float = 1.2
    eta_inv_nom: float = 0.96
    eta_inv_ref: float = 0.9637
    albedo: float = 0.2
    losses: Mapping = field(default_factory=dict)
    tracker_max_angle_deg: float = 60.0
    tracker_gcr: float = 0.35
    tracker_backtrack: bool = True
    method: str = "grid"
    grid_tilt_step_deg: float = 2.5
    grid_azimuth_step_deg: float = 5.0
    chunk_systems: int = 128

    def __post_init__(self):
        if self.transposition not in ("perez", "haydavies"):
            raise ValueError(f"transposition {self.transposition!r}: perez or haydavies")
        if self.temperature not in ("sapm", "faiman"):
            raise ValueError(f"temperature {self.temperature!r}: sapm or faiman")
        if self.aoi_model not in ("physical", "no_loss"):
            raise ValueError(f"aoi_model {self.aoi_model!r}: physical or no_loss")
        if self.method not in ("grid", "exact"):
            raise ValueError(f"method {self.method!r}: grid or exact")
        for name, step, span in (("grid_tilt_step_deg", self.grid_tilt_step_deg, 90),
                                 ("grid_azimuth_step_deg", self.grid_azimuth_step_deg, 180)):
            if not (0 < step <= span and (span / step).is_integer()):
                raise ValueError(f"{name} must divide {span} degrees, got {step}")

    @property
    def losses_percent(self) -> float:
        """Total PVWatts DC losses (%), :func:`pvlib.pvsystem.pvwatts_losses`."""
        return float(pvlib.pvsystem.pvwatts_losses(**dict(self.losses)))

    def temperature_parameters(self, array_type: str) -> dict:
        """Cell-temperature model parameters of an array type (trackers: ground)."""
        kind = "rooftop" if array_type == "rooftop" else "ground"
        if self.temperature == "sapm":
            return dict(pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"][self.sapm[kind]])
        return {k: float(v) for k, v in self.faiman[kind].items()}

    @property
    def inverter_pdc0_per_kw(self) -> float:
        """The PVWatts inverter's DC input limit per kW of modules: AC rating
        (capacity / DC-AC ratio) over the nominal efficiency."""
        return 1.0 / (self.dc_ac_ratio * self.eta_inv_nom)


@dataclass(frozen=True)
class EnergySettings:
    """The energy stage's configuration (config ``energy``); see the config README."""

    weather: str = "offline"
    year: int = 2023
    h3_resolution: int = 3
    profile_h3_resolution: int = 2
    station_max_km: float = 50.0
    workers: int = 2
    chunk_cells: int = 32
    clearsky: Mapping = field(default_factory=lambda: {"temp_air_c": 15.0, "wind_speed_m_s": 2.0})
    pvgis: Mapping = field(default_factory=lambda: {"url": "https://re.jrc.ec.europa.eu/api/v5_3/",
                                                    "usehorizon": True, "lat_min": -90.0, "lat_max": 90.0})
    nsrdb: Mapping = field(default_factory=lambda: {
        "url": "https://developer.nrel.gov/api/nsrdb/v2/solar/nsrdb-GOES-tmy-v4-0-0-download.csv",
        "names": "tmy", "lat_min": -60.0, "lat_max": 60.0, "lon_min": -180.0, "lon_max": -20.0})
    http: Mapping = field(default_factory=lambda: {"connect_timeout_s": 30.0, "read_timeout_s": 120.0,
                                                   "attempts": 5})
    capacity: Mapping = field(default_factory=lambda: {
        "rooftop_max_area_m2": 2000.0, "rooftop_cover_ratio": 0.85, "ground_cover_ratio": 0.45,
        "module_w_per_m2": 200.0, "max_w_per_m2": 300.0, "default_kw": None})
    orientation: Mapping = field(default_factory=lambda: {
        "tilt_per_abs_lat": 0.76, "tilt_offset_deg": 3.1, "max_default_tilt_deg": 60.0,
        "attributes": {"tilt": ["tilt", "tilt_deg", "avgTilt"], "azimuth": ["azimuth", "azimuth_deg", "rowAzimuth"],
                       "axis_azimuth": ["axis_azimuth"], "mount": ["mount", "rowMount", "mount_type"]},
        "single_axis_values": ["single_axis", "single-axis", "single axis", "tracker", "1-axis", "sat"],
        "fixed_values": ["fixed", "fixed_axis", "fixed-axis", "fixed_tilt", "fixed-tilt", "fixed tilt"]})
    model: ModelSettings = field(default_factory=ModelSettings)

    def __post_init__(self):
        if self.weather not in ("offline", "pvgis", "nsrdb"):
            raise ValueError(f"energy.weather {self.weather!r}: offline, pvgis or nsrdb")
        if pd.Timestamp(year=self.year, month=1, day=1).is_leap_year:
            raise ValueError(f"energy.year {self.year} is a leap year; typical years have 8,760 hours")

    @classmethod
    def from_config(cls, config: Mapping) -> EnergySettings:
        """Settings from the config's ``energy`` section (missing keys keep their defaults;
        nested mappings are merged key by key)."""
        base = cls()
        values = {}
        for f in fields(cls):
            if f.name not in config:
                continue
            value = config[f.name]
            if f.name == "model":
                model = ModelSettings()
                value = replace(model, **{k: _merged(getattr(model, k), v) if isinstance(getattr(model, k), Mapping) else v
                                          for k, v in dict(value).items()})
            elif isinstance(getattr(base, f.name), Mapping):
                value = _merged(getattr(base, f.name), value)
            values[f.name] = value
        return replace(base, **values)


def _merged(base: Mapping, update: Mapping) -> dict:
    out = dict(base)
    for key, value in dict(update).items():
        out[key] = _merged(out[key], value) if isinstance(out.get(key), Mapping) and isinstance(value, Mapping) else value
    return out


# ================================================================== system parameters


class _Flags:
    """Flag codes per row, collected as boolean masks with their messages."""

    def __init__(self, n: int):
        self.n = n
        self.codes: list[tuple[str, np.ndarray, object]] = []

    def add(self, code: str, mask: np.ndarray, message=None) -> None:
        """Flag the rows of ``mask`` with ``code``; ``message`` is a text, or a function
        of a row index giving that row's detail (called for flagged rows only)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.codes.append((code, mask, FLAGS[code] if message is None else message))

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the sorted list of its codes, and its reasons joined by "; ".

        Rows with the same set of flags share one list (and one text, unless a flag's
        message is per row): a handful of combinations whatever the number of rows."""
        bits = np.zeros(self.n, dtype=np.int64)
        for k, (_, mask, _) in enumerate(self.codes):
            bits[mask] |= 1 << k
        combos, inverse = np.unique(bits, return_inverse=True)
        codes = np.empty(self.n, dtype=object)
        reasons = np.empty(self.n, dtype=object)
        for j, combo in enumerate(combos):
            rows = np.flatnonzero(inverse == j)
            members = sorted((self.codes[k] for k in range(len(self.codes)) if combo >> k & 1), key=lambda m: m[0])
            shared = np.empty(1, dtype=object)
            shared[0] = list(dict.fromkeys(code for code, _, _ in members))
            codes[rows] = shared.repeat(len(rows))
            if all(isinstance(message, str) for _, _, message in members):
                reasons[rows] = "; ".join(f"{code}: {message}" for code, _, message in members)
                continue
            for i in rows:
                reasons[i] = "; ".join(f"{code}: {message if isinstance(message, str) else message(i)}"
                                       for code, _, message in members)
        return codes, reasons


def capacity_from_area_kw(area_m2: np.ndarray, rooftop: np.ndarray, capacity: Mapping) -> np.ndarray:
    """DC capacity (kW) an area holds: area x cover ratio x module power density.

    The cover ratio is the share of the mapped outline covered by modules: high on a roof
    (the outline is drawn around the modules), the ground-cover ratio of row spacing on a
    ground-mounted site. With the defaults (200 W/m² modules, 0.85 on roofs, 0.45 on the
    ground) roofs hold 170 W/m² and ground sites 90 W/m², within the 86-114 W/m² of
    US utility-scale sites of 2019 (Bolinger & Bolinger 2022, IEEE J. Photovolt. 12(2)).
    """
    ratio = np.where(rooftop, capacity["rooftop_cover_ratio"], capacity["ground_cover_ratio"])
    return np.asarray(area_m2, dtype=float) * ratio * capacity["module_w_per_m2"] / 1000.0


def default_tilt_deg(latitude_deg: np.ndarray, orientation: Mapping) -> np.ndarray:
    """Latitude rule for the tilt: ``tilt_per_abs_lat`` x |lat| + ``tilt_offset_deg``,
    at most ``max_default_tilt_deg`` (0.76 and 3.1 deg: Landau's fit of the optimum
    fixed tilt for annual energy, valid at 25-50 deg)."""
    tilt = orientation["tilt_per_abs_lat"] * np.abs(latitude_deg) + orientation["tilt_offset_deg"]
    return np.clip(tilt, 0.0, orientation["max_default_tilt_deg"])


def default_azimuth_deg(latitude_deg: np.ndarray) -> np.ndarray:
    """Equator-facing: 180 deg (south) in the northern hemisphere, 0 deg in the southern."""
    return np.where(np.asarray(latitude_deg) >= 0, 180.0, 0.0)


def source_attributes(attributes: pd.Series, names: Mapping) -> pd.DataFrame:
    """The orientation attributes of each row's source record (the ``attributes`` JSON).

    Parameters
    ----------
    attributes : pandas.Series
        JSON objects (strings) or missing values.
    names : mapping
        ``tilt``, ``azimuth``, ``axis_azimuth``, ``mount`` -> attribute names to look for,
        first found wins.

    Returns
    -------
    pandas.DataFrame
        Columns ``tilt``, ``azimuth``, ``axis_azimuth`` (float, NaN when absent or not a
        number) and ``mount`` (string or None), on the same index.
    """
    out = pd.DataFrame({"tilt": np.nan, "azimuth": np.nan, "axis_azimuth": np.nan, "mount": None},
                       index=attributes.index)
    wanted = {name: key for key, keys in names.items() for name in keys}
    if not wanted:
        return out
    text = attributes.astype("string")
    # only the records mentioning one of the names are parsed
    pattern = "|".join(f'"{name}"' for name in map(str, wanted))
    rows = np.flatnonzero(text.str.contains(pattern, regex=True, na=False).to_numpy())
    found: dict[str, list] = {key: [None] * len(rows) for key in names}
    for j, raw in enumerate(text.iloc[rows]):
        try:
            record = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        for key, keys in names.items():
            found[key][j] = next((record[k] for k in keys if record.get(k) is not None), None)
    for key, values in found.items():
        if key == "mount":
            out.iloc[rows, out.columns.get_loc(key)] = [None if v is None else str(v) for v in values]
        else:
            out.iloc[rows, out.columns.get_loc(key)] = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(float)
    return out


def system_parameters(installations: pd.DataFrame, settings: EnergySettings,
                      flags: _Flags | None = None) -> pd.DataFrame:
    """Capacity, mount and orientation of every installation, with flags.

    Parameters
    ----------
    installations : pandas.DataFrame
        ``pv_id``, ``centroid_lon``, ``centroid_lat``, ``area_m2``, ``capacity_mw`` and
        optionally ``attributes`` (the source record as JSON), as in the prepared table.
    settings : EnergySettings
    flags : _Flags, optional
        Where the stage collects every flag; without it, the flags are returned.

    Returns
    -------
    pandas.DataFrame
        ``pv_id``, ``latitude``, ``longitude``, ``area_m2``, ``capacity_kw``,
        ``capacity_source``, ``array_type``, ``tilt_deg``, ``azimuth_deg``,
        ``orientation_source``, and (without ``flags``) ``flags``/``flag_reasons``.
    """
    cap_cfg, orient = settings.capacity, settings.orientation
    n = len(installations)
    collect = flags is None
    flags = _Flags(n) if collect else flags
    lat = installations["centroid_lat"].to_numpy(dtype=float, na_value=np.nan)
    lon = installations["centroid_lon"].to_numpy(dtype=float, na_value=np.nan)
    area = installations["area_m2"].to_numpy(dtype=float, na_value=np.nan)
    source_kw = installations["capacity_mw"].to_numpy(dtype=float, na_value=np.nan) * 1000.0

    bad_area = np.isfinite(area) & (area <= 0)
    flags.add("area_not_positive", bad_area, lambda i, area=area: f"area_m2 = {area[i]:g}")
    area = np.where(bad_area, np.nan, area)
    has_area = np.isfinite(area)
    rooftop = has_area & (area < cap_cfg["rooftop_max_area_m2"])
    area_kw = capacity_from_area_kw(area, rooftop, cap_cfg)

    bad_cap = np.isfinite(source_kw) & (source_kw <= 0)
    flags.add("capacity_not_positive", bad_cap, lambda i, kw=source_kw: f"capacity_mw = {kw[i] / 1000:g}")
    source_kw = np.where(bad_cap, np.nan, source_kw)
    with np.errstate(invalid="ignore", divide="ignore"):
        w_per_m2 = source_kw * 1000.0 / area
    too_dense = np.isfinite(w_per_m2) & (w_per_m2 > cap_cfg["max_w_per_m2"])
    flags.add("capacity_exceeds_area", too_dense,
              lambda i, kw=source_kw: f"{kw[i]:,.1f} kW on {area[i]:,.0f} m² is {w_per_m2[i]:,.0f} W/m² "
                        f"(> {cap_cfg['max_w_per_m2']:g} W/m²)")
    source_kw = np.where(too_dense, np.nan, source_kw)

    capacity = np.full(n, np.nan)
    capacity_source = np.full(n, "none", dtype=object)
    use_source = np.isfinite(source_kw)
    capacity[use_source], capacity_source[use_source] = source_kw[use_source], "source"
    use_area = ~use_source & has_area
    capacity[use_area], capacity_source[use_area] = area_kw[use_area], "area estimate"
    neither = ~use_source & ~use_area
    if cap_cfg.get("default_kw") is not None:
        capacity[neither], capacity_source[neither] = float(cap_cfg["default_kw"]), "default"
        flags.add("default_capacity", neither, f"{FLAGS['default_capacity']} ({float(cap_cfg['default_kw']):g} kW)")
    else:
        flags.add("no_capacity", neither)

    attrs = (source_attributes(installations["attributes"], orient["attributes"])
             if "attributes" in installations else
             pd.DataFrame({"tilt": np.nan, "azimuth": np.nan, "axis_azimuth": np.nan, "mount": None}, index=installations.index))
    mount = attrs["mount"].astype("string").str.strip().str.lower()
    single = mount.isin([v.lower() for v in orient["single_axis_values"]]).to_numpy()
    fixed_named = mount.isin([v.lower() for v in orient["fixed_values"]]).to_numpy()
    other_mount = mount.notna().to_numpy() & ~single & ~fixed_named
    flags.add("mount_not_modelled", other_mount, lambda i: f"mount {mount.iloc[i]!r}")

    src_tilt = attrs["tilt"].to_numpy(dtype=float)
    src_az = attrs["azimuth"].to_numpy(dtype=float)
    bad_tilt = np.isfinite(src_tilt) & ((src_tilt < 0) | (src_tilt > 90))
    flags.add("tilt_out_of_range", bad_tilt, lambda i: f"tilt {attrs['tilt'].iat[i]:g} deg")
    src_tilt = np.where(bad_tilt, np.nan, src_tilt)
    # an attribute present but unreadable ("n/a") counts as invalid, a missing one does not
    named_az = attrs["azimuth"].notna().to_numpy() | _attribute_present(installations, orient["attributes"]["azimuth"])
    bad_az = named_az & ~np.isfinite(src_az)
    flags.add("azimuth_invalid", bad_az)

    array_type = np.where(single, "single_axis", np.where(rooftop, "rooftop", "ground")).astype(object)
    tilt = default_tilt_deg(lat, orient)
    azimuth = default_azimuth_deg(lat)
    orientation_source = np.full(n, "latitude default", dtype=object)
    # fixed arrays: the module plane; trackers: the axis (horizontal), N-S unless stated
    fixed_src = ~single & np.isfinite(src_tilt)
    tilt[fixed_src] = src_tilt[fixed_src]
    az_src = ~single & np.isfinite(src_az)
    azimuth[az_src] = np.mod(src_az[az_src], 360.0)
    orientation_source[fixed_src | az_src] = "source"
    axis_az = attrs["axis_azimuth"].to_numpy(dtype=float)
    tilt[single] = 0.0
    azimuth[single] = np.where(np.isfinite(axis_az[single]), np.mod(axis_az[single], 180.0), 180.0)
    orientation_source[single] = "source"

    frame = pd.DataFrame({
        "pv_id": installations["pv_id"].astype(str).to_numpy(),
        "latitude": lat, "longitude": lon, "area_m2": area,
        "capacity_kw": capacity, "capacity_source": capacity_source,
        "array_type": array_type, "tilt_deg": tilt, "azimuth_deg": azimuth,
        "orientation_source": orientation_source,
    })
    if collect:
        frame["flags"], frame["flag_reasons"] = flags.columns()
    return frame


def _attribute_present(installations: pd.DataFrame, names: list[str]) -> np.ndarray:
    if "attributes" not in installations or not names:
        return np.zeros(len(installations), dtype=bool)
    pattern = "|".join(f'"{name}"\\s*:\\s*(?!null)' for name in names)
    return installations["attributes"].astype("string").str.contains(pattern, regex=True, na=False).to_numpy()


# ================================================================== weather cells


def assign_weather_cells(latitude: np.ndarray, longitude: np.ndarray, settings: EnergySettings,
                         stations: pd.DataFrame | None = None) -> pd.DataFrame:
    """The weather cell of every installation.

    Offline, an installation within ``station_max_km`` of one of pvlib's stations uses
    that station's typical year (cell ``station:<id>``); any other uses clear-sky weather
    at the centre of its H3 cell (``h3:<cell>``). Online, every installation uses the
    service's weather at the centre of its H3 cell, if the service covers its location.

    Returns
    -------
    pandas.DataFrame
        ``weather_cell`` (None without location or coverage), ``weather_kind``,
        ``station_id``, ``site_lat``, ``site_lon`` (where the weather is asked for),
        ``weather_distance_km``, ``covered``.
    """
    lat = np.asarray(latitude, dtype=float)
    lon = np.asarray(longitude, dtype=float)
    n = len(lat)
    located = np.isfinite(lat) & np.isfinite(lon)
    cells = h3_cells(lon, lat, settings.h3_resolution)
    kind = np.full(n, "clearsky" if settings.weather == "offline" else settings.weather, dtype=object)
    cell_id = np.array([f"h3:{c}" if c is not None else None for c in cells], dtype=object)
    station_id = np.full(n, None, dtype=object)
    centres = {c: h3.cell_to_latlng(c) for c in set(cells) - {None}}
    site_lat = np.array([centres[c][0] if c is not None else np.nan for c in cells])
    site_lon = np.array([centres[c][1] if c is not None else np.nan for c in cells])

    covered = located.copy()
    if settings.weather == "offline":
        stations = wx.station_sites() if stations is None else stations
        best_km, best = np.full(n, np.inf), np.full(n, -1)
        # geodesics only within a box that holds every point closer than station_max_km
        reach_deg = settings.station_max_km / 110.0 + 0.1
        for j, st in stations.iterrows():
            near_lat = np.abs(lat - st.latitude) <= reach_deg
            dlon = np.abs((lon - st.longitude + 180.0) % 360.0 - 180.0)
            widest = np.cos(np.radians(min(89.9, abs(st.latitude) + reach_deg)))
            box = np.flatnonzero(located & near_lat & (dlon * widest <= reach_deg))
            _, _, d_m = GEOD.inv(lon[box], lat[box], np.full(len(box), st.longitude), np.full(len(box), st.latitude))
            closer = d_m / 1000.0 < best_km[box]
            best_km[box[closer]], best[box[closer]] = d_m[closer] / 1000.0, j
        near = best_km <= settings.station_max_km
        for j, st in stations.iterrows():
            rows = near & (best == j)
            kind[rows], station_id[rows] = "station", st.station_id
            cell_id[rows] = f"station:{st.station_id}"
            site_lat[rows], site_lon[rows] = st.latitude, st.longitude
    else:
        box = settings.pvgis if settings.weather == "pvgis" else settings.nsrdb
        covered &= (lat >= box.get("lat_min", -90)) & (lat <= box.get("lat_max", 90))
        covered &= (lon >= box.get("lon_min", -180)) & (lon <= box.get("lon_max", 180))
    cell_id[~covered] = None
    _, _, dist_m = GEOD.inv(np.where(covered, lon, 0), np.where(covered, lat, 0),
                            np.where(covered, site_lon, 0), np.where(covered, site_lat, 0))
    return pd.DataFrame({
        "weather_cell": cell_id, "weather_kind": np.where(covered, kind, None),
        "station_id": station_id, "site_lat": np.where(covered, site_lat, np.nan),
        "site_lon": np.where(covered, site_lon, np.nan),
        "weather_distance_km": np.where(covered, dist_m / 1000.0, np.nan), "covered": covered,
    })


# ================================================================== solar position and sky


def _col(a: np.ndarray) -> np.ndarray:
    return np.asarray(a)[:, None]


def year_clock(year: int, minute: int = 30) -> pd.DatetimeIndex:
    """The 8,760 hourly UTC timestamps of ``year``, ``minute`` minutes past each hour."""
    start = pd.Timestamp(year=year, month=1, day=1, minute=minute, tz="UTC")
    return pd.date_range(start, periods=wx.HOURS_PER_YEAR, freq="h", name="time_utc")


def sun_time_terms(times: pd.DatetimeIndex) -> dict:
    """The terms of the NREL SPA (Reda & Andreas 2004) that depend on time only.

    As :func:`pvlib.spa.solar_position_numpy` computes them (``delta_t`` 67 s, pvlib's
    default): apparent sidereal time ``nu``, geocentric right ascension ``alpha`` and
    declination ``delta`` of the sun, equatorial horizontal parallax ``xi`` (degrees), one
    value per timestamp; and the extraterrestrial irradiance ``dni_extra`` (Spencer 1971).
    """
    unixtime = np.asarray(pvlib.solarposition._datetime_to_unixtime(pd.DatetimeIndex(times)))
    jd = spa.julian_day(unixtime)
    jde = spa.julian_ephemeris_day(jd, DELTA_T_S)
    jc = spa.julian_century(jd)
    jce = spa.julian_ephemeris_century(jde)
    jme = spa.julian_ephemeris_millennium(jce)
    radius = spa.heliocentric_radius_vector(jme)
    theta = spa.geocentric_longitude(spa.heliocentric_longitude(jme))
    beta = spa.geocentric_latitude(spa.heliocentric_latitude(jme))
    nutation = np.empty((2, len(jce)))
    spa.longitude_obliquity_nutation(jce, spa.mean_elongation(jce), spa.mean_anomaly_sun(jce),
                                     spa.mean_anomaly_moon(jce), spa.moon_argument_latitude(jce),
                                     spa.moon_ascending_longitude(jce), nutation)
    delta_psi, delta_eps = nutation
    epsilon = spa.true_ecliptic_obliquity(spa.mean_ecliptic_obliquity(jme), delta_eps)
    lamd = spa.apparent_sun_longitude(theta, delta_psi, spa.aberration_correction(radius))
    return {
        "nu": spa.apparent_sidereal_time(spa.mean_sidereal_time(jd, jc), delta_psi, epsilon),
        "alpha": spa.geocentric_sun_right_ascension(lamd, epsilon, beta),
        "delta": spa.geocentric_sun_declination(lamd, epsilon, beta),
        "xi": spa.equatorial_horizontal_parallax(radius),
        "dni_extra": np.asarray(pvlib.irradiance.get_extra_radiation(times)),
    }


def observer_terms(latitude, altitude_m) -> tuple:
    """The SPA's site terms ``x`` and ``y`` (geocentric position of the observer)."""
    u = spa.uterm(latitude)
    return spa.xterm(u, latitude, altitude_m), spa.yterm(u, latitude, altitude_m)


def sun_position_at(terms: Mapping, latitude, longitude, altitude_m, pressure_pa, temp_air_c,
                    observer: tuple | None = None) -> dict:
    """The observer's half of the SPA: ``apparent_zenith``, ``zenith`` (without
    refraction) and ``azimuth``, degrees.

    ``terms`` (:func:`sun_time_terms`, possibly indexed) and the observer arrays only
    need to broadcast together: (hours, 1) with (1, sites) for a grid, or equal-length
    flat arrays for any set of (hour, site) pairs. ``observer`` may hold
    :func:`observer_terms` already computed for these sites.
    """
    hour_angle = spa.local_hour_angle(terms["nu"], longitude, terms["alpha"])
    x, y = observer if observer is not None else observer_terms(latitude, altitude_m)
    delta_alpha = spa.parallax_sun_right_ascension(x, terms["xi"], hour_angle, terms["delta"])
    delta_prime = spa.topocentric_sun_declination(terms["delta"], x, y, terms["xi"], delta_alpha, hour_angle)
    h_prime = spa.topocentric_local_hour_angle(hour_angle, delta_alpha)
    e0 = spa.topocentric_elevation_angle_without_atmosphere(latitude, delta_prime, h_prime)
    refraction = spa.atmospheric_refraction_correction(np.asarray(pressure_pa) / 100.0, temp_air_c, e0,
                                                       ATMOS_REFRACT_DEG)
    elevation = spa.topocentric_elevation_angle(e0, refraction)
    gamma = spa.topocentric_astronomers_azimuth(h_prime, delta_prime, latitude)
    return {"apparent_zenith": spa.topocentric_zenith_angle(elevation), "zenith": spa.topocentric_zenith_angle(e0),
            "azimuth": spa.topocentric_azimuth_angle(gamma)}


def solar_position(times: pd.DatetimeIndex, latitude, longitude, altitude_m,
                   pressure_pa=101325.0, temp_air_c=12.0) -> dict:
    """NREL SPA for sites sharing one clock, as (hours, sites) arrays.

    Equal to :func:`pvlib.solarposition.get_solarposition` (``method="nrel_numpy"``) for
    each site, with the time terms computed once (:func:`sun_time_terms`).

    Parameters
    ----------
    times : pandas.DatetimeIndex
        H timestamps.
    latitude, longitude, altitude_m : array of shape (C,)
        Degrees, metres.
    pressure_pa, temp_air_c : array of shape (H, C) or scalar
        For the refraction correction.

    Returns
    -------
    dict
        ``apparent_zenith``, ``zenith`` and ``azimuth`` (degrees), each (H, C).
    """
    terms = {k: _col(v) for k, v in sun_time_terms(times).items()}
    return sun_position_at(terms, np.asarray(latitude, float)[None, :], np.asarray(longitude, float)[None, :],
                           np.asarray(altitude_m, float)[None, :], pressure_pa, temp_air_c)


def _h5_points(file_name: str, dataset: str, latitude, longitude) -> np.ndarray:
    """Values of a pvlib global grid file (``pvlib/data/<file_name>``) at points, read as
    one block covering them (one read, whatever the number of points)."""
    rows = np.array([pvlib.clearsky._degrees_to_index(la, coordinate="latitude") for la in latitude], dtype=int)
    cols = np.array([pvlib.clearsky._degrees_to_index(lo, coordinate="longitude") for lo in longitude], dtype=int)
    with h5py.File(Path(pvlib.__file__).parent / "data" / file_name, "r") as f:
        grid = f[dataset]
        # a point costs one compressed chunk (~2 ms), the whole Linke grid ~1 s
        if len(rows) < POINT_READS:
            return np.array([grid[r, c] for r, c in zip(rows, cols)])
        block = grid[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    return block[rows - rows.min(), cols - cols.min()]


def lookup_altitude_m(latitude, longitude) -> np.ndarray:
    """Site elevations (m) from pvlib's global altitude grid, as
    :func:`pvlib.location.lookup_altitude` gives them one at a time."""
    coded = _h5_points("Altitude.h5", "Altitude", latitude, longitude).astype(float)
    return np.where(coded == 255, 0.0, coded * 28 - 450)


def linke_monthly(latitude, longitude) -> np.ndarray:
    """Monthly Linke turbidity (sites, 12) from pvlib's climatology (Remund et al. 2003)."""
    return _h5_points("LinkeTurbidities.h5", "LinkeTurbidity", latitude, longitude).astype(float) / 20.0


def linke_basis(times: pd.DatetimeIndex) -> np.ndarray:
    """(hours, 14) weights that turn (Dec, Jan..Dec, Jan) monthly values into the daily
    interpolation of :func:`pvlib.clearsky.lookup_linke_turbidity` (mid-month nodes)."""
    time_utc = pd.DatetimeIndex(times).tz_convert("UTC")
    middles = pvlib.clearsky._calendar_month_middles(2016 if time_utc[0].is_leap_year else 2015)
    return np.stack([np.interp(time_utc.dayofyear, middles, np.eye(14)[k]) for k in range(14)], axis=1)


def _padded(monthly: np.ndarray) -> np.ndarray:
    return np.concatenate([monthly[:, -1:], monthly, monthly[:, :1]], axis=1)


def clearsky_irradiance(apparent_zenith, altitude_m, linke, dni_extra) -> dict:
    """Ineichen-Perez clear-sky ``ghi``, ``dni``, ``dhi`` (Ineichen & Perez 2002) with the
    absolute airmass at the pressure of the site's altitude; broadcasting arrays."""
    airmass = pvlib.atmosphere.get_absolute_airmass(
        pvlib.atmosphere.get_relative_airmass(apparent_zenith), pvlib.atmosphere.alt2pres(altitude_m))
    # night hours (undefined airmass) divide by zero inside; they come out as 0
    with np.errstate(divide="ignore", invalid="ignore"):
        cs = pvlib.clearsky.ineichen(apparent_zenith, airmass, linke, altitude=altitude_m, dni_extra=dni_extra)
    return {k: np.asarray(cs[k]) for k in ("ghi", "dni", "dhi")}


def clearsky_weather(latitude: float, longitude: float, altitude_m: float, year: int,
                     clearsky: Mapping, minute: int = 30) -> wx.Weather:
    """Clear-sky weather at one site as a :class:`pvlake.sources.weather.Weather`: the
    values the stage computes in place for a clear-sky cell, for a reference model run."""
    times = year_clock(year, minute)
    pressure = float(pvlib.atmosphere.alt2pres(altitude_m))
    sun = solar_position(times, [latitude], [longitude], [altitude_m], pressure, clearsky["temp_air_c"])
    linke = linke_basis(times) @ _padded(linke_monthly([latitude], [longitude])).T
    cs = clearsky_irradiance(sun["apparent_zenith"], altitude_m, linke, _col(sun_time_terms(times)["dni_extra"]))
    data = pd.DataFrame({"ghi": cs["ghi"][:, 0], "dni": cs["dni"][:, 0], "dhi": cs["dhi"][:, 0],
                         "temp_air": float(clearsky["temp_air_c"]), "wind_speed": float(clearsky["wind_speed_m_s"]),
                         "pressure": pressure}, index=times)
    return wx.Weather(data, float(latitude), float(longitude), float(altitude_m), CLEARSKY_SOURCE)


@dataclass
class SkyHours:
    """Per-hour inputs of one site, the hours with light only.

    ``hours`` indexes the site's clock (0-8759); the rest are arrays over those hours:
    solar geometry (``apparent_zenith``, ``azimuth``, ``cos_zenith`` and
    ``sun_north``/``sun_east``, the sine of the zenith times the cosine/sine of the
    azimuth), irradiance (W/m²), ``albedo``, ``temp_air`` (°C), ``wind_speed`` (m/s), and
    the transposition's sky terms (``diffuse``, :func:`sky_terms`).
    """

    hours: np.ndarray
    apparent_zenith: np.ndarray
    azimuth: np.ndarray
    cos_zenith: np.ndarray
    sun_north: np.ndarray
    sun_east: np.ndarray
    ghi: np.ndarray
    dni: np.ndarray
    dhi: np.ndarray
    albedo: np.ndarray
    temp_air: np.ndarray
    wind_speed: np.ndarray
    diffuse: dict


def sky_terms(apparent_zenith: np.ndarray, dni: np.ndarray, dhi: np.ndarray, dni_extra: np.ndarray,
              airmass_relative: np.ndarray, transposition: str) -> dict:
    """The hour-only terms of the sky-diffuse transposition, so that for any surface

    - Perez (1990 all-sites coefficients, :func:`pvlib.irradiance.perez`):
      ``max(iso (1 + cos tilt) + horizon sin tilt + circumsolar max(cos aoi, 0), 0)``
      with ``iso = dhi (1 - F1) / 2``, ``horizon = dhi F2``,
      ``circumsolar = dhi F1 / max(cos z, cos 85)``, all 0 where the airmass is
      undefined (sun below the horizon);
    - Hay & Davies (:func:`pvlib.irradiance.haydavies`):
      ``max(iso (1 + cos tilt), 0) + max(circumsolar max(cos aoi, 0), 0)`` with
      ``iso = dhi (1 - dni/dni_extra) / 2``, ``circumsolar = dhi (dni/dni_extra) / max(cos z, 0.01745)``.
    """
    cos_z = np.cos(np.radians(apparent_zenith))
    if transposition == "haydavies":
        ai = dni / dni_extra
        return {"iso": dhi * (1 - ai) * 0.5, "horizon": np.zeros_like(dhi),
                "circumsolar": dhi * ai / np.maximum(cos_z, 0.01745)}
    z = np.radians(apparent_zenith)
    kappa = 1.041
    delta = dhi * airmass_relative / dni_extra
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = (np.divide(dhi + dni, dhi) + kappa * z ** 3) / (1 + kappa * z ** 3)
    ebin = np.digitize(eps, (0.0, 1.065, 1.23, 1.5, 1.95, 2.8, 4.5, 6.2))
    ebin[np.isnan(eps)] = 0
    ebin -= 1
    f1c, f2c = pvlib.irradiance._get_perez_coefficients("allsitescomposite1990")
    nans = np.full(3, np.nan)
    f1c, f2c = np.vstack((f1c, nans)), np.vstack((f2c, nans))
    f1 = np.maximum(f1c[ebin, 0] + f1c[ebin, 1] * delta + f1c[ebin, 2] * z, 0)
    f2 = f2c[ebin, 0] + f2c[ebin, 1] * delta + f2c[ebin, 2] * z
    dark = np.isnan(airmass_relative)
    b = np.maximum(cos_z, np.cos(np.radians(85.0)))
    return {"iso": np.where(dark, 0.0, dhi * (1 - f1) * 0.5), "horizon": np.where(dark, 0.0, dhi * f2),
            "circumsolar": np.where(dark, 0.0, dhi * f1 / b)}


def site_sky(hours: np.ndarray, apparent_zenith: np.ndarray, azimuth: np.ndarray, weather: Mapping,
             dni_extra: np.ndarray, model: ModelSettings) -> SkyHours:
    """:class:`SkyHours` of one site from its lit hours' sun position and weather
    (``ghi``, ``dni``, ``dhi``, ``albedo``, ``temp_air``, ``wind_speed``)."""
    airmass = pvlib.atmosphere.get_relative_airmass(apparent_zenith)
    z_rad, az_rad = np.radians(apparent_zenith), np.radians(azimuth)
    sin_z = np.sin(z_rad)
    return SkyHours(
        hours=hours, apparent_zenith=apparent_zenith, azimuth=azimuth, cos_zenith=np.cos(z_rad),
        sun_north=sin_z * np.cos(az_rad), sun_east=sin_z * np.sin(az_rad),
        **{k: np.asarray(weather[k], dtype=float) for k in ("ghi", "dni", "dhi", "albedo", "temp_air", "wind_speed")},
        diffuse=sky_terms(apparent_zenith, weather["dni"], weather["dhi"], dni_extra, airmass, model.transposition))


# ================================================================== the array model


@dataclass(frozen=True)
class Surfaces:
    """Surfaces to model at one site: fixed planes or horizontal single-axis trackers.

    ``tilt_deg``/``azimuth_deg``: module plane of fixed arrays; trackers use
    ``azimuth_deg`` as their axis azimuth. ``array_type``: entries of :data:`ARRAY_TYPES`.
    """

    tilt_deg: np.ndarray
    azimuth_deg: np.ndarray
    array_type: np.ndarray

    def __len__(self) -> int:
        return len(self.tilt_deg)

    def take(self, idx) -> Surfaces:
        return Surfaces(self.tilt_deg[idx], self.azimuth_deg[idx], self.array_type[idx])


def _orientation(sky: SkyHours, surfaces: Surfaces, model: ModelSettings) -> tuple:
    """cos/sin of the surface tilt and the projection cos(aoi), broadcastable to (H, n)."""
    tilt = np.radians(surfaces.tilt_deg)[None, :]
    azimuth = np.radians(surfaces.azimuth_deg)[None, :]
    tracked = surfaces.array_type == "single_axis"
    if tracked.any():
        tilt = np.repeat(tilt, len(sky.hours), axis=0)
        azimuth = np.repeat(azimuth, len(sky.hours), axis=0)
        for j in np.flatnonzero(tracked):
            track = pvlib.tracking.singleaxis(
                sky.apparent_zenith, sky.azimuth, axis_tilt=0.0, axis_azimuth=float(surfaces.azimuth_deg[j]),
                max_angle=model.tracker_max_angle_deg, backtrack=model.tracker_backtrack, gcr=model.tracker_gcr)
            tilt[:, j] = np.radians(track["surface_tilt"])
            azimuth[:, j] = np.radians(track["surface_azimuth"])
    cos_t, sin_t = np.cos(tilt), np.sin(tilt)
    projection = (_col(sky.cos_zenith) * cos_t + _col(sky.sun_north) * (sin_t * np.cos(azimuth))
                  + _col(sky.sun_east) * (sin_t * np.sin(azimuth)))
    return cos_t, sin_t, np.clip(projection, -1.0, 1.0)


IAM_TABLE_STEPS = 1 << 18
"""Steps of cos(aoi) in the table of :func:`physical_iam`."""


@lru_cache(maxsize=1)
def _physical_iam_table() -> np.ndarray:
    cos_aoi = np.linspace(0.0, 1.0, IAM_TABLE_STEPS + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(pvlib.iam.physical(np.degrees(np.arccos(cos_aoi))))


def physical_iam(cos_aoi: np.ndarray) -> np.ndarray:
    """pvlib's physical incidence-angle modifier (De Soto et al. 2006; glass n = 1.526,
    K = 4/m, L = 2 mm: :func:`pvlib.iam.physical`'s defaults) as a function of cos(aoi),
    interpolated in a table of 2^18 steps: within 1e-10 of pvlib's value, 20 times faster
    (the modifier is the costliest per-surface step); 0 from 90 deg on, NaN for NaN."""
    table = _physical_iam_table()
    cos_aoi = np.asarray(cos_aoi, dtype=float)
    x = np.clip(np.nan_to_num(cos_aoi), 0.0, 1.0) * IAM_TABLE_STEPS
    i = np.minimum(x.astype(np.int64), IAM_TABLE_STEPS - 1)
    iam = table[i] + (x - i) * (table[i + 1] - table[i])
    return np.where(np.isnan(cos_aoi), np.nan, iam)


def ac_power_per_kw(sky: SkyHours, surfaces: Surfaces, model: ModelSettings) -> np.ndarray:
    """AC power (kW per kW of DC capacity) of surfaces at one site, hour by hour.

    The PVWatts-style chain of :func:`reference_modelchain`, as array maths over
    (hours, surfaces): beam ``max(dni cos aoi, 0)``, sky diffuse (:func:`sky_terms`),
    ground-reflected ``ghi albedo (1 - cos tilt) / 2``; effective irradiance with the
    beam's angle-of-incidence modifier; cell temperature from the plane-of-array
    irradiance; PVWatts DC, its losses, the PVWatts inverter with the DC/AC ratio.

    Returns
    -------
    numpy.ndarray
        (len(sky.hours), len(surfaces)); NaN where the chain is undefined (a tracker
        with the sun below the horizon, a Perez bin without diffuse light), as in pvlib.
    """
    cos_t, sin_t, projection = _orientation(sky, surfaces, model)
    ghi, dni, dhi = _col(sky.ghi), _col(sky.dni), _col(sky.dhi)
    d = sky.diffuse
    facing = np.maximum(projection, 0.0)
    if model.transposition == "perez":
        sky_diffuse = np.maximum(_col(d["iso"]) * (1 + cos_t) + _col(d["horizon"]) * sin_t
                                 + _col(d["circumsolar"]) * facing, 0.0)
    else:
        sky_diffuse = (np.maximum(_col(d["iso"]) * (1 + cos_t), 0.0)
                       + np.maximum(_col(d["circumsolar"]) * facing, 0.0))
    beam = np.maximum(dni * projection, 0.0)
    diffuse = sky_diffuse + ghi * _col(sky.albedo) * (1 - cos_t) * 0.5
    poa_global = beam + diffuse
    if model.aoi_model == "physical":
        beam = beam * physical_iam(projection)
    effective = beam + diffuse
    types = surfaces.array_type
    if len(set(types)) == 1:
        # one array type: scalar parameters, so the wind term is computed per hour only
        params = model.temperature_parameters(types[0])
    else:
        params = {k: np.array([model.temperature_parameters(t)[k] for t in types])[None, :]
                  for k in model.temperature_parameters(types[0])}
    if model.temperature == "sapm":
        temp_cell = pvlib.temperature.sapm_cell(poa_global, _col(sky.temp_air), _col(sky.wind_speed), **params)
    else:
        temp_cell = pvlib.temperature.faiman(poa_global, _col(sky.temp_air), _col(sky.wind_speed), **params)
    pdc = pvlib.pvsystem.pvwatts_dc(effective, temp_cell, 1.0, model.gamma_pdc_per_c)
    pdc = pdc * (100.0 - model.losses_percent) / 100.0
    return pvlib.inverter.pvwatts(pdc, model.inverter_pdc0_per_kw, model.eta_inv_nom, model.eta_inv_ref)


# ================================================================== grid (lookup table)


def grid_nodes(surfaces: Surfaces, model: ModelSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, Surfaces]:
    """The tilt x azimuth grid nodes around each surface and its bilinear weights.

    Fixed arrays: tilt nodes every ``grid_tilt_step_deg`` in 0-90 deg, azimuth nodes every
    ``grid_azimuth_step_deg`` around the circle (wrapping at 360). Trackers: axis-azimuth
    nodes in 0-180 deg (a horizontal axis is the same both ways). A surface on a node
    gets that node alone.

    Returns
    -------
    rows, cols : numpy.ndarray
        Surface index and node index of every non-zero weight.
    weights : numpy.ndarray
        Interpolation weights (each surface's sum to 1).
    nodes : Surfaces
        The distinct nodes used.
    """
    ts, az_step = model.grid_tilt_step_deg, model.grid_azimuth_step_deg
    n_tilt = round(90 / ts)
    type_code = np.array([ARRAY_TYPES.index(t) for t in surfaces.array_type], dtype=np.int64)
    tracked = surfaces.array_type == "single_axis"
    period = np.where(tracked, 180.0, 360.0)
    n_az = np.round(period / az_step).astype(int)
    t = np.where(tracked, 0.0, np.clip(surfaces.tilt_deg, 0.0, 90.0)) / ts
    it = np.minimum(np.floor(t).astype(int), n_tilt - 1)
    ft = t - it
    a = np.mod(surfaces.azimuth_deg, period) / az_step
    ia = np.floor(a).astype(int) % n_az
    fa = a - np.floor(a)
    corners = [(it, ia, (1 - ft) * (1 - fa)), (it + 1, ia, ft * (1 - fa)),
               (it, (ia + 1) % n_az, (1 - ft) * fa), (it + 1, (ia + 1) % n_az, ft * fa)]
    n = len(surfaces)
    rows = np.concatenate([np.arange(n)] * 4)
    keys = np.concatenate([(type_code * 1000 + ti) * 1000 + ai for ti, ai, _ in corners])
    weights = np.concatenate([w for _, _, w in corners])
    keep = weights > 1e-12
    rows, keys, weights = rows[keep], keys[keep], weights[keep]
    unique, cols = np.unique(keys, return_inverse=True)
    node_type = np.array(ARRAY_TYPES, dtype=object)[unique // 1_000_000]
    nodes = Surfaces(((unique // 1000) % 1000) * ts * 1.0, (unique % 1000) * az_step * 1.0, node_type)
    return rows, cols, weights, nodes


def shared_grid_nodes(surfaces: Surfaces, model: ModelSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, Surfaces]:
    """:func:`grid_nodes` where they are shared, the surface itself where not.

    The grid pays where installations share nodes (default orientations: two to four per
    cell); a surface none of whose nodes another surface uses is cheaper, and exact,
    computed as it is (one surface instead of up to four nodes).

    Returns
    -------
    rows, cols, weights, nodes
        As :func:`grid_nodes`; the surfaces computed as they are come last in ``nodes``.
    """
    rows, cols, weights, grid = grid_nodes(surfaces, model)
    shared = np.bincount(cols, minlength=len(grid))[cols] > 1
    on_grid = np.bincount(rows, weights=shared, minlength=len(surfaces)) > 0
    keep = on_grid[rows]
    used, cols = np.unique(cols[keep], return_inverse=True)
    alone = np.flatnonzero(~on_grid)
    nodes = Surfaces(np.concatenate([grid.tilt_deg[used], surfaces.tilt_deg[alone]]),
                     np.concatenate([grid.azimuth_deg[used], surfaces.azimuth_deg[alone]]),
                     np.concatenate([grid.array_type[used], surfaces.array_type[alone]]))
    return (np.concatenate([rows[keep], alone]), np.concatenate([cols, len(used) + np.arange(len(alone))]),
            np.concatenate([weights[keep], np.ones(len(alone))]), nodes)


# ================================================================== the stage's computation


@dataclass
class CellWeather:
    """The weather of one cell: a series (station or service), or clear-sky at a site."""

    cell: str
    kind: str
    latitude: float
    longitude: float
    altitude_m: float
    source: str
    data: pd.DataFrame | None = None
    linke: np.ndarray | None = None

    @property
    def minute(self) -> int:
        """Minutes past the hour of the cell's timestamps (cells with one clock share
        the time terms of the solar position)."""
        return 30 if self.data is None else int(self.data.index[0].minute)


@dataclass
class CellResult:
    """Yields of one cell's installations (per kWp, in the order given) and the hourly
    power of its profile cells (``profile_cell`` -> (hour indexes, kW))."""

    annual_per_kw: np.ndarray
    monthly_per_kw: np.ndarray
    profile: dict


@dataclass(frozen=True)
class CellSystems:
    """The installations of one weather cell as arrays: their :class:`Surfaces`, DC
    capacity (kW, NaN when unknown) and profile cell."""

    surfaces: Surfaces
    capacity_kw: np.ndarray
    profile_cell: np.ndarray


@lru_cache(maxsize=8)
def _clock(year: int, minute: int) -> dict:
    """Time terms of the SPA and the Linke interpolation weights of one clock."""
    times = year_clock(year, minute)
    return {**sun_time_terms(times), "linke_basis": linke_basis(times)}


def _possibly_lit(clock: Mapping, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """(sites, hours): the sun's geocentric elevation above -1 deg, a cheap superset of
    the hours with the apparent sun above the horizon (refraction lifts it by at most
    0.6 deg near the horizon, parallax lowers it by 0.003 deg)."""
    lat = np.radians(latitude)[:, None]
    decl = np.radians(clock["delta"])[None, :]
    hour_angle = np.radians(clock["nu"][None, :] + longitude[:, None] - clock["alpha"][None, :])
    sin_elevation = np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)
    return sin_elevation > np.sin(np.radians(-1.0))


def _chunk_sky(cells: list[CellWeather], settings: EnergySettings) -> list[SkyHours]:
    """Solar position, weather and sky terms of cells sharing one clock.

    Only (cell, hour) pairs that can have light are computed: the hours a weather series
    has light in, and for clear-sky cells the hours with the sun near or above the
    horizon. The pairs are flat arrays, so every step is one array operation for the chunk.
    """
    model = settings.model
    clock = _clock(settings.year, cells[0].minute)
    lat = np.array([c.latitude for c in cells])
    lon = np.array([c.longitude for c in cells])
    alt = np.array([c.altitude_m for c in cells])
    clear = np.array([c.data is None for c in cells])
    candidates = np.zeros((len(cells), wx.HOURS_PER_YEAR), dtype=bool)
    if clear.any():
        candidates[clear] = _possibly_lit(clock, lat[clear], lon[clear])
    columns = (*wx.WEATHER_COLUMNS, "albedo")
    values = {k: [] for k in columns}
    for j, cell in enumerate(cells):
        if cell.data is None:
            continue
        if cell.data.index[0].minute != cell.minute or len(cell.data) != wx.HOURS_PER_YEAR:
            raise ValueError(f"weather of {cell.cell} is not on the clock of the reference year {settings.year}")
        data = cell.data
        lit = ((data["ghi"] > 0) | (data["dni"] > 0) | (data["dhi"] > 0)).to_numpy()
        candidates[j] = lit
        for k in columns:
            values[k].append(data[k].to_numpy(dtype=float)[lit] if k in data else np.full(lit.sum(), np.nan))
    site, hour = np.nonzero(candidates)
    n = len(site)
    flat = {k: np.full(n, np.nan) for k in columns}
    from_data = ~clear[site]
    for k in columns:
        if values[k]:
            flat[k][from_data] = np.concatenate(values[k])
    from_clear = clear[site]
    flat["temp_air"][from_clear] = settings.clearsky["temp_air_c"]
    flat["wind_speed"][from_clear] = settings.clearsky["wind_speed_m_s"]
    flat["pressure"][from_clear] = pvlib.atmosphere.alt2pres(alt[site[from_clear]])
    flat["albedo"] = np.where(np.isnan(flat["albedo"]), model.albedo, flat["albedo"])
    terms = {k: clock[k][hour] for k in ("nu", "alpha", "delta", "xi")}
    x, y = observer_terms(lat, alt)
    sun = sun_position_at(terms, lat[site], lon[site], alt[site], flat["pressure"], flat["temp_air"],
                          observer=(x[site], y[site]))
    zenith, azimuth = sun["apparent_zenith"], sun["azimuth"]
    dni_extra = clock["dni_extra"][hour]
    if from_clear.any():
        linke_table = _padded(np.array([c.linke if c.data is None else np.zeros(MONTHS) for c in cells]))
        linke = np.einsum("nk,nk->n", clock["linke_basis"][hour[from_clear]], linke_table[site[from_clear]])
        cs = clearsky_irradiance(zenith[from_clear], alt[site[from_clear]], linke, dni_extra[from_clear])
        for k in ("ghi", "dni", "dhi"):
            flat[k][from_clear] = cs[k]
    keep = (flat["ghi"] > 0) | (flat["dni"] > 0) | (flat["dhi"] > 0)
    # the whole chunk as one flat sky, split into its cells at the end
    sky = site_sky(hour[keep], zenith[keep], azimuth[keep], {k: v[keep] for k, v in flat.items()},
                   dni_extra[keep], model)
    bounds = np.searchsorted(site[keep], np.arange(1, len(cells)))
    parts = {f.name: np.split(getattr(sky, f.name), bounds) for f in fields(SkyHours) if f.name != "diffuse"}
    diffuse = {k: np.split(v, bounds) for k, v in sky.diffuse.items()}
    return [SkyHours(**{k: v[j] for k, v in parts.items()}, diffuse={k: v[j] for k, v in diffuse.items()})
            for j in range(len(cells))]


@lru_cache(maxsize=4)
def _month_first_hours(year: int) -> np.ndarray:
    """Hour of the year (0-8759) at which each month of ``year`` starts."""
    return np.cumsum([0] + [pd.Period(f"{year}-{m:02d}").days_in_month * 24 for m in range(1, MONTHS)])


def _month_bounds(hours: np.ndarray, year: int) -> np.ndarray:
    """Positions in ``hours`` (hour-of-year indexes, sorted) where each month starts."""
    return np.searchsorted(hours, _month_first_hours(year))


def _cell_yields(sky: SkyHours, systems: CellSystems, settings: EnergySettings) -> CellResult:
    """Annual and monthly yield per kWp of one cell's installations, and their capacity-
    weighted hourly power summed per profile cell."""
    model = settings.model
    surfaces = systems.surfaces
    n = len(surfaces)
    rows, cols, weights, nodes = np.arange(n), np.arange(n), np.ones(n), surfaces
    if model.method == "grid":
        rows, cols, weights, nodes = shared_grid_nodes(surfaces, model)
    starts = np.append(_month_bounds(sky.hours, settings.year), len(sky.hours))
    capacity = np.nan_to_num(systems.capacity_kw)
    groups, group_of = np.unique(systems.profile_cell.astype(str), return_inverse=True)
    # capacity-weighted node weights per profile cell: profile = power(nodes) @ weights
    by_group = np.zeros((len(nodes), len(groups)))
    np.add.at(by_group, (cols, group_of[rows]), weights * capacity[rows])
    node_annual = np.zeros(len(nodes))
    node_monthly = np.zeros((MONTHS, len(nodes)))
    hourly = np.zeros((len(sky.hours), len(groups)))
    step = max(1, model.chunk_systems)
    # one array type per block: a tracker's orientation is per hour, and the cell
    # temperature's wind term then depends on the hour only
    blocks = [kind[lo:lo + step] for kind in (np.flatnonzero(nodes.array_type == t) for t in ARRAY_TYPES)
              for lo in range(0, len(kind), step)]
    for block in blocks:
        power = np.nan_to_num(ac_power_per_kw(sky, nodes.take(block), model))
        total = np.concatenate([np.zeros((1, power.shape[1])), np.cumsum(power, axis=0)])
        node_monthly[:, block] = total[starts[1:]] - total[starts[:-1]]
        node_annual[block] = total[-1]
        hourly += power @ by_group[block]
    annual = np.bincount(rows, weights=weights * node_annual[cols], minlength=n)
    monthly = np.stack([np.bincount(rows, weights=weights * node_monthly[m, cols], minlength=n) for m in range(MONTHS)], axis=1)
    return CellResult(annual, monthly, {g: (sky.hours, hourly[:, k]) for k, g in enumerate(groups)})


def simulate(systems: pd.DataFrame, cells: dict[str, CellWeather], settings: EnergySettings,
             progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Yields of installations whose weather cells are known.

    Parameters
    ----------
    systems : pandas.DataFrame
        :func:`system_parameters` rows with ``weather_cell`` and ``profile_cell``.
    cells : dict
        ``weather_cell`` -> :class:`CellWeather`; rows whose cell is missing get NaN.
    settings : EnergySettings

    Returns
    -------
    yields : pandas.DataFrame
        On ``systems``' index: ``specific_yield_kwh_per_kwp`` and ``kwh_per_kwp_01`` ...
        ``kwh_per_kwp_12``.
    profile : dict
        profile cell -> hourly AC power (kW, 8,760 values) of its installations.
    """
    annual = np.full(len(systems), np.nan)
    monthly = np.full((len(systems), MONTHS), np.nan)
    profile: dict[str, np.ndarray] = {}
    cell_of = systems["weather_cell"].to_numpy(object)
    present = np.flatnonzero(pd.Series(cell_of).isin(list(cells)).to_numpy())
    order = present[np.argsort(cell_of[present].astype(str), kind="stable")]
    names, starts = np.unique(cell_of[order].astype(str), return_index=True)
    members = dict(zip(names, np.split(order, starts[1:])))
    surfaces = Surfaces(systems["tilt_deg"].to_numpy(float), systems["azimuth_deg"].to_numpy(float),
                        systems["array_type"].to_numpy(object))
    capacity = systems["capacity_kw"].to_numpy(float)
    profile_cell = systems["profile_cell"].to_numpy(object)
    # cells sharing a clock form chunks; within a clock, cells in name order
    chunks, current = [], []
    for cell in sorted(members, key=lambda c: (cells[c].minute, c)):
        if current and (len(current) >= settings.chunk_cells or cells[cell].minute != cells[current[0]].minute):
            chunks.append(current)
            current = []
        current.append(cell)
    if current:
        chunks.append(current)

    def run(chunk: list[str]) -> list[tuple[np.ndarray, CellResult]]:
        skies = _chunk_sky([cells[c] for c in chunk], settings)
        out = []
        for sky, cell in zip(skies, chunk):
            idx = members[cell]
            part = CellSystems(surfaces.take(idx), capacity[idx], profile_cell[idx])
            out.append((idx, _cell_yields(sky, part, settings)))
        return out

    bar = tqdm(total=len(present), desc="energy", unit="installation", disable=not progress, mininterval=2)
    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        for results in pool.map(run, chunks):
            for idx, res in results:
                annual[idx] = res.annual_per_kw
                monthly[idx] = res.monthly_per_kw
                for group, (hours, power) in res.profile.items():
                    profile.setdefault(group, np.zeros(wx.HOURS_PER_YEAR))[hours] += power
                bar.update(len(idx))
    bar.close()
    yields = pd.DataFrame({"specific_yield_kwh_per_kwp": annual}, index=systems.index)
    for m in range(MONTHS):
        yields[f"kwh_per_kwp_{m + 1:02d}"] = monthly[:, m]
    return yields, profile


# ================================================================== weather loading


def load_cell_weather(cells: pd.DataFrame, settings: EnergySettings, cache_dir: str | Path,
                      progress: bool = True) -> tuple[dict[str, CellWeather], dict[str, str]]:
    """The weather of every cell: station files, clear-sky sites, or service answers
    (fetched once per cell into ``cache_dir`` and read from there afterwards).

    Parameters
    ----------
    cells : pandas.DataFrame
        One row per cell: ``weather_cell``, ``weather_kind``, ``station_id``, ``site_lat``,
        ``site_lon`` and ``fallback_lat``/``fallback_lon`` (where to ask again when the
        service refuses the cell's centre, e.g. at sea: the mean of its installations).

    Returns
    -------
    weather : dict
        ``weather_cell`` -> :class:`CellWeather`.
    failures : dict
        ``weather_cell`` -> why the service gave no usable answer.

    Raises
    ------
    pvlake.sources.weather.WeatherServiceError
        When a service answered for no cell at all (every request failed: the service is
        unreachable or refuses the key), rather than an energy table without energy.
    """
    out: dict[str, CellWeather] = {}
    failures: dict[str, str] = {}
    stations = {s.station_id: s for s in wx.PVLIB_STATIONS}
    online = cells[cells["weather_kind"].isin(["pvgis", "nsrdb"])]
    for row in cells[cells["weather_kind"] == "station"].itertuples():
        w = wx.read_station(stations[row.station_id], settings.year)
        out[row.weather_cell] = CellWeather(row.weather_cell, "station", w.latitude, w.longitude,
                                            w.altitude_m, w.source, w.data)
    clear = cells[cells["weather_kind"] == "clearsky"]
    if len(clear):
        lat, lon = clear["site_lat"].to_numpy(), clear["site_lon"].to_numpy()
        for row, altitude, linke in zip(clear.itertuples(), lookup_altitude_m(lat, lon), linke_monthly(lat, lon)):
            out[row.weather_cell] = CellWeather(row.weather_cell, "clearsky", row.site_lat, row.site_lon,
                                                float(altitude), CLEARSKY_SOURCE, linke=linke)
    if online.empty:
        return out, failures
    http = settings.http
    session = http_session(attempts=int(http["attempts"]),
                           timeout_s=(float(http["connect_timeout_s"]), float(http["read_timeout_s"])),
                           pool_size=max(10, settings.workers))

    def fetch(row) -> tuple[str, CellWeather | None, str | None]:
        service = row.weather_kind
        path = wx.cache_file(cache_dir, service, row.weather_cell.split(":", 1)[1])
        tried = [(row.site_lat, row.site_lon)]
        if np.isfinite(row.fallback_lat):
            tried.append((round(row.fallback_lat, 2), round(row.fallback_lon, 2)))
        reason = None
        for lat, lon in tried:
            try:
                if service == "pvgis":
                    w = wx.get_pvgis_tmy(lat, lon, path, session=session, url=settings.pvgis["url"],
                                         year=settings.year, usehorizon=bool(settings.pvgis.get("usehorizon", True)))
                else:
                    w = wx.get_nsrdb_tmy(lat, lon, path, session=session, url=settings.nsrdb["url"],
                                         year=settings.year, names=settings.nsrdb.get("names", "tmy"))
            except wx.WeatherServiceError as exc:
                reason = exc.reason
                # a refusal of this point (400) may not hold for the other; anything else will
                if "HTTP 400" not in exc.reason:
                    break
                continue
            return row.weather_cell, CellWeather(row.weather_cell, service, w.latitude, w.longitude, w.altitude_m,
                                                 w.source, w.data), None
        return row.weather_cell, None, reason

    bar = tqdm(total=len(online), desc="weather", unit="cell", disable=not progress, mininterval=2)
    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        for cell, weather, reason in pool.map(fetch, online.itertuples()):
            if weather is None:
                failures[cell] = reason
            else:
                out[cell] = weather
            bar.update()
    bar.close()
    if len(failures) == len(online):
        service = online["weather_kind"].iloc[0]
        first = failures[sorted(failures)[0]]
        raise wx.WeatherServiceError(service, settings.pvgis["url"] if service == "pvgis" else settings.nsrdb["url"],
                                     f"no usable answer for any of {len(online):,} cells (first: {first})")
    return out, failures


# ================================================================== the stage


@dataclass
class EnergyRun:
    """What :func:`energy_table` computed.

    Attributes
    ----------
    table : pandas.DataFrame
        The energy table (:data:`ENERGY_COLUMNS`), sorted by ``pv_id``.
    profile : pyarrow.Table
        Hourly profiles per coarse H3 cell (:data:`PROFILE_COLUMNS`).
    report : dict
        Counts and timing.
    systems : pandas.DataFrame
        Per installation: :func:`system_parameters` and :func:`assign_weather_cells` columns.
    weather : dict
        ``weather_cell`` -> :class:`CellWeather` used.
    """

    table: pd.DataFrame
    profile: pa.Table
    report: dict
    systems: pd.DataFrame
    weather: dict


def energy_table(installations: pd.DataFrame, settings: EnergySettings, cache_dir: str | Path,
                 progress: bool = True) -> EnergyRun:
    """The energy table, the hourly profile per coarse H3 cell, and a report.

    Parameters
    ----------
    installations : pandas.DataFrame
        The prepared installations (at least ``pv_id``, ``centroid_lon``,
        ``centroid_lat``, ``area_m2``, ``capacity_mw``; ``attributes`` if present).
    settings : EnergySettings
    cache_dir : str or Path
        Where weather services' answers are kept across runs.
    """
    started = time.perf_counter()
    flags = _Flags(len(installations))
    systems = system_parameters(installations, settings, flags)
    cells = assign_weather_cells(systems["latitude"].to_numpy(), systems["longitude"].to_numpy(), settings)
    systems = pd.concat([systems, cells], axis=1)
    systems["profile_cell"] = h3_cells(systems["longitude"].to_numpy(), systems["latitude"].to_numpy(),
                                       settings.profile_h3_resolution)
    located = np.isfinite(systems["latitude"]) & np.isfinite(systems["longitude"])
    flags.add("no_location", ~located)
    flags.add("outside_weather_coverage", located & ~systems["covered"],
              f"{FLAGS['outside_weather_coverage']} ({settings.weather})")

    listed = systems.dropna(subset=["weather_cell"])
    fallback = listed.groupby("weather_cell")[["latitude", "longitude"]].mean()
    cell_rows = (listed.drop_duplicates("weather_cell").set_index("weather_cell")
                 [["weather_kind", "station_id", "site_lat", "site_lon"]]
                 .join(fallback.rename(columns={"latitude": "fallback_lat", "longitude": "fallback_lon"}))
                 .sort_index().reset_index())
    weather, failures = load_cell_weather(cell_rows, settings, cache_dir, progress)
    failed_rows = systems["weather_cell"].isin(list(failures)).to_numpy()
    cell_of = systems["weather_cell"].to_numpy()
    flags.add("weather_unavailable", failed_rows, lambda i: failures[cell_of[i]])
    sources = {c: w.source for c, w in weather.items()}
    systems["weather_source"] = systems["weather_cell"].map(sources)
    clear = (systems["weather_kind"] == "clearsky").to_numpy()
    flags.add("clearsky_upper_bound", clear)
    yields, profile_hours = simulate(systems, weather, settings, progress)

    codes, reasons = flags.columns()
    specific = yields["specific_yield_kwh_per_kwp"].to_numpy()
    capacity = systems["capacity_kw"].to_numpy()
    table = pd.DataFrame({
        "pv_id": systems["pv_id"], "capacity_kw": capacity, "capacity_source": systems["capacity_source"],
        "array_type": systems["array_type"], "tilt_deg": systems["tilt_deg"], "azimuth_deg": systems["azimuth_deg"],
        "orientation_source": systems["orientation_source"],
        "weather_source": systems["weather_source"].where(systems["weather_source"].notna(), None),
        "weather_cell": systems["weather_cell"], "weather_distance_km": systems["weather_distance_km"],
        "annual_kwh": specific * capacity, "specific_yield_kwh_per_kwp": specific,
        "capacity_factor": specific / wx.HOURS_PER_YEAR,
    })
    for m in range(1, MONTHS + 1):
        table[f"kwh_{m:02d}"] = yields[f"kwh_per_kwp_{m:02d}"].to_numpy() * capacity
    table["flags"], table["flag_reasons"] = codes, reasons
    table = table.sort_values("pv_id", kind="stable").reset_index(drop=True)

    profile = profile_table(profile_hours, systems, settings.year)
    report = {
        "installations": len(table),
        "with_energy": int(np.isfinite(table["specific_yield_kwh_per_kwp"]).sum()),
        "with_annual_kwh": int(np.isfinite(table["annual_kwh"]).sum()),
        "weather": settings.weather,
        "weather_cells": len(cell_rows),
        "weather_cells_failed": dict(sorted(failures.items())),
        "by_weather_source": table["weather_source"].fillna("none").value_counts().sort_index().to_dict(),
        "by_capacity_source": table["capacity_source"].value_counts().sort_index().to_dict(),
        "by_orientation_source": table["orientation_source"].value_counts().sort_index().to_dict(),
        "flags": {code: int(mask.sum()) for code, mask, _ in sorted(flags.codes, key=lambda m: m[0])},
        "profile_cells": profile.num_rows // wx.HOURS_PER_YEAR,
        "method": settings.model.method,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return EnergyRun(table, profile, report, systems, weather)


def profile_table(profile_hours: dict, systems: pd.DataFrame, year: int) -> pa.Table:
    """Long table of the hourly profiles (:data:`PROFILE_COLUMNS`): one row per profile
    cell and hour, built as Arrow columns (a global run has millions of rows)."""
    counted = systems[np.isfinite(systems["capacity_kw"]) & systems["weather_source"].notna()]
    stats = counted.groupby("profile_cell")["capacity_kw"].agg(["size", "sum"])
    cells = [c for c in sorted(profile_hours) if c in stats.index]
    hours = wx.HOURS_PER_YEAR
    times = year_clock(year, 0).as_unit("us").asi8
    index = np.repeat(np.arange(len(cells), dtype=np.int32), hours)
    columns = {
        "h3_cell": pa.DictionaryArray.from_arrays(pa.array(index), pa.array(cells, pa.string())),
        "time_utc": pa.array(np.tile(times, len(cells)), PROFILE_COLUMNS["time_utc"]),
        "ac_kw": pa.array(np.concatenate([profile_hours[c] for c in cells]) if cells else np.zeros(0)),
        "installations": pa.array(stats["size"].reindex(cells).to_numpy(np.int32)[index]),
        "capacity_kw": pa.array(stats["sum"].reindex(cells).to_numpy(float)[index]),
    }
    return pa.table(columns, schema=pa.schema(PROFILE_COLUMNS))


def write_table(table: pd.DataFrame | pa.Table, schema: Mapping[str, pa.DataType], path: str | Path) -> None:
    """Write ``table`` with ``schema`` (column order and types) as Parquet, atomically."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table[list(schema)], schema=pa.schema(schema), preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table.select(list(schema)), tmp, compression="zstd")


INSTALLATION_COLUMNS = ("pv_id", "centroid_lon", "centroid_lat", "area_m2", "capacity_mw", "attributes")
"""Columns of the prepared table the stage reads (``attributes`` where present)."""


def read_installations(prepared: str | Path) -> pd.DataFrame:
    """The prepared installations' columns the stage reads."""
    available = set(pq.read_schema(prepared).names)
    return pd.read_parquet(prepared, columns=[c for c in INSTALLATION_COLUMNS if c in available])


def run_stage(prepared: str | Path, layout: Layout, settings: EnergySettings, progress: bool = True) -> EnergyRun:
    """Read the prepared installations, compute their energy, write the outputs:
    ``layout.energy_parquet()``, ``layout.energy_profile()`` and ``layout.energy_report()``."""
    run = energy_table(read_installations(prepared), settings, layout.weather_cache(), progress)
    write_table(run.table, ENERGY_COLUMNS, layout.energy_parquet())
    write_table(run.profile, PROFILE_COLUMNS, layout.energy_profile())
    write_json(run.report, layout.energy_report())
    return run


# ================================================================== time series (reused by forecasting)


def ac_power(weather: pd.DataFrame, latitude: float, longitude: float, altitude_m: float, surfaces: Surfaces,
             model: ModelSettings) -> pd.DataFrame:
    """AC power per kW of DC capacity (kW/kWp) of surfaces at one site, at every
    timestamp of a weather series: the stage's model on any clock.

    Parameters
    ----------
    weather : pandas.DataFrame
        Timezone-aware index (the instants the values describe); ``ghi``, ``dni``,
        ``dhi`` (W/m²), ``temp_air`` (°C), ``wind_speed`` (m/s); optional ``pressure``
        (Pa; else the standard pressure at ``altitude_m``) and ``albedo`` (else the
        model's).
    latitude, longitude, altitude_m : float
    surfaces : Surfaces
    model : ModelSettings

    Returns
    -------
    pandas.DataFrame
        One column per surface; 0 without light and where the chain is undefined.
    """
    times = pd.DatetimeIndex(weather.index)
    lit = ((weather["ghi"] > 0) | (weather["dni"] > 0) | (weather["dhi"] > 0)).to_numpy()
    pressure = (weather["pressure"].to_numpy(float) if "pressure" in weather
                else np.full(len(times), pvlib.atmosphere.alt2pres(altitude_m)))
    albedo = weather["albedo"].to_numpy(float) if "albedo" in weather else np.full(len(times), model.albedo)
    terms = sun_time_terms(times[lit])
    temp_air = weather["temp_air"].to_numpy(float)
    sun = sun_position_at(terms, latitude, longitude, altitude_m, pressure[lit], temp_air[lit])
    values = {k: weather[k].to_numpy(float)[lit] for k in ("ghi", "dni", "dhi", "temp_air", "wind_speed")}
    sky = site_sky(np.flatnonzero(lit), sun["apparent_zenith"], sun["azimuth"], {**values, "albedo": albedo[lit]},
                   terms["dni_extra"], model)
    out = np.zeros((len(times), len(surfaces)))
    out[lit] = np.nan_to_num(ac_power_per_kw(sky, surfaces, model))
    return pd.DataFrame(out, index=times)


DECOMPOSITIONS = ("erbs", "erbs_driesse")

CLEAR_GHI_SHARE = 0.98
"""A weather value counts as cloudless when its GHI is at least this share of the
source's own clear-sky GHI (the NSRDB sets the two equal in cloudless periods)."""


def split_ghi(ghi: pd.Series, latitude: float, longitude: float, altitude_m: float, temp_air: pd.Series,
              method: str = "erbs") -> pd.DataFrame:
    """Beam and diffuse from global horizontal irradiance, where a source gives GHI only.

    ``erbs`` (Erbs, Klein & Duffie 1982, :func:`pvlib.irradiance.erbs`) or
    ``erbs_driesse`` (Driesse, Jensen & Perez 2024, :func:`pvlib.irradiance.erbs_driesse`),
    with the sun's true zenith at each timestamp.

    Returns
    -------
    pandas.DataFrame
        ``ghi``, ``dni``, ``dhi`` on the index of ``ghi``.
    """
    if method not in DECOMPOSITIONS:
        raise ValueError(f"decomposition {method!r}: one of {', '.join(DECOMPOSITIONS)}")
    times = pd.DatetimeIndex(ghi.index)
    pressure = pvlib.atmosphere.alt2pres(altitude_m)
    zenith = solar_position(times, [latitude], [longitude], [altitude_m], pressure,
                            temp_air.to_numpy(float)[:, None])["zenith"][:, 0]
    parts = getattr(pvlib.irradiance, method)(ghi.to_numpy(float), zenith, times)
    return pd.DataFrame({"ghi": ghi.to_numpy(float), "dni": np.asarray(parts["dni"]), "dhi": np.asarray(parts["dhi"])},
                        index=times)


def station_clearsky_gap(settings: EnergySettings) -> pd.DataFrame:
    """What clear-sky weather overstates: at each of pvlib's station files, the specific
    yield of a default-oriented ground array from the real typical year and from clear-sky
    weather at the same place and clock."""
    rows = []
    for station in wx.PVLIB_STATIONS:
        real = wx.read_station(station, settings.year)
        clear = clearsky_weather(real.latitude, real.longitude, real.altitude_m, settings.year, settings.clearsky)
        lat = np.array([real.latitude])
        surface = Surfaces(default_tilt_deg(lat, settings.orientation), default_azimuth_deg(lat),
                           np.array(["ground"], dtype=object))
        yields = [float(ac_power(w.data, real.latitude, real.longitude, real.altitude_m, surface, settings.model)[0].sum())
                  for w in (real, clear)]
        rows.append({"station": real.source, "real_kwh_per_kwp": yields[0], "clearsky_kwh_per_kwp": yields[1],
                     "real_below_clearsky_pct": 100 * (1 - yields[0] / yields[1])})
    return pd.DataFrame(rows)


# ================================================================== validation on measured power


@dataclass(frozen=True)
class ValidationSettings:
    """How the model is held against measured power (config ``energy.validation``).

    ``decomposition`` splits the files' GHI (:func:`split_ghi`); ``wind_speed_m_s`` stands
    in for the wind the files lack; ``dc_ac_ratio`` sizes the inverter (1.0: pvanalytics
    finds no clipping plateau in these systems, so the inverter did not limit them);
    ``power_label`` says where in its 15-minute interval a power value is labelled
    (``start`` or ``end``: the model is evaluated at the interval's middle; ``instant``);
    PVDAQ labels the end (:func:`morning_afternoon_balance` shows it); a day counts when
    its usable hours hold at least ``min_day_coverage`` of its modelled energy.
    """

    decomposition: str = "erbs"
    wind_speed_m_s: float = 2.0
    dc_ac_ratio: float = 1.0
    array_type: str = "ground"
    power_label: str = "end"
    min_day_coverage: float = 0.8
    modelchain_systems: int = 50


@dataclass
class MeasuredComparison:
    """Measured and modelled AC power of one system, and the metrics.

    Attributes
    ----------
    system : MeasuredSystem
    capacity_kw : float
        DC capacity estimated on the training period.
    samples : pandas.DataFrame
        15-minute ``measured_kw``, ``modelled_kw`` (model with the estimated capacity),
        pvanalytics' quality flags, ``train``.
    hourly, daily : pandas.DataFrame
        ``measured``/``modelled`` (kW means per hour; kWh per day) and ``train``.
    metrics : pandas.DataFrame
        One row per period (train, validation) and resolution (hourly, daily).
    """

    system: object
    capacity_kw: float
    samples: pd.DataFrame
    hourly: pd.DataFrame
    daily: pd.DataFrame
    metrics: pd.DataFrame


def error_metrics(measured: np.ndarray, modelled: np.ndarray, capacity_kw: float, hours: float) -> dict:
    """Normalised mean bias and root-mean-square errors (%).

    ``nmbe_pct`` = sum(modelled - measured) / sum(measured); ``nrmse_capacity_pct`` =
    RMSE / (capacity x ``hours``), i.e. for daily energies the RMSE of the daily mean
    power over the capacity; ``nrmse_mean_pct`` = RMSE / mean(measured).
    """
    measured, modelled = np.asarray(measured, float), np.asarray(modelled, float)
    diff = modelled - measured
    rmse = float(np.sqrt(np.mean(diff ** 2))) if len(diff) else np.nan
    return {"n": int(len(diff)), "nmbe_pct": 100 * float(diff.sum() / measured.sum()) if len(diff) else np.nan,
            "nrmse_capacity_pct": 100 * rmse / (capacity_kw * hours),
            "nrmse_mean_pct": 100 * rmse / float(measured.mean()) if len(diff) else np.nan}


def compare_measured(system, model: ModelSettings, validation: ValidationSettings) -> MeasuredComparison:
    """Simulate a measured system from its weather and published parameters, estimate its
    capacity on the training period, and compare hourly and daily with the measurements.

    The weather (instantaneous NSRDB values) is interpolated to the 15-minute clock of the
    power, GHI split into beam and diffuse, and the stage's model (:func:`ac_power`) run
    at the middle of each power interval. Only values pvanalytics finds usable (daytime,
    not stuck, not clipped, present) enter the capacity estimate and the metrics.
    """
    from .sources import measured as ms

    power_kw = ms.read_measured_power(system) / 1000.0
    weather = ms.read_measured_weather(system)
    flags = ms.quality_flags(power_kw * 1000.0, system.freq)
    altitude = float(lookup_altitude_m([system.latitude], [system.longitude])[0])
    offset = {"start": 0.5, "end": -0.5, "instant": 0.0}[validation.power_label] * pd.Timedelta(system.freq)
    instants = power_kw.index + offset
    series = weather[["ghi", "temp_air", "ghi_clear"]]
    grid = series.reindex(series.index.union(instants)).interpolate("time", limit_area="inside").reindex(instants)
    inputs = split_ghi(grid["ghi"].fillna(0.0).clip(lower=0), system.latitude, system.longitude, altitude,
                       grid["temp_air"].ffill().bfill(), validation.decomposition)
    inputs["temp_air"] = grid["temp_air"].to_numpy()
    inputs["wind_speed"] = validation.wind_speed_m_s
    surfaces = Surfaces(np.array([system.tilt_deg]), np.array([system.azimuth_deg]),
                        np.array([validation.array_type], dtype=object))
    run_model = replace(model, dc_ac_ratio=validation.dc_ac_ratio)
    per_kw = ac_power(inputs, system.latitude, system.longitude, altitude, surfaces, run_model)[0].to_numpy()
    per_kw[grid["ghi"].isna().to_numpy()] = np.nan
    first, last = (pd.Timestamp(d, tz="UTC") for d in system.train)
    train = (power_kw.index >= first) & (power_kw.index < last + pd.Timedelta("1D"))
    usable = flags["usable"].to_numpy() & np.isfinite(per_kw)
    capacity = float(power_kw[usable & train].sum() / per_kw[usable & train].sum())
    # cloudless in the weather data: the NSRDB's GHI at its clear-sky value
    clear = (grid["ghi"] >= CLEAR_GHI_SHARE * grid["ghi_clear"]).to_numpy() & (grid["ghi_clear"] > 0).to_numpy()
    samples = pd.DataFrame({"measured_kw": power_kw.to_numpy(), "modelled_kw": per_kw * capacity,
                            "usable": usable, "train": train, "clear_sky": clear}, index=power_kw.index)
    samples = pd.concat([samples, flags.drop(columns="usable")], axis=1)

    kept = samples[samples["usable"]]
    by_hour = kept.groupby(kept.index.floor("h"))
    hourly = by_hour[["measured_kw", "modelled_kw"]].mean().rename(columns=lambda c: c.removesuffix("_kw"))
    hourly["samples"] = by_hour.size()
    hourly["train"] = by_hour["train"].first()
    hourly["clear_sky"] = by_hour["clear_sky"].all()
    per_hour = round(pd.Timedelta("1h") / pd.Timedelta(system.freq))
    hourly = hourly[hourly["samples"] >= per_hour - 1]
    day_all = (samples["modelled_kw"].fillna(0.0) * (pd.Timedelta(system.freq) / pd.Timedelta("1h")))
    day_total = day_all.groupby(day_all.index.floor("D")).sum()
    by_day = hourly.groupby(hourly.index.floor("D"))
    daily = by_day[["measured", "modelled"]].sum()
    daily["train"] = by_day["train"].first()
    coverage = daily["modelled"] / day_total.reindex(daily.index)
    daily = daily[coverage >= validation.min_day_coverage]

    rows = []
    clear_hours = hourly[hourly["clear_sky"]]
    for period, in_train in (("train", True), ("validation", False)):
        for resolution, frame, hours in (("hourly", hourly, 1.0), ("daily", daily, 24.0),
                                         ("hourly, clear sky", clear_hours, 1.0)):
            part = frame[frame["train"] == in_train]
            rows.append({"system": system.key, "period": period, "resolution": resolution,
                         **error_metrics(part["measured"], part["modelled"], capacity, hours)})
    return MeasuredComparison(system, capacity, samples, hourly, daily, pd.DataFrame(rows))


# ================================================================== reference: per-system ModelChain


def reference_modelchain(weather: wx.Weather, tilt_deg: float, azimuth_deg: float, capacity_kw: float,
                         array_type: str, model: ModelSettings) -> pvlib.modelchain.ModelChain:
    """The per-system pvlib ModelChain with the stage's models (not yet run).

    PVWatts DC (``pdc0`` = capacity in W) with the temperature coefficient, the
    configured transposition, cell-temperature and AOI models, no spectral loss, PVWatts
    losses and the PVWatts inverter sized by the DC/AC ratio; single-axis trackers with
    :class:`pvlib.pvsystem.SingleAxisTrackerMount`.
    """
    if array_type == "single_axis":
        mount = pvlib.pvsystem.SingleAxisTrackerMount(
            axis_tilt=0.0, axis_azimuth=azimuth_deg, max_angle=model.tracker_max_angle_deg,
            backtrack=model.tracker_backtrack, gcr=model.tracker_gcr)
    else:
        mount = pvlib.pvsystem.FixedMount(surface_tilt=tilt_deg, surface_azimuth=azimuth_deg)
    pdc0_w = capacity_kw * 1000.0
    array = pvlib.pvsystem.Array(
        mount, albedo=model.albedo, module_parameters={"pdc0": pdc0_w, "gamma_pdc": model.gamma_pdc_per_c},
        temperature_model_parameters=model.temperature_parameters(array_type))
    system = pvlib.pvsystem.PVSystem(
        arrays=[array], losses_parameters=dict(model.losses),
        inverter_parameters={"pdc0": pdc0_w * model.inverter_pdc0_per_kw, "eta_inv_nom": model.eta_inv_nom,
                             "eta_inv_ref": model.eta_inv_ref})
    location = pvlib.location.Location(weather.latitude, weather.longitude, tz="UTC", altitude=weather.altitude_m)
    return pvlib.modelchain.ModelChain(
        system, location, dc_model="pvwatts", ac_model="pvwatts", aoi_model=model.aoi_model,
        spectral_model="no_loss", temperature_model=model.temperature, transposition_model=model.transposition,
        losses_model="pvwatts", solar_position_method="nrel_numpy", airmass_model="kastenyoung1989")


def reference_annual_kwh(weather: wx.Weather, tilt_deg: float, azimuth_deg: float, capacity_kw: float,
                         array_type: str, model: ModelSettings) -> float:
    """Annual AC energy (kWh) of one system from :func:`reference_modelchain`."""
    mc = reference_modelchain(weather, tilt_deg, azimuth_deg, capacity_kw, array_type, model)
    mc.run_model(weather.data)
    return float(mc.results.ac.sum()) / 1000.0


def cell_weather_series(cell: CellWeather, settings: EnergySettings) -> wx.Weather:
    """The weather series a cell's installations were modelled with (clear-sky cells
    computed as the stage computes them)."""
    if cell.data is not None:
        return wx.Weather(cell.data, cell.latitude, cell.longitude, cell.altitude_m, cell.source)
    return clearsky_weather(cell.latitude, cell.longitude, cell.altitude_m, settings.year, settings.clearsky)


def modelchain_agreement(run: EnergyRun, settings: EnergySettings, n: int = 200, seed: int = 0,
                         progress: bool = True) -> pd.DataFrame:
    """The stage's specific yield against a per-system pvlib ModelChain on the same
    weather, for a random sample of installations with a yield.

    Returns
    -------
    pandas.DataFrame
        Per system: ``pv_id``, ``weather_source``, ``array_type``, ``tilt_deg``,
        ``azimuth_deg``, ``vectorised_kwh_per_kwp``, ``modelchain_kwh_per_kwp``,
        ``difference_pct``, and ``modelchain_s`` (the ModelChain run's wall time).
    """
    candidates = run.systems.assign(specific=run.table.set_index("pv_id")["specific_yield_kwh_per_kwp"]
                                    .reindex(run.systems["pv_id"]).to_numpy())
    candidates = candidates[np.isfinite(candidates["specific"])]
    picked = candidates.sample(n=min(n, len(candidates)), random_state=seed).sort_values("pv_id")
    rows, series = [], {}
    for row in tqdm(picked.itertuples(), total=len(picked), desc="ModelChain", disable=not progress, mininterval=2):
        if row.weather_cell not in series:
            series[row.weather_cell] = cell_weather_series(run.weather[row.weather_cell], settings)
        started = time.perf_counter()
        reference = reference_annual_kwh(series[row.weather_cell], row.tilt_deg, row.azimuth_deg, 1.0,
                                         row.array_type, settings.model)
        rows.append({"pv_id": row.pv_id, "weather_source": row.weather_source, "array_type": row.array_type,
                     "tilt_deg": row.tilt_deg, "azimuth_deg": row.azimuth_deg,
                     "vectorised_kwh_per_kwp": row.specific, "modelchain_kwh_per_kwp": reference,
                     "difference_pct": 100 * (row.specific / reference - 1),
                     "modelchain_s": time.perf_counter() - started})
    return pd.DataFrame(rows)


def morning_afternoon_balance(comparison: MeasuredComparison) -> dict:
    """Modelled over measured energy before and after solar noon, in the training
    period's cloudless usable samples. A clock error moves energy between morning and
    afternoon (a model running late is high in the morning, low in the afternoon); with
    the right labelling and orientation both are near 1."""
    s = comparison.samples
    kept = s[s["usable"] & s["train"] & s["clear_sky"] & s["modelled_kw"].notna()]
    solar_hour = (kept.index + pd.Timedelta(hours=comparison.system.longitude / 15)).hour
    morning = solar_hour < 12
    return {"morning": float(kept["modelled_kw"][morning].sum() / kept["measured_kw"][morning].sum()),
            "afternoon": float(kept["modelled_kw"][~morning].sum() / kept["measured_kw"][~morning].sum())}


TARGETS = {"abs_nmbe_pct": 5.0, "daily_nrmse_capacity_pct": 15.0, "modelchain_abs_difference_pct": 0.5}
"""The issue's targets: |NMBE| and daily NRMSE (of capacity) on the validation period,
and the agreement with per-system ModelChain runs."""


def validation_summary(agreement: pd.DataFrame, comparisons: Mapping[str, MeasuredComparison]) -> dict:
    """The checks as JSON: ModelChain agreement and, per measured system, its capacity
    estimate, pvanalytics' flag counts and the metrics, with the targets and whether each
    is met on the validation period."""
    worst = float(agreement["difference_pct"].abs().max()) if len(agreement) else None
    measured = {}
    for key, comp in comparisons.items():
        metrics = comp.metrics
        held_out = metrics[metrics["period"] == "validation"].set_index("resolution")
        nmbe, daily = float(held_out.at["daily", "nmbe_pct"]), float(held_out.at["daily", "nrmse_capacity_pct"])
        measured[key] = {
            "name": comp.system.name, "metadata_source": comp.system.metadata_source,
            "tilt_deg": comp.system.tilt_deg, "azimuth_deg": comp.system.azimuth_deg,
            "train": list(comp.system.train), "capacity_kw_estimated": round(comp.capacity_kw, 4),
            "clear_sky_model_over_measured": morning_afternoon_balance(comp),
            "quality_flags": {c: int(comp.samples[c].sum()) for c in ("missing", "night", "negative", "stuck", "clipped")}
            | {"usable": int(comp.samples["usable"].sum()), "samples": len(comp.samples)},
            "metrics": metrics.drop(columns="system").to_dict(orient="records"),
            "targets_met": {"abs_nmbe": abs(nmbe) < TARGETS["abs_nmbe_pct"],
                            "daily_nrmse_capacity": daily < TARGETS["daily_nrmse_capacity_pct"]},
        }
    return {
        "targets": TARGETS,
        "modelchain": {"systems": len(agreement), "max_abs_difference_pct": worst,
                       "mean_abs_difference_pct": float(agreement["difference_pct"].abs().mean()) if len(agreement) else None,
                       "within_target": worst is not None and worst < TARGETS["modelchain_abs_difference_pct"],
                       "modelchain_s_per_system": float(agreement["modelchain_s"].mean()) if len(agreement) else None},
        "measured": measured,
    }
