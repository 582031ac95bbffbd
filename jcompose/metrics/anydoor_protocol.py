"""AnyDoor's evaluation protocol (paper Sec. 4.1, Tables 3-4): CLIP-I and DINO of the generated region.

"On our constructed DreamBooth dataset, we follow DreamBooth to calculate the CLIP-Score and DINO-Score,
as these metrics could reflect the similarity between the generated region and the target object."

* Generated region: with `config.crop` (default) the target box of each generated image (the benchmark's
  box, x0 <= x < x1, y0 <= y < y1); without it the whole image.
* Reference object: the reference photo cropped to its object mask's bounding box (the alpha of an RGBA
  reference, or the given mask), pixels outside the mask white (`config.reference_background` "white",
  what AnyDoor's ID extractor sees) or kept ("photo").
* Scores: cosine of CLIP image embeddings (CLIP-I; DreamBooth uses ViT-B/32) and of DINO ViT-S/16 CLS
  embeddings, per image, averaged over images, times 100: the scale of the paper's tables (CLIP 82.1,
  DINO 67.8 for AnyDoor with the HF map, Table 4).

Inputs: `config.manifest` (GEN/manifest.json from `compose anydoor --benchmark`: per image its box and
reference), or folders paired by file stem: `config.generated`, `config.reference` (RGBA, or RGB with a
`config.reference_masks` mask) and, for the crop, `config.masks` (white = target region; its box is used).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from jcompose import eval_report, parallel, sharded_map
from jcompose.cli import InputError
from jcompose.eval_inputs import by_stem, read_mask, write_scores
from jcompose.image_files import inspect, read_image, scan_folder
from jcompose.metrics import clip_score, dino, preprocess

SCALE = 100.0
BACKGROUNDS = ("white", "photo")


def _read_rgba(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8 as `image_files.read_image` reads it, alpha > 127 as bool or None) of an image file. The
    alpha is the object mask here, oriented like the image; an 8-bit alpha is read as stored."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    rgb = read_image(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ("RGBA", "LA"):
                return rgb, None
            alpha = ImageOps.exif_transpose(image).getchannel("A")
            return rgb, np.asarray(alpha) > 127
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputError(f"{path}: unreadable image ({err})") from None


def reference_object(path: Path, mask_path: Path | None = None, background: str = "white") -> np.ndarray:
    """The reference object: the photo cropped to its mask's bounding box (alpha, else `mask_path`, else the
    whole photo), pixels outside the mask white with `background` "white"."""
    image, mask = _read_rgba(path)
    if mask_path is not None:
        mask = read_mask(mask_path, image.shape[:2])
    if mask is None:
        return image
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise InputError(f"{mask_path or path}: the reference mask is empty")
    if background == "white":
        image = np.where(mask[..., None], image, np.uint8(255))
    return image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def generated_region(path: Path, box: list[int] | None) -> np.ndarray:
    """The generated image's box [x0, y0, x1, y1] (None: the whole image)."""
    image, _ = _read_rgba(path)
    if box is None:
        return image
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = image.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputError(f"{path}: box {box} outside the {w}x{h} image")
    return image[y0:y1, x0:x1]


def _box_of_mask(path: Path, shape: tuple[int, int]) -> list[int]:
    mask = read_mask(path, shape)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise InputError(f"{path}: mask has no target pixels (> 127)")
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def entries(config) -> tuple[dict, list[dict]]:
    """(header, [{image, object, reference, reference_mask, box}]) from the manifest or the folders."""
    if config.manifest:
        path = Path(config.manifest)
        if not path.is_file():
            raise InputError(f"config.manifest: {path} not found (compose anydoor --benchmark writes GEN/manifest.json)")
        try:
            data = json.loads(path.read_text())
            images = data["images"]
            rows = [{"image": path.parent / e["image"], "object": e["object"], "reference": Path(e["reference"]),
                     "reference_mask": None, "box": list(e["box"])} for e in images]
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"config.manifest {path}: not an anydoor benchmark manifest ({err})") from None
        if not rows:
            raise InputError(f"config.manifest {path}: no images")
        return data, rows
    generated = scan_folder(config.generated, "generated")
    refs = by_stem(scan_folder(config.reference, "reference") if config.reference else None, "reference", generated,
                   ["clip_i", "dino"])
    ref_masks = by_stem(scan_folder(config.reference_masks, "reference_masks"), "reference_masks", generated,
                        ["reference"]) if config.reference_masks else {}
    if config.crop and not config.masks:
        raise InputError("config.masks: the AnyDoor protocol scores the generated region; give the target masks "
                         "(white = region, paired by name) or set config.crop=False to score whole images")
    masks = by_stem(scan_folder(config.masks, "masks"), "masks", generated, ["crop"]) if config.masks else {}
    rows = []
    for info in generated.images:
        stem = info.path.stem
        box = _box_of_mask(masks[stem].path, info.shape) if config.crop else None
        rows.append({"image": info.path, "object": stem, "reference": refs[stem].path,
                     "reference_mask": ref_masks[stem].path if stem in ref_masks else None, "box": box})
    return {"benchmark": None}, rows


def evaluate(config, progress: bool = True) -> dict[str, Any]:
    """Runs the protocol (module doc); writes scores.json, report.md and report.html into config.out (process
    0); returns the scores."""
    if not config.out:
        raise InputError("config.out: set an output folder (--config.out=DIR)")
    if config.reference_background not in BACKGROUNDS:
        raise InputError(f"config.reference_background = {config.reference_background!r}: expected one of "
                         f"{BACKGROUNDS}")
    for field, what in (("clip.model", "a transformers CLIP folder (DreamBooth's CLIP-I: ViT-B/32)"),
                        ("dino.model", "a transformers DINO ViT folder (facebook/dino-vits16)")):
        group, key = field.split(".")
        if not config[group][key]:
            raise InputError(f"config.{field}: the AnyDoor protocol needs {what} (--config.{field}=PATH)")
    header, rows = entries(config)
    for row in rows:  # every file readable, every box inside its image: before any feature is computed
        info = inspect(row["image"])
        inspect(row["reference"])
        if row["box"] is not None:
            x0, y0, x1, y1 = (int(v) for v in row["box"])
            if not (0 <= x0 < x1 <= info.width and 0 <= y0 < y1 <= info.height):
                raise InputError(f"{row['image']}: box {row['box']} outside the {info.width}x{info.height} image")
    clip = clip_score.load_clip(config.clip.model)
    vit = dino.load_dino(config.dino.model)
    clip_size = clip.config.get("vision_config", {}).get("image_size", 224)
    dino_size = vit.config.get("image_size", 224)
    prep = {"clip": lambda im: preprocess.clip_input(im, clip_size),
            "dino": lambda im: preprocess.dino_input(im, resize=dino_size * 256 // 224, size=dino_size)}
    mesh = parallel.make_mesh()
    params = parallel.put_replicated({"clip": clip.params, "dino": vit.params}, mesh)

    def embed(params, batch):
        return {"clip": clip_score.image_embeddings(clip.module, params["clip"], batch["clip"]),
                "clip_ref": clip_score.image_embeddings(clip.module, params["clip"], batch["clip_ref"]),
                "dino": dino.dino_embeddings(vit.module, params["dino"], batch["dino"]),
                "dino_ref": dino.dino_embeddings(vit.module, params["dino"], batch["dino_ref"])}

    def prepare(row: dict) -> dict:
        region = generated_region(row["image"], row["box"] if config.crop else None)
        ref = reference_object(row["reference"], row["reference_mask"], config.reference_background)
        return {"clip": prep["clip"](region), "clip_ref": prep["clip"](ref),
                "dino": prep["dino"](region), "dino_ref": prep["dino"](ref)}

    out = sharded_map.map_items(rows, prepare, embed, params, mesh, batch_size=config.batch_size,
                                workers=config.workers, desc="generated", progress=progress)
    cos = {"CLIP-I": clip_score.paired_cosine(out["clip"], out["clip_ref"]),
           "DINO": clip_score.paired_cosine(out["dino"], out["dino_ref"])}
    scores = {name: SCALE * float(values.mean()) for name, values in cos.items()}
    per_object = defaultdict(list)
    for i, row in enumerate(rows):
        per_object[row["object"]].append(i)
    result = {
        "protocol": "anydoor", "benchmark": header.get("benchmark"), "checkpoint_step": header.get("step"),
        "provenance": eval_report.provenance(config, "anydoor (region CLIP-I / DINO x 100)", header),
        **scores, "n_images": len(rows), "n_objects": len(per_object),
        "conventions": {"scale": "cosine similarity x 100 (the paper's tables)",
                        "CLIP-I": "cosine of CLIP image embeddings, generated region vs reference object",
                        "DINO": "cosine of DINO ViT CLS embeddings (DreamBooth's DINO score), same pairs",
                        "region": "the target box of the generated image" if config.crop else "the whole image",
                        "reference": f"reference cropped to its mask's box, outside the mask: "
                                     f"{config.reference_background}",
                        "averaging": "per image, then the mean over images",
                        "clip_model": str(config.clip.model), "dino_model": str(config.dino.model)},
        "per_object": [{"object": o, "images": len(idx), **{m: SCALE * float(cos[m][idx].mean()) for m in cos}}
                       for o, idx in sorted(per_object.items())],
        "per_image": {"image": [str(r["image"]) for r in rows], **{m: (SCALE * cos[m]).tolist() for m in cos}},
    }
    if not eval_report.is_writer():
        return result
    target = Path(config.out)
    write_scores(target, result, config)
    prov = result["provenance"]
    eval_report.write_html(target, f"AnyDoor protocol: {header.get('benchmark')}",
                           {**scores, "n_images": len(rows), "n_objects": len(per_object)},
                           {"provenance": prov, "conventions": result["conventions"]})
    (target / "report.md").write_text(
        f"# AnyDoor protocol: {header.get('benchmark')} ({len(rows)} images, {len(per_object)} objects)\n\n"
        "| Model | CLIP Score ↑ | DINO Score ↑ |\n| --- | --- | --- |\n"
        f"| jcompose (step {header.get('step')}) | {scores['CLIP-I']:.1f} | {scores['DINO']:.1f} |\n\n"
        f"Cosine x 100; {result['conventions']['region']} vs the reference object "
        f"({config.reference_background} outside its mask). Paper (Table 4, HF map): 82.1 / 67.8.\n\n"
        f"Protocol: {prov['protocol']}; eval config {prov['eval_config']}; checkpoint "
        f"{json.dumps(prov['checkpoint'])}; training config variant {prov['training_config_variant']}.\n")
    return result
