"""Tests of the cubes stage (pvlake.cubes) and of the sample's imagery (pvlake.sample_imagery):
chip planning (sharing, farm tiles, grid), label masks on the chip's grid (also at a UTM zone
edge), both loaders giving identical pixels, the Icechunk store (one commit per run, unchanged
chips not reloaded, earlier snapshots readable), bad assets (missing over HTTP, corrupt), a
Dask distributed scheduler, the spatial split, the PyTorch-free iterator, and the sample run's
outputs (store, index in the lake, masks matching the imagery, baseline scores, chapter).

The small scenes here are real COGs written with rasterio: Sentinel-2-like items over a 2,048 px
tile in UTM zone 31N and one in zone 32N, one COG per band plus ``scl``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from affine import Affine
from pyproj import Transformer

from pvlake import cubes, stac
from pvlake.layout import Layout

BANDS = ("blue", "green", "red", "nir")
TILE_PX = 2048
RES = 10.0


def to_lonlat(epsg: int, geom):
    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def write_cog(path: Path, data: np.ndarray, epsg: int, transform: Affine) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=f"EPSG:{epsg}", transform=transform, nodata=0,
                       blocksize=256, compress="deflate", overviews="none") as dst:
        dst.write(data, 1)


def make_scene(root: Path, item_id: str, epsg: int, west: float, north: float, when: str, seed: int,
               cloud: float = 5.0, nodata_cols: int = 0, scl_value: int | None = None) -> dict:
    """A Sentinel-2-like item whose COGs hold seeded random values (0 in the first
    ``nodata_cols`` columns: a swath edge), SCL 4 everywhere (or ``scl_value``)."""
    rng = np.random.default_rng(seed)
    transform = Affine(RES, 0, west, 0, -RES, north)
    assets = {}
    for band in (*BANDS, "scl"):
        if band == "scl":
            data = np.full((TILE_PX, TILE_PX), 4 if scl_value is None else scl_value, np.uint8)
        else:
            data = rng.integers(500, 4000, (TILE_PX, TILE_PX)).astype(np.uint16)
        data[:, :nodata_cols] = 0
        path = root / item_id / f"{band}.tif"
        write_cog(path, data, epsg, transform)
        assets[band] = {"href": str(path), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                        "roles": ["data"]}
    square = shapely.box(west, north - TILE_PX * RES, west + TILE_PX * RES, north).segmentize(2000)
    footprint = to_lonlat(epsg, square)
    return {
        "type": "Feature", "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                            "https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "id": item_id, "collection": "sentinel-2-l2a", "geometry": shapely.geometry.mapping(footprint),
        "bbox": list(footprint.bounds), "links": [],
        "properties": {"datetime": when, "eo:cloud_cover": cloud, "proj:code": f"EPSG:{epsg}",
                       "proj:shape": [TILE_PX, TILE_PX], "proj:transform": [RES, 0.0, west, 0.0, -RES, north]},
        "assets": assets,
    }


# tile of zone 31N near the zone's east edge (6 E at 51 N is ~ E 710,000 in zone 31)
W31, N31 = 690_000.0, 5_660_000.0


@pytest.fixture
def mini(tmp_path):
    """A data_dir with the STAC stage's outputs and prepared installations over small COGs:
    two scenes on one day (one with a nodata swath edge: the day is a mosaic), one a year
    later, three installations (two sharing a chip), a point installation, one installation
    without scenes."""
    layout = Layout(tmp_path / "data")
    scenes = tmp_path / "scenes"
    items = [
        make_scene(scenes, "S2A_31UFS_20230601_0_L2A", 32631, W31, N31, "2023-06-01T10:30:00Z", 1, nodata_cols=700),
        make_scene(scenes, "S2A_31UFT_20230601_0_L2A", 32631, W31 - 5_000, N31 + 5_000, "2023-06-01T10:30:05Z", 2),
        make_scene(scenes, "S2B_31UFS_20240610_0_L2A", 32631, W31, N31, "2024-06-10T10:31:00Z", 3, cloud=12.0),
    ]
    x0, y0 = W31 + 5_000, N31 - 5_000
    shapes = {
        "a_farm": shapely.box(x0, y0 - 120, x0 + 150, y0),
        "b_roof": shapely.box(x0 + 600, y0 - 40, x0 + 630, y0 - 10),
        "c_point": shapely.Point(x0 + 300, y0 - 500),
        "d_far": shapely.box(x0 + 9_000, y0 - 9_000, x0 + 9_100, y0 - 8_900),
        "z_none": shapely.box(x0 + 100_000, y0, x0 + 100_050, y0 + 50),
    }
    prepared = gpd.GeoDataFrame({"pv_id": list(shapes)}, geometry=[to_lonlat(32631, g) for g in shapes.values()],
                                crs="EPSG:4326")
    layout.prepared_parquet().parent.mkdir(parents=True)
    prepared.to_parquet(layout.prepared_parquet())
    stac.write_items(items, layout.stac_items())
    rows = [(p, it["id"]) for p in ("a_farm", "b_roof", "c_point", "d_far") for it in items]
    matches = pd.DataFrame(rows, columns=["pv_id", "item_id"])
    for col, value in (("catalog", "mini"), ("collection", "sentinel-2-l2a"), ("period", "2023"),
                       ("cloud_cover", 5.0), ("coverage_fraction", 1.0), ("rank", 1)):
        matches[col] = value
    matches["datetime"] = pd.Timestamp("2023-06-01", tz="UTC")
    stac.write_table(matches, stac.MATCH_COLUMNS, layout.stac_matches())
    skipped = pd.DataFrame({"pv_id": ["z_none"], "reason": ["no_scene"], "scenes_reaching": [0],
                            "scenes_covering_cloudy": [0], "best_coverage_fraction": [0.0],
                            "centroid_lon": [0.0], "centroid_lat": [0.0]})
    stac.write_table(skipped, stac.SKIPPED_COLUMNS, layout.stac_skipped())
    entry = {"catalog_type": "static", "catalog_uri": "catalog.json", "include_collections": ["sentinel-2-l2a"],
             "collection_sensors": {"sentinel-2-l2a": {"bands": [*BANDS, "scl"], "gsd_meters": 10}},
             "search_parameters": {"max_cloud_cover": 30, "date_range": "2023-01-01/2024-12-31",
                                   "buffer_meters": 100, "max_items_per_location": 2}}
    manifest_of(layout).write_text(json.dumps({"mini": entry}))
    settings = cubes.CubeSettings(chip_size_px=128, max_dates=4, chunk_px=256, batch_chips=8, point_radius_m=25)
    return layout, items, settings


def manifest_of(layout: Layout) -> Path:
    """The mini catalogue's STAC manifest (its collection_sensors name the bands)."""
    return layout.data_dir.parent / "stac_manifest.json"


# --- chip plan --------------------------------------------------------------------------


def test_plan_chips_shares_chips_and_tiles_large_farms():
    x0, y0 = 500_000.0, 5_700_000.0
    shapes = {
        "p1": shapely.box(x0, y0, x0 + 100, y0 + 100),
        "p2": shapely.box(x0 + 700, y0 + 300, x0 + 760, y0 + 340),  # inside p1's chip
        "p3": shapely.box(x0 + 2_000, y0, x0 + 2_050, y0 + 50),  # 2 km away: its own chip
        "farm": shapely.box(x0 + 20_000, y0, x0 + 24_000, y0 + 3_000),  # 4 x 3 km: 2 x 2 chips of 2.56 km
    }
    gdf = gpd.GeoDataFrame({"pv_id": list(shapes)}, geometry=[to_lonlat(32631, g) for g in shapes.values()],
                           crs="EPSG:4326")
    chips = cubes.plan_chips(gdf, 256, 10.0)
    by_pv = {}
    for c in chips:
        assert c.epsg == 32631 and c.west_m % 10 == 0 and c.north_m % 10 == 0
        assert c.chip_id == f"32631_{int(c.west_m)}_{int(c.north_m)}_256"
        for p in c.pv_ids:
            by_pv.setdefault(p, []).append(c)
    assert by_pv["p1"] == by_pv["p2"] and len(by_pv["p1"]) == 1
    assert by_pv["p3"] != by_pv["p1"]
    tiles = by_pv["farm"]
    assert len(tiles) == 4 and {c.kind for c in tiles} == {"farm_tile"}
    union = shapely.union_all([shapely.box(*c.bounds) for c in tiles])
    assert union.buffer(1).contains(shapes["farm"])  # (1 m: the lon/lat round trip)
    # centred: the p1 chip's centre is p1's centre snapped to the grid
    (c1,) = by_pv["p1"]
    assert abs((c1.west_m + 1280) - (x0 + 50)) <= 10 and abs((c1.north_m - 1280) - (y0 + 50)) <= 10
    # stable: the same plan again, whatever the row order
    again = cubes.plan_chips(gdf.iloc[::-1], 256, 10.0)
    assert [c.chip_id for c in again] == [c.chip_id for c in chips]


# --- masks ------------------------------------------------------------------------------


def test_label_mask_puts_a_known_polygon_on_the_right_pixels():
    chip = cubes.Chip("32631_500000_5700000_64", 32631, 500_000.0, 5_700_000.0, 64, 10.0, ("x",))
    # rows 10-19, columns 5-24: edges on pixel edges (a pixel is in when its centre is)
    poly = shapely.box(500_050.0, 5_699_800.0, 500_250.0, 5_699_900.0)
    point = shapely.Point(500_505.0, 5_699_505.0)  # centre of pixel (row 49, col 50)
    mask = cubes.label_mask(chip, np.array([to_lonlat(32631, poly), to_lonlat(32631, point)], dtype=object), 25.0)
    expected = np.zeros((64, 64), np.uint8)
    expected[10:20, 5:25] = cubes.LABEL_PV
    disc = np.zeros((64, 64), bool)
    rows, cols = np.mgrid[0:64, 0:64]
    cx, cy = 500_000 + (cols + 0.5) * 10, 5_700_000 - (rows + 0.5) * 10
    disc = np.hypot(cx - 500_505, cy - 5_699_505) <= 25
    expected[disc] = cubes.LABEL_UNCERTAIN
    assert (mask == expected).all()
    # the chip's GeoBox has the same affine the mask was rasterised with
    assert tuple(chip.geobox.affine)[:6] == tuple(chip.affine)[:6] and chip.geobox.shape == (64, 64)


def test_label_mask_at_a_utm_zone_edge():
    # an installation just east of 6 E (zone 32) whose chip reaches into zone 31: a polygon
    # drawn in zone 31 west of the edge lands where its corners project in zone 32
    installation = shapely.box(6.0004, 51.0, 6.0010, 51.0004)
    gdf = gpd.GeoDataFrame({"pv_id": ["east"]}, geometry=[installation], crs="EPSG:4326")
    (chip,) = cubes.plan_chips(gdf, 64, 10.0)
    assert chip.epsg == 32632
    west_lon = to_lonlat(chip.epsg, shapely.Point(chip.west_m, chip.north_m)).x
    assert west_lon < 6.0  # the chip crosses the zone edge
    tr31 = Transformer.from_crs(4326, 32631, always_xy=True)
    e, n = tr31.transform(5.9985, 50.9995)
    poly31 = shapely.box(e, n, e + 60, n + 40)
    poly = to_lonlat(32631, poly31)
    mask = cubes.label_mask(chip, np.array([poly, installation], dtype=object), 10.0)
    # expected: pixel centres inside each polygon, both taken to the chip's zone
    tr32 = Transformer.from_crs(4326, 32632, always_xy=True)
    rows, cols = np.mgrid[0:64, 0:64]
    cx, cy = chip.west_m + (cols + 0.5) * 10, chip.north_m - (rows + 0.5) * 10
    expected = np.zeros((64, 64), bool)
    for g in (poly, installation):
        local = shapely.transform(g, lambda xy: np.column_stack(tr32.transform(xy[:, 0], xy[:, 1])))
        expected |= shapely.contains_xy(local, cx, cy)
    assert expected.sum() > 20
    assert ((mask == cubes.LABEL_PV) == expected).all()


# --- loading ----------------------------------------------------------------------------


def mini_chips(layout, items, settings):
    installations = gpd.read_parquet(layout.prepared_parquet())
    matches = pd.read_parquet(layout.stac_matches())
    return cubes.plan_stage_chips(installations, matches, items, settings)


def load_all(chips, items, settings):
    by_id = {it["id"]: it for it in items}
    groups = cubes.group_chips(chips, by_id, settings.chunk_px)
    return {r.chip.chip_id: r for r in cubes.load_chips(groups, by_id, BANDS, "scl", settings)}


def test_loaders_give_identical_pixels(mini):
    layout, items, settings = mini
    chips = mini_chips(layout, items, settings)
    assert len(chips) == 2 and all(len(c.days) == 2 for c in chips)
    assert any(len(d) == 2 for c in chips for d in c.day_items)  # a day mosaicked from two scenes
    odc = load_all(chips, items, settings)
    stk = load_all(chips, items, dataclasses.replace(settings, loader="stackstac"))
    assert set(odc) == set(stk) == {c.chip_id for c in chips}
    for cid in odc:
        assert odc[cid].image.shape == (2, len(BANDS), 128, 128)
        assert (odc[cid].image == stk[cid].image).all()
        assert (odc[cid].scl == stk[cid].scl).all()
    # the pixels are the COG's own: no resampling on the native grid
    import rasterio
    from rasterio.windows import Window

    chip = next(c for c in chips if "b_roof" in c.pv_ids)
    item = next(it for it in items if it["id"] == chip.day_items[1][0])  # the 2024 scene
    col, row = int((chip.west_m - W31) / RES), int((N31 - chip.north_m) / RES)
    with rasterio.open(item["assets"]["nir"]["href"]) as src:
        direct = src.read(1, window=Window(col, row, 128, 128))
    assert (odc[chip.chip_id].image[1, BANDS.index("nir")] == direct).all()


def test_href_map_makes_a_relative_replacement_absolute(tmp_path, monkeypatch):
    # the default data_dir is relative ("data"); readers resolve relative hrefs against the item
    monkeypatch.chdir(tmp_path)
    mapped = cubes.HrefMap({"/repo/data/sample/stac": "data/sample_imagery/s2"})("/repo/data/sample/stac/a/b.tif")
    assert mapped == str(tmp_path / "data" / "sample_imagery" / "s2") + "/a/b.tif"
    assert cubes.HrefMap({"s3://x/": "https://mirror/x/"})("s3://x/a.tif") == "https://mirror/x/a.tif"


def test_batches_are_bounded_by_read_chunks_as_well_as_chips():
    chips = [SimpleNamespace(chip_id=f"c{k}") for k in range(7)]
    # c0-c2 share one chunk; c3-c6 are scattered, two chunks each
    blocks = {"c0": [(0, 0, 0)], "c1": [(0, 0, 0)], "c2": [(0, 0, 0)],
              **{f"c{k}": [(0, k, 0), (0, k, 1)] for k in range(3, 7)}}
    batches = [[c.chip_id for c in b] for b, _ in cubes._batches(chips, lambda c: blocks[c.chip_id], 32, 4)]
    assert batches == [["c0", "c1", "c2", "c3"], ["c4", "c5"], ["c6"]]
    assert [[c.chip_id for c in b] for b, _ in cubes._batches(chips, lambda c: blocks[c.chip_id], 2, 99)] == [
        ["c0", "c1"], ["c2", "c3"], ["c4", "c5"], ["c6"]]
    # a chip needing more chunks than the budget still loads, alone
    assert [len(b) for b, _ in cubes._batches(chips[3:5], lambda c: blocks[c.chip_id], 32, 1)] == [1, 1]


def test_mosaic_fills_nodata_with_the_next_scene():
    first = np.array([[[0, 5], [7, 0]]], np.uint16)[None]
    second = np.array([[[1, 2], [3, 4]]], np.uint16)[None]
    out = cubes.mosaic_days(np.concatenate([first, second]), [2])
    assert out.tolist() == [[[[1, 5], [7, 4]]]]


# --- the stage: store, index, reruns, bad input ------------------------------------------


def test_stage_writes_store_index_and_reuses_unchanged_chips(mini):
    layout, items, settings = mini
    report = cubes.run_stage(layout, manifest_of(layout), settings, progress=False)
    assert report["chips"] == 2 and report["chips_loaded"] == 2 and report["chips_reused"] == 0
    assert report["installations_skipped"]["no_scene"] == 1
    index = gpd.read_parquet(layout.cubes_index())
    assert index.crs.to_epsg() == 4326 and len(index) == 2
    shared = index[index["pv_ids"].map(lambda p: "a_farm" in list(p))].iloc[0]
    assert set(shared["pv_ids"]) == {"a_farm", "b_roof", "c_point"}
    assert len(shared["solar_days"]) == 2 and shared["snapshot_id"] == report["snapshot_id"]
    assert shared["valid_fraction"][0] == 1.0  # the 2023 day: a mosaic without gaps
    assert shared["uncertain_pixels"] > 0 and shared["pv_pixels"] > 0
    ds = cubes.open_cube(layout.cubes_dir())
    assert dict(ds.sizes) == {"chip": 2, "time": 4, "band": 4, "y": 128, "x": 128}
    assert ds["image"].dims == ("chip", "time", "band", "y", "x")
    first = report["snapshot_id"]

    again = cubes.run_stage(layout, manifest_of(layout), settings, progress=False)
    assert again["chips_loaded"] == 0 and again["chips_reused"] == 2 and again["snapshot_id"] != first

    # an installation moves: only its chip is loaded again
    prepared = gpd.read_parquet(layout.prepared_parquet())
    moved = prepared["pv_id"] == "d_far"
    prepared.loc[moved, "geometry"] = prepared.loc[moved, "geometry"].translate(0.0005, 0)
    prepared.to_parquet(layout.prepared_parquet())
    third = cubes.run_stage(layout, manifest_of(layout), settings, progress=False)
    assert third["chips_loaded"] == 1 and third["chips_reused"] == 1
    # the first run's chips are still readable at its snapshot
    old = cubes.open_cube(layout.cubes_dir(), snapshot_id=first)
    new = cubes.open_cube(layout.cubes_dir())
    old_ids, new_ids = set(old["chip_id"].values), set(new["chip_id"].values)
    assert len(old_ids) == len(new_ids) == 2 and old_ids != new_ids


def test_bad_assets_skip_only_their_chips(mini, cog_server):
    layout, items, settings = mini
    scenes = Path(items[0]["assets"]["blue"]["href"]).parents[1]
    served = cog_server(scenes)
    far = next(c for c in mini_chips(layout, items, settings) if "d_far" in c.pv_ids)
    # a scene only d_far's chip reads, whose nir COG the server answers with 404
    lonely = make_scene(scenes, "S2A_31UGS_20230901_0_L2A", 32631, far.west_m - 100, far.north_m + 100,
                        "2023-09-01T10:30:00Z", 9)
    (scenes / lonely["id"] / "nir.tif").unlink()
    items = items + [lonely]
    stac.write_items(items, layout.stac_items())
    matches = pd.read_parquet(layout.stac_matches())
    extra = matches[matches["pv_id"] == "d_far"].head(1).assign(item_id=lonely["id"])
    stac.write_table(pd.concat([matches, extra]), stac.MATCH_COLUMNS, layout.stac_matches())
    settings = dataclasses.replace(settings, href_map={str(scenes): served})
    report = cubes.run_stage(layout, manifest_of(layout), settings, progress=False)
    assert report["chips_skipped"]["asset_unreadable"] == 1 and report["chips"] == 1
    skipped = pd.read_parquet(layout.cubes_skipped())
    row = skipped[skipped["reason"] == "asset_unreadable"].iloc[0]
    assert row["pv_id"] == "d_far" and row["chip_id"] == far.chip_id
    assert "404" in row["detail"] or "nir.tif" in row["detail"]


def test_corrupt_asset_and_all_cloud_chip_are_skipped(mini):
    layout, items, settings = mini
    chips = mini_chips(layout, items, settings)
    far = next(c for c in chips if "d_far" in c.pv_ids)
    scenes = Path(items[0]["assets"]["blue"]["href"]).parents[1]
    cloudy = make_scene(scenes, "S2A_31UGT_20230902_0_L2A", 32631, far.west_m - 100, far.north_m + 100,
                        "2023-09-02T10:30:00Z", 8, scl_value=9)
    corrupt = make_scene(scenes, "S2A_31UGU_20230903_0_L2A", 32631, far.west_m - 100, far.north_m + 100,
                         "2023-09-03T10:30:00Z", 7)
    red = Path(corrupt["assets"]["red"]["href"])
    red.write_bytes(red.read_bytes()[:4000])  # header kept, tiles cut off
    matches = pd.read_parquet(layout.stac_matches())
    # d_far now sees only the cloudy scene, a new installation next to it only the corrupt one
    matches = matches[matches["pv_id"] != "d_far"]
    prepared = gpd.read_parquet(layout.prepared_parquet())
    centre = to_lonlat(32631, shapely.box(far.west_m + 300, far.north_m - 1000, far.west_m + 340, far.north_m - 960))
    prepared = pd.concat([prepared, gpd.GeoDataFrame({"pv_id": ["e_new"]}, geometry=[centre], crs="EPSG:4326")])
    prepared = prepared[prepared["pv_id"] != "d_far"]
    prepared.to_parquet(layout.prepared_parquet())
    prepared_far = gpd.GeoDataFrame({"pv_id": ["d_far"]}, geometry=[to_lonlat(32631, shapely.box(
        far.west_m + 900, far.north_m - 400, far.west_m + 960, far.north_m - 340))], crs="EPSG:4326")
    pd.concat([prepared, prepared_far]).to_parquet(layout.prepared_parquet())
    extra = pd.DataFrame({"pv_id": ["d_far", "e_new"], "item_id": [cloudy["id"], corrupt["id"]]})
    for col in ("catalog", "collection", "period", "cloud_cover", "coverage_fraction", "rank", "datetime"):
        extra[col] = matches[col].iloc[0]
    stac.write_table(pd.concat([matches, extra]), stac.MATCH_COLUMNS, layout.stac_matches())
    stac.write_items(items + [cloudy, corrupt], layout.stac_items())
    report = cubes.run_stage(layout, manifest_of(layout), dataclasses.replace(settings, chip_size_px=64), progress=False)
    skipped = pd.read_parquet(layout.cubes_skipped())
    reasons = dict(zip(skipped["pv_id"], skipped["reason"]))
    assert reasons["d_far"] == "no_valid_pixels"
    assert reasons["e_new"] == "asset_unreadable"
    assert reasons["z_none"] == "no_scene"
    assert report["chips"] >= 2  # the other installations' chips proceed


def test_distributed_scheduler_loads_the_same_pixels(mini):
    from distributed import LocalCluster

    layout, items, settings = mini
    chips = mini_chips(layout, items, settings)
    local = load_all(chips, items, settings)
    with LocalCluster(n_workers=1, threads_per_worker=2, host="127.0.0.1", dashboard_address=None,
                      processes=True) as cluster:
        remote = load_all(chips, items, dataclasses.replace(settings, scheduler=cluster.scheduler_address))
    for cid in local:
        assert (local[cid].image == remote[cid].image).all()


# --- baseline and iterator ---------------------------------------------------------------


def test_spatial_split_keeps_touching_chips_together():
    # two touching chips on both sides of an H3 cell border, and far groups
    import h3

    cell = h3.latlng_to_cell(51.0, 0.0, 5)
    boundary = h3.cell_to_boundary(cell)
    lat, lon = boundary[0]
    boxes = [shapely.box(lon - 0.03, lat - 0.01, lon, lat + 0.01), shapely.box(lon, lat - 0.01, lon + 0.03, lat + 0.01)]
    boxes += [shapely.box(k, 10, k + 0.03, 10.02) for k in range(10)]
    index = gpd.GeoDataFrame({"chip_id": [f"c{i}" for i in range(len(boxes))]}, geometry=boxes, crs="EPSG:4326")
    cells = {h3.latlng_to_cell(b.centroid.y, b.centroid.x, 5) for b in boxes[:2]}
    assert len(cells) == 2  # the pair straddles a cell border
    split = cubes.split_groups(index, 5, 0.3, seed=1)
    assert split.loc[0, "group"] == split.loc[1, "group"] and split.loc[0, "split"] == split.loc[1, "split"]
    assert 0 < (split["split"] == "test").sum() < len(split)


def test_baseline_and_iterator_on_the_mini_cube(mini):
    layout, items, settings = mini
    cubes.run_stage(layout, manifest_of(layout), settings, progress=False)
    samples = list(cubes.iter_chips(layout.cubes_dir()))
    assert len(samples) == 2
    s = samples[0]
    assert s.image.shape == (2, 4, 128, 128) and s.image.dtype == np.uint16
    assert s.mask.shape == (128, 128) and s.meta["valid"].shape == (2, 128, 128)
    assert s.meta["transform"][0] == 10.0 and s.meta["epsg"] == 32631
    assert len(s.meta["item_ids"][0]) in (1, 2)
    feats, names = cubes.pixel_features(s.image[0], list(BANDS))
    assert names == ["blue", "green", "red", "nir", "ndvi", "ndwi", "blue_red"] and feats.shape[0] == 7
    assert cubes.scores(8, 2, 2) == pytest.approx({"iou": 8 / 12, "precision": 0.8, "recall": 0.8, "f1": 0.8})


def test_baseline_without_pv_pixels_says_why_instead_of_failing(mini):
    # installations known only as points are uncertain pixels: nothing to train the PV class on
    layout, items, settings = mini
    prepared = gpd.read_parquet(layout.prepared_parquet())
    prepared["geometry"] = prepared.geometry.representative_point()
    prepared.to_parquet(layout.prepared_parquet())
    cubes.run_stage(layout, manifest_of(layout), settings, progress=False)
    report = cubes.run_baseline(layout, cubes.BaselineSettings(test_fraction=0.5), progress=False)
    assert report["trained"] is False and "0 PV" in report["reason"]
    assert json.loads(layout.baseline_report().read_text()) == report
    scores = pd.read_parquet(layout.baseline_scores())
    assert len(scores) == len(gpd.read_parquet(layout.cubes_index())) and scores["iou"].isna().all()


# --- the sample run ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cube_outputs(sample_run):
    layout = Layout(sample_run)
    return layout, gpd.read_parquet(layout.cubes_index()), json.loads(layout.cubes_report().read_text())


@pytest.mark.workflow
def test_sample_run_builds_chips_for_every_installation_with_scenes(cube_outputs):
    layout, index, report = cube_outputs
    matches = pd.read_parquet(layout.stac_matches())
    skipped = pd.read_parquet(layout.cubes_skipped())
    in_chips = set(index["pv_ids"].explode())
    chip_skipped = set(skipped.loc[skipped["reason"] != "no_scene", "pv_id"])
    assert set(matches["pv_id"]) == in_chips | chip_skipped
    assert set(skipped.loc[skipped["reason"] == "no_scene", "pv_id"]) == set(pd.read_parquet(layout.stac_skipped())["pv_id"])
    assert report["chips"] == len(index) > 100
    ds = cubes.open_cube(layout.cubes_dir())
    assert ds.sizes["chip"] == len(index) and ds.sizes["band"] == 6
    assert (index["mean_valid_fraction"] > 0).all()
    imagery = json.loads(layout.sample_imagery_report().read_text())
    assert imagery["scenes"] >= len(set(index["item_ids"].explode())) and imagery["chips"] == report["chips_planned"]


@pytest.mark.workflow
def test_sample_run_masks_match_the_rendered_pv(cube_outputs):
    """The synthetic PV modules are bluish and dark; pixels the label mask marks PV show
    that signature in clear pixels, the background mostly not: mask and imagery align."""
    layout, index, _ = cube_outputs
    chosen = index.sort_values("pv_pixels", ascending=False).head(12)["chip_id"].tolist()
    ratios_pv, ratios_bg = [], []
    for s in cubes.iter_chips(layout.cubes_dir(), chip_ids=chosen):
        feats, names = cubes.pixel_features(np.moveaxis(s.image, 1, 0), s.meta["bands"])
        ratio = feats[names.index("blue_red")]
        pv = (s.mask == cubes.LABEL_PV)[None] & s.meta["valid"]
        ratios_pv.append(ratio[pv])
        ratios_bg.append(ratio[~pv & s.meta["valid"]])
    pv, bg = np.concatenate(ratios_pv), np.concatenate(ratios_bg)
    assert np.median(pv) > 1.0 and (bg > 1.0).mean() < 0.2


@pytest.mark.workflow
def test_sample_run_loaders_agree_on_sample_chips(cube_outputs):
    layout, index, _ = cube_outputs
    items = {it["id"]: it for it in cubes.read_items(layout.stac_items())}
    from pvlake.sample_imagery import sample_catalogs

    root = Path(__file__).resolve().parents[1]
    href_map = {str(folder): str(layout.sample_imagery_dir() / name)
                for name, folder in sample_catalogs(root / "workflow" / "manifests" / "stac_sample.json").items()}
    settings = cubes.CubeSettings(href_map=href_map)
    # a few chips, including one read from a scene of another UTM zone where there is one
    rows = index.head(4)
    chips = [cubes.Chip(r.chip_id, r.epsg, r.west_m, r.north_m, r.size_px, r.resolution_m, tuple(r.pv_ids), r.kind)
             for r in rows.itertuples()]
    installations = gpd.read_parquet(layout.prepared_parquet())
    matches = pd.read_parquet(layout.stac_matches())
    planned = {c.chip_id: c for c in cubes.plan_stage_chips(installations, matches, list(items.values()), settings)}
    chips = [planned[c.chip_id] for c in chips]
    bands = tuple(cubes.DEFAULT_BANDS)
    groups = cubes.group_chips(chips, items, settings.chunk_px)
    a = {r.chip.chip_id: r for r in cubes.load_chips(groups, items, bands, "scl", settings)}
    b = {r.chip.chip_id: r for r in cubes.load_chips(groups, items, bands, "scl",
                                                     dataclasses.replace(settings, loader="stackstac"))}
    ds = cubes.open_cube(layout.cubes_dir())
    ids = [str(c) for c in ds["chip_id"].values]
    for cid in a:
        assert (a[cid].image == b[cid].image).all()
        stored = ds["image"].isel(chip=ids.index(cid)).values[:a[cid].image.shape[0]]
        assert (stored == a[cid].image).all()


@pytest.mark.workflow
def test_sample_run_publishes_chips_baseline_and_chapter(cube_outputs, sample_book):
    from pvlake.lake import connect_lake

    layout, index, report = cube_outputs
    con = connect_lake(layout.data_dir)
    assert con.execute("SELECT count(*) FROM lake.cubes.chips").fetchone()[0] == len(index)
    assert con.execute("SELECT count(DISTINCT snapshot_id) FROM lake.cubes.chips").fetchone()[0] == 1
    baseline = json.loads(layout.baseline_report().read_text())
    assert baseline["trained"] and baseline["test_chips"] > 0 and baseline["train_chips"] > 0
    assert 0 < baseline["overall"]["iou"] <= 1
    scores = pd.read_parquet(layout.baseline_scores())
    split = scores.groupby("group")["split"].nunique()
    assert (split == 1).all()  # a group is on one side only
    chapter = (sample_book / "cubes-cubes.html").read_text()
    assert "Baseline segmentation" in chapter and "synthetic" in chapter.lower() and "Traceback" not in chapter
