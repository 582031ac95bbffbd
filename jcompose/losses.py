"""AnyScene's pixel-space loss terms (CVPR 2024, Sec. 4.1): content loss and edge-gradient loss.

Both compare the decoded x0 estimate x̂_t = D(ẑ_t) with the original image x0, where
ẑ_t = (z_t - sqrt(1 - ᾱ_t) ε_θ) / sqrt(ᾱ_t) (the estimate itself comes from `jcompose.diffusion`):

    Eq. (4)  L_content  = || x0 - x̂_t ||²₂ ⊙ M
    Eq. (5)  L_gradient = || ∇x0 - ∇x̂_t ||²₂ ⊙ M_edge,   M_edge = dilate(M) - erode(M),  ∇ = Laplacian
    Eq. (6)  L_total    = L_denoising + L_content + [t < αT] L_gradient        (α = 0.25 by default)

The paper does not state the normalisation of the masked norms; here each is a *mean over the
masked elements* of one sample (sum of squared errors over masked pixels and channels, divided by
channels x masked pixels), so the loss scale does not depend on object size or resolution; a
sample with an empty mask contributes 0.  Batch reduction is the plain mean over samples, so the
per-sample gate of Eq. (6) keeps the expectation over t of the paper's objective.

Arrays are float32 NHWC: images (B, H, W, C) in [-1, 1] (the engine's range; the losses scale with
the square of the range), masks (B, H, W, 1) in {0, 1}, timesteps (B,) int in [0, T).  bf16 inputs
are promoted to float32.  Everything is pure JAX, jit-able and differentiable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jcompose import morphology

Array = jax.Array

REDUCTIONS = ("mean", "none")


# ------------------------------------------------------------------------------------- helpers


def _check_pair(decoded_x0: Array, image: Array, mask: Array, name: str) -> None:
    if decoded_x0.ndim != 4 or decoded_x0.shape != image.shape:
        raise ValueError(
            f"{name}: decoded_x0 and image must both be NHWC (B, H, W, C) of one shape, got "
            f"{decoded_x0.shape} and {image.shape}"
        )
    if mask.shape != image.shape[:3] + (1,):
        raise ValueError(f"{name}: mask must be (B, H, W, 1) = {image.shape[:3] + (1,)}, got {mask.shape}")


def _masked_mean(sq_err: Array, weight: Array) -> Array:
    """Per-sample mean of sq_err (B, H, W, C) over the elements where weight (B, H, W, 1) is on -> (B,)."""
    channels = sq_err.shape[-1]
    total = jnp.sum(sq_err * weight, axis=(1, 2, 3))
    count = jnp.sum(weight, axis=(1, 2, 3)) * channels
    return total / jnp.maximum(count, 1.0)  # empty mask -> 0, and no 0/0 in the gradient


def _reduce(per_sample: Array, reduce: str) -> Array:
    if reduce == "mean":
        return jnp.mean(per_sample)
    if reduce == "none":
        return per_sample
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


# ---------------------------------------------------------------------------------- content


def content_loss(decoded_x0: Array, image: Array, mask: Array, *, reduce: str = "mean") -> Array:
    """Eq. (4): mean squared error inside the foreground mask.

    Args:
      decoded_x0: (B, H, W, C) decoded x0 estimate x̂_t, in [-1, 1].
      image: (B, H, W, C) original image x0, in [-1, 1].
      mask: (B, H, W, 1) foreground mask M in {0, 1}.
      reduce: "mean" -> () batch mean; "none" -> (B,) per sample.

    Per sample: sum_{p, c} M_p (x0 - x̂)²_{p,c} / (C * max(sum_p M_p, 1)).
    """
    _check_pair(decoded_x0, image, mask, "content_loss")
    diff = decoded_x0.astype(jnp.float32) - image.astype(jnp.float32)
    return _reduce(_masked_mean(diff * diff, mask.astype(jnp.float32)), reduce)


# ------------------------------------------------------------------------------------- edge


def _binomial(n: int) -> np.ndarray:
    return np.array([1.0]) if n <= 0 else np.convolve(_binomial(n - 1), [1.0, 1.0])


def laplacian_kernel(ksize: int) -> np.ndarray:
    """(ksize', ksize') float32 kernel of OpenCV's `cv2.Laplacian` with the given aperture.

    ksize = 1: the 5-point stencil [[0, 1, 0], [1, -4, 1], [0, 1, 0]].  Odd ksize >= 3:
    d²/dx² + d²/dy² with OpenCV's Sobel kernels, i.e. outer(smooth, deriv2) + outer(deriv2, smooth)
    where smooth = binomial row of length ksize and deriv2 = binomial(ksize - 2) convolved with
    [1, -2, 1] (for ksize = 3: [[2, 0, 2], [0, -8, 0], [2, 0, 2]]).  No scaling, as OpenCV's default.
    """
    if isinstance(ksize, bool) or not isinstance(ksize, int) or ksize < 1 or ksize % 2 == 0 or ksize > 31:
        raise ValueError(f"laplacian ksize must be an odd int in [1, 31] (as cv2.Laplacian), got {ksize!r}")
    if ksize == 1:
        return np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    smooth = _binomial(ksize - 1)
    deriv2 = np.convolve(_binomial(ksize - 3), [1.0, -2.0, 1.0])
    return (np.outer(smooth, deriv2) + np.outer(deriv2, smooth)).astype(np.float32)


def laplacian(images: Array, ksize: int = 1) -> Array:
    """Per-channel Laplacian, (B, H, W, C) -> (B, H, W, C) float32, as `cv2.Laplacian(img, CV_32F, ksize=ksize)`.

    Border: reflect without repeating the edge pixel (OpenCV's default BORDER_REFLECT_101).
    """
    if images.ndim != 4:
        raise ValueError(f"laplacian expects NHWC images (B, H, W, C), got shape {images.shape}")
    kernel = laplacian_kernel(ksize)
    r = kernel.shape[0] // 2
    if images.shape[1] <= r or images.shape[2] <= r:
        raise ValueError(f"images {images.shape[1:3]} are too small for a Laplacian of ksize {ksize}")
    channels = images.shape[-1]
    x = jnp.pad(images.astype(jnp.float32), ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    # Depthwise: one copy of the (symmetric, so correlation = convolution) kernel per channel.
    rhs = jnp.tile(jnp.asarray(kernel)[:, :, None, None], (1, 1, 1, channels))
    return lax.conv_general_dilated(
        x, rhs, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels
    )


def edge_band(mask: Array, dilate_k: int = 5, erode_k: int = 5) -> Array:
    """M_edge = dilate(M) - erode(M) with square kernels (Eq. (5)); (B, H, W, 1) -> (B, H, W, 1) in {0, 1}.

    Same as `cv2.dilate(M, np.ones((dilate_k,) * 2)) - cv2.erode(M, np.ones((erode_k,) * 2))`.
    """
    m = mask.astype(jnp.float32)
    return morphology.dilate(m, dilate_k) - morphology.erode(m, erode_k)


def timestep_gate(t: Array, alpha: float = 0.25, num_train_timesteps: int = 1000) -> Array:
    """Eq. (6) gate: (B,) float32, 1 where t < alpha * T, else 0."""
    return (jnp.asarray(t).astype(jnp.float32) < alpha * num_train_timesteps).astype(jnp.float32)


def edge_loss(
    decoded_x0: Array,
    image: Array,
    mask: Array,
    t: Array,
    *,
    alpha: float = 0.25,
    num_train_timesteps: int = 1000,
    laplacian_ksize: int = 1,
    dilate_k: int = 5,
    erode_k: int = 5,
    reduce: str = "mean",
) -> Array:
    """Eq. (5) gated by Eq. (6): squared Laplacian difference on the mask's edge band, for t < alpha * T.

    Args:
      decoded_x0, image: (B, H, W, C) in [-1, 1], as in `content_loss`.
      mask: (B, H, W, 1) foreground mask M in {0, 1}.
      t: (B,) int training timesteps in [0, num_train_timesteps).
      alpha: gate fraction (paper default 0.25); samples with t >= alpha * T contribute 0.
      laplacian_ksize: aperture of the Laplacian (`cv2.Laplacian` semantics; 1 = 5-point stencil).
      dilate_k, erode_k: square kernel sides of the band M_edge = dilate(M) - erode(M).  The paper
        gives no sizes; 5 and 5 are this library's defaults (set them in the config).
      reduce: "mean" -> () batch mean (gated-out samples count as 0); "none" -> (B,).

    Per sample: [t < alpha T] * sum_{p, c} E_p (Lap x0 - Lap x̂)²_{p,c} / (C * max(sum_p E_p, 1)).
    """
    _check_pair(decoded_x0, image, mask, "edge_loss")
    if jnp.shape(t) != (image.shape[0],):
        raise ValueError(f"edge_loss: t must be (B,) = ({image.shape[0]},) timesteps, got shape {jnp.shape(t)}")
    diff = laplacian(decoded_x0, laplacian_ksize) - laplacian(image, laplacian_ksize)
    per_sample = _masked_mean(diff * diff, edge_band(mask, dilate_k, erode_k))
    return _reduce(timestep_gate(t, alpha, num_train_timesteps) * per_sample, reduce)
