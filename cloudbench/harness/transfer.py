"""Machinery the transfer methods share: the source model adapted to the target classes (f_S),
pseudo-labels and their confidence, and the pooled labeled + unlabeled training inputs.

f_S (ESCCS paper, section II-A): the source model ``f_pre`` (a ResNet-50 trained on a cloud-free
optical source domain) is fine-tuned to the target class scheme with the labeled target
samples. The paper does not say which layers are fine-tuned; cloudbench freezes the source
encoder (in eval mode: its batch-norm statistics stay those of the source domain) and trains a
new linear classifier on its features of the labeled optical images, which is exactly the
paper's "Finetune (Opt only)" comparator. Because the encoder is frozen, its features are
computed once per image, without augmentation, and standardised before the classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.harness import stream
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.losses import MultilabelLoss, task_loss

if TYPE_CHECKING:
    from cloudbench.harness.methods import FitContext

Forward = Callable[[nn.Module, dict[str, Tensor]], Tensor]
UNLABELED = -1
"""The ``label`` of unlabeled samples in :func:`pooled` inputs (cross-entropy's ignore index)."""


class SourceClassifier(nn.Module):
    """f_S: the frozen source encoder, its features standardised, a linear classifier."""

    def __init__(self, trunk: nn.Module, scale: FeatureScale, head: nn.Linear) -> None:
        super().__init__()
        self.trunk = trunk
        self.scale = scale
        self.head = head

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.scale(self.trunk(image)))


class FeatureScale(nn.Module):
    """A fixed per-feature standardisation ``(f - mean) / std`` (a non-affine batch norm frozen
    at the statistics it was given), as linear probes usually put before the classifier: the
    scale of a source encoder's features depends on how it was trained, and without this one
    learning rate cannot suit every encoder."""

    mean: Tensor
    std: Tensor

    def __init__(self, features: Tensor) -> None:
        super().__init__()
        features = features.float()
        self.register_buffer("mean", features.mean(dim=0))
        std = features.std(dim=0) if features.shape[0] > 1 else torch.ones_like(features[0])
        self.register_buffer("std", std.clamp_min(1e-6))

    def forward(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std


def optical_forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["image_s2"])


def sar_forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["image_s1"])


def _features(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["image_s2"])


def _classify(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["features"])


def adapt_source(
    engine: Engine,
    source_encoder: tuple[nn.Module, int],
    labeled: SplitData,
    num_classes: int,
    train: TrainConfig,
    log: Callable[[dict[str, object]], None] | None = None,
    multilabel_loss: MultilabelLoss = "bce",
) -> SourceClassifier:
    """f_S: a new linear classifier on the frozen source encoder, trained on ``labeled`` optical.

    The features are standardised with their statistics over ``labeled`` (:class:`FeatureScale`).
    The classifier is trained with the loss of ``labeled``'s task
    (:func:`~cloudbench.harness.losses.task_loss`: cross-entropy, or ``multilabel_loss`` on
    multi-hot labels).

    ``source_encoder`` is :meth:`SourceModel.encoder() <cloudbench.harness.source.SourceModel.
    encoder>`; ``train`` sets the classifier's optimiser, schedule and epochs (augmentation does
    not apply: the features are computed once).
    """
    trunk, dim = source_encoder
    trunk = trunk.eval().requires_grad_(False)
    features = engine.predict(trunk, labeled.inputs, _features).to(engine.device).float()
    scale = FeatureScale(features).to(engine.device)
    head = nn.Linear(dim, num_classes).to(engine.device)

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = model(batch["features"])
        return {"loss": task_loss(logits, batch["label"], labeled.task, multilabel_loss)}

    inputs = {"features": scale(features), "label": labeled.labels}
    engine.fit(head, inputs, loss, train.model_copy(update={"augment": False}), log=log)
    return SourceClassifier(trunk, scale, head).eval()


def fit_source(context: FitContext) -> SourceClassifier:
    """f_S for a method's fit: :func:`adapt_source` on ``context``'s source model and labeled
    split, with the run's training settings, logged as stage ``source``."""
    assert context.source is not None, "the method must declare needs_source = True"
    return adapt_source(context.engine, context.source.encoder(), context.labeled,
                        context.num_classes, context.train,
                        log=lambda entry: context.log("source", entry))


def predict_source(engine: Engine, model: SourceClassifier, inputs: stream.Inputs) -> Tensor:
    """f_S's logits (N, K) for ``inputs`` (their ``image_s2``), in fp32."""
    features = engine.predict(model.trunk, inputs, _features).to(engine.device).float()
    return engine.predict(model.head, {"features": model.scale(features)}, _classify).float()


def probabilities(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Softmax of ``logits / temperature`` in fp32."""
    return F.softmax(logits.float() / temperature, dim=1)


def confidence(probs: Tensor) -> Tensor:
    """Each sample's probability of its own predicted class (N,)."""
    return probs.max(dim=1).values


def confident(probs: Tensor, min_confidence: float | None) -> Tensor:
    """Mask (N,) of the samples whose confidence is at least ``min_confidence`` (all if None)."""
    if min_confidence is None:
        return torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
    return confidence(probs) >= min_confidence


def pseudo_labeled(label: Tensor, teacher_logits: Tensor,
                   min_confidence: float | None) -> tuple[Tensor, Tensor]:
    """``(keep, target)``: the mask (N,) of the labeled samples and of the unlabeled ones
    (``label`` == -1) whose teacher confidence is at least ``min_confidence``, and each sample's
    training target (N,): its true label when labeled, else the teacher's predicted class."""
    probs = probabilities(teacher_logits)
    labeled = label != UNLABELED
    keep = labeled | confident(probs, min_confidence).to(labeled.device)
    target = label.where(labeled, probs.argmax(dim=1).to(label.device))
    return keep, target


def pooled(labeled: SplitData, unlabeled: SplitData) -> dict[str, Any]:
    """The labeled and unlabeled samples' inputs as one set (tensors joined, stored columns
    too, still in the store); unlabeled labels are :data:`UNLABELED` (so a method cannot use
    them by accident)."""
    out: dict[str, Any] = {}
    for key, value in labeled.inputs.items():
        other = unlabeled.inputs[key]
        if key == "label":
            other = torch.full_like(unlabeled.labels, UNLABELED)
        out[key] = stream.cat(value, other)
    return out


def select(inputs: Mapping[str, Any], mask: Tensor) -> dict[str, Any]:
    """The samples of ``inputs`` (tensors or stored columns) where ``mask`` (N,) is true."""
    return stream.take(inputs, mask.nonzero().squeeze(1))


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-sample cross-entropy −Σ_k target_k log softmax(logits)_k (N,); ``target`` rows are
    probability vectors (one-hot for hard labels)."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
