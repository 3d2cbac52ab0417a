"""Speed benchmarks: ``cloudbench perf loader`` and ``cloudbench perf train``.

The loader benchmark holds the same patches twice, in a cloudbench store and as GeoTIFFs that a
TorchGeo dataset reads, then reads every sample through the same
:class:`torch.utils.data.DataLoader` from both and reports samples per second and their ratio.
Two pairs: ``sen12ms`` (the default) writes random patches into a store and as per-sample
GeoTIFFs in the layout of TorchGeo's :class:`~torchgeo.datasets.SEN12MS` (SEN12MS's own dtypes
and bands: S1 float32 VV/VH, S2 uint16 13 L1C bands, land cover uint8 4 bands);
``bigearthnet`` writes a synthetic BigEarthNet v1.0 tree (per-band GeoTIFFs at 10, 20 and 60 m)
that TorchGeo's :class:`~torchgeo.datasets.BigEarthNet` reads, and builds the store from it
with the real ``bigearthnet`` recipe. Building is timed separately and never counted.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cloudbench import store
from cloudbench.errors import CloudbenchError, StoreError
from cloudbench.export import write_geotiff
from cloudbench.harness.engine import (
    Batch,
    Engine,
    TrainConfig,
    batch_bounds,
    build_optimizer,
    describe_device,
    end_process_group,
    resolve_amp,
)
from cloudbench.models.classifiers import googlenet
from cloudbench.sources.base import S1_BANDS, S2_L1C_BANDS, Grid
from cloudbench.sources.bigearthnet import PATCH_SIZE as BEN_PATCH_SIZE
from cloudbench.sources.synthetic import SyntheticWorld

PATCH_SIZE = 64
NUM_CLASSES = 10
SHARD_SIZE = 1000
SPLIT = "train"
"""The one split every benchmark sample is put in, on both sides."""
SEASON = "ROIs1158_spring"
SEN12MS_SEASONS = ("ROIs1158_spring", "ROIs1868_summer", "ROIs1970_fall", "ROIs2017_winter")
"""SEN12MS's season folders: TorchGeo checks that all four exist; only the first is filled."""
LC_BANDS = ("IGBP", "LCCS_LC", "LCCS_LU", "LCCS_SH")
CRS = "EPSG:32649"
ORIGIN = (645000.0, 3210000.0)
"""Upper-left corner of the benchmark patches, which tile a square in CRS at 10 m."""
LOADER_DATASETS = ("sen12ms", "bigearthnet")
"""The pairs ``cloudbench perf loader --dataset`` compares (see :func:`loader_benchmark`)."""
TORCHGEO_TITLES = {"sen12ms": "TorchGeo SEN12MS", "bigearthnet": "TorchGeo BigEarthNet"}


@dataclass(frozen=True)
class LoaderPair:
    """The two datasets one loader benchmark times, holding the same patches."""

    ours: Dataset
    theirs: Dataset
    patch_size: int
    bands: int
    """Bands per sample, S1 and S2 together (the same on both sides)."""
    build_seconds: dict[str, float]
    """Time spent writing the ``store`` and the ``geotiff`` side (not counted in the timing)."""


def loader_benchmark(
    workdir: str | Path,
    samples: int = 10000,
    batch_size: int = 64,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    dataset: str = "sen12ms",
) -> dict[str, Any]:
    """Time our store against a TorchGeo GeoTIFF dataset holding the same patches.

    ``dataset`` picks the pair: ``sen12ms`` (:func:`sen12ms_pair`) or ``bigearthnet``
    (:func:`bigearthnet_pair`). Its inputs are built in ``workdir`` on the first run (and
    resumed when a run was killed) and reused afterwards. Both datasets are read in order,
    whole, through a ``DataLoader(batch_size, num_workers, shuffle=False)``; the first batch
    (worker start-up, first file opens) is excluded from the timing.
    """
    if dataset not in LOADER_DATASETS:
        raise CloudbenchError(
            f"unknown loader benchmark dataset {dataset!r}; choose one of "
            f"{', '.join(LOADER_DATASETS)}"
        )
    if samples <= batch_size:
        raise CloudbenchError(
            f"--samples ({samples}) must exceed --batch-size ({batch_size}): the first batch is "
            "not timed"
        )
    make_pair = sen12ms_pair if dataset == "sen12ms" else bigearthnet_pair
    pair = make_pair(Path(workdir), samples, seed, progress)
    settings = {"dataset": dataset, "samples": samples, "batch_size": batch_size,
                "num_workers": num_workers, "seed": seed, "patch_size": pair.patch_size,
                "bands": pair.bands}
    result: dict[str, Any] = {"settings": settings}
    for name, data in (("torchgeo", pair.theirs), ("cloudbench", pair.ours)):
        result[name] = time_loader(data, batch_size, num_workers, name, progress)
    result["ratio"] = result["cloudbench"]["samples_per_s"] / result["torchgeo"]["samples_per_s"]
    result["build_seconds"] = pair.build_seconds
    return result


def sen12ms_pair(workdir: Path, samples: int, seed: int, progress: bool = True) -> LoaderPair:
    """``CloudBenchDataset`` on ``workdir/store`` and TorchGeo's ``SEN12MS`` on
    ``workdir/sen12ms``: the same random 64x64 patches, 15 bands (:func:`build_store`,
    :func:`build_sen12ms`)."""
    from torchgeo.datasets import SEN12MS

    from cloudbench.datasets import CloudBenchDataset

    started = time.perf_counter()
    build_store(workdir / "store", samples, seed, progress)
    store_seconds = time.perf_counter() - started
    started = time.perf_counter()
    build_sen12ms(workdir / "store", workdir / "sen12ms", progress)
    geotiff_seconds = time.perf_counter() - started

    ours = CloudBenchDataset(workdir / "store", split=SPLIT)
    theirs = SEN12MS(workdir / "sen12ms", split="train", bands=SEN12MS.BAND_SETS["all"],
                     checksum=False)
    return LoaderPair(ours, theirs, PATCH_SIZE, len(S1_BANDS) + len(S2_L1C_BANDS),
                      {"store": store_seconds, "geotiff": geotiff_seconds})


def time_loader(
    dataset: Dataset, batch_size: int, num_workers: int, name: str = "", progress: bool = False
) -> dict[str, float]:
    """Read ``dataset`` whole through a DataLoader; time all batches but the first.

    The main process runs torch single-threaded meanwhile, as DataLoader workers do: loading is
    per-sample work, and intra-op threads only contend for the cores on small tensors.
    Returns the samples seen, the samples and seconds timed, and samples per second. The
    dataset must hold more than one batch.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batches = iter(tqdm(loader, desc=name, unit="batch", disable=not progress))
        seen = _batch_len(next(batches))
        started = time.perf_counter()
        timed = sum(_batch_len(batch) for batch in batches)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    return {"samples": seen + timed, "timed_samples": timed, "seconds": seconds,
            "samples_per_s": timed / seconds}


def _batch_len(batch: Mapping[str, Any]) -> int:
    return len(next(iter(batch.values())))


def format_benchmark(result: Mapping[str, Any]) -> str:
    """A short report of :func:`loader_benchmark`'s result."""
    s = result["settings"]
    lines = [
        f"loader benchmark ({s['dataset']}): {s['samples']} samples of "
        f"{s['patch_size']}x{s['patch_size']} px, {s['bands']} bands (S1 + S2), batch size "
        f"{s['batch_size']}, {s['num_workers']} workers",
    ]
    titles = (("cloudbench", "cloudbench store"), ("torchgeo", TORCHGEO_TITLES[s["dataset"]]))
    for name, title in titles:
        r = result[name]
        lines.append(f"  {title:<22}{r['samples_per_s']:>10,.0f} samples/s "
                     f"({r['timed_samples']} in {r['seconds']:.2f} s)")
    lines.append(f"  ratio: cloudbench is {result['ratio']:.1f}x TorchGeo")
    b = result["build_seconds"]
    lines.append(f"  (build, not timed: store {b['store']:.1f} s, GeoTIFFs {b['geotiff']:.1f} s)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The two copies of the benchmark data
# --------------------------------------------------------------------------------------------


def build_store(root: Path, samples: int, seed: int, progress: bool = True) -> Path:
    """A store of ``samples`` random patches, all in :data:`SPLIT`; reused when complete.

    Written through the real store writer in shards of :data:`SHARD_SIZE`, each from its own
    seeded generator, so a killed build resumes and ends with the same bytes.
    """
    config = {"samples": samples, "seed": seed, "patch_size": PATCH_SIZE}
    try:
        if not store.start_build(root, "perf-loader", config):
            return root
    except StoreError as err:
        raise CloudbenchError(
            f"{root} holds a benchmark store of other settings ({err}); use another --workdir "
            "or delete it"
        ) from err
    side = math.ceil(math.sqrt(samples))
    world = Grid.from_bounds(CRS, *ORIGIN, side * PATCH_SIZE, side * PATCH_SIZE, 10.0)
    starts = range(0, samples, SHARD_SIZE)
    shard_ids = [f"shard{k:04d}" for k in range(len(starts))]
    for shard_id, start in tqdm(list(zip(shard_ids, starts, strict=True)), desc="store",
                                unit="shard", disable=not progress):
        if not store.shard_done(root, shard_id):
            table, arrays = _random_shard(world, range(start, min(samples, start + SHARD_SIZE)),
                                          seed)
            store.write_shard(root, shard_id, table, arrays)
    meta = {
        "kind": "perf",
        "task": "multiclass",
        "classes": [f"class {k}" for k in range(NUM_CLASSES)],
        "patch_size": PATCH_SIZE,
        "resolution": 10.0,
        "arrays": {
            "s1": {"bands": list(S1_BANDS), "unit": "dB", "scale": 1.0},
            "s2": {"bands": list(S2_L1C_BANDS), "unit": "reflectance", "scale": 10000.0},
            "cloud_mask": {"bands": ["cloud_type"], "unit": "class", "scale": 1.0},
        },
        "builder": {"name": "perf-loader", "config": config},
        "provenance": {"synthetic": True, "purpose": "cloudbench perf loader"},
    }
    store.finalize(root, shard_ids, meta, lambda table: np.full(len(table), SPLIT, dtype=object))
    return root


def _random_shard(
    world: Grid, indices: range, seed: int
) -> tuple[gpd.GeoDataFrame, dict[str, np.ndarray]]:
    """The table and arrays of the samples ``indices``, random from (seed, first index)."""
    rng = np.random.default_rng([seed, indices.start])
    n, size = len(indices), PATCH_SIZE
    side = world.width // size
    grids = [world.window(i // side * size, i % side * size, size, size) for i in indices]
    arrays: dict[str, np.ndarray] = {
        "s1": rng.normal(-12.0, 4.0, (n, len(S1_BANDS), size, size)).astype(np.float32),
        "s2": rng.integers(0, 10000, (n, len(S2_L1C_BANDS), size, size), dtype=np.uint16),
        "cloud_mask": rng.integers(0, 3, (n, 1, size, size), dtype=np.uint8),
    }
    when = dt.datetime(2018, 7, 1, tzinfo=dt.UTC)
    table = store.sample_table(
        [f"p{i:05d}" for i in indices], rng.integers(0, NUM_CLASSES, n).tolist(),
        arrays["cloud_mask"], grids, [when] * n, [when] * n, [["perf-S2", "perf-S1"]] * n,
    )
    return table, arrays


def sen12ms_id(scene: int, patch: int) -> str:
    """A SEN12MS file id as listed in ``train_list.txt`` (TorchGeo swaps in s1/s2/lc)."""
    return f"{SEASON}_lc_{scene}_p{patch}.tif"


def build_sen12ms(store_root: Path, root: Path, progress: bool = True) -> Path:
    """The store's samples as SEN12MS GeoTIFFs under ``root``, in store order; reused when complete.

    Sample ``i`` becomes patch ``i`` of scene ``i // SHARD_SIZE + 1``; its land cover is the
    sample's class as IGBP code ``label + 1`` over the whole patch (band 1; the LCCS bands are
    0). Files are uncompressed like SEN12MS's. ``source.json`` names the store the tree was made
    from (a tree of another store is deleted); files already there are complete and kept; and
    ``train_list.txt``, listing every patch, is written last.
    """
    source = (store_root / "dataset.json").read_text()
    marker = root / "source.json"
    if marker.exists() and marker.read_text() == source:
        if (root / "train_list.txt").exists():
            return root
    else:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        marker.write_text(source)
    for season in SEN12MS_SEASONS:
        (root / season).mkdir(exist_ok=True)
    dataset = store.Store(store_root)
    table = dataset.samples
    s1, s2 = dataset.array("s1"), dataset.array("s2")
    for i, crs, transform, label in tqdm(
        zip(range(len(table)), table["crs"], table["transform"], table["label"], strict=True),
        total=len(table), desc="GeoTIFFs", unit="sample", disable=not progress,
    ):
        scene = i // SHARD_SIZE + 1
        lc = np.zeros((len(LC_BANDS), PATCH_SIZE, PATCH_SIZE), dtype=np.uint8)
        lc[0] = int(label) + 1
        for kind, image, bands in (("s1", s1[i], S1_BANDS), ("s2", s2[i], S2_L1C_BANDS),
                                   ("lc", lc, LC_BANDS)):
            path = root / SEASON / f"{kind}_{scene}" / f"{SEASON}_{kind}_{scene}_p{i}.tif"
            if not path.exists():
                path.parent.mkdir(exist_ok=True)
                write_geotiff(path, image, crs, transform, bands, compress=None)
    (root / "test_list.txt").write_text("")
    _write_lines(root / "train_list.txt",
                 (sen12ms_id(i // SHARD_SIZE + 1, i) for i in range(len(table))))
    return root


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    _write_text(path, "".join(f"{line}\n" for line in lines))


def _write_text(path: Path, text: str) -> None:
    """Write ``path`` under a temporary name, then rename it: never half-written."""
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


BEN_SIDE = 10
"""Patches per side of one product of the BigEarthNet tree: 100 patches, 10 x 10 cells of its
world (so the cells' column and row numbers, and so the patch names, sort as numbers)."""
BEN_TIME = dt.datetime(2017, 6, 13, 10, 10, 31, tzinfo=dt.UTC)
"""The sensing time of product 0; product ``k`` was sensed ``k`` days later."""
BEN_MARKER = "perf.json"
"""The BigEarthNet tree's settings and how many products are written, in its root."""


def bigearthnet_pair(workdir: Path, samples: int, seed: int, progress: bool = True) -> LoaderPair:
    """``BigEarthNetClean`` and TorchGeo's ``BigEarthNet`` (v1.0) over the same patches.

    ``workdir/bigearthnet`` is a synthetic BigEarthNet v1.0 tree (:func:`build_bigearthnet`);
    ``workdir/bigearthnet-store`` is what the real ``bigearthnet`` recipe builds from it with
    one worker (resumed by the build itself; removed when the tree is written anew). TorchGeo
    reads ``bands="all"`` with 19 classes, ours its 14 default bands
    (``BigEarthNetClean.EARLY_FUSION_BANDS``): the same 14 bands, 19-class multi-hot labels.
    """
    from torchgeo.datasets import BigEarthNet

    from cloudbench.build import run_build
    from cloudbench.builders import bigearthnet as recipe
    from cloudbench.config import load_recipe
    from cloudbench.datasets import BigEarthNetClean

    tree, out = workdir / "bigearthnet", workdir / "bigearthnet-store"
    if not (tree / BEN_MARKER).exists():
        shutil.rmtree(out, ignore_errors=True)  # a store of an earlier tree
    started = time.perf_counter()
    build_bigearthnet(tree, samples, seed, progress)
    geotiff_seconds = time.perf_counter() - started
    config = load_recipe(recipe.Config, "bigearthnet", values={"bigearthnet_root": tree})
    started = time.perf_counter()
    run_build("bigearthnet", config, out, workers=1, progress=progress)
    store_seconds = time.perf_counter() - started

    ours = BigEarthNetClean(out, split=SPLIT)
    theirs = BigEarthNet(tree, split=SPLIT, bands="all", num_classes=19, checksum=False)
    return LoaderPair(ours, theirs, BEN_PATCH_SIZE, len(ours.bands),
                      {"store": store_seconds, "geotiff": geotiff_seconds})


def build_bigearthnet(root: Path, samples: int, seed: int, progress: bool = True) -> Path:
    """A synthetic BigEarthNet v1.0 tree of ``samples`` patches, all in train; reused when complete.

    Written by :func:`~cloudbench.sources.fixtures.write_bigearthnet_v1` (the layout and lists
    both our builder and TorchGeo's ``BigEarthNet`` read, and ``SYNTHETIC.txt``), one product
    of up to ``BEN_SIDE**2`` patches at a time: product ``k`` is cut from its own world (seed
    ``seed + k``, one clear S2 sensing :data:`BEN_TIME` + ``k`` days), cells in column-major
    order, so that the lists name the patches in the order the store holds them (by product,
    then name); each patch has 1 to 3 random 19-class labels. ``perf.json`` records the
    settings and the products written: a killed build resumes at the product it was writing
    (rewritten whole, to the same bytes); a tree of other settings is refused.
    """
    from cloudbench.sources.fixtures import write_bigearthnet_v1

    settings = {"samples": samples, "seed": seed}
    marker = root / BEN_MARKER
    written = 0
    if marker.exists():
        state = json.loads(marker.read_text())
        if state["settings"] != settings:
            raise CloudbenchError(
                f"{root} holds a benchmark BigEarthNet tree of other settings "
                f"({state['settings']}); use another --workdir or delete it"
            )
        written = state["products"]
    else:
        shutil.rmtree(root, ignore_errors=True)
    per_product = BEN_SIDE**2
    products = math.ceil(samples / per_product)
    cells = [(row, col) for col in range(BEN_SIDE) for row in range(BEN_SIDE)]
    for k in tqdm(range(written, products), initial=written, total=products,
                  desc="BigEarthNet tree", unit="product", disable=not progress):
        n = min(per_product, samples - k * per_product)
        rng = np.random.default_rng([seed, k])
        labels = [rng.choice(19, size=int(rng.integers(1, 4)), replace=False).tolist()
                  for _ in range(n)]
        write_bigearthnet_v1(root, _ben_world(seed, k), cells[:n], labels=labels,
                             split=[SPLIT] * n)
        _write_text(marker, json.dumps({"settings": settings, "products": k + 1}))
    return root


def _ben_world(seed: int, k: int) -> SyntheticWorld:
    """The world of product ``k``: BigEarthNet's lattice in tile 33UUP, one clear S2 sensing."""
    when = BEN_TIME + dt.timedelta(days=k)
    return SyntheticWorld(
        seed=seed + k, crs="EPSG:32633", left=404400.0, top=5342400.0,
        size=BEN_SIDE * BEN_PATCH_SIZE, start=when.date(), end=when.date() + dt.timedelta(days=7),
        mgrs_tile="33UUP", s2_schedule=[{"datetime": when.isoformat(), "cloud_cover": 0.0}],
    )


def sen12ms_cloud_benchmark(
    workdir: str | Path,
    patches: int = 2000,
    cloud_images: int = 100,
    progress: bool = True,
) -> dict[str, Any]:
    """Time the SEN12MS Cloud builder on a generated SEN12MS tree, stage by stage.

    Writes (or reuses) ``patches`` SEN12MS patches and ``cloud_images`` cloudy SEN12MS-CR
    patches generated from the synthetic world (25 per scene, in whole scenes; under 25, one
    scene of that many), then builds the mask library and the dataset with one worker so the
    stage times add up to the wall time: *reading* (SEN12MS GeoTIFFs), *masking* (the library:
    reading the cloudy images and s2cloudless), *labelling*, *compositing*, and *writing*
    (shards and finalize: the build's wall time minus the stages measured inside the tasks).
    The synthetic world's clouds are mostly thick to s2cloudless, so the recipe takes windows
    of any cloud fraction (``cover_range=[0.05, 1.0]``).
    """
    from cloudbench.build import run_build
    from cloudbench.builders import sen12ms_cloud
    from cloudbench.cloudlib import LibraryConfig, build_library
    from cloudbench.config import load_recipe
    from cloudbench.sources.fixtures import write_sen12ms, write_sen12ms_cr

    workdir = Path(workdir)
    per_scene = 25
    sen12ms_root = workdir / f"sen12ms-{patches}"
    cr_root = workdir / f"sen12ms-cr-{cloud_images}"
    if not sen12ms_root.exists():
        write_sen12ms(sen12ms_root, scenes=math.ceil(patches / per_scene),
                      patches_per_scene=min(per_scene, patches))
    if not cr_root.exists():
        write_sen12ms_cr(cr_root, scenes=math.ceil(cloud_images / per_scene),
                         patches_per_scene=min(per_scene, cloud_images))
    library, out = workdir / "cloud_library", workdir / "sen12ms-cloud"
    shutil.rmtree(library, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)

    started = time.perf_counter()
    build_library(cr_root, library, LibraryConfig(), workers=1, progress=progress)
    masking = time.perf_counter() - started
    config = load_recipe(sen12ms_cloud.Config, "sen12ms-cloud", ["cover_range=[0.05, 1.0]"],
                         {"sen12ms_root": sen12ms_root, "cloud_source": library})
    started = time.perf_counter()
    run_build("sen12ms-cloud", config, out, workers=1, progress=progress)
    building = time.perf_counter() - started
    report = json.loads((out / "build_report.json").read_text())
    inside = report["seconds_per_stage"]
    stages = {
        "reading": inside.get("read", 0.0),
        "masking": masking,
        "labelling": inside.get("label", 0.0),
        "compositing": inside.get("composite", 0.0),
    }
    stages["writing"] = max(building - sum(v for k, v in stages.items() if k != "masking"), 0.0)
    total = masking + building
    return {
        "patches": patches,
        "cloud_images": cloud_images,
        "samples": report["samples"],
        "seconds": total,
        "samples_per_second": report["samples"] / total,
        "stages": stages,
    }


def format_build_benchmark(result: Mapping[str, Any]) -> str:
    total = result["seconds"]
    lines = [
        f"SEN12MS Cloud build: {result['patches']} SEN12MS patches, "
        f"{result['cloud_images']} cloudy images, 1 worker",
        f"  {result['samples']} samples in {total:.1f} s: "
        f"{result['samples_per_second']:.1f} samples/s",
    ]
    for stage, seconds in result["stages"].items():
        lines.append(f"  {stage:<12}{seconds:8.1f} s  {seconds / total:6.1%}")
    io = (result["stages"]["reading"] + result["stages"]["writing"]) / total
    lines.append(f"  reading + writing: {io:.1%} of the time")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# cloudbench perf train
# --------------------------------------------------------------------------------------------

BENCH_CHANNELS = 3
"""GoogLeNet on the true-colour bands (B04, B03, B02)."""


def classification_loss(model: nn.Module, batch: Batch) -> dict[str, Tensor]:
    """Cross-entropy of ``model(batch["image_s2"])`` against ``batch["label"]``."""
    return {"loss": F.cross_entropy(model(batch["image_s2"]), batch["label"])}


def train_benchmark(
    workdir: str | Path,
    samples: int = 2048,
    epochs: int = 3,
    batch_size: int = 64,
    *,
    device: str | torch.device = "auto",
    seed: int = 0,
    ceiling: bool | None = None,
    data: str = "resident",
    progress: bool = True,
) -> dict[str, Any]:
    """Training samples/s of the engine against a plain DataLoader loop, same model and data.

    Both sides train GoogLeNet (3 channels, 10 classes, same initial weights) on the same
    ``samples`` random 64×64 patches of a store in ``workdir/train-store`` (built once by
    :func:`cloudbench.perf.build_store`, reused after) with SGD (lr 0.01, momentum 0.9, weight
    decay 5e-4) and batch size ``batch_size``, for ``epochs`` timed epochs after one untimed
    warm-up epoch:

    - reference: a ``DataLoader(CloudBenchDataset(bands=B04,B03,B02), shuffle=True,
      num_workers=0)``, fp32, no channels-last, no augmentation;
    - engine: the split decoded once onto the device (timed apart as ``load_seconds``, not
      counted), then :meth:`Engine.fit` with its defaults (amp auto, channels-last,
      augmentation on, cosine schedule);
    - stream (with ``data="stream"``): the same fit with the split left in the store and
      streamed (:mod:`cloudbench.harness.stream`), reported as a fraction of ``engine``;
    - ceiling (with ``ceiling``; None: on CUDA only): the engine's model and precision fed one
      random batch already on the device, no indexing or augmentation.
    """
    from cloudbench.datasets import CloudBenchDataset
    from cloudbench.harness import stream

    if data not in ("resident", "stream"):
        raise CloudbenchError(f"data must be resident or stream, got {data!r}")

    if samples < 2 or epochs < 1 or batch_size < 2 or samples % batch_size == 1:
        raise CloudbenchError(
            f"samples ({samples}) and batch size ({batch_size}) must be >= 2 and leave no last "
            f"batch of one sample (GoogLeNet's batch norm cannot train on it); epochs >= 1"
        )
    engine = Engine(device, seed)
    dev = engine.device
    started = time.perf_counter()
    root = build_store(Path(workdir) / "train-store", samples, seed, progress)
    build_seconds = time.perf_counter() - started
    dataset = CloudBenchDataset(root, split="train", bands=CloudBenchDataset.OPTICAL_RGB)
    n = len(dataset)

    def fresh_model() -> nn.Module:
        torch.manual_seed(seed)
        return googlenet(BENCH_CHANNELS, NUM_CLASSES)

    reference = _reference_run(fresh_model().to(dev), dataset, epochs, batch_size, dev, seed)

    labels = torch.from_numpy(dataset.labels)
    stored: dict[str, stream.Column] = {
        "image_s2": stream.Stored(dataset, "image_s2", dataset.indices),
        "cloud_mask": stream.Stored(dataset, "cloud_mask", dataset.indices),
        "label": labels,
    }
    started = time.perf_counter()
    inputs = stream.resident(stored, dev)
    _synchronize(dev)
    load_seconds = time.perf_counter() - started
    config = TrainConfig(epochs=epochs + 1, batch_size=batch_size)

    def timed(columns: stream.Inputs) -> dict[str, Any]:
        history = engine.fit(fresh_model(), columns, classification_loss, config)
        seconds = sum(h["seconds"] for h in history[1:])
        return {"timed_samples": n * epochs, "seconds": seconds,
                "samples_per_s": n * epochs / seconds,
                "amp": "bf16" if resolve_amp(config.amp, dev) else "off",
                "channels_last": config.channels_last, "augment": config.augment}

    ours = {**timed(inputs), "load_seconds": load_seconds}
    del inputs

    result: dict[str, Any] = {
        "settings": {"samples": n, "epochs": epochs, "batch_size": batch_size, "seed": seed,
                     "patch_size": PATCH_SIZE, "channels": BENCH_CHANNELS,
                     "classes": NUM_CLASSES, "model": "GoogLeNet"},
        "machine": {"device": describe_device(dev), "torch": torch.__version__},
        "reference": reference,
        "engine": ours,
        "ratio": ours["samples_per_s"] / reference["samples_per_s"],
        "build_seconds": build_seconds,
    }
    if data == "stream":
        streamed = timed({**stored, "label": labels.to(dev)})
        streamed["fraction"] = streamed["samples_per_s"] / ours["samples_per_s"]
        result["stream"] = streamed
    if ceiling if ceiling is not None else dev.type == "cuda":
        top = _ceiling_run(fresh_model(), n, epochs, batch_size, config, dev)
        top["fraction"] = ours["samples_per_s"] / top["samples_per_s"]
        result["ceiling"] = top
    return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    defaults = TrainConfig()
    return torch.optim.SGD(model.parameters(), lr=defaults.lr, momentum=defaults.momentum,
                           weight_decay=defaults.weight_decay)


def _reference_run(
    model: nn.Module, dataset: Any, epochs: int, batch_size: int, device: torch.device, seed: int
) -> dict[str, float]:
    """The plain loop: DataLoader batches, fp32, copied to the device; first epoch untimed."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = _sgd(model)
    model.train()
    seconds, timed = 0.0, 0
    for epoch in range(epochs + 1):
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        seen = 0
        for batch in loader:
            x, y = batch["image_s2"].to(device), batch["label"].to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            seen += len(y)
        float(total)
        if epoch > 0:
            seconds += time.perf_counter() - started
            timed += seen
    return {"timed_samples": timed, "seconds": seconds, "samples_per_s": timed / seconds}


def _ceiling_run(
    model: nn.Module, n: int, epochs: int, batch_size: int, config: TrainConfig,
    device: torch.device, *, channels: int = BENCH_CHANNELS, size: int = PATCH_SIZE,
    classes: int = NUM_CLASSES, multilabel: bool = False,
) -> dict[str, float]:
    """The engine's model, precision and optimiser on one random batch already on the
    device (cross-entropy, or BCE-with-logits with ``multilabel``)."""
    engine = Engine(device)
    engine._prepare(model, config.channels_last)
    x = torch.randn(batch_size + 1, channels, size, size, device=device)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if multilabel:
        y = torch.randint(0, 2, (batch_size + 1, classes), device=device).float()
    else:
        y = torch.randint(0, classes, (batch_size + 1,), device=device)
    criterion = F.binary_cross_entropy_with_logits if multilabel else F.cross_entropy
    optimizer = build_optimizer(list(model.parameters()), config)
    use_amp = resolve_amp(config.amp, device)
    model.train()
    seconds = 0.0
    for epoch in range(epochs + 1):
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        for first, stop in batch_bounds(n, batch_size):
            rows = stop - first
            with engine._autocast(use_amp):
                loss = criterion(model(x[:rows]).float(), y[:rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        float(total)
        if epoch > 0:
            seconds += time.perf_counter() - started
    return {"timed_samples": n * epochs, "seconds": seconds,
            "samples_per_s": n * epochs / seconds}


def format_train_benchmark(result: Mapping[str, Any]) -> str:
    """A short report of :func:`train_benchmark`'s result."""
    s, e, r = result["settings"], result["engine"], result["reference"]
    lines = [
        f"training benchmark: {s['model']} ({s['channels']} channels, {s['classes']} classes), "
        f"{s['samples']} samples of {s['patch_size']}x{s['patch_size']} px, batch size "
        f"{s['batch_size']}, {s['epochs']} timed epochs after 1 warm-up",
        f"  device: {result['machine']['device']} (torch {result['machine']['torch']})",
        f"  {'engine':<12}{e['samples_per_s']:>10,.0f} samples/s ({e['timed_samples']} in "
        f"{e['seconds']:.2f} s; amp {e['amp']}, channels-last {e['channels_last']}, "
        f"augment {e['augment']})",
        f"  {'reference':<12}{r['samples_per_s']:>10,.0f} samples/s ({r['timed_samples']} in "
        f"{r['seconds']:.2f} s; DataLoader, fp32)",
        f"  ratio: the engine is {result['ratio']:.2f}x the reference",
    ]
    if "stream" in result:
        t = result["stream"]
        lines.append(f"  {'stream':<12}{t['samples_per_s']:>10,.0f} samples/s (the same fit "
                     f"streamed from the store): {t['fraction']:.0%} of resident")
    if "ceiling" in result:
        c = result["ceiling"]
        lines.append(f"  {'ceiling':<12}{c['samples_per_s']:>10,.0f} samples/s (random batch on "
                     f"the device); the engine reaches {c['fraction']:.0%} of it")
    lines.append(f"  (not timed: store build {result['build_seconds']:.1f} s, decoding the "
                 f"split onto the device {e['load_seconds']:.2f} s)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# cloudbench perf gpu
# --------------------------------------------------------------------------------------------

CBEN_GROUPS = {"s2": (("B02", "B03", "B04", "B08"), 1),
               "s2_20m": (("B05", "B06", "B07", "B8A", "B11", "B12"), 2),
               "s2_60m": (("B01", "B09"), 6)}
"""CBEN's S2 arrays: their bands and their pixel size over ``s2``'s."""
CBEN_OPTICAL = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
                "B12")


def build_cben_store(root: Path, samples: int, size: int = 120, seed: int = 0,
                     progress: bool = True) -> Path:
    """A CBEN-shaped store of ``samples`` random patches, all in :data:`SPLIT`; reused when
    complete: S2 at its native sizes (``s2`` 4 bands ``size``², ``s2_20m`` 6 bands
    (``size``/2)², ``s2_60m`` 2 bands (``size``/6)², uint16), S1 VV/VH (float32), a cloud mask
    and 1–3 of the 19 BigEarthNet classes per patch. Written through the real store writer in
    shards of :data:`SHARD_SIZE`, each from its own seeded generator."""
    from cloudbench.config import class_scheme

    if size % 6:
        raise CloudbenchError(f"the patch size must be a multiple of 6, got {size}")
    config = {"samples": samples, "seed": seed, "patch_size": size, "kind": "cben"}
    try:
        if not store.start_build(root, "perf-gpu", config):
            return root
    except StoreError as err:
        raise CloudbenchError(f"{root} holds a benchmark store of other settings ({err}); use "
                              "another --workdir or delete it") from err
    classes = list(class_scheme("bigearthnet19").classes)
    side = math.ceil(math.sqrt(samples))
    world = Grid.from_bounds("EPSG:32633", 500000.0, 5000000.0, side * size, side * size, 10.0)
    starts = range(0, samples, SHARD_SIZE)
    shard_ids = [f"shard{k:04d}" for k in range(len(starts))]
    when = dt.datetime(2017, 6, 1, tzinfo=dt.UTC)
    for shard_id, start in tqdm(list(zip(shard_ids, starts, strict=True)), desc="store",
                                unit="shard", disable=not progress):
        if store.shard_done(root, shard_id):
            continue
        indices = range(start, min(samples, start + SHARD_SIZE))
        rng = np.random.default_rng([seed, start])
        n = len(indices)
        arrays = {name: rng.integers(0, 10000, (n, len(bands), size // f, size // f),
                                     dtype=np.uint16)
                  for name, (bands, f) in CBEN_GROUPS.items()}
        arrays["s1"] = rng.normal(-12.0, 4.0, (n, 2, size, size)).astype(np.float32)
        arrays["cloud_mask"] = rng.integers(0, 3, (n, 1, size, size), dtype=np.uint8)
        labels = [sorted(set(rng.integers(0, len(classes), rng.integers(1, 4)).tolist()))
                  for _ in indices]
        grids = [world.window(i // side * size, i % side * size, size, size) for i in indices]
        table = store.sample_table([f"b{i:06d}" for i in indices], labels, arrays["cloud_mask"],
                                   grids, [when] * n, [when] * n, [["perf-S2", "perf-S1"]] * n)
        store.write_shard(root, shard_id, table, arrays)
    reflectance = {"unit": "reflectance", "scale": 10000.0}
    meta = {
        "kind": "cben", "task": "multilabel", "classes": classes,
        "class_scheme": "bigearthnet19", "patch_size": size, "resolution": 10.0,
        "arrays": {
            "s1": {"bands": list(S1_BANDS), "unit": "dB", "scale": 1.0},
            **{name: {"bands": list(bands), **reflectance}
               for name, (bands, _) in CBEN_GROUPS.items()},
            "cloud_mask": {"bands": ["cloud_type"], "unit": "class", "scale": 1.0},
        },
        "builder": {"name": "perf-gpu", "config": config},
        "provenance": {"synthetic": True, "purpose": "cloudbench perf gpu"},
    }
    store.finalize(root, shard_ids, meta, lambda table: np.full(len(table), SPLIT, dtype=object))
    return root


def _fused_loss(model: nn.Module, batch: Batch) -> dict[str, Tensor]:
    """BCE-with-logits of the model on the 14 early-fused channels (S1, then S2)."""
    logits = model(torch.cat([batch["image_s1"], batch["image_s2"]], dim=1))
    return {"loss": F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())}


def _gpu_model(name: str) -> nn.Module:
    from cloudbench.models.classifiers import resnet50

    torch.manual_seed(0)
    channels = len(S1_BANDS) + len(CBEN_OPTICAL)
    return resnet50(channels, 19) if name == "resnet50" else googlenet(channels, 19)


def _cben_inputs(root: Path) -> dict[str, Any]:
    """The store's split as the harness loads it: stored columns, standardised."""
    from cloudbench.harness.data import load_split, standardise

    split = load_split(root, SPLIT, optical=CBEN_OPTICAL, sar=S1_BANDS, labeled_per_class=0,
                       seed=0)
    standardise([split], [split])
    return split.inputs


def _timed_fit(engine: Engine, model: str, inputs: Any, config: TrainConfig,
               n: int) -> dict[str, float]:
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    history = engine.fit(_gpu_model(model), inputs, _fused_loss, config)
    seconds = sum(h["seconds"] for h in history[1:])
    timed = n * (len(history) - 1)
    return {"timed_samples": timed, "seconds": seconds, "samples_per_s": timed / seconds,
            "peak_memory_bytes": engine.peak_memory_bytes()}


def _scaling_rank(fabric: Any, root: Path, model: str, config: TrainConfig) -> dict[str, float]:
    engine = Engine(fabric=fabric)
    inputs = _cben_inputs(root)
    inputs = {k: v.to(engine.device) if isinstance(v, Tensor) else v
              for k, v in inputs.items()}
    try:
        return _timed_fit(engine, model, inputs, config, len(inputs["label"]))
    finally:
        end_process_group()


def gpu_benchmark(
    workdir: str | Path,
    samples: int = 8192,
    size: int = 120,
    batch_size: int = 128,
    epochs: int = 2,
    *,
    model: str = "resnet50",
    device: str = "cuda",
    devices: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The engine on a CUDA device: resident and streamed training against the model's ceiling,
    peak memory, and the speed-up of data parallelism over 1 … N GPUs.

    Every phase trains ``model`` (``resnet50`` or ``googlenet``, 14 input channels: VV, VH and
    the 12 L2A bands, 19 outputs, BCE-with-logits) for ``epochs`` timed epochs after one
    untimed warm-up, with the engine's defaults (bf16 where supported, channels-last,
    augmentation), on ``samples`` random CBEN-shaped patches of ``size``² pixels
    (:func:`build_cben_store` in ``workdir/gpu-store``, reused), loaded as the harness loads a
    split (stored columns, standardised; the 20 and 60 m bands upsampled on the device):

    - ceiling: the model fed one random batch already on the device;
    - resident: the split decoded onto the device first (not timed);
    - stream: the split read from the store batch by batch (reader thread, pinned buffers);
    - scaling (``devices``, default ``[1, all GPUs]``): streamed, data-parallel through
      Lightning Fabric (``ddp_spawn``) with ``batch_size`` per process, as samples/s and as
      efficiency ``rate(N) / (N · rate(1))``.

    ``device="cpu"`` runs the same phases on the CPU (scaling over CPU processes, gloo): for
    testing the command, not for its figures.
    """
    from lightning.fabric import Fabric

    from cloudbench.harness import stream

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CloudbenchError("cloudbench perf gpu needs a CUDA device; none is available here "
                              "(--device cpu runs it on the CPU, for testing only)")
    if model not in ("resnet50", "googlenet"):
        raise CloudbenchError(f"model must be resnet50 or googlenet, got {model!r}")
    available = torch.cuda.device_count() if dev.type == "cuda" else os.cpu_count() or 1
    counts = sorted(set(devices if devices is not None else [1, available]))
    if counts[0] < 1 or counts[-1] > available:
        raise CloudbenchError(f"devices must be between 1 and {available}, got {counts}")
    if samples < 2 * batch_size * counts[-1]:
        raise CloudbenchError(f"samples ({samples}) must hold two batches of {batch_size} for "
                              f"each of {counts[-1]} processes")
    root = build_cben_store(Path(workdir) / "gpu-store", samples, size, progress=progress)
    engine = Engine(dev)
    config = TrainConfig(epochs=epochs + 1, batch_size=batch_size, prefetch=2)

    stored = _cben_inputs(root)
    stored = {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in stored.items()}
    n = len(stored["label"])
    top = _ceiling_run(_gpu_model(model), n, epochs, batch_size, config, dev,
                       channels=len(S1_BANDS) + len(CBEN_OPTICAL), size=size, classes=19,
                       multilabel=True)
    resident = stream.resident(stored, dev)
    phases = {"resident": _timed_fit(engine, model, resident, config, n)}
    del resident
    phases["stream"] = _timed_fit(engine, model, stored, config, n)
    for phase in phases.values():
        phase["fraction"] = phase["samples_per_s"] / top["samples_per_s"]

    scaling: dict[int, dict[str, float]] = {}
    for count in counts:
        if count == 1:
            scaling[1] = dict(phases["stream"])
            continue
        fabric = Fabric(accelerator=dev.type, devices=count, strategy="ddp_spawn")
        scaling[count] = fabric.launch(functools.partial(_scaling_rank, root=root,
                                                         model=model, config=config))
    base = scaling[min(scaling)]["samples_per_s"] / min(scaling)
    for count, entry in scaling.items():
        entry["efficiency"] = entry["samples_per_s"] / (count * base)
    return {
        "settings": {"samples": n, "size": size, "batch_size": batch_size, "epochs": epochs,
                     "model": model, "channels": 14, "classes": 19},
        "machine": {"device": describe_device(dev), "torch": torch.__version__},
        "ceiling": top, **phases, "scaling": scaling,
    }


def format_gpu_benchmark(result: Mapping[str, Any]) -> str:
    """A short report of :func:`gpu_benchmark`'s result."""
    s = result["settings"]
    lines = [
        f"GPU benchmark: {s['model']} (14 channels, 19 labels), {s['samples']} CBEN-shaped "
        f"patches of {s['size']}x{s['size']} px, batch size {s['batch_size']}, {s['epochs']} "
        "timed epochs after 1 warm-up",
        f"  device: {result['machine']['device']} (torch {result['machine']['torch']})",
        f"  {'ceiling':<10}{result['ceiling']['samples_per_s']:>10,.0f} samples/s (a random "
        "batch on the device)",
    ]
    for name in ("resident", "stream"):
        r = result[name]
        lines.append(f"  {name:<10}{r['samples_per_s']:>10,.0f} samples/s: {r['fraction']:.0%} "
                     f"of the ceiling, peak memory {r['peak_memory_bytes'] / 2**30:.2f} GiB")
    for count, entry in sorted(result["scaling"].items()):
        lines.append(f"  {count} device{'s' if count > 1 else ' '}{entry['samples_per_s']:>11,.0f}"
                     f" samples/s (streamed): efficiency {entry['efficiency']:.0%}")
    return "\n".join(lines)
