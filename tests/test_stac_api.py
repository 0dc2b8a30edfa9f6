"""The STAC stage's API path against a real local STAC API (pgstac + stac-fastapi-pgstac,
tests/conftest.py ``stac_api``), with faults injected by a proxy (tests/stac_proxy.py):
the same selection as the static path, a 500 then success, a 429 with Retry-After, a
stalled server, paging, an empty answer, and the disk cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from pvlake import sample, stac
from pvlake.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MANIFEST = ROOT / "workflow" / "manifests" / "stac_sample.json"
SEARCH = "/search"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The sample's installations (every selected feature) as a prepared-like GeoParquet."""
    geoms = np.array(sample.selected_geometries(sample.build_sample()), dtype=object)
    frame = gpd.GeoDataFrame({"pv_id": [f"pv{i:04d}" for i in range(len(geoms))]}, geometry=geoms, crs="EPSG:4326")
    centroids = shapely.centroid(geoms)
    frame["centroid_lon"], frame["centroid_lat"] = shapely.get_x(centroids), shapely.get_y(centroids)
    path = tmp_path_factory.mktemp("stac_prepared") / "pv_installations.parquet"
    frame.to_parquet(path)
    return path


def api_manifest(tmp_path: Path, url: str, **changes) -> Path:
    """The sample's manifest entry, pointed at a STAC API instead of the static files."""
    entry = json.loads(SAMPLE_MANIFEST.read_text())["sample_sentinel_2"]
    entry.update(catalog_type="api", catalog_uri=url, **changes)
    path = tmp_path / "stac_api.json"
    path.write_text(json.dumps({"sample_sentinel_2": entry}))
    return path


def settings(**http) -> stac.StageSettings:
    base = {"connect_timeout_s": 5, "read_timeout_s": 10, "attempts": 3, "page_size": 500, "workers": 2}
    return stac.StageSettings(h3_resolution=4, http=stac.HttpSettings(**{**base, **http}))


def run(prepared: Path, manifest: Path, data_dir: Path, **http) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    layout = Layout(data_dir)
    report = stac.run_stage(prepared, manifest, layout, settings(**http), progress=False)
    return report, pd.read_parquet(layout.stac_matches()), pd.read_parquet(layout.stac_skipped())


@pytest.fixture(scope="module")
def static_run(prepared, tmp_path_factory):
    return run(prepared, SAMPLE_MANIFEST, tmp_path_factory.mktemp("static"))


def test_api_and_static_paths_select_the_same_scenes(prepared, stac_api, static_run, tmp_path):
    report, matches, skipped = run(prepared, api_manifest(tmp_path, stac_api), tmp_path / "api")
    s_report, s_matches, s_skipped = static_run
    assert len(matches) > 1000
    pd.testing.assert_frame_equal(matches, s_matches)
    pd.testing.assert_frame_equal(skipped, s_skipped)
    assert set(skipped["reason"]) == set(stac.REASONS)
    assert report["items"] == s_report["items"]
    assert report["searches"] == s_report["searches"]
    assert report["http_requests"] >= report["searches"]
    # the catalogue written from the API's answers holds the same items
    api_items = pd.read_parquet(tmp_path / "api" / "stac" / "items.parquet", columns=["id", "eo:cloud_cover"])
    assert sorted(api_items["id"]) == sorted(pd.read_parquet(Layout(tmp_path / "api").stac_items())["id"])


def test_a_rerun_answers_from_the_cache(prepared, stac_proxy, tmp_path):
    manifest = api_manifest(tmp_path, stac_proxy.url)
    first, matches, _ = run(prepared, manifest, tmp_path / "run")
    searched = stac_proxy.count(SEARCH)
    assert searched >= first["searches"] and first["cache_hits"] == 0
    second, matches_again, _ = run(prepared, manifest, tmp_path / "run")
    assert stac_proxy.count(SEARCH) == searched  # not one search request more
    assert second["cache_hits"] == second["searches"]
    pd.testing.assert_frame_equal(matches, matches_again)


def test_a_500_is_retried(prepared, stac_proxy, static_run, tmp_path):
    stac_proxy.inject(SEARCH, ("status", 500))
    _, matches, _ = run(prepared, api_manifest(tmp_path, stac_proxy.url), tmp_path / "run", workers=1)
    pd.testing.assert_frame_equal(matches, static_run[1])
    assert stac_proxy.faults[SEARCH] == type(stac_proxy.faults[SEARCH])()  # the fault was used


def test_a_429_waits_for_retry_after(prepared, stac_proxy, static_run, tmp_path):
    stac_proxy.inject(SEARCH, ("status", 429, 2))
    start = time.monotonic()
    _, matches, _ = run(prepared, api_manifest(tmp_path, stac_proxy.url), tmp_path / "run", workers=1)
    times = [t for _, path, t in stac_proxy.requests if path.startswith(SEARCH)]
    assert times[1] - times[0] >= 1.9  # the retry came after Retry-After
    assert time.monotonic() - start >= 2
    pd.testing.assert_frame_equal(matches, static_run[1])


def test_a_stalled_server_times_out_with_a_clear_error(prepared, stac_proxy, tmp_path):
    stac_proxy.inject(SEARCH, *[("stall", 3)] * 2)
    with pytest.raises(stac.StacError) as err:
        run(prepared, api_manifest(tmp_path, stac_proxy.url), tmp_path / "run", read_timeout_s=1, attempts=2, workers=1)
    message = str(err.value)
    assert "sample_sentinel_2" in message and stac_proxy.url in message and "timed out" in message


def test_paging_is_followed_to_the_end(prepared, stac_proxy, static_run, tmp_path):
    report, matches, _ = run(prepared, api_manifest(tmp_path, stac_proxy.url), tmp_path / "run", page_size=4)
    # 4 items a page: most searches (6-30 items) take several pages
    assert stac_proxy.count(SEARCH) >= 1.5 * report["searches"]
    pd.testing.assert_frame_equal(matches, static_run[1])
    assert report["items"] == static_run[0]["items"]


def test_an_empty_answer_leaves_installations_without_scene(prepared, stac_proxy, tmp_path):
    stac_proxy.inject(SEARCH, *[("empty",)] * 1000)
    report, matches, skipped = run(prepared, api_manifest(tmp_path, stac_proxy.url), tmp_path / "run")
    assert report["items"] == 0 and matches.empty
    assert len(skipped) == report["installations"] and set(skipped["reason"]) == {"no_scene"}
    assert pd.read_parquet(tmp_path / "run" / "stac" / "items.parquet").empty


def test_an_api_without_the_filter_extension_gets_a_query(prepared, stac_proxy, tmp_path):
    stac_proxy.hide_conformance = ("filter",)
    manifest = api_manifest(tmp_path, stac_proxy.url, cql_filter=None)
    _, matches, skipped = run(prepared, manifest, tmp_path / "api")
    static = tmp_path / "static.json"
    entry = json.loads(SAMPLE_MANIFEST.read_text())["sample_sentinel_2"]
    entry.update(cql_filter=None, catalog_uri=str(ROOT / "data" / "sample" / "stac" / "catalog.json"))
    static.write_text(json.dumps({"sample_sentinel_2": entry}))
    _, s_matches, s_skipped = run(prepared, static, tmp_path / "static")
    pd.testing.assert_frame_equal(matches, s_matches)
    pd.testing.assert_frame_equal(skipped, s_skipped)
    # a cql_filter cannot be honoured there: refused, not dropped
    with pytest.raises(stac.StacError, match="does not support the Filter extension"):
        run(prepared, api_manifest(tmp_path, stac_proxy.url), tmp_path / "refused")
