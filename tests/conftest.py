"""Shared fixtures: small stores written through the real store writer."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cloudbench import store
from cloudbench.config import class_scheme
from cloudbench.sources.base import S1_BANDS, S2_L2A_BANDS, Grid

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: each worker process (and what it starts) computes on one thread, so that N
    # workers share N cores instead of spin-waiting on each other's threads
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): tiny models
    are bound by per-operation overhead, so a second thread gains little, and on a 2-core machine
    busy with other work intra-op threads that wait for each other made a leaderboard run four
    times slower (27 s instead of 6 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REALDATA = SHARED / "realdata"


def make_store(
    root: Path,
    n: int = 60,
    *,
    task: str = "multiclass",
    classes: tuple[str, ...] = ("Forest", "Water", "Urban/Built-up"),
    kind: str = "demo",
    size: int = 16,
    with_clear: bool = False,
    shards: int = 3,
    seed: int = 0,
    signal: bool = False,
    clear: bool = False,
) -> Path:
    """A finished dataset of ``n`` random samples (values known from ``seed``).

    With ``signal`` (multiclass only) the images carry their class, so methods can learn it:
    each class has its own mean per optical and SAR channel; a sample's thick-cloud pixels
    (``cloud_mask`` 2) are bright noise that carries no class, thin ones (1) half that noise.
    The first third of the samples is clear, the others have a band of thin or thick cloud over
    a quarter of their pixels (optical then says less, SAR still says everything). With
    ``clear`` no sample has a cloud.
    """
    rng = np.random.default_rng(seed)
    world = Grid.from_bounds("EPSG:32649", 645000.0, 3210000.0, size * n, size, 10.0)
    config = {"n": n, "seed": seed}
    store.start_build(root, "fixture", config)
    per = -(-n // shards)
    shard_ids = []
    for s in range(shards):
        idx = range(s * per, min(n, (s + 1) * per))
        m = len(idx)
        grids = [world.window(0, i * size, size, size) for i in idx]
        if task == "multiclass":
            labels = [int(i % len(classes)) for i in idx]
        else:
            labels = [sorted({i % len(classes), (i // 2) % len(classes)}) for i in idx]
        cloud = rng.integers(0, 3, (m, 1, size, size), dtype=np.uint8)
        if signal:  # a band of cloud over a quarter of the sample
            cloud[:] = 0
            band = size // 4
            for j, top in enumerate(rng.integers(0, size - band + 1, m)):
                cloud[j, 0, top:top + band] = rng.integers(1, 3)
        cloud[: m // 3] = 0  # some clear samples
        if clear:
            cloud[:] = 0
        arrays = {
            "s1": rng.normal(-12, 4, (m, 2, size, size)).astype(np.float32),
            "s2": rng.integers(0, 10000, (m, 12, size, size), dtype=np.uint16),
            "cloud_mask": cloud,
        }
        if signal:
            pattern = np.random.default_rng(len(classes)).uniform(-1, 1, (len(classes), 14))
            means = pattern[np.asarray(labels)][:, :, None, None]  # (m, 14, 1, 1)
            optical = rng.normal(3000 + 2000 * means[:, :12], 300, (m, 12, size, size))
            bright = rng.normal(8000, 600, (m, 12, size, size))
            alpha = np.array([0.0, 0.5, 1.0])[cloud]  # clear, thin, thick
            cloudy = (1 - alpha) * optical + alpha * bright
            arrays["s2"] = np.clip(cloudy, 0, 10000).astype(np.uint16)
            sar = rng.normal(-12 + 3 * means[:, 12:], 2, (m, 2, size, size))
            arrays["s1"] = sar.astype(np.float32)
        if with_clear:
            arrays["s2_clear"] = rng.integers(0, 10000, (m, 12, size, size), dtype=np.uint16)
        table = store.sample_table(
            [f"p{i:05d}" for i in idx], labels, cloud, grids,
            [dt.datetime(2018, 7, 2, tzinfo=dt.UTC)] * m,
            [dt.datetime(2018, 7, 1, tzinfo=dt.UTC)] * m,
            [["S2_fixture", "S1_fixture"]] * m,
        )
        store.write_shard(root, f"shard{s:02d}", table, arrays)
        shard_ids.append(f"shard{s:02d}")
    arrays_meta = {
        "s1": {"bands": list(S1_BANDS), "unit": "dB", "scale": 1.0},
        "s2": {"bands": list(S2_L2A_BANDS), "unit": "reflectance", "scale": 10000.0},
        "cloud_mask": {"bands": ["cloud_type"], "unit": "class", "scale": 1.0},
    }
    if with_clear:
        arrays_meta["s2_clear"] = dict(arrays_meta["s2"])
    meta = {
        "kind": kind,
        "task": task,
        "classes": list(classes),
        "patch_size": size,
        "resolution": 10.0,
        "arrays": arrays_meta,
        "builder": {"name": "fixture", "config": config},
        "provenance": {"synthetic": True},
    }
    store.finalize(root, shard_ids, meta, lambda t: store.stratified_split(t["label"], task))
    return root


S2_10M = ("B02", "B03", "B04", "B08")
S2_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
S2_60M = ("B01", "B09")
GROUPS = {"s2": (S2_10M, 1), "s2_20m": (S2_20M, 2), "s2_60m": (S2_60M, 6)}
"""array -> (its bands, its pixel size over s2's)"""
L2A_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def grouped_store(root: Path, kind: str, n: int = 12) -> Path:
    """``n`` (a multiple of 3) BigEarthNet-19 samples on BigEarthNet's grid at 1/10 the size:
    s2 (4 bands, 12x12), s2_20m (6 bands, 6x6), s2_60m (2 bands, 2x2) of seeded random values,
    except B05, a constant 0.5 per sample; rows 0, 1, 2 mod 3 are train, val, test."""
    size = 12
    rng = np.random.default_rng(1)
    world = Grid.from_bounds("EPSG:32633", 500000.0, 5000000.0, size * n, size, 10.0)
    arrays: dict[str, np.ndarray] = {
        "s1": rng.normal(-12, 4, (n, 2, size, size)).astype(np.float32),
        **{name: rng.integers(0, 10000, (n, len(bands), size // f, size // f), dtype=np.uint16)
           for name, (bands, f) in GROUPS.items()},
        "cloud_mask": rng.integers(0, 3, (n, 1, size, size), dtype=np.uint8),
    }
    arrays["s2_20m"][:, S2_20M.index("B05")] = 5000
    time = dt.datetime(2017, 6, 1, tzinfo=dt.UTC)
    table = store.sample_table(
        [f"S2A_{i:02d}" for i in range(n)], [sorted({i % 19, (3 * i + 1) % 19}) for i in range(n)],
        arrays["cloud_mask"], [world.window(0, i * size, size, size) for i in range(n)],
        [time] * n, [time] * n, [["S2_fixture"]] * n,
    )
    store.start_build(root, "fixture", {"kind": kind})
    store.write_shard(root, "all", table, arrays)
    reflectance = {"unit": "reflectance", "scale": 10000.0}
    meta = {
        "kind": kind, "task": "multilabel", "classes": list(class_scheme("bigearthnet19").classes),
        "class_scheme": "bigearthnet19", "patch_size": size, "resolution": 10.0,
        "arrays": {
            "s1": {"bands": ["VV", "VH"], "unit": "dB", "scale": 1.0},
            **{name: {"bands": list(bands), **reflectance} for name, (bands, _) in GROUPS.items()},
            "cloud_mask": {"bands": ["cloud_type"], "unit": "class", "scale": 1.0},
        },
        "builder": {"name": "fixture", "config": {"kind": kind}},
        "provenance": {"synthetic": True},
    }
    store.finalize(root, ["all"], meta, lambda t: np.array(["train", "val", "test"] * (n // 3)))
    return root


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "ds")


@pytest.fixture
def multilabel_store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "ml", task="multilabel", classes=("A", "B", "C", "D"))


@pytest.fixture
def sentinel_hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Credentials of the loopback Sentinel Hub (tests/shserver.py), no stored sentinelhub
    config, plain http allowed, and sentinelhub-py's client cache cleared around the test."""
    from sentinelhub import SentinelHubDownloadClient

    from tests.shserver import CLIENT_ID, CLIENT_SECRET

    monkeypatch.setenv("SH_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SH_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the fake serves plain http
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # no stored sentinelhub config
    SentinelHubDownloadClient.clear_cache()
    yield
    SentinelHubDownloadClient.clear_cache()
