"""SSIM with Wang et al. (2004) parameters, batched in JAX.

SSIM is computed on *pixel values*, as the reference tools do (scikit-image and pytorch-msssim on 8-bit
values with data_range 255, tf.image.ssim / dm-pix on [0, 1] with max_val 1; both give the same number):
its luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) is scale-invariant but not
offset-invariant, so images moved to [-1, 1] score differently (a photo against itself +12 brighter:
0.708 on [-1, 1] with data_range 2, 0.990 on its pixel values; tests/test_metrics_ssim.py). Callers pass
pixel values with `data_range=PIXEL_RANGE`; there is no default range.

Gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) covariance,
filtered over the 'valid' region only (no padding) and averaged over pixels and channels. This is
`skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...)` (skimage's *defaults* differ: 7x7 uniform window,
sample covariance, which changes SSIM by ~0.03) and `tf.image.ssim` / dm-pix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

WINDOW = 11
SIGMA = 1.5
PIXEL_RANGE = 255.0  # data_range of 8-bit pixel values
K1, K2 = 0.01, 0.03


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
    """(size,) normalised 1-D Gaussian taps."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _filter(x: jax.Array, taps: jax.Array) -> jax.Array:
    """Separable 'valid' filtering of (N, H, W, C) over H then W, each channel on its own."""
    n, h, w, c = x.shape
    k = taps.shape[0]
    planes = x.transpose(0, 3, 1, 2).reshape(n * c, h, w, 1)
    dn = ("NHWC", "HWIO", "NHWC")
    hi = jax.lax.Precision.HIGHEST
    planes = jax.lax.conv_general_dilated(planes, taps.reshape(k, 1, 1, 1), (1, 1), "VALID", dimension_numbers=dn,
                                          precision=hi)
    planes = jax.lax.conv_general_dilated(planes, taps.reshape(1, k, 1, 1), (1, 1), "VALID", dimension_numbers=dn,
                                          precision=hi)
    return planes.reshape(n, c, h - k + 1, w - k + 1).transpose(0, 2, 3, 1)


def ssim_map(x: jax.Array, y: jax.Array, *, data_range: float) -> jax.Array:
    """(N, H, W, C) pairs -> (N, H - 10, W - 10, C) local SSIM (the valid region).

    data_range: max - min of the pixel range: `PIXEL_RANGE` (255) for 8-bit pixel values, 1 for [0, 1].
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"SSIM needs two (N, H, W, C) batches of one shape, got {x.shape} and {y.shape}")
    if min(x.shape[1:3]) < WINDOW:
        raise ValueError(f"SSIM needs images of at least {WINDOW}x{WINDOW} pixels, got {x.shape[1:3]}")
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    taps = jnp.asarray(gaussian_window())
    mu_x, mu_y = _filter(x, taps), _filter(y, taps)
    var_x = _filter(x * x, taps) - mu_x * mu_x
    var_y = _filter(y * y, taps) - mu_y * mu_y
    cov = _filter(x * y, taps) - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))


def ssim(x: jax.Array, y: jax.Array, *, data_range: float) -> jax.Array:
    """(N, H, W, C) pairs -> (N,) mean SSIM in [-1, 1] (1 for identical images); see `ssim_map`."""
    return jnp.mean(ssim_map(x, y, data_range=data_range), axis=(1, 2, 3))
