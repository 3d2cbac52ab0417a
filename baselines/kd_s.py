"""KD-S: knowledge distillation with soft pseudo-labels, optical to optical.

The "Opt to Opt" comparator of the ESCCS paper (Tables I–IV, "KD-S"; the paper's ref. [33],
Hinton, Vinyals and Dean 2015, "Distilling the knowledge in a neural network"): the teacher is
f_S, the source ResNet-50 adapted to the target classes (:func:`cloudbench.harness.transfer.
adapt_source`, trained on the labeled optical images; logged as stage ``source``); the student
is a GoogLeNet (the paper's target network) trained from scratch on the target optical images,
labeled and unlabeled, with Hinton's loss (:func:`kd_loss`)::

    alpha * CE(student, true label) + (1 - alpha) * T² * KL(softmax(teacher/T) ‖ softmax(student/T))

Choices the paper leaves open:

- ``temperature`` 4 and ``alpha`` 0.5 are the usual values of Hinton-style distillation, not
  the paper's (it gives none);
- the cross-entropy term covers the labeled samples of a batch (averaged over them; 0 in a batch
  without any), the KL term every sample of the batch (averaged over them);
- the teacher is fixed: its logits are computed once, in eval mode, on the unaugmented images,
  and stored with the training inputs; the student sees the engine's augmented images (flips and
  90° rotations, which do not change a scene's class);
- the teacher's linear classifier and the student use the same training settings (the spec's).

Multiclass datasets only: distillation matches softmax distributions over exclusive classes;
the runner refuses a multilabel dataset before any run trains.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.harness.transfer import (
    UNLABELED,
    fit_source,
    optical_forward,
    pooled,
    predict_source,
)
from cloudbench.models.classifiers import googlenet


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    temperature: float = Field(4.0, gt=0)
    """Softmax temperature T of the soft targets (Hinton's usual value; the paper gives none)."""
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of the hard-label cross-entropy; the distillation term has weight 1 - alpha."""


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, label: Tensor,
            temperature: float, alpha: float) -> dict[str, Tensor]:
    """Hinton's distillation loss of a batch, in fp32.

    ``loss = alpha * ce + (1 - alpha) * T² * kl`` where ``ce`` is the cross-entropy of the
    student against ``label`` averaged over the labeled samples (``label`` != -1; 0 when none)
    and ``kl`` is KL(softmax(teacher/T) ‖ softmax(student/T)) averaged over all samples.
    Returns ``loss`` and the (detached) terms ``ce`` and ``kl``.
    """
    student = student_logits.float()
    labeled = label != UNLABELED
    each = F.cross_entropy(student, label.clamp_min(0), reduction="none")
    ce = (each * labeled).sum() / labeled.sum().clamp_min(1)
    kl = F.kl_div(F.log_softmax(student / temperature, dim=1),
                  F.log_softmax(teacher_logits.float() / temperature, dim=1),
                  reduction="batchmean", log_target=True)
    loss = alpha * ce + (1.0 - alpha) * temperature**2 * kl
    return {"loss": loss, "ce": ce.detach(), "kl": kl.detach()}


@register
class KDS(Method):
    name = "kd-s"
    modalities = ("s2",)
    needs_source = True
    Params = Params

    def fit(self, context: FitContext) -> None:
        self.engine: Engine = context.engine
        device = self.engine.device
        teacher = fit_source(context)
        inputs = pooled(context.labeled, context.unlabeled)
        inputs["teacher_logits"] = predict_source(self.engine, teacher, inputs).to(device)

        channels = int(inputs["image_s2"].shape[1])
        self.model = googlenet(channels, context.num_classes).to(device)
        temperature = self.params.temperature  # type: ignore[attr-defined]
        alpha = self.params.alpha  # type: ignore[attr-defined]

        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            return kd_loss(optical_forward(model, batch), batch["teacher_logits"],
                           batch["label"], temperature, alpha)

        self.engine.fit(self.model, inputs, loss, context.train,
                        log=lambda entry: context.log("target", entry))

    def predict(self, split: SplitData) -> Tensor:
        return self.engine.predict(self.model, split.inputs, optical_forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, optical_forward
