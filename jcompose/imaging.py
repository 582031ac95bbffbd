"""Host-side imaging helpers (numpy + OpenCV) for the input transforms.

Everything here runs in grain worker processes on the CPU, one example at a time, so it is plain
numpy/OpenCV, never JAX. Conventions:

- Images are uint8 RGB (H, W, 3) in [0, 255] until `to_signed` turns them into float32 in [-1, 1].
- Masks are uint8 (H, W) in {0, 1} unless a docstring says otherwise.
- Boxes are `(y0, y1, x0, x1)` integer pixels, half-open (rows y0..y1-1, columns x0..x1-1), the
  axis order of AnyDoor's `yyxx` boxes. (AnyDoor's own `get_bbox_from_mask` returns the last row /
  column *inclusive* and then slices `[y1:y2]`, dropping one row and one column of the object; the
  half-open boxes here keep them.)
- Randomness comes from an explicit `np.random.Generator`, so transforms are reproducible and safe
  in grain's `random_map`.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]

# OpenCV threads would oversubscribe the grain worker processes (one example per process).
cv2.setNumThreads(1)


# ----------------------------------------------------------------------------------------------
# Conversions and geometry


def to_signed(image: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) in [0, 255] -> float32 in [-1, 1] (x / 127.5 - 1)."""
    return image.astype(np.float32) / 127.5 - 1.0


def resize(image: np.ndarray, size: tuple[int, int], *, nearest: bool = False, lanczos: bool = False) -> np.ndarray:
    """Resize to `size = (height, width)` with `cv2.resize`: bilinear, nearest (label maps) or Lanczos-4.

    Works for (H, W) and (H, W, C) arrays (C <= 4); the dtype is kept.
    """
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize target must be at least 1x1, got {size}")
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LANCZOS4 if lanczos else cv2.INTER_LINEAR
    out = cv2.resize(image, (w, h), interpolation=interp)
    if image.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel axis of size 1
        out = out[..., None]
    return out


def resize_shorter_side(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize so the shorter side is `size`, keeping the aspect ratio (torchvision `Resize(size)`:
    the longer side becomes `int(size * long / short)`)."""
    h, w = image.shape[:2]
    if h <= w:
        new = (size, int(size * w / h))
    else:
        new = (int(size * h / w), size)
    return resize(image, new, nearest=nearest)


def bbox_from_mask(mask: np.ndarray) -> Box | None:
    """Tight half-open box `(y0, y1, x0, x1)` of the nonzero pixels of an (H, W) mask; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """uint8 (H, W) mask that is 1 inside the half-open `box` and 0 elsewhere."""
    out = np.zeros(shape[:2], np.uint8)
    y0, y1, x0, x1 = box
    out[y0:y1, x0:x1] = 1
    return out


def expand_box(box: Box, ratio: float, shape: tuple[int, int]) -> Box:
    """Scale a box about its centre by `ratio` (both sides), truncate to ints, clip to the image.

    Follows AnyDoor's `expand_bbox`: new side = ratio * side, corners = int(centre -/+ side / 2).
    `shape` is the image (H, W).
    """
    y0, y1, x0, x1 = box
    h, w = (y1 - y0) * ratio, (x1 - x0) * ratio
    yc, xc = 0.5 * (y0 + y1), 0.5 * (x0 + x1)
    ny0, ny1 = int(yc - h / 2), int(yc + h / 2)
    nx0, nx1 = int(xc - w / 2), int(xc + w / 2)
    return max(0, ny0), min(shape[0], ny1), max(0, nx0), min(shape[1], nx1)


def square_box(box: Box, shape: tuple[int, int]) -> Box:
    """Grow the shorter side of a box to the longer one about the centre, then clip to the image.

    AnyDoor's `box2squre`: the result is square unless it hits the image border.
    """
    y0, y1, x0, x1 = box
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    h, w = y1 - y0, x1 - x0
    if h >= w:
        x0, x1 = cx - h // 2, cx + h // 2
    else:
        y0, y1 = cy - w // 2, cy + w // 2
    return max(0, y0), min(shape[0], y1), max(0, x0), min(shape[1], x1)


def box_in_box(inner: Box, outer: Box) -> Box:
    """Coordinates of `inner` relative to the top-left corner of `outer` (no clipping)."""
    return inner[0] - outer[0], inner[1] - outer[0], inner[2] - outer[2], inner[3] - outer[2]


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    """image[y0:y1, x0:x1] (a view)."""
    y0, y1, x0, x1 = box
    return image[y0:y1, x0:x1]


def pad_to_square(image: np.ndarray, value: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad the shorter side symmetrically (extra pixel after) with `value`.

    Returns (square image, (top, left)) so callers can undo the padding. AnyDoor's `pad_to_square`
    with `random=False`.
    """
    h, w = image.shape[:2]
    d = abs(h - w)
    before, after = d // 2, d - d // 2
    pad = [(before, after), (0, 0)] if h < w else [(0, 0), (before, after)]
    pad += [(0, 0)] * (image.ndim - 2)
    top_left = (before, 0) if h < w else (0, before)
    return np.pad(image, pad, mode="constant", constant_values=value), top_left


def pad_around(image: np.ndarray, ratio: float, value: float) -> np.ndarray:
    """Pad an image to int(ratio * H) x int(ratio * W), centred (AnyDoor's `expand_image_mask`)."""
    h, w = image.shape[:2]
    big_h, big_w = int(h * ratio), int(w * ratio)
    top, left = (big_h - h) // 2, (big_w - w) // 2
    pad = [(top, big_h - h - top), (left, big_w - w - left)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="constant", constant_values=value)


def zoom(image: np.ndarray, scale: float, *, fill: float | tuple, nearest: bool = False) -> np.ndarray:
    """Scale about the image centre, keeping the size; uncovered pixels get `fill`.

    The affine map of albumentations' `ShiftScaleRotate` with no shift and no rotation
    (`cv2.getRotationMatrix2D` about (W/2 - 0.5, H/2 - 0.5), `BORDER_CONSTANT`).
    """
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), 0.0, scale)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if image.ndim == 3 and not isinstance(fill, tuple):
        fill = (fill,) * image.shape[2]
    return cv2.warpAffine(image, matrix, (w, h), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


# ----------------------------------------------------------------------------------------------
# Masks and morphology


def erode(mask: np.ndarray, k: int, iterations: int = 1) -> np.ndarray:
    """`cv2.erode` with a k x k square of ones; pixels outside the image do not erode."""
    return cv2.erode(mask, np.ones((k, k), np.uint8), iterations=iterations)


def dilate(mask: np.ndarray, k: int, iterations: int = 1) -> np.ndarray:
    """`cv2.dilate` with a k x k square of ones."""
    return cv2.dilate(mask, np.ones((k, k), np.uint8), iterations=iterations)


def edge_band(mask: np.ndarray, k: int) -> np.ndarray:
    """dilate(M) - erode(M) with a k x k kernel: the band around a mask's border, uint8 {0, 1}."""
    m = (mask > 0).astype(np.uint8)
    return dilate(m, k) - erode(m, k)


def mask_concentration(mask: np.ndarray) -> float:
    """Area of the largest outer contour / total outer contour area, in [0, 1] (AnyDoor's `mask_score`).

    1 for a single-piece mask; small when the mask is scattered. Masks under 10 pixels score 0.
    """
    m = (mask > 0).astype(np.uint8)
    if m.sum() < 10:
        return 0.0
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    areas = np.array([cv2.contourArea(c) for c in contours])
    total = areas.sum()
    return float(areas.max() / total) if total > 0 else 0.0


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component of a binary mask; uint8 {0, 1}. Empty stays empty."""
    m = (mask > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return m
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == biggest).astype(np.uint8)


def _random_structure(rng: np.random.Generator) -> np.ndarray:
    size = int(rng.integers(3, 10))
    shape = int(rng.integers(0, 4))
    if shape == 0:
        return cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    if shape == 1:
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    if shape == 2:
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size // 2))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size // 2, size))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    a, b = a > 0, b > 0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def perturb_mask(
    mask: np.ndarray, rng: np.random.Generator, *, min_iou: float = 0.3, max_iou: float = 0.99, rounds: int = 250
) -> np.ndarray:
    """A coarse, blobby version of an object mask (AnyDoor's `perturb_mask`); uint8 {0, 1}.

    Draws a target IoU in U(min_iou, max_iou); each round applies 4 random dilations/erosions (3-9 px
    rectangle or ellipse kernels) to random sub-rectangles, sometimes seeding a pixel first, and ORs
    the ground truth back in, so the mask only grows. Stops once the IoU with the ground truth drops
    below the target (or after `rounds`), then keeps the largest 8-connected component: for a
    single-piece mask the result is a superset of it.
    """
    gt = (mask > 0).astype(np.uint8)
    h, w = gt.shape
    if h <= 2 or w <= 2:
        return gt
    target = rng.uniform(min_iou, max_iou)
    seg = gt.copy()
    gt_area = max(1, int(gt.sum()))
    for _ in range(rounds):
        for _ in range(4):
            lx, ly = int(rng.integers(w)), int(rng.integers(h))
            rx, ry = int(rng.integers(lx + 1, w + 1)), int(rng.integers(ly + 1, h + 1))
            if rng.random() < 0.1:  # a lone pixel that the next dilation grows into an extra blob or hole
                seg[(ly + ry) // 2, (lx + rx) // 2] = rng.integers(2)
            op = cv2.dilate if rng.random() < 0.5 else cv2.erode
            sub = op(np.ascontiguousarray(seg[ly:ry, lx:rx]), _random_structure(rng))
            seg[ly:ry, lx:rx] = sub | gt[ly:ry, lx:rx]  # only this rectangle changed since the last OR
        if gt_area / np.count_nonzero(seg) < target:  # the IoU, since seg is a superset of gt
            break
    return largest_component(seg)


# ----------------------------------------------------------------------------------------------
# High-frequency map


def sobel_hf_map(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    thresh: int = 50,
    work_size: int = 256,
    erode_k: int = 5,
    erode_iter: int = 2,
) -> np.ndarray:
    """AnyDoor's high-frequency map of an object: edge-weighted colours inside the eroded mask.

    Args:
      image: uint8 (H, W, 3).
      mask: (H, W) float in [0, 1] (soft masks are thresholded at 0.5 after resizing).
      thresh: edge magnitudes below this (0-255 scale) are dropped.
      work_size: the map is computed at work_size x work_size, then resized back (as released).
    Returns:
      uint8 (H, W, 3): `image * edge / 255` where edge = max over RGB of 0.5 |Sobel_x| + 0.5 |Sobel_y|
      (3x3, each saturated to uint8), zeroed outside the eroded mask and below `thresh`.
    """
    h, w = image.shape[:2]
    img = resize(image, (work_size, work_size))
    m = (resize(mask.astype(np.float32), (work_size, work_size)) > 0.5).astype(np.uint8)
    m = erode(m, erode_k, erode_iter)  # drop the object outline itself: it is a mask edge, not texture
    gx = cv2.convertScaleAbs(cv2.Sobel(img, cv2.CV_64F, 1, 0, ksize=3))
    gy = cv2.convertScaleAbs(cv2.Sobel(img, cv2.CV_64F, 0, 1, ksize=3))
    edge = cv2.addWeighted(gx, 0.5, gy, 0.5, 0).max(axis=-1) * m
    edge[edge < thresh] = 0
    hf = (edge[..., None].astype(np.float32) / 255.0 * img.astype(np.float32)).astype(np.uint8)
    return resize(hf, (h, w))


# ----------------------------------------------------------------------------------------------
# Colour augmentation (uint8 in, uint8 out; values saturate at 0 and 255)


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)[image]


def brightness_contrast(image: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """`image * alpha + beta * 255`, saturated (albumentations' `RandomBrightnessContrast` formula)."""
    return _lut(image, np.arange(256, dtype=np.float64) * alpha + beta * 255.0)


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    """`255 * (image / 255) ** g` (albumentations' `RandomGamma`, g = gamma_limit / 100)."""
    return _lut(image, 255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** g)


def rgb_shift(image: np.ndarray, shifts: tuple[float, float, float]) -> np.ndarray:
    """Add a per-channel offset (R, G, B) in pixel units, saturated (albumentations' `RGBShift`)."""
    out = image.astype(np.int16) + np.rint(np.asarray(shifts)).astype(np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)
