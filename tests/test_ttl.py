"""TTL: the chain source → intermediate → SAR target, on small tensors (the end-to-end check
that it learns is in tests/test_baselines.py)."""

from __future__ import annotations

import pytest
import torch

from cloudbench.baselines.kd_s import kd_loss
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.methods import FitContext, create
from cloudbench.harness.source import SourceModel
from cloudbench.models.classifiers import resnet50

CLASSES = ("a", "b", "c")


def _split(n: int, seed: int) -> SplitData:
    generator = torch.Generator().manual_seed(seed)
    inputs = {"image_s2": torch.randn(n, 3, 16, 16, generator=generator),
              "image_s1": torch.randn(n, 2, 16, 16, generator=generator),
              "label": torch.arange(n) % 3}
    return SplitData(inputs, [f"s{i}" for i in range(n)], ["clear"] * n, list(CLASSES))


def _fit(intermediate: str, seed: int = 0) -> tuple[object, list[tuple[str, dict]]]:
    torch.manual_seed(seed)
    source = SourceModel(resnet50(3, 3).eval(), list(CLASSES), ["B04", "B03", "B02"])
    method = create("ttl", {"intermediate": intermediate})
    logged: list[tuple[str, dict]] = []
    method.fit(FitContext(_split(6, 1), _split(10, 2), source, Engine("cpu", seed=seed),
                          TrainConfig(epochs=1, batch_size=8), 3, "multiclass", seed,
                          lambda stage, entry: logged.append((stage, entry))))
    return method, logged


@pytest.mark.parametrize("intermediate", ["fused", "optical"])
def test_the_chain_trains_source_then_intermediate_then_sar(intermediate: str) -> None:
    method, logged = _fit(intermediate)
    assert [stage for stage, _ in logged] == ["source", "intermediate", "target"]
    assert {"ce", "kl"} <= set(logged[1][1]) and {"ce", "kl"} <= set(logged[2][1])
    test = _split(5, 3)
    assert method.predict(test).shape == (5, 3)  # type: ignore[attr-defined]
    # the target reads SAR alone: the optical view changes nothing
    blind = SplitData({**test.inputs, "image_s2": torch.zeros_like(test.inputs["image_s2"])},
                      test.ids, test.cloud_states, test.classes)
    assert torch.equal(method.predict(test), method.predict(blind))  # type: ignore[attr-defined]


def test_ttl_is_deterministic_on_cpu() -> None:
    first, _ = _fit("fused", seed=3)
    second, _ = _fit("fused", seed=3)
    test = _split(4, 4)
    assert torch.equal(first.predict(test), second.predict(test))  # type: ignore[attr-defined]


def test_each_step_is_hintons_loss() -> None:
    """Both steps use kd_loss: on hand-made logits, alpha 0.5, T 4."""
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    label = torch.tensor([0, -1])  # the second sample unlabelled
    terms = kd_loss(student, teacher, label, 4.0, 0.5)
    ce = -torch.log_softmax(student[0], 0)[0]
    p = torch.softmax(teacher / 4, 1)
    kl = (p * (p.log() - torch.log_softmax(student / 4, 1))).sum(1).mean()
    assert terms["ce"] == pytest.approx(float(ce), abs=1e-6)
    assert terms["kl"] == pytest.approx(float(kl), abs=1e-6)
    assert terms["loss"] == pytest.approx(float(0.5 * ce + 0.5 * 16 * kl), abs=1e-5)


def test_ttl_handles_multiclass_only() -> None:
    from cloudbench.harness.methods import discover

    assert discover()["ttl"].tasks == ("multiclass",)
