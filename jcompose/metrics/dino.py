"""DINO score (DreamBooth): cosine similarity of DINO ViT-S/16 CLS embeddings, Flax ViT.

Weights: a transformers folder such as `facebook/dino-vits16` (`model_type: vit`) with
`model.safetensors` or `flax_model.msgpack`. The embedding is the CLS token of the final-LayerNorm
sequence output (what DINO's hub model returns); the ViT pooler (dense + tanh) is not part of
DINO and is not used. Images go through `preprocess.dino_input` (Resize 256 bicubic -> CenterCrop
224 -> ImageNet normalisation, as MagicBrush/DreamBooth evaluation).

Note: HF DINO configs say `layer_norm_eps` 1e-12 while DINO's own ViT uses 1e-6; the config is
followed as given (the difference is far below reported precision).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp

from jcompose.models import loading, pt_layout


@functools.cache
def _vit_without_pooler():
    from transformers import FlaxViTModel
    from transformers.models.vit.modeling_flax_vit import FlaxViTModule

    class FlaxViTModelNoPooler(FlaxViTModel):
        module_class = functools.partial(FlaxViTModule, add_pooling_layer=False)

    return FlaxViTModelNoPooler


def load_dino(folder: str | Path, **kwargs) -> loading.Loaded:
    """A transformers ViT folder; files with or without pooler weights are both accepted."""
    from transformers import FlaxViTModel

    config = loading.read_config(loading._require_dir(folder, "dino"))
    size = config.get("image_size", 224)
    shape = (1, size, size, config.get("num_channels", 3))
    try:
        return loading.load_transformers_model(folder, _vit_without_pooler(), shape, what="dino", **kwargs)
    except pt_layout.LayoutError as err:
        if "pooler" not in str(err):
            raise
        # Checkpoints saved from ViTModel with its (unused) pooler: load it along, ignore it.
        return loading.load_transformers_model(folder, FlaxViTModel, shape, what="dino", **kwargs)


def dino_embeddings(model, params, pixels: jax.Array) -> jax.Array:
    """(N, 224, 224, 3) `dino_input` pixels -> (N, D) CLS embeddings (not normalised)."""
    # transformers' Flax ViT takes NCHW pixel values and transposes them itself.
    out = model(jnp.transpose(pixels, (0, 3, 1, 2)), params=params)
    return out.last_hidden_state[:, 0].astype(jnp.float32)
