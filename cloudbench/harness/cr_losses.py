"""The cloud-removal losses: L1, L2, GNLL, MGNLL (diagonal) and SSCR's structure loss, and the LSGAN
terms of the adversarial cloud-removal and translation methods (SPL, CycIT).

Tensors are (B, C, H, W) with the bands on dim 1: ``mean`` the prediction μ, ``target`` the
cloud-free image y, ``variance`` the predicted per-pixel, per-band variance σ² (> 0), all in the
same units (those of :mod:`cloudbench.models.cloud_removal`: [0, 1] reflectance). Every loss
returns a scalar, the mean over what its equation leaves unsummed. N below is the number of
elements of ``mean``, P = B·H·W the number of pixels, C the number of bands.

Variances are floored at ``eps`` the way UnCRtainTS (and
:func:`torch.nn.functional.gaussian_nll_loss`) do it: the value is clamped, the gradient passes
as if it were not.

:func:`cr_loss` picks a loss by name for a model's output dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from cloudbench.errors import CloudbenchError

CRLoss = Literal["l1", "l2", "gnll", "mgnll", "sscr"]
CR_LOSSES: tuple[str, ...] = ("l1", "l2", "gnll", "mgnll", "sscr")


def l1_loss(mean: Tensor, target: Tensor) -> Tensor:
    """L1 = (1/N) Σ |μ − y|."""
    return F.l1_loss(mean, target)


def l2_loss(mean: Tensor, target: Tensor) -> Tensor:
    """L2 = (1/N) Σ (μ − y)² (the mean squared error)."""
    return F.mse_loss(mean, target)


def _floor(variance: Tensor, eps: float) -> Tensor:
    """``max(σ², eps)`` in value, the identity in gradient."""
    return variance + (variance.clamp(min=eps) - variance).detach()


def gnll_loss(mean: Tensor, target: Tensor, variance: Tensor, *, eps: float = 1e-8,
              full: bool = True) -> Tensor:
    """Gaussian negative log-likelihood with the predicted diagonal variance, per element.

    GNLL = (1/N) Σ ½ [log σ² + (μ − y)² / σ²] + ½ log 2π (the constant only when ``full``),
    σ² floored at ``eps``. This is :func:`torch.nn.functional.gaussian_nll_loss` with UnCRtainTS's
    settings (``full=True``, ``eps=1e-8``).
    """
    return F.gaussian_nll_loss(mean, target, variance, full=full, eps=eps)


def mgnll_loss(mean: Tensor, target: Tensor, variance: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Multivariate Gaussian NLL per pixel, diagonal covariance Σ = diag(σ²₁ … σ²_C).

    MGNLL = (1/P) Σ_pixels ½ [C log 2π + log det Σ + (μ − y)ᵀ Σ⁻¹ (μ − y)]
          = (1/P) Σ_pixels ½ Σ_c [log 2π + log σ²_c + (μ_c − y_c)² / σ²_c],

    σ² floored at ``eps`` and the Mahalanobis term at 1e-9, as UnCRtainTS's
    ``multi_diag_gaussian_nll``. Per pixel it sums over the bands where :func:`gnll_loss`
    averages, so with a diagonal covariance MGNLL = C · GNLL. UnCRtainTS's code takes log det Σ
    over the whole batch (``var.log().sum()`` inside a map over pixels only), which adds B times
    each pixel's log-determinant; this is the per-sample likelihood the equation states.
    """
    if mean.ndim < 2:
        raise CloudbenchError(f"mgnll_loss needs (B, C, ...) tensors; got {tuple(mean.shape)}")
    var = _floor(variance, eps)
    bands = mean.shape[1]
    mahalanobis = ((mean - target) ** 2 / var).sum(dim=1).clamp(min=1e-9)
    logdet = var.log().sum(dim=1)
    return (0.5 * (bands * math.log(2 * math.pi) + logdet + mahalanobis)).mean()


def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson's r per sample of (B, …) tensors, over everything but dim 0.

    r = Σ (a − ā)(b − b̄) / (‖a − ā‖ ‖b − b̄‖ + eps), as SSCR's ``pearson_correlation``
    (a cosine similarity of the centred vectors, eps in the denominator). Returns (B,).
    """
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def structure_loss(sar_mask: Tensor, target: Tensor) -> Tensor:
    """SSCR's structure term: 1 − (1/B) Σ_b r(m̄_b, ȳ_b).

    m̄ is the SAR mask averaged over its channels, ȳ the target averaged over its bands, both
    (B, 1, H, W), r Pearson's correlation over a sample's pixels (:func:`pearson_correlation`).
    It is 0 when the mask is an increasing affine function of the target's band mean, 2 when a
    decreasing one, and does not depend on the scale of either.
    """
    return 1 - pearson_correlation(sar_mask.mean(dim=1), target.mean(dim=1)).mean()


def sscr_loss(mean: Tensor, target: Tensor, sar_mask: Tensor, *, l1_weight: float = 0.9,
              structure_weight: float = 0.001, scale_by: float = 10.0) -> Tensor:
    """SSCR's training loss (its ``ml`` loss): ``l1_weight`` · L1 + ``structure_weight`` · S.

    L = 0.9 · (1/N) Σ |s·μ − s·y| + 0.001 · :func:`structure_loss` (m, y), with s = ``scale_by``:
    SSCR computes the L1 on data scaled by its ``--scale_by 10`` and the structure term is scale
    free, so s = 10 keeps its balance of the two terms on [0, 1] data (s = 1 gives the plain
    formula on the units given).
    """
    return (l1_weight * scale_by * l1_loss(mean, target)
            + structure_weight * structure_loss(sar_mask, target))


def lsgan_generator(scores: Tensor) -> Tensor:
    """mean((D(fake) − 1)²): a generator's LSGAN term (Mao et al. 2017, real 1, fake 0), fp32."""
    return (scores.float() - 1).pow(2).mean()


def lsgan_discriminator(real: Tensor, fake: Tensor) -> Tensor:
    """½ [mean((D(real) − 1)²) + mean(D(fake)²)]: a discriminator's LSGAN loss, in fp32."""
    return 0.5 * ((real.float() - 1).pow(2).mean() + fake.float().pow(2).mean())


def frozen(discriminator: nn.Module, image: Tensor) -> Tensor:
    """``discriminator(image)`` through detached parameters: a gradient to ``image`` only, so a
    generator's adversarial term trains the generator and not the discriminator."""
    detached = {k: v.detach() for k, v in discriminator.named_parameters()}
    return functional_call(discriminator, detached, (image,))


def cr_loss(name: str, output: Mapping[str, Tensor], target: Tensor) -> Tensor:
    """The loss ``name`` (one of :data:`CR_LOSSES`) of a model's output dict against ``target``.

    ``gnll`` and ``mgnll`` need ``output["variance"]``, ``sscr`` needs ``output["sar_mask"]``.
    """
    if name not in CR_LOSSES:
        raise CloudbenchError(f"unknown cloud-removal loss {name!r}; known: {list(CR_LOSSES)}")
    mean = output["mean"]
    if name == "l1":
        return l1_loss(mean, target)
    if name == "l2":
        return l2_loss(mean, target)
    if name == "sscr":
        if "sar_mask" not in output:
            raise CloudbenchError("the sscr loss needs a model with a SAR mask (sscr)")
        return sscr_loss(mean, target, output["sar_mask"])
    if "variance" not in output:
        raise CloudbenchError(f"the {name} loss needs a model with a variance head")
    if name == "gnll":
        return gnll_loss(mean, target, output["variance"])
    return mgnll_loss(mean, target, output["variance"])

