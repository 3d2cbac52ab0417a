"""The SEN12MS Cloud builder end to end, on SEN12MS / SEN12MS-CR trees in their real layouts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import REALDATA

from cloudbench.build import run_build
from cloudbench.builders import sen12ms_cloud
from cloudbench.cli import main
from cloudbench.cloudlib import LibraryConfig, MaskLibrary, build_library
from cloudbench.config import class_scheme, load_recipe
from cloudbench.datasets import SEN12MSCloud
from cloudbench.sources.fixtures import patch_path, write_sen12ms, write_sen12ms_cr
from cloudbench.sources.sen12ms import PatchRef
from cloudbench.store import Store

WIDE = ["cover_range=[0.05, 1.0]"]  # the synthetic world's clouds are mostly thick


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sen12ms")
    write_sen12ms(root / "sen12ms", scenes=2, patches_per_scene=4, nan_patch=(1, 2))
    write_sen12ms_cr(root / "cr", scenes=2, patches_per_scene=4)
    build_library(root / "cr", root / "library", LibraryConfig(), workers=1, progress=False)
    return {"sen12ms": root / "sen12ms", "cr": root / "cr", "library": root / "library"}


def _config(trees: dict[str, Path], *settings: str, **values: object) -> sen12ms_cloud.Config:
    paths = {"sen12ms_root": trees["sen12ms"], "cloud_source": trees["library"], **values}
    return load_recipe(sen12ms_cloud.Config, "sen12ms-cloud", [*WIDE, *settings], paths)


@pytest.fixture(scope="module")
def grid_build(trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "ds"
    run_build("sen12ms-cloud", _config(trees, "crop=grid"), out, workers=1, progress=False)
    return out


def _read(root: Path, ref: PatchRef, modality: str) -> np.ndarray:
    with rasterio.open(patch_path(root, ref, modality)) as src:
        return src.read()


def _ref(sample_id: str) -> tuple[PatchRef, int, int]:
    patch_id, rc = sample_id.rsplit("_r", 1)
    row, col = (int(v) for v in rc.split("c"))
    roi, season, scene, patch = patch_id.split("_")
    return PatchRef(roi, season, int(scene), int(patch[1:])), row, col


def test_samples_are_the_sen12ms_crops_with_their_labels(trees, grid_build) -> None:
    st = Store(grid_build)
    lookup = class_scheme("simplified_igbp").lookup_table()
    report = json.loads((grid_build / "build_report.json").read_text())
    assert len(st) + sum(report["dropped"].values()) == 8 * 16  # 8 patches, 16 crops each
    assert report["dropped"]["nodata"] > 0  # the NaN patch
    s1, clear = st.array("s1"), st.array("s2_clear")
    for i, sample_id in enumerate(st.samples["id"]):
        ref, row, col = _ref(sample_id)
        crop = np.s_[:, row : row + 64, col : col + 64]
        np.testing.assert_array_equal(s1[i], _read(trees["sen12ms"], ref, "s1")[crop])
        np.testing.assert_array_equal(clear[i], _read(trees["sen12ms"], ref, "s2")[crop])
        codes = _read(trees["sen12ms"], ref, "lc")[0][crop[1:]]
        counts = np.bincount(lookup[codes].ravel(), minlength=10)
        assert st.samples["label"].iloc[i] == counts.argmax()
        assert counts.max() / codes.size >= 0.5
        with rasterio.open(patch_path(trees["sen12ms"], ref, "s2")) as src:
            expected = src.transform @ rasterio.Affine.translation(col, row)
            assert st.grid(i).transform == expected
            assert st.grid(i).crs == src.crs


def test_hand_made_land_cover_majorities(tmp_path: Path, trees) -> None:
    root = tmp_path / "sen12ms"
    refs = write_sen12ms(root, scenes=1, patches_per_scene=1)
    path = patch_path(root, refs[0], "lc")
    with rasterio.open(path) as src:
        profile, lc = src.profile, src.read()
    lc[0] = 17  # water everywhere but the centre crop (rows/cols 96..160)
    lc[0, 96:160, 96:136] = 1  # forest, 40 of 64 columns: 62.5%
    lc[0, 96:160, 136:160] = 12  # croplands, 37.5%
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(lc)
    build = tmp_path / "a"
    run_build("sen12ms-cloud", _config(trees, sen12ms_root=root), build, workers=1,
              progress=False)
    assert Store(build).samples["label"].tolist() == [0]  # Forest
    strict = tmp_path / "b"
    with pytest.raises(Exception, match="produced no samples.*impure 1"):
        run_build("sen12ms-cloud", _config(trees, "purity=0.7", sen12ms_root=root), strict,
                  workers=1, progress=False)


def test_compositing_keeps_clear_pixels_and_puts_c_under_thick_cloud(grid_build, trees) -> None:
    st = Store(grid_build)
    library = MaskLibrary(trees["library"])
    cloud_dn = np.round(library.cloud_reflectance.astype(np.float32) * 10000)
    s2, clear, masks = st.array("s2"), st.array("s2_clear"), st.array("cloud_mask")[:, 0]
    assert (masks == 2).any() and (masks == 1).any()
    outside = np.broadcast_to(masks[:, None] == 0, s2.shape)
    np.testing.assert_array_equal(s2[outside], clear[outside])
    thick = np.moveaxis(s2, 1, -1)[masks == 2]
    np.testing.assert_array_equal(thick, np.broadcast_to(cloud_dn, thick.shape))
    thin_new = np.moveaxis(s2, 1, -1)[masks == 1].astype(np.float64)
    thin_old = np.moveaxis(clear, 1, -1)[masks == 1].astype(np.float64)
    far = np.abs(cloud_dn - thin_old) > 200  # alpha >= 0.035, so the move is >= 7 DN
    low, high = np.minimum(thin_old, cloud_dn), np.maximum(thin_old, cloud_dn)
    assert ((thin_new[far] > low[far]) & (thin_new[far] < high[far])).all()


def test_each_clouded_sample_carries_its_library_window(grid_build, trees) -> None:
    st = Store(grid_build)
    library = MaskLibrary(trees["library"])
    windows = library.windows.set_index(["source_id", "row", "col"])
    masks = st.array("cloud_mask")[:, 0]
    for i, sources in enumerate(st.samples["source_ids"]):
        if len(sources) == 1:
            assert not masks[i].any()
            continue
        source, where = sources[1].rsplit("@r", 1)
        row, col = (int(v) for v in where.split("c"))
        index = int(windows.loc[(source, row, col), "index"])
        np.testing.assert_array_equal(masks[i], library.masks[index])


def test_cloud_fractions_follow_the_recipe(trees, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    run_build("sen12ms-cloud", _config(trees, "crop=random", "crops_per_patch=40"), out,
              workers=1, progress=False)
    table = Store(out).samples
    clouded = table["source_ids"].map(len) == 2
    assert len(table) > 250
    assert clouded.mean() == pytest.approx(0.5, abs=0.08)
    kinds = MaskLibrary(trees["library"]).windows.set_index(["source_id", "row", "col"])["kind"]
    used = [kinds.loc[(s.rsplit("@r", 1)[0], *map(int, s.rsplit("@r", 1)[1].split("c")))]
            for s in table.loc[clouded, "source_ids"].map(lambda ids: ids[1])]
    assert np.mean([k == "thin" for k in used]) == pytest.approx(0.5, abs=0.1)
    all_clouded = tmp_path / "all"
    run_build("sen12ms-cloud", _config(trees, "crop=grid", "clouded_fraction=1.0"), all_clouded,
              workers=1, progress=False)
    assert (Store(all_clouded).samples["source_ids"].map(len) == 2).all()


def test_deterministic_across_workers(trees, grid_build, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    run_build("sen12ms-cloud", _config(trees, "crop=grid"), out, workers=2, progress=False)
    a, b = Store(grid_build), Store(out)
    assert a.samples.drop(columns="geometry").equals(b.samples.drop(columns="geometry"))
    for name in ("s1", "s2", "s2_clear", "cloud_mask"):
        assert (grid_build / f"{name}.npy").read_bytes() == (out / f"{name}.npy").read_bytes()


def test_resume_after_kill(trees, grid_build, tmp_path: Path) -> None:
    """A real kill (SIGKILL of the CLI's process group) of a build that has written a shard and
    is still running; the re-run builds only the other shards, to the uninterrupted dataset."""
    many = tmp_path / "many"
    write_sen12ms(many, scenes=8, patches_per_scene=1)
    total = len(sen12ms_cloud.plan(_config(trees, "crop=grid", sen12ms_root=many),
                                   tmp_path / "plan"))
    assert total >= 4
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "cloudbench.cli", "build", "sen12ms-cloud",
               "--sen12ms-root", str(many), "--cloud-source", str(trees["library"]),
               "--out", str(out), "--workers", "1", "--set", WIDE[0], "--set", "crop=grid"]
    log = tmp_path / "killed.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    shards = out / "shards"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                done = [p for p in shards.iterdir() if p.is_dir() and not p.name.startswith(".")]
            except FileNotFoundError:  # not created yet (or, too late, removed by finalize)
                done = []
            if done:
                break
            assert process.poll() is None, (
                f"the build ended (status {process.returncode}) before a shard was seen: "
                f"{log.read_text(errors='replace')[-2000:]}")
            assert time.monotonic() < deadline, "no shard within 60 s"
            time.sleep(0.01)
        alive = process.poll() is None
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and anything it started
        process.wait()
    assert alive, "the build had finished before the kill"
    assert not (out / "dataset.json").exists()
    finished = [p.name for p in shards.iterdir()
                if p.is_dir() and not p.name.startswith(".") and (p / "samples.parquet").exists()]
    assert finished and len(finished) < total  # killed mid-way: some shards written, not all

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    built = re.search(r"built .*: (\d+) shards, (\d+) resumed", rerun.stdout)
    assert built, rerun.stdout  # "resumed": the re-run found shards to keep
    assert int(built[1]) + int(built[2]) == total
    assert int(built[2]) >= len(finished)  # what was on disk at the kill was not built again
    whole = tmp_path / "whole"
    run_build("sen12ms-cloud", _config(trees, "crop=grid", sen12ms_root=many), whole, workers=1,
              progress=False)
    assert list(Store(out).samples["id"]) == list(Store(whole).samples["id"])
    for name in ("s1", "s2", "s2_clear", "cloud_mask"):
        assert (out / f"{name}.npy").read_bytes() == (whole / f"{name}.npy").read_bytes()


def test_opens_as_sen12ms_cloud_and_says_synthetic(grid_build) -> None:
    dataset = SEN12MSCloud(grid_build, split="test", bands=("B04", "B03", "B02", "VV/VH"))
    sample = dataset[0]
    assert sample["image_s2"].shape == (3, 64, 64)
    assert sample["image_s2_clear"].shape == (3, 64, 64)
    meta = json.loads((grid_build / "dataset.json").read_text())
    assert meta["provenance"]["synthetic"] is True
    assert meta["arrays"]["s2"]["bands"][10] == "B10"


def test_holdout_split_uses_the_official_scenes(trees, tmp_path: Path) -> None:
    root = tmp_path / "sen12ms"
    write_sen12ms(root, scenes=[15, 16], patches_per_scene=1)  # ROIs1158_spring_15 is held out
    out = tmp_path / "ds"
    run_build("sen12ms-cloud", _config(trees, "split=holdout", "crop=grid", sen12ms_root=root),
              out, workers=1, progress=False)
    table = Store(out).samples
    scene = table["id"].str.split("_").str[2]
    assert set(table.loc[scene == "15", "split"]) == {"test"}
    assert set(table.loc[scene == "16", "split"]) == {"train"}


def test_label_table_and_class_cap(trees, grid_build, tmp_path: Path) -> None:
    ids = list(Store(grid_build).samples["id"])
    table = tmp_path / "labels.csv"
    pd.DataFrame({"id": ids[:30], "class": ["paddy", "town", "lake"] * 10}).to_csv(table,
                                                                                   index=False)
    out = tmp_path / "ds"
    run_build("sen12ms-cloud", _config(trees, "crop=grid", "class_cap=4", label_table=table),
              out, workers=1, progress=False)
    st = Store(out)
    assert st.classes == ["lake", "paddy", "town"]
    assert np.bincount(st.samples["label"].astype(int)).tolist() == [4, 4, 4]
    report = json.loads((out / "build_report.json").read_text())
    assert report["dropped"]["over class cap"] == 18
    assert report["dropped"]["not in label table"] == 8 * 16 - report["dropped"]["nodata"] - 30
    assert SEN12MSCloud(out, split="train").classes == ["lake", "paddy", "town"]


def test_real_cloud_masks_from_sen12ms_cr(trees, tmp_path: Path) -> None:
    if not (REALDATA / "sen12ms_cr").is_dir():
        pytest.skip("../shared/realdata is absent")
    out = tmp_path / "ds"
    config = load_recipe(sen12ms_cloud.Config, "sen12ms-cloud", ["crop=grid",
                         "cover_range=[0.3, 0.9]", "clouded_fraction=1.0"],
                         {"sen12ms_root": trees["sen12ms"],
                          "cloud_source": REALDATA / "sen12ms_cr"})
    run_build("sen12ms-cloud", config, out, workers=1, progress=False)
    st = Store(out)
    sources = {ids[1].split("@")[0] for ids in st.samples["source_ids"]}
    assert sources == {"ROIs1868_summer_19_p30"}
    masks = st.array("cloud_mask")
    assert (masks == 1).mean() > 0.05 and (masks == 2).mean() > 0.05  # real thin and thick
    assert (out / "cloud_library" / "library.json").is_file()


def test_cli_errors(trees, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["build", "sen12ms-cloud", "--sen12ms-root", str(tmp_path / "nope"),
                 "--cloud-source", str(trees["library"]), "--out", str(tmp_path / "o1")])
    assert code == 2
    assert "no SEN12MS folder" in capsys.readouterr().err
    code = main(["build", "sen12ms-cloud", "--sen12ms-root", str(trees["sen12ms"]),
                 "--cloud-source", str(trees["library"]), "--out", str(tmp_path / "o2"),
                 "--set", "cover_range=[0.99, 1.0]", "--set", "thin_share=1.0"])
    assert code == 2
    assert "has no thin windows with a cloud fraction in [0.99, 1.0]" in capsys.readouterr().err
    code = main(["build", "sen12ms-cloud", "--sen12ms-root", str(trees["sen12ms"]),
                 "--cloud-source", str(trees["library"]), "--out", str(tmp_path / "o3"),
                 "--set", "clouded_fraction=0.05"])
    assert code == 2
    assert "clouded_fraction: Input should be greater than or equal to 0.1" in (
        capsys.readouterr().err)


def test_real_sen12ms_patch_without_s2_is_reported_incomplete(trees, tmp_path: Path) -> None:
    if not (REALDATA / "sen12ms").is_dir():
        pytest.skip("../shared/realdata is absent")
    # The real SEN12MS sample has s1 and lc but no s2: the triplet is incomplete.
    with pytest.raises(Exception, match=r"produced no samples from 1 tasks.*incomplete triplet 1"):
        run_build("sen12ms-cloud", _config(trees, sen12ms_root=REALDATA / "sen12ms"),
                  tmp_path / "ds", workers=1, progress=False)
