"""An awkward sample: the inputs that once broke harmonize and dedup, with the answer.

Each dataset plants one trap a domain expert would try, at a real place, with the
installations the pipeline must make of it written to ``expected.json``:

- ``pacific_farms_3832``: a GeoPackage in EPSG:3832 (PDC Mercator, usual for Pacific
  data) with a 300 m farm straddling the 180th meridian in Fiji, a copy of it shifted
  60 m (the same farm mapped again: 80% overlap), and a farm 2 km west;
- ``same_latitude_farms``: farms at Fiji's latitude elsewhere (Queensland, Bolivia,
  Zambia), the Fiji farm again already cut at +-180 as RFC 7946 recommends, and a rooftop
  just east of the meridian on Taveuni;
- ``antimeridian_points``: CSV point pairs 21 m apart across the meridian at four
  latitudes, and a point 5 m west of the Taveuni rooftop, across the meridian;
- ``high_latitude`` (+ ``high_latitude_points``): rotated rooftop arrays at 60 and 70
  degrees north (Oslo, Tromsø), each with a point 9.5 m (same site) or 10.5 m (another
  site) away from its outline;
- ``postcode_flood``: 20,000 records at one postcode centroid (one installation) and
  1,000 distinct points 200 m apart (1,000 installations).

Run ``python -m pvlake.edge_cases OUT_DIR`` to write the files, ``manifest.json`` and
``expected.json``; then ``snakemake -j8 --config manifest=OUT_DIR/manifest.json
data_dir=...`` (tests/test_edge_cases.py adds the upstream GloSoFarID entry, downloaded
from a local GitHub-like server, and runs it in a folder whose path has spaces).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import shapely
from shapely import affinity

from .geo import split_antimeridian

DEFAULT_SEED = 20261129

FIJI = (180.0, -17.0)
"""The farm across the meridian: its true centroid (lon, lat)."""
TAVEUNI = (180.0, -16.85)
SAME_LATITUDE = {"queensland": (145.5, -17.0), "bolivia": (-63.2, -17.0), "zambia": (27.8, -17.0)}
POINT_PAIR_LATITUDES = (-18.0, -16.5, 10.0, 52.0)
HIGH_LATITUDE_SITES = {"oslo": (10.75, 60.0), "tromso": (18.95, 70.0)}
ROOFTOPS_PER_SITE = 10
POSTCODE = (-0.1276, 51.5072)
FLOOD_RECORDS = 20_000
GRID_POINTS = 1_000
GRID_ORIGIN = (-1.5, 52.5)
GRID_STEP_M = 200.0

PACIFIC = "pacific_farms_3832"
SAME_LAT = "same_latitude_farms"
POINTS = "antimeridian_points"
HIGH = "high_latitude"
FLOOD = "postcode_flood"


def local_shape(lon0: float, lat0: float, shape_m: shapely.Geometry) -> shapely.Geometry:
    """A shape drawn in metres (east, north) around (lon0, lat0), in WGS84 lon/lat through
    PROJ's azimuthal equidistant projection (longitudes may wrap across +-180)."""
    aeqd = pyproj.CRS(proj="aeqd", lat_0=lat0, lon_0=lon0, ellps="WGS84")
    to_lonlat = pyproj.Transformer.from_crs(aeqd, 4326, always_xy=True)
    return shapely.transform(shape_m, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))


def cut(shape: shapely.Geometry) -> shapely.Geometry:
    """The shape cut at +-180 when it crosses the meridian (RFC 7946)."""
    return split_antimeridian(np.array([shape], dtype=object))[0][0]


def farm_m(east_m: float = 0.0) -> shapely.Polygon:
    """A 300 m x 200 m farm centred ``east_m`` east of the origin."""
    return shapely.box(east_m - 150.0, -100.0, east_m + 150.0, 100.0)


def record(dataset: str, source_file: str, source_row: int) -> dict[str, Any]:
    return {"dataset": dataset, "source_file": source_file, "source_row": source_row}


def write_pacific(folder: Path) -> list[list[dict]]:
    """The Fiji farms in EPSG:3832 metres; returns the expected installations."""
    to_3832 = pyproj.Transformer.from_crs(4326, 3832, always_xy=True)
    x, y = to_3832.transform(*FIJI)
    scale = 1.0 / np.cos(np.radians(FIJI[1]))  # Mercator's scale: ground metres to map metres
    shapes = [
        affinity.translate(affinity.scale(farm_m(), scale, scale, origin=(0, 0)), x, y),
        affinity.translate(affinity.scale(farm_m(60.0), scale, scale, origin=(0, 0)), x, y),
        affinity.translate(affinity.scale(farm_m(-2000.0), scale, scale, origin=(0, 0)), x, y),
    ]
    gdf = gpd.GeoDataFrame({"site_name": ["Fiji antimeridian farm", "Fiji antimeridian farm (remapped)",
                                          "Fiji farm 2 km west"]}, geometry=shapes, crs="EPSG:3832")
    folder.mkdir(parents=True, exist_ok=True)
    name = "pacific_farms.gpkg"
    gdf.to_file(folder / name, layer="solar_farms", driver="GPKG")
    f = f"{name}:solar_farms"
    return [[record(PACIFIC, f, 0), record(PACIFIC, f, 1)], [record(PACIFIC, f, 2)]]


def write_same_latitude(folder: Path) -> tuple[list[list[dict]], dict]:
    """Farms at Fiji's latitude elsewhere, the Fiji farm cut at 180, the Taveuni rooftop."""
    names = list(SAME_LATITUDE) + ["fiji_cut", "taveuni_rooftop"]
    shapes = [local_shape(lon, lat, farm_m()) for lon, lat in SAME_LATITUDE.values()]
    shapes.append(cut(local_shape(*FIJI, farm_m())))
    # a rooftop 1-16 m east of the meridian (wholly in the eastern hemisphere: lon -179.99...)
    shapes.append(local_shape(*TAVEUNI, shapely.box(1.0, -4.0, 16.0, 4.0)))
    gdf = gpd.GeoDataFrame({"site_name": names}, geometry=shapes, crs="EPSG:4326")
    folder.mkdir(parents=True, exist_ok=True)
    name = "farms.geojson"
    gdf.to_file(folder / name, driver="GeoJSON", COORDINATE_PRECISION=9)
    groups = [[record(SAME_LAT, name, k)] for k in range(len(SAME_LATITUDE))]
    fiji = record(SAME_LAT, name, len(SAME_LATITUDE))
    rooftop = record(SAME_LAT, name, len(SAME_LATITUDE) + 1)
    return groups, {"fiji": fiji, "taveuni_rooftop": rooftop}


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_points(folder: Path, rooftop: dict) -> list[list[dict]]:
    """Point pairs 21 m apart across 180 degrees, and a point 5 m from the Taveuni rooftop."""
    rows, groups = [], []
    name = "points.csv"
    for lat in POINT_PAIR_LATITUDES:
        pair = []
        for east_m in (-10.5, 10.5):
            p = local_shape(180.0, lat, shapely.Point(east_m, 0.0))
            pair.append(record(POINTS, name, len(rows)))
            rows.append([f"pair at {lat:g}", f"{p.x:.9f}", f"{p.y:.9f}"])
        groups.append(pair)
    p = local_shape(*TAVEUNI, shapely.Point(-4.0, 0.0))  # 5 m west of the rooftop's west edge
    groups.append([rooftop, record(POINTS, name, len(rows))])
    rows.append(["5 m west of the Taveuni rooftop", f"{p.x:.9f}", f"{p.y:.9f}"])
    write_csv(folder / name, ["label", "lon", "lat"], rows)
    return groups


def write_high_latitude(folder: Path, rng: np.random.Generator) -> list[list[dict]]:
    """Rotated rooftop arrays, each with one point outside its outline: 9.5 m away (the
    same site) or 10.5 m away (another site); arrays 400 m apart."""
    rooftops, points, groups = [], [], []
    for site, (lon0, lat0) in HIGH_LATITUDE_SITES.items():
        for k in range(ROOFTOPS_PER_SITE):
            gap_m = (9.5, 10.5)[k % 2]
            centre = np.array([400.0 * k, 0.0])
            w, h, theta = rng.uniform(8, 30), rng.uniform(3, 10), rng.uniform(0, 180)
            roof = affinity.rotate(shapely.box(-w / 2, -h / 2, w / 2, h / 2), theta, origin=(0, 0))
            # out of the middle of the array's (rotated) north edge, along its outward normal
            (x0, y0), (x1, y1) = np.asarray(roof.exterior.coords)[1:3]
            normal = np.array([y1 - y0, x0 - x1]) / np.hypot(x1 - x0, y1 - y0)
            mid = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
            if normal @ mid < 0:
                normal = -normal
            x, y = centre + mid + gap_m * normal
            p = local_shape(lon0, lat0, shapely.Point(x, y))
            roof_rec = record(HIGH, "rooftops.geojson", len(rooftops))
            point_rec = record(f"{HIGH}_points", "points.csv", len(points))
            rooftops.append((f"{site} rooftop {k}", local_shape(lon0, lat0, affinity.translate(roof, *centre))))
            points.append([f"{site} rooftop {k}: {gap_m:g} m", f"{p.x:.9f}", f"{p.y:.9f}"])
            groups += [[roof_rec, point_rec]] if gap_m < 10 else [[roof_rec], [point_rec]]
    gdf = gpd.GeoDataFrame({"site_name": [n for n, _ in rooftops]}, geometry=[g for _, g in rooftops], crs="EPSG:4326")
    folder.mkdir(parents=True, exist_ok=True)
    gdf.to_file(folder / "rooftops.geojson", driver="GeoJSON", COORDINATE_PRECISION=9)
    write_csv(folder / "points.csv", ["label", "lon", "lat"], points)
    return groups


def write_flood(folder: Path) -> list[list[dict]]:
    """20,000 records at one postcode centroid, then 1,000 distinct points on a 200 m grid."""
    name = "postcodes.csv"
    rows = [[f"PC{k:05d}", f"{POSTCODE[0]:.6f}", f"{POSTCODE[1]:.6f}"] for k in range(FLOOD_RECORDS)]
    side = int(np.ceil(np.sqrt(GRID_POINTS)))
    k = np.arange(GRID_POINTS)
    grid = local_shape(*GRID_ORIGIN, shapely.points(GRID_STEP_M * (k % side), GRID_STEP_M * (k // side)))
    rows += [[f"GR{i:05d}", f"{p.x:.9f}", f"{p.y:.9f}"] for i, p in enumerate(grid)]
    write_csv(folder / name, ["ref", "lon", "lat"], rows)
    flood = [record(FLOOD, name, k) for k in range(FLOOD_RECORDS)]
    return [flood] + [[record(FLOOD, name, FLOOD_RECORDS + k)] for k in range(GRID_POINTS)]


def manifest() -> dict[str, dict]:
    """The manifest of the awkward sample (local files; paths relative to the manifest)."""
    def points_entry(path: str) -> dict:
        return {"repo": "local", "path": path, "label_fmt": "csv", "crs": "WGS84", "geom_type": ["Point"],
                "lon_col": "lon", "lat_col": "lat"}

    return {
        PACIFIC: {"repo": "local", "path": PACIFIC, "label_fmt": "gpkg", "crs": None, "geom_type": ["Polygon"],
                  "keep_cols": ["site_name"], "priority": 2,
                  "notes": "EPSG:3832 (declared by the file); a farm straddles 180 degrees"},
        SAME_LAT: {"repo": "local", "path": SAME_LAT, "label_fmt": "geojson", "crs": None,
                   "geom_type": ["Polygon", "MultiPolygon"], "keep_cols": ["site_name"], "priority": 1},
        POINTS: points_entry(POINTS) | {"keep_cols": ["label"]},
        HIGH: {"repo": "local", "path": HIGH, "label_fmt": "geojson", "crs": None, "geom_type": ["Polygon"],
               "keep_cols": ["site_name"], "file_filters": {"include_patterns": ["rooftops.geojson"]}},
        f"{HIGH}_points": points_entry(HIGH) | {"keep_cols": ["label"],
                                                "file_filters": {"include_patterns": ["points.csv"]}},
        FLOOD: points_entry(FLOOD) | {"keep_cols": ["ref"]},
    }


def write_edge_cases(out_dir: str | Path, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Write the awkward sample into ``out_dir``: one folder per dataset, ``manifest.json``
    and ``expected.json``.

    Returns
    -------
    dict
        ``installations``: lists of records (dataset, source_file, source_row) that must
        each make exactly one installation; ``antimeridian_farm``: the Fiji farm's records
        and its true centroid.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    groups = write_pacific(out_dir / PACIFIC)
    same, special = write_same_latitude(out_dir / SAME_LAT)
    groups[0].append(special["fiji"])
    groups += same
    groups += write_points(out_dir / POINTS, special["taveuni_rooftop"])
    groups += write_high_latitude(out_dir / HIGH, rng)
    groups += write_flood(out_dir / FLOOD)
    expected = {
        "installations": groups,
        "antimeridian_farm": {"records": groups[0], "centroid_lon": FIJI[0], "centroid_lat": FIJI[1]},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest(), indent=2) + "\n", encoding="utf-8")
    (out_dir / "expected.json").write_text(json.dumps(expected, separators=(",", ":")) + "\n", encoding="utf-8")
    return expected


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    expected = write_edge_cases(args.out_dir, args.seed)
    n = sum(len(g) for g in expected["installations"])
    print(f"wrote {n:,} records that must make {len(expected['installations']):,} installations into {args.out_dir}")


if __name__ == "__main__":
    main()
