"""SSL fine-tuning: a self-supervised backbone (MoCo v2, MoCo v3, MAE) with a classification head.

The second method family of the leaderboard, the CBEN paper's protocol (Section V, Table VI;
shared/FACTS.md "CBEN's SSL protocol"): a backbone pre-trained with self-supervision on
SSL4EO-S12 (14-band early fusion: VV, VH and the 12 L2A bands), its pre-training head
discarded, a classification head attached and trained on the labelled training set (clean
BigEarthNet or CBEN), tested on both test sets with AP. The backbones, their weights and their
input normalisation are :mod:`cloudbench.models.backbones` (docs/ssl.md).

``protocol``:

- ``linear`` (the paper's "heads"; SSL4EO-S12's ``--linear``): the backbone is frozen, in eval
  mode (batch norm statistics kept), and a linear head ``logits = W·f(x) + b`` is trained on
  its pooled features f(x), with ``head_norm`` a parameter-free batch norm of f(x) first (MAE's
  linear probe). Because the backbone is frozen its features are computed **once per image,
  without augmentation** (SSL4EO-S12 draws a random resized crop per epoch instead): this turns
  the cost of the head's epochs into one forward pass over the training set, at the price of
  that augmentation.
- ``finetune``: backbone and head trained together through the engine, with its augmentation
  (flips and 90° rotations) and the spec's optimiser, schedule and epochs.
- ``knn``: no training; the frozen features of the labelled training set are the memory bank;
  a test sample's class scores are ``s_k = Σ_j w_j y_jk / Σ_j w_j`` over its ``knn_k`` nearest
  bank samples j by cosine similarity c_j, with ``w_j = exp(c_j / knn_temperature)`` (the
  weighted k-NN of InstDisc/DINO; k=20, T=0.07 by default); y_j is one-hot (multiclass) or
  multi-hot (multilabel), so the scores are per-class probabilities for AP too.

Loss (linear, finetune): :func:`~cloudbench.harness.losses.task_loss`: cross-entropy
(multiclass); BCE-with-logits or, as SSL4EO-S12's BigEarthNet scripts, MultiLabelSoftMargin
(``multilabel_loss: soft-margin``) for multilabel. Defaults of the paper's downstream runs,
which the CBEN paper keeps from SSL4EO-S12 ("wherever practical, we retained the original
hyperparameters"; Table VI specs in ``catalogs/leaderboards/cben.yaml``): MoCo v2 ResNet-50
linear: SGD, momentum 0.9, lr 8.0, no weight decay, lr ×0.1 at epochs 60 and 80 of 100
(cloudbench's step schedule decays at 50% and 75%), batch 256; MoCo v3 ViT-S/16 linear: SGD,
lr 0.1, cosine, batch 64 per GPU; MAE ViT-S/16 linear: LARS, lr 1.0, batch 64 per GPU,
batch-normalised features. The paper itself gives none of these.

``inputs``: ``fused`` (one backbone on the S1 then the S2 bands, the 14-channel model: its
first layer stitched from the S1 and S2 weights), ``s2`` or ``s1`` (one modality), ``late``
(an S1 and an S2 backbone, features concatenated). The bands are the dataset's (spec
``optical`` and ``sar``), matched by name to the weights' channels; derived channels (VV/VH)
have no kernel and are refused. The harness standardises every split with the training
statistics; the backbone expects the physical units normalised as its weights were trained, so
the standardisation is undone inside the backbone's normalisation (one affine map per channel:
standardised → our units → the weights' input). ``image_size`` resizes every image (bilinear)
before the backbone: 224, the weights' training size, by default (SSL4EO-S12 resizes
BigEarthNet's 120 px to 256 and crops 224; ViTs need multiples of 16).

Weights: ``s2_weights`` / ``s1_weights`` (a released SSL4EO-S12 file; default the torch hub
cache's copy, never downloaded: ``cloudbench weights fetch``), or ``weights`` (a checkpoint of
``cloudbench pretrain``, for the bands it was pre-trained on: the paper's own route), or
``pretrained: false`` (random initialisation: the lower reference). The method loads both
views whatever ``inputs`` is; ``s2`` and ``s1`` simply leave one unused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from cloudbench.errors import CloudbenchError
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine
from cloudbench.harness.losses import TaskLossParams, task_loss
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.models.backbones import (
    BandNormalise,
    LateFusion,
    SSLBackbone,
    build_backbone,
    build_late_fusion,
)

KEYS = {"s2": "image_s2", "s1": "image_s1"}
KNN_CHUNK = 1024
"""Test samples whose similarities to the bank are computed at once."""


class Params(TaskLossParams):
    backbone: Literal["moco-v2-resnet50", "moco-v3-vit-s16", "mae-vit-s16"]
    """A backbone of :data:`cloudbench.models.backbones.BACKBONES`."""
    protocol: Literal["linear", "finetune", "knn"] = "linear"
    inputs: Literal["fused", "s2", "s1", "late"] = "fused"
    s2_weights: Path | None = None
    """The S2 weights file; None: the torch hub cache's copy of the TorchGeo enum's file."""
    s1_weights: Path | None = None
    """The S1 weights file; None: as for S2."""
    weights: Path | None = None
    """A ``cloudbench pretrain`` checkpoint instead of the released weights."""
    pretrained: bool = True
    """False: timm's random initialisation, no weights read."""
    first_layer_scaling: Literal["share", "none"] = "share"
    """How the fused first layer weighs the two modalities' kernels (docs/ssl.md)."""
    image_size: int | None = Field(224, ge=1)
    """Resize images to this side before the backbone; None: as stored."""
    head_norm: bool = False
    """A batch norm without affine parameters on the features before the linear head."""
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)

    @model_validator(mode="after")
    def _one_weight_source(self) -> Params:
        if self.weights is not None and (self.s2_weights or self.s1_weights):
            raise ValueError("give either 'weights' (a cloudbench pretrain checkpoint) or "
                             "'s2_weights'/'s1_weights' (released files), not both")
        if self.weights is not None and self.inputs == "late":
            raise ValueError("'weights' holds one backbone; late fusion needs an S1 and an S2 "
                             "one: give s1_weights and s2_weights")
        if self.weights is not None and not self.pretrained:
            raise ValueError("'weights' is given but pretrained is false")
        return self


class SSLClassifier(nn.Module):
    """Resize, the backbone's features, a head: ``forward(batch)`` gives (B, K) logits of a
    batch dict's ``image_s1`` / ``image_s2`` (standardised, as the harness holds them)."""

    def __init__(self, encoder: SSLBackbone | LateFusion, inputs: str, num_classes: int,
                 image_size: int | None, head_norm: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.inputs = inputs
        self.image_size = image_size
        norm: nn.Module = (nn.BatchNorm1d(encoder.feature_dim, affine=False) if head_norm
                           else nn.Identity())
        self.head = nn.Sequential(norm, nn.Linear(encoder.feature_dim, num_classes))

    def _resized(self, x: Tensor) -> Tensor:
        if self.image_size is None or tuple(x.shape[-2:]) == (self.image_size,) * 2:
            return x
        return F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)

    def features(self, batch: dict[str, Tensor]) -> Tensor:
        views = {m: self._resized(batch[k]) for m, k in KEYS.items() if k in batch}
        if self.inputs == "late":
            return cast(LateFusion, self.encoder).features(views)
        if self.inputs == "fused":
            x = torch.cat([views["s1"], views["s2"]], dim=1)
        else:
            x = views[self.inputs]
        return cast(SSLBackbone, self.encoder).features(x)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        out: Tensor = self.head(self.features(batch))
        return out


def _forward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch)


def _features(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return cast(SSLClassifier, model).features(batch)


def standardised_input(backbone: SSLBackbone, mean: Tensor, std: Tensor) -> None:
    """Make ``backbone`` take standardised inputs ``z = (x - mean) / std`` (per channel, x in
    our units): its normalisation ``x·a + c`` becomes ``z·(std·a) + (mean·a + c)``."""
    norm = backbone.normalise
    if not isinstance(norm, BandNormalise):
        raise CloudbenchError(f"{backbone.name}'s normalisation is not per band")
    scale, offset = norm.scale.flatten().double(), norm.offset.flatten().double()
    mean, std = mean.double().cpu(), std.double().cpu()
    if len(mean) != len(scale):
        raise CloudbenchError(f"{backbone.name} takes {len(scale)} channels "
                              f"({' '.join(backbone.bands)}), the data has {len(mean)}")
    backbone.normalise = BandNormalise(backbone.bands, (std * scale).tolist(),
                                       (mean * scale + offset).tolist())


def _statistics(split: SplitData, keys: list[str]) -> tuple[Tensor, Tensor]:
    """The standardisation of ``keys``' channels, concatenated (identity where none was
    applied: the columns are then in our units)."""
    means, stds = [], []
    for key in keys:
        channels = int(split.inputs[key].shape[1])
        mean, std = split.statistics.get(key, (torch.zeros(channels), torch.ones(channels)))
        means.append(mean)
        stds.append(std)
    return torch.cat(means), torch.cat(stds)


def _bands(split: SplitData, key: str) -> list[str]:
    if key not in split.bands:
        raise CloudbenchError(f"the SSL method needs the band names of {key} (a dataset with "
                              "'optical' and 'sar' bands)")
    return split.bands[key]


def build_classifier(params: Params, split: SplitData, num_classes: int) -> SSLClassifier:
    """The backbone for ``split``'s bands, taking its standardised columns, and a new head."""
    if params.inputs == "late":
        encoder: SSLBackbone | LateFusion = build_late_fusion(
            params.backbone, s1_bands=_bands(split, "image_s1"),
            s2_bands=_bands(split, "image_s2"), s1_weights=params.s1_weights,
            s2_weights=params.s2_weights, pretrained=params.pretrained)
        late = cast(LateFusion, encoder)
        for backbone, key in ((late.s1, "image_s1"), (late.s2, "image_s2")):
            standardised_input(backbone, *_statistics(split, [key]))
    else:
        keys = {"fused": ["image_s1", "image_s2"], "s2": ["image_s2"],
                "s1": ["image_s1"]}[params.inputs]
        bands = [b for key in keys for b in _bands(split, key)]
        if params.weights is not None:
            encoder = build_backbone(params.backbone, bands, weights=params.weights)
        else:
            encoder = build_backbone(params.backbone, bands, s2_weights=params.s2_weights,
                                     s1_weights=params.s1_weights,
                                     first_layer_scaling=params.first_layer_scaling,
                                     pretrained=params.pretrained)
        standardised_input(cast(SSLBackbone, encoder), *_statistics(split, keys))
    return SSLClassifier(encoder, params.inputs, num_classes, params.image_size,
                         params.head_norm)


def knn_scores(bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int,
               temperature: float) -> Tensor:
    """Weighted k-NN class scores (M, K) of ``queries`` (M, D) against ``bank`` (N, D) with
    one-hot or multi-hot ``bank_labels`` (N, K) (see the module docstring)."""
    bank = F.normalize(bank.float(), dim=1)
    labels = bank_labels.float()
    k = min(k, len(bank))
    out = []
    for first in range(0, len(queries), KNN_CHUNK):
        q = F.normalize(queries[first:first + KNN_CHUNK].float(), dim=1)
        top = (q @ bank.T).topk(k, dim=1)
        weights = torch.exp(top.values / temperature)
        weights = weights / weights.sum(dim=1, keepdim=True)
        out.append(torch.einsum("mk,mkc->mc", weights, labels[top.indices]))
    return torch.cat(out) if out else queries.new_zeros((0, labels.shape[1]))


@register
class SSL(Method):
    name = "ssl"
    modalities = ("s2", "s1")
    tasks = ("multiclass", "multilabel")
    Params = Params

    def fit(self, context: FitContext) -> None:
        self.engine: Engine = context.engine
        params = cast(Params, self.params)
        self.task = context.task
        self.model = build_classifier(params, context.labeled, context.num_classes)
        self.model.to(self.engine.device)
        labeled = context.labeled
        if params.protocol == "finetune":
            def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
                return {"loss": task_loss(model(batch), batch["label"], context.task,
                                          params.multilabel_loss)}

            self.engine.fit(self.model, labeled.inputs, loss, context.train,
                            log=lambda entry: context.log("finetune", entry))
            return
        self.model.encoder.eval().requires_grad_(False)
        features = self.engine.predict(self.model, labeled.inputs, _features)
        if params.protocol == "knn":
            labels = labeled.labels
            if context.task == "multiclass":
                labels = F.one_hot(labels.long(), context.num_classes)
            self.bank = features.to(self.engine.device)
            self.bank_labels = labels.float().to(self.engine.device)
            return

        def head_loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
            return {"loss": task_loss(model(batch["features"]), batch["label"], context.task,
                                      params.multilabel_loss)}

        inputs = {"features": features.to(self.engine.device), "label": labeled.labels}
        self.engine.fit(self.model.head, inputs, head_loss,
                        context.train.model_copy(update={"augment": False}),
                        log=lambda entry: context.log("head", entry))

    def predict(self, split: SplitData) -> Tensor:
        params = cast(Params, self.params)
        if params.protocol != "knn":
            return self.engine.predict(self.model, split.inputs, _forward)
        queries = self.engine.predict(self.model, split.inputs, _features)
        return knn_scores(self.bank, self.bank_labels, queries.to(self.engine.device),
                          params.knn_k, params.knn_temperature).cpu()

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        params = cast(Params, self.params)
        return self.model, _features if params.protocol == "knn" else _forward

