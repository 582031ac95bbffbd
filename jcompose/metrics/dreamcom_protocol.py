"""DreamCom's evaluation protocol (paper Sec. 5.2; Tables 1 and 2): object fidelity and background preservation.

Input: the `manifest.json` that `python -m jcompose.compose dreamcom --benchmark ...` writes next to the
generated images: per image its object, the object's reference photos (with masks), the background it
was generated on and the box.

* Foreground (DINO, CLIP): each generated image's box crop is embedded (DINO ViT-S/16 CLS, CLIP image
  features) and compared, by cosine, with the foregrounds of *all* reference photos of its object (each
  photo cropped to its mask's bounding box; a photo without a mask is taken whole); these are averaged
  per image, then over the images of a foreground-background pair (the paper's 5), then over pairs.
* Background (LPIPS, SSIM): generated vs original background with the box blanked in both and only
  pixels outside it averaged (`jcompose.metrics.regions`); the box is blanked before both are resized
  to `pair_size` (bicubic), so its content cannot reach the averaged pixels; per pair, then over pairs.

Scores are reported as fractions, the paper's tables' scale (DINO 0.584, CLIP 0.778, LPIPS 0.174, SSIM
0.731 for DreamCom on MureCom).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jcompose import parallel
from jcompose.cli import InputError
from jcompose.eval_inputs import batches, crop_to_mask, pair_mask, read_image, read_mask, write_scores
from jcompose.metrics import clip_score, dino, lpips, preprocess, regions

CONVENTIONS = {
    "DINO": "mean cosine of DINO CLS embeddings, generated box crop vs every reference foreground of the object",
    "CLIP": "mean cosine of CLIP image embeddings (CLIP-I), same pairs as DINO",
    "LPIPS": "LPIPS v0.1 spatial map averaged outside the box, box blanked in both images",
    "SSIM": "SSIM (Gaussian 11, sigma 1.5) map averaged outside the box, box blanked in both images",
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


def reference_crop(reference: dict) -> np.ndarray:
    """A reference photo cropped to its mask's bounding box (whole when it has no mask)."""
    image = read_image(Path(reference["photo"]))
    if not reference.get("mask"):
        return image
    return crop_to_mask(image, read_mask(Path(reference["mask"]), image.shape[:2]), Path(reference["mask"]))


def _box_mask(shape: tuple[int, int], box) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = np.zeros((*shape, 1), np.float32)
    mask[y0:y1, x0:x1] = 1
    return mask


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
    """Runs the protocol on `config.manifest`; writes scores.json and report.md into config.out."""
    import cv2
    from tqdm import tqdm

    if not config.out:
        raise InputError("config.out: set an output folder (--config.out=DIR)")
    root, header, entries = read_manifest(config.manifest)
    prep, params, embed, background = _extractors(config)
    mesh = parallel.make_mesh()
    batch_size = -(-config.batch_size // jax.device_count()) * jax.device_count()
    params = parallel.put_replicated(params, mesh)
    embed_fn, background_fn = jax.jit(embed), jax.jit(background)
    size = (config.pair_size, config.pair_size)

    refs = sorted({(r["photo"], r.get("mask") or "") for e in entries for r in e["references"]})
    ref_emb = {}
    for batch, n in batches(refs, lambda r: {k: p(reference_crop({"photo": r[0], "mask": r[1]})) for k, p in
                                             prep.items()}, batch_size, config.workers):
        out = jax.device_get(embed_fn(params, parallel.global_batch(batch, mesh)))
        start = len(ref_emb)
        for i in range(n):
            ref_emb[refs[start + i]] = {k: out[k][i] for k in out}

    def prepare(entry: dict) -> dict:
        image = read_image(root / entry["image"])
        bg = read_image(Path(entry["background"]))
        if bg.shape != image.shape:
            raise InputError(f"{root / entry['image']} is {image.shape[1]}x{image.shape[0]}, its background "
                             f"{entry['background']} {bg.shape[1]}x{bg.shape[0]}: compose pastes back at full size")
        x0, y0, x1, y1 = (int(v) for v in entry["box"])
        crop = image[y0:y1, x0:x1]
        box = _box_mask(image.shape[:2], entry["box"])
        small_box = 1.0 - pair_mask(box[..., 0] > 0, size)  # nearest resize

        def blanked(img):  # blanked before resizing, so no box pixel bleeds into the background's
            x = np.where(box > 0, 0.0, img.astype(np.float32) / 127.5 - 1).astype(np.float32)
            return x if x.shape[:2] == size else cv2.resize(x, size[::-1], interpolation=cv2.INTER_CUBIC)

        return {**{k: p(crop) for k, p in prep.items()}, "gen": blanked(image), "bg": blanked(bg),
                "box": small_box[..., None]}

    per_image: dict[str, list] = defaultdict(list)
    bar = tqdm(total=len(entries), desc="generated", disable=not progress)
    for batch, n in batches(entries, prepare, batch_size, config.workers):
        placed = parallel.global_batch(batch, mesh)
        out = {**jax.device_get(embed_fn(params, placed)), **jax.device_get(background_fn(params, placed))}
        for key, values in out.items():
            per_image[key].extend(np.asarray(values[:n]))
        bar.update(n)
    bar.close()

    scores: dict[str, list] = defaultdict(list)
    for i, entry in enumerate(entries):
        keys = [(r["photo"], r.get("mask") or "") for r in entry["references"]]
        for metric, name in (("dino", "DINO"), ("clip", "CLIP")):
            references = np.stack([ref_emb[k][metric] for k in keys])[None]
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
    result = {"protocol": "dreamcom", "benchmark": header.get("benchmark"), "checkpoint_step": header.get("step"),
              "foreground": {"DINO": final["DINO"], "CLIP": final["CLIP"]},
              "background": {"LPIPS": final["LPIPS"], "SSIM": final["SSIM"]},
              "n_images": len(entries), "n_pairs": len(per_pair), "n_reference_photos": len(refs),
              "conventions": {**CONVENTIONS, "lpips_net": config.lpips.net, "pair_size": config.pair_size,
                              "clip_model": str(config.clip.model), "dino_model": str(config.dino.model)},
              "per_pair": per_pair}
    out = Path(config.out)
    write_scores(out, result, config)
    (out / "report.md").write_text(
        f"# DreamCom protocol: {header.get('benchmark')} ({len(per_pair)} pairs, {len(entries)} images)\n\n"
        "| Method | DINO ↑ | CLIP ↑ | LPIPS ↓ | SSIM ↑ |\n| --- | --- | --- | --- | --- |\n"
        f"| jcompose (step {header.get('step')}) | {final['DINO']:.3f} | {final['CLIP']:.3f} | "
        f"{final['LPIPS']:.3f} | {final['SSIM']:.3f} |\n")
    return result
