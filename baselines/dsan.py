"""DSAN: deep subdomain adaptation, optical (source domain) to SAR (target domain).

The "Opt to SAR" comparator of the ESCCS paper (Tables I–IV, "DSAN"; the paper's refs. [26],
[27]): "a method that employs unsupervised domain adaptation strategies at the feature level to
mitigate the domain gap between different modalities"; its related work adds that these methods
"extracted specific layer activation from the encoders of both the source and target models,
aligning them with metric learning strategies to constrain the target model's learning process",
converting "the feature extraction capabilities obtained in the optical source domain model to
the SAR target domain". DSAN itself is Zhu et al. 2020, "Deep Subdomain Adaptation Network for
Image Classification" (IEEE TNNLS), whose loss is the local maximum mean discrepancy (LMMD)
between the source and target features of each class (a *subdomain*); :func:`lmmd` follows the
authors' code (``easezyc/deep-transfer-learning``, ``UDA/pytorch1.0/DSAN/lmmd.py``).

**The two domains here.** The harness gives a method the target's labelled and unlabelled
splits (optical and SAR views of every sample) and the source model, not the source dataset's
images (NR, AID), so the source domain cannot be the source images themselves. It is their
feature space instead: f_S, the source ResNet-50 with a new linear classifier on the labelled
optical images (:func:`cloudbench.harness.transfer.fit_source`, stage ``source``), maps the
**labelled target optical images** to its standardised trunk features z^s (2048 values,
computed once, in eval mode, unaugmented), labelled with their true classes: these are DSAN's
labelled source samples. The **target domain** is the SAR images, labelled and unlabelled, seen
by the network that is trained (``target``): a GoogLeNet (the paper's target network) on the SAR
channels, its 1024 trunk features mapped by a linear bottleneck (as DSAN's, no activation) to
z^t in the source feature space (2048 values), then a linear classifier::

    z^t = B(g(x_SAR)),   logits = C(z^t)

The source features are fixed, so the LMMD pulls the SAR features of each class towards the
optical source model's features of that class; nothing can shrink both sides to a point.

**The loss** of a batch of SAR samples (the engine's batch of the pooled labelled + unlabelled
samples) and a batch of source features (``source_batch`` of them, drawn afresh at every step,
without replacement, from a generator seeded by the run's seed and the step number, as DSAN
draws a source batch beside each target batch)::

    loss = CE(C(z^t), y) + weight · λ(p) · d̂(z^s, z^t)

- CE over the batch's labelled SAR samples (averaged over them; 0 in a batch without any);
- λ(p) = 2 / (1 + exp(−γ·p)) − 1, γ = ``ramp_gamma`` (10), p the training progress: e / E
  with e = 1 … E the epoch (``ramp: epoch``, DSAN's code: the first epoch already has p = 1/E)
  or s / S with s = 1 … S the step (``ramp: step``); ``weight`` 0.5 (DSAN's code's ``--weight``);
- the LMMD (DSAN's eq. for d̂_H(p, q), with the class set of the authors' code)::

      d̂ = 1/|C'| Σ_{c∈C'} ‖ Σ_i w_i^{sc} φ(z_i^s) − Σ_j w_j^{tc} φ(z_j^t) ‖²_H
        = 1/|C'| Σ_{c∈C'} [ Σ_i Σ_i' w_i^{sc} w_i'^{sc} k(z_i^s, z_i'^s)
                           + Σ_j Σ_j' w_j^{tc} w_j'^{tc} k(z_j^t, z_j'^t)
                           − 2 Σ_i Σ_j w_i^{sc} w_j^{tc} k(z_i^s, z_j^t) ]

  with the class weights w_i^{sc} = y_ic / Σ_i' y_i'c (y one-hot: 1/n_c for the source samples
  of class c, 0 for the others) and w_j^{tc} = ŷ_jc / Σ_j' ŷ_j'c (ŷ_j the target network's
  softmax probabilities, detached), and C' the classes present in the batch on both sides: in
  the source labels and among the target samples' predicted classes (argmax ŷ). A class outside
  C' contributes nothing; with C' empty d̂ = 0;
- the kernel k is the sum of ``kernel_num`` Gaussian kernels k(a, b) = Σ_u exp(−‖a − b‖² / σ_u)
  with σ_u = σ · ``kernel_mul``^(u − ⌊kernel_num / 2⌋), u = 0 … kernel_num − 1, and σ the mean
  squared distance between two distinct features of the batch (source and target together,
  Σ_{a≠b} ‖z_a − z_b‖² / (n² − n), no gradient), or ``fix_sigma``; DSAN's code: ``kernel_mul``
  2, ``kernel_num`` 5, i.e. σ/4, σ/2, σ, 2σ, 4σ. (σ_u divides the *squared* distance, as in the
  code: it is not a standard deviation.)

Prediction: the SAR network alone, C(B(g(x_SAR))), on SAR images.

Choices the ESCCS paper leaves open (each a parameter where one can differ):

- the source domain: the labelled target optical images through f_S (above), or every optical
  image (``source_samples: all``), the unlabelled ones labelled with f_S's predicted class;
- the source feature space (f_S's standardised trunk features) and the SAR network's linear
  bottleneck into it (the dimension is the source model's, so there is no ``bottleneck`` size);
- a new linear classifier C, trained on the labelled SAR samples only (DSAN trains its
  classifier on the labelled source domain; here the labelled SAR samples are the target's
  labelled data, and the optical features only enter through the LMMD);
- the target side of the LMMD is every SAR sample of the batch, labelled or not, weighted by
  the network's softmax like DSAN's unlabelled target samples;
- ``source_batch`` (default the run's batch size, as DSAN's two loaders share one);
- GoogLeNet's dropout (p = 0.2, before its classifier) stays in the trunk, so it applies to
  g(x_SAR) in training; the engine's flips and 90° rotations apply to the SAR images;
- training uses the run's settings (DSAN's own SGD schedule and its 10× learning rate of the new
  layers are not used: one optimiser and schedule for the whole network, the spec's).

Logged (stage ``target``, per epoch): ``loss``, ``ce``, ``lmmd`` (d̂ before weighting),
``lambda`` (λ(p)), ``classes`` (|C'|). The step number is a buffer of the network (``steps``),
so a run resumed from an engine checkpoint continues the ramp and the source draws where the
killed run stopped.

Multiclass datasets only: the class weights are softmax probabilities over exclusive classes;
the runner refuses a multilabel dataset before any run trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, cast

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, batch_bounds
from cloudbench.harness.methods import FitContext, Method, register
from cloudbench.harness.transfer import (
    UNLABELED,
    SourceClassifier,
    fit_source,
    optical_forward,
    pooled,
    sar_forward,
)
from cloudbench.models.classifiers import encoder, googlenet

_SOURCE_DRAW = 7
"""Stream of the per-step generators of the source draws (apart from the engine's)."""


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    weight: float = Field(0.5, ge=0)
    """Weight of the LMMD term at full ramp (DSAN's code: ``--weight`` 0.5)."""
    ramp_gamma: float = Field(10.0, gt=0)
    """γ of the ramp λ(p) = 2 / (1 + exp(−γ·p)) − 1 (DSAN: 10)."""
    ramp: Literal["epoch", "step"] = "epoch"
    """The progress p of the ramp: ``epoch``: e / E, e = 1 … E (DSAN's code); ``step``:
    s / S over the optimiser steps s = 1 … S."""
    kernel_mul: float = Field(2.0, gt=0)
    """Ratio between consecutive Gaussian bandwidths (DSAN's code: 2)."""
    kernel_num: int = Field(5, ge=1)
    """Number of Gaussian kernels, centred on the base bandwidth (DSAN's code: 5)."""
    fix_sigma: float | None = Field(None, gt=0)
    """The base bandwidth σ (the middle kernel's, dividing squared distances); null (DSAN's
    default): the mean squared distance between distinct features of the batch."""
    source_samples: Literal["labeled", "all"] = "labeled"
    """The source domain: the labelled optical images with their true classes (``labeled``),
    or every optical image, the unlabelled ones with f_S's predicted class (``all``)."""
    source_batch: int | None = Field(None, ge=2)
    """Source features drawn per step (without replacement; all when fewer); null: the run's
    batch size."""


class SARNetwork(nn.Module):
    """The target network: a GoogLeNet trunk g on SAR, a linear bottleneck B into the source
    feature space, a linear classifier C. ``steps`` counts the optimiser steps of its training
    (a buffer, saved with engine checkpoints)."""

    steps: Tensor

    def __init__(self, in_channels: int, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.trunk, trunk_dim = encoder(googlenet(in_channels, num_classes))
        self.bottleneck = nn.Linear(trunk_dim, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def features(self, image: Tensor) -> Tensor:
        """z^t = B(g(image)) (B, feature_dim)."""
        return self.bottleneck(self.trunk(image))

    def forward(self, image: Tensor,
                with_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The logits (B, K); with ``with_features``, ``(z^t, logits)`` (one call, so that the
        engine's wrappers, data parallelism included, see the whole training forward)."""
        features = self.features(image)
        logits = self.head(features)
        return (features, logits) if with_features else logits


def ramp(progress: float, gamma: float = 10.0) -> float:
    """λ(p) = 2 / (1 + exp(−γ·p)) − 1."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def squared_distances(features: Tensor) -> Tensor:
    """‖a − b‖² between every two rows of ``features`` (N, D), fp32, diagonal exactly 0."""
    x = features.float()
    norms = (x * x).sum(dim=1)
    distances = (norms[:, None] + norms[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    return distances.fill_diagonal_(0.0)


def bandwidths(distances: Tensor, kernel_mul: float = 2.0, kernel_num: int = 5,
               fix_sigma: float | None = None) -> Tensor:
    """The ``kernel_num`` bandwidths σ_u = σ · kernel_mul^(u − ⌊kernel_num/2⌋) (kernel_num,),
    σ = ``fix_sigma`` or Σ_{a≠b} d_ab / (n² − n) of the squared ``distances`` (n, n), detached."""
    if fix_sigma is not None:
        sigma = torch.tensor(float(fix_sigma), device=distances.device)
    else:
        n = distances.shape[0]
        sigma = distances.detach().sum() / max(n * n - n, 1)
    powers = torch.arange(kernel_num, device=distances.device, dtype=torch.float32)
    return sigma * kernel_mul ** (powers - kernel_num // 2)


def multi_kernel(distances: Tensor, kernel_mul: float = 2.0, kernel_num: int = 5,
                 fix_sigma: float | None = None) -> Tensor:
    """Σ_u exp(−d / σ_u) of the squared ``distances`` (n, n) (:func:`bandwidths`)."""
    sigmas = bandwidths(distances, kernel_mul, kernel_num, fix_sigma)
    return torch.exp(-distances[None] / sigmas[:, None, None]).sum(dim=0)


def class_weights(source_label: Tensor, target_probs: Tensor,
                  num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(w_s, w_t, shared)``: the source weights (Ns, K), y_ic / Σ_i' y_i'c of the one-hot
    labels, the target weights (Nt, K), ŷ_jc / Σ_j' ŷ_j'c of the (detached) probabilities,
    both zero in the columns of classes outside C' (the mask ``shared`` (K,): present among the
    source labels and among the target's predicted classes)."""
    onehot = F.one_hot(source_label, num_classes).float()
    probs = target_probs.detach().float()
    in_source = onehot.sum(dim=0) > 0
    in_target = F.one_hot(probs.argmax(dim=1), num_classes).sum(dim=0) > 0
    shared = in_source & in_target
    w_s = onehot / onehot.sum(dim=0).clamp_min(1.0)
    w_t = probs / probs.sum(dim=0).clamp_min(1e-12)
    return w_s * shared, w_t * shared, shared


def lmmd(source: Tensor, target: Tensor, source_label: Tensor, target_probs: Tensor,
         num_classes: int, kernel_mul: float = 2.0, kernel_num: int = 5,
         fix_sigma: float | None = None) -> tuple[Tensor, Tensor]:
    """DSAN's LMMD d̂ (see the module docstring) of ``source`` (Ns, D) features labelled
    ``source_label`` (Ns,) and ``target`` (Nt, D) features with class probabilities
    ``target_probs`` (Nt, K), in fp32; and |C'|, the number of classes it averages over."""
    n_s = source.shape[0]
    kernels = multi_kernel(squared_distances(torch.cat([source.float(), target.float()])),
                           kernel_mul, kernel_num, fix_sigma)
    k_ss, k_tt, k_st = kernels[:n_s, :n_s], kernels[n_s:, n_s:], kernels[:n_s, n_s:]
    w_s, w_t, shared = class_weights(source_label, target_probs, num_classes)
    count = shared.sum()
    total = ((w_s * (k_ss @ w_s)).sum() + (w_t * (k_tt @ w_t)).sum()
             - 2.0 * (w_s * (k_st @ w_t)).sum())
    return total / count.clamp_min(1), count


def _draw(seed: int, step: int, n: int, size: int) -> Tensor:
    """The indices (min(size, n),) of one step's source features: without replacement, from a
    CPU generator seeded by ``(seed, step)``."""
    state = np.random.SeedSequence([seed, step, _SOURCE_DRAW]).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.randperm(n, generator=generator)[: min(size, n)]


def _source_domain(engine: Engine, f_s: SourceClassifier, context: FitContext,
                   which: str) -> tuple[Tensor, Tensor]:
    """The source features z^s (Ns, D) (f_S's standardised trunk features of the optical
    images) and their classes (Ns,) on the engine's device (see ``source_samples``)."""
    inputs = context.labeled.inputs if which == "labeled" else pooled(context.labeled,
                                                                       context.unlabeled)
    trunk = engine.predict(f_s.trunk, inputs, optical_forward).to(engine.device).float()
    features = f_s.scale(trunk)
    label = cast(Tensor, inputs["label"]).to(engine.device)
    if which == "all":
        logits = engine.predict(f_s.head, {"features": features},
                                lambda model, batch: model(batch["features"]))
        label = label.where(label != UNLABELED, logits.argmax(dim=1).to(label.device))
    return features, label


@register
class DSAN(Method):
    name = "dsan"
    modalities = ("s2", "s1")
    needs_source = True
    Params = Params

    def fit(self, context: FitContext) -> None:
        self.engine: Engine = context.engine
        params = cast(Params, self.params)
        engine, device, classes = self.engine, self.engine.device, context.num_classes
        f_s = fit_source(context)
        source, source_label = _source_domain(engine, f_s, context, params.source_samples)
        del f_s

        inputs = pooled(context.labeled, context.unlabeled)
        inputs.pop("image_s2")  # the target network reads SAR alone
        channels = int(inputs["image_s1"].shape[1])
        self.model = SARNetwork(channels, int(source.shape[1]), classes).to(device)
        net = self.model
        train = context.train
        per_epoch = len(batch_bounds(len(inputs["label"]), train.batch_size,
                                     smallest=2 * engine.world_size))
        total = per_epoch * train.epochs
        draw = params.source_batch or train.batch_size
        seed = engine.seed
        counter: list[int] = []  # the next step number, read once from the buffer

        def loss(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor | float]:
            if not counter:  # a resumed fit has restored ``steps`` before its first batch
                counter.append(int(net.steps))
            step = counter[0]
            counter[0] += 1
            net.steps += 1
            done = (step // per_epoch + 1) / train.epochs if params.ramp == "epoch" \
                else (step + 1) / total
            lam = ramp(done, params.ramp_gamma)

            features, logits = model(batch["image_s1"], with_features=True)
            features, logits = features.float(), logits.float()
            label = batch["label"]
            labeled = label != UNLABELED
            each = F.cross_entropy(logits, label.clamp_min(0), reduction="none")
            ce = (each * labeled).sum() / labeled.sum().clamp_min(1)
            index = _draw(seed, step, source.shape[0], draw).to(device)
            d, count = lmmd(source[index], features, source_label[index],
                            F.softmax(logits, dim=1), classes, params.kernel_mul,
                            params.kernel_num, params.fix_sigma)
            return {"loss": ce + params.weight * lam * d, "ce": ce.detach(),
                    "lmmd": d.detach(), "lambda": lam, "classes": count.float()}

        engine.fit(net, inputs, loss, train, log=lambda entry: context.log("target", entry))

    def predict(self, split: SplitData) -> Tensor:
        return self.engine.predict(self.model, split.inputs, sar_forward)

    def profile_target(self) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor]]:
        return self.model, sar_forward
