"""What AnyDoor's detail extractor sees in the target box of the collage (paper Sec. 3.2, Table 4).

The transform (input_pipeline/anydoor.py) stretches a `detail` map of the reference (the object on white,
reference-sized, after augmentation) into the 1.1x target box of the collage. Table 4 compares five maps;
every kind keeps the rest of the example (crop, box, shape mask, reference) the same, so one seed gives the
same geometry for every kind:

  "hf_map"  High-frequency Map (the paper's and the released choice): Sobel-edge-weighted colours inside
            the eroded object mask (`imaging.sobel_hf_map`).
  "none"    None (i.e. all-zero map): the box is black (0, i.e. -1 in the collage), so the extractor gets
            only the surroundings and the shape mask.
  "object"  Original Image ("the original image with no background"): the object's own pixels inside its
            mask, black elsewhere (black as the HF map's empty places, so only the object is new).
  "noise"   Noise Image ("the noised inversion of the target object"): the object as in "object", in
            [-1, 1], noised as the forward diffusion does, sqrt(a) x + sqrt(1 - a) eps with eps ~ N(0, 1)
            per pixel and channel, `a` = `noise_alpha_bar`; black outside the mask. The paper gives no
            noise level: 0.5 (signal and noise of equal variance) is this project's default.
  "shuffle" Patch-shuffled Image: the "object" map cut into a grid x grid of equal square patches that are
            put back in a random order. The paper gives no patch size: 4 x 4 (56-px patches of the
            224-px reference) is this project's default.

Random draws ("noise", "shuffle") come from the transform's generator after all its other draws.
"""

from __future__ import annotations

import numpy as np

from jcompose import imaging

COLLAGE_KINDS = ("hf_map", "none", "object", "noise", "shuffle")


def object_on_black(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 (R, R, 3) reference and its soft mask (R, R) uint8 in [0, 255] -> the object's pixels where
    the mask is over half, 0 elsewhere (uint8 (R, R, 3))."""
    inside = mask.astype(np.float32) / 255.0 > 0.5
    return np.where(inside[..., None], image, np.uint8(0))


def noised(image: np.ndarray, mask: np.ndarray, alpha_bar: float, rng: np.random.Generator) -> np.ndarray:
    """The "noise" map (module doc): uint8 (R, R, 3), the noised object quantised back to [0, 255]."""
    x = imaging.to_signed(image)
    eps = rng.standard_normal(x.shape).astype(np.float32)
    noisy = np.float32(np.sqrt(alpha_bar)) * x + np.float32(np.sqrt(1.0 - alpha_bar)) * eps
    inside = mask.astype(np.float32) / 255.0 > 0.5
    signed = np.where(inside[..., None], np.clip(noisy, -1.0, 1.0), -1.0)
    return np.round((signed + 1.0) * 127.5).astype(np.uint8)


def shuffle_patches(image: np.ndarray, grid: int, rng: np.random.Generator) -> np.ndarray:
    """(R, R, C) with R a multiple of `grid` -> its grid x grid square patches in a random order."""
    side, channels = image.shape[0], image.shape[2]
    p = side // grid
    patches = image.reshape(grid, p, grid, p, channels).transpose(0, 2, 1, 3, 4).reshape(grid * grid, p, p, channels)
    patches = patches[rng.permutation(grid * grid)]
    return patches.reshape(grid, grid, p, p, channels).transpose(0, 2, 1, 3, 4).reshape(side, side, channels)


def check(kind: str, reference_size: int, noise_alpha_bar: float, shuffle_grid: int) -> None:
    """ValueError naming the argument for an unknown kind or a setting the kind cannot use."""
    if kind not in COLLAGE_KINDS:
        raise ValueError(f"collage = {kind!r}: expected one of {COLLAGE_KINDS}")
    if kind == "noise" and not 0.0 <= noise_alpha_bar <= 1.0:
        raise ValueError(f"collage_noise_alpha_bar = {noise_alpha_bar!r}: expected a signal share in [0, 1]")
    if kind == "shuffle" and (shuffle_grid < 1 or reference_size % shuffle_grid):
        raise ValueError(f"collage_shuffle_grid = {shuffle_grid!r}: expected a positive divisor of the reference "
                         f"side {reference_size} (equal square patches)")


def detail_map(kind: str, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, hf_thresh: int = 50,
               noise_alpha_bar: float = 0.5, shuffle_grid: int = 4) -> np.ndarray:
    """The map of `kind` (module doc) for the reference `image` uint8 (R, R, 3) (the object on white) and its
    soft mask uint8 (R, R) in [0, 255]: uint8 (R, R, 3), stretched into the target box by the caller."""
    if kind == "hf_map":
        return imaging.sobel_hf_map(image, mask.astype(np.float32) / 255.0, thresh=hf_thresh)
    if kind == "none":
        return np.zeros_like(image)
    if kind == "object":
        return object_on_black(image, mask)
    if kind == "noise":
        return noised(image, mask, noise_alpha_bar, rng)
    if kind == "shuffle":
        return shuffle_patches(object_on_black(image, mask), shuffle_grid, rng)
    raise ValueError(f"collage = {kind!r}: expected one of {COLLAGE_KINDS}")
