"""The ESCCS paper's comparators: Finetune (SAR only), KD-S, KDHN, TLF.

Each loss or filter against a hand computation, then all four end to end through the runner.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import make_store
from torch import Tensor, nn
from torch.nn import functional as F

from cloudbench.baselines.finetune_sar import build_model
from cloudbench.baselines.kd_s import kd_loss
from cloudbench.baselines.tlf import LateFusion
from cloudbench.harness import results
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.runner import run_leaderboard
from cloudbench.harness.spec import load_spec
from cloudbench.harness.transfer import UNLABELED, pseudo_labeled
from cloudbench.models.classifiers import encoder, googlenet, resnet50

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# KD-S: Hinton's loss
# --------------------------------------------------------------------------------------------

STUDENT = torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4], [-1.0, 2.0, 0.0]])
TEACHER = torch.tensor([[3.0, 0.0, -1.0], [0.0, 1.0, 1.0], [0.5, 0.5, 2.0]])


def _log_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [v / temperature for v in row]
    norm = math.log(sum(math.exp(v) for v in scaled))
    return [v - norm for v in scaled]


def _kl(teacher: list[float], student: list[float], temperature: float) -> float:
    log_t, log_s = _log_softmax(teacher, temperature), _log_softmax(student, temperature)
    return sum(math.exp(a) * (a - b) for a, b in zip(log_t, log_s, strict=True))


@pytest.mark.parametrize(("temperature", "alpha"), [(4.0, 0.5), (2.0, 0.9), (1.0, 0.0)])
def test_kd_loss_is_alpha_ce_plus_t2_kl_by_hand(temperature: float, alpha: float) -> None:
    label = torch.tensor([0, UNLABELED, 2])
    terms = kd_loss(STUDENT, TEACHER, label, temperature, alpha)
    rows_s, rows_t = STUDENT.tolist(), TEACHER.tolist()
    ce = (-_log_softmax(rows_s[0])[0] - _log_softmax(rows_s[2])[2]) / 2  # labeled samples only
    kl = sum(_kl(t, s, temperature) for t, s in zip(rows_t, rows_s, strict=True)) / 3  # all
    assert float(terms["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(terms["kl"]) == pytest.approx(kl, rel=1e-5)
    expected = alpha * ce + (1 - alpha) * temperature**2 * kl
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-5)
    # one labeled sample: ce is its own cross-entropy (the mean over one)
    one = kd_loss(STUDENT, TEACHER, torch.tensor([UNLABELED, 1, UNLABELED]), temperature, alpha)
    assert float(one["ce"]) == pytest.approx(-_log_softmax(rows_s[1])[1], rel=1e-5)


def test_kd_loss_of_a_batch_without_labels_is_the_distillation_term() -> None:
    student = STUDENT.clone().requires_grad_(True)
    label = torch.full((3,), UNLABELED)
    terms = kd_loss(student, TEACHER, label, 4.0, 0.5)
    assert float(terms["ce"]) == 0.0
    assert float(terms["loss"].detach()) == pytest.approx(0.5 * 16 * float(terms["kl"]),
                                                          rel=1e-6)
    terms["loss"].backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_kd_loss_gradient_vanishes_when_the_student_copies_the_teacher() -> None:
    student = TEACHER.clone().requires_grad_(True)
    kd_loss(student, TEACHER, torch.full((3,), UNLABELED), 4.0, 0.0)["loss"].backward()
    assert student.grad is not None
    assert student.grad.abs().max() < 1e-6


# --------------------------------------------------------------------------------------------
# KDHN: which samples are kept, with which targets
# --------------------------------------------------------------------------------------------


def test_kdhn_keeps_the_labeled_and_the_confident_unlabeled_samples() -> None:
    # teacher probabilities (max): 0.8, 0.4, 0.5, 0.9, 0.34 (by construction below)
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.4, 0.35, 0.25], [0.25, 0.5, 0.25],
                          [0.05, 0.05, 0.9], [0.33, 0.33, 0.34]])
    logits = probs.log()
    label = torch.tensor([UNLABELED, 1, UNLABELED, UNLABELED, UNLABELED])
    keep, target = pseudo_labeled(label, logits, 0.5)
    # sample 1 is labeled (kept whatever its confidence); 2 is exactly at the threshold
    assert keep.tolist() == [True, True, True, True, False]
    assert target.tolist() == [0, 1, 1, 2, 2]  # true label where labeled, else the argmax
    keep, _ = pseudo_labeled(label, logits, 0.85)
    assert keep.tolist() == [False, True, False, True, False]
    keep, target = pseudo_labeled(label, logits, None)
    assert keep.all() and target.tolist() == [0, 1, 1, 2, 2]


# --------------------------------------------------------------------------------------------
# Finetune (SAR only): what is frozen
# --------------------------------------------------------------------------------------------

RESNET_STAGES = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]


def _stage(name: str) -> str:
    return name.split(".")[1]  # "network.<child>.…"


@pytest.mark.parametrize("trainable_from", ["layer2", "layer3", "layer4", "fc"])
def test_finetune_sar_trains_exactly_the_layers_from_trainable_from_on(
    trainable_from: str,
) -> None:
    torch.manual_seed(0)
    source = resnet50(3, 5).eval()
    before = copy.deepcopy(source.state_dict())
    model = build_model(source, 3, 4, trainable_from)
    trained = RESNET_STAGES[RESNET_STAGES.index(trainable_from):]
    grads = {_stage(n) for n, p in model.named_parameters() if p.requires_grad}
    assert grads == set(trained)
    assert model.network.fc.out_features == 4

    initial = copy.deepcopy(model.state_dict())
    inputs = {"image_s1": torch.randn(8, 3, 16, 16), "label": torch.arange(8) % 4}

    def loss(m: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(m(batch["image_s1"]), batch["label"])}

    Engine("cpu").fit(model, inputs, loss, TrainConfig(epochs=1, batch_size=4, amp="off"))
    changed = {_stage(k) for k, v in model.state_dict().items()
               if not torch.equal(v, initial[k]) and not k.endswith("num_batches_tracked")}
    assert changed == set(trained)  # weights and batch-norm statistics: only the trained part
    model.train()
    assert not model.network.layer1.training and model.network.fc.training
    # the shared source model is not touched
    assert all(torch.equal(v, before[k]) for k, v in source.state_dict().items())
    assert isinstance(source.fc, nn.Linear) and source.fc.out_features == 5


def test_finetune_sar_with_other_sar_channels_trains_a_new_first_convolution() -> None:
    model = build_model(resnet50(3, 5), 2, 4, "layer4")
    assert model.network.conv1.in_channels == 2
    assert {_stage(n) for n, p in model.named_parameters() if p.requires_grad} == {
        "conv1", "layer4", "fc"}
    assert model(torch.randn(2, 2, 16, 16)).shape == (2, 4)


# --------------------------------------------------------------------------------------------
# TLF: the fused classifier
# --------------------------------------------------------------------------------------------


def test_tlf_classifies_the_concatenated_optical_and_sar_features() -> None:
    optical, optical_dim = encoder(resnet50(3, 5))
    sar, sar_dim = encoder(googlenet(3, 4))
    model = LateFusion(optical, optical_dim, sar, sar_dim, num_classes=4)
    assert model.head.in_features == 2048 + 1024
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"head"}
    batch = {"image_s2": torch.randn(2, 3, 16, 16), "image_s1": torch.randn(2, 3, 16, 16)}
    model.train()
    assert not model.optical.training and not model.sar.training
    features = model.features(batch)
    assert features.shape == (2, 3072)
    assert torch.allclose(model(batch), model.head(features))  # before set_scale: identity
    scaled = model.set_scale(torch.cat([features, 2 * features + 1]))
    assert torch.allclose(scaled.mean(0), torch.zeros(3072), atol=1e-4)
    model.eval()
    assert torch.allclose(model(batch), model.head(scaled[:2]), atol=1e-5)


# --------------------------------------------------------------------------------------------
# End to end through the runner
# --------------------------------------------------------------------------------------------

CLASSES = ("Forest", "Water", "Urban/Built-up")
METHODS = ("finetune-optical", "finetune-sar", "kd-s", "sl", "kdhn", "tlf", "ttl", "dsan")
TRAIN: dict[str, Any] = {"epochs": 10, "batch_size": 32, "optimizer": "adamw", "lr": 1e-3}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("baselines")
    target = make_store(root / "target", n=240, size=16, classes=CLASSES, seed=1, signal=True)
    source = make_store(root / "source", n=120, size=16, classes=CLASSES, seed=2, signal=True,
                        clear=True)
    spec = {
        "name": "baselines-unit",
        "datasets": {"target": {"path": str(target)}},
        "sources": {"fixture": {"path": str(source),
                                "train": {"epochs": 6, "batch_size": 32, "optimizer": "adamw",
                                          "lr": 1e-3, "weight_decay": 0.01}}},
        "methods": [
            {"method": "finetune-optical", "train": {**TRAIN, "epochs": 15, "batch_size": 16}},
            # 15 labeled samples only: one batch per epoch, more epochs
            {"method": "sl", "train": {"epochs": 15, "batch_size": 8, "lr": 0.01}},
            {"method": "finetune-sar", "train": {**TRAIN, "epochs": 15, "batch_size": 16}},
            {"method": "kd-s", "train": TRAIN},
            # f_S is confident on nearly every sample here: a high bar, so that some are dropped
            {"method": "kdhn", "params": {"min_confidence": 0.9}, "train": TRAIN},
            {"method": "tlf", "train": TRAIN},
            {"method": "ttl", "train": TRAIN},
            {"method": "dsan", "train": TRAIN},
        ],
        "seeds": [0],
        "labeled_per_class": 5,
        "bootstrap": 0,
        "device": "cpu",
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = root / "out"
    # Models are initialised from torch's global generator: seed it, so that the result does
    # not depend on which tests ran before.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        run_leaderboard(load_spec(path), out, progress=False)
    return out


def test_each_comparator_learns_the_task(finished: Path) -> None:
    table = results.read_table(finished)
    overall = table[(table["metric"] == "OA") & (table["stratum"] == "all")]
    oa = overall.set_index("method")["value"]
    assert set(oa.index) == set(METHODS)
    for method in METHODS:
        assert oa[method] >= 0.5, oa.to_dict()  # chance is 1/3


def test_each_comparator_logs_its_stages_and_terms(finished: Path) -> None:
    histories = results.read_histories(finished)
    stages = histories.groupby("method")["stage"].unique().map(set).to_dict()
    assert stages == {"finetune-optical": {"head"}, "sl": {"target"},
                      "finetune-sar": {"target"}, "kd-s": {"source", "target"},
                      "kdhn": {"source", "target"}, "tlf": {"source", "sar", "fusion"},
                      "ttl": {"source", "intermediate", "target"},
                      "dsan": {"source", "target"}}
    terms = histories.groupby(["method", "stage"])["term"].unique().map(set)
    assert {"loss", "ce", "kl"} <= terms[("kd-s", "target")]
    assert {"loss", "loss_s2", "loss_s1", "kept"} <= terms[("kdhn", "target")]
    kept = histories[(histories["method"] == "kdhn") & (histories["term"] == "kept")]["value"]
    assert kept.nunique() == 1 and 0 < kept.iloc[0] < 1  # the filter dropped some
    loss = histories[(histories["method"] == "kd-s") & (histories["stage"] == "target")
                     & (histories["term"] == "loss")]
    assert sorted(loss["epoch"]) == list(range(1, TRAIN["epochs"] + 1))


def test_profile_rows_count_the_inference_models(finished: Path) -> None:
    table = results.read_table(finished)
    params = table[(table["kind"] == "profile") & (table["metric"] == "parameters")]
    parameters = params.set_index("method")["value"]
    # TLF: ResNet-50 trunk + GoogLeNet trunk + head; KDHN: two GoogLeNet trunks + head
    assert parameters["tlf"] > parameters["finetune-sar"] > parameters["kdhn"]
    assert parameters["kdhn"] > parameters["kd-s"]
