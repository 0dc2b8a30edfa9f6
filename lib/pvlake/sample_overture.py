"""A small Overture-shaped ``division_area`` release for running the Overture path offline.

Overture Maps publishes its divisions theme as GeoParquet under
``release/<release>/theme=divisions/type=division_area/`` in its bucket. This seeded
generator writes the same layout and the same schema (``id``, ``geometry`` as WKB with
GeoParquet ``geo`` metadata, the ``bbox`` covering struct of float32 ``xmin, xmax, ymin,
ymax``, ``country`` (ISO 3166-1 alpha-2), ``version``, ``sources``, ``subtype``, ``class``,
``names`` (``primary``, ``common`` map, ``rules``), ``is_land``, ``is_territorial``,
``region`` (ISO 3166-2), ``division_id``, ``admin_level``) for the countries the embedded
sample's installations are in, so :func:`pvlake.context.get_overture_divisions` can be
tested against a local HTTP server exactly as it reads the real release.

Shapes: the country land areas are Natural Earth's (simplified); each country also gets a
maritime area (``class = maritime``, a ring of territorial sea: not land, so never joined),
and four regions cut from its land at seeded lines near its centre (``<country> North-West``,
..., codes ``<alpha-2>-NW`` ...): synthetic regions, but shaped and coded as Overture's are.
A few county rows (a subtype the stage does not read) complete the mix. Rows are spread
over two files in small row groups sorted by longitude, so reading only some of them is
measurable.

Run ``python -m pvlake.sample_overture DIR [--release R]`` to write a release tree into DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from .context import overture_prefix, read_natural_earth
from .io import atomic_path

SAMPLE_RELEASE = "2025-12-17.0"
"""Release id the sample is written under (the configuration's pinned release)."""

SAMPLE_COUNTRIES = ("AUS", "CHL", "CHN", "DEU", "EGY", "ESP", "FRA", "GBR", "IND", "IRL", "MAR", "MEX", "PRT", "USA",
                    "ZAF")
"""The embedded sample's countries and a few neighbours (borders to cross)."""

SIMPLIFY_DEG = 0.02
TERRITORIAL_DEG = 0.2
ROW_GROUP_ROWS = 4
FILES = 2

_NAMES = pa.struct([
    ("primary", pa.string()),
    ("common", pa.map_(pa.string(), pa.string())),
    ("rules", pa.list_(pa.struct([("variant", pa.string()), ("language", pa.string()), ("value", pa.string())]))),
])
_SOURCES = pa.list_(pa.struct([
    ("property", pa.string()), ("dataset", pa.string()), ("record_id", pa.string()),
    ("update_time", pa.string()), ("confidence", pa.float64()),
]))
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("geometry", pa.binary()),
    ("bbox", pa.struct([("xmin", pa.float32()), ("xmax", pa.float32()), ("ymin", pa.float32()), ("ymax", pa.float32())])),
    ("country", pa.string()),
    ("version", pa.int32()),
    ("sources", _SOURCES),
    ("subtype", pa.string()),
    ("class", pa.string()),
    ("names", _NAMES),
    ("is_land", pa.bool_()),
    ("is_territorial", pa.bool_()),
    ("region", pa.string()),
    ("division_id", pa.string()),
    ("admin_level", pa.int32()),
])
"""Overture's ``division_area`` columns and types (the hive columns theme/type come from the path)."""

LOCAL_NAMES = {"CHN": "中国", "DEU": "Deutschland", "ESP": "España", "FRA": "France", "IND": "भारत", "MAR": "المغرب",
               "MEX": "México", "EGY": "مصر", "PRT": "Portugal"}
"""Primary (local) names; the English name is in ``names.common.en`` except for one country,
whose English name is its primary one (as Overture has it for English-speaking countries)."""


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _bbox(geom) -> dict:
    xmin, ymin, xmax, ymax = geom.bounds
    # float32 rounded outwards, so the box still covers the shape
    down = lambda v: float(np.nextafter(np.float32(v), np.float32(-np.inf)))  # noqa: E731
    up = lambda v: float(np.nextafter(np.float32(v), np.float32(np.inf)))  # noqa: E731
    return {"xmin": down(xmin), "xmax": up(xmax), "ymin": down(ymin), "ymax": up(ymax)}


def _regions(land, rng: np.random.Generator) -> list[tuple[str, object]]:
    centre = land.representative_point()
    xmin, ymin, xmax, ymax = land.bounds
    x = centre.x + rng.uniform(-0.1, 0.1) * (xmax - xmin)
    y = centre.y + rng.uniform(-0.1, 0.1) * (ymax - ymin)
    quadrants = {"NW": (xmin, y, x, ymax), "NE": (x, y, xmax, ymax), "SW": (xmin, ymin, x, y), "SE": (x, ymin, xmax, y)}
    out = []
    for code, box in quadrants.items():
        part = shapely.intersection(land, shapely.box(*box))
        if not part.is_empty and part.area > 0:
            out.append((code, part))
    return out


COMPASS = {"NW": "North-West", "NE": "North-East", "SW": "South-West", "SE": "South-East"}


def sample_rows(seed: int = 13) -> list[dict]:
    """The release's rows (one dict per ``division_area``), in a stable order."""
    rng = np.random.default_rng(seed)
    ne, _ = read_natural_earth()
    rows = []
    for iso3 in SAMPLE_COUNTRIES:
        country = ne[ne["adm0_a3"] == iso3].iloc[0]
        iso2, name = country["country_iso2"], country["country_name"]
        land = shapely.make_valid(shapely.simplify(country.geometry, SIMPLIFY_DEG, preserve_topology=True))
        division = _uuid(rng)
        english = iso3 != "GBR"
        names = {"primary": LOCAL_NAMES.get(iso3, name),
                 "common": [("en", name), ("fr", name)] if english else None, "rules": None}
        sources = [{"property": "", "dataset": "sample", "record_id": f"ne:{iso3}", "update_time": "2025-11-01T00:00:00Z",
                    "confidence": None}]
        base = {"country": iso2, "version": 0, "sources": sources, "division_id": division}
        rows.append({**base, "id": _uuid(rng), "geometry": land, "subtype": "country", "class": "land",
                     "names": names, "is_land": True, "is_territorial": False, "region": None, "admin_level": 0})
        sea = shapely.difference(shapely.buffer(land, TERRITORIAL_DEG, quad_segs=2), land)
        rows.append({**base, "id": _uuid(rng), "geometry": sea, "subtype": "country", "class": "maritime",
                     "names": names, "is_land": False, "is_territorial": True, "region": None, "admin_level": 0})
        for code, part in _regions(land, rng):
            region_names = {"primary": f"{name} {COMPASS[code]}", "common": None, "rules": None}
            region = {**base, "division_id": _uuid(rng), "region": f"{iso2}-{code}", "admin_level": 1}
            rows.append({**region, "id": _uuid(rng), "geometry": part, "subtype": "region", "class": "land",
                         "names": region_names, "is_land": True, "is_territorial": False})
            # a county inside the region: a subtype the stage does not read
            county = shapely.intersection(part, shapely.buffer(part.representative_point(), 0.5))
            rows.append({**region, "division_id": _uuid(rng), "id": _uuid(rng), "geometry": county, "subtype": "county",
                         "class": "land", "names": {"primary": f"{name} {COMPASS[code]} County", "common": None,
                                                    "rules": None},
                         "is_land": True, "is_territorial": False, "admin_level": 2})
    for row in rows:
        row["bbox"] = _bbox(row["geometry"])
    return sorted(rows, key=lambda r: (r["bbox"]["xmin"], r["id"]))


def geo_metadata() -> dict:
    """GeoParquet 1.1 ``geo`` metadata as Overture writes it (WKB, bbox covering)."""
    return {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {
            "encoding": "WKB", "geometry_types": ["Polygon", "MultiPolygon"],
            "covering": {"bbox": {"xmin": ["bbox", "xmin"], "ymin": ["bbox", "ymin"],
                                  "xmax": ["bbox", "xmax"], "ymax": ["bbox", "ymax"]}},
        }},
    }


def write_sample_release(root: str | Path, release: str = SAMPLE_RELEASE, seed: int = 13) -> list[Path]:
    """Write the sample release under ``root`` (``release/<release>/theme=divisions/...``).

    Returns
    -------
    list of Path
        The Parquet files written.
    """
    rows = sample_rows(seed)
    folder = Path(root) / overture_prefix(release)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    rng = np.random.default_rng(seed + 1)
    paths = []
    for k, chunk in enumerate(np.array_split(np.arange(len(rows)), FILES)):
        data = {name: [rows[i].get(name) for i in chunk] for name in SCHEMA.names}
        data["geometry"] = [shapely.to_wkb(g) for g in data["geometry"]]
        table = pa.table(data, schema=SCHEMA).replace_schema_metadata({b"geo": json.dumps(geo_metadata()).encode()})
        path = folder / f"part-{k:05d}-{_uuid(rng)}-c000.zstd.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the Overture-shaped division_area sample release.")
    parser.add_argument("root", help="folder that plays the bucket (gets release/<release>/theme=divisions/...)")
    parser.add_argument("--release", default=SAMPLE_RELEASE)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    for path in write_sample_release(args.root, args.release, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
