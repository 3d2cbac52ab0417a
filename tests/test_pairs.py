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
