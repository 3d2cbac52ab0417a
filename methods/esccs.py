"""ESCCS: collaborative multi-step transfer with the Information Regulation Mechanism (IRM).

Wang et al., "Multi-Modality Transfer Learning for Cloudy Remote Sensing Images: Addressing
Modality Imbalance with Knowledge Distillation" (the ESCCS paper, section II). No public code
exists; this follows the paper and ``shared/FACTS.md``.

0. f_S: the source model with a new classifier fitted on the labeled target optical images
   (:func:`cloudbench.harness.transfer.adapt_source`).
1. Step F1: f_S labels every target optical image (labeled and unlabeled): Y_S. An optical
   auxiliary GoogLeNet f_T,opt (on optical) and a SAR auxiliary GoogLeNet f_T,SAR (on SAR) are
   trained with cross-entropy against Y_S (eq. 1–2). As the authors' readme says, F1 filters the
   pseudo-labels as KDHN does: only samples where f_S's confidence reaches
   ``f1_min_confidence`` are used (``null``: all).
2. Step F2: the target model f_T sees optical and SAR together and is trained on every target
   sample (no filter) with
   ``Loss_T = ρ_opt·CE(Q'_opt, f_T) + ρ_SAR·CE(Q'_SAR, f_T) + CE(Y_S, f_T)`` (eq. 3), where
   Q'_opt, Q'_SAR are the trained auxiliary models' outputs and Y_S, f_S's (fixed weight 1).
3. IRM (eq. 5–8): S_opt, S_SAR are the auxiliary models' softmax probabilities of their own
   predicted class. ``irm: batch``: ρ_opt = ΣS_SAR / ΣS_opt and ρ_SAR = ΣS_opt / ΣS_SAR over the
   batch, so the more confident (superior) modality is damped and the other boosted;
   ``irm: sample``: the same ratios per sample (the paper also says the mechanism works "at the
   sample level"); ``irm: off``: ρ = 1 (the ablation of Fig. 8 and 9).

Choices the paper leaves open, each a parameter:

- ``targets``: ``soft`` (default) supervises with the teachers' softmax distributions, which is
  what the paper's cross-entropy between pseudo-label and prediction vectors (eq. 1–3) reads as
  and what knowledge distillation usually does; ``hard`` uses one-hot argmax labels.
- ``fusion``: how one GoogLeNet takes both modalities. ``two-stream`` (default): one GoogLeNet
  encoder per modality, concatenated features, one linear head; it keeps the modalities apart
  until the head, which is what lets one speak of each modality's contribution, and it yields
  per-modality logits for the loss curves of Fig. 8. ``early``: one GoogLeNet on the 6 stacked
  channels.
- The teachers' outputs (f_S, f_T,opt, f_T,SAR) are computed once per sample, in eval mode and
  without augmentation (flips and rotations do not change a scene's class), not per batch.
- The per-modality loss curves (``loss_s2``, ``loss_s1``, two-stream only) are the
  cross-entropy of each modality's share of the logits (:meth:`TwoStream.forward_parts`)
  against Y_S, the one target that is the same with and without IRM.
- F1 trains ``aux_epochs`` epochs (default: the same as F2); f_S's classifier, the auxiliary
  models and the target model share the run's other training settings (lr 1e-2, weight decay
  5e-4, 200 epochs, batch 64 by default, as in the paper).

Multiclass datasets only: pseudo-labels, confidences and IRM weights come from softmax
distributions over exclusive classes; the runner refuses a multilabel dataset before any run
trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.errors import CloudbenchError
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.harness.transfer import (
    confidence,
    confident,
    fit_source,
    optical_forward,
    pooled,
    predict_source,
    probabilities,
    sar_forward,
    select,
    soft_cross_entropy,
)
from cloudbench.models.classifiers import EarlyFusion, TwoStream, googlenet

IrmMode = Literal["batch", "sample", "off"]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    irm: IrmMode = "batch"
    """Information Regulation Mechanism: batch ratios, per-sample ratios, or off."""
    targets: Literal["soft", "hard"] = "soft"
    """Pseudo-labels as softmax distributions or one-hot argmax labels."""
    fusion: Literal["two-stream", "early"] = "two-stream"
    """Target model: one GoogLeNet per modality, or one on the stacked channels."""
    f1_min_confidence: float | None = Field(0.5, ge=0, le=1)
    """Step F1 uses the samples where f_S's confidence is at least this (null: all)."""
    aux_epochs: int | None = Field(None, ge=1)
    """Epochs of step F1 (null: the run's epochs)."""

    @field_validator("irm", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML 1.1 reads an unquoted ``off`` as false."""
        return "off" if value is False else value


def irm_weights(s_opt: Tensor, s_sar: Tensor, mode: IrmMode) -> tuple[Tensor, Tensor]:
    """ρ_opt and ρ_SAR per sample (N,) from the auxiliary confidences S_opt, S_SAR (N,).

    ``batch``: every sample gets ρ_opt = ΣS_SAR / ΣS_opt and ρ_SAR = ΣS_opt / ΣS_SAR;
    ``sample``: ρ_opt,i = S_SAR,i / S_opt,i and ρ_SAR,i = S_opt,i / S_SAR,i; ``off``: ones.
    """
    if mode == "off":
        ones = torch.ones_like(s_opt)
        return ones, ones
    if mode == "batch":
        total_opt, total_sar = s_opt.sum(), s_sar.sum()
        return (total_sar / total_opt).expand_as(s_opt), (total_opt / total_sar).expand_as(s_sar)
    return s_sar / s_opt, s_opt / s_sar


def esccs_loss(
    logits: Tensor,
    target_opt: Tensor,
    target_sar: Tensor,
    target_source: Tensor,
    s_opt: Tensor,
    s_sar: Tensor,
    mode: IrmMode,
) -> dict[str, Tensor]:
    """Loss_T of step F2 for a batch: ``loss`` (the total) and its terms.

    ``loss = mean_i(ρ_opt,i·CE_i(Q'_opt) + ρ_SAR,i·CE_i(Q'_SAR) + CE_i(Y_S))`` with
    :func:`irm_weights`; targets are (B, K) probability rows, confidences (B,).
    """
    rho_opt, rho_sar = irm_weights(s_opt, s_sar, mode)
    ce_opt = soft_cross_entropy(logits, target_opt)
    ce_sar = soft_cross_entropy(logits, target_sar)
    ce_source = soft_cross_entropy(logits, target_source)
    total = (rho_opt * ce_opt + rho_sar * ce_sar + ce_source).mean()
    return {
        "loss": total,
        "ce_opt": ce_opt.mean().detach(),
        "ce_sar": ce_sar.mean().detach(),
        "ce_source": ce_source.mean().detach(),
        "rho_opt": rho_opt.mean().detach(),
        "rho_sar": rho_sar.mean().detach(),
    }


def _views(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"s2": batch["image_s2"], "s1": batch["image_s1"]}


def _forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(_views(batch))


def _targets(probs: Tensor, kind: str) -> Tensor:
    if kind == "soft":
        return probs
    return F.one_hot(probs.argmax(dim=1), probs.shape[1]).float()


@register
class ESCCS(Method):
    name = "esccs"
    modalities = ("s2", "s1")
    needs_source = True
    Params = Params

    def fit(self, context: FitContext) -> None:
        params = cast(Params, self.params)
        self.engine: Engine = context.engine
        engine = self.engine
        k = context.num_classes
        f_s = fit_source(context)
        inputs = pooled(context.labeled, context.unlabeled)
        source_probs = probabilities(predict_source(engine, f_s, inputs))
        target_source = _targets(source_probs, params.targets)

        # Step F1: the auxiliary models learn f_S's pseudo-labels (filtered by confidence).
        keep = confident(source_probs, params.f1_min_confidence)
        if not bool(keep.any()):
            raise CloudbenchError(
                f"esccs: f1_min_confidence {params.f1_min_confidence} keeps no sample (f_S's "
                f"highest confidence is {float(confidence(source_probs).max()):.3f}); lower it"
            )
        f1_inputs = select({"image_s2": inputs["image_s2"], "image_s1": inputs["image_s1"],
                            "target": target_source}, keep)
        f1_train = context.train
        if params.aux_epochs is not None:
            f1_train = f1_train.model_copy(update={"epochs": params.aux_epochs})
        auxiliary = {}
        for modality, key, forward in (("s2", "image_s2", optical_forward),
                                       ("s1", "image_s1", sar_forward)):
            model = googlenet(int(inputs[key].shape[1]), k).to(engine.device)
            self._train_auxiliary(model, forward, f1_inputs, f1_train, context, f"aux_{modality}")
            auxiliary[modality] = probabilities(engine.predict(model, inputs, forward))

        # Step F2: the target model learns from both auxiliary models and f_S, regulated by IRM.
        f2_inputs = {
            "image_s2": inputs["image_s2"], "image_s1": inputs["image_s1"],
            "target_opt": _targets(auxiliary["s2"], params.targets),
            "target_sar": _targets(auxiliary["s1"], params.targets),
            "target_source": target_source,
            "s_opt": confidence(auxiliary["s2"]), "s_sar": confidence(auxiliary["s1"]),
        }
        channels = {"s2": int(inputs["image_s2"].shape[1]), "s1": int(inputs["image_s1"].shape[1])}
        network = TwoStream if params.fusion == "two-stream" else EarlyFusion
        self.model = network(channels, k).to(engine.device)

        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            parts: dict[str, Tensor] = {}
            if params.fusion == "two-stream":
                logits, parts = cast(TwoStream, model).forward_parts(_views(batch))
            else:
                logits = model(_views(batch))
            terms = esccs_loss(logits, batch["target_opt"], batch["target_sar"],
                               batch["target_source"], batch["s_opt"], batch["s_sar"],
                               params.irm)
            for modality, part in parts.items():
                terms[f"loss_{modality}"] = (
                    soft_cross_entropy(part, batch["target_source"]).mean().detach()
                )
            return terms

        engine.fit(self.model, f2_inputs, loss, context.train,
                   log=lambda entry: context.log("target", entry))

    def _train_auxiliary(
        self,
        model: nn.Module,
        forward: Callable[[nn.Module, dict[str, Tensor]], Tensor],
        inputs: dict[str, Tensor],
        train: TrainConfig,
        context: FitContext,
        stage: str,
    ) -> None:
        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            return {"loss": soft_cross_entropy(forward(model, batch), batch["target"]).mean()}

        self.engine.fit(model, inputs, loss, train, log=lambda entry: context.log(stage, entry))

    def predict(self, split: SplitData) -> Tensor:
        return self.engine.predict(self.model, split.inputs, _forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, _forward
