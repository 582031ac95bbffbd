"""Convolutional building blocks of the SD UNet, ControlNet and VAE (NHWC, diffusers parameter names).

Parameter names and shapes follow diffusers' module tree (``resnets_0/conv1/kernel`` is PyTorch's
``resnets.0.conv1.weight`` in the HWIO layout), so `pt_layout` converts weights by name. Numerics
follow diffusers' PyTorch modules: GroupNorm epsilon as configured (UNet 1e-5, VAE 1e-6), SiLU, the
sinusoidal timestep embedding of `get_timestep_embedding`, nearest x2 upsampling, and the two
downsampling paddings (UNet: 1 on every side; VAE: 0 before, 1 after).

Norms compute their statistics in float32 and return the compute dtype; convolutions and dense
layers run in `dtype` (bf16 on accelerators) with float32 parameters unless loaded otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DType = Any


def conv(features: int, kernel: int = 3, stride: int = 1, padding: Any = 1, *, dtype: DType, name: str | None = None,
         zero_init: bool = False) -> nn.Conv:
    """A 2-D convolution in diffusers' layout: (kernel, kernel) HWIO, symmetric integer padding or a spec."""
    pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    init = dict(kernel_init=nn.initializers.zeros_init(), bias_init=nn.initializers.zeros_init()) if zero_init else {}
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype, name=name, **init)


def group_norm(groups: int, eps: float, dtype: DType, name: str | None = None) -> nn.GroupNorm:
    """GroupNorm with float32 statistics and output in the compute dtype."""
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, name=name)


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> jax.Array:
    """(B,) timesteps (int or float) -> (B, dim) float32 sinusoidal embeddings (diffusers' rule).

    Frequencies exp(-log(max_period) i / (dim/2 - freq_shift)), i < dim/2; [sin, cos], or [cos, sin]
    with `flip_sin_to_cos` (SD: flip, shift 0).
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    return jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)


def as_timesteps(timesteps: Any, batch: int) -> jax.Array:
    """A scalar or (B,) timestep argument -> (B,) array (a scalar serves the whole batch)."""
    t = jnp.asarray(timesteps)
    return jnp.broadcast_to(t.reshape(-1) if t.ndim else t, (batch,)) if t.ndim <= 1 else t


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2: the time MLP of the UNet and ControlNet ((B, C) -> (B, dim))."""

    dim: int
    dtype: DType = jnp.float32

    def setup(self):
        self.linear_1 = nn.Dense(self.dim, dtype=self.dtype)
        self.linear_2 = nn.Dense(self.dim, dtype=self.dtype)

    def __call__(self, x):
        return self.linear_2(nn.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, an optional time-embedding shift, a 1x1 shortcut when widths differ.

    (B, H, W, C_in) [+ temb (B, T)] -> (B, H, W, out_channels). With `temb_channels` None (the VAE) there is
    no `time_emb_proj`.
    """

    in_channels: int
    out_channels: int
    temb_channels: int | None = None
    groups: int = 32
    eps: float = 1e-5
    dtype: DType = jnp.float32

    def setup(self):
        self.norm1 = group_norm(self.groups, self.eps, self.dtype)
        self.conv1 = conv(self.out_channels, dtype=self.dtype)
        if self.temb_channels is not None:
            self.time_emb_proj = nn.Dense(self.out_channels, dtype=self.dtype)
        self.norm2 = group_norm(self.groups, self.eps, self.dtype)
        self.conv2 = conv(self.out_channels, dtype=self.dtype)
        if self.in_channels != self.out_channels:
            self.conv_shortcut = conv(self.out_channels, 1, padding=0, dtype=self.dtype)

    def __call__(self, x, temb=None):
        h = self.conv1(nn.silu(self.norm1(x)))
        if temb is not None:
            h = h + self.time_emb_proj(nn.silu(temb))[:, None, None, :].astype(h.dtype)
        h = self.conv2(nn.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.in_channels != self.out_channels else x
        return (h + shortcut).astype(self.dtype)


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C).

    `vae_padding`: the VAE pads 0 before and 1 after (then VALID); the UNet pads 1 on every side.
    """

    channels: int
    vae_padding: bool = False
    dtype: DType = jnp.float32

    def setup(self):
        self.conv = conv(self.channels, stride=2, padding="VALID" if self.vae_padding else 1, dtype=self.dtype)

    def __call__(self, x):
        if self.vae_padding:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest x2 (each pixel repeated, as PyTorch's nearest interpolation) then a 3x3 conv."""

    channels: int
    dtype: DType = jnp.float32

    def setup(self):
        self.conv = conv(self.channels, dtype=self.dtype)

    def __call__(self, x, output_hw: tuple[int, int] | None = None):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        if output_hw is not None:  # an odd skip below: crop to its size (PyTorch passes upsample_size)
            x = x[:, : output_hw[0], : output_hw[1]]
        return self.conv(x)
