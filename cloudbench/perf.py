"""Speed benchmarks: ``cloudbench perf loader`` and ``cloudbench perf train``.

The loader benchmark writes the same random patches twice, into a cloudbench store and as
per-sample GeoTIFFs in the layout of TorchGeo's :class:`~torchgeo.datasets.SEN12MS` (SEN12MS's
own dtypes and bands: S1 float32 VV/VH, S2 uint16 13 L1C bands, land cover uint8 4 bands), then
reads every sample through the same :class:`torch.utils.data.DataLoader` from both and reports
samples per second and their ratio. Building is timed separately and never counted.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping
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
    describe_device,
    resolve_amp,
)
from cloudbench.models.classifiers import googlenet
from cloudbench.sources.base import S1_BANDS, S2_L1C_BANDS, Grid

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


def loader_benchmark(
    workdir: str | Path,
    samples: int = 10000,
    batch_size: int = 64,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Time our store against TorchGeo's SEN12MS GeoTIFFs holding the same patches.

    ``workdir/store`` and ``workdir/sen12ms`` are built on the first run (and resumed when a run
    was killed) and reused afterwards. Both datasets are read in order, whole, through a
    ``DataLoader(batch_size, num_workers, shuffle=False)``; the first batch (worker start-up,
    first file opens) is excluded from the timing.
    """
    from torchgeo.datasets import SEN12MS

    from cloudbench.datasets import CloudBenchDataset

    if samples <= batch_size:
        raise CloudbenchError(
            f"--samples ({samples}) must exceed --batch-size ({batch_size}): the first batch is "
            "not timed"
        )
    workdir = Path(workdir)
    started = time.perf_counter()
    build_store(workdir / "store", samples, seed, progress)
    store_seconds = time.perf_counter() - started
    started = time.perf_counter()
    build_sen12ms(workdir / "store", workdir / "sen12ms", progress)
    geotiff_seconds = time.perf_counter() - started

    ours = CloudBenchDataset(workdir / "store", split=SPLIT)
    theirs = SEN12MS(workdir / "sen12ms", split="train", bands=SEN12MS.BAND_SETS["all"],
                     checksum=False)
    settings = {"samples": samples, "batch_size": batch_size, "num_workers": num_workers,
                "seed": seed, "patch_size": PATCH_SIZE, "bands": len(S1_BANDS) + len(S2_L1C_BANDS)}
    result: dict[str, Any] = {"settings": settings}
    for name, dataset in (("torchgeo", theirs), ("cloudbench", ours)):
        result[name] = time_loader(dataset, batch_size, num_workers, name, progress)
    result["ratio"] = result["cloudbench"]["samples_per_s"] / result["torchgeo"]["samples_per_s"]
    result["build_seconds"] = {"store": store_seconds, "geotiff": geotiff_seconds}
    return result


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
        f"loader benchmark: {s['samples']} samples of {s['patch_size']}x{s['patch_size']} px, "
        f"{s['bands']} bands (S1 + S2), batch size {s['batch_size']}, "
        f"{s['num_workers']} workers",
    ]
    for name, title in (("cloudbench", "cloudbench store"), ("torchgeo", "TorchGeo SEN12MS")):
        r = result[name]
        lines.append(f"  {title:<18}{r['samples_per_s']:>12,.0f} samples/s "
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
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)


def sen12ms_cloud_benchmark(
    workdir: str | Path,
    patches: int = 2000,
    cloud_images: int = 100,
    progress: bool = True,
) -> dict[str, Any]:
    """Time the SEN12MS Cloud builder on a generated SEN12MS tree, stage by stage.

    Writes (or reuses) ``patches`` SEN12MS patches (25 per scene) and ``cloud_images`` cloudy
    SEN12MS-CR patches generated from the synthetic world, then builds the mask library and the
    dataset with one worker so the stage times add up to the wall time: *reading* (SEN12MS
    GeoTIFFs), *masking* (the library: reading the cloudy images and s2cloudless), *labelling*,
    *compositing*, and *writing* (shards and finalize: the build's wall time minus the stages
    measured inside the tasks). The synthetic world's clouds are mostly thick to s2cloudless, so
    the recipe takes windows of any cloud fraction (``cover_range=[0.05, 1.0]``).
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
                      patches_per_scene=per_scene)
    if not cr_root.exists():
        write_sen12ms_cr(cr_root, scenes=math.ceil(cloud_images / per_scene),
                         patches_per_scene=per_scene)
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
    - engine: the split loaded once with ``to_tensors(device)`` (timed apart as
      ``load_seconds``, not counted), then :meth:`Engine.fit` with its defaults (amp auto,
      channels-last, augmentation on, cosine schedule);
    - ceiling (with ``ceiling``; None: on CUDA only): the engine's model and precision fed one
      random batch already on the device, no indexing or augmentation.
    """
    from cloudbench.datasets import CloudBenchDataset

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

    started = time.perf_counter()
    inputs = dataset.to_tensors(dev)
    _synchronize(dev)
    load_seconds = time.perf_counter() - started
    config = TrainConfig(epochs=epochs + 1, batch_size=batch_size)
    history = engine.fit(fresh_model(), inputs, classification_loss, config)
    seconds = sum(h["seconds"] for h in history[1:])
    ours = {"timed_samples": n * epochs, "seconds": seconds, "samples_per_s": n * epochs / seconds,
            "load_seconds": load_seconds,
            "amp": "bf16" if resolve_amp(config.amp, dev) else "off",
            "channels_last": config.channels_last, "augment": config.augment}
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
    device: torch.device,
) -> dict[str, float]:
    """The engine's model and precision on one random batch already on the device."""
    engine = Engine(device)
    engine._prepare(model, config.channels_last)
    x = torch.randn(batch_size + 1, BENCH_CHANNELS, PATCH_SIZE, PATCH_SIZE, device=device)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch_size + 1,), device=device)
    optimizer = _sgd(model)
    use_amp = resolve_amp(config.amp, device)
    model.train()
    seconds = 0.0
    for epoch in range(epochs + 1):
        started = time.perf_counter()
        total = torch.zeros((), device=device)
        for first, stop in batch_bounds(n, batch_size):
            size = stop - first
            with engine._autocast(use_amp):
                loss = F.cross_entropy(model(x[:size]), y[:size])
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
    if "ceiling" in result:
        c = result["ceiling"]
        lines.append(f"  {'ceiling':<12}{c['samples_per_s']:>10,.0f} samples/s (random batch on "
                     f"the device); the engine reaches {c['fraction']:.0%} of it")
    lines.append(f"  (not timed: store build {result['build_seconds']:.1f} s, to_tensors "
                 f"{e['load_seconds']:.2f} s)")
    return "\n".join(lines)
