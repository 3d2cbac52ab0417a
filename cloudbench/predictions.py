"""The predictions file that ``cloudbench eval`` scores.

CSV or Parquet (by extension), one row per sample of the evaluated split:

* ``id``: the sample id from the dataset's ``samples.parquet``;
* single-label: ``pred``, the predicted class (index or name), or scores ``score_0 … score_{K-1}``
  (the argmax is taken);
* multi-label: scores ``score_0 … score_{K-1}`` (probabilities or logits; AP uses only the order).

Every sample of the split must have exactly one row; ids that are not in the split are an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cloudbench.errors import CloudbenchError
from cloudbench.store import SPLITS, Store


@dataclass(frozen=True)
class Predictions:
    outputs: np.ndarray
    """class indices (N,) or scores (N, K)"""
    target: np.ndarray
    """class indices (N,) or multi-hot (N, K)"""
    cloud_state: np.ndarray
    cloud_fraction: np.ndarray
    ids: np.ndarray
    """the sample ids (N,), as strings, in the file's row order (every array above follows it)"""


def read_predictions(path: str | Path, st: Store, split: str = "test") -> Predictions:
    path = Path(path)
    if split not in SPLITS:
        raise CloudbenchError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if not path.is_file():
        raise CloudbenchError(f"no predictions file at {path}")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as err:  # pandas raises many types for unreadable files
        raise CloudbenchError(f"{path} is not a readable CSV/Parquet file: {err}") from err
    if "id" not in frame.columns:
        raise CloudbenchError(f"{path}: the column 'id' is missing (see docs/metrics.md)")
    frame["id"] = frame["id"].astype(str)
    if frame["id"].duplicated().any():
        raise CloudbenchError(f"{path}: id {frame['id'][frame['id'].duplicated()].iloc[0]!r} "
                              "appears twice")
    samples = st.samples[st.samples["split"] == split].set_index("id")
    unknown = frame.loc[~frame["id"].isin(samples.index), "id"]
    if len(unknown):
        raise CloudbenchError(f"{path}: {len(unknown)} ids are not in the {split} split of "
                              f"{st.root}, e.g. {unknown.iloc[0]!r}")
    if len(frame) != len(samples):
        raise CloudbenchError(f"{path}: {len(frame)} predictions for the {len(samples)} samples "
                              f"of the {split} split; every sample needs one")
    rows = samples.loc[frame["id"]]
    k = len(st.classes)
    score_cols = [f"score_{i}" for i in range(k)]
    if all(c in frame.columns for c in score_cols):
        outputs = frame[score_cols].to_numpy(dtype=np.float64)
    elif st.task == "multiclass" and "pred" in frame.columns:
        outputs = _class_indices(frame["pred"], st.classes, path)
    else:
        need = "'pred' or " if st.task == "multiclass" else ""
        raise CloudbenchError(f"{path}: needs columns {need}score_0 … score_{k - 1} "
                              "(see docs/metrics.md)")
    if st.task == "multiclass":
        target = rows["label"].to_numpy(dtype=np.int64)
    else:
        target = np.zeros((len(rows), k), dtype=np.int64)
        for i, labels in enumerate(rows["label"]):
            target[i, np.asarray(labels, dtype=np.int64)] = 1
    # np.array copies: pandas hands out read-only views (copy-on-write), which torch warns about.
    return Predictions(
        outputs=np.array(outputs),
        target=np.array(target),
        cloud_state=np.array(rows["cloud_state"], dtype=object),
        cloud_fraction=np.array(rows["cloud_fraction"], dtype=np.float64),
        ids=frame["id"].to_numpy(dtype=object),
    )


def _class_indices(column: pd.Series, classes: list[str], path: Path) -> np.ndarray:
    if pd.api.types.is_integer_dtype(column):
        values = column.to_numpy(dtype=np.int64)
        bad = values[(values < 0) | (values >= len(classes))]
        if len(bad):
            raise CloudbenchError(f"{path}: class index {bad[0]} is out of range "
                                  f"0 … {len(classes) - 1}")
        return values
    lookup = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(column.astype(str)) - set(lookup))
    if unknown:
        raise CloudbenchError(
            f"{path}: unknown class {unknown[0]!r}; classes: {', '.join(classes)}"
        )
    return column.astype(str).map(lookup).to_numpy(dtype=np.int64)
