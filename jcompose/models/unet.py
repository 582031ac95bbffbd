"""jcompose's SD UNet (UNet2DConditionModel for SD 1.x, 1.5-inpainting and 2.x-base), NHWC inside.

Fields are the diffusers `config.json` keys the SD bases use (`jcompose.models.diffusers_config`
checks every other key), so `UNet2DConditionModel(**config)` builds the network of a folder; the
parameter tree is diffusers' (``down_blocks_0/attentions_0/transformer_blocks_0/attn2/to_k/kernel``).

Call: ``unet.apply({"params": p}, sample, timesteps, context, attention=ctx)`` with `sample`
(B, C_in, H, W) NCHW latents (the engine's latent layout; one transpose in and one out), timesteps
scalar or (B,), context (B, N, cross_attention_dim); optional ControlNet-style residuals (NHWC, as
`ControlNetModel` returns them) added to the skips and the mid block; `attention` an
`AttentionContext` with attention controls. Returns `UNetOutput(sample=(B, C_out, H, W))`.

`encode` / `decode` split the call at the skips (encoder + mid block | decoder) for methods that
train only the decoder (AnyDoor): `decode(encode(...))` equals `__call__`. `remat=True` recomputes
each block's activations in the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import struct

from jcompose.models.layers import (
    Downsample2D,
    DType,
    ResnetBlock2D,
    TimestepEmbedding,
    Upsample2D,
    conv,
    group_norm,
    timestep_embedding,
)
from jcompose.models.transformer import Transformer2D


@struct.dataclass
class UNetOutput:
    sample: Any


@struct.dataclass
class EncoderState:
    """What the UNet encoder hands its decoder: mid-block output (NHWC), the skips, the time embedding."""

    hidden: Any
    skips: tuple
    temb: Any


class DownBlock(nn.Module):
    """`layers` resnets (each followed by a transformer when `attention_heads`), then a stride-2 conv."""

    in_channels: int
    out_channels: int
    temb_channels: int
    layers: int
    attention_heads: int | None  # None: DownBlock2D (no attention)
    add_downsample: bool
    transformer_depth: int = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    groups: int = 32
    eps: float = 1e-5
    dtype: DType = jnp.float32

    def setup(self):
        self.resnets = [ResnetBlock2D(self.in_channels if i == 0 else self.out_channels, self.out_channels,
                                      self.temb_channels, self.groups, self.eps, dtype=self.dtype)
                        for i in range(self.layers)]
        if self.attention_heads:
            self.attentions = [Transformer2D(self.out_channels, self.attention_heads,
                                             self.out_channels // self.attention_heads, self.transformer_depth,
                                             self.use_linear_projection, self.only_cross_attention, self.groups,
                                             dtype=self.dtype) for _ in range(self.layers)]
        if self.add_downsample:
            self.downsamplers_0 = Downsample2D(self.out_channels, dtype=self.dtype)

    def __call__(self, x, temb, context, attention=None):
        skips = []
        for i in range(self.layers):
            x = self.resnets[i](x, temb)
            if self.attention_heads:
                x = self.attentions[i](x, context, attention)
            skips.append(x)
        if self.add_downsample:
            x = self.downsamplers_0(x)
            skips.append(x)
        return x, tuple(skips)


class UpBlock(nn.Module):
    """`layers` resnets on [x; skip] (each followed by a transformer when `attention_heads`), then x2 up."""

    in_channels: int
    out_channels: int
    prev_output_channels: int
    temb_channels: int
    layers: int
    attention_heads: int | None  # None: UpBlock2D
    add_upsample: bool
    transformer_depth: int = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    groups: int = 32
    eps: float = 1e-5
    dtype: DType = jnp.float32

    def setup(self):
        resnets = []
        for i in range(self.layers):
            skip_channels = self.in_channels if i == self.layers - 1 else self.out_channels
            in_channels = self.prev_output_channels if i == 0 else self.out_channels
            resnets.append(ResnetBlock2D(in_channels + skip_channels, self.out_channels, self.temb_channels,
                                         self.groups, self.eps, dtype=self.dtype))
        self.resnets = resnets
        if self.attention_heads:
            self.attentions = [Transformer2D(self.out_channels, self.attention_heads,
                                             self.out_channels // self.attention_heads, self.transformer_depth,
                                             self.use_linear_projection, self.only_cross_attention, self.groups,
                                             dtype=self.dtype) for _ in range(self.layers)]
        if self.add_upsample:
            self.upsamplers_0 = Upsample2D(self.out_channels, dtype=self.dtype)

    def __call__(self, x, skips, temb, context, attention=None, upsample_hw=None):
        """skips: this block's skips, last first used; upsample_hw: the next block's skip size."""
        for i in range(self.layers):
            x = jnp.concatenate([x, skips[-1 - i].astype(x.dtype)], axis=-1)
            x = self.resnets[i](x, temb)
            if self.attention_heads:
                x = self.attentions[i](x, context, attention)
        if self.add_upsample:
            x = self.upsamplers_0(x, upsample_hw)
        return x


class MidBlock(nn.Module):
    """resnet, transformer, resnet at the lowest resolution (UNetMidBlock2DCrossAttn)."""

    channels: int
    temb_channels: int
    attention_heads: int
    transformer_depth: int = 1
    use_linear_projection: bool = False
    groups: int = 32
    eps: float = 1e-5
    dtype: DType = jnp.float32

    def setup(self):
        self.resnets = [ResnetBlock2D(self.channels, self.channels, self.temb_channels, self.groups, self.eps,
                                      dtype=self.dtype) for _ in range(2)]
        self.attentions = [Transformer2D(self.channels, self.attention_heads, self.channels // self.attention_heads,
                                         self.transformer_depth, self.use_linear_projection, False, self.groups,
                                         dtype=self.dtype)]

    def __call__(self, x, temb, context, attention=None):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context, attention)
        return self.resnets[1](x, temb)


def per_block(value: Any, count: int) -> tuple:
    """A config value given once or per block -> a tuple of `count` entries."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * count


def encoder_blocks(m: Any) -> tuple[list, Any, dict]:
    """(down blocks, mid block, per-block settings) of a UNet-encoder-shaped module (the UNet and the
    ControlNet share this architecture and these field names). Settings: channels, heads, depth,
    only_cross (per block) and `common` block arguments."""
    channels, n = tuple(m.block_out_channels), len(m.down_block_types)
    plan = dict(channels=channels, heads=per_block(m.num_attention_heads or m.attention_head_dim, n),
                depth=per_block(m.transformer_layers_per_block, n), only_cross=per_block(m.only_cross_attention, n))
    plan["common"] = common = dict(temb_channels=channels[0] * 4, use_linear_projection=m.use_linear_projection,
                                   groups=m.norm_num_groups, eps=m.norm_eps, dtype=m.dtype)
    down_cls, mid_cls = (nn.remat(DownBlock), nn.remat(MidBlock)) if m.remat else (DownBlock, MidBlock)
    down = [down_cls(channels[max(i - 1, 0)], channels[i], layers=m.layers_per_block,
                     attention_heads=plan["heads"][i] if kind == "CrossAttnDownBlock2D" else None,
                     add_downsample=i < n - 1, transformer_depth=plan["depth"][i],
                     only_cross_attention=plan["only_cross"][i], **common)
            for i, kind in enumerate(m.down_block_types)]
    mid = mid_cls(channels[-1], attention_heads=plan["heads"][-1], transformer_depth=plan["depth"][-1], **common)
    return down, mid, plan


class UNet2DConditionModel(nn.Module):
    """The SD UNet; see the module doc for the call. Fields: diffusers config keys (+ dtype, remat)."""

    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: Sequence[str] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: Sequence[str] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    only_cross_attention: bool | Sequence[bool] = False
    block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    # diffusers' historical naming: for SD this is the number of heads per block, not their width.
    attention_head_dim: int | Sequence[int] = 8
    num_attention_heads: int | Sequence[int] | None = None
    cross_attention_dim: int = 768
    use_linear_projection: bool = False
    transformer_layers_per_block: int | Sequence[int] = 1
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    dtype: DType = jnp.float32
    remat: bool = False

    def setup(self):
        self.down_blocks, self.mid_block, plan = encoder_blocks(self)
        channels, n, common = plan["channels"], len(self.down_block_types), plan["common"]
        heads, depth, only_cross = plan["heads"], plan["depth"], plan["only_cross"]
        # upsample_hw (argument 6, counting self) is a static shape
        up_cls = nn.remat(UpBlock, static_argnums=(6,)) if self.remat else UpBlock
        self.conv_in = conv(channels[0], dtype=self.dtype)
        self.time_embedding = TimestepEmbedding(common["temb_channels"], dtype=self.dtype)
        rev, rev_heads, rev_depth, rev_cross = channels[::-1], heads[::-1], depth[::-1], only_cross[::-1]
        self.up_blocks = [
            up_cls(rev[min(i + 1, n - 1)], rev[i], rev[max(i - 1, 0)], layers=self.layers_per_block + 1,
                   attention_heads=rev_heads[i] if kind == "CrossAttnUpBlock2D" else None,
                   add_upsample=i < n - 1, transformer_depth=rev_depth[i], only_cross_attention=rev_cross[i],
                   **common)
            for i, kind in enumerate(self.up_block_types)
        ]
        self.conv_norm_out = group_norm(self.norm_num_groups, self.norm_eps, self.dtype)
        self.conv_out = conv(self.out_channels, dtype=self.dtype)

    def time_embed(self, timesteps, batch: int):
        """(B, 4 C0) time embedding of scalar or (B,) timesteps."""
        t = jnp.asarray(timesteps)
        t = jnp.broadcast_to(t, (batch,)) if t.ndim == 0 else t
        emb = timestep_embedding(t, self.block_out_channels[0], flip_sin_to_cos=self.flip_sin_to_cos,
                                 freq_shift=self.freq_shift)
        return self.time_embedding(emb.astype(self.dtype))

    def encode(self, sample, timesteps, context, down_block_additional_residuals=None,
               mid_block_additional_residual=None, attention=None) -> EncoderState:
        """Encoder + mid block (+ residuals): NCHW sample -> `EncoderState` for `decode`."""
        temb = self.time_embed(timesteps, sample.shape[0])
        x = self.conv_in(jnp.transpose(sample, (0, 2, 3, 1)).astype(self.dtype))
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context, attention)
            skips.extend(block_skips)
        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(f"{len(down_block_additional_residuals)} down residuals for {len(skips)} UNet skips")
            skips = [s + r.astype(s.dtype) for s, r in zip(skips, down_block_additional_residuals)]
        x = self.mid_block(x, temb, context, attention)
        if mid_block_additional_residual is not None:
            x = x + mid_block_additional_residual.astype(x.dtype)
        return EncoderState(x, tuple(skips), temb)

    def decode(self, state: EncoderState, context, attention=None) -> UNetOutput:
        """Decoder on an `EncoderState`: -> `UNetOutput(sample (B, C_out, H, W))`."""
        x, skips, per = state.hidden, list(state.skips), self.layers_per_block + 1
        for block in self.up_blocks:
            block_skips, skips = skips[-per:], skips[:-per]
            upsample_hw = skips[-1].shape[1:3] if skips else None
            x = block(x, tuple(block_skips), state.temb, context, attention, upsample_hw)
        x = self.conv_out(nn.silu(self.conv_norm_out(x)))
        return UNetOutput(sample=jnp.transpose(x, (0, 3, 1, 2)))

    def __call__(self, sample, timesteps, encoder_hidden_states, down_block_additional_residuals=None,
                 mid_block_additional_residual=None, attention=None) -> UNetOutput:
        state = self.encode(sample, timesteps, encoder_hidden_states, down_block_additional_residuals,
                            mid_block_additional_residual, attention)
        return self.decode(state, encoder_hidden_states, attention)
