"""DreamCom fine-tuning example from a `reference` record (the released `train.py` data path).

Recipe (bcmi/DreamCom-Image-Composition, reference/dreamcom.md A.3): the object mask becomes its
tight bounding box; shorter side to 512 (PIL bilinear for the image, PIL nearest for the mask: the
released torchvision `Resize` on PIL images); random 512 crop; with p = 0.6 a zoom in [0.8, 1.2] about
the centre with constant fill (black in the released code; the mask marks filled pixels as padding);
redraw crop and zoom until more than 80% of the box pixels survive (the threshold relaxes by 0.02
every 20 failed draws, as released). The inpainting mask is the surviving box, the masked image is
the image with the box set to 0 in [-1, 1] (`image * (mask < 0.5)`, the SD inpainting convention),
and the loss mask is 1 everywhere except the zoom padding.

An object whose box is wider than a crop can keep 80% of fails every draw. After `max_draws` failed
draws, `crop_fallback` decides, and the example is never dropped:
  "relax"  (released) the redraw goes on while the threshold keeps relaxing, until a draw passes (the
           released loop has no bound; its threshold reaches 0 after 800 draws);
  "shrink" (the paper's "the foreground object occupies no less than 80% of the original size") the
           photo is shrunk until the whole box fits one crop, the rest of the crop is zoom padding.
Every fallback is reported: the example's `crop_fallback` is 1.0 (the method logs its batch mean as a
training metric) and a warning names the file (the first few per process, then every power of ten).

Inference (`inference_inputs`, `paste_region`) resizes with PIL's Lanczos / nearest, as the released
`test.py`. PIL's filters widen with the scale factor (antialiasing); OpenCV's bilinear / Lanczos-4 do
not: on a photo-sized image (skimage's 872 x 1000 `hubble_deep_field`, shorter side to 512) they differ
from PIL's by 1.8 (bilinear) and 3.0 (Lanczos) grey levels on average, up to 73 and 84.

Differences from the released code: random draws come from the given numpy Generator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from PIL import Image

from input_pipeline.records import RecordError, rgb_field
from jcompose import imaging

_PAD = 2  # mask label of zoom padding, as in the released code
CROP_FALLBACKS = ("relax", "shrink")
LOGGED_ONE_BY_ONE = 5  # fallbacks logged individually per process, then one line per power of ten
logger = logging.getLogger(__name__)


def pil_resize(image: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> `size` = (height, width) with PIL's `resample` filter (antialiased
    when shrinking), the resize of the released code."""
    return np.asarray(Image.fromarray(image).resize((int(size[1]), int(size[0])), resample))


def shorter_side_size(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    """(height, width) with the shorter side `size`, as torchvision's `Resize(size)`: the longer side
    becomes int(size * long / short)."""
    h, w = shape[:2]
    return (size, int(size * w / h)) if h <= w else (int(size * h / w), size)


def _check_reference(record: dict) -> tuple[str, np.ndarray, np.ndarray]:
    source = str(record.get("source", "<reference record>"))
    image = rgb_field(record, "image", source)
    mask = record.get("mask")
    if not isinstance(mask, np.ndarray) or mask.shape != image.shape[:2]:
        got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise RecordError(source, f"field 'mask' must be uint8 {image.shape[:2]} in {{0, 1}}, got {got}")
    return source, image, mask


def _window(length: int, size: int, lo: int, hi: int, rng: np.random.Generator) -> int:
    """Offset of a `size` window on an axis of `length` pixels that holds [lo, hi): inside the axis when
    it is long enough, else covering all of it (a negative offset: padding before)."""
    if length >= size:
        return int(rng.integers(max(0, hi - size), min(lo, length - size) + 1))
    return int(rng.integers(length - size, 1))


def shrink_to_fit(image: np.ndarray, boxm: np.ndarray, size: int, fill, rng: np.random.Generator):
    """The "shrink" fallback: `image` (uint8 (H, W, 3)) and its box mask (uint8 {0, 1}) shrunk (the image with
    PIL, as the first resize) so the whole box fits a size x size window, then a random such window that
    holds the box; where the window leaves the shrunk photo: `fill` in the image, `_PAD` in the mask."""
    box = imaging.bbox_from_mask(boxm)
    scale = min(1.0, (size - 1) / (box[1] - box[0]), (size - 1) / (box[3] - box[2]))
    hw = (max(1, int(image.shape[0] * scale)), max(1, int(image.shape[1] * scale)))
    image = pil_resize(image, hw, Image.BILINEAR)
    # the box scaled as a rectangle (outward, at least a pixel), so a thin one cannot vanish
    sy, sx = hw[0] / boxm.shape[0], hw[1] / boxm.shape[1]
    y0, x0 = int(box[0] * sy), int(box[2] * sx)
    y1, x1 = max(y0 + 1, min(hw[0], int(np.ceil(box[1] * sy)))), max(x0 + 1, min(hw[1], int(np.ceil(box[3] * sx))))
    boxm = imaging.box_mask(hw, (y0, y1, x0, x1))
    oy, ox = _window(hw[0], size, y0, y1, rng), _window(hw[1], size, x0, x1, rng)
    pad = ((max(0, -oy), size), (max(0, -ox), size))
    fill = np.broadcast_to(np.asarray(fill, np.uint8), (3,))
    img = np.stack([np.pad(image[..., c], pad, constant_values=fill[c]) for c in range(3)], axis=-1)
    m = np.pad(boxm, pad, constant_values=_PAD)
    oy, ox = max(0, oy), max(0, ox)
    return img[oy:oy + size, ox:ox + size], m[oy:oy + size, ox:ox + size]


def make_transform(
    *,
    class_noun: str,
    token: str = "sks",
    template: str = "a photo of {token} {noun}",
    size: int = 512,
    zoom_prob: float = 0.6,
    zoom_range: tuple[float, float] = (0.8, 1.2),
    fill: int | tuple[int, int, int] = 0,
    min_keep: float = 0.8,
    relax_every: int = 20,
    relax_step: float = 0.02,
    max_draws: int = 100,
    crop_fallback: str = "relax",
) -> Callable[[dict, np.random.Generator], dict]:
    """Build `transform(reference_record, rng) -> example` for DreamCom fine-tuning.

    Args:
      class_noun: the object's class ("dog"); with `token` it fills `template` for the prompt.
      size: output side S (512).
      zoom_prob, zoom_range: probability and scale range of the centred zoom.
      fill: uint8 grey level or RGB of pixels the zoom-out uncovers (released: 0, black).
      min_keep: a draw is kept when more than this fraction of the box pixels (after the resize,
        before the crop) survives.
      relax_every, relax_step: after every `relax_every` failed draws the threshold drops by
        `relax_step` (released: 20, 0.02; relax_step=0 keeps it fixed).
      max_draws: failed draws after which `crop_fallback` applies (see the module doc).
      crop_fallback: "relax" (released; needs relax_step > 0) or "shrink" (the paper's 80% rule).

    The transform returns:
      image: float32 (S, S, 3) in [-1, 1] (zoom padding has the fill colour).
      mask: float32 (S, S, 1) in {0, 1}, the object's bounding box (the region to inpaint).
      masked_image: float32 (S, S, 3) in [-1, 1], `image` with the box set to 0.
      loss_mask: float32 (S, S, 1) in {0, 1}, 0 on zoom padding.
      crop_fallback: float32 scalar, 1.0 when the crop needed the fallback, else 0.0.
      prompt: str, e.g. "a photo of sks dog".
    """
    if not class_noun or not isinstance(class_noun, str):
        raise ValueError(f"class_noun must be a non-empty str (the object's class, e.g. 'dog'), got {class_noun!r}")
    if crop_fallback not in CROP_FALLBACKS:
        raise ValueError(f"crop_fallback = {crop_fallback!r}: expected one of {CROP_FALLBACKS}")
    if crop_fallback == "relax" and relax_step <= 0:
        raise ValueError(f"crop_fallback = 'relax' needs relax_step > 0 (got {relax_step}): a threshold that "
                         "never relaxes would redraw forever; use crop_fallback='shrink'")
    prompt = template.format(token=token, noun=class_noun)
    fallbacks = 0  # per process (each grain worker has its own copy)

    def report(source: str, box_hw: tuple[int, int], detail: str) -> None:
        nonlocal fallbacks
        fallbacks += 1
        if fallbacks <= LOGGED_ONE_BY_ONE or str(fallbacks).strip("0") == "1":  # then 10, 100, 1000, ...
            logger.warning("DreamCom crop fallback %d in this process: %s: no %dx%d crop keeps %.0f%% of the %dx%d "
                           "object box in %d draws; %s", fallbacks, source, size, size, 100 * min_keep, box_hw[1],
                           box_hw[0], max_draws, detail)

    def transform(record: dict, rng: np.random.Generator) -> dict:
        source, image, mask = _check_reference(record)
        box = imaging.bbox_from_mask(mask > 0)
        if box is None:
            raise RecordError(source, "field 'mask' is empty (no object pixels)")
        hw = shorter_side_size(image.shape, size)
        image = pil_resize(image, hw, Image.BILINEAR)
        boxm = pil_resize(imaging.box_mask(mask.shape, box), hw, Image.NEAREST)
        before = int(boxm.sum())
        if before == 0:  # no crop could keep any of it (and the released redraw would never end)
            raise RecordError(source, f"the {box[3] - box[2]}x{box[1] - box[0]} object box vanishes when the photo "
                                      f"is resized to a shorter side of {size} px")
        h, w = boxm.shape
        draw = 0
        while True:
            oy, ox = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            img = image[oy : oy + size, ox : ox + size]
            m = boxm[oy : oy + size, ox : ox + size]
            if rng.random() < zoom_prob:
                scale = rng.uniform(*zoom_range)
                img = imaging.zoom(img, scale, fill=fill)
                m = imaging.zoom(m, scale, fill=_PAD, nearest=True)
            threshold = min_keep - relax_step * (draw // relax_every)
            if (m == 1).sum() > threshold * before:
                break
            draw += 1
            if draw == max_draws and crop_fallback == "shrink":
                img, m = shrink_to_fit(image, boxm, size, fill, rng)
                break
        fell_back = draw >= max_draws
        if fell_back:
            kept = (m == 1).sum() / before
            report(source, (box[1] - box[0], box[3] - box[2]),
                   "crop_fallback='shrink': the photo shrunk so the whole box fits" if crop_fallback == "shrink" else
                   f"crop_fallback='relax': kept {100 * kept:.0f}% at threshold {100 * threshold:.0f}% after "
                   f"{draw + 1} draws")
        out = imaging.to_signed(img)
        box_in = (m == 1).astype(np.float32)[..., None]
        return {
            "image": out,
            "mask": box_in,
            "masked_image": np.where(box_in > 0, np.float32(0.0), out),
            "loss_mask": (m != _PAD).astype(np.float32)[..., None],
            "crop_fallback": np.float32(fell_back),
            "prompt": prompt,
        }

    return transform


def _check_background(record: dict) -> tuple[str, np.ndarray, imaging.Box]:
    source = str(record.get("source", "<background record>"))
    image = rgb_field(record, "image", source)
    box = record.get("box")
    h, w = image.shape[:2]
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise RecordError(source, f"field 'box' must be (x0, y0, x1, y1) ints, got {box!r}") from None
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise RecordError(source, f"field 'box' {box!r} is empty or outside the {w}x{h} image (x0, y0, x1, y1)")
    return source, image, (y0, y1, x0, x1)


def inference_inputs(record: dict, *, size: int = 512, do_crop: bool = True) -> dict:
    """Inpainting inputs for one `background` record (the released `test.py`, `--do_crop`).

    With `do_crop`, a box smaller than a quarter of the image is grown by half its height/width on
    each side (clipped) and only that region is inpainted; otherwise the whole image is. The region
    is resized to size x size (PIL Lanczos; the box mask PIL nearest), aspect ratio not kept, as released.

    Returns:
      image: float32 (S, S, 3) in [-1, 1]; mask: float32 (S, S, 1) {0, 1}, the box;
      masked_image: float32 (S, S, 3), image with the box set to 0;
      region: int32 (4,) (y0, y1, x0, x1) of the background that was resized (for `paste_region`).
    """
    _, image, box = _check_background(record)
    h, w = image.shape[:2]
    y0, y1, x0, x1 = box
    region = (0, h, 0, w)
    if do_crop and (y1 - y0) * (x1 - x0) * 4 < h * w:
        dy, dx = int(0.5 * (y1 - y0)), int(0.5 * (x1 - x0))
        region = (max(0, y0 - dy), min(h, y1 + dy), max(0, x0 - dx), min(w, x1 + dx))
    box_in = imaging.box_in_box(box, region)
    crop_h, crop_w = region[1] - region[0], region[3] - region[2]
    img = imaging.to_signed(pil_resize(imaging.crop(image, region), (size, size), Image.LANCZOS))
    mask = pil_resize(imaging.box_mask((crop_h, crop_w), box_in), (size, size), Image.NEAREST)
    mask = mask.astype(np.float32)[..., None]
    return {
        "image": img,
        "mask": mask,
        "masked_image": np.where(mask > 0, np.float32(0.0), img),
        "region": np.asarray(region, np.int32),
    }


def paste_region(generated: np.ndarray, background: np.ndarray, region) -> np.ndarray:
    """Resize a generated uint8 (S, S, 3) square back to `region` (y0, y1, x0, x1) with PIL's Lanczos and paste
    it into a copy of the uint8 background, without blending (as released; the released code keeps the
    512 x 512 output when the region is the whole image, this always restores the background size)."""
    y0, y1, x0, x1 = (int(v) for v in region)
    out = background.copy()
    out[y0:y1, x0:x1] = pil_resize(generated, (y1 - y0, x1 - x0), Image.LANCZOS)
    return out
