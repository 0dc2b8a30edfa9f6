import h3
import numpy as np
import pyproj
import pytest
import shapely
import shapely.affinity

from pvlake import geo


def square(lon, lat, side_deg=1e-3):
    return shapely.box(lon, lat, lon + side_deg, lat + side_deg)


def test_geodesic_area_matches_an_equal_area_projection():
    polys = np.array([square(-79.79, 36.07), square(78.28, 13.09, 5e-3), square(-3.0, 58.0, 2e-4)], dtype=object)
    area = geo.geodesic_area_m2(polys)
    ea = pyproj.Transformer.from_crs(4326, 6933, always_xy=True)
    expected = shapely.area(shapely.transform(polys, lambda xy: np.column_stack(ea.transform(xy[:, 0], xy[:, 1]))))
    np.testing.assert_allclose(area, expected, rtol=1e-4)
    assert 9_900 < area[0] < 10_100  # 0.001° ≈ 90 m × 111 m at 36° N


def test_geodesic_area_is_nan_for_points():
    assert np.isnan(geo.geodesic_area_m2(np.array([shapely.Point(0, 0)], dtype=object)))[0]


def test_mixed_ring_orientation_does_not_cancel_after_repair():
    ccw = square(10, 10)
    cw = shapely.Polygon(list(square(10.01, 10).exterior.coords)[::-1])
    mixed = shapely.MultiPolygon([ccw, cw])
    naive = abs(geo.GEOD.geometry_area_perimeter(mixed)[0])
    fixed, repaired, reason = geo.repair(np.array([mixed], dtype=object))
    area = geo.geodesic_area_m2(fixed)[0]
    single = geo.geodesic_area_m2(np.array([ccw], dtype=object))[0]
    assert naive < 0.01 * single  # the trap: signed parts cancel
    assert area == pytest.approx(2 * single, rel=1e-3)
    assert reason[0] is None and not repaired[0]


def test_repair_bowtie_keeps_both_lobes():
    bowtie = shapely.Polygon([(0, 0), (1e-3, 1e-3), (1e-3, 0), (0, 1e-3)])
    assert not bowtie.is_valid
    fixed, repaired, reason = geo.repair(np.array([bowtie], dtype=object))
    assert repaired[0] and reason[0] is None
    assert fixed[0].is_valid and fixed[0].geom_type == "MultiPolygon" and len(fixed[0].geoms) == 2
    assert shapely.area(fixed[0]) == pytest.approx(0.5e-6)


def test_repair_drops_with_reasons():
    geoms = np.array(
        [None, shapely.Polygon(), shapely.LineString([(0, 0), (1, 1)]), shapely.Point(1, 2),
         shapely.MultiPoint([(3, 4)]), shapely.Polygon([(0, 0), (1, 1), (2, 2), (0, 0)])],
        dtype=object,
    )
    fixed, repaired, reason = geo.repair(geoms)
    assert list(reason) == [
        "null_geometry", "empty_geometry", "unsupported_type:LineString", None, None, "unrepairable",
    ]
    assert fixed[4].equals(shapely.Point(3, 4))  # a one-point MultiPoint is a point
    assert fixed[0] is None and fixed[5] is None


def test_repair_orients_polygons_counter_clockwise():
    cw = shapely.Polygon(list(square(0, 0).exterior.coords)[::-1])
    fixed, _, _ = geo.repair(np.array([cw], dtype=object))
    assert fixed[0].exterior.is_ccw


def test_to_wgs84_reprojects_lon_lat_and_drops_z():
    p = shapely.Point(500000, 4000000, 12.0)  # UTM 17N
    out = geo.to_wgs84(np.array([p], dtype=object), "EPSG:32617")[0]
    assert not out.has_z
    assert out.x == pytest.approx(-81.0, abs=1e-6) and 36.0 < out.y < 36.2


def test_to_wgs84_leaves_wgs84_untouched():
    p = shapely.Point(1.5, 2.5)
    assert geo.to_wgs84(np.array([p], dtype=object), "OGC:CRS84")[0].equals(p)


def test_h3_cells_agree_with_h3_library():
    lon = np.array([-79.79, 78.28, np.nan])
    lat = np.array([36.07, 13.09, 1.0])
    cells = geo.h3_cells(lon, lat, 12)
    assert cells[0] == h3.latlng_to_cell(36.07, -79.79, 12)
    assert cells[1] == h3.latlng_to_cell(13.09, 78.28, 12)
    assert cells[2] is None


def test_centroid_of_point_is_the_point():
    lon, lat = geo.centroid_lonlat(np.array([shapely.Point(3, 4), square(0, 0, 2)], dtype=object))
    assert list(lon) == [3, 1] and list(lat) == [4, 1]


# -- the antimeridian, coordinate checks, local metric frames -----------------------------


def test_split_antimeridian_cuts_a_crossing_polygon_with_its_hole():
    # as PROJ returns a farm across 180°: edges jump from +179.999 to -179.999
    shell = [(179.998, -17.001), (-179.998, -17.001), (-179.998, -16.999), (179.998, -16.999)]
    hole = [(179.9995, -17.0005), (179.9995, -16.9995), (-179.9995, -16.9995), (-179.9995, -17.0005)]
    poly = shapely.Polygon(shell, [hole])
    (cut,), split = geo.split_antimeridian(np.array([poly], dtype=object))
    assert split[0] and cut.is_valid and cut.geom_type == "MultiPolygon" and len(cut.geoms) == 2
    west, east = sorted(cut.geoms, key=lambda p: p.bounds[0])
    assert west.bounds[0] == -180.0 and east.bounds[2] == 180.0
    assert all(len(p.interiors) == 0 for p in cut.geoms)  # the hole is cut too: a notch on each side
    area = geo.geodesic_area_m2(geo.repair(np.array([cut], dtype=object))[0])[0]
    assert area == pytest.approx(abs(geo.GEOD.geometry_area_perimeter(poly)[0]), rel=1e-6)  # geodesic edges cross 180
    lon, lat = geo.centroid_lonlat(np.array([cut], dtype=object))
    assert abs(abs(lon[0]) - 180) < 1e-6 and lat[0] == pytest.approx(-17.0)


def test_split_antimeridian_leaves_other_shapes_alone():
    already_cut = shapely.MultiPolygon([shapely.box(179.9, 0, 180, 0.1), shapely.box(-180, 0, -179.9, 0.1)])
    ordinary = shapely.box(10, 10, 10.01, 10.01)
    geoms = np.array([already_cut, ordinary, shapely.Point(180, 0), None], dtype=object)
    out, split = geo.split_antimeridian(geoms)
    assert not split.any() and all(a is b for a, b in zip(out, geoms))


def test_unwrapped_bounds_give_the_extent_of_a_cut_shape():
    cut = shapely.MultiPolygon([shapely.box(179.999, 0, 180, 0.001), shapely.box(-180, 0, -179.999, 0.001)])
    # parts around the globe: no longitude range of less than 180° holds them, left as is
    wide = shapely.MultiPolygon([shapely.box(x, 0, x + 1, 1) for x in (-100, 0, 100)])
    b = geo.unwrapped_bounds(np.array([cut, wide], dtype=object))
    np.testing.assert_allclose(b[0], [179.999, 0, 180.001, 0.001])
    np.testing.assert_allclose(b[1], [-100, 0, 101, 1])


def test_coordinate_faults_name_their_reason():
    geoms = np.array([shapely.Point(181, 0), shapely.Point(0, -91), shapely.Point(np.inf, 0),
                      shapely.box(0, 0, 1e30, 1), shapely.Point(180, 90), shapely.Point(-180 - 1e-9, 0), None],
                     dtype=object)
    assert list(geo.coordinate_faults(geoms)) == [
        "out_of_range_coordinates", "out_of_range_coordinates", "non_finite_coordinates",
        "out_of_range_coordinates", None, None, None,
    ]
    clipped = geo.clip_to_range(geoms[5:6])
    assert shapely.get_x(clipped[0]) == -180.0


@pytest.mark.parametrize("lat", [0.0, 45.0, 70.0, 89.0])
def test_point_geometry_distance_matches_proj_aeqd(lat):
    rng = np.random.default_rng(int(lat))
    lons = rng.uniform(-179.9, 179.9, 20)
    polys, expected = [], []
    for lon in lons:
        aeqd = pyproj.CRS(proj="aeqd", lat_0=lat, lon_0=lon, ellps="WGS84")
        back = pyproj.Transformer.from_crs(aeqd, 4326, always_xy=True)
        local = shapely.affinity.rotate(shapely.box(5, -3, 25, 4), rng.uniform(0, 360), origin=(0, 0))
        polys.append(shapely.transform(local, lambda xy: np.column_stack(back.transform(xy[:, 0], xy[:, 1]))))
        expected.append(local.distance(shapely.Point(0, 0)))
    got = geo.point_geometry_distance_m(lons, np.full(len(lons), lat), np.array(polys, dtype=object))
    np.testing.assert_allclose(got, expected, atol=1e-3)
