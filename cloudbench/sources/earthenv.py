"""The EarthEnv cloud-frequency climatology (Wilson & Jetz 2016), read one pixel at a time.

One folder holds ``MODCF_monthlymean_01.tif`` … ``_12.tif`` (the mean cloud frequency of each
month) and ``MODCF_interannualSD.tif`` (its inter-annual standard deviation), as distributed at
https://www.earthenv.org/cloud: global GeoTIFFs in EPSG:4326 at 30 arc-seconds (43200 x 21600
pixels), uint16, value = percent x 100, nodata 65535. A lookup opens each file once and reads a
one-pixel window per point: a global raster is never loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from cloudbench.errors import CloudbenchError

NODATA = 65535
SCALE = 100.0
"""Stored value / SCALE = percent."""
URL = "https://www.earthenv.org/cloud"
SD_FILE = "MODCF_interannualSD.tif"


def mean_file(month: int) -> str:
    return f"MODCF_monthlymean_{month:02d}.tif"


class Climatology:
    """The EarthEnv files in ``folder`` (checked when a month is first looked up)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CloudbenchError(
                f"no EarthEnv climatology folder at {self.folder} (it should hold "
                f"{mean_file(1)} … {mean_file(12)} and {SD_FILE}, from {URL})"
            )

    def _path(self, name: str) -> Path:
        path = self.folder / name
        if not path.is_file():
            raise CloudbenchError(f"{path} is missing: the EarthEnv cloud climatology "
                                  f"({URL}) needs {name} in {self.folder}")
        return path

    def lookup(self, lon: float, lat: float, month: int) -> tuple[float, float] | None:
        """(monthly mean %, inter-annual SD %) at the pixel holding (lon, lat); None at nodata
        or outside the rasters."""
        return self.lookup_many([(lon, lat)], month)[0]

    def lookup_many(
        self, points: Sequence[tuple[float, float]], month: int
    ) -> list[tuple[float, float] | None]:
        """``lookup`` for many (lon, lat) points, each file opened once."""
        if not 1 <= int(month) <= 12:
            raise CloudbenchError(f"month {month} is not 1..12")
        means = _read_points(self._path(mean_file(int(month))), points)
        sds = _read_points(self._path(SD_FILE), points)
        return [None if m is None or s is None else (m, s)
                for m, s in zip(means, sds, strict=True)]


def _read_points(path: Path, points: Sequence[tuple[float, float]]) -> list[float | None]:
    try:
        with rasterio.open(path) as src:
            if src.crs is None or CRS.from_user_input(src.crs) != CRS.from_epsg(4326):
                raise CloudbenchError(f"{path} is in {src.crs}, EarthEnv files are EPSG:4326")
            nodata = NODATA if src.nodata is None else src.nodata
            out: list[float | None] = []
            for lon, lat in points:
                row, col = src.index(lon, lat)
                if not (0 <= row < src.height and 0 <= col < src.width):
                    out.append(None)
                    continue
                value = src.read(1, window=Window(col, row, 1, 1))[0, 0]
                out.append(None if value == nodata else float(value) / SCALE)
            return out
    except rasterio.errors.RasterioIOError as err:
        raise CloudbenchError(f"{path} is not a readable GeoTIFF: {err}") from None


def cover_range(mean: float, sd: float) -> tuple[float, float]:
    """The accepted whole-tile cloud cover, [mean - sd, mean + sd] clipped to [0, 100]."""
    return max(0.0, mean - sd), min(100.0, mean + sd)


Field = float | Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""A constant percentage, or a function of (lon, lat, month) arrays -> percent (NaN: nodata)."""


def write_climatology(
    folder: str | Path,
    *,
    mean: Field = 60.0,
    sd: Field = 10.0,
    bounds: tuple[float, float, float, float] = (-180.0, -90.0, 180.0, 90.0),
    resolution: float = 0.25,
) -> Path:
    """Write the 13 EarthEnv files (a test fixture; nothing in them is real data).

    Same format as the real ones (EPSG:4326, uint16 percent x 100, nodata 65535), tiled and
    DEFLATE-compressed; ``resolution`` in degrees (the real files have 1/120). ``mean`` and
    ``sd`` are constants or functions of (lon, lat, month) at pixel centres (the SD file is
    given month 0).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    west, south, east, north = bounds
    width, height = round((east - west) / resolution), round((north - south) / resolution)
    transform = Affine(resolution, 0.0, west, 0.0, -resolution, north)
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    lon = west + (cols + 0.5) * resolution
    lat = north - (rows + 0.5) * resolution
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1,
               "dtype": "uint16", "crs": "EPSG:4326", "transform": transform,
               "nodata": NODATA, "tiled": True, "blockxsize": 256, "blockysize": 256,
               "compress": "deflate"}

    def values(field: Field, month: int) -> np.ndarray:
        percent = (np.full(lon.shape, float(field)) if not callable(field)
                   else np.asarray(field(lon, lat, month), dtype=np.float64))
        stored = np.round(np.clip(percent, 0, 100) * SCALE)
        return np.where(np.isnan(percent), NODATA, stored).astype(np.uint16)

    for name, field, month in [*((mean_file(m), mean, m) for m in range(1, 13)),
                               (SD_FILE, sd, 0)]:
        with rasterio.open(folder / name, "w", **profile) as dst:
            dst.write(values(field, month), 1)
    return folder
