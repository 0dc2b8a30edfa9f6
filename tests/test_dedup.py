import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely
import shapely.affinity
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pvlake import geo
from pvlake.dedup import (
    DedupParams,
    candidate_pairs,
    classify_pairs,
    dedup,
    merged_records,
    overlap_matrix,
    disk_k,
    score_against_truth,
    write_prepared,
)
from pvlake.harmonize import SCHEMA, finalize, harmonize_dataset
from pvlake.manifest import active_datasets, load_manifest, parse_entry

from pvlake.dedup import M_PER_DEG  # noqa: E402 (one definition of the local scale)


def staging_of(records: list[dict]) -> gpd.GeoDataFrame:
    """Canonical staging rows from (dataset, geometry[, capacity_mw]) records."""
    frames = []
    for n, r in enumerate(records):
        g = r["geometry"]
        lon, lat = geo.centroid_lonlat(np.array([g], dtype=object))
        frames.append(gpd.GeoDataFrame({
            "dataset": r.get("dataset", "a"), "source_id": None,
            "geom_type": g.geom_type, "area_m2": geo.geodesic_area_m2(np.array([g], dtype=object)),
            "centroid_lon": lon, "centroid_lat": lat, "h3_cell": "x",
            "capacity_mw": r.get("capacity_mw", np.nan), "install_year": pd.array([r.get("install_year")], dtype="Int32"),
            "source_area_m2": np.nan, "attributes": None, "source_file": "f", "source_row": n,
        }, geometry=[g], crs=4326))
    out = pd.concat([finalize([f], r.get("dataset", "a")) for f, r in zip(frames, records)], ignore_index=True)
    return gpd.GeoDataFrame(out, geometry="geometry", crs=4326)


def square_m(lon, lat, side_m, dx_m=0.0):
    """A square of side_m metres whose south-west corner is dx_m east of (lon, lat)."""
    k = 1 / (M_PER_DEG * np.cos(np.radians(lat)))
    x0 = lon + dx_m * k
    return shapely.box(x0, lat, x0 + side_m * k, lat + side_m / M_PER_DEG)


def offset_m(lon, lat, east_m, north_m=0.0):
    return shapely.Point(lon + east_m / (M_PER_DEG * np.cos(np.radians(lat))), lat + north_m / M_PER_DEG)


LON, LAT = -79.79, 36.07  # Greensboro NC


def test_exact_duplicates_ignore_vertex_order():
    a = square_m(LON, LAT, 30)
    b = shapely.Polygon(list(a.exterior.coords)[::-1])
    p = shapely.Point(LON, LAT)
    st = staging_of([{"geometry": a}, {"geometry": b, "dataset": "b"}, {"geometry": square_m(LON, LAT, 31)},
                     {"geometry": p}, {"geometry": p}])
    pairs = classify_pairs(st, *candidate_pairs(st, DedupParams()), DedupParams())
    assert {tuple(map(int, x)) for x in zip(*pairs["exact"])} == {(0, 1), (3, 4)}
    assert (0, 2) in set(zip(*pairs["polygon_polygon"]))  # nested, not equal
    # equal points merge even when the merge distance is zero
    zero = DedupParams(point_merge_m=0)
    assert len(classify_pairs(st, *candidate_pairs(st, zero), zero)["exact"][0]) == 2


@pytest.mark.parametrize("shift_m, duplicate", [(40, True), (50, True), (52, False), (90, False)])
def test_polygon_overlap_threshold(shift_m, duplicate):
    # two 100 m squares, the second shifted east: overlap ratio = (100 - shift) / 100
    st = staging_of([{"geometry": square_m(LON, LAT, 100)}, {"geometry": square_m(LON, LAT, 100, shift_m)}])
    pairs = classify_pairs(st, *candidate_pairs(st, DedupParams()), DedupParams())
    assert (len(pairs["polygon_polygon"][0]) == 1) is duplicate


def test_small_polygon_inside_a_large_one_is_a_duplicate():
    st = staging_of([{"geometry": square_m(LON, LAT, 2000)}, {"geometry": square_m(LON + 0.005, LAT + 0.005, 20)}])
    pairs = classify_pairs(st, *candidate_pairs(st, DedupParams()), DedupParams())
    assert len(pairs["polygon_polygon"][0]) == 1  # ratio to the SMALLER area is 1


@pytest.mark.parametrize("east_m, duplicate", [(50, True), (-8, True), (-12, False), (130, False)])
def test_point_polygon_inside_or_within_buffer(east_m, duplicate):
    # square spans 0..100 m east; -8 m is 8 m outside its west edge
    point = offset_m(LON, LAT, east_m, 50)
    st = staging_of([{"geometry": square_m(LON, LAT, 100)}, {"geometry": point, "dataset": "b"}])
    pairs = classify_pairs(st, *candidate_pairs(st, DedupParams()), DedupParams())
    assert (len(pairs["point_polygon"][0]) == 1) is duplicate


@pytest.mark.parametrize("distance_m, duplicate", [(5, True), (49, True), (51, False), (300, False)])
def test_point_point_distance(distance_m, duplicate):
    st = staging_of([{"geometry": shapely.Point(LON, LAT)}, {"geometry": offset_m(LON, LAT, 0, distance_m)}])
    pairs = classify_pairs(st, *candidate_pairs(st, DedupParams()), DedupParams())
    assert (len(pairs["point_point"][0]) == 1) is duplicate


def test_candidates_are_complete_across_cell_edges():
    # points 45 m apart in random places at a high latitude (small cells) and at the equator:
    # every pair must be a candidate, whatever cell boundary lies between them
    rng = np.random.default_rng(3)
    records = []
    for lat in (0.0, 60.0):
        for lon in rng.uniform(-100, 100, 50):
            bearing = rng.uniform(0, 2 * np.pi)
            records.append({"geometry": shapely.Point(lon, lat)})
            records.append({"geometry": offset_m(lon, lat, 45 * np.cos(bearing), 45 * np.sin(bearing))})
    st = staging_of(records)
    i, j = candidate_pairs(st, DedupParams(h3_resolution=11))
    found = set(zip(i, j))
    assert all((k, k + 1) in found for k in range(0, len(records), 2))
    assert disk_k(12, 50) > disk_k(10, 50) >= 2


@pytest.mark.parametrize("lat", [0.0, 36.07, 60.0])
def test_small_polygons_are_found_across_cell_edges(lat):
    # overlapping 15 m squares (small: anchored at their centroid cell) and a point 8 m
    # outside one of them, scattered so that many straddle cell boundaries
    rng = np.random.default_rng(int(lat))
    records = []
    for lon in rng.uniform(-100, 100, 60):
        records.append({"geometry": square_m(lon, lat, 15)})
        records.append({"geometry": square_m(lon, lat, 15, 6), "dataset": "b"})
        records.append({"geometry": offset_m(lon, lat, -8, 7), "dataset": "c"})
    st = staging_of(records)
    params = DedupParams(h3_resolution=11)  # the smallest cells allowed: boundaries everywhere
    pairs = classify_pairs(st, *candidate_pairs(st, params), params)
    pp = set(zip(*pairs["polygon_polygon"]))
    pt = set(zip(*pairs["point_polygon"]))
    assert all((k, k + 1) in pp for k in range(0, len(records), 3))
    assert all((k, k + 2) in pt for k in range(0, len(records), 3))


def test_clusters_are_transitive_and_merge_keeps_every_record():
    records = [
        {"geometry": square_m(LON, LAT, 100), "dataset": "farms"},
        {"geometry": square_m(LON, LAT, 100, 20), "dataset": "inventory", "capacity_mw": 3.5},
        {"geometry": offset_m(LON, LAT, 60, 50), "dataset": "points"},
        {"geometry": offset_m(LON, LAT, 80, 60), "dataset": "points"},
        {"geometry": offset_m(LON + 1, LAT, 0, 0), "dataset": "points"},
    ]
    st = staging_of(records)
    prepared, report, labels = dedup(st, {"inventory": 5})
    assert len(set(labels[:4])) == 1 and labels[4] != labels[0]
    assert len(prepared) == 2
    site = prepared[prepared["n_sources"] == 4].iloc[0]
    # polygons first, then priority: the inventory polygon represents the site
    assert site["dataset"] == "inventory" and site["pv_id"] == st["pv_id"][1]
    assert site["geometry"].equals(records[1]["geometry"])
    assert site["capacity_mw"] == 3.5
    assert list(site["source_datasets"]) == ["farms", "inventory", "points"] and site["n_datasets"] == 3
    assert site["merged_ids"][0] == site["pv_id"]
    all_ids = [i for ids in prepared["merged_ids"] for i in ids]
    assert sorted(all_ids) == sorted(st["pv_id"])  # every staging record exactly once
    assert report["pairs_per_rule"]["polygon_polygon"] == 1
    assert report["pairs_per_rule"]["point_polygon"] == 4
    assert report["pairs_per_rule"]["point_point"] == 1
    assert report["cluster_sizes"] == {"1": 1, "4": 1}


def test_merged_records_name_their_installation():
    st = staging_of([
        {"geometry": square_m(LON, LAT, 100), "dataset": "a"},
        {"geometry": square_m(LON, LAT, 100, 10), "dataset": "b"},
        {"geometry": square_m(LON + 1, LAT, 100), "dataset": "b"},
    ])
    prepared, _, labels = dedup(st)
    merged = merged_records(st, labels, prepared)
    assert sorted(merged["pv_id"]) == sorted(st["pv_id"][:2])
    site = prepared[prepared["n_sources"] == 2]["pv_id"].iloc[0]
    assert set(merged["installation_id"]) == {site}


def test_capacity_is_carried_from_a_lower_ranked_record():
    st = staging_of([
        {"geometry": square_m(LON, LAT, 100), "dataset": "detailed"},
        {"geometry": offset_m(LON, LAT, 50, 50), "dataset": "registry", "capacity_mw": 12.0, "install_year": 2019},
    ])
    prepared, _, _ = dedup(st)
    assert len(prepared) == 1
    row = prepared.iloc[0]
    assert row["dataset"] == "detailed" and row["capacity_mw"] == 12.0 and row["install_year"] == 2019


def test_representative_prefers_detail_then_pv_id():
    coarse = square_m(LON, LAT, 100)
    detailed = shapely.segmentize(square_m(LON, LAT, 100, 5), 1e-4)
    st = staging_of([{"geometry": coarse, "dataset": "a"}, {"geometry": detailed, "dataset": "b"}])
    prepared, _, _ = dedup(st)
    assert prepared.iloc[0]["dataset"] == "b"


def test_overlap_matrix_counts_records_of_a_also_in_b():
    st = staging_of([
        {"geometry": square_m(LON, LAT, 100), "dataset": "a"},
        {"geometry": square_m(LON, LAT, 100), "dataset": "a"},
        {"geometry": square_m(LON, LAT, 100, 10), "dataset": "b"},
        {"geometry": square_m(LON + 1, LAT, 100), "dataset": "b"},
    ])
    _, _, labels = dedup(st)
    m = overlap_matrix(st, labels)
    assert m.loc["a", "b"] == 2 and m.loc["b", "a"] == 1
    assert m.loc["a", "a"] == 2 and m.loc["b", "b"] == 0


def test_score_reports_misses_and_spurious_pairs():
    st = staging_of([{"geometry": shapely.Point(LON, LAT)}, {"geometry": offset_m(LON, LAT, 10)},
                     {"geometry": offset_m(LON, LAT, 5000)}])
    labels = np.array([0, 1, 1])
    truth = {"duplicate_clusters": [{"records": [
        {"dataset": "a", "source_file": "f", "source_row": 0}, {"dataset": "a", "source_file": "f", "source_row": 1}]}]}
    score = score_against_truth(st, labels, truth)
    assert score["precision"] == 0 and score["recall"] == 0
    assert score["missed"] == [[("a", "f", 0), ("a", "f", 1)]] or score["missed"] == [[["a", "f", 0], ["a", "f", 1]]]


def test_write_prepared_round_trips_list_columns(tmp_path):
    st = staging_of([{"geometry": square_m(LON, LAT, 100)}, {"geometry": square_m(LON, LAT, 100, 10)}])
    prepared, report, _ = dedup(st)
    write_prepared(prepared, report, tmp_path / "p.parquet", tmp_path / "r.json")
    back = gpd.read_parquet(tmp_path / "p.parquet")
    assert list(back.columns) == list(prepared.columns)
    assert list(back["merged_ids"].iloc[0]) == list(prepared["merged_ids"].iloc[0])
    assert json.loads((tmp_path / "r.json").read_text())["installations"] == 1


# -- the embedded sample: planted duplicates are the ground truth --------------------------

@pytest.fixture(scope="module")
def sample_staging(sample_dir):
    specs = load_manifest(sample_dir / "manifest.json")
    frames = [harmonize_dataset(specs[d], progress=False)[0] for d in active_datasets(specs)]
    staging = pd.concat(frames, ignore_index=True)
    staging = staging.sort_values(["dataset", "source_file", "source_row"], ignore_index=True)
    return gpd.GeoDataFrame(staging, geometry="geometry", crs=4326), specs


def test_sample_planted_duplicates_precision_and_recall_are_one(sample_staging, sample_dir):
    staging, specs = sample_staging
    truth = json.loads((sample_dir / "ground_truth.json").read_text())
    prepared, report, _ = dedup(staging, {d: s.priority for d, s in specs.items()}, DedupParams(), truth)
    score = report["score"]
    assert score["true_pairs"] > 20
    assert (score["precision"], score["recall"]) == (1.0, 1.0), (score["missed"], score["spurious"])
    assert len(prepared) == len(staging) - sum(len(c["records"]) - 1 for c in truth["duplicate_clusters"])


def test_sample_run_writes_prepared_layer(sample_run):
    from pvlake.layout import Layout

    layout = Layout(sample_run)
    prepared = gpd.read_parquet(layout.prepared_parquet())
    report = json.loads(layout.dedup_report().read_text())
    assert report["score"]["precision"] == report["score"]["recall"] == 1.0
    assert len(prepared) == report["installations"] and prepared["pv_id"].is_unique
    staged = sum(len(gpd.read_parquet(p)) for p in (sample_run / "staging").glob("*.parquet"))
    assert prepared["n_sources"].sum() == staged == report["records"]
    assert list(prepared.columns)[: len(SCHEMA)] == list(SCHEMA)


# -- the real reference files, against an independent geopandas computation ---------------

def partition(n: int, i, j) -> set[frozenset]:
    graph = coo_matrix((np.ones(len(i)), (np.asarray(i), np.asarray(j))), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    return {frozenset(np.flatnonzero(labels == k)) for k in np.unique(labels)}


@pytest.mark.real
def test_chinapv_2015_and_2020_test_sets_overlap(real_dir):
    spec = parse_entry("chn", {"repo": "local", "path": str(real_dir / "chn_med_res_pv_2024"), "label_fmt": "shp",
                               "file_filters": {"include_patterns": ["PV_.*\\.shp$"],
                                                "exclude_patterns": ["NPV_.*"], "use_regex": True}}, real_dir)
    staging, _ = harmonize_dataset(spec, progress=False)
    _, report, labels = dedup(staging)

    # independent: geopandas sjoin + intersection areas in an equal-area projection
    ea = staging.to_crs("+proj=aea +lat_1=25 +lat_2=47 +lat_0=0 +lon_0=105 +ellps=WGS84")
    joined = gpd.sjoin(ea, ea, predicate="intersects")
    joined = joined[joined.index < joined["index_right"]]
    left = ea.geometry.loc[joined.index].to_numpy()
    right = ea.geometry.loc[joined["index_right"]].to_numpy()
    ratio = shapely.area(shapely.intersection(left, right)) / np.minimum(shapely.area(left), shapely.area(right))
    dup = ratio >= 0.5
    expected = partition(len(staging), joined.index[dup], joined["index_right"][dup])
    assert partition(len(staging), *np.nonzero(labels[:, None] == labels[None, :])) == expected

    files = staging["source_file"].to_numpy()
    both_years = {"PV_Test_2015.shp", "PV_Test_2020.shp"}
    cross_year = [g for g in expected if both_years <= set(files[list(g)])]
    found = [k for k in np.unique(labels) if both_years <= set(files[labels == k])]
    # The 2020 sets are 20 m sample squares (~400 m²) and the 2015 set plant outlines
    # (~15,000 m²): only a few 2020 squares fall on a 2015 outline.
    assert len(found) == len(cross_year) >= 1
    exact_within_2020 = report["pairs_per_rule"]["exact"]
    assert exact_within_2020 > 0  # the same 2020 squares in the train and test files
    print(f"ChinaPV: {len(found)} plants in both the 2015 and 2020 test sets; {exact_within_2020} exact "
          f"duplicate pairs; {report['records']} records -> {report['installations']} installations")


@pytest.mark.real
def test_glosofarid_yearly_point_sets_repeat_farms(real_dir):
    spec = parse_entry("glo", {"repo": "local", "path": str(real_dir / "glosofarid_2024"), "label_fmt": "json",
                               "crs": "EPSG:4326"}, real_dir)
    staging, _ = harmonize_dataset(spec, progress=False)
    _, report, labels = dedup(staging)

    # independent: geopandas sjoin of 60 m degree-buffers, then geodesic distances
    pts = staging.geometry
    radius_deg = 60 / (M_PER_DEG * np.cos(np.radians(np.minimum(np.abs(staging["centroid_lat"]), 85))))
    # a generous degree buffer only selects candidates; geodesic distance decides
    buffered = gpd.GeoDataFrame(geometry=shapely.buffer(pts.to_numpy(), radius_deg), crs=4326)
    joined = gpd.sjoin(buffered, gpd.GeoDataFrame(geometry=pts, crs=4326), predicate="intersects")
    joined = joined[joined.index < joined["index_right"]]
    a, b = joined.index.to_numpy(), joined["index_right"].to_numpy()
    dist = pyproj.Geod(ellps="WGS84").inv(pts.x.to_numpy()[a], pts.y.to_numpy()[a],
                                          pts.x.to_numpy()[b], pts.y.to_numpy()[b])[2]
    close = dist < 50
    expected = partition(len(staging), a[close], b[close])
    assert partition(len(staging), *np.nonzero(labels[:, None] == labels[None, :])) == expected

    files = staging["source_file"].to_numpy()
    multi_year = [k for k in np.unique(labels) if len(set(files[labels == k])) > 1]
    same_file = [k for k in np.unique(labels) if (labels == k).sum() > len(set(files[labels == k]))]
    # Most repeats are other sample points on the same large farm, hundreds of metres
    # apart: beyond the 50 m point rule. Exact repeats (< 1 m) are what merges.
    assert len(multi_year) >= 50 and len(same_file) >= 1
    print(f"GloSoFarID: {report['records']} points -> {report['installations']} farms; "
          f"{len(multi_year)} farms in more than one yearly file, {len(same_file)} repeated inside a file")


# -- the antimeridian, high latitudes, floods of identical points -------------------------


def local_to_lonlat(lon0, lat0, shape_m):
    """A shape drawn in metres in the azimuthal equidistant frame of (lon0, lat0), in lon/lat
    (PROJ's aeqd: an independent construction from the code under test)."""
    aeqd = pyproj.CRS(proj="aeqd", lat_0=lat0, lon_0=lon0, ellps="WGS84")
    back = pyproj.Transformer.from_crs(aeqd, 4326, always_xy=True)
    return shapely.transform(shape_m, lambda xy: np.column_stack(back.transform(xy[:, 0], xy[:, 1])))


def farm_lonlat(lon, lat, width_m=300.0, height_m=200.0, east_m=0.0):
    """A farm centred east_m east of (lon, lat), cut at ±180 where it crosses the meridian."""
    shape = local_to_lonlat(lon, lat, shapely.box(east_m - width_m / 2, -height_m / 2, east_m + width_m / 2, height_m / 2))
    return geo.split_antimeridian(np.array([shape], dtype=object))[0][0]


def test_farm_across_180_stays_apart_from_same_latitude_farms_elsewhere():
    lat = -17.0
    farms = {"fiji": farm_lonlat(180.0, lat), "queensland": farm_lonlat(145.5, lat),
             "bolivia": farm_lonlat(-63.2, lat), "zambia": farm_lonlat(27.8, lat), "fiji_west": farm_lonlat(179.99, lat, east_m=-2000)}
    st = staging_of([{"geometry": g, "dataset": name} for name, g in farms.items()])
    assert st.geometry.iloc[0].geom_type == "MultiPolygon"  # cut at ±180
    prepared, report, labels = dedup(st)
    assert report["installations"] == len(farms) and report["candidate_pairs"] <= 2
    fiji = prepared[prepared["dataset"] == "fiji"].iloc[0]
    assert abs(abs(fiji["centroid_lon"]) - 180.0) < 0.01 and abs(fiji["centroid_lat"] - lat) < 0.01


def test_a_farm_crossing_180_uncut_is_cut_before_the_search():
    # a frame from outside harmonize, with the reprojected outline spanning "360°"
    uncut = local_to_lonlat(180.0, -17.0, shapely.box(-150, -100, 150, 100))
    assert shapely.bounds(uncut)[2] - shapely.bounds(uncut)[0] > 359
    st = staging_of([{"geometry": uncut}, {"geometry": farm_lonlat(145.5, -17.0), "dataset": "b"}])
    _, report, _ = dedup(st)
    assert report["installations"] == 2 and report["candidate_pairs"] == 0


@pytest.mark.parametrize("lat", [-17.0, 0.0, 52.0, 66.0])
def test_pairs_across_180_are_merged_by_every_rule(lat):
    farm = farm_lonlat(180.0, lat)
    records = [
        {"geometry": farm, "dataset": "a"},
        {"geometry": farm, "dataset": "b"},                                   # exact
        {"geometry": farm_lonlat(180.0, lat, east_m=60), "dataset": "c"},     # overlap 0.8
        # a point 21 m from another, across the meridian
        {"geometry": local_to_lonlat(180.0, lat + 1, shapely.Point(-10.5, 0)), "dataset": "d"},
        {"geometry": local_to_lonlat(180.0, lat + 1, shapely.Point(10.5, 0)), "dataset": "e"},
        # a rooftop on the east side of the meridian and a point 5 m west of it, across
        {"geometry": local_to_lonlat(180.0, lat - 1, shapely.box(-16, -4, -1, 4)), "dataset": "f"},
        {"geometry": local_to_lonlat(180.0, lat - 1, shapely.Point(4, 0)), "dataset": "g"},
    ]
    st = staging_of(records)
    lons = [shapely.get_x(r["geometry"]) for r in records[3:5]] + [shapely.get_x(records[6]["geometry"])]
    assert lons[0] > 179.99 and lons[1] < -179.99 and lons[2] < -179.99  # really on both sides
    pairs = classify_pairs(st, *candidate_pairs(st, DedupParams()), DedupParams())
    found = {rule: {tuple(sorted(map(int, p))) for p in zip(*ij)} for rule, ij in pairs.items()}
    assert (0, 1) in found["exact"]
    assert {(0, 2), (1, 2)} <= found["polygon_polygon"]
    assert (3, 4) in found["point_point"]
    assert (5, 6) in found["point_polygon"]
    assert dedup(st)[1]["installations"] == 3


@pytest.mark.parametrize("lat", [0.0, 45.0, 60.0, 70.0])
def test_point_polygon_distance_is_geodesic_at_every_latitude(lat):
    # randomised rotated rooftop arrays; a point 9.5 m out from a random spot of the
    # outline is the same site, one 10.5 m out is not (buffer 10 m)
    rng = np.random.default_rng(int(lat) + 1)
    records, near, far = [], [], []
    for lon in rng.uniform(-170, 170, 75):
        w, h, theta = rng.uniform(6, 30), rng.uniform(3, 12), rng.uniform(0, np.pi)
        local = shapely.affinity.rotate(shapely.box(-w / 2, -h / 2, w / 2, h / 2), theta, use_radians=True, origin=(0, 0))
        # outward along the normal of a random edge, from that edge's midpoint
        ring = np.asarray(local.exterior.coords)
        k = rng.integers(4)
        (x0, y0), (x1, y1) = ring[k], ring[k + 1]
        nx, ny = (y1 - y0), -(x1 - x0)
        nx, ny = (nx, ny) / np.hypot(nx, ny)
        if nx * (x0 + x1) + ny * (y0 + y1) < 0:
            nx, ny = -nx, -ny
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        for gap, bucket in ((9.5, near), (10.5, far)):
            base = len(records)
            records.append({"geometry": local_to_lonlat(lon, lat, local), "dataset": "a"})
            records.append({"geometry": local_to_lonlat(lon, lat, shapely.Point(mx + gap * nx, my + gap * ny)),
                            "dataset": "b"})
            bucket.append((base, base + 1))
            lon += 0.01  # the far copy a kilometre away
    st = staging_of(records)
    pairs = classify_pairs(st, *candidate_pairs(st, DedupParams()), DedupParams())
    found = {tuple(sorted(map(int, p))) for p in zip(*pairs["point_polygon"])}
    assert sum(p in found for p in near) == len(near)
    assert not any(p in found for p in far)


def test_twenty_thousand_identical_points_cost_linear_time_and_little_memory(tmp_path):
    # in a child process, so that its peak memory is its own: VmHWM, since ru_maxrss keeps
    # the high-water mark of the forking pytest process across exec
    script = tmp_path / "flood.py"
    script.write_text(
        "import json, sys, time\n"
        "import numpy as np, shapely, geopandas as gpd\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_dedup import staging_of, offset_m\n"
        "from pvlake.dedup import dedup\n"
        "flood = [{'geometry': shapely.Point(0.0, 0.0), 'dataset': 'postcodes'}] * 20_000\n"
        "rng = np.random.default_rng(5)\n"
        "grid = [{'geometry': offset_m(0.0, 0.0, 200.0 * (k % 40) + 200, 200.0 * (k // 40) + 200), 'dataset': 'b'} for k in range(1000)]\n"
        "st = staging_of(flood[:1] + grid)\n"
        "st = gpd.GeoDataFrame(st.loc[np.r_[np.zeros(19_999, int), np.arange(len(st))]].reset_index(drop=True), crs=4326)\n"
        "st['pv_id'] = [f'{i:016d}' for i in range(len(st))]\n"
        "start = time.perf_counter()\n"
        "prepared, report, labels = dedup(st)\n"
        "hwm_kb = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
        "print(json.dumps({'seconds': time.perf_counter() - start, 'rss_mb': hwm_kb / 1024,\n"
        "                  'report': {k: report[k] for k in ('records', 'installations', 'candidate_pairs', 'distinct_geometries', 'pairs_per_rule')},\n"
        "                  'largest': int(prepared['n_sources'].max())}))\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    report = result["report"]
    assert report["records"] == 21_000 and report["distinct_geometries"] == 1001
    assert report["installations"] == 1001 and result["largest"] == 20_000
    assert report["pairs_per_rule"]["exact"] == 20_000 * 19_999 // 2  # as if every pair had been formed
    assert report["candidate_pairs"] < 10 * 1001  # linear, not 200 M
    assert result["rss_mb"] < 1024, result
    print(f"20,000 identical points + 1,000 distinct: {result['seconds']:.1f} s, peak {result['rss_mb']:.0f} MB")


def test_h3_resolution_is_bounded():
    with pytest.raises(ValueError, match="outside 8..11"):
        DedupParams(h3_resolution=13)
    with pytest.raises(ValueError, match="rings"):
        DedupParams(h3_resolution=11, point_merge_m=500)
    DedupParams(h3_resolution=8, point_merge_m=500)
