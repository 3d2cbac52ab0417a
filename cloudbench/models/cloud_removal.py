"""Mono-temporal cloud-removal networks: UnCRtainTS, SSCR, a U-Net and U-TAE on one date.

Every network maps a cloudy Sentinel-2 image and (optionally) its Sentinel-1 pair to a
cloud-free S2 estimate, with one forward for all (:class:`CloudRemovalNet`)::

    out = model(s2_cloudy, s1)   # (B, S2, H, W), (B, S1, H, W), float; S2 = model.s2_bands ...
    out["mean"]                  # (B, S2, H, W) in [0, 1] (a sigmoid)
    out["variance"]              # (B, S2, H, W) > 0, only where model.has_variance
    out["sar_mask"]              # (B, 1, H, W) in [0, 1], SSCR only (its structure loss uses it)

The band counts are constructor arguments of every network: ``s2_bands`` (the optical bands in
and out; default 13, the L1C bands of SEN12MS-CR; 12 for L2A stores, 3 for RGB) and ``s1_bands``
(SAR channels; default 2, VV and VH; 0 for optical-only, single-image cloud removal, where
``s1`` is left out: ``model(s2_cloudy)``). The defaults are the networks of the references.

Inputs are in the units of the SEN12MS-CR pipelines: S2 reflectance clipped to [0, 10000] DN
and divided by 10000 (by default the 13 L1C bands B01 … B12 with B8A, B10); S1 as VV, VH in dB
clipped to [-25, 0] and mapped by (x + 25) / 25 to [0, 1]. Every network sees them concatenated
S1 first, then S2 (``s1_bands + s2_bands`` channels, 15 by default), as UnCRtainTS's
``prepare_data_mono`` stacks them. The variance is per pixel and per band (a diagonal
covariance), in the units of the mean ([0, 1] reflectance, squared).

:data:`CR_MODELS` maps a name to its builder, :data:`PARAMETER_COUNTS` gives each default build's
trainable parameter count (asserted by the tests), :func:`build_cr_model` builds by name;
:func:`save_cr_checkpoint` and :func:`load_cr_checkpoint` write and read a trained network with
what is needed to rebuild it. Architectures, the reference code they follow and every choice
the references leave open are in docs/cloud-removal.md ("Networks and losses"); the losses are
:mod:`cloudbench.harness.cr_losses`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cloudbench.errors import CloudbenchError

DEFAULT_S2_BANDS = 13
"""Default ``s2_bands`` (S2 input and output channels): the 13 L1C bands of SEN12MS-CR."""
DEFAULT_S1_BANDS = 2
"""Default ``s1_bands`` (S1 input channels): VV, VH."""

Norm = Literal["batch", "group"]


class CloudRemovalNet(nn.Module):
    """The interface of every cloud-removal network: ``model(s2_cloudy, s1=None) -> dict``.

    ``s2_bands`` and ``s1_bands`` are the network's band counts (:meth:`_set_bands`, called by
    each constructor). Subclasses implement :meth:`predict` on the checked inputs;
    :meth:`forward` checks the shapes (B, s2_bands, H, W) and (B, s1_bands, H, W) and raises
    :class:`CloudbenchError` otherwise.
    """

    has_variance: bool = False
    """Whether the output dict has ``variance``."""
    size_multiple: int = 1
    """H and W must be multiples of this (the networks with down-sampling need it)."""
    s2_bands: int = DEFAULT_S2_BANDS
    """S2 input channels, and the output's bands."""
    s1_bands: int = DEFAULT_S1_BANDS
    """S1 input channels; 0: optical only (``s1`` is None)."""

    def _set_bands(self, s2_bands: int, s1_bands: int) -> None:
        for what, value, least in (("s2_bands", s2_bands, 1), ("s1_bands", s1_bands, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise CloudbenchError(f"{what} must be an integer ≥ {least}; got {value!r}")
        self.s2_bands = s2_bands
        self.s1_bands = s1_bands

    @property
    def in_channels(self) -> int:
        """``s1_bands + s2_bands``: the channels of the concatenated input."""
        return self.s1_bands + self.s2_bands

    def forward(self, s2_cloudy: Tensor, s1: Tensor | None = None) -> dict[str, Tensor]:
        """``{"mean": (B, s2_bands, H, W)}``, plus ``variance`` (and ``sar_mask`` for SSCR).

        ``s1`` is required when ``s1_bands`` > 0; with ``s1_bands`` = 0 it is None (or an empty
        (B, 0, H, W) tensor).
        """
        _check_inputs(s2_cloudy, s1, self.s2_bands, self.s1_bands, self.size_multiple)
        if s1 is None:
            s1 = s2_cloudy[:, :0]  # (B, 0, H, W): the concatenation is then S2 alone
        return self.predict(s2_cloudy, s1)

    def predict(self, s2_cloudy: Tensor, s1: Tensor) -> dict[str, Tensor]:
        """The network on checked inputs; ``s1`` is (B, s1_bands, H, W), possibly 0 channels."""
        raise NotImplementedError


def _check_inputs(s2: Tensor, s1: Tensor | None, s2_bands: int, s1_bands: int,
                  multiple: int) -> None:
    if s2.ndim != 4 or s2.shape[1] != s2_bands:
        raise CloudbenchError(f"s2_cloudy must be (B, {s2_bands}, H, W); got {tuple(s2.shape)}")
    if s1 is None:
        if s1_bands:
            raise CloudbenchError(
                f"s1 must be (B, {s1_bands}, H, W); got None (the model has s1_bands="
                f"{s1_bands}; build it with s1_bands=0 for optical-only input)")
    else:
        if s1.ndim != 4 or s1.shape[1] != s1_bands:
            if s1_bands == 0:
                raise CloudbenchError(
                    f"s1 must be None for a model without SAR input (s1_bands=0); got "
                    f"{tuple(s1.shape)}")
            raise CloudbenchError(f"s1 must be (B, {s1_bands}, H, W); got {tuple(s1.shape)}")
        if s1.shape[0] != s2.shape[0] or s1.shape[2:] != s2.shape[2:]:
            raise CloudbenchError(
                f"s1 {tuple(s1.shape)} and s2_cloudy {tuple(s2.shape)} differ in batch or size"
            )
    h, w = s2.shape[2:]
    if h % multiple or w % multiple:
        raise CloudbenchError(f"H and W must be multiples of {multiple}; got {h}×{w}")


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters (buffers such as fixed kernels do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _gaussian_head(z: Tensor, bands: int, variance: bool,
                   scale_by: float = 1.0) -> dict[str, Tensor]:
    """Mean ``sigmoid(z[:, :bands])``, variance ``(softplus(z[:, bands:]) + eps) / scale_by²``.

    This is UnCRtainTS's output layer (mean ``scale_by · sigmoid``, variance ``softplus + eps``
    with eps = 1e-9 when ``scale_by`` is 1, else 1e-3) on data scaled by ``scale_by``, expressed
    back in the [0, 1] units of the inputs, as its ``reset_input`` does.
    """
    out = {"mean": torch.sigmoid(z[:, :bands])}
    if variance:
        eps = 1e-9 if scale_by == 1.0 else 1e-3
        out["variance"] = (F.softplus(z[:, bands:], beta=1, threshold=20) + eps) / scale_by**2
    return out


def _norm(kind: Norm, channels: int, groups: int = 4) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    raise CloudbenchError(f"norm must be 'batch' or 'group'; got {kind!r}")


def _conv_norm_relu(c_in: int, c_out: int, norm: Norm, kernel: int = 3, stride: int = 1,
                    padding: int = 1) -> nn.Sequential:
    """Conv (with bias, reflect padding) → norm → ReLU, U-TAE's and UnCRtainTS's ``ConvLayer``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, padding_mode="reflect"),
        _norm(norm, c_out),
        nn.ReLU(),
    )


# --------------------------------------------------------------------------------------------
# UnCRtainTS (Ebel et al. 2023), mono-temporal


class SqueezeExcite(nn.Module):
    """Channel gating: ``x · σ(W₂ GELU(W₁ avgpool(x)))``, no biases, ``reduced`` hidden units."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, reduced, bias=False),
            nn.GELU(),
            nn.Linear(reduced, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class MBConv(nn.Module):
    """UnCRtainTS's inverted-residual block (stride 1, same width in and out).

    ``x + f(norm(x))`` with ``f`` = 1×1 conv to ``expansion · C`` → norm → GELU → 3×3 depthwise
    conv (reflect padding) → norm → GELU → squeeze-excite (C/4 hidden units) → 1×1 conv to C →
    norm. Convolutions have no bias; every norm is ``norm`` (GroupNorm with 4 groups or
    BatchNorm).
    """

    def __init__(self, channels: int, norm: Norm, expansion: int = 2) -> None:
        super().__init__()
        hidden = channels * expansion
        self.pre_norm = _norm(norm, channels)
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            _norm(norm, hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, padding_mode="reflect", groups=hidden,
                      bias=False),
            _norm(norm, hidden),
            nn.GELU(),
            SqueezeExcite(hidden, int(channels * 0.25)),
            nn.Conv2d(hidden, channels, 1, bias=False),
            _norm(norm, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(self.pre_norm(x))


class UnCRtainTS(CloudRemovalNet):
    """UnCRtainTS in its mono-temporal configuration (no L-TAE), with its variance head.

    1×1 conv ``s1_bands + s2_bands`` (15) → ``width`` → GroupNorm → ReLU; ``encoder_blocks``
    MBConv (GroupNorm); ``decoder_blocks`` MBConv (BatchNorm); 1×1 conv → ``s2_bands`` means
    (+ ``s2_bands`` variances). Full resolution throughout (any H, W). Inputs are multiplied by
    ``scale_by`` inside the network and the outputs brought back to [0, 1] units
    (:func:`_gaussian_head`), as UnCRtainTS trains with ``--scale_by 10``.
    """

    def __init__(self, width: int = 128, encoder_blocks: int = 1, decoder_blocks: int = 5,
                 variance: bool = True, scale_by: float = 10.0, encoder_norm: Norm = "group",
                 decoder_norm: Norm = "batch", *, s2_bands: int = DEFAULT_S2_BANDS,
                 s1_bands: int = DEFAULT_S1_BANDS) -> None:
        super().__init__()
        self._set_bands(s2_bands, s1_bands)
        self.has_variance = variance
        self.scale_by = scale_by
        self.in_conv = _conv_norm_relu(self.in_channels, width, encoder_norm, kernel=1,
                                       padding=0)
        self.encoder = nn.Sequential(*(MBConv(width, encoder_norm) for _ in range(encoder_blocks)))
        self.decoder = nn.Sequential(*(MBConv(width, decoder_norm) for _ in range(decoder_blocks)))
        self.out_conv = nn.Conv2d(width, s2_bands * (2 if variance else 1), 1)

    def encode(self, x: Tensor) -> Tensor:
        """The encoder's features of the scaled ``s1_bands + s2_bands``-channel input."""
        return self.encoder(self.in_conv(x))

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        return _gaussian_head(self.out_conv(self.decoder(features)), self.s2_bands,
                              self.has_variance, self.scale_by)

    def predict(self, s2_cloudy: Tensor, s1: Tensor) -> dict[str, Tensor]:
        x = self.scale_by * torch.cat([s1, s2_cloudy], dim=1)
        return self.decode(self.encode(x))


# --------------------------------------------------------------------------------------------
# SSCR (UnCRtainTS + a SAR structure branch)

_SCHARR_X = ((-3.0, 0.0, 3.0), (-10.0, 0.0, 10.0), (-3.0, 0.0, 3.0))


class ScharrEdges(nn.Module):
    """SSCR's edge enhancement of SAR features: ``refine(x + GELU(BN(Sx * x + Sy * x)))``.

    ``Sx``, ``Sy`` are the Scharr kernels, applied per channel (depthwise, zero padding) as fixed
    buffers; the sum of the two responses is used, as in the released code. ``refine`` is the
    released ``Conv_Extra``: 1×1 conv to C/2 → BN → GELU → 3×3 conv (no bias) → BN → GELU → 1×1
    conv to C → BN.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        kx = torch.tensor(_SCHARR_X)
        self.register_buffer("kernel_x", kx.expand(channels, 1, 3, 3).clone())
        self.register_buffer("kernel_y", kx.t().expand(channels, 1, 3, 3).clone())
        self.channels = channels
        self.norm = nn.BatchNorm2d(channels)
        half = channels // 2
        self.refine = nn.Sequential(
            nn.Conv2d(channels, half, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, channels, 1), nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        kx, ky = self.get_buffer("kernel_x"), self.get_buffer("kernel_y")
        edges = (F.conv2d(x, kx, padding=1, groups=self.channels)
                 + F.conv2d(x, ky, padding=1, groups=self.channels))
        return self.refine(x + F.gelu(self.norm(edges)))


class SSCR(UnCRtainTS):
    """UnCRtainTS with SSCR's SAR structure branch and a learnable fusion weight ``beta``.

    Branch (on the scaled S1 channels, width ``width // 4``): 1×1 conv ``s1_bands`` (2) → C/4 →
    GroupNorm → ReLU; :class:`ScharrEdges`; 1×1 conv → GroupNorm → ReLU; ``encoder_blocks``
    MBConv; the mask head (one MBConv, 1×1 conv → 1, sigmoid) gives ``m`` (B, 1, H, W). The
    encoder's features ``f`` become ``(1 − beta) f + beta · f · m`` before the decoder, ``beta``
    an :class:`~torch.nn.Parameter` (initial value ``beta_init``, the released code's commented-out
    0.5). The output has ``sar_mask`` = ``m`` for the structure loss. Deterministic by default
    (the released training command predicts 13 bands and trains with its ``ml`` loss). The
    branch needs SAR: ``s1_bands`` = 0 raises :class:`CloudbenchError`.
    """

    def __init__(self, width: int = 128, encoder_blocks: int = 1, decoder_blocks: int = 5,
                 variance: bool = False, scale_by: float = 10.0, encoder_norm: Norm = "group",
                 decoder_norm: Norm = "batch", beta_init: float = 0.5, *,
                 s2_bands: int = DEFAULT_S2_BANDS, s1_bands: int = DEFAULT_S1_BANDS) -> None:
        if s1_bands == 0:
            raise CloudbenchError(
                "SSCR needs SAR input for its structure branch; s1_bands=0 is not possible "
                "(use uncrtaints, unet or utae for optical-only cloud removal)")
        super().__init__(width, encoder_blocks, decoder_blocks, variance, scale_by,
                         encoder_norm, decoder_norm, s2_bands=s2_bands, s1_bands=s1_bands)
        sar_width = width // 4
        self.sar_in_conv = _conv_norm_relu(s1_bands, sar_width, encoder_norm, kernel=1,
                                           padding=0)
        self.sar_edges = ScharrEdges(sar_width)
        self.sar_in_conv2 = _conv_norm_relu(sar_width, sar_width, encoder_norm, kernel=1,
                                            padding=0)
        self.sar_blocks = nn.Sequential(
            *(MBConv(sar_width, encoder_norm) for _ in range(encoder_blocks)))
        self.mask_block = MBConv(sar_width, encoder_norm)
        self.mask_conv = nn.Conv2d(sar_width, 1, 1)
        self.beta = nn.Parameter(torch.tensor(float(beta_init)))

    def sar_branch(self) -> list[nn.Module]:
        """The modules of the SAR structure branch (for gradient checks and learning rates)."""
        return [self.sar_in_conv, self.sar_edges, self.sar_in_conv2, self.sar_blocks,
                self.mask_block, self.mask_conv]

    def structure_mask(self, s1_scaled: Tensor) -> Tensor:
        """The SAR mask ``m`` (B, 1, H, W) in [0, 1] from the scaled S1 channels."""
        s = self.sar_in_conv2(self.sar_edges(self.sar_in_conv(s1_scaled)))
        s = self.mask_block(self.sar_blocks(s))
        return torch.sigmoid(self.mask_conv(s))

    def predict(self, s2_cloudy: Tensor, s1: Tensor) -> dict[str, Tensor]:
        x = self.scale_by * torch.cat([s1, s2_cloudy], dim=1)
        mask = self.structure_mask(x[:, :self.s1_bands])
        features = self.encode(x)
        features = (1 - self.beta) * features + self.beta * (features * mask)
        out = self.decode(features)
        out["sar_mask"] = mask
        return out


# --------------------------------------------------------------------------------------------
# A standard U-Net


class _DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        )


class UNet(CloudRemovalNet):
    """A small standard U-Net (Ronneberger et al. 2015, with batch norm) on the
    ``s1_bands + s2_bands`` (15) channels.

    Levels of ``widths`` channels (default 32, 64, 128, 256: four levels, three 2× down-samplings,
    so H and W must be multiples of 8). Each level is two 3×3 convs (zero padding, no bias) with
    BatchNorm and ReLU; down by 2×2 max-pooling, up by a 2×2 stride-2 transposed conv to the
    level's width, concatenated with the skip, then two 3×3 convs; a 1×1 conv gives ``s2_bands``
    means (+ ``s2_bands`` variances).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), variance: bool = False, *,
                 s2_bands: int = DEFAULT_S2_BANDS, s1_bands: int = DEFAULT_S1_BANDS) -> None:
        super().__init__()
        self._set_bands(s2_bands, s1_bands)
        if len(widths) < 2:
            raise CloudbenchError(f"a U-Net needs at least two levels; got widths={widths}")
        self.has_variance = variance
        self.size_multiple = 2 ** (len(widths) - 1)
        w = list(widths)
        self.down = nn.ModuleList(
            [_DoubleConv(self.in_channels, w[0])] + [_DoubleConv(w[i - 1], w[i]) for i in
                                                      range(1, len(w))])
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(w[i], w[i - 1], 2, stride=2) for i in range(len(w) - 1, 0, -1))
        self.up_conv = nn.ModuleList(
            _DoubleConv(2 * w[i - 1], w[i - 1]) for i in range(len(w) - 1, 0, -1))
        self.out_conv = nn.Conv2d(w[0], s2_bands * (2 if variance else 1), 1)

    def predict(self, s2_cloudy: Tensor, s1: Tensor) -> dict[str, Tensor]:
        x = torch.cat([s1, s2_cloudy], dim=1)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, conv in zip(self.up, self.up_conv, strict=True):
            x = conv(torch.cat([up(x), skips.pop()], dim=1))
        return _gaussian_head(self.out_conv(x), self.s2_bands, self.has_variance)


# --------------------------------------------------------------------------------------------
# U-TAE (Garnot & Landrieu 2021) on a single date


class PixelGroupNorm(nn.Module):
    """GroupNorm of each pixel's channel vector on its own (the L-TAE's ``in_norm`` and
    ``out_norm``, which normalise per pixel over groups of channels and the dates: one date)."""

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        flat = self.norm(x.permute(0, 2, 3, 1).reshape(b * h * w, c))
        return flat.reshape(b, h, w, c).permute(0, 3, 1, 2)


class LTAESingleDate(nn.Module):
    """The L-TAE at one date: what remains of it is its value path, per pixel.

    With T = 1 the softmax over dates is 1 for every head, so the attention output is the value
    (the input after ``in_norm`` and ``inconv``) and the query, keys and positional encoding
    change nothing: they are left out. What remains: GroupNorm(``n_head``) per pixel → 1×1 conv
    to ``d_model`` → the MLP (1×1 conv to C, BatchNorm, ReLU) → dropout → GroupNorm per pixel.
    """

    def __init__(self, channels: int, d_model: int = 256, n_head: int = 16,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.in_norm = PixelGroupNorm(n_head, channels)
        self.inconv = nn.Conv2d(channels, d_model, 1)
        self.mlp = nn.Sequential(nn.Conv2d(d_model, channels, 1), nn.BatchNorm2d(channels),
                                 nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.out_norm = PixelGroupNorm(n_head, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_norm(self.dropout(self.mlp(self.inconv(self.in_norm(x)))))


class _DownBlock(nn.Module):
    """U-TAE's ``DownConvBlock``: 4×4 stride-2 conv, 3×3 conv to ``c_out``, residual 3×3 conv."""

    def __init__(self, c_in: int, c_out: int, norm: Norm) -> None:
        super().__init__()
        self.down = _conv_norm_relu(c_in, c_in, norm, kernel=4, stride=2, padding=1)
        self.conv1 = _conv_norm_relu(c_in, c_out, norm)
        self.conv2 = _conv_norm_relu(c_out, c_out, norm)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.down(x))
        return x + self.conv2(x)


class _UpBlock(nn.Module):
    """U-TAE's ``UpConvBlock``: 4×4 stride-2 transposed conv, concatenation with the 1×1-conv'd
    skip, 3×3 conv, residual 3×3 conv; BatchNorm throughout."""

    def __init__(self, c_in: int, c_out: int, c_skip: int) -> None:
        super().__init__()
        self.skip_conv = nn.Sequential(nn.Conv2d(c_skip, c_skip, 1), nn.BatchNorm2d(c_skip),
                                       nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
                                nn.BatchNorm2d(c_out), nn.ReLU())
        self.conv1 = _conv_norm_relu(c_out + c_skip, c_out, "batch")
        self.conv2 = _conv_norm_relu(c_out, c_out, "batch")

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.conv1(torch.cat([self.up(x), self.skip_conv(skip)], dim=1))
        return x + self.conv2(x)


class UTAEMono(CloudRemovalNet):
    """U-TAE (``VSainteuf/utae-paps``) on a single date, with a cloud-removal output layer.

    Encoder: two 3×3 convs ``s1_bands + s2_bands`` (15) → ``encoder_widths[0]`` (GroupNorm 4,
    ReLU), then one
    :class:`_DownBlock` per further width (GroupNorm); the L-TAE at the bottleneck
    (:class:`LTAESingleDate`); decoder: one :class:`_UpBlock` per level, with the encoder's maps
    as skips (U-TAE's attention-weighted temporal aggregation of the skips is the identity at
    one date); a 1×1 conv ``decoder_widths[0]`` → ``s2_bands`` means (+ ``s2_bands`` variances)
    replaces U-TAE's segmentation head. Reflect padding, as U-TAE. H and W: multiples of
    2^(levels − 1).
    """

    def __init__(self, encoder_widths: Sequence[int] = (64, 64, 64, 128),
                 decoder_widths: Sequence[int] = (32, 32, 64, 128), d_model: int = 256,
                 n_head: int = 16, variance: bool = False, *, s2_bands: int = DEFAULT_S2_BANDS,
                 s1_bands: int = DEFAULT_S1_BANDS) -> None:
        super().__init__()
        self._set_bands(s2_bands, s1_bands)
        enc, dec = list(encoder_widths), list(decoder_widths)
        if len(enc) != len(dec) or enc[-1] != dec[-1] or len(enc) < 2:
            raise CloudbenchError(
                f"U-TAE needs as many encoder as decoder widths (at least 2) and the same last "
                f"width; got {enc} and {dec}")
        self.has_variance = variance
        self.size_multiple = 2 ** (len(enc) - 1)
        self.in_conv = nn.Sequential(_conv_norm_relu(self.in_channels, enc[0], "group"),
                                     _conv_norm_relu(enc[0], enc[0], "group"))
        self.down = nn.ModuleList(_DownBlock(enc[i], enc[i + 1], "group")
                                  for i in range(len(enc) - 1))
        self.temporal = LTAESingleDate(enc[-1], d_model=d_model, n_head=n_head)
        self.up = nn.ModuleList(_UpBlock(dec[i], dec[i - 1], enc[i - 1])
                                for i in range(len(dec) - 1, 0, -1))
        self.out_conv = nn.Conv2d(dec[0], s2_bands * (2 if variance else 1), 1)

    def predict(self, s2_cloudy: Tensor, s1: Tensor) -> dict[str, Tensor]:
        x = self.in_conv(torch.cat([s1, s2_cloudy], dim=1))
        maps = [x]
        for block in self.down:
            maps.append(block(maps[-1]))
        x = self.temporal(maps[-1])
        for i, block in enumerate(self.up):
            x = block(x, maps[-(i + 2)])
        return _gaussian_head(self.out_conv(x), self.s2_bands, self.has_variance)


# --------------------------------------------------------------------------------------------
# Registry


def uncrtaints(**kwargs: Any) -> UnCRtainTS:
    """UnCRtainTS mono-temporal with the variance head (:class:`UnCRtainTS`)."""
    return UnCRtainTS(**kwargs)


def sscr(**kwargs: Any) -> SSCR:
    """SSCR: UnCRtainTS + SAR structure branch, learnable fusion weight (:class:`SSCR`)."""
    return SSCR(**kwargs)


def unet(**kwargs: Any) -> UNet:
    """The standard U-Net, widths 32-64-128-256 (:class:`UNet`)."""
    return UNet(**kwargs)


def utae(**kwargs: Any) -> UTAEMono:
    """U-TAE on one date, U-TAE's default widths (:class:`UTAEMono`)."""
    return UTAEMono(**kwargs)


CR_MODELS: dict[str, Callable[..., CloudRemovalNet]] = {
    "uncrtaints": uncrtaints,
    "sscr": sscr,
    "unet": unet,
    "utae": utae,
}
"""Name → builder; keyword arguments go to the network's constructor (all of them take
``s2_bands`` and ``s1_bands``; ``sscr`` refuses ``s1_bands=0``)."""

PARAMETER_COUNTS: dict[str, int] = {
    "uncrtaints": 520_218,  # with the variance head (26 outputs); 518_541 without
    "sscr": 535_583,        # mean only (13 outputs); 537_260 with the variance head
    "unet": 1_930_861,      # mean only; 1_931_290 with the variance head
    "utae": 1_058_925,      # mean only; 1_059_354 with the variance head
}
"""Trainable parameters of each default build (``CR_MODELS[name]()``), asserted by the tests."""


def build_cr_model(name: str, **kwargs: Any) -> CloudRemovalNet:
    """``CR_MODELS[name](**kwargs)``; an unknown name raises :class:`CloudbenchError`."""
    if name not in CR_MODELS:
        raise CloudbenchError(f"unknown cloud-removal model {name!r}; known: {sorted(CR_MODELS)}")
    return CR_MODELS[name](**kwargs)


# --------------------------------------------------------------------------------------------
# Checkpoints

CHECKPOINT_FORMAT = "cloudbench-cr-checkpoint"
"""The format tag of :func:`save_cr_checkpoint`'s files."""
CHECKPOINT_VERSION = 1


def _plain(value: Any, what: str) -> Any:
    """``value`` as JSON-able data (tuples become lists), or :class:`CloudbenchError`.

    Only what ``torch.load(weights_only=True)`` reads back and JSON can hold: None, bools,
    ints, floats, strings, lists and dicts with string keys.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, f"{what}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CloudbenchError(f"{what} has a key {k!r} that is not a string")
            out[k] = _plain(v, f"{what}[{k!r}]")
        return out
    raise CloudbenchError(
        f"{what} must be JSON-able (None, bool, int, float, str, list, dict); got "
        f"{type(value).__name__}")


def save_cr_checkpoint(path: str | os.PathLike[str], model: CloudRemovalNet, *, name: str,
                       kwargs: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write ``model`` to ``path`` (atomically), with what :func:`load_cr_checkpoint` rebuilds
    it from: the registry ``name`` and builder ``kwargs`` (``build_cr_model(name, **kwargs)``
    must give a network with the same state dict keys and shapes, which is checked here) and the
    caller's ``meta`` (JSON-able; e.g. the bands the model reads and the scenes it was trained
    on). The file is one dict of plain data and tensors (the state dict on CPU):
    ``{"format": "cloudbench-cr-checkpoint", "version": 1, "name", "kwargs", "meta",
    "state_dict"}``.
    """
    from cloudbench.store import atomic_torch_save  # the store pulls in geopandas

    if name not in CR_MODELS:
        raise CloudbenchError(f"unknown cloud-removal model {name!r}; known: {sorted(CR_MODELS)}")
    if not isinstance(kwargs, Mapping) or not isinstance(meta, Mapping):
        raise CloudbenchError("kwargs and meta must be dicts")
    plain_kwargs = _plain(kwargs, "kwargs")
    plain_meta = _plain(meta, "meta")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with torch.device("meta"):  # shapes only, no memory, no draw from the RNG
        try:
            fresh = build_cr_model(name, **plain_kwargs).state_dict()
        except TypeError as e:
            raise CloudbenchError(f"kwargs {plain_kwargs} do not build {name!r}: {e}") from e
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != {k: tuple(v.shape) for k, v in fresh.items()}:
        raise CloudbenchError(
            f"the model's state dict does not match build_cr_model({name!r}, **{plain_kwargs}); "
            f"the checkpoint could not be loaded back")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "name": name,
        "kwargs": plain_kwargs,
        "meta": plain_meta,
        "state_dict": state,
    }, path)


def load_cr_checkpoint(path: str | os.PathLike[str],
                       device: str | torch.device = "cpu") -> tuple[CloudRemovalNet, dict]:
    """The network saved by :func:`save_cr_checkpoint` (on ``device``, in eval mode) and its
    ``meta``. Read with ``torch.load(weights_only=True)``; rebuilt with
    ``build_cr_model(name, **kwargs)``; the state dict loaded strictly. A missing file, a file
    of another format or version, or a state dict that does not fit raises
    :class:`CloudbenchError` naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CloudbenchError(f"no cloud-removal checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle of anything else, a truncated or foreign file
        raise CloudbenchError(f"{path} is not a cloud-removal checkpoint (unreadable: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CloudbenchError(f"{path} is not a cloud-removal checkpoint (no format tag "
                              f"{CHECKPOINT_FORMAT!r})")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CloudbenchError(f"{path}: cloud-removal checkpoint version {ckpt.get('version')!r}; "
                              f"this code reads version {CHECKPOINT_VERSION}")
    name, kwargs, meta, state = (ckpt.get(k) for k in ("name", "kwargs", "meta", "state_dict"))
    if not (isinstance(name, str) and isinstance(kwargs, dict) and isinstance(meta, dict)
            and isinstance(state, dict)):
        raise CloudbenchError(f"{path}: a cloud-removal checkpoint needs name (str), kwargs, "
                              f"meta and state_dict (dicts)")
    try:
        model = build_cr_model(name, **kwargs)
    except (CloudbenchError, TypeError) as e:
        raise CloudbenchError(f"{path}: cannot rebuild {name!r} from {kwargs}: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CloudbenchError(f"{path}: the state dict does not fit {name!r} "
                              f"({kwargs}): {e}") from e
    return model.to(device).eval(), meta
