"""ViT (DINO v1 scores) and DINOv2 (AnyDoor's ID extractor) in flax.linen, as transformers PyTorch.

Parameter trees are those of transformers' (removed) `FlaxViTModel` / `FlaxDinov2Model`:
``{"embeddings", "encoder": {"layer": {"0": ...}}, "layernorm"[, "pooler"]}``. Pixels are NHWC
(B, H, W, C), already normalised (`metrics.preprocess`).

Position embeddings at another image size are resampled as transformers PyTorch does
(`nn.functional.interpolate(size=(H // patch, W // patch), mode="bicubic", align_corners=False)`,
the rule in transformers 4.57 and 5.x alike): PyTorch's cubic convolution with a = -0.75,
source coordinates ``(dst + 0.5) * in / out - 0.5``, edge-clamped taps and no antialiasing. That is
a fixed linear map per axis, built here in numpy on the host (`bicubic_matrix`). `jax.image.resize`
is not the same function: it uses a = -0.5 (Keys) and antialiases when it shrinks, as it does
from DINOv2's 37x37 grid (518 px) to 16x16 (224 px); see tests/test_models_encoders.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jcompose.models.diffusers_config import ConfigError
from jcompose.models.encoder_parts import Block, EncoderOutput, activation, attend, check_common, parse_config

_PYTORCH_CUBIC_A = -0.75
INTERPOLATIONS = ("transformers", "dinov2_hub")
_HUB_OFFSET = 0.1  # the hub adds it to the patch count so floor(S * scale) lands on h despite rounding


def bicubic_matrix(in_size: int, out_size: int, scale_factor: float | None = None) -> np.ndarray:
    """(out_size, in_size) float32 matrix M with ``M @ x`` = PyTorch's 1-D bicubic resize of x.

    Matches `torch.nn.functional.interpolate(..., mode="bicubic", align_corners=False)` along one
    axis: with `scale_factor` None, as called with ``size=out_size`` (source step ``in / out`` in
    float32); with a scale factor, as called with ``scale_factor=`` (step ``float32(1 / scale)``,
    PyTorch's rule whenever a scale is given; `out_size` must then be floor(in * scale)). Cubic
    coefficient -0.75, taps clamped to the edge, no antialiasing (also when shrinking).
    """
    a = _PYTORCH_CUBIC_A
    if scale_factor is None:
        step = np.float32(in_size) / np.float32(out_size)
    else:
        if int(np.floor(np.float64(in_size) * scale_factor)) != out_size:
            raise ValueError(f"scale_factor {scale_factor} maps {in_size} to {int(in_size * scale_factor)}, "
                             f"not {out_size}")
        step = np.float32(1.0 / scale_factor)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * step - np.float32(0.5)
    left = np.floor(src)
    t = (src - left).astype(np.float64)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    for tap in range(4):
        cols = np.clip(left.astype(np.int64) - 1 + tap, 0, in_size - 1)
        np.add.at(matrix, (rows, cols), weights[:, tap])
    return matrix.astype(np.float32)


def interpolate_positions(table: jax.Array, grid: tuple[int, int], rule: str = "transformers") -> jax.Array:
    """(1, 1 + S*S, D) position table -> (1, 1 + h*w, D) for a (h, w) patch grid, in float32.

    The CLS entry is kept; the S x S patch entries are bicubic-resampled as transformers PyTorch
    does (`rule` "transformers") or as the DINOv2 hub code does ("dinov2_hub": scale factor
    (h + 0.1) / S per axis); see the module doc. Shapes are static, so the matrices are host constants.
    """
    if rule not in INTERPOLATIONS:
        raise ValueError(f"position interpolation {rule!r}: expected one of {INTERPOLATIONS}")
    side = int(round((table.shape[1] - 1) ** 0.5))
    if side * side != table.shape[1] - 1:
        raise ValueError(f"position table of {table.shape[1] - 1} patch entries is not a square grid")
    patches = table[0, 1:].astype(jnp.float32).reshape(side, side, -1)
    scales = [None if rule == "transformers" else (n + _HUB_OFFSET) / side for n in grid]
    rows, cols = (jnp.asarray(bicubic_matrix(side, n, s)) for n, s in zip(grid, scales))
    resized = jnp.einsum("oh,pw,hwd->opd", rows, cols, patches, precision=jax.lax.Precision.HIGHEST)
    resized = resized.reshape(1, grid[0] * grid[1], -1).astype(table.dtype)
    return jnp.concatenate([table[:, :1], resized], axis=1)


def _check_vision(config: Any, source: str) -> None:
    check_common(config, source)
    if not 0 < config.patch_size <= config.image_size:
        raise ConfigError(f"{source}: patch_size = {config.patch_size}: expected 1..image_size ({config.image_size})")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """transformers `ViTConfig` fields that define the forward pass (defaults as transformers)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    pooler_output_size: int | None = None
    pooler_act: str = "tanh"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str) -> ViTConfig:
        config = parse_config(cls, values, source)
        _check_vision(config, source)
        try:
            activation(config.pooler_act)
        except ValueError as err:
            raise ConfigError(f"{source}: pooler_act: {err}") from None
        return config

    def to_dict(self) -> dict[str, Any]:
        """config.json content that transformers PyTorch `ViTModel.from_pretrained` reads."""
        return {"model_type": "vit", "architectures": ["ViTModel"], **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
    """transformers `Dinov2Config` fields that define the forward pass (defaults as transformers)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: int | float = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    layerscale_value: float = 1.0  # initial LayerScale only: the forward multiplies by lambda1
    use_swiglu_ffn: bool = False
    use_mask_token: bool = True

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str) -> Dinov2Config:
        config = parse_config(cls, values, source)
        _check_vision(config, source)
        return config

    def to_dict(self) -> dict[str, Any]:
        """config.json content that transformers PyTorch `Dinov2Model.from_pretrained` reads."""
        return {"model_type": "dinov2", "architectures": ["Dinov2Model"], **dataclasses.asdict(self)}

    @property
    def mlp_width(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def swiglu_width(self) -> int:
        # DINOv2's SwiGLU keeps ~2/3 of the MLP width, rounded up to a multiple of 8
        return (int(self.mlp_width * 2 / 3) + 7) // 8 * 8


# ------------------------------------------------------------------------------------ layers


class ViTSelfAttention(Block):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width, heads = self.config.hidden_size, self.config.num_attention_heads
        split = lambda y: y.reshape(*y.shape[:2], heads, width // heads)  # noqa: E731
        q, k, v = (split(self.dense(width, n, self.config.qkv_bias)(x)) for n in ("query", "key", "value"))
        return attend(q, k, v, None, self.precision).reshape(x.shape)


class _Dense(Block):
    """A module holding one Dense named `dense` (the `*.output.dense` levels of the ViT tree)."""

    features: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dense(self.features, "dense")(x)


class ViTAttention(Block):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.sub(ViTSelfAttention, "attention")(x)
        return self.sub(_Dense, "output", features=self.config.hidden_size)(out)


class LayerScale(Block):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = lambda _, shape, dtype: jnp.full(shape, self.config.layerscale_value, dtype)  # noqa: E731
        return x * self.param("lambda1", init, (self.config.hidden_size,), self.param_dtype).astype(self.dtype)


class Dinov2MLP(Block):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.use_swiglu_ffn:
            first, second = jnp.split(self.dense(2 * cfg.swiglu_width, "weights_in")(x), 2, axis=-1)
            return self.dense(cfg.hidden_size, "weights_out")(jax.nn.silu(first) * second)
        x = activation(cfg.hidden_act)(self.dense(cfg.mlp_width, "fc1")(x))
        return self.dense(cfg.hidden_size, "fc2")(x)


class ViTLayer(Block):
    """Pre-LN block: x + attn(LN(x)), then + mlp(LN(.)); DINOv2 scales both branches (LayerScale)."""

    dinov2: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        if self.dinov2:
            attention = self.sub(ViTAttention, "attention")(self.layer_norm("norm1")(x))
            x = x + self.sub(LayerScale, "layer_scale1")(attention)
            return x + self.sub(LayerScale, "layer_scale2")(self.sub(Dinov2MLP, "mlp")(self.layer_norm("norm2")(x)))
        x = x + self.sub(ViTAttention, "attention")(self.layer_norm("layernorm_before")(x))
        hidden = activation(cfg.hidden_act)(
            self.sub(_Dense, "intermediate", features=cfg.intermediate_size)(self.layer_norm("layernorm_after")(x)))
        return x + self.sub(_Dense, "output", features=cfg.hidden_size)(hidden)


class _Layers(Block):
    dinov2: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.config.num_hidden_layers):
            x = self.sub(ViTLayer, str(i), dinov2=self.dinov2)(x)
        return x


class ViTEncoder(Block):
    dinov2: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.sub(_Layers, "layer", dinov2=self.dinov2)(x)


class _PatchEmbeddings(Block):
    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg, p = self.config, self.config.patch_size
        if pixels.ndim != 4 or pixels.shape[-1] != cfg.num_channels:
            raise ValueError(f"pixels must be (B, H, W, {cfg.num_channels}) NHWC, got shape {pixels.shape}")
        conv = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                       param_dtype=self.param_dtype, precision=self.precision, name="projection")
        out = conv(pixels.astype(self.dtype))
        return out.reshape(out.shape[0], -1, cfg.hidden_size)


class ViTEmbeddings(Block):
    """CLS token + patch conv + position table (resampled when the patch grid differs)."""

    dinov2: bool = False
    interpolation: str = "transformers"

    @nn.compact
    def __call__(self, pixels: jax.Array, interpolate: bool, bool_masked_pos: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        init = nn.initializers.normal(0.02)
        patches = self.sub(_PatchEmbeddings, "patch_embeddings")(pixels)
        if self.dinov2 and cfg.use_mask_token:
            mask_token = self.param("mask_token", nn.initializers.zeros, (1, cfg.hidden_size), self.param_dtype)
            if bool_masked_pos is not None:
                patches = jnp.where(jnp.asarray(bool_masked_pos)[..., None], mask_token.astype(self.dtype), patches)
        elif bool_masked_pos is not None:
            raise ValueError("bool_masked_pos needs a DINOv2 config with use_mask_token")
        cls = self.param("cls_token", init, (1, 1, cfg.hidden_size), self.param_dtype).astype(self.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (patches.shape[0], 1, cfg.hidden_size)), patches], axis=1)
        side = cfg.image_size // cfg.patch_size
        table = self.param("position_embeddings", init, (1, side * side + 1, cfg.hidden_size), self.param_dtype)
        height, width = pixels.shape[1:3]
        grid = (height // cfg.patch_size, width // cfg.patch_size)
        if grid[0] * grid[1] != side * side or height != width:  # transformers' condition
            if not interpolate:
                raise ValueError(f"image {height}x{width} differs from the model's {cfg.image_size}x{cfg.image_size}; "
                                 "pass interpolate_pos_encoding=True to resample the position embeddings")
            table = interpolate_positions(table, grid, self.interpolation)
        return x + table.astype(self.dtype)


# ------------------------------------------------------------------------------------ models


class ViTModel(Block):
    """transformers ViT (`config`: ViTConfig); optional pooler = act(dense(final-LN CLS)).

    ``apply({"params": p}, pixels_nhwc, interpolate_pos_encoding=False)`` -> EncoderOutput with
    last_hidden_state (B, 1 + N, D) after the final LayerNorm and pooler_output (B, P) or None.
    As in PyTorch, another image size needs ``interpolate_pos_encoding=True``.
    """

    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, pixels: jax.Array, interpolate_pos_encoding: bool = False) -> EncoderOutput:
        cfg = self.config
        x = self.sub(ViTEmbeddings, "embeddings")(pixels, interpolate_pos_encoding)
        x = self.layer_norm("layernorm")(self.sub(ViTEncoder, "encoder")(x))
        if not self.add_pooling_layer:
            return EncoderOutput(x, None)
        pooler = self.sub(_Dense, "pooler", features=cfg.pooler_output_size or cfg.hidden_size)
        return EncoderOutput(x, activation(cfg.pooler_act)(pooler(x[:, 0])))


class Dinov2Model(Block):
    """transformers DINOv2 (`config`: Dinov2Config), MLP or SwiGLU feed-forward, LayerScale.

    ``apply({"params": p}, pixels_nhwc[, bool_masked_pos])`` -> EncoderOutput with
    last_hidden_state (B, 1 + N, D) after the final LayerNorm and pooler_output = its CLS (B, D).
    Any image size: the position table is resampled as in PyTorch (e.g. a 518-px checkpoint's
    37x37 grid to 16x16 at 224 px -> 257 tokens), by `interpolation`: "transformers" (transformers
    PyTorch's rule, default) or "dinov2_hub" (Meta's hub code, which AnyDoor runs; see module doc).
    """

    interpolation: str = "transformers"

    @nn.compact
    def __call__(self, pixels: jax.Array, bool_masked_pos: jax.Array | None = None) -> EncoderOutput:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Dinov2Model.interpolation = {self.interpolation!r}: expected one of {INTERPOLATIONS}")
        x = self.sub(ViTEmbeddings, "embeddings", dinov2=True, interpolation=self.interpolation)(
            pixels, True, bool_masked_pos)
        x = self.layer_norm("layernorm")(self.sub(ViTEncoder, "encoder", dinov2=True)(x))
        return EncoderOutput(x, x[:, 0])
