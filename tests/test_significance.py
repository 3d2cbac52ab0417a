"""Paired tests against the best method: against scipy, by hand, and on run files paired by id."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_store
from scipy.stats import binomtest, permutation_test

from cloudbench.harness import results
from cloudbench.harness.render import render
from cloudbench.harness.significance import (
    COLUMNS,
    mcnemar,
    paired_bootstrap,
    paired_permutation,
    paired_tests,
)
from cloudbench.metrics import evaluate, multi_label_metrics, single_label_metrics
from cloudbench.store import Store


@pytest.mark.parametrize("b, c", [(1, 9), (9, 1), (10, 10), (0, 5), (3, 20), (25, 40),
                                  (300, 350)])
def test_mcnemar_is_the_exact_binomial_test(b, c):
    assert mcnemar(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def test_mcnemar_by_hand():
    # 1 of 10 discordant pairs goes one way: 2 P(X <= 1), X ~ Binomial(10, 1/2) = 2 * 11 / 1024
    assert mcnemar(1, 9) == 22 / 1024
    assert mcnemar(0, 0) == 1.0 and mcnemar(7, 7) == 1.0


def _scores(seed: int, n: int, k: int, *, ties: bool = False):
    rng = np.random.default_rng(seed)
    target = (rng.random((n, k)) < 0.4).astype(np.int64)
    target[0] = 1  # every class has a positive
    a = 0.6 * rng.random((n, k)) + 0.4 * target
    b = np.clip(a + rng.normal(0, 0.3, (n, k)), 0, 1)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return a, b, target


@pytest.mark.parametrize("ties", [False, True])
def test_permutation_test_matches_scipy(ties):
    n, k = 8, 3  # 2**8 = 256 <= 1000 swaps: enumerated exactly, as scipy does
    a, b, target = _scores(ties, n, k, ties=ties)
    mine = paired_permutation(a, b, target)
    stacked = np.concatenate([a, b])  # a pair (i, n + i) of rows is one sample's two vectors

    def statistic(x, y, metric):
        x, y = x.astype(int), y.astype(int)
        return (multi_label_metrics(stacked[x], target[x % n])[metric]
                - multi_label_metrics(stacked[y], target[y % n])[metric])

    for metric in ("AP_macro", "AP_micro"):
        expected = permutation_test(
            (np.arange(n), np.arange(n) + n), lambda x, y, m=metric: statistic(x, y, m),
            permutation_type="samples", n_resamples=np.inf, alternative="two-sided")
        assert mine[metric] == pytest.approx(expected.pvalue, abs=1e-12)


def test_permutation_test_monte_carlo():
    a, b, target = _scores(3, 60, 4)
    first = paired_permutation(a, b, target, permutations=200, seed=5)
    assert first == paired_permutation(a, b, target, permutations=200, seed=5)
    # (1 + extreme) / (1 + 200)
    assert all(round(p * 201) == pytest.approx(p * 201) and p >= 1 / 201 for p in first.values())
    better = paired_permutation(a, 0.5 * a + 0.5 * np.random.default_rng(0).random(a.shape),
                                target, permutations=200)
    assert better == {"AP_macro": 1 / 201, "AP_micro": 1 / 201}


def test_paired_bootstrap_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    n, k, resamples = 80, 4, 300
    target = rng.integers(0, k, n)
    a = np.where(rng.random(n) < 0.8, target, rng.integers(0, k, n))
    b = np.where(rng.random(n) < 0.6, target, rng.integers(0, k, n))
    mine = paired_bootstrap(a, b, target, k, resamples=resamples, seed=3)
    index = np.random.default_rng(3).integers(0, n, size=(resamples, n))  # evaluate's draws
    for metric in ("AA", "Kappa"):
        observed = (single_label_metrics(a, target, k)[metric]
                    - single_label_metrics(b, target, k)[metric])
        draws = np.array([single_label_metrics(a[i], target[i], k)[metric]
                          - single_label_metrics(b[i], target[i], k)[metric] for i in index])
        draws = draws[~np.isnan(draws)]
        extreme = (np.abs(draws - observed) >= abs(observed) - 1e-12).sum()
        assert mine[metric] == pytest.approx((1 + extreme) / (1 + len(draws)))
    assert mine["AA"] < 0.05  # 80% against 60% right


def test_identical_methods_are_not_distinguishable():
    a, _, target = _scores(0, 30, 3)
    assert paired_permutation(a, a, target) == {"AP_macro": 1.0, "AP_micro": 1.0}
    labels = target.argmax(axis=1)
    assert paired_bootstrap(labels, labels, labels[::-1].copy(), 3) == {"AA": 1.0, "Kappa": 1.0}


# --- on run files -----------------------------------------------------------------------------

METHODS = {"good": 0.85, "twin": 0.85, "poor": 0.55}  # share of right predictions; twin = good


def _write_runs(out: Path, task: str) -> Store:
    """A store in OUT/datasets (where the runner builds a recipe's), and per method and seed a
    run: its predictions (in the file's order, not the store's) and its rows from evaluate."""
    root = out / "datasets" / "demo"
    if task == "multiclass":
        make_store(root, n=150)
    else:
        make_store(root, n=150, task="multilabel", classes=("A", "B", "C", "D"))
    store = Store(root)
    test = store.samples[store.samples["split"] == "test"]
    k = len(store.classes)
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        noise = rng.random((len(test), k))
        right = rng.random(len(test))
        for method, share in METHODS.items():
            if task == "multiclass":
                labels = np.array(test["label"], dtype=np.int64)
                wrong = (labels + 1 + (noise[:, 0] * (k - 1)).astype(int)) % k
                outputs = np.where(right < share, labels, wrong)
                predictions = pd.DataFrame({"id": test["id"], "pred": outputs})
                target = labels
            else:
                target = np.zeros((len(test), k), dtype=np.int64)
                for i, labels in enumerate(test["label"]):
                    target[i, np.asarray(labels, dtype=np.int64)] = 1
                outputs = share * target + (1 - share) * noise
                predictions = pd.DataFrame({"id": test["id"]})
                for c in range(k):
                    predictions[f"score_{c}"] = outputs[:, c]
            rows = evaluate(task, outputs, target, num_classes=k, bootstrap=0,
                            cloud_state=test["cloud_state"],
                            cloud_fraction=test["cloud_fraction"])
            key = f"{method}-{seed}"
            rows = rows.assign(run=key, leaderboard="t", dataset="demo", test="demo", source="",
                               method=method, seed=seed, sweep="", kind="metric", split="test",
                               config_hash="", git_revision="", packages="", device="cpu",
                               wall_seconds=1.0, data="")
            order = np.random.default_rng(100 + seed).permutation(len(predictions))
            results.write_run(out, key, rows, pd.DataFrame(), predictions.iloc[order])
    return store


def _shuffle_predictions(out: Path) -> None:
    for path in (out / "runs").glob("*/predictions.parquet"):
        frame = pd.read_parquet(path)
        frame.sample(frac=1.0, random_state=7).to_parquet(path)


def _by_id(out: Path, key: str) -> pd.DataFrame:
    return pd.read_parquet(results.predictions_path(out, key)).set_index("id").sort_index()


def test_paired_tests_on_run_files_pair_by_id(tmp_path):
    out = tmp_path / "out"
    store = _write_runs(out, "multiclass")
    table = paired_tests(results.read_table(out), out)
    assert list(table.columns) == list(COLUMNS)
    oa = table[table["metric"] == "OA"].set_index("method")
    assert set(oa.index) == {"twin", "poor"} and set(oa["best"]) == {"good"}
    assert (oa["seeds"] == 2).all()
    assert oa.at["twin", "p"] == 1.0  # identical predictions: no discordant pair
    # by hand: McNemar per seed on the samples matched by id, the largest p of the two seeds
    labels = store.samples.set_index("id")["label"]
    per_seed = []
    for seed in (0, 1):
        good, poor = _by_id(out, f"good-{seed}"), _by_id(out, f"poor-{seed}")
        truth = labels.loc[good.index].to_numpy()
        right_good, right_poor = good["pred"].to_numpy() == truth, poor["pred"].to_numpy() == truth
        per_seed.append(mcnemar(int((right_good & ~right_poor).sum()),
                                int((~right_good & right_poor).sum())))
    assert oa.at["poor", "p"] == max(per_seed) < 0.05
    assert (table.loc[table["method"] == "twin", "p"] == 1.0).all()  # AA, Kappa too
    _shuffle_predictions(out)
    pd.testing.assert_frame_equal(paired_tests(results.read_table(out), out), table)

    # tested on another dataset too (a copy of the store), each run's predictions of it in its
    # predictions-copy.parquet: there good and poor predict alike (good's own predictions) and
    # poor's rows say it is best, so good is tested on the copy's files, not its own: p = 1
    shutil.copytree(out / "datasets" / "demo", out / "datasets" / "copy")
    for seed in (0, 1):
        good = pd.read_parquet(out / "results" / f"good-{seed}.parquet")
        for method, shift in (("good", 0.0), ("poor", 0.01)):
            key = f"{method}-{seed}"
            cross = good.assign(test="copy", run=key, method=method, value=good["value"] + shift)
            frame = pd.read_parquet(out / "results" / f"{key}.parquet")
            pd.concat([frame, cross]).to_parquet(out / "results" / f"{key}.parquet")
            shutil.copy(results.predictions_path(out, f"good-{seed}"),
                        results.predictions_path(out, key, "copy"))
    crossed = paired_tests(results.read_table(out), out)
    on_copy = crossed[crossed["test"] == "copy"]
    assert set(on_copy["method"]) == {"good"} and set(on_copy["best"]) == {"poor"}
    assert (on_copy["p"] == 1.0).all() and len(on_copy) == 3
    own_split = crossed[crossed["test"] == "demo"].reset_index(drop=True)
    pd.testing.assert_frame_equal(own_split, table)

    render(out)
    text = (out / "leaderboard.md").read_text()
    header, _, *rows = [line.split(" | ") for line in text.splitlines()
                        if line.startswith("|")][:5]
    assert header[:7] == ["| method", "OA (%)", "p (OA)", "AA (%)", "p (AA)", "Kappa", "p (Kappa)"]
    cells = {row[0][2:]: row for row in rows}
    assert cells["good"][2] == "best" and cells["twin"][2] == "1.000 ≈"
    assert cells["poor"][2] == "\\< 0.001" or float(cells["poor"][2]) < 0.05
    assert "McNemar's exact test for OA" in text


def test_paired_tests_multilabel_and_without_a_store(tmp_path):
    out = tmp_path / "out"
    store = _write_runs(out, "multilabel")
    table = paired_tests(results.read_table(out), out, permutations=200)
    assert set(table["metric"]) == {"AP_macro", "AP_micro"}
    twin = table[table["method"] == "twin"]
    assert (twin["p"] == 1.0).all() and (twin["best"] == "good").all()
    # the permutation test on the id-sorted scores of each seed, the largest p of the two
    k = len(store.classes)
    samples = store.samples.set_index("id")
    expected = []
    for seed in (0, 1):
        good, poor = _by_id(out, f"good-{seed}"), _by_id(out, f"poor-{seed}")
        target = np.zeros((len(good), k), dtype=np.int64)
        for i, labels in enumerate(samples.loc[good.index, "label"]):
            target[i, np.asarray(labels, dtype=np.int64)] = 1
        expected.append(paired_permutation(good.to_numpy(), poor.to_numpy(), target,
                                           permutations=200, seed=seed))
    poor = table[table["method"] == "poor"].set_index("metric")["p"]
    for metric in ("AP_macro", "AP_micro"):
        assert poor[metric] == max(p[metric] for p in expected)
    _shuffle_predictions(out)
    shuffled = paired_tests(results.read_table(out), out, permutations=200)
    pd.testing.assert_frame_equal(shuffled, table)
    # no store where the runner builds one and none given: no test
    moved = tmp_path / "elsewhere"
    (out / "datasets" / "demo").rename(moved)
    assert paired_tests(results.read_table(out), out).empty
    given = paired_tests(results.read_table(out), out, stores={("demo", ""): moved},
                         permutations=200)
    pd.testing.assert_frame_equal(given, table)
