"""The source interface: where pixels come from.

Every source (the synthetic world, Sentinel Hub, local archives) answers two questions:

* ``search(collection, area, start, end)``: which acquisitions cover an area in a time window;
* ``read(acquisition, grid, bands)``: the pixels of one acquisition resampled onto a grid.

Pixels come back as float32 arrays shaped (C, H, W): Sentinel-2 as reflectance (digital numbers
/ 10000, processing-baseline offsets already harmonised), Sentinel-1 as backscatter in dB. No-data
pixels are NaN. Builders only ever talk to this interface, so they cannot tell sources apart.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

S2_L1C_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
S2_L2A_BANDS: tuple[str, ...] = tuple(b for b in S2_L1C_BANDS if b != "B10")
S1_BANDS: tuple[str, ...] = ("VV", "VH")
SYNTHETIC_MARKER = "SYNTHETIC.txt"
"""A file left in the root of every archive generated from the synthetic world; builders that
read local archives check for it so that their datasets never pass for real data."""


class Collection(StrEnum):
    """Data collections a source can be searched for."""

    S1_GRD = "sentinel-1-grd"
    S2_L1C = "sentinel-2-l1c"
    S2_L2A = "sentinel-2-l2a"

    @property
    def bands(self) -> tuple[str, ...]:
        return {
            Collection.S1_GRD: S1_BANDS,
            Collection.S2_L1C: S2_L1C_BANDS,
            Collection.S2_L2A: S2_L2A_BANDS,
        }[self]


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform of the upper-left corner, size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def from_bounds(
        cls, crs: CRS | str | int, left: float, top: float, width: int, height: int, res: float
    ) -> Grid:
        crs = CRS.from_user_input(crs)
        return cls(crs, Affine(res, 0.0, left, 0.0, -res, top), width, height)

    @property
    def resolution(self) -> float:
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        left, top = self.transform.c, self.transform.f
        return (
            left,
            top + self.transform.e * self.height,
            left + self.transform.a * self.width,
            top,
        )

    def footprint(self, crs: CRS | str | int = "EPSG:4326") -> BaseGeometry:
        """The grid's outline in another CRS (EPSG:4326 by default)."""
        geom = box(*self.bounds)
        dst = CRS.from_user_input(crs)
        if dst == self.crs:
            return geom
        return shape(transform_geom(self.crs, dst, geom.__geo_interface__))

    def window(self, row: int, col: int, height: int, width: int) -> Grid:
        """The sub-grid starting at pixel (row, col)."""
        if row < 0 or col < 0 or row + height > self.height or col + width > self.width:
            raise ValueError(f"window ({row}, {col}, {height}, {width}) leaves the grid")
        return Grid(self.crs, self.transform @ Affine.translation(col, row), width, height)

    def tiles(self, size: int) -> Iterator[tuple[int, int, Grid]]:
        """Non-overlapping size x size sub-grids, row-major; partial edge tiles are skipped."""
        for row in range(0, self.height - size + 1, size):
            for col in range(0, self.width - size + 1, size):
                yield row, col, self.window(row, col, size, size)

    def rescaled(self, res: float) -> Grid:
        """The same footprint at another resolution (the footprint must divide evenly)."""
        width = round(self.width * self.resolution / res)
        height = round(self.height * self.resolution / res)
        left, _, _, top = self.bounds
        return Grid.from_bounds(self.crs, left, top, width, height, res)


@dataclass(frozen=True)
class Acquisition:
    """One product of a collection: its id, sensing time (UTC) and footprint (EPSG:4326)."""

    id: str
    collection: Collection
    datetime: dt.datetime
    footprint: BaseGeometry
    cloud_cover: float | None = None
    """Whole-product cloud cover in percent (Sentinel-2 only)."""
    properties: Mapping[str, Any] = field(default_factory=dict)
    """Further catalog properties: orbit direction, MGRS tile, processing baseline, ..."""


@runtime_checkable
class Source(Protocol):
    """Where pixels come from. Implemented by the synthetic world and the Sentinel Hub source."""

    name: str
    synthetic: bool

    def search(
        self,
        collection: Collection,
        area: BaseGeometry,
        start: dt.datetime,
        end: dt.datetime,
        *,
        max_cloud_cover: float | None = None,
        min_cloud_cover: float | None = None,
    ) -> list[Acquisition]:
        """Acquisitions intersecting ``area`` (EPSG:4326) in [start, end], sorted by time.

        Sentinel-2 products are kept when their whole-product cloud cover (percent) is in
        [min_cloud_cover, max_cloud_cover] (either bound optional); Sentinel-1 is not filtered.
        """
        ...

    def read(self, acquisition: Acquisition, grid: Grid, bands: Sequence[str]) -> np.ndarray:
        """float32 (len(bands), grid.height, grid.width); reflectance for S2, dB for S1."""
        ...


@runtime_checkable
class LabelSource(Protocol):
    """Where land-cover codes come from (a land-cover raster, a vector layer, ...)."""

    def read_labels(self, grid: Grid) -> np.ndarray:
        """Land-cover codes on the grid, (H, W) integer array; 0 means no data."""
        ...

