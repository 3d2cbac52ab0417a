"""Co-registered S2/S1 pairs: pairing acquisitions, and the store shard of one tile × date.

The demo and the area-of-interest builders run the same steps against different sources (the
synthetic world, Sentinel Hub): pair each S2 acquisition with the nearest S1 acquisition within
a gap, then per tile read S2 L2A (the optical product) and S1 VV/VH on the tile's UTM grid,
compute the cloud mask with s2cloudless on the L1C bands of the same sensing, cut patches,
label them by majority class (purity rule), drop patches with no data, and return the shard.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cloudbench import store
from cloudbench.build import Shard
from cloudbench.clouds import CloudMaskConfig, mask_acquisition
from cloudbench.config import ClassScheme
from cloudbench.patches import cut, majority_labels
from cloudbench.sources.base import (
    S1_BANDS,
    S2_L2A_BANDS,
    Acquisition,
    Grid,
    LabelSource,
    Source,
)


@dataclass(frozen=True)
class Pair:
    """An S2 sensing (its L2A and L1C products) and the S1 acquisition paired with it."""

    s2_l2a: Acquisition
    s2_l1c: Acquisition
    s1: Acquisition

    @property
    def gap(self) -> dt.timedelta:
        """S1 time minus S2 time."""
        return self.s1.datetime - self.s2_l2a.datetime


def pair(
    l2a: Sequence[Acquisition],
    l1c: Sequence[Acquisition],
    s1: Sequence[Acquisition],
    max_gap: dt.timedelta,
) -> list[Pair]:
    """Each L2A acquisition with the L1C product of the same sensing and the nearest S1 within
    ``max_gap`` (ties: the earlier S1); acquisitions without either are left out."""
    by_time = {a.datetime: a for a in l1c}
    pairs = []
    for optical in l2a:
        twin = by_time.get(optical.datetime)
        radar = min(s1, key=lambda a: (abs(a.datetime - optical.datetime), a.datetime),
                    default=None)
        if twin is None or radar is None or abs(radar.datetime - optical.datetime) > max_gap:
            continue
        pairs.append(Pair(optical, twin, radar))
    return pairs


def paired_shard(
    source: Source,
    labels: LabelSource,
    grid: Grid,
    pair: Pair,
    scheme: ClassScheme,
    *,
    patch_size: int,
    purity: float,
    clouds: CloudMaskConfig,
    id_prefix: str,
    origin: tuple[int, int] = (0, 0),
    clear_target: Callable[[Grid], np.ndarray] | None = None,
) -> Shard:
    """The shard of one tile ``grid`` and one pair: patches cut, labelled and masked.

    Sample ids are ``<id_prefix>_<row>_<col>`` with the patch's pixel offset (plus ``origin``,
    the tile's offset in a larger grid). ``clear_target``, when given, returns the float32
    (C, H, W) cloud-free S2 on the tile grid, the bands of ``s2``; its patches are cut like
    ``s2`` and stored as ``s2_clear`` (same encoding); NaN in it makes a patch no data.
    """
    started = time.perf_counter()
    s2 = source.read(pair.s2_l2a, grid, S2_L2A_BANDS)
    s1 = source.read(pair.s1, grid, S1_BANDS)
    codes = labels.read_labels(grid)
    clear = None
    if clear_target is not None:
        clear = np.asarray(clear_target(grid), dtype=np.float32)
        if clear.shape != s2.shape:
            raise ValueError(f"the clear target has shape {clear.shape}, s2 has {s2.shape}")
    read = time.perf_counter()
    mask = mask_acquisition(source, pair.s2_l1c, grid, clouds)
    masked = time.perf_counter()

    table = scheme.lookup_table(max(256, int(codes.max(initial=0)) + 1))
    classes = table[codes]
    label, _ = majority_labels(classes, patch_size, len(scheme.classes), purity)
    s1_patches, s2_patches = cut(s1, patch_size), cut(s2, patch_size)
    masks = cut(mask[None], patch_size)
    nodata = np.isnan(s1_patches).any(axis=(1, 2, 3)) | np.isnan(s2_patches).any(axis=(1, 2, 3))
    if clear is not None:
        clear_patches = cut(clear, patch_size)
        nodata |= np.isnan(clear_patches).any(axis=(1, 2, 3))
    impure = ~nodata & (label < 0)
    keep = ~nodata & ~impure
    patch_grids = list(grid.tiles(patch_size))
    kept = np.flatnonzero(keep)
    row0, col0 = origin
    table = store.sample_table(
        ids=[f"{id_prefix}_{row0 + patch_grids[i][0]:05d}_{col0 + patch_grids[i][1]:05d}"
             for i in kept],
        labels=[int(label[i]) for i in kept],
        cloud_masks=masks[kept],
        grids=[patch_grids[i][2] for i in kept],
        s1_times=[pair.s1.datetime] * len(kept),
        s2_times=[pair.s2_l2a.datetime] * len(kept),
        source_ids=[[pair.s2_l2a.id, pair.s2_l1c.id, pair.s1.id]] * len(kept),
    )
    arrays = {
        "s1": s1_patches[kept],
        "s2": _reflectance_uint16(s2_patches[kept]),
        "cloud_mask": masks[kept],
    }
    if clear is not None:
        arrays["s2_clear"] = _reflectance_uint16(clear_patches[kept])
    done = time.perf_counter()
    return Shard(
        table,
        arrays,
        dropped={"nodata": int(nodata.sum()), "impure": int(impure.sum())},
        seconds={"read": read - started, "mask": masked - read, "cut_and_label": done - masked},
    )


def _reflectance_uint16(reflectance: np.ndarray) -> np.ndarray:
    """Reflectance as stored: × 10000, rounded, clipped to uint16."""
    return np.round(np.clip(reflectance * 10000, 0, 65535)).astype(np.uint16)
