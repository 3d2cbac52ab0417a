"""Land-cover label sources: rasters and vector layers in any CRS, co-registered on UTM grids."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from shapely.geometry import box

from cloudbench.config import ClassScheme
from cloudbench.errors import CloudbenchError
from cloudbench.patches import (
    IMPURE,
    NO_LABEL_DATA,
    NO_LABELS,
    SPARSE_LABELS,
    UNMAPPED,
    majority_labels,
)
from cloudbench.sources.base import Grid, LabelSource
from cloudbench.sources.landcover import (
    RasterLabels,
    VectorLabels,
    check_codes,
    label_source,
    read_classes,
)
from cloudbench.sources.synthetic import SyntheticWorld

UTM = "EPSG:32649"
X0, Y0 = 500_000.0, 3_100_000.0  # upper-left corner of the UTM raster, 10 m pixels
SCHEME = ClassScheme("test", "multiclass", ("a", "b", "c"), {c: c % 3 for c in range(1, 11)})

# the EPSG:4326 raster: 0.001° pixels, code 1 + col // 50, a nodata block
W0, N0, DEG = 110.95, 28.05, 0.001


def write_raster(path: Path, data: np.ndarray, crs: str | None, transform: Affine,
                 nodata: float | None = None) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1,
               "dtype": data.dtype.name, "transform": transform, "nodata": nodata}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


@pytest.fixture
def utm_raster(tmp_path: Path) -> Path:
    cols = np.arange(100)
    data = np.broadcast_to(1 + cols // 10, (100, 100)).astype(np.uint8)
    return write_raster(tmp_path / "lc_utm.tif", data, UTM, Affine(10, 0, X0, 0, -10, Y0))


@pytest.fixture
def geo_raster(tmp_path: Path) -> Path:
    cols = np.arange(400)
    data = np.broadcast_to(1 + cols // 50, (300, 400)).astype(np.uint8).copy()
    data[:20, :20] = 255  # nodata in the north-west corner
    return write_raster(tmp_path / "lc_4326.tif", data, "EPSG:4326",
                        Affine(DEG, 0, W0, 0, -DEG, N0), nodata=255)


def centres(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(grid.width) + 0.5, np.arange(grid.height) + 0.5)
    t = grid.transform
    return t.c + cols * t.a, t.f + rows * t.e


def test_utm_raster_on_a_finer_utm_grid_pixel_by_pixel(utm_raster: Path) -> None:
    source = RasterLabels(utm_raster)
    assert isinstance(source, LabelSource)
    # 5 m grid hanging 250 m off the raster's west and south edges
    grid = Grid.from_bounds(UTM, X0 - 250, Y0 - 800, 100, 100, 5.0)
    labels = source.read_labels(grid)
    assert labels.dtype == np.int32 and labels.shape == (100, 100)
    xs, ys = centres(grid)
    inside = (xs > X0) & (xs < X0 + 1000) & (ys < Y0) & (ys > Y0 - 1000)
    expected = np.where(inside, 1 + np.floor((xs - X0) / 10).astype(int) // 10, 0)
    np.testing.assert_array_equal(labels, expected)
    assert (labels == 0).any() and (labels > 0).any()


def test_raster_far_away_gives_zeros(utm_raster: Path) -> None:
    grid = Grid.from_bounds(UTM, X0 + 50_000, Y0, 32, 32, 10.0)
    assert not RasterLabels(utm_raster).read_labels(grid).any()


def test_geographic_raster_is_co_registered_on_a_utm_grid(geo_raster: Path) -> None:
    to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
    left, top = to_utm.transform(W0 - 0.01, N0 + 0.005)
    left, top = round(left / 10) * 10, round(top / 10) * 10
    grid = Grid.from_bounds(UTM, left, top, 1500, 400, 10.0)
    labels = RasterLabels(geo_raster).read_labels(grid)
    lon, lat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(*centres(grid))
    col = (lon - W0) / DEG
    row = (N0 - lat) / DEG
    expected = np.where((col >= 0) & (col < 400) & (row >= 0) & (row < 300),
                        1 + np.floor(col).astype(int) // 50, 0)
    expected[(col >= 0) & (col < 20) & (row >= 0) & (row < 20)] = 0  # nodata -> 0
    # where a pixel centre is within 0.05 source pixels of a class or nodata edge, either
    # side is right: compare everywhere else
    def near(v: np.ndarray, edges: list[float]) -> np.ndarray:
        return np.min([np.abs(v - e) for e in edges], axis=0) < 0.05
    ambiguous = near(col, [0, 20, *range(50, 401, 50)]) | near(row, [0, 20, 300])
    assert (~ambiguous).mean() > 0.95
    np.testing.assert_array_equal(labels[~ambiguous], expected[~ambiguous])
    assert set(np.unique(labels)) >= {0, 1, 2, 3}


def test_raster_codes_and_check_codes(geo_raster: Path, utm_raster: Path) -> None:
    source = RasterLabels(geo_raster)
    assert source.codes() == set(range(1, 9))
    assert source.codes(box(W0 + 0.001, N0 - 0.1, W0 + 0.049, N0 - 0.05)) == {1}
    assert source.codes(box(0, 0, 1, 1)) == set()
    check_codes(source.codes(), SCHEME)
    with pytest.raises(CloudbenchError, match=r"not in class scheme 'test': 9, 10") as err:
        check_codes(RasterLabels(utm_raster).codes() | {0}, ClassScheme(
            "test", "multiclass", ("a",), {c: 0 for c in range(1, 9)}))
    assert "\n" not in str(err.value)


@pytest.fixture
def polygons() -> gpd.GeoDataFrame:
    """Rectangles on the 10 m lattice in UTM, stored in EPSG:3857 (a non-UTM CRS)."""
    rects = [  # (x0, y0, x1, y1) offsets in metres from (X0, Y0 - 1000), code
        ((100, 100, 300, 200), 3),
        ((400, 100, 500, 400), 7),
        ((50_000, 0, 50_100, 100), 9),  # far away: outside every grid below
    ]
    geoms = [box(X0 + a, Y0 - 1000 + b, X0 + c, Y0 - 1000 + d).segmentize(10)
             for (a, b, c, d), _ in rects]
    frame = gpd.GeoDataFrame({"code": [code for _, code in rects]}, geometry=geoms, crs=UTM)
    return frame.to_crs("EPSG:3857")


def expected_polygons(grid: Grid) -> np.ndarray:
    xs, ys = centres(grid)
    x, y = xs - X0, ys - (Y0 - 1000)
    out = np.zeros(xs.shape, dtype=np.int32)
    out[(x > 100) & (x < 300) & (y > 100) & (y < 200)] = 3
    out[(x > 400) & (x < 500) & (y > 100) & (y < 400)] = 7
    return out


@pytest.mark.parametrize("suffix", ["gpkg", "geojson"])
def test_vector_layer_rasterises_to_the_expected_pixels(
    tmp_path: Path, polygons: gpd.GeoDataFrame, suffix: str
) -> None:
    path = tmp_path / f"lc.{suffix}"
    (polygons if suffix == "gpkg" else polygons.to_crs("EPSG:4326")).to_file(path)
    source = label_source(path, "code")
    assert isinstance(source, VectorLabels) and isinstance(source, LabelSource)
    for res in (10.0, 5.0):
        grid = Grid.from_bounds(UTM, X0, Y0 - 500, round(600 / res), round(600 / res), res)
        labels = source.read_labels(grid)
        assert labels.dtype == np.int32
        np.testing.assert_array_equal(labels, expected_polygons(grid))
    assert source.codes() == {3, 7, 9}
    area = Grid.from_bounds(UTM, X0, Y0 - 500, 60, 60, 10.0).footprint()
    assert source.codes(area) == {3, 7}
    empty = Grid.from_bounds(UTM, X0 - 5000, Y0, 16, 16, 10.0)
    assert not source.read_labels(empty).any()


def test_vector_string_codes(tmp_path: Path, polygons: gpd.GeoDataFrame) -> None:
    polygons = polygons.assign(code=polygons["code"].astype(str), name=["x", "y", "z"])
    path = tmp_path / "lc.gpkg"
    polygons.to_file(path)
    grid = Grid.from_bounds(UTM, X0, Y0 - 500, 60, 60, 10.0)
    np.testing.assert_array_equal(
        label_source(path, "code").read_labels(grid), expected_polygons(grid)
    )
    with pytest.raises(CloudbenchError, match="not integer class codes: 'x', 'y'$"):
        label_source(path, "name").read_labels(grid)


def test_label_source_errors(
    tmp_path: Path, utm_raster: Path, polygons: gpd.GeoDataFrame
) -> None:
    gpkg = tmp_path / "lc.gpkg"
    polygons.assign(share=0.5).to_file(gpkg)
    garbage_tif = tmp_path / "garbage.tif"
    garbage_tif.write_bytes(b"not a tiff")
    garbage_gpkg = tmp_path / "garbage.gpkg"
    garbage_gpkg.write_bytes(b"not a geopackage")
    no_crs = write_raster(tmp_path / "nocrs.tif", np.ones((4, 4), np.uint8), None,
                          Affine(10, 0, 0, 0, -10, 0))
    floats = write_raster(tmp_path / "floats.tif", np.ones((4, 4), np.float32), UTM,
                          Affine(10, 0, X0, 0, -10, Y0))
    cases = [
        ((tmp_path / "nope.tif", None), "does not exist"),
        ((tmp_path / "nope.gpkg", "code"), "does not exist"),
        ((garbage_tif, None), "cannot read land-cover raster"),
        ((garbage_gpkg, "code"), "cannot read land-cover layer"),
        ((no_crs, None), "has no CRS"),
        ((floats, None), "must be integers"),
        ((gpkg, None), "name its class-code column"),
        ((gpkg, "klass"), "no column 'klass'; available: code, share"),
        ((gpkg, "share"), "must be integers"),
    ]
    for (path, column), message in cases:
        with pytest.raises(CloudbenchError, match=message) as err:
            label_source(path, column)
        assert "\n" not in str(err.value)
    with pytest.raises(CloudbenchError, match="1 band"):
        RasterLabels(utm_raster, band=2)
    assert isinstance(label_source(utm_raster), RasterLabels)


# Dynamic World-like: code 0 is a class (water), 255 the raster's nodata
DW = ClassScheme("dw", "multiclass", ("water", "trees", "grass"), {0: 0, 1: 1, 2: 2})
ONE_BASED = ClassScheme("one", "multiclass", ("trees", "grass"), {1: 0, 2: 1})


@pytest.fixture
def water_raster(tmp_path: Path) -> Path:
    """4 x 6 pixels of 10 m: codes 0 (water), 1, 2, 7 (unmapped), and one nodata pixel."""
    data = np.array([[0, 0, 1, 1, 2, 2],
                     [0, 0, 1, 1, 2, 2],
                     [0, 255, 1, 7, 2, 2],
                     [0, 0, 1, 1, 2, 2]], dtype=np.uint8)
    return write_raster(tmp_path / "dw.tif", data, UTM, Affine(10, 0, X0, 0, -10, Y0),
                        nodata=255)


def test_no_label_data_is_a_mask_not_a_code(water_raster: Path) -> None:
    # the grid reaches 2 pixels west of the raster: no data there, whatever the codes
    grid = Grid.from_bounds(UTM, X0 - 20, Y0, 8, 4, 10.0)
    codes, valid = RasterLabels(water_raster).read_codes(grid)
    expected_valid = np.ones((4, 8), dtype=bool)
    expected_valid[:, :2] = False
    expected_valid[2, 3] = False  # the nodata pixel
    np.testing.assert_array_equal(valid, expected_valid)
    raster = np.array([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [0, 0, 1, 7, 2, 2],
                       [0, 0, 1, 1, 2, 2]])
    np.testing.assert_array_equal(codes[:, 2:][valid[:, 2:]], raster[valid[:, 2:]])
    # water (code 0) is a class; no data never is
    classes = read_classes(RasterLabels(water_raster), grid, DW)
    assert classes.dtype == np.int64
    np.testing.assert_array_equal(classes, np.array(
        [[-2, -2, 0, 0, 1, 1, 2, 2],
         [-2, -2, 0, 0, 1, 1, 2, 2],
         [-2, -2, 0, -2, 1, UNMAPPED, 2, 2],
         [-2, -2, 0, 0, 1, 1, 2, 2]]))
    assert NO_LABEL_DATA == -2
    # a scheme that does not map 0 reads code 0 as no data (the usual undeclared fill)
    classes = read_classes(RasterLabels(water_raster), grid, ONE_BASED)
    np.testing.assert_array_equal(classes[2], [-2, -2, -2, -2, 0, UNMAPPED, 1, 1])
    assert (classes[:, :4] == NO_LABEL_DATA).all()
    # the protocol view is unchanged: 0 where there is no data
    labels = RasterLabels(water_raster).read_labels(grid)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, np.where(valid, codes, 0))


def test_vector_code_zero_is_a_class_and_uncovered_pixels_no_data(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame({"code": [0, 2]}, geometry=[
        box(X0, Y0 - 40, X0 + 20, Y0), box(X0 + 20, Y0 - 40, X0 + 40, Y0)], crs=UTM)
    frame.to_file(tmp_path / "dw.gpkg")
    source = label_source(tmp_path / "dw.gpkg", "code")
    grid = Grid.from_bounds(UTM, X0, Y0, 6, 4, 10.0)
    codes, valid = source.read_codes(grid)
    np.testing.assert_array_equal(valid, np.arange(6)[None].repeat(4, 0) < 4)
    np.testing.assert_array_equal(read_classes(source, grid, DW)[0], [0, 0, 2, 2, -2, -2])
    np.testing.assert_array_equal(source.read_labels(grid)[0], [0, 0, 2, 2, 0, 0])


def test_a_source_with_only_read_labels_means_no_data_by_0() -> None:
    world = SyntheticWorld(seed=3, size=64)
    left, bottom, right, top = world.grid.bounds
    grid = Grid.from_bounds(world.grid.crs, right - 320, top, 64, 64, 10.0)  # half outside
    classes = read_classes(world, grid, DW)  # DW maps 0, the protocol still says no data
    igbp = world.read_labels(grid)
    np.testing.assert_array_equal(classes == NO_LABEL_DATA, igbp == 0)
    assert (igbp[:, :32] > 0).all() and (igbp[:, 32:] == 0).all()


def test_majority_over_labelled_pixels_with_a_least_labelled_share() -> None:
    """Four 4 x 4 patches (16 px): full, 10 labelled, 6 labelled, none."""
    a, b, x, n = 0, 1, UNMAPPED, NO_LABEL_DATA
    full = np.array([a] * 9 + [b] * 5 + [x] * 2).reshape(4, 4)  # 9/16 of a
    ten = np.array([a] * 5 + [b] * 4 + [x] + [n] * 6).reshape(4, 4)  # 5/10 of a
    six = np.array([b] * 6 + [n] * 10).reshape(4, 4)
    none = np.full((4, 4), n)
    classes = np.block([[full, ten], [six, none]])
    label, share = majority_labels(classes, 4, 2, 0.5)
    np.testing.assert_array_equal(label, [a, a, SPARSE_LABELS, NO_LABELS])
    np.testing.assert_allclose(share, [9 / 16, 5 / 10, 1.0, 0.0])
    label, _ = majority_labels(classes, 4, 2, 0.5, min_labelled=0.25)
    np.testing.assert_array_equal(label, [a, a, b, NO_LABELS])
    label, _ = majority_labels(classes, 4, 2, 0.6, min_labelled=0.25)
    np.testing.assert_array_equal(label, [IMPURE, IMPURE, b, NO_LABELS])  # unmapped counts
    # without no-data pixels the rule is the plain one: share over the whole patch
    plain = np.where(classes == n, x, classes)
    label, share = majority_labels(plain, 4, 2, 0.5)
    counts = [np.bincount(p[p >= 0].ravel(), minlength=2).max() / 16
              for p in (plain[:4, :4], plain[:4, 4:], plain[4:, :4], plain[4:, 4:])]
    np.testing.assert_allclose(share, counts)
    np.testing.assert_array_equal(label, np.where(np.array(counts) >= 0.5, [a, a, b, 0], -1))


def test_a_schemes_nodata_codes_are_no_label_data(water_raster: Path) -> None:
    """A code the scheme lists as ``nodata`` (CORINE's 48, WorldCover's 0) is no label data,
    not an unmapped class, and check_codes leaves it aside."""
    grid = Grid.from_bounds(UTM, X0, Y0, 6, 4, 10.0)
    plain = read_classes(RasterLabels(water_raster), grid, ONE_BASED)
    two_is_nodata = ClassScheme("one", "multiclass", ("trees",), {1: 0},
                                nodata=frozenset({2}))
    classes = read_classes(RasterLabels(water_raster), grid, two_is_nodata)
    codes, valid = RasterLabels(water_raster).read_codes(grid)
    np.testing.assert_array_equal(classes[valid & (codes == 2)], NO_LABEL_DATA)
    np.testing.assert_array_equal(plain[valid & (codes == 2)], 1)  # grass where 2 is a class
    np.testing.assert_array_equal(classes[valid & (codes == 1)], 0)
    check_codes({1, 2}, two_is_nodata)  # 2 is no data, not an unknown code
    with pytest.raises(CloudbenchError, match="not in class scheme 'one': 2"):
        check_codes({1, 2}, ClassScheme("one", "multiclass", ("trees",), {1: 0}))


def test_cut_keeps_every_channel_of_each_patch() -> None:
    """(C, H, W) -> (N, C, size, size), row-major patches, each with all C channels."""
    from cloudbench.patches import cut

    array = np.arange(3 * 4 * 6).reshape(3, 4, 6)
    patches = cut(array, 2)
    assert patches.shape == (6, 3, 2, 2) and patches.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(patches[0], array[:, 0:2, 0:2])
    np.testing.assert_array_equal(patches[4], array[:, 2:4, 2:4])
    assert cut(array[:, :3, :5], 2).shape == (2, 3, 2, 2)  # edges dropped


def test_one_labelled_pixel_is_a_share_of_one_and_min_labelled_is_inclusive() -> None:
    """A patch whose only labelled pixel is class 1 has share 1 (1 of 1), not 1/2; a patch
    labelled on exactly min_labelled of its pixels is kept, under that it is sparse."""
    nd = NO_LABEL_DATA
    classes = np.array([[1, nd, 0, 0, 2, nd],
                        [nd, nd, nd, nd, nd, nd]])
    label, share = majority_labels(classes, 2, 3, purity=0.7, min_labelled=0.25)
    assert label.tolist() == [1, 0, 2] and share.tolist() == [1.0, 1.0, 1.0]
    label, _ = majority_labels(classes, 2, 3, purity=0.7, min_labelled=0.5)
    assert label.tolist() == [SPARSE_LABELS, 0, SPARSE_LABELS]
