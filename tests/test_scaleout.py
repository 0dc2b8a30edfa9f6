"""The workflow on a real single-node Slurm cluster (tests/conftest.py: slurm_cluster),
with dedup partitioned into Slurm jobs and the lake on PostgreSQL + S3 (SeaweedFS).

Run alone with ``.venv/bin/python -m pytest tests/test_scaleout.py`` (as root, after
``bash workflow/scripts/setup.sh --test``); skipped with the reason where Slurm cannot start.
"""

from __future__ import annotations

import json
import re
import subprocess

import pyarrow.parquet as pq
import pytest

from pvlake.layout import Layout

from conftest import ROOT, SLURM_PROFILE as PROFILE, SLURM_TEST_ARGS, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

SUBMITTED = re.compile(r"Job (?P<job>\d+) has been submitted with SLURM jobid (?P<slurm>\d+)")
RULE = re.compile(r"^(?P<local>local)?rule (?P<rule>\w+):\n(?:    .*\n)*?    jobid: (?P<job>\d+)$", re.M)


def jobs_of(output: str) -> tuple[dict[str, str], dict[str, str]]:
    """Snakemake job id -> rule (``localrule`` jobs apart), and job id -> Slurm job id."""
    rules = {m["job"]: ("local:" if m["local"] else "") + m["rule"] for m in RULE.finditer(output)}
    return rules, {m["job"]: m["slurm"] for m in SUBMITTED.finditer(output)}


def slurm_state(slurm_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True, text=True).stdout
    return re.search(r"JobState=(\S+)", out)[1]


def parquet_outputs(data_dir) -> dict[str, object]:
    """Every Parquet output of a run outside the lake, by path relative to ``data_dir``."""
    return {str(p.relative_to(data_dir)): p for folder in ("staging", "prepared", "stac", "curated")
            for p in sorted((data_dir / folder).rglob("*.parquet"))}


def test_sample_pipeline_through_slurm_with_partitioned_dedup_and_the_lake_on_postgres_and_s3(
        slurm_sample_pipeline, sample_run):
    # started with the session (conftest: _slurm_pipeline_early); every job starts Snakemake
    # twice inside Slurm: give a loaded machine time
    returncode, output = slurm_sample_pipeline["wait"](timeout_s=2400)
    assert returncode == 0, output[-6000:]
    data_dir = slurm_sample_pipeline["data_dir"]
    database, s3_lake = slurm_sample_pipeline["database"], slurm_sample_pipeline["lake"]

    # every job but the `all` target went through sbatch, and Slurm saw it complete
    rules, submitted = jobs_of(output)
    assert {r for r in rules.values() if r.startswith("local:")} == {"local:all"}
    stage_jobs = {job for job, rule in rules.items() if not rule.startswith("local:")}
    assert stage_jobs == set(submitted), (rules, submitted)
    ran = sorted(rules[job] for job in stage_jobs)
    for rule in ("harmonize", "dedup_split", "dedup_partition", "dedup", "stac", "lake", "book"):
        assert rule in ran
    assert ran.count("dedup_partition") == 3
    assert {slurm_state(s) for s in submitted.values()} == {"COMPLETED"}

    # the same outputs as the local run of the sample (one-process dedup, DuckDB-file lake)
    local, cluster = parquet_outputs(sample_run), parquet_outputs(data_dir)
    assert set(cluster) == set(local) and len(local) >= 10
    for name, path in local.items():
        assert pq.read_table(cluster[name]).equals(pq.read_table(path), check_metadata=True), name
    layout, local_layout = Layout(data_dir), Layout(sample_run)
    report = json.loads(layout.dedup_report().read_text())
    assert report.pop("partitions")["partition"] == {"count": 3, "h3_resolution": 6}
    assert report == json.loads(local_layout.dedup_report().read_text())
    summary = json.loads(layout.lake_summary().read_text())
    local_tables = json.loads(local_layout.lake_summary().read_text())["tables"]
    assert set(summary["tables"]) == set(local_tables)
    # rows per table the same, but the cubes tables: this run's chips are small
    tabular = lambda tables: {k: v for k, v in tables.items() if not k.startswith("cubes.")}  # noqa: E731
    assert tabular(summary["tables"]) == tabular(local_tables)
    assert summary["catalog"] == f"postgres:{database}" and summary["data_path"] == s3_lake["data_path"]
    assert not layout.lake_catalog().exists()
    assert (data_dir.parent / "slurm data_book" / "html" / "index.html").exists()
    for path in [layout.executed_notebook("lake", "lake"), layout.log("lake", "lake"), layout.lake_summary()]:
        for secret in slurm_sample_pipeline["secrets"]:
            assert secret not in path.read_text()


def test_a_failing_job_is_reported_failed_and_the_others_finish(slurm_cluster, sample_dir, tmp_path):
    manifest = {
        "good_points": {"repo": "local", "path": str(sample_dir / "glosofarid_2024"), "label_fmt": "json"},
        "no_crs": {"repo": "local", "path": str(sample_dir / "usa_cali_usgs_pv_2016"), "label_fmt": "csv",
                   "lon_col": "centroid_longitude", "lat_col": "centroid_latitude"},
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    layout = Layout(tmp_path / "data")
    run = snakemake("--profile", PROFILE, *SLURM_TEST_ARGS, "--config", f"data_dir={layout.data_dir}",
                    f"manifest={path}", "--", *(str(layout.staging_parquet(name)) for name in manifest))
    output = run.stdout + run.stderr
    assert run.returncode != 0
    rules, submitted = jobs_of(output)
    failed = [job for job in submitted if slurm_state(submitted[job]) == "FAILED"]
    assert len(failed) == 1 and len(submitted) == 2 and set(rules[j] for j in submitted) == {"harmonize"}
    assert f"SLURM-job '{submitted[failed[0]]}' failed" in output and "Error in rule harmonize" in output
    assert layout.staging_parquet("good_points").exists() and not layout.staging_parquet("no_crs").exists()
    # the rule's own log says why
    assert "no CRS" in layout.log("harmonize", "no_crs").read_text()


def test_sbatch_fallback_profile_runs_a_job(slurm_cluster, sample_dir, tmp_path):
    """workflow/profiles/slurm-generic: plain sbatch and a squeue/scontrol status script."""
    layout = Layout(tmp_path / "data")
    target = layout.staging_parquet("glosofarid_2024")
    run = snakemake("--profile", "workflow/profiles/slurm-generic", "--config", f"data_dir={layout.data_dir}",
                    "--", str(target))
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    slurm_id = re.search(r"Submitted job \d+ with external jobid '(\d+)'", run.stdout + run.stderr)[1]
    assert slurm_state(slurm_id) == "COMPLETED" and target.exists()
    assert (ROOT / ".snakemake" / "slurm-generic" / f"{slurm_id}.log").exists()
