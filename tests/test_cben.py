"""`cloudbench build cben` and `cloudbench build bigearthnet` end to end.

BigEarthNet fixtures are cut from a synthetic world in UTM 33N on BigEarthNet's 60 m lattice;
the loopback Sentinel Hub (tests/shserver.py) serves worlds of the same place whose S2 archive is
scheduled (dates, cloud covers, processing baselines), so the selection rule is checked exactly
and every stored pixel can be checked against the world on the original patch's grids.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cloudbench.builders import cben
from cloudbench.builders.bigearthnet import Config as CleanConfig
from cloudbench.cli import main
from cloudbench.clouds import CloudMaskConfig, cloud_mask
from cloudbench.datasets import CBEN, BigEarthNetClean
from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import S2_L1C_BANDS, Acquisition, Collection
from cloudbench.sources.bigearthnet import S2_GROUPS, group_grids, read_index, read_patch
from cloudbench.sources.earthenv import write_climatology
from cloudbench.sources.fixtures import write_bigearthnet_v1, write_bigearthnet_v2
from cloudbench.sources.synthetic import SyntheticWorld
from cloudbench.store import Store
from tests.shserver import SHServer, outage_after_first_shard

pytestmark = pytest.mark.usefixtures("sentinel_hub_env")

T0 = dt.datetime(2018, 6, 15, 10, 10, 31, tzinfo=dt.UTC)
"""The original BigEarthNet sensing."""
CELLS = [(0, 0), (0, 1), (1, 0), (1, 1)]
MEAN, SD = 60.0, 10.0
"""The climatology everywhere: cover range [50, 70]."""


def _day(days: float) -> str:
    return (T0 + dt.timedelta(days=days)).isoformat()


def _world(*entries: dict[str, Any], seed: int = 3) -> SyntheticWorld:
    """The BigEarthNet place (tile 33UUP) with S2 sensings at T0 (clear) and ``entries``."""
    return SyntheticWorld(
        seed=seed, crs="EPSG:32633", left=404400.0, top=5342400.0, size=240, region_size=60,
        start="2018-02-01", end="2018-11-30", s1_revisit_days=6, mgrs_tile="33UUP",
        s2_schedule=[{"datetime": T0.isoformat(), "cloud_cover": 0.0}, *entries],
    )


BUILD_WORLD = dict(datetime=_day(12), cloud_cover=60.0, processing_baseline="05.09")


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return _world(BUILD_WORLD)


@pytest.fixture(scope="module")
def roots(world: SyntheticWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cben-inputs")
    write_bigearthnet_v1(base / "v1", world, CELLS, product_time=T0)
    write_bigearthnet_v2(base / "v2", world, CELLS, product_time=T0)
    write_climatology(base / "earthenv", mean=MEAN, sd=SD)
    return {"v1": base / "v1", "v2": base / "v2", "climatology": base / "earthenv"}


def _command(server: SHServer, roots: dict[str, Path], out: Path, *extra: str,
             layout: str = "v1") -> list[str]:
    return ["build", "cben", "--bigearthnet-root", str(roots[layout]), "--climatology",
            str(roots["climatology"]), "--out", str(out), "--sh-base-url", server.url,
            "--sh-token-url", f"{server.url}/oauth/token", "--workers", "1",
            "--set", "patches_per_shard=2", "--set", "sentinel_hub.retry_sleep_seconds=0.01",
            *extra]


def _config(roots: dict[str, Path], server: SHServer, **values: Any) -> cben.Config:
    return cben.Config.model_validate({
        "bigearthnet_root": roots["v1"], "climatology": roots["climatology"],
        "sentinel_hub": {"preset": "custom", "base_url": server.url,
                         "token_url": f"{server.url}/oauth/token"}, **values})


def _plan(roots: dict[str, Path], *entries: dict[str, Any], **values: Any
          ) -> tuple[dict[str, Any], SHServer]:
    with SHServer(_world(*entries), page_size=2) as server:
        tasks = cben.plan(_config(roots, server, **values), Path("unused"))
    (record,) = [t.record for t in tasks if t.record is not None]
    return record, server


# ------------------------------------------------------------------------- the selection rule


def test_window_edge_and_cover_edges_are_inclusive(roots: dict[str, Path]) -> None:
    record, server = _plan(
        roots,
        {"datetime": _day(-10), "cloud_cover": 49.99},   # closer, cover just below the range
        {"datetime": _day(10), "cloud_cover": 70.01},    # closer, cover just above
        {"datetime": _day(30), "cloud_cover": 50.0},     # window edge, cover edge: chosen
    )
    assert record["cover_range"] == [50.0, 70.0]
    assert record["chosen_time"] == _day(30)
    assert record["found_within_days"] == 30 and record["catalog_searches"] == 1
    # the server-side filter carried the range; every page was read (page size 2)
    searches = [e["body"] for e in server.log if e["path"].endswith("/search")]
    assert any("eo:cloud_cover >= 50" in str(b.get("filter")) for b in searches)


def test_search_widens_by_step_and_takes_the_closest(roots: dict[str, Path]) -> None:
    record, _ = _plan(roots, {"datetime": _day(-31), "cloud_cover": 60.0},
                      {"datetime": _day(45), "cloud_cover": 60.0},
                      {"datetime": _day(-70), "cloud_cover": 60.0})
    assert record["chosen_time"] == _day(-31)
    # +-30 first, then the two slices out to +-60
    assert record["found_within_days"] == 60 and record["catalog_searches"] == 3


def test_a_tie_in_time_goes_to_the_cover_closest_to_the_mean(roots: dict[str, Path]) -> None:
    record, _ = _plan(roots, {"datetime": _day(-20), "cloud_cover": 52.0},
                      {"datetime": _day(20), "cloud_cover": 61.0})
    assert record["chosen_time"] == _day(20)
    record, _ = _plan(roots, {"datetime": _day(-20), "cloud_cover": 55.0},
                      {"datetime": _day(20), "cloud_cover": 65.0})
    assert record["chosen_time"] == _day(-20)  # equally close in cover too: the earlier


def test_nothing_in_range_gives_the_tile_up_and_never_takes_the_original(
    roots: dict[str, Path],
) -> None:
    # the original sensing's own cover is in range here: it must still not be chosen
    world = SyntheticWorld(**{**_world()._params, "s2_schedule": [
        {"datetime": T0.isoformat(), "cloud_cover": 60.0},
        {"datetime": _day(95), "cloud_cover": 60.0}]})
    with SHServer(world, page_size=2) as server:
        tasks = cben.plan(_config(roots, server, max_days=90), Path("unused"))
    (task,) = tasks
    assert task.choice is None and task.patches == ()
    assert "within +-90 days" in task.record["given_up"]
    assert task.record["catalog_searches"] == 5  # +-30, then 2 slices to 60 and 2 to 90
    assert task.dropped == {"tile_given_up": len(CELLS)}


def test_shift_days_builds_cben_for_another_month(
    roots: dict[str, Path], tmp_path: Path,
) -> None:
    """Centred 60 days later (August): August's climatology sets the range, and the closest
    product to the new centre wins over one closer to the original sensing."""
    august = tmp_path / "earthenv-august"
    write_climatology(august, mean=lambda lon, lat, month: 20.0 if month == 8 else 60.0, sd=5.0)
    world = _world({"datetime": _day(5), "cloud_cover": 20.0},    # near T0, August-like cover
                   {"datetime": _day(64), "cloud_cover": 22.0},   # near the new centre
                   {"datetime": _day(60), "cloud_cover": 60.0})   # June-like cover: out
    with SHServer(world, page_size=2) as server:
        config = _config(roots, server, shift_days=60)
        config = config.model_copy(update={"climatology": august})
        (task,) = cben.plan(config, Path("unused"))
    assert task.record["search_centre"] == _day(60)
    assert task.record["cover_range"] == [15.0, 25.0]
    assert task.record["chosen_time"] == _day(64) and task.record["found_within_days"] == 30


def test_a_chosen_sensing_without_its_l1c_gives_the_tile_up(
    roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every scheduled sensing has both levels, so make the L1C search come back empty
    monkeypatch.setattr(cben, "_same_tile", lambda acq, tile: acq.collection is Collection.S2_L2A)
    world = _world({"datetime": _day(12), "cloud_cover": 60.0})
    with SHServer(world, page_size=2) as server:
        (task,) = cben.plan(_config(roots, server), Path("unused"))
    assert task.choice is None and "no L1C product" in task.record["given_up"]
    assert task.dropped == {"tile_given_up": len(CELLS)}


# The real catalogs: the item's datetime is the tile's sensing time, minutes after the datatake
# start in the product name (7 min 52 s in a case reported to Sentinel Hub, eurodatacube/eodash
# #441), and can fall on the next day; the original may also be there twice (a reprocessing).
REAL_DELAY = dt.timedelta(minutes=7, seconds=52)


def _mgrs_plan(roots: dict[str, Path], world: SyntheticWorld, original: dt.datetime,
               **values: Any) -> tuple[Any, SHServer]:
    with SHServer(world, page_size=2, mgrs=True, sensing_delay=REAL_DELAY,
                  reprocessings={original: "05.00"}) as server:
        (task,) = cben.plan(_config(roots, server, **values), Path("unused"))
    return task, server


def test_the_original_sensing_or_its_reprocessing_is_never_chosen_when_only_the_time_differs(
    roots: dict[str, Path],
) -> None:
    # the original's own cover is in range, and its tile items are 7 min 52 s after T0 (its
    # name's time): closer than anything else, yet the original
    entries = [{"datetime": T0.isoformat(), "cloud_cover": 60.0},
               {"datetime": _day(40), "cloud_cover": 60.0}]
    world = SyntheticWorld(**{**_world()._params, "s2_schedule": entries})
    task, server = _mgrs_plan(roots, world, T0)
    searched = [e["body"] for e in server.log if e["path"].endswith("/search")]
    assert searched  # the catalog served items, named like products, without s2:* properties
    record = task.record
    assert record["chosen_time"] == (T0 + dt.timedelta(days=40) + REAL_DELAY).isoformat()
    assert record["chosen"].startswith("S2B_MSIL2A_20180725T101031_N0206_R022_T33UUP_")
    assert record["l1c"].startswith("S2B_MSIL1C_20180725T101031_")
    assert record["found_within_days"] == 60
    # only the original (and its reprocessing) in range: the tile is given up
    only = [{"datetime": T0.isoformat(), "cloud_cover": 60.0},
            {"datetime": _day(40), "cloud_cover": 10.0}]
    world = SyntheticWorld(**{**_world()._params, "s2_schedule": only})
    task, _ = _mgrs_plan(roots, world, T0, max_days=60)
    assert task.choice is None and "within +-60 days" in task.record["given_up"]


def test_the_original_is_known_by_its_datatake_date_across_midnight(
    tmp_path: Path, roots: dict[str, Path],
) -> None:
    """A datatake starting at 23:58 has its tile sensed after midnight: the item's datetime is
    the next day, its name still says the original's date."""
    late = dt.datetime(2018, 6, 15, 23, 58, 0, tzinfo=dt.UTC)
    world = SyntheticWorld(**{**_world()._params, "s2_schedule": [
        {"datetime": late.isoformat(), "cloud_cover": 60.0},
        {"datetime": (late + dt.timedelta(days=20)).isoformat(), "cloud_cover": 60.0}]})
    root = tmp_path / "ben-late"
    write_bigearthnet_v1(root, world, CELLS[:1], product_time=late)
    late_roots = {**roots, "v1": root}
    task, _ = _mgrs_plan(late_roots, world, late)
    assert (late + REAL_DELAY).date() != late.date()
    assert task.record["chosen_time"] == (late + dt.timedelta(days=20) + REAL_DELAY).isoformat()


def test_is_original_matches_date_relative_orbit_and_tile() -> None:
    from shapely.geometry import box

    product = "S2A_MSIL1C_20180615T101031_N0206_R022_T33UUP_20180615T101031"

    def acq(name: str, when: dt.datetime, **props: Any) -> Acquisition:
        return Acquisition(name, Collection.S2_L2A, when, box(0, 0, 1, 1), 60.0,
                           {"mgrs_tile": "33UUP", **props})

    later = T0 + dt.timedelta(minutes=9)
    same = "S2A_MSIL2A_20180615T101031_N0500_R022_T33UUP_20190720T101031"
    assert cben.is_original(acq(same, later, relative_orbit=22), "33UUP", product, T0)
    # same date and tile, another relative orbit: another pass
    other = "S2B_MSIL2A_20180615T095031_N0206_R065_T33UUP_20180615T120000"
    assert not cben.is_original(acq(other, later, relative_orbit=65), "33UUP", product, T0)
    # another tile, or another day
    assert not cben.is_original(acq(same, later, mgrs_tile="33UVP"), "33UUP", product, T0)
    nextday = "S2A_MSIL2A_20180616T101031_N0206_R022_T33UUP_20180616T120000"
    assert not cben.is_original(acq(nextday, later + dt.timedelta(days=1)), "33UUP", product,
                                T0)
    # without orbits (a name without _Rxxx_): date and tile decide; within 5 minutes: always
    assert cben.is_original(acq("SYNTH_S2_L2A_20180615T101031_T33UUP", later), "33UUP",
                            "S2A_MSIL2A_20180615T101031", T0)
    assert cben.is_original(acq(other, T0 + dt.timedelta(minutes=4)), "33UUP", product, T0)


def test_reprocessed_duplicates_keep_the_newest_baseline() -> None:
    def acq(baseline: str, name: str) -> Acquisition:
        from shapely.geometry import box

        return Acquisition(name, Collection.S2_L2A, T0, box(0, 0, 1, 1), 60.0,
                           {"processing_baseline": baseline, "mgrs_tile": "33UUP"})

    kept = cben._newest_baselines([acq("02.06", "a"), acq("05.09", "b"), acq("04.00", "c")])
    assert [a.id for a in kept] == ["b"]


def test_windows_cover_the_limit_without_overlap() -> None:
    spans = cben.windows(T0, 30, 75)
    assert spans[0] == [(T0 - dt.timedelta(days=30), T0 + dt.timedelta(days=30))]
    assert spans[-1][1][1] == T0 + dt.timedelta(days=75)
    assert [len(s) for s in spans] == [1, 2, 2]


# ------------------------------------------------------------------------- the build


def _served_dn(world: SyntheticWorld, acq: Acquisition, grid: Any, bands: Any) -> np.ndarray:
    return np.round(world.read(acq, grid, bands).astype(np.float64) * 10000)


@pytest.fixture(scope="module")
def built(world: SyntheticWorld, roots: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("cben") / "cben"
    mp = pytest.MonkeyPatch()
    from tests.shserver import CLIENT_ID, CLIENT_SECRET

    mp.setenv("SH_CLIENT_ID", CLIENT_ID)
    mp.setenv("SH_CLIENT_SECRET", CLIENT_SECRET)
    mp.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    try:
        with SHServer(world, page_size=2) as server:
            assert main(_command(server, roots, out)) == 0
            log = list(server.log)
    finally:
        mp.undo()
    return {"out": out, "log": log}


def test_every_patch_is_the_reacquisition_on_the_original_grids(
    world: SyntheticWorld, roots: dict[str, Path], built: dict[str, Any],
) -> None:
    st = Store(built["out"])
    patches = {p.name: p for p in read_index(roots["v1"])}
    assert sorted(st.samples["id"]) == sorted(patches)
    (l2a,) = [a for a in world.search(Collection.S2_L2A, None, _day(11), _day(13))]
    (l1c,) = [a for a in world.search(Collection.S2_L1C, None, _day(11), _day(13))]
    config = CloudMaskConfig()
    for i, row in st.samples.iterrows():
        patch = patches[row["id"]]
        grids = group_grids(patch)
        # co-registration: the original patch's CRS and transform, each group at its size
        assert row["crs"] == patch.grid.crs.to_string()
        assert tuple(row["transform"]) == tuple(patch.grid.transform)[:6]
        for name, bands in S2_GROUPS.items():
            stored = st.array(name)[i]
            assert stored.shape == (len(bands), grids[name].height, grids[name].width)
            # baseline 05.09: the server adds 1000 DN; stored values are the world's exactly
            np.testing.assert_array_equal(stored, _served_dn(world, l2a, grids[name], bands))
        np.testing.assert_array_equal(st.array("s1")[i], read_patch(patch)["s1"])
        m = 16
        padded = cben._padded(patch.grid, m)
        kind, _ = cloud_mask(_served_dn(world, l1c, padded, S2_L1C_BANDS) / 10000, config)
        np.testing.assert_array_equal(st.array("cloud_mask")[i, 0], kind[m:-m, m:-m])
        # labels and the official split carried over
        assert sorted(row["label"]) == list(patch.labels)
        assert row["split"] == patch.split
        assert row["s2_time"] == pd.Timestamp(_day(12))
        assert row["original_s2_time"] == pd.Timestamp(T0)
    assert 0.2 < st.samples["cloud_fraction"].mean() < 0.95  # 60% of the world under cloud


def test_the_build_report_gives_tables_ii_and_iii(
    world: SyntheticWorld, roots: dict[str, Path], built: dict[str, Any],
) -> None:
    report = json.loads((built["out"] / "build_report.json").read_text())
    ii = report["table_ii_products"]
    # Table II from each sample's SCL window (the catalog items carry no shadow or cirrus)
    (l2a,) = world.search(Collection.S2_L2A, None, _day(11), _day(13))
    patches = {p.name: p for p in read_index(roots["v1"])}
    st = Store(built["out"])
    shares = {"cloud": [], "shadow": [], "cirrus": []}
    for _, row in st.samples.iterrows():
        scl = world.scene_classes(l2a, group_grids(patches[row["id"]])["s2_20m"])
        valid = scl != 0
        for name, classes in (("cloud", (8, 9, 10)), ("shadow", (3,)), ("cirrus", (10,))):
            share = 100 * np.isin(scl[valid], classes).sum() / valid.sum()
            assert row[f"scl_{name}"] == pytest.approx(share, abs=1e-9)
            shares[name].append(share)
    for column, name in (("cloud_cover", "cloud"), ("cloud_shadows", "shadow"),
                         ("thin_cirrus", "cirrus")):
        assert ii[column] == {"n": len(CELLS), "mean": round(float(np.mean(shares[name])), 2),
                              "sd": round(float(np.std(shares[name])), 2),
                              "min": round(float(np.min(shares[name])), 2),
                              "max": round(float(np.max(shares[name])), 2)}
    assert ii["thin_cirrus"]["max"] > 0 and ii["cloud_cover"]["mean"] > 20  # not all zero
    assert ii["catalog_cloud_cover"]["mean"] == 60.0 and "SCL" in ii["source"]
    iii = report["table_iii_temporal_distances"]
    assert iii["s2_cloudy_to_s2"]["mean"] == "12 days 00:00:00"
    assert iii["s2_cloudy_to_s1"]["n"] == len(CELLS)
    (record,) = report["records"]
    assert record["processing_baseline"] == "05.09" and record["tile"] == "33UUP"
    assert report["tiles"] == {"total": 1, "reacquired": 1, "given_up": 0}


def test_requests_ask_for_digital_numbers_on_each_block_grid(built: dict[str, Any]) -> None:
    bodies = [e["body"] for e in built["log"] if e["path"].endswith("/process")]
    # 2 x 2 patches, 2 per shard: two blocks of 1 x 2 patches, four requests each
    assert len(bodies) == 4 * 2
    sizes = sorted({(b["output"]["width"], b["output"]["height"]) for b in bodies})
    assert sizes == [(40, 20), (120, 60), (240, 120), (272, 152)]
    assert sum("SCL" in b["evalscript"] for b in bodies) == 2  # with the 20 m bands
    for body in bodies:
        assert body["input"]["data"][0]["processing"]["harmonizeValues"] is True
        assert 'sampleType: "UINT16"' in body["evalscript"]  # DN: half the PU of FLOAT32


def test_one_block_per_tile_gives_the_same_samples_in_four_requests(
    world: SyntheticWorld, roots: dict[str, Path], built: dict[str, Any], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """All four patches in one shard: one block, four requests (L2A 10, 20 + SCL, 60 m; L1C),
    and the very samples of the build in two blocks (itself pixel-exact per patch, above)."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    out = tmp_path / "one-block"
    with SHServer(world, page_size=2) as server:
        assert main([*_command(server, roots, out), "--set", "patches_per_shard=100"]) == 0
        sizes = sorted((e["body"]["output"]["width"], e["body"]["output"]["height"])
                       for e in server.log if e["path"].endswith("/process"))
    assert sizes == [(40, 40), (120, 120), (240, 240), (272, 272)]
    one, two = Store(out), Store(built["out"])
    order_one = np.argsort(one.samples["id"].to_numpy())
    order_two = np.argsort(two.samples["id"].to_numpy())
    for name in ("s1", "s2", "s2_20m", "s2_60m", "cloud_mask"):
        np.testing.assert_array_equal(one.array(name)[order_one], two.array(name)[order_two])
    columns = ["id", "label", "cloud_fraction", "scl_cloud", "scl_shadow", "scl_cirrus"]
    pd.testing.assert_frame_equal(
        one.samples.iloc[order_one][columns].reset_index(drop=True),
        two.samples.iloc[order_two][columns].reset_index(drop=True))


def test_the_dataset_opens_with_the_paper_views(built: dict[str, Any]) -> None:
    ds = CBEN(built["out"], split="train", early_fusion=True)
    sample = ds[0]
    assert sample["image_s1"].shape == (2, 120, 120)
    assert sample["image_s2"].shape == (12, 120, 120)
    assert sample["image"].shape == (14, 120, 120)
    assert sample["label"].shape == (19,)


def test_the_clean_twin_matches_patch_for_patch(
    roots: dict[str, Path], built: dict[str, Any], tmp_path: Path,
) -> None:
    out = tmp_path / "clean"
    assert main(["build", "bigearthnet", "--bigearthnet-root", str(roots["v1"]), "--out",
                 str(out), "--match", str(built["out"]), "--workers", "1"]) == 0
    clean, cloudy = Store(out), Store(built["out"])
    assert list(clean.samples["id"]) == list(cloudy.samples["id"])
    assert list(clean.samples["split"]) == list(cloudy.samples["split"])
    patches = {p.name: p for p in read_index(roots["v1"])}
    for i, name in enumerate(clean.samples["id"]):
        original = read_patch(patches[name])
        for group in (*S2_GROUPS, "s1"):
            np.testing.assert_array_equal(clean.array(group)[i], original[group])
    assert not clean.array("cloud_mask").any()
    assert BigEarthNetClean(out, split="train")[0]["image_s2"].shape == (12, 120, 120)
    # the same patches from the v2 layout: the same pixels (v2 names its patches differently)
    v2 = tmp_path / "clean-v2"
    assert main(["build", "bigearthnet", "--bigearthnet-root", str(roots["v2"]), "--out",
                 str(v2), "--workers", "1"]) == 0
    # (built without --match: BigEarthNet's order, not the CBEN store's block order)
    position = {name: i for i, name in enumerate(clean.samples["id"])}
    order = [position[p.name] for p in read_index(roots["v1"])]
    for group in (*S2_GROUPS, "s1"):
        np.testing.assert_array_equal(Store(v2).array(group), clean.array(group)[order])


def test_a_build_that_fails_mid_way_resumes_to_the_uninterrupted_dataset(
    world: SyntheticWorld, roots: dict[str, Path], built: dict[str, Any], tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    broken = tmp_path / "broken"
    with SHServer(world, page_size=2) as server:
        watcher = outage_after_first_shard(server, broken)
        assert main(_command(server, roots, broken)) == 2
        watcher.join()
        assert "HTTP 500" in capsys.readouterr().err
        assert not (broken / "dataset.json").exists()
        server.fail_500 = 0
        assert main(_command(server, roots, broken)) == 0
    assert "resumed" in capsys.readouterr().out
    for name in ("s1.npy", "s2.npy", "s2_20m.npy", "s2_60m.npy", "cloud_mask.npy",
                 "samples.parquet"):
        assert (broken / name).read_bytes() == (built["out"] / name).read_bytes(), name


def test_dry_run_plans_without_pixels_for_both_layouts(
    world: SyntheticWorld, roots: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    for layout in ("v1", "v2"):
        with SHServer(world, page_size=2) as server:
            assert main(_command(server, roots, tmp_path / layout, "--dry-run",
                                 layout=layout)) == 0
            assert not server.paths("/process")
        out = capsys.readouterr().out
        assert "1 of 1 BigEarthNet tiles re-acquired (0 given up)" in out
        assert "8 Process API requests" in out  # two blocks (2 patches per shard), 4 each
        assert not (tmp_path / layout / "dataset.json").exists()


@pytest.mark.parametrize("change, message", [
    ({"climatology": "missing"}, "MODCF_monthlymean_06.tif"),
    ({"bigearthnet_root": "empty"}, "BigEarthNet"),
])
def test_bad_inputs_give_one_message_and_exit_2(
    roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
    change: dict[str, str], message: str,
) -> None:
    (tmp_path / "missing").mkdir()
    (tmp_path / "empty").mkdir()
    paths = {"bigearthnet_root": roots["v1"], "climatology": roots["climatology"]}
    paths.update({k: tmp_path / v for k, v in change.items()})
    code = main(["build", "cben", "--bigearthnet-root", str(paths["bigearthnet_root"]),
                 "--climatology", str(paths["climatology"]), "--out", str(tmp_path / "o"),
                 "--sh-base-url", "http://127.0.0.1:9", "--sh-token-url",
                 "http://127.0.0.1:9/oauth/token", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_clean_build_of_the_real_examples(tmp_path: Path) -> None:
    real = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "bigearthnet_v1"
    if not real.is_dir():
        pytest.skip("../shared/realdata is not present")
    root = tmp_path / "ben"
    root.mkdir()
    for entry in real.iterdir():  # links, not copies, plus an official-style split list
        (root / entry.name).symlink_to(entry)
    names = sorted(p.name for p in (real / "BigEarthNet-S2-Example").iterdir())
    (root / "train.csv").write_text("\n".join(names[:4]) + "\n")
    (root / "test.csv").write_text("\n".join(names[4:]) + "\n")
    out = tmp_path / "clean"
    assert main(["build", "bigearthnet", "--bigearthnet-root", str(root), "--out", str(out),
                 "--workers", "1"]) == 0
    st = Store(out)
    report = json.loads((out / "build_report.json").read_text())
    assert report["dropped"]["seasonal_snow"] == 1  # one example is on the official snow list
    assert len(st) == 5
    patches = {p.name: p for p in read_index(root)}
    for i, name in enumerate(st.samples["id"]):
        original = read_patch(patches[name])
        for group in (*S2_GROUPS, "s1"):
            np.testing.assert_array_equal(st.array(group)[i], original[group])
        assert tuple(st.samples["transform"][i]) == tuple(patches[name].grid.transform)[:6]


def test_clean_config_needs_official_splits(tmp_path: Path, world: SyntheticWorld) -> None:
    from cloudbench.builders import bigearthnet

    root = tmp_path / "nosplit"
    write_bigearthnet_v1(root, world, CELLS[:1], product_time=T0)
    for name in ("train.csv", "val.csv", "test.csv"):
        (root / name).unlink(missing_ok=True)
    with pytest.raises(CloudbenchError, match="train.csv"):
        bigearthnet.plan(CleanConfig(bigearthnet_root=root), tmp_path)
