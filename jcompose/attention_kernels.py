"""Which implementation an attention layer gets, and the fused kernels themselves.

`jcompose.attention.attend` asks `choose` for every UNet / ControlNet attention call:

* "xla": the explicit softmax path (float32 probabilities that controls can edit); always the path of
  a layer with an attention control, and of every layer on CPU;
* "cudnn": cuDNN's fused attention through `jax.nn.dot_product_attention` on NVIDIA GPUs (bf16/fp16,
  head dim a multiple of 8 up to 128);
* "pallas": jax's Pallas TPU flash-attention kernel (`jax.experimental.pallas.ops.tpu.flash_attention`,
  forward and backward), with the sequences padded to its 128 blocks (padded keys masked through
  segment ids) and head dims above 128 padded to a multiple of 128 (SD 1.5's 160; 40, 64 and 80 are
  taken whole). Under a multi-device mesh the kernel runs per device inside `shard_map` over the
  batch (Mosaic kernels are not partitioned automatically); a jit traced without a mesh context on
  several devices keeps the XLA path.
* "pallas-interpret": the same Pallas kernel in interpret mode, on CPU (checks the kernel's numerics
  off-TPU: `config.model.attention = "fused"` on a CPU).

The choice follows the process-wide setting (`config.model.attention`: "auto" = the fused kernel where
the platform has one, "xla" = never, "fused" = always, an error where none applies) and the platform
the program is compiled for: the default backend, or the target `jcompose.plan` compiles for
(`compiling_for`). `recording` lists every choice made while tracing (the plan reports them per layer).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

Array = jax.Array
SETTINGS = ("auto", "xla", "fused")
KERNEL_BLOCK = 128  # the Pallas TPU kernel's tile along both sequences (and its lane width)

_setting = {"value": "auto"}
_target: contextvars.ContextVar[str | None] = contextvars.ContextVar("attention_target", default=None)
_records: contextvars.ContextVar[list | None] = contextvars.ContextVar("attention_records", default=None)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One attention call as traced: where it is, its shapes (per call, before any sharding) and what it got."""

    layer: str
    is_cross: bool
    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    dtype: str
    implementation: str
    reason: str = ""


def set_implementation(setting: str) -> None:
    """The process-wide choice (`config.model.attention`): "auto", "xla" or "fused"."""
    if setting not in SETTINGS:
        raise ValueError(f"config.model.attention = {setting!r}: expected one of {SETTINGS}")
    _setting["value"] = setting


def implementation() -> str:
    """The current process-wide setting."""
    return _setting["value"]


@contextlib.contextmanager
def using(setting: str) -> Iterator[None]:
    """The process-wide setting changed for a block (restored after)."""
    previous = implementation()
    set_implementation(setting)
    try:
        yield
    finally:
        _setting["value"] = previous


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
    """Programs traced in this block are compiled for `platform` ("tpu", "gpu", "cpu"), not the default backend."""
    token = _target.set({"cuda": "gpu", "rocm": "gpu"}.get(platform, platform))
    try:
        yield
    finally:
        _target.reset(token)


def target_platform() -> str:
    return _target.get() or jax.default_backend()


@contextlib.contextmanager
def recording() -> Iterator[list[Choice]]:
    """Collects a `Choice` per attention call traced in this block."""
    records: list[Choice] = []
    token = _records.set(records)
    try:
        yield records
    finally:
        _records.reset(token)


@contextlib.contextmanager
def not_recording() -> Iterator[None]:
    """Attention calls traced in this block are not recorded: a probe trace (e.g. one that lists a UNet's
    layers) is not part of the program being planned."""
    token = _records.set(None)
    try:
        yield
    finally:
        _records.reset(token)


def _cudnn_supported(dtype: Any, head_dim: int, q_len: int, kv_len: int) -> str:
    """'' when cuDNN's fused attention takes these inputs, in training too, else why not."""
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cuDNN fused attention needs bf16/fp16 inputs, not {jnp.dtype(dtype).name}"
    if head_dim % 8 or head_dim > 128:
        return f"cuDNN fused attention needs a head dim that is a multiple of 8 up to 128, not {head_dim}"
    # jax's cuDNN gradient refuses odd lengths ("Unsupported sequence length Q 4096, KV 77": its training
    # check takes the unused-bias placeholder for a bias), so SD's 77-token cross-attention cannot train
    # through it; such layers (small: 77 keys) take the XLA path, in sampling too, so both run one program.
    if q_len % 2 or kv_len % 2:
        return f"cuDNN fused attention trains only even sequence lengths in jax, not {q_len} queries x {kv_len} keys"
    return ""


def choose(q: Array, *, controlled: bool, kv_len: int | None = None) -> tuple[str, str]:
    """(implementation, reason) for queries `q` (B, Nq, heads, head_dim) attending to `kv_len` keys (default
    Nq: self-attention) in a layer with or without controls."""
    setting = implementation()
    if controlled:
        return "xla", "attention control: exact probabilities"
    if setting == "xla":
        return "xla", "config.model.attention = 'xla'"
    platform = target_platform()
    if platform == "tpu":
        blocked = _mesh_blocks_kernel(q)
        return ("xla", blocked) if blocked else ("pallas", "")
    if platform == "gpu":
        why = _cudnn_supported(q.dtype, q.shape[-1], q.shape[1], q.shape[1] if kv_len is None else kv_len)
        if why and setting == "fused":
            raise ValueError(f"config.model.attention = 'fused': {why} (use 'auto' to fall back to XLA there)")
        return ("xla", why) if why else ("cudnn", "")
    if setting == "fused":
        blocked = _mesh_blocks_kernel(q)
        if blocked:
            raise ValueError(f"config.model.attention = 'fused': {blocked}")
        return "pallas-interpret", f"no fused kernel on {platform}: the TPU kernel interpreted"
    return "xla", f"no fused kernel on {platform}"


def record(layer: Sequence[str], is_cross: bool, q: Array, k: Array, kind: str, reason: str) -> None:
    """Notes the choice `kind` for one attention call while `recording`."""
    records = _records.get()
    if records is not None:
        b, nq, heads, dim = q.shape
        records.append(Choice("/".join(layer), is_cross, b, heads, nq, k.shape[1], dim, jnp.dtype(q.dtype).name,
                              kind, reason))


# ------------------------------------------------------------------------------------ the kernels


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def logical_scope(q_len: int, kv_len: int, head_dim: int) -> str:
    """The name scope a padded kernel call runs under, naming its unpadded sizes."""
    return f"attention_q{q_len}_k{kv_len}_d{head_dim}"


def _flash_local(q: Array, k: Array, v: Array, scale: float) -> Array:
    """Pallas TPU flash attention on (B, N, heads, D) inputs of one device; returns (B, Nq, heads, D)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

    batch, nq, _, dim = q.shape
    nk = k.shape[1]
    nq_pad, nk_pad = _round_up(nq, KERNEL_BLOCK), _round_up(nk, KERNEL_BLOCK)
    dim_pad = dim if dim <= KERNEL_BLOCK else _round_up(dim, KERNEL_BLOCK)  # the kernel's rule above 128

    def layout(x, length):  # (B, N, h, D) -> (B, h, N_pad, D_pad), zeros in the padding
        x = jnp.swapaxes(x, 1, 2)
        return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, dim_pad - dim)))

    segments = None
    if nk_pad != nk:  # padded keys get segment 0, every query and real key segment 1: never attended
        segments = tpu_flash.SegmentIds(q=jnp.ones((batch, nq_pad), jnp.int32),
                                        kv=jnp.broadcast_to((jnp.arange(nk_pad) < nk).astype(jnp.int32),
                                                            (batch, nk_pad)))
    blocks = tpu_flash.BlockSizes.get_default(batch, q.shape[2], nq_pad, nk_pad, dim_pad)
    with jax.named_scope(logical_scope(nq, nk, dim)):  # the unpadded sizes, for model FLOP counts (plan)
        out = tpu_flash.flash_attention(layout(q, nq_pad), layout(k, nk_pad), layout(v, nk_pad),
                                        segment_ids=segments, sm_scale=float(scale), block_sizes=blocks)
    return jnp.swapaxes(out[:, :, :nq, :dim], 1, 2)


def pallas_attention(q: Array, k: Array, v: Array, *, scale: float, interpret: bool = False) -> Array:
    """softmax(q k^T * scale) v with the Pallas TPU flash kernel: q (B, Nq, heads, D), k/v (B, Nk, heads, D)
    -> (B, Nq, heads, D) in q's dtype. Under a multi-device mesh context it runs per device on its share of
    the batch (`shard_map`; the batch must divide over the mesh, else the caller keeps XLA)."""
    kernel = functools.partial(_flash_local, scale=scale)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1 and not mesh.are_all_axes_manual:
        spec = P(tuple(name for name in mesh.axis_names if name not in mesh.manual_axes))
        kernel = jax.shard_map(kernel, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
    return _interpreted(kernel)(q, k, v) if interpret else kernel(q, k, v)


@contextlib.contextmanager
def _interpret_mode() -> Iterator[None]:
    """Pallas calls traced inside run in Pallas' generic interpreter (`interpret=True`: the kernel body
    as plain XLA ops on CPU; about 3x faster here than the TPU simulator of `force_tpu_interpret_mode`).
    The TPU kernels take no `interpret` argument, so the flag the public context manager sets is set
    to True here (jax 0.10's `pallas_tpu_interpret_mode_context_manager`)."""
    from jax._src import config

    previous = config.pallas_tpu_interpret_mode_context_manager.swap_local(True)
    try:
        yield
    finally:
        config.pallas_tpu_interpret_mode_context_manager.set_local(previous)


def _interpreted(kernel):
    """`kernel` with its Pallas calls interpreted (on CPU), the backward pass included: the mode applies to
    kernels traced inside its context, and the backward kernels are traced when the gradient is taken, so
    both halves of this custom VJP enter it."""
    @jax.custom_vjp
    def run(q, k, v):
        with _interpret_mode():
            return kernel(q, k, v)

    def forward(q, k, v):
        with _interpret_mode():
            return jax.vjp(kernel, q, k, v)  # (output, the VJP closure: a pytree of residuals)

    def backward(vjp, cotangent):
        with _interpret_mode():
            return vjp(cotangent)

    run.defvjp(forward, backward)
    return run


def _mesh_blocks_kernel(q: Array) -> str:
    """Why the Pallas kernel cannot run for queries `q` under the current mesh context, or ''."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return "several devices and no mesh context (jax.set_mesh) for the kernel" if jax.device_count() > 1 else ""
    shards = math.prod(size for name, size in zip(mesh.axis_names, mesh.axis_sizes) if name not in mesh.manual_axes)
    return "" if q.shape[0] % shards == 0 else f"batch {q.shape[0]} does not divide over {shards} devices"


def fused_attention(q: Array, k: Array, v: Array, *, scale: float, kind: str) -> Array:
    """Attention through the fused kernel `kind` ("cudnn", "pallas", "pallas-interpret"); (B, Nq, heads, D)."""
    if kind == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    if kind in ("pallas", "pallas-interpret"):
        return pallas_attention(q, k, v, scale=scale, interpret=kind == "pallas-interpret")
    raise ValueError(f"unknown fused attention implementation {kind!r}")
