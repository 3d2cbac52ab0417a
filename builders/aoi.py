"""The area-of-interest recipe (HunanCloud-style): real clouds over any AOI, through Sentinel Hub.

``cloudbench build aoi --aoi FILE --start … --end … --labels FILE --classes SCHEME --out DIR``
(or ``cloudbench build hunan-cloud --labels FILE --out DIR`` for the shipped northern-Hunan,
July 2018 recipe):

1. ``plan``: read the AOI (any CRS), split it into UTM tiles on one pixel lattice per zone
   (sentinelhub's ``UtmZoneSplitter``), and per tile search the Sentinel Hub Catalog for S2 L2A
   (scene cloud cover at most ``max_cloud_cover``), S2 L1C and S1 GRD (IW, VV+VH) and pair each
   S2 sensing with the nearest S1 within ``max_s1_gap_days`` (``cloudbench/pairs.py``). One task
   per (tile, pair); ``--dry-run`` stops here and prints the requests and processing units.
   Only the patches of a tile that meet the AOI (``aoi_patches``: ``intersects``, the default,
   or ``within``) are candidates, and a task covers only their bounding box on the patch
   lattice (its ``window``); a tile with none is not searched at all.
2. ``build_shard``: through the Process API, on the task's window of the tile's UTM grid: S2
   L2A (the optical product), S1 backscatter in dB (orthorectified with the Copernicus DEM), S2
   L1C for s2cloudless; labels from the land-cover raster or vector layer; patches cut,
   labelled with the purity rule over the pixels that have label data (no label data is a
   mask, never a class), and dropped when outside the AOI, with no data, or without enough
   label data; one shard per task. Sample ids keep the patch's offset in the tile. A killed
   build resumes per shard; sentinelhub-py's request cache (``sentinel_hub.cache_folder``)
   keeps a re-run from paying twice for the same request.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloudbench import store
from cloudbench.aoi import (
    PatchRule,
    aoi_patches,
    check_time_window,
    in_crs,
    patch_window,
    read_aoi,
    utm_tiles,
)
from cloudbench.build import Shard
from cloudbench.clouds import CloudMaskConfig
from cloudbench.config import ClassScheme, catalog, class_scheme
from cloudbench.errors import CloudbenchError
from cloudbench.pairs import Pair, check_plan, pair, paired_shard
from cloudbench.sources.base import (
    S1_BANDS,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    Collection,
    Grid,
)
from cloudbench.sources.landcover import LabelFile, check_codes, label_source
from cloudbench.sources.sentinelhub import (
    PlanCost,
    SentinelHubSettings,
    cached_source,
    processing_units,
    quota_warning,
    s1_kind,
)


class Config(BaseModel):
    """The ``aoi`` and ``hunan-cloud`` recipes (``catalogs/recipes/{aoi,hunan-cloud}.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    aoi: Path = Field(description="GeoJSON, GeoPackage or shapefile, any CRS")
    start: dt.date
    end: dt.date
    max_cloud_cover: float = Field(100.0, ge=0, le=100, description="scene cloud cover, %")
    max_s1_gap_days: float = Field(3.0, ge=0)
    max_acquisitions: int | None = Field(None, ge=1, description="per tile, the earliest")
    patch_size: int = Field(64, ge=8)
    resolution: float = Field(10.0, gt=0, description="metres per pixel")
    tile_size: int = Field(640, ge=8, description="tile side in pixels; a multiple of patch_size")
    labels: Path = Field(description="land-cover raster (GeoTIFF) or vector layer, any CRS")
    label_column: str | None = Field(None, description="class-code column of a vector layer")
    classes: str = Field("hunan_cloud", description="class scheme in catalogs/classes")
    label_codes: dict[str, list[int]] | None = Field(
        None, description="class name -> land-cover codes, replacing the scheme's codes")
    purity: float = Field(0.5, gt=0, le=1,
                          description="minimum majority-class share of the labelled pixels")
    min_labelled_share: float | None = Field(
        None, gt=0, le=1,
        description="minimum share of a patch with label data; default: purity")
    aoi_patches: PatchRule = Field(
        "intersects", description="keep the patches that intersect the AOI, or lie within it")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    clouds: CloudMaskConfig = CloudMaskConfig()
    sentinel_hub: SentinelHubSettings = SentinelHubSettings()

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if self.tile_size % self.patch_size:
            raise ValueError("patch_size must divide tile_size")
        return self


@dataclass(frozen=True)
class Task:
    """One (tile, pair). ``grid`` is the whole tile; ``window`` (row, col, height, width, in
    pixels of the tile) the part requested: the bounding box of the patches meeting the AOI,
    ``inside`` (bool, (height, width) / patch_size) which of its patches those are."""

    shard_id: str
    grid: Grid
    pair: Pair
    window: tuple[int, int, int, int]
    inside: np.ndarray = field(compare=False, repr=False)

    @property
    def window_grid(self) -> Grid:
        return self.grid.window(*self.window)


@cache
def _labels(path: Path, column: str | None) -> LabelFile:
    return label_source(path, column)


def scheme(config: Config) -> ClassScheme:
    """The class scheme, its codes replaced by ``label_codes`` when given."""
    base = class_scheme(config.classes)
    if config.label_codes is None:
        return base
    unknown = sorted(set(config.label_codes) - set(base.classes))
    if unknown:
        raise CloudbenchError(f"label_codes names classes {unknown} that scheme "
                              f"{config.classes!r} does not have ({', '.join(base.classes)})")
    codes = {int(code): base.classes.index(name)
             for name, values in config.label_codes.items() for code in values}
    return base.with_codes(codes)


def aoi_path(path: Path) -> Path:
    """``path``, or for a relative path not found from the working directory, the shipped
    ``catalogs/<path>`` when there is one (the hunan-cloud recipe's ``aoi/hunan_north.geojson``)."""
    shipped = catalog(*path.parts)
    if path.is_absolute() or path.exists() or not shipped.is_file():
        return path
    return Path(str(shipped))


def _utc(day: dt.date, end: bool = False) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.max if end else dt.time.min, tzinfo=dt.UTC)


def plan(config: Config, root: Path, **_options: Any) -> list[Task]:
    """One task per (UTM tile of the AOI, S2 sensing paired with an S1 acquisition), on the
    part of the tile that holds the patches meeting the AOI (tiles without any are skipped,
    not searched); the catalog is searched over that part."""
    start, end = _utc(config.start), _utc(config.end, end=True)
    check_time_window(start, end)
    area = read_aoi(aoi_path(config.aoi))
    labels = _labels(config.labels, config.label_column)
    check_codes(labels.codes(area), scheme(config), what=str(config.labels))  # before requests
    source = cached_source(config.sentinel_hub)
    gap = dt.timedelta(days=config.max_s1_gap_days)
    tasks = []
    zones: dict[Any, Any] = {}  # the AOI in each tile CRS
    any_patch = False
    for name, grid in utm_tiles(area, config.tile_size * config.resolution, config.resolution):
        if grid.crs not in zones:
            zones[grid.crs] = in_crs(area, grid.crs)
        mask = aoi_patches(zones[grid.crs], grid, config.patch_size, config.aoi_patches)
        window = patch_window(mask, config.patch_size)
        if window is None:
            continue
        any_patch = True
        row, col, height, width = window
        p = config.patch_size
        inside = mask[row // p:(row + height) // p, col // p:(col + width) // p].copy()
        footprint = grid.window(*window).footprint()
        l2a = source.search(Collection.S2_L2A, footprint, start, end,
                            max_cloud_cover=config.max_cloud_cover)
        l1c = source.search(Collection.S2_L1C, footprint, start, end)
        s1 = source.search(Collection.S1_GRD, footprint, start - gap, end + gap)
        # one pair per sensing (a pass's overlapping MGRS items grouped), cover over this part
        for found in pair(l2a, l1c, s1, gap, area=footprint)[: config.max_acquisitions]:
            shard = f"{name}_{found.s2_l2a.datetime:%Y%m%dT%H%M%S}"
            tasks.append(Task(shard, grid, found, window, inside))
    if not any_patch:
        raise CloudbenchError(
            f"no patch of {config.patch_size} px ({config.patch_size * config.resolution:g} m) "
            f"{'lies within' if config.aoi_patches == 'within' else 'intersects'} the AOI "
            f"{config.aoi}: use a smaller patch_size"
            + (" or aoi_patches: intersects" if config.aoi_patches == "within" else "")
        )
    # the same pixels planned twice are refused now, before any request is paid
    check_plan([(t.shard_id, t.window_grid, t.pair.s2_l2a) for t in tasks],
               patch_size=config.patch_size)
    return tasks


def build_shard(config: Config, task: Task) -> Shard:
    row, col, _, _ = task.window
    return paired_shard(
        cached_source(config.sentinel_hub), _labels(config.labels, config.label_column),
        task.window_grid, task.pair, scheme(config), patch_size=config.patch_size,
        purity=config.purity, min_labelled=config.min_labelled_share, clouds=config.clouds,
        id_prefix=task.shard_id, origin=(row, col), inside=task.inside,
    )


def estimate(config: Config, tasks: list[Task]) -> dict[str, Any]:
    """Process API requests and processing units a build of ``tasks`` will use (an estimate by
    the published rules, ``sentinelhub.processing_units``), per request kind. Each task makes
    three requests over its window: L2A (12 bands, UINT16), S1 (VV, VH as FLOAT32, with the
    recipe's backscatter coefficient: orthorectified, or terrain-corrected for
    ``gamma0_terrain``), L1C (13 bands, UINT16, at the cloud-mask resolution). On CDSE,
    ``warning`` says when a free account's monthly quota does not cover it
    (``sentinelhub.quota_warning``)."""
    scale = config.resolution / config.clouds.resolution
    coefficient = config.sentinel_hub.backscatter_coefficient
    cost = PlanCost()
    for task in tasks:
        _, _, height, width = task.window
        mask_pixels = round(height * scale) * round(width * scale)
        cost.add("S2 L2A", processing_units(height * width, len(S2_L2A_BANDS),
                                            Collection.S2_L2A))
        cost.add(s1_kind(coefficient), processing_units(height * width, len(S1_BANDS),
                                                        Collection.S1_GRD, coefficient))
        cost.add("S2 L1C (cloud mask)", processing_units(mask_pixels, len(S2_L1C_BANDS),
                                                         Collection.S2_L1C))
    tiles = utm_tiles(read_aoi(aoi_path(config.aoi)), config.tile_size * config.resolution,
                      config.resolution)
    units = cost.units
    with_pairs = len({task.grid for task in tasks})
    patches = sum(int(task.inside.sum()) for task in tasks)
    return {"summary": f"{with_pairs} of {len(tiles)} UTM tiles have S2/S1 pairs: {len(tasks)} "
                       f"shards (tile x pair), {cost.requests} Process API requests, about "
                       f"{units:g} processing units, for {patches} patches meeting the AOI "
                       f"({config.aoi_patches})",
            "tiles": len(tiles), "tiles_with_pairs": with_pairs,
            "tasks": len(tasks), "requests": cost.requests, "processing_units": units,
            "by_kind": cost.by_kind(), "breakdown": cost.breakdown(),
            "warning": quota_warning(config.sentinel_hub, cost.requests, units),
            "patches": patches}


def metadata(config: Config) -> dict[str, Any]:
    classes = scheme(config)
    return {
        "kind": "hunan-cloud",
        "task": classes.task,
        "classes": list(classes.classes),
        "class_scheme": classes.identity,
        "patch_size": config.patch_size,
        "resolution": config.resolution,
        "arrays": {
            "s1": {"bands": list(S1_BANDS), "unit": "dB", "scale": 1.0,
                   "product": "Sentinel-1 GRD IW, "
                              f"{config.sentinel_hub.backscatter_coefficient}, orthorectified"},
            "s2": {"bands": list(S2_L2A_BANDS), "unit": "reflectance", "scale": 10000.0,
                   "product": "Sentinel-2 L2A"},
            "cloud_mask": {"bands": ["cloud_type"], "unit": "0 clear, 1 thin, 2 thick",
                           "scale": 1.0, "method": "s2cloudless on the L1C bands"},
        },
    }


def provenance(config: Config) -> dict[str, Any]:
    return {
        "source": "sentinel-hub",
        "synthetic": False,
        "service": config.sentinel_hub.base_url,
        "aoi": str(config.aoi),
        "labels": str(config.labels),
        "time_window": [str(config.start), str(config.end)],
    }


def assign_split(config: Config, table: Any) -> np.ndarray:
    return store.stratified_split(
        table["label"], "multiclass", config.test_fraction, config.split_seed
    )
