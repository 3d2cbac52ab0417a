"""The EarthEnv cloud-frequency reader: values, pixel edges, nodata, one-pixel windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from cloudbench.errors import CloudbenchError
from cloudbench.sources.earthenv import SD_FILE, Climatology, cover_range, write_climatology


def _mean(lon: np.ndarray, lat: np.ndarray, month: int) -> np.ndarray:
    """Percent encoding the pixel and the month; NaN (nodata) south of 60 S."""
    value = (np.floor(lon + 180) % 10) * 10 + month / 100 + np.floor(lat + 90) % 7 / 10
    return np.where(lat < -60, np.nan, value)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_climatology(tmp_path_factory.mktemp("earthenv"), mean=_mean, sd=12.34,
                             resolution=0.5)


def test_values_at_pixel_centres_and_month_selection(folder: Path) -> None:
    clim = Climatology(folder)
    for lon, lat, month in [(15.25, 48.25, 6), (-9.75, 52.75, 1), (27.25, 62.75, 12)]:
        expected = round(float(_mean(np.array(lon), np.array(lat), month)), 2)
        assert clim.lookup(lon, lat, month) == (expected, 12.34)


def test_a_point_on_a_pixel_edge_belongs_to_the_pixel_east_and_south_of_it(folder: Path) -> None:
    clim = Climatology(folder)
    # 15.0 E, 48.0 N is the upper-left corner of the pixel [15, 15.5] x [47.5, 48]
    assert clim.lookup(15.0, 48.0, 3) == clim.lookup(15.25, 47.75, 3)
    assert clim.lookup(14.9999, 48.0001, 3) == clim.lookup(14.75, 48.25, 3)


def test_nodata_and_outside_give_none(folder: Path) -> None:
    clim = Climatology(folder)
    assert clim.lookup(10.0, -70.0, 5) is None
    assert clim.lookup_many([(190.0, 0.0), (0.0, 95.0), (1.0, 1.0)], 5)[:2] == [None, None]


def test_every_read_is_a_one_pixel_window(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    windows: list[Any] = []
    original = rasterio.io.DatasetReader.read

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        windows.append(kwargs.get("window"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    Climatology(folder).lookup_many([(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)], 7)
    assert len(windows) == 6  # three points, mean and SD files
    assert all(w is not None and (w.width, w.height) == (1, 1) for w in windows)


def test_cover_range_is_clipped() -> None:
    assert cover_range(60.0, 10.0) == (50.0, 70.0)
    assert cover_range(5.0, 8.0) == (0.0, 13.0)
    assert cover_range(95.0, 8.0) == (87.0, 100.0)


def test_missing_files_and_bad_inputs_give_clear_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(CloudbenchError, match="earthenv.org"):
        Climatology(tmp_path / "nowhere")
    with pytest.raises(CloudbenchError, match="MODCF_monthlymean_04.tif is missing"):
        Climatology(tmp_path).lookup(0.0, 0.0, 4)
    with pytest.raises(CloudbenchError, match="month 13"):
        Climatology(folder).lookup(0.0, 0.0, 13)
    bad = tmp_path / "utm"
    write_climatology(bad, resolution=10.0)
    with rasterio.open(bad / SD_FILE) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(bad / SD_FILE, "w", **{**profile, "crs": "EPSG:32633"}) as dst:
        dst.write(data)
    with pytest.raises(CloudbenchError, match="EPSG:4326"):
        Climatology(bad).lookup(0.0, 0.0, 1)
