"""Own SSL pre-training (``cloudbench pretrain``): MoCo v2, MoCo v3 or MAE on a cloudbench store
or on SSL4EO-S12, through the one engine, to a backbone checkpoint the SSL methods load.

:func:`pretrain` builds the method's backbone without weights (``build_backbone(...,
pretrained=False)``: timm's random initialisation and the normalisation of the released
SSL4EO-S12 weights, so that a checkpoint of ours takes the same units theirs do), wraps it in
its pretext network (:mod:`cloudbench.models.pretext`), and trains it with
:meth:`Engine.fit <cloudbench.harness.engine.Engine.fit>` (only the online side's parameters
are optimised, ``params=``), checkpointing every epoch to :func:`checkpoint_path` so that the
same call after a crash resumes to the weights an uninterrupted run ends with. The result is
written atomically with :func:`cloudbench.models.backbones.save_checkpoint` and loads with
``build_backbone(backbone, bands, weights=out)``.

Data (labels are never used):

- **a store** (``store=``): its ``train`` split, every sample (or ``max_samples`` evenly spaced
  ones), the bands by name (S2 as reflectance, S1 in dB: the store's units), read as
  :class:`~cloudbench.harness.stream.Stored` columns: resident on the device when the split
  fits the memory budget (``TrainConfig.data``/``memory_budget_gb``), streamed otherwise, as
  the harness places any split. A cloudy store trains on its cloudy images, a clean store on
  clean ones.
- **SSL4EO-S12** (``ssl4eo=``), through TorchGeo's ``SSL4EOS12`` dataset (splits ``s1``, S1
  GRD in dB, and ``s2a``, S2 L2A digital numbers; ``seasons=4``), see :class:`SSL4EOS12Pairs`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torchgeo
from torch import Tensor

from cloudbench.datasets import CloudBenchDataset
from cloudbench.errors import CloudbenchError
from cloudbench.harness.data import SplitData, check_in_flight, load_split, memory_budget
from cloudbench.harness.engine import Engine, TrainConfig, batch_bounds
from cloudbench.harness.stream import Column, Stored, resident, sample_bytes, take
from cloudbench.models.backbones import (
    FUSED_BANDS,
    S1_BANDS,
    backbone_spec,
    build_backbone,
    save_checkpoint,
)
from cloudbench.models.pretext import (
    DEFAULT_BACKBONES,
    PretextModel,
    build_pretext,
    check_method,
    settings_for,
)
from cloudbench.store import atomic_write_text

TABLE_IV: dict[str, dict[str, Any]] = {
    "moco-v2": {"epochs": 100, "batch_size": 256, "optimizer": "sgd", "lr": 0.03},
    "moco-v3": {"epochs": 100, "batch_size": 256, "optimizer": "adamw", "lr": 0.15},
    "mae": {"epochs": 100, "batch_size": 64, "optimizer": "adamw", "lr": 0.1},
}
"""The CBEN paper's pre-training settings (its Table IV): epochs, batch size, optimiser, lr."""
OUR_DEFAULTS: dict[str, dict[str, Any]] = {
    "moco-v2": {"momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine"},
    "moco-v3": {"weight_decay": 0.1, "schedule": "cosine"},
    "mae": {"weight_decay": 0.05, "schedule": "cosine"},
}
"""What Table IV leaves open, from each method's own paper: SGD momentum 0.9 and weight decay
1e-4 (MoCo v2), weight decay 0.1 (MoCo v3) and 0.05 (MAE), a cosine schedule; MoCo v3 and MAE
also warm up for a tenth of the epochs (:func:`default_config`). The engine's own flips and
rotations are off (``augment=False``): the pretexts make their own views."""
SSL4EO_SEASONS = 4
"""Acquisitions per location and modality in SSL4EO-S12 (one per season)."""
_LOCATION = re.compile(r"^\d{7}$")


def default_config(method: str, **changes: Any) -> TrainConfig:
    """The :class:`TrainConfig` of ``method``: Table IV (:data:`TABLE_IV`), our defaults for
    the rest (:data:`OUR_DEFAULTS`; ``warmup_epochs`` = epochs // 10 for MoCo v3 and MAE, 0 for
    MoCo v2), ``augment=False``, then ``changes`` (any TrainConfig field). Raises one
    CloudbenchError for invalid values."""
    from cloudbench.config import validate

    check_method(method)
    values: dict[str, Any] = {**TABLE_IV[method], **OUR_DEFAULTS[method], "augment": False}
    values.update({k: v for k, v in changes.items() if v is not None})
    if changes.get("warmup_epochs") is None:
        values["warmup_epochs"] = 0 if method == "moco-v2" else int(values["epochs"]) // 10
    return validate(TrainConfig, values, f"{method} training settings")


def checkpoint_path(out: str | Path) -> Path:
    """Where the engine checkpoint of a pre-training writing ``out`` lives: beside it, with
    the suffix ``.ckpt`` (``moco.pt`` → ``moco.ckpt``), plus ``<that>.json`` recording what the
    run pre-trains, so that a resume with other data or settings is refused."""
    out = Path(out)
    return out.with_suffix(".ckpt")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class PretrainData:
    """What a pre-training reads: ``inputs`` (columns with a common first dimension), from which
    :meth:`images` makes the (B, C, H, W) batch in ``bands`` order."""

    inputs: dict[str, Column]
    bands: tuple[str, ...]
    kind: str
    """``store`` or ``ssl4eo-s12``."""
    source: str
    """The store's or SSL4EO-S12's folder (resolved)."""
    order: list[int] | None = None
    """Per band, its channel in ``image_s1`` then ``image_s2``; None: already in order."""
    placement: str = "resident"

    def __len__(self) -> int:
        first = next(iter(self.inputs.values()))
        return int(first.shape[0])

    def images(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's images (B, C, H, W), channels in ``bands`` order, in our units."""
        if "image" in batch:
            return batch["image"]
        parts = [batch[k] for k in ("image_s1", "image_s2") if k in batch]
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if self.order is not None:
            x = x[:, torch.tensor(self.order, device=x.device)]
        return x


def _split_bands(bands: Sequence[str]) -> tuple[list[str], list[str]]:
    s1 = [b for b in bands if b in S1_BANDS]
    return s1, [b for b in bands if b not in S1_BANDS]


def store_data(root: str | Path, bands: Sequence[str], max_samples: int | None = None,
               ) -> PretrainData:
    """The ``train`` split of the store at ``root`` (every sample, or ``max_samples`` evenly
    spaced ones), its ``bands`` as stored columns in our units (not standardised: the
    backbone normalises)."""
    root = Path(root)
    s1, s2 = _split_bands(bands)
    split = load_split(root, "train", optical=s2, sar=s1, labeled_per_class=0, seed=0)
    inputs = {k: v for k, v in split.inputs.items() if k in ("image_s1", "image_s2")}
    inputs = _subset(inputs, len(split), max_samples)
    stacked = [*s1, *s2]
    order = None if stacked == list(bands) else [stacked.index(b) for b in bands]
    return PretrainData(inputs, tuple(bands), "store", str(root.resolve()), order)


def _subset(inputs: dict[str, Column], n: int, max_samples: int | None) -> dict[str, Column]:
    if n == 0:
        raise CloudbenchError("there are no samples to pre-train on")
    if max_samples is None or max_samples >= n:
        return inputs
    index = torch.from_numpy(np.unique(np.linspace(0, n - 1, max_samples).round().astype(
        np.int64)))
    return take(inputs, index)


def _our_band(name: str) -> str:
    """TorchGeo's band names (``B1``, ``B8A``, ``VV``) as ours (``B01``, ``B8A``, ``VV``)."""
    match = re.fullmatch(r"B(\d{1,2})(A?)", name.upper())
    if match is None:
        return name.upper()
    return f"B{int(match.group(1))}A" if match.group(2) else f"B{int(match.group(1)):02d}"


class SSL4EOS12Pairs:
    """SSL4EO-S12's S1 GRD and S2 L2A images of the same location and season, joined, through
    TorchGeo's ``SSL4EOS12`` dataset (``split="s1"`` and ``split="s2a"``, ``seasons=4``).

    Layout (TorchGeo's, the released archive extracted): ``ROOT/s1/<7-digit location>/<S1
    product>/{VV,VH}.tif`` and ``ROOT/s2a/<location>/<S2 product>/{B1,…,B9,B11,B12}.tif``, four
    product folders (one per season) per location and modality. The locations are those present
    under both (only under the one needed for S1-only or S2-only bands); TorchGeo's own
    ``__len__`` is the full archive's 251,079, so they are listed from the folders.

    **Matching.** A sample is one (location, season): ``len(self)`` is 4 × locations, row
    ``4·i + k`` the k-th acquisition in time of location i. TorchGeo's ``__getitem__`` with
    ``seasons=4`` returns all four acquisitions of a location in a random order, with each
    one's time ``t``; they are sorted by ``t``, and the k-th S1 acquisition in time is joined
    with the k-th S2 one. SSL4EO-S12 samples one acquisition per season and modality in the same
    seasonal windows, so this pairs the S1 and S2 images of each season (a location with other
    than four acquisitions in a modality is refused).

    Images come at TorchGeo's ``size`` (264×264; bands stored at 20 m or 60 m are resampled by
    TorchGeo's read), in our units: S2 reflectance (the L2A digital numbers / 10000), S1 in dB
    (as stored). TorchGeo's reading draws from Python's global ``random`` for the order only.
    """

    def __init__(self, root: str | Path, bands: Sequence[str]) -> None:
        self.root = Path(root)
        self.bands = tuple(bands)
        datasets = importlib.import_module("torchgeo.datasets")
        version = torchgeo.__version__
        dataset_class = getattr(datasets, "SSL4EOS12", None)
        if dataset_class is None:
            raise CloudbenchError(f"TorchGeo {version} has no torchgeo.datasets.SSL4EOS12; "
                                  "install a TorchGeo that has it (0.5 or newer)")
        parameters = inspect.signature(dataset_class).parameters
        if not {"root", "split", "seasons"} <= set(parameters):
            raise CloudbenchError(f"TorchGeo {version}'s SSL4EOS12 takes "
                                  f"({', '.join(parameters)}), not root, split and seasons")
        metadata = getattr(dataset_class, "metadata", {})
        names: dict[str, list[str]] = {}
        for split in ("s1", "s2a"):
            entry = metadata.get(split) if isinstance(metadata, Mapping) else None
            if not isinstance(entry, Mapping) or "bands" not in entry:
                raise CloudbenchError(f"TorchGeo {version}'s SSL4EOS12 has no {split!r} split "
                                      "with band names")
            names[split] = [_our_band(b) for b in entry["bands"]]
        plan = []
        for band in self.bands:
            where = "s1" if band in names["s1"] else "s2a" if band in names["s2a"] else None
            if where is None:
                raise CloudbenchError(f"SSL4EO-S12 (S1 GRD, S2 L2A) has no band {band!r}; its "
                                      f"bands: {' '.join(names['s1'] + names['s2a'])}")
            plan.append((where, names[where].index(band), 10000.0 if where == "s2a" else 1.0))
        self._plan = plan
        self.splits = tuple(s for s in ("s1", "s2a") if any(p[0] == s for p in plan))
        self._channels = {s: len(names[s]) for s in self.splits}
        if not self.root.is_dir():
            raise CloudbenchError(f"SSL4EO-S12 root {self.root} is not a folder")
        not_found = getattr(datasets, "DatasetNotFoundError", FileNotFoundError)
        self.datasets: dict[str, Any] = {}
        for split in self.splits:
            try:
                self.datasets[split] = dataset_class(root=str(self.root), split=split,
                                                     seasons=SSL4EO_SEASONS)
            except not_found as err:
                raise CloudbenchError(
                    f"no SSL4EO-S12 {split} data in {self.root}: expected "
                    f"{self.root}/{split}/<7-digit location>/<product>/<band>.tif "
                    "(TorchGeo's layout; cloudbench never downloads it)") from err
        self.size = int(getattr(dataset_class, "size", 264))
        found = [{int(p.name) for p in (self.root / s).iterdir()
                  if p.is_dir() and _LOCATION.match(p.name)} for s in self.splits]
        self.locations = sorted(set.intersection(*found))
        if not self.locations:
            raise CloudbenchError(f"no SSL4EO-S12 location of {self.root} has all of "
                                  f"{', '.join(self.splits)}")

    def __len__(self) -> int:
        return SSL4EO_SEASONS * len(self.locations)

    def location(self, index: int) -> np.ndarray:
        """float32 (4, C, size, size): location ``index``'s four seasons in time order, the
        bands in ``bands`` order, in our units."""
        parts = {}
        for split, dataset in self.datasets.items():
            folder = self.root / split / f"{index:07d}"
            count = sum(1 for p in folder.iterdir() if p.is_dir())
            if count != SSL4EO_SEASONS:
                raise CloudbenchError(f"{folder} holds {count} acquisitions, not "
                                      f"{SSL4EO_SEASONS} (one per season)")
            sample = dataset[index]
            if "t" not in sample:
                raise CloudbenchError(
                    f"TorchGeo {torchgeo.__version__}'s SSL4EOS12 gives no acquisition times "
                    "('t'), which match S1 and S2 seasons; install TorchGeo 0.7 or newer")
            image = sample["image"].numpy().reshape(SSL4EO_SEASONS, self._channels[split],
                                                    self.size, self.size)
            parts[split] = image[np.argsort(sample["t"].numpy(), kind="stable")]
        out = np.empty((SSL4EO_SEASONS, len(self.bands), self.size, self.size), np.float32)
        for c, (split, channel, scale) in enumerate(self._plan):
            out[:, c] = parts[split][:, channel] / scale
        return out

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 (n, C, size, size) of sample ``rows`` (each location read once, up to 8
        locations at a time)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), len(self.bands), self.size, self.size), np.float32)
        where, season = rows // SSL4EO_SEASONS, rows % SSL4EO_SEASONS
        unique = np.unique(where)
        if not len(unique):
            return out

        def load(position: int) -> tuple[int, np.ndarray]:
            return position, self.location(self.locations[position])

        with ThreadPoolExecutor(max_workers=min(8, len(unique))) as pool:
            for position, images in pool.map(load, unique.tolist()):
                chosen = where == position
                out[chosen] = images[season[chosen]]
        return out


@dataclass(frozen=True, eq=False)
class SSL4EOColumn(Stored):
    """SSL4EO-S12 images as a stored column (``rows``: sample rows of ``source``), so that the
    engine streams them like a store's: read by its background thread, decoded (as they are,
    float32) on the device. ``dataset`` is unused (None)."""

    source: SSL4EOS12Pairs | None = None

    @property
    def pairs(self) -> SSL4EOS12Pairs:
        assert self.source is not None
        return self.source

    @property
    def shape(self) -> torch.Size:
        p = self.pairs
        return torch.Size((len(self.rows), len(p.bands), p.size, p.size))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def sample_bytes(self) -> int:
        p = self.pairs
        return len(p.bands) * p.size * p.size * 4

    @property
    def wire_bytes(self) -> int:
        return self.sample_bytes

    def read(self, positions: np.ndarray) -> list[np.ndarray]:
        return [self.pairs.read(self.rows[positions])]

    def decode(self, blocks: Sequence[Tensor]) -> Tensor:
        return blocks[0].float()

    def cat(self, other: Stored) -> Stored:
        raise CloudbenchError("SSL4EO-S12 columns cannot be joined")


def ssl4eo_data(root: str | Path, bands: Sequence[str], max_samples: int | None = None,
                ) -> PretrainData:
    """SSL4EO-S12 at ``root`` (:class:`SSL4EOS12Pairs`; every location and season, or
    ``max_samples`` evenly spaced samples) as one ``image`` column in ``bands`` order."""
    pairs = SSL4EOS12Pairs(root, bands)
    column = SSL4EOColumn(cast(CloudBenchDataset, None), "image", np.arange(len(pairs)),
                          source=pairs)
    inputs = _subset({"image": column}, len(pairs), max_samples)
    return PretrainData(inputs, tuple(bands), "ssl4eo-s12", str(Path(root).resolve()))


def place(data: PretrainData, config: TrainConfig, device: torch.device) -> str:
    """Decode ``data`` onto ``device`` or leave it streamed (as the harness places a split:
    ``config.data``; ``auto``: resident while it fits :func:`memory_budget`); returns the
    choice."""
    size = len(data) * sample_bytes(data.inputs)
    budget = memory_budget(config, device)
    keep = config.data == "resident" or (config.data == "auto" and size <= budget)
    if keep:
        data.inputs = resident(data.inputs, device)
        data.placement = "resident"
    else:
        check_in_flight([SplitData(data.inputs, [], [])], config, budget)
        data.placement = "stream"
    return data.placement


# --------------------------------------------------------------------------------------------
# Pre-training
# --------------------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    """What :func:`pretrain` did: the checkpoint, the trained pretext network (its ``encoder``
    is the backbone written), the engine's history, and timings."""

    out: Path
    model: PretextModel
    history: list[dict[str, Any]]
    samples: int
    placement: str
    seconds: float
    """Wall time of the whole call (data, model, training, writing)."""
    train_samples_per_second: float | None
    resumed_epochs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        last = self.history[-1] if self.history else {}
        speed = (f", {self.train_samples_per_second:.1f} samples/s"
                 if self.train_samples_per_second else "")
        resumed = f" ({self.resumed_epochs} resumed)" if self.resumed_epochs else ""
        return (f"wrote {self.out}: {self.model.method}, {len(self.history)} epochs{resumed} on "
                f"{self.samples} samples ({self.placement}), final loss "
                f"{last.get('loss', float('nan')):.4f}{speed}, {self.seconds:.1f} s")


def pretrain(
    method: str,
    *,
    store: str | Path | None = None,
    ssl4eo: str | Path | None = None,
    bands: Sequence[str] = FUSED_BANDS,
    out: str | Path,
    config: TrainConfig | None = None,
    image_size: int = 224,
    engine: Engine | None = None,
    settings: Mapping[str, Any] | None = None,
    max_samples: int | None = None,
    backbone: str | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> PretrainResult:
    """Pre-train ``method``'s backbone and write it to ``out`` (see the module docstring).

    Args:
        method: ``moco-v2``, ``moco-v3`` or ``mae``.
        store: a cloudbench store (its train split) — or ``ssl4eo``: SSL4EO-S12's root.
        bands: the input channels by name (default: VV, VH and the 12 L2A bands).
        out: the checkpoint to write (refused when it exists); the engine's checkpoint is
            :func:`checkpoint_path`, removed once ``out`` is written.
        config: the training settings (default :func:`default_config`; its ``data``,
            ``memory_budget_gb`` and ``prefetch`` place the data).
        image_size: the side of the views (ViTs: a multiple of 16).
        engine: device and seed (default ``Engine()``); one device (no Fabric).
        settings: changes to the pretext's settings (:mod:`cloudbench.models.pretext`).
        max_samples: pre-train on this many evenly spaced samples at most.
        backbone: a key of ``BACKBONES`` (default: the method's, ``DEFAULT_BACKBONES``).
        log: called with each epoch's history entry (see ``Engine.fit``).

    Raises:
        CloudbenchError: bad input (data, bands, sizes, settings), an existing ``out``, a
            checkpoint of another pre-training, or a loss that is no longer finite.
    """
    started = time.perf_counter()
    check_method(method)
    if (store is None) == (ssl4eo is None):
        raise CloudbenchError("give the data to pre-train on: a store or SSL4EO-S12's root "
                              "(one of them)")
    if max_samples is not None and max_samples < 2:
        raise CloudbenchError(f"max_samples must be at least 2, got {max_samples}")
    name = backbone or DEFAULT_BACKBONES[method]
    spec = backbone_spec(name)
    if method == "mae" and not spec.patch_size:
        raise CloudbenchError(f"MAE needs a ViT backbone, not {spec.title}")
    if spec.patch_size and image_size % spec.patch_size:
        raise CloudbenchError(f"{spec.title} needs an image size that is a multiple of "
                              f"{spec.patch_size}, got {image_size}")
    if image_size < 16:
        raise CloudbenchError(f"the image size must be at least 16, got {image_size}")
    chosen = settings_for(method, settings)
    config = config or default_config(method)
    engine = engine or Engine()
    if engine.world_size > 1:
        raise CloudbenchError("pre-training runs on one device (the momentum encoders and the "
                              "queue are not synchronised across processes)")
    bands = tuple(bands)
    out = Path(out)
    if out.exists():
        raise CloudbenchError(f"{out} exists; delete it or choose another output file")
    ckpt = checkpoint_path(out)
    if ckpt == out:
        raise CloudbenchError(f"the output file must not end in .ckpt (that is its checkpoint's "
                              f"name): {out}")

    torch.manual_seed(engine.seed)
    encoder = build_backbone(name, bands, pretrained=False)  # checks the bands by name
    data = (store_data(store, bands, max_samples) if store is not None
            else ssl4eo_data(cast(str | Path, ssl4eo), bands, max_samples))
    n = len(data)
    if n < 2:
        raise CloudbenchError(f"pre-training needs at least 2 samples, {data.source} has {n}")
    steps = config.epochs * len(batch_bounds(n, config.batch_size))
    model = build_pretext(method, encoder, image_size, chosen, total_steps=steps)

    identity = {"method": method, "backbone": name, "bands": list(bands),
                "image_size": image_size, "settings": chosen.model_dump(mode="json"),
                "data": data.source, "data_kind": data.kind, "max_samples": max_samples,
                "samples": n}
    _check_identity(ckpt, identity)
    placement = place(data, config, engine.device)

    def loss_fn(runner: torch.nn.Module, batch: dict[str, Tensor]) -> Mapping[str, Any]:
        terms: Mapping[str, Any] = runner(data.images(batch))
        return terms

    resumed = 0

    def on_epoch(entry: dict[str, Any]) -> None:
        nonlocal resumed
        if entry.get("resumed"):
            resumed += 1
        elif not math.isfinite(float(entry.get("loss", 0.0))):
            raise CloudbenchError(
                f"the {method} loss is {entry['loss']} after epoch {entry['epoch']}: the "
                f"learning rate ({config.lr}) is too high for this run; delete {ckpt} and "
                "pre-train again with a lower --lr")
        if log is not None:
            log(entry)

    history = engine.fit(model, data.inputs, loss_fn, config,
                         params=model.trainable_parameters(), checkpoint=ckpt, log=on_epoch)
    save_checkpoint(out, model.encoder, pretext=method, data=data.source, epochs=config.epochs,
                    data_kind=data.kind, samples=n, image_size=image_size,
                    config=config.model_dump(mode="json"),
                    settings=chosen.model_dump(mode="json"), seed=engine.seed,
                    history=[{k: v for k, v in e.items() if isinstance(v, int | float | str)}
                             for e in history])
    ckpt.unlink(missing_ok=True)
    _identity_path(ckpt).unlink(missing_ok=True)
    return PretrainResult(out, model, history, n, placement, time.perf_counter() - started,
                          engine.train_samples_per_second, resumed)


def _identity_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".json")


def _check_identity(ckpt: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume ``ckpt`` when it pre-trains something else; record ``identity``
    beside it (atomically) otherwise."""
    path = _identity_path(ckpt)
    if ckpt.exists() and path.exists():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CloudbenchError(f"cannot read {path}: {err}; delete it and {ckpt}") from err
        changed = sorted(k for k in identity.keys() | theirs.keys()
                         if identity.get(k) != theirs.get(k))
        if changed:
            what = ", ".join(f"{k}: {theirs.get(k)!r} there, {identity.get(k)!r} now"
                             for k in changed)
            raise CloudbenchError(f"checkpoint {ckpt} is of another pre-training ({what}); "
                                  "delete it or choose another output file")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(identity, indent=2))
