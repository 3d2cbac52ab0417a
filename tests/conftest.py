"""Shared fixtures: small stores written through the real store writer."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from cloudbench import store
from cloudbench.sources.base import S1_BANDS, S2_L2A_BANDS, Grid

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
) -> Path:
    """A finished dataset of ``n`` random samples (values known from ``seed``)."""
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
        cloud[: m // 3] = 0  # some clear samples
        arrays = {
            "s1": rng.normal(-12, 4, (m, 2, size, size)).astype(np.float32),
            "s2": rng.integers(0, 10000, (m, 12, size, size), dtype=np.uint16),
            "cloud_mask": cloud,
        }
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


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "ds")


@pytest.fixture
def multilabel_store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "ml", task="multilabel", classes=("A", "B", "C", "D"))
