"""SEN12MS Cloud (ESCCS paper): real cloud masks composited onto SEN12MS pairs.

1. **Mask library** (``cloudbench.cloudlib``): s2cloudless on the cloudy L1C images of the cloud
   source (a SEN12MS-CR root or a folder of 13-band GeoTIFFs), thin/thick cloud types and a
   thin-cloud opacity, cut into windows, with the mean reflectance ``C`` of thick cloud per band.
   Built once into ``OUT/cloud_library`` (reusable: pass it as ``--cloud-source`` later).
2. **Samples**: crops of ``crop_size`` from each 256 x 256 SEN12MS patch (``center``, every
   non-overlapping ``grid`` position, or ``random`` seeded positions), labelled by the majority
   class of the IGBP layer (land-cover band 1) through a class scheme with a purity rule, or by a
   user table. Crops with no data (NaN or infinite S1, S2 pixels with every band 0) are dropped.
3. **Clouds**: each sample is clouded with probability ``clouded_fraction``; a clouded sample
   gets a thin window with probability ``thin_share`` (else a thick one) whose cloud fraction lies
   in ``cover_range``, and every S2 band is composited as ``I_clear * (1 - alpha) + alpha * C``.
   The three draws come from a hash of (seed, sample id), so each sample's clouds are independent
   of every other sample and of how the build is split into tasks: builds are deterministic,
   parallel and resumable. Fractions are met in expectation.
4. **Splits**: 80/20 stratified (seeded), or the official SEN12MS hold-out scenes as test.

One shard per SEN12MS scene. S2 stays in SEN12MS's 13 L1C bands; ``s2_clear`` keeps the original.
SEN12MS files carry no acquisition times, so ``s1_time`` and ``s2_time`` are empty (NaT).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from affine import Affine
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rasterio.windows import Window

from cloudbench import store
from cloudbench.build import Shard
from cloudbench.cloudlib import LibraryConfig, MaskLibrary, build_library, is_library
from cloudbench.clouds import composite
from cloudbench.config import class_scheme, load_yaml
from cloudbench.errors import CloudbenchError
from cloudbench.patches import majority_labels
from cloudbench.sources.base import S1_BANDS, S2_L1C_BANDS, SYNTHETIC_MARKER, Grid
from cloudbench.sources.sen12ms import SEN12MS, PatchRef, raster_size, read_raster


class Config(BaseModel):
    """The ``sen12ms-cloud`` recipe (``catalogs/recipes/sen12ms-cloud.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    sen12ms_root: Path
    cloud_source: Path
    library: LibraryConfig = LibraryConfig()
    crop_size: int = Field(64, ge=8, le=256)
    crop: Literal["center", "grid", "random"] = "center"
    crops_per_patch: int = Field(1, ge=1)
    classes: str = "simplified_igbp"
    purity: float = Field(0.5, gt=0, le=1)
    label_table: Path | None = None
    class_cap: int | None = Field(None, ge=1)
    clouded_fraction: float = Field(0.5, ge=0.1, le=1.0)
    cover_range: tuple[float, float] = (0.3, 0.7)
    thin_share: float = Field(0.5, ge=0, le=1)
    split: Literal["random", "holdout"] = "random"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> Config:
        low, high = self.cover_range
        if not 0 <= low <= high <= 1:
            raise ValueError(f"cover_range {self.cover_range} must satisfy 0 <= low <= high <= 1")
        return self


@dataclass(frozen=True)
class Task:
    shard_id: str
    patches: tuple[tuple[PatchRef, Path, Path, Path], ...]
    """(ref, s1 path, s2 path, lc path) of each patch of the scene."""
    library: Path
    incomplete: int
    """Patches of the scene missing one of s1/s2/lc (reported as dropped)."""


def library_path(config: Config, root: Path) -> Path:
    return config.cloud_source if is_library(config.cloud_source) else root / "cloud_library"


def plan(
    config: Config, root: Path, *, workers: int | None = None, scheduler: str | None = None,
    progress: bool = True,
) -> list[Task]:
    """Index SEN12MS, build (or open) the mask library, and make one task per scene."""
    archive = SEN12MS(config.sen12ms_root)
    library = library_path(config, root)
    if library != config.cloud_source:
        build_library(config.cloud_source, library, config.library, workers=workers,
                      scheduler=scheduler, progress=progress)
    _check_library(config, MaskLibrary(library))
    if config.label_table is not None:
        _label_table(config.label_table)  # fail early on a bad table
    scenes, missing = archive.scenes("s1", "s2", "lc")  # (ref, s1, s2, lc) per patch
    return [
        Task(scene, tuple(patches), library, missing.get(scene, 0))
        for scene, patches in sorted(scenes.items())
    ]


def _check_library(config: Config, library: MaskLibrary) -> None:
    shares = (("thin", config.thin_share), ("thick", 1 - config.thin_share))
    needed = [kind for kind, share in shares if share > 0]
    for kind in needed:
        if not len(_candidates(library, kind, config.cover_range)):
            low, high = config.cover_range
            raise CloudbenchError(
                f"the cloud library {library.path} has no {kind} windows with a cloud fraction in "
                f"[{low}, {high}]; widen cover_range (--set cover_range=[0.2,0.8]) or give a "
                "cloud source with more images"
            )


def _candidates(library: MaskLibrary, kind: str, cover: tuple[float, float]) -> np.ndarray:
    windows = library.windows
    chosen = (
        (windows["kind"] == kind)
        & (windows["cloud_fraction"] >= cover[0])
        & (windows["cloud_fraction"] <= cover[1])
    )
    return windows.loc[chosen, "index"].to_numpy(dtype=np.int64)


@cache
def _library(path: Path) -> MaskLibrary:
    return MaskLibrary(path)


@cache
def _label_table(path: Path) -> tuple[tuple[str, ...], dict[str, int]]:
    """(classes, sample id -> class index) of a user label table (CSV with id, class)."""
    try:
        table = pd.read_csv(path, dtype=str)
    except (OSError, ValueError) as err:
        raise CloudbenchError(f"label table {path} is not a readable CSV: {err}") from err
    if not {"id", "class"} <= set(table.columns):
        raise CloudbenchError(f"label table {path} needs the columns 'id' and 'class'")
    twice = table["id"][table["id"].duplicated()]
    if len(twice):
        raise CloudbenchError(f"label table {path}: id {twice.iloc[0]!r} appears twice")
    classes = tuple(sorted(table["class"].unique()))
    index = {name: i for i, name in enumerate(classes)}
    return classes, {i: index[c] for i, c in zip(table["id"], table["class"], strict=True)}


def _classes(config: Config) -> tuple[str, ...]:
    if config.label_table is not None:
        return _label_table(config.label_table)[0]
    return class_scheme(config.classes).classes


def _uniforms(seed: int, sample_id: str) -> np.ndarray:
    """Three independent uniforms in [0, 1) for a sample: cloud or not, thin or thick, window."""
    digest = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=24).digest()
    return np.frombuffer(digest, dtype="<u8") / 2.0**64


def _crop_positions(
    config: Config, ref: PatchRef, height: int, width: int
) -> list[tuple[int, int]]:
    size = config.crop_size
    if config.crop == "center":
        return [((height - size) // 2, (width - size) // 2)]
    if config.crop == "grid":
        return [(r, c) for r in range(0, height - size + 1, size)
                for c in range(0, width - size + 1, size)]
    seed = int.from_bytes(hashlib.blake2b(f"{config.seed}:{ref.id}".encode(),
                                          digest_size=8).digest(), "little")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, height - size + 1, config.crops_per_patch)
    cols = rng.integers(0, width - size + 1, config.crops_per_patch)
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def build_shard(config: Config, task: Task) -> Shard:
    library = _library(task.library)
    classes = _classes(config)
    lookup = class_scheme(config.classes).lookup_table() if config.label_table is None else None
    table_labels = _label_table(config.label_table)[1] if config.label_table is not None else None
    candidates = {kind: _candidates(library, kind, config.cover_range)
                  for kind in ("thin", "thick")}
    cloud_dn = library.cloud_reflectance.astype(np.float32) * 10000
    size = config.crop_size
    seconds = {"read": 0.0, "label": 0.0, "composite": 0.0}
    dropped = {"incomplete triplet": task.incomplete, "nodata": 0, "impure": 0}
    if table_labels is not None:
        dropped["not in label table"] = 0
    rows: dict[str, list[Any]] = {k: [] for k in ("id", "label", "grid", "sources")}
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("s1", "s2", "s2_clear", "cloud_mask")}

    for ref, s1_path, s2_path, lc_path in task.patches:
        started = time.perf_counter()
        positions = _crop_positions(config, ref, *raster_size(s2_path))
        # Read only the rows and columns the crops cover (the whole patch for crop: grid).
        top, left = min(r for r, _ in positions), min(c for _, c in positions)
        bottom = max(r for r, _ in positions) + size
        right = max(c for _, c in positions) + size
        box = Window(left, top, right - left, bottom - top)
        s1, s2, lc = (read_raster(p, box) for p in (s1_path, s2_path, lc_path))
        seconds["read"] += time.perf_counter() - started
        for row, col in positions:
            started = time.perf_counter()
            window = np.s_[:, row - top : row - top + size, col - left : col - left + size]
            s1_crop, s2_crop = s1.array[window], s2.array[window]
            sample_id = f"{ref.id}_r{row}c{col}"
            if not np.isfinite(s1_crop).all() or (s2_crop == 0).all(axis=0).any():
                dropped["nodata"] += 1
                continue
            if table_labels is not None:
                if sample_id not in table_labels:
                    dropped["not in label table"] += 1
                    continue
                label = table_labels[sample_id]
            else:
                assert lookup is not None
                codes = lc.array[window][0]
                label = int(majority_labels(lookup[codes], size, len(classes), config.purity)[0][0])
                if label < 0:
                    dropped["impure"] += 1
                    continue
            seconds["label"] += time.perf_counter() - started

            started = time.perf_counter()
            cloud_mask = np.zeros((1, size, size), dtype=np.uint8)
            cloudy = s2_crop
            sources = [ref.id]
            draw = _uniforms(config.seed, sample_id)
            if draw[0] < config.clouded_fraction:
                pool = candidates["thin" if draw[1] < config.thin_share else "thick"]
                index = int(pool[int(draw[2] * len(pool))])
                cloud_mask[0] = library.masks[index]
                cloudy = composite(s2_crop, library.alpha[index], cloud_dn)
                cloudy = np.round(np.clip(cloudy, 0, 65535)).astype(np.uint16)
                window_row = library.windows.iloc[index]
                sources.append(f"{window_row['source_id']}@r{window_row['row']}c{window_row['col']}")
            seconds["composite"] += time.perf_counter() - started

            transform = s2.transform @ Affine.translation(col - left, row - top)
            rows["id"].append(sample_id)
            rows["label"].append(label)
            rows["grid"].append(Grid(s2.crs, transform, size, size))
            rows["sources"].append(sources)
            arrays["s1"].append(s1_crop)
            arrays["s2"].append(cloudy)
            arrays["s2_clear"].append(s2_crop)
            arrays["cloud_mask"].append(cloud_mask)

    n = len(rows["id"])
    stacked = {
        name: np.stack(parts) if parts
        else np.zeros((0, *_shape(name, size)), store.ARRAY_DTYPES[name])
        for name, parts in arrays.items()
    }
    table = store.sample_table(
        rows["id"], rows["label"], stacked["cloud_mask"], rows["grid"],
        [None] * n, [None] * n, rows["sources"],
    )
    return Shard(table, stacked, dropped=dropped, seconds=seconds)


def _shape(name: str, size: int) -> tuple[int, int, int]:
    bands = {"s1": len(S1_BANDS), "s2": len(S2_L1C_BANDS), "s2_clear": len(S2_L1C_BANDS)}
    return (bands.get(name, 1), size, size)


def metadata(config: Config) -> dict[str, Any]:
    s2 = {"bands": list(S2_L1C_BANDS), "unit": "reflectance", "scale": 10000.0}
    return {
        "kind": "sen12ms-cloud",
        "task": "multiclass",
        "classes": list(_classes(config)),
        "class_scheme": (f"label table {config.label_table.name}" if config.label_table
                         else class_scheme(config.classes).identity),
        "patch_size": config.crop_size,
        "resolution": 10.0,
        "arrays": {
            "s1": {"bands": list(S1_BANDS), "unit": "dB", "scale": 1.0,
                   "product": "SEN12MS Sentinel-1 GRD, sigma0"},
            "s2": {**s2, "product": "SEN12MS Sentinel-2 L1C with composited real clouds"},
            "s2_clear": {**s2, "product": "SEN12MS Sentinel-2 L1C (the cloud-free original)"},
            "cloud_mask": {"bands": ["cloud_type"], "unit": "0 clear, 1 thin, 2 thick",
                           "scale": 1.0, "method": "s2cloudless masks from the cloud library"},
        },
    }


def provenance(config: Config) -> dict[str, Any]:
    synthetic = (config.sen12ms_root / SYNTHETIC_MARKER).exists()
    info: dict[str, Any] = {
        "source": "SEN12MS (Schmitt et al. 2019)",
        "sen12ms_root": str(config.sen12ms_root),
        "cloud_source": str(config.cloud_source),
        "synthetic": synthetic,
    }
    if synthetic:
        info["note"] = "the SEN12MS tree was generated from the synthetic world; not real data"
    if is_library(config.cloud_source):
        info["cloud_library_images"] = len(MaskLibrary(config.cloud_source).source_ids)
    return info


def assign_split(config: Config, table: Any) -> np.ndarray:
    if config.split == "random":
        return store.stratified_split(table["label"], "multiclass", config.test_fraction,
                                      config.seed)
    holdout = set(load_yaml("sen12ms", "holdout_scenes.yaml")["scenes"])
    scenes = table["source_ids"].map(lambda ids: ids[0].rsplit("_p", 1)[0])
    return np.where(scenes.isin(holdout), "test", "train").astype(object)


def select(config: Config) -> tuple[str, Any] | None:
    if config.class_cap is None:
        return None
    cap = config.class_cap

    def keep(table: Any) -> np.ndarray:
        rng = np.random.default_rng(config.seed)
        labels = table["label"].to_numpy(dtype=np.int64)
        chosen = np.zeros(len(table), dtype=bool)
        for cls in np.unique(labels):
            members = np.flatnonzero(labels == cls)
            chosen[rng.permutation(members)[:cap]] = True
        return chosen

    return "over class cap", keep
