"""jcompose's AutoencoderKL (the SD VAE), NHWC inside, diffusers' parameter tree.

``vae.apply({"params": p}, images, method=vae.encode).latent_dist`` takes (B, 3, H, W) NCHW images in
[-1, 1] and returns a `DiagonalGaussian` over (B, C_lat, H/8, W/8) NCHW latents (unscaled: multiply a
sample by `scaling_factor` for the UNet); ``vae.apply(..., z, method=vae.decode).sample`` maps NCHW
latents back to (B, 3, H, W) images. The engine's layout at both ends is NCHW, as diffusers PyTorch.
Numerics as PyTorch: GroupNorm eps 1e-6, single-head mid-block attention, log-variance clipped to
[-30, 20], downsampling padded 0 before / 1 after.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jcompose.models.layers import Downsample2D, DType, ResnetBlock2D, Upsample2D, conv, group_norm

VAE_EPS = 1e-6


@struct.dataclass
class DiagonalGaussian:
    """The posterior q(z | x): mean and log-variance (B, C, h, w), NCHW."""

    mean: Any
    logvar: Any

    @property
    def std(self):
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: jax.Array):
        """A draw mean + std * N(0, 1), in the mean's dtype."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self):
        return self.mean


@struct.dataclass
class EncoderOutput:
    latent_dist: DiagonalGaussian


@struct.dataclass
class DecoderOutput:
    sample: Any


class VAEAttention(nn.Module):
    """Single-head self-attention over the pixels with a residual (the VAE mid block's attention)."""

    channels: int
    groups: int = 32
    dtype: DType = jnp.float32

    def setup(self):
        self.group_norm = group_norm(self.groups, VAE_EPS, self.dtype)
        self.query = nn.Dense(self.channels, dtype=self.dtype)
        self.key = nn.Dense(self.channels, dtype=self.dtype)
        self.value = nn.Dense(self.channels, dtype=self.dtype)
        self.proj_attn = nn.Dense(self.channels, dtype=self.dtype)

    def __call__(self, x):
        b, h, w, c = x.shape
        tokens = self.group_norm(x).reshape(b, h * w, c)
        q, k, v = self.query(tokens), self.key(tokens), self.value(tokens)
        logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(c)
        out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
        return self.proj_attn(out).reshape(b, h, w, c) + x


class VAEMidBlock(nn.Module):
    channels: int
    groups: int = 32
    dtype: DType = jnp.float32

    def setup(self):
        self.resnets = [ResnetBlock2D(self.channels, self.channels, None, self.groups, VAE_EPS, dtype=self.dtype)
                        for _ in range(2)]
        self.attentions = [VAEAttention(self.channels, self.groups, dtype=self.dtype)]

    def __call__(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class EncoderBlock(nn.Module):
    in_channels: int
    out_channels: int
    layers: int
    add_downsample: bool
    groups: int = 32
    dtype: DType = jnp.float32

    def setup(self):
        self.resnets = [ResnetBlock2D(self.in_channels if i == 0 else self.out_channels, self.out_channels, None,
                                      self.groups, VAE_EPS, dtype=self.dtype) for i in range(self.layers)]
        if self.add_downsample:
            self.downsamplers_0 = Downsample2D(self.out_channels, vae_padding=True, dtype=self.dtype)

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers_0(x) if self.add_downsample else x


class DecoderBlock(nn.Module):
    in_channels: int
    out_channels: int
    layers: int
    add_upsample: bool
    groups: int = 32
    dtype: DType = jnp.float32

    def setup(self):
        self.resnets = [ResnetBlock2D(self.in_channels if i == 0 else self.out_channels, self.out_channels, None,
                                      self.groups, VAE_EPS, dtype=self.dtype) for i in range(self.layers)]
        if self.add_upsample:
            self.upsamplers_0 = Upsample2D(self.out_channels, dtype=self.dtype)

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers_0(x) if self.add_upsample else x


class Encoder(nn.Module):
    in_channels: int
    latent_channels: int
    block_out_channels: Sequence[int]
    layers_per_block: int
    groups: int = 32
    dtype: DType = jnp.float32

    def setup(self):
        ch, n = tuple(self.block_out_channels), len(self.block_out_channels)
        self.conv_in = conv(ch[0], dtype=self.dtype)
        self.down_blocks = [EncoderBlock(ch[max(i - 1, 0)], ch[i], self.layers_per_block, i < n - 1, self.groups,
                                         dtype=self.dtype) for i in range(n)]
        self.mid_block = VAEMidBlock(ch[-1], self.groups, dtype=self.dtype)
        self.conv_norm_out = group_norm(self.groups, VAE_EPS, self.dtype)
        self.conv_out = conv(2 * self.latent_channels, dtype=self.dtype)  # mean and log-variance

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    out_channels: int
    block_out_channels: Sequence[int]
    layers_per_block: int
    groups: int = 32
    dtype: DType = jnp.float32

    def setup(self):
        rev, n = tuple(self.block_out_channels)[::-1], len(self.block_out_channels)
        self.conv_in = conv(rev[0], dtype=self.dtype)
        self.mid_block = VAEMidBlock(rev[0], self.groups, dtype=self.dtype)
        self.up_blocks = [DecoderBlock(rev[max(i - 1, 0)], rev[i], self.layers_per_block + 1, i < n - 1, self.groups,
                                       dtype=self.dtype) for i in range(n)]
        self.conv_norm_out = group_norm(self.groups, VAE_EPS, self.dtype)
        self.conv_out = conv(self.out_channels, dtype=self.dtype)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """See the module doc. Fields: diffusers AutoencoderKL config keys (+ dtype)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: Sequence[str] = ("DownEncoderBlock2D",) * 4
    up_block_types: Sequence[str] = ("UpDecoderBlock2D",) * 4
    block_out_channels: Sequence[int] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215
    dtype: DType = jnp.float32

    def setup(self):
        self.encoder = Encoder(self.in_channels, self.latent_channels, self.block_out_channels, self.layers_per_block,
                               self.norm_num_groups, dtype=self.dtype)
        self.decoder = Decoder(self.out_channels, self.block_out_channels, self.layers_per_block,
                               self.norm_num_groups, dtype=self.dtype)
        self.quant_conv = conv(2 * self.latent_channels, 1, padding=0, dtype=self.dtype)
        self.post_quant_conv = conv(self.latent_channels, 1, padding=0, dtype=self.dtype)

    def encode(self, images) -> EncoderOutput:
        """(B, 3, H, W) NCHW images in [-1, 1] -> `EncoderOutput(latent_dist)` over NCHW latents."""
        moments = self.quant_conv(self.encoder(jnp.transpose(images, (0, 2, 3, 1)).astype(self.dtype)))
        moments = jnp.transpose(moments, (0, 3, 1, 2))
        mean, logvar = jnp.split(moments, 2, axis=1)
        return EncoderOutput(DiagonalGaussian(mean, jnp.clip(logvar, -30.0, 20.0)))

    def decode(self, latents) -> DecoderOutput:
        """(B, C_lat, h, w) NCHW unscaled latents -> `DecoderOutput(sample (B, 3, 8h, 8w))`."""
        x = self.post_quant_conv(jnp.transpose(latents, (0, 2, 3, 1)).astype(self.dtype))
        return DecoderOutput(jnp.transpose(self.decoder(x), (0, 3, 1, 2)))

    def __call__(self, images):
        """Reconstruction through the posterior mean (also what traces every parameter)."""
        return self.decode(self.encode(images).latent_dist.mean)
