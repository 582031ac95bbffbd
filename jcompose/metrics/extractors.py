"""The feature extractors evaluation metrics need, loaded from an evaluation config's weight paths."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcompose.cli import InputError
from jcompose.metrics import clip_score, dino, fid, inception, lpips, preprocess

METRICS = ("fid", "kid", "clip_score", "clip_i", "dino", "lpips", "ssim", "aesthetic")


@dataclasses.dataclass
class Extractor:
    """One jit'd network: host `prepare(uint8 image) -> array`, device `apply(params, batch) -> out`."""

    name: str
    prepare: Callable[[np.ndarray], np.ndarray]
    apply: Callable
    params: Any


def _pytorch_fid_prepare(size: int) -> Callable:
    def prepare(image):
        if image.shape[:2] != (size, size):
            # In-graph resize needs one input size per batch: resize on the host the same way.
            image = fid.resize_bilinear_host(image, size)
            return (image / 127.5 - 1.0).astype(np.float32)
        return (image.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    return prepare


def random_params(module, *inputs) -> dict:
    """Random weights without running an init forward (smoke runs, benchmarks); BN variances and
    LPIPS heads are kept positive."""
    from jcompose.models import tiny

    abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)["params"]
    params = tiny.random_params(abstract, seed=0)

    def positive(path, x):
        key = jax.tree_util.keystr(path)
        if key.endswith("['var']"):
            return np.abs(x) + 1.0
        return np.abs(x) if "lin_" in key else x

    return jax.tree_util.tree_map_with_path(positive, params)


# Weights each metric needs: (config field, what it holds).
_NEEDS = {"clip_score": ("clip.model", "a transformers CLIP folder, e.g. openai/clip-vit-large-patch14"),
          "clip_i": ("clip.model", "a transformers CLIP folder, e.g. openai/clip-vit-large-patch14"),
          "aesthetic": ("aesthetic.head", "the LAION aesthetic head, e.g. sac+logos+ava1-l14-linearMSE.pth"),
          "dino": ("dino.model", "a transformers DINO/ViT folder, e.g. facebook/dino-vits16")}


def check_config(config) -> None:
    """Checks the config's fields and files before any network loads or image is read: InputError
    naming the field (unknown metric, missing weights, missing statistics, no output folder)."""
    if not config.out:
        raise InputError("config.out: set an output folder (--config.out=DIR)")
    wanted = set(config.metrics)
    unknown = wanted - set(METRICS)
    if unknown:
        raise InputError(f"config.metrics: unknown {sorted(unknown)}; choose from {METRICS}")
    if config.fid.mode not in ("pytorch-fid", "clean"):
        raise InputError(f"config.fid.mode = {config.fid.mode!r}: expected 'pytorch-fid' or 'clean'")
    for metric in sorted(wanted & _NEEDS.keys()):
        field, what = _NEEDS[metric]
        value = config[field.split(".")[0]][field.split(".")[1]]
        if not value:
            raise InputError(f"config.{field}: {metric} needs {what} (--config.{field}=PATH)")
        if not Path(value).exists():
            raise InputError(f"config.{field} = {value!r}: no such file or folder")
    if "clip_score" in wanted and not config.prompts:
        raise InputError("config.prompts: clip_score needs prompts (JSON {name: prompt} or name<TAB>prompt lines)")
    if wanted & {"fid", "kid"} and config.fid.reference_stats:
        if "kid" in wanted:
            raise InputError("config.metrics: kid needs reference images (config.reference), not fid.reference_stats")
        if not Path(config.fid.reference_stats).is_file():
            raise InputError(f"config.fid.reference_stats = {config.fid.reference_stats!r}: no such file "
                             "(a pytorch-fid .npz with mu and sigma)")


def build_extractors(config) -> dict[str, Extractor]:
    """The networks the requested metrics need, loaded from the config's weight paths."""
    check_config(config)
    wanted = set(config.metrics)
    out: dict[str, Extractor] = {}
    if wanted & {"fid", "kid"}:
        if config.fid.weights == "random":  # smoke tests / benchmarks only: not a real FID
            module = inception.InceptionV3FID()
            params = random_params(module, jnp.zeros((1, 299, 299, 3)))
        else:
            module, params = inception.load_inception(config.fid.weights or None)
        mode = config.fid.mode
        prep = (lambda im: fid.clean_fid_input(im)) if mode == "clean" else _pytorch_fid_prepare(inception.IMAGE_SIZE)
        out["inception"] = Extractor("inception", prep, fid.feature_fn(module, mode), params)
    if wanted & {"clip_score", "clip_i", "aesthetic"}:
        clip = clip_score.load_clip(config.clip.model)
        size = clip.config.get("vision_config", {}).get("image_size", 224)
        out["clip"] = Extractor("clip", lambda im: preprocess.clip_input(im, size),
                                lambda p, x: clip_score.image_embeddings(clip.module, p, x), clip.params)
        out["clip"].loaded = clip
    if "dino" in wanted:
        vit = dino.load_dino(config.dino.model)
        size = vit.config.get("image_size", 224)
        out["dino"] = Extractor("dino", lambda im: preprocess.dino_input(im, resize=size * 256 // 224, size=size),
                                lambda p, x: dino.dino_embeddings(vit.module, p, x), vit.params)
    if "lpips" in wanted:
        if config.lpips.weights == "random":  # smoke tests / benchmarks only
            module = lpips.LPIPS(config.lpips.net)
            zeros = jnp.zeros((1, 64, 64, 3))
            params = random_params(module, zeros, zeros)
        else:
            module, params = lpips.load_lpips(config.lpips.net, config.lpips.trunk or None, config.lpips.heads or None)
        out["lpips"] = Extractor("lpips", None, lambda p, x, y: module.apply({"params": p}, x, y), params)
    return out


