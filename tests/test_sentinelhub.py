"""SentinelHubSource against a loopback fake of the Sentinel Hub API (tests/shserver.py).

The real sentinelhub-py client talks HTTP to a local server that serves a SyntheticWorld, so
search paging, request bodies, GeoTIFF decoding, retries and error messages are all exercised
end to end; nothing of ours is mocked.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from rasterio.io import MemoryFile
from shapely.geometry import box

from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import Acquisition, Collection, Grid, Source
from cloudbench.sources.sentinelhub import (
    SentinelHubSettings,
    SentinelHubSource,
    processing_baseline,
    product_name_fields,
    sh_config,
)
from cloudbench.sources.synthetic import SyntheticWorld
from tests.shserver import CLIENT_SECRET, SHServer

START = dt.datetime(2018, 7, 1, tzinfo=dt.UTC)
END = dt.datetime(2018, 7, 31, 23, 59, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=7, size=192, region_size=48)


pytestmark = pytest.mark.usefixtures("sentinel_hub_env")


@pytest.fixture
def server(world: SyntheticWorld) -> Iterator[SHServer]:
    with SHServer(world, page_size=2) as srv:
        yield srv


def make_source(server: SHServer, prefix: str = "", **kwargs: Any) -> SentinelHubSource:
    settings: dict[str, Any] = dict(
        preset="custom",
        base_url=server.url + prefix,
        token_url=server.url + prefix + "/oauth/token",
        retry_sleep_seconds=0.01,
        timeout_seconds=5.0,
        max_attempts=4,
    )
    settings.update(kwargs)
    return SentinelHubSource(SentinelHubSettings(**settings))


def window(world: SyntheticWorld, res: float = 10.0, dx: float = 0.0) -> Grid:
    """A UTM grid inside the world; ``dx`` shifts it off the world's pixel lattice."""
    left, _, _, top = world.grid.bounds
    return Grid.from_bounds(world.grid.crs, left + 300.0 + dx, top - 200.0, 64, 48, res)


def same(a: np.ndarray, b: np.ndarray, atol: float = 1e-6) -> None:
    assert a.shape == b.shape and a.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, atol=atol, rtol=0, equal_nan=True)


def quantised(reflectance: np.ndarray) -> np.ndarray:
    """Reflectance as a product in digital numbers holds it: rounded to 1e-4."""
    return np.round(reflectance.astype(np.float64) * 10000).astype(np.float32) / np.float32(10000)


# ---------------------------------------------------------------------- settings, credentials


def test_settings_presets_and_validation() -> None:
    cdse = SentinelHubSettings(preset="cdse")
    assert cdse.base_url == "https://sh.dataspace.copernicus.eu"
    assert cdse.token_url.startswith("https://identity.dataspace.copernicus.eu/auth/realms/CDSE")
    assert SentinelHubSettings().base_url == "https://services.sentinel-hub.com"
    with pytest.raises(ValidationError, match="base_url"):
        SentinelHubSettings(preset="custom", token_url="http://x/token")
    with pytest.raises(ValidationError):
        SentinelHubSettings(client_secret="nope")  # type: ignore[call-arg]
    again = SentinelHubSettings.model_validate_json(cdse.model_dump_json())
    assert again == cdse


def test_missing_credentials_name_both_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SH_CLIENT_ID")
    monkeypatch.delenv("SH_CLIENT_SECRET")
    with pytest.raises(CloudbenchError) as err:
        sh_config(SentinelHubSettings())
    message = str(err.value)
    assert "SH_CLIENT_ID" in message and "SH_CLIENT_SECRET" in message
    assert "sentinelhub" in message
    source = SentinelHubSource()  # constructing needs no credentials, using does
    with pytest.raises(CloudbenchError, match="SH_CLIENT_ID"):
        source.search(Collection.S2_L2A, window(SyntheticWorld(size=8)).footprint(), START, END)


def test_wrong_secret_is_a_clear_error(
    server: SHServer, world: SyntheticWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SH_CLIENT_SECRET", "wrong-secret")
    source = make_source(server)
    with pytest.raises(CloudbenchError, match="authentication") as err:
        source.search(Collection.S2_L2A, world.grid.footprint(), START, END)
    assert "wrong-secret" not in str(err.value)


# ---------------------------------------------------------------------- search


@pytest.mark.parametrize("collection", list(Collection))
def test_search_pages_through_everything_sorted(
    server: SHServer, world: SyntheticWorld, collection: Collection
) -> None:
    source = make_source(server)
    assert isinstance(source, Source) and source.synthetic is False
    area = window(world).footprint()
    got = source.search(collection, area, START, END)
    want = world.search(collection, area, START, END)
    assert [a.id for a in got] == [a.id for a in want]
    assert len(got) > 2 * server.page_size  # several pages
    assert [a.datetime for a in got] == sorted(a.datetime for a in got)
    assert all(
        a.datetime == w.datetime and a.collection is collection
        for a, w in zip(got, want, strict=True)
    )
    searches = [e for e in server.log if e["path"].endswith("/catalog/1.0.0/search")]
    assert len(searches) == -(-len(want) // server.page_size)
    assert searches[1]["body"]["next"] == server.page_size
    if collection is Collection.S1_GRD:
        assert {a.properties["orbit_direction"] for a in got} == {"ASCENDING", "DESCENDING"}
        flt = searches[0]["body"]["filter"]
        assert "sar:instrument_mode='IW'" in flt and "s1:polarization='DV'" in flt
    else:
        assert all(a.cloud_cover == w.cloud_cover for a, w in zip(got, want, strict=True))


def test_search_filters_cloud_cover_and_orbit(server: SHServer, world: SyntheticWorld) -> None:
    area = world.grid.footprint()
    source = make_source(server)
    got = source.search(Collection.S2_L2A, area, START, END, max_cloud_cover=30)
    want = world.search(Collection.S2_L2A, area, START, END, max_cloud_cover=30)
    assert [a.id for a in got] == [a.id for a in want]
    assert 0 < len(got) < len(world.search(Collection.S2_L2A, area, START, END))
    asc = make_source(server, orbit_direction="ascending")
    s1 = asc.search(Collection.S1_GRD, area, START, END)
    assert s1 and {a.properties["orbit_direction"] for a in s1} == {"ASCENDING"}
    far = world.grid.footprint().buffer(-1).centroid.buffer(0.001)
    assert source.search(Collection.S1_GRD, far, START, START + dt.timedelta(days=1)) == []


# ---------------------------------------------------------------------- read


@pytest.mark.parametrize("collection", [Collection.S2_L2A, Collection.S2_L1C])
def test_read_s2_equals_world_on_the_grid(
    server: SHServer, world: SyntheticWorld, collection: Collection
) -> None:
    source = make_source(server)
    acq = source.search(collection, world.grid.footprint(), START, END)[3]
    bands = ["B04", "B08", "B11"]
    for grid in (window(world), window(world, res=20.0, dx=5.0)):
        got = source.read(acq, grid, bands)
        want = world.read(world.search(collection, None, START, END)[3], grid, bands)
        same(got, quantised(want))
    # Co-registration: the grid shifted by one pixel reads the shifted pixels.
    grid = window(world)
    shifted = Grid.from_bounds(grid.crs, grid.bounds[0] + 10.0, grid.bounds[3], 64, 48, 10.0)
    a, b = source.read(acq, grid, ["B08"]), source.read(acq, shifted, ["B08"])
    same(a[:, :, 1:], b[:, :, :-1])
    assert not np.allclose(a, b)
    body = server.log[-1]["body"]
    assert body["input"]["bounds"]["properties"]["crs"].endswith("EPSG/0/32649")
    assert body["input"]["bounds"]["bbox"] == list(shifted.bounds)
    assert (body["output"]["width"], body["output"]["height"]) == (64, 48)
    assert body["input"]["data"][0]["processing"] == {"harmonizeValues": True}


def test_read_s1_in_db(server: SHServer, world: SyntheticWorld) -> None:
    source = make_source(server)
    acqs = source.search(Collection.S1_GRD, world.grid.footprint(), START, END)
    wanted = world.search(Collection.S1_GRD, None, START, END)
    grid = window(world)
    for acq, ref in zip(acqs[:2], wanted[:2], strict=True):
        got = source.read(acq, grid, ["VV", "VH"])
        same(got, world.read(ref, grid, ["VV", "VH"]), atol=1e-3)
        assert -40 < float(np.nanmean(got)) < 5  # dB, not linear power
        data = server.log[-1]["body"]["input"]["data"][0]
        assert data["dataFilter"]["orbitDirection"] == acq.properties["orbit_direction"]
        assert data["processing"] == {
            "backCoeff": "GAMMA0_TERRAIN",
            "orthorectify": True,
            "demInstance": "COPERNICUS",
        }


def test_read_with_scl_is_the_read_and_the_scene_classes_of_one_request(
    server: SHServer, world: SyntheticWorld
) -> None:
    source = make_source(server)
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[2]
    truth = world.search(Collection.S2_L2A, None, START, END)[2]
    grid = window(world, res=20.0)
    before = server.process_requests()
    optical, scl = source.read_with_scl(acq, grid, ["B05", "B11"])
    assert server.process_requests() == before + 1
    same(optical, quantised(world.read(truth, grid, ["B05", "B11"])))
    assert scl.dtype == np.uint8 and scl.shape == (grid.height, grid.width)
    np.testing.assert_array_equal(scl, world.scene_classes(truth, grid))
    assert len(np.unique(scl)) > 1
    l1c = source.search(Collection.S2_L1C, world.grid.footprint(), START, END)[2]
    with pytest.raises(CloudbenchError, match=f"{l1c.id}: SCL exists in sentinel-2-l2a "
                                              "products only"):
        source.read_with_scl(l1c, grid, ["B05"])


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.replace("//VERSION=3", "//VERSION=2"), "VERSION=3 only"),
    (lambda s: s.replace('units: ["DN", "DN", "DN"]', 'units: ["DN", "DN"]'),
     "2 units for 3 input bands"),
    (lambda s: s.replace('units: ["DN", "DN", "DN"]', 'units: ["DN", "REFLECTANCE", "DN"]'),
     "unit REFLECTANCE of band SCL"),
    (lambda s: s.replace('"UINT16"', '"UINT12"'), "sampleType UINT12"),
    (lambda s: s.replace("bands: 2,", "bands: 3,"), "returned 2 values; output default "
                                                    "declares 3 bands"),
    (lambda s: s.replace("return [0, 0]", "return [0, none]"), "numbers or NaN"),
    (lambda s: s.replace("return [s.B05, s.SCL]", "return [s.B05, s.B06]"),
     "input bands as s.<band>"),
    (lambda s: s.replace('"SCL"', '"SLC"'), "band SLC does not exist"),
    (lambda s: s.replace("function setup() {", "function setup {"), "SyntaxError"),
    (lambda s: s.replace("  };\n", "  \n"), "SyntaxError"),
], ids=["version", "units count", "unit", "sample type", "bands count", "literal",
        "output band", "input band", "setup signature", "setup braces"])
def test_the_fake_runs_evalscripts_as_strictly_as_the_service(
    edit: Any, message: str
) -> None:
    """The loopback server refuses what the service would fail to run (400 EXECUTION_ERROR), so
    that a malformed evalscript of the client cannot pass the tests."""
    from cloudbench.sources.sentinelhub import evalscript
    from tests.shserver import parse_evalscript

    script = evalscript(Collection.S2_L2A, ["B05", "SCL"])
    assert parse_evalscript(script, Collection.S2_L2A) == (["B05", "SCL"], "DN", "UINT16")
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_evalscript(edit(script), Collection.S2_L2A)


def test_a_grid_without_an_epsg_code_is_refused_before_any_request(
    server: SHServer, world: SyntheticWorld
) -> None:
    from rasterio.crs import CRS

    source = make_source(server)
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[0]
    local = CRS.from_proj4("+proj=tmerc +lon_0=111.3 +k=0.9996 +x_0=500000 +datum=WGS84 "
                           "+units=m")  # a transverse Mercator of its own meridian
    assert local.to_epsg() is None
    before = server.process_requests()
    with pytest.raises(CloudbenchError, match="has no EPSG code; Sentinel Hub needs one"):
        source.read(acq, Grid(local, world.grid.transform, 16, 16), ["B04"])
    assert server.process_requests() == before


def test_read_outside_world_is_nan(server: SHServer, world: SyntheticWorld) -> None:
    source = make_source(server)
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[0]
    left, bottom, right, _ = world.grid.bounds
    grid = Grid.from_bounds(world.grid.crs, right - 160.0, bottom + 80.0, 32, 16, 10.0)
    got = source.read(acq, grid, ["B02"])
    assert np.isnan(got[:, :, 16:]).all() and np.isfinite(got[:, :8, :16]).all()


def test_custom_base_url_is_the_one_used(server: SHServer, world: SyntheticWorld) -> None:
    source = make_source(server, prefix="/custom/deployment")
    assert source.data_collection(Collection.S2_L2A).service_url == source.settings.base_url
    assert source.data_collection(Collection.S1_GRD).service_url == source.settings.base_url
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[0]
    source.read(acq, window(world), ["B02"])
    paths = server.paths()
    assert paths and all(p.startswith("/custom/deployment/") for p in paths)
    assert "/custom/deployment/api/v1/process" in paths
    assert "/custom/deployment/api/v1/catalog/1.0.0/search" in paths


# ---------------------------------------------------------------------- processing baselines

BASELINES = ("02.06", "03.01", "04.00", "05.09")


def test_processing_baseline_from_the_catalog_else_the_id_else_none(
    server: SHServer, world: SyntheticWorld
) -> None:
    when, footprint = START, world.grid.footprint()
    real_id = "S2B_MSIL2A_20220704T101559_N0400_R065_T32TQM_20220704T130523"

    def product(product_id: str, **properties: Any) -> Acquisition:
        return Acquisition(product_id, Collection.S2_L2A, when, footprint, 20.0, properties)

    assert processing_baseline(product("x", processing_baseline="05.09")) == "05.09"
    assert processing_baseline(product(real_id, processing_baseline="05.09")) == "05.09"
    assert processing_baseline(product("x", processing_baseline="4.00")) == "04.00"
    assert processing_baseline(product(real_id)) == "04.00"
    bare = product("S2B_MSIL2A_20220704T101559_R065_T32TQM")
    assert processing_baseline(bare) is None
    # A read does not need it (the service harmonises each tile): a product without one reads.
    truth = world.search(Collection.S2_L2A, None, START, END)[0]
    unnamed = Acquisition("S2B_MSIL2A_20220704T101559_R065_T32TQM", Collection.S2_L2A,
                          truth.datetime, footprint, 20.0, {})
    got = make_source(server).read(unnamed, window(world), ["B02"])
    same(got, quantised(world.read(truth, window(world), ["B02"])))


@pytest.fixture(scope="module")
def baselines_world() -> SyntheticWorld:
    """Four dates, one per processing baseline, cloudy enough for bright values."""
    schedule = [
        {"datetime": f"2018-07-{2 + 7 * k:02d}T03:05:31Z", "cloud_cover": cover,
         "processing_baseline": baseline}
        for k, (cover, baseline) in enumerate(zip((10, 40, 70, 95), BASELINES, strict=True))
    ]
    return SyntheticWorld(seed=11, size=96, region_size=32, s2_schedule=schedule)


@pytest.mark.parametrize("collection", [Collection.S2_L2A, Collection.S2_L1C])
def test_reads_are_harmonised_for_every_processing_baseline(
    baselines_world: SyntheticWorld, collection: Collection
) -> None:
    """Through the real client: the service removes the offset exactly where the product has one
    (harmonizeValues true), and the client never removes it again (a read is the world's
    reflectance rounded to 1e-4 for every baseline)."""
    world = baselines_world
    _, _, right, top = world.grid.bounds
    grid = Grid.from_bounds(world.grid.crs, right - 320.0, top - 100.0, 48, 40, 10.0)
    bands = ["B01", "B04", "B08", "B12"] if collection is Collection.S2_L2A else ["B02", "B10"]
    with SHServer(world) as server:
        source = make_source(server)
        acqs = source.search(collection, world.grid.footprint(), START, END)
        assert [processing_baseline(a) for a in acqs] == list(BASELINES)
        for acq, truth in zip(acqs, world.search(collection, None, START, END), strict=True):
            got = source.read(acq, grid, bands)
            want = world.read(truth, grid, bands).astype(np.float64)
            assert got.dtype == np.float32 and np.isnan(got[:, :, 32:]).all()  # outside: NaN
            np.testing.assert_array_equal(np.round(got * 10000), np.round(want * 10000))
            body = server.log[-1]["body"]
            assert body["input"]["data"][0]["processing"] == {"harmonizeValues": True}
            assert "REFLECTANCE" not in body["evalscript"]
            # The products' own DNs (harmonizeValues false) carry the offset from 04.00 on.
            body["input"]["data"][0]["processing"] = {"harmonizeValues": False}
            status, served = server.process(body)
            assert status == 200 and isinstance(served, bytes)
            with MemoryFile(served) as memfile, memfile.open() as tiff:
                dn = tiff.read()
            assert dn.dtype == np.uint16  # UINT16 output, 0 where there is no data
            offset = 1000 if acq.properties["processing_baseline"] >= "04.00" else 0
            expected = np.nan_to_num(np.round(want * 10000) + offset, nan=0.0)
            np.testing.assert_array_equal(dn, expected)


def test_the_fake_harmonises_unless_told_not_to(
    baselines_world: SyntheticWorld,
) -> None:
    """The fake follows the service: harmonizeValues true (our requests) or absent serves no
    offset."""
    world = baselines_world
    acq = world.search(Collection.S2_L2A, None, START, END)[2]
    assert acq.properties["processing_baseline"] == "04.00"
    grid = window(world)
    with SHServer(world) as server:
        source = make_source(server)
        source.read(acq, grid, ["B04"])
        body = server.log[-1]["body"]
        want = np.round(world.read(acq, grid, ["B04"]).astype(np.float64) * 10000)
        for processing in ({"harmonizeValues": True}, {}):
            body["input"]["data"][0]["processing"] = processing
            with MemoryFile(server.process(body)[1]) as memfile, memfile.open() as tiff:
                np.testing.assert_array_equal(tiff.read(), want)


# ---------------------------------------------------------------------- catalog properties


COVERS = (5.0, 19.99, 20.0, 20.5, 35.0, 50.0, 50.01, 80.0)


def test_search_cloud_cover_range_pages_to_exactly_the_range() -> None:
    schedule = [
        {"datetime": dt.datetime(2018, 7, 1 + 3 * k, 3, 5, 31), "cloud_cover": cover}
        for k, cover in enumerate(COVERS)
    ]
    world = SyntheticWorld(seed=3, size=32, region_size=16, s2_schedule=schedule)
    area = world.grid.footprint()
    cases = [
        (20.0, 50.0, (20.0, 20.5, 35.0, 50.0)),  # edges inclusive
        (20.0, None, (20.0, 20.5, 35.0, 50.0, 50.01, 80.0)),
        (None, 19.99, (5.0, 19.99)),
        (81.0, None, ()),
    ]
    with SHServer(world, page_size=2) as server:
        source = make_source(server)
        for lo, hi, want in cases:
            server.log.clear()
            got = source.search(
                Collection.S2_L2A, area, START, END, min_cloud_cover=lo, max_cloud_cover=hi
            )
            assert tuple(a.cloud_cover for a in got) == want
            local = world.search(
                Collection.S2_L2A, area, START, END, min_cloud_cover=lo, max_cloud_cover=hi
            )
            assert [a.id for a in got] == [a.id for a in local]
            searches = [e["body"] for e in server.log if e["path"].endswith("/search")]
            assert len(searches) == max(1, -(-len(want) // 2))  # every page read
        assert searches[0]["filter"] == "eo:cloud_cover >= 81.0"
        server.log.clear()
        source.search(Collection.S2_L1C, area, START, END, min_cloud_cover=20, max_cloud_cover=50)
        assert server.log[-1]["body"]["filter"] == (
            "eo:cloud_cover >= 20.0 AND eo:cloud_cover <= 50.0"
        )
        s1 = source.search(Collection.S1_GRD, area, START, END, min_cloud_cover=99)
        assert len(s1) == len(world.search(Collection.S1_GRD, area, START, END)) > 0


def test_catalog_shadow_cirrus_tile_and_baseline() -> None:
    schedule = [
        {"datetime": "2018-07-05T03:05:31", "cloud_cover": 42.5, "processing_baseline": "04.00",
         "cloud_shadow_percentage": 3.25, "thin_cirrus_percentage": 0.5},
        {"datetime": "2018-07-15T03:05:31", "cloud_cover": 10},
    ]
    world = SyntheticWorld(seed=3, size=32, region_size=16, s2_schedule=schedule,
                           mgrs_tile="33UUP")
    with SHServer(world) as server:
        source = make_source(server)
        first, second = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)
        twin = source.search(Collection.S2_L1C, world.grid.footprint(), START, END)[0]
    assert first.properties["cloud_shadow_percentage"] == 3.25
    assert first.properties["thin_cirrus_percentage"] == 0.5
    assert isinstance(first.properties["thin_cirrus_percentage"], float)
    assert "cloud_shadow_percentage" not in second.properties
    assert "thin_cirrus_percentage" not in twin.properties  # L2A products only
    assert {a.properties["mgrs_tile"] for a in (first, second, twin)} == {"33UUP"}
    assert [processing_baseline(a) for a in (first, second, twin)] == ["04.00", "02.06", "04.00"]


def test_tile_and_baseline_fall_back_to_mgrs_fields_and_the_product_id() -> None:
    real_id = "S2B_MSIL2A_20220704T101559_N0400_R065_T32TQM_20220704T130523"

    def acquisition(product_id: str, **properties: Any) -> Acquisition:
        feature = {
            "id": product_id,
            "geometry": box(10.0, 45.0, 11.0, 46.0).__geo_interface__,
            "properties": {"datetime": "2022-07-04T10:15:59Z", **properties},
        }
        return SentinelHubSource._acquisition(Collection.S2_L2A, feature)

    from_id = acquisition(real_id)
    assert from_id.properties["mgrs_tile"] == "32TQM"
    assert from_id.properties["processing_baseline"] == "04.00"
    fields = {"mgrs:utm_zone": 9, "mgrs:latitude_band": "U", "mgrs:grid_square": "XV"}
    from_fields = acquisition(real_id, **fields, **{"s2:processing_baseline": "05.09"})
    assert from_fields.properties["mgrs_tile"] == "09UXV"
    assert from_fields.properties["processing_baseline"] == "05.09"
    explicit = acquisition(real_id, **fields, **{"s2:mgrs_tile": "33UUP"})
    assert explicit.properties["mgrs_tile"] == "33UUP"
    bare = acquisition("S2B_MSIL2A_20220704T101559")
    assert "mgrs_tile" not in bare.properties and "processing_baseline" not in bare.properties


def test_orbit_platform_and_datatake_come_from_the_product_name() -> None:
    """Sentinel Hub's S2 items have no sat:* properties: the name says what they would."""
    name = "S2B_MSIL2A_20201229T101329_N0214_R022_T33TUK_20201229T115442"
    fields = product_name_fields(name + ".SAFE")
    assert fields == {"platform": "sentinel-2b", "relative_orbit": 22, "mgrs_tile": "33TUK",
                      "processing_baseline": "02.14",
                      "datatake_start": dt.datetime(2020, 12, 29, 10, 13, 29, tzinfo=dt.UTC)}
    assert product_name_fields("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP")["mgrs_tile"] == (
        "33UUP")  # a BigEarthNet v2 product folder: no discriminator
    assert product_name_fields("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP.SAFE")[
        "mgrs_tile"] == "33UUP"  # the tile last, then .SAFE
    assert product_name_fields("SYNTH1234_S2_L2A_20180701T030531_T49RFN") == {
        "mgrs_tile": "49RFN"}
    feature = {"id": name, "geometry": box(12.4, 44.1, 13.6, 45.1).__geo_interface__,
               "properties": {"datetime": "2020-12-29T10:18:19Z", "eo:cloud_cover": 93.93,
                              "platform": "sentinel-2b", "proj:epsg": 32633}}
    acq = SentinelHubSource._acquisition(Collection.S2_L2A, feature)
    assert acq.datetime == dt.datetime(2020, 12, 29, 10, 18, 19, tzinfo=dt.UTC)  # the tile's
    assert acq.properties["datatake_start"] == fields["datatake_start"]  # the name's
    assert acq.properties["relative_orbit"] == 22 and acq.properties["platform"] == "sentinel-2b"
    with_sat = {**feature, "properties": {**feature["properties"], "sat:relative_orbit": 65}}
    assert SentinelHubSource._acquisition(Collection.S2_L2A, with_sat).properties[
        "relative_orbit"] == 65  # the catalog's, where it has one


# ---------------------------------------------------------------------- several worlds


def test_two_worlds_search_the_union_and_read_their_own_pixels(world: SyntheticWorld) -> None:
    _, _, right, _ = world.grid.bounds
    schedule = [{"datetime": "2018-07-03T03:05:31Z", "cloud_cover": 30.0,
                 "processing_baseline": "04.00"}]
    east = SyntheticWorld(seed=8, size=96, region_size=32, left=right, s2_schedule=schedule)
    with SHServer([world, east], page_size=2) as server:
        source = make_source(server)
        both = world.grid.footprint().union(east.grid.footprint())
        got = source.search(Collection.S2_L2A, both, START, END)
        union = world.search(Collection.S2_L2A, both, START, END) + east.search(
            Collection.S2_L2A, both, START, END
        )
        assert [a.id for a in got] == [
            a.id for a in sorted(union, key=lambda a: (a.datetime, a.id))
        ]
        assert got[1].id == east.search(Collection.S2_L2A, None, START, END)[0].id
        inside_east = Grid.from_bounds(east.grid.crs, right + 100.0, 3209800.0, 32, 24, 10.0)
        only_east = source.search(Collection.S2_L2A, inside_east.footprint(), START, END)
        assert [a.id for a in only_east] == [got[1].id]
        # Each read comes from the world holding the acquisition, on any grid: one straddling
        # both worlds reads the east world's pixels east of the seam and nothing west of it.
        seam = Grid.from_bounds(world.grid.crs, right - 160.0, 3209800.0, 32, 24, 10.0)
        for w, acq in ((world, got[0]), (east, got[1])):
            for grid in (seam, window(world) if w is world else inside_east):
                want = w.read(acq, grid, ["B03", "B8A"])
                same(source.read(acq, grid, ["B03", "B8A"]), quantised(want))
        assert np.isnan(source.read(got[1], seam, ["B03"])[:, :, :16]).all()


# ---------------------------------------------------------------------- faults


def test_429_and_500_are_retried(server: SHServer, world: SyntheticWorld) -> None:
    source = make_source(server)
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[1]
    server.fail_429, server.fail_500, server.retry_after_ms = 2, 2, 100
    grid = window(world)
    with pytest.warns(Warning, match="rate limit"):
        got = source.read(acq, grid, ["B03"])
    want = world.read(world.search(Collection.S2_L2A, None, START, END)[1], grid, ["B03"])
    same(got, quantised(want))
    statuses = [e["status"] for e in server.log if e["path"].endswith("/process")]
    assert sorted(statuses) == [200, 429, 429, 500, 500]
    times = [e["time"] for e in server.log if e["path"].endswith("/process")]
    assert max(b - a for a, b in itertools.pairwise(times)) >= 0.09  # Retry-After was honoured


def test_persistent_500_is_a_clear_error(server: SHServer, world: SyntheticWorld) -> None:
    source = make_source(server, max_attempts=2)
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[0]
    server.fail_500 = 99
    with pytest.raises(CloudbenchError) as err:
        source.read(acq, window(world), ["B02"])
    message = str(err.value)
    assert "HTTP 500" in message and "sentinel-2-l2a" in message
    assert str(window(world).bounds[0]) in message and CLIENT_SECRET not in message


def test_truncated_tiff_is_retried_or_reported(server: SHServer, world: SyntheticWorld) -> None:
    source = make_source(server)
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[0]
    server.truncate = 1
    got = source.read(acq, window(world), ["B02"])
    assert np.isfinite(got).all()
    assert [e["fault"] for e in server.log if e["path"].endswith("/process")] == ["truncate", None]
    server.truncate = 99
    with pytest.raises(CloudbenchError, match="unreadable GeoTIFF"):
        source.read(acq, window(world), ["B02"])


def test_timeout_is_retried_or_reported(server: SHServer, world: SyntheticWorld) -> None:
    source = make_source(server, timeout_seconds=0.4, max_attempts=2)
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[0]
    server.slow, server.slow_seconds = 1, 1.0
    got = source.read(acq, window(world), ["B02"])
    assert np.isfinite(got).all()
    server.slow = 2
    with pytest.raises(CloudbenchError, match="Timeout"):
        source.read(acq, window(world), ["B02"])


# ---------------------------------------------------------------------- cache, secrets


def test_cache_folder_reuses_responses(
    server: SHServer, world: SyntheticWorld, tmp_path: Path
) -> None:
    source = make_source(server, cache_folder=tmp_path / "cache")
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[0]
    first = source.read(acq, window(world), ["B02", "B03"])
    n = len(server.paths("/process"))
    second = source.read(acq, window(world), ["B02", "B03"])
    same(first, second)
    assert len(server.paths("/process")) == n == 1
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files and all(CLIENT_SECRET.encode() not in p.read_bytes() for p in files)


def test_secret_never_logged_or_shown(
    server: SHServer, world: SyntheticWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    source = make_source(server, max_attempts=2)
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[0]
    source.read(acq, window(world), ["B02"])
    server.fail_500 = 99
    with pytest.raises(CloudbenchError) as err:
        source.read(acq, window(world), ["B02"])
    assert "requests_oauthlib" in caplog.text or "oauth" in caplog.text.lower()
    texts = [
        caplog.text,
        repr(source),
        repr(source.settings),
        str(err.value),
        repr(source.config),
        str(source.config),
        source.settings.model_dump_json(),
    ]
    for text in texts:
        assert CLIENT_SECRET not in text
    tokens = server.tokens
    assert tokens and not any(t in caplog.text for t in tokens)
    assert all("client_secret" not in (e.get("body") or {}) for e in server.log)
