"""The one on-disk dataset format.

A dataset is a folder::

    dataset.json       schema version, kind, task, classes, arrays (bands, units, scale),
                       builder name and config, provenance (never credentials)
    samples.parquet    GeoParquet, one row per sample (see ``SAMPLE_COLUMNS``)
    s1.npy             (N, C, H, W) float32, backscatter in dB
    s2.npy             (N, C, H, W) uint16, reflectance x 10000 (all S2 bands at the patch's
                       resolution, or only the 10 m bands when the next two are present)
    s2_20m.npy         optional, (N, C, H/2, W/2) uint16: S2 bands at their native 20 m
    s2_60m.npy         optional, (N, C, H/6, W/6) uint16: S2 bands at their native 60 m
    cloud_mask.npy     (N, 1, H, W) uint8, 0 clear / 1 thin / 2 thick
    s2_clear.npy       optional, like s2: the cloud-free image simulated clouds were put on
    build_report.json  what the builder did: counts, dropped patches and why, time per stage,
                       the records the builder kept per task (e.g. which product a tile used)

Builders write one *shard* per task (scene or tile) under ``shards/``: into a temporary folder
that is renamed when complete, so a shard is either wholly there or absent. ``finalize`` then
consolidates the shards, in task order, into the dataset and writes ``dataset.json`` last: a
folder with ``dataset.json`` is complete. A build killed at any moment is re-run and skips the
shards already written, ending with exactly the bytes an uninterrupted build gives.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from cloudbench.errors import StoreError
from cloudbench.sources.base import Grid

SCHEMA_VERSION = 1
TASKS = ("multiclass", "multilabel")
SPLITS = ("train", "val", "test")
"""``val`` is only used by datasets with an official validation split (BigEarthNet)."""
CLOUD_STATES = ("clear", "thin", "thick", "mixed")
ARRAY_DTYPES = {
    "s1": "float32", "s2": "uint16", "cloud_mask": "uint8", "s2_clear": "uint16",
    "s2_20m": "uint16", "s2_60m": "uint16",
}
S2_GROUPS = {"s2_20m": 2, "s2_60m": 6}
"""Optional S2 arrays at a coarser native resolution: name -> pixel-size factor to ``s2``."""
REQUIRED_ARRAYS = ("s1", "s2", "cloud_mask")
SAMPLE_COLUMNS = (
    "id", "split", "label", "cloud_fraction", "thin_fraction", "thick_fraction", "cloud_state",
    "s1_time", "s2_time", "crs", "transform", "source_ids", "geometry",
)
"""Columns of ``samples.parquet``. ``label`` is an int (multiclass) or a list of class indices
(multilabel); ``transform`` the patch's affine (a, b, c, d, e, f) in ``crs``; ``geometry`` the
footprint in EPSG:4326; ``source_ids`` the product ids the sample was cut from."""

CLEAR_BELOW = 0.01
"""A patch with a cloud fraction under this is ``clear``."""
DOMINANCE = 0.8
"""A cloudy patch is ``thin`` (``thick``) when that type makes up at least this share of its
cloudy pixels, otherwise ``mixed``."""


def cloud_state(thin_fraction: np.ndarray, thick_fraction: np.ndarray) -> np.ndarray:
    """Cloud state per patch from its thin and thick fractions (see CLEAR_BELOW, DOMINANCE)."""
    thin = np.asarray(thin_fraction, dtype=np.float64)
    thick = np.asarray(thick_fraction, dtype=np.float64)
    cloudy = thin + thick
    share_thick = np.divide(thick, cloudy, out=np.zeros_like(cloudy), where=cloudy > 0)
    share_thin = np.divide(thin, cloudy, out=np.zeros_like(cloudy), where=cloudy > 0)
    # Compare each type's own share, with a tolerance for rounding: a share of exactly
    # DOMINANCE (e.g. 100 thin and 25 thick pixels) is dominant for thin as it is for thick.
    tol = 1e-9
    return np.select(
        [cloudy < CLEAR_BELOW, share_thick >= DOMINANCE - tol, share_thin >= DOMINANCE - tol],
        ["clear", "thick", "thin"],
        "mixed",
    ).astype(object)


def sample_table(
    ids: Sequence[str],
    labels: Sequence[Any],
    cloud_masks: np.ndarray,
    grids: Sequence[Grid],
    s1_times: Sequence[dt.datetime | None],
    s2_times: Sequence[dt.datetime | None],
    source_ids: Sequence[Sequence[str]],
) -> gpd.GeoDataFrame:
    """The rows of ``samples.parquet`` for a batch of patches.

    Cloud fractions and states are derived from ``cloud_masks`` (N, 1, H, W) or (N, H, W).
    ``split`` is left empty: ``finalize`` assigns it. Unknown times are None (NaT).
    """
    masks = np.asarray(cloud_masks)
    # No ids (a task whose patches were all dropped): an empty table, not a reshape error.
    masks = masks.reshape(len(ids), -1) if len(ids) else masks.reshape(0, 0)
    thin = (masks == 1).mean(axis=1) if masks.shape[1] else np.zeros(len(ids))
    thick = (masks == 2).mean(axis=1) if masks.shape[1] else np.zeros(len(ids))
    frame = pd.DataFrame(
        {
            "id": pd.Series(list(ids), dtype=object),
            "split": pd.Series([""] * len(ids), dtype=object),
            "label": pd.Series(list(labels), dtype=object),
            "cloud_fraction": (thin + thick).astype(np.float64),
            "thin_fraction": thin.astype(np.float64),
            "thick_fraction": thick.astype(np.float64),
            "cloud_state": cloud_state(thin, thick),
            "s1_time": pd.to_datetime(list(s1_times), utc=True),
            "s2_time": pd.to_datetime(list(s2_times), utc=True),
            "crs": pd.Series([g.crs.to_string() for g in grids], dtype=object),
            "transform": pd.Series([list(g.transform)[:6] for g in grids], dtype=object),
            "source_ids": pd.Series([list(s) for s in source_ids], dtype=object),
        }
    )
    return gpd.GeoDataFrame(frame, geometry=[g.footprint() for g in grids], crs="EPSG:4326")


# --------------------------------------------------------------------------------------------
# Writing: shards, then finalize
# --------------------------------------------------------------------------------------------


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file under a temporary name, then rename it into place."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(state: Any, path: Path) -> None:
    """``torch.save`` under a temporary name beside ``path``, flushed to disk, then renamed into
    place: a crash leaves the old file or the new one, never a partial one."""
    import torch  # the store itself needs no torch

    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def config_hash(config: Mapping[str, Any]) -> str:
    """A stable hash of a JSON-able config, used to refuse resuming a different build."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shards_dir(root: Path) -> Path:
    return Path(root) / "shards"


def shard_done(root: Path, shard_id: str) -> bool:
    return (shards_dir(root) / shard_id / "samples.parquet").exists()


def write_shard(
    root: Path,
    shard_id: str,
    table: gpd.GeoDataFrame,
    arrays: Mapping[str, np.ndarray],
    report: Mapping[str, Any] | None = None,
) -> None:
    """Write one shard atomically: a temporary folder renamed into place when complete.

    ``arrays`` maps array names (see ``ARRAY_DTYPES``) to (n, C, H, W) arrays with one row per
    row of ``table``. ``report`` (JSON-able) is merged into the build report: ``dropped``
    (reason -> count) and ``seconds`` (stage -> seconds) are summed, ``records`` (a list of
    JSON objects, e.g. which product a tile used) are concatenated in task order.
    """
    for name, array in arrays.items():
        if name not in ARRAY_DTYPES:
            raise ValueError(f"unknown array {name!r}; allowed: {', '.join(ARRAY_DTYPES)}")
        if len(array) != len(table):
            raise ValueError(f"array {name!r} has {len(array)} rows, the table {len(table)}")
    final = shards_dir(root) / shard_id
    tmp = shards_dir(root) / f".tmp-{shard_id}-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(array, dtype=ARRAY_DTYPES[name]))
    (tmp / "report.json").write_text(json.dumps(dict(report or {}), default=str))
    table.to_parquet(tmp / "samples.parquet")  # written last: its presence marks a complete shard
    try:
        os.rename(tmp, final)
    except OSError:
        # Another worker finished the same shard first; both wrote identical bytes.
        shutil.rmtree(tmp, ignore_errors=True)
        if not shard_done(root, shard_id):
            raise


def start_build(root: Path, builder: str, config: Mapping[str, Any]) -> bool:
    """Prepare ``root`` for a build. Returns False when the same build is already complete.

    Refuses (with a clear error) to resume into a folder that holds a different build.
    """
    root = Path(root)
    digest = config_hash({"builder": builder, "config": config})
    meta_path = root / "dataset.json"
    if meta_path.exists():
        try:
            done = json.loads(meta_path.read_text()).get("builder", {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise StoreError(f"{meta_path} is damaged; delete {root} and build again") from err
        if config_hash({"builder": done.get("name"), "config": done.get("config")}) == digest:
            # A build killed after writing dataset.json but before removing its shards.
            shutil.rmtree(shards_dir(root), ignore_errors=True)
            return False
        raise StoreError(
            f"{root} already holds a different dataset (built by {done.get('name')!r} with "
            "another config); choose another --out or delete the folder"
        )
    manifest = shards_dir(root) / "build.json"
    if manifest.exists():
        if json.loads(manifest.read_text()).get("hash") != digest:
            raise StoreError(
                f"{root} holds an unfinished build with another config; re-run it with the same "
                "settings to resume, or choose another --out"
            )
        return True
    shards_dir(root).mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        manifest, json.dumps({"builder": builder, "config": config, "hash": digest}, default=str)
    )
    return True


def stratified_split(
    labels: Sequence[Any], task: str, test_fraction: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Seeded train/test split: stratified by class for multiclass, plain random for multilabel.

    Within each class, ``round(test_fraction * n)`` samples chosen at random go to ``test``.
    """
    n = len(labels)
    rng = np.random.default_rng(seed)
    split = np.full(n, "train", dtype=object)
    if task == "multiclass":
        codes = np.asarray(labels, dtype=np.int64)
        for cls in np.unique(codes):
            members = np.flatnonzero(codes == cls)
            chosen = rng.permutation(members)[: round(test_fraction * len(members))]
            split[chosen] = "test"
    else:
        split[rng.permutation(n)[: round(test_fraction * n)]] = "test"
    return split


def finalize(
    root: Path,
    shard_ids: Sequence[str],
    meta: Mapping[str, Any],
    assign_split: Callable[[gpd.GeoDataFrame], np.ndarray],
    select: tuple[str, Callable[[gpd.GeoDataFrame], np.ndarray]] | None = None,
    report: Callable[[list[dict[str, Any]], gpd.GeoDataFrame], dict[str, Any]] | None = None,
) -> Path:
    """Consolidate the shards (in the given order) into the dataset, then remove them.

    ``meta`` holds the ``dataset.json`` fields a builder knows (kind, task, classes, patch_size,
    resolution, arrays, builder, provenance); ``num_samples`` and ``schema_version`` are added.
    ``select = (reason, keep)``: only rows where ``keep(table)`` is True are kept (decisions that
    need every sample, such as per-class caps); the others count as dropped for ``reason``.
    Splits come from ``assign_split(table)``. ``report(records, table)`` adds the builder's own
    fields to ``build_report.json`` (from the shards' records and the final table). Every file is
    written under a temporary name and renamed; ``dataset.json`` is last.
    """
    root = Path(root)
    missing = [s for s in shard_ids if not shard_done(root, s)]
    if missing:
        raise StoreError(f"cannot finalize {root}: {len(missing)} shards missing ({missing[:3]}…)")
    tables = [gpd.read_parquet(shards_dir(root) / s / "samples.parquet") for s in shard_ids]
    non_empty = [t for t in tables if len(t)]
    if not non_empty:
        # No build_report.json is written for an empty build: say why here.
        dropped, _ = _sum_reports(root, shard_ids)
        why = ", ".join(f"{reason} {count}" for reason, count in dropped.items()) or "none"
        raise StoreError(f"the build of {root} produced no samples from {len(shard_ids)} "
                         f"tasks (patches dropped: {why})")
    table = pd.concat(non_empty, ignore_index=True)
    table = gpd.GeoDataFrame(table, geometry="geometry", crs="EPSG:4326")
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise StoreError(f"duplicate sample ids across shards, e.g. {duplicated.iloc[0]!r}")
    keep = np.ones(len(table), dtype=bool)
    extra_dropped: dict[str, int] = {}
    if select is not None:
        reason, choose = select
        keep = np.asarray(choose(table), dtype=bool)
        extra_dropped[reason] = int((~keep).sum())
        table = table[keep].reset_index(drop=True)
    table["split"] = assign_split(table)
    bad = set(table["split"]) - set(SPLITS)
    if bad:
        raise StoreError(f"unknown split values {sorted(bad)}; allowed: {', '.join(SPLITS)}")

    arrays = dict(meta["arrays"])
    for name in arrays:
        first = next(np.load(shards_dir(root) / s / f"{name}.npy", mmap_mode="r")
                     for s, t in zip(shard_ids, tables, strict=True) if len(t))
        shape = (len(table), *first.shape[1:])
        tmp = root / f".tmp-{name}.npy"
        out = open_memmap(tmp, mode="w+", dtype=ARRAY_DTYPES[name], shape=shape)
        offset = start = 0
        for shard, part in zip(shard_ids, tables, strict=True):
            if not len(part):
                continue
            rows = keep[start : start + len(part)]
            start += len(part)
            block = np.load(shards_dir(root) / shard / f"{name}.npy", mmap_mode="r")
            block = block if rows.all() else block[rows]
            out[offset : offset + len(block)] = block
            offset += len(block)
        out.flush()
        del out
        os.replace(tmp, root / f"{name}.npy")
        arrays[name] = {**arrays[name], "dtype": ARRAY_DTYPES[name], "shape": list(shape)}

    tmp = root / ".tmp-samples.parquet"
    table.to_parquet(tmp)
    os.replace(tmp, root / "samples.parquet")
    atomic_write_text(root / "build_report.json", json.dumps(
        _build_report(root, shard_ids, table, meta, extra_dropped, report), indent=2,
        default=str))
    full = {**meta, "schema_version": SCHEMA_VERSION, "num_samples": len(table), "arrays": arrays}
    atomic_write_text(root / "dataset.json", json.dumps(full, indent=2, default=str))
    shutil.rmtree(shards_dir(root))
    return root


def _shard_reports(root: Path, shard_ids: Sequence[str]) -> list[dict[str, Any]]:
    return [json.loads((shards_dir(root) / s / "report.json").read_text()) for s in shard_ids]


def _sum_reports(
    root: Path, shard_ids: Sequence[str]
) -> tuple[dict[str, int], dict[str, float]]:
    dropped: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for part in _shard_reports(root, shard_ids):
        for reason, count in part.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + int(count)
        for stage, secs in part.get("seconds", {}).items():
            seconds[stage] = seconds.get(stage, 0.0) + float(secs)
    return dropped, seconds


def _build_report(
    root: Path,
    shard_ids: Sequence[str],
    table: pd.DataFrame,
    meta: Mapping[str, Any],
    extra_dropped: Mapping[str, int],
    report: Callable[[list[dict[str, Any]], gpd.GeoDataFrame], dict[str, Any]] | None,
) -> dict[str, Any]:
    dropped, seconds = _sum_reports(root, shard_ids)
    dropped.update(extra_dropped)
    records = [r for part in _shard_reports(root, shard_ids) for r in part.get("records", [])]
    out = {
        "samples": len(table),
        "shards": len(shard_ids),
        **summarize(table, meta["classes"], meta["task"]),
        "dropped": dropped,
        "seconds_per_stage": {k: round(v, 3) for k, v in seconds.items()},
    }
    if records:
        out["records"] = records
    if report is not None:
        out.update(report(records, gpd.GeoDataFrame(table)))
    return out


def summarize(table: pd.DataFrame, classes: Sequence[str], task: str) -> dict[str, Any]:
    """Counts per split, per class (per split) and per cloud state (per split), and the mean
    cloud fraction of the samples (0 to 1)."""
    per_class: dict[str, dict[str, int]] = {}
    per_state: dict[str, dict[str, int]] = {}
    # ``val`` only where the dataset has one: most stores are train/test.
    splits = [s for s in SPLITS if s != "val" or (table["split"] == "val").any()]
    for split in splits:
        part = table[table["split"] == split]
        if task == "multiclass":
            counts = np.bincount(part["label"].astype(int), minlength=len(classes))
        else:
            counts = np.zeros(len(classes), dtype=int)
            for labels in part["label"]:
                counts[np.asarray(labels, dtype=int)] += 1
        per_class[split] = {c: int(n) for c, n in zip(classes, counts, strict=True)}
        per_state[split] = {s: int((part["cloud_state"] == s).sum()) for s in CLOUD_STATES}
    return {
        "per_split": {s: int((table["split"] == s).sum()) for s in splits},
        "per_class": per_class,
        "per_cloud_state": per_state,
        "mean_cloud_fraction": round(float(table["cloud_fraction"].mean()), 4) if len(table)
        else 0.0,
    }


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayInfo:
    name: str
    dtype: str
    bands: tuple[str, ...]
    unit: str
    scale: float
    shape: tuple[int, ...]


@lru_cache(maxsize=4)
def _read_samples(path: str, stamp: tuple[int, int, int]) -> gpd.GeoDataFrame:
    """The GeoParquet table at ``path``, read once per version of the file (``stamp``: its inode,
    size and modification time; tables are written by rename, so a rewrite is a new stamp). A
    run opens its stores many times, and each read parses the table's CRS anew (25 ms)."""
    return gpd.read_parquet(path)


class Store:
    """A complete dataset folder, validated on open. Arrays are memory-mapped, never loaded."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._mmaps: dict[str, np.ndarray] = {}
        if not self.root.is_dir():
            raise StoreError(f"no dataset folder at {self.root}")
        meta_path = self.root / "dataset.json"
        if not meta_path.exists():
            hint = " (an unfinished build: re-run it)" if shards_dir(self.root).exists() else ""
            raise StoreError(f"{meta_path} is missing: not a cloudbench dataset{hint}")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StoreError(f"{meta_path} is not valid JSON: {err}") from err
        if not isinstance(self.meta, dict):
            raise StoreError(f"{meta_path} is not a JSON object")
        self._validate_meta(meta_path)
        self.arrays = {
            name: ArrayInfo(
                name=name,
                dtype=spec["dtype"],
                bands=tuple(spec.get("bands", ())),
                unit=spec.get("unit", ""),
                scale=float(spec.get("scale", 1.0)),
                shape=tuple(spec["shape"]),
            )
            for name, spec in self.meta["arrays"].items()
        }
        for info in self.arrays.values():
            self._check_array(info)
        size = self.arrays["s2"].shape[-2:]
        for name, factor in S2_GROUPS.items():
            if name in self.arrays and self.arrays[name].shape[-2:] != tuple(
                n // factor for n in size
            ):
                raise StoreError(
                    f"{self.root / name}.npy: {list(self.arrays[name].shape[-2:])} pixels, "
                    f"expected 1/{factor} of s2's {list(size)}"
                )
        self.samples  # noqa: B018  (validate the table on open)

    def _validate_meta(self, path: Path) -> None:
        meta = self.meta
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {version!r}, this cloudbench reads version "
                f"{SCHEMA_VERSION}; rebuild the dataset with this version"
            )
        for key in ("kind", "task", "classes", "arrays", "num_samples", "patch_size"):
            if key not in meta:
                raise StoreError(f"{path}: field {key!r} is missing")
        if meta["task"] not in TASKS:
            raise StoreError(f"{path}: task {meta['task']!r} is not one of {', '.join(TASKS)}")
        for name in REQUIRED_ARRAYS:
            if name not in meta["arrays"]:
                raise StoreError(f"{path}: array {name!r} is not declared")

    def _check_array(self, info: ArrayInfo) -> None:
        path = self.root / f"{info.name}.npy"
        if not path.exists():
            raise StoreError(f"{path} is missing")
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as err:
            raise StoreError(f"{path} is not a readable .npy file: {err}") from err
        if array.shape != info.shape or array.dtype != np.dtype(info.dtype):
            raise StoreError(
                f"{path}: {array.dtype}{list(array.shape)}, dataset.json says "
                f"{info.dtype}{list(info.shape)}"
            )
        if info.shape[0] != self.meta["num_samples"]:
            raise StoreError(f"{path}: {info.shape[0]} rows, expected {self.meta['num_samples']}")

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    @cached_property
    def samples(self) -> gpd.GeoDataFrame:
        path = self.root / "samples.parquet"
        if not path.exists():
            raise StoreError(f"{path} is missing")
        try:
            stat = path.stat()
            table = _read_samples(str(path), (stat.st_ino, stat.st_size, stat.st_mtime_ns)).copy()
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise StoreError(f"{path} is not a readable GeoParquet file: {err}") from err
        missing = [c for c in SAMPLE_COLUMNS if c not in table.columns]
        if missing:
            raise StoreError(f"{path}: columns {missing} are missing")
        if len(table) != len(self):
            raise StoreError(f"{path}: {len(table)} rows, dataset.json says {len(self)}")
        return table

    def array(self, name: str) -> np.ndarray:
        """The (N, C, H, W) array, memory-mapped read-only (opened once per Store)."""
        if name not in self.arrays:
            raise StoreError(
                f"{self.root} has no array {name!r}; it has {', '.join(self.arrays)}"
            )
        if name not in self._mmaps:
            self._mmaps[name] = np.load(self.root / f"{name}.npy", mmap_mode="r")
        return self._mmaps[name]

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its data: worker processes re-open the files instead.
        return {**self.__dict__, "_mmaps": {}}

    def grid(self, index: int) -> Grid:
        """The georeferencing of sample ``index``."""
        from affine import Affine
        from rasterio.crs import CRS

        row = self.samples.iloc[index]
        size = self.arrays["s2"].shape[-1]
        return Grid(CRS.from_user_input(row["crs"]), Affine(*row["transform"]), size, size)
