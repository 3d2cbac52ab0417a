"""The clean BigEarthNet recipe: the original patches in the store format (CBEN's clean twin).

``cloudbench build bigearthnet --bigearthnet-root DIR --out DIR [--match CBEN_DIR]``

Reads BigEarthNet v1.0 or v2.0 (reBEN) in its original layout (``cloudbench/sources/
bigearthnet.py``) and writes every patch as it is: S2 L2A at its native resolutions (``s2``:
B02 B03 B04 B08 at 10 m, 120x120; ``s2_20m``: B05 B06 B07 B8A B11 B12, 60x60; ``s2_60m``: B01
B09, 20x20), the S1 patch (VV, VH, dB), the 19-class multi-hot labels and the official split.
Patches on the official cloud/shadow and seasonal-snow lists are left out (``exclude``), and so
are patches without a 19-class label or outside the official splits; the build report counts each.

No cloud mask is computed for the originals: BigEarthNet is cloud-free by construction (its
cloudy patches are on the exclusion list), and ``cloud_mask`` is all 0 ("clear"), which
``dataset.json`` states. ``--match CBEN_DIR`` keeps only the patches of a CBEN build, so the
paper's 2x2 protocol (fine-tune on clean or cloudy, test on both) compares identical patch sets
with identical ids and splits.

This module also holds what the CBEN recipe (``builders/cben.py``) shares with it: which patches
to take, and how they are grouped into tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cloudbench import store
from cloudbench.build import Shard
from cloudbench.config import class_scheme
from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import SYNTHETIC_MARKER
from cloudbench.sources.bigearthnet import (
    PATCH_SIZE,
    S1_BANDS,
    S2_GROUPS,
    Patch,
    read_index,
    read_patch,
)

SCHEME = "bigearthnet19"
Exclusion = Literal["cloud_or_shadow", "seasonal_snow"]
EXCLUSIONS: tuple[Exclusion, ...] = ("cloud_or_shadow", "seasonal_snow")


class Selection(BaseModel):
    """Which BigEarthNet patches a build takes (shared by the ``bigearthnet`` and ``cben``
    recipes)."""

    model_config = ConfigDict(extra="forbid")

    bigearthnet_root: Path = Field(description="BigEarthNet v1.0 or v2.0 in its original layout")
    version: Literal["auto", "v1", "v2"] = "auto"
    exclude: list[Exclusion] = Field(
        default_factory=lambda: list(EXCLUSIONS), description="official exclusion lists to apply")
    tiles: list[str] | None = Field(None, description="MGRS tiles to build (default: all)")
    patches_per_shard: int = Field(100, ge=1, description="patches per resumable unit of work")


class Config(Selection):
    """The ``bigearthnet`` recipe (``catalogs/recipes/bigearthnet.yaml``)."""

    match: Path | None = Field(None, description="keep only the patches of this CBEN store")


@dataclass(frozen=True)
class Task:
    shard_id: str
    patches: tuple[Patch, ...]
    dropped: dict[str, int] = field(default_factory=dict)
    """Patches of this product left out at planning (counted once, in its first task)."""


@cache
def _index(root: Path, version: str) -> tuple[Patch, ...]:
    return tuple(read_index(root, version=version))  # type: ignore[arg-type]


def products(
    selection: Selection, keep: set[str] | None = None
) -> Iterator[tuple[str, list[Patch], dict[str, int]]]:
    """(product, its patches to build, patches left out by reason), product by product.

    A patch is left out when it is on an ``exclude`` list, has no 19-class label, is in no
    official split, or (with ``keep``) its name is not in ``keep``.
    """
    patches = _index(selection.bigearthnet_root.resolve(), selection.version)
    if not patches:
        raise CloudbenchError(f"no BigEarthNet patches under {selection.bigearthnet_root}")
    if not any(p.split for p in patches):
        raise CloudbenchError(
            f"{selection.bigearthnet_root}: no patch is in an official split; BigEarthNet v1.0 "
            "needs the official train.csv, val.csv and test.csv lists in its root"
        )
    tiles = set(selection.tiles) if selection.tiles is not None else None
    grouped: dict[str, list[Patch]] = {}
    for patch in patches:
        if tiles is None or patch.tile in tiles:
            grouped.setdefault(patch.product, []).append(patch)
    if not grouped:
        raise CloudbenchError(f"no patches of tiles {sorted(tiles or ())} under "
                              f"{selection.bigearthnet_root}")
    for product, members in grouped.items():
        taken: list[Patch] = []
        dropped: dict[str, int] = {}
        for patch in members:
            reason = _left_out(patch, selection.exclude, keep)
            if reason is None:
                taken.append(patch)
            else:
                dropped[reason] = dropped.get(reason, 0) + 1
        yield product, taken, dropped


def _left_out(patch: Patch, exclude: Sequence[str], keep: set[str] | None) -> str | None:
    if keep is not None and patch.name not in keep:
        return "not_in_match"
    if patch.excluded is not None and patch.excluded in exclude:
        return patch.excluded
    if patch.split is None:
        return "no_official_split"
    if not patch.labels:
        return "no_19_class_label"
    return None


def chunks(patches: Sequence[Patch], size: int) -> list[tuple[Patch, ...]]:
    """``patches`` in runs of ``size`` (at least one, possibly empty, run)."""
    return [tuple(patches[i : i + size]) for i in range(0, max(len(patches), 1), size)]


def _matched_ids(path: Path) -> dict[str, int]:
    """The sample ids of the store at ``path``, each with its position there."""
    try:
        ids = store.Store(path).samples["id"]
    except CloudbenchError as err:
        raise CloudbenchError(f"--match {path}: {err}") from None
    return {str(name): k for k, name in enumerate(ids)}


def plan(config: Config, root: Path, **_options: Any) -> list[Task]:
    """Tasks of up to ``patches_per_shard`` patches of one product each; with ``match``, the
    matched store's patches in its order (sample i of both stores is one patch)."""
    keep = _matched_ids(config.match) if config.match is not None else None
    found = list(products(config, None if keep is None else set(keep)))
    if keep is not None:
        found = sorted(((product, sorted(patches, key=lambda p: keep[p.name]), dropped)
                        for product, patches, dropped in found),
                       key=lambda f: min((keep[p.name] for p in f[1]), default=-1))
    tasks = []
    for product, patches, dropped in found:
        for k, part in enumerate(chunks(patches, config.patches_per_shard)):
            tasks.append(Task(f"{product}_{k:04d}", part, dropped if k == 0 else {}))
    return tasks


def sample_rows(
    patches: Sequence[Patch], cloud_masks: np.ndarray, s2_times: Sequence[Any],
    source_ids: Sequence[Sequence[str]],
) -> Any:
    """The sample table of ``patches`` (shared with ``cben``): ids are the S2 patch names; the
    official split and the original S2 time ride along for ``assign_split`` and the reports."""
    table = store.sample_table(
        ids=[p.name for p in patches],
        labels=[list(p.labels) for p in patches],
        cloud_masks=cloud_masks,
        grids=[p.grid for p in patches],
        s1_times=[p.s1_time for p in patches],
        s2_times=list(s2_times),
        source_ids=source_ids,
    )
    table["bigearthnet_split"] = [p.split for p in patches]
    table["original_s2_time"] = [p.s2_time for p in patches]
    return table


def build_shard(config: Config, task: Task) -> Shard:
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in ("s1", *S2_GROUPS)}
    for patch in task.patches:
        for name, array in read_patch(patch).items():
            arrays[name].append(array)
    masks = np.zeros((len(task.patches), 1, PATCH_SIZE, PATCH_SIZE), np.uint8)
    table = sample_rows(task.patches, masks, [p.s2_time for p in task.patches],
                        [[p.name, p.s1_name] for p in task.patches])
    stacked = {name: np.stack(parts) if parts else np.zeros((0,), np.uint16)
               for name, parts in arrays.items()}
    return Shard(table, {**stacked, "cloud_mask": masks}, dropped=dict(task.dropped))


def store_meta(kind: str, s2_product: str, cloud_mask_method: str) -> dict[str, Any]:
    """``dataset.json`` fields of a store on BigEarthNet's grid (shared with ``cben``)."""
    resolution = {"s2": 10, "s2_20m": 20, "s2_60m": 60}
    return {
        "kind": kind,
        "task": "multilabel",
        "classes": list(class_scheme(SCHEME).classes),
        "class_scheme": SCHEME,
        "patch_size": PATCH_SIZE,
        "resolution": 10.0,
        "arrays": {
            "s1": {"bands": list(S1_BANDS), "unit": "dB", "scale": 1.0,
                   "product": "BigEarthNet-S1 patch (Sentinel-1 GRD IW, sigma0)"},
            **{name: {"bands": list(bands), "unit": "reflectance", "scale": 10000.0,
                      "resolution": resolution[name], "product": s2_product}
               for name, bands in S2_GROUPS.items()},
            "cloud_mask": {"bands": ["cloud_type"], "unit": "0 clear, 1 thin, 2 thick",
                           "scale": 1.0, "method": cloud_mask_method},
        },
    }


def metadata(config: Config) -> dict[str, Any]:
    return store_meta(
        "bigearthnet", "BigEarthNet-S2 patch (Sentinel-2 L2A)",
        "none: BigEarthNet leaves out its cloudy patches (official list); every pixel is "
        "recorded as clear, nothing was computed")


def provenance(config: Config) -> dict[str, Any]:
    synthetic = (config.bigearthnet_root / SYNTHETIC_MARKER).exists()
    info: dict[str, Any] = {"source": "bigearthnet", "synthetic": synthetic,
                            "bigearthnet_root": str(config.bigearthnet_root),
                            "match": str(config.match) if config.match else None}
    if synthetic:
        info["note"] = "the BigEarthNet tree was generated from the synthetic world; not real data"
    return info


def assign_split(config: Selection, table: Any) -> np.ndarray:
    """BigEarthNet's official split of every patch."""
    return np.asarray(table["bigearthnet_split"], dtype=object)
