"""The results table: one long table, stored as one Parquet file per finished run.

``OUT/results/<run key>.parquet`` holds every row of one run (a row per metric, split and
cloud stratum, plus the profiler rows) and is written under a temporary name and renamed, so a
run is either wholly in the table or absent: a killed run leaves no partial row, re-running
completes the table with no duplicates, and any number of writers (processes, Dask workers on a
shared filesystem) can append at once without a lock. The table is the concatenation of the
files. ``data`` says where the run kept its splits (``train=resident test=stream``: see
:func:`cloudbench.harness.data.place`). ``OUT/runs/<run key>/history.parquet`` holds the
run's per-epoch loss terms and ``predictions.parquet`` its test predictions, readable by
``cloudbench eval`` (both written before the results file, so a finished run always has them).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd

COLUMNS = (
    "run", "leaderboard", "dataset", "source", "method", "seed", "sweep", "kind", "metric",
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


def done(out: Path, key: str) -> bool:
    return (results_dir(out) / f"{key}.parquet").exists()


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_run(
    out: Path, key: str, rows: pd.DataFrame, history: pd.DataFrame, predictions: pd.DataFrame
) -> None:
    """Record a finished run: its history and test predictions (in the ``cloudbench eval``
    format), then its rows (the rows file marks the run done)."""
    missing = set(COLUMNS) - set(rows.columns)
    if missing:
        raise ValueError(f"result rows lack columns {sorted(missing)}")
    _write_parquet(history.reindex(columns=list(HISTORY_COLUMNS)),
                   run_dir(out, key) / "history.parquet")
    _write_parquet(predictions, run_dir(out, key) / "predictions.parquet")
    _write_parquet(rows.reindex(columns=list(COLUMNS)), results_dir(out) / f"{key}.parquet")


def read_table(out: Path) -> pd.DataFrame:
    """The whole results table (empty, with its columns, when no run has finished).

    Files whose name starts with ``.`` (a writer's temporary files) are skipped.
    """
    return _concat(_parquet_files(results_dir(out), "*.parquet"), COLUMNS)


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
