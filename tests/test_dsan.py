"""DSAN: the LMMD, its kernel and class weights against hand computations, the ramp, then the
method on small in-memory splits (shapes, determinism, SAR-only prediction, above chance)."""

from __future__ import annotations

import math
from typing import Any, cast

import pytest
import torch
from torch import Tensor

from cloudbench.baselines.dsan import (
    SARNetwork,
    bandwidths,
    class_weights,
    lmmd,
    multi_kernel,
    ramp,
    squared_distances,
)
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.methods import FitContext, create, discover
from cloudbench.harness.source import SourceModel
from cloudbench.models.classifiers import resnet50

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _k(a: float, b: float, sigma: float) -> float:
    return math.exp(-((a - b) ** 2) / sigma)


# --------------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------------


def test_the_bandwidths_are_the_mean_squared_distance_times_powers_of_kernel_mul() -> None:
    # 1-D features 0, 1, 3: squared distances 1, 9, 4; each ordered pair counted once of
    # n² - n = 6: σ = 2·(1 + 9 + 4) / 6 = 14/3
    distances = squared_distances(torch.tensor([[0.0], [1.0], [3.0]]))
    assert distances.tolist() == [[0.0, 1.0, 9.0], [1.0, 0.0, 4.0], [9.0, 4.0, 0.0]]
    sigma = 14 / 3
    assert bandwidths(distances, 2.0, 5).tolist() == pytest.approx(
        [sigma / 4, sigma / 2, sigma, 2 * sigma, 4 * sigma], rel=1e-6)
    assert bandwidths(distances, 3.0, 2).tolist() == pytest.approx([sigma / 3, sigma], rel=1e-6)
    assert bandwidths(distances, 2.0, 1).tolist() == pytest.approx([sigma], rel=1e-6)
    assert bandwidths(distances, 2.0, 3, fix_sigma=2.0).tolist() == pytest.approx([1, 2, 4])
    # the kernel is the sum of one Gaussian per bandwidth
    kernel = multi_kernel(distances, 2.0, 5)
    expected = sum(_k(0.0, 3.0, sigma * 2.0**u) for u in range(-2, 3))
    assert float(kernel[0, 2]) == pytest.approx(expected, rel=1e-6)
    assert float(kernel[1, 1]) == pytest.approx(5.0)  # exp(0) five times
    # the defaults are DSAN's (kernel_mul 2, kernel_num 5)
    assert bandwidths(distances).tolist() == bandwidths(distances, 2.0, 5).tolist()
    assert torch.equal(multi_kernel(distances), kernel)


def test_the_squared_distances_of_many_dimensions() -> None:
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(squared_distances(x), torch.cdist(x, x) ** 2, atol=1e-4)
    assert torch.equal(squared_distances(x).diagonal(), torch.zeros(6))


# --------------------------------------------------------------------------------------------
# LMMD by hand
# --------------------------------------------------------------------------------------------

SOURCE = torch.tensor([[0.0], [1.0]])
TARGET = torch.tensor([[2.0], [4.0]])
PROBS = torch.tensor([[0.8, 0.2], [0.3, 0.7]])  # predicted classes 0 and 1: both shared


def test_lmmd_with_one_fixed_gaussian_by_hand() -> None:
    sigma = 2.0
    s, t = [0.0, 1.0], [2.0, 4.0]
    # source weights: one sample per class, w^s0 = (1, 0), w^s1 = (0, 1)
    # target weights: class 0 (0.8, 0.3) / 1.1, class 1 (0.2, 0.7) / 0.9
    wt0 = [0.8 / 1.1, 0.3 / 1.1]
    wt1 = [0.2 / 0.9, 0.7 / 0.9]
    k_tt = [[_k(a, b, sigma) for b in t] for a in t]  # 1, e^-2; e^-2, 1

    def term(source_index: int, wt: list[float]) -> float:
        ss = 1.0  # k(s_i, s_i) with weight 1·1
        tt = sum(wt[j] * wt[jj] * k_tt[j][jj] for j in range(2) for jj in range(2))
        st = sum(wt[j] * _k(s[source_index], t[j], sigma) for j in range(2))
        return ss + tt - 2 * st

    expected = (term(0, wt0) + term(1, wt1)) / 2  # |C'| = 2
    # written out for class 0: 1 + (0.8² + 0.3² + 2·0.8·0.3·e^-2)/1.1² − 2(0.8e^-2 + 0.3e^-8)/1.1
    e = math.exp
    class0 = 1 + (0.64 + 0.09 + 0.48 * e(-2)) / 1.21 - 2 * (0.8 * e(-2) + 0.3 * e(-8)) / 1.1
    assert term(0, wt0) == pytest.approx(class0, rel=1e-12)
    d, count = lmmd(SOURCE, TARGET, torch.tensor([0, 1]), PROBS, 2, kernel_num=1,
                    fix_sigma=sigma)
    assert int(count) == 2
    assert float(d) == pytest.approx(expected, rel=1e-5)


def test_lmmd_with_the_batch_bandwidth_and_five_kernels_by_hand() -> None:
    # all four features 0, 1, 2, 4: squared distances 1, 4, 16, 1, 9, 4 → σ = 2·35 / 12
    points = [0.0, 1.0, 2.0, 4.0]
    sigma = 2 * 35 / 12
    sigmas = [sigma * 2.0**u for u in range(-2, 3)]

    def k(a: float, b: float) -> float:
        return sum(_k(a, b, sg) for sg in sigmas)

    ws = [[1.0, 0.0], [0.0, 1.0]]  # per class, over the source samples
    wt = [[0.8 / 1.1, 0.3 / 1.1], [0.2 / 0.9, 0.7 / 0.9]]  # per class, over the target
    s, t = points[:2], points[2:]
    expected = 0.0
    for c in range(2):
        expected += sum(ws[c][i] * ws[c][ii] * k(s[i], s[ii]) for i in range(2) for ii in range(2))
        expected += sum(wt[c][j] * wt[c][jj] * k(t[j], t[jj]) for j in range(2) for jj in range(2))
        expected -= 2 * sum(ws[c][i] * wt[c][j] * k(s[i], t[j]) for i in range(2) for j in range(2))
    expected /= 2
    d, _ = lmmd(SOURCE, TARGET, torch.tensor([0, 1]), PROBS, 2)  # DSAN's 2.0, 5
    assert float(d) == pytest.approx(expected, rel=1e-5)


def test_lmmd_vanishes_for_identical_subdomains_and_gives_the_target_a_gradient() -> None:
    x = torch.tensor([[0.0, 1.0], [3.0, -1.0], [2.0, 2.0]])
    label = torch.tensor([0, 1, 1])
    d, _ = lmmd(x, x, label, torch.eye(2)[label], 2)
    assert float(d) == pytest.approx(0.0, abs=1e-6)

    target = TARGET.clone().requires_grad_(True)
    probs = PROBS.clone().requires_grad_(True)
    d, _ = lmmd(SOURCE, target, torch.tensor([0, 1]), probs, 2)
    d.backward()
    assert target.grad is not None and target.grad.abs().sum() > 0
    assert probs.grad is None  # the class weights are constants (detached, as DSAN's code)


# --------------------------------------------------------------------------------------------
# Class weights
# --------------------------------------------------------------------------------------------


def test_class_weights_are_normalised_per_class_and_zero_outside_the_shared_classes() -> None:
    source_label = torch.tensor([0, 0, 2, 2, 2])
    # target predictions: 0, 2, 1 → shared classes {0, 2}; class 1 absent from the source,
    # class 3 neither predicted nor in the source
    probs = torch.tensor([[0.6, 0.1, 0.2, 0.1], [0.1, 0.2, 0.5, 0.2], [0.2, 0.5, 0.2, 0.1]])
    w_s, w_t, shared = class_weights(source_label, probs, 4)
    assert shared.tolist() == [True, False, True, False]
    third = 1 / 3
    assert torch.allclose(w_s, torch.tensor([[0.5, 0, 0, 0], [0.5, 0, 0, 0], [0, 0, third, 0],
                                             [0, 0, third, 0], [0, 0, third, 0]]))
    assert w_t[:, 0].tolist() == pytest.approx([0.6 / 0.9, 0.1 / 0.9, 0.2 / 0.9])
    assert w_t[:, 2].tolist() == pytest.approx([0.2 / 0.9, 0.5 / 0.9, 0.2 / 0.9])
    assert w_t[:, 1].abs().sum() == 0 and w_t[:, 3].abs().sum() == 0


def test_a_class_absent_from_either_side_contributes_nothing() -> None:
    source, target = SOURCE, TARGET
    label = torch.tensor([0, 1])
    # the target predicts class 0 twice: class 1 is not shared, d̂ is class 0's term alone
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    d, count = lmmd(source, target, label, probs, 2, kernel_num=1, fix_sigma=2.0)
    wt = [0.9 / 1.5, 0.6 / 1.5]
    tt = wt[0] ** 2 + wt[1] ** 2 + 2 * wt[0] * wt[1] * _k(2, 4, 2.0)
    st = wt[0] * _k(0, 2, 2.0) + wt[1] * _k(0, 4, 2.0)
    assert int(count) == 1
    assert float(d) == pytest.approx(1 + tt - 2 * st, rel=1e-5)
    # a source sample of a class the target never predicts changes nothing (fixed bandwidth)
    more, _ = lmmd(torch.cat([source, torch.tensor([[7.0]])]), target,
                   torch.tensor([0, 1, 1]), probs, 2, kernel_num=1, fix_sigma=2.0)
    assert float(more) == pytest.approx(float(d), rel=1e-6)
    # no shared class at all: 0
    none, count = lmmd(source, target, torch.tensor([1, 1]), probs, 2)
    assert float(none) == 0.0 and int(count) == 0


# --------------------------------------------------------------------------------------------
# The ramp
# --------------------------------------------------------------------------------------------


def test_the_ramp_goes_from_0_to_nearly_1() -> None:
    assert ramp(0.0) == 0.0
    assert ramp(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert ramp(0.5, 10.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert ramp(0.1, 5.0) == pytest.approx(math.tanh(0.25))  # 2σ(x) − 1 = tanh(x/2)


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------

CLASSES = ("a", "b", "c")


def _split(n: int, seed: int, signal: float = 0.0) -> SplitData:
    """``n`` samples of the 3 classes in turn; with ``signal`` each class shifts its own SAR
    channel (and its own optical channel) by that much."""
    generator = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 3
    s2 = torch.randn(n, 3, 16, 16, generator=generator)
    s1 = torch.randn(n, 3, 16, 16, generator=generator)
    shift = signal * torch.eye(3)[label][:, :, None, None]
    inputs: dict[str, Any] = {"image_s2": s2 + shift, "image_s1": s1 + shift, "label": label}
    return SplitData(inputs, [f"s{i}" for i in range(n)], ["clear"] * n, list(CLASSES))


def _fit(params: dict, seed: int = 0, *, labeled: SplitData | None = None,
         unlabeled: SplitData | None = None, train: TrainConfig | None = None,
         ) -> tuple[object, list[tuple[str, dict]]]:
    torch.manual_seed(seed)
    source = SourceModel(resnet50(3, 3).eval(), list(CLASSES), ["B04", "B03", "B02"])
    method = create("dsan", params)
    logged: list[tuple[str, dict]] = []
    method.fit(FitContext(labeled or _split(6, 1), unlabeled or _split(10, 2), source,
                          Engine("cpu", seed=seed),
                          train or TrainConfig(epochs=2, batch_size=8, amp="off"), 3,
                          "multiclass", seed, lambda stage, entry: logged.append((stage, entry))))
    return method, logged


def test_dsan_trains_f_s_then_the_sar_network_and_predicts_from_sar() -> None:
    method, logged = _fit({"source_batch": 4})
    assert [stage for stage, _ in logged] == ["source", "source", "target", "target"]
    target = [entry for stage, entry in logged if stage == "target"]
    assert {"loss", "ce", "lmmd", "lambda", "classes"} <= set(target[0])
    # λ per epoch: p = 1/2, then 1
    assert target[0]["lambda"] == pytest.approx(ramp(0.5))
    assert target[1]["lambda"] == pytest.approx(ramp(1.0))
    model = method.model  # type: ignore[attr-defined]
    assert isinstance(model, SARNetwork)
    assert model.bottleneck.in_features == 1024 and model.bottleneck.out_features == 2048
    assert int(model.steps) == 4  # 16 samples, batches of 8, 2 epochs
    test = _split(5, 3)
    scores = method.predict(test)  # type: ignore[attr-defined]
    assert scores.shape == (5, 3)
    optical = cast(Tensor, test.inputs["image_s2"])
    blind = SplitData({**test.inputs, "image_s2": torch.zeros_like(optical)}, test.ids,
                      test.cloud_states, test.classes)
    assert torch.equal(scores, method.predict(blind))  # type: ignore[attr-defined]
    assert discover()["dsan"].tasks == ("multiclass",)


def test_dsan_is_deterministic_on_cpu() -> None:
    params = {"source_samples": "all", "ramp": "step"}
    first, first_log = _fit(params, seed=3)
    second, second_log = _fit(params, seed=3)
    test = _split(4, 4)
    assert torch.equal(first.predict(test), second.predict(test))  # type: ignore[attr-defined]
    timing = {"seconds", "samples_per_second"}
    assert [(stage, {k: v for k, v in entry.items() if k not in timing})
            for stage, entry in first_log] == [
        (stage, {k: v for k, v in entry.items() if k not in timing})
        for stage, entry in second_log]


def test_dsan_learns_a_tiny_synthetic_task() -> None:
    # small batches, so that the batch-norm running statistics settle in few epochs (tried on
    # three seeds: 0.78 to 0.92)
    train = TrainConfig(epochs=12, batch_size=8, optimizer="adamw", lr=3e-4, amp="off")
    method, logged = _fit({}, labeled=_split(15, 11, signal=1.0),
                          unlabeled=_split(33, 12, signal=1.0), train=train)
    test = _split(60, 13, signal=1.0)
    predicted = method.predict(test).argmax(dim=1)  # type: ignore[attr-defined]
    accuracy = float((predicted == test.labels).float().mean())
    assert accuracy >= 0.6, accuracy  # chance is 1/3
    lmmd_terms = [entry["lmmd"] for stage, entry in logged if stage == "target"]
    assert all(math.isfinite(v) and v >= -1e-6 for v in lmmd_terms)
