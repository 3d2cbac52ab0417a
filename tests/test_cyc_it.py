"""CycIT: the CycleGAN networks (CycleGAN's parameter counts, shapes, initialisation), the loss
against hand-computed values and its gradient routing, the training sets, the refusals, then
the method on small in-memory splits (stages, SAR-only prediction, determinism, above chance).
The end-to-end run through a spec is the esccs-smoke run (tests/test_esccs.py)."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cloudbench.baselines.cyc_it import (
    CycIT,
    check_size,
    clear_positions,
    cycle_gan_loss,
    paired_inputs,
    unpaired_inputs,
)
from cloudbench.errors import CloudbenchError
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.methods import FitContext, create, discover
from cloudbench.harness.source import SourceModel
from cloudbench.models.classifiers import resnet50
from cloudbench.models.translation import PatchDiscriminator, ResnetGenerator, init_gan_weights
from tests.conftest import make_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------
# The networks
# --------------------------------------------------------------------------------------------


def test_the_networks_have_cyclegans_parameter_counts_and_shapes() -> None:
    # CycleGAN's own print-out for its RGB models: G 11.378 M, D 2.765 M
    generator = ResnetGenerator(3, 3)
    discriminator = PatchDiscriminator(3)
    assert _count(generator) == 11_378_179
    assert _count(discriminator) == 2_764_737
    assert not list(generator.buffers()) and not list(discriminator.buffers())
    with torch.no_grad():
        # the 70 x 70 PatchGAN scores a 30 x 30 grid of a 256 x 256 image
        assert discriminator(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
        assert PatchDiscriminator(3, 8, 3, tail_kernel=3)(
            torch.zeros(1, 3, 64, 64)).shape == (1, 1, 8, 8)
        small = ResnetGenerator(3, 2, width=8, blocks=1)
        out = small(torch.randn(2, 3, 12, 20))
    assert out.shape == (2, 2, 12, 20) and out.abs().max() < 1  # tanh


def test_init_is_cyclegans_normal_with_zero_biases() -> None:
    torch.manual_seed(0)
    generator = init_gan_weights(ResnetGenerator(3, 3, width=16, blocks=2))
    weights = torch.cat([m.weight.flatten() for m in generator.modules()
                         if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)])
    biases = torch.cat([m.bias.flatten() for m in generator.modules()
                        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)])
    weights = weights.detach()
    assert float(weights.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(weights.std()) == pytest.approx(0.02, rel=0.02)
    assert torch.equal(biases, torch.zeros_like(biases))


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


class Scale(nn.Module):
    """``factor`` times the first ``out`` channels of the input."""

    def __init__(self, factor: float, out: int) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor))
        self.out = out

    def forward(self, x: Tensor) -> Tensor:
        return self.factor * x[:, :self.out]


def constant(value: float, channels: int) -> nn.Conv2d:
    """A "discriminator" that scores every patch ``value``."""
    conv = nn.Conv2d(channels, 1, 1)
    nn.init.zeros_(conv.weight)
    nn.init.constant_(conv.bias, value)
    return conv


def test_the_loss_by_hand() -> None:
    # one pixel: SAR x = (0.5, -0.5), optical y = (0.2, 0.4, -0.6); both generators read 3
    # channels (SAR padded with a 0); G = 2 · first 3, F = 0.25 · first 2; D_opt scores 0.3,
    # D_SAR scores 0.8
    x = torch.tensor([0.5, -0.5]).reshape(1, 2, 1, 1)
    y = torch.tensor([0.2, 0.4, -0.6]).reshape(1, 3, 1, 1)
    g, f = Scale(2.0, 3), Scale(0.25, 2)
    terms = cycle_gan_loss(x, y, g, f, constant(0.3, 3), constant(0.8, 2), cycle_weight=10.0,
                           identity_factor=0.5, paired_weight=10.0)

    def mean_abs(values: list[float]) -> float:
        return sum(abs(v) for v in values) / len(values)

    # G(x) = (1, -1, 0); F(G(x)) = (0.25, -0.25) -> |x - 0.5 x| = (0.25, 0.25)
    # F(y) = (0.05, 0.1); G(F(y)) = (0.1, 0.2, 0) against (0.2, 0.4, -0.6)
    cycle = mean_abs([0.25, 0.25]) + mean_abs([0.1, 0.2, 0.6])
    # G(y) = (0.4, 0.8, -1.2) against y; F(x) = (0.125, -0.125) against x
    identity = mean_abs([0.2, 0.4, 0.6]) + mean_abs([0.375, 0.375])
    gan = (0.3 - 1) ** 2 + (0.8 - 1) ** 2
    d = 0.5 * ((0.3 - 1) ** 2 + 0.3 ** 2) + 0.5 * ((0.8 - 1) ** 2 + 0.8 ** 2)
    # G(x) = (1, -1, 0) against y; F(y) = (0.05, 0.1) against x
    paired = mean_abs([0.8, 1.4, 0.6]) + mean_abs([0.45, 0.6])
    expected = {"cycle": cycle, "identity": identity, "gan": gan, "d": d, "paired": paired}
    assert {k: float(terms[k]) for k in expected} == pytest.approx(expected, abs=1e-6)
    total = gan + 10 * cycle + 5 * identity + d + 10 * paired
    assert float(terms["loss"].detach()) == pytest.approx(total, abs=1e-5)
    # no identity term, no paired term
    plain = cycle_gan_loss(x, y, g, f, constant(0.3, 3), constant(0.8, 2), cycle_weight=2.0,
                           identity_factor=0.0)
    assert "paired" not in plain and float(plain["identity"]) == 0.0
    assert float(plain["loss"].detach()) == pytest.approx(gan + 2 * cycle + d, abs=1e-6)


def test_each_network_gets_only_its_own_gradients() -> None:
    torch.manual_seed(0)
    g = init_gan_weights(ResnetGenerator(3, 3, width=4, blocks=1))
    f = init_gan_weights(ResnetGenerator(3, 2, width=4, blocks=1))
    d_opt = init_gan_weights(PatchDiscriminator(3, width=4, layers=2))
    d_sar = init_gan_weights(PatchDiscriminator(2, width=4, layers=2))
    nets = [g, f, d_opt, d_sar]
    x, y = torch.rand(2, 2, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1

    def grads() -> list[list[Tensor]]:
        out = [[p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                for p in net.parameters()] for net in nets]
        for net in nets:
            net.zero_grad(set_to_none=True)
        return out

    def pad(t: Tensor) -> Tensor:
        return torch.cat([t, torch.zeros_like(t[:, :1])], dim=1) if t.shape[1] == 2 else t

    cycle_gan_loss(x, y, g, f, d_opt, d_sar, paired_weight=3.0)["loss"].backward()
    total = grads()

    # the generators' own terms, through the live discriminators
    fake_y, fake_x = g(pad(x)), f(y)
    own = ((d_opt(fake_y) - 1).pow(2).mean() + (d_sar(fake_x) - 1).pow(2).mean()
           + 10 * ((f(fake_y) - x).abs().mean() + (g(pad(fake_x)) - y).abs().mean())
           + 5 * ((g(y) - y).abs().mean() + (f(pad(x)) - x).abs().mean())
           + 3 * ((fake_y - y).abs().mean() + (fake_x - x).abs().mean()))
    own.backward()
    generators = grads()
    # the discriminators' own terms, on detached translations
    fake_y, fake_x = g(pad(x)).detach(), f(y).detach()
    (0.5 * ((d_opt(y) - 1).pow(2).mean() + d_opt(fake_y).pow(2).mean())
     + 0.5 * ((d_sar(x) - 1).pow(2).mean() + d_sar(fake_x).pow(2).mean())).backward()
    discriminators = grads()

    # (a bias before an instance norm has a gradient of 0 up to rounding: atol 1e-5)
    for k, alone in ((0, generators), (1, generators), (2, discriminators), (3, discriminators)):
        assert max(float(t.abs().max()) for t in total[k]) > 1e-3
        for got, want in zip(total[k], alone[k], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The training sets
# --------------------------------------------------------------------------------------------


def _rows(n: int) -> dict[str, Any]:
    """Columns whose every pixel is the row's position (SAR) or 100 + it (optical)."""
    index = torch.arange(n, dtype=torch.float32)[:, None, None, None]
    return {"image_s1": index.expand(n, 2, 4, 4).clone(),
            "image_s2": (100 + index).expand(n, 3, 4, 4).clone()}


def _which(column: Tensor, offset: float = 0.0) -> list[int]:
    return [int(v) for v in (column[:, 0, 0, 0] - offset).tolist()]


def test_pretraining_draws_sar_from_all_and_optical_from_clear_samples() -> None:
    states = ["clear", "cloudy", "clear", "thin", "cloudy", "clear", "cloudy"]
    rows = unpaired_inputs(_rows(7), states, samples=5, seed=0)
    sar, optical = _which(rows["image_s1"]), _which(rows["image_s2"], 100)
    assert len(sar) == len(optical) == 5
    assert len(set(sar)) == 5  # five distinct samples of the seven
    assert set(optical) == {0, 2, 5}  # the clear ones, repeated to five as evenly as possible
    assert sorted(np.bincount(optical, minlength=6)[[0, 2, 5]].tolist()) == [1, 2, 2]
    # every SAR image once when all fit; seeded
    everything = unpaired_inputs(_rows(7), states, samples=100, seed=0)
    assert sorted(_which(everything["image_s1"])) == list(range(7))
    again = unpaired_inputs(_rows(7), states, samples=5, seed=0)
    assert torch.equal(again["image_s1"], rows["image_s1"])
    assert not torch.equal(unpaired_inputs(_rows(7), states, samples=5, seed=1)["image_s1"],
                           rows["image_s1"])


def test_the_pairs_are_clear_samples_own_images() -> None:
    states = ["clear", "cloudy", "clear", "clear", "thin", "clear"]
    pairs = paired_inputs(_rows(6), states, pairs=3, seed=0)
    sar, optical = _which(pairs["image_s1"]), _which(pairs["image_s2"], 100)
    assert sar == optical and len(set(sar)) == 3 and set(sar) <= {0, 2, 3, 5}
    assert sar == sorted(sar)
    assert _which(paired_inputs(_rows(6), states, pairs=None, seed=0)["image_s1"]) == [0, 2, 3, 5]
    with pytest.raises(CloudbenchError, match="the train split has none"):
        clear_positions(["cloudy", "thin"])


def test_sizes_and_parameters_are_refused_with_a_reason(tmp_path) -> None:
    check_size(32, 24, 3)
    with pytest.raises(CloudbenchError, match="multiples of 4 and at least 24 pixels"):
        check_size(20, 20, 3)
    with pytest.raises(CloudbenchError, match="the run's are 18 × 32"):
        check_size(18, 32, 1)
    with pytest.raises(CloudbenchError, match="not a classifier"):
        create("cyc-it", {"classifier": "spl"})
    with pytest.raises(CloudbenchError, match="pretrain_epochs and finetune_epochs"):
        create("cyc-it", {"translation_train": {"epochs": 3}})
    with pytest.raises(CloudbenchError, match=r"unknown training settings \['beta1'\]"):
        create("cyc-it", {"translation_train": {"beta1": 0.5}})
    # a store whose train split has no clear sample is refused before anything trains
    cloudy = make_store(tmp_path / "cloudy", n=6)  # every sample under random cloud
    with pytest.raises(CloudbenchError, match="leave cyc-it out for this dataset"):
        create("cyc-it", {}).check_data(cloudy, {"cloudy": cloudy})
    clear = make_store(tmp_path / "clear", n=6, clear=True)
    create("cyc-it", {}).check_data(clear, {"clear": clear})


def test_defaults() -> None:
    method = create("cyc-it", {})
    assert isinstance(method, CycIT)
    p = method.params
    assert (p.pairs, p.cycle_weight, p.identity_factor, p.generator_width, p.generator_blocks,
            p.discriminator_layers, p.classifier, p.classifier_inputs) == (
        20, 10.0, 0.5, 64, 9, 3, "finetune-optical", "translated")
    assert discover()["cyc-it"].tasks == ("multiclass", "multilabel")


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------

CLASSES = ("a", "b", "c")
SIZE = 16


def _split(n: int, seed: int) -> SplitData:
    """``n`` samples of the 3 classes in turn, each class a spatial pattern (row stripes,
    column stripes, a checkerboard) that both modalities show, under independent noise; all
    clear. A per-image offset would not do: instance norm in the generators removes it."""
    generator = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 3
    i = torch.arange(SIZE)
    patterns = torch.stack([(i[:, None] // 2 % 2).expand(SIZE, SIZE),
                            (i[None, :] // 2 % 2).expand(SIZE, SIZE),
                            (i[:, None] // 2 + i[None, :] // 2) % 2]).float() * 2 - 1
    shown = patterns[label][:, None]
    s2 = shown.expand(n, 3, SIZE, SIZE) + 0.5 * torch.randn(n, 3, SIZE, SIZE, generator=generator)
    s1 = shown.expand(n, 2, SIZE, SIZE) + 0.5 * torch.randn(n, 2, SIZE, SIZE, generator=generator)
    statistics = {"image_s2": (torch.full((3,), 0.2), torch.full((3,), 0.05)),
                  "image_s1": (torch.tensor([-10.0, -17.0]), torch.tensor([3.0, 3.0]))}
    return SplitData({"image_s2": s2, "image_s1": s1, "label": label},
                     [f"s{seed}-{k}" for k in range(n)], ["clear"] * n, list(CLASSES),
                     bands={"image_s2": ["B04", "B03", "B02"], "image_s1": ["VV", "VH"]},
                     statistics=statistics)


SMALL = {"generator_width": 8, "generator_blocks": 1, "discriminator_width": 8,
         "discriminator_layers": 2, "pretrain_epochs": 10, "finetune_epochs": 10, "pairs": 20,
         "translation_train": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.0,
                               "batch_size": 8, "amp": "off"}}


def _fit(params: dict, seed: int = 0, unlabeled: int = 33) -> tuple[Any, list[tuple[str, dict]]]:
    torch.manual_seed(seed)
    source = SourceModel(resnet50(3, 3).eval(), list(CLASSES), ["B04", "B03", "B02"])
    method = create("cyc-it", {**SMALL, **params})
    logged: list[tuple[str, dict]] = []
    train = TrainConfig(epochs=30, batch_size=8, optimizer="adamw", lr=1e-2, amp="off")
    method.fit(FitContext(_split(15, 11), _split(unlabeled, 12), source, Engine("cpu", seed=seed),
                          train, 3, "multiclass", seed,
                          lambda stage, entry: logged.append((stage, entry))))
    return method, logged


@pytest.fixture(scope="module")
def fitted() -> tuple[Any, list[tuple[str, dict]]]:
    return _fit({})


def test_cycit_pretrains_then_finetunes_then_classifies_from_sar(fitted) -> None:
    method, logged = fitted
    stages = [stage for stage, _ in logged]
    assert stages[:20] == ["cycit-pretrain"] * 10 + ["cycit-finetune"] * 10
    assert set(stages[20:]) == {"head"}
    pre, fine = logged[0][1], logged[10][1]
    assert {"loss", "gan", "cycle", "identity", "d"} <= set(pre) and "paired" not in pre
    assert "paired" in fine
    # 48 SAR images (all training samples) beside 48 clear optical ones, batches of 8
    assert pre["samples_per_second"] > 0 and pre["seconds"] > 0
    test = _split(9, 3)
    scores = method.predict(test)
    assert scores.shape == (9, 3)
    optical = cast(Tensor, test.inputs["image_s2"])
    blind = SplitData({**test.inputs, "image_s2": torch.zeros_like(optical)}, test.ids,
                      test.cloud_states, test.classes, bands=test.bands,
                      statistics=test.statistics)
    assert torch.equal(scores, method.predict(blind))  # the optical image is never read
    # the translation's pixel metrics against the optical image, and no scene overlap
    rows = method.extra_metrics(test)
    metric = dict(zip(rows["metric"], rows["value"], strict=True))
    assert {"RMSE", "MAE", "PSNR", "SSIM", "SAM"} <= set(metric)
    assert metric["scene_overlap"] == 0 and 0 < metric["RMSE"] < 0.2


def test_cycit_learns_a_tiny_synthetic_task(fitted) -> None:
    # tried on three seeds of the method: 0.58, 0.72, 0.85 (seed 0, this one); chance is 1/3;
    # classifier_inputs optical: 0.27 (baselines/cyc_it.py, "Classification")
    method, _ = fitted
    test = _split(60, 13)
    accuracy = float((method.predict(test).argmax(dim=1) == test.labels).float().mean())
    assert accuracy >= 0.5, accuracy


def test_cycit_is_deterministic_on_cpu(fitted) -> None:
    first, first_log = fitted
    second, second_log = _fit({})
    test = _split(6, 4)
    assert torch.equal(first.predict(test), second.predict(test))
    timing = {"seconds", "samples_per_second"}
    assert [(s, {k: v for k, v in e.items() if k not in timing}) for s, e in first_log] == [
        (s, {k: v for k, v in e.items() if k not in timing}) for s, e in second_log]


def test_every_training_sample_labelled_leaves_nothing_unlabelled_to_translate() -> None:
    # labeled_per_class: all (the multi-label protocols): an empty unlabelled split
    method, logged = _fit({"pretrain_epochs": 1, "finetune_epochs": 1}, unlabeled=0)
    assert [stage for stage, _ in logged][:2] == ["cycit-pretrain", "cycit-finetune"]
    assert method.predict(_split(3, 5)).shape == (3, 3)
