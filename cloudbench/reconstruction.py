"""Cloud-removal metrics: reconstructed optical images against their cloud-free target.

Images are (B, C, H, W) floating-point tensors (or arrays) on the papers' scale, S2 digital
numbers clipped to [0, 10000] and divided by 10000, so the data range is 1. Everything is
vectorised torch on the prediction's device, accumulated in float64, chunked over images.

Every metric but UCE/AUCE is computed **per image, then averaged over images**, as UnCRtainTS
does (``model/src/learning/metrics.py: img_metrics`` per sample, ``avg_img_metrics`` a running
mean). With a cloud mask (0 clear, 1 thin, 2 thick; usually the mask of the cloudy *input*),
each metric is also reported per stratum of pixels, restricted per image to the stratum's
pixels and averaged over the images having at least one such pixel. See ``docs/metrics.md``,
"Pixel metrics", for the definitions and where they depart from UnCRtainTS's code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from cloudbench.errors import CloudbenchError
from cloudbench.metrics import _bootstrap, _interval

PIXEL_STRATA = ("clear", "thin", "thick")
"""Cloud-mask values 0, 1, 2, in this order; rows are ``pixels=<name>``."""

IMAGE_METRICS = ("RMSE", "MAE", "PSNR", "SSIM", "SAM")
"""Metrics of the mean prediction, always reported."""

CALIBRATION_METRICS = ("UCE", "AUCE", "within_1sigma", "within_2sigma")
"""Metrics of a predicted per-pixel variance, reported when ``variance`` is given."""

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
UCE_BINS = 20
"""UnCRtainTS bins with ``percent=5``: 100 // 5 bins."""

_CHUNK_ELEMENTS = 2**24
"""Images are processed in chunks of about this many float64 values per array."""


class PixelMetrics:
    """Accumulates per-image statistics over batches; ``compute`` gives the long table.

    ``update`` takes the arguments of :func:`pixel_metrics` for one batch of images; every
    batch must give (or omit) ``cloud_mask`` and ``variance`` alike, with the same bands.
    Only a few numbers per image and stratum are kept, so any number of batches fits.
    """

    def __init__(self, *, data_range: float = 1.0) -> None:
        if not data_range > 0:
            raise CloudbenchError(f"data_range must be > 0; got {data_range}")
        self.data_range = float(data_range)
        self._stats: dict[tuple[str, str], list[torch.Tensor]] = {}
        self._layout: tuple[int, bool, bool] | None = None  # bands, masked, variance

    def update(self, prediction, target, *, cloud_mask=None, variance=None) -> None:
        pred, targ, mask, var = _validated(prediction, target, cloud_mask, variance)
        layout = (pred.shape[1], mask is not None, var is not None)
        if self._layout is not None and layout != self._layout:
            raise CloudbenchError(
                "every batch must have the same bands and give (or omit) cloud_mask and "
                f"variance alike; got (bands, cloud_mask, variance) = {layout}, earlier "
                f"{self._layout}"
            )
        self._layout = layout
        per_image = pred.shape[1] * pred.shape[2] * pred.shape[3]
        step = max(1, _CHUNK_ELEMENTS // max(per_image, 1))
        for start in range(0, len(pred), step):
            part = slice(start, start + step)
            chunk = _image_stats(
                pred[part],
                targ[part],
                None if mask is None else mask[part],
                None if var is None else var[part],
                self.data_range,
            )
            for key, values in chunk.items():
                self._stats.setdefault(key, []).append(values.cpu())

    def compute(self, *, bootstrap: int = 0, seed: int = 0) -> pd.DataFrame:
        """The long table ``stratum, metric, value, ci_low, ci_high, n`` (see pixel_metrics)."""
        if self._layout is None:
            raise CloudbenchError("no images given")
        if bootstrap < 0:
            raise CloudbenchError(f"bootstrap must be >= 0; got {bootstrap}")
        _, masked, has_variance = self._layout
        stats = {key: torch.cat(parts) for key, parts in self._stats.items()}
        strata = ["all", *(f"pixels={s}" for s in PIXEL_STRATA)] if masked else ["all"]
        rows = []
        for stratum in strata:
            rows += [
                _mean_row(stratum, metric, stats[metric, stratum], bootstrap, seed)
                for metric in IMAGE_METRICS
            ]
            if has_variance:
                rows += _uce_rows(
                    stratum, stats["_var", stratum], stats["MSE", stratum], bootstrap, seed
                )
                rows += [
                    _mean_row(stratum, metric, stats[metric, stratum], bootstrap, seed)
                    for metric in CALIBRATION_METRICS[2:]
                ]
        return pd.DataFrame(rows, columns=["stratum", "metric", "value", "ci_low", "ci_high", "n"])


def pixel_metrics(
    prediction,
    target,
    *,
    cloud_mask=None,
    variance=None,
    data_range: float = 1.0,
    bootstrap: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Cloud-removal metrics of ``prediction`` against the cloud-free ``target``.

    ``prediction`` and ``target``: (B, C, H, W) or one (C, H, W) image, floating point, on the
    [0, ``data_range``] scale (S2 DN / 10000: range 1), finite. ``cloud_mask``: (B, H, W) or
    (H, W) integers, 0 clear, 1 thin, 2 thick. ``variance``: the predicted per-pixel, per-band
    variance, the shape of ``prediction``, >= 0. Computed on ``prediction``'s device.

    Returns the long table of :func:`cloudbench.metrics.evaluate`: columns ``stratum, metric,
    value, ci_low, ci_high, n``. Strata: ``all``, then with a mask ``pixels=clear``,
    ``pixels=thin``, ``pixels=thick`` (always present; NaN and ``n`` 0 where no image has such
    a pixel). Metrics per stratum: ``RMSE, MAE, PSNR, SSIM, SAM`` (degrees), then with a
    variance ``UCE, AUCE, within_1sigma, within_2sigma``. ``n`` is the number of images the
    value is computed from (those with at least one valid pixel of the stratum).

    ``ci_low``/``ci_high``: 2.5/97.5 percentiles over ``bootstrap`` resamples of the images
    (with replacement, ``numpy.random.default_rng(seed)``, the same for every row); NaN when
    ``bootstrap`` is 0.
    """
    metrics = PixelMetrics(data_range=data_range)
    metrics.update(prediction, target, cloud_mask=cloud_mask, variance=variance)
    return metrics.compute(bootstrap=bootstrap, seed=seed)


# --- per-image statistics -----------------------------------------------------------------


def _image_stats(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    variance: torch.Tensor | None,
    data_range: float,
) -> dict[tuple[str, str], torch.Tensor]:
    """{(metric, stratum): (B,) float64 per-image value, NaN where the stratum is empty}."""
    pred, target = pred.double(), target.double()
    b, c, h, w = pred.shape
    error = pred - target
    se_map = error.square().mean(dim=1)  # (B, H, W): mean over bands
    ae_map = error.abs().mean(dim=1)
    sam_map, sam_valid = _spectral_angle(pred, target)
    ssim_map = _ssim_map(pred, target, data_range)  # (B, H - 10, W - 10) or None
    if variance is not None:
        var = variance.double()
        var_map = var.mean(dim=1)
        sigma = var.sqrt()
        within = {k: (error.abs() <= k * sigma).double().mean(dim=1) for k in (1, 2)}

    strata: list[tuple[str, torch.Tensor]] = [
        ("all", torch.ones((b, h, w), dtype=torch.bool, device=pred.device))
    ]
    if mask is not None:
        strata += [(f"pixels={name}", mask == code) for code, name in enumerate(PIXEL_STRATA)]

    stats: dict[tuple[str, str], torch.Tensor] = {}
    for stratum, inside in strata:
        mse = _masked_mean(se_map, inside)
        stats["MSE", stratum] = mse
        stats["RMSE", stratum] = mse.sqrt()
        stats["MAE", stratum] = _masked_mean(ae_map, inside)
        stats["PSNR", stratum] = 10 * torch.log10(data_range**2 / mse)
        stats["SAM", stratum] = _masked_mean(sam_map, inside & sam_valid)
        if ssim_map is None:
            stats["SSIM", stratum] = pred.new_full((b,), math.nan)
        else:
            pad = SSIM_WINDOW // 2
            stats["SSIM", stratum] = _masked_mean(ssim_map, inside[:, pad:-pad, pad:-pad])
        if variance is not None:
            stats["_var", stratum] = _masked_mean(var_map, inside)
            for k in (1, 2):
                stats[f"within_{k}sigma", stratum] = _masked_mean(within[k], inside)
    return stats


def _masked_mean(values: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """(B,) mean of (B, H, W) ``values`` over each image's ``inside`` pixels; NaN if none."""
    total = torch.where(inside, values, 0.0).sum(dim=(1, 2))
    return total / inside.sum(dim=(1, 2))  # 0 / 0 = NaN for an empty stratum


def _spectral_angle(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) angle in degrees between the spectra, and where it is defined (both != 0).

    2·atan2(|u - v|, |u + v|) of the unit spectra u, v: the angle, accurate near 0 and 180°
    where acos of the cosine loses half the digits.
    """
    pred_norm = pred.norm(dim=1, keepdim=True)
    target_norm = target.norm(dim=1, keepdim=True)
    valid = (pred_norm > 0) & (target_norm > 0)
    u = pred / torch.where(valid, pred_norm, 1.0)
    v = target / torch.where(valid, target_norm, 1.0)
    angle = 2 * torch.atan2((u - v).norm(dim=1), (u + v).norm(dim=1))
    return torch.rad2deg(angle), valid.squeeze(1)


def _gaussian_kernel(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - SSIM_WINDOW // 2
    kernel = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return kernel / kernel.sum()


def _ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor | None:
    """(B, H - 10, W - 10) SSIM map averaged over bands; None for images under 11 pixels.

    Each band's map is scikit-image's ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)`` (= torchmetrics' SSIM) where the 11 × 11 window
    lies inside the image; both references crop the 5-pixel border before averaging.
    """
    b, c, h, w = pred.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        return None
    g = _gaussian_kernel(pred.device)
    stack = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    n = stack.shape[1]
    stack = torch.nn.functional.conv2d(stack, g.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)
    stack = torch.nn.functional.conv2d(stack, g.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)
    mu_x, mu_y, xx, yy, xy = stack.split(c, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim.mean(dim=1)


# --- aggregation over images --------------------------------------------------------------


def _mean_row(stratum: str, metric: str, values: torch.Tensor, bootstrap: int, seed: int):
    """(stratum, metric, value, ci_low, ci_high, n): the mean over the images defined."""
    defined = values[~values.isnan()]
    n = len(defined)
    value = defined.mean().item() if n else math.nan
    draws = None
    if bootstrap and n:
        resampled = _bootstrap(
            lambda index: {"v": defined[index].mean(dim=1)}, n, bootstrap, seed, n
        )
        draws = resampled["v"]
    return (stratum, metric, value, *_interval(draws), n)


def _uce_rows(stratum: str, var: torch.Tensor, mse: torch.Tensor, bootstrap: int, seed: int):
    """UCE and AUCE rows of the images with pixels in the stratum."""
    defined = ~var.isnan()
    var, mse = var[defined], mse[defined]
    n = len(var)
    statistic = _uce_statistic(var, mse)
    point = statistic(torch.arange(n).unsqueeze(0)) if n else None
    draws = _bootstrap(statistic, n, bootstrap, seed, n) if bootstrap and n else None
    return [
        (
            stratum,
            name,
            math.nan if point is None else point[name].item(),
            *_interval(None if draws is None else draws[name]),
            n,
        )
        for name in ("UCE", "AUCE")
    ]


def _uce_statistic(
    var: torch.Tensor, mse: torch.Tensor
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """UCE/AUCE of resamples (R, N) of the images, as UnCRtainTS's ``compute_uce_auce``.

    Each image is one sample: its mean predicted variance (over bands and pixels) and its mean
    squared error. The resample's images are put into ``UCE_BINS`` equal-width bins between
    their smallest and largest mean variance; per bin, RMV = sqrt(mean variance) and RMSE =
    sqrt(mean squared error); UCE = sum over bins of (share of images) · |RMSE - RMV|, AUCE
    the unweighted mean over non-empty bins.
    """
    k = UCE_BINS

    def statistic(index: torch.Tensor) -> dict[str, torch.Tensor]:
        r, n = index.shape
        v, e = var[index], mse[index]
        low, high = v.min(dim=1, keepdim=True).values, v.max(dim=1, keepdim=True).values
        width = torch.where(high > low, high - low, 1.0)
        bins = ((v - low) / width * k).long().clamp(0, k - 1)
        codes = (torch.arange(r).unsqueeze(1) * k + bins).flatten()
        count = torch.bincount(codes, minlength=r * k).reshape(r, k).double()
        sum_var = torch.bincount(codes, v.flatten(), minlength=r * k).reshape(r, k)
        sum_se = torch.bincount(codes, e.flatten(), minlength=r * k).reshape(r, k)
        gap = ((sum_se / count).sqrt() - (sum_var / count).sqrt()).abs()  # NaN: empty bin
        filled = count > 0
        uce = torch.where(filled, count / n * gap, 0.0).sum(dim=1)
        auce = torch.where(filled, gap, 0.0).sum(dim=1) / filled.sum(dim=1)
        return {"UCE": uce, "AUCE": auce}

    return statistic


# --- input validation ---------------------------------------------------------------------


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as error:
        raise CloudbenchError(f"{name} must be an array or tensor: {error}") from error


def _validated(prediction, target, cloud_mask, variance):
    """(B, C, H, W) prediction/target/variance and (B, H, W) mask on the prediction's device."""
    pred, targ = _as_tensor(prediction, "prediction"), _as_tensor(target, "target")
    device = pred.device
    if pred.ndim == 3:
        pred, targ = pred.unsqueeze(0), targ.unsqueeze(0)
        single = True
    else:
        single = False
    if pred.ndim != 4:
        raise CloudbenchError(
            f"prediction must be (B, C, H, W) or (C, H, W); got shape {tuple(pred.shape)}"
        )
    if targ.shape != pred.shape:
        raise CloudbenchError(
            f"target has shape {tuple(targ.shape)} but prediction has {tuple(pred.shape)}"
        )
    if 0 in pred.shape:
        raise CloudbenchError(f"no pixels: prediction has shape {tuple(pred.shape)}")
    arrays = {"prediction": pred, "target": targ.to(device)}
    if variance is not None:
        var = _as_tensor(variance, "variance").to(device)
        arrays["variance"] = var.unsqueeze(0) if single else var
        if arrays["variance"].shape != pred.shape:
            raise CloudbenchError(
                f"variance has shape {tuple(var.shape)} but prediction has "
                f"{tuple(pred.shape[1:] if single else pred.shape)}"
            )
    for name, array in arrays.items():
        if not array.is_floating_point():
            raise CloudbenchError(
                f"{name} must be floating point on the [0, 1] scale (S2 DN / 10000); got "
                f"dtype {array.dtype}"
            )
        if not torch.isfinite(array).all():
            raise CloudbenchError(f"{name} holds NaN or infinite values")
    if variance is not None and (arrays["variance"] < 0).any():
        raise CloudbenchError("variance holds negative values")
    mask = None
    if cloud_mask is not None:
        mask = _as_tensor(cloud_mask, "cloud_mask").to(device)
        mask = mask.unsqueeze(0) if single else mask
        expected = (pred.shape[0], *pred.shape[2:])
        if tuple(mask.shape) != expected:
            raise CloudbenchError(
                f"cloud_mask has shape {tuple(mask.shape)}, expected {expected} (B, H, W)"
            )
        if mask.is_floating_point() or mask.dtype == torch.bool:
            raise CloudbenchError(f"cloud_mask must be integers 0, 1, 2; got dtype {mask.dtype}")
        if ((mask < 0) | (mask > 2)).any():
            raise CloudbenchError("cloud_mask must hold only 0 (clear), 1 (thin), 2 (thick)")
    return arrays["prediction"], arrays["target"], mask, arrays.get("variance")
