"""CLIP text and vision transformers in flax.linen, numerically those of transformers PyTorch.

Parameter trees are those of transformers' (removed) Flax classes: `CLIPTextModel` ->
``{"text_model": ...}``, `CLIPVisionModel` -> ``{"vision_model": ...}``, `CLIPModel` ->
``{"text_model", "vision_model", "visual_projection", "text_projection", "logit_scale"}``, so
existing `flax_model.msgpack` files and `pt_layout.transformers_keys` load unchanged.

Text inputs are int token ids (B, L); images are NHWC pixels (B, H, W, 3), already normalised
(`metrics.preprocess.clip_input`). `dtype` is the compute dtype, `param_dtype` the storage dtype;
attention softmax always runs in float32.

The pieces it shares with `vit.py` (`parse_config`, `activation`, `attend`, `EncoderOutput`, `Block`)
are in `encoder_parts.py` (and importable from here).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jcompose.models.diffusers_config import ConfigError
from jcompose.models.encoder_parts import (  # noqa: F401 (ACTIVATIONS, parse_config: public here too)
    ACTIVATIONS,
    Block,
    EncoderOutput,
    activation,
    attend,
    check_common,
    checked,
    parse_config,
)

# ----------------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """transformers `CLIPTextConfig` fields that define the forward pass (defaults as transformers)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int | None = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int = 49407

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str, prefix: str = "") -> CLIPTextConfig:
        config = parse_config(cls, values, source, prefix)
        check_common(config, source, prefix)
        return config

    def to_dict(self) -> dict[str, Any]:
        """config.json content that transformers PyTorch `CLIPTextModel.from_pretrained` reads."""
        return {"model_type": "clip_text_model", "architectures": ["CLIPTextModel"], **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """transformers `CLIPVisionConfig` fields that define the forward pass."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str, prefix: str = "") -> CLIPVisionConfig:
        config = parse_config(cls, values, source, prefix)
        check_common(config, source, prefix)
        if not 0 < config.patch_size <= config.image_size:
            raise ConfigError(f"{source}: {prefix}patch_size = {config.patch_size}: expected 1..image_size "
                              f"({config.image_size})")
        return config

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"], **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """transformers `CLIPConfig`: a text and a vision config plus the shared projection width."""

    text_config: CLIPTextConfig = CLIPTextConfig()
    vision_config: CLIPVisionConfig = CLIPVisionConfig()
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str) -> CLIPConfig:
        subs = {}
        for key, sub_cls in (("text_config", CLIPTextConfig), ("vision_config", CLIPVisionConfig)):
            sub = values.get(key) or {}
            legacy = values.get(f"{key}_dict")  # configs written before transformers 4.26 keep both
            for name, part in ((key, sub), (f"{key}_dict", legacy or {})):
                if not isinstance(part, Mapping):
                    raise ConfigError(f"{source}: {name} = {part!r}: expected a JSON object")
            subs[key] = sub_cls.from_dict({**sub, **(legacy or {})}, source, prefix=f"{key}.")
        top = {k: values[k] for k in ("projection_dim", "logit_scale_init_value") if k in values}
        hints = typing.get_type_hints(cls)
        top = {k: checked(v, hints[k], f"{source}: {k}") for k, v in top.items()}
        return cls(**subs, **top)

    def to_dict(self) -> dict[str, Any]:
        """config.json content that transformers PyTorch `CLIPModel.from_pretrained` reads."""
        strip = ("model_type", "architectures")
        return {
            "model_type": "clip", "architectures": ["CLIPModel"],
            "text_config": {k: v for k, v in self.text_config.to_dict().items() if k not in strip},
            "vision_config": {k: v for k, v in self.vision_config.to_dict().items() if k not in strip},
            "projection_dim": self.projection_dim, "logit_scale_init_value": self.logit_scale_init_value,
        }


# ------------------------------------------------------------------------------------ layers


class CLIPAttention(Block):
    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        width, heads = self.config.hidden_size, self.config.num_attention_heads
        split = lambda y: y.reshape(*y.shape[:2], heads, width // heads)  # noqa: E731
        q, k, v = (split(self.dense(width, f"{n}_proj")(x)) for n in ("q", "k", "v"))
        out = attend(q, k, v, bias, self.precision)
        return self.dense(width, "out_proj")(out.reshape(*x.shape[:2], width))


class CLIPMLP(Block):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = activation(self.config.hidden_act)(self.dense(self.config.intermediate_size, "fc1")(x))
        return self.dense(self.config.hidden_size, "fc2")(x)


class CLIPEncoderLayer(Block):
    """Pre-LN block: x + attn(LN1(x)), then + mlp(LN2(.))."""

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        x = x + self.sub(CLIPAttention, "self_attn")(self.layer_norm("layer_norm1")(x), bias)
        return x + self.sub(CLIPMLP, "mlp")(self.layer_norm("layer_norm2")(x))


class _CLIPLayers(Block):
    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        for i in range(self.config.num_hidden_layers):
            x = self.sub(CLIPEncoderLayer, str(i))(x, bias)
        return x


class CLIPEncoder(Block):
    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        return self.sub(_CLIPLayers, "layers")(x, bias)


class CLIPTextEmbeddings(Block):
    @nn.compact
    def __call__(self, input_ids: jax.Array, position_ids: jax.Array) -> jax.Array:
        cfg = self.config
        init = nn.initializers.normal(0.02)
        tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                          embedding_init=init, name="token_embedding")
        positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=self.dtype,
                             param_dtype=self.param_dtype, embedding_init=init, name="position_embedding")
        return tokens(input_ids) + positions(position_ids)


def text_attention_bias(length: int, attention_mask: jax.Array | None) -> jax.Array:
    """(1 or B, 1, L, L) float32 bias: causal, plus padding keys when a (B, L) 0/1 mask is given.

    Added like transformers PyTorch does (each mask contributes float32 min), so even a row
    whose keys are all masked gets the same softmax as there.
    """
    neg = jnp.finfo(jnp.float32).min
    causal = jnp.where(jnp.tril(jnp.ones((length, length), bool)), 0.0, neg)[None, None]
    if attention_mask is None:
        return causal
    padding = jnp.where(jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0, neg)
    return causal + padding


class CLIPTextTransformer(Block):
    """Token ids (B, L) -> EncoderOutput(last_hidden_state (B, L, D), pooler_output (B, D))."""

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None) -> EncoderOutput:
        cfg = self.config
        input_ids = jnp.asarray(input_ids).astype(jnp.int32)
        length = input_ids.shape[-1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"{length} tokens, but the text model has max_position_embeddings = "
                             f"{cfg.max_position_embeddings}")
        if position_ids is None:
            position_ids = jnp.arange(length, dtype=jnp.int32)[None]
        x = self.sub(CLIPTextEmbeddings, "embeddings")(input_ids, jnp.asarray(position_ids).astype(jnp.int32))
        x = self.sub(CLIPEncoder, "encoder")(x, text_attention_bias(length, attention_mask))
        x = self.layer_norm("final_layer_norm")(x)
        if cfg.eos_token_id == 2:
            # configs from before transformers#24773 set a wrong eos id: the EOS token is the
            # largest id of each sequence (transformers keeps this rule for them)
            eos = jnp.argmax(input_ids, axis=-1)
        else:
            eos = jnp.argmax(input_ids == cfg.eos_token_id, axis=-1)  # first EOS (pad may equal EOS)
        return EncoderOutput(x, x[jnp.arange(x.shape[0]), eos])


class CLIPVisionEmbeddings(Block):
    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg = self.config
        if pixels.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(f"pixels of shape {pixels.shape[1:]} (H, W, C); this CLIP vision model takes "
                             f"{(cfg.image_size, cfg.image_size, cfg.num_channels)}")
        p = cfg.patch_size
        patches = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                          dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                          name="patch_embedding")(pixels.astype(self.dtype))
        patches = patches.reshape(patches.shape[0], -1, cfg.hidden_size)
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (cfg.hidden_size,), self.param_dtype)
        cls = jnp.broadcast_to(cls.astype(self.dtype), (patches.shape[0], 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1)
        positions = nn.Embed(x.shape[1], cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                             embedding_init=nn.initializers.normal(0.02), name="position_embedding")
        return x + positions(jnp.arange(x.shape[1])[None])


class CLIPVisionTransformer(Block):
    """NHWC pixels -> EncoderOutput(last_hidden_state (B, 1+N, D), pooler_output = post-LN CLS (B, D))."""

    @nn.compact
    def __call__(self, pixels: jax.Array) -> EncoderOutput:
        x = self.layer_norm("pre_layrnorm")(self.sub(CLIPVisionEmbeddings, "embeddings")(pixels))
        x = self.sub(CLIPEncoder, "encoder")(x)
        return EncoderOutput(x, self.layer_norm("post_layernorm")(x[:, 0]))


# ------------------------------------------------------------------------------------ models


class CLIPTextModel(Block):
    """CLIP text encoder, params ``{"text_model": ...}``: `apply({"params": p}, ids[, attention_mask])`."""

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None) -> EncoderOutput:
        return self.sub(CLIPTextTransformer, "text_model")(input_ids, attention_mask, position_ids)


class CLIPVisionModel(Block):
    """CLIP vision tower, params ``{"vision_model": ...}``: `apply({"params": p}, pixels_nhwc)`."""

    @nn.compact
    def __call__(self, pixels: jax.Array) -> EncoderOutput:
        return self.sub(CLIPVisionTransformer, "vision_model")(pixels)


@flax.struct.dataclass
class CLIPOutput:
    """Projected, L2-normalised embeddings (B, P), logits (B_image, B_text) and both towers' outputs."""

    logits_per_image: jax.Array
    logits_per_text: jax.Array
    text_embeds: jax.Array
    image_embeds: jax.Array
    text_model_output: EncoderOutput
    vision_model_output: EncoderOutput


class CLIPModel(Block):
    """Full CLIP (`config`: CLIPConfig). Call `get_text_features` / `get_image_features` with
    ``module.apply({"params": p}, ..., method="get_text_features")``."""

    def setup(self):
        cfg = self.config
        common = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        self.text_model = CLIPTextTransformer(cfg.text_config, **common)
        self.vision_model = CLIPVisionTransformer(cfg.vision_config, **common)
        self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, **common)
        self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, **common)
        self.logit_scale = self.param(
            "logit_scale", lambda _, shape, dtype: jnp.full(shape, cfg.logit_scale_init_value, dtype), (),
            self.param_dtype)

    def get_text_features(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                          position_ids: jax.Array | None = None) -> jax.Array:
        """(B, L) ids -> (B, projection_dim) projected pooled text features (not normalised)."""
        return self.text_projection(self.text_model(input_ids, attention_mask, position_ids).pooler_output)

    def get_image_features(self, pixels: jax.Array) -> jax.Array:
        """(B, S, S, 3) pixels -> (B, projection_dim) projected pooled image features (not normalised)."""
        return self.visual_projection(self.vision_model(pixels).pooler_output)

    def __call__(self, input_ids: jax.Array, pixels: jax.Array, attention_mask: jax.Array | None = None) -> CLIPOutput:
        vision, text = self.vision_model(pixels), self.text_model(input_ids, attention_mask)
        image = self.visual_projection(vision.pooler_output)
        words = self.text_projection(text.pooler_output)
        image = image / jnp.linalg.norm(image, axis=-1, keepdims=True)
        words = words / jnp.linalg.norm(words, axis=-1, keepdims=True)
        logits_per_text = jnp.matmul(words, image.T, precision=self.precision) * jnp.exp(self.logit_scale)
        return CLIPOutput(logits_per_text.T, logits_per_text, words, image, text, vision)
