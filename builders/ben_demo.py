"""The ``ben-demo`` and ``cben-demo`` recipes: a synthetic BigEarthNet and its cloudy twin.

``cloudbench build ben-demo --out DIR`` and ``cloudbench build cben-demo --out DIR`` build, from
the synthetic world (:class:`~cloudbench.sources.synthetic.SyntheticWorld`), the same patches
twice, in the layout of the ``bigearthnet`` and ``cben`` stores. **Nothing in them is real
data**; ``dataset.json`` says so. The recipe's ``sky`` decides which of the two is built:

* ``sky: clear`` (``ben-demo``, kind ``bigearthnet``): S2 L2A from the world's clearest
  acquisition (lowest cloud cover, earliest on ties: the rule of the BigEarthNet fixtures in
  ``cloudbench.sources.fixtures``), as BigEarthNet keeps cloud-free patches.
* ``sky: cloudy`` (``cben-demo``, kind ``cben``): S2 L2A re-acquired from the acquisition whose
  cloud cover is closest to ``cloud_target`` (ties: closer in time to the clear one, then the
  earlier), never the clear sensing itself, as CBEN re-acquires each BigEarthNet tile.

Everything else is shared, so the two stores pair sample by sample (the CBEN paper's 2x2
protocol: train on either, test on both): the same sample ids (BigEarthNet v1 style, named
after the clear product), the same 19-class labels, the same S1 patches (the S1 acquisition
nearest to the clear sensing, within ``max_s1_gap_days``), the same split (``split_seed``).

Per tile of ``tile_size`` pixels (one shard), on the world's 10 m UTM grid:

* **S2** at its native resolutions, like BigEarthNet: ``s2`` B02 B03 B04 B08 at 10 m, ``s2_20m``
  B05 B06 B07 B8A B11 B12 at 20 m, ``s2_60m`` B01 B09 at 60 m (the world resamples by averaging),
  uint16 reflectance x 10000.
* **Cloud mask**: s2cloudless (``cloudbench.clouds.mask_acquisition``) on the L1C bands of the
  same sensing, at ``clouds.resolution``, over the tile plus ``cloud_margin`` pixels (clipped to
  the world) so that its averaging and dilation see the neighbourhood, cropped to the tile.
  ``ben-demo``'s is (almost) all clear; ``cben-demo``'s has the cloud of its acquisition.
* **S1** VV, VH in dB.
* **Labels** (multi-label, ``bigearthnet19``): the world's IGBP land cover goes to a CORINE Land
  Cover name and that name to its 19-class class (:func:`igbp_to_bigearthnet19`: the
  correspondence of the BigEarthNet fixtures, ``BIGEARTHNET19_FROM_IGBP``, whose v1 trees write
  each class as its first CORINE name); a class is a label of a patch when it covers at least
  ``min_share`` of the patch's land-cover pixels (a minimum mapping unit: CORINE ignores areas
  under 25 ha, so slivers along region borders do not become labels). Patches with no label
  (e.g. snow and ice, which no 19-class class takes) are dropped as ``no_19_class_label``.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloudbench import store
from cloudbench.build import Shard
from cloudbench.builders.bigearthnet import SCHEME, store_meta
from cloudbench.clouds import CloudMaskConfig, mask_acquisition
from cloudbench.errors import CloudbenchError
from cloudbench.pairs import Pair, pair
from cloudbench.patches import cut
from cloudbench.sources.base import Acquisition, Collection, Grid
from cloudbench.sources.bigearthnet import GROUP_RESOLUTION, S1_BANDS, S2_GROUPS, nomenclature
from cloudbench.sources.fixtures import BIGEARTHNET19_FROM_IGBP
from cloudbench.sources.synthetic import SyntheticWorld

_ARCHIVE = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
_COARSEST = int(max(GROUP_RESOLUTION.values()) // GROUP_RESOLUTION["s2"])  # 6: 60 m / 10 m


class Config(BaseModel):
    """The ``ben-demo`` and ``cben-demo`` recipes (``catalogs/recipes/ben-demo.yaml``,
    ``cben-demo.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    sky: Literal["clear", "cloudy"] = Field(
        "clear", description="clear: the clearest acquisition (ben-demo); cloudy: the one with "
                             "cloud cover closest to cloud_target (cben-demo)")
    seed: int = Field(0, description="synthetic world seed")
    world_size: int = Field(480, ge=12, description="world side in 10 m pixels")
    region_size: int = Field(80, ge=1, description="typical land-cover region side, pixels")
    patch_size: int = Field(120, ge=6, description="patch side in 10 m pixels (BigEarthNet: "
                                                   "120), a multiple of 6")
    tile_size: int = Field(240, ge=6, description="tile side in pixels; one shard per tile")
    min_share: float = Field(0.05, gt=0, le=1,
                             description="share of a patch's land-cover pixels a class needs")
    cloud_target: float = Field(50.0, ge=0, le=100,
                                description="cloudy: the cloud cover, percent, to come closest to")
    max_s1_gap_days: float = Field(3.0, ge=0, description="S1 within this gap of the clear S2")
    cloud_margin: int = Field(16, ge=0, description="10 m pixels around a tile for s2cloudless")
    test_fraction: float = Field(0.25, gt=0, lt=1)
    split_seed: int = 0
    clouds: CloudMaskConfig = CloudMaskConfig(resolution=20.0)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.patch_size % _COARSEST:
            raise ValueError(f"patch_size {self.patch_size} is not a multiple of {_COARSEST} "
                             "(the 60 m bands need whole pixels)")
        if self.tile_size % self.patch_size or self.world_size % self.tile_size:
            raise ValueError("tile_size must divide world_size and patch_size divide tile_size")
        step = self.clouds.resolution / GROUP_RESOLUTION["s2"]
        for what, pixels in (("tile_size", self.tile_size), ("cloud_margin", self.cloud_margin)):
            if not math.isclose(pixels / step, round(pixels / step)):
                raise ValueError(f"{what} {pixels} (10 m pixels) is not a whole number of "
                                 f"clouds.resolution {self.clouds.resolution:g} m pixels")
        return self


@dataclass(frozen=True)
class Sensing:
    """What a build reads: the S2 sensing (L2A, L1C twin), the S1 acquisition and the clear
    (original) L2A whose name the samples carry."""

    pair: Pair
    original: Acquisition


@dataclass(frozen=True)
class Task:
    shard_id: str
    row: int
    col: int
    sensing: Sensing
    record: dict[str, Any] | None = field(default=None, compare=False)
    """The acquisitions chosen (first task only), for the build report."""


@cache
def _world(seed: int, size: int, region_size: int) -> SyntheticWorld:
    return SyntheticWorld(seed=seed, size=size, region_size=region_size)


def world(config: Config) -> SyntheticWorld:
    """The synthetic world of ``config`` (cached per process)."""
    return _world(config.seed, config.world_size, config.region_size)


# ---------------------------------------------------------------------------------- labels


@cache
def igbp_to_bigearthnet19() -> np.ndarray:
    """int64 (256,): IGBP code -> 19-class index, -1 for codes no class takes.

    Each IGBP code goes to a CORINE Land Cover name, the first CORINE name of the class that
    ``BIGEARTHNET19_FROM_IGBP`` (the BigEarthNet fixtures' correspondence) gives it, and that
    name to the ``bigearthnet19`` class whose CORINE list holds it.
    """
    names = nomenclature()
    clc_to_class = {clc: k for k, (_, clcs) in enumerate(names) for clc in clcs}
    table = np.full(256, -1, dtype=np.int64)
    for code, k in BIGEARTHNET19_FROM_IGBP.items():
        if k is not None:
            table[code] = clc_to_class[names[k][1][0]]
    return table


def clc_of_igbp() -> dict[int, str | None]:
    """The CORINE name each IGBP code is labelled through (None: no 19-class class)."""
    names = nomenclature()
    return {code: None if k is None else names[k][1][0]
            for code, k in BIGEARTHNET19_FROM_IGBP.items()}


def class_shares(codes: np.ndarray, size: int) -> np.ndarray:
    """float64 (N, 19): each 19-class class's share of the land-cover pixels (IGBP code > 0) of
    each ``size`` x ``size`` patch of the IGBP raster ``codes`` (H, W), patches row-major."""
    patches = cut(np.asarray(codes)[None], size).reshape(-1, size * size).astype(np.int64)
    classes = igbp_to_bigearthnet19()[patches]
    n, k = len(patches), len(nomenclature())
    mapped = classes >= 0
    offsets = np.arange(n)[:, None] * k
    counts = np.bincount((classes + offsets)[mapped], minlength=n * k).reshape(n, k)
    land = (patches > 0).sum(axis=1, keepdims=True)
    return counts / np.maximum(land, 1)


def patch_labels(codes: np.ndarray, size: int, min_share: float) -> list[list[int]]:
    """The 19-class labels of each patch of ``codes``: classes with a share >= ``min_share``."""
    return [np.flatnonzero(row >= min_share).tolist() for row in class_shares(codes, size)]


# ---------------------------------------------------------------------------------- planning


def sensing(config: Config) -> Sensing:
    """The acquisitions of a build: the clearest S2 (and its nearest S1), and for ``cloudy`` the
    S2 sensing with cloud cover closest to ``cloud_target``."""
    source = world(config)
    l2a = source.search(Collection.S2_L2A, None, *_ARCHIVE)
    l1c = source.search(Collection.S2_L1C, None, *_ARCHIVE)
    s1 = source.search(Collection.S1_GRD, None, *_ARCHIVE)
    if not l2a:
        raise CloudbenchError("the synthetic world has no Sentinel-2 acquisition")
    clear = min(l2a, key=lambda a: (a.cloud_cover or 0.0, a.datetime))
    found = pair([clear], l1c, s1, dt.timedelta(days=config.max_s1_gap_days))
    if not found:
        raise CloudbenchError(
            f"no Sentinel-1 acquisition within {config.max_s1_gap_days:g} days of the clearest "
            f"Sentinel-2 acquisition ({clear.datetime:%Y-%m-%d}); raise max_s1_gap_days")
    original = found[0]
    if config.sky == "clear":
        return Sensing(original, clear)
    others = [a for a in l2a if a.datetime != clear.datetime]
    if not others:
        raise CloudbenchError("the synthetic world has only one Sentinel-2 acquisition: "
                              "nothing to re-acquire")
    chosen = min(others, key=lambda a: (abs((a.cloud_cover or 0.0) - config.cloud_target),
                                        abs(a.datetime - clear.datetime), a.datetime))
    twin = next(a for a in l1c if a.datetime == chosen.datetime)
    return Sensing(Pair(chosen, twin, original.s1), clear)


def _record(config: Config, found: Sensing) -> dict[str, Any]:
    p = found.pair
    return {
        "sky": config.sky, "s2_l2a": p.s2_l2a.id, "s2_l1c": p.s2_l1c.id,
        "s2_time": p.s2_l2a.datetime.isoformat(), "cloud_cover": p.s2_l2a.cloud_cover,
        "s1": p.s1.id, "s1_time": p.s1.datetime.isoformat(),
        "original_s2": found.original.id, "original_s2_time": found.original.datetime.isoformat(),
        "original_cloud_cover": found.original.cloud_cover,
    }


def plan(config: Config, root: Path, **_options: Any) -> list[Task]:
    """One task per tile of the world, row-major."""
    found = sensing(config)
    tasks: list[Task] = []
    for row, col, _ in world(config).grid.tiles(config.tile_size):
        record = _record(config, found) if not tasks else None
        tasks.append(Task(f"tile_{row:05d}_{col:05d}", row, col, found, record))
    return tasks


# ---------------------------------------------------------------------------------- building


def mask_window(config: Config, row: int, col: int) -> tuple[int, int, Grid]:
    """Where s2cloudless runs for the tile at (``row``, ``col``): the tile plus ``cloud_margin``
    pixels, clipped to the world. Returns (the tile's row and column offset in it, its grid)."""
    grid = world(config).grid
    size, m = config.tile_size, config.cloud_margin
    r0, c0 = max(row - m, 0), max(col - m, 0)
    r1, c1 = min(row + size + m, grid.height), min(col + size + m, grid.width)
    return row - r0, col - c0, grid.window(r0, c0, r1 - r0, c1 - c0)


def _dn(reflectance: np.ndarray) -> np.ndarray:
    return np.round(np.clip(reflectance * 10000, 0, 65535)).astype(np.uint16)


def _unit(acquisition: Acquisition) -> str:
    return str(acquisition.properties.get("platform", "sentinel-2a"))[-1].upper()


def sample_id(original: Acquisition, patch_row: int, patch_col: int) -> str:
    """``S2A_MSIL2A_<clear time>_<col>_<row>`` (patch indices), as BigEarthNet v1 names them."""
    return (f"S2{_unit(original)}_MSIL2A_{original.datetime:%Y%m%dT%H%M%S}"
            f"_{patch_col}_{patch_row}")


def build_shard(config: Config, task: Task) -> Shard:
    started = time.perf_counter()
    source = world(config)
    p = task.sensing.pair
    size, ps = config.tile_size, config.patch_size
    tile = source.grid.window(task.row, task.col, size, size)
    optical = {name: source.read(p.s2_l2a, tile.rescaled(GROUP_RESOLUTION[name]), bands)
               for name, bands in S2_GROUPS.items()}
    s1 = source.read(p.s1, tile, S1_BANDS)
    codes = source.read_labels(tile)
    read = time.perf_counter()
    dr, dc, window = mask_window(config, task.row, task.col)
    mask = mask_acquisition(source, p.s2_l1c, window, config.clouds)[dr : dr + size,
                                                                     dc : dc + size]
    masked = time.perf_counter()

    patches = {name: cut(image, ps * 10 // int(GROUP_RESOLUTION[name]))
               for name, image in optical.items()}
    patches["s1"] = cut(s1, ps)
    masks = cut(mask[None], ps)
    labels = patch_labels(codes, ps, config.min_share)
    nodata = np.zeros(len(masks), dtype=bool)
    for image in patches.values():
        nodata |= np.isnan(image).any(axis=(1, 2, 3))
    unlabelled = ~nodata & np.array([not labs for labs in labels])
    kept = np.flatnonzero(~nodata & ~unlabelled)
    grids = list(tile.tiles(ps))
    ids = [sample_id(task.sensing.original, (task.row + grids[i][0]) // ps,
                     (task.col + grids[i][1]) // ps) for i in kept]
    sources = [p.s2_l2a.id, p.s2_l1c.id, p.s1.id]
    if task.sensing.original.id != p.s2_l2a.id:
        sources.append(task.sensing.original.id)
    table = store.sample_table(
        ids=ids,
        labels=[labels[i] for i in kept],
        cloud_masks=masks[kept],
        grids=[grids[i][2] for i in kept],
        s1_times=[p.s1.datetime] * len(kept),
        s2_times=[p.s2_l2a.datetime] * len(kept),
        source_ids=[sources] * len(kept),
    )
    table["original_s2_time"] = [task.sensing.original.datetime] * len(kept)
    arrays = {name: _dn(image[kept]) for name, image in patches.items() if name != "s1"}
    arrays["s1"] = patches["s1"][kept]
    arrays["cloud_mask"] = masks[kept]
    done = time.perf_counter()
    return Shard(
        table, arrays,
        dropped={"nodata": int(nodata.sum()), "no_19_class_label": int(unlabelled.sum())},
        seconds={"read": read - started, "mask": masked - read, "cut_and_label": done - masked},
        records=[task.record] if task.record is not None else [],
    )


# ---------------------------------------------------------------------------------- store


def metadata(config: Config) -> dict[str, Any]:
    """The fields of a ``bigearthnet`` (clear) or ``cben`` (cloudy) store, synthetic products."""
    clear = config.sky == "clear"
    s2_product = ("synthetic Sentinel-2 L2A, the clearest acquisition" if clear else
                  f"synthetic Sentinel-2 L2A, the acquisition with cloud cover closest to "
                  f"{config.cloud_target:g}%")
    meta = store_meta("bigearthnet" if clear else "cben", s2_product,
                      "s2cloudless on the L1C bands of the same sensing")
    meta["patch_size"] = config.patch_size
    meta["arrays"]["s1"]["product"] = "synthetic Sentinel-1 GRD, sigma0"
    return meta


def provenance(config: Config) -> dict[str, Any]:
    return {
        "source": "synthetic",
        "synthetic": True,
        "note": ("generated by cloudbench.sources.synthetic in BigEarthNet's layout "
                 f"({'ben-demo' if config.sky == 'clear' else 'cben-demo'}); not real data"),
        "labels": (f"IGBP land cover -> CORINE name -> {SCHEME} class; a class is a label "
                   f"where it covers >= {config.min_share:g} of the patch's land-cover pixels"),
    }


def assign_split(config: Config, table: Any) -> np.ndarray:
    """A seeded train/test split of the samples in task order: the same for both skies, whose
    samples are the same patches in the same order."""
    return store.stratified_split(table["label"], "multilabel", config.test_fraction,
                                  config.split_seed)


def report(config: Config, records: list[dict[str, Any]], table: Any) -> dict[str, Any]:
    """The acquisitions the build read (``acquisitions``)."""
    return {"acquisitions": records[0] if records else None}

