"""Tests of the STAC search stage (pvlake.stac) and of the sample catalogue it searches
(pvlake.sample_stac): manifest checks, footprints, grouping, selection and reasons on
hand-made scenes, the static walk (local and served over HTTP, with the disk cache),
asset signing against a local token service, and the sample run's outputs (files, lake
tables, book chapter, planted cases). The API path is in tests/test_stac_api.py."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from pyproj import Geod

from conftest import free_port
from pvlake import stac
from pvlake.lake import connect, connect_lake
from pvlake.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MANIFEST = ROOT / "workflow" / "manifests" / "stac_sample.json"
REAL_MANIFEST = ROOT / "workflow" / "manifests" / "stac.json"
SAMPLE_STAC = ROOT / "data" / "sample" / "stac"
GEOD = Geod(ellps="WGS84")


# --- manifest -----------------------------------------------------------------------------


def test_real_and_sample_manifests_load():
    real = stac.load_stac_manifest(REAL_MANIFEST)
    active = {s.name: s for s in stac.active_catalogs(real)}
    assert active["earth_search_aws"].catalog_type == "api"
    assert active["earth_search_aws"].catalog_uri == "https://earth-search.aws.element84.com/v1"
    assert active["earth_search_aws"].collections == ("sentinel-2-l2a",)
    assert active["planetary_computer"].url_signing == "planetary_computer"
    assert active["maxar_open_data"].catalog_type == "static" and active["maxar_open_data"].is_url
    assert "satellogic_earthview" in real and "satellogic_earthview" not in active  # skip: true
    (sample,) = stac.active_catalogs(stac.load_stac_manifest(SAMPLE_MANIFEST))
    assert Path(sample.catalog_uri) == SAMPLE_STAC / "catalog.json"
    assert sample.filter_json()["op"] == "and"
    assert sample.datetime_interval() == "2023-01-01T00:00:00Z/2024-12-31T23:59:59Z"


@pytest.mark.parametrize("change, reason", [
    ({"catalog_type": "ftp"}, "catalog_type must be one of api, static"),
    ({"catalog_uri": None}, "catalog_uri is missing"),
    ({"catalog_type": "api", "catalog_uri": "catalog.json"}, "an api catalogue needs an http(s) catalog_uri"),
    ({"include_collections": []}, "include_collections must list"),
    ({"search_parameters": {"max_cloud_cover": 20}}, "search_parameters lacks date_range, buffer_meters"),
    ({"search_parameters": {"max_cloud_cover": 20, "date_range": "2024-01-01/2020-01-01", "buffer_meters": 1,
                            "max_items_per_location": 1}}, "date_range ends before it starts"),
    ({"search_parameters": {"max_cloud_cover": 120, "date_range": "2020-01-01/2021-01-01", "buffer_meters": 1,
                            "max_items_per_location": 1}}, "max_cloud_cover must be a percentage"),
    ({"cql_filter": "eo:cloud_cover <<< 3"}, "cql_filter is not CQL2 text"),
    ({"url_signing": "aws"}, "url_signing must be one of planetary_computer"),
])
def test_a_bad_entry_fails_with_one_clear_error(tmp_path, change, reason):
    entry = json.loads(SAMPLE_MANIFEST.read_text())["sample_sentinel_2"]
    entry.update(change)
    path = tmp_path / "stac.json"
    path.write_text(json.dumps({"broken": entry}))
    with pytest.raises(stac.StacError) as err:
        stac.load_stac_manifest(path)
    assert "'broken'" in str(err.value) and str(path) in str(err.value) and reason in str(err.value)


def test_a_missing_or_unparsable_manifest_is_named(tmp_path):
    with pytest.raises(stac.StacError, match="does not exist"):
        stac.load_stac_manifest(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(stac.StacError, match="not valid JSON"):
        stac.load_stac_manifest(tmp_path / "bad.json")


# --- footprints and groups ----------------------------------------------------------------


@pytest.mark.parametrize("lat", [0.0, 36.0, 60.0, -45.0])
def test_footprints_are_grown_by_metres(lat):
    footprint = stac.buffered_footprints(np.array([shapely.Point(10.0, lat)]), 1000.0, quad_segs=32)[0]
    ring = shapely.get_coordinates(footprint.exterior)
    _, _, dist_m = GEOD.inv(np.full(len(ring), 10.0), np.full(len(ring), lat), ring[:, 0], ring[:, 1])
    assert np.allclose(dist_m, 1000.0, rtol=5e-3)
    area_m2 = abs(GEOD.geometry_area_perimeter(footprint)[0])
    assert area_m2 == pytest.approx(np.pi * 1000.0**2, rel=1e-2)


def test_footprints_across_the_antimeridian_are_split():
    footprint = stac.buffered_footprints(np.array([shapely.Point(179.995, 10.0)]), 2000.0)[0]
    assert footprint.geom_type == "MultiPolygon" and len(footprint.geoms) == 2
    west, _, east, _ = footprint.bounds
    assert west == -180.0 and east == 180.0
    area_m2 = sum(abs(GEOD.geometry_area_perimeter(p)[0]) for p in footprint.geoms)
    assert area_m2 == pytest.approx(np.pi * 2000.0**2, rel=2e-2)


def test_installations_close_together_share_one_search():
    rng = np.random.default_rng(3)
    lon = np.r_[rng.uniform(-0.1, 0.1, 500) + 8.0, rng.uniform(-0.1, 0.1, 500) + 20.0]
    lat = np.r_[rng.uniform(-0.1, 0.1, 500) + 48.0, rng.uniform(-0.1, 0.1, 500) - 30.0]
    geoms = shapely.points(lon, lat)
    footprints = stac.buffered_footprints(geoms, 500.0)
    groups = stac.group_searches(footprints, stac.group_cells(geoms, 4))
    assert len(groups) <= 8
    assert sorted(np.concatenate([g.members for g in groups])) == list(range(1000))
    for g in groups:  # every footprint lies inside its group's search box
        assert shapely.covers(shapely.box(*g.bbox), footprints[g.members]).all()
    # one more installation inside a box: same boxes, so the same requests (cache keys)
    inside = shapely.points([8.0], [48.0])
    more = stac.group_searches(np.r_[footprints, stac.buffered_footprints(inside, 500.0)],
                               stac.group_cells(np.r_[geoms, inside], 4))
    assert [g.bbox for g in more] == [g.bbox for g in groups]


@pytest.mark.parametrize("lons", [[179.999, -179.999], [179.95, -179.95]])  # footprints cut at 180 or not
def test_a_group_across_the_antimeridian_searches_two_boxes(lons):
    geoms = shapely.points(lons, [-17.0, -17.0])
    footprints = stac.buffered_footprints(geoms, 300.0)
    cells = np.array(["same", "same"], dtype=object)
    boxes = sorted(g.bbox for g in stac.group_searches(footprints, cells))
    assert len(boxes) == 2
    assert boxes[0][0] >= -180.0 and boxes[0][2] < -179.9 and boxes[1][0] > 179.9 and boxes[1][2] <= 180.0
    for footprint in footprints:
        assert any(shapely.covers(shapely.box(*b), p) for p in shapely.get_parts(footprint) for b in boxes)


def test_no_installation_means_no_search():
    result = stac.search_catalog(sample_spec(), np.empty(0, dtype=object), stac.HttpSettings(), 4)
    assert result.groups == 0 and result.stats.searches == 0 and result.matches.empty and result.unmatched.empty


# --- selection and reasons on hand-made scenes --------------------------------------------


def scenes_frame(rows):
    items = [{
        "id": r[0], "collection": r[4] if len(r) > 4 else "c", "geometry": shapely.geometry.mapping(r[1]),
        "properties": {"datetime": r[2], "eo:cloud_cover": r[3]},
    } for r in rows]
    return stac.ItemTable(items).frame


BIG = shapely.box(-1, -1, 1, 1)
HALF = shapely.box(0, -1, 1, 1)


def test_selection_keeps_the_least_cloudy_full_covers_per_period():
    footprints = np.array([shapely.box(-0.1, -0.1, 0.1, 0.1)])
    scenes = scenes_frame([
        ("A", BIG, "2023-03-01T10:00:00Z", 10.0),
        ("B", BIG, "2023-06-01T10:00:00Z", 10.0),   # ties with A: the more recent wins
        ("C", BIG, "2023-01-01T10:00:00Z", 5.0),
        ("D", HALF, "2023-02-01T10:00:00Z", 0.0),   # clearest, but covers only half
        ("E", BIG, "2024-05-01T10:00:00Z", 20.0),
        ("F", BIG, "2024-05-02T10:00:00Z", 1.0, "other"),  # another collection: its own ranking
    ])
    cov = stac.coverage(footprints, scenes["geometry"].to_numpy())
    picked = stac.select_scenes(cov, scenes, max_items=2, period="year")
    assert list(zip(picked["item_id"], picked["period"], picked["rank"])) == [
        ("C", "2023", 1), ("B", "2023", 2), ("E", "2024", 1), ("F", "2024", 1)]
    assert (picked["coverage_fraction"] == 1.0).all()
    whole = stac.select_scenes(cov, scenes, max_items=10, period="all")
    assert list(whole.loc[whole["collection"] == "c", "item_id"]) == ["C", "B", "A", "E"]


def test_every_installation_without_scene_gets_a_reason():
    footprints = np.array([shapely.box(x - 0.05, -0.05, x + 0.05, 0.05) for x in (0.5, 0.0, 10.0, 0.5)])
    qualifying = scenes_frame([("half", shapely.box(0.0, -1, 2, 1), "2023-01-01T00:00:00Z", 5.0)])
    cloudy = scenes_frame([("cloudy", shapely.box(0.2, -1, 0.8, 1), "2023-01-01T00:00:00Z", 90.0)])
    q_cov = stac.coverage(footprints, qualifying["geometry"].to_numpy())
    usable = np.array([False, False, False, True])
    reasons = stac.skip_reasons(4, usable, q_cov.restricted(np.flatnonzero(~usable)),
                                stac.coverage(footprints, cloudy["geometry"].to_numpy()).restricted(np.flatnonzero(~usable)))
    # 0: a cloudy scene covers it (the qualifying one covers it too, but it is marked unusable here)
    assert list(reasons["reason"]) == ["too_cloudy", "partial_cover", "no_scene"]
    assert list(reasons["scenes_reaching"]) == [2, 1, 0]
    assert reasons["best_coverage_fraction"].iloc[1] == pytest.approx(0.5)


# --- static catalogues --------------------------------------------------------------------


def sample_spec():
    return stac.load_stac_manifest(SAMPLE_MANIFEST)["sample_sentinel_2"]


def spec_at(tmp_path: Path, name: str, uri: str) -> stac.CatalogSpec:
    """The sample's entry, renamed and pointed at ``uri``."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({name: {**sample_spec().entry, "catalog_uri": uri}}))
    return stac.load_stac_manifest(path)[name]


def test_the_static_walk_applies_the_search_filters():
    stats = stac.SearchStats()
    catalog = stac.StaticCatalog(sample_spec(), stac.HttpSettings(), stac.DiskCache(None), stats)
    assert len(catalog.items) == len(list(SAMPLE_STAC.glob("sentinel-2-l2a/*/*.json")))
    clouds = catalog.frame["cloud_cover"].to_numpy()
    assert (catalog.qualifies == (clouds < 30)).all()
    item = catalog.items[0]
    assert Path(item["assets"]["red"]["href"]).parent == SAMPLE_STAC / "sentinel-2-l2a" / item["id"]
    found = catalog.search((-1.0, 51.0, 0.5, 52.5))
    assert found and all(it["properties"]["eo:cloud_cover"] < 30 for it in found)
    assert all(shapely.intersects(shapely.geometry.shape(it["geometry"]), shapely.box(-1.0, 51.0, 0.5, 52.5))
               for it in found)
    assert stats.searches == 1 and stats.http_requests == 0


def test_sample_items_are_sentinel_2_like():
    item = json.loads(next(SAMPLE_STAC.glob("sentinel-2-l2a/*/*.json")).read_text())
    props = item["properties"]
    assert props["proj:code"].startswith("EPSG:32") and "proj:epsg" not in props
    assert props["proj:shape"] == [10980, 10980] and props["proj:transform"][0] == 10.0
    assert set(item["assets"]) == {"blue", "green", "red", "nir", "swir16", "swir22", "scl"}
    assert item["assets"]["nir"]["eo:bands"][0]["common_name"] == "nir"
    assert item["assets"]["red"]["raster:bands"][0]["data_type"] == "uint16"
    assert item["assets"]["red"]["type"].endswith("profile=cloud-optimized")


@pytest.fixture
def served_catalogue():
    """The sample catalogue served over HTTP on 127.0.0.1 (a static catalogue on a web server)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(SAMPLE_STAC)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/catalog.json"
    server.shutdown()
    server.server_close()


def test_a_remote_static_catalogue_is_walked_once(served_catalogue, tmp_path):
    spec = spec_at(tmp_path, "served", served_catalogue)
    cache = stac.DiskCache(tmp_path / "cache")
    first = stac.SearchStats()
    walked = stac.StaticCatalog(spec, stac.HttpSettings(workers=4), cache, first)
    documents = 2 + len(walked.items)  # catalog.json, collection.json, the items
    assert first.http_requests == documents and first.cache_hits == 0
    assert walked.items[0]["assets"]["red"]["href"].startswith(served_catalogue.rsplit("/", 1)[0])
    again = stac.SearchStats()
    rewalked = stac.StaticCatalog(spec, stac.HttpSettings(workers=4), cache, again)
    assert again.http_requests == 0 and again.cache_hits == documents
    assert rewalked.items == walked.items


def test_an_unreachable_static_catalogue_is_a_clear_error(tmp_path):
    spec = spec_at(tmp_path, "gone", f"http://127.0.0.1:{free_port()}/catalog.json")
    with pytest.raises(stac.StacError) as err:
        stac.StaticCatalog(spec, stac.HttpSettings(attempts=1, connect_timeout_s=2), stac.DiskCache(None), stac.SearchStats())
    assert "'gone'" in str(err.value) and "unreachable" in str(err.value)


# --- signing asset URLs (Planetary Computer) -----------------------------------------------


@pytest.fixture
def sas_service(monkeypatch):
    """A local stand-in for Planetary Computer's SAS token API (PC_SDK_SAS_URL)."""
    import planetary_computer.settings

    asked = []

    class Tokens(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            asked.append(self.path)
            body = json.dumps({"msft:expiry": "2099-01-01T00:00:00Z", "token": "sv=2099&sig=local"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tokens)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PC_SDK_SAS_URL", f"http://127.0.0.1:{server.server_address[1]}/api/sas/v1/token")
    planetary_computer.settings.Settings.get.cache_clear()
    yield asked
    server.shutdown()
    server.server_close()
    planetary_computer.settings.Settings.get.cache_clear()


def test_planetary_computer_assets_are_signed(sas_service):
    pc = stac.load_stac_manifest(REAL_MANIFEST)["planetary_computer"]
    href = "https://hlssa.blob.core.windows.net/lp-hls/S30/HLS.S30.T31UCU.2023001T110431.v2.0.B04.tif"
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "x", "geometry": shapely.geometry.mapping(BIG),
            "bbox": [-1, -1, 1, 1], "properties": {"datetime": "2023-01-01T00:00:00Z"}, "links": [],
            "assets": {"red": {"href": href}}}
    (signed,) = stac.sign_items([item], pc)
    assert signed["assets"]["red"]["href"] == href + "?sv=2099&sig=local"
    assert sas_service == ["/api/sas/v1/token/hlssa/lp-hls"]
    earth_search = stac.load_stac_manifest(REAL_MANIFEST)["earth_search_aws"]
    assert stac.sign_items([item], earth_search) == [item]


# --- the sample run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_outputs(sample_run):
    layout = Layout(sample_run)
    prepared = gpd.read_parquet(layout.prepared_parquet())
    return layout, prepared, pd.read_parquet(layout.stac_matches()), pd.read_parquet(layout.stac_skipped())


@pytest.mark.workflow
def test_sample_run_writes_the_catalogue_as_stac_geoparquet(run_outputs):
    layout, _, matches, _ = run_outputs
    from stac_geoparquet.arrow import stac_table_to_items

    table = pq.read_table(layout.stac_items())
    meta = json.loads(table.schema.metadata[b"geo"])
    assert meta["primary_column"] == "geometry" and b"stac-geoparquet" in table.schema.metadata
    items = list(stac_table_to_items(table))
    assert len({(it["collection"], it["id"]) for it in items}) == len(items) > 100
    assert [it["id"] for it in items] == sorted(it["id"] for it in items)
    assert set(matches["item_id"]) <= {it["id"] for it in items}
    # DuckDB (offline spatial) and rustac (its own DuckDB, offline) read the same file
    con = connect()
    rows = con.execute("SELECT count(*), count(DISTINCT id) FROM read_parquet(?) WHERE ST_IsValid(geometry)",
                       [str(layout.stac_items())]).fetchone()
    assert rows == (len(items), len(items))
    client = stac.rustac_client(layout.rustac_extensions())
    clear = client.search(str(layout.stac_items()), filter={"op": "<", "args": [{"property": "eo:cloud_cover"}, 10]})
    assert len(clear) == sum(it["properties"]["eo:cloud_cover"] < 10 for it in items) > 0


@pytest.mark.workflow
def test_sample_run_selection_accounts_for_every_installation(run_outputs):
    layout, prepared, matches, skipped = run_outputs
    assert list(matches.columns) == list(stac.MATCH_COLUMNS)
    assert set(matches["pv_id"]).isdisjoint(skipped["pv_id"])
    assert set(matches["pv_id"]) | set(skipped["pv_id"]) == set(prepared["pv_id"])
    per = matches.groupby(["pv_id", "catalog", "collection", "period"])
    assert (per["rank"].max() == per.size()).all() and per.size().max() == 2  # ranks 1..n, n <= max_items
    assert (matches["cloud_cover"] < 30).all() and set(matches["period"]) == {"2023", "2024"}
    ordered = matches.sort_values(["pv_id", "period", "rank"])
    assert (ordered.groupby(["pv_id", "period"])["cloud_cover"].diff().dropna() >= 0).all()
    report = json.loads(layout.stac_report().read_text())
    assert report["installations"] == len(prepared) and report["matches"] == len(matches)
    assert report["searches"] < len(prepared) / 5


def nearest(prepared: gpd.GeoDataFrame, lon: float, lat: float, within_deg: float) -> gpd.GeoDataFrame:
    d = np.hypot(prepared["centroid_lon"] - lon, prepared["centroid_lat"] - lat)
    return prepared[d < within_deg]


@pytest.mark.workflow
def test_sample_run_finds_the_planted_cases(run_outputs):
    _, prepared, matches, skipped = run_outputs
    from pvlake.sample import PLACES

    planted = json.loads((SAMPLE_STAC / "planted.json").read_text())
    reason = skipped.set_index("pv_id")["reason"]
    mildura = nearest(prepared, PLACES["Mildura"].lon, PLACES["Mildura"].lat, 1.0)
    upington = nearest(prepared, PLACES["Upington"].lon, PLACES["Upington"].lat, 1.0)
    assert len(mildura) and (reason.reindex(mildura["pv_id"]) == "no_scene").all()
    assert len(upington) and (reason.reindex(upington["pv_id"]) == "too_cloudy").all()
    lon, lat = planted["partial_cover"]["farm_centroid"]
    farm = nearest(prepared, lon, lat, 1e-4)
    assert len(farm) == 1 and reason[farm["pv_id"].iloc[0]] == "partial_cover"
    tie = planted["tie"]
    kept = matches[matches["item_id"] == tie["kept"]]
    dropped = matches[matches["item_id"] == tie["dropped"]]
    assert set(dropped["pv_id"]) < set(kept["pv_id"])  # where only the tile's scenes cover it, the newer one wins


@pytest.mark.workflow
def test_sample_run_publishes_the_stac_tables_and_chapter(run_outputs, sample_book):
    layout, _, matches, skipped = run_outputs
    con = connect_lake(layout.data_dir)
    items = pq.read_metadata(layout.stac_items()).num_rows
    assert con.execute("SELECT count(*) FROM lake.stac.items").fetchone()[0] == items
    assert con.execute("SELECT count(*) FROM lake.stac.matches").fetchone()[0] == len(matches)
    assert con.execute("SELECT count(*) FROM lake.stac.skipped").fetchone()[0] == len(skipped)
    joined = con.execute("SELECT count(*) FROM lake.stac.matches m JOIN lake.stac.items i "
                         "ON i.id = m.item_id AND i.collection = m.collection").fetchone()[0]
    assert joined == len(matches)
    comment = con.execute("SELECT comment FROM duckdb_columns() WHERE database_name = 'lake' "
                          "AND schema_name = 'stac' AND table_name = 'items' AND column_name = 'geometry'").fetchone()[0]
    assert comment.startswith("EPSG:4326")
    chapter = (sample_book / "stac-stac.html").read_text()
    assert "STAC search" in chapter and "searches" in chapter and "rustac" in chapter
    assert "Traceback" not in chapter
