"""The CBEN recipe (CloudyBigEarthNet): BigEarthNet re-acquired at climatological cloudiness.

``cloudbench build cben --bigearthnet-root DIR --climatology DIR --out DIR`` (Sentinel Hub
flags as ``build aoi``; ``--dry-run`` plans only).

1. ``plan``, per BigEarthNet tile (an S2 product: MGRS tile + acquisition):

   * **Target.** The EarthEnv cloud frequency (``MODCF_monthlymean_MM.tif`` of the month of the
     search centre, ``MODCF_interannualSD.tif``) is read at each patch's centroid (one-pixel
     windowed reads); the tile's target is the mean over its patches of the monthly mean, with
     the mean of the inter-annual SD as tolerance: whole-tile cloud cover in
     [mean - sd, mean + sd], clipped to [0, 100].
   * **Search.** The Sentinel-2 L2A catalog is searched around the search centre (the original
     sensing time moved by ``shift_days``: 0 is the paper's CBEN, other values build it for
     other months), first +-``step_days``, then widened by ``step_days`` (only the new slices
     are searched) up to +-``max_days``, for products of the same MGRS tile with cloud cover
     in range (server-side filter, every result page read). The original sensing itself, or a
     reprocessing of it, is never chosen: a product is the original when it is of the same
     tile, the same relative orbit and the same date (its datatake start, from its name, else
     its ``datetime``) as the original product's name says, or within 5 minutes of its time.
     (The catalog's ``datetime`` is the tile's sensing time, minutes after the datatake start
     in the product name, so time alone cannot tell.) Duplicates of one sensing
     (reprocessings: same tile, datatake and orbit) keep the newest processing baseline.
   * **Choice.** The candidate closest in time to the search centre; a tie (one before, one
     after) goes to the cloud cover closest to the target mean, then to the earlier. When no
     window up to ``max_days`` has a candidate, the tile is given up and recorded as such.
   * The L1C product of the chosen sensing (same tile, same time) is looked up for s2cloudless.

2. ``build_shard`` per ``patches_per_shard`` patches of a tile (sorted block by block), in
   **blocks**: the tile's patches lie on a lattice of 1200 m squares (from its patches' upper
   left corner, :func:`lattice_origin`), hence on the 60 m lattice every band shares, so up to
   ``block_patches`` x ``block_patches`` of them (20 x 20: 2400 px at 10 m) are read in one
   request per band group on the block's bounding rectangle and cut into patches at integer
   offsets (:func:`blocks`; a patch off the lattice is read alone, on its own grid). Per
   block: the chosen L2A at 10 m (B02 B03 B04 B08), 20 m (B05 B06 B07 B8A B11 B12, and Sen2Cor's
   SCL in the same request) and 60 m (B01 B09), as digital numbers harmonised by the service
   per tile (``harmonizeValues``: see ``cloudbench.sources.sentinelhub``); the L1C bands of the
   same sensing on the block plus ``cloud_margin`` pixels for s2cloudless (its averaging and
   dilation reach 6 px at the defaults, so with the margin above that every patch's mask is the
   one a read of the patch alone would give), cloud type per pixel, cropped to each patch; the
   original BigEarthNet S1 patch; the 19-class labels and official split as they are. Each
   patch's cloud, shadow and cirrus shares (percent of its valid pixels, ``scl_cloud``,
   ``scl_shadow``, ``scl_cirrus`` in the sample table) come from its SCL window
   (``cloudbench.clouds.scene_shares``). Patches the re-acquisition does not fully cover (no
   data) are dropped and counted. The samples are those of a build with ``block_patches: 1``
   (one request per group and patch), pixel for pixel, in ~100x fewer requests.

The build report adds the paper's Tables II and III (``report``): cloud cover, cloud shadow and
thin cirrus over the samples by the L2A scene classification (Sentinel Hub's catalog items carry
no shadow or cirrus properties; its ``eo:cloud_cover`` of the chosen products is given beside),
and the temporal distances S2->S1, S2-cloudy->S1, S2-cloudy->S2 over the samples; and one record
per tile (target, search, choice, or why it was given up).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from shapely.ops import unary_union

from cloudbench.build import Shard
from cloudbench.builders.bigearthnet import (
    Patch,
    Selection,
    chunks,
    products,
    sample_rows,
    store_meta,
)
from cloudbench.builders.bigearthnet import (  # the builder's split: the official one
    assign_split as assign_split,
)
from cloudbench.clouds import CloudMaskConfig, mask_acquisition, scene_shares
from cloudbench.sources.base import Acquisition, Collection, Grid
from cloudbench.sources.bigearthnet import (
    GROUP_RESOLUTION,
    PATCH_SIZE,
    S2_GROUPS,
    read_patch,
)
from cloudbench.sources.earthenv import Climatology, cover_range
from cloudbench.sources.sentinelhub import (
    PlanCost,
    SentinelHubSettings,
    SentinelHubSource,
    cached_source,
    processing_baseline,
    processing_units,
    product_name_fields,
    quota_warning,
)

MAX_BLOCK_PATCHES = 20
"""The largest block side in patches: 2400 px at 10 m (the Process API's limit is 2500)."""
PATCH_EXTENT = PATCH_SIZE * 10.0
"""A BigEarthNet patch's side in metres (120 px at 10 m)."""
SAME_SENSING = dt.timedelta(minutes=5)
"""Products this close in time to a sensing are that sensing (the L1C twin; the original)."""
_NAME_TIME = re.compile(r"(\d{8}T\d{6})")


class Config(Selection):
    """The ``cben`` recipe (``catalogs/recipes/cben.yaml``)."""

    climatology: Path = Field(description="folder with the EarthEnv MODCF GeoTIFFs")
    step_days: int = Field(30, ge=1, description="first half-window and widening step, days")
    max_days: int = Field(90, ge=1, description="give a tile up beyond this half-window, days")
    shift_days: int = Field(
        0, description="centre the search this many days after the original sensing (and take "
                       "the climatology of the month there): CBEN for other months")
    cloud_margin: int = Field(16, ge=0, description="10 m pixels around a patch for s2cloudless")
    block_patches: int = Field(
        20, ge=1, le=MAX_BLOCK_PATCHES,
        description="patches per side of a block read in one request per band group (20: "
                    "2400 px at 10 m, under the Process API's 2500; 1: one request per patch)")
    clouds: CloudMaskConfig = CloudMaskConfig()
    sentinel_hub: SentinelHubSettings = SentinelHubSettings()

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.max_days < self.step_days:
            raise ValueError(f"max_days ({self.max_days}) is below step_days ({self.step_days})")
        return self


@dataclass(frozen=True)
class Choice:
    """The re-acquisition of one BigEarthNet tile."""

    l2a: Acquisition
    l1c: Acquisition


@dataclass(frozen=True)
class Task:
    shard_id: str
    patches: tuple[Patch, ...]
    choice: Choice | None
    record: dict[str, Any] | None = None
    """The tile's record (first task of a tile only)."""
    dropped: dict[str, int] = field(default_factory=dict)
    origin: tuple[float, float] | None = None
    """The upper-left corner of the tile's patch lattice (its patches' smallest x, largest y),
    which places the blocks (:func:`blocks`)."""


# ---------------------------------------------------------------------------------- planning


def target(
    climatology: Climatology, patches: list[Patch], month: int
) -> tuple[float, float] | None:
    """(mean, sd) cloud frequency of ``month`` in percent over the patches' centroids, None
    without data."""
    points = [(c.x, c.y) for c in (p.grid.footprint().centroid for p in patches)]
    found = [v for v in climatology.lookup_many(points, month) if v is not None]
    if not found:
        return None
    return float(np.mean([m for m, _ in found])), float(np.mean([s for _, s in found]))


def _same_tile(acq: Acquisition, tile: str) -> bool:
    return str(acq.properties.get("mgrs_tile", "")).upper().lstrip("T") == tile.upper()


def _datatake(acq: Acquisition) -> dt.datetime:
    """The acquisition's datatake start: its ``datatake_start`` property, else the first
    ``YYYYMMDDTHHMMSS`` of its id (real product names: the datatake start), else its time."""
    start = acq.properties.get("datatake_start")
    if isinstance(start, dt.datetime):
        return start
    match = _NAME_TIME.search(acq.id)
    if match is not None:
        return dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
    return acq.datetime


def _orbit(acq: Acquisition) -> int | None:
    value = acq.properties.get("relative_orbit")
    if value is None:
        value = product_name_fields(acq.id).get("relative_orbit")
    return None if value is None else int(value)


def _sensing(acq: Acquisition) -> tuple[str, dt.date, int | None]:
    """(tile, datatake date, relative orbit): what one sensing of a tile shares across its
    reprocessings."""
    return (str(acq.properties.get("mgrs_tile", "")).upper().lstrip("T"),
            _datatake(acq).date(), _orbit(acq))


def is_original(acq: Acquisition, tile: str, product: str, original: dt.datetime) -> bool:
    """Whether ``acq`` is the original sensing of a BigEarthNet tile, or a reprocessing of it:
    the same tile, the same date (``acq``'s datatake start against the original product's name
    time, ``original``) and the same relative orbit (when both are known: ``product``'s
    ``_Rxxx_`` and ``acq``'s), or within ``SAME_SENSING`` of ``original``. A relative orbit comes
    back over a tile after 5 days at the soonest (10 per satellite), so date and orbit single out
    a pass; the catalog's ``datetime`` is the tile's sensing time, minutes after the name's."""
    if not _same_tile(acq, tile):
        return False
    if abs(acq.datetime - original) <= SAME_SENSING:
        return True
    orbit, theirs = product_name_fields(product).get("relative_orbit"), _orbit(acq)
    same_orbit = orbit is None or theirs is None or orbit == theirs
    return _datatake(acq).date() == original.astimezone(dt.UTC).date() and same_orbit


def _newest_baselines(acqs: list[Acquisition]) -> list[Acquisition]:
    """One product per sensing (tile, datatake date and relative orbit; else its time): the
    newest processing baseline (then the largest id)."""
    best: dict[Any, Acquisition] = {}
    for acq in acqs:
        key = (_sensing(acq), acq.datetime) if _orbit(acq) is None else _sensing(acq)
        kept = best.get(key)
        if kept is None or (processing_baseline(acq), acq.id) > (processing_baseline(kept),
                                                                  kept.id):
            best[key] = acq
    return sorted(best.values(), key=lambda a: (a.datetime, a.id))


def choose(
    candidates: list[Acquisition], original: dt.datetime, mean: float
) -> Acquisition | None:
    """The candidate closest in time to ``original``; ties: cover closest to ``mean``, then the
    earlier."""
    if not candidates:
        return None
    return min(candidates, key=lambda a: (abs(a.datetime - original),
                                          abs((a.cloud_cover or 0.0) - mean), a.datetime))


def windows(original: dt.datetime, step: int, limit: int) -> list[list[tuple[dt.datetime,
                                                                               dt.datetime]]]:
    """The time ranges searched at each widening: +-step first, then the two new slices."""
    out = [[(original - dt.timedelta(days=step), original + dt.timedelta(days=step))]]
    reach = step
    while reach < limit:
        wider = min(reach + step, limit)
        near, far = dt.timedelta(days=reach), dt.timedelta(days=wider)
        out.append([(original - far, original - near), (original + near, original + far)])
        reach = wider
    return out


def search_centre(config: Config, original: dt.datetime) -> dt.datetime:
    """Where a tile's search is centred: its original sensing, moved by ``shift_days``."""
    return original + dt.timedelta(days=config.shift_days)


def search_tile(
    source: SentinelHubSource, config: Config, patches: list[Patch], lo: float, hi: float,
    mean: float,
) -> tuple[Acquisition | None, dict[str, Any]]:
    """The chosen L2A product of a tile and what the search did."""
    tile, original, product = patches[0].tile, patches[0].s2_time, patches[0].product
    centre = search_centre(config, original)
    area = unary_union([p.grid.footprint() for p in patches]).envelope
    searches = 0
    for k, ranges in enumerate(windows(centre, config.step_days, config.max_days)):
        found: list[Acquisition] = []
        for start, end in ranges:
            found += source.search(Collection.S2_L2A, area, start, end,
                                   min_cloud_cover=lo, max_cloud_cover=hi)
            searches += 1
        candidates = [a for a in _newest_baselines([a for a in found if _same_tile(a, tile)])
                      if not is_original(a, tile, product, original)
                      and a.cloud_cover is not None and lo <= a.cloud_cover <= hi]
        chosen = choose(candidates, centre, mean)
        if chosen is not None:
            days = min(config.step_days * (k + 1), config.max_days)
            return chosen, {"catalog_searches": searches, "found_within_days": days,
                            "candidates": len(candidates)}
    return None, {"catalog_searches": searches, "found_within_days": None, "candidates": 0}


def l1c_twin(
    source: SentinelHubSource, l2a: Acquisition, patches: list[Patch]
) -> Acquisition | None:
    """The L1C product of ``l2a``'s sensing and tile (for s2cloudless), None when the catalog
    has none."""
    area = unary_union([p.grid.footprint() for p in patches]).envelope
    found = source.search(Collection.S2_L1C, area, l2a.datetime - SAME_SENSING,
                          l2a.datetime + SAME_SENSING)
    twins = _newest_baselines([a for a in found if _same_tile(a, patches[0].tile)])
    return min(twins, key=lambda a: abs(a.datetime - l2a.datetime), default=None)


def plan(config: Config, root: Path, **_options: Any) -> list[Task]:
    """Per BigEarthNet tile: the target, the search and the choice; then tasks of up to
    ``patches_per_shard`` patches (a tile given up is one task that writes no samples)."""
    climatology = Climatology(config.climatology)
    source = cached_source(config.sentinel_hub)
    tasks: list[Task] = []
    for product, patches, dropped in products(config):
        if not patches:
            tasks.append(Task(f"{product}_0000", (), None, None, dropped))
            continue
        first = patches[0]
        record: dict[str, Any] = {
            "product": product, "tile": first.tile, "patches": len(patches),
            "original_s2_time": first.s2_time.isoformat(),
        }
        centre = search_centre(config, first.s2_time)
        record["search_centre"] = centre.isoformat()
        goal = target(climatology, patches, centre.month)
        chosen = None
        if goal is None:
            record["given_up"] = "no climatology value at any patch (nodata or outside)"
        else:
            mean, sd = goal
            lo, hi = cover_range(mean, sd)
            record.update({"climatology_mean": round(mean, 2), "climatology_sd": round(sd, 2),
                           "cover_range": [round(lo, 2), round(hi, 2)]})
            chosen, searched = search_tile(source, config, patches, lo, hi, mean)
            record.update(searched)
            if chosen is None:
                record["given_up"] = (f"no L2A product of tile {first.tile} with cloud cover in "
                                      f"[{lo:.2f}, {hi:.2f}] within +-{config.max_days} days")
        twin = None if chosen is None else l1c_twin(source, chosen, patches)
        if chosen is not None and twin is None:
            record["given_up"] = (f"no L1C product of {chosen.id}'s sensing "
                                  f"({chosen.datetime:%Y-%m-%dT%H:%M:%SZ}) for the cloud mask")
        if chosen is None or twin is None:
            tasks.append(Task(f"{product}_0000", (), None, record,
                              {**dropped, "tile_given_up": len(patches)}))
            continue
        record.update({
            "chosen": chosen.id, "chosen_time": chosen.datetime.isoformat(),
            "l1c": twin.id, "processing_baseline": processing_baseline(chosen),
            "cloud_cover": chosen.cloud_cover,
            "offset_to_original_s2_days": round(
                (chosen.datetime - first.s2_time).total_seconds() / 86400, 4),
        })
        origin = lattice_origin(patches)
        ordered = sorted(patches, key=lambda p: _block_key(p, origin, config.block_patches))
        for k, part in enumerate(chunks(ordered, config.patches_per_shard)):
            tasks.append(Task(f"{product}_{k:04d}", part, Choice(chosen, twin),
                              record if k == 0 else None, dropped if k == 0 else {}, origin))
    return tasks


# ---------------------------------------------------------------------------------- blocks


def lattice_origin(patches: list[Patch]) -> tuple[float, float]:
    """The upper-left corner of a tile's patch lattice: its patches' smallest x and largest y."""
    return (min(p.grid.transform.c for p in patches), max(p.grid.transform.f for p in patches))


def _lattice_cell(patch: Patch, origin: tuple[float, float]) -> tuple[int, int] | None:
    """(row, col) of ``patch`` on the lattice of ``PATCH_EXTENT`` squares from ``origin``; None
    when it is not on it (another CRS would not be either: patches of one tile share theirs)."""
    grid = patch.grid
    if not (grid.width == grid.height == PATCH_SIZE and np.isclose(grid.resolution, 10.0)):
        return None
    col = (grid.transform.c - origin[0]) / PATCH_EXTENT
    row = (origin[1] - grid.transform.f) / PATCH_EXTENT
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def _block_key(patch: Patch, origin: tuple[float, float], side: int) -> tuple[Any, ...]:
    """Sorts a tile's patches block by block (row-major within), off-lattice patches last."""
    cell = _lattice_cell(patch, origin)
    if cell is None:
        return (1, patch.name)
    row, col = cell
    return (0, row // side, col // side, row, col)


@dataclass(frozen=True)
class Block:
    """Patches read together: ``grid`` (10 m) spans them; ``offsets`` are each patch's (row,
    col) in 10 m pixels within it, multiples of 120, so every band group's grid (10, 20, 60 m)
    holds each patch's grid at integer offsets."""

    grid: Grid
    patches: tuple[Patch, ...]
    offsets: tuple[tuple[int, int], ...]


def blocks(patches: tuple[Patch, ...], origin: tuple[float, float], side: int) -> list[Block]:
    """The blocks of a task's patches: those on the tile's lattice grouped by ``side`` x
    ``side`` squares of it, each block the bounding rectangle of its patches; any other patch
    alone, on its own grid."""
    groups: dict[tuple[int, int], list[tuple[Patch, int, int]]] = {}
    out: list[Block] = []
    for patch in patches:
        cell = _lattice_cell(patch, origin)
        if cell is None:
            out.append(Block(patch.grid, (patch,), ((0, 0),)))
            continue
        row, col = cell
        groups.setdefault((row // side, col // side), []).append((patch, row, col))
    for members in groups.values():
        r0, c0 = min(r for _, r, _ in members), min(c for _, _, c in members)
        r1, c1 = max(r for _, r, _ in members) + 1, max(c for _, _, c in members) + 1
        crs = members[0][0].grid.crs
        grid = Grid.from_bounds(crs, origin[0] + c0 * PATCH_EXTENT,
                                origin[1] - r0 * PATCH_EXTENT, (c1 - c0) * PATCH_SIZE,
                                (r1 - r0) * PATCH_SIZE, 10.0)
        out.append(Block(grid, tuple(p for p, _, _ in members),
                         tuple(((r - r0) * PATCH_SIZE, (c - c0) * PATCH_SIZE)
                               for _, r, c in members)))
    return out


# ---------------------------------------------------------------------------------- building


def _padded(grid: Grid, margin: int) -> Grid:
    from affine import Affine

    return Grid(grid.crs, grid.transform @ Affine.translation(-margin, -margin),
                grid.width + 2 * margin, grid.height + 2 * margin)


def _dn(reflectance: np.ndarray) -> np.ndarray:
    return np.round(np.clip(reflectance * 10000, 0, 65535)).astype(np.uint16)


def _window(image: np.ndarray, offset: tuple[int, int], factor: int) -> np.ndarray:
    """A patch's pixels (``PATCH_SIZE`` at 10 m, ``PATCH_SIZE / factor`` at 10·factor m) out of
    a block's image (..., H, W) at that resolution."""
    r, c, n = offset[0] // factor, offset[1] // factor, PATCH_SIZE // factor
    return image[..., r : r + n, c : c + n]


def build_shard(config: Config, task: Task) -> Shard:
    records = [task.record] if task.record is not None else []
    if task.choice is None:
        return Shard(_empty_table(), {}, dropped=dict(task.dropped), records=records)
    source = cached_source(config.sentinel_hub)
    chosen, twin = task.choice.l2a, task.choice.l1c
    m = config.cloud_margin
    built: dict[str, dict[str, Any]] = {}
    assert task.origin is not None  # every task with a choice has its tile's lattice
    for block in blocks(task.patches, task.origin, config.block_patches):
        grids = {name: block.grid.rescaled(res) for name, res in GROUP_RESOLUTION.items()}
        images = {name: source.read(chosen, grids[name], S2_GROUPS[name])
                  for name in ("s2", "s2_60m")}
        images["s2_20m"], scl = source.read_with_scl(chosen, grids["s2_20m"],
                                                     S2_GROUPS["s2_20m"])
        mask = mask_acquisition(source, twin, _padded(block.grid, m), config.clouds)
        mask = mask[m : m + block.grid.height, m : m + block.grid.width]
        for patch, offset in zip(block.patches, block.offsets, strict=True):
            optical = {name: _window(image, offset, round(GROUP_RESOLUTION[name] / 10))
                       for name, image in images.items()}
            if any(np.isnan(a).any() for a in optical.values()):
                continue
            built[patch.name] = {"optical": optical, "mask": _window(mask, offset, 1)[None],
                                 "shares": scene_shares(_window(scl, offset, 2))}
    kept = [p for p in task.patches if p.name in built]
    dropped = {**task.dropped, "nodata_in_reacquisition": len(task.patches) - len(kept)}
    if not kept:
        return Shard(_empty_table(), {}, dropped=dropped, records=records)
    arrays = {name: np.stack([_dn(built[p.name]["optical"][name]) for p in kept])
              for name in S2_GROUPS}
    arrays["s1"] = np.stack([read_patch(p, ["s1"])["s1"] for p in kept])
    cloud = np.stack([built[p.name]["mask"] for p in kept])
    table = sample_rows(kept, cloud, [chosen.datetime] * len(kept),
                        [[chosen.id, twin.id, p.s1_name, p.name] for p in kept])
    for name in ("cloud", "shadow", "cirrus"):  # percent of the patch, from L2A's SCL
        table[f"scl_{name}"] = [built[p.name]["shares"][name] for p in kept]
    return Shard(table, {**arrays, "cloud_mask": cloud}, dropped=dropped, records=records)


def _empty_table() -> Any:
    table = sample_rows([], np.zeros((0, 1, 120, 120), np.uint8), [], [])
    for name in ("cloud", "shadow", "cirrus"):
        table[f"scl_{name}"] = np.zeros(0, np.float64)
    return table


# ---------------------------------------------------------------------------------- reporting


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"n": len(a), "mean": round(float(a.mean()), 2), "sd": round(float(a.std()), 2),
            "min": round(float(a.min()), 2), "max": round(float(a.max()), 2)}


def _time_stats(deltas: pd.Series) -> dict[str, Any]:
    seconds = deltas.dt.total_seconds().abs().to_numpy()
    if not len(seconds):
        return {"n": 0}

    def text(s: float) -> str:
        return str(pd.Timedelta(seconds=round(s)))

    return {"n": len(seconds), "mean": text(seconds.mean()), "sd": text(seconds.std()),
            "min": text(seconds.min()), "max": text(seconds.max()),
            "mean_days": round(float(seconds.mean()) / 86400, 3)}


def report(config: Config, records: list[dict[str, Any]], table: Any) -> dict[str, Any]:
    """The paper's Tables II (cloud, cloud shadow and thin cirrus, percent of each sample by
    the chosen L2A's scene classification, ``scl_*``; population SD; and the catalog's cloud
    cover of the chosen products) and III (absolute temporal distances over the samples), and
    the tiles' fate."""
    chosen = [r for r in records if "chosen" in r]
    given_up = [r for r in records if "given_up" in r]
    table_ii: dict[str, Any] = {
        name: _stats([v for v in table[f"scl_{key}"].astype(float) if np.isfinite(v)])
        for name, key in (("cloud_cover", "cloud"), ("cloud_shadows", "shadow"),
                          ("thin_cirrus", "cirrus"))
    }
    table_ii["catalog_cloud_cover"] = _stats(
        [float(r["cloud_cover"]) for r in chosen if r.get("cloud_cover") is not None])
    table_ii["source"] = ("per sample, from the chosen L2A product's scene classification "
                          "(SCL: cloud 8, 9, 10; shadow 3; cirrus 10; of the valid pixels); "
                          "catalog_cloud_cover: the catalog's eo:cloud_cover per product")
    s1, s2 = pd.to_datetime(table["s1_time"], utc=True), pd.to_datetime(table["s2_time"], utc=True)
    original = pd.to_datetime(table["original_s2_time"], utc=True)
    table_iii = {
        "s2_to_s1": _time_stats(original - s1),
        "s2_cloudy_to_s1": _time_stats(s2 - s1),
        "s2_cloudy_to_s2": _time_stats(s2 - original),
    }
    return {
        "tiles": {"total": len(records), "reacquired": len(chosen), "given_up": len(given_up)},
        "table_ii_products": table_ii,
        "table_iii_temporal_distances": table_iii,
    }


# ---------------------------------------------------------------------------------- dry run


def estimate(config: Config, tasks: list[Task]) -> dict[str, Any]:
    """Requests and processing units (PU) a build of ``tasks`` will use (an estimate by the
    published rules: the service's own accounting decides), per request kind. Per block of
    patches (:func:`blocks`, up to ``block_patches`` x ``block_patches`` of a shard), four
    Process API requests, all UINT16: L2A at 10 m (4 bands), 20 m (6 bands and SCL) and 60 m
    (2 bands), and L1C (13 bands on the block plus ``cloud_margin``, at the cloud-mask
    resolution), each ``sentinelhub.processing_units`` (the 0.01 area floor makes small blocks
    cost as much as 512 x 512 px / 100); S1 is BigEarthNet's own. On CDSE, ``warning`` says when
    a free account's monthly quota does not cover it (``sentinelhub.quota_warning``)."""
    records = [t.record for t in tasks if t.record is not None]
    patches = sum(len(t.patches) for t in tasks if t.choice is not None)
    cost = PlanCost()
    m, step = config.cloud_margin, config.clouds.resolution / 10
    for task in tasks:
        if task.choice is None or task.origin is None:
            continue
        for block in blocks(task.patches, task.origin, config.block_patches):
            w, h = block.grid.width, block.grid.height
            for name, factor in (("s2", 1), ("s2_20m", 2), ("s2_60m", 6)):
                bands = len(S2_GROUPS[name]) + (name == "s2_20m")  # + SCL
                cost.add(f"S2 L2A {10 * factor} m", processing_units(
                    (w // factor) * (h // factor), bands, Collection.S2_L2A))
            cost.add("S2 L1C (cloud mask)", processing_units(
                round((w + 2 * m) / step) * round((h + 2 * m) / step), 13, Collection.S2_L1C))
    searches = sum(r.get("catalog_searches", 0) + ("l1c" in r) for r in records)
    found = sum("chosen" in r for r in records)
    return {
        "summary": (f"{found} of {len(records)} BigEarthNet tiles re-acquired "
                    f"({len(records) - found} given up) after {searches} catalog searches: "
                    f"{patches} patches in {sum(t.choice is not None for t in tasks)} shards, "
                    f"{cost.requests} Process API requests, about "
                    f"{cost.units:g} processing units"),
        "tiles": len(records), "reacquired": found, "catalog_searches": searches,
        "patches": patches, "requests": cost.requests,
        "processing_units": cost.units,
        "by_kind": cost.by_kind(), "breakdown": cost.breakdown(),
        "warning": quota_warning(config.sentinel_hub, cost.requests, cost.units),
    }


# ---------------------------------------------------------------------------------- store


def metadata(config: Config) -> dict[str, Any]:
    return store_meta(
        "cben", "Sentinel-2 L2A re-acquisition, processing-baseline offset harmonised",
        "s2cloudless on the L1C bands of the chosen sensing")


def provenance(config: Config) -> dict[str, Any]:
    return {"source": "sentinel-hub", "synthetic": False,
            "service": config.sentinel_hub.base_url,
            "bigearthnet_root": str(config.bigearthnet_root),
            "climatology": str(config.climatology)}
