"""Pretext networks for pre-training an SSL backbone ourselves: MoCo v2, MoCo v3 and MAE.

Each pretext wraps an :class:`~cloudbench.models.backbones.SSLBackbone` built with
``build_backbone(..., pretrained=False)`` (timm's network without a classifier, and the
normalisation of the released SSL4EO-S12 weights) and computes its own loss:
``model(x) -> {"loss": …, other terms}`` for a batch ``x`` (B, C, H, W) in our units (S2
reflectance, S1 dB, channels in ``backbone.bands`` order). That is all the one engine needs:
``loss_fn = lambda model, batch: model(x_of(batch))``, and :meth:`PretextModel.trainable_parameters`
for ``Engine.fit(params=...)``.

Inside ``forward`` the input is first normalised by the backbone's ``normalise`` (our units to
the input the released weights were trained on, so a checkpoint of ours expects the same units
as theirs), then augmented on its device (two views for MoCo, one for MAE), then encoded by the
backbone's ``net``. Every random draw (crop boxes, jitter factors, blur widths, flips, MAE's
masking noise) comes from torch's global CPU generator, which the engine seeds at the start of a
fit and saves in its checkpoints: a resumed pre-training draws what an uninterrupted one draws,
and the draws are the same on any device.

**MoCo v2** (Chen, Fan, Girshick and He 2020, "Improved baselines with momentum contrastive
learning"): a query encoder ``f_q`` (backbone + 2-layer MLP projection, 2048 → 2048 → ReLU →
128 for the ResNet-50) and a key encoder ``f_k``, the same architecture, never optimised, whose
parameters follow the query encoder's as an exponential moving average
``θ_k ← m θ_k + (1 − m) θ_q`` (m = 0.999). For two views ``x_q``, ``x_k`` of each sample,
``q = f_q(x_q) / |f_q(x_q)|``, ``k = f_k(x_k) / |f_k(x_k)|``, and with the queue ``Q`` of the K
(65536) most recent keys of earlier batches (l2-normalised columns, (D, K)) the loss is InfoNCE
at temperature τ = 0.2::

    L = −1/B Σ_i log( exp(q_i·k_i / τ) / (exp(q_i·k_i / τ) + Σ_j exp(q_i·Q_j / τ)) )

i.e. cross-entropy over the logits ``[q·k, q·Q] / τ`` with the positive at index 0. The order of
one step is MoCo's: q, then the momentum update (under ``torch.no_grad()``), then k, the loss,
and the batch's keys are enqueued (replacing the oldest, a ring buffer) after the loss is
computed. The engine has no hooks, so the momentum update runs inside the loss function, before
the keys: at step t it uses the query parameters after step t − 1's optimiser step, as MoCo's
own code does. The logits use a copy of the queue, which the enqueue then changes in place.
Choices left open: no shuffle-BN (MoCo shuffles the batch across GPUs so that batch norm cannot
leak which key belongs to which query; on one device there is nothing to shuffle across, and
the key encoder's batch norm sees the batch in its own order); the queue starts as random unit
vectors (as MoCo's); any batch size works (the ring buffer wraps), a batch larger than the queue
keeps its last K keys.

**MoCo v3** (Chen, Xie and He 2021, "An empirical study of training self-supervised vision
transformers"): no queue; the query side is backbone → projection MLP (3 layers, 4096 hidden,
256 out, batch norm and ReLU between, batch norm without affine after the last) → prediction
MLP (2 layers, 256 → 4096 → 256, the same pattern); the momentum side is backbone → projection,
an EMA of the query's (m = 0.99, or MoCo v3's cosine schedule
``m_t = 1 − (1 − m) (1 + cos(π t / T)) / 2`` from m to 1 over the T steps of the run, with
``momentum_schedule="cosine"``). For the two views ``x1``, ``x2``, with ``q`` the l2-normalised
predictions and ``k`` the normalised momentum projections, the loss is symmetric::

    L = ctr(q1, k2) + ctr(q2, k1),   ctr(q, k) = 2τ · CE(q kᵀ / τ, labels = 0 … B−1)

the other samples of the batch being the negatives (τ = 0.2; the 2τ factor is MoCo v3's). MoCo
v3's frozen random patch projection (a stability trick of the paper) is not used.

**MAE** (He et al. 2022, "Masked autoencoders are scalable vision learners"): the ViT-S/16 is
the encoder. An image (B, C, H, W) is cut into L = (H/16)(W/16) patches of 16×16×C values
(:func:`patchify`); each patch is embedded by the ViT's ``patch_embed`` and gets the ViT's own
(learnt, interpolated to the grid) position embedding; for every sample a random
``round(L · (1 − r))`` of them (r = 0.7, the paper's 70%) are kept (:func:`random_masking`),
the class token is prepended and the encoder's blocks and final norm run on the visible tokens
only. A light decoder (our choice, documented: 4 timm ``Block``s of width 256 with 8 heads, MLP
ratio 4, fixed 2-D sine-cosine position embedding, a shared learnt mask token) reconstructs all
L patches, and the loss is the mean squared error over the **masked** patches only::

    L = Σ_i Σ_p m_ip · mean_j (ŷ_ipj − y_ipj)² / Σ_i Σ_p m_ip

with ``m_ip`` = 1 for masked patches and ``y`` the patch's pixels, normalised per patch (minus
its mean, over its standard deviation + 1e-6: MAE's ``norm_pix_loss``, on by default;
``norm_pix_loss=False`` regresses the normalised input values themselves). The encoder keeps
timm's learnt position embedding (MAE's own code fixes a sine-cosine one) so the checkpoint is
a plain timm ViT that loads into ``build_backbone``. The CBEN paper's Table IV lists "Multi
Label Soft Margin Loss" in its MAE row: that is the downstream (multi-label BigEarthNet) loss of
the evaluation; MAE's pre-training objective is this pixel MSE.

**Augmentations** (on the normalised input, per sample, vectorised: one ``grid_sample`` for the
crop and flip of a whole batch): MoCo (the CBEN paper's Table V, after SSL4EO-S12's MoCo
recipe): a random resized crop to ``image_size`` (area scale 0.2–1 for MoCo v2, 0.08–1 for MoCo
v3, aspect ratio 3/4–4/3, torchvision's sampling with 10 tries then the whole image; bilinear,
no antialiasing), then with probability 0.8 brightness and contrast (``x · b``, then
``(x − μ) · c + μ`` with μ the sample's per-channel spatial mean, b and c uniform in [0.6,
1.4]), with probability 0.2 "grayscale" (every channel replaced by the mean over channels),
with probability 0.5 a Gaussian blur (σ uniform in [0.1, 2] pixels, a 13-tap separable kernel,
reflected borders), and with probability 0.5 a horizontal flip. MAE: the random resized crop
(scale 0.2–1) and the horizontal flip only. Augmentations run in float32, outside bf16 autocast.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from timm.layers import build_sincos2d_pos_embed, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from cloudbench.config import validate
from cloudbench.errors import CloudbenchError
from cloudbench.models.backbones import SSLBackbone

PRETEXTS = ("moco-v2", "moco-v3", "mae")
"""The pretext tasks, as the ``cloudbench pretrain`` command names them."""
DEFAULT_BACKBONES = {"moco-v2": "moco-v2-resnet50", "moco-v3": "moco-v3-vit-s16",
                     "mae": "mae-vit-s16"}
"""The backbone (a key of ``backbones.BACKBONES``) each pretext trains by default."""
M = TypeVar("M", bound=nn.Module)
BLUR_TAPS = 13
"""Taps of the Gaussian blur kernel: 2·ceil(3·σ_max) + 1 for σ_max = 2 pixels."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Augmentation(_Settings):
    """The views' augmentations (defaults: the CBEN paper's Table V, MoCo v2's crop)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    """Area of the random resized crop, as a fraction of the image (low, high)."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Aspect ratio (width / height) of the crop (low, high), drawn log-uniformly."""
    p_color: float = Field(0.8, ge=0, le=1)
    """Probability of brightness and contrast jitter."""
    brightness: float = Field(0.4, ge=0, lt=1)
    """Brightness factor uniform in [1 − brightness, 1 + brightness]."""
    contrast: float = Field(0.4, ge=0, lt=1)
    """Contrast factor uniform in [1 − contrast, 1 + contrast]."""
    p_grayscale: float = Field(0.2, ge=0, le=1)
    """Probability of replacing every channel by the mean over channels."""
    p_blur: float = Field(0.5, ge=0, le=1)
    """Probability of a Gaussian blur."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Blur standard deviation in pixels, uniform in (low, high); high at most 2."""
    p_flip: float = Field(0.5, ge=0, le=1)
    """Probability of a horizontal flip."""

    @model_validator(mode="after")
    def _ranges(self) -> Augmentation:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1] <= (BLUR_TAPS - 1) / 6:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high <= 2, got "
                             f"{self.blur_sigma}")
        return self


class MoCoV2Settings(_Settings):
    """MoCo v2's pretext settings (defaults: MoCo v2's, temperature 0.2)."""

    hidden_dim: int = Field(2048, ge=1)
    """Hidden width of the 2-layer projection MLP."""
    dim: int = Field(128, ge=1)
    """Output (key) dimension."""
    queue_size: int = Field(65536, ge=1)
    """Negatives kept in the queue (K)."""
    temperature: float = Field(0.2, gt=0)
    key_momentum: float = Field(0.999, ge=0, le=1)
    """m of the key encoder's EMA θ_k ← m θ_k + (1 − m) θ_q."""
    augment: Augmentation = Augmentation()


class MoCoV3Settings(_Settings):
    """MoCo v3's pretext settings (defaults: MoCo v3's for ViTs)."""

    hidden_dim: int = Field(4096, ge=1)
    """Hidden width of the projection and prediction MLPs."""
    dim: int = Field(256, ge=1)
    """Output dimension of both MLPs."""
    projector_layers: int = Field(3, ge=2)
    temperature: float = Field(0.2, gt=0)
    key_momentum: float = Field(0.99, ge=0, le=1)
    """m of the momentum encoder's EMA (its start value with the cosine schedule)."""
    momentum_schedule: Literal["constant", "cosine"] = "constant"
    """constant m, or MoCo v3's cosine increase from m to 1 over the run's steps."""
    augment: Augmentation = Augmentation(crop_scale=(0.08, 1.0))


class MAESettings(_Settings):
    """MAE's pretext settings (mask ratio: the CBEN paper's 70%; decoder: our light one)."""

    mask_ratio: float = Field(0.7, gt=0, lt=1)
    """Share of each sample's patches that are masked (round(L · (1 − ratio)) stay visible)."""
    decoder_dim: int = Field(256, ge=8)
    decoder_depth: int = Field(4, ge=1)
    decoder_heads: int = Field(8, ge=1)
    norm_pix_loss: bool = True
    """Normalise each target patch by its own mean and standard deviation."""
    crop_scale: tuple[float, float] = (0.2, 1.0)
    p_flip: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> MAESettings:
        if self.decoder_dim % 4:
            raise ValueError(f"decoder_dim must be a multiple of 4 (its 2-D sine-cosine "
                             f"position embedding), got {self.decoder_dim}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim ({self.decoder_dim}) must be a multiple of "
                             f"decoder_heads ({self.decoder_heads})")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got "
                             f"{self.crop_scale}")
        return self


Settings = MoCoV2Settings | MoCoV3Settings | MAESettings
SETTINGS: dict[str, type[_Settings]] = {"moco-v2": MoCoV2Settings, "moco-v3": MoCoV3Settings,
                                        "mae": MAESettings}


def settings_for(method: str, values: Any = None) -> Settings:
    """The validated settings of ``method`` from a mapping of changes (or the settings object)."""
    check_method(method)
    kind = SETTINGS[method]
    if isinstance(values, kind):
        return values  # type: ignore[return-value]
    return validate(kind, dict(values or {}), f"{method} settings")  # type: ignore[return-value]


def check_method(method: str) -> str:
    if method not in PRETEXTS:
        raise CloudbenchError(f"unknown pretext {method!r}; choose one of {', '.join(PRETEXTS)}")
    return method


# --------------------------------------------------------------------------------------------
# Augmentations
# --------------------------------------------------------------------------------------------


def _uniform(n: int, low: float, high: float) -> Tensor:
    """(n,) float64 uniform in [low, high) from the global CPU generator."""
    return low + (high - low) * torch.rand(n, dtype=torch.float64)


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], tries: int = 10) -> Tensor:
    """(n, 4) float64 random resized crop boxes ``(top, left, h, w)`` in pixels.

    torchvision's ``RandomResizedCrop.get_params``, vectorised: each sample tries ``tries``
    (area, log-ratio) draws and takes the first whose box fits the image; a sample without one
    takes the whole image. ``h`` and ``w`` are rounded to whole pixels, the offsets are whole
    pixels drawn uniformly where the box fits.
    """
    area = height * width * _uniform(n * tries, *scale).view(n, tries)
    log_ratio = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1])).view(n, tries)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1),
                        torch.full((n,), -1, dtype=torch.long))
    pick = first.clamp_min(0)
    rows = torch.arange(n)
    h, w = h[rows, pick], w[rows, pick]
    none = first < 0
    h = torch.where(none, torch.full_like(h, height), h)
    w = torch.where(none, torch.full_like(w, width), w)
    top = torch.floor(torch.rand(n, dtype=torch.float64) * (height - h + 1))
    left = torch.floor(torch.rand(n, dtype=torch.float64) * (width - w + 1))
    return torch.stack([top, left, h, w], dim=1)


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Each sample's box ``(top, left, h, w)`` (pixels) of ``x`` (B, C, H, W) resized to
    ``size``×``size`` by bilinear sampling, mirrored left-right where ``flip`` (B,) is true.

    One ``affine_grid`` + ``grid_sample`` for the batch (``align_corners=False``: output pixel
    centres map to evenly spaced points inside the box).
    """
    b, _, height, width = x.shape
    top, left, h, w = (boxes[:, i].to(torch.float32) for i in range(4))
    theta = torch.zeros(b, 2, 3, dtype=torch.float32)
    sx = w / width
    if flip is not None:
        sx = torch.where(flip.cpu(), -sx, sx)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta.to(x.device), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """``x`` (B, C, H, W) blurred per sample with standard deviation ``sigma`` (B,) pixels
    (0: unchanged), a :data:`BLUR_TAPS`-tap separable Gaussian, reflected borders; one grouped
    convolution per direction for the whole batch."""
    b, c, height, width = x.shape
    half = BLUR_TAPS // 2
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    s = sigma.to(torch.float64).clamp_min(1e-12)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = torch.where(sigma[:, None] > 0, kernel, (offsets == 0).double()[None].expand(b, -1))
    weight = kernel.to(torch.float32).repeat_interleave(c, 0).to(x.device)  # (B*C, taps)
    flat = x.float().reshape(1, b * c, height, width)
    flat = F.pad(flat, (half, half, 0, 0), mode="reflect")
    flat = F.conv2d(flat, weight[:, None, None, :], groups=b * c)
    flat = F.pad(flat, (0, 0, half, half), mode="reflect")
    flat = F.conv2d(flat, weight[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, height, width)


def moco_view(x: Tensor, size: int, aug: Augmentation) -> Tensor:
    """One MoCo view of every sample of normalised ``x`` (B, C, H, W): float32 (B, C, size,
    size) (see the module docstring for the chain)."""
    n = x.shape[0]
    boxes = crop_boxes(n, x.shape[2], x.shape[3], aug.crop_scale, aug.crop_ratio)
    flip = torch.rand(n) < aug.p_flip
    view = resized_crop(x, boxes, size, flip)
    color = torch.rand(n) < aug.p_color
    bright = torch.where(color, _uniform(n, 1 - aug.brightness, 1 + aug.brightness), 1.0)
    contrast = torch.where(color, _uniform(n, 1 - aug.contrast, 1 + aug.contrast), 1.0)
    gray = torch.rand(n) < aug.p_grayscale
    blur = torch.rand(n) < aug.p_blur
    sigma = torch.where(blur, _uniform(n, *aug.blur_sigma), 0.0)
    device = view.device
    view = view * bright.float().to(device).view(-1, 1, 1, 1)
    mean = view.mean(dim=(2, 3), keepdim=True)
    view = (view - mean) * contrast.float().to(device).view(-1, 1, 1, 1) + mean
    view = torch.where(gray.to(device).view(-1, 1, 1, 1),
                       view.mean(dim=1, keepdim=True).expand_as(view), view)
    if bool(blur.any()):
        view = gaussian_blur(view, sigma)
    return view


def crop_flip_view(x: Tensor, size: int, scale: tuple[float, float], p_flip: float) -> Tensor:
    """MAE's view: a random resized crop (aspect 3/4–4/3) and a horizontal flip."""
    n = x.shape[0]
    boxes = crop_boxes(n, x.shape[2], x.shape[3], scale, (3 / 4, 4 / 3))
    return resized_crop(x, boxes, size, torch.rand(n) < p_flip)


def _no_autocast(x: Tensor) -> torch.autocast:
    return torch.autocast(x.device.type, enabled=False)


# --------------------------------------------------------------------------------------------
# Losses and updates
# --------------------------------------------------------------------------------------------


def moco_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """(B, 1 + K) float32 logits ``[q·k, q·queue] / τ``: the positive first."""
    q, k = q.float(), k.float()
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.float()
    return torch.cat([positive, negative], dim=1) / temperature


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE: cross-entropy over ``[q·k, q·queue] / τ`` with the positive at 0.

    ``q``, ``k``: (B, D) l2-normalised queries and keys; ``queue``: (D, K) normalised
    negatives. Computed in float32.
    """
    return _info_nce(moco_logits(q, k, queue, temperature))


def _info_nce(logits: Tensor) -> Tensor:
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def contrastive(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """MoCo v3's ``ctr(q, k) = 2τ · CE(q kᵀ / τ, arange(B))`` for normalised (B, D) q, k."""
    logits = q.float() @ k.float().T / temperature
    labels = torch.arange(len(q), device=q.device)
    return F.cross_entropy(logits, labels) * (2 * temperature)


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """``θ_target ← m θ_target + (1 − m) θ_online`` for every parameter (same order); buffers
    (batch norm statistics) are left to the target's own forward passes."""
    theirs: list[Tensor] = [p.detach() for p in online.parameters()]
    mine: list[Tensor] = list(target.parameters())
    if len(mine) != len(theirs):
        raise CloudbenchError("the momentum encoder does not match the online encoder")
    torch._foreach_mul_(mine, m)
    torch._foreach_add_(mine, theirs, alpha=1 - m)


def _frozen_copy(module: M) -> M:
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


# --------------------------------------------------------------------------------------------
# Pretext networks
# --------------------------------------------------------------------------------------------


class PretextModel(nn.Module):
    """A pretext around ``encoder`` (an SSLBackbone): ``forward(x)`` returns the loss terms of a
    batch ``x`` (B, C, H, W) in our units; ``image_size`` is the side of the views."""

    method: str

    def __init__(self, encoder: SSLBackbone, image_size: int) -> None:
        super().__init__()
        if encoder.patch_size and image_size % encoder.patch_size:
            raise CloudbenchError(f"{encoder.name} needs an image size that is a multiple of "
                                  f"{encoder.patch_size}, got {image_size}")
        if image_size < 16:
            raise CloudbenchError(f"the image size must be at least 16, got {image_size}")
        self.encoder = encoder
        self.image_size = image_size

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What ``Engine.fit(params=...)`` optimises (never the momentum encoder's)."""
        return [p for name, p in self.named_parameters() if not name.startswith("key_")]

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != len(self.encoder.bands):
            raise CloudbenchError(f"{self.method} takes (B, {len(self.encoder.bands)}, H, W) "
                                  f"inputs, got {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise CloudbenchError(f"{self.method} needs batches of at least 2 samples")


def _mlp(dims: list[int], *, batch_norm: bool, last_bn: bool) -> nn.Sequential:
    """Linear layers ``dims[0] → … → dims[-1]`` with (BN and) ReLU between; ``last_bn``: a batch
    norm without affine after the last (MoCo v3)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=not batch_norm))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.ReLU(inplace=True))
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


class MoCoV2(PretextModel):
    """MoCo v2 (module docstring): ``encoder`` + ``projector`` are the query encoder,
    ``key_encoder`` + ``key_projector`` the momentum key encoder; ``queue`` (D, K) and
    ``queue_ptr`` are buffers, so the engine's checkpoints keep them."""

    method = "moco-v2"
    queue: Tensor
    queue_ptr: Tensor

    def __init__(self, encoder: SSLBackbone, image_size: int,
                 settings: MoCoV2Settings | None = None) -> None:
        super().__init__(encoder, image_size)
        self.settings = settings = settings or MoCoV2Settings()
        self.projector = _mlp([encoder.feature_dim, settings.hidden_dim, settings.dim],
                              batch_norm=False, last_bn=False)
        self.key_encoder = _frozen_copy(encoder)
        self.key_projector = _frozen_copy(self.projector)
        queue = F.normalize(torch.randn(settings.dim, settings.queue_size), dim=0)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def query(self, view: Tensor) -> Tensor:
        """Normalised queries (B, D) of a view."""
        return F.normalize(self.projector(self.encoder.net(view)).float(), dim=1)

    @torch.no_grad()
    def key(self, view: Tensor) -> Tensor:
        """Normalised keys (B, D) of a view, by the key encoder."""
        return F.normalize(self.key_projector(self.key_encoder.net(view)).float(), dim=1)

    @torch.no_grad()
    def update_key_encoder(self) -> None:
        m = self.settings.key_momentum
        momentum_update(self.encoder, self.key_encoder, m)
        momentum_update(self.projector, self.key_projector, m)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Put ``keys`` (B, D) into the queue in place of the oldest, wrapping around."""
        size = self.queue.shape[1]
        keys = keys.detach().to(self.queue.dtype)[-size:]
        slots = (self.queue_ptr + torch.arange(len(keys), device=self.queue.device)) % size
        self.queue[:, slots] = keys.T
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self._check(x)
        with _no_autocast(x):
            x = self.encoder.normalise(x.float())
            view_q = moco_view(x, self.image_size, self.settings.augment)
            view_k = moco_view(x, self.image_size, self.settings.augment)
        q = self.query(view_q)
        self.update_key_encoder()
        k = self.key(view_k)
        with _no_autocast(q):
            logits = moco_logits(q, k, self.queue.clone(), self.settings.temperature)
            loss = _info_nce(logits)
        accuracy = (logits.detach().argmax(1) == 0).float().mean()
        self.enqueue(k)
        return {"loss": loss, "accuracy": accuracy}


class MoCoV3(PretextModel):
    """MoCo v3 (module docstring): ``encoder`` + ``projector`` + ``predictor`` on the query
    side, ``key_encoder`` + ``key_projector`` the momentum side. ``step`` (a buffer) counts the
    steps for the cosine momentum; ``total_steps`` is set by the caller (None: constant)."""

    method = "moco-v3"
    step: Tensor

    def __init__(self, encoder: SSLBackbone, image_size: int,
                 settings: MoCoV3Settings | None = None, total_steps: int | None = None) -> None:
        super().__init__(encoder, image_size)
        self.settings = settings = settings or MoCoV3Settings()
        hidden, dim = settings.hidden_dim, settings.dim
        dims = [encoder.feature_dim] + [hidden] * (settings.projector_layers - 1) + [dim]
        self.projector = _mlp(dims, batch_norm=True, last_bn=True)
        self.predictor = _mlp([dim, hidden, dim], batch_norm=True, last_bn=True)
        self.key_encoder = _frozen_copy(encoder)
        self.key_projector = _frozen_copy(self.projector)
        self.total_steps = total_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def momentum(self) -> float:
        """The EMA momentum of the current step (cosine towards 1, or constant)."""
        m = self.settings.key_momentum
        if self.settings.momentum_schedule == "constant" or not self.total_steps:
            return m
        progress = min(1.0, int(self.step) / self.total_steps)
        return 1 - (1 - m) * (1 + math.cos(math.pi * progress)) / 2

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self._check(x)
        with _no_autocast(x):
            x = self.encoder.normalise(x.float())
            views = [moco_view(x, self.image_size, self.settings.augment) for _ in range(2)]
        q1, q2 = (F.normalize(self.predictor(self.projector(self.encoder.net(v))).float(), dim=1)
                  for v in views)
        m = self.momentum()
        with torch.no_grad():
            momentum_update(self.encoder, self.key_encoder, m)
            momentum_update(self.projector, self.key_projector, m)
            k1, k2 = (F.normalize(self.key_projector(self.key_encoder.net(v)).float(), dim=1)
                      for v in views)
            self.step += 1
        t = self.settings.temperature
        with _no_autocast(q1):
            loss = contrastive(q1, k2, t) + contrastive(q2, k1, t)
        return {"loss": loss, "key_momentum": torch.tensor(m)}


# --- MAE ------------------------------------------------------------------------------------


def patchify(x: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) → (B, L, patch·patch·C), patches in row-major order, each flattened as
    (row, column, channel) within the patch (MAE's layout)."""
    b, c, height, width = x.shape
    if height % patch or width % patch:
        raise CloudbenchError(f"patchify needs sides that are multiples of {patch}, got "
                              f"{height}×{width}")
    h, w = height // patch, width // patch
    x = x.reshape(b, c, h, patch, w, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, h * w, patch * patch * c)


def unpatchify(patches: Tensor, patch: int, channels: int, height: int, width: int) -> Tensor:
    """The inverse of :func:`patchify`: (B, L, patch·patch·C) → (B, C, height, width)."""
    b = patches.shape[0]
    h, w = height // patch, width // patch
    x = patches.reshape(b, h, w, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, height, width)


def kept_patches(patches: int, mask_ratio: float) -> int:
    """Visible patches per sample: round(L · (1 − mask_ratio)), at least 1."""
    return max(1, round(patches * (1 - mask_ratio)))


def random_masking(tokens: Tensor, mask_ratio: float,
                   noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking of ``tokens`` (B, L, D).

    Each sample keeps the :func:`kept_patches` tokens of lowest ``noise`` (B, L) (default:
    uniform from the global CPU generator), in that order. Returns the visible tokens
    (B, keep, D), the mask (B, L; 1 masked, 0 kept, in the original order) and ``ids_restore``
    (B, L), which puts the shuffled sequence back in order.
    """
    b, length, dim = tokens.shape
    keep = kept_patches(length, mask_ratio)
    if noise is None:
        noise = torch.rand(b, length)
    noise = noise.to(tokens.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = torch.gather(tokens, 1, ids_keep[:, :, None].expand(-1, -1, dim))
    mask = torch.ones(b, length, device=tokens.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return visible, mask, ids_restore


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """MAE's loss: the per-patch mean squared error of ``pred`` against ``target`` (B, L, P),
    averaged over the masked patches (``mask`` (B, L) = 1) only. ``norm_pix``: each target
    patch minus its mean, over sqrt(its unbiased variance + 1e-6)."""
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MAE(PretextModel):
    """MAE (module docstring) with the timm ViT of ``encoder`` as its encoder and a light
    decoder of timm ``Block``s."""

    method = "mae"

    def __init__(self, encoder: SSLBackbone, image_size: int,
                 settings: MAESettings | None = None) -> None:
        super().__init__(encoder, image_size)
        self.settings = settings = settings or MAESettings()
        net: Any = encoder.net
        if not encoder.patch_size or getattr(net, "cls_token", None) is None \
                or getattr(net, "pos_embed", None) is None:
            raise CloudbenchError(f"MAE needs a ViT with a class token and a position "
                                  f"embedding; {encoder.name} is not one")
        if getattr(net, "reg_token", None) is not None:
            raise CloudbenchError("MAE here supports ViTs without register tokens")
        self.patch = encoder.patch_size
        width = int(net.embed_dim)
        dim = settings.decoder_dim
        self.decoder_embed = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_blocks = nn.Sequential(*[
            Block(dim, settings.decoder_heads, mlp_ratio=4.0, qkv_bias=True)
            for _ in range(settings.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, self.patch * self.patch * len(encoder.bands))
        nn.init.normal_(self.mask_token, std=0.02)
        for module in [self.decoder_embed, self.decoder_blocks, self.decoder_pred]:
            module.apply(_init_linear)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Patch tokens with their position embedding (B, L, D), the class token with its
        (1, 1, D), and the patch grid (h, w)."""
        net: Any = self.encoder.net
        tokens = net.patch_embed(x)
        if tokens.ndim == 4:  # NHWC (dynamic image size)
            b, h, w, d = tokens.shape
            tokens = tokens.reshape(b, h * w, d)
        else:
            h, w = (x.shape[2] // self.patch, x.shape[3] // self.patch)
        prefix = 0 if net.no_embed_class else net.num_prefix_tokens
        pos = resample_abs_pos_embed(net.pos_embed, new_size=[h, w],
                                     old_size=list(net.patch_embed.grid_size),
                                     num_prefix_tokens=prefix)
        tokens = tokens + pos[:, prefix:]
        cls = net.cls_token + (pos[:, :1] if prefix else 0)
        return tokens, cls, (h, w)

    def encode(self, view: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor,
                                                                          tuple[int, int]]:
        """The encoder on the visible patches: latent (B, 1 + keep, D), mask, ids_restore,
        grid."""
        net: Any = self.encoder.net
        tokens, cls, grid = self.embed(view)
        visible, mask, restore = random_masking(tokens, self.settings.mask_ratio, noise)
        z = torch.cat([cls.expand(len(visible), -1, -1), visible], dim=1)
        z = net.norm_pre(net.pos_drop(z))
        z = net.norm(net.blocks(z))
        return z, mask, restore, grid

    def decode(self, latent: Tensor, restore: Tensor, grid: tuple[int, int]) -> Tensor:
        """Predicted patches (B, L, patch·patch·C) from the latent of the visible ones."""
        y = self.decoder_embed(latent)
        b, length = restore.shape
        masks = self.mask_token.expand(b, length + 1 - y.shape[1], -1).to(y.dtype)
        rest = torch.cat([y[:, 1:], masks], dim=1)
        rest = torch.gather(rest, 1, restore[:, :, None].expand(-1, -1, y.shape[2]))
        pos = build_sincos2d_pos_embed(list(grid), dim=y.shape[2], device=y.device)
        y = torch.cat([y[:, :1], rest + pos.to(y.dtype)[None]], dim=1)
        y = self.decoder_norm(self.decoder_blocks(y))
        out: Tensor = self.decoder_pred(y)[:, 1:]
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self._check(x)
        with _no_autocast(x):
            x = self.encoder.normalise(x.float())
            view = crop_flip_view(x, self.image_size, self.settings.crop_scale,
                                  self.settings.p_flip)
        latent, mask, restore, grid = self.encode(view)
        pred = self.decode(latent, restore, grid)
        with _no_autocast(pred):
            loss = masked_mse(pred, patchify(view, self.patch), mask,
                              self.settings.norm_pix_loss)
        return {"loss": loss}


def _init_linear(module: nn.Module) -> None:
    """MAE's initialisation of the decoder: Xavier-uniform linear layers, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_pretext(method: str, encoder: SSLBackbone, image_size: int,
                  settings: Any = None, *, total_steps: int | None = None) -> PretextModel:
    """The pretext network of ``method`` around ``encoder`` (settings: a mapping of changes or
    the method's settings object; ``total_steps``: the run's steps, for MoCo v3's cosine
    momentum)."""
    chosen = settings_for(method, settings)
    if isinstance(chosen, MoCoV2Settings):
        return MoCoV2(encoder, image_size, chosen)
    if isinstance(chosen, MoCoV3Settings):
        return MoCoV3(encoder, image_size, chosen, total_steps)
    return MAE(encoder, image_size, chosen)


def key_parameters(model: PretextModel) -> Iterator[tuple[str, nn.Parameter]]:
    """The momentum encoder's parameters (none for MAE)."""
    return ((n, p) for n, p in model.named_parameters() if n.startswith("key_"))
