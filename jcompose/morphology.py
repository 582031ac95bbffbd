"""Binary-mask morphology in JAX: erosion and dilation with a square kernel.

Semantics follow OpenCV's `cv2.erode` / `cv2.dilate` with `np.ones((k, k))`, the default anchor
(the kernel centre, `k // 2`) and the default border (`BORDER_CONSTANT` with
`morphologyDefaultBorderValue()`): pixels outside the image never erode or dilate anything, so a
mask touching the image edge is not eaten from the edge. Used by Poisson blending (eroded mask) and
by AnyScene's edge band (dilate(M) - erode(M)).

Masks are float32 NHWC (B, H, W, 1) in {0, 1}; any channel count works (channels are independent).
All functions are jit-able; kernel sizes are static Python ints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _check_kernel(k: int, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive int (square kernel side in pixels), got {k!r}")
    return k


def _window(masks: Array, k: int, op, init: float) -> Array:
    """Sliding min/max over a k x k window anchored at its centre (OpenCV's default anchor)."""
    if masks.ndim != 4:
        raise ValueError(f"masks must be NHWC (B, H, W, C), got shape {masks.shape}")
    lo = k // 2  # OpenCV anchor: window covers [x - k//2, x + k - 1 - k//2]
    pad = ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0))
    x = masks.astype(jnp.float32)
    return lax.reduce_window(x, jnp.float32(init), op, (1, k, k, 1), (1, 1, 1, 1), pad)


def erode(masks: Array, k: int) -> Array:
    """Minimum over each k x k window; (B, H, W, C) -> same shape.  k = 1 is the identity.

    Outside the image counts as +inf, as in `cv2.erode`, so borders do not erode.
    """
    _check_kernel(k, "erode kernel size")
    return _window(masks, k, lax.min, jnp.inf)


def dilate(masks: Array, k: int) -> Array:
    """Maximum over each k x k window; (B, H, W, C) -> same shape.  k = 1 is the identity.

    Outside the image counts as -inf, as in `cv2.dilate`, so borders do not dilate.
    """
    _check_kernel(k, "dilate kernel size")
    return _window(masks, k, lax.max, -jnp.inf)
