"""jcompose's ControlNet: a trainable copy of the UNet encoder reading a conditioning image.

The conditioning embedding (convs `conditioning_embedding_out_channels`, stride 2 after the first,
SiLU, a zero-initialised `conv_out` to block_out_channels[0]) turns the (B, C_cond, 8h, 8w)
conditioning image into an (h, w) feature map. With `reads_latent` (diffusers' ControlNetModel) it is
added to conv_in(noisy latent); without it (AnyDoor's detail extractor, which never sees x_t) it is
the encoder's input on its own and there is no conv_in. The encoder and mid block are the UNet's;
a zero 1x1 conv per UNet skip (`controlnet_down_blocks_i`) and one on the mid block
(`controlnet_mid_block`) give the residuals the UNet adds to its skips (NHWC, in order) and mid block.

Call: ``net.apply({"params": p}, sample, timesteps, context, cond, conditioning_scale=1.0)`` with
NCHW `sample` (ignored without `reads_latent`, may be None) and NCHW `cond`; returns
`ControlNetOutput(down_block_res_samples=[(B, h_i, w_i, C_i)...], mid_block_res_sample=(B, h, w, C))`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jcompose.models.layers import DType, TimestepEmbedding, conv, timestep_embedding
from jcompose.models.unet import encoder_blocks


@struct.dataclass
class ControlNetOutput:
    down_block_res_samples: Any
    mid_block_res_sample: Any


class ConditioningEmbedding(nn.Module):
    """conv_in, (conv, stride-2 conv) per stage, SiLU between, zero conv_out: (B, H, W, C) -> (B, H/2^k, W/2^k, out)."""

    out_channels: int
    block_out_channels: Sequence[int] = (16, 32, 96, 256)
    dtype: DType = jnp.float32

    def setup(self):
        widths = tuple(self.block_out_channels)
        self.conv_in = conv(widths[0], dtype=self.dtype)
        blocks = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            blocks += [conv(width_in, dtype=self.dtype), conv(width_out, stride=2, dtype=self.dtype)]
        self.blocks = blocks
        self.conv_out = conv(self.out_channels, dtype=self.dtype, zero_init=True)

    def __call__(self, x):
        x = nn.silu(self.conv_in(x))
        for block in self.blocks:
            x = nn.silu(block(x))
        return self.conv_out(x)


HINT_INITS = ("torch", "flax")


def init_conditioning_embedding(embedding: ConditioningEmbedding, rng: jax.Array, channels: int, size: int,
                                style: str = "flax") -> dict:
    """Fresh params of a conditioning embedding reading (B, size, size, channels) images; conv_out zero.

    style: "flax" (Flax's defaults: LeCun-normal kernels, zero biases) or "torch" (torch.nn.Conv2d's
    default, as the released LDM/ControlNet hint blocks: kaiming-uniform with a = sqrt(5), i.e. kernel and
    bias uniform in +-1/sqrt(fan_in), fan_in = kernel height x width x input channels).
    """
    if style not in HINT_INITS:
        raise ValueError(f"conditioning embedding init {style!r}: expected one of {HINT_INITS}")
    params = embedding.init(rng, jnp.zeros((1, size, size, channels)))["params"]
    if style == "flax":
        return params
    out = {}
    for i, (name, layer) in enumerate(sorted(params.items())):
        if name == "conv_out":
            out[name] = layer
            continue
        bound = 1.0 / math.sqrt(math.prod(layer["kernel"].shape[:3]))
        k_kernel, k_bias = jax.random.split(jax.random.fold_in(rng, i))
        out[name] = {"kernel": jax.random.uniform(k_kernel, layer["kernel"].shape, layer["kernel"].dtype, -bound, bound),
                     "bias": jax.random.uniform(k_bias, layer["bias"].shape, layer["bias"].dtype, -bound, bound)}
    return out


class ControlNetModel(nn.Module):
    """See the module doc. Fields: diffusers ControlNetModel config keys (+ reads_latent, dtype, remat)."""

    in_channels: int = 4
    conditioning_channels: int = 3
    down_block_types: Sequence[str] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    only_cross_attention: bool | Sequence[bool] = False
    block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int | Sequence[int] = 8
    num_attention_heads: int | Sequence[int] | None = None
    cross_attention_dim: int = 768
    use_linear_projection: bool = False
    transformer_layers_per_block: int | Sequence[int] = 1
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256)
    controlnet_conditioning_channel_order: str = "rgb"
    sample_size: int = 64  # only sizes the dummy inputs that trace the parameter shapes
    reads_latent: bool = True
    dtype: DType = jnp.float32
    remat: bool = False

    def setup(self):
        self.down_blocks, self.mid_block, plan = encoder_blocks(self)
        channels, n = plan["channels"], len(self.down_block_types)
        if self.reads_latent:
            self.conv_in = conv(channels[0], dtype=self.dtype)
        self.time_embedding = TimestepEmbedding(plan["common"]["temb_channels"], dtype=self.dtype)
        self.controlnet_cond_embedding = ConditioningEmbedding(channels[0], self.conditioning_embedding_out_channels,
                                                               dtype=self.dtype)
        # One zero conv per UNet skip: conv_in, each layer of each block, each downsampler.
        widths = [channels[0]]
        for i in range(n):
            widths += [channels[i]] * (self.layers_per_block + (i < n - 1))
        self.controlnet_down_blocks = [conv(w, 1, padding=0, dtype=self.dtype, zero_init=True) for w in widths]
        self.controlnet_mid_block = conv(channels[-1], 1, padding=0, dtype=self.dtype, zero_init=True)

    def __call__(self, sample, timesteps, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0,
                 attention=None) -> ControlNetOutput:
        cond = jnp.transpose(controlnet_cond, (0, 2, 3, 1)).astype(self.dtype)
        if self.controlnet_conditioning_channel_order == "bgr":
            cond = jnp.flip(cond, axis=-1)
        batch = cond.shape[0]
        t = jnp.asarray(timesteps)
        t = jnp.broadcast_to(t, (batch,)) if t.ndim == 0 else t
        temb = self.time_embedding(timestep_embedding(t, self.block_out_channels[0], flip_sin_to_cos=self.flip_sin_to_cos,
                                                      freq_shift=self.freq_shift).astype(self.dtype))
        x = self.controlnet_cond_embedding(cond)
        if self.reads_latent:
            x = self.conv_in(jnp.transpose(sample, (0, 2, 3, 1)).astype(self.dtype)) + x
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, encoder_hidden_states, attention)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, encoder_hidden_states, attention)
        down = [zero(s) * conditioning_scale for zero, s in zip(self.controlnet_down_blocks, skips)]
        return ControlNetOutput(down_block_res_samples=down,
                                mid_block_res_sample=self.controlnet_mid_block(x) * conditioning_scale)
