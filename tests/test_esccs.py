"""ESCCS: the IRM weights, the loss composition, the F1 filter, and the method end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_store
from torch import Tensor

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness import results
from cloudbench.harness.runner import run_leaderboard
from cloudbench.harness.spec import expand, load_spec
from cloudbench.harness.transfer import (
    UNLABELED,
    confident,
    pooled,
    probabilities,
    soft_cross_entropy,
)
from cloudbench.methods.esccs import esccs_loss, irm_weights

# Auxiliary models' logits for a batch of three samples, three classes.
OPT_LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
SAR_LOGITS = torch.tensor([[0.0, 0.0, 0.0], [0.0, 4.0, 1.0], [1.0, 0.0, 0.0]])


def _confidences(logits: Tensor) -> list[float]:
    """Each row's softmax probability of its own argmax, computed by hand."""
    out = []
    for row in logits.tolist():
        exps = [math.exp(v) for v in row]
        out.append(max(exps) / sum(exps))
    return out


def test_irm_batch_weights_by_hand() -> None:
    s_opt, s_sar = _confidences(OPT_LOGITS), _confidences(SAR_LOGITS)
    # s_opt = [0.7870, 0.5761, 0.8509], s_sar = [0.3333, 0.9362, 0.5761]
    assert s_opt[0] == pytest.approx(math.e**2 / (math.e**2 + 2))
    assert s_sar[0] == pytest.approx(1 / 3)
    rho_opt, rho_sar = irm_weights(torch.tensor(s_opt), torch.tensor(s_sar), "batch")
    expected_opt = sum(s_sar) / sum(s_opt)
    assert rho_opt.tolist() == pytest.approx([expected_opt] * 3, rel=1e-6)
    assert rho_sar.tolist() == pytest.approx([1 / expected_opt] * 3, rel=1e-6)
    # optical is more confident here, so it is damped and SAR boosted
    assert expected_opt < 1 < 1 / expected_opt


def test_irm_sample_and_off_weights_by_hand() -> None:
    s_opt, s_sar = _confidences(OPT_LOGITS), _confidences(SAR_LOGITS)
    rho_opt, rho_sar = irm_weights(torch.tensor(s_opt), torch.tensor(s_sar), "sample")
    pairs = list(zip(s_opt, s_sar, strict=True))
    assert rho_opt.tolist() == pytest.approx([b / a for a, b in pairs], rel=1e-6)
    assert rho_sar.tolist() == pytest.approx([a / b for a, b in pairs], rel=1e-6)
    assert rho_sar[1] < 1 < rho_sar[0]  # sample 1: SAR is superior; sample 0: optical is
    rho_opt, rho_sar = irm_weights(torch.tensor(s_opt), torch.tensor(s_sar), "off")
    assert rho_opt.tolist() == rho_sar.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("mode", ["batch", "sample", "off"])
def test_loss_composition(mode: str) -> None:
    logits = torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4], [-1.0, 2.0, 0.0]])
    q_opt = torch.softmax(OPT_LOGITS, dim=1)
    q_sar = torch.softmax(SAR_LOGITS, dim=1)
    y_s = torch.eye(3)[[0, 1, 1]]  # hard source pseudo-labels
    s_opt, s_sar = q_opt.max(1).values, q_sar.max(1).values
    terms = esccs_loss(logits, q_opt, q_sar, y_s, s_opt, s_sar, mode)  # type: ignore[arg-type]

    log_p = [[v - math.log(sum(math.exp(u) for u in row)) for v in row] for row in logits.tolist()]

    def ce(target: Tensor, i: int) -> float:
        return -sum(t * lp for t, lp in zip(target[i].tolist(), log_p[i], strict=True))

    rho_opt, rho_sar = irm_weights(s_opt, s_sar, mode)  # type: ignore[arg-type]
    expected = sum(rho_opt[i] * ce(q_opt, i) + rho_sar[i] * ce(q_sar, i) + ce(y_s, i)
                   for i in range(3)) / 3
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(terms["ce_source"]) == pytest.approx(sum(ce(y_s, i) for i in range(3)) / 3,
                                                      rel=1e-5)
    # the per-term curves of the history are these means, under these names
    assert float(terms["ce_opt"]) == pytest.approx(sum(ce(q_opt, i) for i in range(3)) / 3,
                                                   rel=1e-5)
    assert float(terms["ce_sar"]) == pytest.approx(sum(ce(q_sar, i) for i in range(3)) / 3,
                                                   rel=1e-5)


def test_loss_gradient_follows_the_weights() -> None:
    """With IRM the less confident modality's pseudo-labels pull harder on the target model."""
    logits = torch.zeros(1, 2, requires_grad=True)
    q_opt, q_sar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    y_s = torch.tensor([[0.5, 0.5]])
    s_opt, s_sar = torch.tensor([0.9]), torch.tensor([0.6])
    esccs_loss(logits, q_opt, q_sar, y_s, s_opt, s_sar, "sample")["loss"].backward()
    assert logits.grad is not None
    # d/dlogit_1 = rho_opt*(p1 - 0) + rho_sar*(p1 - 1) + (p1 - 0.5) with p1 = 0.5
    expected = (0.6 / 0.9) * 0.5 + (0.9 / 0.6) * -0.5 + 0.0
    assert float(logits.grad[0, 1]) == pytest.approx(expected, rel=1e-6)
    assert float(logits.grad[0, 1]) < 0  # pushed towards SAR's class, the inferior modality's


def test_soft_cross_entropy_matches_torch_for_hard_labels() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 1, 1, 2])
    ours = soft_cross_entropy(logits, torch.eye(4)[labels])
    theirs = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_confidence_filter() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7], [0.5, 0.5]])
    assert confident(probs, 0.6).tolist() == [True, False, True, False]
    assert confident(probs, 0.5).tolist() == [True, True, True, True]
    assert confident(probs, None).all()
    # the mask lives on the probabilities' device (meta: a device without data), keep-all too
    meta = probs.to("meta")
    assert confident(meta, None).device.type == "meta"
    assert confident(meta, 0.6).device.type == "meta"


def test_probabilities_divide_the_logits_by_the_temperature() -> None:
    """softmax(z / T): T = 2 flattens, T = 0.5 sharpens (KD-S distils at T > 1)."""
    logits = torch.tensor([[2.0, 0.0, -2.0]])
    for temperature in (0.5, 1.0, 2.0):
        expected = torch.exp(logits / temperature)
        expected /= expected.sum()
        assert torch.allclose(probabilities(logits, temperature), expected, atol=1e-7)
    assert probabilities(logits, 2.0)[0, 0] < probabilities(logits)[0, 0]


def test_pooled_hides_unlabeled_labels() -> None:
    from cloudbench.harness.data import SplitData

    labeled = SplitData({"label": torch.tensor([0, 1]), "image_s2": torch.zeros(2, 3, 4, 4)},
                        ["a", "b"], ["clear", "clear"])
    unlabeled = SplitData({"label": torch.tensor([2, 2, 0]), "image_s2": torch.ones(3, 3, 4, 4)},
                          ["c", "d", "e"], ["clear"] * 3)
    both = pooled(labeled, unlabeled)
    assert both["label"].tolist() == [0, 1, UNLABELED, UNLABELED, UNLABELED]
    assert both["image_s2"].shape == (5, 3, 4, 4)
    assert both["image_s2"][2:].eq(1).all()


# --------------------------------------------------------------------------------------------
# End to end through the harness
# --------------------------------------------------------------------------------------------

CLASSES = ("Forest", "Water", "Urban/Built-up")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("esccs-stores")
    return {
        "target": make_store(root / "target", n=150, size=16, classes=CLASSES, seed=1,
                             signal=True),
        "source": make_store(root / "source", n=120, size=16, classes=CLASSES, seed=2,
                             signal=True, clear=True),
    }


def _spec(tmp: Path, stores: dict[str, Path], methods: list[dict]) -> Path:
    spec = {
        "name": "esccs-unit",
        "datasets": {"target": {"path": str(stores["target"])}},
        "sources": {"clear": {"path": str(stores["source"]),
                              "train": {"epochs": 6, "batch_size": 16, "optimizer": "adamw",
                                        "lr": 1e-3, "weight_decay": 0.01}}},
        "methods": methods,
        "seeds": [0],
        "labeled_per_class": 5,
        "bootstrap": 0,
        "device": "cpu",
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


ESCCS_TRAIN = {"epochs": 12, "batch_size": 32, "lr": 0.02}


@pytest.fixture(scope="module")
def finished(stores: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("esccs-lb")
    methods = [
        {"method": "esccs", "params": {"f1_min_confidence": 0.4}, "train": ESCCS_TRAIN},
        {"method": "esccs", "name": "esccs-no-irm", "params": {"irm": "off"},
         "train": ESCCS_TRAIN},
    ]
    out = tmp / "out"
    run_leaderboard(load_spec(_spec(tmp, stores, methods)), out, progress=False)
    return out


def test_esccs_trains_above_chance_end_to_end(finished: Path) -> None:
    table = results.read_table(finished)
    oa = table[(table["metric"] == "OA") & (table["stratum"] == "all")].set_index("method")
    assert set(oa.index) == {"esccs", "esccs-no-irm"}
    assert oa.loc["esccs", "value"] >= 0.6, oa["value"]
    assert oa.loc["esccs-no-irm", "value"] >= 0.6, oa["value"]


def test_esccs_logs_every_stage_and_the_irm_weights(finished: Path) -> None:
    histories = results.read_histories(finished)
    mine = histories[histories["method"] == "esccs"]
    assert set(mine["stage"]) == {"source", "aux_s2", "aux_s1", "target"}
    target = mine[mine["stage"] == "target"]
    assert {"loss", "ce_opt", "ce_sar", "ce_source", "rho_opt", "rho_sar", "loss_s2",
            "loss_s1"} <= set(target["term"])
    assert len(target[target["term"] == "loss"]) == ESCCS_TRAIN["epochs"]
    rho = target[target["term"].isin(["rho_opt", "rho_sar"])]
    assert not (rho["value"] == 1.0).all()  # the mechanism is on
    off = histories[(histories["method"] == "esccs-no-irm") & histories["term"].str.startswith(
        "rho_")]
    assert (off["value"] == 1.0).all()


def test_esccs_per_modality_loss_plot_is_rendered(finished: Path) -> None:
    assert (finished / "loss_curves.png").stat().st_size > 0
    text = (finished / "leaderboard.md").read_text()
    assert "| esccs-no-irm |" in text and "| esccs |" in text


def test_f1_filter_that_keeps_nothing_is_a_clear_error(stores, tmp_path: Path) -> None:
    methods = [{"method": "esccs", "params": {"f1_min_confidence": 1.0},
                "train": {"epochs": 1, "batch_size": 32}}]
    spec = load_spec(_spec(tmp_path, stores, methods))
    with pytest.raises(CloudbenchError, match="f1_min_confidence 1.0 keeps no sample"):
        run_leaderboard(spec, tmp_path / "out", progress=False)
    assert results.read_table(tmp_path / "out").empty


def test_esccs_parameters_are_validated(stores, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    methods = [{"method": "esccs", "params": {"irm": "sometimes"}}]
    path = _spec(tmp_path, stores, methods)
    with pytest.raises(CloudbenchError, match="irm"):
        load_spec(path)
    assert main(["leaderboard", "run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "irm" in err and "'batch', 'sample' or 'off'" in err


def test_entries_of_one_method_need_their_own_names(stores, tmp_path: Path) -> None:
    methods = [{"method": "esccs"}, {"method": "esccs", "params": {"irm": "off"}}]
    with pytest.raises(CloudbenchError, match="several entries are named esccs"):
        load_spec(_spec(tmp_path, stores, methods))
    named = [{"method": "esccs"}, {"method": "esccs", "name": "esccs-no-irm"}]
    runs = expand(load_spec(_spec(tmp_path, stores, named)))
    assert [r.name for r in runs] == ["esccs", "esccs-no-irm"]
    assert len({r.key for r in runs}) == 2


def test_results_name_the_rows_by_entry(finished: Path) -> None:
    table = results.read_table(finished)
    assert set(table["method"]) == {"esccs", "esccs-no-irm"}


# --------------------------------------------------------------------------------------------
# The paper's specs
# --------------------------------------------------------------------------------------------

ENTRIES = {"finetune-optical", "kd-s", "finetune-sar", "sl", "kdhn", "tlf", "esccs",
           "esccs-no-irm", "moco-v2", "moco-v3", "mae", "spl", "ttl", "dsan", "cyc-it"}


def test_paper_specs_are_valid_and_expand_to_the_tables() -> None:
    spec = load_spec("esccs")
    assert set(spec.sources) == {"NR", "AID"}
    assert set(spec.datasets) == {"sen12ms-cloud", "hunan-cloud"}
    assert {m.name or m.method for m in spec.methods} == ENTRIES
    assert (spec.train.lr, spec.train.weight_decay, spec.train.epochs, spec.train.batch_size) == (
        1e-2, 5e-4, 200, 64)
    # every entry on both datasets and sources, but SPL on SEN12MS Cloud only (its pairs)
    runs = expand(spec)
    assert len(runs) == 2 * 2 * (len(ENTRIES) - 1) * 3 + 2 * 3
    assert {r.dataset for r in runs if r.method == "spl"} == {"sen12ms-cloud"}
    swept = load_spec("esccs-clouded-fraction")
    assert swept.sweep is not None and swept.sweep.values[0] == 0.1
    assert len(expand(swept)) == 10 * 2 * 3
    assert {m.name or m.method for m in load_spec("esccs-smoke").methods} == ENTRIES


def test_set_and_entry_filters_change_the_spec(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from cloudbench.harness.spec import restrict

    spec = load_spec("esccs", ["sources.NR.model=elsewhere.pt", "seeds=[0]"])
    assert spec.sources["NR"].model == Path("elsewhere.pt") and spec.seeds == [0]
    only = restrict(restrict(spec, "datasets", ["sen12ms-cloud"]), "methods", ["esccs"])
    assert [(r.dataset, r.name) for r in expand(only)] == [("sen12ms-cloud", "esccs")] * 2
    with pytest.raises(CloudbenchError, match="no datasets named nope"):
        restrict(spec, "datasets", ["nope"])
    # a source checkpoint that is not there stops the run with one clear line
    from cloudbench.config import load_yaml

    smoke = load_yaml("leaderboards", "esccs-smoke.yaml")
    smoke["sources"] = {"NR": {"model": str(tmp_path / "missing.pt")}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(smoke))
    code = main(["leaderboard", "run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "o"),
                 "--methods", "esccs"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no source model at" in err and "cloudbench source train" in err


# the entries of esccs-smoke that the demo (standard-smoke, run by test_standard.py) does not
# run in the same form: the demo's other entries are these methods on the same world
NOT_IN_THE_DEMO = "esccs,moco-v3"


def test_smoke_spec_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "smoke"
    command = ["leaderboard", "run", "esccs-smoke", "--out", str(out),
               "--methods", NOT_IN_THE_DEMO]
    assert main(command) == 0
    table = results.read_table(out)
    oa = table[(table["metric"] == "OA") & (table["stratum"] == "all")]
    assert set(oa["method"]) == set(NOT_IN_THE_DEMO.split(","))
    for name in ("leaderboard.md", "leaderboard.html", "loss_curves.png",
                 "cloud_covered_vs_free.png"):
        assert (out / name).exists(), name
    capsys.readouterr()
    assert main(command) == 0
    assert "0 runs (2 already done)" in capsys.readouterr().out


def test_early_fusion_hard_targets_and_sample_irm_train(tmp_path: Path) -> None:
    """The other options run through fit and predict (the end-to-end runs use the defaults)."""
    from cloudbench.harness.data import SplitData
    from cloudbench.harness.engine import Engine, TrainConfig
    from cloudbench.harness.methods import FitContext, create
    from cloudbench.harness.source import SourceModel
    from cloudbench.models.classifiers import resnet50

    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> SplitData:
        inputs = {"image_s2": torch.randn(n, 3, 16, 16, generator=generator),
                  "image_s1": torch.randn(n, 3, 16, 16, generator=generator),
                  "label": torch.arange(n) % 3}
        return SplitData(inputs, [f"s{i}" for i in range(n)], ["clear"] * n, list(CLASSES))

    source = SourceModel(resnet50(3, 3).eval(), list(CLASSES), ["B04", "B03", "B02"])
    method = create("esccs", {"fusion": "early", "targets": "hard", "irm": "sample",
                              "f1_min_confidence": None})
    logged: list[tuple[str, dict]] = []
    method.fit(FitContext(split(6), split(10), source, Engine("cpu"),
                          TrainConfig(epochs=1, batch_size=8), 3, "multiclass", 0,
                          lambda stage, entry: logged.append((stage, entry))))
    assert [stage for stage, _ in logged] == ["source", "aux_s2", "aux_s1", "target"]
    target = logged[-1][1]
    assert "loss_s2" not in target and target["rho_opt"] > 0  # early fusion: no per-modality parts
    assert method.predict(split(5)).shape == (5, 3)


def test_fit_damps_the_more_confident_modality_by_the_confidence_ratio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S_opt comes from the optical auxiliary model and S_SAR from the SAR one (issue 19: the two
    swapped passed every other test). The auxiliary models are replaced by constant ones of
    known confidence, optical 0.9 (class 0) and SAR 0.6 (class 1), f_S by a constant 0.8 on
    class 2: step F2 must weight the optical term by 0.6/0.9 (damped) and the SAR term by
    0.9/0.6 (boosted), in the loss it trains on and in the logged weights."""
    from typing import Any

    from cloudbench.harness.data import SplitData
    from cloudbench.harness.engine import Engine, TrainConfig
    from cloudbench.harness.methods import FitContext, create
    from cloudbench.methods import esccs

    p_opt, p_sar, p_source = [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]

    class Constant(torch.nn.Module):
        """The same logits for every input, whatever step F1 does to its one weight."""

        def __init__(self, probs: list[float]) -> None:
            super().__init__()
            self.register_buffer("logits", torch.tensor(probs).log())
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: Tensor) -> Tensor:
            return self.logits.expand(x.shape[0], -1) + 0 * self.unused

    # optical images have 3 channels, SAR ones 2: each auxiliary model gets its own constant
    monkeypatch.setattr(esccs, "googlenet",
                        lambda channels, k: Constant(p_opt if channels == 3 else p_sar))
    monkeypatch.setattr(esccs, "fit_source", lambda context: None)
    monkeypatch.setattr(esccs, "predict_source", lambda engine, model, inputs: torch.tensor(
        p_source).log().expand(len(inputs["image_s2"]), -1))
    calls: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []
    real_loss = esccs.esccs_loss

    def spy(*args: Any, **kwargs: Any) -> dict[str, Tensor]:
        terms = real_loss(*args, **kwargs)
        logits, target_opt, target_sar = args[:3]
        calls.append(({"logits": logits.detach(), "opt": target_opt, "sar": target_sar}, terms))
        return terms

    monkeypatch.setattr(esccs, "esccs_loss", spy)
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> SplitData:
        inputs = {"image_s2": torch.randn(n, 3, 16, 16, generator=generator),
                  "image_s1": torch.randn(n, 2, 16, 16, generator=generator),
                  "label": torch.arange(n) % 3}
        return SplitData(inputs, [f"s{i}" for i in range(n)], ["clear"] * n, list(CLASSES))

    logged: list[tuple[str, dict]] = []
    method = create("esccs", {"irm": "batch"})
    method.fit(FitContext(split(3), split(5), None, Engine("cpu"),
                          TrainConfig(epochs=1, batch_size=4), 3, "multiclass", 0,
                          lambda stage, entry: logged.append((stage, entry))))

    damped, boosted = 0.6 / 0.9, 0.9 / 0.6
    target = [entry for stage, entry in logged if stage == "target"]
    assert len(target) == 1
    assert target[0]["rho_opt"] == pytest.approx(damped, rel=1e-5)
    assert target[0]["rho_sar"] == pytest.approx(boosted, rel=1e-5)
    assert len(calls) == 2  # 8 samples, batches of 4
    for batch, terms in calls:
        # the rho_opt-weighted target is the optical model's, the rho_SAR-weighted one SAR's
        assert torch.allclose(batch["opt"], torch.tensor([p_opt] * 4), atol=1e-6)
        assert torch.allclose(batch["sar"], torch.tensor([p_sar] * 4), atol=1e-6)
        expected = 0.0
        for row in batch["logits"].tolist():
            log_p = [v - math.log(sum(math.exp(u) for u in row)) for v in row]

            def ce(target_row: list[float], log_p: list[float] = log_p) -> float:
                return -sum(t * lp for t, lp in zip(target_row, log_p, strict=True))

            expected += damped * ce(p_opt) + boosted * ce(p_sar) + ce(p_source)
        assert float(terms["loss"].detach()) == pytest.approx(expected / 4, rel=1e-5)
        assert float(terms["rho_opt"]) == pytest.approx(damped, rel=1e-5)
        assert float(terms["rho_sar"]) == pytest.approx(boosted, rel=1e-5)
