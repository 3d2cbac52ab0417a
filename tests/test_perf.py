"""The loader benchmark: both sides read the same patches; the result is complete (no timings)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torchgeo.datasets import SEN12MS, BigEarthNet

from cloudbench import perf
from cloudbench.cli import main
from cloudbench.datasets import BigEarthNetClean, CloudBenchDataset
from cloudbench.errors import CloudbenchError
from cloudbench.perf import (
    bigearthnet_pair,
    build_bigearthnet,
    build_sen12ms,
    build_store,
    format_benchmark,
    loader_benchmark,
)
from cloudbench.sources.base import SYNTHETIC_MARKER
from cloudbench.sources.bigearthnet import S2_GROUPS
from cloudbench.store import Store


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("perf")
    return workdir, loader_benchmark(workdir, samples=64, batch_size=8, progress=False)


def test_both_loaders_read_every_sample(bench: tuple[Path, dict]) -> None:
    _, result = bench
    assert result["settings"] == {"dataset": "sen12ms", "samples": 64, "batch_size": 8,
                                  "num_workers": 0, "seed": 0, "patch_size": 64, "bands": 15}
    for name in ("cloudbench", "torchgeo"):
        assert result[name]["samples"] == 64
        assert result[name]["timed_samples"] == 64 - 8
        assert result[name]["seconds"] > 0
        assert result[name]["samples_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["cloudbench"]["samples_per_s"] / result["torchgeo"]["samples_per_s"])
    assert set(result["build_seconds"]) == {"store", "geotiff"}
    report = format_benchmark(result)
    assert "TorchGeo SEN12MS" in report and f"{result['ratio']:.1f}x" in report


def test_both_sides_hold_the_same_patches(bench: tuple[Path, dict]) -> None:
    workdir, _ = bench
    ours = CloudBenchDataset(workdir / "store", split="train")
    theirs = SEN12MS(workdir / "sen12ms", split="train", bands=SEN12MS.BAND_SETS["all"])
    assert len(ours) == len(theirs) == 64
    for index in (0, 37):
        mine, image = ours[index], theirs[index]["image"]
        assert image.shape == (15, 64, 64)
        assert torch.equal(image[:2], mine["image_s1"])
        # Ours is reflectance (stored uint16 / 10000); TorchGeo's the stored integers.
        assert torch.equal(image[2:], (mine["image_s2"] * 10000).round())
        assert int(theirs[index]["mask"][0, 0]) == int(mine["label"]) + 1  # IGBP code


def test_inputs_are_reused_and_other_settings_refused(bench: tuple[Path, dict]) -> None:
    workdir, _ = bench
    files = sorted(workdir.rglob("*"))
    before = [p.stat().st_mtime_ns for p in files]
    build_store(workdir / "store", 64, seed=0, progress=False)
    build_sen12ms(workdir / "store", workdir / "sen12ms", progress=False)
    assert sorted(workdir.rglob("*")) == files
    assert [p.stat().st_mtime_ns for p in files] == before
    with pytest.raises(CloudbenchError, match="other settings"):
        build_store(workdir / "store", 64, seed=1, progress=False)


def test_one_batch_is_too_few(tmp_path: Path) -> None:
    with pytest.raises(CloudbenchError, match="must exceed"):
        loader_benchmark(tmp_path, samples=64, batch_size=64, progress=False)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- --dataset bigearthnet

TORCHGEO_BANDS = ("VH", "VV", *BigEarthNetClean.EARLY_FUSION_BANDS[2:])
"""TorchGeo's BigEarthNet channels: the S1 files sorted by name (VH first), then B01 … B12."""


@pytest.fixture(scope="module")
def ben(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("perf-ben")
    result = loader_benchmark(workdir, samples=40, batch_size=8, dataset="bigearthnet",
                              progress=False)
    return workdir, result


def test_bigearthnet_benchmark_reports_both_sides(ben: tuple[Path, dict]) -> None:
    workdir, result = ben
    assert result["settings"] == {"dataset": "bigearthnet", "samples": 40, "batch_size": 8,
                                  "num_workers": 0, "seed": 0, "patch_size": 120, "bands": 14}
    for name in ("cloudbench", "torchgeo"):
        assert (result[name]["samples"], result[name]["timed_samples"]) == (40, 32)
        assert result[name]["samples_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["cloudbench"]["samples_per_s"] / result["torchgeo"]["samples_per_s"])
    assert set(result["build_seconds"]) == {"store", "geotiff"}
    report = format_benchmark(result)
    assert "TorchGeo BigEarthNet" in report and f"{result['ratio']:.1f}x" in report
    assert (workdir / "bigearthnet" / SYNTHETIC_MARKER).is_file()
    assert Store(workdir / "bigearthnet-store").meta["provenance"]["synthetic"] is True


def test_bigearthnet_readers_give_the_same_patches(ben: tuple[Path, dict]) -> None:
    workdir, _ = ben
    ours = BigEarthNetClean(workdir / "bigearthnet-store", split="train")
    theirs = BigEarthNet(workdir / "bigearthnet", split="train", bands="all", num_classes=19,
                         checksum=False)
    assert ours.ids == [Path(f["s2"]).name for f in theirs.folders]  # same patches, same order
    s2 = list(ours.s2_bands)
    fine = [b for b in s2 if b in S2_GROUPS["s2"]]
    for index in (0, 29):
        paths = theirs._load_paths(index)
        assert tuple(Path(p).stem.split("_")[-1] for p in paths) == TORCHGEO_BANDS
        mine, sample = ours[index], theirs[index]
        image, dn = sample["image"], mine["image_s2"].double() * 10000
        assert image.shape == (14, 120, 120)
        assert torch.equal(sample["label"], mine["label"]) and mine["label"].sum() >= 1
        for band in fine:  # 10 m: the stored integers, exactly
            assert torch.equal(image[TORCHGEO_BANDS.index(band)].double(),
                               dn[s2.index(band)].round())
        # 20 m and 60 m: GDAL's bilinear (rasterio's out_shape read) is ours (align_corners
        # False), rounded to integers by TorchGeo's int32 read; so is S1 (whole dB there).
        for band in set(s2) - set(fine):
            assert_rounded(image[TORCHGEO_BANDS.index(band)].double(), dn[s2.index(band)])
        for k, band in enumerate(ours.s1_bands):
            assert_rounded(image[TORCHGEO_BANDS.index(band)].double(),
                           mine["image_s1"][k].double())


def assert_rounded(theirs: torch.Tensor, ours: torch.Tensor) -> None:
    """``theirs`` is ``ours`` rounded to integers, but where ``ours`` lies within 0.01 of a
    half (a tie, common in 2x bilinear upsampling, which GDAL may round either way)."""
    off = theirs != ours.round()
    assert (theirs - ours).abs().max() <= 0.51
    assert ((ours[off] - ours[off].floor() - 0.5).abs() <= 0.01).all()


def test_bigearthnet_inputs_are_reused_and_other_settings_refused(ben: tuple[Path, dict]) -> None:
    workdir, _ = ben
    files = sorted(workdir.rglob("*"))
    before = [p.stat().st_mtime_ns for p in files]
    bigearthnet_pair(workdir, 40, seed=0, progress=False)
    assert sorted(workdir.rglob("*")) == files
    assert [p.stat().st_mtime_ns for p in files] == before
    with pytest.raises(CloudbenchError, match="other settings"):
        build_bigearthnet(workdir / "bigearthnet", 40, seed=1, progress=False)


def test_a_half_written_bigearthnet_tree_resumes_to_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(perf, "BEN_SIDE", 2)  # products of 4 patches: 6 samples are 2 products
    whole = build_bigearthnet(tmp_path / "whole", 6, seed=0, progress=False)
    killed = build_bigearthnet(tmp_path / "killed", 6, seed=0, progress=False)
    # As if killed while writing the second product: its lists not updated, a folder missing.
    (killed / perf.BEN_MARKER).write_text(json.dumps({"settings": {"samples": 6, "seed": 0},
                                                      "products": 1}))
    for name in ("train.csv", "bigearthnet-train.csv"):
        lines = (killed / name).read_text().splitlines(keepends=True)
        (killed / name).write_text("".join(lines[:4]))
    s1_folders = sorted((killed / "BigEarthNet-S1-v1.0").iterdir())  # by name: by product
    shutil.rmtree(s1_folders[-1])
    kept = next(s1_folders[0].glob("*.tif"))
    written = kept.stat().st_mtime_ns
    build_bigearthnet(killed, 6, seed=0, progress=False)
    assert kept.stat().st_mtime_ns == written  # the first product is not written again
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(killed) for p in killed.rglob("*") if p.is_file())
    for path in files:
        assert (whole / path).read_bytes() == (killed / path).read_bytes(), path
    assert len((whole / "bigearthnet-train.csv").read_text().splitlines()) == 6


@pytest.mark.parametrize(("args", "needle"), [
    (["--dataset", "nope"], "'nope' is not one of"),
    (["--dataset", "bigearthnet", "--samples", "40", "--batch-size", "40"], "must exceed"),
])
def test_bad_loader_options_give_one_message_and_exit_2(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["perf", "loader", "--workdir", str(tmp_path / "work"), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and needle in err
    assert len([line for line in err.splitlines() if line.lower().startswith("error:")]) == 1
    assert not (tmp_path / "work").exists()


def test_sen12ms_cloud_benchmark_accounts_for_its_time(tmp_path: Path) -> None:
    from cloudbench.perf import format_build_benchmark, sen12ms_cloud_benchmark

    result = sen12ms_cloud_benchmark(tmp_path, patches=25, cloud_images=2, progress=False)
    built = Store(tmp_path / "sen12ms-cloud")
    assert result["samples"] == len(built) > 0
    assert built.meta["provenance"]["synthetic"] is True
    assert set(result["stages"]) == {"reading", "masking", "labelling", "compositing", "writing"}
    assert min(result["stages"].values()) > 0
    assert "reading + writing" in format_build_benchmark(result)
