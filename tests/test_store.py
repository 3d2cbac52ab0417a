"""The store: shards, finalize, splits, cloud states, resumable-build bookkeeping, validation."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from conftest import make_store
from pyproj import Transformer
from shapely.geometry import Point

from cloudbench import store
from cloudbench.errors import StoreError
from cloudbench.sources.base import S1_BANDS, S2_L2A_BANDS, Grid
from cloudbench.store import Store

SIZE = 8
WORLD = Grid.from_bounds("EPSG:32649", 645000.0, 3210000.0, 40 * SIZE, 2 * SIZE, 10.0)
S1_TIME = dt.datetime(2018, 7, 3, 10, 29, 12, tzinfo=dt.UTC)
S2_TIME = dt.datetime(2018, 7, 1, 3, 5, 31, tzinfo=dt.UTC)
CLASSES = ["Forest", "Water", "Urban/Built-up"]


def _meta(**extra: object) -> dict:
    return {
        "kind": "demo",
        "task": "multiclass",
        "classes": CLASSES,
        "patch_size": SIZE,
        "resolution": 10.0,
        "arrays": {
            "s1": {"bands": list(S1_BANDS), "unit": "dB", "scale": 1.0},
            "s2": {"bands": list(S2_L2A_BANDS), "unit": "reflectance", "scale": 10000.0},
            "cloud_mask": {"bands": ["cloud_type"], "unit": "class", "scale": 1.0},
        },
        "builder": {"name": "test", "config": {}},
        "provenance": {"synthetic": True},
        **extra,
    }


def _all_train(table: gpd.GeoDataFrame) -> np.ndarray:
    return np.full(len(table), "train", dtype=object)


def _shard(root: Path, shard_id: str, ids: list[str], cols: list[int], seed: int,
           report: dict | None = None) -> dict:
    """Write one shard of patches at the given grid columns; returns what was written."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    grids = [WORLD.window(SIZE, c * SIZE, SIZE, SIZE) for c in cols]
    arrays = {
        # float64 and int64 inputs: the store casts to its own dtypes
        "s1": rng.normal(-12, 4, (n, 2, SIZE, SIZE)),
        "s2": rng.integers(0, 10000, (n, 12, SIZE, SIZE)),
        "cloud_mask": rng.integers(0, 3, (n, 1, SIZE, SIZE)),
    }
    labels = [int(c % len(CLASSES)) for c in cols]
    sources = [[f"S2_{shard_id}", f"S1_{shard_id}"]] * n
    table = store.sample_table(ids, labels, arrays["cloud_mask"], grids, [S1_TIME] * n,
                               [S2_TIME] * n, sources)
    store.write_shard(root, shard_id, table, arrays, report)
    return {"ids": ids, "labels": labels, "grids": grids, "sources": sources, **arrays}


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_round_trip_values_dtypes_order_and_geometry(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    assert store.start_build(root, "test", {"a": 1})
    # Written out of order, one shard empty: the dataset follows the shard order given to
    # finalize, not the order in which shards were written.
    second = _shard(root, "b", ["b0", "b1"], [5, 6], seed=2)
    empty = _shard(root, "c", [], [], seed=3)
    first = _shard(root, "a", ["a0", "a1", "a2"], [0, 1, 2], seed=1)
    assert empty["s1"].shape[0] == 0
    store.finalize(root, ["a", "c", "b"], _meta(),
                   lambda t: np.array(["train", "test", "train", "test", "train"], dtype=object))

    assert not (root / "shards").exists()
    st = Store(root)
    assert len(st) == 5
    assert list(st.samples["id"]) == ["a0", "a1", "a2", "b0", "b1"]
    assert list(st.samples["split"]) == ["train", "test", "train", "test", "train"]
    assert list(st.samples["label"]) == first["labels"] + second["labels"]
    assert [list(s) for s in st.samples["source_ids"]] == first["sources"] + second["sources"]
    assert (st.samples["s1_time"] == S1_TIME).all() and (st.samples["s2_time"] == S2_TIME).all()

    for name, dtype in store.ARRAY_DTYPES.items():
        if name not in store.REQUIRED_ARRAYS:
            continue
        stored = st.array(name)
        assert stored.dtype == np.dtype(dtype)
        expected = np.concatenate([first[name], second[name]]).astype(dtype)
        np.testing.assert_array_equal(stored, expected)
        assert list(stored.shape) == st.meta["arrays"][name]["shape"]
        assert st.arrays[name].shape == stored.shape
    np.testing.assert_allclose(np.concatenate([first["s1"], second["s1"]]), st.array("s1"),
                               rtol=1e-6)

    masks = np.concatenate([first["cloud_mask"], second["cloud_mask"]]).reshape(5, -1)
    np.testing.assert_allclose(st.samples["thin_fraction"], (masks == 1).mean(axis=1))
    np.testing.assert_allclose(st.samples["thick_fraction"], (masks == 2).mean(axis=1))
    np.testing.assert_allclose(st.samples["cloud_fraction"], (masks > 0).mean(axis=1))

    meta = json.loads((root / "dataset.json").read_text())
    assert meta["schema_version"] == store.SCHEMA_VERSION and meta["num_samples"] == 5

    assert st.samples.crs.to_epsg() == 4326
    to_lonlat = Transformer.from_crs("EPSG:32649", "EPSG:4326", always_xy=True)
    for i, grid in enumerate(first["grids"] + second["grids"]):
        assert st.grid(i) == grid
        assert st.samples["crs"].iloc[i] == "EPSG:32649"
        cx, cy = grid.transform @ (SIZE / 2, SIZE / 2)
        centre = Point(*to_lonlat.transform(cx, cy))
        assert st.samples.geometry.iloc[i].contains(centre)
        # ... and not the centre of a neighbouring patch
        nx, ny = grid.transform @ (SIZE * 1.5, SIZE / 2)
        assert not st.samples.geometry.iloc[i].contains(Point(*to_lonlat.transform(nx, ny)))


def test_write_shard_rejects_unknown_arrays_and_row_mismatch(tmp_path: Path) -> None:
    table = store.sample_table(["x"], [0], np.zeros((1, 1, 4, 4)), [WORLD.window(0, 0, 4, 4)],
                               [S1_TIME], [S2_TIME], [["a"]])
    with pytest.raises(ValueError, match="unknown array 'rgb'"):
        store.write_shard(tmp_path, "s", table, {"rgb": np.zeros((1, 3, 4, 4))})
    with pytest.raises(ValueError, match="2 rows, the table 1"):
        store.write_shard(tmp_path, "s", table, {"s1": np.zeros((2, 2, 4, 4))})
    assert not store.shard_done(tmp_path, "s")


# --------------------------------------------------------------------------------------------
# Splits and cloud states
# --------------------------------------------------------------------------------------------


def test_stratified_split_takes_round_fraction_per_class() -> None:
    sizes = {0: 10, 1: 7, 2: 3, 3: 1, 4: 23}  # 20 % -> 2, 1.4, 0.6, 0.2, 4.6
    labels = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    labels = np.random.default_rng(5).permutation(labels)
    split = store.stratified_split(labels, "multiclass", 0.2, seed=0)
    assert set(split) == {"train", "test"}
    for cls, n in sizes.items():
        assert (split[labels == cls] == "test").sum() == round(0.2 * n)
    assert [(split[labels == c] == "test").sum() for c in sizes] == [2, 1, 1, 0, 5]


def test_stratified_split_is_seeded() -> None:
    labels = np.repeat(np.arange(4), 25)
    a = store.stratified_split(labels, "multiclass", 0.2, seed=7)
    b = store.stratified_split(list(labels), "multiclass", 0.2, seed=7)
    c = store.stratified_split(labels, "multiclass", 0.2, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert (a == "test").sum() == (c == "test").sum() == 20

    multi = [[i % 3, (i + 1) % 3] for i in range(50)]
    m1 = store.stratified_split(multi, "multilabel", 0.3, seed=1)
    m2 = store.stratified_split(multi, "multilabel", 0.3, seed=1)
    m3 = store.stratified_split(multi, "multilabel", 0.3, seed=2)
    assert (m1 == "test").sum() == 15
    np.testing.assert_array_equal(m1, m2)
    assert (m1 != m3).any()


@pytest.mark.parametrize(
    ("thin", "thick", "state"),
    [
        (0.0, 0.0, "clear"),
        (0.005, 0.004, "clear"),
        (0.0099, 0.0, "clear"),
        (0.0, 0.0099, "clear"),
        (0.011, 0.0, "thin"),
        (0.0, 0.011, "thick"),
        (0.5, 0.0, "thin"),
        (0.0, 0.9, "thick"),
        (0.08, 0.02, "thin"),  # exactly 80 % thin
        (0.02, 0.08, "thick"),  # exactly 80 % thick
        (0.4, 0.1, "thin"),
        (0.1, 0.4, "thick"),
        (0.3, 0.3, "mixed"),
        (0.25, 0.75, "mixed"),  # 75 % thick: not dominant
        (0.75, 0.25, "mixed"),
        (0.079, 0.021, "mixed"),
    ],
)
def test_cloud_state_rules(thin: float, thick: float, state: str) -> None:
    assert list(store.cloud_state(np.array([thin]), np.array([thick]))) == [state]


def test_cloud_state_from_masks_at_the_dominance_boundary() -> None:
    """What builders do: fractions of a 64 x 64 mask. 100 thin + 25 thick pixels is 80 % thin."""
    masks = np.zeros((5, 1, 64, 64), np.uint8)
    flat = masks.reshape(5, -1)
    flat[0, :100], flat[0, 100:125] = 1, 2  # 80 % thin
    flat[1, :25], flat[1, 25:125] = 1, 2  # 80 % thick
    flat[2, :60], flat[2, 60:120] = 1, 2  # half and half
    flat[3, :40] = 2  # 40 / 4096 < 1 %
    flat[4, :41] = 2  # 41 / 4096 > 1 %
    grids = [WORLD.window(0, 0, 16, 64)] * 5  # geometry does not matter here
    table = store.sample_table([f"m{i}" for i in range(5)], [0] * 5, masks, grids,
                               [S1_TIME] * 5, [S2_TIME] * 5, [["x"]] * 5)
    assert list(table["cloud_state"]) == ["thin", "thick", "mixed", "clear", "thick"]
    assert table["thin_fraction"].iloc[0] == 100 / 4096
    assert table["cloud_fraction"].iloc[2] == 120 / 4096


# --------------------------------------------------------------------------------------------
# Resumable builds
# --------------------------------------------------------------------------------------------


def test_temporary_shard_folder_never_counts_as_done(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    store.start_build(root, "test", {})
    _shard(root, "a", ["a0"], [0], seed=1)
    # What a worker killed just before its rename leaves: a complete-looking temporary folder.
    shutil.copytree(root / "shards" / "a", root / "shards" / ".tmp-b-0123abcd")
    assert store.shard_done(root, "a")
    assert not store.shard_done(root, "b")
    with pytest.raises(StoreError, match=r"1 shards missing \(\['b'\]"):
        store.finalize(root, ["a", "b"], _meta(), _all_train)
    assert not (root / "dataset.json").exists()
    # Written for real, the shard completes the build; the leftover goes with shards/.
    _shard(root, "b", ["b0"], [1], seed=2)
    store.finalize(root, ["a", "b"], _meta(), lambda t: np.array(["train", "test"]))
    assert list(Store(root).samples["id"]) == ["a0", "b0"]
    assert not (root / "shards").exists()


def test_a_shard_written_twice_keeps_the_first(tmp_path: Path) -> None:
    """Two workers racing on one task: the second rename fails and is not an error."""
    root = tmp_path / "ds"
    store.start_build(root, "test", {})
    first = _shard(root, "a", ["a0"], [0], seed=1)
    _shard(root, "a", ["a0"], [0], seed=99)
    assert [p.name for p in (root / "shards").iterdir() if p.is_dir()] == ["a"]
    np.testing.assert_array_equal(np.load(root / "shards" / "a" / "s2.npy"), first["s2"])


def test_start_build_refuses_other_configs(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    assert store.start_build(root, "test", {"purity": 0.5, "seed": 0})
    manifest = json.loads((root / "shards" / "build.json").read_text())
    assert manifest["builder"] == "test" and manifest["config"] == {"purity": 0.5, "seed": 0}
    # The same unfinished build resumes (key order does not matter) ...
    assert store.start_build(root, "test", {"seed": 0, "purity": 0.5})
    # ... another config or builder does not.
    with pytest.raises(StoreError, match="unfinished build with another config"):
        store.start_build(root, "test", {"purity": 0.7, "seed": 0})
    with pytest.raises(StoreError, match="unfinished build with another config"):
        store.start_build(root, "other", {"purity": 0.5, "seed": 0})

    _shard(root, "a", ["a0", "a1"], [0, 1], seed=1)
    meta = _meta(builder={"name": "test", "config": {"purity": 0.5, "seed": 0}})
    store.finalize(root, ["a"], meta, lambda t: np.array(["train", "test"]))
    before = (root / "samples.parquet").read_bytes()

    assert store.start_build(root, "test", {"seed": 0, "purity": 0.5}) is False
    with pytest.raises(StoreError, match="already holds a different dataset"):
        store.start_build(root, "test", {"purity": 0.7, "seed": 0})
    with pytest.raises(StoreError, match="built by 'test'"):
        store.start_build(root, "other", {"purity": 0.5, "seed": 0})
    assert not (root / "shards").exists()
    assert (root / "samples.parquet").read_bytes() == before


def test_finalize_refuses_missing_shards_and_duplicate_ids(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    store.start_build(root, "test", {})
    _shard(root, "a", ["x0", "x1"], [0, 1], seed=1)
    with pytest.raises(StoreError, match=r"2 shards missing \(\['b', 'c'\]"):
        store.finalize(root, ["a", "b", "c"], _meta(), _all_train)
    _shard(root, "b", ["x1", "x2"], [2, 3], seed=2)
    with pytest.raises(StoreError, match="duplicate sample ids across shards, e.g. 'x1'"):
        store.finalize(root, ["a", "b"], _meta(), _all_train)
    assert not (root / "dataset.json").exists()
    assert store.shard_done(root, "a") and store.shard_done(root, "b")


def test_finalize_refuses_an_empty_build_and_bad_splits(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    store.start_build(root, "test", {})
    _shard(root, "a", [], [], seed=1, report={"dropped": {"impure": 4, "nodata": 1}})
    # There is no build report for an empty build: the error says what was dropped.
    with pytest.raises(StoreError, match=r"produced no samples from 1 tasks "
                                         r"\(patches dropped: impure 4, nodata 1\)"):
        store.finalize(root, ["a"], _meta(), _all_train)
    assert not (root / "build_report.json").exists()
    _shard(root, "b", ["b0"], [0], seed=2)
    with pytest.raises(StoreError, match=r"unknown split values \['validation'\]"):
        store.finalize(root, ["a", "b"], _meta(), lambda t: np.array(["validation"]))
    assert not (root / "dataset.json").exists()


def test_build_report_sums_dropped_counts_across_shards(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    store.start_build(root, "test", {})
    _shard(root, "a", ["a0", "a1", "a2"], [0, 1, 2], seed=1,
           report={"dropped": {"nodata": 1, "impure": 2}, "seconds": {"read": 0.5}})
    _shard(root, "b", ["b0", "b1"], [3, 4], seed=2,
           report={"dropped": {"impure": 3, "edge": 4}, "seconds": {"read": 0.25, "mask": 1}})
    _shard(root, "c", ["c0"], [5], seed=3)  # no report at all
    store.finalize(root, ["a", "b", "c"], _meta(),
                   lambda t: np.array(["train"] * 4 + ["test"] * 2))
    report = json.loads((root / "build_report.json").read_text())
    assert report["dropped"] == {"nodata": 1, "impure": 5, "edge": 4}
    assert report["seconds_per_stage"] == {"read": 0.75, "mask": 1.0}
    assert report["samples"] == 6 and report["shards"] == 3
    assert report["per_split"] == {"train": 4, "test": 2}
    labels = [c % 3 for c in range(6)]  # _shard labels patches by their column
    assert report["per_class"]["train"] == {"Forest": 2, "Water": 1, "Urban/Built-up": 1}
    assert report["per_class"]["test"] == {
        name: int(sum(1 for lab in labels[4:] if lab == i)) for i, name in enumerate(CLASSES)
    }
    states = Store(root).samples["cloud_state"]
    assert sum(report["per_cloud_state"]["train"].values()) == 4
    assert report["per_cloud_state"]["train"]["mixed"] == int((states[:4] == "mixed").sum())


# --------------------------------------------------------------------------------------------
# Validation on open: every error names the file
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("pristine") / "ds", n=12)


@pytest.fixture
def copy(pristine: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(pristine, root)
    Store(root)  # the copy is valid before each test damages it
    return root


def _edit_meta(root: Path, **changes: object) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


def test_no_folder(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no dataset folder") as err:
        Store(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_no_dataset_json(copy: Path) -> None:
    (copy / "dataset.json").unlink()
    with pytest.raises(StoreError) as err:
        Store(copy)
    assert f"{copy / 'dataset.json'} is missing" in str(err.value)
    assert "unfinished build" not in str(err.value)
    (copy / "shards").mkdir()
    with pytest.raises(StoreError, match="an unfinished build: re-run it"):
        Store(copy)


def test_dataset_json_not_json(copy: Path) -> None:
    (copy / "dataset.json").write_text('{"schema_version": 1, "kind": ')
    with pytest.raises(StoreError, match="is not valid JSON") as err:
        Store(copy)
    assert str(copy / "dataset.json") in str(err.value)
    (copy / "dataset.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StoreError, match="is not valid JSON"):
        Store(copy)
    (copy / "dataset.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match="is not a JSON object") as err:
        Store(copy)
    assert str(copy / "dataset.json") in str(err.value)


def test_wrong_schema_version(copy: Path) -> None:
    _edit_meta(copy, schema_version=99)
    with pytest.raises(StoreError, match="schema version 99, this cloudbench reads version 1") as e:
        Store(copy)
    assert str(copy / "dataset.json") in str(e.value)


def test_missing_field_and_bad_task(copy: Path) -> None:
    meta = json.loads((copy / "dataset.json").read_text())
    _edit_meta(copy, task="regression")
    with pytest.raises(StoreError, match="task 'regression' is not one of"):
        Store(copy)
    del meta["classes"]
    (copy / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="field 'classes' is missing") as err:
        Store(copy)
    assert str(copy / "dataset.json") in str(err.value)


def test_corrupt_samples_parquet(copy: Path) -> None:
    (copy / "samples.parquet").write_bytes(b"PAR1 this is not a parquet file at all" * 10)
    with pytest.raises(StoreError, match="is not a readable GeoParquet file") as err:
        Store(copy)
    assert str(copy / "samples.parquet") in str(err.value)


def test_missing_samples_parquet_and_columns(copy: Path) -> None:
    table = gpd.read_parquet(copy / "samples.parquet")
    table.drop(columns=["cloud_state"]).to_parquet(copy / "samples.parquet")
    with pytest.raises(StoreError, match=r"columns \['cloud_state'\] are missing"):
        Store(copy)
    (copy / "samples.parquet").unlink()
    with pytest.raises(StoreError, match="samples.parquet is missing"):
        Store(copy)


def test_each_open_reads_the_table_as_it_is_on_disk(copy: Path) -> None:
    """Reads are cached per version of samples.parquet: a Store's table is its own, and a
    rewritten file is read anew."""
    first = Store(copy).samples
    first.loc[first.index[0], "cloud_state"] = "edited in memory"
    assert Store(copy).samples["cloud_state"].iloc[0] != "edited in memory"
    table = gpd.read_parquet(copy / "samples.parquet")
    table["cloud_state"] = "rewritten"
    table.to_parquet(copy / "samples.parquet")
    assert set(Store(copy).samples["cloud_state"]) == {"rewritten"}


def test_samples_row_count_mismatch(copy: Path) -> None:
    table = gpd.read_parquet(copy / "samples.parquet")
    table.iloc[:-1].to_parquet(copy / "samples.parquet")
    with pytest.raises(StoreError, match="11 rows, dataset.json says 12") as err:
        Store(copy)
    assert str(copy / "samples.parquet") in str(err.value)


def test_array_row_count_mismatch(copy: Path) -> None:
    _edit_meta(copy, num_samples=13)
    with pytest.raises(StoreError, match="12 rows, expected 13") as err:
        Store(copy)
    assert str(copy / "s1.npy") in str(err.value)


@pytest.mark.parametrize("name", ["s1", "s2", "cloud_mask"])
def test_missing_npy(copy: Path, name: str) -> None:
    (copy / f"{name}.npy").unlink()
    with pytest.raises(StoreError, match="is missing") as err:
        Store(copy)
    assert str(copy / f"{name}.npy") in str(err.value)


def test_npy_wrong_dtype(copy: Path) -> None:
    s2 = np.load(copy / "s2.npy")
    np.save(copy / "s2.npy", s2.astype(np.float32))
    with pytest.raises(StoreError, match=r"float32\[12, 12, 16, 16\], dataset.json says uint16") \
            as err:
        Store(copy)
    assert str(copy / "s2.npy") in str(err.value)


def test_npy_wrong_shape(copy: Path) -> None:
    mask = np.load(copy / "cloud_mask.npy")
    np.save(copy / "cloud_mask.npy", mask[:, :, :8, :8])
    with pytest.raises(StoreError, match=r"uint8\[12, 1, 8, 8\], dataset.json says") as err:
        Store(copy)
    assert str(copy / "cloud_mask.npy") in str(err.value)
    np.save(copy / "cloud_mask.npy", mask[:-1])
    with pytest.raises(StoreError, match=r"uint8\[11, 1, 16, 16\]"):
        Store(copy)


def test_npy_garbage(copy: Path) -> None:
    (copy / "s1.npy").write_bytes(b"not numpy" * 100)
    with pytest.raises(StoreError, match="is not a readable .npy file") as err:
        Store(copy)
    assert str(copy / "s1.npy") in str(err.value)


def test_undeclared_required_array(copy: Path) -> None:
    meta = json.loads((copy / "dataset.json").read_text())
    del meta["arrays"]["cloud_mask"]
    (copy / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="array 'cloud_mask' is not declared"):
        Store(copy)


def test_asking_for_an_absent_array(copy: Path) -> None:
    with pytest.raises(StoreError, match="has no array 's2_clear'; it has s1, s2, cloud_mask"):
        Store(copy).array("s2_clear")


def test_start_build_cleans_shards_left_after_dataset_json(tmp_path: Path) -> None:
    """Shards a build left after writing dataset.json (made by hand: as a kill between the two
    would leave them) are removed by the next build."""
    root = make_store(tmp_path / "ds")
    (store.shards_dir(root) / "leftover").mkdir(parents=True)
    assert store.start_build(root, "fixture", {"n": 60, "seed": 0}) is False
    assert not store.shards_dir(root).exists()


def test_start_build_on_a_damaged_dataset_json(tmp_path: Path) -> None:
    root = make_store(tmp_path / "ds")
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(StoreError, match="dataset.json is damaged; delete"):
        store.start_build(root, "fixture", {"n": 60, "seed": 0})


def test_a_pickled_store_does_not_carry_mapped_data(tmp_path: Path) -> None:
    import pickle

    root = make_store(tmp_path / "ds", n=300)
    opened = Store(root)
    s2 = opened.array("s2")
    copy = pickle.loads(pickle.dumps(opened))
    assert len(pickle.dumps(opened)) < s2.nbytes / 4
    np.testing.assert_array_equal(copy.array("s2"), s2)


def test_finalize_select_keeps_rows_and_arrays_in_step(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    store.start_build(root, "test", {})
    a = _shard(root, "a", ["a0", "a1", "a2"], [0, 1, 2], seed=1)
    b = _shard(root, "b", ["b0", "b1", "b2"], [3, 4, 5], seed=2)
    keep_ids = {"a1", "b0", "b2"}
    store.finalize(root, ["a", "b"], _meta(), lambda t: np.full(len(t), "train", dtype=object),
                   select=("over class cap", lambda t: t["id"].isin(keep_ids).to_numpy()))
    opened = Store(root)
    assert list(opened.samples["id"]) == ["a1", "b0", "b2"]
    expected = np.concatenate([a["s2"][[1]], b["s2"][[0, 2]]]).astype(np.uint16)
    np.testing.assert_array_equal(opened.array("s2"), expected)
    np.testing.assert_array_equal(opened.array("s1"),
                                  np.concatenate([a["s1"][[1]], b["s1"][[0, 2]]]).astype("f4"))
    report = json.loads((root / "build_report.json").read_text())
    assert report["dropped"]["over class cap"] == 3
