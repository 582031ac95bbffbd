"""DreamCom fine-tuning example from a `reference` record (the released `train.py` data path).

Recipe (bcmi/DreamCom-Image-Composition, reference/dreamcom.md A.3): the object mask becomes its
tight bounding box; shorter side to 512 (image bilinear, mask nearest); random 512 crop; with
p = 0.6 a zoom in [0.8, 1.2] about the centre with constant fill (black in the released code; the
mask marks filled pixels as padding); redraw crop and zoom until more than 80% of the box pixels
survive (the threshold relaxes by 0.02 every 20 failed draws, as released; a bounded number of
draws, then `RecordError`). The inpainting mask is the surviving box, the masked image is the image
with the box set to 0 in [-1, 1] (`image * (mask < 0.5)`, the SD inpainting convention), and the
loss mask is 1 everywhere except the zoom padding.

Differences from the released code: the resize is OpenCV bilinear (torchvision resized PIL images
with antialiasing) and random draws come from the given numpy Generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from input_pipeline.records import RecordError, rgb_field
from jcompose import imaging

_PAD = 2  # mask label of zoom padding, as in the released code


def _check_reference(record: dict) -> tuple[str, np.ndarray, np.ndarray]:
    source = str(record.get("source", "<reference record>"))
    image = rgb_field(record, "image", source)
    mask = record.get("mask")
    if not isinstance(mask, np.ndarray) or mask.shape != image.shape[:2]:
        got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise RecordError(source, f"field 'mask' must be uint8 {image.shape[:2]} in {{0, 1}}, got {got}")
    return source, image, mask


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
      max_draws: give up with `RecordError` after this many draws.

    The transform returns:
      image: float32 (S, S, 3) in [-1, 1] (zoom padding has the fill colour).
      mask: float32 (S, S, 1) in {0, 1}, the object's bounding box (the region to inpaint).
      masked_image: float32 (S, S, 3) in [-1, 1], `image` with the box set to 0.
      loss_mask: float32 (S, S, 1) in {0, 1}, 0 on zoom padding.
      prompt: str, e.g. "a photo of sks dog".
    """
    if not class_noun or not isinstance(class_noun, str):
        raise ValueError(f"class_noun must be a non-empty str (the object's class, e.g. 'dog'), got {class_noun!r}")
    prompt = template.format(token=token, noun=class_noun)

    def transform(record: dict, rng: np.random.Generator) -> dict:
        source, image, mask = _check_reference(record)
        box = imaging.bbox_from_mask(mask > 0)
        if box is None:
            raise RecordError(source, "field 'mask' is empty (no object pixels)")
        image = imaging.resize_shorter_side(image, size)
        boxm = imaging.resize_shorter_side(imaging.box_mask(mask.shape, box), size, nearest=True)
        before = int(boxm.sum())
        h, w = boxm.shape
        for draw in range(max_draws):
            oy, ox = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            img = image[oy : oy + size, ox : ox + size]
            m = boxm[oy : oy + size, ox : ox + size]
            if rng.random() < zoom_prob:
                scale = rng.uniform(*zoom_range)
                img = imaging.zoom(img, scale, fill=fill)
                m = imaging.zoom(m, scale, fill=_PAD, nearest=True)
            if (m == 1).sum() > (min_keep - relax_step * (draw // relax_every)) * before:
                break
        else:
            raise RecordError(source, f"no crop/zoom in {max_draws} draws keeps {min_keep:.0%} of the object box")
        out = imaging.to_signed(img)
        box_in = (m == 1).astype(np.float32)[..., None]
        return {
            "image": out,
            "mask": box_in,
            "masked_image": np.where(box_in > 0, np.float32(0.0), out),
            "loss_mask": (m != _PAD).astype(np.float32)[..., None],
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
    is resized to size x size (Lanczos; the box mask nearest), aspect ratio not kept, as released.

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
    img = imaging.to_signed(imaging.resize(imaging.crop(image, region), (size, size), lanczos=True))
    mask = imaging.resize(imaging.box_mask((crop_h, crop_w), box_in), (size, size), nearest=True)
    mask = mask.astype(np.float32)[..., None]
    return {
        "image": img,
        "mask": mask,
        "masked_image": np.where(mask > 0, np.float32(0.0), img),
        "region": np.asarray(region, np.int32),
    }


def paste_region(generated: np.ndarray, background: np.ndarray, region) -> np.ndarray:
    """Resize a generated uint8 (S, S, 3) square back to `region` (y0, y1, x0, x1) and paste it into
    a copy of the uint8 background, without blending (as released; the released code keeps the
    512 x 512 output when the region is the whole image, this always restores the background size)."""
    y0, y1, x0, x1 = (int(v) for v in region)
    out = background.copy()
    out[y0:y1, x0:x1] = imaging.resize(generated, (y1 - y0, x1 - x0), lanczos=True)
    return out
