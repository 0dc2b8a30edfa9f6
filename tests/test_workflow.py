"""The Snakemake workflow end to end on the embedded sample (slow: runs notebooks)."""

from __future__ import annotations

import json

import geopandas as gpd
import nbformat
import pytest

from pvlake.layout import Layout
from pvlake.manifest import active_datasets, load_manifest

pytestmark = pytest.mark.workflow

from conftest import snakemake


def test_sample_run_writes_every_staging_output(sample_run, sample_dir):
    layout = Layout(sample_run)
    manifest = load_manifest(sample_dir / "manifest.json")
    truth = json.loads((sample_dir / "ground_truth.json").read_text())
    datasets = active_datasets(manifest)
    assert len(datasets) >= 6
    for name in datasets:
        staging = gpd.read_parquet(layout.staging_parquet(name))
        report = json.loads(layout.staging_report(name).read_text())
        assert len(staging) == report["rows_written"] == truth["expected_rows"][name], name
        assert staging.crs.to_epsg() == 4326 and staging.is_valid.all()
        nb = nbformat.read(layout.executed_notebook("harmonize", name), as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "pvlake"
        assert nb.metadata["papermill"]["parameters"]["dataset"] == name
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"]
        assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure is in the book
    assert not list(sample_run.rglob(".*.tmp-*"))  # no temp file left behind


def test_planted_quirks_are_handled(sample_run, sample_dir):
    layout = Layout(sample_run)
    truth = json.loads((sample_dir / "ground_truth.json").read_text())
    for record in truth["empty_geometries"]:
        staging = gpd.read_parquet(layout.staging_parquet(record["dataset"]))
        hit = staging[(staging.source_file == record["source_file"]) & (staging.source_row == record["source_row"])]
        assert hit.empty, record
    for record in truth["invalid_geometries"]:
        staging = gpd.read_parquet(layout.staging_parquet(record["dataset"]))
        hit = staging[(staging.source_file == record["source_file"]) & (staging.source_row == record["source_row"])]
        assert len(hit) == 1 and hit.geometry.iloc[0].is_valid, record


def test_second_run_has_nothing_to_do(sample_run):
    dry = snakemake("-n", "-j8", "--config", f"data_dir={sample_run}")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_changing_one_entry_reruns_only_that_dataset(sample_dir, tmp_path):
    sample = json.loads((sample_dir / "manifest.json").read_text())
    names = sorted(sample)[:2]
    manifest = {n: {**sample[n], "path": str((sample_dir / sample[n]["path"]).resolve())} for n in names}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    data_dir = tmp_path / "data"
    # the staging outputs only: later stages depend on every dataset anyway
    targets = [str(Layout(data_dir).staging_parquet(n)) for n in names]
    first = snakemake("-j8", *targets, "--config", f"data_dir={data_dir}", f"manifest={path}")
    assert first.returncode == 0, first.stderr[-3000:]
    manifest[names[0]]["keep_cols"] = list(manifest[names[0]].get("keep_cols") or []) + ["__extra__"]
    path.write_text(json.dumps(manifest, indent=2))
    dry = snakemake("-n", "-j8", *targets, "--config", f"data_dir={data_dir}", f"manifest={path}")
    planned = [line.strip() for line in dry.stdout.splitlines() if "wildcards: dataset=" in line]
    assert planned == [f"wildcards: dataset={names[0]}"], dry.stdout[-3000:]


def test_bad_datasets_fail_alone_with_one_clear_message(tmp_path, sample_dir):
    points = sample_dir / "glosofarid_2024"
    manifest = {
        "good_points": {"repo": "local", "path": str(points), "label_fmt": "json"},  # bare arrays: WGS84
        "no_crs": {"repo": "local", "path": str(sample_dir / "usa_cali_usgs_pv_2016"), "label_fmt": "csv",
                   "lon_col": "centroid_longitude", "lat_col": "centroid_latitude"},
        "bad_format": {"repo": "local", "path": str(points), "label_fmt": "kml"},
        "no_match": {"repo": "local", "path": str(points), "label_fmt": "json", "crs": "WGS84",
                     "file_filters": {"include_patterns": ["*.geojson"]}},
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    data_dir = tmp_path / "data"
    layout = Layout(data_dir)
    targets = [str(layout.staging_parquet(name)) for name in manifest]
    run = snakemake("-j8", "--keep-going", *targets, "--config", f"data_dir={data_dir}", f"manifest={path}")
    assert run.returncode != 0
    assert layout.staging_parquet("good_points").exists()
    for bad in ("no_crs", "bad_format", "no_match"):
        assert not layout.staging_parquet(bad).exists()
        assert layout.executed_notebook("harmonize", bad).exists()  # kept, with the traceback
    err = run.stderr
    assert "DatasetError: dataset 'no_crs' file polygonDataExceptVertices.csv: no CRS" in err
    assert "DatasetError: dataset 'bad_format': unknown label_fmt 'kml'" in err
    assert "DatasetError: dataset 'no_match' file" in err and "no json file matches the file filters" in err


def test_outputs_of_a_dataset_renamed_in_the_manifest_are_retired(sample_dir, tmp_path):
    sample = json.loads((sample_dir / "manifest.json").read_text())
    names = ["glosofarid_2024", "usa_cali_usgs_pv_2016"]
    manifest = {n: {**sample[n], "path": str((sample_dir / sample[n]["path"]).resolve())} for n in names}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    data_dir = tmp_path / "data"
    layout = Layout(data_dir)
    target = str(layout.prepared_parquet())
    first = snakemake("-j8", target, "--config", f"data_dir={data_dir}", f"manifest={path}")
    assert first.returncode == 0, first.stderr[-3000:]
    manifest["gsf_points"] = manifest.pop("glosofarid_2024")
    path.write_text(json.dumps(manifest, indent=2))
    second = snakemake("-j8", target, "--config", f"data_dir={data_dir}", f"manifest={path}")
    assert second.returncode == 0, second.stderr[-3000:]
    staged = sorted(p.name for p in (data_dir / "staging").iterdir())
    assert staged == ["gsf_points.parquet", "gsf_points.report.json",
                      "usa_cali_usgs_pv_2016.parquet", "usa_cali_usgs_pv_2016.report.json"]
    retired = sorted(p.name for p in layout.retired_dir("staging").iterdir())
    assert retired == ["glosofarid_2024.parquet", "glosofarid_2024.report.json"]
    prepared = gpd.read_parquet(layout.prepared_parquet())
    assert set(prepared["dataset"]) == {"gsf_points", "usa_cali_usgs_pv_2016"}
