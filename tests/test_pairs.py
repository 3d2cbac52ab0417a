"""S1/S2 pairing with several S1 candidates: the nearest within the gap, the earlier on ties
(issue 19: no fixture ever offered two S1 acquisitions within the gap)."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from shapely.geometry import box

from cloudbench.pairs import pair
from cloudbench.sources.base import Acquisition, Collection

T0 = dt.datetime(2018, 7, 10, 3, 0, tzinfo=dt.UTC)
GAP = dt.timedelta(days=3)
FOOTPRINT = box(113.0, 29.0, 113.1, 29.1)
HOUR = dt.timedelta(hours=1)


def _acq(collection: Collection, when: dt.datetime, name: str | None = None) -> Acquisition:
    properties = {} if collection is Collection.S1_GRD else {
        "platform": "sentinel-2a", "relative_orbit": 32}
    return Acquisition(name or f"{collection.value}-{when:%Y%m%dT%H%M%S}", collection, when,
                       FOOTPRINT, properties=properties)


def _s1(*offsets: dt.timedelta) -> list[Acquisition]:
    return [_acq(Collection.S1_GRD, T0 + d) for d in offsets]


def _paired_s1(s1: list[Acquisition], when: dt.datetime = T0) -> Acquisition | None:
    found = pair([_acq(Collection.S2_L2A, when)], [_acq(Collection.S2_L1C, when)], s1, GAP)
    assert len(found) <= 1
    return found[0].s1 if found else None


@pytest.mark.parametrize(("offsets", "expected"), [
    # the nearest, whether before or after, whatever the list order
    ((-30 * HOUR, 5 * HOUR, -40 * HOUR, 50 * HOUR), 5 * HOUR),
    ((10 * HOUR, -3 * HOUR, 20 * HOUR), -3 * HOUR),
    # equally near before and after: the earlier
    ((6 * HOUR, -6 * HOUR), -6 * HOUR),
    ((-30 * HOUR, 24 * HOUR, -24 * HOUR, 30 * HOUR), -24 * HOUR),
    # the gap is inclusive; beyond it on both sides nothing is paired
    ((-GAP, GAP + HOUR), -GAP),
    ((GAP, -GAP - HOUR), GAP),
    ((GAP + HOUR, -GAP - HOUR), None),
    ((), None),
], ids=["nearest after", "nearest before", "tie", "tie among four", "gap before",
        "gap after", "beyond the gap", "no s1"])
def test_nearest_s1_within_the_gap_the_earlier_on_ties(
    offsets: tuple[dt.timedelta, ...], expected: dt.timedelta | None
) -> None:
    for order in itertools.permutations(_s1(*offsets)):
        radar = _paired_s1(list(order))
        if expected is None:
            assert radar is None, order
        else:
            assert radar is not None and radar.datetime == T0 + expected, order


def test_s1_products_of_the_same_time_are_chosen_by_id_in_any_order() -> None:
    a = _acq(Collection.S1_GRD, T0 + 2 * HOUR, "S1A_IW_GRDH_b")
    b = _acq(Collection.S1_GRD, T0 + 2 * HOUR, "S1A_IW_GRDH_a")
    far = _acq(Collection.S1_GRD, T0 - 5 * HOUR)
    for order in itertools.permutations([a, b, far]):
        radar = _paired_s1(list(order))
        assert radar is not None and radar.id == "S1A_IW_GRDH_a"


def test_each_sensing_gets_its_own_nearest_s1() -> None:
    """Two S2 dates, four S1 candidates: each date its nearest, one S1 may serve both."""
    day = dt.timedelta(days=1)
    l2a = [_acq(Collection.S2_L2A, T0), _acq(Collection.S2_L2A, T0 + 5 * day)]
    l1c = [_acq(Collection.S2_L1C, T0), _acq(Collection.S2_L1C, T0 + 5 * day)]
    s1 = _s1(-2 * day, 1 * day, 4 * day, 8 * day)
    found = pair(l2a, l1c, s1, GAP)
    assert [(p.s2_l2a.datetime, p.s1.datetime, p.gap) for p in found] == [
        (T0, T0 + day, day), (T0 + 5 * day, T0 + 4 * day, -day)]
    # 2.5 days between the dates: the S1 between them is equally near both
    l2a[1] = _acq(Collection.S2_L2A, T0 + 2 * day)
    l1c[1] = _acq(Collection.S2_L1C, T0 + 2 * day)
    found = pair(l2a, l1c, _s1(-2 * day, day, 4 * day), GAP)
    assert [p.s1.datetime for p in found] == [T0 + day, T0 + day]


# --------------------------------------------------------------------------------------------
# paired_shard: one tile's patches cut, labelled and masked, against the world's own rasters
# --------------------------------------------------------------------------------------------


def test_paired_shard_keeps_each_patch_as_the_world_has_it_and_counts_each_drop_once() -> None:
    import numpy as np

    from cloudbench.clouds import CloudMaskConfig, mask_acquisition
    from cloudbench.config import class_scheme
    from cloudbench.pairs import paired_shard
    from cloudbench.sources.base import S1_BANDS, S2_L2A_BANDS
    from cloudbench.sources.landcover import NO_LABEL_DATA, read_classes
    from cloudbench.sources.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=3, size=64, region_size=16,
                           s2_schedule=[{"datetime": "2018-07-03T03:00:00", "cloud_cover": 40}])
    start, end = dt.datetime(2018, 7, 1, tzinfo=dt.UTC), dt.datetime(2018, 7, 31, tzinfo=dt.UTC)
    (found,) = pair(world.search(Collection.S2_L2A, None, start, end),
                    world.search(Collection.S2_L1C, None, start, end),
                    world.search(Collection.S1_GRD, None, start - GAP, end + GAP), GAP)
    grid = world.grid.window(16, 0, 48, 48)  # 3 x 3 patches of 16 px, 16 px down the world
    scheme = class_scheme("simplified_igbp")
    by_class = {c: code for code, c in sorted(scheme.codes.items(), reverse=True)}

    class Labels:  # the world's labels, with patches made to be dropped for each reason
        def read_labels(self, g: object) -> np.ndarray:
            codes = np.array(world.read_labels(grid))
            codes[:16, :16] = 0  # patch 0: no label data
            codes[4:16, 16:32] = 0  # patch 1: a quarter labelled, under min_labelled 0.5
            # patch 2 impure; so are patches 3 and 8, dropped first for no data and the area
            for rows, c in ((slice(0, 16), 32), (slice(16, 32), 0), (slice(32, 48), 32)):
                codes[rows, c:c + 6], codes[rows, c + 6:c + 11] = by_class[0], by_class[1]
                codes[rows, c + 11:c + 16] = by_class[2]
            return codes

    clear = np.asarray(world.read(found.s2_l2a, grid, S2_L2A_BANDS, cloud_free=True))
    clear[3, 20, 5] = np.nan  # patch 3: no data in the clear target
    clear[0, 40, 40] = np.nan  # and in patch 8, counted outside the area only
    clear[1, 16:32, 16::16] = -0.01, 7.0  # stored clipped to 0 and 65535 (patches 4 and 5)
    inside = np.ones((3, 3), dtype=bool)
    inside[2, 2] = False  # patch 8: outside the area
    config = CloudMaskConfig()
    shard = paired_shard(world, Labels(), grid, found, scheme, patch_size=16, purity=0.5,
                         clouds=config, id_prefix="p", origin=(16, 0),
                         clear_target=lambda g: clear, inside=inside)

    s2 = world.read(found.s2_l2a, grid, S2_L2A_BANDS)
    s1 = world.read(found.s1, grid, S1_BANDS)
    mask = mask_acquisition(world, found.s2_l1c, grid, config)
    classes = read_classes(Labels(), grid, scheme)
    expected_ids, expected_labels, slices = [], [], []
    for i in (4, 5, 6, 7):  # the patches left: each its majority class
        r, c = 16 * (i // 3), 16 * (i % 3)
        rows, cols = slice(r, r + 16), slice(c, c + 16)
        counts = np.bincount(classes[rows, cols][classes[rows, cols] >= 0].ravel())
        if counts.max() < 0.5 * (classes[rows, cols] != NO_LABEL_DATA).sum():
            continue  # impure in the world itself
        expected_ids.append(f"p_{16 + rows.start:05d}_{cols.start:05d}")
        expected_labels.append(int(counts.argmax()))
        slices.append((rows, cols))
    assert len(slices) >= 2, "the world left too few pure patches to check"
    assert list(shard.table["id"]) == expected_ids
    assert list(shard.table["label"]) == expected_labels
    impure = 1 + 4 - len(slices)
    assert shard.dropped == {"outside_aoi": 1, "nodata": 1, "no_label_data": 1,
                             "sparse_label_data": 1, "impure": impure}

    def reflectance(x: np.ndarray) -> np.ndarray:
        return np.round(np.clip(x * 10000, 0, 65535)).astype(np.uint16)

    for k, (rows, cols) in enumerate(slices):
        np.testing.assert_array_equal(shard.arrays["s1"][k], s1[:, rows, cols])
        np.testing.assert_array_equal(shard.arrays["s2"][k], reflectance(s2[:, rows, cols]))
        np.testing.assert_array_equal(shard.arrays["s2_clear"][k],
                                      reflectance(clear[:, rows, cols]))
        np.testing.assert_array_equal(shard.arrays["cloud_mask"][k, 0], mask[rows, cols])
        assert list(shard.table["transform"].iloc[k]) == list(
            grid.window(rows.start, cols.start, 16, 16).transform)[:6]
    assert shard.arrays["s2"].dtype == np.uint16 and shard.arrays["s1"].dtype == np.float32
    assert set(shard.table["s1_time"]) == {found.s1.datetime}
    assert set(shard.table["s2_time"]) == {found.s2_l2a.datetime}
    assert [list(s) for s in shard.table["source_ids"]] == [
        [found.s2_l2a.id, found.s2_l1c.id, found.s1.id]] * len(slices)
    assert set(shard.seconds) == {"read", "mask", "cut_and_label"}
    assert min(shard.seconds.values()) >= 0


def test_paired_shard_without_an_area_drops_a_patch_of_either_sensor_with_no_data() -> None:
    """No ``inside``: no ``outside_aoi`` count; a NaN in S1 alone, or in S2 alone, makes its patch
    no data (a clear target present and whole); ``min_labelled`` on its own, below ``purity``;
    the clear target is asked for the tile's grid; the phases' seconds within the call's."""
    import time

    import numpy as np

    from cloudbench.clouds import CloudMaskConfig
    from cloudbench.config import class_scheme
    from cloudbench.pairs import paired_shard
    from cloudbench.sources.base import S2_L2A_BANDS
    from cloudbench.sources.synthetic import SyntheticWorld

    world = SyntheticWorld(seed=3, size=64, region_size=16,
                           s2_schedule=[{"datetime": "2018-07-03T03:00:00", "cloud_cover": 40}])
    start, end = dt.datetime(2018, 7, 1, tzinfo=dt.UTC), dt.datetime(2018, 7, 31, tzinfo=dt.UTC)
    (found,) = pair(world.search(Collection.S2_L2A, None, start, end),
                    world.search(Collection.S2_L1C, None, start, end),
                    world.search(Collection.S1_GRD, None, start - GAP, end + GAP), GAP)
    grid = world.grid.window(0, 0, 32, 32)  # 2 x 2 patches of 16 px
    scheme = class_scheme("simplified_igbp")
    code = min(scheme.codes)  # every labelled pixel one class: every patch pure

    class Holes:  # the world, with one NaN in S1 of patch 0 and one in S2 of patch 1
        def __getattr__(self, name: str) -> object:
            return getattr(world, name)

        def read(self, acq: Acquisition, g: object, bands: object, **kw: object) -> np.ndarray:
            x = np.array(world.read(acq, g, bands, **kw))
            if acq is found.s1:
                x[1, 3, 5] = np.nan
            elif acq is found.s2_l2a:
                x[4, 2, 20] = np.nan
            return x

    class Labels:
        def read_labels(self, g: object) -> np.ndarray:
            codes = np.full((32, 32), code, dtype=np.int64)
            codes[16:28, 0:16] = 0  # patch 2: a quarter labelled, over min_labelled 0.2
            return codes

    asked: list[object] = []

    def clear_target(g: object) -> np.ndarray:
        asked.append(g)
        return np.asarray(world.read(found.s2_l2a, grid, S2_L2A_BANDS, cloud_free=True))

    def shard(**kw: object):  # type: ignore[no-untyped-def]
        options = {"patch_size": 16, "purity": 0.5, "clouds": CloudMaskConfig(),
                   "id_prefix": "p", "clear_target": clear_target, **kw}
        return paired_shard(Holes(), Labels(), grid, found, scheme, **options)  # type: ignore[arg-type]

    began = time.perf_counter()
    kept = shard(min_labelled=0.2)
    took = time.perf_counter() - began
    assert asked == [grid]
    assert list(kept.table["id"]) == ["p_00016_00000", "p_00016_00016"]
    assert list(kept.table["label"]) == [scheme.codes[code]] * 2
    assert kept.dropped == {"nodata": 2, "no_label_data": 0, "sparse_label_data": 0, "impure": 0}
    assert set(kept.seconds) == {"read", "mask", "cut_and_label"}
    assert all(0 <= v <= took for v in kept.seconds.values())
    assert sum(kept.seconds.values()) <= took
    # min_labelled defaults to purity: the quarter-labelled patch is then too sparse
    assert shard().dropped["sparse_label_data"] == 1
    with pytest.raises(ValueError, match=r"^the clear target has shape \(13, 32, 32\), s2 has "
                                         r"\(12, 32, 32\)$"):
        shard(clear_target=lambda g: np.zeros((13, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^inside has 3 patches, the grid 4$"):
        shard(inside=np.ones(3, dtype=bool))
    # a float64 clear target is encoded as the float32 s2 is: 0.30125 in float32 is 3012 there,
    # 3013 if multiplied in float64
    upcast = np.asarray(clear_target(grid), dtype=np.float64)
    upcast[0, 16, 0] = np.float32(0.30125)
    stored = shard(min_labelled=0.2, clear_target=lambda g: upcast).arrays["s2_clear"]
    assert stored.dtype == np.uint16 and stored[0, 0, 0, 0] == 3012
    # inside as rasterio.features.rasterize gives it, 0/1 uint8: the same patches as bool
    outside = shard(min_labelled=0.2, inside=np.array([[1, 1], [0, 1]], dtype=np.uint8))
    assert list(outside.table["id"]) == ["p_00016_00016"]
    assert outside.dropped == {"outside_aoi": 1, "nodata": 2, "no_label_data": 0,
                               "sparse_label_data": 0, "impure": 0}


# --------------------------------------------------------------------------------------------
# check_plan: repeats refused before any download, named in one message
# --------------------------------------------------------------------------------------------


def test_check_plan_names_each_repeat_whole_and_counts_the_rest() -> None:
    from cloudbench.errors import CloudbenchError
    from cloudbench.pairs import check_plan
    from cloudbench.sources.base import Grid

    grid = Grid.from_bounds("EPSG:32649", 645000.5, 3210000.0, 4, 4, 10.0)
    s2 = _acq(Collection.S2_L2A, T0, "S2-A")
    anonymous = Acquisition("S2-X", Collection.S2_L2A, T0, FOOTPRINT)  # no platform, no orbit
    plan = [("a", grid, s2), ("b", grid, s2), ("c", grid, _acq(Collection.S2_L2A, T0 + HOUR)),
            ("a", grid, s2), ("d", grid, s2), ("x", grid, anonymous), ("y", grid, anonymous)]
    with pytest.raises(CloudbenchError) as raised:
        check_plan(plan)
    where = "EPSG:32649 (645000.5, 3209960, 645040.5, 3210000)"
    assert str(raised.value) == (
        "the plan repeats samples (5 planned shards repeat another's shard id or samples), so "
        f"it was stopped before any download: shards a and b both hold the sample at {where} of "
        "the sensing sentinel-2a R32 2018-07-10 (S2-A); shards a and c both hold the sample at "
        f"{where} of the sensing sentinel-2a R32 2018-07-10 (sentinel-2-l2a-20180710T040000); "
        "shard a is planned twice; 2 more. Items of one pass (MGRS tiles overlapping near a tile "
        "edge) must be grouped into one sensing (cloudbench.pairs.sensings)")
    with pytest.raises(CloudbenchError, match=r"\(S2-A\); 4 more\. Items"):
        check_plan(plan, show=1)
    with pytest.raises(CloudbenchError, match=r"shards x and y both hold .* of the sensing \? R\? "
                                              r"2018-07-10 \(S2-X\)\. Items"):
        check_plan(plan[4:])
    # another day, or another footprint: nothing repeats
    check_plan([("a", grid, s2), ("b", grid, _acq(Collection.S2_L2A, T0 + 24 * HOUR)),
                ("c", Grid.from_bounds("EPSG:32649", 645040.5, 3210000.0, 4, 4, 10.0), s2)])
    # a geographic grid: footprints a few pixels (0.0004 degrees) apart do not repeat
    degrees = Grid.from_bounds("EPSG:4326", 113.0, 29.0, 4, 4, 0.0001)
    check_plan([("a", degrees, s2), ("b", Grid.from_bounds("EPSG:4326", 113.0004, 29.0, 4, 4,
                                                           0.0001), s2)])
    with pytest.raises(CloudbenchError, match=r"shards a and b both hold the sample at EPSG:4326 "
                                              r"\(113, 28.9996, 113.0004, 29\)"):
        check_plan([("a", degrees, s2), ("b", degrees, s2)])
    # with patch_size the samples are the patches: grids that share one 2 x 2 patch repeat it
    shifted = Grid.from_bounds("EPSG:32649", 645020.5, 3210000.0, 4, 4, 10.0)
    check_plan([("a", grid, s2), ("b", shifted, s2)])
    with pytest.raises(CloudbenchError, match=r"1 planned shards .* \(645020.5, 3209980, "
                                              r"645040.5, 3210000\)"):
        check_plan([("a", grid, s2), ("b", shifted, s2)], patch_size=2)


# --------------------------------------------------------------------------------------------
# sensings and _twin: catalog items of one pass made one sensing, by hand
# --------------------------------------------------------------------------------------------


def _item(name: str, when: dt.datetime, tile: str | None, baseline: str | None,
          cover: float | None, left: float, **properties: object) -> Acquisition:
    props = {"platform": "Sentinel-2A", "relative_orbit": 32, **properties}
    if tile is not None:
        props["mgrs_tile"] = tile
    if baseline is not None:
        props["processing_baseline"] = baseline
    return Acquisition(name, Collection.S2_L2A, when, box(left, 29.0, left + 0.1, 29.1),
                       cloud_cover=cover, properties=props)


def test_sensings_keep_each_tiles_newest_baseline_and_weight_the_cover_by_the_area() -> None:
    from shapely.geometry import box as bbox

    from cloudbench.pairs import PASS_GAP, sensings

    second = dt.timedelta(seconds=1)
    members = [
        _item("b", T0 + 5 * second, "t49RFN", "05.00", 40.0, 113.1),
        _item("a", T0, "49REN", "02.06", 10.0, 113.0),
        _item("a-old", T0, "49REN", None, 90.0, 113.0),  # no baseline: an older copy
        _item("c", T0 + 5 * second + PASS_GAP, None, None, None, 113.2),  # the gap inclusive
        _item("d", T0 + 2 * second, "49RFM", None, None, 113.0),  # a tile of no baseline: kept
    ]
    (one,) = sensings(members, area=bbox(113.05, 29.0, 113.2, 29.1))
    assert one.id == "a" and one.datetime == T0
    assert one.properties["items"] == ("a", "d", "b", "c")
    assert one.properties["mgrs_tiles"] == ("49REN", "49RFM", "49RFN")
    assert one.properties["sensing_end"] == T0 + 5 * second + PASS_GAP
    assert one.properties["processing_baseline"] == "05.00"
    assert one.properties["processing_baselines"] == ("02.06", "05.00")
    assert one.footprint.bounds == pytest.approx((113.0, 29.0, 113.3, 29.1))  # the union
    assert one.footprint.area == pytest.approx(0.3 * 0.1)
    # a within the area on 0.05 degrees, b on 0.1: (0.05 * 10 + 0.1 * 40) / 0.15
    assert one.cloud_cover == pytest.approx((0.05 * 10 + 0.1 * 40) / 0.15)
    # no footprint in the area, or no area: the largest cover
    assert sensings(members, area=bbox(120.0, 0.0, 121.0, 1.0))[0].cloud_cover == 40.0
    assert sensings(members)[0].cloud_cover == 40.0
    # a pass of one item is that item; another orbit, platform or a gap beyond PASS_GAP splits
    alone = _item("z", T0, None, None, 5.0, 113.0)
    assert sensings([alone]) == [alone]
    split = [_item("p", T0, None, None, None, 113.0),
             _item("q", T0 + second, None, None, None, 113.0, relative_orbit=75),
             _item("r", T0 + second, None, None, None, 113.0, platform="sentinel-2b"),
             _item("s", T0 + PASS_GAP + second, None, None, None, 113.0)]
    assert [s.id for s in sensings(split)] == ["p", "q", "r", "s"]
    # items without platform or orbit group among themselves, in time order
    bare = [Acquisition(n, Collection.S2_L2A, T0 + k * second, FOOTPRINT)
            for k, n in ((2, "y"), (0, "x"))]
    (both,) = sensings(bare)
    assert both.id == "x" and both.properties["items"] == ("x", "y")


def test_items_of_an_unknown_platform_or_orbit_are_a_track_of_their_own() -> None:
    """Between two items of one pass, seconds apart, items of the same time without an orbit, or
    without a platform, neither split that pass nor join it; a pass whose items have no cloud
    cover has none."""
    from cloudbench.pairs import sensings

    second = dt.timedelta(seconds=1)
    no_orbit = _item("m", T0 + 2 * second, None, None, None, 113.0)
    del no_orbit.properties["relative_orbit"]
    no_platform = _item("n", T0 + 3 * second, None, None, None, 113.0)
    del no_platform.properties["platform"]
    members = [_item("a", T0, None, None, None, 113.0), no_orbit, no_platform,
               _item("b", T0 + 5 * second, None, None, None, 113.1)]
    for order in itertools.permutations(members):
        found = sensings(list(order))
        assert [s.id for s in found] == ["a", "m", "n"], order
        assert found[0].properties["items"] == ("a", "b")
        assert found[0].cloud_cover is None


@pytest.mark.parametrize("zone", ["UTC", "America/Los_Angeles", "Asia/Tokyo"])
def test_the_sensing_key_is_the_utc_date_on_any_machine(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A time with a zone is taken on its UTC date, a naive one as UTC, whatever the machine's
    local zone: 23:30 at UTC-2 is the next day in UTC."""
    import time

    from cloudbench.pairs import sensing_key

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        late = dt.datetime(2018, 7, 10, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
        assert sensing_key(_acq(Collection.S2_L2A, late)) == (
            "sentinel-2a", 32, dt.date(2018, 7, 11))
        for naive in (dt.datetime(2018, 7, 10, 0, 30), dt.datetime(2018, 7, 10, 23, 30)):
            assert sensing_key(_acq(Collection.S2_L2A, naive))[2] == dt.date(2018, 7, 10)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_l1c_twin_is_the_same_platform_orbit_and_sensing_the_nearest() -> None:
    from cloudbench.pairs import SAME_SENSING, _twin

    l2a = _item("l2a", T0, None, None, None, 113.0)
    candidates = [
        _item("other-orbit", T0, None, None, None, 113.0, relative_orbit=75),
        _item("other-platform", T0, None, None, None, 113.0, platform="sentinel-2b"),
        _item("late", T0 + SAME_SENSING, None, None, None, 113.0),  # the bound is inclusive
        _item("too-late", T0 - SAME_SENSING - dt.timedelta(seconds=1), None, None, None, 113.0),
    ]
    twin = _twin(l2a, candidates)
    assert twin is not None and twin.id == "late"
    near = _item("near", T0 - dt.timedelta(minutes=1), None, None, None, 113.0)
    tie = _item("tie", T0 + dt.timedelta(minutes=1), None, None, None, 113.0)
    assert _twin(l2a, [*candidates, tie, near]).id == "near"  # nearest, then the earlier
    assert _twin(l2a, candidates[:2]) is None


def test_pair_weights_both_sensings_by_the_area_and_skips_a_pass_without_a_twin() -> None:
    from shapely.geometry import box as bbox

    second = dt.timedelta(seconds=1)
    day = dt.timedelta(days=1)

    def optical(collection: Collection, when: dt.datetime) -> list[Acquisition]:
        return [Acquisition(f"{collection.value}-{k}-{when:%d}", collection, when + k * second,
                            box(113.0 + k / 10, 29.0, 113.1 + k / 10, 29.1), cloud_cover=cover,
                            properties={"platform": "sentinel-2a", "relative_orbit": 32})
                for k, cover in ((0, 10.0), (1, 40.0))]

    l2a = optical(Collection.S2_L2A, T0) + optical(Collection.S2_L2A, T0 + day)
    l1c = optical(Collection.S2_L1C, T0 + day)  # the first pass has no L1C twin
    s1 = [_acq(Collection.S1_GRD, T0 + day)]
    (found,) = pair(l2a, l1c, s1, GAP, area=bbox(113.0, 29.0, 113.1, 29.1))
    assert found.s2_l2a.datetime == T0 + day  # the pass with a twin, after one without
    assert found.s2_l2a.cloud_cover == 10.0 and found.s2_l1c.cloud_cover == 10.0  # by area
    (unweighted,) = pair(l2a, l1c, s1, GAP)
    assert unweighted.s2_l2a.cloud_cover == 40.0 and unweighted.s2_l1c.cloud_cover == 40.0
