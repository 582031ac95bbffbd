"""LoRA as a parameter-tree transformation: frozen base kernels plus trained low-rank adapters.

A targeted layer's effective kernel is ``W + (alpha / rank) * A @ B``, built functionally from the
frozen base tree and the adapter tree right before a module's `apply`, so jcompose's modules need no
LoRA layers. Shapes (Flax layouts):

* Dense kernel W (in, out): A (in, r), B (r, out);
* Conv kernel W (kh, kw, in, out): A (kh, kw, in, r), B (r, out) -- PEFT's Conv2d LoRA (lora_A a kh x kw
  convolution to r channels, lora_B a 1x1 convolution), whose composition is exactly this kernel.

Layers are chosen by PEFT's rule on their diffusers (PyTorch) module names: a target `t` matches the
module `name` when ``name == t`` or ``name.endswith("." + t)`` (so "to_q" hits every attention query,
"attn2.to_k" only the cross-attention keys, "to_out.0" the attention output projections). A starts
from PEFT's default draw (kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))) and B
from zero, so step 0 is the base model exactly.

Methods keep the base in `frozen` and only the adapters in `params`: the optimizer never sees the base
(no gradients, no Adam moments for it), and with K models (a leading model axis on `params`) the base
is stored once and each model costs its adapters. `jcompose.models.lora_files` reads and writes the
adapters as diffusers' `load_lora_weights` files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from configs.common import ConfigError

# diffusers' DreamBooth-LoRA default: the four attention projections of every attention layer.
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_LEAVES = ("lora_A", "lora_B")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """rank r > 0, alpha (the scale is alpha / r) and the target module names (PEFT's matching rule)."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = DEFAULT_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def spec_from_config(config) -> LoraSpec | None:
    """`config.train.lora` as a LoraSpec, or None when LoRA is off (rank 0, or a config without the field).

    alpha 0 stands for alpha = rank (scale 1, as diffusers' DreamBooth-LoRA script sets it)."""
    lora = config.train.get("lora")
    if lora is None or not lora.rank:
        return None
    return LoraSpec(int(lora.rank), float(lora.alpha or lora.rank), tuple(lora.targets))


def module_name(path: tuple[str, ...]) -> str:
    """The diffusers module name of a Flax module path: ('down_blocks_0', ..., 'to_out_0') ->
    'down_blocks.0.<...>.to_out.0' (the PyTorch name of its kernel without '.weight')."""
    from jcompose.models import pt_layout

    return pt_layout.pytorch_keys((*path, "kernel"))[0].removesuffix(".weight")


def matches(name: str, targets: tuple[str, ...]) -> bool:
    """PEFT's target rule: `name` is a target or ends with '.' + a target."""
    return any(name == t or name.endswith("." + t) for t in targets)


def targeted_kernels(base: Any, targets: tuple[str, ...], what: str = "the UNet") -> dict:
    """{Flax module path: kernel shape} of the Dense (2-d) and Conv (4-d) kernels of `base` (`what`, in
    errors) whose module names match `targets`. ConfigError naming config.train.lora.targets when none does
    (with the name endings that exist)."""
    found, names = {}, []
    for key, leaf in flatten_dict(base).items():
        if key[-1] != "kernel" or len(leaf.shape) not in (2, 4):
            continue
        name = module_name(key[:-1])
        names.append(name)
        if matches(name, targets):
            found[key[:-1]] = tuple(leaf.shape)
    if not found:
        tails = sorted({".".join(n.split(".")[-2:]) for n in names})
        raise ConfigError(f"config.train.lora.targets = {targets!r}: matches none of the {len(names)} Dense/Conv "
                          f"layers of {what} "
                          f"(a target matches a diffusers module name or its ending after a '.'; endings here: "
                          f"{', '.join(tails[:16])}{', ...' if len(tails) > 16 else ''})")
    return found


def init(base: Any, spec: LoraSpec, rng: jax.Array, what: str = "the UNet") -> dict:
    """Fresh adapters for the targeted kernels of `base` (`what`, in errors): a tree mirroring the module
    paths, each targeted module {"lora_A", "lora_B"} float32; A ~ U(+-1/sqrt(fan_in)) (module i of the sorted
    paths draws with fold_in(rng, i)), B = 0."""
    adapters = {}
    for i, (path, shape) in enumerate(sorted(targeted_kernels(base, spec.targets, what).items())):
        *window, fan_in, fan_out = shape
        bound = 1.0 / math.sqrt(fan_in * int(np.prod(window, dtype=np.int64)))
        a = jax.random.uniform(jax.random.fold_in(rng, i), (*window, fan_in, spec.rank), jnp.float32, -bound, bound)
        adapters[path] = {"lora_A": a, "lora_B": jnp.zeros((spec.rank, fan_out), jnp.float32)}
    return unflatten_dict({(*path, leaf): v for path, ab in adapters.items() for leaf, v in ab.items()})


def modules(adapters: Any) -> dict[tuple[str, ...], dict]:
    """{module path: {"lora_A": A, "lora_B": B}} of an adapter tree."""
    out: dict[tuple[str, ...], dict] = {}
    for key, value in flatten_dict(adapters).items():
        if key[-1] not in ADAPTER_LEAVES:
            raise ValueError(f"adapter tree leaf {'/'.join(key)}: expected a path ending in lora_A or lora_B")
        out.setdefault(key[:-1], {})[key[-1]] = value
    return out


def delta(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """scale * A @ B over the rank axis: (..., in, r) x (r, out) -> (..., in, out), float32."""
    return scale * jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32), axes=1)


def merge(base: Any, adapters: Any, scale: float) -> Any:
    """The effective params: `base` with every adapted kernel W replaced by W + scale * A @ B (in W's dtype);
    every other leaf is `base`'s own (shared, not copied). Differentiable in the adapters; under jit the
    sum is formed once per call of the function holding it (a sampling loop's scan reuses it)."""
    flat = flatten_dict(base)
    for path, ab in modules(adapters).items():
        key = (*path, "kernel")
        if key not in flat:
            raise ValueError(f"adapter for {'/'.join(path)}: the base has no such kernel")
        w = flat[key]
        flat[key] = (w.astype(jnp.float32) + delta(ab["lora_A"], ab["lora_B"], scale)).astype(w.dtype)
    return unflatten_dict(flat)


def count(adapters: Any) -> int:
    """Trained numbers in an adapter tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(adapters)))
