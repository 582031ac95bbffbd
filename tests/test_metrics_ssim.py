"""SSIM against scikit-image with Wang et al. settings."""

import numpy as np
import pytest

from jcompose.metrics import ssim


def _skimage_ssim(a, b, data_range):
    metrics = pytest.importorskip("skimage.metrics")
    return metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=data_range, channel_axis=-1)


def test_matches_skimage_on_a_photo():
    data = pytest.importorskip("skimage.data")
    photo = data.astronaut()[100:196, 150:230].astype(np.float64)  # 96 x 80 crop, [0, 255]
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 20, photo.shape), 0, 255)
    ours = float(ssim.ssim(photo[None], noisy[None], data_range=255.0)[0])
    ref = _skimage_ssim(photo, noisy, 255.0)
    assert 0.2 < ref < 0.95
    assert abs(ours - ref) < 2e-5


def test_batch_in_minus_one_one(rng):
    a = rng.uniform(-1, 1, (3, 24, 31, 3))
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
    b[2] = a[2]
    ours = np.asarray(ssim.ssim(a, b, data_range=2.0))
    ref = [_skimage_ssim(a[i], b[i], 2.0) for i in range(3)]
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    assert abs(ours[2] - 1.0) < 1e-6


def test_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        ssim.ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 17, 3)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim.ssim(np.zeros((1, 8, 16, 3)), np.zeros((1, 8, 16, 3)))
