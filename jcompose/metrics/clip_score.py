"""CLIP score (text-image), CLIP-I (image-image) and CLIP image embeddings with jcompose's Flax CLIP.

Conventions (say which one a number uses):

* ``"torchmetrics"`` (default): torchmetrics `CLIPScore` = max(100 * mean_i cos(E_I, E_T), 0)
  (the clamp applies to the mean), usually with `openai/clip-vit-large-patch14`;
* ``"hessel"``: Hessel et al. 2021 CLIPScore = mean_i 2.5 * max(cos_i, 0), with ViT-B/32.

CLIP-I is the mean cosine of image embeddings (DreamBooth, AnyDoor). Embeddings are the projected
`get_image_features` / `get_text_features` outputs (`jcompose.models.clip.CLIPModel`, the
numerics of transformers PyTorch). Images go through `preprocess.clip_input`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jcompose.models import encoders, loading

CONVENTIONS = {"torchmetrics": 100.0, "hessel": 2.5}
# What a reader comparing with AnyScene's table should know (scores.json repeats it).
ANYSCENE_NOTE = ("AnyScene reports CLIP-S of 14-15, which fits neither 100 * cos (about 25-35 with CLIP ViT-L/14 or "
                 "ViT-B/32 on real images) nor 2.5 * max(cos, 0) (about 0.6-0.9); both conventions are given here")
MAX_TEXT_TOKENS = 77


def load_clip(folder: str | Path, **kwargs) -> loading.Loaded:
    """A transformers CLIP folder (config.json + flax_model.msgpack or model.safetensors).

    Keyword arguments go to `encoders.load_clip` (dtype, param_dtype, weights, precision).
    """
    return encoders.load_clip(folder, **kwargs)


def image_embeddings(model, params, pixels: jax.Array) -> jax.Array:
    """(N, S, S, 3) `clip_input` pixels -> (N, D) L2-normalised projected image embeddings.

    `model` is the `CLIPModel` of `load_clip(...).module`, `params` its parameters.
    """
    return l2_normalize(model.apply({"params": params}, pixels, method="get_image_features"))


def text_embeddings(model, params, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """(N, L) token ids and 0/1 mask -> (N, D) L2-normalised projected text embeddings."""
    return l2_normalize(model.apply({"params": params}, input_ids, attention_mask, method="get_text_features"))


def tokenize(tokenizer, prompts: list[str], max_length: int = MAX_TEXT_TOKENS) -> dict[str, np.ndarray]:
    """Prompts -> {'input_ids', 'attention_mask'} (N, max_length) int32, padded and truncated."""
    out = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": out["input_ids"].astype(np.int32), "attention_mask": out["attention_mask"].astype(np.int32)}


def l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (N, D) embedding sets -> (N,) float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings must have one shape, got {a.shape} and {b.shape}")
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def clip_score(cosines: np.ndarray, convention: str = "torchmetrics") -> float:
    """Image-text cosines (N,) -> the CLIP score of the chosen convention (see module doc)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"CLIP score convention {convention!r}: expected one of {tuple(CONVENTIONS)}")
    cos = np.asarray(cosines, np.float64)
    weight = CONVENTIONS[convention]
    if convention == "torchmetrics":
        return float(max(weight * cos.mean(), 0.0))
    return float((weight * np.maximum(cos, 0.0)).mean())
