"""AnyDoor training example from a `pair` record (the released code's `process_pairs`).

Reference branch: the object on white, cropped to its mask box, padded 1.1-1.4x, squared, resized to
224; flip + brightness/contrast; its high-frequency (HF) map. Target branch: a square crop 1.3-2.9x
around the 1.1x-expanded object box, resized to 512; the collage is the crop with the HF map
stretched into the box, plus a shape-mask channel (box, or with p=0.7 a perturbed superset of the
object mask) that is -1 on the square padding.

Ablations (paper Tables 3 and 4, each a `make_transform` argument): `collage` picks what the box holds
(input_pipeline/anydoor_collage.py: HF map, none, the object, the noised object, its shuffled patches);
`remove_background=False` gives the ID extractor the reference with its photo background (the same
window, flip and brightness as the object on white; the collage's map still comes from the object on white).

Where this differs from, or had to guess about, the released code (ali-vilab/AnyDoor 44ca2b2):
- Boxes are half-open; the released `get_bbox_from_mask` + `[y1:y2]` slicing drops the object's last
  row/column (one pixel).
- The reference is returned in [-1, 1] (project convention); the released `ref` is in [0, 1], so the
  method maps it back with (x + 1) / 2 before DINOv2's ImageNet normalisation.
- `dynamic` comes from the record: bool True (video pair) -> 1, False (image) -> 0; an int 0/1/2 is
  kept as is (2 = high-quality multi-view, which the record contract has no bool for).
- Random draws use the given numpy Generator (the released code uses the global numpy RNG and
  albumentations), so the sequence of draws differs; the distributions are the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from input_pipeline import anydoor_collage
from input_pipeline.records import RecordError
from jcompose import imaging

COLLAGE_MASKS = ("training", "run_inference")


def _tenths(rng: np.random.Generator, lo_hi: tuple[int, int]) -> float:
    """randint(lo, hi) / 10 with hi exclusive, as the released code draws its ratios."""
    lo, hi = lo_hi
    return lo / 10 if hi <= lo + 1 else int(rng.integers(lo, hi)) / 10


def _dynamic(value, source: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1, 2):
        return int(value)
    raise RecordError(source, f"field 'dynamic' must be a bool or an int in {{0, 1, 2}}, got {value!r}")


def _check_pair(record: dict) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    source = str(record.get("source", "<pair record>"))
    arrays = []
    for key, ndim in (("reference_image", 3), ("reference_mask", 2), ("target_image", 3), ("target_mask", 2)):
        a = record.get(key)
        if not isinstance(a, np.ndarray) or a.ndim != ndim or a.dtype != np.uint8 or (ndim == 3 and a.shape[2] != 3):
            form = "uint8 (H, W, 3) RGB" if ndim == 3 else "uint8 (H, W) in {0, 1}"
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise RecordError(source, f"field {key!r} must be {form}, got {got}")
        arrays.append(a)
    ref, ref_mask, tar, tar_mask = arrays
    if ref.shape[:2] != ref_mask.shape or tar.shape[:2] != tar_mask.shape:
        raise RecordError(source, "image and mask sizes differ")
    return source, ref, (ref_mask > 0).astype(np.uint8), tar, (tar_mask > 0).astype(np.uint8)


def _region_ok(box: imaging.Box, shape: tuple[int, int], ratio: float, mode: str, rule: str) -> bool:
    """AnyDoor's `check_region_size`: box sides against ratio * image sides.

    mode 'min': sides must reach the bound; 'max': must not exceed it. rule 'any': one bad side
    fails (base loaders); 'both': only both sides bad fails (YouTube-VOS/VIS, UVO, MVImgNet, try-on).
    """
    h, w = box[1] - box[0], box[3] - box[2]
    bound_h, bound_w = shape[0] * ratio, shape[1] * ratio
    bad = (h < bound_h, w < bound_w) if mode == "min" else (h > bound_h, w > bound_w)
    return not (any(bad) if rule == "any" else all(bad))


def reference_window(box: imaging.Box, ratio: float) -> imaging.Box:
    """The square (y0, y1, x0, x1), in reference-image pixels and possibly past its edges, that cropping
    `box`, `imaging.pad_around(ratio)` and `imaging.pad_to_square` cover."""
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    big_h, big_w = int(h * ratio), int(w * ratio)
    top, left = y0 - (big_h - h) // 2, x0 - (big_w - w) // 2
    side = max(big_h, big_w)
    if big_h < big_w:
        top -= (big_w - big_h) // 2
    else:
        left -= (big_h - big_w) // 2
    return top, top + side, left, left + side


def crop_filled(image: np.ndarray, window: imaging.Box, fill: int) -> np.ndarray:
    """image[y0:y1, x0:x1] with `fill` where the window leaves the image."""
    y0, y1, x0, x1 = window
    h, w = image.shape[:2]
    pad = [(max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w))] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, pad, mode="constant", constant_values=fill)
    return padded[y0 + pad[0][0] : y1 + pad[0][0], x0 + pad[1][0] : x1 + pad[1][0]]


def make_transform(
    *,
    size: int = 512,
    ref_size: int = 224,
    augment: bool = True,
    ref_expand_tenths: tuple[int, int] = (11, 15),
    target_box_ratio: float = 1.1,
    crop_expand_tenths: tuple[int, int] = (13, 30),
    box_mask_prob: float = 0.3,
    min_concentration: float = 0.9,
    mask_area: tuple[float, float] = (0.01, 0.64),
    min_ref_region: float = 0.1,
    max_target_region: float = 0.8,
    region_rule: str = "any",
    hf_thresh: int = 50,
    shape_control: bool = False,
    collage_mask: str = "training",
    collage: str = "hf_map",
    collage_noise_alpha_bar: float = 0.5,
    collage_shuffle_grid: int = 4,
    remove_background: bool = True,
) -> Callable[[dict, np.random.Generator], dict]:
    """Build `transform(pair_record, rng) -> example`; defaults are the released training values.

    Args:
      size: side of the target / collage (512).
      ref_size: side of the reference fed to DINOv2 (224).
      augment: training augmentation (flip, brightness/contrast, shape-mask perturbation). With
        False (inference) the mask channel is always the box.
      ref_expand_tenths: reference padding ratio drawn as randint(lo, hi) / 10 -> 1.1..1.4.
      target_box_ratio: expansion of the target mask box (the released [1.1, 1.2] always gives 1.1).
      crop_expand_tenths: crop ratio around that box, randint(lo, hi) / 10 -> 1.3..2.9.
      box_mask_prob: probability that the mask channel is the box (else the perturbed object mask).
      min_concentration: the reference must be one piece: largest contour area / total > this.
      mask_area: allowed mask area fraction [lo, hi] for reference and target.
      min_ref_region: reference box sides >= this fraction of the image sides.
      max_target_region: expanded target box sides <= this fraction (1.0 for try-on sets).
      region_rule: 'any' or 'both' (see `_region_ok`).
      hf_thresh: Sobel magnitude threshold of the HF map.
      shape_control: without augmentation, the mask channel is the target mask itself instead of
        the box (the released demo's "Enable Shape Control").
      collage_mask: how the mask channel is squared and resized: "training" (the released training code,
        demo and predict.py: square padding -1, nearest) or "run_inference" (the released
        run_inference.py: it pads with -1, casts to uint8 so the padding wraps to 255, resizes
        bilinearly and keeps > 0.5: padding 1, box edges bilinear).
      collage: what the target box of the collage holds (Table 4; `anydoor_collage.COLLAGE_KINDS`):
        "hf_map" (released), "none", "object", "noise", "shuffle".
      collage_noise_alpha_bar, collage_shuffle_grid: the "noise" kind's signal share and the "shuffle"
        kind's grid (see input_pipeline/anydoor_collage.py).
      remove_background: the reference (the ID extractor's input) is the object on white (True, released;
        Table 3's "+ Seg"), or the same square window of the reference photo with its background (False;
        white only where the window leaves the photo).

    A record may carry its dataset's "region_rule" and "max_target_region" (the released mixture's
    per-dataset settings, `anydoor_mixture.TagPair`); they take precedence over the arguments.

    Inference as in the released run_inference.py: augment=False, ref_expand_tenths=(12, 13) (1.2),
    crop_expand_tenths=(15, 30); the filters still apply.

    The returned transform raises `RecordError(source, reason)` for a record that fails a filter and
    returns:
      reference: float32 (ref_size, ref_size, 3) in [-1, 1], the object on white (the ID extractor's input;
        with remove_background=False the photo window).
      target: float32 (size, size, 3) in [-1, 1], the square target crop (black square padding).
      collage: float32 (size, size, 4): channels 0-2 the crop with the `collage` map (HF map) in the box, in [-1, 1];
        channel 3 the shape mask, 1 object/box, 0 outside, -1 square padding.
      dynamic: int32 scalar, 0 static image pair, 1 video pair, 2 high-quality multi-view (drives
        the adaptive timestep sampler).
      crop_box: int32 (4,) the crop (y0, y1, x0, x1) in target-image pixels (for pasting back).
      sizes: int32 (4,) [H1, W1, H2, W2], the crop size before and after square padding.
    """
    if region_rule not in ("any", "both"):
        raise ValueError(f"region_rule must be 'any' or 'both', got {region_rule!r}")
    if collage_mask not in COLLAGE_MASKS:
        raise ValueError(f"collage_mask must be one of {COLLAGE_MASKS}, got {collage_mask!r}")
    anydoor_collage.check(collage, ref_size, collage_noise_alpha_bar, collage_shuffle_grid)

    def transform(record: dict, rng: np.random.Generator) -> dict:
        source, ref, ref_mask, tar, tar_mask = _check_pair(record)
        if "dynamic" not in record:
            raise RecordError(source, "missing field 'dynamic' (bool: True for a video pair, False for an image)")
        dynamic = _dynamic(record["dynamic"], source)
        rule = record.get("region_rule", region_rule)
        max_region = float(record.get("max_target_region", max_target_region))
        if rule not in ("any", "both"):
            raise RecordError(source, f"field 'region_rule' must be 'any' or 'both', got {rule!r}")

        # Filters (the released asserts); checked before any work.
        score = imaging.mask_concentration(ref_mask)
        if score <= min_concentration:
            raise RecordError(source, f"reference mask is not one piece (concentration {score:.2f})")
        for name, m in (("reference", ref_mask), ("target", tar_mask)):
            frac = m.mean()
            if not mask_area[0] <= frac <= mask_area[1]:
                raise RecordError(source, f"{name} mask covers {frac:.4f} of the image, outside {mask_area}")
        ref_box = imaging.bbox_from_mask(ref_mask)
        if not _region_ok(ref_box, ref_mask.shape, min_ref_region, "min", rule):
            raise RecordError(source, f"reference object box {ref_box} is under {min_ref_region} of the image")
        tar_box = imaging.expand_box(imaging.bbox_from_mask(tar_mask), target_box_ratio, tar_mask.shape)
        if not _region_ok(tar_box, tar_mask.shape, max_region, "max", rule):
            raise RecordError(source, f"target box {tar_box} exceeds {max_region} of the image")

        # Reference: object on white, cropped, padded, squared, resized.
        white = np.where(ref_mask[..., None] > 0, ref, np.uint8(255))
        ref_crop = imaging.crop(white, ref_box)
        ref_m = imaging.crop(ref_mask, ref_box)
        ratio = _tenths(rng, ref_expand_tenths)
        ref_crop = imaging.pad_around(ref_crop, ratio, 255)
        ref_m = imaging.pad_around(ref_m, ratio, 0)
        ref_img = imaging.resize(imaging.pad_to_square(ref_crop, 255)[0], (ref_size, ref_size))
        # The mask is resized as 0/255 bilinear (soft edges), thresholded inside the HF map.
        ref_m = imaging.resize(imaging.pad_to_square(ref_m * 255, 0)[0], (ref_size, ref_size))
        # Without background removal the ID extractor sees the same window of the photo itself.
        photo = None if remove_background else imaging.resize(
            crop_filled(ref, reference_window(ref_box, ratio), 255), (ref_size, ref_size))
        if augment:
            if rng.random() < 0.5:
                ref_img, ref_m = ref_img[:, ::-1].copy(), ref_m[:, ::-1].copy()
                photo = None if photo is None else photo[:, ::-1].copy()
            if rng.random() < 0.5:
                alpha, beta = 1.0 + rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2)
                ref_img = imaging.brightness_contrast(ref_img, alpha, beta)
                photo = None if photo is None else imaging.brightness_contrast(photo, alpha, beta)

        # Target: square crop around the expanded box.
        crop_box = imaging.expand_box(tar_box, _tenths(rng, crop_expand_tenths), tar.shape[:2])
        crop_box = imaging.square_box(crop_box, tar.shape[:2])
        tar_crop = imaging.crop(tar, crop_box)
        tar_m = imaging.crop(tar_mask, crop_box)
        y0, y1, x0, x1 = imaging.box_in_box(tar_box, crop_box)

        if augment and rng.random() >= box_mask_prob:
            shape_mask = imaging.perturb_mask(tar_m, rng)
        elif shape_control and not augment:
            shape_mask = tar_m.copy()
        else:
            shape_mask = imaging.box_mask(tar_m.shape, (y0, y1, x0, x1))
        # The box's map draws last, so every collage kind shares the geometry above for one seed.
        detail = anydoor_collage.detail_map(collage, ref_img, ref_m, rng, hf_thresh=hf_thresh,
                                            noise_alpha_bar=collage_noise_alpha_bar, shuffle_grid=collage_shuffle_grid)
        collage_rgb = tar_crop.copy()
        collage_rgb[y0:y1, x0:x1] = imaging.resize(detail, (y1 - y0, x1 - x0))  # stretched, aspect not kept

        h1, w1 = tar_crop.shape[:2]
        tar_sq = imaging.pad_to_square(tar_crop, 0)[0]
        collage_rgb = imaging.pad_to_square(collage_rgb, 0)[0]
        h2, w2 = tar_sq.shape[:2]
        tar_sq = imaging.resize(tar_sq, (size, size))
        collage_rgb = imaging.resize(collage_rgb, (size, size))
        if collage_mask == "run_inference":  # -1 padding as uint8 is 255; bilinear uint8 resize; > 0.5
            square = imaging.pad_to_square(shape_mask.astype(np.uint8), 255)[0]
            shape_mask = (imaging.resize(square, (size, size)) > 0.5).astype(np.float32)
        else:
            shape_mask = imaging.pad_to_square(shape_mask, 2)[0]  # 2 marks padding, becomes -1
            shape_mask = imaging.resize(shape_mask, (size, size), nearest=True).astype(np.float32)
            shape_mask[shape_mask == 2] = -1.0

        return {
            "reference": imaging.to_signed(ref_img if photo is None else photo),
            "target": imaging.to_signed(tar_sq),
            "collage": np.concatenate([imaging.to_signed(collage_rgb), shape_mask[..., None]], axis=-1),
            "dynamic": np.int32(dynamic),
            "crop_box": np.asarray(crop_box, np.int32),
            "sizes": np.asarray([h1, w1, h2, w2], np.int32),
        }

    return transform


def paste_back(generated: np.ndarray, target_image: np.ndarray, crop_box, sizes, *, margin: int = 5,
               drop_first_row: bool = False) -> np.ndarray:
    """Put a generated square back into the full target image (the released `crop_back`).

    Args:
      generated: uint8 (S, S, 3), the model output for an example's `target` square.
      target_image: uint8 (H, W, 3), the full target image the example was cut from.
      crop_box, sizes: the example's `crop_box` (y0, y1, x0, x1) and `sizes` [H1, W1, H2, W2].
      margin: pixels along the crop border left untouched (5 in run_inference.py, 3 in the demo).
      drop_first_row: resize the square without its first row, as every released inference script
        (`pred[1:]` before `crop_back`): the result moves up by 1/S of the crop.
    Returns:
      uint8 (H, W, 3): a copy of target_image with the crop (minus the margin) replaced by the
      generated square resized to H2 x W2 with its square padding removed.
    """
    h1, w1, h2, w2 = (int(v) for v in sizes)
    y0, y1, x0, x1 = (int(v) for v in crop_box)
    if (y1 - y0, x1 - x0) != (h1, w1) or max(h1, w1) != h2 or h2 != w2:
        raise ValueError(f"crop_box {tuple(crop_box)} and sizes {tuple(sizes)} do not describe one squared crop")
    square = imaging.resize(generated[1:] if drop_first_row else generated, (h2, w2))
    top, left = (h2 - h1) // 2, (w2 - w1) // 2  # pad_to_square puts the odd pixel after
    crop = square[top : top + h1, left : left + w1]
    out = target_image.copy()
    m = margin
    out[y0 + m : y1 - m, x0 + m : x1 - m] = crop[m : h1 - m, m : w1 - m]
    return out
