"""TTL: transitive transfer learning, optical to SAR through an intermediate domain.

The "Opt to SAR" comparator of the ESCCS paper (Tables I–IV, "TTL"; the paper's ref. [35]):
"TTL utilized the Transitive Transfer Learning strategy to construct an intermediate domain to
bridge the domain gap between different modalities". Transitive transfer learning (Tan et al.,
KDD 2015) transfers between domains that share too little for a direct transfer by passing
through an intermediate domain that shares something with each. The ESCCS paper says no more;
everything below but the chain itself is ours.

The chain here: the **source** is f_S, the source ResNet-50 adapted to the target classes on
the labelled optical images (:func:`cloudbench.harness.transfer.fit_source`, stage ``source``);
the **target** is a SAR GoogLeNet (the paper's target network); the **intermediate domain**
(``intermediate``) is

* ``fused`` (default): the target's paired optical + SAR images, stacked into one input (an
  early-fusion GoogLeNet, :class:`~cloudbench.models.classifiers.EarlyFusion`): it shares the
  optical view with the source and the SAR view with the target, which is what a bridge
  between the two modalities needs;
* ``optical``: the target's own (cloudy) optical images, an optical GoogLeNet: the chain then
  runs source optical → target optical → target SAR, bridging the domain gap first and the
  modality gap second.

Two distillation steps, each Hinton's loss of :func:`cloudbench.baselines.kd_s.kd_loss`::

    step 1  M_I ← alpha · CE(M_I, y) + (1 − alpha) · T² · KL(softmax(f_S / T) ‖ softmax(M_I / T))
    step 2  f_T ← alpha · CE(f_T, y) + (1 − alpha) · T² · KL(softmax(M_I / T) ‖ softmax(f_T / T))

on the labelled and unlabelled samples (CE over the labelled ones of a batch, 0 in a batch
without any; KL over all), f_S's logits computed once on the unaugmented optical images, M_I's
once on the unaugmented intermediate inputs after step 1 (stages ``intermediate`` and
``target``). Choices the paper leaves open: the intermediate domain (above); T = 4 and
alpha = 0.5 in both steps (``temperature``, ``alpha``: Hinton's usual values); the teacher of
each step fixed; both students trained from scratch with the run's training settings;
prediction by f_T on SAR alone (the target modality).

Multiclass datasets only (softmax distillation targets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from cloudbench.baselines.kd_s import kd_loss
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.harness.transfer import fit_source, pooled, predict_source, sar_forward
from cloudbench.models.classifiers import EarlyFusion, googlenet


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    intermediate: Literal["fused", "optical"] = "fused"
    """The intermediate domain: the target's optical + SAR pairs stacked (``fused``) or its
    optical images (``optical``)."""
    temperature: float = Field(4.0, gt=0)
    """Softmax temperature T of both distillation steps."""
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of the hard-label cross-entropy in both steps (the KL term has 1 − alpha)."""


def _fused_forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model({"s2": batch["image_s2"], "s1": batch["image_s1"]})


def _optical_forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["image_s2"])


@register
class TTL(Method):
    name = "ttl"
    modalities = ("s2", "s1")
    needs_source = True
    Params = Params

    def fit(self, context: FitContext) -> None:
        self.engine: Engine = context.engine
        params = cast(Params, self.params)
        device = self.engine.device
        source = fit_source(context)
        inputs = pooled(context.labeled, context.unlabeled)
        inputs["teacher_logits"] = predict_source(self.engine, source, inputs).to(device)

        s2, s1 = int(inputs["image_s2"].shape[1]), int(inputs["image_s1"].shape[1])
        bridge: nn.Module
        if params.intermediate == "fused":
            bridge, forward = EarlyFusion({"s2": s2, "s1": s1}, context.num_classes), \
                _fused_forward
        else:
            bridge, forward = googlenet(s2, context.num_classes), _optical_forward
        bridge = bridge.to(device)
        t, a = params.temperature, params.alpha

        def step(student: Callable[[nn.Module, dict[str, Tensor]], Tensor]) -> Callable[
                [nn.Module, dict[str, Tensor]], dict[str, Tensor]]:
            def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
                return kd_loss(student(model, batch), batch["teacher_logits"], batch["label"],
                               t, a)
            return loss

        self.engine.fit(bridge, inputs, step(forward), context.train,
                        log=lambda entry: context.log("intermediate", entry))
        inputs["teacher_logits"] = self.engine.predict(bridge, inputs, forward).to(device)
        self.model = googlenet(s1, context.num_classes).to(device)
        self.engine.fit(self.model, inputs, step(sar_forward), context.train,
                        log=lambda entry: context.log("target", entry))

    def predict(self, split: SplitData) -> Tensor:
        return self.engine.predict(self.model, split.inputs, sar_forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, sar_forward
