"""The EarthEnv cloud-frequency climatology (Wilson & Jetz 2016), read one pixel at a time.

One folder holds ``MODCF_monthlymean_01.tif`` … ``_12.tif`` (the mean cloud frequency of each
month) and ``MODCF_interannualSD.tif`` (its inter-annual standard deviation), as distributed at
https://www.earthenv.org/cloud: global GeoTIFFs in EPSG:4326 at 30 arc-seconds (43200 x 21600
pixels), uint16, value = percent x 100, nodata 65535. A lookup opens each file once and reads a
one-pixel window per point: a global raster is never loaded.

Fill values are masked, never read as cloud frequency: the data description
(https://www.earthenv.org/metadata/Cloud_DataDescription.pdf) says valid values range from 0 to
10,000 (x 0.01 = percent) and values greater than 10,000 are used for fill, so a stored value
above ``VALID_MAX`` is nodata, as is the file's own nodata value (65535 in the distributed
files), whatever the file's nodata tag says.

A point belongs to the pixel whose west and north edges are at or before it (rasterio's
``index``, rounding down): a point on a pixel edge takes the pixel east of it and south of it.
Points on the raster's east or south edge, or beyond any edge, are outside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from cloudbench.errors import CloudbenchError

Points = Sequence[tuple[float, float]]
NODATA = 65535
SCALE = 100.0
"""Stored value / SCALE = percent."""
VALID_MAX = 10_000
"""The largest valid stored value (100 %); larger values are fill (the data description)."""
URL = "https://www.earthenv.org/cloud"
SD_FILE = "MODCF_interannualSD.tif"


def mean_file(month: int) -> str:
    """The name of the monthly mean file of ``month`` (1 to 12)."""
    return f"MODCF_monthlymean_{month:02d}.tif"


class Climatology:
    """The EarthEnv files in ``folder``; each file is checked when a lookup first needs it, so a
    folder holding only some months serves those months."""

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

    def lookup_many(self, points: Points, month: int) -> list[tuple[float, float] | None]:
        """``lookup`` for many (lon, lat) points: each file is opened once and read one pixel
        per point.

        Raises:
            CloudbenchError: ``month`` not an integer in 1..12; a file missing, unreadable or
                not in EPSG:4326.
        """
        if month not in range(1, 13):
            raise CloudbenchError(f"month {month!r} is not 1..12")
        means = _read_points(self._path(mean_file(int(month))), points)
        sds = _read_points(self._path(SD_FILE), points)
        return [None if m is None or s is None else (m, s)
                for m, s in zip(means, sds, strict=True)]


def _read_points(path: Path, points: Points) -> list[float | None]:
    """Percent at each point (None: nodata or outside), one 1x1 windowed read per point."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None or src.crs.to_epsg() != 4326:
                raise CloudbenchError(f"{path} is in {src.crs}, EarthEnv files are EPSG:4326 "
                                      "(longitude, latitude on WGS 84)")
            nodata = NODATA if src.nodata is None else src.nodata
            out: list[float | None] = []
            for lon, lat in points:
                row, col = src.index(lon, lat)
                if not (0 <= row < src.height and 0 <= col < src.width):
                    out.append(None)
                    continue
                value = src.read(1, window=Window(col, row, 1, 1))[0, 0]
                fill = value == nodata or not 0 <= value <= VALID_MAX  # documented fill: > 10,000
                out.append(None if fill else float(value) / SCALE)
            return out
    except rasterio.errors.RasterioIOError as err:
        raise CloudbenchError(f"{path} is not a readable GeoTIFF: {err}") from None


def cover_range(mean: float, sd: float) -> tuple[float, float]:
    """The accepted whole-tile cloud cover, [mean - sd, mean + sd] clipped to [0, 100]."""
    return max(0.0, mean - sd), min(100.0, mean + sd)


Field = float | Callable[[np.ndarray, np.ndarray, int], np.ndarray | float]
"""A constant percentage, or a function of (lon, lat, month) -> percent: lon and lat are arrays
of pixel centres in degrees, the result an array of their shape or one number (NaN: nodata)."""
BLOCK = 256
"""Tile side of the written files, and the rows computed at a time."""


def write_climatology(
    folder: str | Path,
    *,
    bounds: tuple[float, float, float, float] = (-180.0, -90.0, 180.0, 90.0),
    resolution: float = 0.25,
    mean: Field = 60.0,
    sd: Field = 10.0,
    nodata_where: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    fill: int = NODATA,
) -> Path:
    """Write the 13 EarthEnv files into ``folder`` (a fixture: nothing in them is real data).

    The format is the real files' (EPSG:4326, uint16 percent x 100, nodata 65535), tiled and
    DEFLATE-compressed, so a large, mostly uniform extent stays small on disk; it is computed
    ``BLOCK`` rows at a time, so memory stays small too.

    Args:
        folder: created if needed.
        bounds: (west, south, east, north) in degrees.
        resolution: pixel size in degrees (the real files have 1/120).
        mean: the monthly mean cloud frequency in percent (see ``Field``); the files for months
            1 to 12 each get ``mean(lon, lat, month)``, clipped to [0, 100].
        sd: the inter-annual SD in percent, likewise (called with month 0).
        nodata_where: a function of (lon, lat) arrays -> bool array: nodata there in every file
            (as over the real files' gaps).
        fill: the stored value there and where a field is NaN: the nodata value (65535) by
            default, or any other fill value (> 10,000, as the data description allows); the
            files' nodata tag stays 65535.

    Returns:
        ``folder``.
    """
    if not VALID_MAX < fill <= 65535:
        raise ValueError(f"fill {fill} is a valid value: fill values are 10001..65535")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    west, south, east, north = bounds
    width, height = round((east - west) / resolution), round((north - south) / resolution)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1,
               "dtype": "uint16", "crs": "EPSG:4326", "nodata": NODATA,
               "transform": Affine(resolution, 0.0, west, 0.0, -resolution, north),
               "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate"}
    lon_1d = west + (np.arange(width) + 0.5) * resolution

    def values(field: Field, month: int, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        percent = np.broadcast_to(field(lon, lat, month) if callable(field) else field,
                                  lon.shape).astype(np.float64)
        missing = np.isnan(percent)
        if nodata_where is not None:
            missing |= np.asarray(nodata_where(lon, lat), dtype=bool)
        stored = np.round(np.clip(np.nan_to_num(percent), 0, 100) * SCALE)
        return np.where(missing, fill, stored).astype(np.uint16)

    for name, field, month in [*((mean_file(m), mean, m) for m in range(1, 13)),
                               (SD_FILE, sd, 0)]:
        with rasterio.open(folder / name, "w", **profile) as dst:
            for top in range(0, height, BLOCK):
                rows = np.arange(top, min(height, top + BLOCK))
                lon, lat = np.meshgrid(lon_1d, north - (rows + 0.5) * resolution)
                window = Window(0, top, width, len(rows))
                dst.write(values(field, month, lon, lat), 1, window=window)
    return folder
