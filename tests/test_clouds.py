"""cloudbench.clouds against independent references: s2cloudless called directly, and opacity
and compositing computed by hand (issue 19: other tests take their expected masks and opacities
from these same functions)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from s2cloudless import S2PixelCloudDetector

from cloudbench.clouds import CLEAR, THICK, THIN, CloudMaskConfig, cloud_mask, composite, opacity
from cloudbench.sources.base import S2_L1C_BANDS, Collection, Grid
from cloudbench.sources.synthetic import SyntheticWorld

NODATA = (slice(2, 10), slice(2, 10))
"""A block of NaN (no data) in the clear left half of the image, 14 pixels from any cloud."""


@pytest.fixture(scope="module")
def l1c() -> np.ndarray:
    """A 64 x 64 L1C reflectance image: clear on the left, cloud on the right (thin at its edge),
    with the NODATA block NaN."""
    world = SyntheticWorld(seed=5, size=64, region_size=16,
                           s2_schedule=[{"datetime": "2018-07-03T03:00:00", "cloud_cover": 50}])
    (acq,) = world.search(Collection.S2_L1C, None, dt.datetime(2018, 7, 1, tzinfo=dt.UTC),
                          dt.datetime(2018, 7, 31, tzinfo=dt.UTC))
    image = world.read(acq, world.grid, S2_L1C_BANDS)
    image[:, NODATA[0], NODATA[1]] = np.nan
    return image


CONFIGS = {
    "defaults": CloudMaskConfig(),
    "no kernels": CloudMaskConfig(threshold=0.4, average_over=0, dilation_size=0),
    "other settings": CloudMaskConfig(threshold=0.25, average_over=2, dilation_size=3,
                                      thick_threshold=0.9),
}


def _reference(image: np.ndarray, config: CloudMaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """s2cloudless on its own: probability and mask of the image, no data read as DN 0 (as
    SEN12MS stores it), and the documented thin/thick split of the mask."""
    detector = S2PixelCloudDetector(threshold=config.threshold, all_bands=True,
                                    average_over=config.average_over,
                                    dilation_size=config.dilation_size)
    data = np.moveaxis(np.where(np.isnan(image), 0.0, image), 0, -1)[None].astype(np.float32)
    prob = detector.get_cloud_probability_maps(data)[0]
    mask = detector.get_cloud_masks(data)[0].astype(bool)
    kind = np.zeros(mask.shape, dtype=np.uint8)
    kind[mask & (prob < config.thick_threshold)] = THIN
    kind[mask & (prob >= config.thick_threshold)] = THICK
    return kind, prob


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cloud_mask_is_s2cloudless_with_the_settings_passed_through(
    l1c: np.ndarray, name: str
) -> None:
    config = CONFIGS[name]
    kind, prob = cloud_mask(l1c, config)
    want_kind, want_prob = _reference(l1c, config)
    assert kind.dtype == np.uint8 and prob.dtype == np.float32 and kind.shape == (64, 64)
    np.testing.assert_array_equal(prob, want_prob)
    np.testing.assert_array_equal(kind, want_kind)
    counts = np.bincount(kind.ravel(), minlength=3)
    assert (counts > 0).all(), counts  # clear, thin and thick pixels all occur
    # no data is clear, with a finite probability
    assert (kind[NODATA] == CLEAR).all() and np.isfinite(prob).all()


def test_the_settings_change_the_mask(l1c: np.ndarray) -> None:
    """Each setting matters on this image, so the test above would see one ignored."""
    masks = {name: cloud_mask(l1c, config)[0] for name, config in CONFIGS.items()}
    base = CONFIGS["defaults"]
    for change in ({"average_over": 1}, {"dilation_size": 0}, {"threshold": 0.6},
                   {"thick_threshold": 0.95}):
        other = cloud_mask(l1c, base.model_copy(update=change))[0]
        assert not np.array_equal(other, masks["defaults"]), change
    assert len({m.tobytes() for m in masks.values()}) == len(masks)


def test_opacity_ramp_by_hand() -> None:
    # defaults: threshold 0.4, thick_threshold 0.7, thin_alpha_max 0.7, floor 5% of 0.7 = 0.035
    kind = np.array([CLEAR, THICK, THICK, THIN, THIN, THIN, THIN, THIN, THIN, THIN])
    prob = np.array([0.9, 0.75, 0.3, 0.55, 0.64, 0.43, 0.41, 0.4, 0.2, 0.6999],
                    dtype=np.float32)
    alpha = opacity(kind, prob, CloudMaskConfig())
    assert alpha.dtype == np.float32 and alpha.shape == kind.shape
    expected = [0.0, 1.0, 1.0,
                0.7 * 0.15 / 0.3,  # 0.35: half-way up the ramp
                0.7 * 0.24 / 0.3,  # 0.56
                0.7 * 0.03 / 0.3,  # 0.07
                0.035, 0.035, 0.035,  # under 5% of the ramp, or under the threshold: the floor
                0.7 * 0.2999 / 0.3]
    np.testing.assert_allclose(alpha, expected, rtol=1e-5)
    # other settings: threshold 0.2, thick_threshold 0.6, thin_alpha_max 0.5, floor 0.025
    config = CloudMaskConfig(threshold=0.2, thick_threshold=0.6, thin_alpha_max=0.5)
    thin = np.full(4, THIN)
    alpha = opacity(thin, np.array([0.5, 0.3, 0.1, 0.2], dtype=np.float32), config)
    np.testing.assert_allclose(alpha, [0.5 * 0.75, 0.5 * 0.25, 0.025, 0.025], rtol=1e-5)


def test_composite_by_hand() -> None:
    clear = np.array([[[0.1, 0.2, 0.3]], [[0.4, 0.5, 0.6]]], dtype=np.float32)  # (2, 1, 3)
    alpha = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    cloud = np.array([0.8, 0.2], dtype=np.float32)
    out = composite(clear, alpha, cloud)
    np.testing.assert_allclose(out, [[[0.1, 0.5, 0.8]], [[0.4, 0.35, 0.2]]], rtol=1e-6)
    assert out[0, 0, 0] == clear[0, 0, 0]  # alpha 0 keeps the clear value exactly
    batch = composite(np.stack([clear, clear]), np.stack([alpha, alpha[:, ::-1]]), cloud)
    np.testing.assert_allclose(batch[1], [[[0.8, 0.5, 0.3]], [[0.2, 0.35, 0.6]]], rtol=1e-6)


def test_mask_acquisition_reads_l1c_at_the_processing_resolution() -> None:
    """At the grid's resolution the mask is cloud_mask of the L1C read on the grid; at a
    coarser processing resolution it is cloud_mask of the coarser read, each coarse pixel
    copied to the 2 x 2 fine pixels under it (nearest). L2A is refused."""
    from cloudbench.clouds import mask_acquisition

    world = SyntheticWorld(seed=5, size=64, region_size=16,
                           s2_schedule=[{"datetime": "2018-07-03T03:00:00", "cloud_cover": 50}])
    start, end = dt.datetime(2018, 7, 1, tzinfo=dt.UTC), dt.datetime(2018, 7, 31, tzinfo=dt.UTC)
    (acq,) = world.search(Collection.S2_L1C, None, start, end)
    grid = world.grid
    assert grid.resolution == 10.0
    fine = mask_acquisition(world, acq, grid, CloudMaskConfig())
    np.testing.assert_array_equal(
        fine, cloud_mask(world.read(acq, grid, S2_L1C_BANDS), CloudMaskConfig())[0])
    coarse_config = CloudMaskConfig(resolution=20.0, average_over=1, dilation_size=1)
    coarse = mask_acquisition(world, acq, grid, coarse_config)
    at_20 = cloud_mask(world.read(acq, grid.rescaled(20.0), S2_L1C_BANDS), coarse_config)[0]
    assert at_20.shape == (32, 32) and coarse.shape == (64, 64) and coarse.dtype == np.uint8
    np.testing.assert_array_equal(coarse, at_20.repeat(2, axis=0).repeat(2, axis=1))
    assert len(np.unique(coarse)) == 3  # clear, thin and thick all present
    # a side (63 px at 10 m) that 20 m does not divide: the coarse grid (32 px) reaches 10 m
    # past it, and each fine pixel still takes the coarse pixel under its centre
    left, _, _, top = grid.bounds
    odd = Grid.from_bounds(grid.crs, left, top, 63, 63, 10.0)
    at_20 = cloud_mask(world.read(acq, odd.rescaled(20.0), S2_L1C_BANDS), coarse_config)[0]
    assert at_20.shape == (32, 32)
    np.testing.assert_array_equal(mask_acquisition(world, acq, odd, coarse_config),
                                  at_20.repeat(2, axis=0).repeat(2, axis=1)[:63, :63])
    (l2a,) = world.search(Collection.S2_L2A, None, start, end)
    with pytest.raises(ValueError, match="s2cloudless needs an L1C acquisition"):
        mask_acquisition(world, l2a, grid, CloudMaskConfig())


def test_scene_shares_by_hand() -> None:
    """Percent of the valid (SCL != 0) pixels: cloud = 8, 9, 10; shadow = 3; cirrus = 10."""
    from cloudbench.clouds import scene_shares

    scl = np.array([[0, 0, 3, 4, 4], [8, 9, 10, 10, 5]])  # 8 valid pixels
    assert scene_shares(scl) == pytest.approx(
        {"cloud": 100 * 4 / 8, "shadow": 100 * 1 / 8, "cirrus": 100 * 2 / 8})
    assert scene_shares(np.full((3, 3), 4)) == {"cloud": 0.0, "shadow": 0.0, "cirrus": 0.0}
    empty = scene_shares(np.zeros((2, 2), dtype=np.uint8))
    assert set(empty) == {"cloud", "shadow", "cirrus"}
    assert all(np.isnan(v) for v in empty.values())


def test_cloud_mask_refuses_other_shapes_and_thick_starts_at_its_threshold(
    l1c: np.ndarray,
) -> None:
    """Only (13, H, W) is read; a pixel whose probability equals thick_threshold is thick
    ("reaches"), so the threshold is taken from a probability the image has."""
    for bad in (l1c[:12], l1c[0], l1c[None]):
        with pytest.raises(ValueError, match=r"expected \(13, H, W\) L1C reflectance, got shape"):
            cloud_mask(bad, CloudMaskConfig())
    kind, prob = cloud_mask(l1c, CloudMaskConfig())
    level = float(np.median(prob[kind == THICK]))
    config = CloudMaskConfig(thick_threshold=level)
    kind_at, prob_at = cloud_mask(l1c, config)
    at = prob_at == np.float32(level)
    assert at.any() and (kind_at[at] == THICK).all()


def test_composite_is_float32_whatever_its_inputs() -> None:
    clear = np.full((2, 1, 2), 0.25)  # float64 in, float32 out
    out = composite(clear, np.array([[0.0, 0.5]]), np.array([0.75, 0.5]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[[0.25, 0.5]], [[0.25, 0.375]]], np.float32))
