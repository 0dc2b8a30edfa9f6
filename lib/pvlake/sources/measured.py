"""Measured AC power of real PV systems with their weather: the energy model's check.

pvanalytics (NREL; Perry et al. 2022, JOSS 7(73), 4224) ships in its wheel
(``pvanalytics/data``) the AC power of two NREL systems at Golden, Colorado, with the
NSRDB PSM3 weather of the same place and period (Sengupta et al. 2018):

- PVDAQ **system 50** (DOE Open Energy Data Initiative, https://data.openei.org/submissions/4568):
  ``system_50_ac_power_2_full_DST.parquet`` (``ac_power_2``, W, 15 min,
  2011-04-15 to 2013-12-31) with ``system_50_ac_power_2_full_DST_psm3.parquet`` (30 min).
- **SERF East** (NREL's Solar Energy Research Facility): ``serf_east_15min_ac_power.csv``
  (``ac_power``, W, 15 min, 2016-07-01 to 2016-10-13) with ``serf_east_psm3_data.csv``
  (PSM3 interpolated to 15 min by pvanalytics).

The weather files hold only air temperature and GHI (plus clear-sky GHI/DNI/DHI): the
energy stage splits GHI into beam and diffuse itself. The systems' metadata are not in
the data, only in pvanalytics' documentation examples, quoted in :data:`NREL_SYSTEMS`;
no capacity is documented anywhere, so the validation estimates it from a training
period and validates on the rest.

Two traps of these files are handled here:

- system 50's power timestamps are local clock time *with* daylight saving time but
  carry a fixed ``-07:00`` offset: between March and November every value sits one
  hour late against the sun. :func:`read_measured_power` re-reads the wall-clock time in
  ``America/Denver`` (:attr:`MeasuredSystem.power_clock`).
- system 50's air temperature is clipped at 0 °C (about a quarter of the values are
  exactly 0): freezing hours are modelled a few degrees too warm, which lowers winter
  power by ~0.4 %/K (the PVWatts temperature coefficient). The data give nothing better;
  :func:`temperature_clipped_share` reports the share.

:func:`quality_flags` runs pvanalytics' own checks on the power (night, stuck values,
clipping, negative values) so that the comparison uses the daytime values a model can be
held to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pvanalytics
from pvanalytics.features import clipping, daytime
from pvanalytics.quality import gaps

DATA_DIR = Path(pvanalytics.__file__).parent / "data"


@dataclass(frozen=True)
class MeasuredSystem:
    """A PV system with measured AC power and matching weather in ``pvanalytics/data``.

    Attributes
    ----------
    key : str
        Short name (``system_50``, ``serf_east``).
    name : str
        What the system is.
    power_file, power_column : str
        File and column of the AC power (W).
    weather_file : str
        The NSRDB PSM3 weather of the same place and period.
    latitude, longitude : float
        Degrees.
    tilt_deg, azimuth_deg : float
        Module plane (fixed).
    power_clock : str
        Time zone whose wall clock the power timestamps really are (``America/Denver``
        for system 50: daylight saving time under a fixed label), or ``fixed`` when the
        stated offset is right.
    train : tuple of str
        First and last day of the period the capacity is estimated on (the rest is the
        validation period).
    metadata_source : str
        Where the latitude, longitude, tilt and azimuth are stated.
    """

    key: str
    name: str
    power_file: str
    power_column: str
    weather_file: str
    latitude: float
    longitude: float
    tilt_deg: float
    azimuth_deg: float
    power_clock: str
    train: tuple[str, str]
    metadata_source: str

    @property
    def freq(self) -> str:
        return "15min"


PVANALYTICS_DOCS = "https://pvanalytics.readthedocs.io/en/stable/generated/gallery/"

NREL_SYSTEMS = {
    "system_50": MeasuredSystem(
        key="system_50", name="NREL PVDAQ system 50 (Golden, CO)",
        power_file="system_50_ac_power_2_full_DST.parquet", power_column="ac_power_2",
        weather_file="system_50_ac_power_2_full_DST_psm3.parquet",
        latitude=39.7406, longitude=-105.1775, tilt_deg=45.0, azimuth_deg=158.0,
        power_clock="America/Denver", train=("2011-04-15", "2012-04-14"),
        metadata_source=(
            "pvanalytics example 'PV Fleets QA Process: Power' (latitude 39.7406, longitude -105.1775; "
            "'the ground truth azimuth and tilt for this system are 158 and 45 degrees'), "
            f"{PVANALYTICS_DOCS}system-quality-assessment/pvfleets-power-qa.html"),
    ),
    "serf_east": MeasuredSystem(
        key="serf_east", name="NREL SERF East (Golden, CO)",
        power_file="serf_east_15min_ac_power.csv", power_column="ac_power",
        weather_file="serf_east_psm3_data.csv",
        latitude=39.742, longitude=-105.1727, tilt_deg=45.0, azimuth_deg=158.0,
        power_clock="fixed", train=("2016-07-01", "2016-07-31"),
        metadata_source=(
            "pvanalytics example 'Infer Array Tilt/Azimuth - PVWatts Method' (latitude = 39.742, "
            "longitude = -105.1727, actual_azimuth = 158, actual_tilt = 45), "
            f"{PVANALYTICS_DOCS}system/system-fit-tilt-azimuth.html"),
    ),
}
"""The systems, their metadata as pvanalytics' documentation states them, and the
training period of the capacity estimate (system 50: its first year; SERF East, whose
data cover 3.5 months: its first month)."""


def _read(path: Path, index_column: str) -> pd.DataFrame:
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    frame.index = pd.to_datetime(frame.pop(index_column), utc=False)
    return frame.sort_index()


def relabel_wall_clock(index: pd.DatetimeIndex, zone: str) -> pd.DatetimeIndex:
    """Timestamps whose wall-clock time is right but whose offset is not, placed in the
    time zone ``zone`` (daylight saving included): the hour repeated when clocks fall
    back and the hour skipped when they spring forward become NaT."""
    wall = pd.DatetimeIndex(index).tz_localize(None)
    return wall.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")


def read_measured_power(system: MeasuredSystem, data_dir: Path = DATA_DIR) -> pd.Series:
    """The system's AC power (W) on a regular 15-minute UTC index (NaN where missing),
    with the timestamps of a daylight-saving clock corrected (:func:`relabel_wall_clock`).

    Raises
    ------
    FileNotFoundError
        When pvanalytics' data folder lacks the file (another pvanalytics version).
    """
    frame = _read(data_dir / system.power_file, "measured_on")
    power = frame[system.power_column].astype(float)
    if system.power_clock != "fixed":
        power.index = relabel_wall_clock(power.index, system.power_clock)
        power = power[power.index.notna()]
    power.index = power.index.tz_convert("UTC")
    power = power[~power.index.duplicated(keep="first")]
    return power.asfreq(system.freq).rename("ac_power_w")


def read_measured_weather(system: MeasuredSystem, data_dir: Path = DATA_DIR) -> pd.DataFrame:
    """The system's NSRDB PSM3 weather: ``ghi`` (W/m²), ``temp_air`` (°C) and the
    clear-sky ``ghi_clear``, ``dni_clear``, ``dhi_clear``, UTC index at the file's step."""
    index_column = "index" if data_dir.joinpath(system.weather_file).suffix == ".parquet" else "measured_on"
    frame = _read(data_dir / system.weather_file, index_column)
    frame.index = frame.index.tz_convert("UTC")
    return frame[["ghi", "temp_air", "ghi_clear", "dni_clear", "dhi_clear"]].astype(float)


def temperature_clipped_share(weather: pd.DataFrame) -> float:
    """Share of air temperatures that are exactly 0 °C (clipped at freezing)."""
    return float((weather["temp_air"] == 0).mean())


QUALITY_CHECKS = ("missing", "night", "negative", "stuck", "clipped")
"""The checks of :func:`quality_flags`, in the order a value is attributed to them."""


def quality_flags(power: pd.Series, freq: str = "15min") -> pd.DataFrame:
    """pvanalytics' quality checks on AC power, one boolean column each, and ``usable``.

    - ``night``: not daytime by :func:`pvanalytics.features.daytime.power_or_irradiance`;
    - ``negative``: below zero (inverter self-consumption at night);
    - ``stuck``: three or more equal values in a row during the day
      (:func:`pvanalytics.quality.gaps.stale_values_round`, two decimals, as in the PV
      Fleets QA pipeline);
    - ``clipped``: inverter clipping by :func:`pvanalytics.features.clipping.geometric`;
    - ``missing``: no value.

    ``usable`` is a value none of these hold for.
    """
    present = power.notna()
    values = power.where(present)
    day = daytime.power_or_irradiance(values.fillna(0.0), freq=freq)
    stuck = gaps.stale_values_round(values, window=3, decimals=2) & day
    clipped = clipping.geometric(values.fillna(0.0), freq=freq).reindex(power.index, fill_value=False)
    flags = pd.DataFrame({
        "missing": ~present, "night": ~day & present, "negative": (values < 0).fillna(False),
        "stuck": stuck.fillna(False), "clipped": clipped.astype(bool) & present,
    }, index=power.index)
    flags["usable"] = ~flags[list(QUALITY_CHECKS)].any(axis=1)
    return flags
