"""Catalogs that overlap their items like the real ones: one item per MGRS tile and pass.

The loopback server (tests/shserver.py, ``mgrs=True``) serves each synthetic pass as one item per
Sentinel-2 tile (109.8 km squares overlapping by 9.8 km), named like real products, ``datetime``
the tile's sensing time (minutes after the name's datatake start, seconds apart between tile
rows), without ``s2:*`` / ``sat:*`` properties. The world used here lies 4 km inside the west edge
of tile 49RFN, in the overlap of four tiles (49REN, 49RFN, 49REM, 49RFM), so every place of it is
in four items of each pass.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from cloudbench.builders import aoi as aoi_builder
from cloudbench.cli import main
from cloudbench.config import class_scheme
from cloudbench.errors import CloudbenchError
from cloudbench.pairs import Pair, check_plan, items, pair, sensing_key, sensings
from cloudbench.sources.base import S1_BANDS, S2_L2A_BANDS, Acquisition, Collection, Grid
from cloudbench.sources.sentinelhub import SentinelHubSettings, SentinelHubSource
from cloudbench.sources.synthetic import SyntheticWorld
from cloudbench.store import Store
from tests.shserver import TILE_SIDE, SHServer, mgrs_tile_squares

pytestmark = pytest.mark.usefixtures("sentinel_hub_env")

LEFT, TOP = 604_000.0, 3_201_000.0
"""4 km east of 49RFN's west edge (600 km), 3.2 km inside 49REN's east edge (609.8 km), across
the 49RxN / 49RxM row overlap (3 190 240 to 3 200 040)."""
START = dt.datetime(2018, 7, 1, tzinfo=dt.UTC)
END = dt.datetime(2018, 7, 10, 23, 59, 59, tzinfo=dt.UTC)
NAME = re.compile(r"^S2[AB]_MSIL(1C|2A)_(\d{8}T\d{6})_N(\d{4})_R(\d{3})_T(\d{2}[A-Z]{3})_"
                  r"(\d{8}T\d{6})$")
PATCH = 20


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=11, left=LEFT, top=TOP, size=200, region_size=50)


def _source(server: SHServer) -> SentinelHubSource:
    return SentinelHubSource(SentinelHubSettings(
        preset="custom", base_url=server.url, token_url=f"{server.url}/oauth/token",
        retry_sleep_seconds=0.01, timeout_seconds=5.0))


def _search(source: SentinelHubSource, area: Any, gap_days: float = 3.0
            ) -> tuple[list[Acquisition], ...]:
    gap = dt.timedelta(days=gap_days)
    return (source.search(Collection.S2_L2A, area, START, END),
            source.search(Collection.S2_L1C, area, START, END),
            source.search(Collection.S1_GRD, area, START - gap, END + gap))


def _per_item_pairs(l2a: Sequence[Acquisition], l1c: Sequence[Acquisition],
                    s1: Sequence[Acquisition], max_gap: dt.timedelta, **_: Any) -> list[Pair]:
    """The pairing before sensings: one pair per catalog item (its L1C twin by exact time)."""
    by_time = {a.datetime: a for a in l1c}
    out = []
    for optical in l2a:
        radar = min(s1, key=lambda a: (abs(a.datetime - optical.datetime), a.datetime))
        if optical.datetime in by_time and abs(radar.datetime - optical.datetime) <= max_gap:
            out.append(Pair(optical, by_time[optical.datetime], radar))
    return out


# ------------------------------------------------------------------------- the catalog


def test_the_catalog_serves_one_item_per_tile_and_pass_like_the_real_one(
    world: SyntheticWorld,
) -> None:
    with SHServer(world, mgrs=True, page_size=3) as server:
        status, body = server.catalog({"collections": ["sentinel-2-l2a"],
                                       "datetime": "2018-07-01T00:00:00Z/2018-07-01T23:59:59Z",
                                       "limit": 100})
        found = _search(_source(server), world.grid.footprint())[0]
    assert status == 200
    features = body["features"]
    assert len(features) == 3  # a page (page_size 3) of the pass's 4 tiles
    for feature in features:  # no s2:* nor sat:* properties, as Sentinel Hub's S2 items
        assert not [k for k in feature["properties"] if k.startswith(("s2:", "sat:"))]
        assert {"datetime", "eo:cloud_cover", "proj:epsg", "proj:bbox"} <= set(
            feature["properties"])
    (pass_time,) = {a.datetime for a in world.search(Collection.S2_L2A, None, START,
                                                     START + dt.timedelta(days=1))}
    first = [a for a in found if a.datetime.date() == START.date()]
    assert sorted(a.properties["mgrs_tile"] for a in first) == ["49REM", "49REN", "49RFM",
                                                                  "49RFN"]
    for acq in first:
        match = NAME.match(acq.id)
        assert match is not None, acq.id
        # the name carries the datatake start; datetime is the tile's sensing time, later
        assert match.group(2) == f"{pass_time:%Y%m%dT%H%M%S}"
        northern = acq.properties["mgrs_tile"].endswith("N")
        delay = dt.timedelta(minutes=4, seconds=50 + (0 if northern else 15))
        assert acq.datetime == pass_time + delay
        assert acq.properties["relative_orbit"] == int(match.group(4)) == 22
        assert acq.properties["platform"] == "sentinel-2a"
        assert acq.properties["processing_baseline"] == "02.06"
        left, bottom, right, top = acq.properties["proj:bbox"]
        assert right - left == top - bottom == TILE_SIDE  # 109.8 km squares
    bboxes = {a.properties["mgrs_tile"]: a.properties["proj:bbox"] for a in first}
    assert bboxes["49REN"][2] - bboxes["49RFN"][0] == 9_800  # neighbours overlap by 9.8 km
    assert bboxes["49REN"][1] - bboxes["49REM"][3] == -9_800
    # an item's geometry is the part of its tile with data: the northern tiles hold the whole
    # world, the southern ones its part south of their top edge (3 200 040: 1.04 of 2 km)
    whole = world.grid.footprint().area
    for acq in first:
        share = 1.0 if acq.properties["mgrs_tile"].endswith("N") else 1040 / 2000
        assert acq.footprint.intersection(world.grid.footprint()).area == pytest.approx(
            share * whole, rel=1e-3)


def test_a_pass_is_one_sensing_read_as_one_mosaic(world: SyntheticWorld) -> None:
    covers = {"49REN": 10.0, "49RFN": 20.0, "49REM": 50.0, "49RFM": 70.0}
    with SHServer(world, mgrs=True, page_size=50,
                  tile_cloud_cover=lambda acq, tile: covers[tile]) as server:
        source = _source(server)
        l2a, l1c, s1 = _search(source, world.grid.footprint())
        assert len(l2a) == 8  # 2 passes x 4 tiles
        passes = sensings(l2a)
        assert [len(items(s)) for s in passes] == [4, 4]
        first = passes[0]
        assert first.datetime == min(a.datetime for a in l2a if a.datetime.day == 1)
        assert sorted(first.properties["mgrs_tiles"]) == sorted(covers)
        assert first.cloud_cover == 70.0  # without an area: the largest
        # with an area: weighted by each tile's footprint within it
        overlap = Grid.from_bounds(world.grid.crs, LEFT, 3_200_000, 200, 50, 10.0).footprint()
        everywhere = sensings(l2a, area=overlap)[0]  # inside all four tiles: equal weights
        assert everywhere.cloud_cover == pytest.approx(np.mean(list(covers.values())))
        north = Grid.from_bounds(world.grid.crs, LEFT, TOP, 200, 50, 10.0).footprint()
        assert sensings(l2a, area=north)[0].cloud_cover == pytest.approx(15.0)
        found = pair(l2a, l1c, s1, dt.timedelta(days=3))
        assert len(found) == 2 and len({sensing_key(p.s2_l2a) for p in found}) == 2
        assert items(found[0].s2_l1c) == tuple(i.replace("MSIL2A", "MSIL1C")
                                               for i in items(found[0].s2_l2a))
        # the sensing reads exactly the world's pass (one +-5 minute mosaic of its tiles)
        grid = Grid.from_bounds(world.grid.crs, LEFT + 300, TOP - 200, 64, 48, 10.0)
        before = server.process_requests()
        got = source.read(found[0].s2_l2a, grid, ["B04", "B08"])
        assert server.process_requests() == before + 1
        want = world.read(server.world_acquisition(found[0].s2_l2a.id), grid, ["B04", "B08"])
        np.testing.assert_array_equal(got, np.round(want.astype(np.float64) * 10000
                                                    ).astype(np.float32) / np.float32(10000))


def test_a_reprocessed_pass_keeps_the_newest_baseline_and_reads_harmonised(
    world: SyntheticWorld,
) -> None:
    (original,) = world.search(Collection.S2_L2A, None, START, START + dt.timedelta(days=1))
    with SHServer(world, mgrs=True, page_size=50,
                  reprocessings={original.datetime: "05.00"}) as server:
        source = _source(server)
        l2a = _search(source, world.grid.footprint())[0]
        assert len(l2a) == 12  # the first pass twice (02.06 and 05.00), the second once
        first = sensings(l2a)[0]
        assert len(items(first)) == 4 and all("_N0500_" in i for i in items(first))
        assert first.properties["processing_baseline"] == "05.00"
        grid = Grid.from_bounds(world.grid.crs, LEFT + 500, TOP - 500, 40, 40, 10.0)
        got = source.read(first, grid, ["B02", "B11"])  # harmonised by the service
        want = world.read(original, grid, ["B02", "B11"]).astype(np.float64)
        np.testing.assert_array_equal(np.round(got.astype(np.float64) * 10000),
                                      np.round(want * 10000))


def test_which_items_are_one_pass() -> None:
    t = dt.datetime(2018, 7, 1, 3, 10, 21, tzinfo=dt.UTC)

    def item(name: str, when: dt.datetime, tile: str = "49RFN", baseline: str = "02.06",
             orbit: int = 22, unit: str = "a") -> Acquisition:
        return Acquisition(name, Collection.S2_L2A, when, box(0, 0, 1, 1), 5.0,
                           {"mgrs_tile": tile, "processing_baseline": baseline,
                            "relative_orbit": orbit, "platform": f"Sentinel-2{unit.upper()}"})

    chained = [item("a", t), item("b", t + dt.timedelta(minutes=20), "49REN"),
               item("c", t + dt.timedelta(minutes=40), "49RFM")]
    assert [items(s) for s in sensings(chained)] == [("a", "b", "c")]  # chained within 30 min
    apart = [item("a", t), item("b", t + dt.timedelta(minutes=100), "49REN")]  # next orbit
    assert [items(s) for s in sensings(apart)] == [("a",), ("b",)]
    others = [item("a", t), item("b", t, "49REN", orbit=65), item("c", t, "49REM", unit="b")]
    assert len(sensings(others)) == 3  # another relative orbit, another platform
    # a tile in two baselines: the newest; two products of one baseline (datastrips): both
    reprocessed = [item("a", t), item("a2", t, baseline="05.00"), item("b", t, "49REN", "05.00")]
    assert items(sensings(reprocessed)[0]) == ("a2", "b")
    strips = [item("a", t), item("a2", t + dt.timedelta(seconds=3)), item("b", t, "49REN")]
    assert items(sensings(strips)[0]) == ("a", "b", "a2")
    # tiles of baselines before and from 04.00: one sensing (the service harmonises per tile)
    mixed = [item("a", t), item("b", t, "49REN", "05.00")]
    (both,) = sensings(mixed)
    assert items(both) == ("a", "b")
    assert both.properties["processing_baselines"] == ("02.06", "05.00")
    assert both.properties["processing_baseline"] == "05.00"
    (single,) = sensings([chained[0]])
    assert single is chained[0]  # one item: itself, unchanged


def test_a_pass_of_tiles_of_two_baselines_reads_on_one_scale() -> None:
    """A pass whose west tile was reprocessed (05.00: offset) and east tile not (02.06), read
    across the tile edge: the service removes each tile's own offset, so the read is the world
    on one scale; the products' own DNs would be on two (the overlap, where the newer baseline
    mosaics, +1000; the east-only part not)."""
    # 1 km west and 1 km east of 49REN's east edge (609.8 km), inside one tile row
    world = SyntheticWorld(seed=5, left=608_800.0, top=3_250_000.0, size=200, region_size=50)
    squares = sorted(mgrs_tile_squares(world.grid), key=lambda s: s[1][0])
    assert [s[1][2] for s in squares[:1]] == [609_800.0] and len(squares) == 2
    west = squares[0][0]
    with SHServer(world, mgrs=True, page_size=50,
                  tile_baselines=lambda _, tile: "05.00" if tile == west else "02.06") as server:
        source = _source(server)
        first = sensings(source.search(Collection.S2_L2A, world.grid.footprint(), START, END))[0]
        assert len(items(first)) == 2
        assert first.properties["processing_baselines"] == ("02.06", "05.00")
        bands = ["B02", "B11"]
        got = source.read(first, world.grid, bands)
        want = np.round(world.read(server.world_acquisition(first.id), world.grid, bands
                                   ).astype(np.float64) * 10000)
        np.testing.assert_array_equal(np.round(got.astype(np.float64) * 10000), want)
        body = server.log[-1]["body"]
        assert body["input"]["data"][0]["processing"] == {"harmonizeValues": True}
        body["input"]["data"][0]["processing"] = {"harmonizeValues": False}
        status, served = server.process(body)
        assert status == 200 and isinstance(served, bytes)
        with rasterio.MemoryFile(served) as memfile, memfile.open() as tiff:
            offset = tiff.read().astype(np.float64) - want
        np.testing.assert_array_equal(offset[:, :, :100], 1000)  # x < 609.8 km: the 05.00 tile
        np.testing.assert_array_equal(offset[:, :, 100:], 0)  # the 02.06 tile alone


# ------------------------------------------------------------------------- the AOI build


@pytest.fixture
def inputs(world: SyntheticWorld, tmp_path: Path) -> dict[str, Path]:
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box(LEFT + 100, TOP - 1900, LEFT + 1900, TOP - 100)],
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


def test_an_aoi_4_km_inside_a_tile_edge_builds_each_pass_once(
    world: SyntheticWorld, inputs: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "edge"
    with SHServer(world, mgrs=True, page_size=4) as server:
        assert main(_command(server, inputs, out)) == 0, capsys.readouterr().err
        requests = server.process_requests()
        served = {i: server.world_acquisition(i)
                  for i in {x for ids in Store(out).samples["source_ids"] for x in ids[:2]}}
    built = Store(out)
    samples = built.samples
    report = json.loads((out / "build_report.json").read_text())
    # 4 UTM tiles of 1 km x 2 passes, each once: 8 shards, three reads each, 25 patches each
    assert requests == 3 * 8
    assert len(samples) + sum(report["dropped"].values()) == 4 * 25 * 2
    assert samples["id"].is_unique
    footprints = [(c, tuple(t), s) for c, t, s in zip(samples["crs"], samples["transform"],
                                                       samples["s2_time"], strict=True)]
    assert len(set(footprints)) == len(footprints)  # no footprint twice in one sensing
    assert samples["s2_time"].nunique() == 2
    for i in range(0, len(samples), 7):  # exact pixels: the world's pass on the sample grid
        grid = built.grid(i)
        l2a_id, l1c_id, s1_id = samples["source_ids"].iat[i]
        assert NAME.match(l2a_id) and NAME.match(l1c_id)
        want = world.read(served[l2a_id], grid, S2_L2A_BANDS).astype(np.float64)
        np.testing.assert_array_equal(built.array("s2")[i], np.round(want * 10000))
        radar = next(a for a in world.search(Collection.S1_GRD, None, START - dt.timedelta(
            days=5), END + dt.timedelta(days=5)) if a.id == s1_id)
        np.testing.assert_allclose(built.array("s1")[i], world.read(radar, grid, S1_BANDS),
                                   atol=1e-3)


def test_a_plan_repeating_a_footprint_and_sensing_is_refused_before_any_download(
    world: SyntheticWorld, inputs: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    """Pairing item by item (as before sensings) plans each tile's pixels four times per pass;
    the plan check stops the build with exit status 2 before one process request."""
    monkeypatch.setattr(aoi_builder, "pair", _per_item_pairs)
    with SHServer(world, mgrs=True, page_size=50) as server:
        assert main(_command(server, inputs, tmp_path / "repeated")) == 2
        assert server.process_requests() == 0
    err = capsys.readouterr().err
    assert "repeats samples" in err and "before any download" in err
    assert not (tmp_path / "repeated" / "dataset.json").exists()


def test_check_plan_names_the_first_repeats(world: SyntheticWorld) -> None:
    grid = Grid.from_bounds(world.grid.crs, LEFT, TOP, 100, 100, 10.0)
    with SHServer(world, mgrs=True, page_size=50) as server:
        l2a, l1c, s1 = _search(_source(server), grid.footprint())
        per_item = _per_item_pairs(l2a, l1c, s1, dt.timedelta(days=3))
        grouped = pair(l2a, l1c, s1, dt.timedelta(days=3), area=grid.footprint())
        assert len(per_item) == 8 and len(grouped) == 2
        # ids from the tile times: two shard ids per pass (rows 15 s apart), each twice
        planned = [(f"t_{p.s2_l2a.datetime:%Y%m%dT%H%M%S}_{p.s2_l2a.properties['mgrs_tile']}",
                    grid, p.s2_l2a) for p in per_item]
        with pytest.raises(CloudbenchError, match="repeats samples") as raised:
            check_plan(planned, patch_size=PATCH)
        message = str(raised.value)
        assert "6 planned shards repeat" in message and "R22 2018-07-01" in message
        with pytest.raises(CloudbenchError, match="shard t_x is planned twice"):
            check_plan([("t_x", grid, grouped[0].s2_l2a), ("t_x", grid, grouped[1].s2_l2a)])
        check_plan([(f"t_{k}", grid, p.s2_l2a) for k, p in enumerate(grouped)],
                   patch_size=PATCH)  # one sensing per pass: nothing repeats
        assert server.process_requests() == 0


def test_the_shipped_hunan_recipe_plans_each_pass_once_on_overlapping_tiles(
    world: SyntheticWorld, inputs: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """The shipped AOI (northern Hunan) holds the 49REN/49RFN/49REM/49RFM overlap the world is
    in: its 2 km meet 2 UTM tiles of 6.4 km, July 2018 has 7 passes, 6 of them with an S1."""
    worlds = SyntheticWorld(seed=11, left=LEFT, top=TOP, size=200, region_size=50,
                            end="2018-07-31")
    with SHServer(worlds, mgrs=True, page_size=50) as server:
        code = main(["build", "hunan-cloud", "--labels", str(inputs["labels"]), "--out",
                     str(tmp_path / "hunan"), "--sh-base-url", server.url, "--sh-token-url",
                     f"{server.url}/oauth/token", "--dry-run"])
        assert server.process_requests() == 0
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "2 of 396 UTM tiles have S2/S1 pairs: 12 shards" in captured.out
