"""Synthetic archives in the real SEN12MS / SEN12MS-CR on-disk layouts, for tests and benchmarks.

**Nothing these writers produce is real data.** Every pixel comes from
:class:`~cloudbench.sources.synthetic.SyntheticWorld`; only the folder layout, the file names
and the GeoTIFF conventions are those of the released datasets, so the readers in
:mod:`cloudbench.sources.sen12ms` (and anything built on them) can be exercised at any size
without the real archives.

Conventions copied from the released files (checked against the samples in
``../shared/realdata``):

* 256 x 256 pixels at 10 m, the patch's UTM CRS and transform, no nodata value;
* GDAL's plain GeoTIFF defaults: uncompressed, striped (not tiled), pixel-interleaved;
* ``s1``: 2 bands (VV, VH) float32 backscatter in dB;
* ``s2`` / ``s2_cloudy``: the 13 Sentinel-2 L1C bands, uint16 digital numbers
  ``round(reflectance * 10000)``;
* ``lc``: 4 bands uint8 (IGBP, LCCS land cover, LCCS land use, LCCS surface hydrology), written
  as RGB + unassociated alpha so that GDAL tags band 4 as alpha, exactly like the released files
  (band 4 is data, not transparency).

Each scene is its own world, ``SyntheticWorld(seed=seed + scene - 1, size=side)``, just big
enough for its patches: ``side = ceil(sqrt(patches_per_scene)) * 256``, patches are the
non-overlapping 256 x 256 windows of the world grid in row-major order, numbered from 1. The
``s2`` image is the world's clearest L1C date (lowest cloud cover, earliest on ties),
``s2_cloudy`` the date whose cloud cover is closest to 50 %, and ``s1`` the Sentinel-1
acquisition nearest in time to the clear date. The LCCS bands are a fixed function of the IGBP
code (plausible values from the MODIS MCD12Q1 LCCS legends, not an official crosswalk).

Same arguments give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import rasterio

from cloudbench.sources.base import S1_BANDS, S2_L1C_BANDS, Acquisition, Collection, Grid
from cloudbench.sources.sen12ms import PatchRef
from cloudbench.sources.synthetic import SyntheticWorld

__all__ = [
    "LCCS_FROM_IGBP",
    "PATCH_SIZE",
    "patch_path",
    "write_cloudy_folder",
    "write_sen12ms",
    "write_sen12ms_cr",
]

PATCH_SIZE = 256
"""Pixels per side of a SEN12MS patch."""

# fmt: off
LCCS_FROM_IGBP = np.array(
    [
        # LCCS land cover, land use, surface hydrology
        [255, 255, 255],  # 0 no data -> unclassified
        [11, 10, 10],     # 1 evergreen needleleaf forests
        [12, 10, 10],     # 2 evergreen broadleaf forests
        [13, 10, 10],     # 3 deciduous needleleaf forests
        [14, 10, 10],     # 4 deciduous broadleaf forests
        [16, 10, 10],     # 5 mixed forests
        [41, 40, 40],     # 6 closed shrublands
        [43, 40, 40],     # 7 open shrublands
        [21, 20, 20],     # 8 woody savannas
        [22, 20, 20],     # 9 savannas
        [31, 30, 30],     # 10 grasslands
        [31, 30, 50],     # 11 permanent wetlands
        [31, 36, 30],     # 12 croplands
        [32, 9, 30],      # 13 urban and built-up lands
        [31, 35, 30],     # 14 cropland / natural vegetation mosaics
        [2, 2, 2],        # 15 permanent snow and ice
        [1, 1, 1],        # 16 barren
        [3, 3, 3],        # 17 water bodies
    ],
    dtype=np.uint8,
)
"""(18, 3) LCCS land cover / land use / surface hydrology codes, indexed by IGBP code (0..17)."""
# fmt: on

_SEASONS = ("spring", "summer", "fall", "winter")
_ROI = re.compile(r"^ROIs\d+$")
_ALL_TIME = ("1970-01-01", "2100-01-01")
# GDAL's plain defaults, like the released files: no compression, strips, pixel interleaving.
_PROFILE = {"driver": "GTiff", "width": PATCH_SIZE, "height": PATCH_SIZE, "nodata": None}
# A 4-band uint8 file tagged red, green, blue, alpha (ExtraSamples = unassociated alpha).
_LC_OPTIONS = {"photometric": "RGB", "alpha": "YES"}


def patch_path(root: str | Path, ref: PatchRef, modality: str, *, cr: bool = False) -> Path:
    """Where ``modality`` of ``ref`` lives in a SEN12MS (or, with ``cr``, SEN12MS-CR) tree."""
    season_dir = f"{ref.roi}_{ref.season}" + (f"_{modality}" if cr else "")
    name = f"{ref.roi}_{ref.season}_{modality}_{ref.scene}_p{ref.patch}.tif"
    return Path(root) / season_dir / f"{modality}_{ref.scene}" / name


def write_sen12ms(
    root: str | Path,
    *,
    scenes: int | Iterable[int] = 2,
    patches_per_scene: int = 4,
    roi: str = "ROIs1158",
    season: str = "spring",
    seed: int = 0,
    nan_patch: tuple[int, int] | None = None,
) -> list[PatchRef]:
    """A synthetic SEN12MS tree (s1, s2, lc) under ``root``; returns the written patches, sorted.

    ``scenes`` is a count (scenes 1..n) or the scene numbers themselves (e.g. ``[1, 14, 146]``).
    ``nan_patch=(scene, patch)`` puts NaN into a block of that patch's S1 pixels (both bands),
    like the broken S1 patches of the released dataset.
    """
    scene_ids, refs = _plan(scenes, patches_per_scene, roi, season)
    if nan_patch is not None and PatchRef(roi, season, *nan_patch) not in refs:
        raise ValueError(f"nan_patch {nan_patch} is not among the patches written")
    for scene in scene_ids:
        world = SyntheticWorld(seed=seed + scene - 1, size=_side(patches_per_scene))
        clear = _clearest(world)
        images = {
            "s1": world.read(_nearest_s1(world, clear.datetime), world.grid, S1_BANDS),
            "s2": _to_dn(world.read(clear, world.grid, S2_L1C_BANDS)),
            "lc": _land_cover(world.read_labels(world.grid)),
        }
        for patch, (row, col) in enumerate(_windows(patches_per_scene), start=1):
            ref = PatchRef(roi, season, scene, patch)
            grid = world.grid.window(row, col, PATCH_SIZE, PATCH_SIZE)
            for modality, image in images.items():
                tile = image[:, row : row + PATCH_SIZE, col : col + PATCH_SIZE]
                if modality == "s1" and nan_patch == (scene, patch):
                    tile = tile.copy()
                    tile[:, 100:132, 40:200] = np.nan
                _write(patch_path(root, ref, modality), tile, grid, lc=modality == "lc")
    return refs


def write_sen12ms_cr(
    root: str | Path,
    *,
    scenes: int | Iterable[int] = 1,
    patches_per_scene: int = 4,
    roi: str = "ROIs1868",
    season: str = "summer",
    seed: int = 100,
) -> list[PatchRef]:
    """A synthetic SEN12MS-CR tree (s1, s2, s2_cloudy) under ``root``; returns the patches, sorted.

    ``s2`` is the clearest date, ``s2_cloudy`` the date with cloud cover closest to 50 %, ``s1``
    the acquisition nearest in time to the clear date. ``scenes`` as in :func:`write_sen12ms`.
    """
    scene_ids, refs = _plan(scenes, patches_per_scene, roi, season)
    for scene in scene_ids:
        world = SyntheticWorld(seed=seed + scene - 1, size=_side(patches_per_scene))
        clear = _clearest(world)
        images = {
            "s1": world.read(_nearest_s1(world, clear.datetime), world.grid, S1_BANDS),
            "s2": _to_dn(world.read(clear, world.grid, S2_L1C_BANDS)),
            "s2_cloudy": _to_dn(world.read(_half_cloudy(world), world.grid, S2_L1C_BANDS)),
        }
        for patch, (row, col) in enumerate(_windows(patches_per_scene), start=1):
            ref = PatchRef(roi, season, scene, patch)
            grid = world.grid.window(row, col, PATCH_SIZE, PATCH_SIZE)
            for modality, image in images.items():
                tile = image[:, row : row + PATCH_SIZE, col : col + PATCH_SIZE]
                _write(patch_path(root, ref, modality, cr=True), tile, grid)
    return refs


def write_cloudy_folder(root: str | Path, *, images: int = 4, seed: int = 200) -> list[Path]:
    """``images`` clouded 13-band uint16 L1C GeoTIFFs ``root/cloudy_000.tif``, ...; sorted paths.

    Image ``i`` is the date with cloud cover closest to 50 % of a one-patch world with seed
    ``seed + i``.
    """
    if images < 0:
        raise ValueError(f"images must be >= 0, got {images}")
    root = Path(root)
    paths = []
    for i in range(images):
        world = SyntheticWorld(seed=seed + i, size=PATCH_SIZE)
        path = root / f"cloudy_{i:03d}.tif"
        _write(path, _to_dn(world.read(_half_cloudy(world), world.grid, S2_L1C_BANDS)), world.grid)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- helpers


def _plan(
    scenes: int | Iterable[int], patches_per_scene: int, roi: str, season: str
) -> tuple[list[int], list[PatchRef]]:
    if not _ROI.match(roi):
        raise ValueError(f"roi must look like 'ROIs1158', got {roi!r}")
    if season not in _SEASONS:
        raise ValueError(f"season must be one of {', '.join(_SEASONS)}, got {season!r}")
    if patches_per_scene < 1:
        raise ValueError(f"patches_per_scene must be >= 1, got {patches_per_scene}")
    if isinstance(scenes, int):
        if scenes < 0:
            raise ValueError(f"scenes must be >= 0, got {scenes}")
        scene_ids = list(range(1, scenes + 1))
    else:
        scene_ids = sorted({int(s) for s in scenes})
        if any(s < 1 for s in scene_ids):
            raise ValueError(f"scene numbers start at 1, got {scene_ids}")
    refs = [
        PatchRef(roi, season, scene, patch)
        for scene in scene_ids
        for patch in range(1, patches_per_scene + 1)
    ]
    return scene_ids, sorted(refs)


def _side(patches_per_scene: int) -> int:
    """Pixels per side of the smallest square world holding the patches."""
    return math.ceil(math.sqrt(patches_per_scene)) * PATCH_SIZE


def _windows(patches_per_scene: int) -> list[tuple[int, int]]:
    """Upper-left (row, col) of each patch, row-major."""
    per_row = _side(patches_per_scene) // PATCH_SIZE
    return [
        (PATCH_SIZE * (i // per_row), PATCH_SIZE * (i % per_row)) for i in range(patches_per_scene)
    ]


def _s2_dates(world: SyntheticWorld) -> list[Acquisition]:
    return world.search(Collection.S2_L1C, None, *_ALL_TIME)


def _clearest(world: SyntheticWorld) -> Acquisition:
    return min(_s2_dates(world), key=lambda a: (a.cloud_cover, a.datetime))


def _half_cloudy(world: SyntheticWorld) -> Acquisition:
    return min(_s2_dates(world), key=lambda a: (abs(a.cloud_cover - 50.0), a.datetime))


def _nearest_s1(world: SyntheticWorld, when: dt.datetime) -> Acquisition:
    s1 = world.search(Collection.S1_GRD, None, *_ALL_TIME)
    return min(s1, key=lambda a: (abs(a.datetime - when), a.datetime))


def _to_dn(reflectance: np.ndarray) -> np.ndarray:
    """Sentinel-2 digital numbers: round(reflectance * 10000), clipped to uint16 (NaN -> 0)."""
    dn = np.rint(np.nan_to_num(reflectance, nan=0.0).astype(np.float64) * 10000.0)
    return np.clip(dn, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _land_cover(igbp: np.ndarray) -> np.ndarray:
    """(4, H, W) uint8: IGBP, then the LCCS land cover, land use and surface hydrology codes."""
    igbp = igbp.astype(np.uint8)
    lccs = np.moveaxis(LCCS_FROM_IGBP[igbp], -1, 0)
    return np.concatenate([igbp[None], lccs]).astype(np.uint8)


def _write(path: Path, image: np.ndarray, grid: Grid, *, lc: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = _LC_OPTIONS if lc else {}
    with rasterio.open(
        path,
        "w",
        **_PROFILE,
        count=image.shape[0],
        dtype=image.dtype,
        crs=grid.crs,
        transform=grid.transform,
        **options,
    ) as dst:
        dst.write(np.ascontiguousarray(image))
