"""DreamCom's evaluation protocol (paper Sec. 5.2; Tables 1 and 2): object fidelity and background preservation.

Input: the `manifest.json` that `python -m jcompose.compose dreamcom --benchmark ...` writes next to the
generated images: per image its object, the object's reference photos (with masks), the background it
was generated on and the box.

* Foreground (DINO, CLIP): each generated image's box crop is embedded (DINO ViT-S/16 CLS, CLIP image
  features) and compared, by cosine, with the foregrounds of *all* reference photos of its object (each
  photo cropped to its mask's bounding box; a photo without a mask is taken whole); these are averaged
  per image, then over the images of a foreground-background pair (the paper's 5), then over pairs.
* Background (LPIPS, SSIM): generated vs original background with the box blanked (mid grey) in both and
  only pixels outside it averaged (`jcompose.metrics.regions`); SSIM on the 8-bit pixel values
  (data_range 255). Which images are compared is `config.background_protocol`:
  - "paper" (default): jcompose's own output (lossless PNG at the background's size) and the background,
    the box blanked before both are resized to `pair_size` (bicubic; `pair_resize`), so the box's content
    cannot reach the averaged pixels; pair_size 0 scores at the background's size.
  - "released": the images the released code would have scored. DreamCom's release has no evaluation
    script; its test.py writes each result with PIL as JPEG (quality 75, PIL's default) and, when the whole
    background was inpainted (no crop, or a box of at least a quarter of the image), keeps the 512 x 512
    model output instead of restoring the background's size. So the generated image goes through a
    quality-75 JPEG round trip, and for whole-image inpainting both it and the background are resized to
    512 x 512 (PIL Lanczos, the resize test.py gave the model; box nearest) before scoring at that size;
    a cropped inpainting is scored at the background's size. Whether compose cropped is the manifest's
    `do_crop` when recorded, else `config.do_crop` (compose's default --do-crop: True).
  The default is "paper" because it scores the method's output, not the release's file format: the JPEG
  round trip alone lowers SSIM of an unchanged background (tests/test_dreamcom_protocol.py). Choose
  "released" to sit beside numbers produced from the released test.py's files.

Scores are reported as fractions, the paper's tables' scale (DINO 0.584, CLIP 0.778, LPIPS 0.174, SSIM
0.731 for DreamCom on MureCom); scores.json and report.md / report.html name the background protocol,
the eval config, and the checkpoint.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from jcompose import eval_report, parallel, sharded_map
from jcompose.cli import InputError
from jcompose.eval_inputs import crop_to_mask, pair_mask, pair_rule, pair_shape, read_image, read_mask, write_scores
from jcompose.image_files import ImageInfo, inspect
from jcompose.metrics import clip_score, dino, lpips, preprocess, regions

BACKGROUND_PROTOCOLS = ("paper", "released")
RELEASED_SIZE = 512     # test.py's model input / output size
RELEASED_JPEG_QUALITY = 75  # PIL's default, what test.py's `image.save(... .jpg)` used
CONVENTIONS = {
    "DINO": "mean cosine of DINO CLS embeddings, generated box crop vs every reference foreground of the object",
    "CLIP": "mean cosine of CLIP image embeddings (CLIP-I), same pairs as DINO",
    "LPIPS": "LPIPS v0.1 spatial map averaged outside the box, box blanked in both images",
    "SSIM": "SSIM (Gaussian 11, sigma 1.5) on 8-bit pixel values (data_range 255), map averaged outside the box, "
            "box blanked in both images",
    "averaging": "per image, then per foreground-background pair, then over pairs",
}


def read_manifest(path: str | Path) -> tuple[Path, dict, list[dict]]:
    """(folder of the images, manifest header, entries), with errors naming the file and entry."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config.manifest: {path} not found (compose dreamcom --benchmark writes GEN/manifest.json)")
    try:
        data = json.loads(path.read_text())
        entries = data["images"]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"config.manifest {path}: not a compose manifest ({err})") from None
    for i, entry in enumerate(entries):
        missing = {"image", "object", "background", "box", "references"} - set(entry)
        if missing or len(entry.get("box", ())) != 4 or not entry.get("references"):
            raise InputError(f"config.manifest {path}: entry {i} needs image, object, background, box (4 ints) "
                             f"and at least one reference (missing {sorted(missing)})")
    if not entries:
        raise InputError(f"config.manifest {path}: no images")
    return path.parent, data, entries


def check_files(path: Path, root: Path, entries: list[dict]) -> list[ImageInfo]:
    """Every image, background and reference of the manifest is readable, each image has its background's
    size and its box inside it: checked from file headers before any feature is computed. Returns the
    generated images' headers."""
    infos = []
    for i, entry in enumerate(entries):
        image, background = inspect(root / entry["image"]), inspect(Path(entry["background"]))
        if image.shape != background.shape:
            raise InputError(f"{image.path} is {image.width}x{image.height}, its background {background.path} "
                             f"{background.width}x{background.height}: compose pastes back at full size")
        x0, y0, x1, y1 = (int(v) for v in entry["box"])
        if not (0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height):
            raise InputError(f"config.manifest {path}: entry {i} box {entry['box']} is not inside the "
                             f"{image.width}x{image.height} image {image.path}")
        for reference in entry["references"]:
            inspect(Path(reference["photo"]))
            if reference.get("mask"):
                inspect(Path(reference["mask"]))
        infos.append(image)
    return infos


def reference_crop(reference: dict) -> np.ndarray:
    """A reference photo cropped to its mask's bounding box (whole when it has no mask)."""
    image = read_image(Path(reference["photo"]))
    if not reference.get("mask"):
        return image
    return crop_to_mask(image, read_mask(Path(reference["mask"]), image.shape[:2]), Path(reference["mask"]))


def _box_mask(shape: tuple[int, int], box) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def released_whole_image(shape: tuple[int, int], box, do_crop: bool) -> bool:
    """Whether the released test.py inpainted (and so kept at 512 x 512) the whole image: without its
    --do_crop, or when the box covers at least a quarter of the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return not do_crop or (y1 - y0) * (x1 - x0) * 4 >= shape[0] * shape[1]


def jpeg_round_trip(image: np.ndarray, quality: int = RELEASED_JPEG_QUALITY) -> np.ndarray:
    """uint8 RGB encoded and decoded by PIL's JPEG codec at `quality` (its default 4:2:0 subsampling)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def background_pair(image: np.ndarray, background: np.ndarray, box, protocol: str, shape: tuple[int, int],
                    whole: bool) -> dict[str, np.ndarray]:
    """{"gen", "bg": float32 (h, w, 3) pixel values, box blanked to mid grey; "box": (h, w, 1) 1 inside}.

    protocol "paper": blanked at full size, then both resized to `shape` (cv2 bicubic on floats);
    "released": see the module doc (`whole`: the released code kept the 512 x 512 output).
    """
    import cv2
    from PIL import Image

    box_full = _box_mask(image.shape[:2], box)
    if protocol == "released":
        if whole:
            size = (RELEASED_SIZE, RELEASED_SIZE)
            image, background = (np.asarray(Image.fromarray(x).resize(size, Image.LANCZOS)) for x in (image, background))
            box_full = 1.0 - pair_mask(box_full, size) > 0.5
        image = jpeg_round_trip(image)
        shape = image.shape[:2]
    small_box = (1.0 - pair_mask(box_full, shape))[..., None]

    def blanked(img):  # blanked before resizing, so no box pixel bleeds into the background's
        x = np.where(box_full[..., None], np.float32(regions.BLANK), img.astype(np.float32))
        return x if x.shape[:2] == tuple(shape) else cv2.resize(x, shape[::-1], interpolation=cv2.INTER_CUBIC)

    return {"gen": blanked(image), "bg": blanked(background), "box": small_box.astype(np.float32)}


def _extractors(config):
    for field, what in (("clip.model", "a transformers CLIP folder"), ("dino.model", "a transformers DINO folder")):
        group, key = field.split(".")
        if not config[group][key]:
            raise InputError(f"config.{field}: the DreamCom protocol needs {what} (--config.{field}=PATH)")
    clip = clip_score.load_clip(config.clip.model)
    vit = dino.load_dino(config.dino.model)
    clip_size = clip.config.get("vision_config", {}).get("image_size", 224)
    dino_size = vit.config.get("image_size", 224)
    if config.lpips.weights == "random":  # smoke tests only
        from jcompose.metrics.extractors import random_params

        zeros = np.zeros((1, 64, 64, 3), np.float32)
        lp_params = random_params(lpips.LPIPS(config.lpips.net), zeros, zeros)
    else:
        _, lp_params = lpips.load_lpips(config.lpips.net, config.lpips.trunk or None, config.lpips.heads or None)
    lp = lpips.LPIPS(config.lpips.net, spatial=True)
    prep = {"clip": lambda im: preprocess.clip_input(im, clip_size),
            "dino": lambda im: preprocess.dino_input(im, resize=dino_size * 256 // 224, size=dino_size)}
    params = {"clip": clip.params, "dino": vit.params, "lpips": lp_params}

    def embed(params, batch):
        return {"clip": clip_score.image_embeddings(clip.module, params["clip"], batch["clip"]),
                "dino": dino.dino_embeddings(vit.module, params["dino"], batch["dino"])}

    def background(params, batch):
        return {"lpips": regions.background_lpips(lp, params["lpips"], batch["gen"], batch["bg"], batch["box"]),
                "ssim": regions.background_ssim(batch["gen"], batch["bg"], batch["box"])}

    return prep, params, embed, background


def evaluate(config, progress: bool = True) -> dict[str, Any]:
    """Runs the protocol on `config.manifest`; writes scores.json, report.md and report.html into config.out."""
    if not config.out:
        raise InputError("config.out: set an output folder (--config.out=DIR)")
    protocol = config.get("background_protocol", "paper")
    if protocol not in BACKGROUND_PROTOCOLS:
        raise InputError(f"config.background_protocol = {protocol!r}: expected one of {BACKGROUND_PROTOCOLS}")
    rule = pair_rule(config)
    root, header, entries = read_manifest(config.manifest)
    infos = check_files(Path(config.manifest), root, entries)
    do_crop = bool(header.get("do_crop", config.get("do_crop", True)))
    shapes, wholes = [], []
    for entry, info in zip(entries, infos, strict=True):
        wholes.append(released_whole_image(info.shape, entry["box"], do_crop))
        shapes.append(pair_shape(info.shape, config.pair_size, rule) if protocol == "paper" else
                      (RELEASED_SIZE, RELEASED_SIZE) if wholes[-1] else info.shape)
    prep, params, embed, background = _extractors(config)
    mesh = parallel.make_mesh()
    params = parallel.put_replicated(params, mesh)

    refs = sorted({(r["photo"], r.get("mask") or "") for e in entries for r in e["references"]})
    ref_emb = sharded_map.map_items(
        refs, lambda r: {k: p(reference_crop({"photo": r[0], "mask": r[1]})) for k, p in prep.items()}, embed,
        params, mesh, batch_size=config.batch_size, workers=config.workers, desc="references", progress=progress)
    ref_index = {r: i for i, r in enumerate(refs)}

    def prepare_crop(i: int) -> dict:
        x0, y0, x1, y1 = (int(v) for v in entries[i]["box"])
        crop = read_image(root / entries[i]["image"])[y0:y1, x0:x1]
        return {k: p(crop) for k, p in prep.items()}

    def prepare_background(i: int) -> dict:
        entry = entries[i]
        image, bg = read_image(root / entry["image"]), read_image(Path(entry["background"]))
        return background_pair(image, bg, entry["box"], protocol, shapes[i], wholes[i])

    # Two passes: the crops' network inputs have one shape, the background pairs one per size group, and a
    # program per group should not recompile CLIP and DINO.
    items = range(len(entries))
    per_image = sharded_map.map_items(items, prepare_crop, embed, params, mesh, batch_size=config.batch_size,
                                      workers=config.workers, desc="generated", progress=progress)
    per_image.update(sharded_map.map_items(items, prepare_background, background, params, mesh,
                                           batch_size=config.batch_size, workers=config.workers, groups=shapes,
                                           desc="backgrounds", progress=progress))

    scores: dict[str, list] = defaultdict(list)
    for i, entry in enumerate(entries):
        keys = [ref_index[(r["photo"], r.get("mask") or "")] for r in entry["references"]]
        for metric, name in (("dino", "DINO"), ("clip", "CLIP")):
            references = ref_emb[metric][keys][None]
            scores[name].append(float(regions.reference_similarity(per_image[metric][i][None], references)[0]))
        scores["LPIPS"].append(float(per_image["lpips"][i]))
        scores["SSIM"].append(float(per_image["ssim"][i]))
    pairs = defaultdict(list)
    for i, entry in enumerate(entries):
        pairs[(entry["object"], entry["background"])].append(i)
    per_pair = [{"object": o, "background": b, "images": len(idx),
                 **{m: float(np.mean([scores[m][i] for i in idx])) for m in ("DINO", "CLIP", "LPIPS", "SSIM")}}
                for (o, b), idx in sorted(pairs.items())]
    final = {m: float(np.mean([p[m] for p in per_pair])) for m in ("DINO", "CLIP", "LPIPS", "SSIM")}
    background = {"paper": f"jcompose's PNG output vs the background, both resized: "
                           f"{'native size' if not config.pair_size else f'{config.pair_size} ({rule})'}",
                  "released": f"as the released test.py's files: JPEG quality {RELEASED_JPEG_QUALITY}; "
                              f"{sum(wholes)} whole-image inpaintings scored at {RELEASED_SIZE}x{RELEASED_SIZE}, "
                              f"{len(wholes) - sum(wholes)} cropped ones at the background's size "
                              f"(do_crop {do_crop})"}[protocol]
    result = {"protocol": "dreamcom", "background_protocol": protocol, "benchmark": header.get("benchmark"),
              "checkpoint_step": header.get("step"),
              "provenance": eval_report.provenance(config, f"dreamcom (background: {protocol})", header),
              "foreground": {"DINO": final["DINO"], "CLIP": final["CLIP"]},
              "background": {"LPIPS": final["LPIPS"], "SSIM": final["SSIM"]},
              "n_images": len(entries), "n_pairs": len(per_pair), "n_reference_photos": len(refs),
              "conventions": {**CONVENTIONS, "background_images": background, "lpips_net": config.lpips.net,
                              "pair_size": config.pair_size, "clip_model": str(config.clip.model),
                              "dino_model": str(config.dino.model)},
              "per_pair": per_pair,
              "per_image": {"image": [e["image"] for e in entries], **{m: scores[m] for m in scores}}}
    if eval_report.is_writer():
        _write_reports(config, result, header, final, len(per_pair), len(entries))
    return result


def _write_reports(config, result: dict, header: dict, final: dict, n_pairs: int, n_images: int) -> None:
    out = Path(config.out)
    write_scores(out, result, config)
    prov = result["provenance"]
    (out / "report.md").write_text(
        f"# DreamCom protocol: {header.get('benchmark')} ({n_pairs} pairs, {n_images} images)\n\n"
        "| Method | DINO ↑ | CLIP ↑ | LPIPS ↓ | SSIM ↑ |\n| --- | --- | --- | --- | --- |\n"
        f"| jcompose (step {header.get('step')}) | {final['DINO']:.3f} | {final['CLIP']:.3f} | "
        f"{final['LPIPS']:.3f} | {final['SSIM']:.3f} |\n\n"
        f"Protocol: {prov['protocol']} ({result['conventions']['background_images']}); eval config "
        f"{prov['eval_config']}; checkpoint {json.dumps(prov['checkpoint'])}; training config variant "
        f"{prov['training_config_variant']}.\n")
    summary = {"foreground": result["foreground"], "background": result["background"],
               "n_images": n_images, "n_pairs": n_pairs}
    eval_report.write_html(out, f"DreamCom protocol: {header.get('benchmark')}", summary,
                           {"provenance": prov, "conventions": result["conventions"]})
