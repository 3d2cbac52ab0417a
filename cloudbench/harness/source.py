"""Source models: a ResNet-50 trained on a cloud-free optical source domain.

Until the source pre-training command exists (NWPU-RESISC45, AID), the harness trains the
source model itself on a cloud-free dataset in the store format (the demo uses one built from
the synthetic world's clearest dates). Checkpoints hold plain tensors, lists and strings and are
loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.errors import CloudbenchError
from cloudbench.harness.data import load_split, standardise
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.models import encoder, resnet50


@dataclass
class SourceModel:
    """A trained source classifier, its encoder (the classifier without its head), its classes."""

    classifier: nn.Module
    classes: list[str]
    bands: list[str]

    def encoder(self) -> tuple[nn.Module, int]:
        """The classifier's trunk (shares weights with it) and its feature size."""
        return encoder(self.classifier)


def train_source(
    dataset: Path,
    out: Path,
    engine: Engine,
    config: TrainConfig,
    bands: list[str],
) -> SourceModel:
    """Train (or resume, or load when done) a ResNet-50 on ``dataset``'s train split."""
    if out.exists():
        return load_source(out, engine.device)
    train = load_split(dataset, "train", optical=bands, sar=(), labeled_per_class=0, seed=0,
                       device=engine.device)
    standardise([train], [train])
    model = resnet50(len(bands), len(train.classes)).to(engine.device)

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(model(batch["image_s2"]), batch["label"])}

    inputs = {"image_s2": train.inputs["image_s2"], "label": train.inputs["label"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    engine.fit(model, inputs, loss, config, checkpoint=out.with_suffix(".ckpt"))
    state = {"state_dict": model.state_dict(), "classes": train.classes, "bands": bands}
    tmp = out.with_name(f".tmp-{out.name}")
    torch.save(state, tmp)
    os.replace(tmp, out)
    out.with_suffix(".ckpt").unlink(missing_ok=True)
    return SourceModel(model.eval(), train.classes, bands)


def load_source(path: Path, device: torch.device | str = "cpu") -> SourceModel:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several types for damaged or foreign files
        raise CloudbenchError(f"{path} is not a readable source-model checkpoint: {err}") from err
    model = resnet50(len(state["bands"]), len(state["classes"]))
    model.load_state_dict(state["state_dict"])
    return SourceModel(model.to(device).eval(), list(state["classes"]), list(state["bands"]))
