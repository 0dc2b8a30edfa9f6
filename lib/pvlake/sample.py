"""Deterministic embedded sample of open PV installation label datasets.

The sample stands in for six real label sources so the pipeline runs offline end
to end. Each file copies its source's format and the quirks the harmonize and
dedup stages must handle (mixed geometry types, legacy CRS members, invalid and
empty geometries, inconsistent ring orientation, zipped shapefiles with negative
samples, a GeoPackage with a wind layer, bare JSON point arrays), at real places
so the energy and imagery stages see real locations. Every planted quirk and
duplicate is listed in ``ground_truth.json``; ``manifest.json`` describes the
sample in the upstream manifest format.

``stac/`` holds a Sentinel-2-like static STAC catalogue over the sites
(:mod:`pvlake.sample_stac`), searched offline by the STAC stage.

Run ``python -m pvlake.sample data/sample`` to regenerate the committed files.

References
----------
.. [1] Stowell, D. et al. (2020). A harmonised, high-coverage, open dataset of
   solar photovoltaic installations in the UK. Scientific Data 7, 394.
   doi:10.1038/s41597-020-00739-0
.. [2] Bradbury, K. et al. (2016). Distributed solar photovoltaic array location
   and extent dataset for remote sensing object identification. Scientific
   Data 3, 160106. doi:10.1038/sdata.2016.106
.. [3] Vectorized solar photovoltaic installation dataset across China in 2015
   and 2020 (2024). Scientific Data 11. doi:10.1038/s41597-024-04356-z
.. [4] Dunnett, S. et al. (2020). Harmonised global datasets of wind and solar
   farm locations and power. Scientific Data 7, 130. doi:10.1038/s41597-020-0469-8
.. [5] Ortiz, A. et al. (2022). An Artificial Intelligence Dataset for Solar
   Energy Locations in India. Scientific Data 9, 497. doi:10.1038/s41597-022-01499-9
.. [6] Yang, Z. and Rad, R. (2024). GloSoFarID: Global multispectral dataset for
   Solar Farm IDentification in satellite imagery. arXiv:2404.05180
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from pyproj import Transformer
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon, box, mapping
from shapely.geometry.base import BaseGeometry

from .sample_stac import write_sample_catalog

DEFAULT_SEED = 20261125

# Clear ground kept between any two distinct installations, far beyond every
# duplicate rule of the dedup stage (50 m point-point, 10 m point-polygon).
MIN_GAP_M = 500.0
EARTH_RADIUS_M = 6_371_008.8
# ~1 cm: finer than any source digitised, and keeps the GeoJSON files small.
GEOJSON_DIGITS = 7
# GDAL stamps today's date into .dbf headers and GeoPackage tables; fixed values
# make re-runs reproduce the committed files.
DBF_DATE = bytes([126, 11, 25])  # 2026-11-25 as YY-since-1900, MM, DD
ZIP_DATE = (2026, 11, 25, 0, 0, 0)
GPKG_DATE = "2026-11-25T00:00:00.000Z"

UK = "uk_crowdsourced_pv_2020"
USGS = "usa_cali_usgs_pv_2016"
CHN = "chn_med_res_pv_2024"
GLOBAL = "global_harmonized_large_solar_farms_2020"
IND = "ind_pv_solar_farms_2022"
GSF = "glosofarid_2024"
DATASETS = (UK, USGS, CHN, GLOBAL, IND, GSF)

UK_FILE = "ukpvgeo_geometries.geojson"
USGS_FILE = "SolarArrayPolygons.geojson"
CHN_ZIP = "ChinaPV.zip"
CHN_TRAIN_2020 = f"{CHN_ZIP}/PV_Train_2020.shp"
CHN_TEST_2020 = f"{CHN_ZIP}/PV_Test_2020.shp"
CHN_TEST_2015 = f"{CHN_ZIP}/PV_Test_2015.shp"
CHN_NPV_2020 = f"{CHN_ZIP}/NPV_Test_2020.shp"
CHN_NPV_2015 = f"{CHN_ZIP}/NPV_Test_2015.shp"
GLOBAL_GPKG = "global_wind_solar_2020_WGS84.gpkg"
GLOBAL_ECKERT_GPKG = "global_wind_solar_2020_EckertIV.gpkg"
SOLAR_LAYER = "global_solar_2020"
WIND_LAYER = "global_wind_2020"
GLOBAL_SOLAR = f"{GLOBAL_GPKG}:{SOLAR_LAYER}"
GLOBAL_WIND = f"{GLOBAL_GPKG}:{WIND_LAYER}"
IND_FILE = "solar_farms_india_2021_merged_simplified.geojson"
GSF_2021_GLOBAL = "2021_global.json"
GSF_2022_GLOBAL = "2022_global.json"
GSF_2022_US = "2022_us.json"
GSF_2023_US = "2023_us.json"

# Rows per file, near the sizes asked of the sample (planted rows included).
FILE_ROWS = {
    (UK, UK_FILE): 300,
    (USGS, USGS_FILE): 150,
    (CHN, CHN_TRAIN_2020): 80,
    (CHN, CHN_TEST_2020): 40,
    (CHN, CHN_TEST_2015): 40,
    (CHN, CHN_NPV_2020): 40,
    (CHN, CHN_NPV_2015): 40,
    (GLOBAL, GLOBAL_SOLAR): 120,
    (GLOBAL, GLOBAL_WIND): 60,
    (IND, IND_FILE): 100,
    (GSF, GSF_2021_GLOBAL): 60,
    (GSF, GSF_2022_GLOBAL): 60,
    (GSF, GSF_2022_US): 30,
    (GSF, GSF_2023_US): 30,
}
# Negative samples and the wind layer are in the sample but no manifest selects them.
UNSELECTED = {(CHN, CHN_NPV_2020), (CHN, CHN_NPV_2015), (GLOBAL, GLOBAL_WIND)}


@dataclass(frozen=True)
class Place:
    """A real town centre that installations are scattered around.

    Attributes
    ----------
    name : str
        Town name.
    lat, lon : float
        Town centre, degrees (WGS84).
    iso3 : str
        ISO 3166-1 alpha-3 country code.
    region : str
        State or province, as the sources name it.
    spread_m : float
        Radius around the centre within which installations are drawn, m.
    """

    name: str
    lat: float
    lon: float
    iso3: str
    region: str
    spread_m: float


PLACES = {
    p.name: p
    for p in (
        # UK: rooftops in towns, solar farms in the countryside around them.
        Place("Exeter", 50.7184, -3.5339, "GBR", "Devon", 6_000),
        Place("Bristol", 51.4545, -2.5879, "GBR", "Bristol", 6_000),
        Place("Swindon", 51.5558, -1.7797, "GBR", "Wiltshire", 15_000),
        Place("Cambridge", 52.2053, 0.1218, "GBR", "Cambridgeshire", 12_000),
        Place("Norwich", 52.6309, 1.2974, "GBR", "Norfolk", 12_000),
        Place("Nottingham", 52.9548, -1.1581, "GBR", "Nottinghamshire", 8_000),
        Place("Leeds", 53.8008, -1.5491, "GBR", "West Yorkshire", 8_000),
        # USA: Greensboro and Miami have TMY weather files in pvlib.
        Place("Greensboro", 36.0726, -79.7920, "USA", "North Carolina", 25_000),
        Place("Raleigh", 35.7796, -78.6382, "USA", "North Carolina", 25_000),
        # Miami-Dade inland suburbs: farms drawn around downtown Miami would land in the bay.
        Place("Doral", 25.8195, -80.3553, "USA", "Florida", 4_000),
        Place("Kendall", 25.6793, -80.3173, "USA", "Florida", 4_000),
        Place("Homestead", 25.4687, -80.4776, "USA", "Florida", 8_000),
        Place("Fresno", 36.7378, -119.7871, "USA", "California", 8_000),
        Place("Stockton", 37.9577, -121.2908, "USA", "California", 6_000),
        Place("Bakersfield", 35.3733, -119.0187, "USA", "California", 25_000),
        Place("Lancaster", 34.6868, -118.1542, "USA", "California", 25_000),
        Place("Phoenix", 33.4484, -112.0740, "USA", "Arizona", 30_000),
        Place("Las Vegas", 36.1699, -115.1398, "USA", "Nevada", 25_000),
        Place("Albuquerque", 35.0844, -106.6504, "USA", "New Mexico", 25_000),
        Place("Austin", 30.2672, -97.7431, "USA", "Texas", 25_000),
        Place("Lubbock", 33.5779, -101.8552, "USA", "Texas", 30_000),
        Place("Sweetwater", 32.4709, -100.4059, "USA", "Texas", 30_000),
        # India: the states with most farms in the Microsoft dataset.
        Place("Jodhpur", 26.2389, 73.0243, "IND", "Rajasthan", 25_000),
        Place("Bikaner", 28.0229, 73.3119, "IND", "Rajasthan", 25_000),
        Place("Bhadla", 27.5360, 71.9150, "IND", "Rajasthan", 20_000),
        Place("Jaisalmer", 26.9157, 70.9083, "IND", "Rajasthan", 30_000),
        Place("Radhanpur", 23.8326, 71.6047, "IND", "Gujarat", 20_000),
        Place("Bhuj", 23.2420, 69.6669, "IND", "Gujarat", 20_000),
        Place("Pavagada", 14.1000, 77.2800, "IND", "Karnataka", 20_000),
        Place("Tumakuru", 13.3409, 77.1010, "IND", "Karnataka", 20_000),
        Place("Kamuthi", 9.4042, 78.3736, "IND", "Tamil Nadu", 12_000),
        Place("Mahbubnagar", 16.7375, 78.0000, "IND", "Telangana", 20_000),
        Place("Nalgonda", 17.0575, 79.2684, "IND", "Telangana", 20_000),
        Place("Kurnool", 15.8281, 78.0373, "IND", "Andhra Pradesh", 20_000),
        Place("Anantapur", 14.6819, 77.6006, "IND", "Andhra Pradesh", 20_000),
        Place("Solapur", 17.6599, 75.9064, "IND", "Maharashtra", 20_000),
        Place("Rewa", 24.5362, 81.3037, "IND", "Madhya Pradesh", 20_000),
        # China: the provinces with the large PV bases.
        Place("Golmud", 36.4167, 94.9000, "CHN", "Qinghai", 30_000),
        Place("Gonghe", 36.2800, 100.6200, "CHN", "Qinghai", 30_000),
        Place("Zhongwei", 37.5149, 105.1968, "CHN", "Ningxia", 25_000),
        Place("Yinchuan", 38.4872, 106.2309, "CHN", "Ningxia", 25_000),
        Place("Zhangjiakou", 40.7676, 114.8863, "CHN", "Hebei", 30_000),
        Place("Chengde", 40.9510, 117.9634, "CHN", "Hebei", 25_000),
        Place("Yancheng", 33.3475, 120.1633, "CHN", "Jiangsu", 15_000),
        Place("Xuzhou", 34.2610, 117.1859, "CHN", "Jiangsu", 20_000),
        Place("Ordos", 39.6086, 109.7810, "CHN", "Inner Mongolia", 30_000),
        Place("Hami", 42.8180, 93.5150, "CHN", "Xinjiang", 30_000),
        Place("Dunhuang", 40.1421, 94.6619, "CHN", "Gansu", 30_000),
        Place("Baicheng", 45.6196, 122.8386, "CHN", "Jilin", 30_000),
        # Rest of the world.
        Place("Seville", 37.3891, -5.9845, "ESP", "Andalusia", 25_000),
        Place("Badajoz", 38.8794, -6.9707, "ESP", "Extremadura", 25_000),
        Place("Zaragoza", 41.6488, -0.8891, "ESP", "Aragon", 30_000),
        Place("Leipzig", 51.3397, 12.3731, "DEU", "Saxony", 25_000),
        Place("Aurich", 53.4714, 7.4836, "DEU", "Lower Saxony", 12_000),
        Place("Calama", -22.4544, -68.9294, "CHL", "Antofagasta", 30_000),
        Place("Copiapo", -27.3668, -70.3322, "CHL", "Atacama", 25_000),
        Place("Mildura", -34.2080, 142.1246, "AUS", "Victoria", 30_000),
        Place("Upington", -28.4478, 21.2561, "ZAF", "Northern Cape", 30_000),
        Place("Aswan", 24.0889, 32.8998, "EGY", "Aswan", 30_000),
        Place("Ouarzazate", 30.9189, -6.8934, "MAR", "Draa-Tafilalet", 30_000),
        Place("Hermosillo", 29.0729, -110.9559, "MEX", "Sonora", 30_000),
    )
}

UK_ROOFTOP_TOWNS = ("Exeter", "Bristol", "Cambridge", "Norwich", "Nottingham", "Leeds")
UK_FARM_TOWNS = ("Swindon", "Cambridge", "Norwich", "Nottingham")
IND_TOWNS = tuple(p.name for p in PLACES.values() if p.iso3 == "IND" and p.name != "Jaisalmer")
CHN_TOWNS = tuple(p.name for p in PLACES.values() if p.iso3 == "CHN" and p.name != "Baicheng")
GLOBAL_SOLAR_TOWNS = (
    "Greensboro", "Raleigh", "Homestead", "Bakersfield", "Lancaster", "Phoenix", "Las Vegas",
    "Swindon", "Norwich", "Jodhpur", "Bhadla", "Pavagada", "Golmud", "Zhongwei", "Seville",
    "Badajoz", "Leipzig", "Calama", "Copiapo", "Mildura", "Upington", "Aswan", "Ouarzazate",
    "Hermosillo",
)
GLOBAL_WIND_TOWNS = ("Lubbock", "Sweetwater", "Zaragoza", "Aurich", "Jaisalmer", "Baicheng")
GSF_GLOBAL_TOWNS = (
    "Seville", "Badajoz", "Leipzig", "Calama", "Copiapo", "Mildura", "Upington", "Aswan",
    "Ouarzazate", "Hermosillo", "Jodhpur", "Bikaner", "Golmud", "Hami", "Ordos", "Phoenix",
)
GSF_US_TOWNS = (
    "Greensboro", "Raleigh", "Doral", "Homestead", "Bakersfield", "Lancaster", "Phoenix",
    "Las Vegas", "Albuquerque", "Austin",
)
# USGS orthoimage tiles are named after their UTM zone and grid square.
USGS_TILES = {"Fresno": ("11ska", "EPSG:26911"), "Stockton": ("10sfh", "EPSG:26910")}


def metres_per_degree(lat_deg: float) -> tuple[float, float]:
    """Length of one degree of longitude and latitude on the WGS84 ellipsoid.

    Parameters
    ----------
    lat_deg : float
        Latitude, degrees.

    Returns
    -------
    lon_m, lat_m : float
        Metres per degree of longitude and of latitude.
    """
    phi = np.radians(lat_deg)
    lat_m = 111_132.92 - 559.82 * np.cos(2 * phi) + 1.175 * np.cos(4 * phi)
    lon_m = 111_412.84 * np.cos(phi) - 93.5 * np.cos(3 * phi)
    return float(lon_m), float(lat_m)


def to_lonlat(shape_m: BaseGeometry, lat_deg: float, lon_deg: float) -> BaseGeometry:
    """Place a shape drawn in metres around the origin at a lon/lat centre.

    An equirectangular projection about the centre is exact to well under 0.1 %
    over the few kilometres an installation spans.
    """
    lon_m, lat_m = metres_per_degree(lat_deg)
    scale = np.array([1 / lon_m, 1 / lat_m])
    return shapely.transform(shape_m, lambda xy: np.array([lon_deg, lat_deg]) + xy * scale)


def haversine_m(lat_deg: float, lon_deg: float, lats_deg: np.ndarray, lons_deg: np.ndarray) -> np.ndarray:
    """Great-circle distance from one point to many, m."""
    phi1, phi2 = np.radians(lat_deg), np.radians(lats_deg)
    dphi, dlmb = phi2 - phi1, np.radians(lons_deg - lon_deg)
    a = np.sin(dphi / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(a))


def footprint_radius_m(shapes_m: list[BaseGeometry]) -> float:
    """Distance from the origin to the farthest vertex of any shape, m."""
    xy = np.vstack([shapely.get_coordinates(s) for s in shapes_m])
    return float(np.hypot(xy[:, 0], xy[:, 1]).max())


def rectangle_m(width_m: float, height_m: float) -> Polygon:
    """Axis-aligned rectangle centred on the origin, counter-clockwise."""
    return box(-width_m / 2, -height_m / 2, width_m / 2, height_m / 2)


def blob_m(rng: np.random.Generator, radius_m: float, aspect: float) -> Polygon:
    """Irregular farm outline, star-shaped about the origin so it is always simple."""
    n = int(rng.integers(7, 12))
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 0.4, n)
    radii = radius_m * rng.uniform(0.8, 1.0, n)
    return Polygon(np.column_stack([radii * np.cos(angles), aspect * radii * np.sin(angles)]))


def bowtie_m(width_m: float, height_m: float) -> Polygon:
    """Self-intersecting quadrilateral: two corners digitised in the wrong order."""
    w, h = width_m / 2, height_m / 2
    return Polygon([(-w, -h), (w, h), (w, -h), (-w, h)])


def farm_m(rng: np.random.Generator, size_m: float) -> Polygon:
    """Outline of a ground-mounted farm about ``size_m`` across."""
    if rng.random() < 0.5:
        return rectangle_m(size_m, size_m * rng.uniform(0.4, 0.9))
    return blob_m(rng, size_m / 2, rng.uniform(0.5, 0.9))


def redigitised_m(rng: np.random.Generator, shape_m: BaseGeometry) -> BaseGeometry:
    """The same installation traced again by another source: a slightly different outline."""
    size_m = np.sqrt(shape_m.area)
    shape_m = affinity.scale(shape_m, rng.uniform(0.94, 1.04), rng.uniform(0.94, 1.04), origin=(0, 0))
    shape_m = affinity.rotate(shape_m, rng.uniform(-2, 2), origin=(0, 0))
    return affinity.translate(shape_m, *(size_m * rng.uniform(-0.03, 0.03, 2)))


def grown_m(rng: np.random.Generator, shape_m: Polygon) -> Polygon:
    """The outline of a plant some years later, extended on one side."""
    minx, _, _, _ = shape_m.bounds
    extended = affinity.scale(shape_m, rng.uniform(1.25, 1.6), rng.uniform(1.0, 1.08), origin=(minx, 0))
    return redigitised_m(rng, extended)


def shifted_m(rng: np.random.Generator, shape_m: Polygon) -> Polygon:
    """The same outline entered twice, the second copy a few percent off."""
    minx, miny, maxx, maxy = shape_m.bounds
    dx, dy = rng.uniform(0.03, 0.06) * (maxx - minx), rng.uniform(-0.03, 0.03) * (maxy - miny)
    return affinity.translate(shape_m, dx, dy)


def blocks_m(rng: np.random.Generator, size_m: float, n_blocks: int) -> list[Polygon]:
    """A farm built as ``n_blocks`` panel blocks side by side with access roads between."""
    height_m = size_m * rng.uniform(0.4, 0.8)
    gap_m = rng.uniform(12, 25)
    shares = rng.uniform(0.7, 1.3, n_blocks)
    widths_m = size_m * shares / shares.sum() - gap_m * (n_blocks - 1) / n_blocks
    left = -size_m / 2
    blocks = []
    for w in widths_m:
        blocks.append(box(left, -height_m / 2, left + w, height_m / 2))
        left += w + gap_m
    return blocks


class SitePool:
    """Centres of every distinct installation site in the sample, kept apart.

    Two distinct sites keep ``MIN_GAP_M`` of clear ground between their
    footprints, across all datasets, so that only planted duplicates can look
    like duplicates to the dedup stage.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.lat = np.empty(0)
        self.lon = np.empty(0)
        self.radius_m = np.empty(0)

    def draw(self, place: Place, radius_m: float) -> tuple[float, float]:
        """Draw a free site centre within ``place.spread_m`` of the town centre.

        Returns
        -------
        lat, lon : float
            Site centre, degrees.
        """
        lon_m, lat_m = metres_per_degree(place.lat)
        for _ in range(10_000):
            r = place.spread_m * np.sqrt(self.rng.random())
            theta = self.rng.uniform(0, 2 * np.pi)
            lat = place.lat + r * np.sin(theta) / lat_m
            lon = place.lon + r * np.cos(theta) / lon_m
            clearance = haversine_m(lat, lon, self.lat, self.lon) - self.radius_m - radius_m
            if clearance.size == 0 or clearance.min() >= MIN_GAP_M:
                self.lat = np.append(self.lat, lat)
                self.lon = np.append(self.lon, lon)
                self.radius_m = np.append(self.radius_m, radius_m)
                return float(lat), float(lon)
        raise RuntimeError(f"no free site left around {place.name}")


@dataclass
class Row:
    """One feature of a sample file.

    Attributes
    ----------
    geometry : shapely geometry or None
        Lon/lat geometry as written (None for a null geometry).
    properties : dict
        Attributes, in the source's column order.
    installation : int or None
        Real installation this row labels; rows sharing one are duplicates.
    quirk : str or None
        Planted geometry defect, see ``ground_truth``.
    """

    geometry: BaseGeometry | None
    properties: dict[str, Any]
    installation: int | None = None
    quirk: str | None = None


@dataclass
class Sample:
    """Rows of every sample file, and the planted duplicate clusters."""

    seed: int
    rng: np.random.Generator = field(init=False)
    pool: SitePool = field(init=False)
    files: dict[tuple[str, str], list[Row]] = field(init=False)
    clusters: dict[int, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.pool = SitePool(self.rng)
        self.files = {key: [] for key in FILE_ROWS}
        self._installations = itertools.count()
        self._ids: set[int] = set()

    def installation(self, cluster_kind: str | None = None, place: str | None = None) -> int:
        """A new installation id; with ``cluster_kind``, one that several rows will share."""
        installation = next(self._installations)
        if cluster_kind is not None:
            self.clusters[installation] = (cluster_kind, place)
        return installation

    def unique_id(self, low: int, high: int) -> int:
        """A random source id never drawn before in this sample."""
        while (value := int(self.rng.integers(low, high))) in self._ids:
            pass
        self._ids.add(value)
        return value

    def site(
        self, place: Place, shapes_m: list[BaseGeometry], radius_m: float | None = None
    ) -> list[BaseGeometry]:
        """Put the shapes of one site, drawn in metres about the origin, at a free spot.

        All shapes turn by one random angle: sources rarely align with north.
        """
        angle = self.rng.uniform(0, 180)
        shapes_m = [affinity.rotate(s, angle, origin=(0, 0)) for s in shapes_m]
        lat, lon = self.pool.draw(place, radius_m or footprint_radius_m(shapes_m))
        return [to_lonlat(s, lat, lon) for s in shapes_m]

    def add(self, dataset: str, source_file: str, row: Row) -> None:
        """Insert a row at a random position, so planted rows are not grouped."""
        rows = self.files[(dataset, source_file)]
        rows.insert(int(self.rng.integers(0, len(rows) + 1)), row)

    def missing(self, dataset: str, source_file: str) -> int:
        """Rows still to add to reach the file's size."""
        return FILE_ROWS[(dataset, source_file)] - len(self.files[(dataset, source_file)])

    def choose(self, names: tuple[str, ...]) -> Place:
        """A random place among ``names``."""
        return PLACES[names[int(self.rng.integers(len(names)))]]


# Attributes per source, in each source's column order.


def uk_properties(s: Sample, shape_m: BaseGeometry | None, located: str, osm: bool = True) -> dict[str, Any]:
    """UK attributes [1]_: area and OSM id are null for points geocoded from addresses."""
    area_m2 = shape_m.area if shape_m is not None and shape_m.area > 0 else None
    ground = located == "ground"
    capacity_mw = None
    # OSM tags capacity on farms, and on about a third of the mapped roofs.
    if area_m2 is not None and (ground or s.rng.random() < 0.3):
        # ~0.17 kWp per m2 of roof panel; ~50 MWp per km2 of farm, rows and gaps included
        capacity_mw = round(area_m2 * (50e-6 if ground else 0.17e-3), 4)
    return {
        "osm_id": s.unique_id(10_000_000, 900_000_000) if osm else None,
        "repd_id": s.unique_id(1_000, 9_999) if ground or s.rng.random() < 0.05 else None,
        "area_sqm": round(area_m2, 1) if area_m2 is not None else None,
        "capacity_osm_MWp": capacity_mw,
        "located": located,
    }


@functools.cache
def _to_utm(crs: str) -> Transformer:
    return Transformer.from_crs("EPSG:4269", crs, always_xy=True)


def usgs_properties(geometry: BaseGeometry, area_m2: float, city: str) -> dict[str, Any]:
    """California attributes [2]_; ``polygon_id`` is added by the writer in file order."""
    prefix, utm = USGS_TILES[city]
    x, y = _to_utm(utm).transform(geometry.centroid.x, geometry.centroid.y)
    return {
        "centroid_latitude": round(geometry.centroid.y, 8),
        "centroid_longitude": round(geometry.centroid.x, 8),
        "area_meters": round(area_m2, 2),
        "city": city,
        "image_name": f"{prefix}{int(x % 100_000) // 100:03d}{int(y % 100_000) // 100:03d}",
    }


def chn_properties(s: Sample, source_file: str, area_m2: float, fid_train: int | None = None,
                   fid_pv: int | None = None) -> dict[str, Any]:
    """ChinaPV attributes [3]_: each file has its own columns, areas in km2."""
    area_km2 = round(area_m2 / 1e6, 9)
    fid_pv = fid_pv if fid_pv is not None else s.unique_id(0, 10_000)
    if source_file == CHN_TRAIN_2020:
        return {"FID_Train": fid_train if fid_train is not None else s.unique_id(0, 10_000),
                "FID_PV_202": fid_pv, "Shape_Area": area_km2, "Name": "Placemark", "landcover": 1}
    if source_file == CHN_TEST_2020:
        return {"FID_PV_202": fid_pv, "FID_Test": s.unique_id(0, 10_000), "Shape_Area": area_km2,
                "Name": str(fid_pv + 1), "landcover": 1}
    if source_file == CHN_TEST_2015:
        return {"OID_": 0, "Name": "1", "area": area_km2, "landcover": 1}
    return {"OID_": 0, "Name": "Placemark" if source_file == CHN_NPV_2020 else "0", "landcover": 0}


def global_solar_properties(s: Sample, place: Place, area_m2: float) -> dict[str, Any]:
    """Global harmonised solar attributes [4]_: areas in km2, power in MW; ``sol_id`` by the writer."""
    landscape_km2 = area_m2 / 1e6
    panel_km2 = landscape_km2 * s.rng.uniform(0.3, 0.6)
    return {
        "GID_0": place.iso3,
        "panels": int(s.rng.integers(3, 400)),
        "panel.area": round(panel_km2, 6),
        "landscape.area": round(landscape_km2, 6),
        "water": int(s.rng.random() < 0.05),
        "urban": int(s.rng.random() < 0.15),
        # ~150 MW per km2 of panels at 15 % module efficiency
        "power": round(panel_km2 * s.rng.uniform(120, 180), 2),
    }


def ind_properties(s: Sample, place: Place, geometry: BaseGeometry, area_m2: float, fid: int) -> dict[str, Any]:
    """India attributes [5]_: ``Area`` describes the unsimplified outline, several times larger."""
    centre = geometry.centroid
    return {
        "State": place.region,
        "Area": round(area_m2 * s.rng.uniform(1.5, 12.0), 6),
        "Latitude": round(centre.y, 10),
        "Longitude": round(centre.x, 10),
        "fid": fid,
    }


def oriented_cw(shape_m: BaseGeometry) -> BaseGeometry:
    """Clockwise exterior rings, as in most features of the real India file."""
    return shapely.orient_polygons(shape_m, exterior_cw=True)


# Planted duplicates, then the unique installations that fill each file.


def plant_cross_dataset(s: Sample) -> None:
    """Installations that two or more datasets label, with their own outlines."""
    # A UK farm that the global harmonised set also lists.
    place = PLACES["Swindon"]
    farm = farm_m(s.rng, s.rng.uniform(250, 400))
    redrawn = redigitised_m(s.rng, farm)
    uk_geom, global_geom = s.site(place, [farm, redrawn])
    inst = s.installation("cross_dataset", place.name)
    s.add(UK, UK_FILE, Row(uk_geom, uk_properties(s, farm, "ground"), inst))
    s.add(GLOBAL, GLOBAL_SOLAR, Row(global_geom, global_solar_properties(s, place, redrawn.area), inst))

    # An Indian farm: two panel blocks in the India set, one outline in the global set.
    place = PLACES["Bhadla"]
    size_m = s.rng.uniform(700, 1200)
    parts = MultiPolygon(blocks_m(s.rng, size_m, 2))
    redrawn = redigitised_m(s.rng, shapely.envelope(parts))
    ind_geom, global_geom = s.site(place, [oriented_cw(parts), redrawn])
    inst = s.installation("cross_dataset", place.name)
    fid = s.unique_id(0, 5_000)
    s.add(IND, IND_FILE, Row(ind_geom, ind_properties(s, place, ind_geom, parts.area, fid), inst))
    s.add(GLOBAL, GLOBAL_SOLAR, Row(global_geom, global_solar_properties(s, place, redrawn.area), inst))

    # A Chinese plant in the 2015 test set, the 2020 training set (grown) and the global set.
    place = PLACES["Golmud"]
    plant_2015 = farm_m(s.rng, s.rng.uniform(600, 1200))
    plant_2020 = grown_m(s.rng, plant_2015)
    redrawn = redigitised_m(s.rng, plant_2020)
    geom_2015, geom_2020, global_geom = s.site(place, [plant_2015, plant_2020, redrawn])
    inst = s.installation("cross_dataset", place.name)
    s.add(CHN, CHN_TEST_2015, Row(geom_2015, chn_properties(s, CHN_TEST_2015, plant_2015.area), inst))
    s.add(CHN, CHN_TRAIN_2020, Row(geom_2020, chn_properties(s, CHN_TRAIN_2020, plant_2020.area), inst))
    s.add(GLOBAL, GLOBAL_SOLAR, Row(global_geom, global_solar_properties(s, place, redrawn.area), inst))

    # A large Fresno array that both the USGS set and the global set outline.
    place = PLACES["Fresno"]
    array = rectangle_m(s.rng.uniform(180, 260), s.rng.uniform(110, 160))
    redrawn = redigitised_m(s.rng, array)
    usgs_geom, global_geom = s.site(place, [array, redrawn])
    inst = s.installation("cross_dataset", place.name)
    s.add(USGS, USGS_FILE, Row(usgs_geom, usgs_properties(usgs_geom, array.area, place.name), inst))
    s.add(GLOBAL, GLOBAL_SOLAR, Row(global_geom, global_solar_properties(s, place, redrawn.area), inst))

    # Farms in Greensboro and Miami-Dade that GloSoFarID samples as points inside them.
    for name, point_files in (("Greensboro", (GSF_2022_US, GSF_2023_US)), ("Kendall", (GSF_2023_US,))):
        place = PLACES[name]
        farm = farm_m(s.rng, s.rng.uniform(400, 900))
        points = repeated_points_m(s.rng, len(point_files))
        geoms = s.site(place, [farm, *points])
        inst = s.installation("point_in_polygon", place.name)
        s.add(GLOBAL, GLOBAL_SOLAR, Row(geoms[0], global_solar_properties(s, place, farm.area), inst))
        for point_file, point in zip(point_files, geoms[1:]):
            s.add(GSF, point_file, Row(point, {}, inst))


def repeated_points_m(rng: np.random.Generator, n: int) -> list[Point]:
    """Points sampling one farm ``n`` times: near its centre, 5-30 m from the first one."""
    first = Point(rng.uniform(-20, 20, 2))
    repeats = []
    for _ in range(n - 1):
        distance_m, theta = rng.uniform(5, 30), rng.uniform(0, 2 * np.pi)
        repeats.append(affinity.translate(first, distance_m * np.cos(theta), distance_m * np.sin(theta)))
    return [first, *repeats]


def fill_uk(s: Sample) -> None:
    """UK crowdsourced set [1]_: rooftops, farms, address points and the planted defects."""
    # An exact copy of one rooftop feature, as merged exports sometimes repeat rows.
    place = s.choose(UK_ROOFTOP_TOWNS)
    roof = rectangle_m(*s.rng.uniform(5, 25, 2))
    (geom,) = s.site(place, [roof])
    inst = s.installation("exact_within_file", place.name)
    properties = uk_properties(s, roof, "roof")
    s.add(UK, UK_FILE, Row(geom, properties, inst))
    s.add(UK, UK_FILE, Row(geom, dict(properties), inst))

    # Features that lost their geometry, and roofs digitised as bow-ties.
    s.add(UK, UK_FILE, Row(None, uk_properties(s, None, "roof"), quirk="null"))
    s.add(UK, UK_FILE, Row(Polygon(), uk_properties(s, None, "roof"), quirk="empty"))
    for _ in range(2):
        w, h = s.rng.uniform(8, 20, 2)
        (geom,) = s.site(s.choose(UK_ROOFTOP_TOWNS), [bowtie_m(w, h)])
        s.add(UK, UK_FILE, Row(geom, uk_properties(s, rectangle_m(w, h), "roof"), s.installation(), "bowtie"))

    for _ in range(9):
        farm = farm_m(s.rng, s.rng.uniform(100, 400))
        (geom,) = s.site(s.choose(UK_FARM_TOWNS), [farm])
        s.add(UK, UK_FILE, Row(geom, uk_properties(s, farm, "ground"), s.installation()))
    for _ in range(15):
        # Two roof slopes of one building, split by the ridge.
        w, h = s.rng.uniform(5, 15, 2)
        roof = MultiPolygon([box(-w, 0.5, 0, 0.5 + h), box(-w, -0.5 - h, 0, -0.5)])
        (geom,) = s.site(s.choose(UK_ROOFTOP_TOWNS), [roof])
        s.add(UK, UK_FILE, Row(geom, uk_properties(s, roof, "roof"), s.installation()))
    for _ in range(60):
        (geom,) = s.site(s.choose(UK_ROOFTOP_TOWNS), [Point(0, 0)], radius_m=15.0)
        s.add(UK, UK_FILE, Row(geom, uk_properties(s, None, "roof", osm=False), s.installation()))
    for _ in range(s.missing(UK, UK_FILE)):
        roof = rectangle_m(*s.rng.uniform(5, 25, 2))
        (geom,) = s.site(s.choose(UK_ROOFTOP_TOWNS), [roof])
        s.add(UK, UK_FILE, Row(geom, uk_properties(s, roof, "roof"), s.installation()))


def fill_usgs(s: Sample) -> None:
    """California distributed PV [2]_: rooftop and a few ground arrays in Fresno and Stockton."""
    for i in range(s.missing(USGS, USGS_FILE)):
        place = PLACES[("Fresno", "Stockton")[i % 2]]
        size_m = s.rng.uniform(50, 120) if s.rng.random() < 0.07 else s.rng.uniform(5, 40)
        array = rectangle_m(size_m, size_m * s.rng.uniform(0.3, 1.0))
        (geom,) = s.site(place, [array])
        s.add(USGS, USGS_FILE, Row(geom, usgs_properties(geom, array.area, place.name), s.installation()))


def fill_chn(s: Sample) -> None:
    """ChinaPV [3]_: plants that grew from 2015 to 2020, repeats, unique plants and negatives."""
    for file_2020 in (CHN_TRAIN_2020, CHN_TRAIN_2020, CHN_TRAIN_2020, CHN_TEST_2020):
        place = s.choose(CHN_TOWNS)
        plant_2015 = farm_m(s.rng, s.rng.uniform(150, 1500))
        plant_2020 = grown_m(s.rng, plant_2015)
        geom_2015, geom_2020 = s.site(place, [plant_2015, plant_2020])
        inst = s.installation("spatial_within_dataset", place.name)
        s.add(CHN, CHN_TEST_2015, Row(geom_2015, chn_properties(s, CHN_TEST_2015, plant_2015.area), inst))
        s.add(CHN, file_2020, Row(geom_2020, chn_properties(s, file_2020, plant_2020.area), inst))

    # One 2020 plant both in the training and the test split, traced twice.
    place = s.choose(CHN_TOWNS)
    plant = farm_m(s.rng, s.rng.uniform(150, 1500))
    redrawn = redigitised_m(s.rng, plant)
    train_geom, test_geom = s.site(place, [plant, redrawn])
    inst = s.installation("spatial_within_dataset", place.name)
    fid_pv = s.unique_id(0, 10_000)
    s.add(CHN, CHN_TRAIN_2020, Row(train_geom, chn_properties(s, CHN_TRAIN_2020, plant.area, fid_pv=fid_pv), inst))
    s.add(CHN, CHN_TEST_2020, Row(test_geom, chn_properties(s, CHN_TEST_2020, redrawn.area, fid_pv=fid_pv), inst))

    # One plant entered twice in the training file with a shifted outline.
    place = s.choose(CHN_TOWNS)
    plant = farm_m(s.rng, s.rng.uniform(150, 1500))
    shifted = shifted_m(s.rng, plant)
    geoms = s.site(place, [plant, shifted])
    inst = s.installation("spatial_within_dataset", place.name)
    fid_train = s.unique_id(0, 10_000)
    for geom, shape in zip(geoms, (plant, shifted)):
        properties = chn_properties(s, CHN_TRAIN_2020, shape.area, fid_train=fid_train)
        s.add(CHN, CHN_TRAIN_2020, Row(geom, properties, inst))

    for source_file in (CHN_TRAIN_2020, CHN_TEST_2020, CHN_TEST_2015, CHN_NPV_2020, CHN_NPV_2015):
        negative = source_file in (CHN_NPV_2020, CHN_NPV_2015)
        for _ in range(s.missing(CHN, source_file)):
            if negative:
                # Fields, roofs and water of a plant's size that look like PV but are not.
                shape = blob_m(s.rng, s.rng.uniform(75, 400), s.rng.uniform(0.5, 1.0))
            else:
                shape = farm_m(s.rng, s.rng.uniform(150, 1500))
            (geom,) = s.site(s.choose(CHN_TOWNS), [shape])
            installation = None if negative else s.installation()
            s.add(CHN, source_file, Row(geom, chn_properties(s, source_file, shape.area), installation))


def fill_global(s: Sample) -> None:
    """Global harmonised solar farms and wind farms [4]_."""
    for _ in range(s.missing(GLOBAL, GLOBAL_SOLAR)):
        place = s.choose(GLOBAL_SOLAR_TOWNS)
        farm = farm_m(s.rng, s.rng.uniform(200, 2000))
        (geom,) = s.site(place, [farm])
        s.add(GLOBAL, GLOBAL_SOLAR, Row(geom, global_solar_properties(s, place, farm.area), s.installation()))
    for _ in range(s.missing(GLOBAL, GLOBAL_WIND)):
        place = s.choose(GLOBAL_WIND_TOWNS)
        # Turbines spread over a few km around the point that stands for the farm.
        (geom,) = s.site(place, [Point(0, 0)], radius_m=2_000.0)
        turbines = int(s.rng.integers(5, 120))
        power_mw = round(turbines * s.rng.uniform(1.5, 3.6), 1)
        properties = {"GID_0": place.iso3, "turbines": turbines, "power": power_mw}
        s.add(GLOBAL, GLOBAL_WIND, Row(geom, properties))


def fill_ind(s: Sample) -> None:
    """India solar farms [5]_: grouped farms, invalid parts, mixed ring orientation."""
    # Farms mapped as 2-3 adjacent features sharing one fid: neighbours, not duplicates.
    for _ in range(10):
        place = s.choose(IND_TOWNS)
        members = [MultiPolygon(blocks_m(s.rng, s.rng.uniform(300, 700), int(s.rng.integers(1, 3))))
                   for _ in range(int(s.rng.integers(2, 4)))]
        members = side_by_side_m(members, gap_m=s.rng.uniform(30, 60))
        fid = s.unique_id(0, 5_000)
        for member, geom in zip(members, s.site(place, [oriented_cw(m) for m in members])):
            s.add(IND, IND_FILE, Row(geom, ind_properties(s, place, geom, member.area, fid), s.installation()))

    for quirk in ("self_intersecting_part",) * 3 + ("inconsistent_orientation",) * 3:
        place = s.choose(IND_TOWNS)
        blocks = [oriented_cw(b) for b in blocks_m(s.rng, s.rng.uniform(400, 1000), 2)]
        area_m2 = sum(b.area for b in blocks)
        if quirk == "self_intersecting_part":
            minx, miny, maxx, maxy = blocks[1].bounds
            bowtie = bowtie_m(maxx - minx, maxy - miny)
            blocks[1] = affinity.translate(bowtie, (minx + maxx) / 2, (miny + maxy) / 2)
        else:
            blocks[1] = blocks[1].reverse()
        farm = MultiPolygon(blocks)
        (geom,) = s.site(place, [farm])
        row = Row(geom, ind_properties(s, place, geom, area_m2, s.unique_id(0, 5_000)), s.installation(), quirk)
        s.add(IND, IND_FILE, row)

    for _ in range(s.missing(IND, IND_FILE)):
        place = s.choose(IND_TOWNS)
        farm = MultiPolygon(blocks_m(s.rng, s.rng.uniform(300, 1500), int(s.rng.integers(1, 5))))
        (geom,) = s.site(place, [oriented_cw(farm)])
        properties = ind_properties(s, place, geom, farm.area, s.unique_id(0, 5_000))
        s.add(IND, IND_FILE, Row(geom, properties, s.installation()))


def side_by_side_m(shapes_m: list[BaseGeometry], gap_m: float) -> list[BaseGeometry]:
    """Line shapes up west to east with ``gap_m`` between them, the row centred on the origin."""
    placed, left = [], 0.0
    for shape in shapes_m:
        minx, _, maxx, _ = shape.bounds
        placed.append(affinity.translate(shape, left - minx))
        left += maxx - minx + gap_m
    return [affinity.translate(p, -(left - gap_m) / 2) for p in placed]


def fill_gsf(s: Sample) -> None:
    """GloSoFarID points [6]_: farms sampled again in later years, and twice in one file."""
    repeats = [(GSF_GLOBAL_TOWNS, (GSF_2021_GLOBAL, GSF_2022_GLOBAL))] * 8
    repeats += [(GSF_US_TOWNS, (GSF_2022_US, GSF_2023_US))] * 4
    repeats += [(GSF_US_TOWNS, (GSF_2022_US, GSF_2022_GLOBAL))]
    repeats += [(GSF_GLOBAL_TOWNS, (GSF_2022_GLOBAL, GSF_2022_GLOBAL))]
    for towns, point_files in repeats:
        place = s.choose(towns)
        geoms = s.site(place, repeated_points_m(s.rng, len(point_files)), radius_m=200.0)
        inst = s.installation("point_point", place.name)
        for point_file, geom in zip(point_files, geoms):
            s.add(GSF, point_file, Row(geom, {}, inst))
    for point_file in (GSF_2021_GLOBAL, GSF_2022_GLOBAL, GSF_2022_US, GSF_2023_US):
        towns = GSF_US_TOWNS if point_file.endswith("_us.json") else GSF_GLOBAL_TOWNS
        for _ in range(s.missing(GSF, point_file)):
            (geom,) = s.site(s.choose(towns), [Point(0, 0)], radius_m=200.0)
            s.add(GSF, point_file, Row(geom, {}, s.installation()))


def build_sample(seed: int = DEFAULT_SEED) -> Sample:
    """Generate every row of the sample, planted cases first so they get the free sites they need."""
    s = Sample(seed)
    plant_cross_dataset(s)
    for fill in (fill_uk, fill_usgs, fill_chn, fill_global, fill_ind, fill_gsf):
        fill(s)
    return s


# Writers: one per source format, each reproducing the committed bytes on re-runs.


def _rounded(coords: Any) -> Any:
    if len(coords) and isinstance(coords[0], float):
        return [round(c, GEOJSON_DIGITS) for c in coords]
    return [_rounded(c) for c in coords]


def geojson_geometry(geometry: BaseGeometry | None) -> dict[str, Any] | None:
    """GeoJSON geometry member with rounded coordinates, keeping ring order and defects."""
    if geometry is None:
        return None
    geo = mapping(geometry)
    return {"type": geo["type"], "coordinates": _rounded(geo["coordinates"])}


def write_geojson(path: Path, rows: list[Row], crs_urn: str | None = None,
                  extra: list[dict[str, Any]] | None = None) -> None:
    """Write a FeatureCollection laid out like GDAL's output: one feature per line.

    Parameters
    ----------
    path : Path
        Output file.
    rows : list of Row
        Features in file order.
    crs_urn : str, optional
        Value of the legacy (GeoJSON 2008) ``crs`` member, which some sources still carry.
    extra : list of dict, optional
        Properties written after each row's own (file-order ids).
    """
    head = ['{', '"type": "FeatureCollection",', f'"name": "{path.stem}",']
    if crs_urn is not None:
        head.append('"crs": { "type": "name", "properties": { "name": "%s" } },' % crs_urn)
    features = []
    for i, row in enumerate(rows):
        properties = {**(extra[i] if extra else {}), **row.properties}
        feature = {"type": "Feature", "properties": properties, "geometry": geojson_geometry(row.geometry)}
        features.append(json.dumps(feature, allow_nan=False))
    text = "\n".join(head + ['"features": [', ",\n".join(features), "]", "}"]) + "\n"
    path.write_text(text, encoding="utf-8")


def write_csv(path: Path, header: list[str], records: list[list[Any]]) -> None:
    """Write a CSV with empty cells for nulls and Unix line ends."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in record] for record in records])


def write_uk(s: Sample, folder: Path) -> None:
    """The GeoJSON of [1]_ plus its CSV twin with centroid coordinates."""
    rows = s.files[(UK, UK_FILE)]
    write_geojson(folder / UK_FILE, rows)
    header = ["osm_id", "repd_id", "area_sqm", "capacity_osm_MWp", "located", "longitude", "latitude"]
    records = []
    for row in rows:
        lonlat = [None, None]
        if row.geometry is not None and not row.geometry.is_empty:
            centre = row.geometry.centroid
            lonlat = [round(centre.x, GEOJSON_DIGITS), round(centre.y, GEOJSON_DIGITS)]
        records.append([*row.properties.values(), *lonlat])
    write_csv(folder / "ukpvgeo_points.csv", header, records)


def write_usgs(s: Sample, folder: Path) -> None:
    """NAD83 GeoJSON of [2]_ (coordinates are NAD83 lon/lat) and its attribute CSV."""
    rows = s.files[(USGS, USGS_FILE)]
    ids = [{"polygon_id": i + 1} for i in range(len(rows))]
    write_geojson(folder / USGS_FILE, rows, "urn:ogc:def:crs:EPSG::4269", extra=ids)
    header = ["polygon_id", "centroid_latitude", "centroid_longitude", "area_meters", "city", "image_name"]
    records = [[i["polygon_id"], *row.properties.values()] for i, row in zip(ids, rows)]
    write_csv(folder / "polygonDataExceptVertices.csv", header, records)


def write_chn(s: Sample, folder: Path) -> None:
    """ChinaPV [3]_ shapefile sets in one zip, byte-identical across runs."""
    with tempfile.TemporaryDirectory() as tmp:
        for (dataset, source_file), rows in s.files.items():
            if dataset != CHN:
                continue
            shp = Path(tmp) / Path(source_file).name
            frame = gpd.GeoDataFrame(
                [r.properties for r in rows], geometry=[r.geometry for r in rows], crs="EPSG:4326"
            )
            pyogrio.write_dataframe(frame, shp, driver="ESRI Shapefile")
            with shp.with_suffix(".dbf").open("r+b") as dbf:
                dbf.seek(1)
                dbf.write(DBF_DATE)
        # Stored, not deflated: zlib builds differ in their compressed bytes.
        with zipfile.ZipFile(folder / CHN_ZIP, "w", compression=zipfile.ZIP_STORED) as archive:
            for member in sorted(Path(tmp).iterdir()):
                info = zipfile.ZipInfo(member.name, date_time=ZIP_DATE)
                info.create_system = 3
                info.external_attr = 0o644 << 16
                archive.writestr(info, member.read_bytes())


def write_global(s: Sample, folder: Path) -> None:
    """GeoPackages of [4]_: solar and wind layers in WGS84 and in Eckert IV."""
    layers = {}
    for layer, key, id_col in ((SOLAR_LAYER, GLOBAL_SOLAR, "sol_id"), (WIND_LAYER, GLOBAL_WIND, "wind_id")):
        rows = s.files[(GLOBAL, key)]
        records = [{id_col: i + 1, **r.properties} for i, r in enumerate(rows)]
        layers[layer] = gpd.GeoDataFrame(records, geometry=[r.geometry for r in rows], crs="EPSG:4326")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": GPKG_DATE})
    try:
        for name, crs in ((GLOBAL_GPKG, "EPSG:4326"), (GLOBAL_ECKERT_GPKG, "ESRI:54012")):
            (folder / name).unlink(missing_ok=True)
            for layer, frame in layers.items():
                pyogrio.write_dataframe(frame.to_crs(crs), folder / name, layer=layer, driver="GPKG")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})


def write_ind(s: Sample, folder: Path) -> None:
    """India GeoJSON of [5]_ with the CRS84 member of the original file."""
    write_geojson(folder / IND_FILE, s.files[(IND, IND_FILE)], "urn:ogc:def:crs:OGC:1.3:CRS84")


def write_gsf(s: Sample, folder: Path) -> None:
    """GloSoFarID [6]_ bare arrays of [lon, lat], floats at full precision as in the originals."""
    for (dataset, source_file), rows in s.files.items():
        if dataset == GSF:
            points = [[row.geometry.x, row.geometry.y] for row in rows]
            (folder / source_file).write_text(json.dumps(points), encoding="utf-8")


WRITERS = {UK: write_uk, USGS: write_usgs, CHN: write_chn, GLOBAL: write_global, IND: write_ind, GSF: write_gsf}


def manifest(s: Sample) -> dict[str, Any]:
    """The sample's manifest, in the upstream format plus local extensions.

    ``path`` is relative to the manifest's folder; ``id_col``, ``columns``
    (canonical attribute <- source column and unit) and ``priority`` (higher is
    the preferred representative when deduplicating) are local extensions.
    """
    def entry(dataset: str, doi: str, paper_doi: str, paper_title: str, licence: str,
              label_fmt: str, crs: str, geom_type: Any, file_filters: dict[str, Any],
              keep_cols: list[str], priority: int, compression: str | None = None,
              id_col: str | None = None, columns: dict[str, Any] | None = None,
              layer: str | None = None) -> dict[str, Any]:
        label_count = sum(
            len(rows) for (d, f), rows in s.files.items() if d == dataset and (d, f) not in UNSELECTED
        )
        out = {"repo": "local", "path": dataset, "doi": doi, "paper_doi": paper_doi,
               "paper_title": paper_title, "licence": licence, "compression": compression,
               "label_fmt": label_fmt, "crs": crs, "geom_type": geom_type, "file_filters": file_filters}
        if layer is not None:
            out["layer"] = layer
        out["keep_cols"] = keep_cols
        if id_col is not None:
            out["id_col"] = id_col
        if columns is not None:
            out["columns"] = columns
        out["priority"] = priority
        out["label_count"] = label_count
        return out

    return {
        UK: entry(
            UK, "10.5281/zenodo.4059881", "https://doi.org/10.1038/s41597-020-00739-0",
            "A harmonised, high-coverage, open dataset of solar photovoltaic installations in the UK",
            "CC-BY-4.0", "geojson", "WGS84", {"features": ["Point", "Polygon", "MultiPolygon"]},
            {"include_patterns": ["*.geojson"], "exclude_patterns": ["*.csv"], "use_regex": False,
             "description": "Include only geojson files, exclude csv files"},
            ["osm_id", "area_sqm", "repd_id"], 4, id_col="osm_id",
            columns={"capacity_mw": {"col": "capacity_osm_MWp", "unit": "MW"}}),
        USGS: entry(
            USGS, "10.6084/m9.figshare.3385780.v4", "https://doi.org/10.1038/sdata.2016.106",
            "Distributed solar photovoltaic array location and extent dataset for remote sensing "
            "object identification",
            "CC0-1.0", "geojson", "NAD83", {"features": "Polygon"},
            {"include_patterns": ["*SolarArrayPolygons.geojson"], "exclude_patterns": [], "use_regex": False,
             "description": "Include only the polygon geojson, exclude the attribute csv"},
            ["polygon_id", "centroid_latitude", "centroid_longitude", "area_meters"], 5, id_col="polygon_id",
            columns={"source_area_m2": {"col": "area_meters", "unit": "m2"}}),
        CHN: entry(
            CHN, "https://github.com/qingfengxitu/ChinaPV", "https://doi.org/10.1038/s41597-024-04356-z",
            "Vectorized solar photovoltaic installation dataset across China in 2015 and 2020",
            "CC-BY-4.0", "shp", "WGS84", {"features": "Polygon"},
            {"include_patterns": [r"PV_.*\.shp$"], "exclude_patterns": ["NPV_.*"], "use_regex": True,
             "description": "Include all PV shapefiles, exclude the NPV negative samples"},
            ["FID_PV_202", "Shape_Area"], 3, compression="zip",
            columns={"source_area_m2": {"col": "Shape_Area", "unit": "km2"}}),
        GLOBAL: entry(
            GLOBAL, "10.6084/m9.figshare.11310269.v6", "https://doi.org/10.1038/s41597-020-0469-8",
            "Harmonised global datasets of wind and solar farm locations and power",
            "CC-BY-4.0", "gpkg", "WGS84", {"features": "Polygon"},
            {"include_patterns": [r".*WGS84.*\.gpkg$"], "exclude_patterns": [".*EckertIV.*"], "use_regex": True,
             "description": "Only the WGS84 GeoPackage, not its Eckert IV copy"},
            ["sol_id", "panel.area", "GID_0"], 2, id_col="sol_id", layer=SOLAR_LAYER,
            columns={"capacity_mw": {"col": "power", "unit": "MW"},
                     "source_area_m2": {"col": "landscape.area", "unit": "km2"}}),
        IND: entry(
            IND, "https://github.com/microsoft/solar-farms-mapping", "https://doi.org/10.1038/s41597-022-01499-9",
            "An Artificial Intelligence Dataset for Solar Energy Locations in India",
            "MIT", "geojson", "WGS84", {"features": "MultiPolygon"},
            {"include_patterns": ["*.geojson"], "exclude_patterns": [], "use_regex": False,
             "description": "The merged, simplified farm outlines"},
            ["fid", "Area", "State"], 3,
            columns={"source_area_m2": {"col": "Area", "unit": "m2"}}),
        GSF: entry(
            GSF, "10.5281/zenodo.10939100", "https://doi.org/10.48550/arXiv.2404.05180",
            "GloSoFarID: Global multispectral dataset for Solar Farm IDentification in satellite imagery",
            "CC-BY-4.0", "json", "EPSG:4326", {"features": "Point"},
            {"include_patterns": ["*.json"], "exclude_patterns": [], "use_regex": False,
             "description": "The [lon, lat] arrays of every year"},
            [], 1),
    }


def record(dataset: str, source_file: str, source_row: int) -> dict[str, Any]:
    """A row reference, in the form the harmonize stage gives its rows."""
    return {"dataset": dataset, "source_file": source_file, "source_row": source_row}


def ground_truth(s: Sample) -> dict[str, Any]:
    """Every planted defect and duplicate cluster of the selected files.

    Rows of files no manifest entry selects (negative samples, wind layer, CSV
    and Eckert IV copies) never appear. ``expected_rows`` counts the rows the
    harmonize stage keeps: all selected rows except null and empty geometries.
    """
    invalid, orientation, empty = [], [], []
    members: dict[int, list[dict[str, Any]]] = {}
    expected_rows = dict.fromkeys(DATASETS, 0)
    for (dataset, source_file), rows in s.files.items():
        if (dataset, source_file) in UNSELECTED:
            continue
        for i, row in enumerate(rows):
            ref = record(dataset, source_file, i)
            if row.quirk in ("null", "empty"):
                empty.append({**ref, "kind": row.quirk})
                continue
            expected_rows[dataset] += 1
            if row.quirk in ("bowtie", "self_intersecting_part"):
                invalid.append({**ref, "kind": row.quirk})
            elif row.quirk == "inconsistent_orientation":
                orientation.append(ref)
            if row.installation in s.clusters:
                members.setdefault(row.installation, []).append(ref)

    def order(ref: dict[str, Any]) -> tuple[int, str, int]:
        return DATASETS.index(ref["dataset"]), ref["source_file"], ref["source_row"]

    clusters = [
        {"kind": s.clusters[inst][0], "place": s.clusters[inst][1], "records": sorted(refs, key=order)}
        for inst, refs in members.items()
    ]
    return {
        "record_key": ["dataset", "source_file", "source_row"],
        "invalid_geometries": sorted(invalid, key=order),
        "inconsistent_orientation": sorted(orientation, key=order),
        "empty_geometries": sorted(empty, key=order),
        "duplicate_clusters": sorted(clusters, key=lambda c: order(c["records"][0])),
        "expected_rows": expected_rows,
    }


def write_json(path: Path, obj: Any) -> None:
    """Indented JSON in the dict's own key order, with a trailing newline."""
    path.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_sample(out_dir: Path | str, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Generate the sample into ``out_dir``.

    Parameters
    ----------
    out_dir : Path or str
        Folder that receives one sub-folder per dataset, ``manifest.json`` and
        ``ground_truth.json`` (it is created if missing; files are overwritten).
    seed : int, default 20261125
        Seed of the random generator; the committed sample uses the default.

    Returns
    -------
    dict
        The ground truth that was written.
    """
    out_dir = Path(out_dir)
    s = build_sample(seed)
    for dataset, write in WRITERS.items():
        folder = out_dir / dataset
        folder.mkdir(parents=True, exist_ok=True)
        write(s, folder)
    truth = ground_truth(s)
    write_json(out_dir / "manifest.json", manifest(s))
    write_json(out_dir / "ground_truth.json", truth)
    write_sample_catalog(selected_geometries(s), PLACES, out_dir / "stac", seed)
    return truth


def selected_geometries(s: Sample) -> list[BaseGeometry]:
    """Every non-empty geometry of the files the manifest selects: what the STAC
    sample catalogue must cover."""
    return [
        row.geometry for key, rows in s.files.items() if key not in UNSELECTED
        for row in rows if row.geometry is not None and not row.geometry.is_empty
    ]


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m pvlake.sample OUT_DIR [--seed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="output folder, e.g. data/sample")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)")
    args = parser.parse_args(argv)
    truth = write_sample(args.out_dir, args.seed)
    print(f"wrote {args.out_dir}: {truth['expected_rows']}")


if __name__ == "__main__":
    main()
