"""SSL backbones (cloudbench.models.backbones): TorchGeo's SSL4EO-S12 weight enums, offline weight
files, the 14-channel first layer stitched by band name, normalisation, late fusion.

No real weights exist here: the weight files are state dicts with the real key names and shapes
(timm's networks built without weights), written into a temporary torch hub cache under the
file names of the enums' URLs and loaded through the same code as real ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import pytest
import timm
import torch
import torchgeo
import torchgeo.models
from torch import Tensor, nn

from cloudbench.errors import CloudbenchError
from cloudbench.models.backbones import (
    FUSED_BANDS,
    S1_BANDS,
    S2_BANDS,
    S2_L1C_BANDS,
    _transform_statistics,
    build_backbone,
    build_late_fusion,
    normalisation,
    read_state_dict,
    weights_info,
)

RESNET, VIT = "moco-v2-resnet50", "mae-vit-s16"
FIRST = {RESNET: "conv1.weight", VIT: "patch_embed.proj.weight"}
L2A_COLUMNS = [S2_L1C_BANDS.index(b) for b in S2_BANDS]
"""The S2 weights' channels our 12 L2A bands take: all but B10 (channel 10)."""
S1_MEAN, S1_STD = torch.tensor([-12.59, -20.26]), torch.tensor([5.26, 5.91])
M = TypeVar("M", bound=nn.Module)


@pytest.fixture(scope="module")
def s2_states() -> dict[str, dict[str, Tensor]]:
    """Per backbone, a 13-channel S2 state dict as timm names and shapes it (with the unused
    ImageNet-style classifier timm adds by default, which loading must skip)."""
    torch.manual_seed(0)
    return {name: timm.create_model(model, in_chans=13).state_dict()
            for name, model in ((RESNET, "resnet50"), (VIT, "vit_small_patch16_224"))}


@pytest.fixture(scope="module")
def s1_states(s2_states: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    """Per backbone, an S1 state dict: the S2 one's trunk, a 2-channel first layer of its own."""
    torch.manual_seed(1)
    return {name: _s1_state(state, name) for name, state in s2_states.items()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, s2_states: dict[str, dict[str, Tensor]],
        s1_states: dict[str, dict[str, Tensor]]) -> Iterator[Path]:
    """A torch hub cache (``$TORCH_HOME/hub/checkpoints``) holding the S2 and S1 state dicts
    of both backbones under the file names of their enums' URLs."""
    home = tmp_path_factory.mktemp("torch-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        (home / "hub" / "checkpoints").mkdir(parents=True)
        for backbone in (RESNET, VIT):
            torch.save(s2_states[backbone], _cached(backbone, "s2"))
            torch.save(s1_states[backbone], _cached(backbone, "s1"))
        yield home / "hub" / "checkpoints"


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch hub cache without weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def _s1_state(s2_state: dict[str, Tensor], backbone: str) -> dict[str, Tensor]:
    """An S1 state dict with the S2 one's trunk and a first layer of its own (2 channels)."""
    state = dict(s2_state)
    weight = s2_state[FIRST[backbone]]
    state[FIRST[backbone]] = torch.randn(weight.shape[0], 2, *weight.shape[2:]) * weight.std()
    return state


def _cached(backbone: str, modality: str) -> Path:
    path = weights_info(backbone, modality).cache_path
    assert path is not None
    return path


def _inputs(size: int = 32) -> tuple[Tensor, Tensor]:
    """(S1 in dB, S2 reflectance), float64 (2, C, size, size)."""
    generator = torch.Generator().manual_seed(1)
    s1 = -15 + 5 * torch.randn(2, 2, size, size, generator=generator, dtype=torch.float64)
    s2 = 0.3 * torch.rand(2, 12, size, size, generator=generator, dtype=torch.float64)
    return s1, s2


def _eval(model: M) -> M:
    """``model`` in eval mode and float64, so that equal sums agree to rounding."""
    return model.eval().double()


def test_weights_are_read_from_the_torchgeo_enums() -> None:
    for backbone, modality in ((RESNET, "s2"), (RESNET, "s1"), ("moco-v3-vit-s16", "s2"),
                               (VIT, "s2"), (VIT, "s1")):
        info = weights_info(backbone, modality)
        assert info.cache_path is not None and info.url is not None
        assert info.url.endswith("/" + info.cache_path.name)
        assert info.cache_path.parent == Path(torch.hub.get_dir()) / "checkpoints"
        assert info.source == f"TorchGeo {torchgeo.__version__} transforms"
        if modality == "s2":  # SSL4EO-S12's 13 L1C bands, DN / 10000
            assert info.bands == S2_L1C_BANDS
            assert info.mean == pytest.approx([0.0] * 13)
            assert info.std == pytest.approx([10000.0] * 13)
        else:
            assert info.bands == S1_BANDS
            assert info.mean == pytest.approx(S1_MEAN.tolist())
            assert info.std == pytest.approx(S1_STD.tolist())
    assert weights_info(RESNET, "s1").name == "ResNet50_Weights.SENTINEL1_GRD_MOCO"


def test_normalisation_maps_our_units_to_the_weights_input() -> None:
    s1, s2 = _inputs(4)
    out = normalisation(RESNET, FUSED_BANDS).double()(torch.cat([s1, s2], dim=1))
    expected_s1 = (s1 - S1_MEAN.view(1, 2, 1, 1).double()) / S1_STD.view(1, 2, 1, 1).double()
    # BandNormalise holds float32 factors
    torch.testing.assert_close(out[:, :2], expected_s1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[:, 2:], s2, rtol=1e-6, atol=1e-6)  # reflectance = DN/10000


def test_kornia_transforms_of_older_torchgeo_give_the_same_statistics() -> None:
    augmentation = pytest.importorskip("kornia.augmentation")
    transforms = augmentation.AugmentationSequential(
        augmentation.Resize((256, 256)), augmentation.CenterCrop(224),
        augmentation.Normalize(mean=S1_MEAN, std=S1_STD), data_keys=None)
    mean, std = _transform_statistics(transforms, 2, "kornia")
    assert mean == pytest.approx(S1_MEAN.tolist()) and std == pytest.approx(S1_STD.tolist())


@pytest.mark.parametrize("backbone", [RESNET, VIT])
def test_fused_channels_reproduce_the_single_modality_models(
        backbone: str, hub: Path, s2_states: dict[str, dict[str, Tensor]]) -> None:
    s2_state, first = s2_states[backbone], FIRST[backbone]
    s2_only = _eval(build_backbone(backbone, S2_BANDS))
    s1_only = _eval(build_backbone(backbone, S1_BANDS))
    fused = _eval(build_backbone(backbone, FUSED_BANDS, first_layer_scaling="none"))
    assert s2_only.weights_files == {"s2": _cached(backbone, "s2")}

    # Every key loaded: each tensor is the file's (the first layer: its L2A columns, no B10).
    loaded = s2_only.net.state_dict()
    assert set(loaded) == set(s2_state) - {"fc.weight", "fc.bias", "head.weight", "head.bias"}
    for key, value in loaded.items():
        expected = s2_state[key][:, L2A_COLUMNS] if key == first else s2_state[key]
        assert torch.equal(value, expected.double()), key

    s1, s2 = _inputs()
    x = torch.cat([s1, s2], dim=1)
    weight = dict(fused.net.named_parameters())[first]
    with torch.no_grad():
        kernels = weight.clone()
        weight[:, :2] = 0  # S1 kernels zero: the S2-only model
        torch.testing.assert_close(fused.features(x), s2_only.features(s2), rtol=1e-10,
                                   atol=1e-10)
        weight.copy_(kernels)
        weight[:, 2:] = 0  # S2 kernels zero: the S1-only model (the same trunk here)
        torch.testing.assert_close(fused.features(x), s1_only.features(s1), rtol=1e-10,
                                   atol=1e-10)
    assert fused.features(x).shape == (2, fused.feature_dim)
    assert fused.feature_dim == (2048 if backbone == RESNET else 384)


def test_first_layer_shares_and_trunk_from_the_s2_weights(
        hub: Path, s2_states: dict[str, dict[str, Tensor]],
        s1_states: dict[str, dict[str, Tensor]], tmp_path: Path) -> None:
    s2_state = s2_states[RESNET]
    s1_state = {k: v + 1 for k, v in s1_states[RESNET].items()}  # a trunk of its own
    s1_file = tmp_path / "s1.pth"
    torch.save(s1_state, s1_file)
    fused = build_backbone(RESNET, s1_weights=s1_file)  # FUSED_BANDS, scaling "share"
    assert fused.bands == FUSED_BANDS
    assert fused.weights_files == {"s2": _cached(RESNET, "s2"), "s1": s1_file}
    state = fused.net.state_dict()
    expected_conv1 = torch.cat([s1_state["conv1.weight"] * 2 / 14,
                                s2_state["conv1.weight"][:, L2A_COLUMNS] * 12 / 14], dim=1)
    torch.testing.assert_close(state["conv1.weight"], expected_conv1)
    for key, value in state.items():
        if key != "conv1.weight":
            assert torch.equal(value, s2_state[key]), key
    with pytest.raises(CloudbenchError, match="first_layer_scaling must be"):
        build_backbone(RESNET, first_layer_scaling="sum")  # type: ignore[arg-type]


def test_bands_are_matched_by_name(hub: Path, s2_states: dict[str, dict[str, Tensor]]) -> None:
    rgb = build_backbone(RESNET, ("B04", "B03", "B02"))
    assert torch.equal(rgb.net.state_dict()["conv1.weight"],
                       s2_states[RESNET]["conv1.weight"][:, [3, 2, 1]])
    with pytest.raises(CloudbenchError, match="have no band 'VV/VH'"):
        build_backbone(RESNET, ("VV", "VH", "VV/VH"))
    with pytest.raises(CloudbenchError, match="distinct"):
        build_backbone(RESNET, ("B02", "B02"))


def test_a_first_layer_with_the_wrong_channel_count_is_refused(
        hub: Path, s2_states: dict[str, dict[str, Tensor]], tmp_path: Path) -> None:
    state = dict(s2_states[RESNET])
    state["conv1.weight"] = state["conv1.weight"][:, L2A_COLUMNS]  # 12 channels, not 13
    path = tmp_path / "s2_12.pth"
    torch.save(state, path)
    with pytest.raises(CloudbenchError) as error:
        build_backbone(RESNET, S2_BANDS, s2_weights=path)
    message = str(error.value)
    assert "\n" not in message
    assert "conv1.weight has 12 input channels" in message
    assert "ResNet50_Weights.SENTINEL2_ALL_MOCO has 13 (B01" in message
    with pytest.raises(CloudbenchError, match="has 2 input channels"):  # S1 weights as S2 ones
        build_backbone(RESNET, S2_BANDS, s2_weights=_cached(RESNET, "s1"))


def test_keys_must_match_the_network(s2_states: dict[str, dict[str, Tensor]],
                                     tmp_path: Path) -> None:
    state = dict(s2_states[RESNET])
    del state["layer4.2.bn3.weight"]
    state["projector.0.weight"] = torch.zeros(1)
    path = tmp_path / "s2_keys.pth"
    torch.save(state, path)
    with pytest.raises(CloudbenchError) as error:
        build_backbone(RESNET, S2_BANDS, s2_weights=path)
    message = str(error.value)
    assert "\n" not in message
    assert "missing ['layer4.2.bn3.weight']" in message
    assert "unexpected ['projector.0.weight']" in message


def test_a_missing_weights_file_gives_one_message(empty_hub: Path) -> None:
    info = weights_info(RESNET, "s2")
    assert info.cache_path == empty_hub / "resnet50_sentinel2_all_moco-df8b932e.pth"
    with pytest.raises(CloudbenchError) as error:
        build_backbone(RESNET, S2_BANDS)
    message = str(error.value)
    assert "\n" not in message
    assert f"download {info.url} to {info.cache_path}, or pass" in message
    assert "s2_weights" in message
    with pytest.raises(CloudbenchError, match="s2_weights: .*nowhere.pth is not a file"):
        build_backbone(RESNET, S2_BANDS, s2_weights=empty_hub / "nowhere.pth")


def test_a_missing_enum_names_itself_and_the_torchgeo_version(
        monkeypatch: pytest.MonkeyPatch, empty_hub: Path) -> None:
    monkeypatch.setattr(torchgeo.models, "ResNet50_Weights", SimpleNamespace())
    with pytest.raises(CloudbenchError) as error:
        build_backbone(RESNET, S2_BANDS)
    message = str(error.value)
    assert "\n" not in message
    assert (f"TorchGeo {torchgeo.__version__} has no "
            "torchgeo.models.ResNet50_Weights.SENTINEL2_ALL_MOCO") in message
    assert "s2_weights" in message
    monkeypatch.delattr(torchgeo.models, "ViTSmall16_Weights")
    with pytest.raises(CloudbenchError, match="has no torchgeo.models.ViTSmall16_Weights.SENTINEL"):
        weights_info(VIT, "s1")


def test_without_the_enum_a_given_file_loads_with_the_documented_normalisation(
        hub: Path) -> None:
    """TorchGeo ships no S1 MoCo v3 ViT-S/16: its S1 model needs a file by path (here a
    ViT-S/16 S1 state dict)."""
    s1_file = _cached(VIT, "s1")
    model = build_backbone("moco-v3-vit-s16", S1_BANDS, s1_weights=s1_file)
    assert model.weights_files == {"s1": s1_file}
    db = torch.tensor([-10.0, -25.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(model.normalise(db).flatten(), (db.flatten() - S1_MEAN) / S1_STD)
    s1, _ = _inputs()
    assert _eval(model)(s1).shape == (2, 384)
    with pytest.raises(CloudbenchError, match="multiples of 16, got 40×40"):
        model(torch.zeros(1, 2, 40, 40, dtype=torch.float64))
    with pytest.raises(CloudbenchError, match=r"takes \(B, 2, H, W\) inputs \(VV VH\)"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float64))


class _Opaque:
    """An object that weights-only unpickling must refuse."""


def test_weights_are_loaded_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _Opaque()}, path)
    with pytest.raises(CloudbenchError) as error:
        read_state_dict(path)
    assert "\n" not in str(error.value) and "weights_only=True" in str(error.value)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CloudbenchError, match="does not hold a state dict"):
        read_state_dict(path)


def test_late_fusion_concatenates_the_s1_and_s2_features() -> None:
    fusion = _eval(build_late_fusion(RESNET, pretrained=False))
    assert (fusion.s1.bands, fusion.s2.bands) == (S1_BANDS, S2_BANDS)
    assert fusion.feature_dim == 4096
    s1, s2 = _inputs()
    features = fusion.features({"image_s1": s1, "image_s2": s2})
    assert features.shape == (2, 4096)
    torch.testing.assert_close(features[:, :2048], fusion.s1.features(s1))
    torch.testing.assert_close(features[:, 2048:], fusion.s2.features(s2))
    with pytest.raises(CloudbenchError, match="late fusion needs S1 bands in s1_bands"):
        build_late_fusion(RESNET, s1_bands=("VV", "B02"))
