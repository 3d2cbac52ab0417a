"""SSL backbones: the SSL4EO-S12 ResNet-50 (MoCo v2), ViT-S/16 (MoCo v3) and ViT-S/16 (MAE), for
S2-only, S1-only and 14-channel (VV, VH + 12 L2A bands) inputs, and their late fusion.

The networks are timm's, built as TorchGeo builds them for its SSL4EO-S12 weights
(``timm.create_model(meta["model"], in_chans=…)``), without a classifier (``num_classes=0``), so
they return pooled features (B, D). The weights are TorchGeo's enums (``ResNet50_Weights``,
``ViTSmall16_Weights``), looked up by name at run time, so a TorchGeo without one gives one
clear message. Weight files are never downloaded: they are read from the torch hub cache under
the file name of the weight's URL (where TorchGeo itself caches them) or from a given path, with
``torch.load(weights_only=True)``.

Channels are matched to the weights' bands **by name**: the S2 weights have the 13 L1C bands
(B01 … B12 with B10), our inputs the 12 L2A bands (no B10), so B10's kernels are dropped. A
14-channel model's first layer (``conv1`` of the ResNet, ``patch_embed.proj`` of the ViT) takes
the S2 weights' kernels for the S2 channels and the S1 weights' kernels for VV and VH, each
modality's kernels scaled by its share of the channels by default (12/14 and 2/14): the first
layer's output is then a weighted mean of the two modalities' responses and keeps the scale the
trunk was trained at, where a plain sum would roughly double it. The rest of the network is the
S2 weights'. This stitching is cloudbench's own choice (docs/ssl.md): the CBEN paper pre-trained
its own 14-band backbones.

Each backbone normalises its input as the weights expect (:class:`BandNormalise`, from the
weight's TorchGeo ``transforms``): it takes our units, S2 as reflectance (DN / 10000) and S1 in
dB, at any size (ViTs: multiples of 16, the position embedding is interpolated for other grids
than 14×14); TorchGeo's resize to 256 and crop to 224 is left to the caller.

Backbones pre-trained by cloudbench itself (``cloudbench pretrain``, :mod:`cloudbench.harness.
pretrain`) are checkpoints of :data:`CHECKPOINT_FORMAT` (:func:`read_checkpoint`,
:func:`save_checkpoint`), loaded with ``build_backbone(..., weights=path)``: the network's own
state dict for the bands it was trained on, so no first layer is stitched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlparse

import timm
import torch
import torchgeo
import torchgeo.models
from torch import Tensor, nn

from cloudbench.errors import CloudbenchError
from cloudbench.models.classifiers import Inputs, modality_input
from cloudbench.store import atomic_torch_save

S1_BANDS = ("VV", "VH")
"""The Sentinel-1 channels the S1 weights take."""
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
"""The 12 Sentinel-2 L2A bands (the L1C bands without the cirrus band B10)."""
FUSED_BANDS = S1_BANDS + S2_BANDS
"""The 14-channel early-fusion input of the CBEN paper: VV, VH, then the 12 L2A bands."""
S2_L1C_BANDS = S2_BANDS[:10] + ("B10",) + S2_BANDS[10:]
"""The 13 Sentinel-2 L1C bands of SSL4EO-S12's S2 weights, in their channel order."""
UNITS = {"s2": 10000.0, "s1": 1.0}
"""Our units times this are the weights' input units: SSL4EO-S12 S2 digital numbers, S1 dB."""

CHECKPOINT_FORMAT = "cloudbench-ssl-backbone"
"""The ``format`` of a backbone checkpoint written by cloudbench's own pre-training."""
CHECKPOINT_VERSION = 1
"""The newest checkpoint ``version`` this cloudbench reads and the one it writes."""
CHECKPOINT_KEYS = frozenset({"format", "version", "backbone", "pretext", "bands", "state_dict",
                             "data", "epochs"})
"""The keys every backbone checkpoint has (others, such as ``normalisation``, are optional)."""

Scaling = Literal["share", "none"]


@dataclass(frozen=True)
class ReleasedWeights:
    """One released SSL4EO-S12 weight set: its TorchGeo name and what cloudbench assumes of it
    where the installed TorchGeo does not have it (with a weights file given by path).

    ``mean`` and ``std`` are in the weights' input units (S2 DN, S1 dB), one value per band or
    one for all; they are only used without the TorchGeo enum, whose ``transforms`` win.
    """

    enum: str
    members: tuple[str, ...]
    """Accepted member names, the current one first (older TorchGeos have the others)."""
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"{self.enum}.{self.members[0]}"


# Documented normalisation, the constants of TorchGeo 0.8's weight transforms:
# S2: DN / 10000 (``_ssl4eo_s12_transforms_s2_10k`` and ``_zhu_xlab_transforms``, which cite
# SSL4EO-S12's src/benchmark/transfer_classification/linear_BE_moco.py);
# S1: per-band mean and std in dB (``_ssl4eo_s12_transforms_s1``, which cites DeCUR's
# src/transfer_classification_BE/linear_BE_resnet.py).
_S2_MEAN, _S2_STD = (0.0,), (10000.0,)
_S1_MEAN, _S1_STD = (-12.59, -20.26), (5.26, 5.91)


@dataclass(frozen=True)
class BackboneSpec:
    """One SSL backbone: the timm architecture and its S2 and S1 weights."""

    name: str
    title: str
    model: str
    """timm's model name, as in the weights' ``meta["model"]``."""
    first_layer: str
    """The module whose ``weight`` takes the input channels."""
    patch_size: int | None
    """ViTs: inputs must be multiples of it. None for convolutional networks."""
    ignored: frozenset[str]
    """Keys of a weights file that are not used (the pre-training heads)."""
    optional: frozenset[str]
    """Keys a weights file may lack; the network keeps its initial values (as TorchGeo does)."""
    s2: ReleasedWeights
    s1: ReleasedWeights

    def weights(self, modality: str) -> ReleasedWeights:
        return self.s2 if modality == "s2" else self.s1


def _resnet50(name: str, title: str, s2: ReleasedWeights, s1: ReleasedWeights) -> BackboneSpec:
    """A timm ResNet-50; SSL4EO-S12's files have no classifier, or one that is not used."""
    return BackboneSpec(name, title, "resnet50", "conv1", None,
                        ignored=frozenset({"fc.weight", "fc.bias"}), optional=frozenset(),
                        s2=s2, s1=s1)


def _vit_small16(name: str, title: str, s2: ReleasedWeights,
                 s1: ReleasedWeights) -> BackboneSpec:
    """A timm ViT-S/16; files may lack the final norm (TorchGeo accepts that too)."""
    return BackboneSpec(name, title, "vit_small_patch16_224", "patch_embed.proj", 16,
                        ignored=frozenset({"head.weight", "head.bias"}),
                        optional=frozenset({"norm.weight", "norm.bias"}), s2=s2, s1=s1)


BACKBONES: dict[str, BackboneSpec] = {
    "moco-v2-resnet50": _resnet50(
        "moco-v2-resnet50", "ResNet-50 (MoCo v2)",
        s2=ReleasedWeights("ResNet50_Weights", ("SENTINEL2_ALL_MOCO",), S2_L1C_BANDS,
                           _S2_MEAN, _S2_STD),
        s1=ReleasedWeights("ResNet50_Weights", ("SENTINEL1_GRD_MOCO", "SENTINEL1_ALL_MOCO"),
                           S1_BANDS, _S1_MEAN, _S1_STD)),
    "moco-v3-vit-s16": _vit_small16(
        "moco-v3-vit-s16", "ViT-S/16 (MoCo v3)",
        s2=ReleasedWeights("ViTSmall16_Weights", ("SENTINEL2_ALL_MOCO",), S2_L1C_BANDS,
                           _S2_MEAN, _S2_STD),
        s1=ReleasedWeights("ViTSmall16_Weights", ("SENTINEL1_GRD_MOCO",), S1_BANDS,
                           _S1_MEAN, _S1_STD)),
    "mae-vit-s16": _vit_small16(
        "mae-vit-s16", "ViT-S/16 (MAE)",
        s2=ReleasedWeights("ViTSmall16_Weights", ("SENTINEL2_ALL_MAE",), S2_L1C_BANDS,
                           _S2_MEAN, _S2_STD),
        s1=ReleasedWeights("ViTSmall16_Weights", ("SENTINEL1_GRD_MAE",), S1_BANDS,
                           _S1_MEAN, _S1_STD)),
}
"""The SSL backbones by name. TorchGeo (0.6 to 0.10 at least) ships no S1 MoCo v3 ViT-S/16, so
``moco-v3-vit-s16`` needs an S1 weights file by path for its S1, 14-channel and late-fusion
variants."""


@dataclass(frozen=True)
class WeightsInfo:
    """A weight set as resolved here: from the installed TorchGeo's enum, or documented."""

    name: str
    """``Enum.MEMBER`` as TorchGeo names it."""
    url: str | None
    """None where the installed TorchGeo does not have the enum."""
    bands: tuple[str, ...]
    """Our band names, in the weights' channel order."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Per band, in the weights' input units (S2 DN, S1 dB): input = (x − mean) / std."""
    source: str
    """Where ``mean`` and ``std`` come from: the TorchGeo enum's transforms, or documented."""

    @property
    def cache_path(self) -> Path | None:
        """``torch.hub.get_dir()/checkpoints/<file name of the URL>``, where TorchGeo caches it."""
        if self.url is None:
            return None
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(self.url).path)


def backbone_spec(backbone: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``backbone`` (a key of :data:`BACKBONES`)."""
    if backbone not in BACKBONES:
        raise CloudbenchError(f"unknown SSL backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[backbone]


def weights_info(backbone: str, modality: str) -> WeightsInfo:
    """The ``modality`` (``s2`` or ``s1``) weights of ``backbone`` from the installed TorchGeo.

    Raises a CloudbenchError naming the missing enum and the TorchGeo version where the
    installed TorchGeo does not have it.
    """
    return _resolve(backbone_spec(backbone), _check_modality(modality), required=True)


def weights_file(backbone: str, modality: str, path: str | Path | None = None) -> Path:
    """The file of the ``modality`` weights of ``backbone``: ``path`` when given, else the torch
    hub cache's copy. Never downloads; raises one CloudbenchError when the file is not there."""
    modality = _check_modality(modality)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise CloudbenchError(f"{modality}_weights: {path} is not a file")
        return path
    info = weights_info(backbone, modality)
    cached = info.cache_path
    assert cached is not None and info.url is not None  # weights_info found the enum
    if not cached.is_file():
        raise CloudbenchError(
            f"the {info.name} weights are not in the torch hub cache: expected {cached}; "
            f"cloudbench never downloads them at run time: run `cloudbench weights fetch "
            f"{backbone}:{modality}` where there is a network, or download {info.url} to "
            f"{cached}, or pass the file's path as {modality}_weights"
        )
    return cached


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict in ``path``, read with ``torch.load(weights_only=True)`` on the CPU: only
    tensors and plain containers are unpickled, never arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable file, or objects weights_only refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CloudbenchError(f"cannot read {path} as a state dict (torch.load with "
                              f"weights_only=True): {first}") from err
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CloudbenchError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A backbone checkpoint of cloudbench's own pre-training, read with
    ``torch.load(weights_only=True)`` on the CPU and checked: its ``format`` is
    :data:`CHECKPOINT_FORMAT`, its ``version`` at most :data:`CHECKPOINT_VERSION`, it has every
    key of :data:`CHECKPOINT_KEYS`, ``bands`` is a list of names and ``state_dict`` maps names
    to tensors. Raises one CloudbenchError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CloudbenchError(f"weights: {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable file, or objects weights_only refuses
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CloudbenchError(f"cannot read {path} as a backbone checkpoint (torch.load with "
                              f"weights_only=True): {first}") from err
    if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
        what = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        raise CloudbenchError(f"{path} is not a cloudbench backbone checkpoint (format "
                              f"{what!r}, expected {CHECKPOINT_FORMAT!r}; released weights go "
                              "to s2_weights/s1_weights)")
    version = state.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CloudbenchError(f"{path} is a backbone checkpoint of version {version!r}; this "
                              f"cloudbench reads versions up to {CHECKPOINT_VERSION}")
    missing = sorted(CHECKPOINT_KEYS - set(state))
    if missing:
        raise CloudbenchError(f"{path} is an incomplete backbone checkpoint: no {missing}")
    weights = state["state_dict"]
    if not isinstance(weights, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()):
        raise CloudbenchError(f"{path}: state_dict is not a mapping of names to tensors")
    if not isinstance(state["bands"], list | tuple) or not all(
            isinstance(b, str) for b in state["bands"]):
        raise CloudbenchError(f"{path}: bands is not a list of band names")
    return dict(state)


def save_checkpoint(path: str | Path, backbone: SSLBackbone, *, pretext: str, data: str,
                    epochs: int, **extra: Any) -> Path:
    """Write ``backbone`` as a checkpoint :func:`read_checkpoint` reads, atomically (a
    temporary file beside ``path``, then ``os.replace``).

    Keys: ``format``, ``version``, ``backbone`` (its name), ``pretext``, ``bands``,
    ``state_dict`` (the timm keys of ``backbone.net``, contiguous CPU tensors), ``data``,
    ``epochs``, ``normalisation`` (``scale`` and ``offset`` per band of ``backbone.normalise``
    when it is a :class:`BandNormalise`), and ``extra`` (plain values only: the file is read
    with ``weights_only=True``).
    """
    path = Path(path)
    state: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "backbone": backbone.name,
        "pretext": pretext,
        "bands": list(backbone.bands),
        "state_dict": {k: v.detach().cpu().contiguous().clone()
                       for k, v in backbone.net.state_dict().items()},
        "data": data,
        "epochs": int(epochs),
    }
    if isinstance(backbone.normalise, BandNormalise):
        state["normalisation"] = {
            "scale": backbone.normalise.scale.flatten().tolist(),
            "offset": backbone.normalise.offset.flatten().tolist(),
        }
    state.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)
    return path


def _from_checkpoint(spec: BackboneSpec, bands: tuple[str, ...], path: Path) -> SSLBackbone:
    """``spec``'s network for ``bands`` with the weights of a checkpoint of ours."""
    state = read_checkpoint(path)
    if state["backbone"] != spec.name:
        raise CloudbenchError(f"{path} holds a {state['backbone']!r} backbone, not "
                              f"{spec.name!r}")
    trained = tuple(state["bands"])
    if trained != bands:
        raise CloudbenchError(f"{path} was pre-trained on bands {' '.join(trained)}, not "
                              f"{' '.join(bands)}; build it with bands={list(trained)}")
    net, feature_dim = _create(spec, len(bands))
    weights: dict[str, Tensor] = dict(state["state_dict"])
    reference = net.state_dict()
    missing = sorted(set(reference) - set(weights))
    unexpected = sorted(set(weights) - set(reference))
    wrong = sorted(k for k in set(weights) & set(reference)
                   if weights[k].shape != reference[k].shape)
    if missing or unexpected or wrong:
        raise CloudbenchError(f"{path} does not fit {spec.title} for {len(bands)} bands: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes "
                              f"{wrong[:3]}")
    net.load_state_dict(weights, strict=True)
    recorded = state.get("normalisation")
    if recorded is not None:
        scale, offset = recorded.get("scale"), recorded.get("offset")
        if not (isinstance(scale, list) and isinstance(offset, list)
                and len(scale) == len(offset) == len(bands)):
            raise CloudbenchError(f"{path}: normalisation needs a scale and an offset per band")
        normalise = BandNormalise(bands, scale, offset)
    else:
        infos = {m: _resolve(spec, m, required=False) for m in _modalities(spec, bands)}
        normalise = _normaliser(spec, bands, infos)
    files = dict.fromkeys(_modalities(spec, bands), path)
    return SSLBackbone(spec, bands, net, feature_dim, normalise, files)


class BandNormalise(nn.Module):
    """``x · scale + offset`` per channel: our units (S2 reflectance, S1 dB) to the input the
    weights were trained on (their transforms' normalisation). Float (B, C, H, W) in and out."""

    scale: Tensor
    offset: Tensor

    def __init__(self, bands: Sequence[str], scale: Sequence[float],
                 offset: Sequence[float]) -> None:
        super().__init__()
        self.bands = tuple(bands)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.offset


def normalisation(backbone: str, bands: Sequence[str] = FUSED_BANDS) -> BandNormalise:
    """The :class:`BandNormalise` of ``backbone``'s weights for inputs with channels ``bands``.

    Each band is normalised as its modality's weights expect: ``(x · u − mean) / std`` with
    ``u`` the unit change (:data:`UNITS`) and ``mean``, ``std`` from the installed TorchGeo
    enum's transforms, or the documented SSL4EO-S12 constants where TorchGeo lacks the enum.
    """
    spec = backbone_spec(backbone)
    bands = _check_bands(spec, bands)
    infos = {m: _resolve(spec, m, required=False) for m in _modalities(spec, bands)}
    return _normaliser(spec, bands, infos)


class SSLBackbone(nn.Module):
    """One SSL backbone for inputs with channels ``bands``: ``features(x)`` normalises ``x``
    (our units, channels in ``bands`` order) with ``normalise`` and returns the network's
    pooled features (B, ``feature_dim``).

    ``net`` is the timm network (no classifier); ``normalise`` may be replaced (e.g. by
    :class:`torch.nn.Identity`) by a caller whose inputs are already normalised.
    ``weights_files`` maps each modality whose weights were loaded to its file.
    """

    def __init__(self, spec: BackboneSpec, bands: Sequence[str], net: nn.Module,
                 feature_dim: int, normalise: nn.Module,
                 weights_files: Mapping[str, Path]) -> None:
        super().__init__()
        self.name = spec.name
        self.bands = tuple(bands)
        self.net = net
        self.normalise = normalise
        self.feature_dim = feature_dim
        self.patch_size = spec.patch_size
        self.weights_files = dict(weights_files)

    def features(self, x: Tensor) -> Tensor:
        """Features (B, feature_dim) of float (B, len(bands), H, W) inputs in our units."""
        if x.ndim != 4 or x.shape[1] != len(self.bands):
            raise CloudbenchError(
                f"{self.name} takes (B, {len(self.bands)}, H, W) inputs "
                f"({' '.join(self.bands)}), got shape {tuple(x.shape)}")
        if self.patch_size and (x.shape[2] % self.patch_size or x.shape[3] % self.patch_size):
            raise CloudbenchError(
                f"{self.name} takes images whose height and width are multiples of "
                f"{self.patch_size}, got {x.shape[2]}×{x.shape[3]}; resize them (the weights "
                "were trained at 224×224)")
        out: Tensor = self.net(self.normalise(x))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def build_backbone(
    backbone: str,
    bands: Sequence[str] = FUSED_BANDS,
    *,
    s2_weights: str | Path | None = None,
    s1_weights: str | Path | None = None,
    pretrained: bool = True,
    first_layer_scaling: Scaling = "share",
    weights: str | Path | None = None,
) -> SSLBackbone:
    """``backbone`` (a key of :data:`BACKBONES`) for inputs with channels ``bands``.

    ``bands`` names every input channel, in order: S2 bands only (default S2 model:
    :data:`S2_BANDS`), S1 bands only (:data:`S1_BANDS`), or both (:data:`FUSED_BANDS`, the
    14-channel model). Each is matched by name to a channel of its modality's weights.

    With ``pretrained``, the weights used are read from ``s2_weights`` / ``s1_weights`` when
    given, else from the torch hub cache (:func:`weights_file`); every key must match the
    network's (the pre-training heads aside). The first layer takes, for each channel, its
    modality's kernel; with ``first_layer_scaling="share"`` (the default) each modality's kernels
    are multiplied by its share of the channels (S2 12/14, S1 2/14 in the 14-channel model; 1 in
    single-modality models), with ``"none"`` they are taken as they are. The rest of the network
    is the S2 weights' where there are S2 channels, else the S1 weights'.

    Without ``pretrained`` the network is timm's random initialisation (torch's global RNG) and
    no weights file is needed. A weights file of a modality ``bands`` do not use is not read.

    ``weights``: a checkpoint of cloudbench's own pre-training (:func:`read_checkpoint`) instead
    of the released weights: it must be of this ``backbone`` and these ``bands`` (same order);
    its state dict is loaded as it is (every key, strictly; no stitching, no scaling) and the
    backbone normalises as the checkpoint was trained (its recorded ``normalisation``, else
    the released weights' as without it). Exclusive with ``s2_weights``/``s1_weights``, and
    needs ``pretrained`` (the default). ``weights_files`` then maps each modality to it.
    """
    spec = backbone_spec(backbone)
    bands = _check_bands(spec, bands)
    if weights is not None:
        if s2_weights is not None or s1_weights is not None:
            raise CloudbenchError("give weights (a cloudbench pre-training checkpoint) or "
                                  "s2_weights/s1_weights (released weights), not both")
        if not pretrained:
            raise CloudbenchError("weights loads a pre-trained checkpoint: it cannot be "
                                  "combined with pretrained=False")
        return _from_checkpoint(spec, bands, Path(weights))
    if first_layer_scaling not in ("share", "none"):
        raise CloudbenchError(f"first_layer_scaling must be 'share' or 'none', "
                              f"got {first_layer_scaling!r}")
    modalities = _modalities(spec, bands)
    given = {"s2": s2_weights, "s1": s1_weights}
    infos = {m: _resolve(spec, m, required=pretrained and given[m] is None) for m in modalities}
    files: dict[str, Path] = {}
    states: dict[str, dict[str, Tensor]] = {}
    if pretrained:
        for m in modalities:
            files[m] = weights_file(spec.name, m, given[m])
            states[m] = read_state_dict(files[m])
            _check_first_layer(spec, infos[m], states[m], files[m])
    net, feature_dim = _create(spec, len(bands))
    if pretrained:
        reference = net.state_dict()
        for m in modalities:
            _check_keys(spec, infos[m], states[m], reference, files[m])
        _load(net, spec, bands, infos, states, first_layer_scaling)
    return SSLBackbone(spec, bands, net, feature_dim, _normaliser(spec, bands, infos), files)


class LateFusion(nn.Module):
    """An S1 backbone and an S2 backbone, their features concatenated (S1 first).

    ``features(inputs)`` reads ``inputs["s1"]`` and ``inputs["s2"]`` (or ``image_s1`` and
    ``image_s2``: a batch dict of the datasets) and returns (B, ``feature_dim``), the sum of
    the two backbones' feature dimensions.
    """

    modalities = ("s1", "s2")

    def __init__(self, s1: SSLBackbone, s2: SSLBackbone) -> None:
        super().__init__()
        self.s1 = s1
        self.s2 = s2
        self.feature_dim = s1.feature_dim + s2.feature_dim

    def features(self, inputs: Inputs) -> Tensor:
        """Concatenated features (B, feature_dim) of the S1 and S2 inputs (our units)."""
        return torch.cat([self.s1.features(modality_input(inputs, "s1")),
                          self.s2.features(modality_input(inputs, "s2"))], dim=1)

    def forward(self, inputs: Inputs) -> Tensor:
        return self.features(inputs)


def build_late_fusion(
    backbone: str,
    *,
    s1_bands: Sequence[str] = S1_BANDS,
    s2_bands: Sequence[str] = S2_BANDS,
    s1_weights: str | Path | None = None,
    s2_weights: str | Path | None = None,
    pretrained: bool = True,
) -> LateFusion:
    """:class:`LateFusion` of ``backbone``'s S1-only and S2-only models (:func:`build_backbone`)."""
    spec = backbone_spec(backbone)
    if set(s1_bands) - set(spec.s1.bands) or set(s2_bands) - set(spec.s2.bands):
        raise CloudbenchError(f"late fusion needs S1 bands in s1_bands and S2 bands in s2_bands, "
                              f"got {' '.join(s1_bands)} and {' '.join(s2_bands)}")
    s1 = build_backbone(backbone, s1_bands, s1_weights=s1_weights, pretrained=pretrained)
    s2 = build_backbone(backbone, s2_bands, s2_weights=s2_weights, pretrained=pretrained)
    return LateFusion(s1, s2)


# --------------------------------------------------------------------------------------------
# Resolving weights
# --------------------------------------------------------------------------------------------


def _check_modality(modality: str) -> str:
    if modality not in ("s2", "s1"):
        raise CloudbenchError(f"modality must be 's2' or 's1', got {modality!r}")
    return modality


def _resolve(spec: BackboneSpec, modality: str, required: bool) -> WeightsInfo:
    """The weights from TorchGeo; without the enum, an error if ``required``, else the
    documented bands and normalisation."""
    released = spec.weights(modality)
    enum = getattr(torchgeo.models, released.enum, None)
    found = None
    for member in released.members:
        found = getattr(enum, member, None)
        if found is not None:
            break
    if found is None:
        if required:
            raise CloudbenchError(
                f"TorchGeo {torchgeo.__version__} has no torchgeo.models.{released.name} (the "
                f"{modality.upper()} weights of {spec.title}); install a TorchGeo that has it, "
                f"or pass a weights file's path as {modality}_weights")
        return WeightsInfo(released.name, None, released.bands,
                           _per_band(released.mean, released.bands),
                           _per_band(released.std, released.bands), "documented constants")
    meta: Mapping[str, Any] = found.meta
    if meta.get("model", spec.model) != spec.model:
        raise CloudbenchError(f"TorchGeo {torchgeo.__version__}'s {released.name} is for "
                              f"{meta['model']!r}, not {spec.model!r}")
    bands = tuple(_band_name(b) for b in meta.get("bands", released.bands))
    if len(bands) != meta.get("in_chans", len(bands)):
        raise CloudbenchError(f"TorchGeo {torchgeo.__version__}'s {released.name} lists "
                              f"{len(bands)} bands for {meta['in_chans']} input channels")
    mean, std = _transform_statistics(found.transforms, len(bands), released.name)
    return WeightsInfo(released.name, str(found.url), bands, mean, std,
                       f"TorchGeo {torchgeo.__version__} transforms")


def _band_name(name: str) -> str:
    """TorchGeo's band names (``B1``, ``B8a``, ``VV``) as ours (``B01``, ``B8A``, ``VV``)."""
    match = re.fullmatch(r"B(\d{1,2})(A?)", name.upper())
    if match is None:
        return name.upper()
    number, narrow = int(match.group(1)), match.group(2)
    return f"B{number}A" if narrow else f"B{number:02d}"


def _per_band(values: tuple[float, ...], bands: tuple[str, ...]) -> tuple[float, ...]:
    return values * len(bands) if len(values) == 1 else values


def _transform_statistics(transforms: Any, channels: int,
                          name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and std of the normalisation the weight's ``transforms`` apply.

    The transforms (torchvision's in TorchGeo 0.8+, Kornia's before) are applied, as TorchGeo
    applies them to a sample dict, to constant images of 0, 1 and 2: their output must be
    ``x · a + c`` per band (any chain of Normalize steps is), which gives std = 1/a and
    mean = −c/a. Resizing and cropping leave constant images constant.
    """
    probes = []
    for value in (0.0, 1.0, 2.0):
        image = torch.full((1, channels, 256, 256), value, dtype=torch.float64)
        out = transforms({"image": image})["image"]
        probes.append(out.reshape(channels, -1).mean(dim=1))
    c, a = probes[0], probes[1] - probes[0]
    if not torch.allclose(probes[2], c + 2 * a, rtol=1e-6, atol=1e-9) or bool((a == 0).any()):
        raise CloudbenchError(f"the transforms of TorchGeo {torchgeo.__version__}'s {name} are "
                              "not a per-band normalisation; cloudbench cannot apply them")
    return tuple((0.0 - c / a).tolist()), tuple((1 / a).tolist())


def _modalities(spec: BackboneSpec, bands: tuple[str, ...]) -> tuple[str, ...]:
    """The modalities ``bands`` draw on, S2 first (S2's weights then give the network)."""
    return tuple(m for m in ("s2", "s1") if set(bands) & set(spec.weights(m).bands))


def _check_bands(spec: BackboneSpec, bands: Sequence[str]) -> tuple[str, ...]:
    bands = tuple(bands)
    known = spec.s2.bands + spec.s1.bands
    if not bands or len(set(bands)) != len(bands):
        raise CloudbenchError(f"bands must be distinct and at least one, got {list(bands)}")
    unknown = [b for b in bands if b not in known]
    if unknown:
        raise CloudbenchError(f"{spec.title} weights have no band {unknown[0]!r}; "
                              f"their bands: {' '.join(known)}")
    return bands


def _normaliser(spec: BackboneSpec, bands: tuple[str, ...],
                infos: Mapping[str, WeightsInfo]) -> BandNormalise:
    scale, offset = [], []
    for band in bands:
        modality = "s2" if band in spec.s2.bands else "s1"
        info = infos[modality]
        i = _band_index(info, band)
        scale.append(UNITS[modality] / info.std[i])
        offset.append(0.0 - info.mean[i] / info.std[i])
    return BandNormalise(bands, scale, offset)


def _band_index(info: WeightsInfo, band: str) -> int:
    if band not in info.bands:
        raise CloudbenchError(f"{info.name} has no band {band!r}; its bands: "
                              f"{' '.join(info.bands)}")
    return info.bands.index(band)


# --------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------


def _create(spec: BackboneSpec, in_chans: int) -> tuple[nn.Module, int]:
    """timm's network as TorchGeo builds it, without a classifier, and its feature dimension.

    ViTs get ``dynamic_img_size``: the same parameters, and inputs of other sizes than 224
    interpolate the position embedding at run time.
    """
    extra: dict[str, Any] = {"dynamic_img_size": True} if spec.patch_size else {}
    model = timm.create_model(spec.model, pretrained=False, in_chans=in_chans, num_classes=0,
                              **extra)
    return model, cast(int, model.num_features)


def _check_first_layer(spec: BackboneSpec, info: WeightsInfo, state: Mapping[str, Tensor],
                       path: Path) -> None:
    key = f"{spec.first_layer}.weight"
    if key not in state:
        raise CloudbenchError(f"{path} is not a {spec.title} state dict: it has no {key!r}")
    weight = state[key]
    if weight.ndim != 4 or weight.shape[1] != len(info.bands):
        raise CloudbenchError(
            f"{path}: the first layer {key} has {weight.shape[1] if weight.ndim > 1 else '?'} "
            f"input channels, but {info.name} has {len(info.bands)} ({' '.join(info.bands)})")


def _check_keys(spec: BackboneSpec, info: WeightsInfo, state: Mapping[str, Tensor],
                reference: Mapping[str, Tensor], path: Path) -> None:
    """Every key of the network is in ``state`` (bar ``spec.optional``) with its shape (the
    first layer's channel count aside), and ``state`` has no others (bar ``spec.ignored``)."""
    first = f"{spec.first_layer}.weight"
    keys = set(state) - spec.ignored
    missing = sorted(set(reference) - keys - spec.optional)
    unexpected = sorted(keys - set(reference))
    wrong = sorted(k for k in keys & set(reference) if _shape(k, state[k], first)
                   != _shape(k, reference[k], first))
    if missing or unexpected or wrong:
        raise CloudbenchError(
            f"{path} is not a {spec.title} state dict for {info.name}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")


def _shape(key: str, tensor: Tensor, first: str) -> tuple[int, ...]:
    """The shape of ``tensor``, without the input channels for the first layer's weight."""
    shape = tuple(tensor.shape)
    return shape[:1] + shape[2:] if key == first else shape


def _load(net: nn.Module, spec: BackboneSpec, bands: tuple[str, ...],
          infos: Mapping[str, WeightsInfo], states: Mapping[str, Mapping[str, Tensor]],
          scaling: Scaling) -> None:
    """Load the trunk modality's weights into ``net`` with the stitched first layer."""
    first = f"{spec.first_layer}.weight"
    modality_of = {b: "s2" if b in spec.s2.bands else "s1" for b in bands}
    columns = []
    for band in bands:
        m = modality_of[band]
        share = sum(1 for b in bands if modality_of[b] == m) / len(bands)
        factor = share if scaling == "share" else 1.0
        columns.append(states[m][first][:, _band_index(infos[m], band)] * factor)
    trunk = "s2" if "s2" in states else "s1"
    state = {k: v for k, v in states[trunk].items() if k not in spec.ignored}
    state[first] = torch.stack(columns, dim=1)
    net.load_state_dict(state, strict=False)  # _check_keys made sure only spec.optional lack
