"""The area of interest: read it from a vector file, check it, split it into UTM tiles.

* ``read_aoi(path)``: a GeoJSON, GeoPackage or shapefile in any CRS, every feature unioned into
  one (multi)polygon in EPSG:4326. Bad input ends in one ``CloudbenchError``: a missing or
  unreadable file, no CRS, no features, empty, non-polygonal or invalid geometry (with the reason
  from ``shapely.validation.explain_validity``; nothing is fixed silently), an area above
  ``max_area_km2``.
* ``utm_tiles(aoi, tile_size_m, resolution)``: sentinelhub-py's ``UtmZoneSplitter`` tiles, as
  north-up cloudbench ``Grid``s in the zone's UTM CRS. Tile corners are multiples of
  ``tile_size_m`` (a multiple of ``resolution``), so all tiles of one zone share one pixel lattice.
* ``in_crs(aoi, crs)``: the AOI's vertices transformed into a grid's CRS (no densification: an
  AOI drawn in UTM comes back with its own vertices and straight edges).
* ``aoi_patches(area, grid, patch_size, rule)``: which patches of a grid's patch lattice meet the
  AOI, vectorised: ``"intersects"`` (the patch and the AOI share some area) or ``"within"`` (the
  patch lies inside the AOI), both up to ``PATCH_TOLERANCE`` pixels so that an AOI drawn on the
  lattice is not undone by reprojection noise (a patch that only touches the AOI along an edge
  does not intersect it).
* ``patch_window(mask, patch_size)``: the bounding box, in pixels on the patch lattice, of the
  patches a mask keeps: the part of a tile worth requesting.
* ``check_time_window(start, end)``: an inverted or empty time window is a user error.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal, NamedTuple

import geopandas as gpd
import numpy as np
import pyproj
import shapely
from shapely import make_valid
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import Grid

MAX_AREA_KM2 = 500_000.0
"""Default upper bound on an AOI's area: larger is almost surely a mistake (a wrong CRS, a
country-sized layer) and would cost a fortune in Sentinel Hub requests."""

PATCH_TOLERANCE = 1e-3
"""``aoi_patches`` tests each patch shrunk by this many pixels on every side (1 cm at 10 m)."""

PatchRule = Literal["intersects", "within"]

_GEOD = pyproj.Geod(ellps="WGS84")
_UTM_LAT_MIN, _UTM_LAT_MAX = -80.0, 84.0


class Tile(NamedTuple):
    """One UTM tile of an AOI: a stable name (``<epsg>_<left>_<bottom>``) and its grid."""

    name: str
    grid: Grid


def geodesic_area_km2(geom: BaseGeometry) -> float:
    """The area of an EPSG:4326 geometry on the WGS84 ellipsoid, km²."""
    area, _ = _GEOD.geometry_area_perimeter(geom)
    return abs(area) / 1e6


def read_aoi(path: str | os.PathLike[str] | Traversable, *,
             max_area_km2: float = MAX_AREA_KM2) -> BaseGeometry:
    """The AOI of a vector file (any CRS), all features unioned, in EPSG:4326."""
    path_str = str(path)
    if not Path(path_str).is_file():
        raise CloudbenchError(f"AOI file {path_str} does not exist")
    try:
        frame = gpd.read_file(path_str)
    except Exception as err:  # any reader failure is an unreadable file
        raise CloudbenchError(f"cannot read AOI file {path_str}: {err}") from err
    if len(frame) == 0:
        raise CloudbenchError(f"AOI file {path_str} has no features")
    if frame.crs is None:
        raise CloudbenchError(
            f"AOI file {path_str} has no CRS; write one (GeoJSON is EPSG:4326 by definition, "
            "a shapefile needs its .prj)"
        )
    for index, geom in enumerate(frame.geometry):
        what = f"AOI file {path_str}, feature {index}"
        if geom is None or geom.is_empty:
            raise CloudbenchError(f"{what}: empty geometry")
        if not isinstance(geom, Polygon | MultiPolygon):
            raise CloudbenchError(
                f"{what}: a {geom.geom_type}; an AOI must be made of polygons"
            )
        if not geom.is_valid:
            raise CloudbenchError(
                f"{what}: invalid geometry ({explain_validity(geom)}); fix it in a GIS "
                "(e.g. QGIS 'Fix geometries' or shapely.make_valid)"
            )
    projected = frame.to_crs("EPSG:4326").geometry
    area = projected.union_all()
    if not area.is_valid:  # reprojection can, rarely, fold a ring onto itself
        area = make_valid(area)
    if area.is_empty or area.area == 0:
        raise CloudbenchError(f"AOI file {path_str}: empty geometry")
    km2 = geodesic_area_km2(area)
    if km2 > max_area_km2:
        raise CloudbenchError(
            f"AOI file {path_str} covers {km2:,.0f} km², more than the limit of "
            f"{max_area_km2:,.0f} km² (wrong CRS? split the area, or raise the limit)"
        )
    return area


def utm_tiles(aoi: BaseGeometry, tile_size_m: float, resolution: float) -> list[Tile]:
    """UTM tiles (``UtmZoneSplitter``) of ``tile_size_m`` metres intersecting ``aoi`` (EPSG:4326).

    Each tile is a north-up grid of ``tile_size_m / resolution`` pixels square in its zone's UTM
    CRS; its corners are multiples of ``tile_size_m``, so the tiles of one zone share one pixel
    lattice. An AOI across zones gets tiles in each zone (tiles near the boundary of neighbouring
    zones overlap on the ground). Sorted by EPSG code, then north to south, then west to east.
    """
    from sentinelhub import CRS as SHCRS  # imported here: sentinelhub is slow to import
    from sentinelhub import UtmZoneSplitter

    if tile_size_m <= 0 or resolution <= 0:
        raise CloudbenchError("tile size and resolution must be positive")
    pixels = tile_size_m / resolution
    if abs(pixels - round(pixels)) > 1e-9:
        raise CloudbenchError(
            f"the tile size {tile_size_m} m is not a whole number of {resolution} m pixels"
        )
    size = int(round(pixels))
    if aoi.is_empty:
        raise CloudbenchError("the AOI is empty")
    south, north = aoi.bounds[1], aoi.bounds[3]
    if south < _UTM_LAT_MIN or north > _UTM_LAT_MAX:
        raise CloudbenchError(
            f"the AOI reaches latitude {south if south < _UTM_LAT_MIN else north:.2f}°; UTM "
            f"tiles cover {_UTM_LAT_MIN:.0f}° to {_UTM_LAT_MAX:.0f}° only"
        )

    with warnings.catch_warnings():  # sentinelhub still calls the deprecated shapely.ops.transform
        warnings.simplefilter("ignore", DeprecationWarning)
        bboxes = UtmZoneSplitter([aoi], SHCRS.WGS84, float(tile_size_m)).get_bbox_list()
    tiles: dict[tuple[int, int, int], Tile] = {}
    for bbox in bboxes:
        epsg = int(bbox.crs.epsg)
        # the splitter's corners are multiples of tile_size_m already; snap away float noise
        left = round(bbox.min_x / resolution) * resolution
        bottom = round(bbox.min_y / resolution) * resolution
        top = bottom + size * resolution
        grid = Grid.from_bounds(f"EPSG:{epsg}", left, top, size, size, resolution)
        name = f"{epsg}_{_coord(left)}_{_coord(bottom)}"
        key = (epsg, -round(bottom / resolution), round(left / resolution))
        tiles.setdefault(key, Tile(name, grid))
    return [tiles[key] for key in sorted(tiles)]


def _coord(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def tiles_cover(aoi: BaseGeometry, tiles: list[Tile]) -> bool:
    """Whether the tiles' footprints cover ``aoi`` (EPSG:4326) up to a metre-scale tolerance."""
    if not tiles:
        return aoi.is_empty
    union = gpd.GeoSeries([t.grid.footprint() for t in tiles], crs="EPSG:4326").union_all()
    return bool(union.buffer(1e-6).covers(aoi))


def in_crs(aoi: BaseGeometry, crs: object) -> BaseGeometry:
    """An EPSG:4326 geometry in ``crs`` (anything pyproj reads), vertex by vertex."""
    transformer = pyproj.Transformer.from_crs("EPSG:4326", pyproj.CRS.from_user_input(crs),
                                              always_xy=True)
    return shapely.transform(
        aoi, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
    )


def aoi_patches(area: BaseGeometry, grid: Grid, patch_size: int,
                rule: PatchRule = "intersects") -> np.ndarray:
    """bool (rows, cols): the patches of ``grid`` (``patch_size`` pixels, row-major from the
    upper-left corner, as ``Grid.tiles``; partial edge patches left out) that meet ``area``, a
    geometry in the grid's CRS (``in_crs``).

    ``rule`` ``"intersects"``: the patch and the area share some area; ``"within"``: the patch
    lies inside the area. Each patch is tested shrunk by ``PATCH_TOLERANCE`` pixels, so neither
    rule turns on reprojection noise along an AOI drawn on the patch lattice.
    """
    if rule not in ("intersects", "within"):
        raise ValueError(f"unknown patch rule {rule!r}: 'intersects' or 'within'")
    rows, cols = grid.height // patch_size, grid.width // patch_size
    left, _, _, top = grid.bounds
    step = patch_size * grid.resolution
    shrink = PATCH_TOLERANCE * grid.resolution
    x0 = left + np.arange(cols) * step
    y1 = top - np.arange(rows) * step
    xmin, ymax = np.meshgrid(x0 + shrink, y1 - shrink)
    boxes = shapely.box(xmin, ymax - step + 2 * shrink, xmin + step - 2 * shrink, ymax)
    shapely.prepare(area)
    if rule == "within":
        return np.asarray(shapely.contains(area, boxes), dtype=bool).reshape(rows, cols)
    return np.asarray(shapely.intersects(area, boxes), dtype=bool).reshape(rows, cols)


def patch_window(mask: np.ndarray, patch_size: int) -> tuple[int, int, int, int] | None:
    """(row, col, height, width) in pixels: the bounding box of the patches ``mask`` (bool,
    (rows, cols)) keeps, on the patch lattice; None when it keeps none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return r0 * patch_size, c0 * patch_size, (r1 - r0) * patch_size, (c1 - c0) * patch_size


def check_time_window(start: dt.date | dt.datetime, end: dt.date | dt.datetime) -> None:
    """Raise a CloudbenchError for an inverted or empty time window.

    Dates are whole days, inclusive (start == end is one day); datetimes are instants, so the
    end must come after the start.
    """
    both_dates = not isinstance(start, dt.datetime) and not isinstance(end, dt.datetime)
    try:
        inverted = end < start if both_dates else end <= start
    except TypeError as err:
        raise CloudbenchError(
            f"cannot compare the time window's start {start} and end {end} ({err})"
        ) from err
    if inverted:
        what = "before" if end < start else "equal to"
        raise CloudbenchError(
            f"empty time window: end {end.isoformat()} is {what} start {start.isoformat()}"
        )


__all__ = [
    "MAX_AREA_KM2", "PATCH_TOLERANCE", "PatchRule", "Tile", "aoi_patches", "check_time_window",
    "geodesic_area_km2", "in_crs", "patch_window", "read_aoi", "tiles_cover", "utm_tiles",
]
