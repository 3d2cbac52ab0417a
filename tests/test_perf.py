"""The loader benchmark: both sides read the same patches; the result is complete (no timings)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchgeo.datasets import SEN12MS

from cloudbench.datasets import CloudBenchDataset
from cloudbench.errors import CloudbenchError
from cloudbench.perf import build_sen12ms, build_store, format_benchmark, loader_benchmark
from cloudbench.store import Store


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("perf")
    return workdir, loader_benchmark(workdir, samples=64, batch_size=8, progress=False)


def test_both_loaders_read_every_sample(bench: tuple[Path, dict]) -> None:
    _, result = bench
    assert result["settings"] == {"samples": 64, "batch_size": 8, "num_workers": 0, "seed": 0,
                                  "patch_size": 64, "bands": 15}
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


def test_sen12ms_cloud_benchmark_accounts_for_its_time(tmp_path: Path) -> None:
    from cloudbench.perf import format_build_benchmark, sen12ms_cloud_benchmark

    result = sen12ms_cloud_benchmark(tmp_path, patches=25, cloud_images=2, progress=False)
    built = Store(tmp_path / "sen12ms-cloud")
    assert result["samples"] == len(built) > 0
    assert built.meta["provenance"]["synthetic"] is True
    assert set(result["stages"]) == {"reading", "masking", "labelling", "compositing", "writing"}
    assert min(result["stages"].values()) > 0
    assert "reading + writing" in format_build_benchmark(result)
