"""TLF: transfer with late fusion of separately trained optical and SAR encoders.

The "Opt to Opt&SAR" comparator of the ESCCS paper (Tables I–IV, "TLF"; the paper's ref. [45]):
"a late fusion strategy during transfer, extracting features from different modalities using
separate encoders and combining them for classification". cloudbench builds it in three stages:

1. ``source``: f_S, the source ResNet-50 adapted to the target classes on the labeled optical
   images (:func:`cloudbench.harness.transfer.adapt_source`); its frozen trunk is the optical
   encoder (2048 features).
2. ``sar``: the SAR encoder, a GoogLeNet trained from scratch with cross-entropy on the SAR images
   of the labeled and unlabeled samples: labeled samples with their true labels, unlabeled ones
   with f_S's hard pseudo-label from the paired optical image. This is the transfer step: the
   source knowledge reaches the SAR encoder through the optical-SAR pairs. Its trunk (1024
   features) is then frozen.
3. ``fusion``: a linear classifier on the concatenated features [optical; SAR] (3072) of the
   labeled pairs, standardised per feature, both encoders frozen.

Choices the paper leaves open:

- the encoders (the source ResNet-50 trunk for optical, a GoogLeNet, the paper's target
  network, for SAR) and how the SAR encoder learns (pseudo-labels of f_S, as above);
- which unlabeled samples the SAR encoder learns from: all by default (``min_confidence``
  null), or those whose f_S max softmax probability is at least ``min_confidence``;
- hard pseudo-labels computed once by the fixed f_S in eval mode on the unaugmented optical
  images; the SAR encoder sees the engine's augmented images;
- fusion by concatenating the two feature vectors, standardising each feature with its mean and
  standard deviation over the labeled pairs (:class:`~cloudbench.harness.transfer.FeatureScale`,
  as f_S does: the two encoders' features have unrelated scales), and one linear layer trained
  on the labeled pairs only; the frozen encoders run in eval mode (batch-norm statistics fixed,
  GoogLeNet's dropout off) and their features are computed once, without augmentation;
- all three stages use the same training settings (the spec's).

Multiclass datasets only: its SAR encoder learns from the teacher's softmax pseudo-labels; the
runner refuses a multilabel dataset before any run trains.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, ForwardFn, LossFn
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.harness.transfer import (
    FeatureScale,
    fit_source,
    pooled,
    predict_source,
    pseudo_labeled,
    sar_forward,
    select,
)
from cloudbench.models.classifiers import encoder, googlenet


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    min_confidence: float | None = Field(None, ge=0, le=1)
    """The SAR encoder learns from the unlabeled samples whose f_S max softmax probability is at
    least this; null (default): from all of them. Labeled samples are always used."""


class LateFusion(nn.Module):
    """Frozen optical and SAR encoders (kept in eval mode), features concatenated and
    standardised (``scale``; identity until :meth:`set_scale`), one linear classifier."""

    def __init__(self, optical: nn.Module, optical_dim: int, sar: nn.Module, sar_dim: int,
                 num_classes: int) -> None:
        super().__init__()
        self.optical = optical.requires_grad_(False)
        self.sar = sar.requires_grad_(False)
        self.scale: nn.Module = nn.Identity()
        self.head = nn.Linear(optical_dim + sar_dim, num_classes)
        self.train()

    def set_scale(self, features: Tensor) -> Tensor:
        """Standardise the fused features with the statistics of ``features`` (N, D) from now
        on; returns ``features`` standardised."""
        self.scale = FeatureScale(features).to(features.device)
        return self.scale(features)

    def train(self, mode: bool = True) -> LateFusion:
        super().train(mode)
        self.optical.eval()
        self.sar.eval()
        return self

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        """[optical features; SAR features] (B, optical_dim + sar_dim), fp32."""
        return torch.cat([self.optical(batch["image_s2"]).float(),
                          self.sar(batch["image_s1"]).float()], dim=1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(self.scale(self.features(batch)))


def _forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch)


def _features(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    assert isinstance(model, LateFusion)
    return model.features(batch)


def _classify(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["features"])


def _cross_entropy(forward: ForwardFn) -> LossFn:
    """Cross-entropy of ``forward(model, batch)`` against ``batch["label"]``."""
    def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(forward(model, batch).float(), batch["label"])}
    return loss


@register
class TLF(Method):
    name = "tlf"
    modalities = ("s2", "s1")
    needs_source = True
    Params = Params

    def fit(self, context: FitContext) -> None:
        self.engine: Engine = context.engine
        device = self.engine.device
        source = fit_source(context)

        # The SAR encoder, trained on f_S's pseudo-labels (true labels where labeled).
        inputs = pooled(context.labeled, context.unlabeled)
        min_confidence = self.params.min_confidence  # type: ignore[attr-defined]
        keep, target = pseudo_labeled(inputs["label"].cpu(),
                                      predict_source(self.engine, source, inputs).cpu(),
                                      min_confidence)
        sar_inputs = select({"image_s1": inputs["image_s1"],
                             "label": target.to(inputs["label"].device)}, keep)
        del inputs
        sar_net = googlenet(int(sar_inputs["image_s1"].shape[1]), context.num_classes)
        self.engine.fit(sar_net.to(device), sar_inputs, _cross_entropy(sar_forward),
                        context.train, log=lambda entry: context.log("sar", entry))
        sar_trunk, sar_dim = encoder(sar_net)

        # Both encoders frozen; a linear classifier on their features of the labeled pairs.
        optical_dim = source.head.in_features
        self.model = LateFusion(source.trunk, optical_dim, sar_trunk, sar_dim,
                                context.num_classes).to(device)
        features = self.engine.predict(self.model, context.labeled.inputs, _features)
        scaled = self.model.set_scale(features.to(device))
        head_inputs = {"features": scaled, "label": context.labeled.labels}
        self.engine.fit(self.model.head, head_inputs, _cross_entropy(_classify),
                        context.train.model_copy(update={"augment": False}),
                        log=lambda entry: context.log("fusion", entry))

    def predict(self, split: SplitData) -> Tensor:
        return self.engine.predict(self.model, split.inputs, _forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, _forward
