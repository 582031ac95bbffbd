"""DINO score (DreamBooth): cosine similarity of DINO ViT-S/16 CLS embeddings, jcompose's Flax ViT.

Weights: a transformers folder such as `facebook/dino-vits16` (`model_type: vit`) with
`model.safetensors` or `flax_model.msgpack`. The embedding is the CLS token of the final-LayerNorm
sequence output (what DINO's hub model returns); the ViT pooler (dense + tanh) is not part of
DINO and is not used. Images go through `preprocess.dino_input` (Resize 256 bicubic -> CenterCrop
224 -> ImageNet normalisation, as MagicBrush/DreamBooth evaluation).

Note: HF DINO configs say `layer_norm_eps` 1e-12 while DINO's own ViT uses 1e-6; the config is
followed as given (the difference is far below reported precision).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from jcompose.models import encoders, loading


def load_dino(folder: str | Path, **kwargs) -> loading.Loaded:
    """A transformers ViT folder; files with or without pooler weights are both accepted.

    Keyword arguments go to `encoders.load_vit` (dtype, param_dtype, weights, precision).
    """
    return encoders.load_vit(folder, **kwargs)


def dino_embeddings(model, params, pixels: jax.Array) -> jax.Array:
    """(N, 224, 224, 3) `dino_input` pixels -> (N, D) CLS embeddings (not normalised).

    `model` is the `vit.ViTModel` of `load_dino(...).module`, `params` its parameters.
    """
    return model.apply({"params": params}, pixels).last_hidden_state[:, 0].astype(jnp.float32)
