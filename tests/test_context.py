"""pvlake.context: boundaries (Natural Earth offline, Overture over HTTP), the join, the
curated tables; checked against independent geopandas computations."""

from __future__ import annotations

import json
import subprocess
import sys

import geopandas as gpd
import h3
import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely
import yaml

from pvlake import context as cx
from pvlake.errors import DatasetError
from pvlake.layout import Layout
from pvlake.sample_overture import SAMPLE_RELEASE, SCHEMA
from pvlake.sources.http import RepositoryError


@pytest.fixture(scope="module")
def natural_earth():
    return cx.read_natural_earth()


def frame(geoms, **columns) -> gpd.GeoDataFrame:
    geoms = np.asarray(geoms, dtype=object)
    n = len(geoms)
    data = {"pv_id": [f"pv{i:03d}" for i in range(n)], "dataset": ["a"] * n, **columns}
    gdf = gpd.GeoDataFrame(data, geometry=geoms, crs="EPSG:4326")
    gdf["geom_type"] = gdf.geom_type
    lon, lat = cx.geo.centroid_lonlat(geoms)
    gdf["centroid_lon"], gdf["centroid_lat"] = lon, lat
    gdf["area_m2"] = cx.geo.geodesic_area_m2(geoms)
    return gdf


def square(lon: float, lat: float, half_deg: float) -> shapely.Polygon:
    return shapely.box(lon - half_deg, lat - half_deg, lon + half_deg, lat + half_deg)


# ---------------------------------------------------------------- Natural Earth


def test_natural_earth_ships_offline_with_iso_codes(natural_earth):
    boundaries, source = natural_earth
    assert source == "natural_earth_10m_v5.1.1"
    assert cx.natural_earth_path().name == cx.NATURAL_EARTH_FILE
    assert len(boundaries) == 250 and (boundaries["level"] == "country").all()
    assert boundaries.geometry.is_valid.all() and boundaries.crs.to_epsg() == 4326
    by_name = boundaries.set_index("country_name")
    # Natural Earth's -99 for France and Norway is replaced by the ISO code it also carries
    assert by_name.loc["France", "country_iso3"] == "FRA" and by_name.loc["Norway", "country_iso3"] == "NOR"
    assert pd.isna(by_name.loc["Kosovo", "country_iso3"])  # no ISO alpha-3 code
    assert cx.iso3_by_iso2()["DE"] == "DEU"


def test_a_corrupt_natural_earth_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "countries.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="natural_earth.*countries.zip.*cannot be read"):
        cx.read_natural_earth(bad)


# ---------------------------------------------------------------- the join


def test_subdivide_keeps_every_piece_small_and_the_area_whole(natural_earth):
    boundaries, _ = natural_earth
    geoms = boundaries.geometry.to_numpy()
    pieces, owner = cx.subdivide(geoms, max_vertices=128)
    assert (shapely.get_num_coordinates(pieces) <= 128).all()
    per_country = np.bincount(owner, weights=shapely.area(pieces), minlength=len(geoms))
    assert np.allclose(per_country, shapely.area(geoms), rtol=1e-9, atol=1e-9)


def test_inside_border_offshore_unmatched(natural_earth):
    boundaries, source = natural_earth
    # Strasbourg's bridge over the Rhine: 70 % of the square west of the river (France)
    rhine = shapely.box(7.8017 - 0.007, 48.5680, 7.8017 + 0.003, 48.5740)
    cases = {
        "berlin": shapely.Point(13.40, 52.52),
        "rhine": rhine,
        "off_lisbon": shapely.Point(-9.60, 38.70),  # ~10 km off Cabo da Roca
        "mid_atlantic": shapely.Point(-35.0, 35.0),
        "london_roof": square(-0.12, 51.5, 1e-4),
    }
    gdf = frame(list(cases.values()))
    enriched = cx.enrich(gdf, boundaries, source, progress=False).set_index(pd.Index(list(cases)))
    assert len(enriched) == len(cases)  # never dropped
    assert enriched.loc["berlin", ["country_iso3", "boundary_match"]].tolist() == ["DEU", "inside"]
    assert enriched.loc["london_roof", "country_name"] == "United Kingdom"
    assert enriched.loc["rhine", "boundary_match"] == "border"
    # independent: areas of the square in each country, in an equal-area projection
    pieces = gpd.overlay(gpd.GeoDataFrame(geometry=[rhine], crs=4326),
                         boundaries[boundaries["country_iso3"].isin(["FRA", "DEU"])], how="intersection")
    pieces["km2"] = pieces.to_crs("EPSG:6933").area / 1e6
    expected = pieces.groupby("country_iso3")["km2"].sum()
    assert enriched.loc["rhine", "country_iso3"] == expected.idxmax()
    assert enriched.loc["rhine", "country_share"] == pytest.approx(expected.max() / expected.sum(), abs=0.01)
    off = enriched.loc["off_lisbon"]
    assert (off["country_iso3"], off["boundary_match"]) == ("PRT", "offshore")
    portugal = boundaries[boundaries["country_iso3"] == "PRT"]
    aeqd = pyproj.CRS.from_proj4("+proj=aeqd +lat_0=38.70 +lon_0=-9.60 +datum=WGS84")
    assert off["boundary_distance_m"] == pytest.approx(portugal.to_crs(aeqd).distance(shapely.Point(0, 0)).min(), rel=1e-3)
    lost = enriched.loc["mid_atlantic"]
    assert lost["boundary_match"] == "unmatched" and pd.isna(lost["country_iso3"]) and pd.isna(lost["country_name"])
    assert set(cx.CONTEXT_COLUMNS) <= set(enriched.columns)
    assert (enriched["boundary_source"] == source).all()
    # without the offshore search the point off Lisbon stays unmatched
    strict = cx.enrich(gdf, boundaries, source, offshore_max_m=0, progress=False)
    assert strict["boundary_match"].tolist()[2] == "unmatched"


def test_installations_cut_at_the_antimeridian(natural_earth):
    boundaries, source = natural_earth
    # a farm on Chukotka across 180 degrees, stored cut into two parts (RFC 7946)
    farm = shapely.MultiPolygon([shapely.box(179.99, 66.30, 180.0, 66.31), shapely.box(-180.0, 66.30, -179.99, 66.31)])
    # a point in the sea just east of 180 whose nearest land is west of it (Taveuni, Fiji)
    sea = shapely.Point(-179.80, -16.80)
    enriched = cx.enrich(frame([farm, sea]), boundaries, source, progress=False)
    assert enriched["country_iso3"].tolist() == ["RUS", "FJI"]
    assert enriched["boundary_match"].tolist()[0] == "inside"
    if enriched["boundary_match"].tolist()[1] == "offshore":
        fiji = boundaries[boundaries["country_iso3"] == "FJI"]
        aeqd = pyproj.CRS.from_proj4("+proj=aeqd +lat_0=-16.80 +lon_0=-179.80 +datum=WGS84")
        assert enriched["boundary_distance_m"].iloc[1] == pytest.approx(
            fiji.to_crs(aeqd).distance(shapely.Point(0, 0)).min(), rel=1e-3)


def test_join_agrees_with_geopandas_on_many_installations(natural_earth):
    """Random points and small squares over Europe and North Africa (coasts, borders, sea)
    against an independent geopandas sjoin + overlay."""
    boundaries, source = natural_earth
    rng = np.random.default_rng(5)
    lon, lat = rng.uniform(-10, 30, 3000), rng.uniform(30, 60, 3000)
    geoms = np.r_[shapely.points(lon[:1500], lat[:1500]),
                  shapely.box(lon[1500:], lat[1500:], lon[1500:] + 0.05, lat[1500:] + 0.05)]
    gdf = frame(geoms)
    enriched = cx.enrich(gdf, boundaries, source, offshore_max_m=0, progress=False)
    countries = boundaries[["adm0_a3", "country_name", "geometry"]]
    hits = gpd.sjoin(gdf[["pv_id", "geometry"]], countries, predicate="intersects", how="inner")
    n_hits = hits.groupby("pv_id").size()
    single = hits[hits["pv_id"].map(n_hits) == 1].set_index("pv_id")["country_name"]
    several = gdf[gdf["pv_id"].isin(n_hits[n_hits > 1].index)]
    parts = gpd.overlay(several[["pv_id", "geometry"]], countries, how="intersection", keep_geom_type=True)
    parts["area"] = parts.to_crs("EPSG:6933").area
    best = parts.sort_values("area", ascending=False).drop_duplicates("pv_id").set_index("pv_id")["country_name"]
    expected = pd.concat([single, best])
    got = enriched.set_index("pv_id")["country_name"]
    assert got.notna().sum() == len(expected)
    assert (got[expected.index] == expected).mean() >= 0.999  # equal-area vs degree areas may flip a tie
    assert (enriched.set_index("pv_id").loc[several["pv_id"], "boundary_match"] == "border").all()
    assert (got.isna() == ~got.index.isin(expected.index)).all()


# ---------------------------------------------------------------- curated layer


def test_curated_tables_add_up(natural_earth):
    boundaries, source = natural_earth
    geoms = [shapely.Point(13.4, 52.5), shapely.Point(2.35, 48.85), square(2.30, 48.80, 0.001), shapely.Point(-35.0, 35.0)]
    gdf = frame(geoms, capacity_mw=[1.0, np.nan, 2.5, 4.0], n_datasets=[1, 2, 1, 1],
                source_datasets=[["a"], ["a", "b"], ["b"], ["a"]])
    gdf["dataset"] = ["a", "a", "b", "a"]
    enriched = cx.enrich(gdf, boundaries, source, progress=False)
    countries = cx.country_stats(enriched, boundaries)
    by = countries.set_index("country_name", drop=False)
    assert countries["installations"].sum() == 4 and countries["share_of_installations"].sum() == pytest.approx(1.0)
    france = by.loc["France"]
    assert (france["installations"], france["points"], france["polygons"]) == (2, 1, 1)
    assert france["capacity_mw"] == 2.5 and france["installations_with_capacity"] == 1
    assert france["multi_dataset_installations"] == 1
    assert france["total_area_m2"] == pytest.approx(enriched["area_m2"].iloc[2])
    assert france.geometry.equals(boundaries.set_index("country_name").loc["France", "geometry"])
    unmatched = countries[countries["country_name"].isna()]
    assert len(unmatched) == 1 and unmatched["installations"].item() == 1 and unmatched.geometry.isna().all()
    shares = cx.country_dataset_stats(enriched)
    fr = shares[shares["country_name"] == "France"].set_index("dataset")
    assert fr.loc["a", "installations_mapped"] == 1 and fr.loc["b", "installations_mapped"] == 2
    assert fr.loc["b", "installations_kept"] == 1 and fr.loc["b", "share_mapped"] == 1.0
    cells = cx.h3_stats(enriched, 3)
    assert cells["installations"].sum() == 4 and (cells["h3_resolution"] == 3).all()
    paris = h3.latlng_to_cell(48.85, 2.35, 3)
    assert paris in set(cells["h3_cell"])
    hexagon = cells.set_index("h3_cell").loc[paris, "geometry"]
    assert hexagon.contains(shapely.Point(2.35, 48.85))


def test_h3_cells_across_the_antimeridian_are_cut():
    cell = h3.latlng_to_cell(-16.8, 179.99, 3)
    (hexagon,) = cx.h3_boundary([cell])
    xmin, _, xmax, _ = hexagon.bounds
    assert hexagon.geom_type == "MultiPolygon" and xmin == -180.0 and xmax == 180.0


# ---------------------------------------------------------------- Overture over HTTP


def test_sample_release_has_overtures_schema(overture_release):
    import pyarrow.parquet as pq

    files = sorted(overture_release.glob(f"{cx.overture_prefix(SAMPLE_RELEASE)}*.parquet"))
    assert len(files) == 2
    schema = pq.read_schema(files[0])
    assert schema.names == SCHEMA.names
    geo_meta = json.loads(schema.metadata[b"geo"])
    assert geo_meta["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert pq.ParquetFile(files[0]).metadata.num_row_groups > 3


def test_overture_files_are_listed_page_by_page(overture_bucket):
    urls = cx.list_overture_files(overture_bucket.url, SAMPLE_RELEASE)
    assert len(urls) == 2 and all(u.startswith(overture_bucket.url + "/release/") for u in urls)
    listings = [s for s in overture_bucket.seen if "list-type=2" in s.query]
    assert len(listings) == 2 and "continuation-token=1" in listings[1].query  # one key per page
    assert cx.list_overture_releases(overture_bucket.url) == [SAMPLE_RELEASE]


def test_overture_reads_only_what_the_installations_need(overture_bucket, overture_release):
    london = frame([square(-0.12, 51.5, 1e-3), shapely.Point(-2.6, 51.45)])
    boxes = cx.query_boxes(london.geometry.to_numpy())
    assert boxes == [(-3.0, 51.0, -2.0, 52.0), (-1.0, 51.0, 0.0, 52.0)]
    boundaries, source = cx.get_overture_divisions(overture_bucket.url, SAMPLE_RELEASE, boxes)
    assert source == f"overture_{SAMPLE_RELEASE}"
    countries = boundaries[boundaries["level"] == "country"].set_index("country_iso3")
    # by their bbox, the United States (the Aleutians cross 180 degrees) and France (its
    # overseas regions) reach London too; no other country
    assert set(countries.index) == {"GBR", "USA", "FRA"}
    # GBR has no English common name in the sample: its primary name is kept
    assert countries.loc["GBR", "country_name"] == "United Kingdom"
    regions = boundaries[boundaries["level"] == "region"].set_index("region_code")
    assert "GB-SE" in regions.index and regions.loc["GB-SE", "country_name"] == "United Kingdom"
    # range requests, and far less than the release's bytes
    ranged = [s for s in overture_bucket.seen if s.method == "GET" and s.range]
    assert ranged
    total = sum(p.stat().st_size for p in overture_release.rglob("*.parquet"))
    assert overture_bucket.bytes_sent < 0.7 * total
    enriched = cx.enrich(london, boundaries, source, progress=False)
    assert enriched["country_iso3"].tolist() == ["GBR", "GBR"]
    assert enriched["region_name"].notna().all() and enriched["region_name"].str.startswith("United Kingdom ").all()


def test_overture_names_and_maritime_areas(overture_bucket):
    berlin = shapely.Point(13.40, 52.52)
    sea = shapely.Point(-9.60, 38.70)  # in the sample's territorial-sea ring of Portugal, off land
    gdf = frame([berlin, sea])
    boundaries, source = cx.get_overture_divisions(overture_bucket.url, SAMPLE_RELEASE,
                                                   cx.query_boxes(gdf.geometry.to_numpy()))
    enriched = cx.enrich(gdf, boundaries, source, progress=False)
    # English name from names.common.en (the primary name is "Deutschland")
    assert enriched["country_name"].tolist() == ["Germany", "Portugal"]
    # the maritime area is not land: the point is offshore, not inside
    assert enriched["boundary_match"].tolist() == ["inside", "offshore"]


def test_overture_release_missing_or_bucket_failing(overture_bucket):
    with pytest.raises(DatasetError, match=f"release '1999-01-01.0' has no division_area files; releases there: {SAMPLE_RELEASE}"):
        cx.list_overture_files(overture_bucket.url, "1999-01-01.0")
    overture_bucket.faults["/"] = 503
    with pytest.raises(RepositoryError, match="HTTP 503"):
        cx.get_overture_divisions(overture_bucket.url, SAMPLE_RELEASE, [(-1.0, 51.0, 0.0, 52.0)], attempts=1)


def test_overture_file_that_is_not_parquet(tmp_path):
    bad = tmp_path / "part-00000.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match="overture_divisions.*cannot be read as Overture division_area GeoParquet"):
        cx.read_overture_divisions([str(bad)], [(-1.0, 51.0, 0.0, 52.0)])


def test_query_boxes_merge_cells_and_coarsen():
    geoms = shapely.points([0.5, 1.5, 2.5, 10.5], [0.5, 0.5, 0.5, 0.5])
    assert cx.query_boxes(geoms) == [(0.0, 0.0, 3.0, 1.0), (10.0, 0.0, 11.0, 1.0)]
    assert cx.query_boxes(geoms, max_boxes=1) == [(0.0, 0.0, 16.0, 8.0)]  # the grid doubled to 8 degrees
    # an installation across +-180 gets a box on each side
    cut = shapely.MultiPolygon([shapely.box(179.9, 0.1, 180.0, 0.2), shapely.box(-180.0, 0.1, -179.9, 0.2)])
    assert cx.query_boxes(np.array([cut], dtype=object)) == [(-180.0, 0.0, -179.0, 1.0), (179.0, 0.0, 180.0, 1.0)]


def test_context_notebook_runs_the_overture_path_over_http(overture_bucket, sample_run, tmp_path, repo_root):
    """The stage's notebook, as the rule runs it, with boundaries = overture and the base
    URL of the local bucket (a mirror): countries and regions for the sample."""
    layout = Layout(tmp_path / "data")
    layout.prepared_parquet().parent.mkdir(parents=True)
    layout.prepared_parquet().write_bytes(Layout(sample_run).prepared_parquet().read_bytes())
    settings = yaml.safe_load((repo_root / "workflow" / "config" / "config.yaml").read_text())["context"]
    settings["boundaries"] = "overture"
    settings["overture"]["base_url"] = overture_bucket.url
    params = json.dumps({"data_dir": str(layout.data_dir), "context": settings})
    run = subprocess.run([sys.executable, "-m", "pvlake.notebook", str(repo_root / "notebooks" / "context.ipynb"),
                          str(tmp_path / "context.ipynb"), "--params", params, "--log", str(tmp_path / "context.log")],
                         capture_output=True, text=True, cwd=repo_root, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(layout.context_report().read_text())
    assert report["boundary_source"] == f"overture_{SAMPLE_RELEASE}"
    assert report["boundaries"]["region"] > 0 and report["with_region"] > 0.9 * report["installations"]
    enriched = gpd.read_parquet(layout.context_installations())
    natural = gpd.read_parquet(Layout(sample_run).context_installations()).set_index("pv_id")
    same = (enriched.set_index("pv_id")["country_iso3"] == natural.loc[enriched["pv_id"], "country_iso3"].to_numpy())
    assert same.mean() > 0.97  # the sample's Overture countries are Natural Earth's, simplified
    assert overture_bucket.bytes_sent > 0


# ---------------------------------------------------------------- the workflow


@pytest.mark.workflow
def test_sample_run_enriches_every_installation_as_geopandas_does(sample_run):
    """The curated tables of the sample run against an independent geopandas computation."""
    layout = Layout(sample_run)
    prepared = gpd.read_parquet(layout.prepared_parquet())
    enriched = gpd.read_parquet(layout.context_installations())
    assert len(enriched) == len(prepared) and set(enriched["pv_id"]) == set(prepared["pv_id"])
    assert enriched["pv_id"].is_monotonic_increasing  # a stable order
    boundaries, source = cx.read_natural_earth()
    assert (enriched["boundary_source"] == source).all()
    countries = boundaries[["adm0_a3", "country_iso3", "country_name", "geometry"]]
    hits = gpd.sjoin(prepared[["pv_id", "geometry"]], countries, predicate="intersects", how="left")
    first = hits.sort_values(["pv_id", "adm0_a3"]).drop_duplicates("pv_id").set_index("pv_id")
    got = enriched.set_index("pv_id")
    assert (got.loc[first.index, "country_name"].fillna("") == first["country_name"].fillna("")).all()
    # per country: installations, area, capacity, multi-dataset, as geopandas counts them
    joined = prepared.merge(first[["country_iso3", "country_name"]], left_on="pv_id", right_index=True)
    expected = joined.groupby("country_name").agg(
        installations=("pv_id", "size"), total_area_m2=("area_m2", "sum"), capacity_mw=("capacity_mw", "sum"),
        multi_dataset_installations=("n_datasets", lambda s: int((s > 1).sum())))
    stats = gpd.read_parquet(layout.country_stats()).set_index("country_name")
    for column in expected.columns:
        assert np.allclose(stats.loc[expected.index, column].to_numpy(dtype=float), expected[column].to_numpy(dtype=float)), column
    shares = pd.read_parquet(layout.country_datasets())
    mapped = joined.explode("source_datasets").groupby(["country_name", "source_datasets"]).size()
    got_shares = shares.set_index(["country_name", "dataset"])["installations_mapped"]
    assert got_shares.sort_index().tolist() == mapped.sort_index().tolist()
    cells = gpd.read_parquet(layout.h3_stats())
    expected_cells = pd.Series([h3.latlng_to_cell(la, lo, 3) for lo, la in
                                zip(prepared["centroid_lon"], prepared["centroid_lat"])]).value_counts()
    assert cells.set_index("h3_cell")["installations"].sort_index().to_dict() == expected_cells.sort_index().to_dict()


@pytest.mark.workflow
def test_sample_run_publishes_the_curated_layer(sample_run):
    from pvlake.lake import connect_lake

    layout = Layout(sample_run)
    con = connect_lake(sample_run)
    rows = dict(con.execute(
        "SELECT table_name, estimated_size FROM duckdb_tables() WHERE database_name = 'lake' AND schema_name = 'curated'"
    ).fetchall())
    assert {"pv_installations_context", "country_stats", "country_datasets", "h3_stats"} <= set(rows)
    n = con.execute("SELECT count(*), count(country_iso3) FROM lake.curated.pv_installations_context").fetchone()
    assert n[0] == len(gpd.read_parquet(layout.prepared_parquet())) and n[1] > 0
    top = con.execute("SELECT country_name FROM lake.curated.country_stats ORDER BY installations DESC LIMIT 1").fetchone()
    assert top[0] == gpd.read_parquet(layout.country_stats())["country_name"].iloc[0]
    con.close()
