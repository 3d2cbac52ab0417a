"""The EarthEnv cloud-frequency reader: values, pixel edges, nodata, one-pixel windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from cloudbench.errors import CloudbenchError
from cloudbench.sources.earthenv import (
    NODATA,
    SD_FILE,
    Climatology,
    cover_range,
    mean_file,
    write_climatology,
)


def _mean(lon: np.ndarray, lat: np.ndarray, month: int) -> np.ndarray:
    """Percent encoding the half-degree pixel and the month; NaN (nodata) south of 60 S."""
    column, row = np.floor(2 * (lon + 180)), np.floor(2 * (lat + 90))
    value = column % 40 * 2 + row % 10 / 10 + month / 100
    return np.where(lat < -60, np.nan, value)


def _sd(lon: np.ndarray, lat: np.ndarray, month: int) -> np.ndarray:
    """Percent varying with latitude (the writer calls it with month 0)."""
    return np.abs(lat) / 10 + month


def _gap(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Nodata in every file over a box in the Pacific."""
    return (lon > -150) & (lon < -140) & (lat > 0) & (lat < 10)


def at(field: Any, lon: float, lat: float, month: int) -> float:
    """The field's value as stored (percent x 100 rounded half to even) at a pixel centre."""
    return float(np.round(field(np.array(lon), np.array(lat), month) * 100)) / 100


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Half-degree pixels from 30 W to 60 E, 70 S to 80 N."""
    return write_climatology(tmp_path_factory.mktemp("earthenv"), bounds=(-30, -70, 60, 80),
                             resolution=0.5, mean=_mean, sd=_sd)


def test_values_at_pixel_centres_and_month_selection(folder: Path) -> None:
    clim = Climatology(folder)
    for lon, lat, month in [(15.25, 48.25, 6), (-9.75, 52.75, 1), (27.25, 62.75, 12)]:
        assert clim.lookup(lon, lat, month) == (at(_mean, lon, lat, month), at(_sd, lon, lat, 0))
    months = [clim.lookup(15.25, 48.25, m) for m in range(1, 13)]
    assert [m[0] for m in months if m] == [at(_mean, 15.25, 48.25, m) for m in range(1, 13)]
    assert len({m[0] for m in months if m}) == 12
    assert clim.lookup_many([(15.25, 48.25), (-9.75, 52.75)], 6) == [
        clim.lookup(15.25, 48.25, 6), clim.lookup(-9.75, 52.75, 6),
    ]


def test_the_pixel_holding_a_point_near_or_on_an_edge(folder: Path) -> None:
    clim = Climatology(folder)
    inside = clim.lookup(15.25, 47.75, 3)  # the pixel [15, 15.5] x [47.5, 48]
    for lon, lat in [(15.0, 48.0), (15.0001, 47.9999), (15.4999, 47.5001), (15.0, 47.5001)]:
        assert clim.lookup(lon, lat, 3) == inside, (lon, lat)
    # on its east and south edges, a point belongs to the next pixel east or south
    assert clim.lookup(15.5, 47.75, 3) == clim.lookup(15.75, 47.75, 3) != inside
    assert clim.lookup(15.25, 47.5, 3) == clim.lookup(15.25, 47.25, 3) != inside
    assert clim.lookup(14.9999, 48.0001, 3) == clim.lookup(14.75, 48.25, 3)


def test_nodata_and_outside_give_none(folder: Path) -> None:
    clim = Climatology(folder)
    assert clim.lookup(10.0, -65.0, 5) is None  # the mean is nodata, the SD is not
    for lon, lat in [(60.0, 0.0), (-30.01, 0.0), (0.0, 80.01), (0.0, -70.0), (190.0, 0.0)]:
        assert clim.lookup(lon, lat, 5) is None, (lon, lat)
    assert clim.lookup_many([(100.0, 0.0), (0.0, 95.0), (1.0, 1.0)], 5)[:2] == [None, None]
    assert clim.lookup(-29.99, 79.99, 5) is not None  # the north-west corner pixel


def test_nodata_where_masks_every_file(tmp_path: Path) -> None:
    write_climatology(tmp_path, resolution=1.0, nodata_where=_gap)
    clim = Climatology(tmp_path)
    assert clim.lookup(-145.5, 5.5, 7) is None
    assert clim.lookup(-135.5, 5.5, 7) == (60.0, 10.0)
    for name in (mean_file(7), SD_FILE):
        with rasterio.open(tmp_path / name) as src:
            assert src.read(1, window=((84, 85), (34, 35)))[0, 0] == NODATA  # 145.5 W, 5.5 N


def test_fill_values_above_10000_are_masked_not_read_as_cloud(tmp_path: Path) -> None:
    """The data description: valid values are 0..10,000 (x 0.01 = percent), values greater
    than 10,000 are fill. Fill that is not the file's nodata tag (65535) is masked too."""
    write_climatology(tmp_path, resolution=1.0, nodata_where=_gap, fill=10001)
    clim = Climatology(tmp_path)
    with rasterio.open(tmp_path / mean_file(7)) as src:
        assert src.nodata == NODATA and src.read(1, window=((84, 85), (34, 35)))[0, 0] == 10001
    assert clim.lookup(-145.5, 5.5, 7) is None  # 10001: fill, not 100.01 %
    assert clim.lookup(-135.5, 5.5, 7) == (60.0, 10.0)
    # each fill value above 10,000, and the valid edges 0 and 10,000, in the mean file only
    path = tmp_path / mean_file(7)
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    stored = {(-100.5, 20.5): 10000, (-99.5, 20.5): 0, (-98.5, 20.5): 10001,
              (-97.5, 20.5): 32767, (-96.5, 20.5): 65534, (-95.5, 20.5): 65535}
    with rasterio.open(path, "w", **profile) as dst:
        for (lon, lat), value in stored.items():
            data[0, int(90 - lat), int(lon + 180)] = value
        dst.write(data)
    found = clim.lookup_many(list(stored), 7)
    assert found == [(100.0, 10.0), (0.0, 10.0), None, None, None, None]
    with pytest.raises(ValueError, match="fill 10000 is a valid value"):
        write_climatology(tmp_path / "bad", fill=10000)


def test_a_wide_coarse_global_fixture(tmp_path: Path) -> None:
    def mean(lon: np.ndarray, lat: np.ndarray, month: int) -> np.ndarray:
        return 50 + lon / 4 + lat / 2 + month  # distinct per pixel, within [0, 100]

    write_climatology(tmp_path, resolution=2.5, mean=mean, sd=7.5)
    with rasterio.open(tmp_path / mean_file(1)) as src:
        assert (src.width, src.height, src.crs, src.nodata) == (144, 72, CRS.from_epsg(4326),
                                                                NODATA)
        assert src.dtypes == ("uint16",) and src.profile["compress"] == "deflate"
        assert src.profile["tiled"] and src.block_shapes == [(256, 256)]
    clim = Climatology(tmp_path)
    centre = {(-179.0, 89.0): (-178.75, 88.75), (179.99, -89.99): (178.75, -88.75),
              (-180.0, 90.0): (-178.75, 88.75), (0.0, 0.0): (1.25, -1.25),
              (-73.9, 40.7): (-73.75, 41.25), (151.2, -33.9): (151.25, -33.75)}
    for (lon, lat), (x, y) in centre.items():
        assert clim.lookup(lon, lat, 11) == (at(mean, x, y, 11), 7.5), (lon, lat)
    assert clim.lookup(180.0, 0.0, 11) is None and clim.lookup(0.0, -90.0, 11) is None


def test_large_uniform_extents_stay_small_on_disk(tmp_path: Path) -> None:
    write_climatology(tmp_path, resolution=0.25)  # 1440 x 720 pixels per file
    raw = 13 * 1440 * 720 * 2
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) < raw / 50


def test_every_read_is_a_one_pixel_window(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    windows: list[Any] = []
    original = rasterio.io.DatasetReader.read

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        windows.append(kwargs.get("window"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    Climatology(folder).lookup_many([(1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (100.0, 0.0)], 7)
    assert len(windows) == 6  # three points inside, mean and SD files; none for the outside one
    assert all(w is not None and (w.width, w.height) == (1, 1) for w in windows)


def test_cover_range_is_clipped() -> None:
    assert cover_range(60.0, 10.0) == (50.0, 70.0)
    assert cover_range(5.0, 8.0) == (0.0, 13.0)
    assert cover_range(95.0, 8.0) == (87.0, 100.0)
    assert cover_range(50.0, 60.0) == (0.0, 100.0)


def test_missing_files_and_bad_months(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(CloudbenchError, match="earthenv.org"):
        Climatology(tmp_path / "nowhere")
    with pytest.raises(CloudbenchError, match=r"MODCF_monthlymean_04.tif is missing.*earthenv"):
        Climatology(tmp_path).lookup(0.0, 0.0, 4)
    (tmp_path / mean_file(4)).symlink_to(folder / mean_file(4))
    with pytest.raises(CloudbenchError, match="MODCF_interannualSD.tif is missing"):
        Climatology(tmp_path).lookup(0.0, 0.0, 4)
    (tmp_path / SD_FILE).symlink_to(folder / SD_FILE)
    assert Climatology(tmp_path).lookup(15.25, 48.25, 4) is not None  # months checked lazily
    for month in (0, 13, 2.5, "6"):
        with pytest.raises(CloudbenchError, match=f"month {month!r} is not 1..12"):
            Climatology(folder).lookup(0.0, 0.0, month)  # type: ignore[arg-type]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / SD_FILE).write_bytes(b"not a tiff")
    (tmp_path / "broken" / mean_file(1)).symlink_to(folder / mean_file(1))
    with pytest.raises(CloudbenchError, match="not a readable GeoTIFF"):
        Climatology(tmp_path / "broken").lookup(0.0, 0.0, 1)


def _set_crs(path: Path, crs: CRS) -> None:
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(path, "w", **{**profile, "crs": crs}) as dst:
        dst.write(data)


def test_the_files_must_be_in_lon_lat(tmp_path: Path) -> None:
    write_climatology(tmp_path, resolution=10.0)
    _set_crs(tmp_path / mean_file(1), CRS.from_epsg(32633))
    with pytest.raises(CloudbenchError, match="EPSG:32633.*EarthEnv files are EPSG:4326"):
        Climatology(tmp_path).lookup(0.0, 0.0, 1)
    # WGS 84 written as WKT without its EPSG code is the same CRS
    _set_crs(tmp_path / mean_file(1), CRS.from_wkt(
        'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
        'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]]'))
    assert Climatology(tmp_path).lookup(0.0, 0.0, 1) == (60.0, 10.0)
