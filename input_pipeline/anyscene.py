"""AnyScene training example from an `instances` record: composited foreground -> original scene.

The paper (Sec. 4.1, 5.1) builds its data from segmentation annotations: objects are cut out by their
masks and recombined on a blank canvas into a "composited foreground"; the foreground injection
module learns to reconstruct the *original image* from it and the scene description. Because the
target is the original image, the objects keep their positions in it (a random layout would make the
target inconsistent with the foreground). Random RGB shift, contrast and gamma (albumentations) are
applied to the foreground only, so the model learns to harmonise colours and lighting.

Guesses (the paper gives no code or values; see reference/dreamcom.md section B):
- the square view: shorter side to `size`, then a random (training) or centred (benchmark) crop;
- which objects: 1..`max_objects` drawn uniformly among instances covering at least
  `min_object_area` (and at most `max_object_area`) of the crop;
- the canvas colour: `canvas_value` (default 0, i.e. -1 in [-1, 1]: black);
- augmentation strengths: albumentations' defaults (RGBShift +-20, contrast 1 +- 0.2, gamma
  0.8-1.2, each with p = 0.5);
- caption: one of the record's captions at random; without captions, "a photo of <labels>" from
  the chosen objects' category names (the paper used BLIP-2 captions there), else "".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from input_pipeline.records import RecordError, rgb_field
from jcompose import imaging


def _check_instances(record: dict) -> tuple[str, np.ndarray, np.ndarray, list, list]:
    source = str(record.get("source", "<instances record>"))
    image = rgb_field(record, "image", source)
    masks = record.get("masks")
    if not isinstance(masks, np.ndarray) or masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        got = f"{masks.dtype} {masks.shape}" if isinstance(masks, np.ndarray) else type(masks).__name__
        raise RecordError(source, f"field 'masks' must be uint8 (N, {image.shape[0]}, {image.shape[1]}), got {got}")
    labels = list(record.get("labels", [""] * len(masks)))
    if len(labels) != len(masks):
        raise RecordError(source, f"field 'labels' has {len(labels)} names for {len(masks)} masks")
    captions = [c for c in record.get("captions", []) if isinstance(c, str) and c.strip()]
    return source, image, masks, labels, captions


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """Source index of each of `dst` output pixels for a nearest-neighbour resize (pixel centres)."""
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def square_view(
    image: np.ndarray, masks: np.ndarray, size: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Shorter side to `size`, then a size x size crop (random offset with `rng`, centred without).

    image uint8 (H, W, 3) -> uint8 (size, size, 3) (bilinear); masks uint8 (N, H, W) ->
    (N, size, size) (nearest, by index so any N works and OR-ing masks commutes with it).
    """
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    dy, dx = nh - size, nw - size
    oy = int(rng.integers(0, dy + 1)) if rng is not None else dy // 2
    ox = int(rng.integers(0, dx + 1)) if rng is not None else dx // 2
    img = imaging.resize(image, (nh, nw))[oy : oy + size, ox : ox + size]
    rows = _nearest_index(h, nh)[oy : oy + size]
    cols = _nearest_index(w, nw)[ox : ox + size]
    return np.ascontiguousarray(img), masks[:, rows][:, :, cols]


def _choose(masks, labels, source, rng, max_objects, min_area, max_area) -> np.ndarray:
    areas = masks.reshape(len(masks), -1).astype(bool).mean(axis=1)
    valid = np.flatnonzero((areas >= min_area) & (areas <= max_area))
    if valid.size == 0:
        raise RecordError(source, f"no instance covers {min_area}-{max_area} of the {masks.shape[1]}px view")
    k = int(rng.integers(1, min(max_objects, valid.size) + 1))
    return np.sort(rng.choice(valid, size=k, replace=False))


def _caption(captions, labels, chosen, rng) -> str:
    if captions:
        return captions[int(rng.integers(len(captions)))]
    names = list(dict.fromkeys(labels[i] for i in chosen if labels[i]))
    return ("a photo of " + " and ".join(names)) if names else ""


def _colour_jitter(image: np.ndarray, rng: np.random.Generator, p: float, shift: float, contrast: float, gam):
    """albumentations-style RGBShift, contrast and gamma, each applied with probability p."""
    if rng.random() < p:
        image = imaging.rgb_shift(image, tuple(rng.uniform(-shift, shift, 3)))
    if rng.random() < p:
        image = imaging.brightness_contrast(image, 1.0 + rng.uniform(-contrast, contrast), 0.0)
    if rng.random() < p:
        image = imaging.gamma(image, rng.uniform(gam[0], gam[1]) / 100.0)
    return image


def _example(image, masks, labels, captions, chosen, rng, canvas_value, jitter) -> dict:
    union = np.any(masks[chosen] > 0, axis=0)
    fg = jitter(image) if jitter is not None else image
    canvas = np.full_like(image, canvas_value)
    foreground = np.where(union[..., None], fg, canvas)
    return {
        "image": imaging.to_signed(image),
        "foreground": imaging.to_signed(foreground),
        "mask": union[..., None].astype(np.float32),
        "caption": _caption(captions, labels, chosen, rng),
    }


def make_transform(
    *,
    size: int = 512,
    max_objects: int = 3,
    min_object_area: float = 0.01,
    max_object_area: float = 0.8,
    canvas_value: int = 0,
    jitter_prob: float = 0.5,
    rgb_shift_limit: float = 20.0,
    contrast_limit: float = 0.2,
    gamma_limit: tuple[float, float] = (80.0, 120.0),
) -> Callable[[dict, np.random.Generator], dict]:
    """Build `transform(instances_record, rng) -> example` for AnyScene training.

    Args:
      size: output side S.
      max_objects: at most this many instances form the foreground (at least 1).
      min_object_area, max_object_area: an instance is eligible if its area in the S x S view is
        within these fractions.
      canvas_value: uint8 grey level of the blank canvas behind the objects.
      jitter_prob, rgb_shift_limit, contrast_limit, gamma_limit: foreground colour augmentation
        (RGB shift in pixel levels, contrast factor 1 +- limit, gamma in percent).

    The transform returns:
      image: float32 (S, S, 3) in [-1, 1], the original (target) scene.
      foreground: float32 (S, S, 3) in [-1, 1], the colour-jittered objects at their original
        positions on the canvas.
      mask: float32 (S, S, 1) in {0, 1}, the union of the chosen instance masks.
      caption: str, the scene description (tokenised by the method).
    It raises `RecordError` when no instance is eligible or a field is malformed.
    """

    def jitter(image, rng):
        return _colour_jitter(image, rng, jitter_prob, rgb_shift_limit, contrast_limit, gamma_limit)

    def transform(record: dict, rng: np.random.Generator) -> dict:
        source, image, masks, labels, captions = _check_instances(record)
        image, masks = square_view(image, masks, size, rng)
        chosen = _choose(masks, labels, source, rng, max_objects, min_object_area, max_object_area)
        return _example(image, masks, labels, captions, chosen, rng, canvas_value, lambda im: jitter(im, rng))

    return transform


def benchmark_composite(
    record: dict,
    index: int,
    seed: int,
    *,
    size: int = 512,
    max_objects: int = 3,
    min_object_area: float = 0.01,
    max_object_area: float = 0.8,
    canvas_value: int = 0,
) -> dict:
    """The evaluation composite for record number `index`: same construction as training (the paper
    builds its 3,108 COCO benchmark pairs "the same method as for constructing the training data"),
    with a centred crop and no colour augmentation; the object choice and caption come from a
    generator seeded by (seed, index), so a fixed seed always gives the same benchmark.

    Returns the training transform's keys (image, foreground, mask, caption); `image` is the real
    scene, the reference for FID.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    source, image, masks, labels, captions = _check_instances(record)
    image, masks = square_view(image, masks, size, None)
    chosen = _choose(masks, labels, source, rng, max_objects, min_object_area, max_object_area)
    return _example(image, masks, labels, captions, chosen, rng, canvas_value, None)
