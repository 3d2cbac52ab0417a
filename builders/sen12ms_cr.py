"""SEN12MS-CR (Ebel et al. 2020) as a store, for cloud removal: real cloudy / cloud-free pairs.

Each SEN12MS-CR patch is a triplet of co-registered 256 x 256 GeoTIFFs
(``ROIs<id>_<season>_{s1,s2,s2_cloudy}/<mod>_<scene>/…_p<patch>.tif``, read by
:class:`cloudbench.sources.sen12ms.SEN12MSCR`, which matches folders exactly). A sample keeps

* ``s1``: the Sentinel-1 VV, VH backscatter in dB, as stored;
* ``s2``: the **cloudy** Sentinel-2 L1C image (13 bands, uint16 DN), as stored: the input;
* ``s2_clear``: the cloud-free L1C image (13 bands), as stored: the target;
* ``cloud_mask``: s2cloudless on the cloudy image, thin/thick split (0 clear, 1 thin, 2 thick),
  computed on the whole 256 x 256 patch with :func:`cloudbench.cloudlib.image_cloud_mask` (the
  SEN12MS Cloud builder's function: ``cloudbench.clouds.cloud_mask`` at ``clouds.resolution``)
  and then cropped, so a crop's mask does not depend on how the patch is cropped.

``crop``: ``null`` keeps the 256 x 256 patches; a size (e.g. 128) cuts each patch into crops of
that size: ``crop_mode: grid`` (default) every non-overlapping crop from the top-left corner,
row-major (128: 4 per patch; a remainder at the right and bottom edges is left out), or
``crop_mode: center`` the one centre crop. Sample ids are ``<scene>_p<patch>_r<row>c<col>``.

Crops with NaN or infinite S1 pixels, or S2 pixels (cloudy or clear) whose 13 bands are all 0,
are dropped (``nodata``), as are triplets missing a file (``incomplete triplet``) or whose three
files differ in size (``size mismatch``); the build report counts them.

Splits are by scene: the official SEN12MS-CR split (``catalogs/sen12ms/cr_scene_split.yaml``:
10 test and 10 validation scenes from the UnCRtainTS loader, every other scene train) or a
``split_file`` of the same form. The ``scene`` column (``ROIs1868_summer_19``) records each
sample's scene. SEN12MS-CR has no labels: the store says so as a multilabel task with no
classes (every ``label`` is the empty list), which the store and ``CloudBenchDataset`` accept.
Its files carry no acquisition times, so ``s1_time`` and ``s2_time`` are empty (NaT).

One shard per ``shard_patches`` patches of a scene, so the build runs in parallel and resumes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from affine import Affine
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloudbench import store
from cloudbench.build import Shard
from cloudbench.cloudlib import image_cloud_mask
from cloudbench.clouds import CloudMaskConfig
from cloudbench.config import load_yaml
from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import S1_BANDS, S2_L1C_BANDS, SYNTHETIC_MARKER, Grid
from cloudbench.sources.sen12ms import SEN12MSCR, PatchRef, read_raster

PATCH = 256
"""Pixels per side of a SEN12MS-CR patch."""
OFFICIAL_SPLIT = ("sen12ms", "cr_scene_split.yaml")
"""The shipped official scene split, under ``catalogs/``."""


class Config(BaseModel):
    """The ``sen12ms-cr`` recipe (``catalogs/recipes/sen12ms-cr.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    root: Path
    crop: int | None = Field(None, ge=8, le=PATCH)
    crop_mode: Literal["grid", "center"] = "grid"
    clouds: CloudMaskConfig = CloudMaskConfig()
    split_file: Path | None = None
    shard_patches: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Config:
        factor = self.clouds.resolution / 10.0
        if factor < 1 - 1e-9 or not math.isclose(factor, round(factor), abs_tol=1e-6):
            raise ValueError(
                f"clouds.resolution must be a multiple of 10 m, got {self.clouds.resolution:g}"
            )
        return self

    @property
    def size(self) -> int:
        return self.crop or PATCH


@dataclass(frozen=True)
class Task:
    shard_id: str
    patches: tuple[tuple[PatchRef, Path, Path, Path], ...]
    """(ref, s1, s2 clear, s2 cloudy paths) of each patch."""
    incomplete: int
    """Patches of the scene missing one of s1/s2/s2_cloudy (counted as dropped, first shard)."""


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


@cache
def scene_split(path: Path | None = None) -> dict[str, str]:
    """Scene id (``ROIs1158_spring_106``) -> ``test`` or ``val`` from a split file (default: the
    official one); scenes not listed are train. Refuses a scene listed twice."""
    where = str(path) if path is not None else "catalogs/" + "/".join(OFFICIAL_SPLIT)
    if path is None:
        data = load_yaml(*OFFICIAL_SPLIT)
    else:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise CloudbenchError(f"split file {path} is not readable YAML: {err}") from err
    if not isinstance(data, dict) or not {"test", "val"} <= set(data):
        raise CloudbenchError(f"split file {where} needs the lists 'test' and 'val'")
    out: dict[str, str] = {}
    for split in ("test", "val"):
        for scene in data[split] or []:
            scene = str(scene)
            if scene in out:
                raise CloudbenchError(f"split file {where}: scene {scene!r} is listed twice")
            out[scene] = split
    return out


def assign_split(config: Config, table: Any) -> np.ndarray:
    lookup = scene_split(config.split_file)
    return np.array([lookup.get(s, "train") for s in table["scene"]], dtype=object)


# --------------------------------------------------------------------------------------------
# Plan and shards
# --------------------------------------------------------------------------------------------


def plan(
    config: Config, root: Path, *, workers: int | None = None, scheduler: str | None = None,
    progress: bool = True,
) -> list[Task]:
    """Index the SEN12MS-CR tree and make tasks of at most ``shard_patches`` patches per scene."""
    archive = SEN12MSCR(config.root)
    scene_split(config.split_file)  # fail early on a bad split file
    scenes, missing = archive.scenes("s1", "s2", "s2_cloudy")  # (ref, s1, clear, cloudy)
    tasks = []
    step = config.shard_patches
    for scene, patches in sorted(scenes.items(), key=lambda kv: _scene_key(kv[0])):
        chunks = [patches[i : i + step] for i in range(0, len(patches), step)] or [[]]
        for k, chunk in enumerate(chunks):
            tasks.append(Task(f"{scene}-{k:04d}", tuple(chunk), missing.get(scene, 0) * (k == 0)))
    return tasks


def _scene_key(scene: str) -> tuple[str, str, int]:
    roi, season, number = scene.split("_")
    return roi, season, int(number)


def crop_positions(
    config: Config, height: int = PATCH, width: int = PATCH
) -> list[tuple[int, int]]:
    """Upper-left (row, col) of each crop of a patch, row-major."""
    size = config.size
    if config.crop_mode == "center":
        return [((height - size) // 2, (width - size) // 2)]
    return [(r, c) for r in range(0, height - size + 1, size)
            for c in range(0, width - size + 1, size)]


def build_shard(config: Config, task: Task) -> Shard:
    size = config.size
    seconds = {"read": 0.0, "cloud mask": 0.0, "cut": 0.0}
    dropped = {"incomplete triplet": task.incomplete, "size mismatch": 0, "nodata": 0}
    rows: dict[str, list[Any]] = {k: [] for k in ("id", "grid", "sources", "scene")}
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("s1", "s2", "s2_clear", "cloud_mask")}
    for ref, s1_path, clear_path, cloudy_path in task.patches:
        started = time.perf_counter()
        s1, clear, cloudy = (read_raster(p) for p in (s1_path, clear_path, cloudy_path))
        seconds["read"] += time.perf_counter() - started
        shape = clear.array.shape[1:]
        if s1.array.shape[1:] != shape or cloudy.array.shape[1:] != shape:
            dropped["size mismatch"] += 1
            continue
        _check_bands(clear_path, clear.array, len(S2_L1C_BANDS), np.uint16)
        _check_bands(cloudy_path, cloudy.array, len(S2_L1C_BANDS), np.uint16)
        _check_bands(s1_path, s1.array, len(S1_BANDS), np.float32)
        started = time.perf_counter()
        kind, _ = image_cloud_mask(cloudy.array, config.clouds)
        seconds["cloud mask"] += time.perf_counter() - started
        started = time.perf_counter()
        sources = [p.stem for p in (s1_path, clear_path, cloudy_path)]
        for row, col in crop_positions(config, *shape):
            window = np.s_[:, row : row + size, col : col + size]
            s1_crop, clear_crop, cloudy_crop = (r.array[window] for r in (s1, clear, cloudy))
            if (not np.isfinite(s1_crop).all() or (clear_crop == 0).all(axis=0).any()
                    or (cloudy_crop == 0).all(axis=0).any()):
                dropped["nodata"] += 1
                continue
            transform = clear.transform @ Affine.translation(col, row)
            rows["id"].append(f"{ref.id}_r{row}c{col}")
            rows["grid"].append(Grid(clear.crs, transform, size, size))
            rows["sources"].append(sources)
            rows["scene"].append(ref.scene_id)
            arrays["s1"].append(s1_crop)
            arrays["s2"].append(cloudy_crop)
            arrays["s2_clear"].append(clear_crop)
            arrays["cloud_mask"].append(kind[None, row : row + size, col : col + size])
        seconds["cut"] += time.perf_counter() - started

    n = len(rows["id"])
    stacked = {
        name: np.stack(parts) if parts
        else np.zeros((0, *_shape(name, size)), store.ARRAY_DTYPES[name])
        for name, parts in arrays.items()
    }
    table = store.sample_table(
        rows["id"], [[] for _ in range(n)], stacked["cloud_mask"], rows["grid"],
        [None] * n, [None] * n, rows["sources"],
    )
    table["scene"] = pd.Series(rows["scene"], dtype=object)
    return Shard(table, stacked, dropped=dropped, seconds=seconds)


def _check_bands(path: Path, array: np.ndarray, bands: int, dtype: type) -> None:
    if array.shape[0] != bands or array.dtype != dtype:
        raise CloudbenchError(
            f"{path}: {array.shape[0]} bands of {array.dtype}, expected {bands} bands of "
            f"{np.dtype(dtype)}"
        )


def _shape(name: str, size: int) -> tuple[int, int, int]:
    bands = {"s1": len(S1_BANDS), "s2": len(S2_L1C_BANDS), "s2_clear": len(S2_L1C_BANDS)}
    return (bands.get(name, 1), size, size)


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def metadata(config: Config) -> dict[str, Any]:
    s2 = {"bands": list(S2_L1C_BANDS), "unit": "reflectance", "scale": 10000.0}
    clouds = config.clouds
    return {
        "kind": "sen12ms-cr",
        # No labels: the store knows multiclass and multilabel; a multilabel task with no
        # classes (every label the empty list) is how it says "unlabelled".
        "task": "multilabel",
        "classes": [],
        "class_scheme": "none (SEN12MS-CR has no labels)",
        "patch_size": config.size,
        "resolution": 10.0,
        "arrays": {
            "s1": {"bands": list(S1_BANDS), "unit": "dB", "scale": 1.0,
                   "product": "SEN12MS-CR Sentinel-1 GRD, sigma0 (s1)"},
            "s2": {**s2, "product": "SEN12MS-CR Sentinel-2 L1C, the cloudy image (s2_cloudy)"},
            "s2_clear": {**s2, "product": "SEN12MS-CR Sentinel-2 L1C, the cloud-free image (s2)"},
            "cloud_mask": {
                "bands": ["cloud_type"], "unit": "0 clear, 1 thin, 2 thick", "scale": 1.0,
                "method": (f"s2cloudless on the cloudy L1C at {clouds.resolution:g} m "
                           f"(threshold {clouds.threshold}, thick from "
                           f"{clouds.thick_threshold})"),
            },
        },
    }


def provenance(config: Config) -> dict[str, Any]:
    synthetic = (config.root / SYNTHETIC_MARKER).exists()
    split = str(config.split_file) if config.split_file else "official (UnCRtainTS loader)"
    info: dict[str, Any] = {
        "source": "SEN12MS-CR (Ebel et al. 2020)",
        "root": str(config.root),
        "split": split,
        "synthetic": synthetic,
    }
    if synthetic:
        info["note"] = "the SEN12MS-CR tree was generated from the synthetic world; not real data"
    return info
