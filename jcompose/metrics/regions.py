"""Scores restricted to a region: background preservation outside an inserted box, object fidelity inside it.

Background (DreamCom's LPIPS / SSIM columns): images are pixel values in [0, 255]; the box is blanked
(set to mid grey, 127.5, which is 0 in LPIPS's [-1, 1]) in both images, the metric's *map* (LPIPS
spatial distances; SSIM's local map on the pixel values, data_range 255, as scikit-image computes it on
8-bit images) is computed, and only pixels outside the box are averaged. Blanking makes the box's
content irrelevant (a score changes only when the background does), and averaging outside the box
keeps a large box from pulling the score towards the perfect value, which a whole-image mean over two
identically blanked boxes would do.

Object (DreamCom's CLIP-I / DINO columns): the mean cosine between a generated object's embedding and
the embeddings of every reference photo of that object (each cropped by its own mask).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jcompose.metrics import ssim as ssim_lib

BLANK = 127.5  # mid grey: 0 in [-1, 1]


def blank(images: jax.Array, box_mask: jax.Array) -> jax.Array:
    """(N, H, W, 3) pixel values in [0, 255] with the box ((N, H, W, 1), 1 inside) set to `BLANK`."""
    return jnp.where(box_mask > 0.5, BLANK, images)


def mean_outside(maps: jax.Array, box_mask: jax.Array) -> jax.Array:
    """(N, h, w[, C]) maps, (N, h, w, 1) box mask at the same size -> (N,) mean over pixels outside the box
    (and channels); NaN for an image whose box covers everything."""
    keep = (box_mask[..., 0] < 0.5).astype(jnp.float32)
    if maps.ndim == 4:
        maps = jnp.mean(maps, axis=-1)
    return jnp.sum(maps * keep, axis=(1, 2)) / jnp.where(keep.sum((1, 2)) > 0, keep.sum((1, 2)), jnp.nan)


def background_lpips(module, params, generated: jax.Array, background: jax.Array, box_mask: jax.Array) -> jax.Array:
    """(N,) LPIPS outside the box. module: `lpips.LPIPS(spatial=True)`; images (N, H, W, 3) in [0, 255]."""
    def signed(images):
        return blank(images, box_mask) / 127.5 - 1.0

    maps = module.apply({"params": params}, signed(generated), signed(background))
    return mean_outside(maps, box_mask)


def background_ssim(generated: jax.Array, background: jax.Array, box_mask: jax.Array) -> jax.Array:
    """(N,) SSIM outside the box of images in [0, 255] (Wang window, data_range 255; the map covers the
    valid region, the mask is cropped alike)."""
    maps = ssim_lib.ssim_map(blank(generated, box_mask), blank(background, box_mask), data_range=ssim_lib.PIXEL_RANGE)
    border = (ssim_lib.WINDOW - 1) // 2
    return mean_outside(maps, box_mask[:, border:-border, border:-border])


def reference_similarity(generated: np.ndarray, references: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Mean cosine of each generated embedding with its object's reference embeddings.

    Args:
      generated: (N, D) embeddings of the generated objects.
      references: (N, R, D) embeddings of the R reference photos of each one's object.
      valid: (N, R) bool, which references exist (objects may have fewer than R photos); default all.

    Returns:
      (N,) float64 means over the valid references.
    """
    g = np.asarray(generated, np.float64)
    r = np.asarray(references, np.float64)
    cos = np.einsum("nd,nrd->nr", g, r) / (np.linalg.norm(g, axis=-1)[:, None] * np.linalg.norm(r, axis=-1))
    valid = np.ones(cos.shape, bool) if valid is None else np.asarray(valid, bool)
    if not valid.any(axis=1).all():
        raise ValueError("every generated image needs at least one reference photo of its object")
    return np.where(valid, cos, 0.0).sum(axis=1) / valid.sum(axis=1)
