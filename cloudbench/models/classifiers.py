"""The networks the harness trains: GoogLeNet and ResNet-50 for any number of input channels,
their encoders, and the two multimodal GoogLeNet layouts (two-stream and early fusion).

All networks are torchvision's, untrained (``weights=None``), with the first convolution
replaced when the input is not 3 channels (initialised as torchvision initialises it). Both work
on 64×64 patches, and smaller ones down to 16×16: their pooling ends in an adaptive average pool.

The multimodal models take a dict of float (B, C, H, W) tensors: modality ``m`` (``s2``, ``s1``)
is read from ``inputs[m]``, or, where there is no such key, from ``inputs["image_<m>"]``, so
both ``{"s2": …, "s1": …}`` and a batch dict of
:meth:`cloudbench.datasets.CloudBenchDataset.to_tensors` (``image_s2``, ``image_s1``) work.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tvm

from cloudbench.errors import CloudbenchError

Inputs = Mapping[str, Tensor]


def modality_input(inputs: Inputs, modality: str) -> Tensor:
    """``inputs[modality]``, else ``inputs["image_<modality>"]``."""
    if modality in inputs:
        return inputs[modality]
    key = f"image_{modality}"
    if key in inputs:
        return inputs[key]
    raise CloudbenchError(
        f"no input for modality {modality!r} (keys {modality!r} or {key!r}); got {sorted(inputs)}"
    )


def googlenet(in_channels: int, num_classes: int) -> tvm.GoogLeNet:
    """torchvision's GoogLeNet (no auxiliary heads, no input transform, torchvision's init).

    The first convolution takes ``in_channels`` channels; it is initialised like every other
    GoogLeNet convolution (truncated normal, std 0.01). Returns logits (B, ``num_classes``).
    """
    _check_sizes(in_channels, num_classes)
    model = tvm.googlenet(weights=None, aux_logits=False, init_weights=True,
                          transform_input=False, num_classes=num_classes)
    if in_channels != 3:
        old = model.conv1.conv
        conv = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size,
                         stride=old.stride, padding=old.padding, bias=False)
        nn.init.trunc_normal_(conv.weight, mean=0.0, std=0.01, a=-2, b=2)
        model.conv1.conv = conv
    return model


def resnet50(in_channels: int, num_classes: int) -> tvm.ResNet:
    """torchvision's ResNet-50, untrained; the first convolution takes ``in_channels`` channels.

    A replaced first convolution is initialised as torchvision's (Kaiming normal, fan out).
    """
    _check_sizes(in_channels, num_classes)
    model = tvm.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        old = model.conv1
        conv = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size,
                         stride=old.stride, padding=old.padding, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = conv
    return model


def encoder(model: nn.Module) -> tuple[nn.Module, int]:
    """``model`` without its classifier, and the length of the feature vector it returns.

    For :func:`googlenet` and :func:`resnet50` (any module whose classifier is a linear ``fc``):
    ``fc`` is replaced by :class:`torch.nn.Identity` **in place**, so the returned trunk is
    ``model`` itself and maps (B, C, H, W) to features (B, feature_dim). GoogLeNet's dropout
    (p=0.2, before ``fc``) stays in the trunk and so applies to the features in training.
    """
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise CloudbenchError(
            f"encoder() needs a model whose classifier is a linear 'fc' (GoogLeNet, ResNet), "
            f"not {type(model).__name__} with fc={type(fc).__name__}"
        )
    model.fc = nn.Identity()
    return model, fc.in_features


class TwoStream(nn.Module):
    """One GoogLeNet encoder per modality, features concatenated, one linear head.

    ``channels`` maps modality names to their channel counts, in the order the features are
    concatenated, e.g. ``TwoStream({"s2": 3, "s1": 3}, num_classes=10)`` (inputs: see the
    module docstring). Any number of modalities (M >= 1) works.

    The head is ``logits = W f + b`` with ``f = [f_1; …; f_M]``. :meth:`forward_parts` also
    returns each modality's share of it, ``part_m = W[:, slice_m] f_m + b / M``: the parts sum
    to the logits, and ``part_m`` depends on modality ``m``'s input alone, so a loss on each part
    (e.g. cross-entropy of ``part_s2`` and of ``part_s1``) gives per-modality loss curves for
    modality-imbalance plots (how much each stream has learned) while only the total is trained.
    """

    def __init__(self, channels: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        self.modalities = _modalities(channels)
        self.encoders = nn.ModuleDict()
        self.feature_dims: dict[str, int] = {}
        for name in self.modalities:
            trunk, dim = encoder(googlenet(channels[name], num_classes))
            self.encoders[name] = trunk
            self.feature_dims[name] = dim
        self.head = nn.Linear(sum(self.feature_dims.values()), num_classes)
        nn.init.trunc_normal_(self.head.weight, mean=0.0, std=0.01, a=-2, b=2)

    def features(self, inputs: Inputs) -> dict[str, Tensor]:
        """Each modality's feature vector (B, feature_dim)."""
        return {m: self.encoders[m](modality_input(inputs, m)) for m in self.modalities}

    def forward(self, inputs: Inputs) -> Tensor:
        """Logits (B, num_classes) from the batch dict."""
        features = self.features(inputs)
        return self.head(torch.cat([features[m] for m in self.modalities], dim=1))

    def forward_parts(self, inputs: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        """The logits and each modality's share of them (see the class docstring)."""
        features = self.features(inputs)
        logits = self.head(torch.cat([features[m] for m in self.modalities], dim=1))
        weight, bias = self.head.weight, self.head.bias
        share = bias / len(self.modalities)
        parts: dict[str, Tensor] = {}
        start = 0
        for m in self.modalities:
            stop = start + self.feature_dims[m]
            parts[m] = F.linear(features[m], weight[:, start:stop], share)
            start = stop
        return logits, parts


class EarlyFusion(nn.Module):
    """One GoogLeNet on the channels of several modalities concatenated (in ``channels``' order).

    ``EarlyFusion({"s1": 2, "s2": 12}, num_classes=19)`` reads the ``s1`` and ``s2`` inputs
    (see the module docstring) and stacks them into one 14-channel input.
    """

    def __init__(self, channels: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        self.modalities = _modalities(channels)
        self.net = googlenet(sum(channels[m] for m in self.modalities), num_classes)

    def forward(self, inputs: Inputs) -> Tensor:
        """Logits (B, num_classes) from the batch dict."""
        return self.net(torch.cat([modality_input(inputs, m) for m in self.modalities], dim=1))


def _modalities(channels: Mapping[str, int]) -> tuple[str, ...]:
    names = tuple(channels)
    if not names:
        raise CloudbenchError("at least one modality is needed")
    for name in names:
        if not name or "." in name:
            raise CloudbenchError(f"modality names must be non-empty without '.', got {name!r}")
        if channels[name] < 1:
            raise CloudbenchError(f"modality {name!r} needs >= 1 channel, got {channels[name]}")
    return names


def _check_sizes(in_channels: int, num_classes: int) -> None:
    if in_channels < 1 or num_classes < 1:
        raise CloudbenchError(
            f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}"
        )
