"""Tests of the synthetic world: determinism, geometry, realism, catalog and cloud masks."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import time

import numpy as np
import pytest
from affine import Affine
from scipy.ndimage import uniform_filter
from shapely.geometry import box

from cloudbench.sources.base import (
    S1_BANDS,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    Acquisition,
    Collection,
    Grid,
    LabelSource,
    Source,
)
from cloudbench.sources.synthetic import SyntheticWorld

UTC = dt.UTC
JULY = (dt.datetime(2018, 7, 1, tzinfo=UTC), dt.datetime(2018, 7, 31, 23, 59, 59, tzinfo=UTC))
WATER, SNOW, BARREN, EVERGREEN_BROADLEAF, CROPLAND = 17, 15, 16, 2, 12


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld()


def small(**kwargs) -> SyntheticWorld:
    """A cheap world for tests that build several instances."""
    return SyntheticWorld(**{"size": 320, "region_size": 64, **kwargs})


def acquisitions(w: SyntheticWorld, collection: Collection) -> list[Acquisition]:
    return w.search(collection, w.grid.footprint(), *JULY)


def clearest(w: SyntheticWorld, collection: Collection) -> Acquisition:
    return min(acquisitions(w, collection), key=lambda a: a.cloud_cover)


def cloudiest(w: SyntheticWorld, collection: Collection) -> Acquisition:
    return max(acquisitions(w, collection), key=lambda a: a.cloud_cover)


# --------------------------------------------------------------------------- interface


def test_implements_protocols(world):
    assert isinstance(world, Source)
    assert isinstance(world, LabelSource)
    assert world.name == "synthetic" and world.synthetic is True
    assert world.grid == Grid.from_bounds("EPSG:32649", 645000.0, 3210000.0, 1280, 1280, 10.0)


def test_every_igbp_code_present(world):
    labels = world.read_labels(world.grid)
    assert labels.dtype == np.uint8 and labels.shape == (1280, 1280)
    assert set(np.unique(labels).tolist()) == set(range(1, 18))
    # Regions are spatially coherent: most pixels share the code of their right neighbour.
    assert (labels[:, 1:] == labels[:, :-1]).mean() > 0.98


def test_read_shapes_and_dtypes(world):
    grid = world.grid.window(100, 200, 64, 48)
    for collection in Collection:
        acq = acquisitions(world, collection)[0]
        arr = world.read(acq, grid, collection.bands)
        assert arr.dtype == np.float32
        assert arr.shape == (len(collection.bands), 64, 48)
        assert np.isfinite(arr).all()
    assert world.read(acq, grid, []).shape == (0, 64, 48)


# --------------------------------------------------------------------------- determinism


def test_same_seed_identical_different_seed_differs():
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    s2a, s2b = acquisitions(a, Collection.S2_L1C), acquisitions(b, Collection.S2_L1C)
    s1a, s1b = acquisitions(a, Collection.S1_GRD), acquisitions(b, Collection.S1_GRD)
    assert [x.id for x in s2a] == [x.id for x in s2b]
    # Different call orders: b reads other dates first.
    b.read(s2b[-1], b.grid, ["B02"])
    b.read(s1b[-1], b.grid, ["VV"])
    for x, y in ((s2a[2], s2b[2]), (s1a[1], s1b[1])):
        bands = x.collection.bands
        assert a.read(x, a.grid, bands).tobytes() == b.read(y, b.grid, bands).tobytes()
    assert a.read_labels(a.grid).tobytes() == b.read_labels(b.grid).tobytes()

    s2c = acquisitions(c, Collection.S2_L1C)
    s1c = acquisitions(c, Collection.S1_GRD)
    assert s2c[2].id != s2a[2].id
    assert not np.array_equal(a.read(s2a[2], a.grid, ["B08"]), c.read(s2c[2], c.grid, ["B08"]))
    assert not np.array_equal(a.read(s1a[1], a.grid, ["VV"]), c.read(s1c[1], c.grid, ["VV"]))
    assert not np.array_equal(a.read_labels(a.grid), c.read_labels(c.grid))


def test_speckle_differs_between_s1_acquisitions(world):
    s1 = acquisitions(world, Collection.S1_GRD)
    grid = world.grid.window(0, 0, 128, 128)
    first, second = (world.read(a, grid, ["VV"])[0] for a in s1[:2])
    diff = first - second
    # Independent speckle: pixel differences of a few dB, but only a small mean change.
    assert np.std(diff) > 2.0
    assert abs(np.median(diff)) < 1.5


def test_window_equals_slice_of_whole_world(world):
    s2 = acquisitions(world, Collection.S2_L2A)[1]
    s1 = acquisitions(world, Collection.S1_GRD)[0]
    full_s2 = world.read(s2, world.grid, S2_L2A_BANDS)
    full_s1 = world.read(s1, world.grid, S1_BANDS)
    full_alpha, full_type = world.cloud_truth(s2, world.grid)
    full_labels = world.read_labels(world.grid)
    # Windows crossing the speckle blocks (256 px) and the world's edge.
    for row, col, h, w in ((250, 500, 100, 70), (0, 0, 1280, 17), (1200, 1250, 80, 30)):
        window = world.grid.window(row, col, h, w)
        sl = (slice(row, row + h), slice(col, col + w))
        np.testing.assert_array_equal(world.read(s2, window, S2_L2A_BANDS), full_s2[:, *sl])
        np.testing.assert_array_equal(world.read(s1, window, ["VH"])[0], full_s1[1][sl])
        np.testing.assert_array_equal(world.read_labels(window), full_labels[sl])
        alpha, ctype = world.cloud_truth(s2, window)
        np.testing.assert_array_equal(alpha, full_alpha[sl])
        np.testing.assert_array_equal(ctype, full_type[sl])
    # Band order and subsets do not change values.
    np.testing.assert_array_equal(
        world.read(s2, world.grid, ["B12", "B02"]), full_s2[[S2_L2A_BANDS.index("B12"), 1]]
    )


def test_aligned_grid_partly_outside_is_nan(world):
    s2 = acquisitions(world, Collection.S2_L1C)[0]
    left, _, _, top = world.grid.bounds
    grid = Grid.from_bounds(world.grid.crs, left - 500.0, top + 300.0, 100, 100, 10.0)
    arr = world.read(s2, grid, ["B04"])[0]
    assert np.isnan(arr[:30]).all() and np.isnan(arr[:, :50]).all()
    np.testing.assert_array_equal(
        arr[30:, 50:], world.read(s2, world.grid.window(0, 0, 70, 50), ["B04"])[0]
    )
    labels = world.read_labels(grid)
    assert (labels[:30] == 0).all() and (labels[30:, 50:] > 0).all()


def test_pickle_roundtrip(world):
    s2 = acquisitions(world, Collection.S2_L1C)[3]
    grid = world.grid.window(300, 300, 64, 64)
    before = world.read(s2, grid, ["B03", "B10"])
    payload = pickle.dumps(world)
    assert len(payload) < 10_000  # caches are not shipped to workers
    clone = pickle.loads(payload)
    np.testing.assert_array_equal(clone.read(s2, grid, ["B03", "B10"]), before)


# --------------------------------------------------------------------------- other grids


def test_read_on_other_crs_and_resolutions(world):
    s2 = clearest(world, Collection.S2_L2A)
    b08 = world.read(s2, world.grid, ["B08"])[0]

    # Coarser aligned grid: average resampling keeps the mean.
    coarse = world.read(s2, world.grid.rescaled(40.0), ["B08"])[0]
    assert coarse.shape == (320, 320) and np.isfinite(coarse).all()
    np.testing.assert_allclose(coarse.mean(), b08.mean(), rtol=1e-3)
    np.testing.assert_allclose(coarse[10, 20], b08[40:44, 80:84].mean(), rtol=1e-4)

    # Half-pixel shift at the same resolution: bilinear between neighbours.
    left, _, _, top = world.grid.bounds
    shifted = Grid.from_bounds(world.grid.crs, left + 5.0, top, 200, 100, 10.0)
    arr = world.read(s2, shifted, ["B08"])[0]
    np.testing.assert_allclose(arr[50, 50], b08[50, 50:52].mean(), rtol=1e-4)
    assert np.isfinite(arr).all()

    # Geographic grid larger than the world: NaN outside, finite in the middle.
    lon0, lat0, lon1, lat1 = world.grid.footprint().bounds
    res = 0.0005
    geo = Grid(
        world.grid.crs.from_epsg(4326),
        Affine(res, 0, lon0 - 0.01, 0, -res, lat1 + 0.01),
        int((lon1 - lon0 + 0.02) / res),
        int((lat1 - lat0 + 0.02) / res),
    )
    arr = world.read(s2, geo, ["B08", "B04"])
    assert arr.shape == (2, geo.height, geo.width)
    assert np.isnan(arr[:, :10]).all() and np.isnan(arr[:, :, -10:]).all()
    h, w = geo.height, geo.width
    assert np.isfinite(arr[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]).all()
    assert 0.4 < np.isfinite(arr[0]).mean() < 0.95
    labels = world.read_labels(geo)
    assert labels.shape == (h, w) and (labels[:10] == 0).all()
    assert np.array_equal(labels > 0, np.isfinite(arr[0]))

    # A grid that misses the world entirely.
    far = Grid.from_bounds(world.grid.crs, 100000.0, 1000000.0, 8, 8, 10.0)
    assert np.isnan(world.read(s2, far, ["B08"])).all()
    assert (world.read_labels(far) == 0).all()


# --------------------------------------------------------------------------- realism


def test_value_ranges_and_class_signatures(world):
    labels = world.read_labels(world.grid)
    l2a = clearest(world, Collection.S2_L2A)
    l1c = next(a for a in acquisitions(world, Collection.S2_L1C) if a.datetime == l2a.datetime)
    assert l1c.cloud_cover < 5.0
    _, ctype = world.cloud_truth(l2a, world.grid)
    boa = world.read(l2a, world.grid, S2_L2A_BANDS)
    toa = world.read(l1c, world.grid, S2_L1C_BANDS)
    assert np.isfinite(boa).all() and np.isfinite(toa).all()
    assert boa.min() >= 0.0 and boa.max() < 1.3
    assert toa.min() >= 0.0 and toa.max() < 1.3

    def median(cube, bands, band, code):
        return float(np.median(cube[bands.index(band)][(labels == code) & (ctype == 0)]))

    def boa_m(band, code):
        return median(boa, S2_L2A_BANDS, band, code)

    # Vegetation: red edge and NIR plateau.
    for code in (EVERGREEN_BROADLEAF, CROPLAND):
        assert boa_m("B08", code) > 0.25 and boa_m("B04", code) < 0.07
        assert boa_m("B07", code) > 2 * boa_m("B05", code)
    # Water dark in NIR / SWIR, snow bright in the visible and dark in the SWIR, soil rising.
    assert boa_m("B08", WATER) < 0.03 and boa_m("B11", WATER) < 0.02
    assert boa_m("B03", SNOW) > 0.6 and boa_m("B11", SNOW) < 0.15
    assert boa_m("B11", BARREN) > boa_m("B08", BARREN) > boa_m("B04", BARREN) > boa_m("B02", BARREN)
    # TOA: path radiance brightens the blue, B10 (cirrus band) is nearly black over clear land.
    assert median(toa, S2_L1C_BANDS, "B02", CROPLAND) > boa_m("B02", CROPLAND) + 0.02
    assert np.percentile(toa[S2_L1C_BANDS.index("B10")][ctype == 0], 99) < 0.01

    s1 = acquisitions(world, Collection.S1_GRD)[0]
    sar = world.read(s1, world.grid, S1_BANDS)
    assert np.isfinite(sar).all() and sar.min() > -40 and sar.max() < 10

    def sar_m(pol, code):
        return float(np.median(sar[S1_BANDS.index(pol)][labels == code]))

    assert -24 < sar_m("VV", WATER) < -17 and -31 < sar_m("VH", WATER) < -24
    assert -10 < sar_m("VV", EVERGREEN_BROADLEAF) < -5
    assert -6 < sar_m("VV", 13) < 0  # urban
    for code in range(1, 18):
        assert sar_m("VH", code) < sar_m("VV", code) - 4


def test_s1_and_s2_are_coregistered(world):
    labels = world.read_labels(world.grid)
    water = labels == WATER
    l2a = clearest(world, Collection.S2_L2A)
    _, ctype = world.cloud_truth(l2a, world.grid)
    nir = world.read(l2a, world.grid, ["B08"])[0]
    vv = world.read(acquisitions(world, Collection.S1_GRD)[2], world.grid, ["VV"])[0]
    # A 5 x 5 multilook in linear power tames the speckle before thresholding.
    vv = 10 * np.log10(uniform_filter(10 ** (vv / 10), size=5))
    clear = ctype == 0

    def agreement(shift: int) -> tuple[float, float]:
        """How well water (by label, shifted by some columns) matches dark S2 NIR / S1 VV."""
        mask = np.roll(water, shift, axis=1) & clear
        land = np.roll(~water, shift, axis=1) & clear
        s2 = ((nir < 0.05) == mask)[mask | land].mean()
        s1 = ((vv < -16.5) == mask)[mask | land].mean()
        return float(s2), float(s1)

    s2_ok, s1_ok = agreement(0)
    assert s2_ok > 0.995 and s1_ok > 0.97
    # Any misregistration (here by 4 pixels) makes the boundaries disagree.
    for shift in (-4, 4):
        s2_bad, s1_bad = agreement(shift)
        assert s2_bad < s2_ok - 0.001 and s1_bad < s1_ok - 0.001


def test_clouds_and_shadows_composite():
    w, flat = small(seed=5), small(seed=5, shadows=False)
    acq = cloudiest(w, Collection.S2_L2A)
    acq_l1c = next(a for a in acquisitions(w, Collection.S2_L1C) if a.datetime == acq.datetime)
    alpha, ctype = w.cloud_truth(acq, w.grid)
    alpha_l1c, ctype_l1c = w.cloud_truth(acq_l1c, w.grid)
    np.testing.assert_array_equal(alpha, alpha_l1c)
    np.testing.assert_array_equal(ctype, ctype_l1c)
    assert acq.cloud_cover == acq_l1c.cloud_cover and acq.id != acq_l1c.id

    # Reported cover matches the cloud field; thick cores opaque, thin edges translucent.
    assert abs((ctype > 0).mean() * 100 - acq.cloud_cover) < 0.5
    assert (alpha[ctype == 2] == 1.0).all()
    thin = alpha[ctype == 1]
    assert thin.size and (thin > 0).all() and (thin <= 0.7).all()
    assert (alpha[ctype == 0] == 0).all()

    # Thick clouds: bright and white, with a B10 cirrus signal; thin clouds in between.
    toa = w.read(acq_l1c, w.grid, ["B02", "B10", "B11"])
    assert np.median(toa[0][ctype == 2]) > 0.4 and np.median(toa[1][ctype == 2]) > 0.05
    assert np.median(toa[2][ctype == 2]) < np.median(toa[0][ctype == 2])
    assert np.median(toa[0][ctype == 0]) < np.median(toa[0][ctype == 1]) < 0.45

    # Shadows only darken clear pixels, and do darken some.
    shaded = w.read(acq, w.grid, S2_L2A_BANDS)
    flat_acq = cloudiest(flat, Collection.S2_L2A)
    assert flat_acq.datetime == acq.datetime
    unshaded = flat.read(flat_acq, flat.grid, S2_L2A_BANDS)
    diff = unshaded - shaded
    assert (diff >= -1e-7).all()
    assert (diff[:, ctype > 0] == 0).all()
    darkened = (diff[S2_L2A_BANDS.index("B08")] > 0.05).mean()
    assert 0.01 < darkened < (ctype > 0).mean()


def test_s2cloudless_detects_thick_clouds(world):
    from s2cloudless import S2PixelCloudDetector

    detector = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2, all_bands=True)
    clouded = [a for a in acquisitions(world, Collection.S2_L1C) if 25 < a.cloud_cover < 75]
    assert clouded
    for acq in clouded[:2]:
        _, ctype = world.cloud_truth(acq, world.grid)
        # The 10 m window of 160 x 160 px whose thick share is closest to 40 %.
        size = 160
        shares = {
            (r, c): float((ctype[r : r + size, c : c + size] == 2).mean())
            for r in range(0, 1280 - size + 1, 64)
            for c in range(0, 1280 - size + 1, 64)
        }
        row, col = min(shares, key=lambda rc: abs(shares[rc] - 0.4))
        grid = world.grid.window(row, col, size, size)
        truth = ctype[row : row + size, col : col + size]
        assert (truth == 2).mean() > 0.2 and (truth == 0).mean() > 0.2
        bands = world.read(acq, grid, S2_L1C_BANDS)
        mask = detector.get_cloud_masks(np.moveaxis(bands, 0, -1)[None])[0].astype(bool)
        assert mask[truth == 2].mean() >= 0.9
        assert (~mask[truth == 0]).mean() >= 0.9


def test_clear_date_is_not_flagged_by_s2cloudless(world):
    from s2cloudless import S2PixelCloudDetector

    detector = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2, all_bands=True)
    acq = clearest(world, Collection.S2_L1C)
    grid = world.grid.rescaled(80.0)  # the whole world, every land-cover class
    bands = world.read(acq, grid, S2_L1C_BANDS)
    mask = detector.get_cloud_masks(np.moveaxis(bands, 0, -1)[None])[0].astype(bool)
    alpha, _ = world.cloud_truth(acq, grid)
    assert (~mask[alpha == 0]).mean() >= 0.9


# --------------------------------------------------------------------------- catalog


def test_search_catalog(world):
    l1c = acquisitions(world, Collection.S2_L1C)
    l2a = acquisitions(world, Collection.S2_L2A)
    s1 = acquisitions(world, Collection.S1_GRD)
    assert [a.datetime.day for a in l1c] == [1, 6, 11, 16, 21, 26, 31]
    assert [a.datetime.day for a in s1] == [3, 9, 15, 21, 27]
    assert [a.datetime for a in l1c] == [a.datetime for a in l2a]
    assert [a.cloud_cover for a in l1c] == [a.cloud_cover for a in l2a]
    assert not {a.id for a in l1c} & {a.id for a in l2a}
    assert all(a.datetime.tzinfo is not None for a in l1c + s1)
    for acqs in (l1c, l2a, s1):
        assert [a.datetime for a in acqs] == sorted(a.datetime for a in acqs)
    assert {a.properties["orbit_direction"] for a in s1} == {"ASCENDING", "DESCENDING"}
    assert all(a.cloud_cover is None for a in s1)
    for a in l1c:
        assert a.properties["mgrs_tile"] == "49RFN"
        assert a.properties["processing_baseline"] == "02.06"
        assert 0.0 <= a.cloud_cover <= 90.0
        assert a.footprint.equals(world.grid.footprint())
    covers = [a.cloud_cover for a in l1c]
    assert min(covers) < 5.0 and max(covers) > 50.0


def test_search_filters(world):
    area = world.grid.footprint()
    t = acquisitions(world, Collection.S2_L1C)[2].datetime
    # Inclusive bounds, naive datetimes taken as UTC.
    exact = world.search(Collection.S2_L1C, area, t, t)
    assert [a.datetime for a in exact] == [t]
    naive = world.search(Collection.S2_L1C, area, t.replace(tzinfo=None), t.replace(tzinfo=None))
    assert [a.id for a in naive] == [a.id for a in exact]
    second = dt.timedelta(seconds=1)
    assert (
        world.search(Collection.S2_L1C, area, t + second, t + dt.timedelta(days=5) - second) == []
    )
    later = world.search("sentinel-1-grd", area, dt.datetime(2018, 7, 15), dt.datetime(2018, 7, 22))
    assert [a.datetime.day for a in later] == [15, 21]
    # Area: the world's corner intersects, a box in Europe does not.
    lon0, lat0, *_ = area.bounds
    corner = box(lon0 - 1, lat0 - 1, lon0 + 0.01, lat0 + 0.01)
    assert len(world.search(Collection.S1_GRD, corner, *JULY)) == 5
    assert world.search(Collection.S1_GRD, box(2, 48, 3, 49), *JULY) == []
    # Cloud cover (percent).
    everything = acquisitions(world, Collection.S2_L2A)
    clear = world.search(Collection.S2_L2A, area, *JULY, max_cloud_cover=30.0)
    assert 0 < len(clear) < len(everything)
    assert [a.id for a in clear] == [a.id for a in everything if a.cloud_cover <= 30.0]
    assert len(world.search(Collection.S1_GRD, area, *JULY, max_cloud_cover=0.0)) == 5


# --------------------------------------------------------------------------- S2 schedule

SCHEDULE = [
    {"datetime": "2018-07-04T10:30:00Z", "cloud_cover": 0.0},
    {"datetime": dt.datetime(2018, 7, 9, 3, 5, 31), "cloud_cover": 37.5,
     "processing_baseline": "04.00", "cloud_shadow_percentage": 2.5,
     "thin_cirrus_percentage": 1.25},
    {"datetime": "2018-07-20T03:05:31+00:00", "cloud_cover": 80.0, "processing_baseline": "05.09"},
]


def test_schedule_gives_the_s2_dates_covers_and_properties():
    w = small(s2_schedule=SCHEDULE, mgrs_tile="33UUP")
    l1c, l2a = acquisitions(w, Collection.S2_L1C), acquisitions(w, Collection.S2_L2A)
    assert [a.datetime for a in l2a] == [
        dt.datetime(2018, 7, 4, 10, 30, tzinfo=UTC),
        dt.datetime(2018, 7, 9, 3, 5, 31, tzinfo=UTC),
        dt.datetime(2018, 7, 20, 3, 5, 31, tzinfo=UTC),
    ]
    assert [a.datetime for a in l1c] == [a.datetime for a in l2a]
    assert [a.cloud_cover for a in l1c] == [a.cloud_cover for a in l2a] == [0.0, 37.5, 80.0]
    for acqs in (l1c, l2a):
        assert [a.properties["processing_baseline"] for a in acqs] == ["02.06", "04.00", "05.09"]
    assert l2a[1].properties["cloud_shadow_percentage"] == 2.5
    assert l2a[1].properties["thin_cirrus_percentage"] == 1.25
    assert "cloud_shadow_percentage" not in l2a[0].properties
    assert not any("thin_cirrus_percentage" in a.properties for a in l1c)  # L2A only
    assert all(a.properties["mgrs_tile"] == "33UUP" and a.id.endswith("_T33UUP")
               for a in l1c + l2a)
    # The clouds of each date cover the scheduled share of the world.
    for acq in l2a:
        alpha, kind = w.cloud_truth(acq, w.grid)
        assert abs((alpha > 0).mean() - acq.cloud_cover / 100) < 0.005
        assert ((kind > 0) == (alpha > 0)).all()
    # Sentinel-1 is untouched, and the range filter works on the scheduled covers.
    plain = small()
    s1 = acquisitions(w, Collection.S1_GRD)
    assert [a.datetime for a in s1] == [a.datetime for a in acquisitions(plain, Collection.S1_GRD)]
    ranged = w.search(Collection.S2_L2A, None, *JULY, min_cloud_cover=37.5, max_cloud_cover=80)
    assert [a.cloud_cover for a in ranged] == [37.5, 80.0]
    assert w.search(Collection.S2_L2A, None, *JULY, min_cloud_cover=80.01) == []


def test_schedule_pickles_and_stays_json_able():
    w = small(s2_schedule=SCHEDULE, mgrs_tile="33UUP")
    json.dumps(w.__getstate__())  # the world travels by its parameters
    clone = pickle.loads(pickle.dumps(w))
    for collection in Collection:
        assert [a.id for a in acquisitions(clone, collection)] == [
            a.id for a in acquisitions(w, collection)
        ]
    acq = acquisitions(w, Collection.S2_L1C)[1]
    grid = w.grid.window(40, 40, 32, 32)
    bands = ["B02", "B10"]
    assert clone.read(acq, grid, bands).tobytes() == w.read(acq, grid, bands).tobytes()
    # The tile and the schedule are part of the world's identity.
    other = acquisitions(small(s2_schedule=SCHEDULE), Collection.S2_L1C)[1]
    assert other.id != acq.id and other.properties["mgrs_tile"] == "49RFN"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"s2_schedule": [{"datetime": "2018-08-01T03:00:00", "cloud_cover": 5}]},
     "not in 2018-07-01..2018-07-31"),
    ({"s2_schedule": [{"datetime": "2018-07-02T03:00:00", "cloud_cover": 5},
                      {"datetime": "2018-07-02T03:00:00Z", "cloud_cover": 9}]}, "same time"),
    ({"s2_schedule": [{"datetime": "2018-07-02", "cloud_cover": 120}]}, "0..100"),
    ({"s2_schedule": [{"datetime": "2018-07-02", "cover": 5}]}, "needs datetime and cloud_cover"),
    ({"s2_schedule": [{"datetime": "2018-07-02", "cloud_cover": 5,
                       "processing_baseline": "4.0"}]}, "'04.00'"),
    ({"mgrs_tile": "T33UUP"}, "'33UUP'"),
])
def test_bad_schedule_or_tile(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(**kwargs)


# --------------------------------------------------------------------------- errors, speed


def test_bad_bands_and_foreign_acquisitions(world):
    l2a = acquisitions(world, Collection.S2_L2A)[0]
    grid = world.grid.window(0, 0, 8, 8)
    with pytest.raises(ValueError, match=r"'B10'.*B01.*B8A.*B12"):
        world.read(l2a, grid, ["B02", "B10"])
    with pytest.raises(ValueError, match=r"'HH'.*VV, VH"):
        world.read(acquisitions(world, Collection.S1_GRD)[0], grid, ["HH"])
    other = small(seed=9)
    with pytest.raises(ValueError, match="not from this synthetic world"):
        world.read(acquisitions(other, Collection.S2_L2A)[0], grid, ["B02"])
    fake = Acquisition("S2A_MSIL2A_20180701", Collection.S2_L2A, l2a.datetime, l2a.footprint)
    with pytest.raises(ValueError, match="not from this synthetic world"):
        world.read(fake, grid, ["B02"])
    relabelled = Acquisition(l2a.id, Collection.S2_L1C, l2a.datetime, l2a.footprint)
    with pytest.raises(ValueError, match="not from this synthetic world"):
        world.read(relabelled, grid, ["B02"])


def test_whole_scene_read_is_fast(world):
    acq = acquisitions(world, Collection.S2_L1C)[4]
    world.read(acq, world.grid, S2_L1C_BANDS)  # fills the caches
    t0 = time.perf_counter()
    arr = world.read(acq, world.grid, S2_L1C_BANDS)
    elapsed = time.perf_counter() - t0
    assert arr.shape == (13, 1280, 1280)
    assert elapsed < 1.5
