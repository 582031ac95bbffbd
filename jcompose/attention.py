"""Attention control: the controls, and the one function every attention layer calls.

jcompose's attention modules (`jcompose.models.transformer.Attention`, in the UNet and the
ControlNet) take an `AttentionContext` argument, threaded down from the model's ``attention=``
keyword. Each layer knows its own path (e.g. ``up_blocks_3/attentions_2/transformer_blocks_0/attn1``),
whether it is self- or cross-attention and its spatial size, and calls `attend`:

* with no control applying to the layer, through the platform's fused kernel where it has one
  (cuDNN on NVIDIA GPUs, a Pallas flash kernel on TPU; `jcompose.attention_kernels` chooses, following
  `config.model.attention`);
* otherwise explicitly: softmax probabilities in float32, then each control multiplies them
  (XLA fuses this; on CPU it measured faster than `dot_product_attention`'s XLA path).

Each control sees an `AttentionCall`: the layer path, self vs cross, the layer's spatial size and
its factor relative to the latent (non-square too) and the current timestep. Controls are frozen
pytree dataclasses (their masks are leaves, everything else static), so a context passes through
`jit`, `nn.remat` and `lax.scan` unchanged: `MaskedCrossAttention` and `MaskedSelfAttention`
(DreamCom), `LayoutControl` (AnyScene) and `CaptureCrossAttention` (maps per token, for
visualisation and tests). Masks are given at latent resolution and reduced to each layer's size
by strided slicing, the official code's nearest rule (``m[::f, ::f]``). A mask with batch B serves a
CFG-doubled batch 2B (both halves get it, as in the released DreamCom code).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jcompose import attention_kernels

Array = jax.Array
CAPTURE_COLLECTION = "attention_maps"


@struct.dataclass
class AttentionCall:
    """What a control knows about one attention call (all static, read at trace time).

    Attributes:
      path: the module path, e.g. ``('up_blocks_1', 'attentions_0', 'transformer_blocks_0', 'attn2')``.
      is_cross: cross-attention (keys from the text/ID context) vs self-attention.
      height, width: the layer's spatial size; queries are its pixels in row-major order.
      factor: latent size / layer size (1 at the full latent resolution, 2, 4, 8 deeper).
      timestep: the current diffusion timestep, a scalar array (or None outside a sampler).
    """

    path: tuple[str, ...] = struct.field(pytree_node=False)
    is_cross: bool = struct.field(pytree_node=False)
    height: int = struct.field(pytree_node=False)
    width: int = struct.field(pytree_node=False)
    factor: int = struct.field(pytree_node=False)
    timestep: Any = None

    @property
    def name(self) -> str:
        return "/".join(self.path)


def layer_factor(layer_hw: tuple[int, int], latent_hw: tuple[int, int]) -> int:
    """latent/layer size ratio of a layer of `layer_hw` in a UNet on `latent_hw` latents.

    Each UNet level halves the size with a stride-2, padding-1 convolution, i.e. ceil(h / 2).
    """
    h, w = latent_hw
    factor = 1
    while (h, w) != tuple(layer_hw):
        if h == 1 and w == 1 or h * w < layer_hw[0] * layer_hw[1]:
            raise ValueError(f"an attention layer of {layer_hw[0]}x{layer_hw[1]} is no downsampling of the "
                             f"{latent_hw[0]}x{latent_hw[1]} latent; pass the latent size the UNet is called with")
        h, w, factor = math.ceil(h / 2), math.ceil(w / 2), factor * 2
    return factor


def spatial_size(num_queries: int, latent_hw: tuple[int, int]) -> tuple[int, int, int]:
    """(height, width, factor) of a layer with `num_queries` pixels in a UNet on `latent_hw` latents."""
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


def max_pool_mask(mask: Array, factor: int) -> Array:
    """(B, H, W) or (H, W) mask -> 1/factor resolution by max pooling (a cell is on if any of its pixels is),
    sizes rounded up as the UNet's stride-2 convolutions do (ceil)."""
    if factor == 1:
        return mask
    h, w = mask.shape[-2:]
    ph, pw = -h % factor, -w % factor
    padded = jnp.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(0, ph), (0, pw)])
    shape = padded.shape[:-2] + ((h + ph) // factor, factor, (w + pw) // factor, factor)
    return padded.reshape(shape).max(axis=(-3, -1))


def _query_mask(mask: Array, call: AttentionCall, batch: int, reduce: str = "slice") -> Array:
    """The mask at the layer's resolution, flattened to (B, 1, Nq, 1) for broadcasting on probs.

    reduce: "slice" (nearest, m[::f, ::f], the released DreamCom rule) or "max" (max pooling)."""
    mask = jnp.asarray(mask, jnp.float32)
    small = max_pool_mask(mask, call.factor) if reduce == "max" else downsample_mask(mask, call.factor)
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


def _blend(probs: Array, edited: Array, schedule: Callable[[Array], Array] | None, call: AttentionCall) -> Array:
    """probs + s (edited - probs), s = schedule(t) in [0, 1]; the edit itself without a schedule."""
    if schedule is None or call.timestep is None:
        return edited
    s = jnp.asarray(schedule(call.timestep), jnp.float32)
    return probs + s * (edited - probs)


class Control:
    """Base class: `applies(call)` decides per layer (at trace time), `__call__` edits probabilities.

    `__call__(probs, call, module)` gets post-softmax probabilities of shape (B, heads, Nq, Nk) in
    float32 and returns the edited ones (the same shape). `module` is the calling attention module,
    for controls that record (`sow`) rather than edit. Subclasses are `flax.struct` dataclasses.
    """

    def applies(self, call: AttentionCall) -> bool:
        raise NotImplementedError

    def __call__(self, probs: Array, call: AttentionCall, module: Any) -> Array:
        raise NotImplementedError


def _in_layers(layers: frozenset[str] | None, call: AttentionCall) -> bool:
    return layers is None or call.name in layers


def _static(**kwargs):
    return struct.field(pytree_node=False, **kwargs)


@struct.dataclass
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
    foreground_tokens: tuple[int, ...] | None = _static(default=None)
    background_tokens: tuple[int, ...] = _static(default=())
    renormalize: bool = _static(default=False)
    layers: frozenset[str] | None = _static(default=None)
    schedule: Callable[[Array], Array] | None = _static(default=None)

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
        return _blend(probs, edited, self.schedule, call)


@struct.dataclass
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
    layers: frozenset[str] = _static()
    cross_weight: float = _static(default=0.0)
    schedule: Callable[[Array], Array] | None = _static(default=None)

    def applies(self, call: AttentionCall) -> bool:
        return not call.is_cross and call.name in self.layers

    def __call__(self, probs, call, module):
        batch = probs.shape[0]
        m = _query_mask(self.mask, call, batch)[:, :, :, 0]  # (B, 1, N)
        same = m[..., :, None] * m[..., None, :] + (1 - m[..., :, None]) * (1 - m[..., None, :])
        keep = same + self.cross_weight * (1 - same)
        return _blend(probs, probs * keep, self.schedule, call)


HALVES = ("both", "cond")
REDUCE = ("slice", "max")


@struct.dataclass
class LayoutControl(Control):
    """AnyScene's layout control (paper eq. 7): A*[:, :, k] = A[:, :, k] * downsample(M), k in K.

    Attributes:
      mask: (B, H, W) or (H, W) foreground mask at latent resolution.
      tokens: positions K of the user's foreground words (see `jcompose.tokens`).
      factors: latent/layer size ratios to control; (1, 2, 4) are the paper's 64/32/16 at 512 px.
      halves: with classifier-free guidance (an attention batch twice the mask's, [uncond; cond]):
        "both" halves controlled, or only the conditional one ("cond"; the unconditional prediction
        is then the plain model's).
      reduce: how the mask reaches each layer's size: "slice" (nearest, m[::f, ::f]) or "max" (max
        pooling: a cell is on if any pixel under it is; with a max-pooled latent mask, the same
        max-pooling rule from pixels to every resolution).
      schedule: optional t -> strength in [0, 1].
    """

    mask: Array
    tokens: tuple[int, ...] = _static()
    factors: tuple[int, ...] = _static(default=(1, 2, 4))
    halves: str = _static(default="both")
    reduce: str = _static(default="slice")
    schedule: Callable[[Array], Array] | None = _static(default=None)

    def applies(self, call: AttentionCall) -> bool:
        return call.is_cross and call.factor in self.factors

    def __call__(self, probs, call, module):
        if self.halves not in HALVES or self.reduce not in REDUCE:
            raise ValueError(f"LayoutControl halves={self.halves!r} / reduce={self.reduce!r}: expected one of "
                             f"{HALVES} / {REDUCE}")
        batch, _, _, num_keys = probs.shape
        selected = _token_vector(self.tokens, num_keys)  # (Nk,)
        inside = _query_mask(self.mask, call, batch, self.reduce)  # (B, 1, Nq, 1)
        edited = probs * (1 - selected + selected * inside)
        if self.halves == "cond":
            if jnp.ndim(self.mask) != 3:
                raise ValueError("LayoutControl(halves='cond') needs a batched (B, H, W) mask, to tell a CFG-doubled "
                                 "[uncond; cond] batch from a plain one")
            if batch == 2 * jnp.shape(self.mask)[0]:  # CFG: leave the unconditional half uncontrolled
                edited = jnp.where((jnp.arange(batch) >= batch // 2)[:, None, None, None], edited, probs)
        return _blend(probs, edited, self.schedule, call)


@struct.dataclass
class CaptureCrossAttention(Control):
    """Records head-averaged cross-attention maps of the layers at one resolution.

    Each matching layer sows its (B, h, w, Nk) map into the `attention_maps` collection; call
    the UNet with ``mutable=[CAPTURE_COLLECTION]`` and average with `average_captured`.

    Attributes:
      factor: latent/layer size ratio of the layers to record (e.g. 4: 16x16 at 512 px).
    """

    factor: int = _static(default=4)

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


# ----------------------------------------------------------------------------------- the context


@struct.dataclass
class AttentionContext:
    """What a model call's attention layers are told: the controls and where they are.

    Pass it as ``unet.apply(params, x, t, ctx, attention=AttentionContext(...))``.

    Attributes:
      controls: applied in order to each layer they apply to; none -> fused attention everywhere.
      latent_hw: (height, width) of the latents the model is called with (sizes the layers for
        the controls' masks); None when there are no controls.
      timestep: the current timestep (a scalar array), for controls with a schedule.
      on_call: optional host callback per attention call at trace time (e.g. to list the layers).
    """

    controls: tuple[Control, ...] = ()
    latent_hw: tuple[int, int] | None = _static(default=None)
    timestep: Any = None
    on_call: Callable[[AttentionCall], None] | None = _static(default=None)

    def call(self, path: Sequence[str], is_cross: bool, layer_hw: tuple[int, int]) -> AttentionCall:
        """The `AttentionCall` of the layer at `path` with a `layer_hw` query grid."""
        hw = self.latent_hw or layer_hw
        factor = layer_factor(layer_hw, hw) if self.controls or self.on_call else 1
        return AttentionCall(tuple(path), is_cross, int(layer_hw[0]), int(layer_hw[1]), factor, self.timestep)


def attend(q: Array, k: Array, v: Array, *, scale: float, module: Any, path: Sequence[str], is_cross: bool,
           layer_hw: tuple[int, int], context: AttentionContext | None) -> Array:
    """Multi-head attention of one layer with the context's controls.

    Args:
      q: (B, Nq, heads, head_dim) queries; k, v: (B, Nk, heads, head_dim).
      scale: the logit scale (head_dim ** -0.5).
      module: the calling attention module (for controls that `sow`).
      path, is_cross, layer_hw: where the layer is (its module path, self/cross, query grid).
      context: the call's `AttentionContext`, or None (plain attention).

    Returns:
      (B, Nq, heads, head_dim) in v's dtype.
    """
    controls: list[Control] = []
    if context is not None and (context.controls or context.on_call):
        call = context.call(path, is_cross, layer_hw)
        if context.on_call is not None:
            context.on_call(call)
        controls = [c for c in context.controls if c.applies(call)]
    implementation, reason = attention_kernels.choose(q, controlled=bool(controls), kv_len=k.shape[1])
    attention_kernels.record(path, is_cross, q, k, implementation, reason)
    if implementation != "xla":
        return attention_kernels.fused_attention(q, k, v, scale=scale, kind=implementation)
    # Explicit softmax attention (controls edit the probabilities), heads-major: token-major einsums
    # took SD 1.5's UNet forward at 512 px on CPU from 5.8 to 6.9 s (tools/compare_old_flax_modules.py).
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
    logits = jnp.einsum("bnqh,bnkh->bnqk", q, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(logits, axis=-1)
    for control in controls:
        probs = control(probs, call, module)
    return jnp.swapaxes(jnp.einsum("bnqk,bnkh->bnqh", probs.astype(v.dtype), v), 1, 2)


def attention_layers(apply_fn: Callable[[AttentionContext], Any], latent_hw: tuple[int, int]) -> list[AttentionCall]:
    """Every attention call of `apply_fn` (a model call taking the context), in call order, traced
    abstractly (no FLOPs)."""
    calls: list[AttentionCall] = []
    jax.eval_shape(lambda: apply_fn(AttentionContext(latent_hw=tuple(latent_hw), on_call=calls.append)))
    return calls


def decoder_self_attention_layers(calls: Sequence[AttentionCall], last: int) -> frozenset[str]:
    """Names of the last `last` self-attention layers of the UNet decoder (up blocks), in call
    order: DreamCom's released inference masks the last 5 of SD 1.5's 9."""
    decoder = [c.name for c in calls if not c.is_cross and c.path[0].startswith("up_blocks")]
    if not 0 <= last <= len(decoder):
        raise ValueError(f"asked for the last {last} decoder self-attention layers; the UNet has {len(decoder)}")
    return frozenset(decoder[len(decoder) - last:])
