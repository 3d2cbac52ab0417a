"""The leakage guard: no image a model was trained on may lie in a place it is tested on.

Cloud-removal pipelines train their reconstruction model on one set of samples (the run's
train split, another store such as SEN12MS-CR, or those a saved model records) and are scored
on a classification test split. Two checks find an overlap, both before anything trains:

* **by scene**: both sides name their samples' scenes, and a scene is on both. A store's
  scene is its ``scene`` column (SEN12MS-CR: ``ROIs1868_summer_19``), else the SEN12MS scene of
  its first source id (SEN12MS Cloud: ``ROIs1868_summer_s1_19_p30`` -> ``ROIs1868_summer_19``);
  stores of other kinds name no scenes.
* **by footprint**: a test sample's footprint (the store's ``geometry``, EPSG:4326) and a
  training sample's intersect in more than :data:`MIN_SHARE` of the test footprint's area, so
  neighbouring patches that only touch along an edge do not count. This catches the same
  place under other names (another acquisition of it, another dataset cut from it).

:func:`find_overlap` gives both, :func:`describe` the message naming them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

MIN_SHARE = 0.01
"""Share of a test footprint a training footprint must cover to count as the same place."""
_SEN12MS_ID = re.compile(r"^(ROIs\d+_[a-z]+)_(?:s1|s2|s2_cloudy|lc)_(\d+)_p\d+$")
_SHOWN = 5


@dataclass(frozen=True)
class Overlap:
    """What a training set and a test set share."""

    scenes: list[str] = field(default_factory=list)
    """Scenes named on both sides, sorted."""
    samples: list[str] = field(default_factory=list)
    """Test sample ids whose footprint a training footprint covers, in test order."""
    tested: int = 0
    """Test samples looked at."""

    def __bool__(self) -> bool:
        return bool(self.scenes or self.samples)

    @property
    def count(self) -> int:
        """Overlapping scenes, or test samples where no scenes are named."""
        return len(self.scenes) or len(self.samples)


def sample_scenes(table: pd.DataFrame) -> pd.Series | None:
    """The scene of each sample of a store's table, or None when the store names none."""
    if "scene" in table.columns:
        return table["scene"].astype(str)
    if "source_ids" not in table.columns or not len(table):
        return None
    first = table["source_ids"].map(lambda ids: str(ids[0]) if len(ids) else "")
    matched = first.str.extract(_SEN12MS_ID)
    if matched.isna().any(axis=None):
        return None
    return matched[0] + "_" + matched[1]


def find_overlap(train: gpd.GeoDataFrame, test: gpd.GeoDataFrame) -> Overlap:
    """The scenes and test samples ``train`` and ``test`` (store tables: ``id``, ``geometry``,
    and ``scene`` or ``source_ids``) share; see the module docstring."""
    scenes: list[str] = []
    mine, theirs = sample_scenes(train), sample_scenes(test)
    if mine is not None and theirs is not None:
        scenes = sorted(set(mine) & set(theirs))
    samples: list[str] = []
    if len(train) and len(test):
        left = gpd.GeoDataFrame({"test_row": np.arange(len(test))},
                                geometry=test.geometry.values, crs=test.crs)
        right = gpd.GeoDataFrame({"train_row": np.arange(len(train))},
                                 geometry=train.geometry.values, crs=train.crs).to_crs(test.crs)
        pairs = gpd.sjoin(left, right, predicate="intersects")
        if len(pairs):
            # shares of a footprint's own area: degrees serve within a patch's extent
            a = np.asarray(left.geometry.values)[pairs["test_row"].to_numpy()]
            b = np.asarray(right.geometry.values)[pairs["train_row"].to_numpy()]
            shared = shapely.area(shapely.intersection(a, b)) > MIN_SHARE * shapely.area(a)
            rows = np.unique(pairs["test_row"].to_numpy()[shared])
            samples = [str(i) for i in test["id"].to_numpy()[rows]]
    return Overlap(scenes, samples, len(test))


def describe(overlap: Overlap, trained: str, tested: str) -> str:
    """One sentence naming what ``overlap`` shares (``trained``, ``tested``: what the two
    sides are, e.g. ``"the cloud-removal training samples (store X, train)"``)."""
    parts = []
    if overlap.scenes:
        shown = ", ".join(overlap.scenes[:_SHOWN])
        more = f" and {len(overlap.scenes) - _SHOWN} more" if len(overlap.scenes) > _SHOWN else ""
        parts.append(f"{len(overlap.scenes)} scene(s) are in both: {shown}{more}")
    if overlap.samples:
        shown = ", ".join(overlap.samples[:_SHOWN])
        more = (f" and {len(overlap.samples) - _SHOWN} more"
                if len(overlap.samples) > _SHOWN else "")
        parts.append(f"{len(overlap.samples)} of {overlap.tested} test samples lie where "
                     f"{trained} lie: {shown}{more}")
    return f"{trained} overlap {tested}: " + "; ".join(parts)
