"""A split of a dataset as normalised tensors on a device: what methods train and predict on.

Keys: ``image_s2`` (the optical view), ``image_s1`` (the SAR view), ``label``, ``cloud_mask``,
``cloud_fraction``. Images are standardised per channel with the mean and standard deviation of
the dataset's ``train`` split (labeled and unlabeled together, never the test split), computed
once and applied to every split alike.
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
    """Standardise the image channels of ``splits`` in place with ``reference`` statistics."""
    for key in IMAGE_KEYS:
        parts = [s.inputs[key] for s in reference if key in s.inputs and len(s)]
        if not parts:
            continue
        stacked = torch.cat(parts)
        mean = stacked.mean(dim=(0, 2, 3), keepdim=True)
        std = stacked.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
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
