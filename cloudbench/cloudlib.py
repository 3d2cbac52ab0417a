"""A library of real cloud masks cut from cloudy Sentinel-2 L1C images.

The SEN12MS Cloud builder puts *real* clouds onto clear SEN12MS patches. Its clouds come from a
mask library built once from a cloud source and then reused (and cited) by every build:

* a **SEN12MS-CR root** (its ``s2_cloudy`` patches; source id = the patch id, e.g.
  ``ROIs1868_summer_19_p30``), or
* any **folder of 13-band L1C GeoTIFFs** (``*.tif``, searched recursively; source id = the path
  relative to the folder, with ``/`` separators).

Images are 13-band uint16 digital numbers in ``S2_L1C_BANDS`` order on a 10 m grid, processed in
the order of their source ids (string order); ``max_images`` keeps the first N of them. Each image
is processed whole (s2cloudless needs every band of it in memory, about 100 bytes per pixel): the
sources are patches (SEN12MS-CR: 256 x 256), not whole 110 km tiles.

For every image:

1. **Reflectance** = DN / 10000. SEN12MS-CR was produced from processing baselines before 04.00,
   which have no radiometric offset; for newer products (baseline >= 04.00) subtract the 1000 DN
   offset before writing them into a source folder. A pixel whose 13 bands are all 0 is no data.
2. **Cloud mask**: :func:`cloudbench.clouds.cloud_mask` (s2cloudless, thin/thick split) at
   ``config.clouds.resolution``. At 10 m it runs on the image as is. At a coarser resolution (a
   multiple of 10 m; s2cloudless kernels are in processing pixels) the reflectance is averaged
   over f x f blocks (f = resolution / 10; no-data pixels left out; partial blocks at the right
   and bottom edges average what they hold), the mask is computed there and copied back to the
   10 m pixels (nearest). No-data pixels are always clear.
3. **Opacity**: :func:`cloudbench.clouds.opacity` (1 thick, 0 clear, (0, thin_alpha_max] thin).
4. **Windows**: the non-overlapping ``window`` x ``window`` windows, row-major from the top-left
   corner (partial edge windows are skipped); a window is kept when its cloud fraction (thin +
   thick pixels over all pixels) is at least ``min_cloud_fraction``. Its ``kind`` is ``thin``
   when it has more thin than thick pixels, else ``thick``.
5. **Cloud reflectance**: the per-band sum (of DN, in exact integer arithmetic) and count of the
   image's thick pixels. The library's cloud reflectance ``C`` is the per-band *mean* over all
   thick pixels of all images, divided by 10000. A mean, not a median: sums and counts combine
   exactly across images, chunks and workers in constant memory (and the result does not depend
   on how the work was split), whereas an exact median needs every thick pixel of the whole
   library (hundreds of millions of 13-band values) in one place.

The library folder::

    library.json      schema version, config, source, image count and ids, cloud reflectance,
                      window counts per kind, pixel counts, creation time; written last
    windows.parquet   one row per window: index, source_id, row, col, cloud_fraction,
                      thin_fraction, thick_fraction, kind; sorted by (source_id, row, col)
    masks.npy         (M, window, window) uint8, 0 clear / 1 thin / 2 thick
    alpha.npy         (M, window, window) float16 opacity

Building is parallel and resumable like the dataset build engine: images go in chunks (32 per
task) to local spawn processes or a Dask cluster; every chunk is written atomically to
``chunks/<n>.npz`` and skipped when already there; the finished library is assembled in image
order, so its bytes do not depend on workers, chunking or interruptions (only ``created`` in
``library.json`` differs between builds).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from numpy.lib.format import open_memmap
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rasterio.errors import RasterioIOError
from tqdm.auto import tqdm

from cloudbench.build import package_versions, run_tasks
from cloudbench.clouds import CLEAR, THICK, THIN, CloudMaskConfig, cloud_mask, opacity
from cloudbench.errors import CloudbenchError
from cloudbench.sources.base import S2_L1C_BANDS
from cloudbench.sources.sen12ms import SEN12MSCR, read_raster
from cloudbench.store import atomic_write_text, config_hash

__all__ = [
    "LibraryConfig",
    "MaskLibrary",
    "build_library",
    "cloud_images",
    "is_library",
]

SCHEMA_VERSION = 1
NATIVE_RESOLUTION = 10.0
"""Pixel size (metres) of the images of a cloud source."""
DN_SCALE = 10000.0
"""Reflectance = DN / DN_SCALE (no offset: processing baselines before 04.00)."""
CHUNK_SIZE = 32
"""Images per task."""
KINDS = ("thin", "thick")
WINDOW_COLUMNS = (
    "index", "source_id", "row", "col", "cloud_fraction", "thin_fraction", "thick_fraction",
    "kind",
)
META_FILE = "library.json"
WINDOWS_FILE = "windows.parquet"
ARRAY_DTYPES = {"masks": "uint8", "alpha": "float16"}


class LibraryConfig(BaseModel):
    """How a mask library is cut from a cloud source."""

    model_config = ConfigDict(extra="forbid")

    clouds: CloudMaskConfig = Field(
        default_factory=CloudMaskConfig, description="s2cloudless and thin/thick settings"
    )
    window: int = Field(64, ge=1, description="window side in 10 m pixels")
    min_cloud_fraction: float = Field(
        0.05, gt=0, le=1, description="windows with less cloud are not kept"
    )
    max_images: int | None = Field(
        None, ge=1, description="use only the first N images (by source id)"
    )

    @model_validator(mode="after")
    def _resolution_is_a_multiple_of_10_m(self) -> LibraryConfig:
        factor = self.clouds.resolution / NATIVE_RESOLUTION
        if factor < 1 - 1e-9 or not math.isclose(factor, round(factor), abs_tol=1e-6):
            raise ValueError(
                f"clouds.resolution must be a multiple of {NATIVE_RESOLUTION:g} m (the images' "
                f"pixel size), got {self.clouds.resolution:g}"
            )
        return self

    @property
    def factor(self) -> int:
        """Processing pixels are factor x factor image pixels."""
        return round(self.clouds.resolution / NATIVE_RESOLUTION)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def cloud_images(path: str | Path, *, limit: int | None = None) -> list[tuple[str, Path]]:
    """The (source id, file) pairs of a cloud source, sorted by source id.

    ``path`` is a SEN12MS-CR root (its ``s2_cloudy`` patches) or a folder searched recursively
    for ``*.tif``. ``limit`` keeps the first N. Every kept file's header is checked: 13 bands of
    uint16, 10 m pixels where the CRS is projected; anything else is a ``CloudbenchError``
    naming the file.
    """
    root = Path(path)
    if not root.exists():
        raise CloudbenchError(f"no cloud source at {root}")
    if not root.is_dir():
        raise CloudbenchError(
            f"cloud source {root} is not a folder: give a SEN12MS-CR root or a folder of 13-band "
            "L1C GeoTIFFs"
        )
    if SEN12MSCR.looks_like(root):
        archive = SEN12MSCR(root)
        images = sorted(
            (ref.id, archive.path(ref, "s2_cloudy")) for ref in archive.patches("s2_cloudy")
        )
        if not images:
            raise CloudbenchError(f"SEN12MS-CR root {root} holds no s2_cloudy patches")
    else:
        images = sorted(
            (p.relative_to(root).as_posix(), p) for p in root.rglob("*.tif") if p.is_file()
        )
        if not images:
            raise CloudbenchError(
                f"{root} holds no *.tif files (expected a SEN12MS-CR root or a folder of 13-band "
                "L1C GeoTIFFs)"
            )
    if limit is not None:
        images = images[:limit]
    for _, file in images:
        _check_header(file)
    return images


_EXPECTED = f"a {len(S2_L1C_BANDS)}-band uint16 Sentinel-2 L1C GeoTIFF ({', '.join(S2_L1C_BANDS)})"


def _check_header(path: Path) -> None:
    try:
        with rasterio.open(path) as src:
            count, dtypes, crs, res = src.count, set(src.dtypes), src.crs, src.res
    except RasterioIOError as err:
        raise CloudbenchError(f"{path} is not a readable GeoTIFF: {err}") from err
    if count != len(S2_L1C_BANDS) or dtypes != {"uint16"}:
        raise CloudbenchError(
            f"{path}: {count} bands of {'/'.join(sorted(dtypes))}; a cloud source image must be "
            f"{_EXPECTED}"
        )
    if crs is not None and crs.is_projected:
        if not all(math.isclose(abs(r), NATIVE_RESOLUTION, rel_tol=0.01) for r in res):
            raise CloudbenchError(
                f"{path}: {res[0]:g} x {res[1]:g} pixels; cloud source images must be on a "
                f"{NATIVE_RESOLUTION:g} m grid"
            )


def _read_dn(path: Path) -> np.ndarray:
    array = read_raster(path).array
    if array.ndim != 3 or array.shape[0] != len(S2_L1C_BANDS) or array.dtype != np.uint16:
        raise CloudbenchError(
            f"{path}: {array.shape[0]} bands of {array.dtype}; a cloud source image must be "
            f"{_EXPECTED}"
        )
    return array


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


def image_cloud_mask(dn: np.ndarray, config: CloudMaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cloud type (uint8 0/1/2) and probability (float32) of a 10 m L1C DN image (13, H, W).

    Computed at ``config.resolution`` (block average down, nearest back up; see the module
    docstring). Pixels whose 13 bands are all 0 (no data) are clear with probability 0.
    """
    factor = round(config.resolution / NATIVE_RESOLUTION)
    reflectance = dn.astype(np.float32) / np.float32(DN_SCALE)
    nodata = np.asarray(~dn.any(axis=0))
    if factor <= 1:
        kind, prob = cloud_mask(reflectance, config)
    else:
        coarse_kind, coarse_prob = cloud_mask(_block_mean(reflectance, nodata, factor), config)
        kind = _upsample(coarse_kind, factor, dn.shape[1:])
        prob = _upsample(coarse_prob, factor, dn.shape[1:])
    if nodata.any():
        kind[nodata] = CLEAR
        prob[nodata] = 0.0
    return kind, prob


def _block_mean(image: np.ndarray, nodata: np.ndarray, f: int) -> np.ndarray:
    """Mean of the valid pixels of each f x f block, float32 (C, ceil(H/f), ceil(W/f)); NaN where
    a block holds no valid pixel."""
    c, h, w = image.shape
    hc, wc = -(-h // f), -(-w // f)
    valid = np.zeros((hc * f, wc * f), np.float64)
    valid[:h, :w] = ~nodata
    counts = valid.reshape(hc, f, wc, f).sum(axis=(1, 3))
    mean = np.empty((c, hc, wc), np.float32)
    values = np.zeros((hc * f, wc * f), np.float64)
    for band in range(c):  # one band at a time: float64 sums without 13 float64 copies
        values[:h, :w] = np.where(nodata, 0.0, image[band])
        sums = values.reshape(hc, f, wc, f).sum(axis=(1, 3))
        mean[band] = np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0)
    return mean


def _upsample(array: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    h, w = shape
    return np.ascontiguousarray(np.repeat(np.repeat(array, f, axis=0), f, axis=1)[:h, :w])


@dataclass
class _ImageWindows:
    rows: np.ndarray  # int32 (m,)
    cols: np.ndarray  # int32 (m,)
    counts: np.ndarray  # int64 (m, 2): thin, thick pixels
    masks: np.ndarray  # uint8 (m, w, w)
    alpha: np.ndarray  # float16 (m, w, w)
    thick_sum: np.ndarray  # int64 (13,): DN summed over the image's thick pixels
    pixels: np.ndarray  # int64 (3,): valid, thin, thick


def _process_image(dn: np.ndarray, config: LibraryConfig) -> _ImageWindows:
    kind, prob = image_cloud_mask(dn, config.clouds)
    alpha = opacity(kind, prob, config.clouds).astype(np.float16)
    win = config.window
    h, w = kind.shape
    rows, cols, counts = [], [], []
    for row in range(0, h - win + 1, win):
        for col in range(0, w - win + 1, win):
            block = kind[row : row + win, col : col + win]
            thin = int(np.count_nonzero(block == THIN))
            thick = int(np.count_nonzero(block == THICK))
            if (thin + thick) / block.size >= config.min_cloud_fraction:
                rows.append(row)
                cols.append(col)
                counts.append((thin, thick))
    masks = np.stack([kind[r : r + win, c : c + win] for r, c in zip(rows, cols, strict=True)]) \
        if rows else np.zeros((0, win, win), np.uint8)
    alphas = np.stack([alpha[r : r + win, c : c + win] for r, c in zip(rows, cols, strict=True)]) \
        if rows else np.zeros((0, win, win), np.float16)
    thick_pixels = kind == THICK
    return _ImageWindows(
        rows=np.asarray(rows, np.int32),
        cols=np.asarray(cols, np.int32),
        counts=np.asarray(counts, np.int64).reshape(-1, 2),
        masks=masks.astype(np.uint8),
        alpha=alphas.astype(np.float16),
        thick_sum=dn[:, thick_pixels].sum(axis=1, dtype=np.int64),
        pixels=np.array(
            [dn.any(axis=0).sum(), (kind == THIN).sum(), thick_pixels.sum()], np.int64
        ),
    )


# --------------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chunk:
    """Images [start, start + len(ids)) of the sorted source: one task."""

    number: int
    start: int
    ids: tuple[str, ...]
    paths: tuple[str, ...]
    config: LibraryConfig
    out: str

    @property
    def path(self) -> Path:
        return _chunk_path(Path(self.out), self.number)


def _chunks_dir(out: Path) -> Path:
    return out / "chunks"


def _chunk_path(out: Path, number: int) -> Path:
    return _chunks_dir(out) / f"{number:06d}.npz"


def _chunk_done(chunk: _Chunk) -> bool:
    """The chunk file exists, is readable and holds exactly this chunk's images."""
    try:
        with np.load(chunk.path) as data:
            ids = tuple(str(s) for s in data["ids"])
            return ids == chunk.ids and int(data["start"]) == chunk.start
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False  # absent or damaged: build it (again)


def _build_chunk(chunk: _Chunk) -> int:
    """Process a chunk's images and write ``chunks/<n>.npz`` atomically; runs in a worker."""
    parts = [_process_image(_read_dn(Path(p)), chunk.config) for p in chunk.paths]
    win = chunk.config.window
    image = np.concatenate([np.full(len(p.rows), i, np.int32) for i, p in enumerate(parts)])
    arrays = {
        "ids": np.asarray(chunk.ids, dtype=str),
        "start": np.asarray(chunk.start, np.int64),
        "image": image.astype(np.int32),
        "rows": np.concatenate([p.rows for p in parts]).astype(np.int32),
        "cols": np.concatenate([p.cols for p in parts]).astype(np.int32),
        "counts": np.concatenate([p.counts for p in parts]).reshape(-1, 2).astype(np.int64),
        "masks": np.concatenate([p.masks for p in parts]).reshape(-1, win, win),
        "alpha": np.concatenate([p.alpha for p in parts]).reshape(-1, win, win),
        "thick_sum": np.stack([p.thick_sum for p in parts]).astype(np.int64),
        "pixels": np.stack([p.pixels for p in parts]).astype(np.int64),
    }
    final = chunk.path
    tmp = final.with_name(f".tmp-{uuid.uuid4().hex}-{final.name}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, final)
    return len(chunk.ids)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _identity(source: Path, config: LibraryConfig) -> dict[str, Any]:
    return {"config": config.model_dump(mode="json"), "source": str(source)}


def _start(out: Path, identity: dict[str, Any]) -> bool:
    """Prepare ``out``; False when the same library is already complete there."""
    digest = config_hash(identity)
    meta_path = out / META_FILE
    if meta_path.exists():
        try:
            done = json.loads(meta_path.read_text())
            done_digest = config_hash({"config": done["config"], "source": done["source"]})
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise CloudbenchError(f"{meta_path} is damaged; delete {out} and build again") from err
        if done_digest == digest:
            shutil.rmtree(_chunks_dir(out), ignore_errors=True)  # killed before the clean-up
            return False
        raise CloudbenchError(
            f"{out} already holds a cloud-mask library built from {done.get('source')} with "
            "another config or source; choose another output folder or delete it"
        )
    manifest = _chunks_dir(out) / "build.json"
    if manifest.exists():
        try:
            previous = json.loads(manifest.read_text()).get("hash")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            previous = None
        if previous != digest:
            raise CloudbenchError(
                f"{out} holds an unfinished cloud-mask library build with another config or "
                "source; re-run it with the same settings to resume, or choose another folder"
            )
        return True
    _chunks_dir(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest, json.dumps({**identity, "hash": digest}, indent=2))
    return True


def build_library(
    source: str | Path,
    out: str | Path,
    config: LibraryConfig | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    chunk_size: int = CHUNK_SIZE,
) -> Path:
    """Build (or resume building) the mask library of cloud source ``source`` into ``out``.

    ``workers`` local processes (default: all cores; 1 runs in this process) or the Dask
    scheduler at ``scheduler`` (its workers must see ``source`` and ``out``). ``chunk_size``
    images make one task; it does not change the result. Returns ``out``. A folder holding the
    same library (same config and source) is returned at once; one holding another library, or
    an unfinished build of one, is refused.
    """
    config = config or LibraryConfig()
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    source_path = Path(source).resolve()
    out = Path(out)
    identity = _identity(source_path, config)
    if (out / META_FILE).exists() and not _start(out, identity):
        return out  # the same library, complete (another one raised)
    images = cloud_images(source_path, limit=config.max_images)  # bad input: nothing written
    _start(out, identity)
    chunks = [
        _Chunk(
            number=n,
            start=start,
            ids=tuple(sid for sid, _ in images[start : start + chunk_size]),
            paths=tuple(str(p) for _, p in images[start : start + chunk_size]),
            config=config,
            out=str(out),
        )
        for n, start in enumerate(range(0, len(images), chunk_size))
    ]
    todo = [c for c in chunks if not _chunk_done(c)]
    done_images = sum(len(c.ids) for c in chunks) - sum(len(c.ids) for c in todo)
    with tqdm(total=len(images), initial=done_images, desc="cloud library", unit="image",
              disable=not progress) as bar:
        calls = [(chunk,) for chunk in todo]
        for count in run_tasks(_build_chunk, calls, workers=workers, scheduler=scheduler):
            bar.update(count)
    _finalize(out, chunks, identity, config)
    return out


def _finalize(
    out: Path, chunks: Sequence[_Chunk], identity: dict[str, Any], config: LibraryConfig
) -> None:
    """Assemble the chunks (in image order) into the library; ``library.json`` last."""
    missing = [c.path.name for c in chunks if not _chunk_done(c)]
    if missing:
        raise CloudbenchError(f"cannot finalize {out}: chunks {missing[:3]} are missing")
    for name in (*(f"{a}.npy" for a in ARRAY_DTYPES), WINDOWS_FILE, META_FILE):
        for leftover in out.glob(f".tmp-*-{name}"):  # from a build killed while finalizing
            leftover.unlink(missing_ok=True)
    win = config.window
    ids: list[str] = []
    frames = []
    thick_sum = np.zeros(len(S2_L1C_BANDS), np.int64)
    pixels = np.zeros(3, np.int64)
    for chunk in chunks:
        with np.load(chunk.path) as data:
            counts = data["counts"].reshape(-1, 2)
            frames.append(pd.DataFrame({
                "source_id": np.asarray(chunk.ids, dtype=object)[data["image"]],
                "row": data["rows"].astype(np.int32),
                "col": data["cols"].astype(np.int32),
                "thin": counts[:, 0],
                "thick": counts[:, 1],
            }))
            # Integer sums: exact, so independent of chunking and order.
            thick_sum += data["thick_sum"].sum(axis=0)
            pixels += data["pixels"].sum(axis=0)
        ids.extend(chunk.ids)
    if ids != sorted(ids) or len(set(ids)) != len(ids):
        raise CloudbenchError(f"source ids of {identity['source']} are not unique")
    table = pd.concat(frames, ignore_index=True)
    total = len(table)
    if total == 0:
        raise CloudbenchError(
            f"no window of the {len(ids)} images of {identity['source']} has a cloud "
            f"fraction >= {config.min_cloud_fraction}: the library would be empty"
        )
    n_thick = int(pixels[2])
    if n_thick == 0:
        raise CloudbenchError(
            f"the images of {identity['source']} hold no thick cloud: the cloud reflectance "
            "is undefined"
        )
    size = float(win * win)
    thin_fraction = table["thin"].to_numpy(np.float64) / size
    thick_fraction = table["thick"].to_numpy(np.float64) / size
    windows = pd.DataFrame({
        "index": np.arange(total, dtype=np.int64),
        "source_id": table["source_id"].astype(object),
        "row": table["row"],
        "col": table["col"],
        "cloud_fraction": (table["thin"].to_numpy() + table["thick"].to_numpy()) / size,
        "thin_fraction": thin_fraction,
        "thick_fraction": thick_fraction,
        "kind": np.where(table["thin"] > table["thick"], "thin", "thick").astype(object),
    })
    # Images are processed in source-id order and windows row-major: already sorted.
    order = np.lexsort((windows["col"], windows["row"], windows["source_id"].to_numpy(str)))
    if not np.array_equal(order, np.arange(total)):
        raise AssertionError("windows are not in (source_id, row, col) order")

    arrays = {}
    for name, dtype in ARRAY_DTYPES.items():
        tmp = out / f".tmp-{uuid.uuid4().hex}-{name}.npy"
        target = open_memmap(tmp, mode="w+", dtype=dtype, shape=(total, win, win))
        offset = 0
        for chunk in chunks:
            with np.load(chunk.path) as data:
                block = data[name]
            target[offset : offset + len(block)] = block
            offset += len(block)
        target.flush()
        del target
        os.replace(tmp, out / f"{name}.npy")
        arrays[name] = {"dtype": dtype, "shape": [total, win, win]}
    arrays["masks"]["values"] = "0 clear, 1 thin, 2 thick"
    arrays["alpha"]["values"] = "opacity: 0 clear, 1 thick, (0, thin_alpha_max] thin"

    tmp = out / f".tmp-{uuid.uuid4().hex}-{WINDOWS_FILE}"
    windows.to_parquet(tmp, index=False)
    os.replace(tmp, out / WINDOWS_FILE)

    reflectance = thick_sum.astype(np.float64) / n_thick / DN_SCALE
    kinds = windows["kind"].value_counts()
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": "cloud_mask_library",
        **identity,
        "num_images": len(ids),
        "num_windows": total,
        "counts": {kind: int(kinds.get(kind, 0)) for kind in KINDS},
        "pixels": {
            "valid": int(pixels[0]), "thin": int(pixels[1]), "thick": int(pixels[2]),
        },
        "bands": list(S2_L1C_BANDS),
        "cloud_reflectance": [float(v) for v in reflectance],
        "cloud_reflectance_definition": (
            "per-band mean L1C TOA reflectance (DN / 10000) over all thick pixels of all images"
        ),
        "arrays": arrays,
        "packages": package_versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source_ids": ids,
    }
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2))
    shutil.rmtree(_chunks_dir(out), ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def is_library(path: str | Path) -> bool:
    """Whether ``path`` is a finished mask library (it holds ``library.json``)."""
    return (Path(path) / META_FILE).is_file()


class MaskLibrary:
    """A finished mask library, validated on open. Arrays are memory-mapped, never loaded."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._mmaps: dict[str, np.ndarray] = {}
        if not self.path.is_dir():
            raise CloudbenchError(f"no cloud-mask library folder at {self.path}")
        meta_path = self.path / META_FILE
        if not meta_path.exists():
            hint = " (an unfinished build: re-run it)" if _chunks_dir(self.path).exists() else ""
            raise CloudbenchError(f"{meta_path} is missing: not a cloud-mask library{hint}")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CloudbenchError(f"{meta_path} is not valid JSON: {err}") from err
        if not isinstance(meta, dict):
            raise CloudbenchError(f"{meta_path} is not a JSON object")
        self.meta: dict[str, Any] = meta
        self._validate_meta(meta_path)
        for name in ARRAY_DTYPES:
            self._array(name)
        self.windows: pd.DataFrame = self._read_windows()

    def _validate_meta(self, path: Path) -> None:
        meta = self.meta
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CloudbenchError(
                f"{path}: schema version {version!r}, this cloudbench reads version "
                f"{SCHEMA_VERSION}; rebuild the library with this version"
            )
        for key in ("config", "source", "num_images", "num_windows", "source_ids",
                    "cloud_reflectance", "counts"):
            if key not in meta:
                raise CloudbenchError(f"{path}: field {key!r} is missing")
        try:
            self.config = LibraryConfig.model_validate(meta["config"])
        except ValidationError as err:
            raise CloudbenchError(f"{path}: invalid config: {err}") from err
        reflectance = np.asarray(meta["cloud_reflectance"], dtype=np.float64)
        if reflectance.shape != (len(S2_L1C_BANDS),) or not np.isfinite(reflectance).all():
            raise CloudbenchError(
                f"{path}: cloud_reflectance must be {len(S2_L1C_BANDS)} finite numbers"
            )
        ids = meta["source_ids"]
        if not isinstance(ids, list) or len(ids) != meta["num_images"]:
            raise CloudbenchError(f"{path}: source_ids do not match num_images")

    def _array(self, name: str) -> np.ndarray:
        if name in self._mmaps:
            return self._mmaps[name]
        path = self.path / f"{name}.npy"
        if not path.exists():
            raise CloudbenchError(f"{path} is missing")
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as err:
            raise CloudbenchError(f"{path} is not a readable .npy file: {err}") from err
        win = self.config.window
        shape = (int(self.meta["num_windows"]), win, win)
        if array.shape != shape or array.dtype != np.dtype(ARRAY_DTYPES[name]):
            raise CloudbenchError(
                f"{path}: {array.dtype}{list(array.shape)}, expected "
                f"{ARRAY_DTYPES[name]}{list(shape)}"
            )
        self._mmaps[name] = array
        return array

    def _read_windows(self) -> pd.DataFrame:
        path = self.path / WINDOWS_FILE
        if not path.exists():
            raise CloudbenchError(f"{path} is missing")
        try:
            table = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise CloudbenchError(f"{path} is not a readable Parquet file: {err}") from err
        missing = [c for c in WINDOW_COLUMNS if c not in table.columns]
        if missing:
            raise CloudbenchError(f"{path}: columns {missing} are missing")
        if len(table) != len(self):
            raise CloudbenchError(
                f"{path}: {len(table)} rows, {META_FILE} says {len(self)} windows"
            )
        if not np.array_equal(table["index"].to_numpy(), np.arange(len(table))):
            raise CloudbenchError(f"{path}: the index column is not 0, 1, 2, ...")
        unknown = set(table["kind"]) - set(KINDS)
        if unknown:
            raise CloudbenchError(f"{path}: unknown window kinds {sorted(unknown)}")
        return table

    def __len__(self) -> int:
        return int(self.meta["num_windows"])

    def __repr__(self) -> str:
        return (
            f"MaskLibrary({str(self.path)!r}: {len(self)} windows of {self.config.window} px "
            f"from {self.meta['num_images']} images)"
        )

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its data: worker processes re-open the files instead.
        return {**self.__dict__, "_mmaps": {}}

    @property
    def masks(self) -> np.ndarray:
        """(M, window, window) uint8, 0 clear / 1 thin / 2 thick, memory-mapped read-only."""
        return self._array("masks")

    @property
    def alpha(self) -> np.ndarray:
        """(M, window, window) float16 opacity, memory-mapped read-only."""
        return self._array("alpha")

    @property
    def cloud_reflectance(self) -> np.ndarray:
        """C: float32 (13,) mean TOA reflectance of thick cloud, S2_L1C_BANDS order."""
        return np.asarray(self.meta["cloud_reflectance"], dtype=np.float32)

    @property
    def source_ids(self) -> list[str]:
        return [str(s) for s in self.meta["source_ids"]]

    @property
    def source(self) -> str:
        return str(self.meta["source"])

    @property
    def counts(self) -> dict[str, int]:
        """Windows per kind (thin, thick)."""
        return {k: int(v) for k, v in self.meta["counts"].items()}
