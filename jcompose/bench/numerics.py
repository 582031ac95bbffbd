"""`python -m jcompose.bench numerics`: how far the fast paths are from float32 on the same input.

* the bf16 UNet and ControlNet (bf16 weights and activations, as sampling runs them) against the
  float32 model at full matmul precision ('highest': no TF32), on the same random weights, latents,
  timesteps and context;
* the fused attention path (cuDNN, `jax.nn.dot_product_attention`; GPU only, bf16) against the
  explicit XLA softmax path the CPU tests exercise, for one attention layer and for the whole bf16
  UNet (the explicit path forced everywhere by a control that changes nothing). On a CPU the fused
  path does not exist, so those rows say "not applicable".

Errors: max |a - ref|, mean |a - ref| and the relative L2 error ||a - ref|| / ||ref||.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jcompose import attention
from jcompose.bench import timing, weights
from jcompose.models import loading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=("tiny", "sd15"), default=None,
                        help="tiny (default on CPU) or the full SD 1.5 architecture (default on GPU/TPU)")
    parser.add_argument("--base", default=None, help="a base folder written beforehand (`bench prepare`)")
    parser.add_argument("--size", type=int, default=None, help="image size (default: tiny 64, sd15 512)")
    parser.add_argument("--batch", type=int, default=2)


@struct.dataclass
class Unchanged(attention.Control):
    """Applies to every layer and returns the probabilities as they are: forces the explicit path."""

    def applies(self, call) -> bool:
        return True

    def __call__(self, probs, call, module):
        return probs


def errors(value: Any, reference: Any) -> dict[str, float]:
    """max_abs, mean_abs, rel_l2 of `value` against `reference` (pytrees of arrays, compared in float64)."""
    a = np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree_util.tree_leaves(value)])
    b = np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree_util.tree_leaves(reference)])
    if a.shape != b.shape:
        raise ValueError(f"compared trees differ in size: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    norm = float(np.linalg.norm(b))
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "rel_l2": float(np.linalg.norm(a - b) / norm) if norm else float("inf"), "ref_rms": float(np.sqrt(np.mean(b * b)))}


def _bf16(tree):
    return jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), tree)


def _fp32(fn, *args):
    with jax.default_matmul_precision("highest"):
        return jax.device_get(jax.jit(fn)(*args))


def _row(name: str, dtype: str, value, reference, note: str = "") -> dict[str, Any]:
    return {"comparison": name, "dtype": dtype, **errors(value, reference), "note": note}


def _not_applicable(name: str) -> dict[str, Any]:
    return {"comparison": name, "dtype": "bfloat16", "max_abs": None, "mean_abs": None, "rel_l2": None,
            "note": f"not applicable on {jax.default_backend()}: the fused (cuDNN) path exists on GPU only"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """{'rows': [{comparison, dtype, max_abs, mean_abs, rel_l2, ref_rms, note}], ...}."""
    gpu = jax.default_backend() == "gpu"
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = weights.base_folder(args, tmp)
        unet = loading.load_unet(folder / "unet")
        module, params = unet.module, unet.params
        size = args.size or module.sample_size * 8
        hw = (size // 8, size // 8)
        x = jnp.asarray(rng.standard_normal((args.batch, module.in_channels, *hw)), jnp.float32)
        t = jnp.asarray(np.linspace(900, 100, args.batch).astype(np.int32))
        tokens = 77 if args.model == "sd15" else 16
        context = jnp.asarray(rng.standard_normal((args.batch, tokens, module.cross_attention_dim)), jnp.float32)
        half = module.clone(dtype=jnp.bfloat16)

        def unet_fn(m, ctx=None):
            return lambda p, x, c: m.apply({"params": p}, x, t, c, attention=ctx).sample

        reference = _fp32(unet_fn(module), params, x, context)
        fused = jax.device_get(jax.jit(unet_fn(half))(_bf16(params), x.astype(jnp.bfloat16), context.astype(jnp.bfloat16)))
        rows.append(_row("UNet bf16 vs fp32", "bfloat16", fused, reference,
                         "fused attention" if gpu else "explicit attention (CPU)"))
        if gpu:
            explicit_ctx = attention.AttentionContext(controls=(Unchanged(),), latent_hw=hw)
            explicit = jax.device_get(jax.jit(unet_fn(half, explicit_ctx))(
                _bf16(params), x.astype(jnp.bfloat16), context.astype(jnp.bfloat16)))
            rows.append(_row("UNet bf16, explicit attention vs fp32", "bfloat16", explicit, reference))
            rows.append(_row("UNet bf16, fused vs explicit attention", "bfloat16", fused, explicit))
        else:
            rows.append(_not_applicable("UNet bf16, fused vs explicit attention"))

        net = loading.controlnet_like(module)
        net_params = weights.random_tree(loading.abstract_params(net), 3)  # a fresh copy's zero convs would give 0
        cond = jnp.asarray(rng.uniform(-1, 1, (args.batch, 3, size, size)), jnp.float32)

        def net_fn(m):
            def apply(p, x, c, cond):
                out = m.apply({"params": p}, x, t, c, cond)
                return list(out.down_block_res_samples) + [out.mid_block_res_sample]
            return apply

        net_ref = _fp32(net_fn(net), net_params, x, context, cond)
        net_half = jax.device_get(jax.jit(net_fn(net.clone(dtype=jnp.bfloat16)))(
            _bf16(net_params), x.astype(jnp.bfloat16), context.astype(jnp.bfloat16), cond.astype(jnp.bfloat16)))
        rows.append(_row("ControlNet bf16 vs fp32 (all residuals)", "bfloat16", net_half, net_ref))

        rows += _attention_rows(rng, hw, heads=8 if args.model == "sd15" else 2,
                                head_dim=40 if args.model == "sd15" else 16, batch=args.batch, gpu=gpu)
    for row in rows:
        if row["rel_l2"] is not None:
            timing.log(f"  {row['comparison']}: rel L2 {row['rel_l2']:.2e}, max {row['max_abs']:.2e}")
    return {"model": args.model, "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "size": size, "batch": args.batch, "rows": rows}


def _attention_rows(rng, hw, *, heads: int, head_dim: int, batch: int, gpu: bool) -> list[dict[str, Any]]:
    """One self-attention layer at the first UNet level's size: fused and explicit bf16 vs fp32."""
    shape = (batch, hw[0] * hw[1], heads, head_dim)
    q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(3))
    scale = head_dim ** -0.5

    def attend(context):
        return lambda q, k, v: attention.attend(q, k, v, scale=scale, module=None, path=("bench",), is_cross=False,
                                                layer_hw=hw, context=context)

    explicit_ctx = attention.AttentionContext(controls=(Unchanged(),), latent_hw=hw)
    reference = _fp32(attend(explicit_ctx), q, k, v)
    half = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    explicit = jax.device_get(jax.jit(attend(explicit_ctx))(*half))
    name = f"attention layer {shape[1]} tokens x {heads} heads x {head_dim}"
    rows = [_row(f"{name}: explicit bf16 vs fp32", "bfloat16", explicit, reference)]
    if gpu:
        fused = jax.device_get(jax.jit(attend(None))(*half))
        rows.append(_row(f"{name}: fused (cuDNN) bf16 vs fp32", "bfloat16", fused, reference))
        rows.append(_row(f"{name}: fused vs explicit", "bfloat16", fused, explicit))
    else:
        rows.append(_not_applicable(f"{name}: fused (cuDNN) vs explicit"))
    return rows
