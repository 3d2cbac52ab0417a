"""The ben-demo / cben-demo recipes: a synthetic BigEarthNet and its cloudy twin (not real data).

Both stores are built once (in this process) and checked against each other and against hand
computations from the synthetic world: the same patches, labels, S1 and split; the labels from
the world's land cover; s2cloudless masks of the acquisitions each recipe chose.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloudbench import cli, store
from cloudbench.build import run_build
from cloudbench.builders import BUILDERS, ben_demo, bigearthnet, builder_module
from cloudbench.clouds import CloudMaskConfig, cloud_mask
from cloudbench.config import class_scheme, load_recipe
from cloudbench.datasets import CBEN, BigEarthNetClean, CloudBenchDataset
from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import S2_L1C_BANDS, Collection
from cloudbench.sources.fixtures import BIGEARTHNET19_FROM_IGBP
from cloudbench.sources.synthetic import SyntheticWorld
from cloudbench.store import Store

NAMES = ("ben-demo", "cben-demo")
ARRAYS = ("s1", "s2", "s2_20m", "s2_60m", "cloud_mask")
# The recipes' defaults, written out: the hand computations below must not read the builder.
WORLD = {"seed": 0, "size": 480, "region_size": 80}
PATCH, TILE, MARGIN, MIN_SHARE = 120, 240, 16, 0.05


def _build(name: str, root: Path, settings: tuple[str, ...] = ()) -> Store:
    config = load_recipe(builder_module(name).Config, name, settings)
    run_build(name, config, root, workers=1, progress=False)
    return Store(root)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Store]:
    root = tmp_path_factory.mktemp("ben-demo")
    return {name: _build(name, root / name) for name in NAMES}


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=WORLD["seed"], size=WORLD["size"],
                          region_size=WORLD["region_size"])


def _rows_cols(ids: list[str]) -> list[tuple[int, int]]:
    """(patch row, patch col) from ``..._<col>_<row>`` ids."""
    return [(int(i.rsplit("_", 2)[2]), int(i.rsplit("_", 2)[1])) for i in ids]


def test_registered_and_recipes_differ_only_in_sky() -> None:
    assert BUILDERS["ben-demo"] == BUILDERS["cben-demo"] == "cloudbench.builders.ben_demo"
    clear, cloudy = (load_recipe(ben_demo.Config, n).model_dump() for n in NAMES)
    assert (clear.pop("sky"), cloudy.pop("sky")) == ("clear", "cloudy")
    assert clear == cloudy


def test_the_two_stores_pair_sample_by_sample(stores: dict[str, Store]) -> None:
    clean, cloudy = stores["ben-demo"], stores["cben-demo"]
    a, b = clean.samples, cloudy.samples
    assert len(a) == 16
    assert list(a["id"]) == list(b["id"]) and a["id"].is_unique
    assert [list(x) for x in a["label"]] == [list(x) for x in b["label"]]
    assert list(a["split"]) == list(b["split"])
    assert {s: (a["split"] == s).sum() for s in ("train", "test")} == {"train": 12, "test": 4}
    assert list(a["s1_time"]) == list(b["s1_time"])
    assert list(a["original_s2_time"]) == list(b["original_s2_time"]) == list(a["s2_time"])
    assert (b["s2_time"] != a["s2_time"]).all()
    assert list(a["transform"].map(list)) == list(b["transform"].map(list))
    assert (clean.root / "s1.npy").read_bytes() == (cloudy.root / "s1.npy").read_bytes()
    assert not np.array_equal(clean.array("s2"), cloudy.array("s2"))
    # The layout and metadata of the bigearthnet / cben stores, synthetic provenance.
    reference = bigearthnet.store_meta("bigearthnet", "any", "any")
    for st, kind in ((clean, "bigearthnet"), (cloudy, "cben")):
        meta = st.meta
        assert (meta["kind"], meta["task"], meta["class_scheme"]) == (kind, "multilabel",
                                                                      "bigearthnet19")
        assert meta["classes"] == list(class_scheme("bigearthnet19").classes)
        assert len(meta["classes"]) == 19
        assert meta["provenance"]["synthetic"] is True
        assert "not real data" in meta["provenance"]["note"]
        assert set(meta["arrays"]) == set(ARRAYS)
        for name, info in reference["arrays"].items():
            for key in ("bands", "unit", "scale", "resolution"):
                assert meta["arrays"][name].get(key) == info.get(key), (name, key)
        assert [st.array(n).shape[-1] for n in ARRAYS] == [120, 120, 60, 20, 120]


def test_labels_are_the_class_shares_of_the_world_land_cover(
    stores: dict[str, Store], world: SyntheticWorld
) -> None:
    codes = world.read_labels(world.grid)
    table = stores["ben-demo"].samples
    sizes = set()
    for (row, col), label in zip(_rows_cols(list(table["id"])), table["label"], strict=True):
        patch = codes[row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH]
        land = (patch > 0).sum()
        shares: dict[int, float] = {}
        for code in np.unique(patch):
            k = BIGEARTHNET19_FROM_IGBP.get(int(code))
            if k is not None:
                shares[k] = shares.get(k, 0.0) + (patch == code).sum() / land
        expected = sorted(k for k, share in shares.items() if share >= MIN_SHARE)
        assert list(label) == expected, (row, col)
        sizes.add(len(expected))
    assert max(sizes) >= 3  # multi-label, not one class per patch
    # The builder's IGBP -> CORINE -> 19-class table is the fixtures' correspondence.
    lookup = ben_demo.igbp_to_bigearthnet19()
    assert {c: (None if lookup[c] < 0 else int(lookup[c])) for c in range(1, 18)} == \
        BIGEARTHNET19_FROM_IGBP


def _reference_masks(world: SyntheticWorld, l1c_time: object, row: int, col: int) -> np.ndarray:
    """s2cloudless at 20 m on the tile at (row, col) plus the margin (clipped to the world),
    on the L1C product sensed at ``l1c_time``, back on the 10 m grid and cut into patches."""
    l1c = next(a for a in world.search(Collection.S2_L1C, None, "2000-01-01", "2100-01-01")
               if a.datetime == l1c_time)
    r0, c0 = max(row - MARGIN, 0), max(col - MARGIN, 0)
    r1, c1 = min(row + TILE + MARGIN, WORLD["size"]), min(col + TILE + MARGIN, WORLD["size"])
    window = world.grid.window(r0, c0, r1 - r0, c1 - c0).rescaled(20.0)
    kind, _ = cloud_mask(world.read(l1c, window, S2_L1C_BANDS), CloudMaskConfig(resolution=20))
    fine = kind.repeat(2, axis=0).repeat(2, axis=1)[row - r0 : row - r0 + TILE,
                                                    col - c0 : col - c0 + TILE]
    return np.stack([fine[i : i + PATCH, j : j + PATCH]
                     for i in range(0, TILE, PATCH) for j in range(0, TILE, PATCH)])


def test_clouds_are_s2cloudless_on_the_chosen_acquisitions(
    stores: dict[str, Store], world: SyntheticWorld
) -> None:
    l2a = world.search(Collection.S2_L2A, None, "2000-01-01", "2100-01-01")
    clearest = min(l2a, key=lambda a: (a.cloud_cover or 0.0, a.datetime))
    cloudy = min((a for a in l2a if a.datetime != clearest.datetime),
                 key=lambda a: (abs((a.cloud_cover or 0.0) - 50.0), a.datetime))
    assert cloudy.cloud_cover is not None and 25 < cloudy.cloud_cover < 75
    clean, clouded = stores["ben-demo"], stores["cben-demo"]
    assert (clean.samples["s2_time"] == clearest.datetime).all()
    assert (clouded.samples["s2_time"] == cloudy.datetime).all()
    assert clean.samples["cloud_fraction"].mean() < 0.05
    assert clouded.samples["cloud_fraction"].mean() > 0.2
    assert (clouded.samples["cloud_state"] != "clear").sum() >= 10
    for st, acquisition in ((clean, clearest), (clouded, cloudy)):
        assert all(s[0] == acquisition.id for s in st.samples["source_ids"])
        places = _rows_cols(list(st.samples["id"]))
        for row, col in ((0, TILE), (TILE, 0)):  # margins clipped on other sides
            expected = _reference_masks(world, acquisition.datetime, row, col)
            rows = [places.index((row // PATCH + i, col // PATCH + j))
                    for i in range(2) for j in range(2)]
            np.testing.assert_array_equal(st.array("cloud_mask")[rows, 0], expected)


def test_the_stores_open_as_datasets_with_multi_hot_labels(stores: dict[str, Store]) -> None:
    for cls, name in ((BigEarthNetClean, "ben-demo"), (CBEN, "cben-demo")):
        root = stores[name].root
        table = stores[name].samples
        for split in ("train", "test"):
            for ds in (cls(root, split=split, early_fusion=True),
                       CloudBenchDataset(root, split=split)):
                rows = np.flatnonzero(table["split"].to_numpy() == split)
                assert len(ds) == len(rows) >= 4
                hot = np.zeros((len(rows), 19), np.int64)
                for r, labels in enumerate(table["label"].iloc[rows]):
                    hot[r, list(labels)] = 1
                np.testing.assert_array_equal(ds.labels, hot)
                sample = ds[0]
                assert sample["label"].shape == (19,)
                assert sample["image_s2"].shape == (12, 120, 120)
                assert sample["image_s1"].shape == (2, 120, 120)
        assert cls(root, early_fusion=True)[0]["image"].shape == (14, 120, 120)


def test_a_rerun_resumes_without_duplicates(stores: dict[str, Store], tmp_path: Path) -> None:
    name, root = "cben-demo", tmp_path / "resumed"
    config = load_recipe(ben_demo.Config, name)
    tasks = ben_demo.plan(config, root)
    assert len(tasks) == 4
    store.start_build(root, name, config.model_dump(mode="json"))
    shard = ben_demo.build_shard(config, tasks[0])  # as if killed after the first shard
    store.write_shard(root, tasks[0].shard_id, shard.table, shard.arrays,
                      {"dropped": shard.dropped, "seconds": shard.seconds,
                       "records": shard.records})
    result = run_build(name, config, root, workers=1, progress=False)
    assert (result.built_shards, result.skipped_shards) == (3, 1)
    resumed, full = Store(root), stores[name]
    assert resumed.samples["id"].is_unique
    assert list(resumed.samples["id"]) == list(full.samples["id"])
    for array in ARRAYS:
        assert (root / f"{array}.npy").read_bytes() == (full.root / f"{array}.npy").read_bytes()
    assert run_build(name, config, root, workers=1, progress=False).already_complete
    report = json.loads((root / "build_report.json").read_text())
    assert report["acquisitions"]["sky"] == "cloudy"


def test_the_mask_window_is_the_tile_and_its_margin_inside_the_world() -> None:
    config = load_recipe(ben_demo.Config, "cben-demo", ["tile_size=120"])
    grid = ben_demo.world(config).grid
    for (row, col), (offset, r0, c0, height, width) in {
        (0, 120): ((0, 16), 0, 104, 136, 152),        # top edge: no margin above
        (120, 360): ((16, 16), 104, 344, 152, 136),   # right edge: none on the right
        (240, 240): ((16, 16), 224, 224, 152, 152),   # inside: the margin all round
    }.items():
        dr, dc, window = ben_demo.mask_window(config, row, col)
        assert (dr, dc) == offset
        assert window == grid.window(r0, c0, height, width)
        assert (window.height, window.width) == (height, width)


@pytest.mark.parametrize("setting", ["patch_size=100", "tile_size=360", "sky=rainy"])
def test_bad_settings_are_refused(setting: str) -> None:
    with pytest.raises(CloudbenchError):
        load_recipe(ben_demo.Config, "ben-demo", [setting])


@pytest.mark.skipif("ben-demo" not in getattr(cli.build, "commands", {}),
                    reason="cloudbench/cli.py has no `build ben-demo` command yet")
def test_cli_builds_ben_demo(tmp_path: Path, stores: dict[str, Store]) -> None:
    out = tmp_path / "cli"
    assert cli.main(["build", "ben-demo", "--out", str(out), "--workers", "1"]) == 0
    assert list(Store(out).samples["id"]) == list(stores["ben-demo"].samples["id"])
