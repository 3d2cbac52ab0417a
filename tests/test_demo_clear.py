"""The demo recipe's ``clear_target``: the world's cloud-free render and the ``s2_clear`` array."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cloudbench.build import run_build
from cloudbench.builders import demo
from cloudbench.config import load_recipe
from cloudbench.datasets import CloudBenchDataset
from cloudbench.sources.base import S1_BANDS, S2_L1C_BANDS, S2_L2A_BANDS, Acquisition, Collection
from cloudbench.sources.synthetic import SyntheticWorld
from cloudbench.store import Store

# One 128 px tile of 32 px patches, on the 2018-07-16 date (67.5% cloud cover; S1 on the 15th).
SMALL = ["world_size=128", "tile_size=128", "patch_size=32", "max_acquisitions=1",
         "clouds.resolution=40", "start=2018-07-16"]
ARRAYS = ("s1", "s2", "cloud_mask")


def _build(root: Path, settings: list[str]) -> Path:
    run_build("demo", load_recipe(demo.Config, "demo", settings), root, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def clear_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("clear") / "ds", [*SMALL, "clear_target=true"])


@pytest.fixture(scope="module")
def plain_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("plain") / "ds", SMALL)


def _cloudy_date(world: SyntheticWorld, collection: Collection) -> Acquisition:
    (acq,) = world.search(collection, None, "2018-07-16", "2018-07-16T23:59")
    return acq


def test_cloud_free_read_is_the_cloudy_read_where_the_sky_is_clear() -> None:
    world = SyntheticWorld(seed=0, size=128)
    for collection, bands in ((Collection.S2_L2A, S2_L2A_BANDS), (Collection.S2_L1C, S2_L1C_BANDS)):
        acq = _cloudy_date(world, collection)
        cloudy = world.read(acq, world.grid, bands)
        clear = world.read(acq, world.grid, bands, cloud_free=True)
        alpha, _ = world.cloud_truth(acq, world.grid)
        # The shadow strength is not in the public interface: the world's own cloud layers.
        _, index = world._lookup(acq)
        shadow = world._clouds(index, 0, 0, 128, 128)[3]
        sky = (alpha == 0) & (shadow == 0)
        assert 0.1 < sky.mean() < 0.9 and (shadow > 0).any()
        np.testing.assert_array_equal(clear[:, sky], cloudy[:, sky])  # bitwise
        assert np.isfinite(clear).all()
        # Under opaque-ish clouds and in shadows the cloud-free render shows other values.
        assert (clear != cloudy)[:, alpha >= 0.5].any(axis=0).all()
        assert (clear != cloudy)[:, (alpha == 0) & (shadow > 0.05)].any(axis=0).all()
        blue = bands.index("B02")
        assert (clear[blue, alpha == 1] < cloudy[blue, alpha == 1]).all()  # no bright cloud
    s1 = world.search(Collection.S1_GRD, None, "2018-07-15", "2018-07-16")[0]
    assert (world.read(s1, world.grid, S1_BANDS, cloud_free=True).tobytes()
            == world.read(s1, world.grid, S1_BANDS).tobytes())


def test_s2_clear_is_the_cloud_free_read_at_each_patch(clear_store: Path) -> None:
    st = Store(clear_store)
    assert len(st) > 0
    world = SyntheticWorld(seed=0, size=128)
    acq = _cloudy_date(world, Collection.S2_L2A)
    expected = world.read(acq, world.grid, S2_L2A_BANDS, cloud_free=True)
    expected = np.round(np.clip(expected * 10000, 0, 65535)).astype(np.uint16)
    clear, s2, masks = st.array("s2_clear"), st.array("s2"), st.array("cloud_mask")
    assert clear.dtype == np.uint16 and clear.shape == s2.shape == (len(st), 12, 32, 32)
    for i, (sample_id, source_ids) in enumerate(zip(st.samples["id"], st.samples["source_ids"],
                                                     strict=True)):
        assert source_ids[0] == acq.id
        r, c = (int(x) for x in sample_id.split("_")[1:])
        np.testing.assert_array_equal(clear[i], expected[:, r : r + 32, c : c + 32],
                                      err_msg=sample_id)
    assert (masks > 0).any() and (clear != s2).any()  # cloudy patches: input and target differ

    meta = json.loads((clear_store / "dataset.json").read_text())["arrays"]
    assert {k: v for k, v in meta["s2_clear"].items() if k != "product"} == {
        k: v for k, v in meta["s2"].items() if k != "product"}
    assert meta["s2_clear"]["product"] == (
        "synthetic Sentinel-2 L2A, the same sensing without clouds or shadows")

    sample = CloudBenchDataset(clear_store)[0]
    assert torch.equal(sample["image_s2_clear"],
                       torch.from_numpy(np.asarray(clear[0]).astype(np.float32) / 10000))


def test_without_clear_target_the_store_has_no_s2_clear(plain_store: Path,
                                                          clear_store: Path) -> None:
    st = Store(plain_store)
    assert "s2_clear" not in st.arrays and not (plain_store / "s2_clear.npy").exists()
    assert "image_s2_clear" not in CloudBenchDataset(plain_store)[0]
    # The option adds s2_clear and changes nothing else.
    for name in ARRAYS:
        assert ((plain_store / f"{name}.npy").read_bytes()
                == (clear_store / f"{name}.npy").read_bytes()), name
    assert ((plain_store / "samples.parquet").read_bytes()
            == (clear_store / "samples.parquet").read_bytes())
