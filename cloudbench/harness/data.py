"""A split of a dataset as normalised tensors on a device: what methods train and predict on.

Keys: ``image_s2`` (the optical view), ``image_s1`` (the SAR view), ``label``, ``cloud_mask``,
``cloud_fraction``. Images are standardised per channel with the mean and standard deviation of
the dataset's ``train`` split (labeled and unlabeled together, never the test split; optical
statistics over cloud-free pixels, see :func:`standardise`), computed once and applied to every
split alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cloudbench.datasets import CloudBenchDataset

IMAGE_KEYS = ("image_s2", "image_s1")


@dataclass
class SplitData:
    """One split on a device: ``inputs`` share their first dimension with ``ids``."""

    inputs: dict[str, Tensor]
    ids: list[str]
    cloud_states: list[str]
    classes: list[str] = field(default_factory=list)
    task: str = "multiclass"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> Tensor:
        return self.inputs["label"]


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
    device: torch.device,
) -> SplitData:
    """One split with the optical and SAR views, not yet normalised."""
    inputs: dict[str, Tensor] = {}
    dataset = None
    for key, bands in (("image_s2", optical), ("image_s1", sar)):
        if not bands:
            continue
        dataset = CloudBenchDataset(root, split=split, bands=bands,
                                    labeled_per_class=labeled_per_class, seed=seed)
        tensors = dataset.to_tensors(device)
        inputs[key] = tensors[key]
        for other in ("label", "cloud_mask", "cloud_fraction"):
            inputs[other] = tensors[other]
    assert dataset is not None, "at least one of optical or SAR bands is needed"
    return SplitData(inputs, list(dataset.ids), list(dataset.cloud_states),
                     list(dataset.classes), dataset.task)


def standardise(splits: Sequence[SplitData], reference: Sequence[SplitData]) -> None:
    """Standardise the image channels of ``splits`` in place with ``reference`` statistics.

    SAR channels use every pixel. Optical channels use the cloud-free pixels (``cloud_mask``
    0) when the reference has any: cloud-free target pixels are then standardised as a
    cloud-free source domain standardised with its own statistics is, so a source model meets
    them on the scale it was trained on; bright clouds would otherwise shift the mean and
    inflate the standard deviation in proportion to the cloud cover.
    """
    for key in IMAGE_KEYS:
        parts = [s for s in reference if key in s.inputs and len(s)]
        if not parts:
            continue
        stacked = torch.cat([s.inputs[key] for s in parts])
        pixels = stacked.transpose(0, 1).reshape(stacked.shape[1], -1)  # (C, N*H*W)
        if key == "image_s2" and all("cloud_mask" in s.inputs for s in parts):
            clear = torch.cat([s.inputs["cloud_mask"] for s in parts]).reshape(-1) == 0
            if int(clear.sum()) > 1:
                pixels = pixels[:, clear]
        mean = pixels.mean(dim=1).reshape(1, -1, 1, 1)
        std = pixels.std(dim=1).clamp_min(1e-6).reshape(1, -1, 1, 1)
        for split in splits:
            if key in split.inputs:
                split.inputs[key] = (split.inputs[key] - mean) / std


def load_target(
    root: Path,
    *,
    optical: Sequence[str],
    sar: Sequence[str],
    labeled_per_class: int,
    seed: int,
    device: torch.device,
) -> TargetData:
    """The ``labeled``, ``unlabeled`` and ``test`` splits, standardised with train statistics."""
    splits = [
        load_split(root, name, optical=optical, sar=sar, labeled_per_class=labeled_per_class,
                   seed=seed, device=device)
        for name in ("labeled", "unlabeled", "test")
    ]
    standardise(splits, reference=splits[:2])
    return TargetData(*splits)
