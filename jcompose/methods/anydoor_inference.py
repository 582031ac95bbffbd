"""AnyDoor composition: the released inference pipeline (run_inference.py / the Gradio demo) for one or
several objects, as functions for `python -m jcompose.compose anydoor`.

Per object (reference image + its mask, a target mask on the background):
  1. the released `process_pairs` without augmentation (input_pipeline/anydoor.py): the object on
     white, cropped, padded 1.2x, squared, 224 px (DINOv2 input) and its HF map; a square zoom-in crop
     of the background 1.5-3x around the 1.1x target box, 512 px; the collage = crop with the HF map
     stretched into the box; mask channel = the box, or the target mask with `shape_control`;
  2. DDIM (eta 0) with CFG (default 5.0, 50 steps), unconditional ID tokens = DINOv2(black image);
  3. paste back: the generated square (without its first row, as released: `sample.drop_first_row`)
     resized to the crop and pasted over it leaving a `margin`-px border (paste="crop",
     run_inference.py), or only the 1.1x target box copied back (paste="box", the demo).
The collage's mask channel is run_inference.py's by default (square padding 1, bilinear resize:
`sample.collage_mask = "run_inference"`), or training's and the demo's ("training": -1, nearest).

Several objects: object i draws its crop ratio from numpy default_rng(seed + i) and its initial noise
from PRNGKey(seed + i), so an object gets the same result alone (with seed + i) as in a group. Objects
are placed in order; one whose pasted region meets the region another reads or pastes waits for it
(a later round, generated on the updated background); the objects of one round go through one
batched compiled call.

Bad input raises `AnyDoorInputError` (a `cli.InputError`: the CLI prints `error: ...`) naming the file.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import anydoor as anydoor_data
from input_pipeline.records import RecordError
from jcompose import cli, imaging

PASTE_MODES = ("crop", "box")
TARGET_BOX_RATIO = 1.1
# The released training filters on the reference (check_mask_area, check_region_size 'min'): objects
# under these were never trained on, so their 224-px upsampling is outside what the model has seen.
MIN_REFERENCE_AREA = 0.01
MIN_REFERENCE_SIDE = 0.10


class AnyDoorInputError(cli.InputError):
    """A reference, mask or background that AnyDoor cannot use; the message names the file."""


@dataclasses.dataclass
class ObjectInput:
    """One object to place: reference uint8 (h, w, 3) RGB, reference_mask uint8 (h, w) {0, 1},
    target_mask uint8 (H, W) {0, 1} on the background; `names` = (reference, reference mask, target
    mask) file names for messages."""

    reference: np.ndarray
    reference_mask: np.ndarray
    target_mask: np.ndarray
    names: tuple[str, str, str] = ("reference", "reference mask", "target mask")


@dataclasses.dataclass
class Composition:
    """compose()'s result: image uint8 (H, W, 3); per object its example (reference (224, 224, 3),
    collage (S, S, 4) in [-1, 1], crop_box, sizes, target_box) and generated square uint8 (S, S, 3);
    rounds = object indices generated together, in order."""

    image: np.ndarray
    examples: list[dict]
    generated: list[np.ndarray]
    rounds: list[list[int]]


# ------------------------------------------------------------------------------------- inputs


def _decode(path: str | Path, what: str) -> np.ndarray:
    import cv2

    if not Path(path).is_file():
        raise AnyDoorInputError(f"{what} {path}: no such file")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint8:
        raise AnyDoorInputError(f"{what} {path}: not a readable 8-bit image (PNG/JPEG/...)")
    return image


def read_rgb(path: str | Path, what: str = "image") -> np.ndarray:
    """An image file -> uint8 (H, W, 3) RGB (grey and RGBA converted)."""
    import cv2

    image = _decode(path, what)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path, what: str = "mask") -> np.ndarray:
    """A mask file (grey, or RGB(A) whose brightest channel counts) -> uint8 (H, W) {0, 1}: pixel > 127."""
    image = _decode(path, what)
    return ((image if image.ndim == 2 else image[..., :3].max(axis=-1)) > 127).astype(np.uint8)


def read_object(reference: str, reference_mask: str | None, mask: str) -> ObjectInput:
    """Files -> ObjectInput. Without `reference_mask`, the reference must be RGBA (alpha > 127 = object)."""
    if reference_mask is None:
        image = _decode(reference, "--reference")
        if image.ndim != 3 or image.shape[2] != 4:
            raise AnyDoorInputError(f"--reference {reference}: no --reference-mask given and the image has no "
                                    "alpha channel; give --reference-mask (white = object) or an RGBA image")
        ref_mask, ref_mask_name = (image[..., 3] > 127).astype(np.uint8), f"{reference} (alpha)"
    else:
        ref_mask, ref_mask_name = read_mask(reference_mask, "--reference-mask"), reference_mask
    return ObjectInput(read_rgb(reference, "--reference"), ref_mask, read_mask(mask, "--mask"),
                       (reference, ref_mask_name, mask))


def read_objects(references: list[str], reference_masks: list[str] | None, masks: list[str]) -> list[ObjectInput]:
    """Repeated --reference / --reference-mask / --mask -> ObjectInputs (the i-th of each together)."""
    reference_masks = reference_masks or []
    if not references:
        raise AnyDoorInputError("--reference: give at least one reference image (with --reference-mask and --mask)")
    if len(masks) != len(references) or len(reference_masks) not in (0, len(references)):
        raise AnyDoorInputError(f"{len(references)} --reference, {len(reference_masks)} --reference-mask and "
                                f"{len(masks)} --mask: give one --mask (and one --reference-mask, or RGBA "
                                "references) per --reference")
    return [read_object(r, reference_masks[i] if reference_masks else None, masks[i])
            for i, r in enumerate(references)]


def check_object(obj: ObjectInput, background_shape: tuple[int, ...], background_name: str = "background") -> None:
    """Raises AnyDoorInputError for a reference mask that is empty or of another size than its image, a
    reference object smaller than the released training filters accept, or a target mask that is empty
    or not the background's size."""
    ref_name, ref_mask_name, mask_name = obj.names
    h, w = obj.reference.shape[:2]
    if obj.reference_mask.shape != (h, w):
        raise AnyDoorInputError(f"reference mask {ref_mask_name} is {obj.reference_mask.shape[1]}x"
                                f"{obj.reference_mask.shape[0]} (WxH) but reference {ref_name} is {w}x{h}; "
                                "they must be the same size")
    if not obj.reference_mask.any():
        raise AnyDoorInputError(f"reference mask {ref_mask_name}: empty (no pixel > 127); expected the object "
                                f"of {ref_name} in white")
    area = float(obj.reference_mask.mean())
    y0, y1, x0, x1 = imaging.bbox_from_mask(obj.reference_mask)
    if area < MIN_REFERENCE_AREA or (y1 - y0) < MIN_REFERENCE_SIDE * h or (x1 - x0) < MIN_REFERENCE_SIDE * w:
        raise AnyDoorInputError(
            f"reference mask {ref_mask_name}: the object covers {100 * area:.2f}% of {ref_name} in a {x1 - x0}x"
            f"{y1 - y0} box; AnyDoor's released training filters keep objects of >= {100 * MIN_REFERENCE_AREA:g}% "
            f"of the image with box sides >= {100 * MIN_REFERENCE_SIDE:g}% of its sides, so the model never saw "
            "smaller ones blown up to 224 px: crop the reference closer around the object")
    bh, bw = background_shape[:2]
    if obj.target_mask.shape != (bh, bw):
        raise AnyDoorInputError(f"target mask {mask_name} is {obj.target_mask.shape[1]}x{obj.target_mask.shape[0]} "
                                f"(WxH) but the {background_name} is {bw}x{bh}; the mask marks where on the "
                                "background the object goes, so it must be the background's size")
    if not obj.target_mask.any():
        raise AnyDoorInputError(f"target mask {mask_name}: empty (no pixel > 127); expected the target region "
                                f"on the {background_name} in white")


# ----------------------------------------------------------------------------------- examples


def inference_transform(method: Any, shape_control: bool = False):
    """The released inference `process_pairs` at the method's sizes (no augmentation, no filters: the
    reference checks are `check_object`'s)."""
    s = method.config.sample
    return method.make_transform(augment=False, shape_control=shape_control, collage_mask=s.collage_mask,
                                 ref_expand_tenths=tuple(s.ref_expand_tenths),
                                 crop_expand_tenths=tuple(s.crop_expand_tenths),
                                 min_concentration=-1.0, mask_area=(0.0, 1.0), min_ref_region=0.0,
                                 max_target_region=1.0, region_rule="any")


def prepare_example(transform, obj: ObjectInput, background: np.ndarray, seed: int) -> dict:
    """One object's example on `background` (uint8 (H, W, 3)): the transform's output (reference,
    target, collage, crop_box, sizes) plus target_box (the 1.1x box, background pixels)."""
    record = {"reference_image": obj.reference, "reference_mask": obj.reference_mask, "target_image": background,
              "target_mask": obj.target_mask, "dynamic": 0, "source": obj.names[0]}
    try:
        example = transform(record, np.random.default_rng(seed))
    except RecordError as err:
        raise AnyDoorInputError(f"{err.path}: {err.reason}") from None
    box = imaging.expand_box(imaging.bbox_from_mask(obj.target_mask), TARGET_BOX_RATIO, obj.target_mask.shape)
    return {**example, "target_box": np.asarray(box, np.int32)}


def _overlap(a, b) -> bool:
    return max(a[0], b[0]) < min(a[1], b[1]) and max(a[2], b[2]) < min(a[3], b[3])


def pasted_region(example: dict, paste: str, margin: int) -> tuple[int, int, int, int]:
    """The background pixels (y0, y1, x0, x1) an object's paste-back overwrites."""
    if paste == "box":
        return tuple(int(v) for v in example["target_box"])
    y0, y1, x0, x1 = (int(v) for v in example["crop_box"])
    return y0 + margin, y1 - margin, x0 + margin, x1 - margin


def plan_rounds(examples: list[dict], paste: str = "crop", margin: int = 5) -> list[list[int]]:
    """Object indices per generation round: object i goes one round after the latest earlier object j
    whose pasted region meets i's crop (which i reads) or whose crop meets i's pasted region; objects of
    one round neither read nor overwrite each other's pixels, so batching them equals placing them one
    after another."""
    rounds: list[int] = []
    for i, ex in enumerate(examples):
        after = [rounds[j] for j in range(i)
                 if _overlap(pasted_region(examples[j], paste, margin), ex["crop_box"])
                 or _overlap(pasted_region(ex, paste, margin), examples[j]["crop_box"])]
        rounds.append(max(after) + 1 if after else 0)
    return [[i for i, r in enumerate(rounds) if r == k] for k in range(max(rounds) + 1)] if rounds else []


def paste(generated: np.ndarray, background: np.ndarray, example: dict, paste: str = "crop",
          margin: int = 5, *, drop_first_row: bool = True) -> np.ndarray:
    """uint8 generated square (S, S, 3) -> a copy of `background` with it pasted back (see module doc);
    `drop_first_row` (released, `config.sample.drop_first_row`): the square's first row is left out."""
    if paste not in PASTE_MODES:
        raise ValueError(f"paste = {paste!r}: expected one of {PASTE_MODES}")
    full = anydoor_data.paste_back(generated, background, example["crop_box"], example["sizes"],
                                   margin=0 if paste == "box" else margin, drop_first_row=drop_first_row)
    if paste == "crop":
        return full
    y0, y1, x0, x1 = (int(v) for v in example["target_box"])
    out = background.copy()
    out[y0:y1, x0:x1] = full[y0:y1, x0:x1]
    return out


# --------------------------------------------------------------------------------- generation


@functools.lru_cache(maxsize=8)
def sampler(method: Any, num_steps: int):
    """The compiled sampler of a method: (params, frozen, batch, noise, guidance) -> images (B, S, S, 3)
    in [-1, 1]; one compile per batch size (the guidance scale is an argument, not a constant)."""
    def run(params, frozen, batch, noise, guidance):
        return method.sample(params, frozen, batch, jax.random.PRNGKey(0), num_steps=num_steps,
                             guidance_scale=guidance, noise=noise)

    return jax.jit(run)


def initial_noise(method: Any, seed: int, size: int) -> jax.Array:
    """The (1, 4, size/8, size/8) starting latents of the object with seed `seed`."""
    return jax.random.normal(jax.random.PRNGKey(seed), (1, method.unet.in_channels, size // 8, size // 8))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> uint8."""
    return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def compose(method: Any, params: Any, frozen: Any, background: np.ndarray, objects: list[ObjectInput], *,
            seed: int = 0, num_steps: int | None = None, guidance_scale: float | None = None,
            shape_control: bool = False, paste_mode: str = "crop", margin: int | None = None,
            background_name: str = "background") -> Composition:
    """Places `objects` into `background` (uint8 (H, W, 3) RGB) with a trained AnyDoor.

    Args:
      method, params, frozen: an `AnyDoorMethod` and its trees (`load_trained`).
      objects: in placement order; object i uses seed + i (crop ratio and initial noise).
      num_steps, guidance_scale: DDIM steps and CFG scale (default: config.sample, 50 and 5.0).
      shape_control: the mask channel is each target mask (its shape is followed) instead of its box.
      paste_mode: "crop" (whole crop minus `margin`, run_inference.py) or "box" (only the 1.1x box).
      margin: default config.sample.margin (5).
    Returns: a `Composition`.
    Raises AnyDoorInputError (see `check_object`) before any generation.
    """
    if paste_mode not in PASTE_MODES:
        raise AnyDoorInputError(f"paste mode {paste_mode!r}: expected one of {PASTE_MODES}")
    sc = method.config.sample
    num_steps = int(num_steps or sc.steps)
    guidance_scale = float(sc.guidance_scale if guidance_scale is None else guidance_scale)
    margin = int(sc.margin if margin is None else margin)
    background = np.ascontiguousarray(background, np.uint8)
    for obj in objects:
        check_object(obj, background.shape, background_name)
    objects = [dataclasses.replace(o, reference=np.ascontiguousarray(o.reference, np.uint8),
                                   reference_mask=(np.asarray(o.reference_mask) > 0).astype(np.uint8),
                                   target_mask=(np.asarray(o.target_mask) > 0).astype(np.uint8)) for o in objects]
    transform = inference_transform(method, shape_control)
    examples = [prepare_example(transform, obj, background, seed + i) for i, obj in enumerate(objects)]
    rounds = plan_rounds(examples, paste_mode, margin)
    run, size = sampler(method, num_steps), method.config.data.image_size
    generated: list[np.ndarray | None] = [None] * len(objects)
    current = background
    for members in rounds:
        # the same seeds give the same geometry; the pixels now include the earlier rounds' objects
        for i in members:
            examples[i] = prepare_example(transform, objects[i], current, seed + i)
        batch = {k: jnp.asarray(np.stack([examples[i][k] for i in members])) for k in ("reference", "collage")}
        noise = jnp.concatenate([initial_noise(method, seed + i, size) for i in members])
        images = np.asarray(run(params, frozen, batch, noise, jnp.float32(guidance_scale)))
        for i, image in zip(members, images):
            generated[i] = to_uint8(image)
            current = paste(generated[i], current, examples[i], paste_mode, margin,
                            drop_first_row=bool(sc.drop_first_row))
    return Composition(current, examples, generated, rounds)


# ----------------------------------------------------------------------------- model loading


def load_trained(config: Any, workdir: str | Path, trained: dict) -> tuple[Any, Any, Any]:
    """(method, params, frozen) for composing: the base models of `config` (a tiny base is read from,
    or written into, `workdir`) with the trained tree `trained` (a checkpoint's "params" or "ema").

    Raises AnyDoorInputError when `trained` is not an AnyDoor tree of this config (the differing keys)."""
    from jcompose.methods.anydoor import AnyDoorMethod

    method = AnyDoorMethod(config)
    params, frozen = method.init(str(workdir))
    want, got = (jax.tree_util.tree_structure(t) for t in (params, trained))
    if want != got:
        keys = sorted(set(params) ^ set(trained)) or sorted(params)
        raise AnyDoorInputError(f"--checkpoint {workdir}: its trained params do not fit this AnyDoor config "
                                f"(top-level keys {sorted(trained)} vs {sorted(params)}; differing: {keys}); "
                                "check config.model (base, hint_widths, train_projector)")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(trained)):
        if tuple(a.shape) != tuple(np.shape(b)):
            raise AnyDoorInputError(f"--checkpoint {workdir}: {jax.tree_util.keystr(path)} is {np.shape(b)}, this "
                                    f"config builds {tuple(a.shape)}; check config.model.base")
    return method, jax.tree_util.tree_map(jnp.asarray, trained), frozen


# ------------------------------------------------------------------------------------ picture


def side_by_side(background: np.ndarray, objects: list[ObjectInput], result: Composition,
                 height: int = 256) -> np.ndarray:
    """uint8 (height, W, 3) picture: each reference as DINOv2 sees it, the background with the target
    masks outlined, each collage (HF map in the box; the mask channel outlined), the result."""
    import cv2

    def fit(image):
        h, w = image.shape[:2]
        return cv2.resize(image, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)

    def labelled(image, text):
        tile = fit(image).copy()
        cv2.putText(tile, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.putText(tile, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        return tile

    tiles = [labelled(to_uint8(ex["reference"]), f"reference {i}") for i, ex in enumerate(result.examples)]
    outlined = background.copy()
    for obj in objects:
        contours, _ = cv2.findContours(obj.target_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(outlined, contours, -1, (255, 0, 0), max(1, background.shape[0] // 200))
    tiles.append(labelled(outlined, "background"))
    for i, ex in enumerate(result.examples):
        collage = to_uint8(ex["collage"][..., :3]).copy()
        inside = (ex["collage"][..., 3] > 0.5).astype(np.uint8)
        contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(collage, contours, -1, (0, 255, 0), 1)
        tiles.append(labelled(collage, f"collage {i}"))
    tiles.append(labelled(result.image, "result"))
    return np.concatenate(tiles, axis=1)
