"""Evaluation: `python -m jcompose.evaluate --config=configs/eval/<benchmark>.py --config.generated=DIR ...`.

Streams a folder of generated images (and a folder of reference images paired by file name;
optionally prompts) through jit-compiled feature extractors, batch-sharded over all devices, and
writes `scores.json` (every metric with its convention and counts, plus per-image values) and
`report.html` + `examples.png` (a grid of reference / generated pairs) into `config.out`.

Metrics (`config.metrics`): fid, kid (generated vs reference folder or `fid.reference_stats`),
clip_score (generated vs prompt), clip_i, dino (generated vs its paired `reference`), lpips, ssim
(generated vs its paired `background`, else `reference`), aesthetic (generated). With
`config.masks` (a mask per generated image, white = inserted object), clip_i / dino see the
mask's bounding box of the generated image, and lpips / ssim blank the mask in both images (the
DreamCom protocol: object fidelity on the foreground, preservation of the background).
See `jcompose/metrics/` for each definition.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcompose import cli, parallel
from jcompose.cli import InputError
from jcompose.eval_inputs import (batches, by_stem, crop_to_mask, list_images, pair_image, pair_mask, read_image,
                                  read_mask, read_prompts, run_of, write_scores)
from jcompose.metrics import aesthetic, clip_score, fid, inception, ssim
from jcompose.metrics.extractors import METRICS, build_extractors, check_config  # noqa: F401 (public here)

PAIRED = ("clip_i", "dino", "lpips", "ssim")


def evaluate(config, progress: bool = True) -> dict[str, Any]:
    """Runs the configured metrics and writes scores.json and the report; returns the scores."""
    from tqdm import tqdm

    run_of(config)  # the run named or recorded must be this protocol's method: checked before the long work
    if config.get("protocol") == "anydoor":  # region CLIP-I / DINO x 100 (configs/eval/anydoor.py)
        from jcompose.metrics import anydoor_protocol

        return anydoor_protocol.evaluate(config, progress)
    if config.get("manifest"):  # a benchmark run written by compose: the method's own protocol
        from jcompose.metrics import dreamcom_protocol

        return dreamcom_protocol.evaluate(config, progress)
    check_config(config)
    wanted = list(config.metrics)
    generated = list_images(config.generated, "generated")
    refs = by_stem(config.reference, "reference", generated, [m for m in wanted if m in ("clip_i", "dino")])
    backgrounds = (by_stem(config.background, "background", generated, [m for m in wanted if m in ("lpips", "ssim")])
                   if config.background else
                   by_stem(config.reference, "reference", generated, [m for m in wanted if m in ("lpips", "ssim")]))
    masks = by_stem(config.masks, "masks", generated, ["masks"]) if config.masks else {}
    prompts = read_prompts(config.prompts) if "clip_score" in wanted else {}
    if "clip_score" in wanted:
        missing = [p.name for p in generated if p.stem not in prompts]
        if missing:
            raise InputError(f"config.prompts {config.prompts}: no prompt for {missing[:5]}")
    reference_stats = None  # read before the long work, so a bad file fails first
    if set(wanted) & {"fid", "kid"} and config.fid.reference_stats:
        with cli.input_errors("config.fid.reference_stats: "):
            reference_stats = fid.load_stats(config.fid.reference_stats)

    with cli.input_errors():  # weight files the config names
        extractors = build_extractors(config)
    mesh = parallel.make_mesh()
    devices = jax.device_count()
    batch_size = -(-config.batch_size // devices) * devices
    params = {k: parallel.put_replicated(e.params, mesh) for k, e in extractors.items()}
    pair_size = config.pair_size

    def prepare(path: Path) -> dict[str, np.ndarray]:
        image = read_image(path)
        mask = read_mask(masks[path.stem], image.shape[:2]) if masks else None
        # DINO / CLIP-I look at the inserted object: the mask's bounding box of the generated image.
        fg = crop_to_mask(image, mask, masks.get(path.stem)) if mask is not None else image
        out: dict[str, np.ndarray] = {}
        if "inception" in extractors:
            out["inception"] = extractors["inception"].prepare(image)
        if "clip" in extractors:
            out["clip"] = extractors["clip"].prepare(image)
        if "clip_i" in wanted:
            out["clip_fg"] = extractors["clip"].prepare(fg)
            out["clip_ref"] = extractors["clip"].prepare(read_image(refs[path.stem]))
        if "dino" in wanted:
            out["dino"] = extractors["dino"].prepare(fg)
            out["dino_ref"] = extractors["dino"].prepare(read_image(refs[path.stem]))
        if "lpips" in wanted or "ssim" in wanted:
            shape = (pair_size, pair_size) if pair_size else image.shape[:2]
            gen = pair_image(image, shape).astype(np.float32) / 127.5 - 1.0
            target = pair_image(read_image(backgrounds[path.stem]), shape).astype(np.float32) / 127.5 - 1.0
            if mask is not None:
                # Background metrics: the inserted region is blanked (0 = mid grey) in both images.
                keep = pair_mask(mask, shape)[..., None]
                gen, target = gen * keep, target * keep
            out["pix"], out["pix_ref"] = gen, target
        return out

    @jax.jit
    def step(params, batch):
        res = {}
        if "inception" in params:
            res["inception"] = extractors["inception"].apply(params["inception"], batch["inception"])
        if "clip" in params:
            res["clip"] = extractors["clip"].apply(params["clip"], batch["clip"])
            if "clip_ref" in batch:
                res["clip_fg"] = extractors["clip"].apply(params["clip"], batch["clip_fg"])
                res["clip_ref"] = extractors["clip"].apply(params["clip"], batch["clip_ref"])
        if "dino" in params:
            res["dino"] = extractors["dino"].apply(params["dino"], batch["dino"])
            res["dino_ref"] = extractors["dino"].apply(params["dino"], batch["dino_ref"])
        if "lpips" in params:
            res["lpips"] = extractors["lpips"].apply(params["lpips"], batch["pix"], batch["pix_ref"])
        if "ssim" in wanted:
            res["ssim"] = ssim.ssim(batch["pix"], batch["pix_ref"], data_range=2.0)
        return res

    keep = "kid" in wanted
    gen_stats = fid.FeatureStats(inception.FEATURES, keep_features=keep)
    per_image: dict[str, list] = {k: [] for k in ("clip", "clip_fg", "clip_ref", "dino", "dino_ref", "lpips", "ssim")}
    bar = tqdm(total=len(generated), desc="generated", disable=not progress)
    for batch, n in batches(generated, prepare, batch_size, config.workers):
        res = jax.device_get(step(params, parallel.global_batch(batch, mesh)))
        if "inception" in res:
            gen_stats.update(res["inception"][:n])
        for key, values in per_image.items():
            if key in res:
                values.append(np.asarray(res[key][:n]))
        bar.update(n)
    bar.close()
    cat = {k: np.concatenate(v) for k, v in per_image.items() if v}

    scores: dict[str, Any] = {"n_generated": len(generated)}
    per: dict[str, list] = {"file": [p.name for p in generated]}
    if "fid" in wanted or "kid" in wanted:
        scores.update(_fid_scores(config, wanted, gen_stats, extractors["inception"], params["inception"], mesh,
                                  batch_size, progress, reference_stats))
    if "clip_score" in wanted:
        scores["clip_score"] = _clip_text_scores(config, extractors["clip"], generated, prompts, cat["clip"], per)
    if "clip_i" in wanted:
        cos = clip_score.paired_cosine(cat["clip_fg"], cat["clip_ref"])
        scores["clip_i"] = {"mean": float(cos.mean()), "definition": "mean cosine of CLIP image embeddings"}
        per["clip_i"] = cos.tolist()
    if "dino" in wanted:
        cos = clip_score.paired_cosine(cat["dino"], cat["dino_ref"])
        scores["dino"] = {"mean": float(cos.mean()), "definition": "mean cosine of DINO CLS embeddings"}
        per["dino"] = cos.tolist()
    if "lpips" in wanted:
        scores["lpips"] = {"mean": float(cat["lpips"].mean()), "net": config.lpips.net, "version": "0.1"}
        per["lpips"] = cat["lpips"].tolist()
    if "ssim" in wanted:
        scores["ssim"] = {"mean": float(cat["ssim"].mean()), "window": "gaussian 11, sigma 1.5"}
        per["ssim"] = cat["ssim"].tolist()
    if "aesthetic" in wanted:
        head = aesthetic.load_head(config.aesthetic.head)
        version = aesthetic.check_version(head, config.aesthetic.get("version", ""), config.aesthetic.head)
        values = np.asarray(aesthetic.score(head, jnp.asarray(cat["clip"])))
        scores["aesthetic"] = {"mean": float(values.mean()), "head": str(config.aesthetic.head),
                               "predictor": aesthetic.PREDICTORS[version]}
        per["aesthetic"] = values.tolist()
    scores["per_image"] = per
    write_outputs(config, scores, generated, refs or backgrounds)
    return scores


def _fid_scores(config, wanted, gen_stats, extractor, params, mesh, batch_size, progress, reference_stats) -> dict:
    from tqdm import tqdm

    out: dict[str, Any] = {}
    if reference_stats is not None:
        ref_mu, ref_sigma = reference_stats
        n_ref = None
    else:
        ref_files = list_images(config.reference, "reference")
        ref_stats = fid.FeatureStats(inception.FEATURES, keep_features="kid" in wanted)
        apply = jax.jit(extractor.apply)
        bar = tqdm(total=len(ref_files), desc="reference", disable=not progress)
        for batch, n in batches(ref_files, lambda p: {"x": extractor.prepare(read_image(p))}, batch_size,
                                 config.workers):
            ref_stats.update(np.asarray(apply(params, parallel.global_batch(batch, mesh)["x"]))[:n])
            bar.update(n)
        bar.close()
        ref_mu, ref_sigma = ref_stats.mean_cov()
        n_ref = ref_stats.n
        if config.fid.save_reference_stats:
            fid.save_stats(config.fid.save_reference_stats, ref_mu, ref_sigma)
    if "fid" in wanted:
        mu, sigma = gen_stats.mean_cov()
        out["fid"] = {"value": fid.frechet_distance(mu, sigma, ref_mu, ref_sigma), "mode": config.fid.mode,
                      "n_generated": gen_stats.n, "n_reference": n_ref,
                      "weights": "random (not a real FID)" if config.fid.weights == "random" else "FID Inception 2015-12-05"}
    if "kid" in wanted:
        mean, std = fid.kernel_inception_distance(gen_stats.features, ref_stats.features,
                                                  subset_size=config.fid.kid_subset_size)
        out["kid"] = {"mean": mean, "std": std, "subset_size": min(config.fid.kid_subset_size, gen_stats.n, n_ref)}
    return out


def _clip_text_scores(config, extractor, generated, prompts, image_emb, per) -> dict:
    from jcompose.models import loading

    clip = extractor.loaded
    tokenizer = loading.load_tokenizer(config.clip.tokenizer or config.clip.model)
    texts = [prompts[p.stem] for p in generated]
    max_len = clip.config.get("text_config", {}).get("max_position_embeddings", clip_score.MAX_TEXT_TOKENS)
    embs = []
    fn = jax.jit(lambda p, ids, mask: clip_score.text_embeddings(clip.module, p, ids, mask))
    for start in range(0, len(texts), config.batch_size):
        tok = clip_score.tokenize(tokenizer, texts[start:start + config.batch_size], max_len)
        embs.append(np.asarray(fn(clip.params, tok["input_ids"], tok["attention_mask"])))
    cos = clip_score.paired_cosine(image_emb, np.concatenate(embs))
    per["clip_score_cos"] = cos.tolist()
    return {"value": clip_score.clip_score(cos, config.clip.convention), "convention": config.clip.convention,
            "mean_cosine": float(cos.mean()),
            "both_conventions": {c: clip_score.clip_score(cos, c) for c in clip_score.CONVENTIONS},
            "note": clip_score.ANYSCENE_NOTE}


# ---------------------------------------------------------------------------------------- report


def write_outputs(config, scores: dict, generated: list[Path], refs: dict[str, Path]) -> None:
    """scores.json, examples.png (reference | generated rows) and report.html in config.out."""
    from PIL import Image

    out = Path(config.out)
    write_scores(out, scores, config)
    thumb = config.report.thumb
    rows = generated[: config.report.examples]
    cols = 2 if refs else 1
    grid = Image.new("RGB", (cols * thumb, max(len(rows), 1) * thumb), "white")
    for r, path in enumerate(rows):
        pair = ([refs[path.stem]] if path.stem in refs else [None] * (cols - 1)) + [path]
        for c, p in enumerate(pair[-cols:]):
            if p is not None:
                grid.paste(Image.fromarray(read_image(p)).resize((thumb, thumb)), (c * thumb, r * thumb))
    grid.save(out / "examples.png")
    summary = {k: v for k, v in scores.items() if k != "per_image"}
    table = "".join(f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(json.dumps(v))}</code></td></tr>"
                    for k, v in summary.items())
    (out / "report.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>jcompose evaluation</title>"
        f"<h1>jcompose evaluation</h1><p>generated: {html.escape(str(config.generated))}<br>"
        f"reference: {html.escape(str(config.reference))}</p><table border=1>{table}</table>"
        f"<h2>Examples ({'reference | generated' if refs else 'generated'})</h2><img src='examples.png'>\n")


# ------------------------------------------------------------------------------------------ main


def _define_flags(values, argv: list[str]) -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configs/eval/<benchmark>.py[:variant]", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_bool("debug", False, f"show the traceback of input errors too (or set {cli.DEBUG_ENV}=1)",
                      flag_values=values)


def main(argv: list[str]) -> int:
    """`python -m jcompose.evaluate` (argv without the program name); prints the scores."""
    config = cli.parse_absl_flags(argv, _define_flags, prog="python -m jcompose.evaluate").config
    if config is None:
        raise InputError("--config=configs/eval/<benchmark>.py is required")
    scores = evaluate(config)
    print(json.dumps({k: v for k, v in scores.items() if k != "per_image"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
