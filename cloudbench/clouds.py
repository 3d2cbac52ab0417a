"""Cloud masks with s2cloudless, and the thin/thick classification every builder shares.

s2cloudless gives a per-pixel cloud probability from 10 of the 13 Sentinel-2 L1C bands (top of
atmosphere reflectance). Its mask is that probability averaged over a disc (``average_over``
pixels), thresholded (``threshold``) and dilated (``dilation_size`` pixels); both kernels are in
pixels of the *processing* resolution, which is why that resolution is a setting of its own.

Cloud type: a masked pixel is *thick* (opaque) where its own probability reaches
``thick_threshold`` and *thin* (semi-transparent) otherwise. The mask is 0 clear, 1 thin, 2 thick.

Opacity (for putting real cloud masks on clear images): thick pixels have alpha = 1; a thin
pixel's alpha grows linearly with its probability from ``threshold`` to ``thick_threshold``, up to
``thin_alpha_max``, and never drops below 5% of it (pixels the dilation added, with probabilities
under the threshold, are faint but present). Compositing is, per band,
``I = I_clear * (1 - alpha) + alpha * C`` with ``C`` the cloud's reflectance in that band.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rasterio.enums import Resampling
from rasterio.warp import reproject
from s2cloudless import S2PixelCloudDetector

from cloudbench.sources.base import S2_L1C_BANDS, Acquisition, Collection, Grid, Source

CLEAR, THIN, THICK = 0, 1, 2


class CloudMaskConfig(BaseModel):
    """s2cloudless settings and the thin/thick split."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.4, gt=0, lt=1, description="s2cloudless mask threshold")
    average_over: int = Field(4, ge=0, description="averaging disc radius, processing pixels")
    dilation_size: int = Field(2, ge=0, description="dilation disc radius, processing pixels")
    thick_threshold: float = Field(0.7, gt=0, le=1, description="probability for thick cloud")
    resolution: float = Field(10.0, gt=0, description="processing resolution in metres")
    thin_alpha_max: float = Field(0.7, gt=0, lt=1, description="opacity of the densest thin cloud")


@cache
def _detector(threshold: float, average_over: int, dilation_size: int) -> S2PixelCloudDetector:
    return S2PixelCloudDetector(
        threshold=threshold,
        all_bands=True,
        average_over=average_over or None,
        dilation_size=dilation_size or None,
    )


def cloud_mask(l1c: np.ndarray, config: CloudMaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cloud type (uint8 H x W: 0/1/2) and probability (float32) of a 13-band L1C reflectance image.

    ``l1c`` is (13, H, W) in S2_L1C_BANDS order. NaN (no data) pixels are treated as clear.
    """
    if l1c.ndim != 3 or l1c.shape[0] != len(S2_L1C_BANDS):
        raise ValueError(f"expected (13, H, W) L1C reflectance, got shape {l1c.shape}")
    data = np.nan_to_num(np.moveaxis(l1c, 0, -1), nan=0.0)[None].astype(np.float32)
    detector = _detector(config.threshold, config.average_over, config.dilation_size)
    prob = detector.get_cloud_probability_maps(data)
    cloudy = detector.get_mask_from_prob(prob)[0].astype(bool)
    prob = prob[0]
    kind = np.where(cloudy, np.where(prob >= config.thick_threshold, THICK, THIN), CLEAR)
    return kind.astype(np.uint8), prob


def mask_acquisition(
    source: Source, acquisition: Acquisition, grid: Grid, config: CloudMaskConfig
) -> np.ndarray:
    """The cloud-type mask of an S2 acquisition on ``grid``, computed at ``config.resolution``.

    ``acquisition`` may be the L1C or L2A product: s2cloudless always reads the L1C bands of the
    same sensing (the caller passes the L1C acquisition).
    """
    if acquisition.collection is not Collection.S2_L1C:
        raise ValueError(f"s2cloudless needs an L1C acquisition, got {acquisition.collection}")
    work = grid if np.isclose(grid.resolution, config.resolution) else grid.rescaled(
        config.resolution
    )
    kind, _ = cloud_mask(source.read(acquisition, work, S2_L1C_BANDS), config)
    if work is grid:
        return kind
    out = np.zeros((grid.height, grid.width), dtype=np.uint8)
    reproject(
        kind, out,
        src_transform=work.transform, src_crs=work.crs,
        dst_transform=grid.transform, dst_crs=grid.crs,
        resampling=Resampling.nearest,
    )
    return out


THIN_ALPHA_FLOOR = 0.05
"""The faintest thin cloud, as a share of ``thin_alpha_max``."""


def opacity(kind: np.ndarray, prob: np.ndarray, config: CloudMaskConfig) -> np.ndarray:
    """Cloud opacity alpha (float32, same shape): 0 clear, 1 thick, (0, thin_alpha_max] thin."""
    span = max(config.thick_threshold - config.threshold, 1e-6)
    ramp = np.clip((prob - config.threshold) / span, THIN_ALPHA_FLOOR, 1.0)
    alpha = np.where(kind == THICK, 1.0, np.where(kind == THIN, config.thin_alpha_max * ramp, 0.0))
    return alpha.astype(np.float32)


def composite(clear: np.ndarray, alpha: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Put a cloud on a clear image: ``clear * (1 - alpha) + alpha * cloud`` per band.

    ``clear`` is (C, H, W) or (N, C, H, W), ``alpha`` (H, W) or (N, H, W), ``cloud`` (C,) in the
    units of ``clear``. Pixels with alpha = 0 keep their clear values exactly; alpha = 1 gives C.
    """
    clear = np.asarray(clear, dtype=np.float32)
    a = np.asarray(alpha, dtype=np.float32)[..., None, :, :]
    c = np.asarray(cloud, dtype=np.float32)[:, None, None]
    return np.where(a > 0, clear * (1 - a) + a * c, clear)


SCL_CLOUD = (8, 9, 10)
"""Sen2Cor scene classes counted as cloud: medium and high probability, thin cirrus (the classes
of ESA's ``CLOUDY_PIXEL_PERCENTAGE``)."""
SCL_SHADOW = (3,)
"""Sen2Cor's cloud shadows class."""
SCL_CIRRUS = (10,)
"""Sen2Cor's thin cirrus class."""


def scene_shares(scl: np.ndarray) -> dict[str, float]:
    """Percent of the valid pixels (SCL != 0, no data) of a Sen2Cor scene classification that
    are cloud (classes 8, 9, 10), cloud shadow (3) and thin cirrus (10); NaN each without a valid
    pixel."""
    valid = scl != 0
    n = int(valid.sum())
    if n == 0:
        return {"cloud": float("nan"), "shadow": float("nan"), "cirrus": float("nan")}
    return {name: 100.0 * float(np.isin(scl[valid], classes).sum()) / n
            for name, classes in (("cloud", SCL_CLOUD), ("shadow", SCL_SHADOW),
                                  ("cirrus", SCL_CIRRUS))}
