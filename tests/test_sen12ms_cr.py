"""The SEN12MS-CR builder, on SEN12MS-CR trees in the real layout (synthetic and real files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import REALDATA

from cloudbench import store
from cloudbench.build import _run_task, run_build
from cloudbench.builders import sen12ms_cr
from cloudbench.cli import main
from cloudbench.clouds import CloudMaskConfig, cloud_mask
from cloudbench.config import load_recipe
from cloudbench.datasets import CloudBenchDataset
from cloudbench.sources.fixtures import patch_path, write_sen12ms_cr
from cloudbench.sources.sen12ms import PatchRef
from cloudbench.store import Store

FAST = ["clouds.resolution=40"]  # s2cloudless at 40 m: 1/16 of the 10 m cost
SCENES = [1, 10, 17, 106]
"""ROIs1158_spring: 1 and 10 train, 17 val, 106 test in the official split; a substring match
of the train scene 1 ('…_s1/s1_1') also takes 10, 17 and 106."""
REAL_CR = REALDATA / "sen12ms_cr"


def _config(root: Path, *settings: str, **values: object) -> sen12ms_cr.Config:
    return load_recipe(sen12ms_cr.Config, "sen12ms-cr", settings, {"root": root, **values})


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cr") / "SEN12MS-CR"
    write_sen12ms_cr(root, scenes=SCENES, patches_per_scene=1, roi="ROIs1158", season="spring")
    return root


@pytest.fixture(scope="module")
def built(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "ds"
    run_build("sen12ms-cr", _config(tree, *FAST, "crop=128"), out, workers=1, progress=False)
    return out


def _read(root: Path, ref: PatchRef, modality: str) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(patch_path(root, ref, modality, cr=True)) as src:
        return src.read(), src.transform


def _ref(sample_id: str) -> tuple[PatchRef, int, int]:
    patch_id, rc = sample_id.rsplit("_r", 1)
    row, col = (int(v) for v in rc.split("c"))
    roi, season, scene, patch = patch_id.split("_")
    return PatchRef(roi, season, int(scene), int(patch[1:])), row, col


def test_official_split_matches_scenes_exactly(built: Path) -> None:
    table = Store(built).samples
    splits = table.groupby("scene")["split"].agg(set).to_dict()
    assert splits == {"ROIs1158_spring_1": {"train"}, "ROIs1158_spring_10": {"train"},
                      "ROIs1158_spring_17": {"val"}, "ROIs1158_spring_106": {"test"}}
    official = sen12ms_cr.scene_split()
    assert sorted(official.values()).count("test") == 10
    assert sorted(official.values()).count("val") == 10


def test_substring_trap_with_a_split_file(tree: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.yaml"
    split.write_text("test: [ROIs1158_spring_1]\nval: [ROIs1158_spring_10]\n")
    out = tmp_path / "ds"
    run_build("sen12ms-cr", _config(tree, *FAST, split_file=split), out, workers=1,
              progress=False)
    table = Store(out).samples
    got = dict(zip(table["scene"], table["split"], strict=True))
    assert got == {"ROIs1158_spring_1": "test", "ROIs1158_spring_10": "val",
                   "ROIs1158_spring_17": "train", "ROIs1158_spring_106": "train"}
    twice = tmp_path / "twice.yaml"
    twice.write_text("test: [ROIs1158_spring_1]\nval: [ROIs1158_spring_1]\n")
    with pytest.raises(Exception, match="listed twice"):
        sen12ms_cr.scene_split(twice)


def test_pixels_are_the_source_files_at_the_crop_offsets(tree: Path, built: Path) -> None:
    st = Store(built)
    assert len(st) == len(SCENES) * 4
    assert st.meta["kind"] == "sen12ms-cr" and st.meta["classes"] == []
    s1, s2, clear = st.array("s1"), st.array("s2"), st.array("s2_clear")
    offsets = set()
    for i, sample_id in enumerate(st.samples["id"]):
        ref, row, col = _ref(sample_id)
        offsets.add((row, col))
        crop = np.s_[:, row : row + 128, col : col + 128]
        np.testing.assert_array_equal(s1[i], _read(tree, ref, "s1")[0][crop])
        np.testing.assert_array_equal(s2[i], _read(tree, ref, "s2_cloudy")[0][crop])
        np.testing.assert_array_equal(clear[i], _read(tree, ref, "s2")[0][crop])
        transform = _read(tree, ref, "s2")[1]
        assert st.grid(i).transform == transform @ rasterio.Affine.translation(col, row)
        assert st.samples["scene"].iloc[i] == ref.scene_id
        assert list(st.samples["source_ids"].iloc[i]) == [
            f"ROIs1158_spring_{m}_{ref.scene}_p1" for m in ("s1", "s2", "s2_cloudy")]
    assert offsets == {(0, 0), (0, 128), (128, 0), (128, 128)}
    assert not (s2[:] == clear[:]).all()  # the input is the cloudy image, not the target


def test_cloud_mask_is_s2cloudless_on_the_cloudy_patch(tmp_path: Path) -> None:
    """At 10 m (the default), on one patch; crops are cut from the whole patch's mask."""
    root = tmp_path / "SEN12MS-CR"
    ref = write_sen12ms_cr(root, scenes=[106], patches_per_scene=1, roi="ROIs1158",
                           season="spring")[0]
    out = tmp_path / "ds"
    run_build("sen12ms-cr", _config(root, "crop=128"), out, workers=1, progress=False)
    st = Store(out)
    cloudy = _read(root, ref, "s2_cloudy")[0]
    expected, _ = cloud_mask(cloudy.astype(np.float32) / 10000, CloudMaskConfig())
    masks = st.array("cloud_mask")
    assert {1, 2} <= set(np.unique(masks))
    assert len(st) == 4
    for i, sample_id in enumerate(st.samples["id"]):
        _, row, col = _ref(sample_id)
        np.testing.assert_array_equal(masks[i, 0], expected[row : row + 128, col : col + 128])
    fractions = st.samples["cloud_fraction"].to_numpy()
    np.testing.assert_allclose(fractions, (masks[:, 0] > 0).mean(axis=(1, 2)))
    assert "10 m" in st.meta["arrays"]["cloud_mask"]["method"]


def test_opens_as_a_dataset_without_labels(built: Path) -> None:
    ds = CloudBenchDataset(built, split="test")
    sample = ds[0]
    assert sample["image_s2"].shape == sample["image_s2_clear"].shape == (13, 128, 128)
    assert sample["image_s1"].shape == (2, 128, 128)
    assert ds.task == "multilabel" and ds.num_classes == 0 and sample["label"].numel() == 0


def test_resume_gives_the_same_store(tree: Path, tmp_path: Path) -> None:
    config = _config(tree, *FAST, "crop=128", "crop_mode=center")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_build("sen12ms-cr", config, whole, workers=1, progress=False)
    # An interrupted build: started, one shard written, then stopped.
    assert store.start_build(resumed, "sen12ms-cr", config.model_dump(mode="json"))
    first = sen12ms_cr.plan(config, resumed)[0]
    _run_task("sen12ms-cr", config, first, resumed)
    result = run_build("sen12ms-cr", config, resumed, workers=1, progress=False)
    assert result.skipped_shards == 1 and result.built_shards == len(SCENES) - 1
    for name in ("s1", "s2", "s2_clear", "cloud_mask", "samples.parquet"):
        file = f"{name}.npy" if "." not in name else name
        assert (whole / file).read_bytes() == (resumed / file).read_bytes(), name
    st = Store(whole)
    assert st.meta["patch_size"] == 128
    assert set(st.samples["id"].str.rsplit("_", n=1).str[1]) == {"r64c64"}  # the centre


def test_cli_builds_and_rejects_a_bad_root(tree: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    code = main(["build", "sen12ms-cr", "--root", str(tmp_path / "nope"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "no SEN12MS-CR folder" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code = main(["build", "sen12ms-cr", "--root", str(tree), "--out", str(out), "--workers", "1",
                 "--set", "clouds.resolution=40", "--set", "crop=64", "--set",
                 "crop_mode=center"])
    assert code == 0, capsys.readouterr().err
    st = Store(out)
    assert len(st) == len(SCENES) and st.meta["provenance"]["synthetic"] is True


@pytest.mark.skipif(not REAL_CR.is_dir(), reason="../shared/realdata is absent")
def test_real_sen12ms_cr_patch(tmp_path: Path) -> None:
    """The real s1 and s2_cloudy patch (linked, not copied); the real data has no cloud-free s2
    for it, so the test writes a stand-in on the same grid."""
    ref = PatchRef("ROIs1868", "summer", 19, 30)
    root = tmp_path / "SEN12MS-CR"
    for modality in ("s1", "s2_cloudy"):
        link = patch_path(root, ref, modality, cr=True)
        link.parent.mkdir(parents=True)
        link.symlink_to(patch_path(REAL_CR, ref, modality, cr=True))
    with rasterio.open(patch_path(REAL_CR, ref, "s2_cloudy", cr=True)) as src:
        profile, cloudy = src.profile, src.read()
    stand_in = (np.arange(13, dtype=np.uint16)[:, None, None] * 100 + 500
                + np.zeros((1, 256, 256), np.uint16))
    clear_path = patch_path(root, ref, "s2", cr=True)
    clear_path.parent.mkdir(parents=True)
    with rasterio.open(clear_path, "w", **profile) as dst:
        dst.write(stand_in)
    out = tmp_path / "ds"
    run_build("sen12ms-cr", _config(root), out, workers=1, progress=False)
    st = Store(out)
    assert st.samples["id"].tolist() == ["ROIs1868_summer_19_p30_r0c0"]
    assert st.samples["split"].tolist() == ["val"]  # ROIs1868_summer_19 is an official val scene
    with rasterio.open(patch_path(REAL_CR, ref, "s1", cr=True)) as src:
        np.testing.assert_array_equal(st.array("s1")[0], src.read())
    np.testing.assert_array_equal(st.array("s2")[0], cloudy)
    np.testing.assert_array_equal(st.array("s2_clear")[0], stand_in)
    expected, _ = cloud_mask(cloudy.astype(np.float32) / 10000, CloudMaskConfig())
    np.testing.assert_array_equal(st.array("cloud_mask")[0, 0], expected)
    row = st.samples.iloc[0]
    assert 0.3 < row["cloud_fraction"] < 0.7 and row["thin_fraction"] > 0.1
    assert st.meta["provenance"]["synthetic"] is False
    report = json.loads((out / "build_report.json").read_text())
    assert report["per_split"] == {"train": 0, "val": 1, "test": 0}
