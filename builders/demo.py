"""The demo recipe: a small multi-class cloudy dataset from the synthetic world.

It runs the same steps as the real-cloud builders (``cloudbench/pairs.py``), against
``SyntheticWorld`` instead of Sentinel Hub: search the S2 acquisitions of the area and time
window, pair each with the nearest S1 acquisition within ``max_s1_gap_days``, read S2 L2A (the
optical product), S1 VV/VH and the land cover on each tile's UTM grid, compute cloud masks with
s2cloudless on the L1C bands of the same sensing, cut patches, label them by majority class
(``purity`` rule) and write one shard per (tile, acquisition). Nothing in it is real data;
``dataset.json`` says so.

With ``clear_target`` the store also holds ``s2_clear``: the same S2 L2A sensing rendered by the
world without clouds and cloud shadows (``SyntheticWorld.read(..., cloud_free=True)``), a target
for cloud removal. It is a perfect same-instant target, which real data never has.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloudbench import store
from cloudbench.build import Shard
from cloudbench.clouds import CloudMaskConfig
from cloudbench.config import class_scheme
from cloudbench.pairs import Pair, pair, paired_shard
from cloudbench.sources.base import S1_BANDS, S2_L2A_BANDS, Collection
from cloudbench.sources.synthetic import SyntheticWorld


class Config(BaseModel):
    """The ``demo`` recipe (``catalogs/recipes/demo.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="synthetic world seed")
    world_size: int = Field(1280, ge=64, description="world side in 10 m pixels")
    tile_size: int = Field(640, ge=64, description="tile side in pixels; one shard per tile/date")
    start: dt.date = dt.date(2018, 7, 1)
    end: dt.date = dt.date(2018, 7, 31)
    max_cloud_cover: float = Field(100.0, ge=0, le=100, description="scene cloud cover, percent")
    max_acquisitions: int | None = Field(None, ge=1, description="keep the earliest S2 dates")
    max_s1_gap_days: float = Field(3.0, ge=0)
    patch_size: int = Field(64, ge=8)
    classes: str = Field("simplified_igbp", description="class scheme in catalogs/classes")
    purity: float = Field(0.5, gt=0, le=1, description="minimum majority-class share")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    clouds: CloudMaskConfig = CloudMaskConfig()
    clear_target: bool = Field(
        False, description="also store s2_clear: the same S2 sensing without clouds or shadows"
    )

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if self.tile_size % self.patch_size or self.world_size % self.tile_size:
            raise ValueError("tile_size must divide world_size and patch_size divide tile_size")
        return self


@dataclass(frozen=True)
class Task:
    shard_id: str
    row: int
    col: int
    pair: Pair


@cache
def _world(seed: int, size: int) -> SyntheticWorld:
    return SyntheticWorld(seed=seed, size=size)


def _utc(day: dt.date, end: bool = False) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.max if end else dt.time.min, tzinfo=dt.UTC)


def plan(config: Config, root: Path, **_options: Any) -> list[Task]:
    """One task per (tile, S2 date that has an S1 partner within the gap)."""
    world = _world(config.seed, config.world_size)
    area = world.grid.footprint()
    start, end = _utc(config.start), _utc(config.end, end=True)
    gap = dt.timedelta(days=config.max_s1_gap_days)
    l2a = world.search(Collection.S2_L2A, area, start, end, max_cloud_cover=config.max_cloud_cover)
    l1c = world.search(Collection.S2_L1C, area, start, end)
    s1 = world.search(Collection.S1_GRD, area, start - gap, end + gap)
    out = []
    for found in pair(l2a[: config.max_acquisitions], l1c, s1, gap):
        for row, col, _ in world.grid.tiles(config.tile_size):
            shard = f"{found.s2_l2a.datetime:%Y%m%dT%H%M%S}_{row:05d}_{col:05d}"
            out.append(Task(shard, row, col, found))
    return out


def build_shard(config: Config, task: Task) -> Shard:
    world = _world(config.seed, config.world_size)
    grid = world.grid.window(task.row, task.col, config.tile_size, config.tile_size)
    clear_target = None
    if config.clear_target:  # the same sensing, without clouds or shadows
        clear_target = partial(world.read, task.pair.s2_l2a, bands=S2_L2A_BANDS, cloud_free=True)
    return paired_shard(world, world, grid, task.pair, class_scheme(config.classes),
                        patch_size=config.patch_size, purity=config.purity,
                        clouds=config.clouds, id_prefix=f"{task.pair.s2_l2a.datetime:%Y%m%d}",
                        origin=(task.row, task.col), clear_target=clear_target)


def metadata(config: Config) -> dict[str, Any]:
    scheme = class_scheme(config.classes)
    meta: dict[str, Any] = {
        "kind": "demo",
        "task": scheme.task,
        "classes": list(scheme.classes),
        "class_scheme": scheme.identity,
        "patch_size": config.patch_size,
        "resolution": 10.0,
        "arrays": {
            "s1": {"bands": list(S1_BANDS), "unit": "dB", "scale": 1.0,
                   "product": "synthetic Sentinel-1 GRD, sigma0"},
            "s2": {"bands": list(S2_L2A_BANDS), "unit": "reflectance", "scale": 10000.0,
                   "product": "synthetic Sentinel-2 L2A"},
            "cloud_mask": {"bands": ["cloud_type"], "unit": "0 clear, 1 thin, 2 thick",
                           "scale": 1.0, "method": "s2cloudless on the L1C bands"},
        },
    }
    if config.clear_target:
        meta["arrays"]["s2_clear"] = {
            **meta["arrays"]["s2"], "bands": list(S2_L2A_BANDS),
            "product": "synthetic Sentinel-2 L2A, the same sensing without clouds or shadows",
        }
    return meta


def provenance(config: Config) -> dict[str, Any]:
    return {
        "source": "synthetic",
        "synthetic": True,
        "note": "generated by cloudbench.sources.synthetic; not real Sentinel data",
    }


def assign_split(config: Config, table: Any) -> np.ndarray:
    return store.stratified_split(
        table["label"], "multiclass", config.test_fraction, config.split_seed
    )
