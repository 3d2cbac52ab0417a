"""Local archives in their official layouts: SEN12MS, SEN12MS-CR, and folders of cloudy L1C.

SEN12MS (Schmitt et al. 2019)::

    ROIs<id>_<season>/<mod>_<scene>/ROIs<id>_<season>_<mod>_<scene>_p<patch>.tif

with ``mod`` in ``s1`` (2 bands, VV/VH dB, float32), ``s2`` (13 L1C bands, uint16) and ``lc``
(4 bands, uint8 in the released files: IGBP, LCCS land cover, land use, surface hydrology; GDAL
tags band 4 as alpha, which is *not* transparency here and is kept as data).

SEN12MS-CR (Ebel et al. 2020) puts the modality into the season folder::

    ROIs<id>_<season>_<mod>/<mod>_<scene>/ROIs<id>_<season>_<mod>_<scene>_p<patch>.tif

with ``mod`` in ``s1``, ``s2`` (cloud-free) and ``s2_cloudy`` (13 L1C bands, uint16).

Scene and patch folders are matched exactly (by regular expression on whole names), never by
substring, so ``s1_1`` never matches ``s1_146``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from cloudbench.errors import CloudbenchError

SEN12MS_MODALITIES = ("s1", "s2", "lc")
SEN12MS_CR_MODALITIES = ("s1", "s2", "s2_cloudy")
_SEASON_DIR = re.compile(r"^(ROIs\d+)_(spring|summer|fall|winter)$")
_CR_SEASON_DIR = re.compile(r"^(ROIs\d+)_(spring|summer|fall|winter)_(s1|s2|s2_cloudy)$")
_FILE = re.compile(
    r"^(ROIs\d+)_(spring|summer|fall|winter)_(s1|s2|s2_cloudy|lc)_(\d+)_p(\d+)\.tif$"
)


@dataclass(frozen=True, order=True)
class PatchRef:
    """One patch of a SEN12MS-style archive."""

    roi: str
    season: str
    scene: int
    patch: int

    @property
    def scene_id(self) -> str:
        """``ROIs1158_spring_1``: one scene (and one shard of a build)."""
        return f"{self.roi}_{self.season}_{self.scene}"

    @property
    def id(self) -> str:
        """``ROIs1158_spring_1_p30``."""
        return f"{self.scene_id}_p{self.patch}"


@dataclass(frozen=True)
class Raster:
    """A raster read from disk: (C, H, W) in its native dtype, with its georeferencing."""

    array: np.ndarray
    crs: CRS
    transform: Affine


def read_raster(path: Path, window: Window | None = None) -> Raster:
    """All bands of a GeoTIFF as stored (no masking: a band tagged alpha stays data).

    With ``window``, only that window is read, and the transform is the window's.
    """
    try:
        with rasterio.open(path) as src:
            transform = src.transform
            if window is not None:  # (rasterio's window_transform warns about Affine *)
                transform = transform @ Affine.translation(window.col_off, window.row_off)
            return Raster(src.read(window=window), src.crs, transform)
    except RasterioIOError as err:
        raise CloudbenchError(f"{path} is not a readable GeoTIFF: {err}") from err


def raster_size(path: Path) -> tuple[int, int]:
    """(height, width) of a GeoTIFF, from its header."""
    try:
        with rasterio.open(path) as src:
            return src.height, src.width
    except RasterioIOError as err:
        raise CloudbenchError(f"{path} is not a readable GeoTIFF: {err}") from err


class _PatchArchive:
    """Shared indexing of SEN12MS-style trees: walk the folders once, match names exactly."""

    modalities: tuple[str, ...]
    name: str
    layout: str
    season_dir: re.Pattern[str]

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CloudbenchError(f"no {self.name} folder at {self.root} (expected {self.layout})")
        self._files: dict[tuple[PatchRef, str], Path] = {}
        season_dirs = [p for p in self.root.iterdir() if self.season_dir.match(p.name)]
        for season_dir in sorted(p for p in season_dirs if p.is_dir()):
            for mod_dir in sorted(p for p in season_dir.iterdir() if p.is_dir()):
                for path in mod_dir.iterdir():
                    match = _FILE.match(path.name)
                    if not match:
                        continue
                    roi, season, mod, scene, patch = match.groups()
                    if mod_dir.name != f"{mod}_{scene}" or mod not in self.modalities:
                        continue
                    if season_dir.name != self._season_dir_name(roi, season, mod):
                        continue  # a file of another ROI / season (/ modality) misplaced here
                    ref = PatchRef(roi, season, int(scene), int(patch))
                    self._files[(ref, mod)] = path
        if not self._files:
            raise CloudbenchError(
                f"{self.root} holds no {self.name} patches (expected {self.layout})"
            )

    @staticmethod
    def _season_dir_name(roi: str, season: str, modality: str) -> str:
        return f"{roi}_{season}"

    def patches(self, *modalities: str) -> list[PatchRef]:
        """Sorted patches that have every one of ``modalities`` (default: all of them)."""
        wanted = modalities or self.modalities
        unknown = set(wanted) - set(self.modalities)
        if unknown:
            raise CloudbenchError(
                f"unknown modality {sorted(unknown)}; {self.name} has {', '.join(self.modalities)}"
            )
        refs = {ref for ref, _ in self._files}
        return sorted(r for r in refs if all((r, m) in self._files for m in wanted))

    def incomplete(self, *modalities: str) -> list[PatchRef]:
        """Sorted patches that lack at least one of ``modalities``."""
        complete = set(self.patches(*modalities))
        return sorted({ref for ref, _ in self._files} - complete)

    def scenes(self, *modalities: str) -> tuple[dict[str, list[tuple[Any, ...]]],
                                                dict[str, int]]:
        """Per scene id, its complete patches as ``(ref, path of each of modalities…)``, and the
        number of its incomplete ones; every scene with any file is a key of the first."""
        scenes: dict[str, list[tuple[Any, ...]]] = {}
        for ref in self.patches(*modalities):
            paths = tuple(self.path(ref, m) for m in modalities or self.modalities)
            scenes.setdefault(ref.scene_id, []).append((ref, *paths))
        missing: dict[str, int] = {}
        for ref in self.incomplete(*modalities):
            missing[ref.scene_id] = missing.get(ref.scene_id, 0) + 1
            scenes.setdefault(ref.scene_id, [])
        return scenes, missing

    def path(self, ref: PatchRef, modality: str) -> Path:
        try:
            return self._files[(ref, modality)]
        except KeyError:
            raise CloudbenchError(f"{self.root} has no {modality} file for {ref.id}") from None

    def read(self, ref: PatchRef, modality: str) -> Raster:
        return read_raster(self.path(ref, modality))


class SEN12MS(_PatchArchive):
    """A SEN12MS root in its official layout."""

    modalities = SEN12MS_MODALITIES
    name = "SEN12MS"
    layout = "ROIs<id>_<season>/{s1,s2,lc}_<scene>/ROIs<id>_<season>_<mod>_<scene>_p<n>.tif"
    season_dir = _SEASON_DIR


class SEN12MSCR(_PatchArchive):
    """A SEN12MS-CR root in its official layout."""

    modalities = SEN12MS_CR_MODALITIES
    name = "SEN12MS-CR"
    layout = (
        "ROIs<id>_<season>_{s1,s2,s2_cloudy}/<mod>_<scene>/ROIs<id>_<season>_<mod>_<scene>_p<n>.tif"
    )
    season_dir = _CR_SEASON_DIR

    @staticmethod
    def _season_dir_name(roi: str, season: str, modality: str) -> str:
        return f"{roi}_{season}_{modality}"

    @staticmethod
    def looks_like(root: Path) -> bool:
        return root.is_dir() and any(
            _CR_SEASON_DIR.match(p.name) for p in root.iterdir() if p.is_dir()
        )
