"""Repository clients: identifiers parsed offline, APIs spoken to a real local server."""

import hashlib

import pytest

from pvlake.sources.http import RepositoryError, fetch, http_session
from pvlake.sources.repositories import (
    Endpoints,
    figshare_article,
    get_figshare_article,
    get_github_files,
    get_record,
    get_sciencebase_item,
    get_zenodo_record,
    github_location,
    read_zenodo_record,
    repository_of,
    zenodo_record_id,
)

LABELS = b'{"type": "FeatureCollection", "features": []}'


@pytest.mark.parametrize("doi", ["10.5281/zenodo.14827819", "https://doi.org/10.5281/zenodo.14827819",
                                 "doi:10.5281/ZENODO.14827819", "https://zenodo.org/records/14827819"])
def test_zenodo_identifiers(doi):
    assert zenodo_record_id(doi) == "14827819"


def test_figshare_identifiers():
    assert figshare_article("10.6084/m9.figshare.11310269.v6") == ("11310269", "6")
    assert figshare_article("https://doi.org/10.6084/m9.figshare.3385780") == ("3385780", None)
    with pytest.raises(ValueError, match="not a Figshare article DOI"):
        figshare_article("10.6084/m9.figshare.c.3255643")  # a collection


def test_github_locations():
    loc = github_location("https://github.com/yzyly1992/GloSoFarID/tree/main/data_coordinates")
    assert (loc.owner, loc.repo, loc.ref, loc.path, loc.is_file) == ("yzyly1992", "GloSoFarID", "main", "data_coordinates", False)
    loc = github_location("https://github.com/qingfengxitu/ChinaPV")
    assert (loc.ref, loc.path, loc.is_file) == (None, "", False)
    loc = github_location("https://raw.githubusercontent.com/microsoft/solar-farms-mapping/refs/heads/main/data/x.geojson")
    assert (loc.repo, loc.ref, loc.path, loc.is_file) == ("solar-farms-mapping", "main", "data/x.geojson", True)
    with pytest.raises(ValueError, match="not a GitHub"):
        github_location("https://gitlab.com/a/b")


def test_a_doi_decides_the_repository():
    assert repository_of("sciencebase", "10.6084/m9.figshare.3385780.v4") == "figshare"
    assert repository_of("figshare", "https://doi.org/10.5281/zenodo.1") == "zenodo"
    assert repository_of("github", "https://github.com/a/b") == "github"


def test_zenodo_record_in_its_invenio_form():
    record = read_zenodo_record({
        "id": 7, "metadata": {"title": "t"},
        "files": {"enabled": True, "entries": {"a b.geojson": {"key": "a b.geojson", "size": 3, "checksum": "md5:abc"}}},
    }, "https://zenodo.org/api")
    (f,) = record.files
    assert f.url == "https://zenodo.org/api/records/7/files/a%20b.geojson/content"
    assert (f.size_bytes, f.checksum, record.title) == (3, "md5:abc", "t")


def test_zenodo_record(repository_server):
    repository_server.zenodo(4059881, {"ukpvgeo_geometries.geojson": LABELS, "ukpvgeo_points.csv": b"a,b\n"})
    record = get_zenodo_record("10.5281/zenodo.4059881", http_session(), repository_server.endpoints().zenodo)
    assert [f.name for f in record.files] == ["ukpvgeo_geometries.geojson", "ukpvgeo_points.csv"]
    assert record.files[0].checksum == f"md5:{hashlib.md5(LABELS).hexdigest()}"
    assert record.version == "1.0" and not record.named_files
    dest = repository_server.root / "got.geojson"
    fetch(http_session(), record.files[0].url, dest, record.files[0].size_bytes, record.files[0].checksum)
    assert dest.read_bytes() == LABELS


def test_figshare_token_goes_to_the_api_not_to_storage(repository_server):
    server = repository_server
    server.figshare(3385780, 4, {"SolarArrayPolygons.geojson": LABELS})
    endpoints = server.endpoints()
    session = http_session(endpoints.auth_headers({"FIGSHARE_TOKEN": "fig-secret"}))
    record = get_figshare_article("10.6084/m9.figshare.3385780.v4", session, endpoints.figshare)
    assert record.version == "4" and record.url.endswith("/articles/3385780/versions/4")
    (f,) = record.files
    fetch(session, f.url, server.root / "got.geojson", f.size_bytes, f.checksum)
    assert server.requests_to("/figshare/v2/articles/3385780/versions/4")[0].headers["Authorization"] == "token fig-secret"
    (storage,) = server.requests_to("/storage/3385780/SolarArrayPolygons.geojson")
    assert "Authorization" not in storage.headers


def test_sciencebase_item_behind_a_doi(repository_server):
    item_id = "5e9f1a2b3c4d5e6f7a8b9c0d"
    repository_server.sciencebase(item_id, {"uspvdb.geojson": LABELS}, doi="10.5066/P9TEST")
    endpoints = repository_server.endpoints()
    record = get_sciencebase_item("https://doi.org/10.5066/P9TEST", http_session(), endpoints.sciencebase, endpoints.doi)
    (f,) = record.files
    assert (f.name, f.size_bytes, f.checksum) == ("uspvdb.geojson", len(LABELS), f"md5:{hashlib.md5(LABELS).hexdigest()}")
    assert record.version == "2024-01-02T03:04:05Z"
    assert repository_server.requests_to(f"/sciencebase/catalog/item/{item_id}")[0].query == "format=json"


def test_github_tree_is_pinned_to_a_commit(repository_server, monkeypatch):
    server = repository_server
    files = {"data_coordinates/2021_global.json": b"[[1, 2]]", "data_coordinates/2022_us.json": b"[[3, 4]]",
             "README.md": b"# readme", "dataset_converter.py": b"print()"}
    commit = server.github("yzyly1992", "GloSoFarID", files)
    endpoints = server.endpoints()
    session = http_session(endpoints.auth_headers({"GITHUB_TOKEN": "gh-secret"}))
    record = get_github_files("https://github.com/yzyly1992/GloSoFarID/tree/main/data_coordinates",
                              session, endpoints.github_api, endpoints.github_raw)
    assert record.version == commit
    assert [f.name for f in record.files] == ["2021_global.json", "2022_us.json"]
    f = record.files[1]
    assert f.url == f"{endpoints.github_raw}/yzyly1992/GloSoFarID/{commit}/data_coordinates/2022_us.json"
    fetch(session, f.url, server.root / "got.json", f.size_bytes, f.checksum)  # git blob SHA-1 checked
    assert all(r.headers.get("Authorization") == "Bearer gh-secret" for r in server.seen)

    whole = get_github_files("https://github.com/yzyly1992/GloSoFarID", session, endpoints.github_api, endpoints.github_raw)
    assert sorted(f.name for f in whole.files) == sorted(files)  # default branch looked up
    one = get_github_files("https://raw.githubusercontent.com/yzyly1992/GloSoFarID/refs/heads/main/README.md",
                           session, endpoints.github_api, endpoints.github_raw)
    assert [f.name for f in one.files] == ["README.md"] and one.named_files


def test_github_failures_are_explained(repository_server):
    server = repository_server
    commit = server.github("o", "r", {"a.json": b"[]"})
    endpoints = server.endpoints()
    with pytest.raises(RepositoryError, match=f"no file at missing in commit {commit}"):
        get_github_files("https://github.com/o/r/tree/main/missing", http_session(), endpoints.github_api, endpoints.github_raw)
    server.json[f"/github-api/repos/o/r/git/trees/{commit}"]["truncated"] = True
    with pytest.raises(RepositoryError, match="too large for one listing"):
        get_github_files("https://github.com/o/r", http_session(), endpoints.github_api, endpoints.github_raw)
    with pytest.raises(RepositoryError, match="HTTP 404") as info:
        get_github_files("https://github.com/o/gone", http_session(), endpoints.github_api, endpoints.github_raw)
    assert info.value.where.endswith("/github-api/repos/o/gone")


def test_a_plain_url_is_one_named_file_without_a_request(repository_server):
    url = "https://eerscmap.usgs.gov/uspvdb/assets/data/uspvdbGeoJSON.zip"
    record = get_record("direct_download", url, http_session(), repository_server.endpoints())
    assert [(f.name, f.url) for f in record.files] == [("uspvdbGeoJSON.zip", url)] and record.named_files
    assert repository_server.seen == []


def test_default_endpoints_are_the_real_services():
    endpoints = Endpoints()
    assert endpoints.zenodo == "https://zenodo.org/api"
    assert endpoints.auth_headers({"GITHUB_TOKEN": "t"}) == {
        "api.github.com": "Bearer t", "raw.githubusercontent.com": "Bearer t"}
    assert endpoints.auth_headers({}) == {}
