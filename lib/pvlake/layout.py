"""Where every output of the pipeline lives, so no path string is written twice.

Everything a run writes sits under ``data_dir``; the layers follow the design:
``raw`` (as downloaded), ``staging`` (harmonized, one table per dataset), ``prepared``
(de-duplicated) and ``curated`` (enriched products).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Named locations under one ``data_dir``.

    Parameters
    ----------
    data_dir : str or Path
        Root of everything a run writes.
    """

    data_dir: Path

    def __init__(self, data_dir: str | Path):
        object.__setattr__(self, "data_dir", Path(data_dir))

    def raw_dir(self, dataset: str) -> Path:
        """Folder of a dataset's downloaded files."""
        return self.data_dir / "raw" / dataset

    def raw_manifest(self, dataset: str) -> Path:
        """Provenance of a dataset's downloaded files; the download stage writes it last."""
        return self.raw_dir(dataset) / "MANIFEST.json"

    def download_cache(self, dataset: str) -> Path:
        """A dataset's files exactly as fetched (archives included), reused by reruns."""
        return self.data_dir / "downloads" / dataset

    def staging_parquet(self, dataset: str) -> Path:
        """Harmonized GeoParquet of one dataset."""
        return self.data_dir / "staging" / f"{dataset}.parquet"

    def staging_report(self, dataset: str) -> Path:
        """JSON summary of what harmonize read, repaired and dropped."""
        return self.data_dir / "staging" / f"{dataset}.report.json"

    def prepared_parquet(self) -> Path:
        """De-duplicated installations of every dataset (GeoParquet)."""
        return self.data_dir / "prepared" / "pv_installations.parquet"

    def dedup_report(self) -> Path:
        """JSON report of the dedup stage (pairs per rule, clusters, overlaps, scores)."""
        return self.data_dir / "prepared" / "dedup_report.json"

    def dedup_work_dir(self) -> Path:
        """Intermediate files of a partitioned dedup (config ``dedup.partitions`` > 1)."""
        return self.data_dir / "dedup"

    def dedup_records(self) -> Path:
        """Per-record columns the partitioned dedup's merge reads (Parquet, no geometry)."""
        return self.dedup_work_dir() / "records.parquet"

    def dedup_partition(self, part: int | str) -> Path:
        """Records of one dedup partition, halo included (Parquet)."""
        return self.dedup_work_dir() / f"part-{part}.parquet"

    def dedup_pairs(self, part: int | str) -> Path:
        """Duplicate pairs one dedup partition found and owns (Parquet)."""
        return self.dedup_work_dir() / f"pairs-{part}.parquet"

    def dedup_split_report(self) -> Path:
        """JSON report of the dedup split: records per partition, halo, coarse cells."""
        return self.dedup_work_dir() / "split.json"

    def stac_dir(self) -> Path:
        """The STAC stage's outputs: the catalogue of scenes found and their assignment."""
        return self.data_dir / "stac"

    def stac_items(self) -> Path:
        """Every STAC item found, once, as stac-geoparquet."""
        return self.stac_dir() / "items.parquet"

    def stac_matches(self) -> Path:
        """The scenes selected for each installation (Parquet)."""
        return self.stac_dir() / "matches.parquet"

    def stac_skipped(self) -> Path:
        """Installations without a usable scene and why (Parquet)."""
        return self.stac_dir() / "skipped.parquet"

    def stac_report(self) -> Path:
        """JSON report of the STAC search: requests, cache hits, items, skipped."""
        return self.stac_dir() / "search_report.json"

    def stac_cache(self) -> Path:
        """Answers of catalogue requests, one file per request key (kept across runs)."""
        return self.data_dir / "cache" / "stac"

    def rustac_extensions(self) -> Path:
        """DuckDB extension folder for rustac's embedded DuckDB (links to the wheels' files)."""
        return self.data_dir / "cache" / "rustac-duckdb"

    def energy_parquet(self) -> Path:
        """Expected yield of every installation (Parquet, the lake's ``curated.pv_energy``)."""
        return self.data_dir / "curated" / "pv_energy.parquet"

    def energy_profile(self) -> Path:
        """Hourly AC power of the installations summed per coarse H3 cell (Parquet)."""
        return self.data_dir / "curated" / "pv_energy_profile.parquet"

    def energy_report(self) -> Path:
        """JSON report of the energy stage: weather cells, sources, flags, timing."""
        return self.data_dir / "curated" / "pv_energy_report.json"

    def energy_validation(self) -> Path:
        """JSON of the model's checks: agreement with pvlib's ModelChain, measured power."""
        return self.data_dir / "curated" / "pv_energy_validation.json"

    def forecast_eval(self) -> Path:
        """Every forecast of the forecasting stage's evaluation (Parquet, ``curated.forecast_eval``)."""
        return self.data_dir / "curated" / "forecast_eval.parquet"

    def forecast_scores(self) -> Path:
        """Forecast errors and skill per system, setting, product, method and horizon (Parquet)."""
        return self.data_dir / "curated" / "forecast_scores.parquet"

    def forecast_report(self) -> Path:
        """JSON report of the forecasting stage: systems, folds, quality, scores, verdicts, timing."""
        return self.data_dir / "curated" / "forecast_report.json"

    def pv_forecast(self) -> Path:
        """Day-ahead relative output per installation and hour (Parquet, ``curated.pv_forecast``)."""
        return self.data_dir / "curated" / "pv_forecast.parquet"

    def models_dir(self) -> Path:
        """Trained models with their metadata."""
        return self.data_dir / "models"

    def forecast_model(self) -> Path:
        """The day-ahead forecasting trees (joblib)."""
        return self.models_dir() / "forecast_day_ahead.joblib"

    def forecast_model_metadata(self) -> Path:
        """What the saved forecasting model is: features, training span, metrics, versions (JSON)."""
        return self.models_dir() / "forecast_day_ahead.json"

    def weather_cache(self) -> Path:
        """Answers of weather services, one file per service and H3 cell (kept across runs)."""
        return self.data_dir / "cache" / "weather"

    def cubes_dir(self) -> Path:
        """The cubes stage: the Icechunk repository of chips and masks, and its index."""
        return self.data_dir / "cubes"

    def cubes_index(self) -> Path:
        """Every chip of the last run: footprint, installations, scenes, snapshot (GeoParquet)."""
        return self.cubes_dir() / "chips.parquet"

    def cubes_skipped(self) -> Path:
        """Installations and chips left out of the cube and why (Parquet)."""
        return self.cubes_dir() / "skipped.parquet"

    def cubes_report(self) -> Path:
        """JSON report of the cubes stage: chips loaded and reused, skipped, snapshot, timing."""
        return self.cubes_dir() / "report.json"

    def baseline_scores(self) -> Path:
        """Per-chip split and scores of the baseline segmentation (Parquet)."""
        return self.cubes_dir() / "baseline_scores.parquet"

    def baseline_report(self) -> Path:
        """JSON of the baseline segmentation: overall scores, confusion matrix, settings."""
        return self.cubes_dir() / "baseline.json"

    def sample_imagery_dir(self) -> Path:
        """COGs rendered for the embedded sample's STAC catalogue (its folder structure)."""
        return self.data_dir / "sample_imagery"

    def sample_imagery_report(self) -> Path:
        """JSON written when the sample's imagery is rendered: scenes, files, blocks."""
        return self.sample_imagery_dir() / "imagery.json"

    def curated_dir(self) -> Path:
        """Enriched and aggregated products (the curated layer)."""
        return self.data_dir / "curated"

    def context_installations(self) -> Path:
        """Every prepared installation with its country and region (GeoParquet)."""
        return self.curated_dir() / "pv_installations_context.parquet"

    def country_stats(self) -> Path:
        """Installations, area, capacity and datasets per country, with its boundary (GeoParquet)."""
        return self.curated_dir() / "country_stats.parquet"

    def country_datasets(self) -> Path:
        """Installations per country and source dataset (Parquet)."""
        return self.curated_dir() / "country_datasets.parquet"

    def h3_stats(self) -> Path:
        """Installations and area per coarse H3 cell, with its hexagon (GeoParquet)."""
        return self.curated_dir() / "h3_stats.parquet"

    def context_report(self) -> Path:
        """JSON report of the context stage: boundary source, matches, countries."""
        return self.curated_dir() / "context_report.json"

    def lake_dir(self) -> Path:
        """The DuckLake lakehouse: catalog plus its data files."""
        return self.data_dir / "lake"

    def lake_catalog(self) -> Path:
        """DuckLake metadata catalog (a DuckDB file)."""
        return self.lake_dir() / "catalog.ducklake"

    def lake_data(self) -> Path:
        """Folder of the lake's Parquet data files."""
        return self.lake_dir() / "data"

    def lake_summary(self) -> Path:
        """JSON written by each lake publish: snapshot id, tables and row counts."""
        return self.lake_dir() / "publish.json"

    def retired_dir(self, layer: str) -> Path:
        """Where outputs of datasets no longer in the manifest are moved, out of the way of
        anyone reading the layer's folder (``retired/<layer>/``)."""
        return self.data_dir / "retired" / layer

    def executed_notebook(self, stage: str, name: str) -> Path:
        """Executed copy of a stage notebook (kept for the book)."""
        return self.data_dir / "notebooks" / stage / f"{name}.ipynb"

    def log(self, stage: str, name: str) -> Path:
        """Plain-text log of one rule run."""
        return self.data_dir / "logs" / stage / f"{name}.log"
