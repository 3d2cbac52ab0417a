"""Cloud-removal pixel metrics against hand-computed values, scikit-image and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.image import SpectralAngleMapper, StructuralSimilarityIndexMeasure

from cloudbench import reconstruction
from cloudbench.errors import CloudbenchError
from cloudbench.metrics import evaluate
from cloudbench.reconstruction import PixelMetrics, pixel_metrics

# float64 against float64 references: agreement to rounding
TOL = 1e-9


def values(table: pd.DataFrame, stratum: str = "all") -> dict[str, float]:
    rows = table[table["stratum"] == stratum]
    return dict(zip(rows["metric"], rows["value"], strict=True))


def sizes(table: pd.DataFrame, stratum: str = "all") -> dict[str, int]:
    rows = table[table["stratum"] == stratum]
    return dict(zip(rows["metric"], rows["n"], strict=True))


def images(seed=0, b=3, c=4, h=24, w=28, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    noise = noise * torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    prediction = (target + noise).clamp(0, 1)
    mask = torch.randint(0, 3, (b, h, w), generator=g)
    return prediction, target, mask


def ssim_maps(prediction, target):
    """scikit-image's band-averaged SSIM map of each image, its 5-pixel border cropped."""
    maps = []
    for p, t in zip(prediction.numpy(), target.numpy(), strict=True):
        _, full = structural_similarity(
            p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            data_range=1, channel_axis=0, full=True,
        )  # fmt: skip
        maps.append(full.mean(axis=0)[5:-5, 5:-5])
    return np.stack(maps)


def test_hand_computed_values():
    # one image, 2 bands, 2 x 2 pixels; spectra (band 0, band 1) per pixel
    target = torch.tensor([[[1.0, 1.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.5]]])
    prediction = torch.tensor([[[1.0, 0.0], [2.0, 0.5]], [[1.0, 1.0], [0.0, 0.5]]])
    # errors: band 0 (0, -1, 1, 0), band 1 (1, 1, 0, 0): 4 of 8 values off by 1
    got = values(pixel_metrics(prediction.double(), target.double()))
    assert got["RMSE"] == pytest.approx(math.sqrt(0.5), abs=TOL)
    assert got["MAE"] == pytest.approx(0.5, abs=TOL)
    assert got["PSNR"] == pytest.approx(10 * math.log10(1 / 0.5), abs=TOL)
    # angles: (1,0)-(1,1) 45°, (1,0)-(0,1) 90°, (1,0)-(2,0) 0°, identical 0°
    assert got["SAM"] == pytest.approx((45 + 90 + 0 + 0) / 4, abs=TOL)
    assert math.isnan(got["SSIM"])  # under 11 x 11 pixels: no SSIM
    assert sizes(pixel_metrics(prediction, target))["SSIM"] == 0


def test_psnr_is_per_image_then_mean():
    target = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    prediction = target.clone()
    prediction[0] += 0.1  # MSE 0.01: PSNR 20
    prediction[1] += 0.01  # MSE 1e-4: PSNR 40
    got = values(pixel_metrics(prediction, target))
    assert got["PSNR"] == pytest.approx(30.0, abs=TOL)  # not 10 log10(1 / 0.00505) = 22.97
    assert got["RMSE"] == pytest.approx(0.055, abs=TOL)
    assert got["MAE"] == pytest.approx(0.055, abs=TOL)


def test_against_scikit_image_and_torchmetrics():
    prediction, target, _ = images()
    got = values(pixel_metrics(prediction, target))
    p, t = prediction.numpy(), target.numpy()
    # scikit-image PSNR per image (data_range 1), averaged over images: to rounding
    psnr = np.mean(
        [peak_signal_noise_ratio(ti, pi, data_range=1) for pi, ti in zip(p, t, strict=True)]
    )
    assert got["PSNR"] == pytest.approx(psnr, abs=TOL)
    # RMSE / MAE: per-image numpy means, averaged over images
    rmse = np.mean([np.sqrt(np.mean((pi - ti) ** 2)) for pi, ti in zip(p, t, strict=True)])
    assert got["RMSE"] == pytest.approx(rmse, abs=TOL)
    assert got["MAE"] == pytest.approx(np.mean(np.abs(p - t)), abs=TOL)
    # scikit-image SSIM (Gaussian 11 / 1.5, population covariance, per band), image mean: 1e-9
    ssim = np.mean([
        structural_similarity(
            pi, ti, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            data_range=1, channel_axis=0,
        )
        for pi, ti in zip(p, t, strict=True)
    ])  # fmt: skip
    assert got["SSIM"] == pytest.approx(ssim, abs=TOL)
    # torchmetrics SSIM (same window, float64): its map, 1e-9 inside the 5-pixel border.
    # torchmetrics (1.9) averages the map over the whole reflect-padded image, border included,
    # where scikit-image crops the border: ours is scikit-image's; the two differ by ~1e-4 here
    metric = StructuralSimilarityIndexMeasure(data_range=1.0, return_full_image=True)
    _, full = metric(prediction, target)
    assert got["SSIM"] == pytest.approx(full[..., 5:-5, 5:-5].mean().item(), abs=TOL)
    # torchmetrics SAM (radians, acos of the cosine, pooled over equal-size images): 1e-7 degrees
    # (acos loses digits near 0; ours uses atan2)
    tm_sam = math.degrees(SpectralAngleMapper()(prediction, target).item())
    assert got["SAM"] == pytest.approx(tm_sam, abs=1e-7)


def test_strata_match_masked_pixels_by_hand():
    prediction, target, mask = images(seed=1)
    mask[2] = torch.where(mask[2] == 2, 0, mask[2])  # image 2 has no thick pixel
    table = pixel_metrics(prediction, target, cloud_mask=mask)
    assert list(dict.fromkeys(table["stratum"])) == [
        "all", "pixels=clear", "pixels=thin", "pixels=thick",
    ]  # fmt: skip
    maps = ssim_maps(prediction, target)
    for code, name in enumerate(reconstruction.PIXEL_STRATA):
        rmse, mae, psnr, sam, ssim = [], [], [], [], []
        for i in range(len(target)):
            inside = (mask[i] == code).numpy()
            if not inside.any():
                continue
            p, t = prediction[i].numpy()[:, inside], target[i].numpy()[:, inside]  # (C, pixels)
            mse = np.mean((p - t) ** 2)
            rmse.append(np.sqrt(mse))
            mae.append(np.mean(np.abs(p - t)))
            psnr.append(10 * np.log10(1 / mse))
            cosine = (p * t).sum(0) / np.linalg.norm(p, axis=0) / np.linalg.norm(t, axis=0)
            sam.append(np.degrees(np.arccos(np.clip(cosine, -1, 1))).mean())
            ssim.append(maps[i][inside[5:-5, 5:-5]].mean())
        got = values(table, f"pixels={name}")
        assert got["RMSE"] == pytest.approx(np.mean(rmse), abs=TOL)
        assert got["MAE"] == pytest.approx(np.mean(mae), abs=TOL)
        assert got["PSNR"] == pytest.approx(np.mean(psnr), abs=TOL)
        assert got["SAM"] == pytest.approx(np.mean(sam), abs=1e-6)
        assert got["SSIM"] == pytest.approx(np.mean(ssim), abs=TOL)
        assert set(sizes(table, f"pixels={name}").values()) == {len(rmse)}
    assert sizes(table, "pixels=thick")["RMSE"] == 2


def test_empty_strata_are_nan_with_n_zero():
    prediction, target, _ = images(b=2)
    mask = torch.zeros(2, 24, 28, dtype=torch.uint8)
    variance = torch.full_like(prediction, 0.01)
    table = pixel_metrics(prediction, target, cloud_mask=mask, variance=variance)
    for stratum in ("pixels=thin", "pixels=thick"):
        rows = table[table["stratum"] == stratum]
        assert len(rows) == 9 and rows["value"].isna().all() and (rows["n"] == 0).all()
    # clear is every pixel: the same as all
    clear, everything = values(table, "pixels=clear"), values(table)
    for metric, value in everything.items():
        assert clear[metric] == pytest.approx(value, abs=TOL)


def test_zero_spectra_are_left_out_of_sam():
    target = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    prediction = target * 2  # same direction everywhere: 0°
    prediction[0, :, 0, 0] = 0
    target[0, :, 1, 1] = 0
    prediction[0, :, 2, 2] = torch.tensor([1.0, 0, 0], dtype=torch.float64)
    target[0, :, 2, 2] = torch.tensor([0, 1.0, 0], dtype=torch.float64)  # 90°
    got = values(pixel_metrics(prediction, target))
    assert got["SAM"] == pytest.approx(90 / 14, abs=1e-9)  # 14 pixels defined
    zero = torch.zeros(1, 3, 4, 4)
    table = pixel_metrics(zero, zero)
    assert math.isnan(values(table)["SAM"]) and sizes(table)["SAM"] == 0
    assert values(table)["PSNR"] == math.inf  # a perfect image


def calibrated_case(seed, scale=1.0, b=40):
    """Errors drawn with the true sigma of each image; the variance predicted is scale**2 times."""
    g = torch.Generator().manual_seed(seed)
    # four sigmas, each in a bin of its own (bins are equal-width in variance)
    sigma = torch.tensor([0.01, 0.02, 0.05, 0.1], dtype=torch.float64).repeat(b // 4)
    sigma = sigma.view(b, 1, 1, 1)
    target = torch.rand(b, 4, 32, 32, generator=g, dtype=torch.float64)
    prediction = target + sigma * torch.randn(target.shape, generator=g, dtype=torch.float64)
    variance = (scale * sigma).square().expand_as(prediction)
    return prediction, target, variance, sigma.mean().item()


def test_calibrated_variance_gives_small_uce_and_68_percent():
    prediction, target, variance, mean_sigma = calibrated_case(0)
    got = values(pixel_metrics(prediction, target, variance=variance))
    assert got["UCE"] < 0.02 * mean_sigma  # RMSE/RMV per image agree to ~1%
    assert got["AUCE"] < 0.02 * mean_sigma
    assert got["within_1sigma"] == pytest.approx(0.6827, abs=0.005)
    assert got["within_2sigma"] == pytest.approx(0.9545, abs=0.005)


@pytest.mark.parametrize("scale, within_1", [(2.0, 0.9545), (0.5, 0.3829)])
def test_miscalibrated_variance_is_caught(scale, within_1):
    prediction, target, variance, mean_sigma = calibrated_case(1, scale=scale)
    got = values(pixel_metrics(prediction, target, variance=variance))
    # |RMSE - RMV| = |1 - scale| sigma in every bin
    assert got["UCE"] == pytest.approx(abs(1 - scale) * mean_sigma, rel=0.05)
    assert got["within_1sigma"] == pytest.approx(within_1, abs=0.01)


def test_uce_by_hand():
    # image A: error 0.2 everywhere, variance 0.01; image B: error 0.2, variance 0.04
    target = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    prediction = target + 0.2
    variance = torch.tensor([0.01, 0.04], dtype=torch.float64).view(2, 1, 1, 1).expand(2, 2, 3, 3)
    got = values(pixel_metrics(prediction, target, variance=variance))
    # two bins filled (the lowest and highest mean variance), half the images each:
    # UCE = 0.5 |0.2 - 0.1| + 0.5 |0.2 - 0.2|, AUCE = the mean of the two gaps
    assert got["UCE"] == pytest.approx(0.05, abs=TOL)
    assert got["AUCE"] == pytest.approx(0.05, abs=TOL)
    assert got["within_1sigma"] == pytest.approx(0.5, abs=TOL)  # 0.2 <= 0.2 but not <= 0.1
    # every image in one bin: UCE = |RMSE - RMV| of the pooled images
    one = values(pixel_metrics(prediction, target, variance=variance[[0, 0]]))
    assert one["UCE"] == pytest.approx(0.1, abs=TOL)


def test_table_layout_and_concatenation_with_evaluate():
    prediction, target, mask = images(b=2)
    variance = torch.full_like(prediction, 0.0025)
    table = pixel_metrics(prediction, target, cloud_mask=mask, variance=variance)
    classification = evaluate("multiclass", [0, 1, 1], [0, 1, 0], num_classes=2, bootstrap=0)
    assert list(table.columns) == list(classification.columns)
    assert list(table["metric"][:9]) == [
        "RMSE", "MAE", "PSNR", "SSIM", "SAM", "UCE", "AUCE", "within_1sigma", "within_2sigma",
    ]  # fmt: skip
    assert len(table) == 4 * 9
    assert table["ci_low"].isna().all() and table["ci_high"].isna().all()
    assert len(pd.concat([classification, table])) == len(classification) + len(table)
    assert set(pixel_metrics(prediction, target)["stratum"]) == {"all"}


def test_bootstrap_intervals():
    prediction, target, mask = images(b=8, h=16, w=16)
    variance = torch.full_like(prediction, 0.0025)
    a = pixel_metrics(prediction, target, cloud_mask=mask, variance=variance, bootstrap=200)
    b = pixel_metrics(prediction, target, cloud_mask=mask, variance=variance, bootstrap=200)
    pd.testing.assert_frame_equal(a, b)
    assert (a["ci_low"] <= a["value"] + 1e-12).all() and (a["value"] <= a["ci_high"] + 1e-12).all()
    assert (a["ci_low"] < a["ci_high"]).all()


def test_shapes_dtypes_chunks_and_batches(monkeypatch):
    prediction, target, mask = images(b=4)
    variance = torch.full_like(prediction, 0.0025)
    expected = pixel_metrics(prediction, target, cloud_mask=mask, variance=variance)
    # one (C, H, W) image is a batch of one; numpy arrays are accepted
    single = pixel_metrics(prediction[0].numpy(), target[0].numpy(), cloud_mask=mask[0].numpy())
    batch_of_one = pixel_metrics(prediction[:1], target[:1], cloud_mask=mask[:1])
    pd.testing.assert_frame_equal(single, batch_of_one)
    # accumulated over batches, or chunked image by image: the same table
    metrics = PixelMetrics()
    metrics.update(prediction[:1], target[:1], cloud_mask=mask[:1], variance=variance[:1])
    metrics.update(prediction[1:], target[1:], cloud_mask=mask[1:], variance=variance[1:])
    pd.testing.assert_frame_equal(metrics.compute(), expected, rtol=1e-12)
    monkeypatch.setattr(reconstruction, "_CHUNK_ELEMENTS", 1)
    pd.testing.assert_frame_equal(
        pixel_metrics(prediction, target, cloud_mask=mask, variance=variance), expected,
        rtol=1e-12,
    )  # fmt: skip
    # float32 inputs are accumulated in float64: the float64 result of the same values
    p32, t32 = prediction.float(), target.float()
    got = values(pixel_metrics(p32, t32))
    want = values(pixel_metrics(p32.double(), t32.double()))
    for metric, value in want.items():
        assert got[metric] == pytest.approx(value, rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    prediction, target, mask = images(b=4, h=64, w=64)
    variance = torch.full_like(prediction, 0.0025)
    cpu = pixel_metrics(prediction, target, cloud_mask=mask, variance=variance)
    cuda = pixel_metrics(
        prediction.cuda(), target.cuda(), cloud_mask=mask.cuda(), variance=variance.cuda()
    )
    pd.testing.assert_frame_equal(cuda, cpu, rtol=1e-9)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p, t, m, v: (p[0, 0], t[0, 0], None, None), r"\(B, C, H, W\)"),
        (lambda p, t, m, v: (p, t[:, :2], None, None), "target has shape"),
        (lambda p, t, m, v: ((p * 10000).long(), t, None, None), "floating point"),
        (lambda p, t, m, v: (p, t.masked_fill(t > 0.99, math.nan), None, None), "NaN"),
        (lambda p, t, m, v: (p, t, m[:, :5], None), "cloud_mask has shape"),
        (lambda p, t, m, v: (p, t, m + 1, None), "only 0"),
        (lambda p, t, m, v: (p, t, m.float(), None), "integers"),
        (lambda p, t, m, v: (p, t, None, v[:, :1]), "variance has shape"),
        (lambda p, t, m, v: (p, t, None, -v), "negative"),
        (lambda p, t, m, v: (p[:0], t[:0], None, None), "no pixels"),
    ],
)
def test_bad_input_raises(change, message):
    prediction, target, mask = images(b=2)
    variance = torch.full_like(prediction, 0.01)
    p, t, m, v = change(prediction, target, mask, variance)
    with pytest.raises(CloudbenchError, match=message):
        pixel_metrics(p, t, cloud_mask=m, variance=v)


def test_accumulator_rejects_mixed_batches_and_nothing():
    prediction, target, mask = images(b=2)
    metrics = PixelMetrics()
    with pytest.raises(CloudbenchError, match="no images"):
        metrics.compute()
    metrics.update(prediction, target, cloud_mask=mask)
    with pytest.raises(CloudbenchError, match="alike"):
        metrics.update(prediction, target)
    with pytest.raises(CloudbenchError, match="data_range"):
        PixelMetrics(data_range=0)
    with pytest.raises(CloudbenchError, match="bootstrap"):
        metrics.compute(bootstrap=-1)
