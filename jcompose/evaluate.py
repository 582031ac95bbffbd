"""Evaluation: `python -m jcompose.evaluate --config=configs/eval/<benchmark>.py --config.generated=DIR ...`.

Streams a folder of generated images (and folders paired by file name: references, backgrounds, masks;
optionally prompts) through jit-compiled feature extractors, batch-sharded over every device and, with
`--multihost`, every host (`jcompose.sharded_map`: each host reads its share of the files, per-image
scores are gathered, FID statistics reduced across hosts), and writes into `config.out`:
`scores.json` (every metric with its convention and counts, per-image values, the inputs' formats,
conversions and skipped files, every resize, and the provenance: eval config, protocol, checkpoint),
`report.html` and `examples.png` (reference | generated, labelled with file names and scores).

Metrics (`config.metrics`): fid, kid (generated vs reference folder or `fid.reference_stats`),
clip_score (generated vs prompt), clip_i, dino (generated vs its paired `reference`), lpips, ssim
(generated vs its paired `background`, else `reference`), aesthetic (generated). With
`config.masks` (a mask per generated image, white = inserted object), clip_i / dino see the
mask's bounding box of the generated image, and lpips / ssim blank the mask in both images.
LPIPS / SSIM pairs are resized by `config.pair_size` / `config.pair_resize` (`eval_inputs.pair_shape`);
at native size (pair_size 0) images of different sizes go in different batches. SSIM is computed on the
8-bit pixel values (data_range 255), as scikit-image does. Every input is checked (headers, pairs,
prompts, masks) before any feature is computed. See `jcompose/metrics/` for each definition.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcompose import cli, eval_report, parallel, sharded_map
from jcompose.cli import InputError
from jcompose.eval_inputs import (
    crop_to_mask,
    folder_inputs,
    pair_image,
    pair_mask,
    pair_rule,
    pair_shape,
    pixel_resizes,
    read_image,
    read_mask,
    run_of,
    scan_folder,
    write_scores,
)
from jcompose.metrics import aesthetic, clip_score, fid, inception, ssim
from jcompose.metrics.extractors import METRICS, build_extractors, check_config  # noqa: F401 (public here)

PER_IMAGE = ("clip_score_cos", "clip_i", "dino", "lpips", "ssim", "aesthetic")


def evaluate(config, progress: bool = True) -> dict[str, Any]:
    """Runs the configured metrics and writes scores.json and the report; returns the scores."""
    run_of(config)  # the run named or recorded must be this protocol's method: checked before the long work
    if config.get("protocol") == "anydoor":  # region CLIP-I / DINO x 100 (configs/eval/anydoor.py)
        from jcompose.metrics import anydoor_protocol

        return anydoor_protocol.evaluate(config, progress)
    if config.get("manifest"):  # a benchmark run written by compose: the method's own protocol
        from jcompose.metrics import dreamcom_protocol

        return dreamcom_protocol.evaluate(config, progress)
    check_config(config)
    rule = pair_rule(config)
    wanted = list(config.metrics)
    inputs = folder_inputs(config)
    reference_stats = None  # read before the long work, so a bad file fails first
    if set(wanted) & {"fid", "kid"} and config.fid.reference_stats:
        with cli.input_errors("config.fid.reference_stats: "):
            reference_stats = fid.load_stats(config.fid.reference_stats)
    reference_folder = (scan_folder(config.reference, "reference")
                        if set(wanted) & {"fid", "kid"} and reference_stats is None else None)

    with cli.input_errors():  # weight files the config names
        extractors = build_extractors(config)
    mesh = parallel.make_mesh()
    params = {k: parallel.put_replicated(e.params, mesh) for k, e in extractors.items()}
    pixel = bool(set(wanted) & {"lpips", "ssim"})
    shapes = [pair_shape(info.shape, config.pair_size, rule) for info in inputs.generated.images]

    def read_with_mask(k: int) -> tuple[np.ndarray, np.ndarray | None]:
        info = inputs.generated.images[k]
        image = read_image(info)
        return image, read_mask(inputs.masks[info.path.stem], image.shape[:2]) if inputs.masks else None

    def prepare_features(k: int) -> dict[str, np.ndarray]:
        stem = inputs.generated.images[k].path.stem
        image, mask = read_with_mask(k)
        # DINO / CLIP-I look at the inserted object: the mask's bounding box of the generated image.
        fg = crop_to_mask(image, mask, inputs.masks[stem].path) if mask is not None else image
        out: dict[str, np.ndarray] = {}
        if "inception" in extractors:
            out["inception"] = extractors["inception"].prepare(image)
        if "clip" in extractors:
            out["clip"] = extractors["clip"].prepare(image)
        if "clip_i" in wanted:
            out["clip_fg"] = extractors["clip"].prepare(fg)
            out["clip_ref"] = extractors["clip"].prepare(read_image(inputs.refs[stem]))
        if "dino" in wanted:
            out["dino"] = extractors["dino"].prepare(fg)
            out["dino_ref"] = extractors["dino"].prepare(read_image(inputs.refs[stem]))
        return out

    def features(params, batch):
        res = {}
        if "inception" in params:
            res["inception"] = extractors["inception"].apply(params["inception"], batch["inception"])
        if "clip" in params:
            res["clip"] = extractors["clip"].apply(params["clip"], batch["clip"])
            if "clip_ref" in batch:
                res["clip_i"] = _cosine(extractors["clip"].apply(params["clip"], batch["clip_fg"]),
                                        extractors["clip"].apply(params["clip"], batch["clip_ref"]))
        if "dino" in params:
            res["dino"] = _cosine(extractors["dino"].apply(params["dino"], batch["dino"]),
                                  extractors["dino"].apply(params["dino"], batch["dino_ref"]))
        return res

    def prepare_pixels(k: int) -> dict[str, np.ndarray]:
        image, mask = read_with_mask(k)
        gen = pair_image(image, shapes[k]).astype(np.float32)
        target = pair_image(read_image(inputs.targets[inputs.generated.images[k].path.stem]), shapes[k])
        target = target.astype(np.float32)
        if mask is not None:
            # Background metrics: the inserted region is blanked (mid grey) in both images.
            keep = pair_mask(mask, shapes[k])[..., None]
            gen, target = gen * keep + 127.5 * (1 - keep), target * keep + 127.5 * (1 - keep)
        return {"pix": gen, "pix_ref": target}  # pixel values in [0, 255]

    def pixels(params, batch):
        res = {}
        if "lpips" in params:
            res["lpips"] = extractors["lpips"].apply(params["lpips"], batch["pix"] / 127.5 - 1.0,
                                                     batch["pix_ref"] / 127.5 - 1.0)
        if "ssim" in wanted:
            res["ssim"] = ssim.ssim(batch["pix"], batch["pix_ref"], data_range=ssim.PIXEL_RANGE)
        return res

    # Two passes: the networks' inputs have one shape, the pixel pairs one per size group (pair_size 0 or
    # keep_aspect), and a program per group should not recompile the networks.
    items = range(len(inputs.generated.images))
    gen_stats = fid.FeatureStats(inception.FEATURES)
    res: dict[str, np.ndarray] = {}
    if set(extractors) - {"lpips"}:
        gather = [k for k in ("clip_i", "dino") if k in wanted]
        gather += (["clip"] if "clip" in extractors else []) + (["inception"] if "kid" in wanted else [])
        res.update(sharded_map.map_items(
            items, prepare_features, features, {k: v for k, v in params.items() if k != "lpips"}, mesh,
            batch_size=config.batch_size, workers=config.workers, gather=gather, desc="generated", progress=progress,
            on_local=(lambda rows, _: gen_stats.update(rows["inception"])) if "inception" in extractors else None))
    if pixel:
        res.update(sharded_map.map_items(
            items, prepare_pixels, pixels, {k: v for k, v in params.items() if k == "lpips"}, mesh,
            batch_size=config.batch_size, workers=config.workers, groups=shapes, desc="pairs", progress=progress))

    names = [info.path.name for info in inputs.generated.images]
    scores: dict[str, Any] = {"n_generated": len(names)}
    per: dict[str, list] = {"file": names}
    if "fid" in wanted or "kid" in wanted:
        scores.update(_fid_scores(config, wanted, reduced_stats(gen_stats), res.get("inception"), extractors["inception"],
                                  params["inception"], mesh, progress, reference_stats, reference_folder))
    if "clip_score" in wanted:
        scores["clip_score"] = _clip_text_scores(config, extractors["clip"], inputs, res["clip"], per, mesh, progress)
    if "clip_i" in wanted:
        scores["clip_i"] = {"mean": float(res["clip_i"].mean()), "definition": "mean cosine of CLIP image embeddings"}
        per["clip_i"] = res["clip_i"].tolist()
    if "dino" in wanted:
        scores["dino"] = {"mean": float(res["dino"].mean()), "definition": "mean cosine of DINO CLS embeddings"}
        per["dino"] = res["dino"].tolist()
    if "lpips" in wanted:
        scores["lpips"] = {"mean": float(res["lpips"].mean()), "net": config.lpips.net, "version": "0.1"}
        per["lpips"] = res["lpips"].tolist()
    if "ssim" in wanted:
        scores["ssim"] = {"mean": float(res["ssim"].mean()), "window": "gaussian 11, sigma 1.5",
                          "values": "8-bit pixel values, data_range 255 (scikit-image's convention)"}
        per["ssim"] = res["ssim"].tolist()
    if "aesthetic" in wanted:
        head = aesthetic.load_head(config.aesthetic.head)
        version = aesthetic.check_version(head, config.aesthetic.get("version", ""), config.aesthetic.head)
        values = np.asarray(aesthetic.score(head, jnp.asarray(res["clip"])))
        scores["aesthetic"] = {"mean": float(values.mean()), "head": str(config.aesthetic.head),
                               "predictor": aesthetic.PREDICTORS[version]}
        per["aesthetic"] = values.tolist()
    scores["provenance"] = eval_report.provenance(config, config.get("protocol") or "folders")
    scores["inputs"] = inputs.summary()
    scores["preprocessing"] = _preprocessing(config, wanted, inputs, extractors)
    scores["per_image"] = per
    if eval_report.is_writer():
        write_outputs(config, scores, inputs)
    return scores


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Row-wise cosine of (B, D) embeddings, in float32 on the device."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))


def reduced_stats(stats: fid.FeatureStats) -> fid.FeatureStats:
    """Every process's feature statistics merged (each holds the rows of its own files); float64 moved
    exactly (`sharded_map.allgather`), P x D x D x 8 bytes per host (32 MiB per process for Inception)."""
    if jax.process_count() == 1:
        return stats
    n, mean, scatter = stats.moments()
    counts = sharded_map.allgather(np.array([n], np.int64))
    means, scatters = sharded_map.allgather(mean[None]), sharded_map.allgather(scatter[None])
    return fid.FeatureStats.merge([(int(c[0]), m[0], s[0]) for c, m, s in zip(counts, means, scatters, strict=True)])


def _fid_scores(config, wanted, gen_stats, gen_features, extractor, params, mesh, progress, reference_stats,
                reference_folder) -> dict:
    out: dict[str, Any] = {}
    ref_features = None
    if reference_stats is not None:
        ref_mu, ref_sigma = reference_stats
        n_ref = None
    else:
        files = reference_folder.images
        ref_stats = fid.FeatureStats(inception.FEATURES)
        res = sharded_map.map_items(
            files, lambda info: {"x": extractor.prepare(read_image(info))}, lambda p, b: {"x": extractor.apply(p, b["x"])},
            params, mesh, batch_size=config.batch_size, workers=config.workers, gather=["x"] if "kid" in wanted else [],
            on_local=lambda rows, _: ref_stats.update(rows["x"]), desc="reference", progress=progress)
        ref_stats = reduced_stats(ref_stats)
        ref_mu, ref_sigma = ref_stats.mean_cov()
        n_ref, ref_features = ref_stats.n, res.get("x")
        if config.fid.save_reference_stats and eval_report.is_writer():
            fid.save_stats(config.fid.save_reference_stats, ref_mu, ref_sigma)
    if "fid" in wanted:
        mu, sigma = gen_stats.mean_cov()
        out["fid"] = {"value": fid.frechet_distance(mu, sigma, ref_mu, ref_sigma), "mode": config.fid.mode,
                      "n_generated": gen_stats.n, "n_reference": n_ref,
                      "weights": "random (not a real FID)" if config.fid.weights == "random" else "FID Inception 2015-12-05"}
    if "kid" in wanted:
        mean, std = fid.kernel_inception_distance(gen_features, ref_features, subset_size=config.fid.kid_subset_size)
        out["kid"] = {"mean": mean, "std": std,
                      "subset_size": min(config.fid.kid_subset_size, len(gen_features), len(ref_features))}
    return out


def _clip_text_scores(config, extractor, inputs, image_emb, per, mesh, progress) -> dict:
    from jcompose.models import loading

    clip = extractor.loaded
    tokenizer = loading.load_tokenizer(config.clip.tokenizer or config.clip.model)
    texts = [inputs.prompts[info.path.stem] for info in inputs.generated.images]
    max_len = clip.config.get("text_config", {}).get("max_position_embeddings", clip_score.MAX_TEXT_TOKENS)

    def tokens(text: str) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in clip_score.tokenize(tokenizer, [text], max_len).items()}

    res = sharded_map.map_items(
        texts, tokens, lambda p, b: {"e": clip_score.text_embeddings(clip.module, p, b["input_ids"], b["attention_mask"])},
        parallel.put_replicated(clip.params, mesh), mesh, batch_size=config.batch_size, workers=config.workers,
        desc="prompts", progress=progress)
    cos = clip_score.paired_cosine(image_emb, res["e"])
    per["clip_score_cos"] = cos.tolist()
    return {"value": clip_score.clip_score(cos, config.clip.convention), "convention": config.clip.convention,
            "mean_cosine": float(cos.mean()),
            "both_conventions": {c: clip_score.clip_score(cos, c) for c in clip_score.CONVENTIONS},
            "note": clip_score.ANYSCENE_NOTE}


def _preprocessing(config, wanted, inputs, extractors) -> dict:
    """How each metric's network saw the images (every resize), for scores.json and the report."""
    out: dict[str, Any] = {}
    if "inception" in extractors:
        out["fid"] = ("pytorch-fid: bilinear to 299x299 (half-pixel centres, no antialias), aspect ratio not kept"
                      if config.fid.mode == "pytorch-fid" else
                      "clean-fid: PIL bicubic per channel in float to 299x299, aspect ratio not kept")
    if "clip" in extractors:
        out["clip"] = "shorter side to the CLIP size (PIL bicubic), centre crop (transformers' CLIPImageProcessor)"
    if "dino" in extractors:
        out["dino"] = "shorter side to 256/224 of the DINO size (PIL bicubic), centre crop (DreamBooth's DINO)"
    if inputs.masks:
        out["masks"] = ("nearest to each image's size; clip_i / dino see the mask's bounding box, lpips / ssim "
                        "blank the mask (mid grey) in both images")
    if set(wanted) & {"lpips", "ssim"}:
        out["lpips_ssim"] = pixel_resizes(config, inputs)
    return out


# ---------------------------------------------------------------------------------------- report

CAPTION_KEYS = ("ssim", "lpips", "clip_i", "dino", "clip_score_cos", "aesthetic")


def write_outputs(config, scores: dict, inputs) -> None:
    """scores.json, examples.png (reference | generated rows, labelled) and report.html in config.out."""
    out = Path(config.out)
    write_scores(out, scores, config)
    pairs = inputs.refs or inputs.targets
    per = scores["per_image"]
    rows, listed = [], []
    for i, info in enumerate(inputs.generated.images[: config.report.examples]):
        caption = eval_report.score_caption(per, i, list(CAPTION_KEYS))
        ref = pairs.get(info.path.stem)
        row = [(read_image(ref), [ref.path.name])] if ref is not None else ([(None, [])] if pairs else [])
        rows.append(row + [(read_image(info), [info.path.name, caption])])
        listed.append({"generated": info.path.name, **({"paired with": ref.path.name} if ref else {}),
                       "scores": caption})
    eval_report.examples_grid(rows, config.report.thumb, out / "examples.png")
    summary = {k: v for k, v in scores.items() if k not in ("per_image", "inputs", "preprocessing", "provenance")}
    eval_report.write_html(out, "jcompose evaluation", summary,
                           {"provenance": scores["provenance"], "inputs": scores["inputs"],
                            "preprocessing": scores["preprocessing"]}, listed)


# ------------------------------------------------------------------------------------------ main


def _define_flags(values, argv: list[str]) -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configs/eval/<benchmark>.py[:variant]", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize(): every host reads its share of the "
                      "files (TPU pods, multi-node GPU)", flag_values=values)
    flags.DEFINE_string("coordinator_address", None, "with --multihost: host:port of process 0 (default: detected)",
                        flag_values=values)
    flags.DEFINE_integer("num_processes", None, "with --multihost: number of processes (default: detected)",
                         flag_values=values)
    flags.DEFINE_integer("process_id", None, "with --multihost: this process's index (default: detected)",
                         flag_values=values)
    flags.DEFINE_bool("debug", False, f"show the traceback of input errors too (or set {cli.DEBUG_ENV}=1)",
                      flag_values=values)


def main(argv: list[str]) -> int:
    """`python -m jcompose.evaluate` (argv without the program name); prints the scores."""
    import json

    values = cli.parse_absl_flags(argv, _define_flags, prog="python -m jcompose.evaluate")
    if values.config is None:
        raise InputError("--config=configs/eval/<benchmark>.py is required")
    if values.multihost:
        from jcompose import distributed

        distributed.start(values.coordinator_address, values.num_processes, values.process_id)
    scores = evaluate(values.config)
    if eval_report.is_writer():
        print(json.dumps({k: v for k, v in scores.items() if k not in ("per_image", "inputs")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
