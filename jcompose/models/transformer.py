"""The spatial transformer of the SD UNet and ControlNet, with jcompose's attention-control hook.

`Transformer2D` (diffusers' Transformer2DModel as SD uses it): GroupNorm (eps 1e-6, as PyTorch),
a 1x1 conv or linear projection in, `BasicTransformerBlock`s (self-attention, cross-attention,
GEGLU feed-forward with the exact erf GELU, pre-LayerNorm eps 1e-5), projection out, residual.
Each `Attention` calls `jcompose.attention.attend` with its own path, kind and query grid, so the
controls of the call's `AttentionContext` apply per layer without touching parameters: the tree
is diffusers' (``attn1/to_q``, ``attn2/to_out_0``, ``ff/net_0/proj``, ``ff/net_2``...).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jcompose import attention as control
from jcompose.models.layers import DType, group_norm


class Attention(nn.Module):
    """Multi-head attention, self (context None) or cross; (B, N, C) -> (B, N, query_dim)."""

    query_dim: int
    heads: int
    dim_head: int
    dtype: DType = jnp.float32

    def setup(self):
        inner = self.heads * self.dim_head
        self.to_q = nn.Dense(inner, use_bias=False, dtype=self.dtype)
        self.to_k = nn.Dense(inner, use_bias=False, dtype=self.dtype)
        self.to_v = nn.Dense(inner, use_bias=False, dtype=self.dtype)
        self.to_out_0 = nn.Dense(self.query_dim, dtype=self.dtype)

    def __call__(self, hidden, context=None, layer_hw: tuple[int, int] | None = None,
                 attention: control.AttentionContext | None = None):
        """hidden (B, Nq, C), context (B, Nk, D) or None; layer_hw = the query grid (h, w), h * w = Nq."""
        source = hidden if context is None else context
        batch = hidden.shape[0]

        def heads(x):
            return x.reshape(batch, x.shape[1], self.heads, self.dim_head)

        q, k, v = heads(self.to_q(hidden)), heads(self.to_k(source)), heads(self.to_v(source))
        out = control.attend(q, k, v, scale=self.dim_head**-0.5, module=self, path=self.path,
                             is_cross=context is not None, layer_hw=layer_hw or (hidden.shape[1], 1),
                             context=attention)
        return self.to_out_0(out.reshape(batch, out.shape[1], self.heads * self.dim_head))


class GEGLU(nn.Module):
    """Dense to 2 x inner, value * gelu(gate) with the exact (erf) GELU of PyTorch's GEGLU."""

    inner_dim: int
    dtype: DType = jnp.float32

    def setup(self):
        self.proj = nn.Dense(self.inner_dim * 2, dtype=self.dtype)

    def __call__(self, x):
        value, gate = jnp.split(self.proj(x), 2, axis=-1)
        return value * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """net_0 (GEGLU to 4 x dim) then net_2 (dense back to dim); diffusers' names (net_1 is dropout)."""

    dim: int
    dtype: DType = jnp.float32

    def setup(self):
        self.net_0 = GEGLU(self.dim * 4, dtype=self.dtype)
        self.net_2 = nn.Dense(self.dim, dtype=self.dtype)

    def __call__(self, x):
        return self.net_2(self.net_0(x))


class BasicTransformerBlock(nn.Module):
    """x + attn1(norm1 x) [+ context when only_cross_attention]; + attn2(norm2 x, context); + ff(norm3 x)."""

    dim: int
    heads: int
    dim_head: int
    only_cross_attention: bool = False
    dtype: DType = jnp.float32

    def setup(self):
        self.attn1 = Attention(self.dim, self.heads, self.dim_head, dtype=self.dtype)
        self.attn2 = Attention(self.dim, self.heads, self.dim_head, dtype=self.dtype)
        self.ff = FeedForward(self.dim, dtype=self.dtype)
        self.norm1 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
        self.norm2 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
        self.norm3 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)

    def __call__(self, x, context, layer_hw, attention=None):
        first_context = context if self.only_cross_attention else None
        x = x + self.attn1(self.norm1(x), first_context, layer_hw, attention)
        x = x + self.attn2(self.norm2(x), context, layer_hw, attention)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """(B, H, W, C) -> (B, H, W, C): norm, proj_in, `depth` transformer blocks on H*W tokens, proj_out, + x."""

    channels: int
    heads: int
    dim_head: int
    depth: int = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    groups: int = 32
    dtype: DType = jnp.float32

    def setup(self):
        inner = self.heads * self.dim_head
        # PyTorch's Transformer2DModel: GroupNorm eps 1e-6 (diffusers' Flax class had 1e-5).
        self.norm = group_norm(self.groups, 1e-6, self.dtype)
        if self.use_linear_projection:
            self.proj_in = nn.Dense(inner, dtype=self.dtype)
            self.proj_out = nn.Dense(self.channels, dtype=self.dtype)
        else:
            self.proj_in = nn.Conv(inner, (1, 1), padding="VALID", dtype=self.dtype)
            self.proj_out = nn.Conv(self.channels, (1, 1), padding="VALID", dtype=self.dtype)
        self.transformer_blocks = [
            BasicTransformerBlock(inner, self.heads, self.dim_head, self.only_cross_attention, dtype=self.dtype)
            for _ in range(self.depth)
        ]

    def __call__(self, x, context, attention: Any = None):
        batch, height, width, _ = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.reshape(batch, height * width, -1))
        else:
            h = self.proj_in(h).reshape(batch, height * width, -1)
        for block in self.transformer_blocks:
            h = block(h, context, (height, width), attention)
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(batch, height, width, -1)
        else:
            h = self.proj_out(h.reshape(batch, height, width, -1))
        return h + x
