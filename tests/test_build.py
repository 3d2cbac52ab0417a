"""The demo builder through the build engine: determinism, resume after a kill, Dask, content."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from cloudbench import store
from cloudbench.build import run_build
from cloudbench.builders import demo
from cloudbench.cli import main
from cloudbench.config import class_scheme, load_recipe
from cloudbench.sources.base import S1_BANDS, S2_L2A_BANDS, Collection
from cloudbench.sources.synthetic import SyntheticWorld
from cloudbench.store import Store

# 256 px world, 128 px tiles, 64 px patches: 4 tiles x 4 patches per S2 date.
SMALL = ["world_size=256", "tile_size=128", "max_acquisitions=2"]
# More dates (more shards) so that a build can be caught between its first shard and the end.
LONGER = ["world_size=256", "tile_size=128", "max_acquisitions=6"]
ARRAYS = ("s1", "s2", "cloud_mask")


def _sets(settings: list[str]) -> list[str]:
    return [arg for s in settings for arg in ("--set", s)]


def _build(root: Path, settings: list[str], **kwargs: object) -> store.Store:
    config = load_recipe(demo.Config, "demo", settings)
    run_build("demo", config, root, progress=False, **kwargs)
    return Store(root)


def assert_same_dataset(a: Path, b: Path) -> None:
    """Same ids, same sample table, byte-identical arrays and identical build counts."""
    sa, sb = Store(a), Store(b)
    assert list(sa.samples["id"]) == list(sb.samples["id"])
    pd.testing.assert_frame_equal(pd.DataFrame(sa.samples), pd.DataFrame(sb.samples))
    assert (a / "samples.parquet").read_bytes() == (b / "samples.parquet").read_bytes()
    for name in ARRAYS:
        assert (a / f"{name}.npy").read_bytes() == (b / f"{name}.npy").read_bytes(), name
    ra, rb = (json.loads((r / "build_report.json").read_text()) for r in (a, b))
    ra.pop("seconds_per_stage"), rb.pop("seconds_per_stage")
    assert ra == rb
    ma, mb = (json.loads((r / "dataset.json").read_text()) for r in (a, b))
    ma.pop("provenance"), mb.pop("provenance")  # creation time and build seconds differ
    assert ma == mb


@pytest.fixture(scope="module")
def config() -> demo.Config:
    return load_recipe(demo.Config, "demo", SMALL)


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory, config: demo.Config) -> Path:
    """The small demo dataset, built in this process (workers=1)."""
    root = tmp_path_factory.mktemp("serial") / "ds"
    result = run_build("demo", config, root, workers=1, progress=False)
    assert (result.built_shards, result.skipped_shards) == (8, 0)
    assert not result.already_complete
    return root


@pytest.fixture(scope="module")
def world(config: demo.Config) -> SyntheticWorld:
    """A fresh world, independent of the builder's cached one."""
    return SyntheticWorld(seed=config.seed, size=config.world_size)


@pytest.fixture(scope="module")
def acquisitions(world: SyntheticWorld) -> dict:
    return {a.id: a for c in Collection for a in world.search(c, None, "2018-06-01", "2018-09-01")}


# --------------------------------------------------------------------------------------------
# Same config, same bytes: however it is run
# --------------------------------------------------------------------------------------------


def test_two_worker_processes_give_the_same_dataset(serial: Path, tmp_path: Path) -> None:
    config = load_recipe(demo.Config, "demo", SMALL)
    result = run_build("demo", config, tmp_path / "ds", workers=2, progress=False)
    assert result.built_shards == 8
    assert_same_dataset(serial, tmp_path / "ds")


def test_dask_scheduler_gives_the_same_dataset(serial: Path, tmp_path: Path) -> None:
    import distributed  # a dependency of cloudbench (dask[distributed]); imported late: slow

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        result = run_build("demo", load_recipe(demo.Config, "demo", SMALL), tmp_path / "ds",
                           scheduler=cluster.scheduler_address, progress=False)
    assert result.built_shards == 8
    assert_same_dataset(serial, tmp_path / "ds")


def test_resume_after_kill_gives_the_uninterrupted_dataset(tmp_path: Path) -> None:
    config = load_recipe(demo.Config, "demo", LONGER)
    total = len(demo.plan(config, tmp_path))
    assert total >= 16
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "cloudbench.cli", "build", "demo", "--out", str(out),
               "--workers", "2", *_sets(LONGER)]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    shards = out / "shards"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                done = [p for p in shards.iterdir() if p.is_dir() and not p.name.startswith(".")]
            except FileNotFoundError:  # not created yet (or, too late, removed by finalize)
                done = []
            if done:
                break
            assert proc.poll() is None, f"the build ended (status {proc.returncode}) first"
            assert time.monotonic() < deadline, "no shard within 90 s"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes
        proc.wait()
    assert not (out / "dataset.json").exists()
    assert store.shard_done(out, done[0].name)
    with pytest.raises(store.StoreError, match="unfinished build: re-run it"):
        Store(out)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    built = re.search(r"built .*: (\d+) shards, (\d+) resumed", rerun.stdout)
    assert built, rerun.stdout
    assert int(built[1]) + int(built[2]) == total
    assert int(built[2]) >= len(done)  # what was on disk at the kill was not built again
    assert not shards.exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp")]

    reference = tmp_path / "uninterrupted"
    run_build("demo", config, reference, workers=1, progress=False)
    assert_same_dataset(out, reference)


# --------------------------------------------------------------------------------------------
# Content: co-registered with the world, labelled, masked
# --------------------------------------------------------------------------------------------


def test_samples_are_the_world_on_their_own_grid(
    serial: Path, world: SyntheticWorld, acquisitions: dict, config: demo.Config
) -> None:
    st = Store(serial)
    s1, s2, masks = st.array("s1"), st.array("s2"), st.array("cloud_mask")
    assert (s1.dtype, s2.dtype, masks.dtype) == (np.float32, np.uint16, np.uint8)
    assert s2.shape[1:] == (len(S2_L2A_BANDS), 64, 64) and s1.shape[1:] == (2, 64, 64)
    origin = world.grid.transform
    for i, row in enumerate(st.samples.itertuples()):
        l2a, l1c, s1_acq = (acquisitions[s] for s in row.source_ids)
        assert (l2a.collection, l1c.collection, s1_acq.collection) == (
            Collection.S2_L2A, Collection.S2_L1C, Collection.S1_GRD)
        assert l2a.datetime == l1c.datetime == row.s2_time
        assert s1_acq.datetime == row.s1_time
        assert abs(s1_acq.datetime - l2a.datetime).days <= config.max_s1_gap_days
        grid = st.grid(i)
        assert (grid.width, grid.height, grid.crs) == (64, 64, world.grid.crs)
        r, c = round((origin.f - grid.transform.f) / 10), round((grid.transform.c - origin.c) / 10)
        assert row.id == f"{l2a.datetime:%Y%m%d}_{r:05d}_{c:05d}"

        reflectance = world.read(l2a, grid, S2_L2A_BANDS)
        expected_s2 = np.round(np.clip(reflectance * 10000, 0, 65535)).astype(np.uint16)
        np.testing.assert_array_equal(s2[i], expected_s2, err_msg=f"s2 of {row.id}")
        np.testing.assert_array_equal(s1[i], world.read(s1_acq, grid, S1_BANDS),
                                      err_msg=f"s1 of {row.id}")


def test_labels_are_the_majority_class(serial: Path, world: SyntheticWorld,
                                       config: demo.Config) -> None:
    st = Store(serial)
    scheme = class_scheme("simplified_igbp")
    lookup = scheme.lookup_table()
    assert st.classes == list(scheme.classes) and st.task == "multiclass"
    for i, label in enumerate(st.samples["label"]):
        classes = lookup[world.read_labels(st.grid(i))]
        counts = np.bincount(classes[classes >= 0], minlength=len(scheme.classes))
        assert label == counts.argmax()
        assert counts.max() / classes.size >= config.purity
    # Splits: stratified by class with the recipe's seed.
    np.testing.assert_array_equal(
        st.samples["split"],
        store.stratified_split(st.samples["label"], "multiclass", config.test_fraction,
                               config.split_seed),
    )


def test_report_accounts_for_every_patch(serial: Path, config: demo.Config,
                                         tmp_path: Path) -> None:
    report = json.loads((serial / "build_report.json").read_text())
    patches_per_task = (config.tile_size // config.patch_size) ** 2
    total = len(demo.plan(config, tmp_path)) * patches_per_task
    assert total == 32
    assert report["samples"] == len(Store(serial))
    assert report["samples"] + sum(report["dropped"].values()) == total
    # the demo shares the AOI builder's shard function: its land cover labels every pixel
    assert set(report["dropped"]) == {"nodata", "no_label_data", "sparse_label_data", "impure"}
    assert report["dropped"]["no_label_data"] == report["dropped"]["sparse_label_data"] == 0
    assert set(report["seconds_per_stage"]) == {"read", "mask", "cut_and_label"}


def test_dataset_json_says_synthetic(serial: Path, config: demo.Config) -> None:
    meta = json.loads((serial / "dataset.json").read_text())
    assert meta["provenance"]["synthetic"] is True
    assert meta["provenance"]["source"] == "synthetic"
    assert "not real" in meta["provenance"]["note"]
    assert meta["kind"] == "demo"
    assert meta["builder"] == {"name": "demo", "config": config.model_dump(mode="json")}
    assert meta["arrays"]["s2"]["bands"] == list(S2_L2A_BANDS)
    assert meta["arrays"]["s2"]["scale"] == 10000.0


def test_cloud_fractions_are_the_mask_fractions(serial: Path) -> None:
    st = Store(serial)
    masks = np.asarray(st.array("cloud_mask")).reshape(len(st), -1)
    thin, thick = (masks == 1).mean(axis=1), (masks == 2).mean(axis=1)
    np.testing.assert_array_equal(st.samples["thin_fraction"], thin)
    np.testing.assert_array_equal(st.samples["thick_fraction"], thick)
    np.testing.assert_array_equal(st.samples["cloud_fraction"], thin + thick)
    assert list(st.samples["cloud_state"]) == list(store.cloud_state(thin, thick))
    assert set(np.unique(masks)) <= {0, 1, 2}
    assert {"clear", "mixed"} <= set(st.samples["cloud_state"])


def test_cloud_mask_agrees_with_the_true_clouds(
    serial: Path, world: SyntheticWorld, acquisitions: dict
) -> None:
    st = Store(serial)
    masks = st.array("cloud_mask")
    clouded = 0
    flagged_when_clear = []
    for i, sources in enumerate(st.samples["source_ids"]):
        l1c = acquisitions[sources[1]]
        assert l1c.collection is Collection.S2_L1C
        _, truth = world.cloud_truth(l1c, st.grid(i))
        mask = masks[i, 0]
        thick = truth == 2
        if thick.mean() >= 0.01:
            clouded += 1
            assert (mask[thick] > 0).mean() >= 0.8, st.samples["id"].iloc[i]
        if not truth.any():
            flagged_when_clear.append((mask > 0).mean())
    assert clouded >= 3
    assert len(flagged_when_clear) >= 5 and np.mean(flagged_when_clear) < 0.05


# --------------------------------------------------------------------------------------------
# Edge cases of the engine
# --------------------------------------------------------------------------------------------


def test_tasks_whose_patches_are_all_dropped(tmp_path: Path) -> None:
    """One patch per tile and a strict purity rule: many shards hold no sample at all."""
    settings = ["world_size=256", "tile_size=64", "max_acquisitions=1", "purity=0.9"]
    st = _build(tmp_path / "ds", settings, workers=1)
    report = json.loads((tmp_path / "ds" / "build_report.json").read_text())
    assert report["shards"] == 16
    assert 0 < len(st) < 16
    assert report["samples"] + sum(report["dropped"].values()) == 16
    assert report["dropped"]["impure"] == 16 - len(st)


def test_a_build_without_samples_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ds"
    settings = ["world_size=256", "tile_size=128", "max_acquisitions=1", "patch_size=128",
                "purity=1"]
    assert main(["build", "demo", "--out", str(out), "--workers", "1", *_sets(settings)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: the build of" in err
    assert ("produced no samples from 4 tasks (patches dropped: nodata 0, no_label_data 0, "
            "sparse_label_data 0, impure 4)") in err
    assert not (out / "dataset.json").exists()


def test_rerunning_a_complete_build(serial: Path, capsys: pytest.CaptureFixture) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in serial.iterdir()}
    result = run_build("demo", load_recipe(demo.Config, "demo", SMALL), serial, progress=False)
    assert result.already_complete and result.built_shards == 0

    assert main(["build", "demo", "--out", str(serial), *_sets(SMALL)]) == 0
    assert "already complete" in capsys.readouterr().out

    assert main(["build", "demo", "--out", str(serial), *_sets([*SMALL, "purity=0.7"])]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("error:") == 1 and "Traceback" not in captured.err
    assert "already holds a different dataset" in captured.err
    assert str(serial) in captured.err
    assert {p.name: p.stat().st_mtime_ns for p in serial.iterdir()} == before
    assert len(gpd.read_parquet(serial / "samples.parquet")) == len(Store(serial))
