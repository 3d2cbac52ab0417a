"""KDHN: knowledge distillation across heterogeneous networks and data, optical to optical + SAR.

The "Opt to Opt&SAR" comparator of the ESCCS paper (Tables I–IV, "KDHN"; the paper's ref. [34]):
"knowledge distillation to facilitate knowledge transfer across heterogeneous networks,
filtering samples with high prediction uncertainty during the transfer process". The teacher is
f_S, the source ResNet-50 adapted to the target classes on the labeled optical images
(:func:`cloudbench.harness.transfer.adapt_source`; stage ``source``); the student is a
two-stream GoogLeNet (one encoder per modality, concatenated features, one linear head) on the
optical + SAR pairs, trained with cross-entropy (stage ``target``) on

- the labeled pairs, with their true labels, and
- the unlabeled pairs whose teacher confidence (max softmax probability of f_S on the optical
  image) is at least ``min_confidence``, with f_S's hard pseudo-label (its argmax).

Choices the paper leaves open:

- the uncertainty measure and threshold: f_S's max softmax probability (temperature 1) and
  ``min_confidence`` 0.5 (null keeps every unlabeled sample);
- hard pseudo-labels (not soft ones), computed once by the fixed teacher in eval mode on the
  unaugmented images; the student sees the engine's augmented images;
- how the student takes both modalities: two streams (as ``sl``'s default), whose per-modality
  shares of the logits give the logged ``loss_s2`` / ``loss_s1`` (for the modality-imbalance
  curves); the share of unlabeled samples kept is logged as the constant term ``kept``;
- the teacher's classifier and the student use the same training settings (the spec's).

Multiclass datasets only: its pseudo-labels are the teacher's softmax classes; the runner
refuses a multilabel dataset before any run trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.harness.transfer import (
    UNLABELED,
    fit_source,
    pooled,
    predict_source,
    pseudo_labeled,
    select,
)
from cloudbench.models.classifiers import TwoStream

MODALITIES = {"s2": "image_s2", "s1": "image_s1"}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    min_confidence: float | None = Field(0.5, ge=0, le=1)
    """Unlabeled samples are kept when f_S's max softmax probability is at least this; null:
    keep all. Labeled samples are always kept."""


def _forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model({m: batch[k] for m, k in MODALITIES.items()})


@register
class KDHN(Method):
    name = "kdhn"
    modalities = ("s2", "s1")
    needs_source = True
    Params = Params

    def fit(self, context: FitContext) -> None:
        self.engine: Engine = context.engine
        device = self.engine.device
        teacher = fit_source(context)
        inputs = pooled(context.labeled, context.unlabeled)
        logits = predict_source(self.engine, teacher, inputs)
        min_confidence = self.params.min_confidence  # type: ignore[attr-defined]
        keep, target = pseudo_labeled(inputs["label"].cpu(), logits, min_confidence)
        unlabeled = inputs["label"].cpu() == UNLABELED
        # the share of the unlabeled samples kept for training
        self.kept = float((keep & unlabeled).sum()) / max(1, int(unlabeled.sum()))
        inputs["label"] = target.to(inputs["label"].device)
        inputs = select(inputs, keep)

        channels = {m: int(inputs[k].shape[1]) for m, k in MODALITIES.items()}
        self.model = TwoStream(channels, context.num_classes).to(device)
        kept = self.kept

        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor | float]:
            label = batch["label"]
            views = {m: batch[k] for m, k in MODALITIES.items()}
            logits, parts = cast(TwoStream, model).forward_parts(views)
            terms: dict[str, Tensor | float] = {
                f"loss_{m}": F.cross_entropy(p.float(), label).detach() for m, p in parts.items()
            }
            return {"loss": F.cross_entropy(logits.float(), label), **terms, "kept": kept}

        self.engine.fit(self.model, inputs, loss, context.train,
                        log=lambda entry: context.log("target", entry))

    def predict(self, split: SplitData) -> Tensor:
        return self.engine.predict(self.model, split.inputs, _forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, _forward
