"""BigEarthNet v1.0 and v2.0 (reBEN) in their original on-disk layouts.

BigEarthNet v1.0 (Sumbul et al. 2019), as the official archives unpack::

    <root>/BigEarthNet-v1.0/<patch>/<patch>_B01.tif ... _B12.tif, _B8A.tif,
                                    <patch>_labels_metadata.json
    <root>/BigEarthNet-S1-v1.0/<s1 patch>/<s1 patch>_VV.tif, _VH.tif, _labels_metadata.json
    <root>/patches_with_cloud_and_shadow.csv.bz2, patches_with_seasonal_snow.csv.bz2
    <root>/train.csv, val.csv, test.csv           (optional, the 19-class models' splits)

The S2 and S1 folders are found by content, not by name: the root subfolder whose patch folders
hold ``<patch>_B02.tif`` holds S2, the one whose patch folders hold ``<patch>_VV.tif`` holds S1.
An S2 JSON gives the CORINE level-3 labels (the 43 of v1), the patch's upper-left corner and
CRS (WKT), the L1C product it was cut from (``tile_source``) and its sensing time; an S1 JSON
names its S2 partner (``corresponding_s2_patch``) and its sensing time. The lists are one
patch name per line (CRLF in the released files, no header). A patch on both exclusion lists
counts as ``cloud_or_shadow``.

BigEarthNet v2.0 (reBEN, Clasen et al. 2024), as TorchGeo's ``BigEarthNetV2`` reads it::

    <root>/metadata.parquet
    <root>/BigEarthNet-S2/<product>/<patch_id>/<patch_id>_B01.tif ...
    <root>/BigEarthNet-S1/<s1 product>/<s1_name>/<s1_name>_VV.tif, _VH.tif

where ``<product>`` is ``patch_id`` without its last two ``_`` parts and ``<s1 product>`` is
``s1_name`` without its last three. The metadata gives 19-class labels, the split
(``validation`` is ``val`` here) and the exclusion flags; sensing times come from the names, and
each patch's grid from its B02 header, since v2 has no coordinates.

Labels become sorted indices of the 19-class nomenclature (``catalogs/classes/
bigearthnet19.yaml``): v1 CORINE names map through the classes' ``clc`` lists, the 11 CORINE
names the nomenclature drops (:data:`DROPPED_CLC`) are dropped, and 19-class names (both
spellings of 'Transitional woodland, shrub') are taken as they are. Any other name is an error.

Cost of :func:`read_index` (measured on synthetic fixtures, warm page cache, one core): v1
reads two small JSON files per patch (its S2 and its S1 JSON), about 75 us a patch, so about a
minute for the full 590,326 patches, and as long as 1.2 million small reads take on a cold or
network disk; v2 opens one GeoTIFF header per patch, about 0.6 ms, so about 6 minutes for its
549,488 patches. Index once and keep the result. :func:`read_patch` opens 14 files (about 11 ms).
"""

from __future__ import annotations

import bz2
import datetime as dt
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioIOError

from cloudbench.config import load_yaml
from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import Grid

__all__ = [
    "DROPPED_CLC",
    "EXCLUSION_FILES",
    "GROUP_RESOLUTION",
    "PATCH_SIZE",
    "S1_BANDS",
    "S2_GROUPS",
    "SPLIT_FILES",
    "Patch",
    "group_grids",
    "nomenclature",
    "read_index",
    "read_name_list",
    "read_patch",
]

S2_GROUPS: dict[str, tuple[str, ...]] = {
    "s2": ("B02", "B03", "B04", "B08"),
    "s2_20m": ("B05", "B06", "B07", "B8A", "B11", "B12"),
    "s2_60m": ("B01", "B09"),
}
"""The S2 L2A bands of a patch by native resolution (the store's array names)."""
GROUP_RESOLUTION: dict[str, float] = {"s2": 10.0, "s2_20m": 20.0, "s2_60m": 60.0}
PATCH_SIZE = 120
"""Pixels per side of a patch at 10 m."""
S1_BANDS: tuple[str, ...] = ("VV", "VH")
DROPPED_CLC: tuple[str, ...] = (
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Bare rock",
    "Burnt areas",
    "Intertidal flats",
)
"""The v1 CORINE level-3 labels that no 19-class class takes (the other 32 of the 43 are in
``bigearthnet19.yaml``)."""

SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.csv",), "val": ("val.csv",), "test": ("test.csv",),
}
"""Split -> its list file in a v1 root."""
EXCLUSION_FILES: dict[str, tuple[str, ...]] = {
    "cloud_or_shadow": (
        "patches_with_cloud_and_shadow.csv.bz2", "patches_with_cloud_and_shadow.csv"
    ),
    "seasonal_snow": ("patches_with_seasonal_snow.csv.bz2", "patches_with_seasonal_snow.csv"),
}
"""Exclusion reason -> its list file in a v1 root (as released, or unpacked)."""

_V1_LAYOUT = "<root>/<S2 folder>/<patch>/<patch>_B02.tif and <root>/<S1 folder>/..._VV.tif"
_V2_METADATA = "metadata.parquet"
_V2_COLUMNS = (
    "patch_id", "labels", "split", "s1_name", "contains_seasonal_snow", "contains_cloud_or_shadow",
)
_V2_SPLITS = {"train": "train", "validation": "val", "test": "test"}
_JSON = "_labels_metadata.json"
_TILE = re.compile(r"_T(\d{2}[A-Z]{3})(?:_|$)")
_NAME_TIME = "%Y%m%dT%H%M%S"


@dataclass(frozen=True)
class Patch:
    """One BigEarthNet patch: where its files are and what the metadata says about it."""

    name: str
    """S2 patch name (v1 folder name, v2 ``patch_id``); the sample id."""
    s1_name: str
    product: str
    """The S2 product the patch was cut from (v1: ``tile_source`` without ``.SAFE``; v2: the
    product folder)."""
    tile: str
    """MGRS tile, e.g. '33UUP'."""
    s2_time: dt.datetime
    s1_time: dt.datetime
    grid: Grid
    """The 10 m 120 x 120 grid."""
    labels: tuple[int, ...]
    """Sorted 19-class indices (possibly empty)."""
    split: str | None
    """'train', 'val', 'test', or None (in no official split)."""
    excluded: str | None
    """'cloud_or_shadow', 'seasonal_snow' (official lists / v2 flags), or None."""
    s2_dir: Path
    s1_dir: Path


def read_index(
    root: str | Path, *, version: Literal["auto", "v1", "v2"] = "auto"
) -> list[Patch]:
    """Every S2 patch under ``root`` with its S1 partner, sorted by (product, name).

    ``auto`` reads v2 when ``root/metadata.parquet`` exists, v1 otherwise.
    """
    root = Path(root)
    if not root.is_dir():
        raise CloudbenchError(f"no BigEarthNet folder at {root}")
    if version == "auto":
        version = "v2" if (root / _V2_METADATA).is_file() else "v1"
    if version == "v1":
        patches = _index_v1(root)
    elif version == "v2":
        patches = _index_v2(root)
    else:
        raise CloudbenchError(f"unknown BigEarthNet version {version!r}; use auto, v1 or v2")
    return sorted(patches, key=lambda p: (p.product, p.name))


def group_grids(patch: Patch) -> dict[str, Grid]:
    """The grid of each S2 group: 10 m 120x120, 20 m 60x60, 60 m 20x20, one footprint."""
    return {group: patch.grid.rescaled(res) for group, res in GROUP_RESOLUTION.items()}


def read_patch(
    patch: Patch, arrays: Sequence[str] = ("s2", "s2_20m", "s2_60m", "s1")
) -> dict[str, np.ndarray]:
    """The patch's pixels as stored: ``s2`` uint16 (4, 120, 120), ``s2_20m`` uint16 (6, 60, 60),
    ``s2_60m`` uint16 (2, 20, 20) in :data:`S2_GROUPS` order, ``s1`` float32 (2, 120, 120) dB;
    only the ``arrays`` asked for.

    Every file must lie exactly on its group's grid (CRS, transform, size) and have the dtype
    above; anything else is an error naming the file.
    """
    out = {}
    grids = group_grids(patch)
    for group in arrays:
        if group == "s1":
            paths = [patch.s1_dir / f"{patch.s1_name}_{band}.tif" for band in S1_BANDS]
            out["s1"] = _read_bands(paths, patch.grid, np.dtype(np.float32))
        else:
            paths = [patch.s2_dir / f"{patch.name}_{band}.tif" for band in S2_GROUPS[group]]
            out[group] = _read_bands(paths, grids[group], np.dtype(np.uint16))
    return out


@cache
def nomenclature() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The 19 classes in index order: (class name, the CORINE names that map into it)."""
    data = load_yaml("classes", "bigearthnet19.yaml")
    return tuple((c["name"], tuple(c.get("clc", ()))) for c in data["classes"])


def read_name_list(path: Path) -> list[str]:
    """The patch names of a list file (one per line; ``.bz2`` decompressed; blanks skipped)."""
    try:
        data = bz2.decompress(path.read_bytes()) if path.suffix == ".bz2" else path.read_bytes()
        text = data.decode()
    except (OSError, ValueError) as err:
        raise CloudbenchError(f"{path} is not a readable list of patch names: {err}") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- v1


def _index_v1(root: Path) -> list[Patch]:
    s2_root, s1_root = _find_folder(root, "B02"), _find_folder(root, "VV")
    partners: dict[str, tuple[str, dt.datetime]] = {}
    for s1_name in _patch_names(s1_root):
        path = s1_root / s1_name / f"{s1_name}{_JSON}"
        meta = _read_json(path)
        s2_name = str(_field(meta, "corresponding_s2_patch", path))
        if s2_name in partners:
            raise CloudbenchError(
                f"{s1_root}: both {partners[s2_name][0]} and {s1_name} name {s2_name} as their "
                "S2 patch"
            )
        partners[s2_name] = (s1_name, _parse_time(_field(meta, "acquisition_time", path), path))

    split_of = _v1_lists(root, SPLIT_FILES)
    excluded_of = _v1_lists(root, EXCLUSION_FILES)
    crs_of: dict[str, CRS] = {}
    patches = []
    for name in _patch_names(s2_root):
        path = s2_root / name / f"{name}{_JSON}"
        meta = _read_json(path)
        if name not in partners:
            raise CloudbenchError(f"S2 patch {name} has no S1 partner in {s1_root}")
        s1_name, s1_time = partners[name]
        product = str(_field(meta, "tile_source", path)).removesuffix(".SAFE")
        patches.append(
            Patch(
                name=name,
                s1_name=s1_name,
                product=product,
                tile=_tile(product, path),
                s2_time=_parse_time(_field(meta, "acquisition_date", path), path),
                s1_time=s1_time,
                grid=_v1_grid(meta, path, crs_of),
                labels=_labels(_field(meta, "labels", path), name),
                split=split_of.get(name),
                excluded=excluded_of.get(name),
                s2_dir=s2_root / name,
                s1_dir=s1_root / s1_name,
            )
        )
    return patches


def _find_folder(root: Path, band: str) -> Path:
    """The one subfolder of ``root`` whose (first) patch folder holds ``<patch>_<band>.tif``."""
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        first = next(_patch_names(sub), None)
        if first is not None and (sub / first / f"{first}_{band}.tif").is_file():
            found.append(sub)
    what = "S2" if band == "B02" else "S1"
    if not found:
        raise CloudbenchError(
            f"{root} holds neither BigEarthNet v2.0 ({_V2_METADATA}) nor a v1.0 folder of {what} "
            f"patches (expected {_V1_LAYOUT})"
        )
    if len(found) > 1:
        raise CloudbenchError(
            f"{root} holds several folders of BigEarthNet {what} patches "
            f"({', '.join(p.name for p in found)}); point to a root with one"
        )
    return found[0]


def _patch_names(folder: Path) -> Iterator[str]:
    """Names of the subfolders of ``folder``, lazily, in directory order."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                yield entry.name


def _v1_lists(root: Path, files: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Patch name -> the first key of ``files`` whose list names it (absent lists skipped)."""
    out: dict[str, str] = {}
    for key, candidates in files.items():
        path = next((root / f for f in candidates if (root / f).is_file()), None)
        for name in read_name_list(path) if path is not None else ():
            out.setdefault(name, key)
    return out


def _v1_grid(meta: dict[str, Any], path: Path, crs_of: dict[str, CRS]) -> Grid:
    coords = _field(meta, "coordinates", path)
    wkt = str(_field(meta, "projection", path))
    if wkt not in crs_of:
        try:
            crs_of[wkt] = CRS.from_wkt(wkt)
        except CRSError as err:
            raise CloudbenchError(f"{path}: projection is not a valid WKT CRS: {err}") from err
    try:
        ulx, uly, lrx, lry = (float(coords[key]) for key in ("ulx", "uly", "lrx", "lry"))
    except (KeyError, TypeError, ValueError) as err:
        raise CloudbenchError(f"{path}: coordinates need numbers ulx, uly, lrx, lry") from err
    side = PATCH_SIZE * GROUP_RESOLUTION["s2"]
    if lrx - ulx != side or uly - lry != side:
        raise CloudbenchError(
            f"{path}: coordinates {coords} do not span {side:g} m, a {PATCH_SIZE}-pixel 10 m patch"
        )
    return Grid.from_bounds(crs_of[wkt], ulx, uly, PATCH_SIZE, PATCH_SIZE, GROUP_RESOLUTION["s2"])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise CloudbenchError(f"{path} is not a readable JSON file: {err}") from err
    if not isinstance(meta, dict):
        raise CloudbenchError(f"{path} is not a JSON object")
    return meta


def _field(meta: dict[str, Any], key: str, path: Path) -> Any:
    try:
        return meta[key]
    except KeyError:
        raise CloudbenchError(f"{path} has no {key!r}") from None


# --------------------------------------------------------------------------- v2


def _index_v2(root: Path) -> list[Patch]:
    path = root / _V2_METADATA
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise CloudbenchError(f"{path} is not a readable Parquet file: {err}") from err
    missing = [c for c in _V2_COLUMNS if c not in table.columns]
    if missing:
        raise CloudbenchError(f"{path} lacks the column(s) {', '.join(missing)}")
    return [_v2_patch(root, path, row) for row in table[list(_V2_COLUMNS)].itertuples(index=False)]


def _v2_patch(root: Path, path: Path, row: Any) -> Patch:
    """One row of ``metadata.parquet`` (``path``) as a patch."""
    name, s1_name = str(row.patch_id), str(row.s1_name)
    product = "_".join(name.split("_")[:-2])
    s2_dir = root / "BigEarthNet-S2" / product / name
    s1_dir = root / "BigEarthNet-S1" / "_".join(s1_name.split("_")[:-3]) / s1_name
    if not s1_dir.is_dir():
        raise CloudbenchError(f"S2 patch {name} has no S1 partner: no folder {s1_dir}")
    if pd.isna(row.split):
        split = None
    elif row.split in _V2_SPLITS:
        split = _V2_SPLITS[row.split]
    else:
        raise CloudbenchError(
            f"{path}: patch {name} has split {row.split!r}; expected one of "
            f"{', '.join(_V2_SPLITS)} (or none)"
        )
    excluded = (
        "cloud_or_shadow" if row.contains_cloud_or_shadow
        else "seasonal_snow" if row.contains_seasonal_snow
        else None
    )
    return Patch(
        name=name,
        s1_name=s1_name,
        product=product,
        tile=_tile(product, path),
        s2_time=_name_time(name, 2, path),
        s1_time=_name_time(s1_name, 4, path),
        grid=_header_grid(s2_dir / f"{name}_B02.tif"),
        labels=_labels(row.labels, name),
        split=split,
        excluded=excluded,
        s2_dir=s2_dir,
        s1_dir=s1_dir,
    )


def _name_time(name: str, part: int, path: Path) -> dt.datetime:
    """The UTC sensing time in ``_``-part ``part`` of a product or patch name."""
    parts = name.split("_")
    try:
        return dt.datetime.strptime(parts[part], _NAME_TIME).replace(tzinfo=dt.UTC)
    except (IndexError, ValueError):
        raise CloudbenchError(
            f"{path}: {name!r} has no sensing time (YYYYMMDDTHHMMSS) as its part {part + 1}"
        ) from None


def _header_grid(path: Path) -> Grid:
    try:
        with rasterio.open(path) as src:
            grid = Grid(src.crs, src.transform, src.width, src.height)
    except RasterioIOError as err:
        raise CloudbenchError(f"{path} is not a readable GeoTIFF: {err}") from err
    res = GROUP_RESOLUTION["s2"]
    t = grid.transform
    if (grid.width, grid.height) != (PATCH_SIZE, PATCH_SIZE) or (t.a, t.b, t.d, t.e) != (
        res, 0, 0, -res
    ):
        raise CloudbenchError(
            f"{path}: {grid.width}x{grid.height} pixels, transform {tuple(t)[:6]}; expected a "
            f"north-up {PATCH_SIZE}x{PATCH_SIZE} grid of {res:g} m pixels"
        )
    return grid


# --------------------------------------------------------------------------- shared


def _tile(product: str, path: Path) -> str:
    match = _TILE.search(product)
    if match is None:
        raise CloudbenchError(f"{path}: product {product!r} names no MGRS tile (_T<tile>)")
    return match.group(1)


def _parse_time(text: Any, path: Path) -> dt.datetime:
    """A UTC time from '2017-06-13 10:10:31' or '2017-06-13T16:50:43'."""
    try:
        when = dt.datetime.fromisoformat(str(text))
    except ValueError:
        raise CloudbenchError(f"{path}: {text!r} is not a date and time") from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


@cache
def _label_lookup() -> dict[str, int | None]:
    """Every accepted label name -> 19-class index, or None for the dropped CORINE names."""
    lookup: dict[str, int | None] = dict.fromkeys(DROPPED_CLC)
    for index, (name, clc) in enumerate(nomenclature()):
        lookup[name] = index
        lookup.update(dict.fromkeys(clc, index))
    return lookup


def _labels(names: Any, patch: str) -> tuple[int, ...]:
    lookup = _label_lookup()
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise CloudbenchError(f"patch {patch}: labels must be a list of names, got {names!r}")
    indices = set()
    for name in names:
        if name not in lookup:
            raise CloudbenchError(
                f"patch {patch}: unknown label {name!r} (neither a BigEarthNet CORINE name nor a "
                "19-class name)"
            )
        index = lookup[name]
        if index is not None:
            indices.add(index)
    return tuple(sorted(indices))


def _read_bands(paths: Sequence[Path], grid: Grid, dtype: np.dtype) -> np.ndarray:
    """One band from each single-band file, stacked; each file must lie exactly on ``grid``."""
    out = np.empty((len(paths), grid.height, grid.width), dtype)
    for i, path in enumerate(paths):
        try:
            with rasterio.open(path) as src:
                found = Grid(src.crs, src.transform, src.width, src.height)
                if (
                    found.crs != grid.crs
                    or (found.width, found.height) != (grid.width, grid.height)
                    or not found.transform.almost_equals(grid.transform, precision=1e-6)
                ):
                    raise CloudbenchError(
                        f"{path}: CRS {found.crs}, {found.width}x{found.height} pixels, transform "
                        f"{tuple(found.transform)[:6]} instead of the patch grid's CRS {grid.crs}, "
                        f"{grid.width}x{grid.height} pixels, transform {tuple(grid.transform)[:6]}"
                    )
                if np.dtype(src.dtypes[0]) != dtype:
                    raise CloudbenchError(f"{path}: dtype {src.dtypes[0]}, expected {dtype}")
                out[i] = src.read(1)
        except RasterioIOError as err:
            raise CloudbenchError(f"{path} is not a readable GeoTIFF: {err}") from err
    return out
