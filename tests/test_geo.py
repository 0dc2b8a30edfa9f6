import h3
import numpy as np
import pyproj
import pytest
import shapely

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
