"""The results table: one long table, stored as one Parquet file per finished run.

``OUT/results/<run key>.parquet`` holds every row of one run (a row per metric, split and
cloud stratum, plus the profiler rows) and is written under a temporary name and renamed, so a
run is either wholly in the table or absent: a killed run leaves no partial row, re-running
completes the table with no duplicates, and any number of writers (processes, Dask workers on a
shared filesystem) can append at once without a lock. The table is the concatenation of the
files. ``data`` says where the run kept its splits (``train=resident test=stream``: see
:func:`cloudbench.harness.data.place`). ``test`` names the dataset whose test split a row
scores: the run's ``dataset`` for its own test split, another dataset of the spec for a run
trained on one dataset and tested on others (the dataset's ``test``); tables written before
the column existed read as their own dataset. ``OUT/runs/<run key>/history.parquet`` holds the
run's per-epoch loss terms and ``predictions.parquet`` its predictions of its own test split,
``predictions-<test>.parquet`` those of another dataset's test split, each readable by
``cloudbench eval`` against that dataset (all written before the results file, so a finished
run always has them).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

COLUMNS = (
    "run", "leaderboard", "dataset", "test", "source", "method", "seed", "sweep", "kind", "metric",
    "split", "stratum", "value", "ci_low", "ci_high", "n", "config_hash", "git_revision",
    "packages", "device", "wall_seconds", "data",
)
HISTORY_COLUMNS = (
    "run", "method", "dataset", "source", "seed", "sweep", "stage", "epoch", "term", "value",
)


def results_dir(out: Path) -> Path:
    return Path(out) / "results"


def run_dir(out: Path, key: str) -> Path:
    return Path(out) / "runs" / key


def predictions_path(out: Path, key: str, test: str | None = None) -> Path:
    """Where a run's predictions are: ``predictions.parquet`` for its own test split (``test``
    None), ``predictions-<test>.parquet`` for the test split of dataset ``test`` (characters
    other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``)."""
    if test is None:
        return run_dir(out, key) / "predictions.parquet"
    return run_dir(out, key) / f"predictions-{re.sub(r'[^A-Za-z0-9._-]', '_', test)}.parquet"


def done(out: Path, key: str) -> bool:
    return (results_dir(out) / f"{key}.parquet").exists()


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_run(
    out: Path, key: str, rows: pd.DataFrame, history: pd.DataFrame,
    predictions: pd.DataFrame | None, cross_predictions: Mapping[str, pd.DataFrame] | None = None,
) -> None:
    """Record a finished run: its history and test predictions (in the ``cloudbench eval``
    format: ``predictions`` of its own test split, None when it was not tested on it, and
    ``cross_predictions``, test dataset -> predictions of that dataset's test split; see
    :func:`predictions_path`), then its rows (the rows file marks the run done)."""
    missing = set(COLUMNS) - set(rows.columns)
    if missing:
        raise ValueError(f"result rows lack columns {sorted(missing)}")
    files = {predictions_path(out, key, test): frame
             for test, frame in (cross_predictions or {}).items()}
    if len(files) < len(cross_predictions or {}):
        raise ValueError(f"test datasets {sorted(cross_predictions or {})} share a predictions "
                         "file name")
    if predictions is not None:
        files[predictions_path(out, key)] = predictions
    _write_parquet(history.reindex(columns=list(HISTORY_COLUMNS)),
                   run_dir(out, key) / "history.parquet")
    for path, frame in files.items():
        _write_parquet(frame, path)
    _write_parquet(rows.reindex(columns=list(COLUMNS)), results_dir(out) / f"{key}.parquet")


def read_table(out: Path) -> pd.DataFrame:
    """The whole results table (empty, with its columns, when no run has finished).

    Files whose name starts with ``.`` (a writer's temporary files) are skipped. A missing
    ``test`` (tables written before the column existed) is the row's own ``dataset``.
    """
    return with_test(_concat(_parquet_files(results_dir(out), "*.parquet"), COLUMNS))


def with_test(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its ``test`` column filled where missing or empty by ``dataset`` (the
    run's own test split): how rows written before the column existed read."""
    if "dataset" not in table.columns:
        return table
    table = table.copy()
    test = table["test"] if "test" in table.columns else pd.Series(pd.NA, index=table.index)
    empty = test.isna() | (test.astype(object).astype(str) == "")
    table["test"] = test.astype(object).where(~empty, table["dataset"])
    return table


def read_histories(out: Path) -> pd.DataFrame:
    """Every run's training history, ``OUT/runs/*/history.parquet`` concatenated."""
    return _concat(_parquet_files(Path(out) / "runs", "*/history.parquet"), HISTORY_COLUMNS)


def _parquet_files(folder: Path, pattern: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(pattern)
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _concat(files: list[Path], columns: tuple[str, ...]) -> pd.DataFrame:
    frames = [f for f in (pd.read_parquet(path) for path in files) if len(f.columns)]
    if not frames:
        return pd.DataFrame(columns=list(columns))
    table = pd.concat(frames, ignore_index=True)
    extra = [c for c in table.columns if c not in columns]
    return table.reindex(columns=[*columns, *extra])
