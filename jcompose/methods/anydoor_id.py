"""AnyDoor's ID extractor (paper Sec. 3.1, Table 3): a frozen image encoder reads the reference and a trained
linear projector maps its tokens to the UNet's context width; the tokens replace the text context.

Encoders (`config.model.id_encoder`):
  "dinov2"  DINOv2 (released: ViT-g/14, 1536-d; the released FrozenDinoV2Encoder): [CLS; patches] after
            the final LayerNorm, ImageNet normalisation, one linear layer for all tokens (projector
            {"kernel" (D, C), "bias" (C,)}).
  "clip"    a CLIP image encoder, Table 3's "CLIP (G+P)" row as the released code's
            FrozenOpenCLIPImageEncoder builds it (OpenCLIP ViT-H/14 = laion/CLIP-ViT-H-14-laion2B-s32B-b79K
            in transformers layout): the global token is CLIP's image embedding (the CLS after the
            post-LayerNorm, through CLIP's visual projection; projection_dim wide), the patch tokens the
            post-LayerNorm patch tokens (hidden_size wide); each group has its own linear layer (projector
            {"embed": {...}, "token": {...}}: the released projector_embed / projector_token); CLIP's
            normalisation; the reference side must be the encoder's image_size (no resize, as released).
Tokens (`config.model.id_tokens`): "global_patch" (1 + N tokens: Table 3's "G+P", released) or "global"
(the one global token: "(G)").

Every projector starts as torch's nn.Linear default (U(+-1/sqrt(fan_in)) for kernel and bias), seeded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jcompose import atomic
from jcompose.models import clip, encoders, tiny, vit
from jcompose.models.diffusers_config import ConfigError

ID_ENCODERS = ("dinov2", "clip")
ID_TOKENS = ("global_patch", "global")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # OpenAI CLIP / OpenCLIP
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
TINY_DINOV2_IMAGE_SIZE = 518  # the published ViT-g/14's 37x37 position grid


def write_tiny_dinov2(folder: Path, seed: int, formats: tuple[str, ...] = ("msgpack",)) -> Path:
    """A tiny random DINOv2 (tiny.dinov2_config with a 518-px, 37x37 position grid) as a transformers
    folder; the same seed gives the same weights in every format."""
    model = vit.Dinov2Model(dataclasses.replace(tiny.dinov2_config(), image_size=TINY_DINOV2_IMAGE_SIZE))
    params = tiny.random_params(encoders.abstract_params(model), seed)
    with atomic.folder(folder, owns=atomic.only(tiny.MODEL_FILES)) as partial:  # whole or not at all
        encoders.export_encoder(model, params, partial, formats)
    return Path(folder)


def tiny_clip_config() -> clip.CLIPConfig:
    """A 2-layer CLIP whose vision tower reads AnyDoor's 224-px reference in 14-px patches (257 tokens, as
    ViT-H/14), with a projection width (24) other than its hidden width (32); a token-free stub text tower."""
    vision = clip.CLIPVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=24, num_hidden_layers=2,
                                   num_attention_heads=4, image_size=224, patch_size=14, hidden_act="gelu")
    text = clip.CLIPTextConfig(vocab_size=16, hidden_size=16, intermediate_size=20, projection_dim=24,
                               num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                               pad_token_id=0, bos_token_id=14, eos_token_id=15)
    return clip.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def write_tiny_clip(folder: Path, seed: int, formats: tuple[str, ...] = ("msgpack",)) -> Path:
    """A tiny random CLIP (`tiny_clip_config`) as a transformers folder (model_type clip)."""
    model = clip.CLIPModel(tiny_clip_config())
    params = tiny.random_params(encoders.abstract_params(model), seed)
    with atomic.folder(folder, owns=atomic.only(tiny.MODEL_FILES)) as partial:
        encoders.export_encoder(model, params, partial, formats)
    return Path(folder)


def _linear(rng: np.random.Generator, fan_in: int, fan_out: int) -> dict:
    bound = 1.0 / np.sqrt(fan_in)
    return {"kernel": jnp.asarray(rng.uniform(-bound, bound, (fan_in, fan_out)), jnp.float32),
            "bias": jnp.asarray(rng.uniform(-bound, bound, (fan_out,)), jnp.float32)}


def _affine(x: jax.Array, layer: dict, dtype) -> jax.Array:
    return x @ layer["kernel"].astype(dtype) + layer["bias"].astype(dtype)


def _pixels(reference: jax.Array, mean: np.ndarray, std: np.ndarray) -> jax.Array:
    """(B, R, R, 3) in [-1, 1] -> normalised (the released encoders take [0, 1] and normalise)."""
    return ((reference.astype(jnp.float32) + 1.0) / 2.0 - mean) / std


@dataclasses.dataclass(frozen=True)
class Dinov2Ids:
    """DINOv2 tokens (module doc); `module` a `vit.Dinov2Model`."""

    module: Any
    key: str = "dinov2"

    @property
    def width(self) -> int:
        return self.module.config.hidden_size

    def init_projector(self, seed: int, context: int, global_only: bool = False) -> dict:
        """{"kernel" (D, C), "bias" (C,)} float32 (one layer for every token)."""
        del global_only
        return _linear(np.random.default_rng(seed), self.width, context)

    def tokens(self, encoder_params, projector: dict, reference: jax.Array, global_only: bool, dtype) -> jax.Array:
        """(B, R, R, 3) in [-1, 1] -> (B, 1 or 1 + N, C) in `dtype`; no gradient reaches the encoder."""
        pixels = _pixels(reference, IMAGENET_MEAN, IMAGENET_STD).astype(dtype)
        features = jax.lax.stop_gradient(self.module.apply({"params": encoder_params}, pixels).last_hidden_state)
        return _affine(features[:, :1] if global_only else features, projector, dtype)


@dataclasses.dataclass(frozen=True)
class ClipIds:
    """CLIP image-encoder tokens (module doc); `module` a `clip.CLIPVisionTransformer`, params
    {"vision_model", "visual_projection"} as in a transformers CLIP folder."""

    module: Any
    key: str = "clip"

    def init_projector(self, seed: int, context: int, global_only: bool = False) -> dict:
        """{"embed": linear (projection_dim, C)[, "token": linear (hidden_size, C) unless `global_only`]} float32."""
        rng = np.random.default_rng(seed)
        cfg = self.module.config
        embed = _linear(rng, cfg.projection_dim, context)
        return {"embed": embed} if global_only else {"embed": embed, "token": _linear(rng, cfg.hidden_size, context)}

    def tokens(self, encoder_params, projector: dict, reference: jax.Array, global_only: bool, dtype) -> jax.Array:
        """(B, S, S, 3) in [-1, 1] (S = the encoder's image_size) -> (B, 1 or 1 + N, C) in `dtype`."""
        pixels = _pixels(reference, CLIP_MEAN, CLIP_STD).astype(dtype)
        hidden = self.module.apply({"params": encoder_params["vision_model"]}, pixels).last_hidden_state
        post = nn.LayerNorm(epsilon=self.module.config.layer_norm_eps, dtype=dtype, use_fast_variance=False)
        hidden = post.apply({"params": encoder_params["vision_model"]["post_layernorm"]},
                            hidden[:, :1] if global_only else hidden)
        embed = hidden[:, :1] @ encoder_params["visual_projection"]["kernel"].astype(dtype)
        embed, hidden = jax.lax.stop_gradient((embed, hidden))
        tokens = [_affine(embed, projector["embed"], dtype)]
        if not global_only:
            tokens.append(_affine(hidden[:, 1:], projector["token"], dtype))
        return jnp.concatenate(tokens, axis=1)


def load(kind: str, folder: str | Path, *, dtype, reference_size: int, dinov2_interpolation: str = "dinov2_hub"):
    """(encoder (Dinov2Ids or ClipIds), its frozen params) from a transformers folder.

    Raises ConfigError naming the file for a folder of another kind, and for a CLIP whose image_size is
    not `reference_size` (`config.data.reference_size`)."""
    if kind == "dinov2":
        loaded = encoders.load_dinov2(folder, dtype=dtype)
        return Dinov2Ids(loaded.module.clone(interpolation=dinov2_interpolation)), loaded.params
    if kind != "clip":
        raise ConfigError(f"config.model.id_encoder = {kind!r}: expected one of {ID_ENCODERS}")
    try:
        loaded = encoders.load_clip(folder, dtype=dtype)
    except ConfigError as err:
        raise ConfigError(f"{err} (config.model.clip: a transformers CLIP folder, e.g. "
                          "laion/CLIP-ViT-H-14-laion2B-s32B-b79K)") from None
    vision = loaded.module.config.vision_config
    if vision.image_size != reference_size:
        raise ConfigError(f"{Path(folder) / 'config.json'}: vision_config.image_size = {vision.image_size}, but "
                          f"config.data.reference_size = {reference_size}; the CLIP ID extractor reads the reference "
                          f"unresized (as released): set --config.data.reference_size={vision.image_size}")
    module = clip.CLIPVisionTransformer(vision, dtype=dtype)
    params = {"vision_model": loaded.params["vision_model"], "visual_projection": loaded.params["visual_projection"]}
    return ClipIds(module), params
