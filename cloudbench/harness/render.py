"""Leaderboard rendering: the harness's results table as Markdown, HTML and plots.

Input is a results folder ``OUT/`` written by the runner:

* ``OUT/results/*.parquet``, one file per finished run, together one long table
  (``results.COLUMNS``): one row per (run, metric, stratum) for ``kind == "metric"`` and one
  per profiled quantity for ``kind == "profile"``;
* ``OUT/runs/<run>/history.parquet``, per-epoch training losses (``results.HISTORY_COLUMNS``).

:func:`render` writes ``leaderboard.md``, ``leaderboard.html`` and PNG plots into ``OUT/``.
Every file is written under a temporary name and renamed into place, so a reader never sees a
half-written file.

Aggregation over seeds (:func:`summary_table`): the mean and the sample standard deviation
(``ddof=1``, NaN for a single seed) of the per-seed point estimates, and the bootstrap interval
``[ci_low, ci_high]`` pooled as the **mean of the per-seed bootstrap bounds**. That interval
describes the test-set sampling uncertainty of a typical single run; it is *not* a confidence
interval of the mean over seeds (which would need the per-seed bootstrap draws, not kept).

Numbers copied from papers (:func:`load_published`) are only ever shown in rows marked
"reported by <paper>", never mixed with the harness's own results.

Pixel metrics (:data:`PIXEL_METRICS`, the cloud-removal metrics of
:mod:`cloudbench.reconstruction`) are columns like any other when ``metrics`` lists them and a
group's results hold them, but not every one is better when higher: :func:`direction` says
which way each metric ranks (RMSE, MAE, SAM, UCE, AUCE: lower; within_1sigma and within_2sigma:
not ranked, their ideal is the nominal coverage 68.27% and 95.45%), and the bold cells and the
row order follow it. A group whose runs have ``pixels=clear|thin|thick`` strata gets a table of
the pixel metrics per stratum (:func:`pixel_strata_table`).

Beside each tested metric, a table has the p-value of each method against the group's best
(:func:`cloudbench.harness.significance.paired_tests`, on the runs' predictions paired by sample
id), and last a robustness score (:func:`robustness_scores`: the normalised area under the
metric's curve over the cloud-fraction bins, :func:`robustness_curves`). The HTML page is one
file: CSS, plots and a small script that sorts a table by a clicked header, all inline.

A run trained on one dataset and tested on others (a dataset's ``test`` in the spec) has rows
whose ``test`` differs from its ``dataset``: they form groups of their own, and a cross table
per metric puts every (trained on, tested on) pair side by side (the CBEN paper's Table VI).
Results without a ``test`` column read as tested on their own dataset.

A spec whose method entries name a ``factor`` (an ablation: one factor varied at a time from
a default) gets, per group, one table per factor (:func:`factor_rows`, :func:`strata_table`):
the factor's entries with the reference entries (no factor, or ``default``), the metrics
overall and the first one per cloud state and per cloud-fraction bin of the test samples.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cloudbench.config import load_yaml
from cloudbench.errors import CloudbenchError
from cloudbench.harness.results import read_histories, read_table, with_test
from cloudbench.harness.significance import ALPHA, BOOTSTRAP_RESAMPLES, TESTED, paired_tests

PUBLISHED_METRICS = ("OA", "AA", "Kappa", "AP_macro", "AP_micro", "RMSE", "MAE", "PSNR", "SSIM",
                     "SAM")
"""Metrics a published table may report, as printed: OA, AA, AP_macro and AP_micro in percent,
Kappa as a fraction; the pixel metrics on [0, 1] data: RMSE and MAE in reflectance units, PSNR
in dB, SSIM as a fraction, SAM in degrees."""

PUBLISHED_COLUMNS = (
    "paper", "label", "table", "source", "dataset", "test", "method", "name",
    *PUBLISHED_METRICS, "note",
)
"""Columns of :func:`load_published` (``label``: a short name of the paper for row labels;
``dataset``: the dataset trained on, ``test``: the one tested on; ``note``: the table's)."""

PUBLISHED_TABLE_KEYS = ("table", "source", "dataset", "test", "note", "rows")
"""Keys of a table in a published file (``table``, ``dataset`` and ``rows`` required; ``table``
may be "" where the paper's table number is not known: the rows' label then names none)."""

GROUP = ("dataset", "source", "sweep", "test")
"""One leaderboard table per group: the dataset trained on, the source, the sweep value, and
the dataset tested on (``test``; the trained-on dataset for its own test split)."""

DEFAULT_METRICS = ("OA", "AA", "Kappa", "AP_macro", "AP_micro")
"""Metrics shown when ``render`` is given none (those present in the results, in this order,
followed by the :data:`PIXEL_METRICS` present)."""

PIXEL_METRICS = ("RMSE", "MAE", "PSNR", "SSIM", "SAM", "UCE", "AUCE", "within_1sigma",
                 "within_2sigma")
"""The cloud-removal metrics (``cloudbench.reconstruction``: ``IMAGE_METRICS`` then
``CALIBRATION_METRICS``), in the order their columns are documented."""

LOWER_IS_BETTER = frozenset({"RMSE", "MAE", "SAM", "UCE", "AUCE"})
"""Metrics whose best value is the lowest (errors, angles, calibration errors)."""

NOT_RANKED = frozenset({"within_1sigma", "within_2sigma"})
"""Metrics with no best direction: the share of pixels whose error lies within 1 (2) predicted
standard deviations is ideally the nominal 68.27% (95.45%), not the highest; never bold."""

PIXEL_STRATA = ("pixels=clear", "pixels=thin", "pixels=thick")
"""The pixel strata of ``cloudbench.reconstruction`` (cloud-mask values 0, 1, 2), in order."""

NOMINAL_COVERAGE = {"within_1sigma": 0.6827, "within_2sigma": 0.9545}
"""A Gaussian's share within 1 and 2 standard deviations: a calibrated model's within_*."""

COVERED_STATES = ("state=thin", "state=thick", "state=mixed")
FREE_STATE = "state=clear"
STATE_STRATA = (FREE_STATE, *COVERED_STATES)

PROFILE_COLUMNS = (
    # metric, column header, scale, decimals, show the std over seeds
    ("train_samples_per_second", "train samples/s", 1.0, 1, True),
    ("train_seconds_per_epoch", "train s/epoch", 1.0, 2, True),
    ("predict_samples_per_second", "predict samples/s", 1.0, 1, True),
    ("peak_memory_bytes", "peak memory (MiB)", 1.0 / 2**20, 0, True),
    ("parameters", "parameters (M)", 1e-6, 2, False),
    ("gflops", "GFLOPs", 1.0, 2, False),
    ("pipeline_seconds", "pipeline s", 1.0, 1, True),
    ("device_hours", "device-hours", 1.0, 4, True),
)

_STATS = ("mean", "std", "seeds", "ci_low", "ci_high")
_KEYS = (*GROUP, "method")
_DASH = "–"
_DPI = 110
# files render() owns in OUT/: a stale one from an earlier render is removed when not rewritten
_OWNED_PLOT = re.compile(
    r"^(bars_.+|cloud_covered_vs_free|loss_curves|metric_vs_.+|robustness_.+)\.png$"
)


def direction(metric: str) -> int:
    """Which mean of ``metric`` is best: 1 the highest (OA, AA, Kappa, AP, per-class accuracy,
    PSNR, SSIM), -1 the lowest (:data:`LOWER_IS_BETTER`), 0 none (:data:`NOT_RANKED`)."""
    if metric in LOWER_IS_BETTER:
        return -1
    if metric in NOT_RANKED:
        return 0
    return 1


def _best(means: pd.Series, metric: str) -> float:
    """The best of ``means`` in ``metric``'s direction; NaN when none is defined or unranked."""
    means = pd.to_numeric(means, errors="coerce").astype(float)
    sign = direction(metric)
    if sign == 0 or not means.notna().any():
        return math.nan
    return float(means.max() if sign > 0 else means.min())


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def load_published(name: str | os.PathLike[str]) -> pd.DataFrame:
    """Results reported by a paper: ``catalogs/published/<name>.yaml``, or a YAML file by path
    (a name ending in ``.yaml``/``.yml``, or an existing file; relative to the working
    directory).

    One row per (table, method) with columns :data:`PUBLISHED_COLUMNS`; OA, AA, AP_macro and
    AP_micro in percent, Kappa as a fraction, RMSE and MAE in reflectance units ([0, 1] data),
    PSNR in dB, SSIM as a fraction, SAM in degrees, NaN where the paper's value could not be
    read (left out of the file). A table's ``source`` defaults to "" (a method without a source
    model), its ``test`` (the dataset tested on) to its ``dataset`` (the one trained on), and
    its ``note`` (shown under the tables it appears in) to "".
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        where = str(path)
        if not path.is_file():
            raise CloudbenchError(f"no published results file at {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise CloudbenchError(f"{path} is not valid YAML: {err}") from err
    else:
        data = load_yaml("published", f"{name}.yaml")
        where = f"catalogs/published/{name}.yaml"
    if not isinstance(data, dict) or "paper" not in data or not isinstance(
        data.get("tables"), list
    ):
        raise CloudbenchError(f"{where}: expected the keys 'paper' and 'tables' (a list)")
    paper = str(data["paper"])
    label = str(data.get("label") or paper)
    rows = []
    for t, table in enumerate(data["tables"]):
        if not isinstance(table, dict):
            raise CloudbenchError(f"{where}: tables[{t}] is not a mapping")
        missing = {"table", "dataset", "rows"} - set(table)
        if missing:
            raise CloudbenchError(f"{where}: tables[{t}] lacks {', '.join(sorted(missing))}")
        unknown_keys = set(table) - set(PUBLISHED_TABLE_KEYS)
        if unknown_keys:
            raise CloudbenchError(
                f"{where}: tables[{t}] has unknown keys {', '.join(sorted(map(str, unknown_keys)))}"
                f"; allowed: {', '.join(PUBLISHED_TABLE_KEYS)}"
            )
        dataset = str(table["dataset"])
        for r, row in enumerate(table["rows"]):
            unknown = set(row) - {"method", "name", *PUBLISHED_METRICS}
            if "method" not in row or unknown:
                raise CloudbenchError(
                    f"{where}: tables[{t}].rows[{r}] needs 'method' and may hold only name, "
                    f"{', '.join(PUBLISHED_METRICS)}; got {', '.join(sorted(map(str, row)))}"
                )
            rows.append({
                "paper": paper,
                "label": label,
                "table": "" if table["table"] is None else str(table["table"]),
                "source": str(table.get("source") or ""),
                "dataset": dataset,
                "test": str(table.get("test") or dataset),
                "method": str(row["method"]),
                "name": str(row.get("name", row["method"])),
                **{m: float(row[m]) if row.get(m) is not None else math.nan
                   for m in PUBLISHED_METRICS},
                "note": str(table.get("note") or "").strip(),
            })
    return pd.DataFrame(rows, columns=list(PUBLISHED_COLUMNS))


def _published_frame(published: pd.DataFrame | None) -> pd.DataFrame | None:
    """A published table with every column of :data:`PUBLISHED_COLUMNS` (a frame made by hand
    may lack some): ``test`` defaults to ``dataset``, ``source`` and ``note`` to ""."""
    if published is None:
        return None
    frame = published.reindex(columns=[*PUBLISHED_COLUMNS,
                                       *(c for c in published.columns
                                         if c not in PUBLISHED_COLUMNS)]).copy()
    for column in ("source", "note", "label", "paper", "table", "dataset", "method", "name"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "").astype(str)
    frame["name"] = frame["name"].where(frame["name"] != "", frame["method"])
    test = frame["test"].astype(object)
    frame["test"] = test.where(test.notna() & (test.astype(str) != ""),
                               frame["dataset"]).astype(str)
    for m in PUBLISHED_METRICS:
        frame[m] = pd.to_numeric(frame[m], errors="coerce").astype(float)
    return frame


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def summary_table(
    results: pd.DataFrame, metrics: Sequence[str] | None = None, *, split: str = "test"
) -> pd.DataFrame:
    """Per (dataset, source, sweep, test, method): each metric aggregated over seeds
    (``dataset``: trained on; ``test``: tested on, the same for a run's own test split).

    Uses the ``kind == "metric"`` rows of stratum ``all`` and the given ``split``. For each
    metric ``m`` the columns are ``m_mean`` and ``m_std`` (mean and sample standard deviation,
    ddof=1, of the per-seed values; std is NaN for one seed), ``m_seeds`` (seeds with a defined
    value) and ``m_ci_low``, ``m_ci_high``: the **mean over seeds of the per-seed bootstrap
    bounds**, i.e. the typical interval of one run, not a confidence interval of the mean.
    Values stay in the results' units (fractions for OA/AA/AP). ``metrics`` defaults to every
    metric present. Rows in group order (sweep values numerically), methods as first seen.
    """
    rows = _metric_rows(results, split)
    rows = rows[rows["stratum"] == "all"]
    if metrics is None:
        metrics = list(dict.fromkeys(rows["metric"]))
    metrics = list(metrics)
    rows = rows[rows["metric"].isin(metrics)]
    columns = [*_KEYS, *(f"{m}_{s}" for m in metrics for s in _STATS)]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    per_seed = _per_seed(rows, [*_KEYS, "metric"], ["value", "ci_low", "ci_high"])
    stats = per_seed.groupby([*_KEYS, "metric"], sort=False).agg(
        mean=("value", "mean"),
        std=("value", "std"),
        seeds=("value", "count"),
        ci_low=("ci_low", "mean"),
        ci_high=("ci_high", "mean"),
    )
    wide = stats.unstack("metric")
    wide.columns = [f"{metric}_{stat}" for stat, metric in wide.columns]
    wide = wide.reindex(columns=columns[len(_KEYS):]).reset_index()
    for m in metrics:
        wide[f"{m}_seeds"] = wide[f"{m}_seeds"].fillna(0).astype(int)
    return _ordered(wide)[columns]


def cloud_covered_vs_free(
    results: pd.DataFrame, metric: str = "OA", *, split: str = "test"
) -> pd.DataFrame:
    """Accuracy on cloud-covered vs cloud-free test samples (the ESCCS paper's Fig. 7).

    Per run, *covered* is the n-weighted mean of ``metric`` over the strata ``state=thin``,
    ``state=thick`` and ``state=mixed`` (for OA this is exactly the OA of their union), and
    *free* is its value on ``state=clear``. Returns, per (dataset, source, sweep, test, method):
    ``covered_mean, covered_std, free_mean, free_std`` (over seeds, std with ddof=1),
    ``seeds`` (seeds with both values) and ``n_covered, n_free`` (samples per run, mean over
    seeds). Methods without state strata are left out.
    """
    columns = [*_KEYS, "covered_mean", "covered_std", "free_mean", "free_std", "seeds",
               "n_covered", "n_free"]
    rows = _metric_rows(results, split)
    rows = rows[(rows["metric"] == metric)
                & rows["stratum"].isin([*COVERED_STATES, FREE_STATE])
                & rows["value"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = rows.assign(
        covered=rows["stratum"].isin(COVERED_STATES),
        weighted=rows["value"] * rows["n"],
    )
    seed_keys = [*_KEYS, "seed"]
    covered = rows[rows["covered"]].groupby(seed_keys, sort=False)[["weighted", "n"]].sum()
    covered = pd.DataFrame({
        "covered": covered["weighted"] / covered["n"], "n_covered": covered["n"],
    })
    free = rows[~rows["covered"]].groupby(seed_keys, sort=False).agg(
        free=("value", "mean"), n_free=("n", "mean")
    )
    both = covered.join(free, how="inner").reset_index()
    if both.empty:
        return pd.DataFrame(columns=columns)
    table = both.groupby(list(_KEYS), sort=False).agg(
        covered_mean=("covered", "mean"),
        covered_std=("covered", "std"),
        free_mean=("free", "mean"),
        free_std=("free", "std"),
        seeds=("seed", "nunique"),
        n_covered=("n_covered", "mean"),
        n_free=("n_free", "mean"),
    ).reset_index()
    return _ordered(table)[columns]


_FRACTION_STRATUM = re.compile(r"^fraction=\[([^,\])]+),([^,\])]+)[)\]]$")


def fraction_bin(stratum: str) -> tuple[float, float] | None:
    """The edges ``(a, b)`` of a cloud-fraction stratum ``fraction=[a,b)`` (the last bin of
    :func:`cloudbench.metrics.evaluate` is ``fraction=[a,b]``); None for any other stratum."""
    match = _FRACTION_STRATUM.match(stratum)
    if match is None:
        return None
    low, high = _as_float(match.group(1)), _as_float(match.group(2))
    return None if low is None or high is None else (low, high)


def robustness_curves(
    results: pd.DataFrame, metrics: Sequence[str] | None = None, *, split: str = "test"
) -> pd.DataFrame:
    """Each metric against measured cloud: its value per cloud-fraction bin (the
    ``fraction=[a,b)`` strata of :func:`cloudbench.metrics.evaluate`, bins of each sample's
    measured cloud fraction).

    Per (dataset, source, sweep, test, method, metric) and bin: ``low``, ``high`` (the bin's
    edges), ``fraction`` (its midpoint, the curve's x: the results hold no sample's own
    fraction), ``mean`` and ``std`` (over seeds, ddof=1, of the per-seed values), ``seeds``
    (seeds with a defined value) and ``n`` (samples per run, mean over seeds). ``metrics``
    defaults to every metric with such strata. Rows in group order, methods as first seen, then
    metrics in ``metrics``' order, then bins by fraction.
    """
    keys = [*_KEYS, "metric", "stratum"]
    columns = [*keys, "low", "high", "fraction", "mean", "std", "seeds", "n"]
    rows = _metric_rows(results, split)
    edges = {s: edge for s in set(rows["stratum"]) if (edge := fraction_bin(s)) is not None}
    table, metrics = _stratum_means(rows[rows["stratum"].isin(list(edges))], metrics)
    if table.empty:
        return pd.DataFrame(columns=columns)
    table["low"] = [edges[s][0] for s in table["stratum"]]
    table["high"] = [edges[s][1] for s in table["stratum"]]
    table["fraction"] = (table["low"] + table["high"]) / 2
    table["order"] = table["metric"].map({m: i for i, m in enumerate(metrics)})
    table = table.sort_values(["order", "fraction"], kind="stable")
    return _ordered(table)[columns]


def robustness_score(fraction: Sequence[float], values: Sequence[float],
                     reference: float) -> float:
    """The normalised area under a robustness curve: the trapezoid area under ``values`` over
    ``fraction`` (sorted by fraction), divided by ``reference`` times the fraction range, the
    area of a method that scores ``reference`` at every fraction. Points with an undefined
    value are left out; NaN with fewer than two points left or a reference that is not a
    positive number."""
    x = np.asarray(fraction, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if len(x) < 2 or x[-1] == x[0] or not _finite(reference) or reference <= 0:
        return math.nan
    area = float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())
    return area / (reference * (x[-1] - x[0]))


def robustness_scores(
    results: pd.DataFrame, metrics: Sequence[str] | None = None, *, split: str = "test"
) -> pd.DataFrame:
    """The robustness score of each method and metric: :func:`robustness_score` of its
    :func:`robustness_curves` curve (the mean over seeds per bin, at the bins' midpoints) with
    the reference its overall value (stratum ``all``, the mean over seeds: ``m_mean`` of
    :func:`summary_table`).

    1 means no loss under cloud: the method scores, across the bins' range of cloud fractions,
    what it scores overall; below 1 it scores less under cloud; above 1 more across the range
    than overall (the curve counts the bins alike, the overall value weights them by their
    samples). Per (dataset, source, sweep,
    test, method, metric) with fraction strata: ``score``, ``bins`` (the bins with a value)
    and ``reference``.
    """
    curves = robustness_curves(results, metrics, split=split)
    metrics = list(dict.fromkeys(curves["metric"]))
    return _robustness_scores(curves, summary_table(results, metrics, split=split))


def _robustness_scores(curves: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`robustness_scores` from the curves and the summary table of the same results."""
    columns = [*_KEYS, "metric", "score", "bins", "reference"]
    keys = [*_KEYS, "metric"]
    out = []
    overall = summary.set_index(list(_KEYS)) if not summary.empty else summary
    for key, curve in curves.groupby(keys, sort=False):
        column = f"{key[-1]}_mean"
        where = tuple(key[:-1])
        reference = (float(overall.at[where, column])
                     if column in overall.columns and where in overall.index else math.nan)
        out.append({**dict(zip(keys, key, strict=True)),
                    "score": robustness_score(curve["fraction"], curve["mean"], reference),
                    "bins": int(curve["mean"].notna().sum()), "reference": reference})
    return pd.DataFrame(out, columns=columns)


def pixel_strata_table(
    results: pd.DataFrame, metrics: Sequence[str] | None = None, *, split: str = "test"
) -> pd.DataFrame:
    """The pixel metrics per cloud stratum of the input's pixels (``pixels=clear``,
    ``pixels=thin``, ``pixels=thick``; see ``cloudbench.reconstruction``).

    Per (dataset, source, sweep, test, method, stratum): for each metric ``m`` (default: the
    :data:`PIXEL_METRICS` present in those strata) ``m_mean``, ``m_std`` (over seeds, ddof=1)
    and ``m_seeds`` (seeds with a defined value), and ``n``: the images the values come from
    (those with at least one pixel of the stratum; per seed the largest ``n`` over the metrics,
    then the mean over seeds). Rows in group order, then stratum order clear, thin, thick, then
    methods as first seen; a stratum with no image (NaN values, ``n`` 0) is kept.
    """
    rows = _metric_rows(results, split)
    rows = rows[rows["stratum"].isin(PIXEL_STRATA)]
    if metrics is None:
        present = set(rows["metric"])
        metrics = [m for m in PIXEL_METRICS if m in present]
    metrics = list(metrics)
    rows = rows[rows["metric"].isin(metrics)]
    keys = [*_KEYS, "stratum"]
    columns = [*keys, *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "seeds")), "n"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    per_seed = _per_seed(rows, [*keys, "metric"], ["value", "n"])
    stats = per_seed.groupby([*keys, "metric"], sort=False)["value"].agg(
        mean="mean", std="std", seeds="count")
    wide = stats.unstack("metric")
    wide.columns = [f"{metric}_{stat}" for stat, metric in wide.columns]
    wide = wide.reindex(columns=columns[len(keys):-1])
    images = per_seed.groupby([*keys, "seed"], sort=False)["n"].max()
    wide["n"] = images.groupby(keys, sort=False).mean().reindex(wide.index).fillna(0.0)
    wide = wide.reset_index()
    for m in metrics:
        wide[f"{m}_seeds"] = wide[f"{m}_seeds"].fillna(0).astype(int)
    wide = _ordered(wide)
    group = wide[list(GROUP)].apply(tuple, axis=1)
    firsts = {g: i for i, g in enumerate(dict.fromkeys(group))}
    strata = {s: i for i, s in enumerate(PIXEL_STRATA)}
    order = sorted(range(len(wide)), key=lambda i: (firsts[group.iat[i]],
                                                    strata[wide["stratum"].iat[i]]))
    return wide.iloc[order].reset_index(drop=True)[columns]


def sweep_table(
    results: pd.DataFrame, metrics: Sequence[str] | None = None, *, split: str = "test"
) -> pd.DataFrame:
    """The swept groups of :func:`summary_table`, with the sweep parsed.

    A sweep is ``"name=value"`` or several such pairs joined by commas. Adds ``sweep_name``
    and ``sweep_value`` (float) for every pair whose value is a number, and ``series``: the
    method, followed by the sweep's other pairs in parentheses (a row per numeric pair).
    """
    summary = summary_table(results, metrics, split=split)
    summary = summary[summary["sweep"] != ""]
    out = []
    for row in summary.to_dict("records"):
        pairs = _parse_sweep(row["sweep"])
        for name, value in pairs.items():
            number = _as_float(value)
            if number is None:
                continue
            others = ", ".join(f"{k}={v}" for k, v in pairs.items() if k != name)
            series = f"{row['method']} ({others})" if others else row["method"]
            out.append({**row, "sweep_name": name, "sweep_value": number, "series": series})
    columns = [*summary.columns, "sweep_name", "sweep_value", "series"]
    return pd.DataFrame(out, columns=columns)


def _stratum_means(rows: pd.DataFrame, metrics: Sequence[str] | None
                   ) -> tuple[pd.DataFrame, list[str]]:
    """Per (group keys, metric, stratum) of the metric ``rows`` of some strata: ``mean``,
    ``std`` (ddof=1) and ``seeds`` of the per-seed values and ``n`` (mean test samples), for
    ``metrics`` (default: every metric of ``rows``, as first seen); also returns those metrics.
    Empty when no row is left."""
    metrics = list(dict.fromkeys(rows["metric"])) if metrics is None else list(metrics)
    rows = rows[rows["metric"].isin(metrics)]
    if rows.empty:
        return pd.DataFrame(), metrics
    keys = [*_KEYS, "metric", "stratum"]
    per_seed = _per_seed(rows, keys, ["value", "n"])
    table = per_seed.groupby(keys, sort=False).agg(
        mean=("value", "mean"), std=("value", "std"), seeds=("value", "count"), n=("n", "mean"),
    ).reset_index()
    return table, metrics


REFERENCE_FACTOR = "default"
"""The ``factor`` of a spec's reference entries (as is no factor): in every factor's table."""


def factor_rows(factors: Mapping[str, str | None]) -> tuple[list[str], dict[str, list[str]]]:
    """``(references, variants)`` of a spec's entries, ``factors`` mapping each entry's row
    name to its ``factor``: the names without a factor (None, "" or :data:`REFERENCE_FACTOR`),
    and per factor (in order of first appearance) the names that vary it, in the spec's order.
    """
    references: list[str] = []
    variants: dict[str, list[str]] = {}
    for name, factor in factors.items():
        if factor is None or factor in ("", REFERENCE_FACTOR):
            references.append(name)
        else:
            variants.setdefault(factor, []).append(name)
    return references, variants


def strata_table(
    results: pd.DataFrame, metrics: Sequence[str] | None = None, *, split: str = "test"
) -> pd.DataFrame:
    """Each metric per cloud stratum of the test samples: the ``state=`` strata (clear, thin,
    thick, mixed) and the ``fraction=`` bins of :func:`cloudbench.metrics.evaluate`.

    Per (dataset, source, sweep, test, method, metric, stratum): ``mean`` and ``std`` (over
    seeds, ddof=1, of the per-seed values), ``seeds`` (seeds with a defined value) and ``n``
    (test samples per run in the stratum, mean over seeds). ``metrics`` defaults to every metric
    with such strata. Rows in group order, methods as first seen, then metrics in ``metrics``'
    order, then the states in that order, then the bins by fraction.
    """
    keys = [*_KEYS, "metric", "stratum"]
    columns = [*keys, "mean", "std", "seeds", "n"]
    rows = _metric_rows(results, split)
    table, metrics = _stratum_means(
        rows[rows["stratum"].isin(STATE_STRATA)
             | rows["stratum"].map(lambda s: fraction_bin(s) is not None)], metrics)
    if table.empty:
        return pd.DataFrame(columns=columns)
    table["order"] = [(metrics.index(m), _stratum_order(s))
                      for m, s in zip(table["metric"], table["stratum"], strict=True)]
    table = table.sort_values("order", kind="stable")
    return _ordered(table)[columns]


def _stratum_order(stratum: str) -> tuple[int, float]:
    """The states in :data:`STATE_STRATA`'s order, then the fraction bins by their low edge."""
    if stratum in STATE_STRATA:
        return (0, float(STATE_STRATA.index(stratum)))
    edges = fraction_bin(stratum)
    return (1, edges[0] if edges is not None else math.inf)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render(
    out: str | os.PathLike[str],
    metrics: Sequence[str] | None = None,
    published: pd.DataFrame | str | None = None,
    title: str | None = None,
    stores: Mapping[tuple[str, str], str | os.PathLike[str]] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    factors: Mapping[str, str | None] | None = None,
) -> list[Path]:
    """Write the leaderboard of a results folder into it; return the paths written.

    * ``leaderboard.md`` and ``leaderboard.html`` (self-contained, plots embedded): one table
      per (dataset, source, sweep, test) group (a test on another dataset than the one trained
      on is its own group, headed ``<test>, trained on <dataset>``), rows = methods, a column
      per metric of ``metrics`` that the group's results hold (OA, AA, Kappa for a multiclass
      dataset, AP_macro, AP_micro for a multilabel one: a spec that mixes them gives each table
      its own), cells
      ``mean ± std [ci_low, ci_high]`` (see :func:`summary_table`; OA/AA/AP and per-class
      accuracy in percent, Kappa as is; pixel metrics: see :func:`format_cell`), the best mean
      per column in bold (in the metric's :func:`direction`; methods ranked by the first ranked
      metric shown), a line with the seeds per method, for a group with ``pixels=`` strata a
      table of its pixel metrics per stratum (:func:`pixel_strata_table`), then a profile table.
      ``published`` (a :func:`load_published` table, or the name or path of one) adds rows
      marked "reported by <paper>" to the unswept groups whose ``dataset``, ``test`` and
      ``source`` equal the published table's, and the table's ``note`` under them.
      When any run was tested on another dataset: per (source, sweep) with such runs, a cross
      table per metric (rows = method × dataset trained on, columns = datasets tested on,
      cells ``mean ± std`` over seeds), with the published rows of those pairs.
      Beside each metric with a paired test (:mod:`cloudbench.harness.significance`: OA, AA,
      Kappa, AP_macro, AP_micro), a column ``p (<metric>)``: the p-value of each method
      against the group's best (``best``), marked ``≈`` where it is not distinguishable at
      ``ALPHA``; it needs the runs' predictions and the test stores (``stores``: (dataset,
      sweep value) -> store root, as the runner's dataset roots; by default those built in
      ``OUT/datasets``), the tests' bootstrap and permutations drawing ``resamples`` each. Last,
      ``robustness (<metric>)``: :func:`robustness_scores` of the first metric shown with
      cloud-fraction strata. ``factors`` (a spec's entries: row name -> ``factor``, see
      :func:`factor_rows`; any entry with a factor) adds, per group, a table per factor: the
      reference entries, then that factor's, with the metrics (``mean ± std`` over seeds) and
      the first metric with strata per cloud state and cloud-fraction bin
      (:func:`strata_table`), bold the best per column, and the test samples per stratum.
      Every table of the HTML page sorts by a column when its header is clicked (a small
      inline script).
    * ``bars_<metric>.png``: per-method bars with the std over seeds as error bars;
      ``cloud_covered_vs_free.png`` (needs ``state=`` strata); ``loss_curves.png`` (needs
      ``loss_*`` history terms); ``metric_vs_<sweep name>.png`` (needs swept runs). These three
      draw only the unswept groups when there are any (the sweep has its own plot), else all;
      ``robustness_<metric>.png`` (needs ``fraction=`` strata): :func:`robustness_curves`, a
      line per method with its robustness score, a panel per group (unswept ones when any).
      A plot whose data is absent is not written, and a stale one from an earlier render removed.

    ``metrics`` defaults to those of :data:`DEFAULT_METRICS` and then :data:`PIXEL_METRICS`
    present in the results (else all summary metrics without a ``/``); ``title`` to the
    leaderboard name(s).
    """
    out = Path(out)
    if not out.is_dir():
        raise CloudbenchError(f"no results folder {out}: run the leaderboard first")
    results = read_table(out)
    histories = read_histories(out)
    if isinstance(published, str):
        published = load_published(published)
    published = _published_frame(published)
    results = _normalised(results)
    if metrics is None:
        metrics = _default_metrics(results)
    metrics = list(metrics)
    if title is None:
        names = sorted({str(n) for n in results["leaderboard"].dropna() if str(n)})
        title = "Leaderboard: " + ", ".join(names) if names else "Leaderboard"

    summary = summary_table(results, metrics)
    plots: dict[str, bytes] = {}
    for metric in metrics:
        fig = _bars_figure(summary, metric, published)
        if fig is not None:
            plots[f"bars_{_file_part(metric)}.png"] = _png(fig)
    covered = cloud_covered_vs_free(results)
    fig = _covered_figure(covered)
    if fig is not None:
        plots["cloud_covered_vs_free.png"] = _png(fig)
    fig = _loss_figure(histories)
    if fig is not None:
        plots["loss_curves.png"] = _png(fig)
    swept = sweep_table(results, metrics)
    for name in dict.fromkeys(swept["sweep_name"]):
        fig = _sweep_figure(swept[swept["sweep_name"] == name], name, metrics)
        if fig is not None:
            plots[f"metric_vs_{_file_part(name)}.png"] = _png(fig)
    curves = robustness_curves(results, metrics)
    scores = _robustness_scores(curves, summary)
    for metric in dict.fromkeys(curves["metric"]):
        fig = _robustness_figure(curves[curves["metric"] == metric], metric, scores)
        if fig is not None:
            plots[f"robustness_{_file_part(metric)}.png"] = _png(fig)
    tests = paired_tests(results, out, metrics, stores, resamples=resamples,
                         permutations=resamples)

    written = []
    for name, data in plots.items():
        written.append(_atomic_write(out / name, data))
    for stale in out.iterdir():
        if _OWNED_PLOT.match(stale.name) and stale.name not in plots and stale.is_file():
            stale.unlink()
    document = _document(results, summary, metrics, published, title, list(plots), tests,
                         scores, resamples, factors or {})
    written.insert(0, _atomic_write(out / "leaderboard.md", _markdown(document).encode()))
    written.insert(1, _atomic_write(out / "leaderboard.html", _html(document, plots).encode()))
    return written


# --------------------------------------------------------------------------------------------
# Helpers: reading and aggregation
# --------------------------------------------------------------------------------------------


def _normalised(results: pd.DataFrame) -> pd.DataFrame:
    """Group keys as strings ("" for missing), so that groupby never drops a row; a missing
    ``test`` is the row's ``dataset`` (results written before the column existed)."""
    results = with_test(results)
    for column in (*_KEYS, "kind", "metric", "split", "stratum"):
        results[column] = results[column].astype(object).where(results[column].notna(), "")
        results[column] = results[column].astype(str)
    for column in ("value", "ci_low", "ci_high", "n"):
        results[column] = pd.to_numeric(results[column], errors="coerce").astype(float)
    return results


def _metric_rows(results: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = _normalised(results)
    return rows[(rows["kind"] == "metric") & (rows["split"] == split)]


def _per_seed(rows: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    """One row per (keys, seed): duplicate runs of a seed (a re-run) are averaged."""
    return rows.groupby([*keys, "seed"], sort=False)[values].mean().reset_index()


def _default_metrics(results: pd.DataFrame) -> list[str]:
    present = set(results.loc[(results["kind"] == "metric") & (results["stratum"] == "all"),
                              "metric"])
    chosen = [m for m in (*DEFAULT_METRICS, *PIXEL_METRICS) if m in present]
    return chosen or sorted(m for m in present if "/" not in m)


def _parse_sweep(sweep: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in sweep.split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            pairs[name.strip()] = value.strip()
    return pairs


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _sweep_order(sweep: str) -> tuple:
    """"" first, then by name and numeric value."""
    if not sweep:
        return (0,)
    pairs = tuple((k, _as_float(v) if _as_float(v) is not None else math.inf, v)
                  for k, v in _parse_sweep(sweep).items())
    return (1, pairs, sweep)


Group = tuple[str, str, str, str]
"""(dataset trained on, source, sweep, dataset tested on): see :data:`GROUP`."""


def _test_order(dataset: str, test: str) -> tuple[bool, str]:
    """A dataset's own test split first, then the others by name."""
    return (test != dataset, test)


def _group_order(group: Group) -> tuple:
    dataset, source, sweep, test = group
    return (dataset, source, _sweep_order(sweep), _test_order(dataset, test))


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Groups sorted by dataset, source, sweep (numerically), then the dataset's own test split
    before the others; methods in first-seen order."""
    if table.empty:
        return table.reset_index(drop=True)
    first_seen = {m: i for i, m in enumerate(dict.fromkeys(table["method"]))}
    test = table["test"] if "test" in table.columns else table["dataset"]
    order = sorted(
        range(len(table)),
        key=lambda i: (*_group_order((table["dataset"].iat[i], table["source"].iat[i],
                                      table["sweep"].iat[i], test.iat[i])),
                       first_seen[table["method"].iat[i]]),
    )
    return table.iloc[order].reset_index(drop=True)


def _groups(table: pd.DataFrame) -> list[Group]:
    keys = dict.fromkeys(zip(table["dataset"], table["source"], table["sweep"], table["test"],
                             strict=True))
    return sorted(keys, key=_group_order)


def _in_group(table: pd.DataFrame, group: Group) -> pd.DataFrame:
    dataset, source, sweep, test = group
    return table[(table["dataset"] == dataset) & (table["source"] == source)
                 & (table["sweep"] == sweep) & (table["test"] == test)]


def _plot_groups(table: pd.DataFrame) -> list[Group]:
    """Groups drawn in the per-group figures: the unswept ones if any, else all."""
    groups = _groups(table)
    unswept = [g for g in groups if g[2] == ""]
    return unswept or groups


def _published_for(published: pd.DataFrame | None, group: Group) -> pd.DataFrame:
    """The published rows for a group: same dataset (trained on), test dataset and source;
    never for swept groups."""
    if published is None or published.empty or group[2] != "":
        return pd.DataFrame(columns=list(PUBLISHED_COLUMNS))
    dataset, source, _, test = group
    rows = published[(published["dataset"].astype(str) == dataset)
                     & (published["test"].astype(str) == test)
                     & (published["source"].astype(str) == source)]
    return rows


def _paper_label(row: Any) -> str:
    label = row.get("label") if hasattr(row, "get") else None
    if label is None or (isinstance(label, float) and math.isnan(label)) or not str(label):
        label = row["paper"]
    return str(label)


# --------------------------------------------------------------------------------------------
# Helpers: number formatting
# --------------------------------------------------------------------------------------------


_PIXEL_DECIMALS = {
    # metric: decimals of (mean and std, CI bounds), in the shown unit
    "PSNR": (2, 2),  # dB
    "SSIM": (3, 3),
    "SAM": (2, 2),  # degrees
    "RMSE": (4, 4), "MAE": (4, 4),  # reflectance units of [0, 1] data
    "UCE": (4, 4), "AUCE": (4, 4),
    "within_1sigma": (1, 1), "within_2sigma": (1, 1),  # percent
}
_UNITS = {"PSNR": "dB", "SAM": "°"}


def _is_percent(metric: str) -> bool:
    return metric in ("OA", "AA", *NOT_RANKED) or metric.startswith(("AP", "acc/"))


def _scale(metric: str) -> float:
    return 100.0 if _is_percent(metric) else 1.0


def _decimals(metric: str) -> tuple[int, int]:
    """Decimals of (mean and std, CI bounds)."""
    if metric in _PIXEL_DECIMALS:
        return _PIXEL_DECIMALS[metric]
    if _is_percent(metric):
        return 2, 1
    if metric == "Kappa":
        return 3, 3
    return 4, 4


def _header(metric: str) -> str:
    if _is_percent(metric):
        return f"{metric} (%)"
    return f"{metric} ({_UNITS[metric]})" if metric in _UNITS else metric


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def format_cell(metric: str, mean: float, std: float, low: float, high: float) -> str:
    """``78.50 ± 1.20 [76.9, 80.1]`` (OA/AA/AP in percent), ``0.754 ± 0.012 [0.740, 0.770]``
    (Kappa); the std is left out when undefined (one seed), the interval when NaN.

    Pixel metrics: PSNR (dB) and SAM (degrees) with 2 decimals, SSIM with 3, RMSE, MAE, UCE and
    AUCE with 4 (in the data's units), within_1sigma and within_2sigma in percent with 1; the
    interval with as many decimals as the mean."""
    if not _finite(mean):
        return _DASH
    scale = _scale(metric)
    d, c = _decimals(metric)
    text = f"{mean * scale:.{d}f}"
    if _finite(std):
        text += f" ± {std * scale:.{d}f}"
    if _finite(low) and _finite(high):
        text += f" [{low * scale:.{c}f}, {high * scale:.{c}f}]"
    return text


def _format_published(metric: str, value: Any) -> str:
    """A paper's number as printed (OA/AA already in percent; a pixel metric with the decimals
    of our own cells: PSNR 28.90, SSIM 0.880, SAM 8.32, RMSE 0.0510)."""
    if not _finite(value):
        return _DASH
    if metric in _PIXEL_DECIMALS:
        return f"{float(value):.{_PIXEL_DECIMALS[metric][0]}f}"
    return f"{float(value):.3f}" if metric == "Kappa" else f"{float(value):.2f}"


def _table_ref(table: Any) -> str:
    """`` (Table <n>)`` for a row label; "" where the published table has no number."""
    text = "" if table is None or (isinstance(table, float) and math.isnan(table)) else str(table)
    return f" (Table {text})" if text else ""


# --------------------------------------------------------------------------------------------
# The document: one structure, written as Markdown and as HTML
# --------------------------------------------------------------------------------------------


class _Cell:
    """A table cell; ``number``: formatted by this module, shown as is in Markdown."""

    def __init__(self, text: str, bold: bool = False, number: bool = True):
        self.text, self.bold, self.number = text, bold, number


class _Table:
    """Header, rows of cells, which rows are reported by a paper, which columns are numbers."""

    def __init__(self, header: list[str], rows: list[list[_Cell]], reported: list[bool],
                 numeric: list[bool]):
        self.header, self.rows, self.reported, self.numeric = header, rows, reported, numeric


def _document(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    metrics: list[str],
    published: pd.DataFrame | None,
    title: str,
    plots: list[str],
    tests: pd.DataFrame,
    scores: pd.DataFrame,
    resamples: int,
    factors: Mapping[str, str | None],
) -> list[tuple[str, Any]]:
    """A list of blocks: ("h1" | "h2" | "h3" | "p" | "table" | "img", content)."""
    doc: list[tuple[str, Any]] = [("h1", title)]
    runs = results["run"].nunique() if len(results) else 0
    revisions = sorted({str(r) for r in results["git_revision"].dropna() if str(r)})
    devices = sorted({str(d) for d in results["device"].dropna() if str(d)})
    doc.append(("p", f"{runs} finished runs"
                + (f"; git revision {', '.join(revisions)}" if revisions else "")
                + (f"; devices: {', '.join(devices)}" if devices else "") + "."))
    doc.append(("p", "Cells: mean ± standard deviation over seeds, then in brackets the mean "
                "over seeds of each run's bootstrap 95% interval bounds (the typical interval of "
                "one run, not an interval of the mean). OA, AA, AP and per-class accuracy in "
                "percent, Kappa as a fraction. "
                "The best mean of each column is in bold. Rows marked \"reported by\" hold "
                "numbers copied from a paper, not results of this harness."
                + (_PIXEL_CELLS if _shows_pixels(summary, metrics) else "")))
    tested = [m for m in metrics if m in TESTED and f"{m}_mean" in summary
              and summary[f"{m}_mean"].notna().any()]
    if tested:
        doc.append(("p", _tests_note(tests, resamples)))
    if not scores.empty:
        doc.append(("p", _ROBUSTNESS_NOTE))
    references, variants = factor_rows(factors)
    if variants:
        doc.append(("p", _FACTOR_NOTE))
    strata = strata_table(results, metrics) if variants else pd.DataFrame()
    if summary.empty:
        doc.append(("p", "No finished runs with metrics yet."))
    profile = _profile_table(results)
    pixel_strata = pixel_strata_table(results, [m for m in metrics if m in PIXEL_METRICS])
    overall = _metric_rows(results, "test")
    overall = overall[overall["stratum"] == "all"]
    for group in _groups(summary):
        dataset, source, sweep, test = group
        heading = dataset if test == dataset else f"{test}, trained on {dataset}"
        heading += f" · source {source}" if source else ""
        heading += f" · {sweep}" if sweep else ""
        doc.append(("h2", heading))
        rows = _in_group(summary, group)
        # each group's own metrics: a multiclass dataset has no AP rows, a multilabel one no OA
        present = set(_in_group(overall, group)["metric"])
        shown = [m for m in metrics if m in present]
        reported = _published_for(published, group)
        doc.append(("table", _metric_table(rows, shown, reported, _in_group(tests, group),
                                           _in_group(scores, group))))
        doc += _notes(reported if any(m in PUBLISHED_METRICS for m in shown) else None)
        note = _direction_note(shown)
        if note is not None:
            doc.append(("p", note))
        seeds = rows.set_index("method")[[f"{m}_seeds" for m in shown]].max(axis=1)
        seeds = seeds.fillna(0).astype(int)
        if seeds.nunique() == 1:
            doc.append(("p", f"Seeds: {int(seeds.iloc[0])} per method."))
        else:
            doc.append(("p", "Seeds: " + ", ".join(f"{m} {int(s)}" for m, s in seeds.items())
                        + "."))
        for factor, names in variants.items():
            doc += _factor_block(factor, references, names, rows, shown,
                                 _in_group(strata, group) if not strata.empty else strata)
        pixel = [m for m in shown if m in PIXEL_METRICS]
        strata = _in_group(pixel_strata, group) if pixel else pixel_strata.iloc[:0]
        if not strata.empty:
            methods = list(_ranked(rows, shown)["method"])
            doc.append(("h3", "Pixel metrics per cloud stratum of the input "
                        "(mean ± std over seeds)"))
            doc.append(("table", _pixel_strata_block(strata, pixel, methods)))
        prof = _in_group(profile, group)
        if not prof.empty:
            doc.append(("h3", "Profile (mean ± std over seeds)"))
            doc.append(("table", _profile_block(prof)))
    doc += _cross_section(summary, overall, metrics, published)
    if published is not None and not published.empty:
        papers = published.drop_duplicates("paper")
        for row in papers.to_dict("records"):
            doc.append(("p", f"Reported by {_paper_label(row)}: {row['paper']}"))
    if plots:
        doc.append(("h2", "Figures"))
        for name in plots:
            doc.append(("img", name))
    return doc


_FACTOR_NOTE = (
    "Factor tables: one per factor the spec varies (an ablation: each entry of a factor is the "
    "default with that one choice changed), with the reference entries (those without a "
    "factor) first, then the factor's. Cells: mean ± standard deviation over seeds; overall, "
    "then per cloud state and per measured cloud-fraction bin of the test samples (the test "
    "samples per run in each stratum follow the table). The best mean of each column of a "
    "factor's table is in bold.")


def _factor_block(factor: str, references: list[str], names: list[str], rows: pd.DataFrame,
                  metrics: list[str], strata: pd.DataFrame) -> list[tuple[str, Any]]:
    """The factor's table of one group (nothing when none of its entries ran there): a row
    per reference entry, then per entry of the factor; columns the group's metrics, then the
    first of them with strata per state and cloud-fraction bin (:func:`strata_table`)."""
    present = set(rows["method"])
    if not present & set(names):
        return []
    methods = [m for m in (*references, *names) if m in present]
    strata = strata[strata["method"].isin(methods)] if not strata.empty else strata
    metric = next((m for m in metrics if not strata.empty and (strata["metric"] == m).any()),
                  None)
    mine = (strata[strata["metric"] == metric] if metric is not None
            else pd.DataFrame(columns=["method", "stratum", "mean", "std", "n"]))
    levels = list(dict.fromkeys(mine["stratum"]))
    columns = [(m, "all") for m in metrics] + [(str(metric), s) for s in levels]
    # (mean, std) per (method, column): stratum "all" from the summary, the others from strata
    values: dict[tuple[str, tuple[str, str]], tuple[float, float]] = {}
    for row in rows.to_dict("records"):
        for m in metrics:
            values[(row["method"], (m, "all"))] = (row[f"{m}_mean"], row[f"{m}_std"])
    for row in mine.to_dict("records"):
        values[(row["method"], (str(metric), row["stratum"]))] = (row["mean"], row["std"])
    best = {c: _best(pd.Series([values.get((method, c), (math.nan,))[0] for method in methods],
                               dtype=float), c[0]) for c in columns}
    body = []
    for method in methods:
        cells = [_Cell(method, number=False)]
        for column in columns:
            mean, std = values.get((method, column), (math.nan, math.nan))
            cells.append(_Cell(format_cell(column[0], mean, std, math.nan, math.nan),
                               bold=_finite(mean) and float(mean) == best[column]))
        body.append(cells)
    header = ["method", *(_header(m) for m in metrics)]
    header += [f"{_header(str(metric))} {_stratum_label(s)}" for s in levels]
    doc: list[tuple[str, Any]] = [("h3", f"Factor: {factor}")]
    doc.append(("table", _Table(header, body, [False] * len(body),
                                [False] + [True] * (len(header) - 1))))
    if levels:
        counts = mine.groupby("stratum", sort=False)["n"].max()
        doc.append(("p", "Test samples per run: " + ", ".join(
            f"{_stratum_label(s)} {float(counts[s]):,.0f}" for s in levels) + "."))
    return doc


def _stratum_label(stratum: str) -> str:
    """``clear`` for ``state=clear``, ``cloud [0.25,0.5)`` for ``fraction=[0.25,0.5)``."""
    kind, _, value = stratum.partition("=")
    return f"cloud {value}" if kind == "fraction" else value


def _tests_note(tests: pd.DataFrame, resamples: int) -> str:
    """What the ``p (<metric>)`` columns hold, or why there are none."""
    if tests.empty:
        return ("Paired tests against the best: not computed, no run's predictions could be "
                "read against its test dataset's store (see docs/leaderboard.md).")
    return (f"p (metric): the two-sided p-value of a paired test of the method against the "
            f"best of its table in that metric (the highest mean over seeds, marked best), on "
            f"the same test samples (paired by sample id) and seeds: McNemar's exact test for "
            f"OA, a paired bootstrap ({resamples:,} resamples) for AA and Kappa, a paired "
            f"permutation test ({resamples:,} swaps of the two methods' scores per sample) for "
            f"AP; the largest p-value over the seeds. ≈: not distinguishable from the best at "
            f"α = {ALPHA:g} (p ≥ {ALPHA:g}).")


_ROBUSTNESS_NOTE = (
    "robustness (metric): the area under the method's curve of that metric against the "
    "measured cloud fraction (per cloud-fraction bin, at the bin's midpoint, mean over seeds; "
    "trapezoids over the bins present) divided by the area of its overall value over the same "
    "range: 1 means no loss under cloud (it scores its overall value across the range), below "
    "1 a loss, above 1 more across the range than overall (the bins count alike, the overall "
    "value weights them by their samples). The curves are in the robustness figures.")


def _format_p(p: float) -> str:
    """``0.003``, ``< 0.001``, or ``0.412 ≈`` where ``p >= ALPHA`` (not distinguishable)."""
    text = "< 0.001" if p < 0.001 else f"{p:.3f}"
    return f"{text} ≈" if p >= ALPHA else text


_PIXEL_CELLS = (" Pixel metrics (cloud removal, on [0, 1] data): PSNR in dB and SAM in degrees "
                "with two decimals, SSIM with three, RMSE, MAE, UCE and AUCE with four, "
                "within_1sigma and within_2sigma in percent; their best is the highest PSNR and "
                "SSIM and the lowest RMSE, MAE, SAM, UCE and AUCE, and within_* are not ranked. "
                "Per stratum of pixels (clear, thin, thick in the input's cloud mask): mean ± "
                "standard deviation over seeds.")


def _shows_pixels(summary: pd.DataFrame, metrics: list[str]) -> bool:
    """Whether any pixel metric of ``metrics`` has a value in ``summary``."""
    return any(f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()
               for m in metrics if m in PIXEL_METRICS)


def _notes(published: pd.DataFrame | None) -> list[tuple[str, Any]]:
    """A paragraph per published table with a ``note`` among ``published``'s rows."""
    if published is None or published.empty or "note" not in published:
        return []
    tables = published[published["note"].astype(str) != ""].drop_duplicates(
        ["paper", "table", "note"])
    return [("p", f"Note to {_paper_label(row)}"
                  + (f", Table {row['table']}" if str(row["table"]) else "") + f": {row['note']}")
            for row in tables.to_dict("records")]


def _cross_section(summary: pd.DataFrame, overall: pd.DataFrame, metrics: list[str],
                   published: pd.DataFrame | None) -> list[tuple[str, Any]]:
    """When any run was tested on another dataset: per (source, sweep) with such runs, a
    table per metric, rows = method × dataset trained on, columns = datasets tested on."""
    if summary.empty or not (summary["test"] != summary["dataset"]).any():
        return []
    doc: list[tuple[str, Any]] = [("h2", "Trained on one dataset, tested on others")]
    doc.append(("p", "Per metric: a row per method and dataset trained on, a column per "
                "dataset tested on; cells: mean ± standard deviation over seeds. Rows marked "
                "\"reported by\" hold numbers copied from a paper."))
    crossed = summary[summary["test"] != summary["dataset"]]
    for source, sweep in sorted(dict.fromkeys(zip(crossed["source"], crossed["sweep"],
                                                  strict=True)),
                                key=lambda k: (k[0], _sweep_order(k[1]))):
        part = summary[(summary["source"] == source) & (summary["sweep"] == sweep)]
        present = set(overall.loc[(overall["source"] == source) & (overall["sweep"] == sweep),
                                  "metric"])
        reported = None
        if published is not None and not published.empty and sweep == "":
            reported = published[published["source"].astype(str) == source]
        for metric in [m for m in metrics if m in present]:
            table = _cross_table(part, metric, reported)
            if table is None:
                continue
            where = " · ".join(x for x in (f"source {source}" if source else "", sweep) if x)
            doc.append(("h3", _header(metric) + (f" · {where}" if where else "")))
            doc.append(("table", table))
            if reported is not None and metric in PUBLISHED_METRICS:
                doc += _notes(_cross_published(reported, metric, table.header[2:],
                                               sorted(set(part["dataset"]))))
    return doc


def _cross_published(published: pd.DataFrame, metric: str, tests: list[str],
                     datasets: list[str]) -> pd.DataFrame:
    """The published rows with a ``metric`` value for a (trained on, tested on) pair shown."""
    return published[published["dataset"].isin(datasets) & published["test"].isin(tests)
                     & published[metric].notna()]


def _cross_table(summary: pd.DataFrame, metric: str,
                 published: pd.DataFrame | None) -> _Table | None:
    """Rows = method × dataset trained on (with a value), columns = datasets tested on."""
    column = f"{metric}_mean"
    if column not in summary:
        return None
    rows = summary[summary[column].notna()]
    if rows.empty:
        return None
    datasets = sorted(set(rows["dataset"]))
    tests = sorted(set(rows["test"]))
    methods = list(dict.fromkeys(rows["method"]))
    best = {test: _best(means, metric) for test, means in rows.groupby("test")[column]}
    body: list[list[_Cell]] = []
    reported: list[bool] = []
    for method in methods:
        for dataset in datasets:
            mine = rows[(rows["method"] == method) & (rows["dataset"] == dataset)]
            if mine.empty:
                continue
            by_test = mine.set_index("test")
            cells = [_Cell(method, number=False), _Cell(dataset, number=False)]
            for test in tests:
                if test not in by_test.index:
                    cells.append(_Cell(_DASH))
                    continue
                mean, std = by_test.at[test, column], by_test.at[test, f"{metric}_std"]
                cells.append(_Cell(format_cell(metric, mean, std, math.nan, math.nan),
                                   bold=_finite(mean) and float(mean) == best[test]))
            body.append(cells)
            reported.append(False)
    if published is not None and metric in PUBLISHED_METRICS:
        shown = _cross_published(published, metric, tests, datasets)
        keys = ["label", "paper", "name", "dataset"]
        for _, entry in shown.groupby(keys, sort=False):
            first = entry.iloc[0]
            tables = ", ".join(t for t in dict.fromkeys(entry["table"].astype(str)) if t)
            label = f"reported by {_paper_label(first)}{_table_ref(tables)}: {first['name']}"
            values = entry.drop_duplicates("test").set_index("test")[metric]
            cells = [_Cell(label, number=False), _Cell(str(first["dataset"]), number=False)]
            cells += [_Cell(_format_published(metric, values[t]) if t in values.index else _DASH)
                      for t in tests]
            body.append(cells)
            reported.append(True)
    header = ["method", "trained on", *tests]
    return _Table(header, body, reported, [False, False] + [True] * len(tests))


def _ranked(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Methods ranked by the first ranked metric of ``metrics`` (best first, in its
    :func:`direction`; methods without a value last); as given when none is ranked."""
    ranked = [m for m in metrics if direction(m) != 0]
    if not ranked:
        return rows
    return rows.sort_values(f"{ranked[0]}_mean", ascending=direction(ranked[0]) < 0,
                            na_position="last", kind="stable")


def _metric_table(rows: pd.DataFrame, metrics: list[str], published: pd.DataFrame,
                  tests: pd.DataFrame, scores: pd.DataFrame) -> _Table:
    """A row per method (and published row), a column per metric; after a metric with paired
    tests its ``p (<metric>)`` column, last the robustness score of the first metric shown that
    has one."""
    best = {m: _best(rows[f"{m}_mean"], m) for m in metrics}
    tested = {m: tests[tests["metric"] == m].set_index("method") for m in metrics}
    tested = {m: t for m, t in tested.items() if not t.empty}
    robust = next((m for m in metrics if (scores["metric"] == m).any()), None)
    robustness = (scores[scores["metric"] == robust].set_index("method")["score"]
                  if robust is not None else pd.Series(dtype=float))
    header, numeric = ["method"], [False]
    for m in metrics:
        header.append(_header(m))
        if m in tested:
            header.append(f"p ({m})")
        numeric += [True] * (1 + (m in tested))
    if robust is not None:
        header.append(f"robustness ({robust})")
        numeric.append(True)
    body, reported = [], []
    for row in _ranked(rows, metrics).to_dict("records"):
        method = row["method"]
        cells = [_Cell(method, number=False)]
        for m in metrics:
            mean = row[f"{m}_mean"]
            text = format_cell(m, mean, row[f"{m}_std"], row[f"{m}_ci_low"], row[f"{m}_ci_high"])
            cells.append(_Cell(text, bold=_finite(mean) and float(mean) == best[m]))
            if m in tested:
                if method == tested[m]["best"].iloc[0]:
                    cells.append(_Cell("best", number=False))
                elif method in tested[m].index:
                    cells.append(_Cell(_format_p(float(tested[m].at[method, "p"])),
                                       number=False))
                else:
                    cells.append(_Cell(_DASH))
        if robust is not None:
            score = robustness.get(method, math.nan)
            cells.append(_Cell(f"{score:.3f}" if _finite(score) else _DASH))
        body.append(cells)
        reported.append(False)
    shown = [m for m in metrics if m in PUBLISHED_METRICS]
    if shown:
        for row in published.to_dict("records"):
            label = f"reported by {_paper_label(row)}{_table_ref(row['table'])}: {row['name']}"
            cells = [_Cell(label, number=False)]
            for m in metrics:
                cells.append(_Cell(_format_published(m, row[m]) if m in PUBLISHED_METRICS
                                   else _DASH))
                if m in tested:
                    cells.append(_Cell(_DASH))
            if robust is not None:
                cells.append(_Cell(_DASH))
            body.append(cells)
            reported.append(True)
    return _Table(header, body, reported, numeric)


def _pixel_strata_block(strata: pd.DataFrame, metrics: list[str], methods: list[str]) -> _Table:
    """Rows = stratum × method (methods in ``methods``' order), a column per pixel metric
    (``mean ± std`` over seeds), then the images per run; bold: the best mean per stratum and
    column in the metric's direction."""
    body: list[list[_Cell]] = []
    for stratum in PIXEL_STRATA:
        part = strata[strata["stratum"] == stratum]
        if part.empty:
            continue
        best = {m: _best(part[f"{m}_mean"], m) for m in metrics}
        by_method = part.set_index("method")
        for method in [m for m in methods if m in by_method.index]:
            row = by_method.loc[method]
            cells = [_Cell(stratum.split("=", 1)[1], number=False), _Cell(method, number=False)]
            for m in metrics:
                mean = row[f"{m}_mean"]
                text = format_cell(m, mean, row[f"{m}_std"], math.nan, math.nan)
                cells.append(_Cell(text, bold=_finite(mean) and float(mean) == best[m]))
            cells.append(_Cell(f"{float(row['n']):,.0f}" if _finite(row["n"]) else _DASH))
            body.append(cells)
    header = ["pixels", "method", *(_header(m) for m in metrics), "images"]
    return _Table(header, body, [False] * len(body), [False, False] + [True] * (len(metrics) + 1))


def _direction_note(metrics: list[str]) -> str | None:
    """A sentence on which way the shown pixel metrics rank; None when none is shown."""
    pixel = [m for m in metrics if m in PIXEL_METRICS]
    if not pixel:
        return None
    higher = [m for m in pixel if direction(m) > 0]
    lower = [m for m in pixel if direction(m) < 0]
    unranked = [m for m in pixel if direction(m) == 0]
    parts = []
    if higher:
        parts.append(f"higher is better for {', '.join(higher)}")
    if lower:
        parts.append(f"lower is better for {', '.join(lower)} (bold: the lowest)")
    text = "Pixel metrics: " + "; ".join(parts) + "." if parts else "Pixel metrics:"
    if unranked:
        nominal = ", ".join(f"{m} {NOMINAL_COVERAGE[m] * 100:.2f}%" for m in unranked)
        text += (f" {', '.join(unranked)} {'is' if len(unranked) == 1 else 'are'} not ranked "
                 f"(never bold): a calibrated model has {nominal}; more means overestimated "
                 "variances, less underestimated ones.")
    return text


def _profile_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per (group, method): mean and std over seeds of each profiled quantity, and devices."""
    rows = results[results["kind"] == "profile"]
    names = [p[0] for p in PROFILE_COLUMNS]
    rows = rows[rows["metric"].isin(names)]
    if rows.empty:
        return pd.DataFrame(columns=[*_KEYS, "metric", "mean", "std", "device"])
    per_seed = _per_seed(rows, [*_KEYS, "metric"], ["value"])
    stats = per_seed.groupby([*_KEYS, "metric"], sort=False)["value"].agg(["mean", "std"])
    devices = rows.groupby(list(_KEYS), sort=False)["device"].agg(
        lambda d: ", ".join(sorted({str(x) for x in d.dropna() if str(x)}))
    ).rename("device")
    table = stats.reset_index().join(devices, on=list(_KEYS))
    return _ordered(table)


def _profile_block(prof: pd.DataFrame) -> _Table:
    body = []
    for method in dict.fromkeys(prof["method"]):
        rows = prof[prof["method"] == method].set_index("metric")
        cells = [_Cell(method, number=False)]
        for metric, _, scale, decimals, with_std in PROFILE_COLUMNS:
            if metric not in rows.index or not _finite(rows.at[metric, "mean"]):
                cells.append(_Cell(_DASH))
                continue
            text = f"{rows.at[metric, 'mean'] * scale:,.{decimals}f}"
            std = rows.at[metric, "std"]
            if with_std and _finite(std):
                text += f" ± {std * scale:,.{decimals}f}"
            cells.append(_Cell(text))
        cells.append(_Cell(str(rows["device"].iloc[0]) or _DASH, number=False))
        body.append(cells)
    header = ["method", *(p[1] for p in PROFILE_COLUMNS), "device"]
    return _Table(header, body, [False] * len(body),
                  [False] + [True] * len(PROFILE_COLUMNS) + [False])


_MD_SPECIAL = re.compile(r"([\\`*|<>&\[\]])")


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell or paragraph."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def _markdown(doc: list[tuple[str, Any]]) -> str:
    lines: list[str] = []
    for kind, content in doc:
        if kind in ("h1", "h2", "h3"):
            lines += [f"{'#' * int(kind[1])} {_md(content)}", ""]
        elif kind == "p":
            lines += [_md(content), ""]
        elif kind == "img":
            lines += [f"![{_md(content)}]({content})", ""]
        elif kind == "table":
            table: _Table = content
            lines.append("| " + " | ".join(_md(h) for h in table.header) + " |")
            lines.append("|" + "|".join("---:" if n else "---" for n in table.numeric) + "|")
            for cells, reported in zip(table.rows, table.reported, strict=True):
                texts = []
                for i, cell in enumerate(cells):
                    text = cell.text if cell.number else _md(cell.text)
                    if cell.bold:
                        text = f"**{text}**"
                    elif reported and (i == 0 or cell.text != _DASH):
                        text = f"_{text}_"
                    texts.append(text)
                lines.append("| " + " | ".join(texts) + " |")
            lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.reported td { font-style: italic; color: #555; background: #fafaf0; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
th { cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
"""

_SORT_SCRIPT = """
// Click a header to sort its table's rows by that column (again: the other way). Columns of
// numbers (cells of class "num") sort by the first number of each cell, the others as text;
// cells without a number (a dash, "best") go last either way.
document.querySelectorAll("table").forEach(function (table) {
  var headers = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(headers, function (th, column) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var numeric = rows.some(function (r) { return r.cells[column].className === "num"; });
      function key(row) {
        var text = row.cells[column].textContent.trim();
        if (!numeric) { return text; }
        var found = text.replace(/,/g, "").match(/-?\\d+(\\.\\d+)?(e[-+]?\\d+)?/i);
        return found ? parseFloat(found[0]) : null;
      }
      function missing(k) { return k === null || k === ""; }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (missing(x) || missing(y)) { return missing(x) - missing(y); }
        var order = numeric ? x - y : x.localeCompare(y);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _html(doc: list[tuple[str, Any]], plots: dict[str, bytes]) -> str:
    esc = html.escape
    title = next((content for kind, content in doc if kind == "h1"), "Leaderboard")
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(str(title))}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    for kind, content in doc:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{esc(str(content))}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{esc(str(content))}</p>")
        elif kind == "img":
            data = base64.b64encode(plots[content]).decode("ascii")
            parts.append(f'<figure><img alt="{esc(content)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{esc(content)}</figcaption></figure>")
        elif kind == "table":
            table: _Table = content
            parts.append("<table>")
            parts.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table.header)
                         + "</tr></thead>")
            parts.append("<tbody>")
            for cells, reported in zip(table.rows, table.reported, strict=True):
                row = []
                for i, cell in enumerate(cells):
                    text = esc(cell.text)
                    if cell.bold:
                        text = f"<strong>{text}</strong>"
                    css = ' class="num"' if table.numeric[i] else ""
                    row.append(f"<td{css}>{text}</td>")
                attr = ' class="reported"' if reported else ""
                parts.append(f"<tr{attr}>" + "".join(row) + "</tr>")
            parts.append("</tbody>")
            parts.append("</table>")
    parts += [f"<script>{_SORT_SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "metric"


def _grid(n: int, width: float = 5.5, height: float = 4.0) -> tuple[Figure, list[Any]]:
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _group_title(group: tuple[str, ...]) -> str:
    """``source → dataset · sweep``; a test on another dataset: ``… (tested on <test>)``."""
    dataset, source, sweep = group[:3]
    test = group[3] if len(group) > 3 else dataset
    title = " · ".join(x for x in (f"{source} → {dataset}" if source else dataset, sweep) if x)
    return title + (f" (tested on {test})" if test != dataset else "")


def _bars_figure(summary: pd.DataFrame, metric: str,
                 published: pd.DataFrame | None) -> Figure | None:
    column = f"{metric}_mean"
    if summary.empty or column not in summary or summary[column].notna().sum() == 0:
        return None
    groups = [g for g in _plot_groups(summary) if _in_group(summary, g)[column].notna().any()]
    if not groups:
        return None
    scale = _scale(metric)
    fig, axes = _grid(len(groups))
    for ax, group in zip(axes, groups, strict=True):
        rows = _in_group(summary, group)
        rows = rows[rows[column].notna()]
        x = np.arange(len(rows))
        std = rows[f"{metric}_std"].fillna(0.0).to_numpy(float) * scale
        ax.bar(x, rows[column].to_numpy(float) * scale, yerr=std, capsize=4, color="#4c72b0",
               label="this harness (mean ± std over seeds)")
        reported = _published_for(published, group)
        if metric in PUBLISHED_METRICS and not reported.empty:
            values = reported.drop_duplicates("method").set_index("method")[metric]
            xs = [i for i, m in enumerate(rows["method"]) if m in values.index]
            ys = [float(values[m]) for m in rows["method"] if m in values.index]
            if xs:
                label = f"reported by {_paper_label(reported.iloc[0])}"
                ax.scatter(xs, ys, marker="_", s=400, linewidths=2.5, color="#c44e52",
                           zorder=3, label=label)
        ax.set_xticks(x, list(rows["method"]), rotation=35, ha="right")
        ax.set_ylabel(_header(metric))
        ax.set_title(_group_title(group))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    fig.suptitle(f"{metric} per method")
    return fig


def _covered_figure(covered: pd.DataFrame) -> Figure | None:
    if covered.empty:
        return None
    groups = _plot_groups(covered)
    fig, axes = _grid(len(groups), width=6.5)
    for ax, group in zip(axes, groups, strict=True):
        rows = _in_group(covered, group)
        x = np.arange(len(rows))
        for offset, key, label, color in ((-0.2, "covered", "cloud-covered", "#8c8c8c"),
                                          (0.2, "free", "cloud-free", "#55a868")):
            ax.bar(x + offset, rows[f"{key}_mean"].to_numpy(float) * 100, width=0.4,
                   yerr=rows[f"{key}_std"].fillna(0.0).to_numpy(float) * 100, capsize=3,
                   color=color, label=label)
        ax.set_xticks(x, list(rows["method"]), rotation=35, ha="right")
        ax.set_ylabel("OA (%)")
        ax.set_ylim(0, 100)
        ax.set_title(_group_title(group))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("OA on cloud-covered (thin, thick, mixed) vs cloud-free test samples")
    return fig


def _term_color(term: str, fallback: str) -> str:
    """Optical red, SAR blue (as in the ESCCS paper's Fig. 8)."""
    lowered = term.lower()
    if any(k in lowered for k in ("s2", "opt")):
        return "#d62728"
    if any(k in lowered for k in ("s1", "sar")):
        return "#1f77b4"
    return fallback


def _loss_figure(histories: pd.DataFrame) -> Figure | None:
    if histories.empty:
        return None
    rows = histories.copy()
    for column in ("method", "dataset", "source", "sweep", "stage", "term"):
        rows[column] = rows[column].astype(object).where(rows[column].notna(), "").astype(str)
    rows = rows[rows["term"].str.startswith("loss_")]
    if rows.empty:
        return None
    if (rows["sweep"] == "").any():
        rows = rows[rows["sweep"] == ""]
    panel_keys = ["dataset", "source", "sweep", "method", "stage"]
    panels = list(dict.fromkeys(rows[panel_keys].itertuples(index=False, name=None)))
    panels.sort(key=lambda p: (p[0], p[1], _sweep_order(p[2]), p[3], p[4]))
    several = len({p[:3] for p in panels}) > 1
    fig, axes = _grid(len(panels), width=5.0, height=3.6)
    others = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    for ax, panel in zip(axes, panels, strict=True):
        mask = np.logical_and.reduce([rows[k] == v for k, v in zip(panel_keys, panel,
                                                                   strict=True)])
        data = rows[mask]
        for i, term in enumerate(dict.fromkeys(sorted(data["term"]))):
            curve = data[data["term"] == term].groupby("epoch")["value"].agg(
                ["mean", "min", "max", "count"]
            )
            color = _term_color(term, others[i % len(others)])
            ax.plot(curve.index, curve["mean"], color=color, label=term)
            if (curve["count"] > 1).any():
                ax.fill_between(curve.index, curve["min"], curve["max"], color=color, alpha=0.2,
                                linewidth=0)
        title = f"{panel[3]} · {panel[4]}"
        if several:
            title += "\n" + _group_title(panel[:3])
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Per-modality training loss (mean over seeds; band: min–max)")
    return fig


def _sweep_figure(swept: pd.DataFrame, name: str, metrics: Iterable[str]) -> Figure | None:
    metrics = [m for m in metrics if swept[f"{m}_mean"].notna().any()]
    if swept.empty or not metrics:
        return None
    pairs = list(dict.fromkeys(zip(swept["dataset"], swept["source"], swept["test"],
                                   strict=True)))
    fig = Figure(figsize=(6.0 * len(pairs), 4.0 * len(metrics)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), len(pairs), squeeze=False)
    for col, (dataset, source, test) in enumerate(pairs):
        part = swept[(swept["dataset"] == dataset) & (swept["source"] == source)
                     & (swept["test"] == test)]
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            scale = _scale(metric)
            for series in dict.fromkeys(part["series"]):
                line = part[part["series"] == series].sort_values("sweep_value")
                line = line[line[f"{metric}_mean"].notna()]
                ax.errorbar(line["sweep_value"], line[f"{metric}_mean"] * scale,
                            yerr=line[f"{metric}_std"].fillna(0.0) * scale, marker="o",
                            capsize=3, label=series)
            ax.set_xlabel(name)
            ax.set_ylabel(_header(metric))
            ax.set_title(_group_title((dataset, source, "", test)))
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle(f"Metrics vs {name} (mean ± std over seeds)")
    return fig


def _robustness_figure(curves: pd.DataFrame, metric: str,
                       scores: pd.DataFrame) -> Figure | None:
    """``metric`` per cloud-fraction bin (midpoints), a line per method, a panel per group."""
    curves = curves[curves["mean"].notna()]
    if curves.empty:
        return None
    groups = _plot_groups(curves)
    scale = _scale(metric)
    score = scores[scores["metric"] == metric].set_index(list(_KEYS))["score"]
    colors = colormaps["tab20"]  # distinct lines for up to 20 methods
    fig, axes = _grid(len(groups), width=7.5)
    for ax, group in zip(axes, groups, strict=True):
        rows = _in_group(curves, group)
        for i, method in enumerate(dict.fromkeys(rows["method"])):
            line = rows[rows["method"] == method]
            value = score.get((*group, method), math.nan)
            label = f"{method} ({value:.3f})" if _finite(value) else method
            ax.errorbar(line["fraction"], line["mean"] * scale,
                        yerr=line["std"].fillna(0.0) * scale, marker="o", capsize=3, label=label,
                        color=colors(i % colors.N))
        ax.set_xlim(0, 1)
        ax.set_xlabel("measured cloud fraction (bin midpoint)")
        ax.set_ylabel(_header(metric))
        ax.set_title(_group_title(group))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", title="method (robustness)", title_fontsize="small",
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{metric} vs measured cloud fraction (mean ± std over seeds)")
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> Path:
    """Write under a temporary name in the same folder, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
