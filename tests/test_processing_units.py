"""Processing units by the published rules, the dry run's totals, and the CDSE quota warning.

The rules (docs/aoi.md, "Cost"): one PU = 512 x 512 output px x 3 input bands x one sample,
<= 16-bit output; the area factor is at least 0.01, a Process API request at least 0.005 PU;
FLOAT32 x 2; Sentinel-1 orthorectification x 2, radiometric terrain correction x 2.5 instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from cloudbench.builders import builder_module
from cloudbench.cli import main
from cloudbench.config import class_scheme
from cloudbench.sources import sentinelhub
from cloudbench.sources.base import Collection
from cloudbench.sources.sentinelhub import (
    CDSE_FREE,
    PlanCost,
    Quota,
    SentinelHubSettings,
    processing_units,
    quota_warning,
    request_units,
)
from cloudbench.sources.synthetic import SyntheticWorld
from tests.shserver import SHServer

aoi = builder_module("aoi")

# ---------------------------------------------------------------------- the formula


def test_one_pu_is_512_squared_3_bands_16_bit() -> None:
    assert request_units(512 * 512, 3) == pytest.approx(1.0)
    assert processing_units(512 * 512, 3, Collection.S2_L2A) == pytest.approx(1.0)
    assert processing_units(512 * 512, 3, Collection.S2_L1C) == pytest.approx(1.0)
    assert request_units(1024 * 1024, 12) == pytest.approx(4 * 4)  # area x 4, bands x 4


def test_float32_doubles() -> None:
    assert request_units(512 * 512, 3, float32=True) == pytest.approx(2.0)


def test_area_factor_and_request_floors() -> None:
    # the published NDVI example: 20 x 20 px (area factor 0.01, its minimum), 2 bands
    assert request_units(20 * 20, 2) == pytest.approx(0.01 * 2 / 3)
    # below that, the request's own minimum of 0.005 PU
    assert request_units(1, 1) == pytest.approx(0.005)
    assert request_units(20 * 20, 1) == pytest.approx(0.005)  # 0.01 / 3 < 0.005
    # CBEN's 60 m group: 20 x 20 px, 2 bands
    assert processing_units(400, 2, Collection.S2_L2A) == pytest.approx(0.01 * 2 / 3)


def test_sentinel_1_orthorectification_and_terrain_correction() -> None:
    # the published change-detection example: 1024^2, 4 bands, FLOAT32, 2 samples, ortho
    assert request_units(1024 * 1024, 4, float32=True, samples=2,
                         orthorectify=True) == pytest.approx(4 * 4 / 3 * 2 * 2 * 2)
    # the Sentinel Hub FAQ example: 2000 x 2000 px, 2 bands, 16 bit, orthorectified: 20.34 PU
    assert request_units(2000 * 2000, 2, orthorectify=True) == pytest.approx(20.345, abs=1e-3)
    # RTC is x 2.5 in place of orthorectification's x 2 (its prerequisite), not x 5
    assert request_units(512 * 512, 3, orthorectify=True,
                         terrain_correction=True) == pytest.approx(2.5)
    # our S1 reads: FLOAT32, orthorectified, RTC for gamma0_terrain (the default)
    full = 512 * 512
    assert processing_units(full, 3, Collection.S1_GRD) == pytest.approx(2 * 2.5)
    assert processing_units(full, 3, Collection.S1_GRD, "gamma0_terrain") == pytest.approx(5.0)
    for coefficient in ("beta0", "sigma0", "gamma0"):
        assert processing_units(full, 3, Collection.S1_GRD, coefficient) == pytest.approx(4.0)
    assert processing_units(full, 2, Collection.S1_GRD, "sigma0") == pytest.approx(8 / 3)


def test_plan_cost_sums_per_kind_and_rounds_up() -> None:
    cost = PlanCost()
    cost.add("a", 0.005, 3)
    cost.add("b", 1.0)
    cost.add("a", 0.001)
    assert cost.requests == 5
    assert cost.units == pytest.approx(1.02)  # 1.016 rounded up to 0.01
    assert cost.by_kind() == {"a": {"requests": 4, "processing_units": 0.02},
                              "b": {"requests": 1, "processing_units": 1.0}}
    assert cost.breakdown() == "requests by kind: a: 4 requests, 0.02 PU; b: 1 requests, 1 PU"


# ---------------------------------------------------------------------- quotas


def test_the_cdse_free_quota_is_the_published_one() -> None:
    assert (CDSE_FREE.requests_per_month, CDSE_FREE.units_per_month) == (10_000, 10_000)
    assert (CDSE_FREE.requests_per_minute, CDSE_FREE.units_per_minute) == (300, 300)


def test_quota_warning_over_the_free_cdse_quota() -> None:
    cdse = SentinelHubSettings(preset="cdse")
    assert quota_warning(cdse, 10_000, 10_000) is None  # exactly the quota: fits
    text = quota_warning(cdse, 24_000, 31_250.5)
    assert text == (
        "this build needs 24 000 Process API requests and 31 250.5 PU, over a CDSE free "
        "account (Copernicus General User) (10 000 requests, 10 000 PU a month) by 14 000 "
        "requests and 21 250.5 PU: 4 months of the free quota (it resets on the 1st; a re-run "
        "resumes, the request cache keeps what was paid for), or in one month the Copernicus "
        "Collaborative Ground Segment user type (1 000 000 requests, 100 000 PU a month) if "
        "eligible, or a Sentinel Hub Basic (700 000 requests, 70 000 PU a month) subscription")
    # requests alone over; the PU within
    only_requests = quota_warning(cdse, 12_000, 50.0)
    assert only_requests is not None
    assert "by 2 000 requests:" in only_requests and "2 months" in only_requests
    assert "Sentinel Hub 30-day free trial" in only_requests
    # beyond every published plan
    huge = quota_warning(cdse, 20_000_000, 2_000_000.0)
    assert huge is not None and huge.endswith("or in one month a custom Sentinel Hub subscription")
    assert "2000 months" in huge


def test_no_quota_warning_off_cdse() -> None:
    for settings in (SentinelHubSettings(),
                     SentinelHubSettings(preset="custom", base_url="http://127.0.0.1:9",
                                         token_url="http://127.0.0.1:9/token")):
        assert quota_warning(settings, 10**9, 10.0**9) is None
    # a custom URL on CDSE's host is CDSE
    custom_cdse = SentinelHubSettings(preset="custom",
                                      base_url="https://sh.dataspace.copernicus.eu/",
                                      token_url="https://example.org/token")
    assert quota_warning(custom_cdse, 10**5, 1.0) is not None


# ---------------------------------------------------------------------- the dry run


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=7, size=200, region_size=50)


@pytest.fixture
def inputs(world: SyntheticWorld, tmp_path: Path) -> dict[str, Path]:
    """As tests/test_aoi_build.py: an AOI inside the world and hunan_cloud-coded labels."""
    path = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box(645100, 3208100, 646900, 3209900)],
                     crs="EPSG:32649").to_file(path)
    igbp = world.read_labels(world.grid)
    codes = (class_scheme("simplified_igbp").lookup_table()[igbp] + 1).astype(np.uint8)
    labels = tmp_path / "landcover.tif"
    with rasterio.open(labels, "w", driver="GTiff", width=world.grid.width,
                       height=world.grid.height, count=1, dtype="uint8", nodata=0,
                       crs=world.grid.crs, transform=world.grid.transform) as dst:
        dst.write(codes, 1)
    return {"aoi": path, "labels": labels}


def _dry_run(server: SHServer, inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["build", "aoi", "--aoi", str(inputs["aoi"]), "--start", "2018-07-01",
            "--end", "2018-07-10", "--labels", str(inputs["labels"]), "--classes",
            "hunan_cloud", "--out", str(out), "--sh-base-url", server.url,
            "--sh-token-url", f"{server.url}/oauth/token", "--workers", "1",
            "--set", "tile_size=100", "--set", "patch_size=20",
            "--set", "sentinel_hub.retry_sleep_seconds=0.01", "--dry-run", *extra]


def _recording(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    original = aoi.estimate

    def estimate(config: Any, tasks: list[Any]) -> dict[str, Any]:
        seen["config"], seen["tasks"] = config, tasks
        seen["plan"] = original(config, tasks)
        return seen["plan"]

    monkeypatch.setattr(aoi, "estimate", estimate)
    return seen


@pytest.mark.usefixtures("sentinel_hub_env")
@pytest.mark.parametrize("coefficient", ["gamma0_terrain", "sigma0"])
def test_aoi_dry_run_totals_are_the_sum_over_its_requests(
    world: SyntheticWorld, inputs: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, coefficient: str,
) -> None:
    seen = _recording(monkeypatch)
    with SHServer(world, page_size=2) as server:
        code = main(_dry_run(server, inputs, tmp_path / "dry",
                             "--set", f"sentinel_hub.backscatter_coefficient={coefficient}"))
        assert not server.paths("/api/v1/process")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    tasks, config = seen["tasks"], seen["config"]
    assert len(tasks) == 8
    # three requests per task, over its window, by the formula directly
    s1_factor = 2.5 if coefficient == "gamma0_terrain" else 2.0
    total = 0.0
    for task in tasks:
        _, _, height, width = task.window
        pixels = height * width
        mask = round(height * config.resolution / config.clouds.resolution) * round(
            width * config.resolution / config.clouds.resolution)
        total += (max(0.01, pixels / 512**2) * 12 / 3  # L2A, UINT16
                  + max(0.01, pixels / 512**2) * 2 / 3 * 2 * s1_factor  # S1 FLOAT32
                  + max(0.01, mask / 512**2) * 13 / 3)  # L1C, UINT16
    plan = seen["plan"]
    assert plan["requests"] == 3 * len(tasks) == 24
    assert plan["processing_units"] == pytest.approx(np.ceil(total * 100) / 100)
    assert sum(k["requests"] for k in plan["by_kind"].values()) == 24
    assert f"24 Process API requests, about {plan['processing_units']:g} processing units" in (
        captured.out)
    assert "requests by kind: S2 L2A: 8 requests" in captured.out
    assert ("terrain-corrected x2.5" if s1_factor == 2.5 else "orthorectified x2") in captured.out
    assert "warning" not in captured.err  # a loopback deployment is not CDSE


@pytest.mark.usefixtures("sentinel_hub_env")
def test_dry_run_over_the_free_cdse_quota_warns_and_succeeds(
    world: SyntheticWorld, inputs: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    """The loopback server stands in for CDSE, with a free quota this small plan exceeds."""
    seen = _recording(monkeypatch)
    monkeypatch.setattr(sentinelhub, "CDSE_HOSTS", frozenset({"127.0.0.1"}))
    monkeypatch.setattr(sentinelhub, "CDSE_FREE",
                        Quota("a CDSE free account (Copernicus General User)", 10, 1, 300, 300))
    with SHServer(world, page_size=2) as server:
        code = main(_dry_run(server, inputs, tmp_path / "dry"))
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    assert "nothing was downloaded" in captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1
    units = seen["plan"]["processing_units"]
    months = max(int(np.ceil(24 / 10)), int(np.ceil(units / 1)))
    assert lines[0].startswith(
        f"warning: this build needs 24 Process API requests and {units:g} PU, over a CDSE free "
        f"account (Copernicus General User) (10 requests, 1 PU a month) by 14 requests and "
        f"{units - 1:g} PU: {months} months of the free quota")
    assert "Sentinel Hub 30-day free trial" in lines[0]
    assert not (tmp_path / "dry" / "dataset.json").exists()
