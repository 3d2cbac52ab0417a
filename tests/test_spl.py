"""SPL (baselines/spl.py): its loss, curriculum and self-generated samples on hand-made tensors,
then the method end to end through the runner on a tiny demo store with cloud-free targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import yaml
from conftest import make_store
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from cloudbench.baselines.spl import (
    SPL,
    MaskChannel,
    Params,
    corrupt,
    curriculum_shares,
    self_generated,
    spl_loss,
    stage_epochs,
    stage_sizes,
    texture_complexity,
)
from cloudbench.build import run_build
from cloudbench.builders import demo
from cloudbench.config import load_recipe
from cloudbench.errors import CloudbenchError
from cloudbench.harness import cr_stage, results
from cloudbench.harness.data import CLEAR_KEY, SplitData
from cloudbench.harness.methods import create
from cloudbench.harness.runner import run_leaderboard
from cloudbench.harness.spec import load_spec
from cloudbench.harness.stream import Column
from cloudbench.models.cloud_removal import load_cr_checkpoint
from cloudbench.models.translation import PatchDiscriminator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# The loss


def test_l1_and_ssim_terms_by_hand() -> None:
    # constant images: σ = 0, so SSIM = (2ab + C1) / (a² + b² + C1), C1 = (0.01 · 1)²
    a, b = 0.3, 0.5
    fake, real = torch.full((2, 3, 16, 16), a), torch.full((2, 3, 16, 16), b)
    terms = spl_loss(fake, real, None, l1_weight=2.0, ssim_weight=3.0)
    ssim = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    assert terms["l1"].item() == pytest.approx(b - a, rel=1e-5)
    assert terms["ssim"].item() == pytest.approx(ssim, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(2 * (b - a) + 3 * (1 - ssim), rel=1e-5)
    assert terms["adv"].item() == 0 and terms["disc"].item() == 0
    # any images: the SSIM is torchmetrics' with the 11 × 11 Gaussian window, σ 1.5, range 1
    g = torch.Generator().manual_seed(0)
    fake, real = torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)
    terms = spl_loss(fake, real, None)
    expected = _ssim(fake, real)
    assert terms["ssim"].item() == pytest.approx(float(expected), rel=1e-6)
    assert terms["l1"].item() == pytest.approx(float((fake - real).abs().mean()), rel=1e-6)
    # the default weights: 1 and 1
    assert terms["loss"].item() == pytest.approx(
        float((fake - real).abs().mean() + 1 - expected), rel=1e-6)
    same = spl_loss(real, real, None)
    assert same["loss"].item() == pytest.approx(0.0, abs=1e-6)


def _ssim(a: Tensor, b: Tensor) -> Tensor:
    """torchmetrics' SSIM, 11 × 11 Gaussian window, σ 1.5, data range 1."""
    value = structural_similarity_index_measure(a, b, gaussian_kernel=True, sigma=1.5,
                                                kernel_size=11, data_range=1.0)
    assert isinstance(value, Tensor)
    return value


class _Mean(nn.Module):
    """D(x) = w · (mean over bands of x), per pixel: a discriminator with known outputs."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x: Tensor) -> Tensor:
        return self.w * x.mean(dim=1, keepdim=True)


def test_lsgan_terms_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    fake, real = torch.rand(2, 3, 12, 12, generator=g), torch.rand(2, 3, 12, 12, generator=g)
    w = 1.7
    terms = spl_loss(fake, real, _Mean(w), l1_weight=0.5, ssim_weight=0.25,
                     adversarial_weight=0.1)
    d_fake, d_real = w * fake.mean(1), w * real.mean(1)
    adv = ((d_fake - 1) ** 2).mean()
    disc = 0.5 * (((d_real - 1) ** 2).mean() + (d_fake ** 2).mean())
    assert terms["adv"].item() == pytest.approx(float(adv), rel=1e-5)
    assert terms["disc"].item() == pytest.approx(float(disc), rel=1e-5)
    total = 0.5 * terms["l1"] + 0.25 * (1 - terms["ssim"]) + 0.1 * adv + disc
    assert terms["loss"].item() == pytest.approx(float(total), rel=1e-5)
    # the default weights: 1, 1 and 0.01
    default = spl_loss(fake, real, _Mean(w))
    expected = terms["l1"] + (1 - terms["ssim"]) + 0.01 * adv + disc
    assert default["loss"].item() == pytest.approx(float(expected), rel=1e-5)
    # a zero adversarial weight runs no discriminator
    none = spl_loss(fake, real, _Mean(w), adversarial_weight=0.0)
    assert none["adv"].item() == 0 and none["disc"].item() == 0


def test_each_network_gets_only_its_own_gradients() -> None:
    torch.manual_seed(0)
    generator = nn.Conv2d(3, 3, 3, padding=1)
    discriminator = PatchDiscriminator(3, width=8, layers=2, tail_kernel=3)
    x, real = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    weights = {"l1_weight": 1.0, "ssim_weight": 0.5, "adversarial_weight": 0.3}

    def grads(module: nn.Module) -> list[Tensor]:
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                for p in module.parameters()]

    def zero() -> None:
        for p in [*generator.parameters(), *discriminator.parameters()]:
            p.grad = None

    spl_loss(torch.sigmoid(generator(x)), real, discriminator, **weights)["loss"].backward()
    g_total, d_total = grads(generator), grads(discriminator)

    zero()  # the discriminator's own term alone
    fake = torch.sigmoid(generator(x)).detach()
    d_own = 0.5 * ((discriminator(real) - 1).pow(2).mean() + discriminator(fake).pow(2).mean())
    d_own.backward()
    d_alone = grads(discriminator)

    zero()  # the generator's own terms alone (through the live discriminator)
    fake = torch.sigmoid(generator(x))
    ssim = _ssim(fake, real)
    g_own = (torch.nn.functional.l1_loss(fake, real) + 0.5 * (1 - ssim)
             + 0.3 * (discriminator(fake) - 1).pow(2).mean())
    g_own.backward()
    g_alone = grads(generator)

    assert all(d.abs().sum() > 0 for d in d_total)
    for got, want in zip(d_total, d_alone, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    for got, want in zip(g_total, g_alone, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Texture, corruption, curriculum


def test_texture_ranks_flat_before_checkerboard() -> None:
    size = 16
    flat = torch.full((3, size, size), 0.4)
    cells = torch.arange(size) // 2  # 2 px cells (a 1 px one has no Sobel gradient)
    checker = ((cells[:, None] + cells[None, :]) % 2).float()
    checkerboard = checker.expand(3, -1, -1) * 0.8
    ramp = torch.linspace(0, 1, size).expand(3, size, -1)
    # textured outside the region, flat inside: only the region counts
    half = checkerboard.clone()
    half[:, :, : size // 2] = 0.4
    images = torch.stack([checkerboard, ramp, flat, half])
    region = torch.ones(4, size, size, dtype=torch.bool)
    region[3, :, size // 2 - 1:] = False  # inside the flat half, off its border
    scores = texture_complexity(images, region)
    assert scores[2].item() == pytest.approx(0, abs=1e-6)
    assert scores[3].item() == pytest.approx(0, abs=1e-6)
    assert torch.argsort(scores, stable=True).tolist() == [2, 3, 1, 0]
    assert texture_complexity(images[:1], torch.zeros(1, size, size, dtype=torch.bool)) == 0


def test_corruption_is_exact() -> None:
    g = torch.Generator().manual_seed(2)
    clean = torch.rand(3, 4, 8, 8, generator=g)
    region = torch.rand(3, 8, 8, generator=g) > 0.5
    cloud = torch.tensor([0.9, 0.8, 0.7, 0.6])
    out = corrupt(clean, region, cloud)
    inside = region.unsqueeze(1).expand_as(clean)
    assert torch.equal(out[inside], cloud.reshape(1, -1, 1, 1).expand_as(clean)[inside])
    assert torch.equal(out[~inside], clean[~inside])


def _split(n_clear: int, n_donor: int, size: int = 8) -> SplitData:
    """An in-memory standardised split: clear samples first, then donors with thick pixels in
    rows 0–1 and thin ones in row 2."""
    g = torch.Generator().manual_seed(3)
    n = n_clear + n_donor
    mean, std = torch.tensor([0.2, 0.3, 0.4]), torch.tensor([0.1, 0.05, 0.2])
    reflectance = torch.rand(n, 3, size, size, generator=g) * 0.5
    mask = torch.zeros(n, size, size, dtype=torch.uint8)
    mask[n_clear:, :2] = 2
    mask[n_clear:, 2] = 1
    reflectance[n_clear:, :, :2] = torch.tensor([0.9, 0.85, 0.8]).reshape(1, 3, 1, 1)
    image = (reflectance - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)
    inputs: dict[str, Column] = {
        "image_s2": image, "cloud_mask": mask, "label": torch.zeros(n, dtype=torch.long),
        "cloud_fraction": (mask > 0).float().mean(dim=(1, 2))}
    states = ["clear"] * n_clear + ["thick"] * n_donor
    return SplitData(inputs, [str(i) for i in range(n)], states, ["a"],
                     bands={"image_s2": ["B04", "B03", "B02"]},
                     statistics={"image_s2": (mean, std)})


@pytest.mark.parametrize("mask", ["cloudy", "thick"])
def test_self_generated_samples(mask: str) -> None:
    split = _split(n_clear=6, n_donor=3)
    units = cr_stage.Units(split, sar=False)
    params = Params(mask=mask)
    inputs, texture, cloud = self_generated([split], units, units, params, 0, torch.device("cpu"))
    assert set(inputs) == {"image_s2", CLEAR_KEY, "cloud_mask"} and texture.shape == (6,)
    # the cloud: the donors' thick pixels, per band
    torch.testing.assert_close(cloud, torch.tensor([0.9, 0.85, 0.8]))
    clean = units.optical(cast(Tensor, split.inputs["image_s2"])[:6])
    torch.testing.assert_close(units.optical(inputs[CLEAR_KEY]), clean)
    region = inputs["cloud_mask"] == 2
    assert set(inputs["cloud_mask"].unique().tolist()) == {0, 2}
    assert region[:, :2].all() and region[:, 2].all() == (mask == "cloudy")
    assert not region[:, 3:].any()
    corrupted = units.optical(inputs["image_s2"])
    inside = region.unsqueeze(1).expand_as(corrupted)
    torch.testing.assert_close(corrupted[inside],
                               cloud.reshape(1, 3, 1, 1).expand_as(corrupted)[inside])
    torch.testing.assert_close(corrupted[~inside], clean[~inside])
    # a fixed reflectance instead of the estimate
    fixed = Params(mask=mask, cloud_reflectance=0.75)
    _, _, cloud = self_generated([split], units, units, fixed, 0, torch.device("cpu"))
    assert cloud.tolist() == [0.75] * 3
    wrong = Params(cloud_reflectance=[0.5, 0.5])
    with pytest.raises(CloudbenchError, match="2 values, the run reads 3"):
        self_generated([split], units, units, wrong, 0, torch.device("cpu"))


def test_self_generated_samples_need_clear_and_clouded_images() -> None:
    units = cr_stage.Units(_split(2, 2), sar=False)
    with pytest.raises(CloudbenchError, match="cloud-free training images"):
        self_generated([_split(0, 3)], units, units, Params(), 0, torch.device("cpu"))
    with pytest.raises(CloudbenchError, match="borrows the cloud masks"):
        self_generated([_split(3, 0)], units, units, Params(), 0, torch.device("cpu"))


def test_curriculum_shares_and_stages() -> None:
    assert curriculum_shares(3, 0.5) == [0.5, 0.75, 1.0]
    assert curriculum_shares(1, 0.5) == [1.0]
    assert curriculum_shares(5, 0.2) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert stage_sizes(10, [0.5, 0.75, 1.0]) == [5, 8, 10]
    assert stage_sizes(3, [0.1, 1.0]) == [1, 3]
    assert stage_epochs(10, 3) == [3, 3, 4] and stage_epochs(6, 3) == [2, 2, 2]


def test_mask_channel() -> None:
    mask = torch.tensor([[[0, 1], [2, 0]]], dtype=torch.uint8)
    for shaped in (mask, mask.unsqueeze(1)):
        cloudy = MaskChannel("cloudy")({"cloud_mask": shaped})
        thick = MaskChannel("thick")({"cloud_mask": shaped})
        assert cloudy.shape == (1, 1, 2, 2) and cloudy.dtype == torch.float32
        assert cloudy.flatten().tolist() == [0, 1, 1, 0]
        assert thick.flatten().tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize(("params", "message"), [
    ({"model": "sscr"}, "needs SAR"),
    ({"loss": "l1"}, "its own loss"),
    ({"cr_weights": "x.pt"}, "would skip both"),
    ({"cr_train": {"epochs": 5}}, "pretrain_epochs and finetune_epochs"),
    ({"stages": 4, "pretrain_epochs": 3}, "at least stages"),
    ({"cloud_reflectance": 1.5}, r"in \[0, 1\]"),
    ({"mask": "thin"}, "mask"),
])
def test_parameters_are_validated(params: dict[str, Any], message: str) -> None:
    with pytest.raises(CloudbenchError, match=message):
        create("spl", params)


def test_defaults() -> None:
    method = create("spl", {})
    assert isinstance(method, SPL) and not method.uses_sar and method.extra_channels == 1
    p = method.params
    assert (p.model, p.pairs, p.mask, p.stages, p.start_share, p.classifier) == (
        "unet", 20, "cloudy", 3, 0.5, "finetune-optical")
    assert not p.variance


# --------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spl")
    # 25 patches of 32 px on 2018-07-06: 20 train (10 clear, 10 clouded), 5 test
    settings = ["world_size=160", "tile_size=160", "patch_size=32", "max_acquisitions=1",
                "start=2018-07-06", "clouds.resolution=40", "clear_target=true"]
    run_build("demo", load_recipe(demo.Config, "demo", settings), root / "target", workers=1,
              progress=False)
    source = make_store(root / "source", n=24, size=32, seed=2, signal=True, clear=True)
    spec = {
        "name": "spl-unit",
        "datasets": {"target": {"path": str(root / "target")}},
        "sources": {"fixture": {"path": str(source),
                                "train": {"epochs": 1, "batch_size": 12, "optimizer": "adamw",
                                          "lr": 1e-3}}},
        "methods": [{"method": "spl", "params": {
            "model_args": {"widths": [8, 16]}, "discriminator_width": 8,
            "discriminator_layers": 2, "stages": 3, "pretrain_epochs": 3, "finetune_epochs": 2,
            "pairs": 4}}],
        "seeds": [0],
        "metrics": ["OA", "PSNR"],
        "labeled_per_class": 5,
        "bootstrap": 0,
        "device": "cpu",
        "train": {"epochs": 2, "batch_size": 8, "optimizer": "adamw", "lr": 1e-3},
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = root / "out"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        run_leaderboard(load_spec(path), out, progress=False)
    return out


def test_spl_runs_end_to_end(finished: Path) -> None:
    table = results.read_table(finished)
    rows = table[(table["method"] == "spl") & (table["stratum"] == "all")]
    assert {"OA", "PSNR"} <= set(rows["metric"])
    assert np.isfinite(rows[rows["metric"] == "PSNR"]["value"]).all()
    histories = results.read_histories(finished)
    assert {"spl-pretrain", "spl-finetune"} <= set(histories["stage"])
    pre = histories[histories["stage"] == "spl-pretrain"]
    assert sorted(pre["epoch"].unique()) == [1, 2, 3]  # numbered across the stages
    stages = pre[pre["term"] == "curriculum_stage"].sort_values("epoch")["value"].tolist()
    sizes = pre[pre["term"] == "samples"].sort_values("epoch")["value"].tolist()
    assert stages == [1, 2, 3] and sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert {"loss", "l1", "ssim", "adv", "disc"} <= set(pre["term"])
    fine = histories[histories["stage"] == "spl-finetune"]
    assert sorted(fine["epoch"].unique()) == [1, 2]
    (model,) = (finished / "runs").glob("*/cr-model.pt")
    net, meta = load_cr_checkpoint(model)
    assert net.s1_bands == 1 and meta["loss"] == "spl" and len(meta["trained_on"]["ids"]) == 4


def test_a_store_without_cloud_free_targets_is_refused_before_training(tmp_path: Path) -> None:
    plain = make_store(tmp_path / "plain", n=12, size=16)
    with pytest.raises(CloudbenchError, match="no cloud-free targets"):
        create("spl", {}).check_data(plain, {"plain": plain})
