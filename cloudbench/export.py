"""Export a dataset as georeferenced GeoTIFFs, one per sample and array.

The files land in ``out/<array>/<sample id>.tif`` with the sample's CRS and transform, the
stored dtype and values unchanged, and the ESA band names as band descriptions. Each file is
written under a temporary name and renamed when complete, so an export killed at any moment is
re-run and only writes the files still missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from tqdm.auto import tqdm

from cloudbench.errors import CloudbenchError
from cloudbench.store import SPLITS, Store


def export_geotiff(
    root: str | Path,
    out: str | Path,
    split: str | None = None,
    arrays: Sequence[str] | None = None,
    bands: Sequence[str] | None = None,
    progress: bool = True,
) -> int:
    """Write ``out/<array>/<sample id>.tif`` for every sample (of ``split``) and array.

    ``arrays`` defaults to every array of the dataset. ``bands`` (ESA names, e.g. B04, B03,
    B02, VV) keeps only those bands, in the dataset's order, of the arrays that have them; the
    cloud mask is always whole. Files already there are complete (they are only ever renamed
    into place) and are skipped. Returns the number of files written.
    """
    dataset = Store(root)
    names = list(dataset.arrays) if arrays is None else list(arrays)
    unknown = [name for name in names if name not in dataset.arrays]
    if unknown:
        raise CloudbenchError(
            f"unknown array {', '.join(map(repr, unknown))}; allowed: {', '.join(dataset.arrays)}"
        )
    channels = _channels(dataset, names, bands)
    names = [name for name in names if channels[name]]  # arrays with none of the bands
    if split is not None and split not in SPLITS:
        raise CloudbenchError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")

    table = dataset.samples
    rows = np.arange(len(table)) if split is None else np.flatnonzero(table["split"] == split)
    out = Path(out)
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)

    written = 0
    with tqdm(total=len(rows) * len(names), desc="export", unit="file",
              disable=not progress) as bar:
        for name in names:
            info = dataset.arrays[name]
            data = dataset.array(name)
            keep = channels[name]
            for row in rows:
                sample = table.iloc[row]
                path = out / name / f"{sample['id']}.tif"
                if not path.exists():
                    write_geotiff(path, data[row][keep], sample["crs"], sample["transform"],
                                  [info.bands[i] for i in keep])
                    written += 1
                bar.update()
    return written


def _channels(
    dataset: Store, names: Sequence[str], bands: Sequence[str] | None
) -> dict[str, list[int]]:
    """The channels of each array to export."""
    if bands is None:
        return {name: list(range(dataset.arrays[name].shape[1])) for name in names}
    spectral = [n for n in names if n != "cloud_mask"]
    available = list(dict.fromkeys(b for n in spectral for b in dataset.arrays[n].bands))
    unknown = [b for b in bands if b not in available]
    if unknown:
        raise CloudbenchError(
            f"unknown band {', '.join(map(repr, unknown))}; available: {', '.join(available)}"
        )
    return {
        name: list(range(dataset.arrays[name].shape[1])) if name == "cloud_mask"
        else [i for i, b in enumerate(dataset.arrays[name].bands) if b in bands]
        for name in names
    }


def write_geotiff(
    path: Path,
    image: np.ndarray,
    crs: str,
    transform: Sequence[float],
    descriptions: Sequence[str] = (),
    compress: str | None = "deflate",
) -> None:
    """One (C, H, W) patch as a striped GeoTIFF without nodata, renamed into place when written.

    ``transform`` is the affine (a, b, c, d, e, f); ``descriptions`` the band names (set when
    there is one per band); ``compress`` a GDAL compression (with the matching predictor) or None.
    """
    count, height, width = image.shape
    options: dict[str, object] = {}
    if compress:
        floating = np.issubdtype(image.dtype, np.floating)
        options = {"compress": compress, "predictor": 3 if floating else 2}
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a killed run's leftover: GDAL would try to open it to delete it
    with rasterio.open(
        tmp, "w", driver="GTiff", width=width, height=height, count=count, dtype=image.dtype,
        crs=CRS.from_user_input(crs), transform=Affine(*transform), **options,
    ) as dst:
        dst.write(image)
        if len(descriptions) == count:
            dst.descriptions = tuple(descriptions)
    os.replace(tmp, path)
