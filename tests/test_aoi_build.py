"""`cloudbench build aoi` end to end against the loopback Sentinel Hub (tests/shserver.py).

The builder runs unchanged with the real sentinelhub-py client; the server serves the synthetic
world, so every stored pixel can be checked against the world read on the sample's own grid.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from cloudbench.cli import main
from cloudbench.clouds import CloudMaskConfig, mask_acquisition
from cloudbench.config import class_scheme
from cloudbench.datasets import HunanCloud
from cloudbench.sources.base import S1_BANDS, S2_L2A_BANDS, Acquisition, Collection, Grid
from cloudbench.sources.synthetic import SyntheticWorld
from cloudbench.store import Store
from tests.shserver import CLIENT_SECRET, SHServer, outage_after_first_shard

PATCH = 20


class AsServed:
    """The world as the (fake) service serves it: S2 in digital numbers, i.e. reflectance
    rounded to 1e-4, in the client's float32 arithmetic."""

    def __init__(self, world: SyntheticWorld) -> None:
        self.world = world

    def read(self, acquisition: Acquisition, grid: Grid, bands: Any) -> np.ndarray:
        dn = np.round(self.world.read(acquisition, grid, bands).astype(np.float64) * 10000)
        return dn.astype(np.float32) / np.float32(10000)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=7, size=200, region_size=50)


pytestmark = pytest.mark.usefixtures("sentinel_hub_env")


@pytest.fixture
def inputs(world: SyntheticWorld, tmp_path: Path) -> dict[str, Path]:
    """An AOI inside the world (in UTM: any CRS is read) and a land-cover raster coded 1-10
    in hunan_cloud order (the world's IGBP codes through the simplified-IGBP scheme)."""
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box(645100, 3208100, 646900, 3209900)],
                     crs="EPSG:32649").to_file(aoi)
    igbp = world.read_labels(world.grid)
    codes = (class_scheme("simplified_igbp").lookup_table()[igbp] + 1).astype(np.uint8)
    labels = tmp_path / "landcover.tif"
    with rasterio.open(labels, "w", driver="GTiff", width=world.grid.width,
                       height=world.grid.height, count=1, dtype="uint8", nodata=0,
                       crs=world.grid.crs, transform=world.grid.transform) as dst:
        dst.write(codes, 1)
    return {"aoi": aoi, "labels": labels}


def _command(server: SHServer, inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["build", "aoi", "--aoi", str(inputs["aoi"]), "--start", "2018-07-01",
            "--end", "2018-07-10", "--labels", str(inputs["labels"]), "--classes",
            "hunan_cloud", "--out", str(out), "--sh-base-url", server.url,
            "--sh-token-url", f"{server.url}/oauth/token", "--workers", "1",
            "--set", "tile_size=100", "--set", f"patch_size={PATCH}",
            "--set", "sentinel_hub.retry_sleep_seconds=0.01", *extra]


def test_build_stores_the_served_pixels_on_each_sample_grid(
    world: SyntheticWorld, inputs: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "built"
    with SHServer(world, page_size=2) as server:
        server.fail_500 = 2  # retried: the build still completes with every sample correct
        server.fail_429 = 1
        server.truncate = 1
        server.slow, server.slow_seconds = 1, 3.0
        command = _command(server, inputs, out, "--set", "sentinel_hub.timeout_seconds=1")
        assert main(command) == 0, capsys.readouterr().err
        assert all(entry["path"].startswith("/") for entry in server.log)
    capsys.readouterr()

    for written in out.rglob("*.json"):
        assert CLIENT_SECRET not in written.read_text()
    dataset = HunanCloud(out, split="train")
    assert len(dataset) > 0
    built = Store(out)
    samples = built.samples
    found = {a.id: a for c in Collection
             for a in world.search(c, world.grid.footprint(),
                                   dt.datetime(2018, 6, 25, tzinfo=dt.UTC),
                                   dt.datetime(2018, 7, 15, tzinfo=dt.UTC))}
    # 4 tiles of 100 px, 25 patches each, per S2 sensing of the window
    s2_dates = samples["s2_time"].nunique()
    report = json.loads((out / "build_report.json").read_text())
    assert s2_dates >= 1
    assert len(samples) + sum(report["dropped"].values()) == 4 * 25 * s2_dates

    gap = (samples["s1_time"] - samples["s2_time"]).abs()
    assert (gap <= dt.timedelta(days=3)).all()

    scheme = class_scheme("simplified_igbp")
    s2, s1, clouds = built.array("s2"), built.array("s1"), built.array("cloud_mask")
    config = CloudMaskConfig()
    served = AsServed(world)
    for i in range(0, len(samples), 17):
        grid = built.grid(i)
        l2a, l1c, radar = (found[x] for x in samples["source_ids"].iat[i])
        expected_s2 = world.read(l2a, grid, S2_L2A_BANDS).astype(np.float64)
        np.testing.assert_array_equal(s2[i], np.round(expected_s2 * 10000))  # DN, exactly
        np.testing.assert_allclose(s1[i], world.read(radar, grid, S1_BANDS), atol=1e-3)
        # s2cloudless ran on the whole tile (1 km, 100 px) holding the patch, on the L1C bands
        # as served: rounded to 1e-4 (unrounded values could flip a few pixels at a threshold)
        left, _, _, top = grid.bounds
        tile_left, tile_top = left // 1000 * 1000, -(-top // 1000) * 1000
        tile = Grid.from_bounds(grid.crs, tile_left, tile_top, 100, 100, 10.0)
        row, col = round((tile_top - top) / 10), round((left - tile_left) / 10)
        tile_mask = mask_acquisition(served, l1c, tile, config)
        np.testing.assert_array_equal(clouds[i, 0], tile_mask[row:row + PATCH, col:col + PATCH])
        classes = scheme.lookup_table()[world.read_labels(grid)]
        majority = np.bincount(classes.ravel(), minlength=10).argmax()
        assert samples["label"].iat[i] == majority


def test_dry_run_plans_without_downloading(world: SyntheticWorld, inputs: dict[str, Path],
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    with SHServer(world, page_size=2) as server:
        assert main(_command(server, inputs, tmp_path / "dry", "--dry-run")) == 0
        assert not server.paths("/api/v1/process")
    text = capsys.readouterr().out
    assert "4 of 4 UTM tiles have S2/S1 pairs" in text and "processing units" in text
    assert "for 200 patches meeting the AOI (intersects)" in text  # 8 shards of 25
    assert not (tmp_path / "dry" / "dataset.json").exists()


def test_lasting_server_errors_end_in_one_message(world: SyntheticWorld,
                                                  inputs: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "failing"
    with SHServer(world, page_size=2) as server:
        server.fail_500 = 10_000
        assert main(_command(server, inputs, out)) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and CLIENT_SECRET not in err
    # every failed tile x pair is named with its reason; nothing is finalised
    assert "8 of 8 shards failed" in last and last.count("HTTP 500") == 8
    for tile in ("32649_645000_3208000", "32649_646000_3209000"):
        assert f"{tile}_2018" in last
    assert not (out / "dataset.json").exists()


@pytest.mark.parametrize(("change", "message"), [
    (("--start", "2018-07-10", "--end", "2018-07-01"), "before"),
    (("--set", "label_codes={Glacier: [3]}"), "Glacier"),
    (("--set", "label_codes={Forest: [2]}"), "1, 3"),  # codes the scheme no longer maps
])
def test_bad_inputs_end_in_one_message(world: SyntheticWorld, inputs: dict[str, Path],
                                       tmp_path: Path, capsys: pytest.CaptureFixture,
                                       change: tuple[str, ...], message: str) -> None:
    with SHServer(world, page_size=2) as server:
        command = _command(server, inputs, tmp_path / "bad")
        if change[0] == "--start":
            command[command.index("--start") + 1] = change[1]
            command[command.index("--end") + 1] = change[3]
        else:
            command += list(change)
        assert main(command) == 2
        assert not server.paths("/api/v1/process")  # refused before any download
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) <= 3


def test_missing_credentials(world: SyntheticWorld, inputs: dict[str, Path], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("SH_CLIENT_ID")
    monkeypatch.delenv("SH_CLIENT_SECRET")
    with SHServer(world, page_size=2) as server:
        assert main(_command(server, inputs, tmp_path / "nocreds")) == 2
    assert "SH_CLIENT_ID" in capsys.readouterr().err


def test_shipped_hunan_cloud_recipe_plans(world: SyntheticWorld, inputs: dict[str, Path],
                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The shipped recipe (AOI from the catalogs, July 2018) plans against the service; the
    served world lies in northern Hunan, so the tiles over it have pairs."""
    with SHServer(world, page_size=50) as server:
        code = main(["build", "hunan-cloud", "--labels", str(inputs["labels"]), "--out",
                     str(tmp_path / "hunan"), "--sh-base-url", server.url, "--sh-token-url",
                     f"{server.url}/oauth/token", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # 396 tiles of 6.4 km cover the AOI; the 2 km world meets 2 of them, 6 pairs each
    assert "2 of 396 UTM tiles have S2/S1 pairs: 12 shards" in captured.out


def test_a_build_that_fails_mid_way_resumes_to_the_uninterrupted_dataset(
    world: SyntheticWorld, inputs: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:


    reference, broken = tmp_path / "reference", tmp_path / "broken"
    with SHServer(world, page_size=2) as server:
        assert main(_command(server, inputs, reference)) == 0

        watcher = outage_after_first_shard(server, broken)
        assert main(_command(server, inputs, broken)) == 2
        watcher.join()
        assert not (broken / "dataset.json").exists()
        server.fail_500 = 0
        capsys.readouterr()
        assert main(_command(server, inputs, broken)) == 0
    assert "resumed" in capsys.readouterr().out
    for name in ("s1.npy", "s2.npy", "cloud_mask.npy", "samples.parquet"):
        assert (broken / name).read_bytes() == (reference / name).read_bytes(), name


# ---------------------------------------------------------------- patches meeting the AOI

# An L-shaped AOI over three of the world's four 1 km tiles; its edge x = 645400 lies on the
# 200 m patch lattice (the patch east of it only touches the AOI; the one west of it lies within).
L_AOI = box(645150, 3208150, 645400, 3209650).union(box(645150, 3209350, 646650, 3209650))
LABELLED_EAST = 646330  # the land-cover raster stops here: patches east of it have no labels
NODATA_BLOCK = (645600, 3209400, 645740, 3209600)  # 70% of one patch: too few labels
HUNAN_ORDER = ("Agricultural", "Forest", "Harbor", "Industrial", "Residential", "Road", "Scrub",
               "Transitional Woodland", "Village", "Water")
# code i -> class i: code 0 is a class (as Dynamic World's water is), so it cannot mean no data
IDENTITY_CODES = "{" + ", ".join(f"{name}: [{i}]" for i, name in enumerate(HUNAN_ORDER)) + "}"
TILES = {"32649_645000_3209000": (645000, 3210000), "32649_645000_3208000": (645000, 3209000),
         "32649_646000_3209000": (646000, 3210000), "32649_646000_3208000": (646000, 3209000)}


@pytest.fixture
def partial_labels(world: SyntheticWorld, tmp_path: Path) -> dict[str, Path]:
    """The L-shaped AOI, and a land-cover raster coded 0-9 (nodata 255) that covers the world
    only west of ``LABELLED_EAST`` and has a nodata block."""
    aoi = tmp_path / "l_aoi.gpkg"
    gpd.GeoDataFrame(geometry=[L_AOI], crs="EPSG:32649").to_file(aoi)
    classes = class_scheme("simplified_igbp").lookup_table()[world.read_labels(world.grid)]
    width = (LABELLED_EAST - 645000) // 10
    codes = np.where(classes >= 0, classes, 255).astype(np.uint8)[:, :width].copy()
    left, bottom, right, top = NODATA_BLOCK
    codes[(3210000 - top) // 10:(3210000 - bottom) // 10,
          (left - 645000) // 10:(right - 645000) // 10] = 255
    labels = tmp_path / "partial.tif"
    with rasterio.open(labels, "w", driver="GTiff", width=width, height=codes.shape[0],
                       count=1, dtype="uint8", nodata=255, crs="EPSG:32649",
                       transform=rasterio.Affine(10, 0, 645000, 0, -10, 3210000)) as dst:
        dst.write(codes, 1)
    return {"aoi": aoi, "labels": labels}


def _labelled(path: Path, bounds: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The raster's codes over ``bounds`` and where it has data, read with plain rasterio."""
    left, bottom, right, top = bounds
    with rasterio.open(path) as src:
        t = src.transform
        window = rasterio.windows.Window(round((left - t.c) / t.a), round((top - t.f) / t.e),
                                         round((right - left) / t.a), round((bottom - top) / t.e))
        data = src.read(1, window=window, boundless=True, masked=True)
    return np.asarray(data.data), ~np.ma.getmaskarray(data)


def _expected(rule: str, labels: Path) -> dict[str, dict[str, Any]]:
    """Per tile, computed one patch at a time on the AOI as drawn (UTM, exact shapely): the
    requested window (bounding box of the patches meeting the AOI), the kept patches with their
    labels, and the drop reason of every other patch of the window."""
    out = {}
    step = PATCH * 10
    for name, (left, top) in TILES.items():
        meets = {}
        for row in range(5):
            for col in range(5):
                patch = box(left + col * step, top - (row + 1) * step,
                            left + (col + 1) * step, top - row * step)
                meets[row, col] = (L_AOI.covers(patch) if rule == "within"
                                   else L_AOI.intersection(patch).area > 0)
        chosen = [rc for rc, yes in meets.items() if yes]
        if not chosen:
            continue
        r0, r1 = min(r for r, _ in chosen), max(r for r, _ in chosen) + 1
        c0, c1 = min(c for _, c in chosen), max(c for _, c in chosen) + 1
        kept, why = {}, {}
        for row in range(r0, r1):
            for col in range(c0, c1):
                bounds = (left + col * step, top - (row + 1) * step,
                          left + (col + 1) * step, top - row * step)
                codes, valid = _labelled(labels, bounds)
                counts = np.bincount(codes[valid], minlength=10)
                if not meets[row, col]:
                    why[row, col] = "outside_aoi"
                elif not valid.any():
                    why[row, col] = "no_label_data"
                elif valid.mean() < 0.5:
                    why[row, col] = "sparse_label_data"
                elif counts.max() / valid.sum() < 0.5:
                    why[row, col] = "impure"
                else:
                    kept[row * PATCH, col * PATCH] = int(counts.argmax())
        out[name] = {"bbox": (left + c0 * step, top - r1 * step, left + c1 * step, top - r0 * step),
                     "kept": kept, "why": why}
    return out


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # rasterio's boundless read
@pytest.mark.parametrize("rule", ["intersects", "within"])
def test_only_aoi_patches_with_label_data_are_requested_kept_and_labelled(
    world: SyntheticWorld, partial_labels: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture, rule: str,
) -> None:
    out = tmp_path / rule
    with SHServer(world, page_size=50) as server:
        command = _command(server, partial_labels, out, "--set", f"label_codes={IDENTITY_CODES}")
        if rule == "within":
            command += ["--set", "aoi_patches=within"]
        assert main([*command, "--dry-run"]) == 0, capsys.readouterr().err
        dry_run = capsys.readouterr().out
        assert main(command) == 0, capsys.readouterr().err
        process = [e["body"] for e in server.log if e["path"].endswith("/api/v1/process")]
    expected = _expected(rule, partial_labels["labels"])
    assert "32649_646000_3208000" not in expected  # the south-east tile misses the AOI
    # the scenario has every kind of patch the rules tell apart
    reasons = {r for tile in expected.values() for r in tile["why"].values()}
    assert {"outside_aoi", "no_label_data", "sparse_label_data", "impure"} <= reasons
    assert sum(len(tile["kept"]) for tile in expected.values()) >= 8

    built = Store(out)
    samples = built.samples
    shard_of = samples["id"].str.rsplit("_", n=2).str[0]
    tile_of = shard_of.str.rsplit("_", n=1).str[0]
    shards = sorted(set(shard_of))
    assert sorted(set(tile_of)) == sorted(expected)  # every tile meeting the AOI has samples

    # the kept samples are exactly the expected ones, each labelled with the majority class of
    # its labelled pixels, and touching (or lying within) the AOI as drawn
    for shard in shards:
        tile = shard.rsplit("_", 1)[0]
        mine = samples[shard_of == shard]
        got = {(int(r), int(c)): int(label) for r, c, label in zip(
            mine["id"].str.split("_").str[-2], mine["id"].str.split("_").str[-1],
            mine["label"], strict=True)}
        assert got == expected[tile]["kept"], shard
    for i in range(len(samples)):
        footprint = box(*built.grid(i).bounds)
        assert L_AOI.intersection(footprint).area > 0
        if rule == "within":
            assert L_AOI.covers(footprint)
        codes, valid = _labelled(partial_labels["labels"], built.grid(i).bounds)
        assert valid.mean() >= 0.5
        assert samples["label"].iat[i] == np.bincount(codes[valid], minlength=10).argmax()

    # the report counts every patch of the requested windows that was not kept, with its reason
    report = json.loads((out / "build_report.json").read_text())
    want = {"nodata": 0, "outside_aoi": 0, "no_label_data": 0, "sparse_label_data": 0,
            "impure": 0}
    for shard in shards:
        for reason in expected[shard.rsplit("_", 1)[0]]["why"].values():
            want[reason] += 1
    assert report["dropped"] == want

    # the service was asked for the windows only: per shard one L2A, one S1 and one L1C request
    # over the bounding box of its tile's AOI patches, at 10 m; nothing for the other tile
    asked: dict[tuple[str, tuple[float, ...]], int] = {}
    for body in process:
        bbox = tuple(round(v, 6) for v in body["input"]["bounds"]["bbox"])
        (data,) = body["input"]["data"]
        key = (data["type"], bbox)
        asked[key] = asked.get(key, 0) + 1
        width = round((bbox[2] - bbox[0]) / 10)
        assert (body["output"]["width"], body["output"]["height"]) == (
            width, round((bbox[3] - bbox[1]) / 10))
    per_tile: dict[str, int] = {}
    for shard in shards:
        per_tile[shard.rsplit("_", 1)[0]] = per_tile.get(shard.rsplit("_", 1)[0], 0) + 1
    assert asked == {(collection.value, tuple(float(v) for v in expected[tile]["bbox"])): count
                     for tile, count in per_tile.items() for collection in Collection}
    candidates = sum(
        len(expected[tile]["kept"])
        + sum(reason != "outside_aoi" for reason in expected[tile]["why"].values())
        for tile in (shard.rsplit("_", 1)[0] for shard in shards))
    assert f"{len(shards)} shards" in dry_run
    assert f"for {candidates} patches meeting the AOI ({rule})" in dry_run
    # which makes every request hold kept samples
    for (_, bbox), _count in asked.items():
        assert any(box(*bbox).covers(box(*built.grid(i).bounds)) for i in range(len(samples)))

    # pixels and cloud masks are those of the window: S2 exactly, s2cloudless on the window
    s2, clouds = built.array("s2"), built.array("cloud_mask")
    found = {a.id: a for c in Collection
             for a in world.search(c, world.grid.footprint(),
                                   dt.datetime(2018, 6, 25, tzinfo=dt.UTC),
                                   dt.datetime(2018, 7, 15, tzinfo=dt.UTC))}
    for i in range(0, len(samples), 7):
        grid = built.grid(i)
        l2a, l1c, _ = (found[x] for x in samples["source_ids"].iat[i])
        expected_s2 = world.read(l2a, grid, S2_L2A_BANDS).astype(np.float64)
        np.testing.assert_array_equal(s2[i], np.round(expected_s2 * 10000))
        left, bottom, right, top = expected[tile_of.iat[i]]["bbox"]
        window = Grid.from_bounds(grid.crs, left, top, round((right - left) / 10),
                                  round((top - bottom) / 10), 10.0)
        mask = mask_acquisition(AsServed(world), l1c, window, CloudMaskConfig())
        row, col = round((top - grid.bounds[3]) / 10), round((grid.bounds[0] - left) / 10)
        np.testing.assert_array_equal(clouds[i, 0], mask[row:row + PATCH, col:col + PATCH])


def test_an_aoi_smaller_than_a_patch_within_it_is_one_message(
    world: SyntheticWorld, inputs: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    small = tmp_path / "small.geojson"
    gpd.GeoDataFrame(geometry=[box(645210, 3208210, 645390, 3208390)],
                     crs="EPSG:32649").to_file(small)
    with SHServer(world, page_size=50) as server:
        command = _command(server, {**inputs, "aoi": small}, tmp_path / "none", "--set",
                           "aoi_patches=within")
        assert main(command) == 2
        assert not server.paths("/api/v1/catalog")  # refused before searching
    err = capsys.readouterr().err
    assert err.startswith("error:") and "lies within the AOI" in err
