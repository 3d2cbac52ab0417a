"""Co-registered S2/S1 pairs: pairing acquisitions, and the store shard of one tile × date.

The demo and the area-of-interest builders run the same steps against different sources (the
synthetic world, Sentinel Hub): group the S2 catalog items into one sensing per pass
(:func:`sensings`: real catalogs give one item per overlapping MGRS tile), pair each sensing with
the nearest S1 acquisition within a gap, refuse a plan that repeats a (sample footprint,
sensing) before any download (:func:`check_plan`), then per tile read S2 L2A (the optical
product) and S1 VV/VH on the tile's UTM grid, compute the cloud mask with s2cloudless on the L1C
bands of the same sensing, cut patches, label them by majority class (purity rule), drop patches
with no data, and return the shard.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from cloudbench import store
from cloudbench.build import Shard
from cloudbench.clouds import CloudMaskConfig, mask_acquisition
from cloudbench.config import ClassScheme
from cloudbench.errors import CloudbenchError
from cloudbench.patches import IMPURE, NO_LABELS, SPARSE_LABELS, cut, majority_labels
from cloudbench.sources.base import (
    S1_BANDS,
    S2_L2A_BANDS,
    Acquisition,
    Grid,
    LabelSource,
    Source,
)
from cloudbench.sources.landcover import read_classes


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


PASS_GAP = dt.timedelta(minutes=30)
"""Sentinel-2 items of one platform and relative orbit less than this apart (chained in time)
are tiles of one pass: a pass over an area takes seconds to minutes, and the same satellite is
back over it no sooner than one orbit (about 100 minutes) later."""
SAME_SENSING = dt.timedelta(minutes=5)
"""An L1C sensing is the twin of an L2A sensing (same platform and relative orbit) within this."""


def platform(acq: Acquisition) -> str | None:
    """The acquisition's platform, lower case ("sentinel-2a"), None when unknown."""
    value = acq.properties.get("platform")
    return str(value).lower() if value else None


def relative_orbit(acq: Acquisition) -> int | None:
    """The acquisition's relative orbit (``properties["relative_orbit"]``), None when unknown."""
    try:
        return int(acq.properties.get("relative_orbit"))  # type: ignore[arg-type]
    except (TypeError, ValueError):  # missing (None) or not a number
        return None


def items(acq: Acquisition) -> tuple[str, ...]:
    """The catalog item ids a sensing groups (``(acq.id,)`` for a single item)."""
    return tuple(acq.properties.get("items", (acq.id,)))


def sensing_key(acq: Acquisition) -> tuple[str | None, int | None, dt.date]:
    """What makes a Sentinel-2 sensing one: (platform, relative orbit, UTC date). Items of one
    pass (tiles of one datatake) share it; distinct passes never do (a relative orbit comes back
    after 10 days per satellite)."""
    when = acq.datetime.astimezone(dt.UTC) if acq.datetime.tzinfo else acq.datetime
    return platform(acq), relative_orbit(acq), when.date()


def _tile(acq: Acquisition) -> str | None:
    tile = acq.properties.get("mgrs_tile")
    return str(tile).upper().removeprefix("T") if tile else None


def _baseline(acq: Acquisition) -> tuple[int, int] | None:
    value = acq.properties.get("processing_baseline")
    try:
        major, minor = str(value).split(".")
        return int(major), int(minor)
    except (TypeError, ValueError):
        return None


def _combine(members: list[Acquisition], area: BaseGeometry | None) -> Acquisition:
    """One acquisition for the items of one pass."""
    # per tile, the products of the newest processing baseline: an older one of a tile is a
    # reprocessed copy; two of one baseline are parts of the tile (datastrips), both kept
    newest: dict[str, tuple[int, int]] = {}
    for acq in members:
        tile = _tile(acq)
        if tile is not None:
            newest[tile] = max(newest.get(tile, (-1, -1)), _baseline(acq) or (-1, -1))
    kept_members = sorted(
        (a for a in members
         if (tile := _tile(a)) is None or (_baseline(a) or (-1, -1)) == newest[tile]),
        key=lambda a: (a.datetime, a.id))
    if len(kept_members) == 1:
        return kept_members[0]  # one item: the acquisition itself, unchanged
    first = kept_members[0]
    baselines = sorted({b for b in map(_baseline, kept_members) if b is not None})
    covers = [(a, a.cloud_cover) for a in kept_members if a.cloud_cover is not None]
    cover = None
    if covers:
        cover = max(c for _, c in covers)
        if area is not None:
            weights = [a.footprint.intersection(area).area for a, _ in covers]
            if sum(weights) > 0:
                cover = sum(w * c for w, (_, c) in zip(weights, covers, strict=True)) / sum(
                    weights)
    properties = dict(first.properties)
    properties.update({
        "items": tuple(a.id for a in kept_members),
        "mgrs_tiles": tuple(t for t in dict.fromkeys(map(_tile, kept_members)) if t),
        "sensing_end": max(a.datetime for a in kept_members),
    })
    if baselines:
        # tiles of one pass may be of different baselines (one reprocessed, one not): the
        # service removes each tile's own offset (sentinelhub: harmonizeValues), so the mosaic
        # is on one scale; the baselines are recorded
        names = ["{:02d}.{:02d}".format(*b) for b in baselines]
        properties["processing_baseline"] = names[-1]
        properties["processing_baselines"] = tuple(names)
    return Acquisition(
        id=first.id,
        collection=first.collection,
        datetime=first.datetime,
        footprint=unary_union([a.footprint for a in kept_members]),
        cloud_cover=cover,
        properties=properties,
    )


def sensings(
    acquisitions: Sequence[Acquisition], *, area: BaseGeometry | None = None
) -> list[Acquisition]:
    """One acquisition per Sentinel-2 sensing (pass), sorted by (time, id).

    Real catalogs give one item per MGRS tile and pass: tiles are 109.8 km squares overlapping
    their neighbours by 9.8 km, so a place near a tile edge is in two to four items of one pass,
    their ``datetime`` (the tile sensing time) seconds apart, and every one of them reads as the
    same +-5 minute mosaic. Items of one platform and relative orbit within ``PASS_GAP`` of each
    other (chained) are one pass; of a tile given in several processing baselines (a
    reprocessing), the newest baseline's products are kept. A pass of one item is that item,
    unchanged. Otherwise the sensing has:

    * the earliest item's id and ``datetime`` (the first tile sensed: the read window of +-5
      minutes around it holds the whole pass, tiles seconds apart), the union of the footprints;
    * ``cloud_cover``: with ``area``, the items' covers weighted by the area of their footprint
      within ``area``; without (or when no footprint meets it), the largest;
    * ``properties``: the earliest item's, plus ``items`` (the item ids), ``mgrs_tiles``,
      ``sensing_end`` (the last item's time), ``processing_baseline`` (the newest) and
      ``processing_baselines`` (all of them: tiles of one pass can differ, and the read is
      harmonised per tile by the service, so they mosaic on one scale).
    """
    # per track (platform, relative orbit; unknown ones are a track of their own), in time order,
    # the items chained by PASS_GAP
    tracks: dict[tuple[str | None, int | None], list[list[Acquisition]]] = {}
    for acq in sorted(acquisitions, key=lambda a: (a.datetime, a.id)):
        passes = tracks.setdefault((platform(acq), relative_orbit(acq)), [])
        if passes and acq.datetime - passes[-1][-1].datetime <= PASS_GAP:
            passes[-1].append(acq)
        else:
            passes.append([acq])
    groups = [g for passes in tracks.values() for g in passes]
    combined = [_combine(g, area) for g in groups]
    return sorted(combined, key=lambda a: (a.datetime, a.id))


def _twin(optical: Acquisition, l1c: Sequence[Acquisition]) -> Acquisition | None:
    """The L1C sensing of ``optical``'s pass: same platform and relative orbit, within
    ``SAME_SENSING``, the nearest (then the earlier)."""
    found = [a for a in l1c if platform(a) == platform(optical)
             and relative_orbit(a) == relative_orbit(optical)
             and abs(a.datetime - optical.datetime) <= SAME_SENSING]
    return min(found, key=lambda a: (abs(a.datetime - optical.datetime), a.datetime, a.id),
               default=None)


def pair(
    l2a: Sequence[Acquisition],
    l1c: Sequence[Acquisition],
    s1: Sequence[Acquisition],
    max_gap: dt.timedelta,
    *,
    area: BaseGeometry | None = None,
) -> list[Pair]:
    """Each L2A sensing with the L1C sensing of the same pass and the nearest S1 within
    ``max_gap`` (ties: the earlier S1, then the smaller id); sensings without either are left
    out.

    Catalog items are grouped into sensings first (:func:`sensings`; ``area``, the area the
    pairs are for, weights the sensing's cloud cover), so one pass gives one pair, however many
    MGRS tiles of it cover the area. Sorted by time."""
    twins = sensings(l1c, area=area)
    pairs = []
    for optical in sensings(l2a, area=area):
        twin = _twin(optical, twins)
        # the id breaks ties of S1 products sensed at the same time (as _twin does), so the
        # choice never depends on the order the catalog listed them in
        radar = min(s1, key=lambda a: (abs(a.datetime - optical.datetime), a.datetime, a.id),
                    default=None)
        if twin is None or radar is None or abs(radar.datetime - optical.datetime) > max_gap:
            continue
        pairs.append(Pair(optical, twin, radar))
    return pairs


# decimals of a grid's transform that tell footprints apart: a 10 m or a 0.0001 degree lattice,
# and not the last bits of coordinates computed two ways
_FOOTPRINT_DIGITS = 6


def _footprint_key(grid: Grid) -> tuple[str, tuple[float, ...], int, int]:
    return (grid.crs.to_string(),
            tuple(round(v, _FOOTPRINT_DIGITS) for v in tuple(grid.transform)[:6]),
            grid.width, grid.height)


def check_plan(
    planned: Iterable[tuple[str, Grid, Acquisition]], *, patch_size: int | None = None,
    show: int = 3,
) -> None:
    """Refuse a plan that would store the same pixels twice, before anything is downloaded.

    ``planned`` holds (shard id, grid, S2 sensing) per task; with ``patch_size`` the sample
    footprints are the grid's ``patch_size`` windows (``Grid.tiles``), else the grid itself.
    A shard id planned twice, or a (sample footprint, sensing) planned twice (sensings compared
    by :func:`sensing_key`: platform, relative orbit, date), raises one CloudbenchError naming
    the first ``show`` repeats.
    """
    shards: set[str] = set()
    seen: dict[tuple[Any, ...], str] = {}
    repeats: list[str] = []
    count = 0
    for shard_id, grid, acq in planned:
        if shard_id in shards:
            count += 1
            if len(repeats) < show:
                repeats.append(f"shard {shard_id} is planned twice")
            continue
        shards.add(shard_id)
        key = sensing_key(acq)
        grids = [g for _, _, g in grid.tiles(patch_size)] if patch_size else [grid]
        for sample in grids:
            where = _footprint_key(sample)
            other = seen.setdefault((*where, *key), shard_id)
            if other != shard_id:
                count += 1
                if len(repeats) < show:
                    bounds = ", ".join(f"{v:.{_FOOTPRINT_DIGITS}f}".rstrip("0").rstrip(".")
                                       for v in sample.bounds)
                    repeats.append(
                        f"shards {other} and {shard_id} both hold the sample at "
                        f"{sample.crs.to_string()} ({bounds}) "
                        f"of the sensing {key[0] or '?'} R{key[1] if key[1] is not None else '?'}"
                        f" {key[2]} ({acq.id})")
                break  # one message per shard pair is enough
    if repeats:
        more = f"; {count - len(repeats)} more" if count > len(repeats) else ""
        raise CloudbenchError(
            f"the plan repeats samples ({count} planned shards repeat another's shard id or "
            f"samples), so it was stopped before any download: {'; '.join(repeats)}{more}. "
            "Items of one pass (MGRS tiles overlapping near a tile edge) must be grouped into "
            "one sensing (cloudbench.pairs.sensings)")


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
    min_labelled: float | None = None,
    inside: np.ndarray | None = None,
) -> Shard:
    """The shard of one tile ``grid`` and one pair: patches cut, labelled and masked.

    Sample ids are ``<id_prefix>_<row>_<col>`` with the patch's pixel offset (plus ``origin``,
    the grid's offset in a larger grid: the world for the demo, the tile for a part of a tile).
    ``clear_target``, when given, returns the float32 (C, H, W) cloud-free S2 on the tile grid,
    the bands of ``s2``; its patches are cut like ``s2`` and stored as ``s2_clear`` (same
    encoding); NaN in it makes a patch no data.

    Labels: ``read_classes`` (no label data is its own mask, never a class) and
    ``majority_labels`` with ``purity`` over the labelled pixels and ``min_labelled`` (default
    ``purity``) the least labelled share of a patch. ``inside``, when given, is a bool
    (rows, cols) or (N,) array over the grid's patches, row-major: the patches to keep (those
    meeting the area of interest); the others are dropped as ``outside_aoi``.

    ``dropped`` counts each patch not kept once, in this order of precedence: ``outside_aoi``
    (only with ``inside``), ``nodata`` (a NaN in S2, S1 or the clear target), ``no_label_data``
    (no labelled pixel), ``sparse_label_data`` (labelled share under ``min_labelled``),
    ``impure`` (majority share of the labelled pixels under ``purity``).
    """
    started = time.perf_counter()
    s2 = source.read(pair.s2_l2a, grid, S2_L2A_BANDS)
    s1 = source.read(pair.s1, grid, S1_BANDS)
    classes = read_classes(labels, grid, scheme)
    clear = None
    if clear_target is not None:
        clear = np.asarray(clear_target(grid), dtype=np.float32)
        if clear.shape != s2.shape:
            raise ValueError(f"the clear target has shape {clear.shape}, s2 has {s2.shape}")
    read = time.perf_counter()
    mask = mask_acquisition(source, pair.s2_l1c, grid, clouds)
    masked = time.perf_counter()

    label, _ = majority_labels(classes, patch_size, len(scheme.classes), purity, min_labelled)
    s1_patches, s2_patches = cut(s1, patch_size), cut(s2, patch_size)
    masks = cut(mask[None], patch_size)
    candidate = np.ones(len(label), dtype=bool)
    if inside is not None:
        candidate = np.asarray(inside, dtype=bool).reshape(-1)
        if candidate.shape != label.shape:
            raise ValueError(f"inside has {candidate.size} patches, the grid {label.size}")
    nodata = np.isnan(s1_patches).any(axis=(1, 2, 3)) | np.isnan(s2_patches).any(axis=(1, 2, 3))
    if clear is not None:
        clear_patches = cut(clear, patch_size)
        nodata |= np.isnan(clear_patches).any(axis=(1, 2, 3))
    nodata &= candidate
    checked = candidate & ~nodata
    keep = checked & (label >= 0)
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
    dropped = {"outside_aoi": int((~candidate).sum())} if inside is not None else {}
    dropped.update({
        "nodata": int(nodata.sum()),
        "no_label_data": int((checked & (label == NO_LABELS)).sum()),
        "sparse_label_data": int((checked & (label == SPARSE_LABELS)).sum()),
        "impure": int((checked & (label == IMPURE)).sum()),
    })
    return Shard(
        table,
        arrays,
        dropped=dropped,
        seconds={"read": read - started, "mask": masked - read, "cut_and_label": done - masked},
    )


def _reflectance_uint16(reflectance: np.ndarray) -> np.ndarray:
    """Reflectance as stored: × 10000, rounded, clipped to uint16."""
    return np.round(np.clip(reflectance * 10000, 0, 65535)).astype(np.uint16)
