"""The splits of a dataset as the harness trains and predicts on them.

Keys: ``image_s2`` (the optical view), ``image_s1`` (the SAR view), ``label``, ``cloud_mask``,
``cloud_fraction``, and ``image_s2_clear`` (the cloud-free optical target, with ``image_s2``'s
bands) for methods that ask for it where the store has one. Images are standardised per channel
with the mean and standard deviation of the dataset's ``train`` split (labeled and unlabeled
together, never the test split; optical statistics over cloud-free pixels, see
:func:`standardise`), computed once and applied to every split alike; ``image_s2_clear`` gets
``image_s2``'s statistics, so a reconstruction and its target share one scale.

Splits of a store without classes (SEN12MS-CR: cloudy/clear pairs, no labels) have the task
``reconstruction`` (:data:`RECONSTRUCTION`): only methods that reconstruct images run on them.

A split is loaded with its images and cloud mask left in the store
(:class:`~cloudbench.harness.stream.Stored` columns; labels and cloud fractions are small and
always tensors); :func:`place` then decodes each split onto the device (resident) or leaves it
to be streamed, by its size against a memory budget (``TrainConfig.data``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import Tensor

from cloudbench.datasets import CloudBenchDataset
from cloudbench.errors import CloudbenchError
from cloudbench.harness.engine import TrainConfig
from cloudbench.harness.stream import Column, Stored, resident, sample_bytes

IMAGE_KEYS = ("image_s2", "image_s1")
CLEAR_KEY = "image_s2_clear"
"""The cloud-free optical target, standardised with ``image_s2``'s statistics."""
RECONSTRUCTION = "reconstruction"
"""The harness task of a store without classes: image pairs to reconstruct, nothing to
classify."""
STATISTICS_SAMPLES = 4096
"""The most reference samples the standardisation statistics are computed over: all of them up
to this many, else this many evenly spaced (a BigEarthNet-sized train split would otherwise
be read whole once per run)."""
PREDICT_BATCH = 256
"""The batch size of :meth:`Engine.predict <cloudbench.harness.engine.Engine.predict>`."""
GB = 1e9


@dataclass
class SplitData:
    """One split: ``inputs`` (tensors or stored columns) share their first dimension with
    ``ids``."""

    inputs: dict[str, Column]
    ids: list[str]
    cloud_states: list[str]
    classes: list[str] = field(default_factory=list)
    task: str = "multiclass"
    bands: dict[str, list[str]] = field(default_factory=dict)
    """Per image key (``image_s2``, ``image_s1``), the band names of its channels, in order."""
    root: Path | None = None
    """The store the split was read from (None for splits made in memory)."""
    statistics: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    """Per image key, the (mean, std) per channel (float32 (C,), the bands' units) that
    :func:`standardise` applied: ``stored = (x - mean) / std``. Empty before standardising.
    Methods whose networks expect the physical units (e.g. SSL backbones with their own
    normalisation) undo it with these."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> Tensor:
        label = self.inputs["label"]
        assert isinstance(label, Tensor), "labels are always tensors"
        return label

    @property
    def cloud_fractions(self) -> Tensor:
        fractions = self.inputs["cloud_fraction"]
        assert isinstance(fractions, Tensor), "cloud fractions are always tensors"
        return fractions


@dataclass
class TargetData:
    labeled: SplitData
    unlabeled: SplitData
    test: SplitData

    @property
    def num_classes(self) -> int:
        return len(self.test.classes)


def load_split(
    root: Path,
    split: str,
    *,
    optical: Sequence[str],
    sar: Sequence[str],
    labeled_per_class: int,
    seed: int,
    clear: bool = False,
) -> SplitData:
    """One split with the optical and SAR views and the cloud mask left in the store, not yet
    standardised; with ``clear``, also ``image_s2_clear`` where the store holds the cloud-free
    target for the ``optical`` bands (nothing otherwise: a test split of real clouds has no
    target)."""
    if not optical and not sar:
        raise CloudbenchError("at least one of the optical or SAR bands is needed")
    dataset = CloudBenchDataset(root, split=split, bands=[*optical, *sar],
                                labeled_per_class=labeled_per_class, seed=seed)
    inputs: dict[str, Column] = {
        key: Stored(dataset, key, dataset.indices)
        for key, bands in (("image_s2", optical), ("image_s1", sar)) if bands
    }
    if clear and optical and CLEAR_KEY in dataset.image_keys:
        inputs[CLEAR_KEY] = Stored(dataset, CLEAR_KEY, dataset.indices)
    inputs["label"] = torch.from_numpy(dataset.labels)
    inputs["cloud_mask"] = Stored(dataset, "cloud_mask", dataset.indices)
    inputs["cloud_fraction"] = torch.from_numpy(dataset.cloud_fractions)
    bands = {key: list(chosen) for key, chosen in (("image_s2", optical), ("image_s1", sar))
             if chosen}
    if CLEAR_KEY in inputs:
        bands[CLEAR_KEY] = list(optical)
    task = dataset.task if dataset.classes else RECONSTRUCTION
    return SplitData(inputs, list(dataset.ids), list(dataset.cloud_states),
                     list(dataset.classes), task, bands, Path(root))


def standardise(splits: Sequence[SplitData], reference: Sequence[SplitData]) -> None:
    """Standardise the image channels of ``splits`` in place with ``reference`` statistics.

    SAR channels use every pixel. Optical channels use the cloud-free pixels (``cloud_mask``
    0) when the reference has more than one: cloud-free target pixels are then standardised as
    a cloud-free source domain standardised with its own statistics is, so a source model
    meets them on the scale it was trained on; bright clouds would otherwise shift the mean and
    inflate the standard deviation in proportion to the cloud cover.

    The statistics (mean and unbiased standard deviation per channel) are accumulated in
    float64 over chunks of at most :data:`STATISTICS_SAMPLES` reference samples. Stored
    columns get them as their standardisation; tensors are standardised at once. The
    cloud-free target ``image_s2_clear`` gets the optical statistics.
    """
    for key in IMAGE_KEYS:
        parts = [s for s in reference if key in s.inputs and len(s)]
        if not parts:
            continue
        mean, std = _statistics(parts, key, clear_only=key == "image_s2")
        targets = (key, CLEAR_KEY) if key == "image_s2" else (key,)
        for split, target in ((s, t) for s in splits for t in targets):
            column = split.inputs.get(target)
            if isinstance(column, Stored):
                split.inputs[target] = column.standardised(mean, std)
            elif column is not None:
                shape = (1, -1, 1, 1)
                split.inputs[target] = (column - mean.to(column.device).reshape(shape)) \
                    / std.to(column.device).reshape(shape)
            if column is not None:
                split.statistics[target] = (mean, std)


def _statistics(parts: Sequence[SplitData], key: str, clear_only: bool) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation (float32 (C,)) of ``key`` over ``parts``."""
    sizes = np.array([len(p) for p in parts])
    total = int(sizes.sum())
    chosen = np.unique(np.linspace(0, total - 1, min(total, STATISTICS_SAMPLES)).astype(np.int64))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    clear_known = clear_only and all("cloud_mask" in p.inputs for p in parts)
    moments = {"all": _Moments(), "clear": _Moments()}
    for part, start in zip(parts, offsets[:-1], strict=True):
        mine = chosen[(chosen >= start) & (chosen < start + len(part))] - start
        for first in range(0, len(mine), 256):
            positions = torch.from_numpy(mine[first:first + 256])
            image = _chunk(part.inputs[key], positions).double()
            pixels = image.transpose(0, 1).reshape(image.shape[1], -1)  # (C, n*H*W)
            moments["all"].add(pixels)
            if clear_known:
                clear = _chunk(part.inputs["cloud_mask"], positions).reshape(-1) == 0
                moments["clear"].add(pixels[:, clear.to(pixels.device)])
    used = moments["clear"] if clear_known and moments["clear"].count > 1 else moments["all"]
    return used.mean_std()


def _chunk(column: Column, positions: Tensor) -> Tensor:
    """The samples at ``positions`` of a column, on the CPU, as stored or as held."""
    if isinstance(column, Stored):
        return column.decode([torch.from_numpy(b) for b in column.read(positions.numpy())])
    return column.index_select(0, positions.to(column.device)).cpu()


class _Moments:
    """Count, mean and sum of squared deviations per channel, merged chunk by chunk (Chan et
    al.'s parallel update), in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, pixels: Tensor) -> None:
        n = pixels.shape[1]
        if n == 0:
            return
        mean = pixels.mean(dim=1)
        m2 = ((pixels - mean[:, None]) ** 2).sum(dim=1)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def mean_std(self) -> tuple[Tensor, Tensor]:
        assert self.mean is not None and self.m2 is not None
        std = (self.m2 / max(self.count - 1, 1)).sqrt().clamp_min(1e-6)
        return self.mean.float(), std.float()


def load_target(
    root: Path,
    *,
    optical: Sequence[str],
    sar: Sequence[str],
    labeled_per_class: int,
    seed: int,
    clear: bool = False,
) -> TargetData:
    """The ``labeled``, ``unlabeled`` and ``test`` splits, standardised with train statistics,
    left in the store (see :func:`place`); ``clear`` as in :func:`load_split`."""
    splits = [
        load_split(root, name, optical=optical, sar=sar, labeled_per_class=labeled_per_class,
                   seed=seed, clear=clear)
        for name in ("labeled", "unlabeled", "test")
    ]
    standardise(splits, reference=splits[:2])
    return TargetData(*splits)


def memory_budget(config: TrainConfig, device: torch.device) -> float:
    """Bytes the data may take on ``device``: ``config.memory_budget_gb``, else half of what is
    free (CUDA: ``torch.cuda.mem_get_info``; CPU: available RAM)."""
    if config.memory_budget_gb is not None:
        return config.memory_budget_gb * GB
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2
    return psutil.virtual_memory().available / 2


def check_in_flight(streamed: Sequence[SplitData], config: TrainConfig, room: float,
                    where: str = "") -> None:
    """Refuse ``room`` bytes that cannot hold the batches a streamed split has in flight: the
    one trained on, the one being copied and ``config.prefetch`` read ahead, at the larger of
    the training and prediction batch sizes.

    Raises:
        CloudbenchError: naming the sizes and the settings that change them.
    """
    per_sample = max(sample_bytes(s.inputs) for s in streamed)
    batch = max(config.batch_size, PREDICT_BATCH)
    in_flight = per_sample * batch * (config.prefetch + 2)
    if in_flight > room:
        raise CloudbenchError(
            f"{room / GB:.3g} GB of memory budget{where} cannot hold the streamed batches in "
            f"flight ({config.prefetch + 2} batches of {batch} samples of "
            f"{per_sample / 1e6:.3g} MB: {in_flight / GB:.3g} GB); raise "
            "train.memory_budget_gb or lower train.batch_size or train.prefetch"
        )


def place(data: TargetData, config: TrainConfig, device: torch.device) -> dict[str, str]:
    """Decode each part of ``data`` onto ``device`` or leave it streamed; returns the choice
    (``resident`` or ``stream``) per part, ``train`` (labeled and unlabeled, which methods pool)
    and ``test``.

    ``config.data``: ``resident`` or ``stream`` for both; ``auto`` makes the parts resident,
    smallest first, while their decoded size fits :func:`memory_budget`, and streams the rest.
    Streaming needs room for its batches in flight beside the resident parts
    (:func:`check_in_flight`).

    Raises:
        CloudbenchError: the budget cannot hold those batches.
    """
    parts = {"train": [data.labeled, data.unlabeled], "test": [data.test]}
    sizes = {name: sum(len(s) * sample_bytes(s.inputs) for s in splits)
             for name, splits in parts.items()}
    budget = memory_budget(config, device)
    chosen: dict[str, str] = {}
    used = 0.0
    for name in sorted(parts, key=lambda name: sizes[name]):
        fits = used + sizes[name] <= budget
        keep = config.data == "resident" or (config.data == "auto" and fits)
        chosen[name] = "resident" if keep else "stream"
        used += sizes[name] if keep else 0
    streamed = [s for name, splits in parts.items() if chosen[name] == "stream" for s in splits]
    if streamed:
        check_in_flight(streamed, config, budget - used,
                        f" (of {budget / GB:.3g} GB, {used / GB:.3g} GB resident)")
    for name, splits in parts.items():
        for split in splits:
            if chosen[name] == "resident":
                split.inputs = resident(split.inputs, device)
            else:  # the images stay in the store; labels and fractions are small
                split.inputs = {k: v if isinstance(v, Stored) else v.to(device)
                                for k, v in split.inputs.items()}
    return {name: chosen[name] for name in parts}
