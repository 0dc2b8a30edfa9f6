import json
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from pvlake.errors import DatasetError
from pvlake.layout import Layout
from pvlake.manifest import active_datasets, load_manifest
from pvlake.sources import find_label_files
from pvlake.stac import active_catalogs, load_stac_manifest


validate(config, "../schemas/config.schema.yaml")

LAYOUT = Layout(config["data_dir"])
MANIFEST = load_manifest(config["manifest"])
DATASETS = active_datasets(MANIFEST)
# The project's interpreter, whatever `python` is on PATH, as $PYTHON in every job's shell:
# not a param, since where the environment lives does not change results (moving it, or
# reaching it through another path, reruns nothing).
shell.prefix(f"set -euo pipefail; PYTHON={shlex.quote(sys.executable)}; ")


wildcard_constraints:
    dataset="|".join(DATASETS) or "NO_DATASET",


def dataset_inputs(wildcards):
    """Files a dataset's harmonize step reads: its selected local files, or the
    download stage's provenance file. A dataset whose files cannot be listed still
    gets a job, which then fails with the reason (other datasets go on)."""
    spec = MANIFEST[wildcards.dataset]
    if spec.repo != "local":
        return [str(LAYOUT.raw_dir(spec.name) / "MANIFEST.json")]
    try:
        spec.check()
        return sorted({str(lf.path) for lf in find_label_files(spec)})
    except DatasetError:
        return []


def notebook_params(**params):
    """Notebook parameters as the JSON string the runner takes (never secrets)."""
    return json.dumps(params, sort_keys=True)


# Final outputs of `snakemake -j8`: each stage's .smk file appends its own.
TARGETS = []


def ground_truth_path():
    """The planted duplicates to score against (config dedup.ground_truth), or None."""
    value = config["dedup"]["ground_truth"]
    if value == "auto":
        candidate = Path(config["manifest"]).parent / "ground_truth.json"
        return str(candidate) if candidate.exists() else None
    return value


def stac_catalog_files(wildcards):
    """Every file of the local static catalogues the STAC manifest searches, so a
    regenerated catalogue reruns the search (remote ones are cached per request)."""
    files = []
    for spec in active_catalogs(load_stac_manifest(config["stac"]["manifest"])):
        if spec.catalog_type == "static" and not spec.is_url:
            files += sorted(str(p) for p in Path(spec.catalog_uri).parent.rglob("*.json"))
    return files
