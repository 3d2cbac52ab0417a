"""Paired tests of every method against the best method of its leaderboard group.

Per (dataset, source, sweep, test) group and metric, the *best* method is the one with the
highest mean over seeds (the bold cell of the rendered table: per seed the mean of its runs,
then the mean over seeds). Every other method is tested against it on the same test samples
and the same seeds, from the runs' ``predictions.parquet`` files read against the test store
(:func:`cloudbench.predictions.read_predictions`). Two runs are paired **by sample id**: both
methods' predictions are put in the order of their sorted ids, never taken by file position.

The tests, two-sided, per seed (one test set, the same trained models):

* ``OA``: McNemar's exact test (:func:`mcnemar`) on the discordant pairs;
* ``AA``, ``Kappa``: a paired bootstrap (:func:`paired_bootstrap`): both methods on the same
  resamples of the test samples;
* ``AP_macro``, ``AP_micro``: a paired permutation test (:func:`paired_permutation`) that swaps
  the two methods' score vectors of a sample.

**Seeds** are combined by taking the **largest p-value over the seeds both methods have**: a
method is distinguishable from the best only when every seed's test says so. This is an
intersection-union test, of level alpha whatever the dependence between the seeds. Pooling the
(seed, sample) pairs of all seeds into one test would count each test sample once per seed and
treat its outcomes as independent, though they are not (a hard sample stays hard whatever the
seed), which overstates the evidence. The largest p-value is conservative instead, and with one
seed it is that seed's test.

The best method is chosen on the same data it is tested on, so its p-values describe how well
the others are separated from it, not a test of a hypothesis fixed in advance.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import binom

from cloudbench.harness.results import predictions_path, with_test
from cloudbench.metrics import (
    _CHUNK_ELEMENTS,
    _bootstrap,
    _single_label_resampler,
    single_label_metrics,
)
from cloudbench.predictions import read_predictions
from cloudbench.store import Store

ALPHA = 0.05
"""The level at which a method counts as distinguishable from the best (p < ALPHA)."""

BOOTSTRAP_RESAMPLES = 1000
"""Resamples of the paired bootstrap (AA, Kappa)."""

PERMUTATIONS = 1000
"""Random swaps of the paired permutation test (AP_macro, AP_micro); a test set of n samples
with 2**n <= PERMUTATIONS is enumerated exactly instead."""

TESTED = ("OA", "AA", "Kappa", "AP_macro", "AP_micro")
"""The metrics tested: OA by McNemar's test, AA and Kappa by the paired bootstrap, AP_macro
and AP_micro by the paired permutation test."""

GROUP = ("dataset", "source", "sweep", "test")
COLUMNS = (*GROUP, "method", "metric", "best", "p", "seeds")
"""Columns of :func:`paired_tests`."""

_TOLERANCE = 100 * np.finfo(np.float64).eps
"""Relative tolerance under which a resampled statistic counts as equal to the observed one
(as ``scipy.stats.permutation_test``): theoretically equal values may differ in the last bits."""


def mcnemar(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value for ``b`` samples that only the first method gets right
    and ``c`` that only the second gets right: ``min(1, 2 P(X <= min(b, c)))`` with
    ``X ~ Binomial(b + c, 1/2)``, and 1 when there is no discordant sample.

    This is the exact binomial test of the discordant pairs (``scipy.stats.binomtest(b, b + c)``
    gives the same value, the binomial being symmetric), used at every count: it is cheap, so
    the chi-square approximation (with continuity correction) is never needed.
    """
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))


def paired_bootstrap(
    preds_a: np.ndarray, preds_b: np.ndarray, target: np.ndarray, num_classes: int, *,
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
) -> dict[str, float]:
    """Two-sided paired bootstrap p-values of AA and Kappa between two methods' (N,) class
    indices on the same (N,) targets.

    With ``d`` the observed difference (method a minus method b) and ``d*`` its value on each of
    ``resamples`` resamples of the N samples drawn with replacement by
    ``numpy.random.default_rng(seed)`` (both methods on the same resample, as
    :func:`cloudbench.metrics.evaluate` draws its intervals), the p-value is
    ``(1 + #{|d* - d| >= |d|}) / (1 + R)``: how often the bootstrap distribution shifted to
    mean zero (the null of no difference) is at least as far from zero as ``d``; ``R`` counts the
    resamples where the metric is defined. Identical predictions give 1.
    """
    a, b, y = (torch.as_tensor(np.array(x, dtype=np.int64)) for x in (preds_a, preds_b, target))
    metrics = ("AA", "Kappa")
    observed_a = single_label_metrics(a, y, num_classes)
    observed_b = single_label_metrics(b, y, num_classes)
    resampled_a = _single_label_resampler(a, y, num_classes)
    resampled_b = _single_label_resampler(b, y, num_classes)

    def difference(index: torch.Tensor) -> dict[str, torch.Tensor]:
        first, second = resampled_a(index), resampled_b(index)
        return {m: first[m] - second[m] for m in metrics}

    draws = _bootstrap(difference, len(y), resamples, seed, 2 * len(y))
    return {m: _shifted_p_value(observed_a[m] - observed_b[m], draws[m].numpy()) for m in metrics}


def paired_permutation(
    scores_a: np.ndarray, scores_b: np.ndarray, target: np.ndarray, *,
    permutations: int = PERMUTATIONS, seed: int = 0,
) -> dict[str, float]:
    """Two-sided paired permutation p-values of AP_macro and AP_micro between two methods'
    (N, K) scores on the same (N, K) 0/1 targets.

    A permutation swaps, for each sample independently with probability 1/2, the two methods'
    score vectors of that sample (the K scores as given: the runner's methods give logits); the
    statistic is ``t = AP(a) - AP(b)``, AP as :func:`cloudbench.metrics.multi_label_metrics`
    computes it (macro: the mean over the classes with a positive; micro: all pairs pooled).
    When ``2**N <= permutations`` every one of the 2**N swaps is enumerated and the p-value is
    the exact ``#{|t*| >= |t|} / 2**N`` (``scipy.stats.permutation_test`` with
    ``permutation_type='samples'`` gives the same); otherwise ``permutations`` random swaps
    drawn by ``numpy.random.default_rng(seed)`` give ``(1 + #{|t*| >= |t|}) / (1 + R)``.
    Identical scores give 1.
    """
    a = torch.as_tensor(np.array(scores_a, dtype=np.float64))
    b = torch.as_tensor(np.array(scores_b, dtype=np.float64))
    y = torch.as_tensor(np.array(target, dtype=np.int64))
    n, k = y.shape
    per_class = _SwappedAP(a, b, y, torch.arange(n))
    pooled = _SwappedAP(a.reshape(-1, 1), b.reshape(-1, 1), y.reshape(-1, 1),
                        torch.arange(n).repeat_interleave(k))

    def statistic(swapped: torch.Tensor) -> dict[str, torch.Tensor]:
        class_a, class_b = per_class(swapped)
        micro_a, micro_b = pooled(swapped)
        return {"AP_macro": class_a.nanmean(dim=1) - class_b.nanmean(dim=1),
                "AP_micro": (micro_a - micro_b)[:, 0]}

    observed = statistic(torch.zeros((1, n), dtype=torch.bool))
    exact = 2**n <= permutations
    if exact:
        swaps = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    else:
        swaps = np.random.default_rng(seed).integers(0, 2, size=(permutations, n))
    step = max(1, _CHUNK_ELEMENTS // (4 * n * k))
    parts = [statistic(torch.from_numpy(swaps[i:i + step].astype(bool)))
             for i in range(0, len(swaps), step)]
    p_values = {}
    for metric, value in observed.items():
        t = float(value[0])
        if math.isnan(t):
            p_values[metric] = math.nan
            continue
        null = torch.cat([part[metric] for part in parts]).numpy()
        extreme = int((np.abs(null) >= abs(t) * (1 - _TOLERANCE)).sum())
        p_values[metric] = extreme / len(null) if exact else (1 + extreme) / (1 + len(null))
    return p_values


class _SwappedAP:
    """The AP of two methods' scores after swaps, for C columns ranked once.

    Row i of the (M, C) scores ``a`` and ``b`` belongs to the swap unit ``unit[i]`` (a sample);
    a swap gives method a's row to b and b's to a for every row of a swapped unit. The 2M rows
    of both methods are ranked once per column; a swap only changes which ranked rows each
    method selects (exactly one of each pair), so each method's AP is a sum over its selected
    positives of the precision at the end of their group of ties, as in torchmetrics and
    :class:`cloudbench.metrics._RankedScores`, and b's counts are the complements of a's.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, target: torch.Tensor,
                 unit: torch.Tensor):
        m = len(a)
        ranked, order = torch.cat([a, b]).T.sort(dim=1, descending=True, stable=True)  # (C, 2M)
        self.num_columns, size = order.shape
        self.unit = torch.cat([unit, unit])[order]
        self.from_a = order < m
        self.positive = torch.cat([target, target]).T.gather(1, order).bool()
        group_last = torch.ones_like(order, dtype=torch.bool)
        group_last[:, :-1] = ranked[:, :-1] != ranked[:, 1:]
        rank = torch.arange(size).expand_as(order)
        group_end = torch.where(group_last, rank, size).flip(1).cummin(dim=1).values.flip(1)
        column, position = self.positive.nonzero(as_tuple=True)
        self.column = column
        self.end = column * size + group_end[column, position]  # flat (C * 2M) index
        self.seen_end = (group_end[column, position] + 1).int()  # rows of both up to the end
        self.positives_end = self.positive.cumsum(dim=1, dtype=torch.int32).flatten()[self.end]
        self.positive_unit = self.unit[column, position]
        self.positive_from_a = self.from_a[column, position]
        self.count = target.sum(dim=0).double()  # positives per column, the same for both

    def __call__(self, swapped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, C) AP of method a and of method b under (R, units) boolean swaps; NaN for a
        column without a positive."""
        selected = swapped[:, self.unit] ^ self.from_a  # (R, C, 2M): method a's rows
        seen = selected.cumsum(dim=2, dtype=torch.int32).flatten(1)[:, self.end]
        hits = (selected & self.positive).cumsum(dim=2, dtype=torch.int32).flatten(1)[:, self.end]
        precision_a = hits.double() / seen.clamp(min=1)
        precision_b = (self.positives_end - hits).double() / (self.seen_end - seen).clamp(min=1)
        mine = (swapped[:, self.positive_unit] ^ self.positive_from_a).double()  # (R, P)
        zeros = precision_a.new_zeros(len(swapped), self.num_columns)
        ap_a = zeros.index_add(1, self.column, mine * precision_a) / self.count
        ap_b = zeros.index_add(1, self.column, (1 - mine) * precision_b) / self.count
        return ap_a, ap_b


def paired_tests(
    results: pd.DataFrame,
    out: str | Path,
    metrics: list[str] | None = None,
    stores: Mapping[tuple[str, str], str | os.PathLike[str]] | None = None,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    permutations: int = PERMUTATIONS,
) -> pd.DataFrame:
    """Every method against the best of its group, per metric of ``metrics`` in :data:`TESTED`
    (default: those present).

    ``results`` is the results table of ``out`` (:func:`cloudbench.harness.results.read_table`);
    the predictions are ``out``'s run files (``predictions.parquet`` for a run's own test split,
    ``predictions-<test>.parquet`` for another dataset's). ``stores`` maps (dataset, sweep
    value) to the store a test split is read against (the runner's dataset roots; a key with
    the sweep "" serves every sweep value, as a dataset given by path does); by default
    ``out/datasets/<dataset>-<sweep with '=' as '-'>`` or ``out/datasets/<dataset>``, where
    the runner builds a recipe's dataset.

    Returns :data:`COLUMNS`: a row per group, metric and method other than the group's
    ``best`` that shares at least one seed with predictions with it; ``p`` is the largest
    p-value over those seeds (see the module docstring; seeds where the metric is undefined
    for either method are left out), ``seeds`` their number. A seed run
    twice (a re-run) is tested with the first of its runs by run key. Methods without
    predictions, groups without a store, and the best method itself get no row.
    """
    out = Path(out)
    rows = _keyed(results)
    rows = rows[(rows["kind"] == "metric") & (rows["split"] == "test")
                & (rows["stratum"] == "all") & rows["metric"].isin(list(TESTED))]
    if metrics is not None:
        rows = rows[rows["metric"].isin(list(metrics))]
    rows = rows[pd.to_numeric(rows["value"], errors="coerce").notna()]
    found: list[dict] = []
    opened: dict[Path, Store] = {}
    readings: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray] | None] = {}
    pairs: dict[tuple[str, str, str], dict[str, float]] = {}
    for (*group, metric), part in rows.groupby([*GROUP, "metric"], sort=False):
        dataset, _, sweep, test = group
        root = _store_root(out, stores or {}, test, sweep)
        if root is None:
            continue
        if root not in opened:
            opened[root] = Store(root)
        store = opened[root]
        runs = part.sort_values("run").groupby(["method", "seed"], sort=False)["run"].first()
        seeded = part.groupby(["method", "seed"], sort=False)["value"].mean()
        means = seeded.groupby(level="method", sort=False).mean()
        best = str(means.idxmax())
        for method in means.index:
            if method == best:
                continue
            p_values = []
            for seed in sorted(set(runs[best].index) & set(runs[method].index)):
                pair = (str(runs[best][seed]), str(runs[method][seed]), test)
                for run in pair[:2]:
                    if (run, test) not in readings:
                        path = predictions_path(out, run, None if test == dataset else test)
                        readings[run, test] = _read(path, store) if path.is_file() else None
                first, second = readings[pair[0], test], readings[pair[1], test]
                if first is None or second is None:
                    continue
                if pair not in pairs:
                    pairs[pair] = _p_values(first, second, store, int(seed), resamples,
                                            permutations)
                if not math.isnan(pairs[pair][metric]):
                    p_values.append(pairs[pair][metric])
            if p_values:
                found.append({**dict(zip(GROUP, group, strict=True)), "method": method,
                              "metric": metric, "best": best, "p": max(p_values),
                              "seeds": len(p_values)})
    return pd.DataFrame(found, columns=list(COLUMNS))


def _shifted_p_value(observed: float, draws: np.ndarray) -> float:
    """``(1 + #{|d* - d| >= |d|}) / (1 + R)`` over the defined draws; NaN when none is."""
    draws = draws[~np.isnan(draws)]
    if math.isnan(observed) or draws.size == 0:
        return math.nan
    extreme = int((np.abs(draws - observed) >= abs(observed) * (1 - _TOLERANCE)).sum())
    return (1 + extreme) / (1 + draws.size)


def _p_values(first: tuple[np.ndarray, np.ndarray, np.ndarray],
              second: tuple[np.ndarray, np.ndarray, np.ndarray], store: Store, seed: int,
              resamples: int, permutations: int) -> dict[str, float]:
    """Every tested metric's p-value of one seed's pair (the best's run first)."""
    ids, outputs_a, target = first
    other_ids, outputs_b, _ = second
    if not np.array_equal(ids, other_ids):
        raise ValueError("two runs' predictions of one test split hold different sample ids")
    if store.task == "multilabel":
        return paired_permutation(outputs_a, outputs_b, target, permutations=permutations,
                                  seed=seed)
    right_a, right_b = outputs_a == target, outputs_b == target
    p_values = paired_bootstrap(outputs_a, outputs_b, target, len(store.classes),
                                resamples=resamples, seed=seed)
    p_values["OA"] = mcnemar(int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))
    return p_values


def _read(path: Path, store: Store) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, outputs, target) of a predictions file, sorted by sample id; class indices for a
    multiclass store (the argmax of scores)."""
    predictions = read_predictions(path, store)
    order = np.argsort(predictions.ids.astype(str), kind="stable")
    outputs = predictions.outputs
    if store.task == "multiclass" and outputs.ndim == 2:
        outputs = outputs.argmax(axis=1)
    return predictions.ids[order], outputs[order], predictions.target[order]


def _store_root(out: Path, stores: Mapping[tuple[str, str], str | os.PathLike[str]],
                dataset: str, sweep: str) -> Path | None:
    """The store of ``dataset``'s test split for a sweep value (see :func:`paired_tests`)."""
    for key in ((dataset, sweep), (dataset, "")):
        if key in stores:
            return Path(stores[key])
    suffix = f"-{sweep.replace('=', '-')}" if sweep else ""
    for root in (out / "datasets" / f"{dataset}{suffix}", out / "datasets" / dataset):
        if (root / "dataset.json").is_file():
            return root
    return None


def _keyed(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with its group keys, method, kind, split, stratum and metric as strings
    ("" for missing) and ``test`` filled by ``dataset`` where missing."""
    results = with_test(results)
    for column in (*GROUP, "method", "kind", "split", "stratum", "metric", "run"):
        results[column] = results[column].astype(object).where(results[column].notna(), "")
        results[column] = results[column].astype(str)
    return results
