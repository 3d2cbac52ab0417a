"""The area of interest: reading (any CRS, checked), UTM tiles on one lattice, time windows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import LineString, Point, Polygon, box

from cloudbench.aoi import (
    aoi_patches,
    check_time_window,
    geodesic_area_km2,
    in_crs,
    patch_window,
    read_aoi,
    tiles_cover,
    utm_tiles,
)
from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import Grid

HUNAN = box(111.0, 27.5, 111.15, 27.62)
ACROSS_ZONES = box(113.95, 27.5, 114.05, 27.55)  # UTM zones 49 | 50 meet at 114°E


def write(path: Path, geoms: list, crs: str | None = "EPSG:4326") -> Path:
    gpd.GeoDataFrame({"id": list(range(len(geoms)))}, geometry=geoms, crs=crs).to_file(path)
    return path


def test_geojson_in_web_mercator_reads_back_in_4326_with_the_same_area(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame(geometry=[HUNAN.segmentize(0.01)], crs="EPSG:4326")
    path = tmp_path / "aoi.geojson"
    frame.to_crs("EPSG:3857").to_file(path)
    assert gpd.read_file(path).crs.to_epsg() == 3857
    area = read_aoi(path)
    assert area.bounds == pytest.approx(HUNAN.bounds, abs=1e-6)
    assert geodesic_area_km2(area) == pytest.approx(geodesic_area_km2(HUNAN), rel=1e-4)


@pytest.mark.parametrize("name", ["aoi.gpkg", "aoi.shp"])
def test_utm_layers_are_unioned_into_one_area(tmp_path: Path, name: str) -> None:
    halves = gpd.GeoDataFrame(
        geometry=[box(111.0, 27.5, 111.1, 27.6), box(111.1, 27.5, 111.2, 27.6)], crs="EPSG:4326"
    ).to_crs("EPSG:32649")
    path = tmp_path / name
    halves.to_file(path)
    area = read_aoi(path)
    assert area.geom_type == "Polygon"  # the two halves merged
    assert area.bounds == pytest.approx((111.0, 27.5, 111.2, 27.6), abs=1e-3)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_bad_aois_end_in_one_clear_message(tmp_path: Path) -> None:
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp_path / "nope.geojson", "does not exist")
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("{ not json")
    cases["unreadable"] = (garbage, "cannot read AOI file")
    cases["no crs"] = (write(tmp_path / "nocrs.shp", [HUNAN], crs=None), "has no CRS")
    empty = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame({"id": []}, geometry=[], crs="EPSG:4326").to_file(empty)
    cases["no features"] = (empty, "has no features")
    cases["empty geometry"] = (write(tmp_path / "eg.gpkg", [Polygon()]), "empty geometry")
    cases["point"] = (write(tmp_path / "pt.geojson", [Point(111, 27)]), "a Point")
    cases["line"] = (
        write(tmp_path / "ln.geojson", [LineString([(111, 27), (112, 28)])]), "a LineString"
    )
    bowtie = Polygon([(111, 27), (111.1, 27.1), (111.1, 27), (111, 27.1)])
    cases["invalid"] = (write(tmp_path / "bow.geojson", [bowtie]), "Self-intersection")
    cases["too big"] = (write(tmp_path / "big.geojson", [box(100, 20, 110, 30)]), "km²")
    for what, (path, message) in cases.items():
        with pytest.raises(CloudbenchError, match=message) as err:
            read_aoi(path)
        assert "\n" not in str(err.value), what


def test_area_limit_is_a_parameter(tmp_path: Path) -> None:
    path = write(tmp_path / "aoi.geojson", [HUNAN])
    with pytest.raises(CloudbenchError, match="more than the limit of 10 km²"):
        read_aoi(path, max_area_km2=10)
    assert read_aoi(path, max_area_km2=1000).equals(read_aoi(path))


def test_tiles_share_one_lattice_and_cover_the_aoi() -> None:
    tiles = utm_tiles(HUNAN, 2560, 10)
    assert tiles and tiles == utm_tiles(HUNAN, 2560, 10)
    assert len({t.name for t in tiles}) == len(tiles)
    for name, grid in tiles:
        left, bottom, _, top = grid.bounds
        assert grid.crs.to_epsg() == 32649
        assert grid.width == grid.height == 256 and grid.resolution == 10
        assert grid.transform.b == grid.transform.d == 0 and grid.transform.e == -10
        assert left % 2560 == 0 and bottom % 2560 == 0 and top % 10 == 0
        assert name == f"32649_{left:.0f}_{bottom:.0f}"
        assert grid.footprint().intersects(HUNAN)
    assert tiles_cover(HUNAN, tiles)
    # north to south, then west to east
    keys = [(-t.grid.bounds[3], t.grid.bounds[0]) for t in tiles]
    assert keys == sorted(keys)


def test_an_aoi_across_a_zone_boundary_gets_tiles_in_both_zones() -> None:
    tiles = utm_tiles(ACROSS_ZONES, 5120, 10)
    zones = [t.grid.crs.to_epsg() for t in tiles]
    assert set(zones) == {32649, 32650}
    assert zones == sorted(zones)
    assert tiles_cover(ACROSS_ZONES, tiles)
    for _, grid in tiles:
        assert grid.transform.c % 10 == 0 and grid.transform.f % 10 == 0


def test_tile_size_must_be_whole_pixels() -> None:
    with pytest.raises(CloudbenchError, match="whole number"):
        utm_tiles(HUNAN, 2565, 10)
    with pytest.raises(CloudbenchError, match="latitude"):
        utm_tiles(box(10, 84.5, 11, 85), 2560, 10)


def test_time_windows() -> None:
    check_time_window(dt.date(2018, 7, 1), dt.date(2018, 7, 31))
    check_time_window(dt.date(2018, 7, 1), dt.date(2018, 7, 1))  # one day, inclusive
    start = dt.datetime(2018, 7, 1, tzinfo=dt.UTC)
    check_time_window(start, start + dt.timedelta(hours=1))
    with pytest.raises(CloudbenchError, match="is before start"):
        check_time_window(dt.date(2018, 7, 31), dt.date(2018, 7, 1))
    with pytest.raises(CloudbenchError, match="is equal to start"):
        check_time_window(start, start)
    with pytest.raises(CloudbenchError, match="cannot compare"):
        check_time_window(start, dt.datetime(2018, 8, 1))


def test_patches_meeting_an_aoi_drawn_on_the_patch_lattice(tmp_path: Path) -> None:
    """An AOI drawn in UTM along patch edges, read back through EPSG:4326: the patches beside
    an edge only touch it (not kept), those along it lie within it (kept by both rules)."""
    tile = Grid.from_bounds("EPSG:32649", 640000, 3206400, 640, 640, 10.0)  # 10 x 10 patches
    drawn = Polygon([(640640, 3205760), (641920, 3205760), (641920, 3204480), (642560, 3204480),
                     (642560, 3203840), (640640, 3203840)])  # an L on the 640 m lattice
    area = in_crs(read_aoi(write(tmp_path / "l.gpkg", [drawn], crs="EPSG:32649")), tile.crs)
    assert area.symmetric_difference(drawn).area < 1e-3  # reprojection noise only
    expected = np.zeros((10, 10), dtype=bool)
    expected[1:4, 1:3] = expected[3, 3] = True  # rows from the top: 3205760 .. 3203840
    for rule in ("intersects", "within"):
        np.testing.assert_array_equal(aoi_patches(area, tile, 64, rule), expected, err_msg=rule)
    assert patch_window(expected, 64) == (64, 64, 192, 192)
    assert patch_window(np.zeros((10, 10), dtype=bool), 64) is None


def test_patch_rules_against_exact_shapely_per_patch(tmp_path: Path) -> None:
    """A round AOI (in EPSG:4326, as read) against one exact shapely test per patch."""
    tile = Grid.from_bounds("EPSG:32649", 640000, 3206400, 640, 640, 10.0)
    circle = Point(642700, 3203500).buffer(1900)
    area = in_crs(read_aoi(write(tmp_path / "c.geojson", [circle], crs="EPSG:32649")), tile.crs)
    meets = aoi_patches(area, tile, 32)
    within = aoi_patches(area, tile, 32, "within")
    assert meets.shape == within.shape == (20, 20)
    for row, col, grid in tile.tiles(32):
        patch = box(*grid.bounds)
        assert meets[row // 32, col // 32] == (area.intersection(patch).area > 0)
        assert within[row // 32, col // 32] == area.covers(patch)
    assert 0 < within.sum() < meets.sum() < meets.size
    window = patch_window(meets, 32)
    assert window is not None
    row, col, height, width = window
    rows, cols = np.nonzero(meets)
    assert (row, col) == (rows.min() * 32, cols.min() * 32)
    assert (height, width) == ((rows.max() + 1) * 32 - row, (cols.max() + 1) * 32 - col)
    with pytest.raises(ValueError, match="unknown patch rule"):
        aoi_patches(area, tile, 32, "touches")  # type: ignore[arg-type]
