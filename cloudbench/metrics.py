"""Benchmark metrics: OA, AA and Kappa (single-label), AP (multi-label).

Every metric is computed once over the whole evaluation set (or one cloud stratum of it), never
averaged over batches. Point estimates come from torchmetrics; ``evaluate`` adds a breakdown by
cloud state and cloud fraction and percentile-bootstrap 95% confidence intervals.

The bootstrap is vectorised. Single-label: the confusion matrices of all resamples come from one
``torch.bincount`` per chunk of resamples, and OA/AA/Kappa are read off them. Multi-label: a
resample only repeats samples, so it never changes the order of the scores; the AP of every
resample is computed from each class's score ranking, sorted once, weighted by how many times
the resample draws each sample. This is exactly the AP torchmetrics gives on the resample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import (
    binary_average_precision,
    multiclass_confusion_matrix,
)

from cloudbench.store import CLOUD_STATES, TASKS

_CHUNK_ELEMENTS = 2**23
"""Bootstrap resamples are processed in chunks of about this many (resample, value) elements."""

TASK_METRICS = {"multiclass": ("OA", "AA", "Kappa"), "multilabel": ("AP_macro", "AP_micro")}
"""The summary metrics :func:`evaluate` reports for each task (besides the per-class ones)."""
_PER_CLASS = {"multiclass": ("per_class_accuracy", "acc"), "multilabel": ("per_class_AP", "AP")}


def confusion_matrix(preds, target, num_classes: int) -> torch.Tensor:
    """The (K, K) confusion matrix of class indices: rows are true classes, columns predictions.

    ``preds`` and ``target`` are (N,) integer tensors or arrays with values in [0, K).
    """
    preds, target = _labels(preds, target, num_classes)
    return multiclass_confusion_matrix(preds, target, num_classes)


def single_label_metrics(preds, target, num_classes: int) -> dict:
    """OA, AA, Kappa, per-class accuracy and confusion matrix of (N,) class indices.

    * ``OA``: overall accuracy, the share of correct predictions;
    * ``AA``: average accuracy, the mean recall over the classes that occur in ``target`` (as
      sklearn's ``balanced_accuracy_score``);
    * ``Kappa``: Cohen's kappa (NaN when chance agreement is 1, i.e. a single class throughout);
    * ``per_class_accuracy``: (K,) float64 recall per class, NaN for classes absent from target;
    * ``confusion_matrix``: (K, K), rows are true classes.
    """
    cm = confusion_matrix(preds, target, num_classes)
    scores = _scores_from_confusion(cm)
    return {
        "OA": scores["OA"].item(),
        "AA": scores["AA"].item(),
        "Kappa": scores["Kappa"].item(),
        "per_class_accuracy": scores["per_class_accuracy"],
        "confusion_matrix": cm,
    }


def multi_label_metrics(scores, target) -> dict:
    """Average precision of (N, K) scores against (N, K) 0/1 targets.

    * ``AP_macro``: mean AP over the classes with at least one positive in ``target``;
    * ``AP_micro``: AP of all (sample, class) pairs pooled;
    * ``per_class_AP``: (K,) float64, NaN where a class has no positive.

    AP depends only on the ranking of the scores: scores outside [0, 1] (logits, say) are
    rescaled linearly into [0, 1], which keeps their order and ties (torchmetrics would apply a
    sigmoid instead, which rounds distinct large logits to equal probabilities).
    """
    scores, target = _multilabel(scores, target)
    per_class = torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    for k in target.any(dim=0).nonzero().flatten().tolist():
        per_class[k] = binary_average_precision(scores[:, k], target[:, k]).item()
    micro = binary_average_precision(scores.flatten(), target.flatten()) if target.any() else None
    return {
        "AP_macro": per_class.nanmean().item(),
        "AP_micro": math.nan if micro is None else micro.item(),
        "per_class_AP": per_class,
    }


def evaluate(
    task: str,
    outputs,
    target,
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    cloud_state=None,
    cloud_fraction=None,
    fraction_bins: Sequence[float] = (0.0, 0.01, 0.25, 0.5, 0.75, 1.0),
    bootstrap: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Benchmark metrics with cloud-stratified breakdowns and bootstrap 95% confidence intervals.

    ``task`` is ``multiclass`` (``outputs``: (N,) predicted class indices, or (N, K) scores whose
    argmax is taken; ``target``: (N,) class indices) or ``multilabel`` (``outputs``: (N, K)
    scores; ``target``: (N, K) 0/1).

    Returns a long table with columns ``stratum, metric, value, ci_low, ci_high, n``. Strata, in
    this order, empty ones skipped: ``all``; ``state=<s>`` for each cloud state in
    ``cloud_state`` (strings, one per sample, from ``clear, thin, thick, mixed``);
    ``fraction=[a,b)`` for consecutive ``fraction_bins`` edges over ``cloud_fraction`` (the last
    bin is closed, ``[a,b]``). Metrics: ``OA, AA, Kappa`` or ``AP_macro, AP_micro`` per stratum,
    then, for ``all`` only, ``acc/<class>`` or ``AP/<class>`` per class (``class_names``,
    default the class indices). ``n`` is the number of samples in the stratum.

    ``ci_low`` and ``ci_high`` are the 2.5 and 97.5 percentiles over ``bootstrap`` resamples of
    the stratum drawn with replacement by ``numpy.random.default_rng(seed)`` (the same seed for
    every stratum, so a stratum's interval does not depend on the others); resamples where a
    metric is undefined (e.g. AA of a class never drawn) are left out. ``bootstrap=0`` gives NaN
    bounds.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0; got {bootstrap}")
    if class_names is None:
        class_names = [str(k) for k in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")

    if task == "multiclass":
        outputs = _to_tensor(outputs)
        if outputs.ndim == 2:
            if outputs.shape[1] != num_classes:
                raise ValueError(
                    f"outputs has shape {tuple(outputs.shape)}, expected (N, {num_classes}) "
                    "scores or (N,) class indices"
                )
            outputs = outputs.argmax(dim=1)
        outputs, target = _labels(outputs, target, num_classes)
        point: Callable[..., dict] = partial(single_label_metrics, num_classes=num_classes)
        resampler: Callable[..., Any] = partial(_single_label_resampler, num_classes=num_classes)
        cost_per_sample = 1
    else:
        outputs, target = _multilabel(outputs, target)
        if outputs.shape[1] != num_classes:
            raise ValueError(f"outputs has shape {tuple(outputs.shape)}, expected K={num_classes}")
        point, resampler = multi_label_metrics, _multi_label_resampler
        cost_per_sample = 2 * num_classes

    n_total = len(target)
    per_class_key, prefix = _PER_CLASS[task]
    rows = []
    for stratum, mask in _strata(n_total, cloud_state, cloud_fraction, fraction_bins):
        n = int(mask.sum())
        if n == 0:
            continue
        index = torch.from_numpy(mask)
        stratum_outputs, stratum_target = outputs[index], target[index]
        values = point(stratum_outputs, stratum_target)
        samples = None
        if bootstrap:
            statistic = resampler(stratum_outputs, stratum_target)
            samples = _bootstrap(statistic, n, bootstrap, seed, cost_per_sample * n)
        for metric in TASK_METRICS[task]:
            draws = None if samples is None else samples[metric]
            rows.append((stratum, metric, values[metric], *_interval(draws), n))
        if stratum == "all":
            for k, name in enumerate(class_names):
                draws = None if samples is None else samples[per_class_key][:, k]
                value = values[per_class_key][k].item()
                rows.append((stratum, f"{prefix}/{name}", value, *_interval(draws), n))
    return pd.DataFrame(rows, columns=["stratum", "metric", "value", "ci_low", "ci_high", "n"])


def format_table(df: pd.DataFrame) -> str:
    """A plain-text table of an ``evaluate`` result: one row per metric, one column per stratum.

    Cells read ``value [ci_low, ci_high]``, or just ``value`` without an interval; ``-`` marks an
    undefined value, and an empty cell a metric not reported for that stratum.
    """
    strata = list(dict.fromkeys(df["stratum"]))
    metrics = list(dict.fromkeys(df["metric"]))
    sizes = df.groupby("stratum", sort=False)["n"].first()
    cells = {
        (row.stratum, row.metric): _format_cell(row.value, row.ci_low, row.ci_high)
        for row in df.itertuples(index=False)
    }
    lines = [["metric", *(f"{s} (n={sizes[s]})" for s in strata)]]
    lines += [[m, *(cells.get((s, m), "") for s in strata)] for m in metrics]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _to_tensor(x) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _labels(preds, target, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (N,) int64 tensors of class indices."""
    preds, target = _to_tensor(preds), _to_tensor(target)
    if preds.shape != target.shape:
        raise ValueError(
            f"predictions have shape {tuple(preds.shape)} but target has shape "
            f"{tuple(target.shape)}"
        )
    for name, labels in (("predictions", preds), ("target", target)):
        if labels.ndim != 1 or labels.is_floating_point():
            raise ValueError(
                f"{name} must be a 1-D array of integer class indices; got shape "
                f"{tuple(labels.shape)} and dtype {labels.dtype}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{name} must be class indices in [0, {num_classes}); got values from "
                f"{labels.min().item()} to {labels.max().item()}"
            )
    return preds.long(), target.long()


def _multilabel(scores, target) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (N, K) float64 scores and int64 0/1 targets."""
    scores, target = _to_tensor(scores), _to_tensor(target)
    if scores.ndim != 2 or scores.shape != target.shape:
        raise ValueError(
            f"scores and target must both be (N, K); got shapes {tuple(scores.shape)} and "
            f"{tuple(target.shape)}"
        )
    if not ((target == 0) | (target == 1)).all():
        raise ValueError("multi-label target must hold only 0 and 1")
    scores = scores.double()
    if scores.numel() and (scores.min() < 0 or scores.max() > 1):
        low, high = scores.min(), scores.max()
        scores = (scores - low) / (high - low)
    return scores, target.long()


def _scores_from_confusion(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """OA, AA, Kappa and per-class accuracy of one (K, K) or a batch of (B, K, K) matrices."""
    cm = cm.double()
    total = cm.sum(dim=(-2, -1))
    correct = cm.diagonal(dim1=-2, dim2=-1)
    support = cm.sum(dim=-1)  # true samples per class
    predicted = cm.sum(dim=-2)
    oa = correct.sum(dim=-1) / total
    per_class = correct / support  # 0 / 0 = NaN for a class absent from the target
    chance = (support * predicted).sum(dim=-1) / total**2
    return {
        "OA": oa,
        "AA": per_class.nanmean(dim=-1),
        "Kappa": (oa - chance) / (1 - chance),
        "per_class_accuracy": per_class,
    }


def _bootstrap(
    statistic: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    n: int,
    n_resamples: int,
    seed: int,
    cost: int,
) -> dict[str, torch.Tensor]:
    """``statistic`` over ``n_resamples`` (> 0) resamples of ``n`` items drawn with replacement.

    ``statistic`` maps a (b, n) index matrix to metric tensors with a leading dimension b. It
    is called on chunks of resamples, b * ``cost`` (its work per resample) near
    ``_CHUNK_ELEMENTS``, to bound memory.
    """
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_ELEMENTS // cost)
    results: dict[str, torch.Tensor] = {}
    for start in range(0, n_resamples, step):
        stop = min(start + step, n_resamples)
        part = statistic(torch.from_numpy(rng.integers(0, n, size=(stop - start, n))))
        for key, values in part.items():
            # one buffer per metric, filled chunk by chunk: many small tensors kept across
            # chunks would pin the heap under the chunks' large temporaries and bloat memory
            if key not in results:
                results[key] = values.new_empty((n_resamples, *values.shape[1:]))
            results[key][start:stop] = values
    return results


def _single_label_resampler(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """Single-label metrics of resamples (b, N): their b confusion matrices from one bincount."""
    k = num_classes
    cells = target * k + preds

    def statistic(index: torch.Tensor) -> dict[str, torch.Tensor]:
        b = len(index)
        codes = torch.arange(b).unsqueeze(1) * k * k + cells[index]
        cms = torch.bincount(codes.flatten(), minlength=b * k * k).reshape(b, k, k)
        return _scores_from_confusion(cms)

    return statistic


def _multi_label_resampler(
    scores: torch.Tensor, target: torch.Tensor
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """Multi-label metrics of resamples (b, N), from rankings sorted once."""
    n, k = scores.shape
    per_class = _RankedScores(scores, target, torch.arange(n))
    pooled = _RankedScores(
        scores.reshape(-1, 1), target.reshape(-1, 1), torch.arange(n).repeat_interleave(k)
    )

    def statistic(index: torch.Tensor) -> dict[str, torch.Tensor]:
        b = len(index)
        draws = torch.arange(b).unsqueeze(1) * n + index
        counts = torch.bincount(draws.flatten(), minlength=b * n).reshape(b, n).int()
        ap = per_class.average_precision(counts)
        return {
            "AP_macro": ap.nanmean(dim=1),
            "AP_micro": pooled.average_precision(counts)[:, 0],
            "per_class_AP": ap,
        }

    return statistic


class _RankedScores:
    """The C columns of (M, C) scores, each ranked once, to get their AP under many resamples.

    Row i of the scores belongs to sample ``sample[i]``; a resample is given by ``counts``, how
    many times it draws each sample. AP is the step-function sum over distinct score
    thresholds of (recall increase) x precision, as in torchmetrics and sklearn: a resample
    never reorders the scores, so each drawn positive just adds its count / (positives drawn)
    times the precision at the lowest threshold admitting it, the end of its group of ties.
    """

    def __init__(self, scores: torch.Tensor, target: torch.Tensor, sample: torch.Tensor):
        ranked, order = scores.T.sort(dim=1, descending=True, stable=True)  # (C, M)
        self.num_columns, m = order.shape
        self.sample = sample[order]
        self.positive = target.T.gather(1, order).int()
        group_last = torch.ones_like(order, dtype=torch.bool)
        group_last[:, :-1] = ranked[:, :-1] != ranked[:, 1:]
        rank = torch.arange(m).expand_as(order)
        group_end = torch.where(group_last, rank, m).flip(1).cummin(dim=1).values.flip(1)
        column, position = self.positive.nonzero(as_tuple=True)
        self.positive_column = column
        self.positive_sample = self.sample[column, position]
        self.positive_end = column * m + group_end[column, position]  # flat (C * M) index

    def average_precision(self, counts: torch.Tensor) -> torch.Tensor:
        """(R, C) AP for (R, N) int32 ``counts``; NaN where a column has no positive drawn."""
        drawn = counts[:, self.sample]  # (R, C, M)
        true_positives = (drawn * self.positive).cumsum(dim=2, dtype=torch.int32).flatten(1)
        seen = drawn.cumsum(dim=2, dtype=torch.int32).flatten(1)
        # a positive not drawn may have nothing seen up to it: clamping avoids its 0 / 0
        end = self.positive_end
        precision = true_positives[:, end].double() / seen[:, end].clamp(min=1)
        hits = counts[:, self.positive_sample].double()  # (R, positives)
        per_column = hits.new_zeros(len(counts), self.num_columns)
        weighted = per_column.index_add(1, self.positive_column, hits * precision)
        return weighted / per_column.index_add(1, self.positive_column, hits)


def _strata(
    n: int, cloud_state, cloud_fraction, fraction_bins: Sequence[float]
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, boolean mask) of each stratum, in report order, empty ones included."""
    yield "all", np.ones(n, dtype=bool)
    if cloud_state is not None:
        states = np.asarray(cloud_state).astype(str)
        if states.shape != (n,):
            raise ValueError(f"cloud_state has shape {states.shape} but target has {n} samples")
        unknown = sorted(set(states.tolist()) - set(CLOUD_STATES))
        if unknown:
            raise ValueError(f"unknown cloud states {unknown}; expected {', '.join(CLOUD_STATES)}")
        for state in CLOUD_STATES:
            yield f"state={state}", states == state
    if cloud_fraction is not None:
        fraction = np.asarray(cloud_fraction, dtype=np.float64)
        if fraction.shape != (n,):
            raise ValueError(
                f"cloud_fraction has shape {fraction.shape} but target has {n} samples"
            )
        edges = [float(edge) for edge in fraction_bins]
        if len(edges) < 2 or any(a >= b for a, b in pairwise(edges)):
            raise ValueError(f"fraction_bins must be >= 2 increasing edges; got {edges}")
        for i, (low, high) in enumerate(pairwise(edges)):
            last = i == len(edges) - 2
            inside = (fraction >= low) & (fraction <= high if last else fraction < high)
            yield f"fraction=[{low:g},{high:g}{']' if last else ')'}", inside


def _interval(draws: torch.Tensor | None) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the defined bootstrap draws; NaN when there are none."""
    defined = np.empty(0) if draws is None else draws[~draws.isnan()].numpy()
    if defined.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(defined, [2.5, 97.5]).tolist()
    return low, high


def _format_cell(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isnan(low):
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"
