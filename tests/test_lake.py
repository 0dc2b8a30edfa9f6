"""The DuckLake lakehouse: layers, snapshots, time travel, compaction, PostgreSQL catalog."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import duckdb
import geopandas as gpd
import nbformat
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from pvlake import lake
from pvlake.book import notebook_parameters
from pvlake.harmonize import harmonize_dataset, write_staging
from pvlake.io import write_geoparquet
from pvlake.layout import Layout
from pvlake.manifest import active_datasets, load_manifest
from pvlake.sources import find_label_files, read_labels


def write_prepared_like(layout: Layout, datasets: list[str]) -> gpd.GeoDataFrame:
    """A GeoParquet with the prepared layer's contract (canonical columns plus
    n_sources, source_datasets, merged_ids) made from the staging files, no merging."""
    frames = [gpd.read_parquet(layout.staging_parquet(d)) for d in datasets]
    prepared = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:4326")
    prepared["n_sources"] = 1
    prepared["source_datasets"] = [[d] for d in prepared["dataset"]]
    prepared["merged_ids"] = [[i] for i in prepared["pv_id"]]
    write_geoparquet(prepared, layout.prepared_parquet())
    return prepared


@pytest.fixture(scope="module")
def manifest(sample_dir):
    return load_manifest(sample_dir / "manifest.json")


@pytest.fixture(scope="module")
def built_inputs(tmp_path_factory, manifest):
    """Staging files and reports of every sample dataset plus a prepared-like file."""
    layout = Layout(tmp_path_factory.mktemp("lake_inputs"))
    datasets = active_datasets(manifest)
    for name in datasets:
        staging, report = harmonize_dataset(manifest[name], None, 12, progress=False)
        write_staging(staging, report, layout.staging_parquet(name), layout.staging_report(name))
    write_prepared_like(layout, datasets)
    return layout


@pytest.fixture
def layout(built_inputs, tmp_path) -> Layout:
    """A fresh data_dir holding copies of the built inputs (tests may change them)."""
    for folder in ("staging", "prepared"):
        shutil.copytree(built_inputs.data_dir / folder, tmp_path / folder)
    return Layout(tmp_path)


def all_tables(layout, manifest):
    return lake.pipeline_tables(layout, [manifest[d] for d in active_datasets(manifest)], progress=False)


def publish_all(layout, manifest, **location):
    return lake.publish_pipeline(layout, all_tables(layout, manifest), progress=False, **location)


def expected_rows(layout, manifest) -> dict[str, int]:
    """Rows each lake table must hold: raw = features read (harmonize's report),
    staging and prepared = rows of their GeoParquet."""
    rows = {}
    for name in active_datasets(manifest):
        report = json.loads(layout.staging_report(name).read_text())
        rows[f"raw.{name}"] = report["rows_read"]
        rows[f"staging.{name}"] = len(gpd.read_parquet(layout.staging_parquet(name)))
    rows["prepared.pv_installations"] = len(gpd.read_parquet(layout.prepared_parquet()))
    return rows


# --- where the lake is and how it is opened -------------------------------------------

def test_default_location_is_the_layout_lake_folder(tmp_path):
    layout = Layout(tmp_path / "data")
    location = lake.LakeLocation.resolve(layout)
    assert location.catalog == str(layout.lake_catalog().resolve())
    assert location.data_path == str(layout.lake_data().resolve()) + "/"
    assert location.extensions() == ("spatial", "ducklake")
    sql = location.attach_sql(read_only=True)
    assert sql == (f"ATTACH 'ducklake:{location.catalog}' AS lake "
                   f"(DATA_PATH '{location.data_path}', OVERRIDE_DATA_PATH true, READ_ONLY)")


def test_postgres_catalog_and_s3_data_path_pick_their_extensions(tmp_path):
    location = lake.LakeLocation.resolve(
        Layout(tmp_path), catalog="postgres:dbname=pvlake host=db.example.org", data_path="s3://bucket/lake/")
    assert location.catalog == "postgres:dbname=pvlake host=db.example.org"
    assert location.local_catalog is None and location.local_data is None
    assert location.extensions() == ("spatial", "ducklake", "postgres_scanner", "httpfs")
    # A bucket's path is shared by every user: it is checked against the catalog's, not overridden.
    assert location.attach_sql() == (
        "ATTACH 'ducklake:postgres:dbname=pvlake host=db.example.org' AS lake (DATA_PATH 's3://bucket/lake/')")


def test_s3_secret_takes_credentials_from_the_environment_only():
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr'et", "AWS_REGION": "eu-west-1"}
    config = {"endpoint": "minio.example.org:9000", "url_style": "path", "use_ssl": False,
              "secret": "from-config"}
    sql = lake.s3_secret_sql(config, environ=env)
    assert "from-config" not in sql
    con = lake.connect(extensions=("httpfs",))
    con.execute(sql)  # valid DuckDB SQL, quotes escaped
    secret = con.execute("SELECT type, persistent, secret_string FROM duckdb_secrets() WHERE name = 'pvlake_s3'").fetchone()
    assert secret[0] == "s3" and secret[1] is False
    assert "key_id=AKIDEXAMPLE" in secret[2] and "endpoint=minio.example.org:9000" in secret[2]
    assert "region=eu-west-1" in secret[2] and "url_style=path" in secret[2] and "use_ssl=false" in secret[2]
    assert "KEY_ID" not in lake.s3_secret_sql(config, environ={})


def test_reading_a_lake_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no lake at"):
        lake.connect_lake(tmp_path)


# --- raw layer ------------------------------------------------------------------------

def test_unify_schema_widens_or_falls_back_to_text_and_keeps_provenance_last():
    first = pa.table({"a": pa.array([1], pa.int64()), "b": ["x"], "geometry": pa.array([b"\x01"]),
                      "source_row": pa.array([0], pa.int64())})
    second = pa.table({"a": [1.5], "b": pa.array([7], pa.int64()), "c": pa.nulls(1),
                       "geometry": pa.array([b"\x01"]), "source_row": pa.array([0], pa.int64())})
    schema = lake.unify_schema([first, second])
    assert schema.names == ["a", "b", "c", "geometry", "source_row"]
    assert schema.field("a").type == pa.float64() and schema.field("b").type == pa.string()
    assert lake.conform(first, schema).column("b").to_pylist() == ["x"]
    assert lake.conform(second, schema).column("b").to_pylist() == ["7"]
    assert lake.conform(first, schema).column("c").null_count == 1


def test_raw_arrow_keeps_source_values_and_renames_colliding_attributes(manifest):
    spec = manifest["usa_cali_usgs_pv_2016"]
    sf = read_labels(spec, find_label_files(spec)[0])
    sf.frame["source_file"] = "a column of the source"
    table = lake.raw_arrow(sf)
    assert table.column_names[-5:] == list(lake.RAW_PROVENANCE)
    assert table.column("source_file_attr")[0].as_py() == "a column of the source"
    assert set(table.column("source_crs").to_pylist()) == {"EPSG:4269"}  # NAD83 as declared, not reprojected
    assert table.column("source_row").to_pylist() == list(range(len(sf.frame)))
    wkb = table.column("geometry").to_pylist()
    assert shapely.equals(shapely.from_wkb(wkb), sf.frame.geometry.to_numpy()).all()


# --- publishing ------------------------------------------------------------------------

def test_publish_writes_every_layer_in_one_snapshot(layout, manifest):
    result = publish_all(layout, manifest)
    assert result["tables"] == expected_rows(layout, manifest)
    assert json.loads(layout.lake_summary().read_text()) == json.loads(json.dumps(result))
    con = lake.connect_lake(layout.data_dir)
    assert lake.publish_snapshots(con) == [result["published"]["snapshot_id"]]
    assert sorted(result["published"]["written"]) == sorted(result["tables"])
    assert {name.split(".")[0] for name in lake.lake_tables(con)} == set(lake.LAYERS)
    assert result["snapshot_id"] == lake.snapshots(con)["snapshot_id"].max()


@pytest.fixture
def open_reader(layout):
    """Another process holding the lake open read-only, as a notebook's connect_lake() does."""
    code = ("import sys, time; from pvlake.lake import connect_lake; con = connect_lake(sys.argv[1]); "
            "print('open', flush=True); time.sleep(120)")
    reader = subprocess.Popen([sys.executable, "-c", code, str(layout.data_dir)], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "open"
    yield reader
    reader.kill()
    reader.wait()


@pytest.fixture
def published(layout, manifest):
    return publish_all(layout, manifest)


def test_an_open_reader_does_not_stop_a_publish_with_nothing_new(layout, manifest, published, open_reader):
    again = publish_all(layout, manifest)
    assert again["published"] == {"snapshot_id": None, "written": [], "dropped": []}
    assert again["snapshot_id"] == published["snapshot_id"] and again["tables"] == published["tables"]


def test_an_open_reader_makes_a_changing_publish_fail_with_one_clear_message(layout, manifest, published, open_reader):
    staging = gpd.read_parquet(layout.staging_parquet("uk_crowdsourced_pv_2020"))
    write_geoparquet(staging.iloc[:-1], layout.staging_parquet("uk_crowdsourced_pv_2020"))
    with pytest.raises(lake.LakeBusyError) as err:
        publish_all(layout, manifest)
    message = str(err.value)
    assert f"is open in process {open_reader.pid} (" in message and "connect_lake" in message
    assert "Close that connection" in message and "PostgreSQL catalog" in message
    open_reader.kill()
    open_reader.wait()
    assert publish_all(layout, manifest)["published"]["written"] == ["staging.uk_crowdsourced_pv_2020"]


def test_geometries_round_trip_and_their_crs_is_documented(layout, manifest):
    publish_all(layout, manifest)
    con = lake.connect_lake(layout.data_dir)
    staged = gpd.read_parquet(layout.staging_parquet("ind_pv_solar_farms_2022"))
    wkb = con.execute("SELECT ST_AsWKB(geometry) FROM lake.staging.ind_pv_solar_farms_2022").fetchall()
    assert shapely.equals_exact(shapely.from_wkb([bytes(w[0]) for w in wkb]), staged.geometry.to_numpy(), 0).all()
    comments = dict(con.execute(
        "SELECT schema_name || '.' || table_name, comment FROM duckdb_columns() "
        "WHERE database_name = 'lake' AND column_name = 'geometry'").fetchall())
    assert comments["staging.ind_pv_solar_farms_2022"].startswith("EPSG:4326")
    assert comments["prepared.pv_installations"].startswith("EPSG:4326")
    assert "source_crs" in comments["raw.usa_cali_usgs_pv_2016"]
    # raw keeps what the files hold: NAD83 coordinates, a null and an empty geometry in the UK set
    crs = con.execute("SELECT DISTINCT source_crs FROM lake.raw.usa_cali_usgs_pv_2016").fetchall()
    assert crs == [("EPSG:4269",)]
    nulls, empties = con.execute(
        "SELECT count(*) FILTER (WHERE geometry IS NULL), count(*) FILTER (WHERE ST_IsEmpty(geometry)) "
        "FROM lake.raw.uk_crowdsourced_pv_2020").fetchone()
    assert nulls == 1 and empties == 1


def test_prepared_list_columns_survive(layout, manifest):
    publish_all(layout, manifest)
    con = lake.connect_lake(layout.data_dir)
    types = dict(con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = 'lake' "
        "AND schema_name = 'prepared' AND table_name = 'pv_installations'").fetchall())
    assert types["source_datasets"] == "VARCHAR[]" and types["merged_ids"] == "VARCHAR[]"
    assert types["n_sources"] in ("BIGINT", "INTEGER")
    mismatched = con.execute(
        "SELECT count(*) FROM lake.prepared.pv_installations "
        "WHERE source_datasets != [dataset] OR merged_ids != [pv_id]").fetchone()[0]
    assert mismatched == 0


def test_unchanged_inputs_are_not_rewritten_and_time_travel_shows_the_change(layout, manifest):
    first = publish_all(layout, manifest)
    con = lake.connect_lake(layout.data_dir)
    files_before = {t: sorted(con.execute(
        "SELECT data_file FROM ducklake_list_files('lake', ?, schema => 'staging')", [t]).fetchall())
        for t in ("glosofarid_2024", "uk_crowdsourced_pv_2020")}
    n_snapshots = len(lake.snapshots(con))
    con.close()

    again = publish_all(layout, manifest)
    assert again["published"] == {"snapshot_id": None, "written": [], "dropped": []}
    assert again["compaction"]["merged"] == []
    con = lake.connect_lake(layout.data_dir)
    assert len(lake.snapshots(con)) == n_snapshots  # nothing changed: no snapshot
    con.close()

    path = layout.staging_parquet("uk_crowdsourced_pv_2020")
    staged = gpd.read_parquet(path)
    write_geoparquet(staged.iloc[:-5], path)
    third = publish_all(layout, manifest)
    assert third["published"]["written"] == ["staging.uk_crowdsourced_pv_2020"]
    con = lake.connect_lake(layout.data_dir)
    assert sorted(con.execute(
        "SELECT data_file FROM ducklake_list_files('lake', 'glosofarid_2024', schema => 'staging')").fetchall()
    ) == files_before["glosofarid_2024"]
    old = first["published"]["snapshot_id"]
    assert con.execute(
        f"SELECT count(*) FROM lake.staging.uk_crowdsourced_pv_2020 AT (VERSION => {old})").fetchone()[0] == len(staged)
    assert con.execute("SELECT count(*) FROM lake.staging.uk_crowdsourced_pv_2020").fetchone()[0] == len(staged) - 5
    diff = lake.compare_versions(con, old).set_index("table")
    assert diff.loc["staging.uk_crowdsourced_pv_2020", "change"] == -5
    assert (diff.drop(index="staging.uk_crowdsourced_pv_2020")["change"] == 0).all()
    assert lake.row_changes(con, "staging.uk_crowdsourced_pv_2020", old) == {"added": 0, "removed": 5}
    assert lake.row_changes(con, "staging.glosofarid_2024", old) == {"added": 0, "removed": 0}
    assert lake.publish_snapshots(con) == [old, third["published"]["snapshot_id"]]


def test_compaction_merges_small_files_and_keeps_every_version_readable(layout, manifest):
    result = publish_all(layout, manifest)
    compaction = result["compaction"]
    merged = {m["table"]: m for m in compaction["merged"]}
    n_files = len(find_label_files(manifest["chn_med_res_pv_2024"]))
    assert merged["raw.chn_med_res_pv_2024"] == {"table": "raw.chn_med_res_pv_2024",
                                                 "files_processed": n_files, "files_created": 1}
    assert compaction["files_after"]["current"] < compaction["files_before"]["current"]
    con = lake.connect_lake(layout.data_dir)
    version = result["published"]["snapshot_id"]
    assert con.execute(
        f"SELECT count(*) FROM ducklake_list_files('lake', 'chn_med_res_pv_2024', schema => 'raw', "
        f"snapshot_version => {version})").fetchone()[0] == 1
    for table, rows in result["tables"].items():
        layer, name = table.split(".")
        assert con.execute(f"SELECT count(*) FROM lake.{layer}.{name} AT (VERSION => {version})").fetchone()[0] == rows
    # the replaced files are gone from disk; every file left is one the catalog refers to
    on_disk = list(layout.lake_data().rglob("*.parquet"))
    assert len(on_disk) == compaction["files_after"]["stored"]


def test_prune_drops_tables_of_removed_datasets_but_time_travel_keeps_them(layout, manifest):
    first = publish_all(layout, manifest)
    kept = [t for t in all_tables(layout, manifest) if not t.name == "glosofarid_2024"]
    second = lake.publish_pipeline(layout, kept, progress=False)
    assert second["published"]["dropped"] == ["raw.glosofarid_2024", "staging.glosofarid_2024"]
    assert "staging.glosofarid_2024" not in second["tables"]
    con = lake.connect_lake(layout.data_dir)
    old = first["published"]["snapshot_id"]
    assert con.execute(f"SELECT count(*) FROM lake.staging.glosofarid_2024 AT (VERSION => {old})").fetchone()[0] \
        == first["tables"]["staging.glosofarid_2024"]


def test_read_only_connection_refuses_writes_and_the_lake_folder_can_move(layout, manifest, tmp_path_factory):
    result = publish_all(layout, manifest)
    con = lake.connect_lake(layout.data_dir)
    with pytest.raises(duckdb.Error, match="read-only|read only"):
        con.execute("CREATE TABLE lake.staging.scratch AS SELECT 1 AS x")
    con.close()
    moved = tmp_path_factory.mktemp("moved")
    shutil.move(layout.lake_dir(), moved / "lake")
    con = lake.connect_lake(moved)
    assert lake.table_rows(con) == result["tables"]


# --- PostgreSQL catalog (the scale-out path) ------------------------------------------

def test_postgres_catalog_publishes_with_the_password_from_the_environment(
        layout, manifest, postgres_database, monkeypatch):
    catalog = f"postgres:{postgres_database}"
    assert "password" not in catalog
    location = {"catalog": catalog, "data_path": str(layout.data_dir / "pg_lake_data")}
    first = publish_all(layout, manifest, **location)
    assert first["tables"] == expected_rows(layout, manifest)
    assert first["catalog"] == catalog
    assert not layout.lake_catalog().exists()  # nothing went to the DuckDB-file default
    again = publish_all(layout, manifest, **location)
    assert again["published"]["snapshot_id"] is None and again["snapshot_id"] == first["snapshot_id"]
    con = lake.open_lake(layout, **location)
    assert lake.table_rows(con) == first["tables"]
    con.close()
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(duckdb.Error, match="password"):
        lake.open_lake(layout, **location)


WRITER = """
import json, sys
from pvlake import lake
from pvlake.layout import Layout
from pvlake.manifest import load_manifest

data_dir, manifest, where, *names = sys.argv[1:]
layout = Layout(data_dir)
specs = load_manifest(manifest)
tables = []
for name in names:
    if name == "prepared":
        tables.append(lake.prepared_table(layout))
    else:
        tables += [lake.raw_table(specs[name], layout, progress=False), lake.staging_table(layout, name)]
result = lake.publish_pipeline(layout, tables, prune=False, progress=False, **json.loads(where))
print(json.dumps(result["published"]))
"""


def start_writers(layout, sample_dir, where: dict, groups: list[list[str]]) -> list[subprocess.Popen]:
    """One writer process per group of tables (dataset names, or "prepared") publishing
    to the lake at ``where`` (catalog, data_path, s3)."""
    return [
        subprocess.Popen([sys.executable, "-c", WRITER, str(layout.data_dir), str(sample_dir / "manifest.json"),
                          json.dumps(where), *group], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for group in groups
    ]


def finish_writers(writers: list[subprocess.Popen]) -> list[dict]:
    """Each writer's publish result, once all have exited successfully."""
    outputs = [w.communicate(timeout=300) for w in writers]
    for writer, (out, err) in zip(writers, outputs):
        assert writer.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def test_two_concurrent_writer_processes_lose_nothing(layout, manifest, sample_dir, postgres_database):
    catalog = f"postgres:{postgres_database}"
    data_path = str(layout.data_dir / "shared_data")
    datasets = active_datasets(manifest)
    halves = [datasets[: len(datasets) // 2], [*datasets[len(datasets) // 2:], "prepared"]]
    published = finish_writers(start_writers(layout, sample_dir, {"catalog": catalog, "data_path": data_path}, halves))
    assert all(p["snapshot_id"] is not None for p in published)
    assert published[0]["snapshot_id"] != published[1]["snapshot_id"]
    con = lake.open_lake(layout, catalog=catalog, data_path=data_path)
    assert lake.table_rows(con) == expected_rows(layout, manifest)
    assert sorted(lake.publish_snapshots(con)) == sorted(p["snapshot_id"] for p in published)


# --- PostgreSQL catalog + S3 data files (a real SeaweedFS on 127.0.0.1) ----------------

def s3_objects(where: dict) -> list[str]:
    """Parquet objects under the lake's S3 data path, listed through S3 (ListObjectsV2)."""
    con = lake.connect(extensions=("httpfs",))
    con.execute(lake.s3_secret_sql(where["s3"]))
    try:
        return [r[0] for r in con.execute(f"SELECT file FROM glob('{where['data_path']}**/*.parquet')").fetchall()]
    except duckdb.HTTPException as exc:
        if "NoSuchBucket" in str(exc):  # the first upload creates it
            return []
        raise


READER = """
import json, sys
from pvlake import lake
from pvlake.layout import Layout

con = lake.open_lake(Layout(sys.argv[1]), read_only=True, **json.loads(sys.argv[2]))
print(json.dumps(lake.table_rows(con)))
"""


def rows_read_by_another_process(layout, where: dict) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", READER, str(layout.data_dir), json.dumps(where)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_postgres_catalog_with_s3_data_files_holds_every_layer_and_another_process_reads_it(
        layout, manifest, postgres_database, s3_lake, seaweedfs):
    where = {"catalog": f"postgres:{postgres_database}", **s3_lake}
    result = publish_all(layout, manifest, **where)
    assert result["tables"] == expected_rows(layout, manifest)
    assert result["data_path"] == s3_lake["data_path"]
    assert not layout.lake_catalog().exists() and not layout.lake_data().exists()  # nothing local
    # every data file is an object in the bucket (files a compaction replaced stay an hour
    # in a shared lake: a reader's transaction may still be using them)
    assert len(s3_objects(where)) >= result["compaction"]["files_after"]["stored"] >= len(result["tables"])
    assert rows_read_by_another_process(layout, where) == result["tables"]
    # credentials never leave the environment
    published = layout.lake_summary().read_text()
    for secret in (seaweedfs.secret_key, seaweedfs.access_key, os.environ["PGPASSWORD"]):
        assert secret not in published
    assert publish_all(layout, manifest, **where)["published"]["snapshot_id"] is None


def test_one_writer_per_dataset_commits_without_loss_through_postgres_and_s3(
        layout, manifest, sample_dir, postgres_database, s3_lake):
    where = {"catalog": f"postgres:{postgres_database}", **s3_lake}
    groups = [[name] for name in active_datasets(manifest)] + [["prepared"]]
    published = finish_writers(start_writers(layout, sample_dir, where, groups))
    assert len({p["snapshot_id"] for p in published}) == len(groups)
    con = lake.open_lake(layout, **where)
    assert lake.table_rows(con) == expected_rows(layout, manifest)
    assert sorted(lake.publish_snapshots(con)) == sorted(p["snapshot_id"] for p in published)


def test_object_store_restarting_during_a_publish_is_waited_for(layout, manifest, sample_dir, postgres_database,
                                                                tmp_path, monkeypatch):
    from conftest import SeaweedS3

    store = SeaweedS3(tmp_path / "store")  # its own server: the session's stays up
    store.start()
    try:
        for key, value in store.env.items():
            monkeypatch.setenv(key, value)
        where = {"catalog": f"postgres:{postgres_database}", "data_path": "s3://restart/lake/", "s3": store.lake_s3()}
        groups = [[*active_datasets(manifest), "prepared"]]
        writer = start_writers(layout, sample_dir, where, groups)[0]
        deadline = time.monotonic() + 120
        while not s3_objects(where) and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.poll() is None, "the publish ended before the store could be restarted"
        store.restart()  # ~2-4 s without an answer, in the middle of the publish
        assert writer.poll() is None, "the publish ended while the store was down"
        assert sorted(finish_writers([writer])[0]["written"]) == sorted(expected_rows(layout, manifest))
        con = lake.open_lake(layout, **where)
        assert lake.table_rows(con) == expected_rows(layout, manifest)
    finally:
        store.stop()


def test_object_store_down_fails_with_one_clear_message_and_a_rerun_completes(
        layout, manifest, postgres_database, s3_lake, seaweedfs, tmp_path, monkeypatch):
    from conftest import SeaweedS3

    store = SeaweedS3(tmp_path / "store")
    store.start()
    try:
        for key, value in store.env.items():
            monkeypatch.setenv(key, value)
        where = {"catalog": f"postgres:{postgres_database}", "data_path": "s3://down/lake/",
                 "s3": store.lake_s3(http_retries=1)}
        first = publish_all(layout, manifest, **where)
        staging = gpd.read_parquet(layout.staging_parquet("uk_crowdsourced_pv_2020"))
        write_geoparquet(staging.iloc[:-1], layout.staging_parquet("uk_crowdsourced_pv_2020"))
        store.stop()
        with pytest.raises(lake.LakeStorageError) as err:
            publish_all(layout, manifest, **where)
        message = str(err.value)
        assert store.endpoint in message and "s3://down/lake/" in message and "No snapshot was committed" in message
        assert store.secret_key not in message
        store.start()
        con = lake.open_lake(layout, **where)
        assert lake.publish_snapshots(con)[-1] == first["published"]["snapshot_id"]  # nothing half-committed
        con.close()
        again = publish_all(layout, manifest, **where)
        assert again["published"]["written"] == ["staging.uk_crowdsourced_pv_2020"]
        assert again["tables"]["staging.uk_crowdsourced_pv_2020"] == len(staging) - 1
    finally:
        store.stop()


@pytest.mark.workflow
def test_sample_run_lake_rule_publishes_into_postgres_and_s3(sample_run, postgres_database, s3_lake, seaweedfs,
                                                              tmp_path):
    """The workflow's lake rule on the sample run's outputs, configured for a PostgreSQL
    catalog and S3 data files (credentials from the environment only)."""
    from conftest import snakemake

    data_dir = tmp_path / "cloud data"
    shutil.copytree(sample_run, data_dir, ignore=shutil.ignore_patterns("lake", "publish.json"))
    shutil.rmtree(data_dir / "notebooks" / "lake", ignore_errors=True)
    config = tmp_path / "cloud.yaml"
    config.write_text(json.dumps({"lake": {"catalog": f"postgres:{postgres_database}", **s3_lake}}))
    layout = Layout(data_dir)
    run = snakemake("-j1", "--configfile", str(config), "--config", f"data_dir={data_dir}", "--",
                    str(layout.lake_summary()))
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads(layout.lake_summary().read_text())
    assert summary["tables"] == json.loads(Layout(sample_run).lake_summary().read_text())["tables"]
    assert summary["catalog"].startswith("postgres:") and summary["data_path"] == s3_lake["data_path"]
    assert not layout.lake_catalog().exists() and s3_objects(s3_lake)
    written = [layout.executed_notebook("lake", "lake"), layout.log("lake", "lake"), layout.lake_summary()]
    for path in written:
        text = path.read_text()
        for secret in (seaweedfs.secret_key, os.environ["PGPASSWORD"]):
            assert secret not in text, path


# --- the workflow ----------------------------------------------------------------------

@pytest.mark.workflow
def test_sample_run_lake_holds_every_layer_and_a_second_publish_adds_no_snapshot(sample_run, sample_dir, tmp_path):
    layout = Layout(sample_run)
    manifest = load_manifest(sample_dir / "manifest.json")
    summary = json.loads(layout.lake_summary().read_text())
    assert summary["catalog"] == str(layout.lake_catalog().resolve())
    # the tables later stages declare (the lake rule's `tables` parameter) hold their files' rows
    declared = notebook_parameters(layout.executed_notebook("lake", "lake"))["tables"]
    assert "stac" in {t["layer"] for t in declared}
    expected = expected_rows(layout, manifest) | {
        f"{t['layer']}.{t['name']}": pq.read_metadata(t["path"]).num_rows for t in declared}
    assert summary["tables"] == expected
    assert summary["published"]["snapshot_id"] is not None
    nb = nbformat.read(layout.executed_notebook("lake", "lake"), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert "AT (VERSION =>" in "".join(c.source for c in nb.cells)
    # Publish again on a copy: the run's own outputs stay untouched for the other tests.
    for folder in ("staging", "prepared", "lake"):
        shutil.copytree(sample_run / folder, tmp_path / folder)
    copy = Layout(tmp_path)
    con = lake.connect_lake(copy.data_dir)
    n_snapshots = len(lake.snapshots(con))
    con.close()
    again = lake.publish_pipeline(copy, lake.pipeline_tables(
        copy, [manifest[d] for d in active_datasets(manifest)], progress=False, declared=declared), progress=False)
    assert again["published"]["snapshot_id"] is None
    con = lake.connect_lake(copy.data_dir)
    assert len(lake.snapshots(con)) == n_snapshots
