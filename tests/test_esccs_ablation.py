"""ESCCS's ablation parameters (issue 20): each changes Loss_T exactly as its docstring says,
on hand-made tensors and through ``fit`` with teachers of known outputs; the ablation specs;
the ablation smoke spec run from the command line, rendered with one table per factor."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from cloudbench.cli import main
from cloudbench.errors import CloudbenchError
from cloudbench.harness import results
from cloudbench.harness.data import SplitData
from cloudbench.harness.engine import Engine, TrainConfig
from cloudbench.harness.methods import FitContext, create
from cloudbench.harness.spec import entry_factors, expand, load_spec
from cloudbench.methods import esccs
from cloudbench.methods.esccs import esccs_loss, folds, source_targets, with_true_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("Forest", "Water", "Urban/Built-up")


# --------------------------------------------------------------------------------------------
# Hand computations (plain Python, not the code under test)
# --------------------------------------------------------------------------------------------


def _ce(logits: list[float], target: list[float]) -> float:
    """−Σ_k t_k log softmax(logits)_k."""
    norm = math.log(sum(math.exp(v) for v in logits))
    return -sum(t * (v - norm) for t, v in zip(target, logits, strict=True))


LOGITS = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]]
Q_OPT = [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]
Q_SAR = [[0.2, 0.5, 0.3], [0.1, 0.8, 0.1]]
Y_S = [[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]]  # f_S: confident on sample 0 (0.9), not on 1 (0.4)
S_OPT, S_SAR = [0.7, 0.6], [0.5, 0.8]
RHO_OPT, RHO_SAR = (0.5 + 0.8) / (0.7 + 0.6), (0.7 + 0.6) / (0.5 + 0.8)  # IRM batch: eq. 7


def _loss(target_source: Tensor) -> dict[str, Tensor]:
    t = torch.tensor
    return esccs_loss(t(LOGITS), t(Q_OPT), t(Q_SAR), target_source, t(S_OPT), t(S_SAR), "batch")


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_source_weight_scales_the_source_term_by_lambda(weight: float) -> None:
    """Loss_T = mean_i(ρ_opt·CE(Q'_opt) + ρ_SAR·CE(Q'_SAR) + λ·CE(Y_S)): λ = 0 leaves the two
    auxiliary terms, 0.5 halves the source term, 2 doubles it (no clipping at 1)."""
    target = source_targets(torch.tensor(Y_S), torch.tensor(Y_S), weight, None)
    assert torch.allclose(target, weight * torch.tensor(Y_S))
    terms = _loss(target)
    expected = sum(RHO_OPT * _ce(z, o) + RHO_SAR * _ce(z, s) + weight * _ce(z, y)
                   for z, o, s, y in zip(LOGITS, Q_OPT, Q_SAR, Y_S, strict=True)) / 2
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-6)
    # the logged term is the weighted one, batch mean
    source = sum(weight * _ce(z, y) for z, y in zip(LOGITS, Y_S, strict=True)) / 2
    assert float(terms["ce_source"]) == pytest.approx(source, rel=1e-6, abs=1e-12)


def test_the_default_weight_is_the_papers_sum_of_three_terms() -> None:
    """λ = 1 and no filter: target_source is Y_S itself, Loss_T the paper's eq. 3 with IRM."""
    params = esccs.Params()
    assert params.source_weight == 1.0 and params.source_min_confidence is None
    target = source_targets(torch.tensor(Y_S), torch.tensor(Y_S), params.source_weight, None)
    assert torch.equal(target, torch.tensor(Y_S))


def test_source_min_confidence_zeroes_unconfident_samples_and_divides_by_the_batch() -> None:
    """Threshold 0.5: sample 1 (f_S's confidence 0.4) loses its source term, sample 0 (0.9)
    keeps it, and the mean divides by the batch of 2, not by the 1 kept sample."""
    target = source_targets(torch.tensor(Y_S), torch.tensor(Y_S), 1.0, 0.5)
    assert torch.allclose(target[0], torch.tensor(Y_S[0])) and torch.all(target[1] == 0)
    terms = _loss(target)
    auxiliary = [RHO_OPT * _ce(z, o) + RHO_SAR * _ce(z, s)
                 for z, o, s in zip(LOGITS, Q_OPT, Q_SAR, strict=True)]
    expected = (auxiliary[0] + _ce(LOGITS[0], Y_S[0]) + auxiliary[1]) / 2
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-6)
    assert float(terms["ce_source"]) == pytest.approx(_ce(LOGITS[0], Y_S[0]) / 2, rel=1e-6)
    # "at least": a confidence equal to the threshold keeps its term; with λ, w_i = λ
    target = source_targets(torch.tensor(Y_S), torch.tensor(Y_S), 0.5, 0.4)
    assert torch.allclose(target, 0.5 * torch.tensor(Y_S))
    # the filter reads f_S's confidence, not the rows it weights (hard Y_S: one-hot rows)
    hard = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    target = source_targets(hard, torch.tensor(Y_S), 1.0, 0.5)
    assert torch.equal(target, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_with_true_labels_replaces_the_labelled_rows_by_their_one_hot_class() -> None:
    probs = torch.tensor([[0.2, 0.45, 0.35], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    out = with_true_labels(probs, torch.tensor([2, -1, 1]))
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 1.0], [0.3, 0.3, 0.4], [0.0, 1.0, 0.0]]))
    # class 0, and labels that do not reach the last class: still K columns
    out = with_true_labels(probs, torch.tensor([0, -1, -1]))
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]]))


def test_folds_partition_the_kept_samples() -> None:
    keep = torch.tensor([True, False, True, True, True, False, True, True, True, True, False])
    for k in (2, 3, 4, 8):
        fold = folds(keep, k, seed=0)
        assert torch.equal(fold[~keep], torch.full((3,), -1))  # non-kept samples: no fold
        sizes = [int((fold == i).sum()) for i in range(k)]
        assert sum(sizes) == 8 and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
        assert set(fold[keep].tolist()) == set(range(k))
        assert torch.equal(folds(keep, k, seed=0), fold)  # deterministic by seed
    # a random partition: other seeds give other ones (not the kept samples dealt in order)
    partitions = {tuple(folds(keep, 2, seed=s).tolist()) for s in range(6)}
    assert len(partitions) > 1
    assert tuple(folds(keep, 2, seed=0).tolist()) in partitions


# --------------------------------------------------------------------------------------------
# Through fit: teachers of known outputs, every training input recorded
# --------------------------------------------------------------------------------------------

# f_S's probabilities of the 8 pooled samples: 3 labelled (ids 0-2, true classes 0, 1, 2), then
# 5 unlabelled (ids 3-7). With f1_min_confidence 0.5, F1 keeps ids 1, 2, 3, 5, 6, 7.
SOURCE = [[0.2, 0.45, 0.35], [0.9, 0.05, 0.05], [0.1, 0.3, 0.6], [0.85, 0.1, 0.05],
          [0.3, 0.3, 0.4], [0.05, 0.7, 0.25], [0.1, 0.05, 0.85], [0.55, 0.4, 0.05]]
LABELS = [0, 1, 2]
KEPT = [1, 2, 3, 5, 6, 7]
P_OPT, P_SAR = [0.7, 0.2, 0.1], [0.3, 0.5, 0.2]  # the auxiliary models trained on all of F1


class Constant(nn.Module):
    """The same probabilities for every input, whatever training does to its one weight."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.probs = probs
        self.register_buffer("logits", torch.tensor(probs).log())
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(x.shape[0], -1) + 0 * self.unused


class Recording(Engine):
    """The CPU engine, recording each fit's model and inputs."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.recorded: list[tuple[nn.Module, dict[str, Any]]] = []

    def fit(self, model: nn.Module, inputs: Any, loss_fn: Any, config: TrainConfig,
            **kwargs: Any) -> list[dict[str, Any]]:
        self.recorded.append((model, dict(inputs)))
        return super().fit(model, inputs, loss_fn, config, **kwargs)


def _ids(inputs: dict[str, Tensor]) -> list[int]:
    """Each sample's id, written into its first optical pixel."""
    return [round(v) for v in inputs["image_s2"][:, 0, 0, 0].tolist()]


def _split(ids: list[int], labels: list[int]) -> SplitData:
    generator = torch.Generator().manual_seed(len(ids))
    n = len(ids)
    s2 = torch.randn(n, 3, 16, 16, generator=generator)
    s2[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.float32)
    inputs = {"image_s2": s2, "image_s1": torch.randn(n, 2, 16, 16, generator=generator),
              "label": torch.tensor(labels)}
    return SplitData(inputs, [f"s{i}" for i in ids], ["clear"] * n, list(CLASSES))


def _fit(monkeypatch: pytest.MonkeyPatch, params: dict[str, Any],
         optical: list[list[float]] | None = None, sar: list[list[float]] | None = None,
         ) -> tuple[Recording, list[tuple[str, dict]]]:
    """ESCCS fitted on the 8 samples with f_S giving SOURCE and constant auxiliary models: the
    n-th optical (3-channel) model built gives ``optical[n]`` (default: P_OPT for all), the n-th
    SAR (2-channel) one ``sar[n]``."""
    queues = {3: list(optical or []), 2: list(sar or [])}
    fallback = {3: P_OPT, 2: P_SAR}

    def googlenet(channels: int, k: int) -> Constant:
        queue = queues[channels]
        return Constant(queue.pop(0) if queue else fallback[channels])

    def predict_source(engine: Engine, model: Any, inputs: dict[str, Tensor]) -> Tensor:
        return torch.tensor(SOURCE).log()[_ids(inputs)]

    monkeypatch.setattr(esccs, "googlenet", googlenet)
    monkeypatch.setattr(esccs, "fit_source", lambda context: None)
    monkeypatch.setattr(esccs, "predict_source", predict_source)
    engine = Recording()
    logged: list[tuple[str, dict]] = []
    method = create("esccs", params)
    method.fit(FitContext(_split([0, 1, 2], LABELS), _split([3, 4, 5, 6, 7], [0, 1, 2, 0, 1]),
                          None, engine, TrainConfig(epochs=1, batch_size=4), 3, "multiclass", 0,
                          lambda stage, entry: logged.append((stage, entry))))
    return engine, logged


def _by_id(inputs: dict[str, Tensor], key: str) -> dict[int, list[float]]:
    return dict(zip(_ids(inputs), inputs[key].tolist(), strict=True))


def _one_hot(row: list[float]) -> list[float]:
    return [1.0 if i == row.index(max(row)) else 0.0 for i in range(len(row))]


def _close(a: dict[int, list[float]], b: dict[int, list[float]]) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(torch.tensor(a[i]), torch.tensor(b[i]), atol=1e-6) for i in a)


def _f1(engine: Recording) -> list[dict[str, Tensor]]:
    """The inputs of step F1's two fits (optical, SAR): the fits before the target's."""
    return [inputs for _, inputs in engine.recorded[:-1]]


def _f2(engine: Recording) -> dict[str, Tensor]:
    return engine.recorded[-1][1]


def test_defaults_f1_on_confident_samples_soft_targets_f2_on_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference the tests below differ from: F1 learns f_S's soft rows of the kept samples,
    F2 every sample with Y_S, Q'_opt, Q'_SAR soft, the source term unweighted."""
    engine, logged = _fit(monkeypatch, {})
    assert [stage for stage, _ in logged] == ["aux_s2", "aux_s1", "target"]
    for inputs in _f1(engine):
        assert sorted(_ids(inputs)) == KEPT
        assert _close(_by_id(inputs, "target"), {i: SOURCE[i] for i in KEPT})
    f2 = _f2(engine)
    assert sorted(_ids(f2)) == list(range(8))
    for key in ("target_source", "y_source"):
        assert _close(_by_id(f2, key), dict(enumerate(SOURCE)))
    assert _close(_by_id(f2, "target_opt"), {i: P_OPT for i in range(8)})
    assert _close(_by_id(f2, "target_sar"), {i: P_SAR for i in range(8)})


@pytest.mark.parametrize(("params", "f1_hard", "f2_hard"), [
    ({"f1_targets": "hard"}, True, False),
    ({"f2_targets": "hard"}, False, True),
    ({"targets": "hard", "f1_targets": "soft"}, False, True),  # a step's choice wins
    ({"targets": "hard", "f2_targets": "soft"}, True, False),
])
def test_f1_and_f2_targets_choose_soft_or_hard_in_their_own_step(
        monkeypatch: pytest.MonkeyPatch, params: dict[str, str], f1_hard: bool,
        f2_hard: bool) -> None:
    engine, _ = _fit(monkeypatch, params)
    f1_rows = {i: _one_hot(SOURCE[i]) if f1_hard else SOURCE[i] for i in KEPT}
    for inputs in _f1(engine):
        assert _close(_by_id(inputs, "target"), f1_rows)
    f2 = _f2(engine)

    def rows(probs: list[list[float]]) -> dict[int, list[float]]:
        return {i: _one_hot(p) if f2_hard else p for i, p in enumerate(probs)}

    assert _close(_by_id(f2, "target_source"), rows(SOURCE))
    assert _close(_by_id(f2, "y_source"), rows(SOURCE))
    assert _close(_by_id(f2, "target_opt"), rows([P_OPT] * 8))
    assert _close(_by_id(f2, "target_sar"), rows([P_SAR] * 8))


def test_source_weight_and_scope_reach_step_f2(monkeypatch: pytest.MonkeyPatch) -> None:
    """λ = 0.5 and threshold 0.8: F2's source rows are 0.5·Y_S where f_S's confidence is at
    least 0.8 (ids 1, 3, 6), 0 elsewhere; y_source (the Fig. 8 curves' target) stays Y_S, and F1
    is unchanged."""
    engine, _ = _fit(monkeypatch, {"source_weight": 0.5, "source_min_confidence": 0.8})
    f2 = _f2(engine)
    expected = {i: [0.5 * p for p in row] if max(row) >= 0.8 else [0.0] * 3
                for i, row in enumerate(SOURCE)}
    assert _close(_by_id(f2, "target_source"), expected)
    assert _close(_by_id(f2, "y_source"), dict(enumerate(SOURCE)))
    for inputs in _f1(engine):
        assert _close(_by_id(inputs, "target"), {i: SOURCE[i] for i in KEPT})


def test_source_weight_0_removes_the_term_but_not_the_per_modality_curves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine, logged = _fit(monkeypatch, {"source_weight": 0})
    assert torch.all(_f2(engine)["target_source"] == 0)
    target = [entry for stage, entry in logged if stage == "target"][-1]
    assert target["ce_source"] == 0.0
    # loss_s2, loss_s1 are cross-entropies against Y_S itself, whatever its weight in Loss_T
    assert target["loss_s2"] > 0.1 and target["loss_s1"] > 0.1


def test_true_labels_give_the_labelled_samples_their_class(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids 0-2 are labelled 0, 1, 2; f_S gives them other classes (0 and 1) and too little
    confidence for F1 (0). With true_labels their Y_S is the one-hot true class in F1 (id 0
    now kept: confidence 1) and F2 (also kept by source_min_confidence 0.95); the unlabelled
    samples keep f_S's rows, Q'_opt and Q'_SAR stay the auxiliary models'."""
    engine, _ = _fit(monkeypatch, {"true_labels": True, "source_min_confidence": 0.95})
    truth = {i: _one_hot([1.0 if c == label else 0.0 for c in range(3)])
             for i, label in enumerate(LABELS)}
    f1_rows = {**truth, **{i: SOURCE[i] for i in KEPT if i >= 3}}
    for inputs in _f1(engine):
        assert _close(_by_id(inputs, "target"), f1_rows)
    f2 = _f2(engine)
    y_source = {**{i: SOURCE[i] for i in range(3, 8)}, **truth}
    assert _close(_by_id(f2, "y_source"), y_source)
    # the unlabelled samples are under 0.95: no source term; the labelled ones keep theirs
    assert _close(_by_id(f2, "target_source"), {**{i: [0.0] * 3 for i in range(3, 8)}, **truth})
    assert _close(_by_id(f2, "target_opt"), {i: P_OPT for i in range(8)})
    # without it (the default), the labelled rows are f_S's
    engine, _ = _fit(monkeypatch, {})
    assert _close({i: r for i, r in _by_id(_f2(engine), "y_source").items() if i < 3},
                  {i: SOURCE[i] for i in range(3)})


# The auxiliary models in the order ESCCS builds them: for each modality the one trained on all
# of F1, then for each fold one per modality. Each gives its own confidence (class 0 optical,
# class 1 SAR), so a sample's S says which model scored it.
FULL_OPT, FULL_SAR = [0.9, 0.05, 0.05], [0.2, 0.6, 0.2]
FOLD_OPT = [[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]
FOLD_SAR = [[0.25, 0.55, 0.2], [0.3, 0.5, 0.2], [0.35, 0.45, 0.2]]


def test_irm_folds_score_each_sample_by_the_models_that_did_not_train_on_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """irm_folds 3: F1's 6 samples split into 3 folds of 2; for each fold an optical and a SAR
    model train on the 4 others and give that fold's S_opt, S_SAR. The 2 samples F1 left out
    keep the full models' confidences, and Q'_opt, Q'_SAR are the full models' outputs."""
    engine, logged = _fit(monkeypatch, {"irm_folds": 3, "irm": "sample"},
                          optical=[FULL_OPT, *FOLD_OPT], sar=[FULL_SAR, *FOLD_SAR])
    stages = [stage for stage, _ in logged]
    assert stages == ["aux_s2", "aux_s1", *(f"aux_{m}_fold{i}" for i in range(3)
                                            for m in ("s2", "s1")), "target"]
    trained = {}  # each auxiliary model's probabilities -> the ids it trained on
    for model, inputs in engine.recorded[:-1]:
        assert isinstance(model, Constant)
        trained[tuple(model.probs)] = set(_ids(inputs))
    assert trained[tuple(FULL_OPT)] == trained[tuple(FULL_SAR)] == set(KEPT)
    held: dict[int, tuple[list[float], list[float]]] = {}
    for opt, sar in zip(FOLD_OPT, FOLD_SAR, strict=True):
        assert trained[tuple(opt)] == trained[tuple(sar)]  # the two models of a fold
        out = set(KEPT) - trained[tuple(opt)]
        assert len(out) == 2  # folds of 6 / 3
        for i in out:
            assert i not in held  # each sample held out by exactly one fold
            held[i] = (opt, sar)
    assert sorted(held) == KEPT
    f2 = _f2(engine)
    s_opt, s_sar = _by_id(f2, "s_opt"), _by_id(f2, "s_sar")
    for i in range(8):
        opt, sar = held.get(i, (FULL_OPT, FULL_SAR))
        assert s_opt[i] == pytest.approx(max(opt), abs=1e-6), i
        assert s_sar[i] == pytest.approx(max(sar), abs=1e-6), i
    assert _close(_by_id(f2, "target_opt"), {i: FULL_OPT for i in range(8)})
    assert _close(_by_id(f2, "target_sar"), {i: FULL_SAR for i in range(8)})
    # the default: every S from the models that trained on F1
    engine, _ = _fit(monkeypatch, {"irm": "sample"},
                     optical=[FULL_OPT, *FOLD_OPT], sar=[FULL_SAR, *FOLD_SAR])
    assert len(engine.recorded) == 3
    assert list(_by_id(_f2(engine), "s_opt").values()) == pytest.approx([0.9] * 8)


def test_irm_folds_needs_as_many_samples_in_f1(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CloudbenchError, match=re.escape(
            "esccs: irm_folds 7 needs at least as many samples in step F1, which keeps 6; "
            "lower irm_folds or f1_min_confidence")):
        _fit(monkeypatch, {"irm_folds": 7})
    _fit(monkeypatch, {"irm_folds": 6})  # one sample per fold is enough
    with pytest.raises(CloudbenchError, match="irm_folds"):
        create("esccs", {"irm_folds": 1})


# --------------------------------------------------------------------------------------------
# The specs
# --------------------------------------------------------------------------------------------

FACTORS = {"source_weight": ["esccs-source-weight-0", "esccs-source-weight-0.5"],
           "source_min_confidence": ["esccs-source-min-confidence-0.5",
                                     "esccs-source-min-confidence-0.8"],
           "f1_targets": ["esccs-f1-hard"], "f2_targets": ["esccs-f2-hard"],
           "true_labels": ["esccs-true-labels"], "irm_folds": ["esccs-irm-folds-5"],
           "irm": ["esccs-no-irm", "esccs-irm-sample"]}
REFERENCES = ["esccs", "sl", "finetune-optical"]


def test_ablation_specs_vary_one_factor_at_a_time() -> None:
    spec = load_spec("esccs-ablation")
    assert list(spec.datasets) == ["sen12ms-cloud"] and spec.datasets["sen12ms-cloud"].recipe == (
        "sen12ms-cloud")
    assert str(spec.sources["NR"].model) == "sources/resisc45.pt"
    assert (spec.train.lr, spec.train.epochs, spec.labeled_per_class) == (0.01, 200, 20)
    smoke = load_spec("esccs-ablation-smoke")
    for which in (spec, smoke):
        factors = entry_factors(which)
        assert [n for n, f in factors.items() if f is None] == REFERENCES
        for factor, names in FACTORS.items():
            assert [n for n, f in factors.items() if f == factor] == names
        for entry in which.methods:
            if entry.factor is not None:  # the default with that one parameter changed
                assert entry.method == "esccs" and list(entry.params) == [entry.factor]
            else:
                assert entry.params == {}
    # the same entries in both
    assert ([m.model_dump() for m in spec.methods] == [m.model_dump() for m in smoke.methods])
    assert len(expand(spec)) == (len(REFERENCES) + sum(map(len, FACTORS.values()))) * 3
    # a factor changes no run: the keys are those of the same entries without it
    plain = spec.model_copy(update={"methods": [m.model_copy(update={"factor": None})
                                                for m in spec.methods]})
    assert [r.key for r in expand(plain)] == [r.key for r in expand(spec)]


def _md_tables(text: str) -> dict[str, list[list[str]]]:
    """Each ``### Factor: X`` heading's table (its rows' cells, header first)."""
    out: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("### Factor: "):
            continue
        rows = []
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]])
        out[line.removeprefix("### Factor: ")] = [rows[0], *rows[2:]]
    return out


def test_ablation_smoke_runs_and_renders_one_table_per_factor(tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    # 1 epoch and 2 folds (the spec: 2 and 5) keep it short; the spec's entries are unchanged
    folds = next(i for i, e in enumerate(load_spec("esccs-ablation-smoke").methods)
                 if e.name == "esccs-irm-folds-5")
    assert main(["leaderboard", "run", "esccs-ablation-smoke", "--out", str(out),
                 "--set", "train.epochs=1", "--set", f"methods.{folds}.params.irm_folds=2"]) == 0
    table = results.read_table(out)
    names = [*REFERENCES, *(n for ns in FACTORS.values() for n in ns)]
    oa = table[(table["metric"] == "OA")]
    assert set(oa["method"]) == set(names)
    assert {"state=clear", "fraction=[0,0.01)"} <= set(oa["stratum"])
    text = (out / "leaderboard.md").read_text()
    tables = _md_tables(text)
    assert list(tables) == list(FACTORS)  # one table per factor, in the spec's order
    for factor, rows in tables.items():
        header, body = rows[0], rows[1:]
        assert [r[0] for r in body] == [*REFERENCES, *FACTORS[factor]]
        assert header[:4] == ["method", "OA (%)", "AA (%)", "Kappa"]
        assert "OA (%) clear" in header and any(h.startswith("OA (%) cloud") for h in header)
        # the cells are the runs' own numbers: OA overall and on the clear samples
        for row in body:
            mine = oa[oa["method"] == row[0]].set_index("stratum")["value"]
            assert float(row[1].strip("*")) == pytest.approx(100 * mine["all"], abs=0.006)
            column = header.index("OA (%) clear")
            assert float(row[column].strip("*")) == pytest.approx(100 * mine["state=clear"],
                                                                  abs=0.006)
    html = (out / "leaderboard.html").read_text()
    assert all(f"<h3>Factor: {factor}</h3>" in html for factor in FACTORS)
    # the per-modality loss curves (Fig. 8) of every ESCCS variant: a panel each
    assert (out / "loss_curves.png").exists()
    histories = results.read_histories(out)
    curves = histories[histories["term"].isin(["loss_s2", "loss_s1"])]
    assert {n for n in names if n.startswith("esccs")} <= set(curves["method"])
    folds_stages = set(histories.loc[histories["method"] == "esccs-irm-folds-5", "stage"])
    assert {f"aux_s2_fold{i}" for i in range(2)} <= folds_stages
    assert "aux_s2_fold2" not in folds_stages
    # the rendered spec keeps the factors: show re-renders the same tables from the bundle
    (out / "leaderboard.md").unlink()
    assert main(["leaderboard", "show", str(out), "--spec", str(out / "spec.yaml")]) == 0
    assert _md_tables((out / "leaderboard.md").read_text()) == tables
    pd.testing.assert_frame_equal(results.read_table(out), table)
