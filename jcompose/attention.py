"""Attention control for diffusers' Flax UNet and ControlNet, without forking them.

`controlled_attention(...)` is a context manager around a module call. Inside it every
`FlaxAttention.__call__` is intercepted (`flax.linen.intercept_methods`) and recomputed with the
module's own projection weights, so parameters keep the diffusers tree and load unchanged:

* with no control applying to a layer on a GPU in bf16/fp16 (head dim <= 128, multiple of 8),
  through `jax.nn.dot_product_attention` with cuDNN's fused kernel;
* otherwise explicitly: softmax probabilities in float32, then each control multiplies them
  (XLA fuses this; on CPU it measured faster than `dot_product_attention`'s XLA path).

Each control sees an `AttentionCall`: the layer path (e.g.
``up_blocks_3/attentions_2/transformer_blocks_0/attn1``), self vs cross, the layer's spatial size
(derived from the query length and the latent size, non-square too) and the current timestep.
Controls are plain frozen dataclasses: `MaskedCrossAttention` and `MaskedSelfAttention`
(DreamCom), `LayoutControl` (AnyScene) and `CaptureCrossAttention` (maps per token, for
visualisation and tests). Masks are given at latent resolution and reduced to each layer's size
by strided slicing, the official code's nearest rule (``m[::f, ::f]``); a mask that is a
constant of the trace is sliced at compile time, one passed in is loop-invariant in a sampler's
scan and hoisted by XLA, so neither is recomputed per step. A mask with batch B serves a
CFG-doubled batch 2B (both halves get it, as in the released DreamCom code).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from diffusers.models.attention_flax import FlaxAttention

Array = jax.Array
CAPTURE_COLLECTION = "attention_maps"


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """What a control knows about one attention call.

    Attributes:
      path: the module path, e.g. ``('up_blocks_1', 'attentions_0', 'transformer_blocks_0', 'attn2')``.
      is_cross: cross-attention (keys from the text/ID context) vs self-attention.
      height, width: the layer's spatial size; queries are its pixels in row-major order.
      factor: latent size / layer size (1 at the full latent resolution, 2, 4, 8 deeper).
      timestep: the current diffusion timestep, a scalar array (or None outside a sampler).
    """

    path: tuple[str, ...]
    is_cross: bool
    height: int
    width: int
    factor: int
    timestep: Any = None

    @property
    def name(self) -> str:
        return "/".join(self.path)


def spatial_size(num_queries: int, latent_hw: tuple[int, int]) -> tuple[int, int, int]:
    """(height, width, factor) of a layer with `num_queries` pixels in a UNet on `latent_hw` latents.

    Each UNet level halves the size with a stride-2, padding-1 convolution, i.e. ceil(h / 2).
    """
    h, w = latent_hw
    factor = 1
    while h * w > num_queries:
        h, w, factor = math.ceil(h / 2), math.ceil(w / 2), factor * 2
    if h * w != num_queries:
        raise ValueError(
            f"an attention layer has {num_queries} queries, which is no downsampling of the "
            f"{latent_hw[0]}x{latent_hw[1]} latent; pass the latent size the UNet is called with"
        )
    return h, w, factor


def downsample_mask(mask: Array, factor: int) -> Array:
    """(B, H, W) or (H, W) mask -> the same at 1/factor resolution by strided slicing (nearest)."""
    return mask[..., ::factor, ::factor]


def _query_mask(mask: Array, call: AttentionCall, batch: int) -> Array:
    """The mask at the layer's resolution, flattened to (B, 1, Nq, 1) for broadcasting on probs."""
    small = downsample_mask(jnp.asarray(mask, jnp.float32), call.factor)
    if small.shape[-2:] != (call.height, call.width):
        raise ValueError(f"mask of shape {mask.shape} does not reduce to {call.height}x{call.width} at {call.name}")
    small = small.reshape((-1, call.height * call.width))
    if small.shape[0] not in (1, batch):
        if batch % small.shape[0]:
            raise ValueError(f"mask batch {small.shape[0]} does not divide the attention batch {batch} at {call.name}")
        # Classifier-free guidance doubles the batch as [uncond; cond]: both halves get the mask.
        small = jnp.tile(small, (batch // small.shape[0], 1))
    return jnp.broadcast_to(small, (batch, small.shape[1]))[:, None, :, None]


def _token_vector(tokens: Iterable[int], length: int) -> Array:
    vec = [0.0] * length
    for k in tokens:
        if not 0 <= k < length:
            raise ValueError(f"token position {k} is outside the context of {length} tokens")
        vec[k] = 1.0
    return jnp.asarray(vec, jnp.float32)


def _strength(schedule: Callable[[Array], Array] | None, call: AttentionCall) -> Array | float:
    if schedule is None or call.timestep is None:
        return 1.0
    return jnp.asarray(schedule(call.timestep), jnp.float32)


class Control:
    """Base class: `applies(call)` decides per layer (at trace time), `__call__` edits probabilities.

    `__call__(probs, call, module)` gets post-softmax probabilities of shape (B, heads, Nq, Nk) in
    float32 and returns the edited ones (the same shape). `module` is the bound FlaxAttention, for
    controls that record (`sow`) rather than edit.
    """

    def applies(self, call: AttentionCall) -> bool:
        raise NotImplementedError

    def __call__(self, probs: Array, call: AttentionCall, module: Any) -> Array:
        raise NotImplementedError


def _in_layers(layers: frozenset[str] | None, call: AttentionCall) -> bool:
    return layers is None or call.name in layers


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedCrossAttention(Control):
    """DreamCom's masked cross-attention: text acts only inside the region.

    Post-softmax, pixels inside `mask` keep their probabilities on `foreground_tokens`, pixels
    outside keep those on `background_tokens`, every other probability is zeroed. The defaults are
    the released code's behaviour: the first half of the context after SOT for the box (tokens
    1..38 of 77), no background tokens (so background pixels attend to nothing and the layer
    outputs its bias there), SOT (token 0) dropped, no renormalisation. `renormalize=True`
    rescales each pixel's kept probabilities to sum to 1.

    Attributes:
      mask: (B, H, W) or (H, W) at latent resolution, 1 inside the region.
      foreground_tokens: context positions kept inside (None: 1 .. N // 2, as released).
      background_tokens: context positions kept outside.
      renormalize: divide kept probabilities by their sum (rows with nothing kept stay 0).
      layers: restrict to these layer names (None: every cross-attention layer, as released).
      schedule: optional t -> strength in [0, 1] (1: full masking, 0: no effect).
    """

    mask: Array
    foreground_tokens: Sequence[int] | None = None
    background_tokens: Sequence[int] = ()
    renormalize: bool = False
    layers: frozenset[str] | None = None
    schedule: Callable[[Array], Array] | None = None

    def applies(self, call: AttentionCall) -> bool:
        return call.is_cross and _in_layers(self.layers, call)

    def __call__(self, probs, call, module):
        batch, _, _, num_keys = probs.shape
        inside = _query_mask(self.mask, call, batch)
        foreground = range(1, num_keys // 2 + 1) if self.foreground_tokens is None else self.foreground_tokens
        keep = inside * _token_vector(foreground, num_keys) + (1 - inside) * _token_vector(
            self.background_tokens, num_keys
        )
        edited = probs * keep
        if self.renormalize:
            total = edited.sum(-1, keepdims=True)
            edited = jnp.where(total > 0, edited / jnp.where(total > 0, total, 1.0), 0.0)
        s = _strength(self.schedule, call)
        return edited if isinstance(s, float) else probs + s * (edited - probs)


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedSelfAttention(Control):
    """DreamCom's masked self-attention: foreground and background do not mix.

    Probabilities between a query and a key on the same side of `mask` are kept; across sides they
    are multiplied by `cross_weight` (0: hard block mask; 0 < w < 1: the released code's soft
    flag). Post-softmax, not renormalised, as released.

    Attributes:
      mask: (B, H, W) or (H, W) at latent resolution.
      layers: the self-attention layer names to mask (see `decoder_self_attention_layers`).
      cross_weight: weight kept on foreground-background pairs.
      schedule: optional t -> strength in [0, 1].
    """

    mask: Array
    layers: frozenset[str]
    cross_weight: float = 0.0
    schedule: Callable[[Array], Array] | None = None

    def applies(self, call: AttentionCall) -> bool:
        return not call.is_cross and call.name in self.layers

    def __call__(self, probs, call, module):
        batch = probs.shape[0]
        m = _query_mask(self.mask, call, batch)[:, :, :, 0]  # (B, 1, N)
        same = m[..., :, None] * m[..., None, :] + (1 - m[..., :, None]) * (1 - m[..., None, :])
        keep = same + self.cross_weight * (1 - same)
        edited = probs * keep
        s = _strength(self.schedule, call)
        return edited if isinstance(s, float) else probs + s * (edited - probs)


@dataclasses.dataclass(frozen=True, eq=False)
class LayoutControl(Control):
    """AnyScene's layout control (paper eq. 7): A*[:, :, k] = A[:, :, k] * downsample(M), k in K.

    Attributes:
      mask: (B, H, W) or (H, W) foreground mask at latent resolution.
      tokens: positions K of the user's foreground words (see `jcompose.tokens`).
      factors: latent/layer size ratios to control; (1, 2, 4) are the paper's 64/32/16 at 512 px.
      schedule: optional t -> strength in [0, 1].
    """

    mask: Array
    tokens: Sequence[int]
    factors: Sequence[int] = (1, 2, 4)
    schedule: Callable[[Array], Array] | None = None

    def applies(self, call: AttentionCall) -> bool:
        return call.is_cross and call.factor in self.factors

    def __call__(self, probs, call, module):
        batch, _, _, num_keys = probs.shape
        selected = _token_vector(self.tokens, num_keys)  # (Nk,)
        inside = _query_mask(self.mask, call, batch)  # (B, 1, Nq, 1)
        keep = 1 - selected + selected * inside
        edited = probs * keep
        s = _strength(self.schedule, call)
        return edited if isinstance(s, float) else probs + s * (edited - probs)


@dataclasses.dataclass(frozen=True, eq=False)
class CaptureCrossAttention(Control):
    """Records head-averaged cross-attention maps of the layers at one resolution.

    Each matching layer sows its (B, h, w, Nk) map into the `attention_maps` collection; call
    the UNet with ``mutable=[CAPTURE_COLLECTION]`` and average with `average_captured`.

    Attributes:
      factor: latent/layer size ratio of the layers to record (e.g. 4: 16x16 at 512 px).
    """

    factor: int = 4

    def applies(self, call: AttentionCall) -> bool:
        return call.is_cross and call.factor == self.factor

    def __call__(self, probs, call, module):
        maps = probs.mean(axis=1).reshape(probs.shape[0], call.height, call.width, probs.shape[-1])
        module.sow(CAPTURE_COLLECTION, "cross_attention", maps)
        return probs


def average_captured(state: Any) -> Array:
    """Mean over layers of the maps sown by `CaptureCrossAttention`: (B, h, w, Nk)."""
    leaves = jax.tree_util.tree_leaves(state.get(CAPTURE_COLLECTION, {}) if isinstance(state, dict) else state)
    if not leaves:
        raise ValueError("no attention maps were captured: did a CaptureCrossAttention match any layer?")
    return sum(leaves) / len(leaves)


# --------------------------------------------------------------------------------- the interceptor


def _attention_implementation(dtype: Any, head_dim: int) -> str | None:
    """cuDNN fused attention where it is supported (GPU, half precision, head dim <= 128, % 8)."""
    if jax.default_backend() != "gpu":
        return None
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return None
    return "cudnn" if head_dim % 8 == 0 and head_dim <= 128 else None


def _attend(module: Any, hidden: Array, context: Array | None, call: AttentionCall, controls: list[Control]) -> Array:
    source = hidden if context is None else context
    batch = hidden.shape[0]

    def heads(x):
        return x.reshape(batch, x.shape[1], module.heads, module.dim_head)  # (B, T, N, H)

    q, k, v = heads(module.query(hidden)), heads(module.key(source)), heads(module.value(source))
    fused = _attention_implementation(q.dtype, module.dim_head) if not controls else None
    if fused:
        out = jax.nn.dot_product_attention(q, k, v, scale=module.scale, implementation=fused)
    else:
        # Explicit softmax attention: controls edit the probabilities; without controls on CPU/TPU
        # this measured faster than jax.nn.dot_product_attention's XLA path (python -m jcompose.bench).
        logits = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=jnp.float32) * module.scale
        probs = jax.nn.softmax(logits, axis=-1)
        for control in controls:
            probs = control(probs, call, module)
        out = jnp.einsum("bnqk,bknh->bqnh", probs.astype(v.dtype), v)
    return module.proj_attn(out.reshape(batch, out.shape[1], module.heads * module.dim_head))


def make_interceptor(controls: Sequence[Control], latent_hw: tuple[int, int], timestep: Any = None,
                     on_call: Callable[[AttentionCall], None] | None = None):
    """The `nn.intercept_methods` interceptor applying `controls` (see `controlled_attention`)."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, FlaxAttention):
            return next_fun(*args, **kwargs)
        hidden = args[0]
        cross_context = args[1] if len(args) > 1 else kwargs.get("context")
        height, width, factor = spatial_size(hidden.shape[1], latent_hw)
        call = AttentionCall(tuple(module.path), cross_context is not None, height, width, factor, timestep)
        if on_call is not None:
            on_call(call)
        active = [c for c in controls if c.applies(call)]
        return _attend(module, hidden, cross_context, call, active)

    return interceptor


@contextlib.contextmanager
def controlled_attention(controls: Sequence[Control] = (), *, latent_hw: tuple[int, int], timestep: Any = None,
                         on_call: Callable[[AttentionCall], None] | None = None):
    """Context manager: UNet/ControlNet calls inside it run the given attention controls.

    Args:
      controls: applied in order to each layer they apply to; none -> fused attention everywhere.
      latent_hw: (height, width) of the latents the UNet is called with (to size the layers).
      timestep: current timestep (a scalar array), passed to controls with a schedule.
      on_call: optional callback per attention call (e.g. to list the layers).
    """
    with nn.intercept_methods(make_interceptor(tuple(controls), latent_hw, timestep, on_call)):
        yield


def attention_layers(apply_fn: Callable[[], Any], latent_hw: tuple[int, int]) -> list[AttentionCall]:
    """Every attention call of `apply_fn` (a zero-argument UNet call), in call order, traced
    abstractly (no FLOPs)."""
    calls: list[AttentionCall] = []

    def run():
        with controlled_attention((), latent_hw=latent_hw, on_call=calls.append):
            return apply_fn()

    jax.eval_shape(run)
    return calls


def decoder_self_attention_layers(calls: Sequence[AttentionCall], last: int) -> frozenset[str]:
    """Names of the last `last` self-attention layers of the UNet decoder (up blocks), in call
    order: DreamCom's released inference masks the last 5 of SD 1.5's 9."""
    decoder = [c.name for c in calls if not c.is_cross and c.path[0].startswith("up_blocks")]
    if not 0 <= last <= len(decoder):
        raise ValueError(f"asked for the last {last} decoder self-attention layers; the UNet has {len(decoder)}")
    return frozenset(decoder[len(decoder) - last:])
