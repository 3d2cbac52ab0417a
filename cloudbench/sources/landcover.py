"""Land-cover label sources: a categorical raster or a vector layer, in any CRS.

Both implement ``read_codes(grid)``: integer land-cover codes (int64, (H, W)) on a cloudbench
``Grid`` **and** a separate validity mask (bool, (H, W)), False where there is no label data
(outside the source, the raster's nodata or mask, no polygon). The mask is never a code, so a
scheme that maps code 0 to a class (Dynamic World's water) cannot mistake no data for that
class. ``read_labels(grid)`` is the ``LabelSource`` protocol's lossy view (int32, 0 where there
is no data) for callers that know 0 is not a class. Both also report the distinct codes they
hold (``codes(area)``) so that ``check_codes`` can refuse a label source whose codes the class
scheme does not map before any pixel is fetched.

``read_classes(source, grid, scheme)`` turns any label source into the class map that
``cloudbench.patches.majority_labels`` labels patches from: class indices, ``UNMAPPED`` (-1)
for codes the scheme does not map and ``NO_LABEL_DATA`` (-2) where there is no label data. Code
0 is no data too when the scheme does not map it (the usual fill of land-cover products that
declare no nodata; also the protocol's "0 means no data" for sources without ``read_codes``,
such as the synthetic world); when the scheme maps 0 it is a class like any other.

* ``RasterLabels(path, band=1)``: a GeoTIFF (or VRT) of integer codes. ``read_labels`` warps it
  onto the grid through a ``WarpedVRT`` with nearest-neighbour resampling (categorical data), so
  GDAL reads only the blocks the grid needs.
* ``VectorLabels(path, column, layer=None)``: polygons with an **integer** class-code column
  (integers, or strings holding integers, e.g. "12"; class names are not accepted: map names to
  codes in the data or use the scheme's codes). ``read_labels`` reads only the features whose
  bounding box meets the grid (the driver's spatial index), reprojects them to the grid CRS and
  burns them with ``rasterio.features.rasterize`` (pixel centres, ``all_touched=False``); where
  polygons overlap the later feature wins.
* ``label_source(path, column=None)``: the right one for a file (.tif/.tiff/.vrt are rasters,
  anything else is read as a vector layer), with one clear ``CloudbenchError`` per bad input.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from cloudbench.config import ClassScheme
from cloudbench.errors import CloudbenchError
from cloudbench.patches import NO_LABEL_DATA, UNMAPPED
from cloudbench.sources.base import Grid, LabelSource

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")
CODE_SAMPLE_PIXELS = 4_000_000
"""``RasterLabels.codes`` reads at most about this many pixels (decimated beyond it)."""

PathLike = str | os.PathLike[str]


def _existing(path: PathLike, what: str) -> Path:
    out = Path(path)
    if not out.is_file():
        raise CloudbenchError(f"{what} {out} does not exist")
    return out


class RasterLabels:
    """A land-cover raster of integer codes (any CRS), warped onto grids on demand."""

    def __init__(self, path: PathLike, band: int = 1) -> None:
        self.path = _existing(path, "land-cover raster")
        self.band = band
        try:
            with rasterio.open(self.path) as src:
                self.crs: CRS | None = src.crs
                self.nodata = src.nodata
                self.count = src.count
                self.dtype = src.dtypes[0]
                self.bounds = tuple(src.bounds)
        except rasterio.errors.RasterioIOError as err:
            raise CloudbenchError(f"cannot read land-cover raster {self.path}: {err}") from err
        if self.crs is None:
            raise CloudbenchError(
                f"land-cover raster {self.path} has no CRS; assign one (gdal_edit.py -a_srs)"
            )
        if not 1 <= band <= self.count:
            raise CloudbenchError(
                f"land-cover raster {self.path} has {self.count} band(s); band {band} asked for"
            )
        if not np.issubdtype(np.dtype(self.dtype), np.integer):
            raise CloudbenchError(
                f"land-cover raster {self.path} holds {self.dtype} values; class codes must be "
                "integers"
            )

    def __repr__(self) -> str:
        return f"RasterLabels({str(self.path)!r}, band={self.band})"

    def read_codes(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """int64 (H, W) codes on ``grid`` and a bool (H, W) mask, False outside the raster and
        where it has no data (its nodata value or mask): the warp's alpha band, so no code value
        is reserved for no data."""
        with rasterio.open(self.path) as src, WarpedVRT(
            src,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.nearest,
            src_nodata=self.nodata,
            add_alpha=True,
        ) as vrt:
            data = vrt.read(self.band)
            valid = vrt.read(vrt.count) > 0
        codes = data.astype(np.int64, copy=False)
        codes[~valid] = 0
        return codes, valid

    def read_labels(self, grid: Grid) -> np.ndarray:
        """int32 (H, W) codes on ``grid``; 0 outside the raster and where it has no data (lossy
        where 0 is a class code: use ``read_codes``)."""
        codes, valid = self.read_codes(grid)
        return np.where(valid, codes, 0).astype(np.int32)

    def codes(self, area: BaseGeometry | None = None) -> set[int]:
        """The distinct codes (0 and nodata left out) inside ``area``'s bounds (EPSG:4326; the
        whole raster by default), read decimated to about ``CODE_SAMPLE_PIXELS`` pixels (the
        overviews where the file has them), so very rare codes can be missed."""
        with rasterio.open(self.path) as src:
            window = Window(0, 0, src.width, src.height)
            if area is not None:
                left, bottom, right, top = transform_bounds(
                    "EPSG:4326", src.crs, *area.bounds, densify_pts=21
                )
                exact = from_bounds(left, bottom, right, top, src.transform)
                col0, row0 = math.floor(exact.col_off), math.floor(exact.row_off)
                window = Window(col0, row0,
                                math.ceil(exact.col_off + exact.width) - col0,
                                math.ceil(exact.row_off + exact.height) - row0)
                try:
                    window = window.intersection(Window(0, 0, src.width, src.height))
                except rasterio.errors.WindowError:
                    return set()
            width, height = int(window.width), int(window.height)
            if width <= 0 or height <= 0:
                return set()
            scale = max(1.0, (width * height / CODE_SAMPLE_PIXELS) ** 0.5)
            shape = (max(1, int(height / scale)), max(1, int(width / scale)))
            data = src.read(self.band, window=window, out_shape=shape,
                            resampling=Resampling.nearest)
        values = np.unique(data)
        return {int(v) for v in values if v != 0 and (self.nodata is None or v != self.nodata)}


class VectorLabels:
    """A vector layer of polygons with an integer class-code column (any CRS)."""

    def __init__(self, path: PathLike, column: str, layer: str | int | None = None) -> None:
        import pyogrio

        self.path = _existing(path, "land-cover layer")
        self.column = column
        self.layer = layer
        try:
            info = pyogrio.read_info(self.path, layer=layer)
        except Exception as err:  # any driver failure is an unreadable file
            raise CloudbenchError(f"cannot read land-cover layer {self.path}: {err}") from err
        fields = [str(f) for f in info["fields"]]
        if column not in fields:
            raise CloudbenchError(
                f"land-cover layer {self.path} has no column {column!r}; available: "
                f"{', '.join(fields) or 'none'}"
            )
        if info["crs"] is None:
            raise CloudbenchError(f"land-cover layer {self.path} has no CRS")
        self.crs = CRS.from_user_input(info["crs"])
        dtype = str(dict(zip(fields, info["dtypes"], strict=True))[column])
        if not (dtype.startswith(("int", "uint")) or dtype == "object"):
            raise CloudbenchError(
                f"column {column!r} of land-cover layer {self.path} holds {dtype} values; class "
                "codes must be integers"
            )

    def __repr__(self) -> str:
        return f"VectorLabels({str(self.path)!r}, column={self.column!r}, layer={self.layer!r})"

    def _read(self, bounds_crs: CRS | str | None = None,
              bounds: tuple[float, float, float, float] | None = None) -> gpd.GeoDataFrame:
        """Features whose bounding box meets ``bounds`` (in ``bounds_crs``), codes as int64."""
        bbox = None
        if bounds is not None and bounds_crs is not None:
            bbox = transform_bounds(bounds_crs, self.crs, *bounds, densify_pts=21)
        try:
            frame = gpd.read_file(self.path, layer=self.layer, bbox=bbox, columns=[self.column])
        except Exception as err:
            raise CloudbenchError(f"cannot read land-cover layer {self.path}: {err}") from err
        frame = frame[frame[self.column].notna() & frame.geometry.notna()]
        frame = frame[~frame.geometry.is_empty]
        frame[self.column] = _integer_codes(frame[self.column], self.path, self.column)
        return frame

    def read_codes(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """int64 (H, W) codes on ``grid`` and a bool (H, W) mask, False where no polygon covers
        a pixel centre. The features are burnt as their 1-based order (0: none; the later
        feature wins where they overlap), then looked up, so the mask needs no reserved code."""
        codes = np.zeros((grid.height, grid.width), dtype=np.int64)
        frame = self._read(grid.crs, grid.bounds)
        if frame.empty:
            return codes, codes.astype(bool)
        frame = frame.to_crs(grid.crs)
        hits = frame.sindex.query(box(*grid.bounds), predicate="intersects")
        if len(hits) == 0:
            return codes, codes.astype(bool)
        frame = frame.iloc[np.sort(hits)]
        shapes: Iterable[tuple[Any, int]] = zip(
            frame.geometry, range(1, len(frame) + 1), strict=True
        )
        order = rasterize(
            shapes, out_shape=(grid.height, grid.width), transform=grid.transform, fill=0,
            all_touched=False, dtype="int32",
        )
        lookup = np.concatenate([[0], frame[self.column].to_numpy(dtype=np.int64)])
        return lookup[order], order > 0

    def read_labels(self, grid: Grid) -> np.ndarray:
        """int32 (H, W) codes on ``grid``, 0 where no polygon covers a pixel centre (lossy where
        0 is a class code: use ``read_codes``)."""
        codes, valid = self.read_codes(grid)
        return np.where(valid, codes, 0).astype(np.int32)

    def codes(self, area: BaseGeometry | None = None) -> set[int]:
        """The distinct codes of the features meeting ``area``'s bounds (EPSG:4326; the whole
        layer by default)."""
        frame = (self._read("EPSG:4326", area.bounds) if area is not None else self._read())
        return {int(v) for v in frame[self.column].unique() if v != 0}


def _integer_codes(values: pd.Series, path: Path, column: str) -> pd.Series:
    if pd.api.types.is_integer_dtype(values):
        return values.astype("int64")
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna() | (numbers != numbers.round())]
    if len(bad):
        shown = ", ".join(repr(v) for v in sorted({str(v) for v in bad})[:5])
        raise CloudbenchError(
            f"column {column!r} of land-cover layer {path} holds values that are not integer "
            f"class codes: {shown}"
        )
    return numbers.astype("int64")


LabelFile = RasterLabels | VectorLabels


def label_source(path: PathLike, column: str | None = None, *, band: int = 1,
                 layer: str | int | None = None) -> LabelFile:
    """A raster (.tif, .tiff, .vrt) or vector (anything else) label source for ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CloudbenchError(f"land-cover file {path} does not exist")
    if path.suffix.lower() in RASTER_SUFFIXES:
        return RasterLabels(path, band=band)
    if not column:
        raise CloudbenchError(
            f"land-cover layer {path} is a vector layer: name its class-code column "
            "(label_column / --label-column)"
        )
    return VectorLabels(path, column, layer=layer)


def read_classes(source: LabelSource, grid: Grid, scheme: ClassScheme) -> np.ndarray:
    """The class map of ``source`` on ``grid``: int64 (H, W) class indices of ``scheme``,
    ``UNMAPPED`` (-1) for labelled pixels whose code the scheme does not map, ``NO_LABEL_DATA``
    (-2) where there is no label data.

    No label data: what the source's ``read_codes`` masks out (a source with only
    ``read_labels``, such as the synthetic world, follows the protocol: 0 means no data), the
    scheme's own ``nodata`` codes (CORINE's 48 and 999, ESA WorldCover's 0), and code 0 when
    the scheme does not map it. A scheme that maps 0 (Dynamic World's water) keeps it as a
    class: then only the source's mask and the scheme's ``nodata`` say where there is no data.
    """
    reader = getattr(source, "read_codes", None)
    if reader is not None:
        codes, valid = reader(grid)
        codes = np.asarray(codes, dtype=np.int64)
        valid = np.asarray(valid, dtype=bool)
    else:
        codes = np.asarray(source.read_labels(grid), dtype=np.int64)
        valid = codes != 0
    if 0 not in scheme.codes:
        valid = valid & (codes != 0)
    if scheme.nodata:
        valid = valid & ~scheme.nodata_mask(codes)
    keys = np.array(sorted(scheme.codes), dtype=np.int64)
    values = np.array([scheme.codes[k] for k in keys.tolist()], dtype=np.int64)
    at = np.minimum(np.searchsorted(keys, codes), max(len(keys) - 1, 0))
    if len(keys):
        classes = np.where(keys[at] == codes, values[at], UNMAPPED)
    else:
        classes = np.full(codes.shape, UNMAPPED, dtype=np.int64)
    return np.where(valid, classes, NO_LABEL_DATA)


def check_codes(source_codes: Iterable[int], scheme: ClassScheme, *, what: str = "") -> None:
    """Raise a CloudbenchError naming the codes the scheme does not map (0 and the scheme's
    ``nodata`` codes, no data, aside)."""
    unknown = sorted({int(c) for c in source_codes} - set(scheme.codes) - {0} - set(scheme.nodata))
    if unknown:
        shown = ", ".join(str(c) for c in unknown[:20]) + (" …" if len(unknown) > 20 else "")
        where = f" {what}" if what else ""
        mapped = ", ".join(str(c) for c in sorted(scheme.codes)) or "none"
        raise CloudbenchError(
            f"land-cover codes{where} not in class scheme {scheme.name!r}: {shown} (it maps "
            f"{mapped}; map them with label_codes)"
        )


__all__ = [
    "RASTER_SUFFIXES", "LabelFile", "RasterLabels", "VectorLabels", "check_codes",
    "label_source", "read_classes",
]
