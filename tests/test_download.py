"""The download stage against a real local server: selection, cache, safe layout, provenance."""

import hashlib
import io
import json
import re
import tarfile
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

from conftest import snakemake
from pvlake.download import (
    DownloadSettings,
    download_dataset,
    download_fingerprint,
    downloads_table,
    files_table,
    select_downloads,
    select_members,
)
from pvlake.errors import DatasetError
from pvlake.harmonize import harmonize_dataset
from pvlake.layout import Layout
from pvlake.manifest import active_datasets, load_manifest, parse_entry
from pvlake.sources import find_label_files
from pvlake.sources.repositories import (
    Record,
    RemoteFile,
    figshare_article,
    get_url_file,
    github_location,
    repository_of,
    zenodo_record_id,
)

UPSTREAM = Path(__file__).resolve().parents[1] / "workflow" / "manifests" / "upstream.json"


def spec(name="ds", **entry):
    return parse_entry(name, entry, Path("."))


def record(*names, named_files=False):
    files = tuple(RemoteFile(n, f"https://repo.example/{n}") for n in names)
    return Record("src", "https://repo.example/api/record", None, None, files, named_files)


def polygons(n: int, lon: float) -> bytes:
    """A GeoJSON FeatureCollection of n small squares."""
    feats = [{"type": "Feature", "properties": {"pid": i}, "geometry": {"type": "Polygon", "coordinates": [[
        [lon + i / 100, 10], [lon + i / 100 + 1e-3, 10], [lon + i / 100 + 1e-3, 10.001],
        [lon + i / 100, 10.001], [lon + i / 100, 10]]]}} for i in range(n)]
    return json.dumps({"type": "FeatureCollection", "features": feats}).encode()


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_fingerprint_follows_only_what_decides_the_download():
    base = {"repo": "zenodo", "doi": "10.5281/zenodo.1", "label_fmt": "geojson",
            "file_filters": {"include_patterns": ["*.geojson"], "description": "x"}}
    fp = download_fingerprint(spec(**base))
    assert download_fingerprint(spec(**base, keep_cols=["a"], priority=3, notes="n")) == fp
    assert download_fingerprint(spec(**{**base, "file_filters": {"include_patterns": ["*.geojson"]}})) == fp
    assert download_fingerprint(spec(**{**base, "file_filters": {"include_patterns": ["a*.geojson"]}})) != fp
    assert download_fingerprint(spec(**base, max_mb=10)) != fp


def test_shapefiles_come_with_their_sidecars_and_negatives_stay_out():
    # the file list of the real qingfengxitu/ChinaPV repository
    names = [f"{p}_{s}.{ext}" for p in ("PV", "NPV") for s in ("Test_2015", "Test_2020", "Train_2020")
             for ext in ("shp", "dbf", "shx", "prj", "CPG", "sbn", "sbx", "shp.xml")]
    names.append("initial_PV_extraction_using_GEE_2015and2020.js")
    entry = json.loads(UPSTREAM.read_text())["chn_med_res_pv_2024"]
    chosen = [f.name for f in select_downloads(spec(**entry), record(*names))]
    assert chosen == [f"PV_{s}.{ext}" for s in ("Test_2015", "Test_2020", "Train_2020")
                      for ext in ("shp", "dbf", "shx", "prj", "CPG")]


def test_which_archives_are_fetched():
    names = ("GMSEUS_v1_0.zip", "GMSEUS_code.zip", "README.md")
    named = spec(compression="zip", compressed_archives=["GMSEUS_v1_0.zip"], label_fmt="gpkg")
    assert [f.name for f in select_downloads(named, record(*names))] == ["GMSEUS_v1_0.zip"]
    every = spec(compression="zip", label_fmt="gpkg")
    assert [f.name for f in select_downloads(every, record(*names))] == ["GMSEUS_v1_0.zip", "GMSEUS_code.zip"]
    with pytest.raises(DatasetError, match=r"nothing to download.*compression None.*GMSEUS_v1_0.zip, GMSEUS_code"):
        select_downloads(spec(label_fmt="gpkg"), record(*names))
    with pytest.raises(DatasetError, match=r"compressed_archives \['other.zip'\] not in the record"):
        select_downloads(spec(compressed_archives=["other.zip"], label_fmt="gpkg"), record(*names))
    url = record("uspvdbGeoJSON.zip", named_files=True)
    assert [f.name for f in select_downloads(spec(label_fmt="geojson"), url)] == ["uspvdbGeoJSON.zip"]


def test_archive_members_are_selected_as_they_will_sit():
    members = ["GPKG/GMSEUS_Arrays_Final.gpkg", "GPKG/GMSEUS_Panels_Final.gpkg", "__MACOSX/GPKG/._GMSEUS_Arrays_Final.gpkg",
               "LabeledImages/img/1.tif"]
    entry = json.loads(UPSTREAM.read_text())["usa_gm_seus_v1_2025"]
    assert select_members(spec(**entry), "GMSEUS_v1_0", members) == ["GPKG/GMSEUS_Arrays_Final.gpkg"]
    path_filter = spec(label_fmt="geojson", file_filters={"include_patterns": ["v2/*.geojson"]})
    assert select_members(path_filter, "v2", ["a.geojson", "b.txt"]) == ["a.geojson"]


@pytest.fixture
def zenodo_dataset(repository_server, tmp_path):
    """A Zenodo record with the labels in one zip, imagery in another, and a readme."""
    labels = zipped({
        "labels/a.geojson": polygons(3, 5.0), "labels/b.geojson": polygons(2, 6.0), "labels/b.csv": b"x,y\n",
        "__MACOSX/labels/._a.geojson": b"junk", "images/tile.tif": b"II*\x00",
    })
    repository_server.zenodo(123, {"labels.zip": labels, "imagery.zip": zipped({"i.tif": b"II*\x00"}),
                                   "README.txt": b"read me"})
    entry = {"repo": "zenodo", "doi": "10.5281/zenodo.123", "compression": "zip",
             "compressed_archives": ["labels.zip"], "label_fmt": "geojson",
             "file_filters": {"include_patterns": ["*.geojson"]}}
    return spec("zen", **entry), Layout(tmp_path / "data"), repository_server.endpoints()


def test_a_zenodo_archive_becomes_a_raw_folder_harmonize_reads(zenodo_dataset, repository_server, monkeypatch):
    monkeypatch.setenv("ZENODO_TOKEN", "zen-secret")
    ds, layout, endpoints = zenodo_dataset
    provenance = download_dataset(ds, layout, endpoints, progress=False)
    raw = layout.raw_dir("zen")
    on_disk = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
    assert on_disk == ["MANIFEST.json", "labels/labels/a.geojson", "labels/labels/b.geojson"]
    written = json.loads(layout.raw_manifest("zen").read_text())
    assert written == provenance
    assert provenance["repo"] == "zenodo" and provenance["record"]["url"].endswith("/records/123")
    zip_url = f"{repository_server.url}/zenodo/api/records/123/files/labels.zip/content"
    (download,) = provenance["downloads"]
    assert download["url"] == zip_url and download["checksum"].startswith("md5:")
    for f in provenance["files"]:
        assert f["sha256"] == hashlib.sha256((raw / f["path"]).read_bytes()).hexdigest()
        assert (f["source_url"], f["archive"], f["retrieved_at"]) == (zip_url, "labels.zip", download["retrieved_at"])
    assert provenance["label_files"] == ["labels/labels/a.geojson", "labels/labels/b.geojson"]
    assert [lf.source_file for lf in find_label_files(ds, raw)] == provenance["label_files"]  # each once
    staging, report = harmonize_dataset(ds, raw, progress=False)
    assert report["rows_written"] == 5
    assert repository_server.requests_to("/zenodo/api/records/123/files/imagery.zip/content") == []
    assert repository_server.requests_to("/zenodo/api/records/123")[0].headers["Authorization"] == "Bearer zen-secret"
    assert "zen-secret" not in layout.raw_manifest("zen").read_text()
    assert (layout.download_cache("zen") / "labels.zip").is_file()
    assert [p.name for p in raw.parent.iterdir()] == ["zen"]  # no partial or old folder left
    assert list(files_table(provenance)["label_file"]) == [True, True]
    assert list(downloads_table(provenance)["checked_against"]) == ["md5 from the repository"]


def test_a_rerun_reuses_verified_cache_and_writes_the_same_manifest(zenodo_dataset, repository_server, capsys):
    ds, layout, endpoints = zenodo_dataset
    download_dataset(ds, layout, endpoints, progress=False)
    first = layout.raw_manifest("zen").read_bytes()
    capsys.readouterr()
    download_dataset(ds, layout, endpoints)
    assert layout.raw_manifest("zen").read_bytes() == first
    assert len(repository_server.requests_to("/zenodo/api/records/123/files/labels.zip/content")) == 1
    start, done = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"zen: 1 file\(s\), (\d+ B), from http://127\.0\.0\.1:\d+/zenodo/api/records/123 \(4 at a time\)", start)
    size = re.search(r"\d+ B", start).group()
    assert done == f"zen: 1/1 files, {size} of {size}, 0 B/s; labels.zip reused from the cache, checksum verified"


def test_files_are_fetched_in_parallel_up_to_the_workers(repository_server, tmp_path, capsys):
    files = {f"part{i}.geojson": polygons(1, i) for i in range(4)}
    repository_server.zenodo(77, files)
    for name in files:  # slow answers, so that the downloads overlap
        repository_server.hold(f"/zenodo/api/records/77/files/{name}/content", 0.5)
    ds = spec("par", repo="zenodo", doi="10.5281/zenodo.77", label_fmt="geojson")
    provenance = download_dataset(ds, Layout(tmp_path / "data"), repository_server.endpoints(),
                                  settings=DownloadSettings(workers=2))
    assert repository_server.max_active == 2
    assert [d["name"] for d in provenance["downloads"]] == sorted(files)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("(2 at a time)") and len(lines) == 5
    total = sum(len(data) for data in files.values())
    assert lines[-1].startswith(f"par: 4/4 files, {total} B of {total} B, ")


@pytest.mark.parametrize("stalls", ["record", "file"])
def test_a_stalled_server_times_out_naming_the_dataset_and_url(zenodo_dataset, repository_server, stalls):
    ds, layout, endpoints = zenodo_dataset
    path = "/zenodo/api/records/123" + ("/files/labels.zip/content" if stalls == "file" else "")
    # The record stalls before answering; the file after part of its body.
    repository_server.stall(path, after_bytes=None if stalls == "record" else 500, times=2)
    started = time.monotonic()
    with pytest.raises(DatasetError, match=rf"dataset 'zen' file {re.escape(repository_server.url + path)}: "
                                           r"(download failed after 2 attempts: )?timed out: the server sent "
                                           r"nothing for 0\.3 s \(read timeout\)"):
        download_dataset(ds, layout, endpoints, progress=False,
                         settings=DownloadSettings(read_timeout_s=0.3, attempts=2))
    assert time.monotonic() - started < 5
    assert len(repository_server.requests_to(path)) == 2  # each attempt waited for its timeout
    assert not layout.raw_dir("zen").exists()
    assert not (layout.download_cache("zen") / "labels.zip").exists()


def test_a_changed_upstream_file_fails_and_keeps_the_last_good_folder(zenodo_dataset, repository_server):
    ds, layout, endpoints = zenodo_dataset
    download_dataset(ds, layout, endpoints, progress=False)
    good = layout.raw_manifest("zen").read_bytes()
    # The record now announces a new labels.zip, but the bytes served are not it.
    repository_server.json["/zenodo/api/records/123"]["files"][0]["checksum"] = "md5:" + "0" * 32
    with pytest.raises(DatasetError, match=r"dataset 'zen' file http://127\.0\.0\.1:\d+/zenodo/api/records/123/"
                                           r"files/labels\.zip/content: checksum mismatch"):
        download_dataset(ds, layout, endpoints, progress=False)
    assert layout.raw_manifest("zen").read_bytes() == good
    assert [p.name for p in layout.raw_dir("zen").parent.iterdir()] == ["zen"]


def test_limits_and_empty_selections_fail_with_the_reason(zenodo_dataset, repository_server):
    ds, layout, endpoints = zenodo_dataset
    too_small = spec("zen", **{**ds.entry, "max_mb": 0.0001})
    with pytest.raises(DatasetError, match=r"above max_mb 0.0001: labels.zip"):
        download_dataset(too_small, layout, endpoints, progress=False)
    assert repository_server.requests_to("/zenodo/api/records/123/files/labels.zip/content") == []
    points = spec("zen", **{**ds.entry, "label_fmt": "json", "crs": "EPSG:4326", "file_filters": {}})
    with pytest.raises(DatasetError, match=r"no json file matches .* in what was downloaded: labels.zip/labels/a.geojson"):
        download_dataset(points, layout, endpoints, progress=False)
    assert not layout.raw_manifest("zen").exists()


def test_an_unreachable_record_fails_with_its_url(repository_server, tmp_path):
    ds = spec("gone", repo="zenodo", doi="10.5281/zenodo.404", label_fmt="geojson")
    with pytest.raises(DatasetError, match=r"dataset 'gone' file http://127\.0\.0\.1:\d+/zenodo/api/records/404: HTTP 404"):
        download_dataset(ds, Layout(tmp_path / "data"), repository_server.endpoints(), progress=False)
    bad_doi = spec("typo", repo="zenodo", doi="10.5281/zenodo", label_fmt="geojson")
    with pytest.raises(DatasetError, match=r"dataset 'typo' file 10.5281/zenodo: .* is not a Zenodo DOI"):
        download_dataset(bad_doi, Layout(tmp_path / "data"), repository_server.endpoints(), progress=False)


@pytest.mark.parametrize("name, content, reason", [
    ("labels.zip", zipped({"ok.geojson": polygons(1, 0), "../escape.geojson": polygons(1, 0)}), "unsafe path"),
    ("labels.tar.gz", tar_gz({"ok.geojson": polygons(1, 0), "../escape.geojson": polygons(1, 0)}), "unsafe path"),
    ("labels.tar.gz", tar_gz({"zeros.geojson": bytes(20_000_000)}), "possible decompression bomb"),
    ("labels.zip", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n", "Git LFS pointer"),
])
def test_hostile_or_hollow_files_are_refused(repository_server, tmp_path, name, content, reason):
    url = repository_server.add_file(f"/data/{name}", content)
    compression = "tar.gz" if name.endswith(".tar.gz") else "zip"
    ds = spec("bad", repo="url", doi=url, compression=compression, label_fmt="geojson")
    with pytest.raises(DatasetError, match=reason):
        download_dataset(ds, Layout(tmp_path / "data"), repository_server.endpoints(), progress=False)
    assert not (tmp_path / "escape.geojson").exists()
    assert not Layout(tmp_path / "data").raw_manifest("bad").exists()


def test_a_versioned_figshare_tar_gz_is_fetched_at_its_version_and_extracted(repository_server, tmp_path):
    farms = tar_gz({"farms/farms.geojson": polygons(2, 7.0), "farms/notes.txt": b"n"})
    repository_server.figshare(11310269, 6, {"farms.tar.gz": farms, "code.zip": zipped({"a.py": b""})})
    ds = spec("fig", repo="figshare", doi="10.6084/m9.figshare.11310269.v6", compression="tar.gz", label_fmt="geojson")
    layout = Layout(tmp_path / "data")
    provenance = download_dataset(ds, layout, repository_server.endpoints(), progress=False)
    assert repository_server.requests_to("/figshare/v2/articles/11310269/versions/6")
    assert [d["name"] for d in provenance["downloads"]] == ["farms.tar.gz"]  # not the zip
    assert provenance["label_files"] == ["farms/farms/farms.geojson"]
    assert harmonize_dataset(ds, layout.raw_dir("fig"), progress=False)[1]["rows_written"] == 2


def test_namesake_files_of_one_record_are_all_kept(repository_server, tmp_path):
    # a Figshare article holding two different files named labels.geojson (and one of
    # them twice, identical): both are downloaded, cached apart and read
    server = repository_server
    first, second = polygons(2, 7.0), polygons(3, 9.0)
    entries = []
    for file_id, data in ((501, first), (502, second), (503, first)):
        path = f"/storage/{file_id}/labels.geojson"
        server.add_file(path, data)
        entries.append({"id": file_id, "name": "labels.geojson", "size": len(data), "is_link_only": False,
                        "computed_md5": hashlib.md5(data).hexdigest(), "supplied_md5": "",
                        "download_url": f"{server.url}{path}"})
    server.add_json("/figshare/v2/articles/777/versions/1", {"id": 777, "title": "t", "version": 1, "files": entries})
    ds = spec("twins", repo="figshare", doi="10.6084/m9.figshare.777.v1", label_fmt="geojson")
    layout = Layout(tmp_path / "data")
    provenance = download_dataset(ds, layout, server.endpoints(), progress=False)
    assert sorted(provenance["label_files"]) == ["501/labels.geojson", "502/labels.geojson"]
    assert (layout.raw_dir("twins") / "501" / "labels.geojson").read_bytes() == first
    assert (layout.raw_dir("twins") / "502" / "labels.geojson").read_bytes() == second
    staging, report = harmonize_dataset(ds, layout.raw_dir("twins"), progress=False)
    assert report["rows_written"] == 5
    # a rerun reuses both cached copies and lays out the same folder
    assert download_dataset(ds, layout, server.endpoints(), progress=False)["label_files"] == provenance["label_files"]


def test_every_active_upstream_entry_names_a_source_its_client_reads():
    readers = {"zenodo": zenodo_record_id, "figshare": figshare_article, "github": github_location,
               "direct_download": get_url_file}
    manifest = load_manifest(UPSTREAM)
    clients = {}
    for name in active_datasets(manifest):
        doi = manifest[name].entry["doi"]
        clients[name] = repository_of(manifest[name].repo, doi)
        readers[clients[name]](doi)  # raises ValueError on an identifier the client cannot read
    assert len(clients) == 9
    assert clients["usa_cali_usgs_pv_2016"] == "figshare"  # a Figshare DOI, whatever repo says


@pytest.mark.real
@pytest.mark.parametrize("name, folder, served_as", [
    ("chn_med_res_pv_2024", "chn_med_res_pv_2024", ("qingfengxitu", "ChinaPV", "")),
    ("ind_pv_solar_farms_2022", "ind_solar_farms_2022", ("microsoft", "solar-farms-mapping", "data/")),
    ("global_pv_inventory_sent2_2024", "glosofarid_2024", ("yzyly1992", "GloSoFarID", "data_coordinates/")),
])
def test_real_github_datasets_download_as_the_upstream_manifest_says(
    real_dir, repository_server, tmp_path, name, folder, served_as
):
    owner, repo, prefix = served_as
    real = real_dir / folder
    repository_server.github(owner, repo, {f"{prefix}{p.name}": p.read_bytes() for p in sorted(real.iterdir())})
    ds = load_manifest(UPSTREAM)[name]
    layout = Layout(tmp_path / "data")
    provenance = download_dataset(ds, layout, repository_server.endpoints(), progress=False)
    downloaded, _ = harmonize_dataset(ds, layout.raw_dir(name), progress=False)
    in_place, _ = harmonize_dataset(spec(name, **{**ds.entry, "repo": "local", "path": str(real)}), progress=False)
    assert len(downloaded) == len(in_place) > 0
    assert sorted(provenance["label_files"]) == sorted(downloaded["source_file"].str.split(":").str[0].unique())
    if name == "chn_med_res_pv_2024":
        assert not any("NPV" in f["path"] for f in provenance["files"])
        assert {Path(f["path"]).suffix.lower() for f in provenance["files"]} == {".shp", ".dbf", ".shx", ".prj", ".cpg"}


@pytest.mark.workflow
def test_snakemake_j8_downloads_through_the_repository_apis_then_harmonizes(repository_server, tmp_path, monkeypatch):
    # Lean: each dataset costs two notebook runs. GitHub is spoken to in
    # test_sources_repositories and, with the real files, in the `real` tests above.
    server = repository_server
    # Zenodo: the polygons, and a CSV the filters leave out.
    server.zenodo(4059881, {"pv_polygons.geojson": polygons(3, 5.0), "pv_points.csv": b"lon,lat\n"})
    # Figshare: a versioned DOI whose labels come in a tar.gz.
    server.figshare(11310269, 6, {"farms.tar.gz": tar_gz({"farms/farms.geojson": polygons(2, 7.0), "farms/notes.txt": b"n"})})
    gone = f"{server.url}/hosting/points.zip"
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "zen_polygons": {"repo": "zenodo", "doi": "10.5281/zenodo.4059881", "label_fmt": "geojson",
                         "file_filters": {"include_patterns": ["*.geojson"]}},
        "fig_farms": {"repo": "figshare", "doi": "10.6084/m9.figshare.11310269.v6", "compression": "tar.gz",
                      "label_fmt": "geojson"},
        "gone_points": {"repo": "url", "doi": gone, "compression": "zip", "label_fmt": "json", "crs": "EPSG:4326"},
    }))
    # Every service on the local server; a partial `download` block keeps the other defaults.
    configfile = tmp_path / "config.yaml"
    configfile.write_text(json.dumps({"repositories": server.repositories(), "download": {"workers": 2, "attempts": 2}}))
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_never_in_outputs")
    data_dir = tmp_path / "data"
    layout = Layout(data_dir)
    good = {"zen_polygons": 3, "fig_farms": 2}
    # Targets of this stage and the next only: later stages are not this test's business.
    targets = [str(layout.staging_report(name)) for name in [*good, "gone_points"]]
    config = ["--configfile", str(configfile), "--config", f"data_dir={data_dir}", f"manifest={manifest}"]
    run = snakemake("-j8", "--keep-going", *targets, *config)
    assert run.returncode != 0
    assert f"DatasetError: dataset 'gone_points' file {gone}: HTTP 404" in run.stderr  # fails alone
    assert not layout.raw_manifest("gone_points").exists()
    for name, rows in good.items():
        assert json.loads(layout.staging_report(name).read_text())["rows_written"] == rows, run.stderr[-3000:]

    provenance = {name: json.loads(layout.raw_manifest(name).read_text()) for name in good}
    zen, fig = provenance["zen_polygons"], provenance["fig_farms"]
    assert zen["record"]["url"] == f"{server.url}/zenodo/api/records/4059881"
    assert [(d["name"], d["checksum"]) for d in zen["downloads"]] == [
        ("pv_polygons.geojson", f"md5:{hashlib.md5(polygons(3, 5.0)).hexdigest()}")]
    assert server.requests_to("/zenodo/api/records/4059881/files/pv_points.csv/content") == []  # filtered out
    assert fig["record"]["url"] == f"{server.url}/figshare/v2/articles/11310269/versions/6"
    assert fig["record"]["version"] == "6" and server.requests_to("/figshare/v2/articles/11310269") == []
    assert [(f["path"], f["archive"], f["member"]) for f in fig["files"]] == [
        ("farms/farms/farms.geojson", "farms.tar.gz", "farms/farms.geojson")]
    for name, prov in provenance.items():
        raw = layout.raw_dir(name)
        for f in prov["files"]:
            assert f["sha256"] == hashlib.sha256((raw / f["path"]).read_bytes()).hexdigest()
            assert f["size_bytes"] == (raw / f["path"]).stat().st_size and f["retrieved_at"].endswith("Z")
        log = layout.log("download", name).read_text()
        assert re.search(rf"{name}: 1/1 files, [\d.]+ k?B of [\d.]+ k?B, .*downloaded, checksum verified", log)

    nb = nbformat.read(layout.executed_notebook("download", "zen_polygons"), as_version=4)
    assert nb.metadata["papermill"]["parameters"]["repositories"] == server.repositories()
    assert nb.metadata["papermill"]["parameters"]["download"] == {
        "workers": 2, "attempts": 2, "connect_timeout_s": 30, "read_timeout_s": 300}
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("text/html" in o.get("data", {}) for o in outputs)  # the tables are in the book
    assert any("1/1 files" in o.get("text", "") for o in outputs)  # and the progress
    for path in [*data_dir.rglob("*.ipynb"), *data_dir.rglob("*.log"), *data_dir.rglob("*.json")]:
        assert "ghp_never_in_outputs" not in path.read_text(errors="replace"), path
    dry = snakemake("-n", "-j8", *targets[:2], *config)
    assert dry.returncode == 0 and "wildcards:" not in dry.stdout, dry.stdout[-2000:]  # nothing to redo


@pytest.mark.workflow
def test_the_upstream_manifest_plans_one_download_per_active_dataset(tmp_path):
    layout = Layout(tmp_path)
    active = active_datasets(load_manifest(UPSTREAM))
    targets = [str(layout.staging_report(name)) for name in active]
    dry = snakemake("-n", "-j8", *targets, "--config", f"data_dir={tmp_path}", f"manifest={UPSTREAM}")
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = {line.split("=", 1)[1] for line in dry.stdout.splitlines() if "wildcards: dataset=" in line}
    assert planned == set(active)
    counts = dict(line.split()[:2] for line in dry.stdout.splitlines() if line.startswith(("download ", "harmonize ")))
    assert counts == {"download": "9", "harmonize": "9"}
