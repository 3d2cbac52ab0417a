"""SentinelHubSource against a loopback fake of the Sentinel Hub API (tests/shserver.py).

The real sentinelhub-py client talks HTTP to a local server that serves a SyntheticWorld, so
search paging, request bodies, GeoTIFF decoding, retries and error messages are all exercised
end to end; nothing of ours is mocked.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import Collection, Grid, Source
from cloudbench.sources.sentinelhub import SentinelHubSettings, SentinelHubSource, sh_config
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
        same(got, world.read(world.search(collection, None, START, END)[3], grid, bands))
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


# ---------------------------------------------------------------------- faults


def test_429_and_500_are_retried(server: SHServer, world: SyntheticWorld) -> None:
    source = make_source(server)
    acq = source.search(Collection.S2_L2A, world.grid.footprint(), START, END)[1]
    server.fail_429, server.fail_500, server.retry_after_ms = 2, 2, 100
    grid = window(world)
    with pytest.warns(Warning, match="rate limit"):
        got = source.read(acq, grid, ["B03"])
    same(got, world.read(world.search(Collection.S2_L2A, None, START, END)[1], grid, ["B03"]))
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
