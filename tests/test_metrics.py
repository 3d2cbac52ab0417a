"""Metrics against scikit-learn, the bootstrap, cloud strata and the text table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from cloudbench.metrics import (
    _multi_label_resampler,
    _single_label_resampler,
    confusion_matrix,
    evaluate,
    format_table,
    multi_label_metrics,
    single_label_metrics,
)

# (seed, samples, classes, classes never predicted, classes absent from the target)
SINGLE_LABEL_CASES = [
    (0, 300, 5, (), ()),
    (1, 50, 7, (2,), ()),
    (2, 200, 6, (), (0, 4)),
    (3, 120, 10, (1, 9), (3, 9)),
    (4, 1, 3, (), ()),
]


def single_label_data(seed, n, k, never_predicted=(), absent=(), accuracy=0.6):
    """Random (preds, target) with the given classes missing from preds / target."""
    rng = np.random.default_rng(seed)
    allowed_target = np.setdiff1d(np.arange(k), absent)
    allowed_preds = np.setdiff1d(np.arange(k), never_predicted)
    target = rng.choice(allowed_target, n)
    preds = np.where(rng.random(n) < accuracy, target, rng.choice(allowed_preds, n))
    preds = np.where(np.isin(preds, never_predicted), rng.choice(allowed_preds, n), preds)
    return preds, target


def multi_label_data(seed, n, k, *, ties=False, logits=False, no_positive=()):
    """Random (scores, target), scores correlated with the target."""
    rng = np.random.default_rng(seed)
    target = (rng.random((n, k)) < rng.uniform(0.1, 0.5, k)).astype(np.int64)
    target[:, list(no_positive)] = 0
    scores = 0.6 * rng.random((n, k)) + 0.4 * target * rng.random((n, k))
    if ties:
        scores = np.round(scores, 1)
    if logits:
        scores = 4 * (scores - 0.5)
    return scores, target


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("seed, n, k, never_predicted, absent", SINGLE_LABEL_CASES)
def test_single_label_metrics_match_sklearn(seed, n, k, never_predicted, absent):
    preds, target = single_label_data(seed, n, k, never_predicted, absent)
    result = single_label_metrics(preds, target, k)

    assert isinstance(result["OA"], float)
    assert result["OA"] == pytest.approx(skm.accuracy_score(target, preds), abs=1e-6)
    assert result["AA"] == pytest.approx(skm.balanced_accuracy_score(target, preds), abs=1e-6)
    if len(np.union1d(target, preds)) > 1:  # kappa is undefined for a single class
        kappa = skm.cohen_kappa_score(target, preds)
        assert result["Kappa"] == pytest.approx(kappa, abs=1e-6)
    labels = np.arange(k)
    expected_cm = skm.confusion_matrix(target, preds, labels=labels)
    np.testing.assert_array_equal(result["confusion_matrix"].numpy(), expected_cm)
    recall = skm.recall_score(target, preds, labels=labels, average=None, zero_division=np.nan)
    recall[~np.isin(labels, target)] = np.nan
    np.testing.assert_allclose(result["per_class_accuracy"].numpy(), recall, atol=1e-6)


def test_single_label_accepts_tensors_and_arrays():
    preds, target = single_label_data(5, 80, 4)
    from_numpy = single_label_metrics(preds, target, 4)
    from_torch = single_label_metrics(torch.from_numpy(preds), torch.from_numpy(target), 4)
    from_int32 = single_label_metrics(preds.astype(np.int32), target.astype(np.uint8), 4)
    for other in (from_torch, from_int32):
        assert other["OA"] == from_numpy["OA"]
        assert other["Kappa"] == from_numpy["Kappa"]
        assert torch.equal(other["confusion_matrix"], from_numpy["confusion_matrix"])


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix([1, 1, 1, 2], [0, 0, 1, 2], num_classes=3)
    np.testing.assert_array_equal(cm.numpy(), [[0, 2, 0], [0, 1, 0], [0, 0, 1]])


def test_single_label_hand_example():
    # true 0 0 0 1 / predicted 0 0 1 1: recalls 2/3 and 1; chance agreement (3*2 + 1*2) / 16
    result = single_label_metrics([0, 0, 1, 1], [0, 0, 0, 1], num_classes=3)
    assert result["OA"] == pytest.approx(0.75)
    assert result["AA"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["Kappa"] == pytest.approx((0.75 - 0.5) / (1 - 0.5))
    per_class = result["per_class_accuracy"]
    assert per_class[:2].tolist() == pytest.approx([2 / 3, 1.0]) and math.isnan(per_class[2])


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_kappa_is_nan_when_chance_agreement_is_one():
    """Kappa = (p_o - p_e) / (1 - p_e) is 0 / 0 when p_e = 1, i.e. one class throughout target
    and predictions: NaN, as metrics.single_label_metrics and docs/metrics.md say (and as
    scikit-learn gives), never 0 or 1; a stratum of one class shows "-" in the table."""
    for preds, target in (([2, 2, 2], [2, 2, 2]), ([1], [1])):
        result = single_label_metrics(preds, target, 3)
        assert result["OA"] == 1.0 and math.isnan(result["Kappa"])
        assert math.isnan(skm.cohen_kappa_score(target, preds))
    # p_e just under 1 stays defined: true 2 2 2, predicted 2 2 1: p_o = 2/3, p_e = 6/9
    assert single_label_metrics([2, 2, 1], [2, 2, 2], 3)["Kappa"] == pytest.approx(0.0)
    # in evaluate: the one-class stratum's Kappa and interval are NaN (no resample defined);
    # the other strata keep theirs, from the resamples where Kappa is defined
    labels = [0, 1, 2, 1, 1]
    df = evaluate("multiclass", labels, labels, num_classes=3, bootstrap=50,
                  cloud_state=["clear", "clear", "clear", "thin", "thin"])
    thin = summary(df, "state=thin").loc["Kappa"]
    assert thin[["value", "ci_low", "ci_high"]].isna().all()
    assert summary(df, "state=thin").loc["OA", "value"] == 1.0
    assert summary(df).loc["Kappa", ["value", "ci_low", "ci_high"]].tolist() == [1.0, 1.0, 1.0]
    kappa_row = [line for line in format_table(df).splitlines() if line.startswith("Kappa")]
    assert kappa_row[0].split()[-1] == "-"


def test_perfect_predictions():
    target = np.random.default_rng(0).integers(0, 6, 100)
    result = single_label_metrics(target, target, 6)
    assert result["OA"] == result["AA"] == result["Kappa"] == 1.0


@pytest.mark.parametrize(
    "seed, n, k, options",
    [
        (0, 200, 5, {}),
        (1, 150, 6, {"ties": True}),
        (2, 100, 4, {"logits": True}),
        (3, 120, 7, {"ties": True, "no_positive": (0, 5)}),
    ],
)
def test_multi_label_metrics_match_sklearn(seed, n, k, options):
    scores, target = multi_label_data(seed, n, k, **options)
    result = multi_label_metrics(scores, target)

    has_positive = target.any(axis=0)
    expected = np.full(k, np.nan)
    for c in np.flatnonzero(has_positive):
        expected[c] = skm.average_precision_score(target[:, c], scores[:, c])
    np.testing.assert_allclose(result["per_class_AP"].numpy(), expected, atol=1e-6)
    macro = skm.average_precision_score(target[:, has_positive], scores[:, has_positive])
    assert result["AP_macro"] == pytest.approx(macro, abs=1e-6)
    micro = skm.average_precision_score(target, scores, average="micro")
    assert result["AP_micro"] == pytest.approx(micro, abs=1e-6)


def test_multi_label_perfect_ranking():
    target = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    result = multi_label_metrics(target * 0.8 + 0.1, target)
    assert result["AP_macro"] == result["AP_micro"] == 1.0


def test_multi_label_without_any_positive_is_nan():
    """No positive in any class (a test subset with no labels present): every AP is NaN."""
    result = multi_label_metrics(np.array([[0.9, 0.2], [0.4, 0.7]]), np.zeros((2, 2), dtype=int))
    assert math.isnan(result["AP_macro"]) and math.isnan(result["AP_micro"])
    assert torch.isnan(result["per_class_AP"]).all()


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_single_label_resampler_matches_metrics_of_each_resample():
    preds, target = single_label_data(7, 60, 5, never_predicted=(1,), absent=(4,))
    index = torch.from_numpy(np.random.default_rng(0).integers(0, 60, (20, 60)))
    batch = _single_label_resampler(torch.from_numpy(preds), torch.from_numpy(target), 5)(index)
    for b, rows in enumerate(index.numpy()):
        expected = single_label_metrics(preds[rows], target[rows], 5)
        for key in ("OA", "AA", "Kappa"):
            np.testing.assert_allclose(batch[key][b].item(), expected[key], atol=1e-12)
        np.testing.assert_allclose(
            batch["per_class_accuracy"][b], expected["per_class_accuracy"], atol=1e-12
        )


@pytest.mark.parametrize("ties", [False, True])
def test_multi_label_resampler_matches_metrics_of_each_resample(ties):
    # 30 samples with sparse classes: some resamples miss every positive of a class
    scores, target = multi_label_data(8, 30, 6, ties=ties, no_positive=(2,))
    target[:, 4] = 0
    target[[3, 17], 4] = 1
    index = torch.from_numpy(np.random.default_rng(1).integers(0, 30, (40, 30)))
    statistic = _multi_label_resampler(torch.from_numpy(scores), torch.from_numpy(target))
    batch = statistic(index)
    missed_class_4 = 0
    for b, rows in enumerate(index.numpy()):
        expected = multi_label_metrics(scores[rows], target[rows])
        np.testing.assert_allclose(batch["per_class_AP"][b], expected["per_class_AP"], atol=1e-6)
        assert batch["AP_macro"][b].item() == pytest.approx(expected["AP_macro"], abs=1e-6)
        assert batch["AP_micro"][b].item() == pytest.approx(expected["AP_micro"], abs=1e-6)
        missed_class_4 += math.isnan(expected["per_class_AP"][4])
    assert missed_class_4 > 0


def summary(df: pd.DataFrame, stratum: str = "all") -> pd.DataFrame:
    return df[df["stratum"] == stratum].set_index("metric")


def test_evaluate_multiclass_all_stratum():
    preds, target = single_label_data(0, 400, 4, absent=(3,))
    names = ["forest", "water", "urban", "snow"]
    df = evaluate("multiclass", preds, target, num_classes=4, class_names=names, bootstrap=200)

    assert list(df.columns) == ["stratum", "metric", "value", "ci_low", "ci_high", "n"]
    assert list(df["stratum"].unique()) == ["all"]
    assert list(df["metric"]) == ["OA", "AA", "Kappa", *(f"acc/{name}" for name in names)]
    assert (df["n"] == 400).all()
    expected = single_label_metrics(preds, target, 4)
    rows = summary(df)
    for metric in ("OA", "AA", "Kappa"):
        assert rows.loc[metric, "value"] == pytest.approx(expected[metric], abs=1e-12)
        assert rows.loc[metric, "ci_low"] < rows.loc[metric, "value"] < rows.loc[metric, "ci_high"]
    for c, name in enumerate(names[:3]):
        row = rows.loc[f"acc/{name}"]
        assert row["value"] == pytest.approx(expected["per_class_accuracy"][c].item())
        assert row["ci_low"] < row["value"] < row["ci_high"]
    assert rows.loc["acc/snow", ["value", "ci_low", "ci_high"]].isna().all()


def test_evaluate_multilabel_all_stratum():
    scores, target = multi_label_data(3, 300, 5, ties=True, no_positive=(1,))
    df = evaluate("multilabel", scores, target, num_classes=5, bootstrap=200)

    assert list(df["metric"]) == ["AP_macro", "AP_micro", *(f"AP/{c}" for c in range(5))]
    expected = multi_label_metrics(scores, target)
    rows = summary(df)
    for metric in ("AP_macro", "AP_micro"):
        assert rows.loc[metric, "value"] == pytest.approx(expected[metric], abs=1e-12)
        assert rows.loc[metric, "ci_low"] < rows.loc[metric, "value"] < rows.loc[metric, "ci_high"]
    assert rows.loc["AP/0", "ci_low"] < rows.loc["AP/0", "value"] < rows.loc["AP/0", "ci_high"]
    assert rows.loc["AP/1", ["value", "ci_low", "ci_high"]].isna().all()


def test_bootstrap_is_reproducible_and_seeded():
    scores, target = multi_label_data(4, 150, 4)
    preds, labels = single_label_data(4, 150, 4)
    for task, outputs, y, k in (
        ("multiclass", preds, labels, 4),
        ("multilabel", scores, target, 4),
    ):
        first = evaluate(task, outputs, y, num_classes=k, bootstrap=100, seed=3)
        again = evaluate(task, outputs, y, num_classes=k, bootstrap=100, seed=3)
        other = evaluate(task, outputs, y, num_classes=k, bootstrap=100, seed=4)
        pd.testing.assert_frame_equal(first, again)
        assert not np.allclose(first["ci_low"], other["ci_low"])


def test_interval_is_percentile_of_resamples():
    # reference: the same resamples, drawn as documented, scored by sklearn
    preds, target = single_label_data(2, 80, 4)
    scores, labels = multi_label_data(2, 80, 4)
    index = np.random.default_rng(5).integers(0, 80, size=(150, 80))
    oa = [skm.accuracy_score(target[rows], preds[rows]) for rows in index]
    micro = [
        skm.average_precision_score(labels[rows], scores[rows], average="micro") for rows in index
    ]
    for task, outputs, y, metric, draws in (
        ("multiclass", preds, target, "OA", oa),
        ("multilabel", scores, labels, "AP_micro", micro),
    ):
        row = summary(evaluate(task, outputs, y, num_classes=4, bootstrap=150, seed=5)).loc[metric]
        expected = np.percentile(draws, [2.5, 97.5])
        np.testing.assert_allclose(row[["ci_low", "ci_high"]].astype(float), expected, atol=1e-6)


def test_bootstrap_interval_narrows_with_more_samples():
    widths = {}
    for n in (200, 3200):
        preds, target = single_label_data(5, n, 5)
        rows = summary(evaluate("multiclass", preds, target, num_classes=5, bootstrap=300))
        widths[n] = rows["ci_high"] - rows["ci_low"]
    # the standard error shrinks as 1 / sqrt(n): 4 times narrower here
    assert (widths[3200] < widths[200] / 2).all()


def test_bootstrap_zero_gives_nan_bounds():
    preds, target = single_label_data(6, 50, 3)
    df = evaluate("multiclass", preds, target, num_classes=3, bootstrap=0)
    assert df["value"].notna().all()
    assert df["ci_low"].isna().all() and df["ci_high"].isna().all()


def test_multiclass_scores_equal_argmax():
    rng = np.random.default_rng(9)
    scores = rng.random((120, 4))
    target = rng.integers(0, 4, 120)
    states = rng.choice(["clear", "thin"], 120)
    kwargs = {"num_classes": 4, "cloud_state": states, "bootstrap": 50}
    from_scores = evaluate("multiclass", torch.from_numpy(scores), target, **kwargs)
    from_argmax = evaluate("multiclass", scores.argmax(axis=1), target, **kwargs)
    pd.testing.assert_frame_equal(from_scores, from_argmax)


def test_cloud_strata():
    # clear samples all right, thick all wrong, thin half right; no mixed sample
    target = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    preds = np.array([0, 1, 2, 0, 2, 0, 1, 1, 0])
    states = np.array(["clear"] * 4 + ["thick"] * 3 + ["thin"] * 2)
    fraction = np.array([0.0, 0.0, 0.005, 0.009, 0.8, 0.75, 1.0, 0.3, 0.45])
    df = evaluate(
        "multiclass",
        preds,
        target,
        num_classes=3,
        class_names=["a", "b", "c"],
        cloud_state=states,
        cloud_fraction=fraction,
        bootstrap=100,
    )

    strata = ["all", "state=clear", "state=thin", "state=thick"]
    strata += ["fraction=[0,0.01)", "fraction=[0.25,0.5)", "fraction=[0.75,1]"]
    assert list(df["stratum"].unique()) == strata
    expected = {  # OA and n per stratum
        "all": (5 / 9, 9),
        "state=clear": (1.0, 4),
        "state=thin": (0.5, 2),
        "state=thick": (0.0, 3),
        "fraction=[0,0.01)": (1.0, 4),
        "fraction=[0.25,0.5)": (0.5, 2),
        "fraction=[0.75,1]": (0.0, 3),  # 1.0 falls in the closed last bin
    }
    for stratum, (oa, n) in expected.items():
        rows = summary(df, stratum)
        assert rows.loc["OA", "value"] == pytest.approx(oa)
        assert (rows["n"] == n).all()
    for stratum in ("state=clear", "fraction=[0,0.01)"):
        assert summary(df, stratum).loc["OA", ["ci_low", "ci_high"]].tolist() == [1.0, 1.0]
    assert summary(df, "state=thick").loc["OA", ["ci_low", "ci_high"]].tolist() == [0.0, 0.0]
    assert summary(df, "state=thin").loc["AA", "value"] == pytest.approx(0.5)
    assert list(summary(df, "state=thin").index) == ["OA", "AA", "Kappa"]
    assert {"acc/a", "acc/b", "acc/c"} <= set(summary(df).index)


def test_custom_fraction_bins_for_multilabel():
    scores, target = multi_label_data(2, 60, 3)
    fraction = np.linspace(0, 1, 60)
    df = evaluate(
        "multilabel",
        scores,
        target,
        num_classes=3,
        cloud_fraction=fraction,
        fraction_bins=(0.0, 0.5, 1.0),
        bootstrap=20,
    )
    assert list(df["stratum"].unique()) == ["all", "fraction=[0,0.5)", "fraction=[0.5,1]"]
    low = summary(df, "fraction=[0,0.5)")
    assert (low["n"] == 30).all()
    expected = multi_label_metrics(scores[:30], target[:30])["AP_macro"]
    assert low.loc["AP_macro", "value"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: evaluate("regression", [0], [0], num_classes=2), "multiclass, multilabel"),
        (lambda: evaluate("multiclass", [0, 1, 1], [0, 1], num_classes=2), r"\(3,\).*\(2,\)"),
        (
            lambda: evaluate("multiclass", np.zeros((3, 4)), [0, 1, 1], num_classes=2),
            r"\(3, 4\)",
        ),
        (
            lambda: evaluate("multilabel", np.zeros((3, 2)), np.zeros((2, 2)), num_classes=2),
            r"\(3, 2\).*\(2, 2\)",
        ),
        (
            lambda: evaluate("multilabel", np.zeros((3, 2)), np.zeros((3, 2)), num_classes=3),
            r"\(3, 2\)",
        ),
        (
            lambda: evaluate("multiclass", [0, 1], [0, 1], num_classes=2, cloud_state=["clear"]),
            r"\(1,\).*2 samples",
        ),
        (
            lambda: evaluate("multiclass", [0, 1], [0, 1], num_classes=2, cloud_fraction=[0.1] * 3),
            r"\(3,\).*2 samples",
        ),
        (
            lambda: evaluate(
                "multiclass", [0, 1], [0, 1], num_classes=2, cloud_state=["clear", "foggy"]
            ),
            "foggy",
        ),
        (
            lambda: evaluate("multiclass", [0, 1], [0, 1], num_classes=2, class_names=["a"]),
            "1 class names",
        ),
        (
            lambda: evaluate(
                "multiclass",
                [0, 1],
                [0, 1],
                num_classes=2,
                cloud_fraction=[0.1, 0.2],
                fraction_bins=(0.5, 0.2),
            ),
            "increasing",
        ),
        (lambda: single_label_metrics([0, 5], [0, 1], 3), r"\[0, 3\)"),
        (lambda: single_label_metrics([0.0, 1.0], [0, 1], 3), "integer"),
        (lambda: multi_label_metrics(np.zeros((2, 2)), [[0, 2], [1, 0]]), "0 and 1"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_format_table():
    target = np.array([0, 1, 2, 0, 1, 2])
    preds = np.array([0, 1, 2, 0, 2, 0])
    df = evaluate(
        "multiclass",
        preds,
        target,
        num_classes=4,
        class_names=["a", "b", "c", "d"],
        cloud_state=["clear"] * 3 + ["thick"] * 3,
        bootstrap=50,
    )
    lines = format_table(df).splitlines()

    header = ["metric", "all", "(n=6)", "state=clear", "(n=3)", "state=thick", "(n=3)"]
    assert lines[0].split() == header
    by_metric = {line.split()[0]: line for line in lines[1:]}
    assert list(by_metric) == list(df["metric"].unique())
    for row in df.itertuples():
        if not math.isnan(row.value):
            cell = f"{row.value:.4f} [{row.ci_low:.4f}, {row.ci_high:.4f}]"
            assert cell in by_metric[row.metric]
    thick_oa = summary(df, "state=thick").loc["OA", "value"]
    assert by_metric["OA"][lines[0].index("state=thick") :].startswith(f"{thick_oa:.4f} [")
    assert by_metric["acc/a"].split() == ["acc/a", "1.0000", "[1.0000,", "1.0000]"]
    assert by_metric["acc/d"].split() == ["acc/d", "-"]  # absent class; per class only in `all`


def test_large_logits_keep_their_ranking():
    # A sigmoid rounds logits above ~37 to 1.0 in float64, which would tie them; AP must not.
    scores = np.array([[40.0], [45.0], [50.0], [-3.0]])
    target = np.array([[0], [1], [1], [0]])
    result = multi_label_metrics(scores, target)
    expected = skm.average_precision_score(target[:, 0], scores[:, 0])
    assert result["AP_macro"] == pytest.approx(expected)
    assert result["AP_macro"] == pytest.approx(1.0)


# --- found by the mutation benchmark (docs/testing.md): each test kills mutants that survived


def test_bad_inputs_are_named_in_the_message() -> None:
    """A label equal to num_classes is out of range ([0, K)), and each message names the input
    at fault: predictions or target, the multi-label target, bootstrap, the scores' shape, the
    cloud states, the fraction edges."""
    with pytest.raises(ValueError, match=r"^predictions must be class indices in \[0, 3\)"):
        single_label_metrics([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match=r"^target must be class indices in \[0, 3\)"):
        single_label_metrics([0, 1], [3, 1], 3)
    with pytest.raises(ValueError, match=r"^multi-label target must hold only 0 and 1$"):
        multi_label_metrics([[0.2, 0.8]], [[0, 2]])
    with pytest.raises(ValueError, match=r"^bootstrap must be >= 0; got -1$"):
        evaluate("multiclass", [0], [0], num_classes=2, bootstrap=-1)
    with pytest.raises(ValueError, match=r"expected \(N, 3\) scores or \(N,\) class indices$"):
        evaluate("multiclass", np.zeros((2, 4)), [0, 1], num_classes=3, bootstrap=0)
    with pytest.raises(ValueError, match=r"unknown cloud states \['foggy'\]; expected clear, "
                                         r"thin, thick, mixed$"):
        evaluate("multiclass", [0, 1], [0, 1], num_classes=2, bootstrap=0,
                 cloud_state=["clear", "foggy"])
    for edges in ([0.5], [0.0, 0.5, 0.5, 1.0], [0.0, 0.6, 0.4]):
        with pytest.raises(ValueError, match=r"fraction_bins must be >= 2 increasing edges"):
            evaluate("multiclass", [0, 1], [0, 1], num_classes=2, bootstrap=0,
                     cloud_fraction=[0.1, 0.9], fraction_bins=edges)
    # two edges are one bin, closed at both ends
    df = evaluate("multiclass", [0, 1], [0, 1], num_classes=2, bootstrap=0,
                  cloud_fraction=[0.0, 1.0], fraction_bins=[0.0, 1.0])
    assert set(df["stratum"]) == {"all", "fraction=[0,1]"}


def test_multilabel_scores_far_outside_zero_one_keep_their_order() -> None:
    """Scores outside [0, 1] (logits) are rescaled, not squashed: float32 sigmoids of logits
    above ~17 are all 1.0, which would tie them and change AP. AP is that of the raw order."""
    rng = np.random.default_rng(3)
    target = rng.integers(0, 2, (40, 3))
    target[0] = 1
    scores = 20.0 + 30.0 * rng.random((40, 3))  # all > 17: sigmoid(x) == 1.0 in float32
    result = multi_label_metrics(scores, target)
    expected = [skm.average_precision_score(target[:, k], scores[:, k]) for k in range(3)]
    # (float32 inside torchmetrics: 1e-6)
    assert result["AP_macro"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert result["AP_micro"] == pytest.approx(
        skm.average_precision_score(target.ravel(), scores.ravel()), abs=1e-6)
    bounded = evaluate("multilabel", scores, target, num_classes=3, bootstrap=20)
    rescaled = evaluate("multilabel", (scores - 20) / 30, target, num_classes=3, bootstrap=20)
    pd.testing.assert_frame_equal(bounded, rescaled)


def test_evaluate_defaults_are_1000_resamples_with_seed_0() -> None:
    """The documented defaults, which every published interval depends on."""
    rng = np.random.default_rng(4)
    preds, target = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    default = evaluate("multiclass", preds, target, num_classes=3)
    explicit = evaluate("multiclass", preds, target, num_classes=3, bootstrap=1000, seed=0)
    pd.testing.assert_frame_equal(default, explicit)
    other = evaluate("multiclass", preds, target, num_classes=3, bootstrap=1000, seed=1)
    assert not default.equals(other)
    assert not default.equals(evaluate("multiclass", preds, target, num_classes=3,
                                       bootstrap=1001, seed=0))


def test_bootstrap_in_chunks_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resamples drawn chunk by chunk (to bound memory) are the same resamples as drawn at
    once: the chunking changes no interval."""
    from cloudbench import metrics

    rng = np.random.default_rng(5)
    preds, target = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    state = rng.choice(["clear", "thick"], 50)
    whole = evaluate("multiclass", preds, target, num_classes=4, bootstrap=200,
                     cloud_state=state)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 7 * 50)  # chunks of a few resamples
    chunked = evaluate("multiclass", preds, target, num_classes=4, bootstrap=200,
                       cloud_state=state)
    pd.testing.assert_frame_equal(whole, chunked)


def test_format_table_lines_have_no_trailing_spaces() -> None:
    df = evaluate("multiclass", [0, 1, 1], [0, 1, 0], num_classes=2, bootstrap=10,
                  cloud_state=["clear", "thin", "thin"])
    lines = format_table(df).splitlines()
    assert len(lines) > 3 and all(not line.endswith(" ") for line in lines)
