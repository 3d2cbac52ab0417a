"""Own SSL pre-training: the pretext losses and updates on hand-made tensors, the augmentations,
``cloudbench pretrain`` on a store and on an SSL4EO-S12 fixture read through TorchGeo, the
backbone checkpoint ``build_backbone(..., weights=...)`` loads, and resuming.

Sizes are tiny (32×32 views, a few samples, small projection heads and queues); the networks
are the real ResNet-50 and ViT-S/16.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from conftest import make_store
from torch import nn

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness.engine import Engine
from cloudbench.harness.pretrain import (
    SSL4EOS12Pairs,
    checkpoint_path,
    default_config,
    pretrain,
)
from cloudbench.models.backbones import (
    CHECKPOINT_FORMAT,
    FUSED_BANDS,
    S2_BANDS,
    build_backbone,
    read_checkpoint,
)
from cloudbench.models.pretext import (
    MoCoV2,
    MoCoV2Settings,
    contrastive,
    crop_boxes,
    gaussian_blur,
    info_nce,
    kept_patches,
    masked_mse,
    momentum_update,
    patchify,
    random_masking,
    resized_crop,
    unpatchify,
)
from cloudbench.sources.fixtures import write_ssl4eo_s12

SMALL_MOCO = ["--set", "pretext.queue_size=16", "--set", "pretext.hidden_dim=64"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 samples of 16×16 with all 12 L2A bands and VV, VH (the 14-band fused input)."""
    return make_store(tmp_path_factory.mktemp("pretrain") / "ds", n=24)


@pytest.fixture(scope="module")
def ssl4eo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("ssl4eo") / "SSL4EO-S12"
    return root, write_ssl4eo_s12(root, locations=2, size=36)


def _unit(*shape: int, seed: int = 0, dim: int = -1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=dim)


# --------------------------------------------------------------------------------------------
# Losses and updates on hand-made tensors
# --------------------------------------------------------------------------------------------


def test_info_nce_is_the_hand_computed_loss() -> None:
    q, k, queue, t = _unit(3, 4, seed=1), _unit(3, 4, seed=2), _unit(4, 5, seed=3, dim=0), 0.2
    expected = 0.0
    for i in range(3):
        positive = math.exp(float(q[i] @ k[i]) / t)
        negatives = sum(math.exp(float(q[i] @ queue[:, j]) / t) for j in range(5))
        expected += -math.log(positive / (positive + negatives)) / 3
    assert float(info_nce(q, k, queue, t)) == pytest.approx(expected, rel=1e-6)


def test_moco_v3_contrastive_loss_is_the_hand_computed_one() -> None:
    q, k, t = _unit(3, 4, seed=4), _unit(3, 4, seed=5), 0.2
    expected = 0.0
    for i in range(3):
        row = [math.exp(float(q[i] @ k[j]) / t) for j in range(3)]
        expected += -math.log(row[i] / sum(row)) / 3
    assert float(contrastive(q, k, t)) == pytest.approx(2 * t * expected, rel=1e-6)


def test_momentum_update_is_the_ema() -> None:
    torch.manual_seed(0)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    momentum_update(online, target, 0.9)
    for new, old, theirs in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * theirs, rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def moco() -> MoCoV2:
    torch.manual_seed(0)
    encoder = build_backbone("moco-v2-resnet50", FUSED_BANDS, pretrained=False)
    return MoCoV2(encoder, 32, MoCoV2Settings(queue_size=6, hidden_dim=32, dim=8))


def test_key_encoder_moves_by_the_ema_and_gets_no_gradient(moco: MoCoV2) -> None:
    m = moco.settings.key_momentum
    query = {n: p.detach().clone() for n, p in moco.encoder.named_parameters()}
    keys = {n: p.detach().clone() for n, p in moco.key_encoder.named_parameters()}
    x = torch.rand(4, 14, 16, 16)
    out = moco(x)
    out["loss"].backward()
    for name, p in moco.key_encoder.named_parameters():
        torch.testing.assert_close(p, m * keys[name] + (1 - m) * query[name], rtol=1e-6,
                                   atol=1e-7)
        assert p.grad is None and not p.requires_grad, name
    assert all(p.grad is None for p in moco.key_projector.parameters())
    assert moco.encoder.net.conv1.weight.grad is not None
    names = {id(p) for p in moco.trainable_parameters()}
    assert not any(id(p) in names for p in moco.key_encoder.parameters())
    assert int(moco.queue_ptr) == 4  # the batch's keys went into the queue after the loss
    moco.zero_grad(set_to_none=True)


def test_enqueue_replaces_the_oldest_keys_and_wraps(moco: MoCoV2) -> None:
    moco.queue.zero_()
    moco.queue_ptr.fill_(4)
    keys = torch.arange(3 * 8, dtype=torch.float32).view(3, 8) + 1
    moco.enqueue(keys)
    assert int(moco.queue_ptr) == 1
    torch.testing.assert_close(moco.queue[:, [4, 5, 0]], keys.T)
    assert torch.equal(moco.queue[:, 1:4], torch.zeros(8, 3))
    moco.enqueue(torch.ones(8, 8))  # more keys than the queue holds: the last 6 stay
    assert int(moco.queue_ptr) == 1 and torch.equal(moco.queue, torch.ones(8, 6))


# --- MAE ------------------------------------------------------------------------------------


def test_masking_keeps_round_n_times_0_3_patches_per_sample() -> None:
    for length in (4, 196, 10):
        tokens = torch.arange(3 * length, dtype=torch.float32).view(3, length, 1).repeat(1, 1, 2)
        visible, mask, restore = random_masking(tokens, 0.7)
        keep = round(length * 0.3)
        assert kept_patches(length, 0.7) == keep and visible.shape == (3, keep, 2)
        assert torch.equal(mask.sum(1), torch.full((3,), float(length - keep)))
        for i in range(3):  # the visible tokens are exactly the unmasked ones
            assert set(visible[i, :, 0].tolist()) == set(tokens[i, mask[i] == 0, 0].tolist())
        shuffled = torch.gather(tokens, 1, torch.argsort(restore, 1)[:, :, None].expand(-1, -1, 2))
        assert torch.equal(torch.gather(shuffled, 1, restore[:, :, None].expand(-1, -1, 2)),
                           tokens)


def test_the_mae_loss_counts_only_masked_patches() -> None:
    target = torch.tensor([[[1.0, 3.0], [0.0, 0.0], [2.0, 6.0]]])
    pred = torch.tensor([[[1.0, 1.0], [100.0, -100.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])  # the middle patch is visible: ignored
    raw = (((1 - 1) ** 2 + (1 - 3) ** 2) / 2 + (2 ** 2 + 6 ** 2) / 2) / 2
    assert float(masked_mse(pred, target, mask, norm_pix=False)) == pytest.approx(raw)
    # per-patch normalised targets: (1, 3) -> (-1, 1)/sqrt(2+eps), (2, 6) -> (-1, 1)·2/sqrt(8)
    n1 = torch.tensor([-1.0, 1.0]) / math.sqrt(2 + 1e-6)
    n3 = torch.tensor([-2.0, 2.0]) / math.sqrt(8 + 1e-6)
    normed = (float(((torch.tensor([1.0, 1.0]) - n1) ** 2).mean())
              + float((n3 ** 2).mean())) / 2
    assert float(masked_mse(pred, target, mask, norm_pix=True)) == pytest.approx(normed, rel=1e-6)


def test_patchify_and_unpatchify_round_trip_exactly() -> None:
    x = torch.randn(2, 3, 32, 48)
    patches = patchify(x, 16)
    assert patches.shape == (2, 6, 16 * 16 * 3)
    torch.testing.assert_close(patches[1, 4], x[1, :, 16:32, 16:32].permute(1, 2, 0).reshape(-1),
                               rtol=0, atol=0)  # row 1, column 1; (row, column, channel)
    assert torch.equal(unpatchify(patches, 16, 3, 32, 48), x)


# --- augmentations --------------------------------------------------------------------------


def test_crops_flips_and_blur() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3, 20, 20)
    boxes = crop_boxes(200, 20, 30, (0.2, 1.0), (3 / 4, 4 / 3))
    top, left, h, w = boxes.T
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 20) & (left + w <= 30)).all())
    assert bool(((h * w >= 0.15 * 600) & (h * w <= 600)).all())  # rounding aside
    whole = torch.tensor([[0.0, 0.0, 20.0, 20.0]]).repeat(5, 1)
    torch.testing.assert_close(resized_crop(x, whole, 20), x, rtol=1e-5, atol=1e-5)
    flip = torch.tensor([True, False, True, False, False])
    flipped = resized_crop(x, whole, 20, flip)
    torch.testing.assert_close(flipped[flip], x[flip].flip(-1), rtol=1e-5, atol=1e-5)
    sigma = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.5], dtype=torch.float64)
    blurred = gaussian_blur(x, sigma)
    assert torch.equal(blurred[0], x[0]) and torch.equal(blurred[2], x[2])
    assert float(blurred[3].std()) < float(x[3].std())
    flat = torch.ones(2, 1, 20, 20)
    torch.testing.assert_close(gaussian_blur(flat, torch.tensor([1.5, 2.0])), flat)


# --------------------------------------------------------------------------------------------
# The command and the checkpoint
# --------------------------------------------------------------------------------------------


def test_pretrain_command_writes_checkpoints_build_backbone_loads(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--store", str(store), "--epochs", "1", "--batch-size", "4", "--image-size", "32",
              "--max-samples", "8", "--device", "cpu"]
    moco_out, mae_out = tmp_path / "moco.pt", tmp_path / "mae.pt"
    assert main(["pretrain", "moco-v2", *common, "--out", str(moco_out), *SMALL_MOCO,
                 "--set", "train.data=stream"]) == 0
    assert main(["pretrain", "mae", *common, "--out", str(mae_out), "--lr", "1e-3",
                 "--set", "pretext.decoder_depth=1"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1: loss" in printed
    assert f"wrote {moco_out}: moco-v2, 1 epochs on 8 samples (stream)" in printed
    for out, backbone, pretext in ((moco_out, "moco-v2-resnet50", "moco-v2"),
                                   (mae_out, "mae-vit-s16", "mae")):
        state = read_checkpoint(out)
        assert state["format"] == CHECKPOINT_FORMAT and state["version"] == 1
        assert (state["backbone"], state["pretext"], state["epochs"]) == (backbone, pretext, 1)
        assert state["bands"] == list(FUSED_BANDS) and state["data"] == str(store.resolve())
        assert state["samples"] == 8 and state["data_kind"] == "store"
        assert not checkpoint_path(out).exists()  # the engine checkpoint is gone once written
        model = build_backbone(backbone, FUSED_BANDS, weights=out)
        assert set(model.net.state_dict()) == set(state["state_dict"])
        assert model.weights_files == {"s2": out, "s1": out}
        assert model.eval()(torch.rand(2, 14, 32, 32)).shape == (2, model.feature_dim)
    config = read_checkpoint(moco_out)["config"]
    assert (config["optimizer"], config["lr"], config["weight_decay"]) == ("sgd", 0.03, 1e-4)


def test_resuming_an_interrupted_run_gives_the_uninterrupted_weights(
        store: Path, tmp_path: Path) -> None:
    """MoCo v2 over 2 epochs, once straight through and once stopped after epoch 1 and run
    again: the same weights (queue, pointer and key encoder included), and the written
    checkpoint loads into the network the run trained."""
    config = default_config("moco-v2", epochs=2, batch_size=4)
    settings = {"queue_size": 16, "hidden_dim": 64}
    kwargs = {"store": store, "bands": S2_BANDS, "config": config, "image_size": 32,
              "settings": settings, "max_samples": 8}
    straight = pretrain("moco-v2", out=tmp_path / "a.pt", engine=Engine("cpu"), **kwargs)

    class Stop(Exception):
        pass

    def stop_after_first(entry: dict) -> None:
        if entry["epoch"] == 1 and not entry.get("resumed"):
            raise Stop

    out = tmp_path / "b.pt"
    with pytest.raises(Stop):
        pretrain("moco-v2", out=out, engine=Engine("cpu"), log=stop_after_first, **kwargs)
    assert checkpoint_path(out).exists() and not out.exists()
    with pytest.raises(CloudbenchError, match="another pre-training.*image_size"):
        pretrain("moco-v2", out=out, engine=Engine("cpu"), **{**kwargs, "image_size": 48})
    resumed = pretrain("moco-v2", out=out, engine=Engine("cpu"), **kwargs)
    assert resumed.resumed_epochs == 1 and len(resumed.history) == 2
    mine, theirs = resumed.model.state_dict(), straight.model.state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key

    loaded = build_backbone("moco-v2-resnet50", S2_BANDS, weights=out).eval()
    trained = resumed.model.encoder.eval()
    x = torch.rand(3, 12, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x), rtol=1e-5, atol=1e-5)
    for key, value in loaded.net.state_dict().items():
        assert torch.equal(value, trained.net.state_dict()[key]), key


def test_bad_input_exits_2_with_one_message(store: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "x.pt")
    cases = [
        (["moco-v2", "--store", str(tmp_path / "nowhere"), "--out", out], "no dataset at"),
        (["moco-v2", "--store", str(store), "--out", out, "--bands", "B02,NIR"],
         "have no band 'NIR'"),
        (["mae", "--store", str(store), "--out", out, "--image-size", "40"],
         "multiple of 16, got 40"),
        (["mae", "--out", out], "a store or SSL4EO-S12"),
        (["moco-v3", "--store", str(store), "--ssl4eo", str(tmp_path), "--out", out],
         "one of them"),
        (["mae", "--store", str(store), "--out", out, "--set", "pretext.mask_ratio=1.5"],
         "mask_ratio"),
        (["mae", "--store", str(store), "--out", out, "--set", "lr=3"], "--set takes train"),
        (["mae", "--store", str(store), "--out", str(store / "dataset.json")], "exists"),
        (["byol", "--store", str(store), "--out", out], "Invalid value"),
    ]
    for args, message in cases:
        assert main(["pretrain", *args]) == 2, args
        assert message in capsys.readouterr().err, args


def test_weights_checks_format_backbone_and_bands(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_backbone("mae-vit-s16", S2_BANDS, pretrained=False)
    from cloudbench.models.backbones import save_checkpoint

    path = save_checkpoint(tmp_path / "vit.pt", model, pretext="mae", data="here", epochs=1)
    loaded = build_backbone("mae-vit-s16", S2_BANDS, weights=path)
    for key, value in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value)
    assert torch.equal(loaded.normalise.scale, model.normalise.scale)
    with pytest.raises(CloudbenchError, match="holds a 'mae-vit-s16' backbone, not"):
        build_backbone("moco-v3-vit-s16", S2_BANDS, weights=path)
    with pytest.raises(CloudbenchError, match=r"pre-trained on bands B01 .* build it with"):
        build_backbone("mae-vit-s16", FUSED_BANDS, weights=path)
    with pytest.raises(CloudbenchError, match="not both"):
        build_backbone("mae-vit-s16", S2_BANDS, weights=path, s2_weights=path)
    with pytest.raises(CloudbenchError, match="pretrained=False"):
        build_backbone("mae-vit-s16", S2_BANDS, weights=path, pretrained=False)
    torch.save(model.net.state_dict(), tmp_path / "released.pth")
    with pytest.raises(CloudbenchError, match="not a cloudbench backbone checkpoint"):
        build_backbone("mae-vit-s16", S2_BANDS, weights=tmp_path / "released.pth")
    state = torch.load(path, weights_only=True)
    del state["state_dict"]["blocks.0.norm1.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CloudbenchError, match=r"missing \['blocks.0.norm1.weight'\]"):
        build_backbone("mae-vit-s16", S2_BANDS, weights=tmp_path / "broken.pt")


# --------------------------------------------------------------------------------------------
# SSL4EO-S12
# --------------------------------------------------------------------------------------------


def test_the_ssl4eo_fixture_reads_through_torchgeo_with_seasons_joined(
        ssl4eo: tuple[Path, list[dict]], tmp_path: Path) -> None:
    from torchgeo.datasets import SSL4EOS12

    root, written = ssl4eo
    s1 = SSL4EOS12(root, split="s1", seasons=4)[1]
    s2 = SSL4EOS12(root, split="s2a", seasons=4)[1]
    assert s1["image"].shape == (8, 264, 264) and s2["image"].shape == (48, 264, 264)
    assert -40 < float(s1["image"].mean()) < 0 and 100 < float(s2["image"].mean()) < 5000

    pairs = SSL4EOS12Pairs(root, FUSED_BANDS)
    assert len(pairs) == 8 and pairs.locations == [0, 1]
    rows = np.array([6, 1])  # location 1, third season; location 0, second season
    images = pairs.read(rows)
    assert images.shape == (2, 14, 264, 264)
    for image, (location, season) in zip(images, ((1, 2), (0, 1)), strict=True):
        s1_name, s2_name = written[location]["s1"][season], written[location]["s2"][season]
        folder = f"{location:07d}"
        for c, band in enumerate(FUSED_BANDS):
            if band in ("VV", "VH"):
                path, scale = root / "s1" / folder / s1_name / f"{band}.tif", 1.0
            else:
                name = "B8A" if band == "B8A" else f"B{int(band[1:])}"
                path, scale = root / "s2a" / folder / s2_name / f"{name}.tif", 10000.0
            with rasterio.open(path) as f:
                expected = f.read(1, out_shape=(264, 264)).astype(np.float32) / scale
            np.testing.assert_array_equal(image[c], expected, err_msg=f"{band} {path}")
    # same arguments, byte-identical files
    again = write_ssl4eo_s12(tmp_path / "again", locations=2, size=36)
    assert again == written
    some = root / "s2a" / "0000001" / written[1]["s2"][3] / "B8A.tif"
    assert some.read_bytes() == (tmp_path / "again" / some.relative_to(root)).read_bytes()
    with pytest.raises(CloudbenchError, match="no SSL4EO-S12 s1 data"):
        SSL4EOS12Pairs(tmp_path, FUSED_BANDS)


def test_pretrain_on_ssl4eo_streamed(ssl4eo: tuple[Path, list[dict]], tmp_path: Path) -> None:
    root, _ = ssl4eo
    config = default_config("mae", epochs=1, batch_size=4, lr=1e-3, data="stream")
    result = pretrain("mae", ssl4eo=root, out=tmp_path / "mae.pt", config=config,
                      image_size=32, engine=Engine("cpu"), max_samples=6,
                      settings={"decoder_depth": 1})
    assert result.placement == "stream" and result.samples == 6
    assert math.isfinite(result.history[0]["loss"])
    state = read_checkpoint(result.out)
    assert state["data_kind"] == "ssl4eo-s12" and state["data"] == str(root.resolve())
    build_backbone("mae-vit-s16", FUSED_BANDS, weights=result.out)
