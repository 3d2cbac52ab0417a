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
   ``Loss_T = ρ_opt·CE(Q'_opt, f_T) + ρ_SAR·CE(Q'_SAR, f_T) + λ·CE(Y_S, f_T)`` (eq. 3, its first
   two terms weighted by IRM's ρ), where
   Q'_opt, Q'_SAR are the trained auxiliary models' outputs and Y_S, f_S's; the paper's λ is 1
   (eq. 3 adds the three terms; "the weight of the supervised signal from the source model is
   fixed").
3. IRM (eq. 5–8): S_opt, S_SAR are the auxiliary models' softmax probabilities of their own
   predicted class. ``irm: batch``: ρ_opt = ΣS_SAR / ΣS_opt and ρ_SAR = ΣS_opt / ΣS_SAR over the
   batch, so the more confident (superior) modality is damped and the other boosted;
   ``irm: sample``: the same ratios per sample (the paper also says the mechanism works "at the
   sample level"); ``irm: off``: ρ = 1 (the ablation of Fig. 8 and 9).

Choices the paper leaves open, each a parameter (defaults: the reading above):

- ``targets``: ``soft`` (default) supervises with the teachers' softmax distributions, which is
  what the paper's cross-entropy between pseudo-label and prediction vectors (eq. 1–3) reads as
  and what knowledge distillation usually does; ``hard`` uses one-hot argmax labels.
  ``f1_targets`` (Y_S of eq. 1–2, "the pseudo-labels Y_S = f_S(X_T,opt)") and ``f2_targets``
  (Q'_opt, Q'_SAR and Y_S of eq. 3) choose for one step alone (null: ``targets``).
- ``source_weight``: λ, the weight of CE(Y_S, f_T) in eq. 3. The paper calls it "fixed to
  prevent over-adjustment or overfitting" and gives no value; its eq. 3 adds the term with
  weight 1 (default). 0 removes the source model from step F2 (F1 still learns from it).
- ``source_min_confidence``: the samples CE(Y_S, f_T) covers. Eq. 3 sums it over every sample
  (i = 1 … N) and step F2 does not filter (``shared/FACTS.md``, from the authors' readme): null
  (default). A number keeps the term only where f_S's confidence (its softmax probability of
  its own class) is at least that, so f_S does not pull the samples it cannot see (thick
  clouds) towards its guess.
  The other samples' term is 0 and the batch mean still divides by the whole batch: a kept
  sample's term weighs λ/B as without the filter.
- ``true_labels``: Y_S of the labeled samples. The paper labels "the target optical images"
  with f_S (Y_S = f_S(X_T,opt)); the labeled samples' true classes enter only through f_S's
  fine-tuning: false (default). True: their Y_S is their one-hot true class, in both steps, as
  KDHN keeps true labels (confidence 1: F1's filter and ``source_min_confidence`` always keep
  them). Q'_opt and Q'_SAR stay the auxiliary models' outputs.
- ``irm_folds``: which predictions S_opt, S_SAR come from. The paper computes them "based on the
  logits output from auxiliary models", which trained on F1's samples, so their confidence
  there is a training fit, higher than on unseen images. Null (default): those predictions.
  K ≥ 2: held-out predictions by cross-fitting: F1's samples are split into K folds (a
  random partition seeded by the run's seed, fold sizes differing by at most one); for each
  fold, one optical and one SAR auxiliary model (F1's settings) train on the other K − 1 folds
  and give the S_opt, S_SAR of that fold's samples. The samples F1's filter left out keep the
  confidences of the auxiliary models trained on all of F1 (they did not train on them either),
  and Q'_opt, Q'_SAR still come from those models. K more trainings of each auxiliary model,
  logged as stages ``aux_s2_fold<k>``, ``aux_s1_fold<k>``.
- ``fusion``: how one GoogLeNet takes both modalities. ``two-stream`` (default): one GoogLeNet
  encoder per modality, concatenated features, one linear head; it keeps the modalities apart
  until the head, which is what lets one speak of each modality's contribution, and it yields
  per-modality logits for the loss curves of Fig. 8. ``early``: one GoogLeNet on the 6 stacked
  channels.
- The teachers' outputs (f_S, f_T,opt, f_T,SAR) are computed once per sample, in eval mode and
  without augmentation (flips and rotations do not change a scene's class), not per batch.
- The per-modality loss curves (``loss_s2``, ``loss_s1``, two-stream only) are the
  cross-entropy of each modality's share of the logits (:meth:`TwoStream.forward_parts`)
  against F2's Y_S over every sample, the one target that is the same with and without IRM.
- F1 trains ``aux_epochs`` epochs (default: the same as F2); f_S's classifier, the auxiliary
  models and the target model share the run's other training settings (lr 1e-2, weight decay
  5e-4, 200 epochs, batch 64 by default, as in the paper).

Multiclass datasets only: pseudo-labels, confidences and IRM weights come from softmax
distributions over exclusive classes; the runner refuses a multilabel dataset before any run
trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.errors import CloudbenchError
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.harness.transfer import (
    UNLABELED,
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
Targets = Literal["soft", "hard"]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    irm: IrmMode = "batch"
    """Information Regulation Mechanism: batch ratios, per-sample ratios, or off."""
    irm_folds: int | None = Field(None, ge=2)
    """S_opt, S_SAR of F1's samples from auxiliary models trained on the other folds of a K-fold
    split of them (null: from the auxiliary models that trained on them)."""
    targets: Targets = "soft"
    """Pseudo-labels as softmax distributions or one-hot argmax labels, in both steps (unless
    ``f1_targets`` or ``f2_targets`` chooses for its step)."""
    f1_targets: Targets | None = None
    """Step F1's Y_S (null: ``targets``)."""
    f2_targets: Targets | None = None
    """Step F2's Q'_opt, Q'_SAR and Y_S (null: ``targets``)."""
    source_weight: float = Field(1.0, ge=0)
    """λ, the weight of CE(Y_S, f_T) in step F2 (the paper's fixed weight: 1)."""
    source_min_confidence: float | None = Field(None, ge=0, le=1)
    """CE(Y_S, f_T) covers the samples where f_S's confidence is at least this (null: all)."""
    true_labels: bool = False
    """The labeled samples' Y_S is their true class, in both steps (false: f_S's output)."""
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


def source_targets(y_source: Tensor, source_probs: Tensor, weight: float,
                   min_confidence: float | None) -> Tensor:
    """The target rows (N, K) of step F2's source term: w_i·Y_S,i, with w_i = ``weight`` where
    f_S's confidence (from its probabilities ``source_probs``, N × K) is at least
    ``min_confidence`` (everywhere for None) and 0 elsewhere. Cross-entropy is linear in its
    target, so CE_i(w_i·Y_S,i) = w_i·CE_i(Y_S,i)."""
    w = weight * confident(source_probs, min_confidence).float()
    return w[:, None] * y_source


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

    ``loss = mean_i(ρ_opt,i·CE_i(Q'_opt) + ρ_SAR,i·CE_i(Q'_SAR) + CE_i(target_source))`` with
    :func:`irm_weights`, the mean over the whole batch; targets are (B, K) rows, confidences
    (B,). ``target_source`` is Y_S for the paper's loss, w_i·Y_S,i for a weighted or restricted
    source term (:func:`source_targets`). The logged terms are batch means, ``ce_source`` as
    weighted.
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


def with_true_labels(source_probs: Tensor, label: Tensor) -> Tensor:
    """f_S's probabilities (N, K) with the labeled samples' rows (``label`` != -1) replaced by
    their one-hot true class."""
    labeled = (label != UNLABELED).to(source_probs.device)
    one_hot = F.one_hot(label.clamp_min(0).to(source_probs.device), source_probs.shape[1])
    return torch.where(labeled[:, None], one_hot.float(), source_probs)


def folds(keep: Tensor, k: int, seed: int) -> Tensor:
    """Each sample's fold (N,) in a K-fold split of the samples where ``keep`` is true, −1 for
    the others: a random permutation of them (seeded by ``seed``) dealt round-robin, so fold
    sizes differ by at most one."""
    members = keep.nonzero().squeeze(1)
    order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed))
    out = torch.full_like(keep, -1, dtype=torch.long)
    out[members[order.to(members.device)]] = torch.arange(len(members), device=keep.device) % k
    return out


def _views(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"s2": batch["image_s2"], "s1": batch["image_s1"]}


def _forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(_views(batch))


def _targets(probs: Tensor, kind: str) -> Tensor:
    if kind == "soft":
        return probs
    return F.one_hot(probs.argmax(dim=1), probs.shape[1]).float()


AUXILIARY = (("s2", "image_s2", optical_forward), ("s1", "image_s1", sar_forward))
"""Step F1's auxiliary models: modality, input, forward."""


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
        if params.true_labels:
            source_probs = with_true_labels(source_probs, inputs["label"])

        # Step F1: the auxiliary models learn f_S's pseudo-labels (filtered by confidence).
        keep = confident(source_probs, params.f1_min_confidence)
        if not bool(keep.any()):
            raise CloudbenchError(
                f"esccs: f1_min_confidence {params.f1_min_confidence} keeps no sample (f_S's "
                f"highest confidence is {float(confidence(source_probs).max()):.3f}); lower it"
            )
        if params.irm_folds is not None and int(keep.sum()) < params.irm_folds:
            raise CloudbenchError(
                f"esccs: irm_folds {params.irm_folds} needs at least as many samples in step "
                f"F1, which keeps {int(keep.sum())}; lower irm_folds or f1_min_confidence"
            )
        f1_all = {"image_s2": inputs["image_s2"], "image_s1": inputs["image_s1"],
                  "target": _targets(source_probs, params.f1_targets or params.targets)}
        f1_train = context.train
        if params.aux_epochs is not None:
            f1_train = f1_train.model_copy(update={"epochs": params.aux_epochs})
        auxiliary, scores = {}, {}
        for modality, key, forward in AUXILIARY:
            model = googlenet(int(inputs[key].shape[1]), k).to(engine.device)
            self._train_auxiliary(model, forward, select(f1_all, keep), f1_train, context,
                                  f"aux_{modality}")
            auxiliary[modality] = probabilities(engine.predict(model, inputs, forward))
            scores[modality] = confidence(auxiliary[modality])
        if params.irm_folds is not None:  # S of F1's samples from models that did not see them
            fold = folds(keep, params.irm_folds, context.seed)
            for i in range(params.irm_folds):
                held = fold == i
                for modality, key, forward in AUXILIARY:
                    model = googlenet(int(inputs[key].shape[1]), k).to(engine.device)
                    self._train_auxiliary(model, forward, select(f1_all, keep & ~held),
                                          f1_train, context, f"aux_{modality}_fold{i}")
                    probs = probabilities(engine.predict(model, select(inputs, held), forward))
                    scores[modality][held] = confidence(probs)

        # Step F2: the target model learns from both auxiliary models and f_S, regulated by IRM.
        f2_targets = params.f2_targets or params.targets
        y_source = _targets(source_probs, f2_targets)
        f2_inputs = {
            "image_s2": inputs["image_s2"], "image_s1": inputs["image_s1"],
            "target_opt": _targets(auxiliary["s2"], f2_targets),
            "target_sar": _targets(auxiliary["s1"], f2_targets),
            "target_source": source_targets(y_source, source_probs, params.source_weight,
                                            params.source_min_confidence),
            "y_source": y_source,
            "s_opt": scores["s2"], "s_sar": scores["s1"],
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
                    soft_cross_entropy(part, batch["y_source"]).mean().detach()
                )
            return terms

        engine.fit(self.model, f2_inputs, loss, context.train,
                   log=lambda entry: context.log("target", entry))

    def _train_auxiliary(
        self,
        model: nn.Module,
        forward: Callable[[nn.Module, dict[str, Tensor]], Tensor],
        inputs: dict[str, Any],
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
