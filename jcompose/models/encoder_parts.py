"""The pieces jcompose's transformer encoders share (`clip.py`, `vit.py`): transformers' activations by
name, config.json parsing with a type check per field, multi-head attention with a float32 softmax,
the output record and the `Block` base (config, compute / parameter dtype, precision)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jcompose.models.diffusers_config import ConfigError

_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))

# transformers' ACT2FN names -> the same formulas (PyTorch `gelu` is the exact erf form).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: 0.5 * x * (1.0 + jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function transformers calls `name`; unknown names raise ValueError."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _describe(types: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def checked(value: Any, hint: Any, where: str) -> Any:
    """`value` of a config.json field as the type `hint` allows (an int where a float is allowed becomes
    one); ConfigError naming `where` and the expected types otherwise."""
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int):
        if int in allowed:
            return value
        if float in allowed:
            return float(value)
    elif isinstance(value, float) and float in allowed:
        return value
    elif isinstance(value, str) and str in allowed:
        return value
    raise ConfigError(f"{where} = {value!r}: expected {_describe(allowed)}")


T = typing.TypeVar("T")


def parse_config(cls: type[T], values: Mapping[str, Any], source: str, prefix: str = "") -> T:
    """Builds the frozen config dataclass `cls` from a config.json mapping, checking every type.

    Keys `cls` does not have are ignored (config.json files carry many training-only keys);
    a known key with a value of the wrong type raises `ConfigError` naming `source` and the key
    (``prefix`` names a nested object, e.g. "text_config.").
    """
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: checked(values[f.name], hints[f.name], f"{source}: {prefix}{f.name}")
              for f in dataclasses.fields(cls) if f.name in values}
    return cls(**kwargs)


def check_common(config: Any, source: str, prefix: str = "") -> None:
    """Checks the fields every encoder config has: sizes, head split, activation."""
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{source}: {prefix}{name} = {getattr(config, name)}: expected a positive integer")
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(f"{source}: {prefix}hidden_size = {config.hidden_size} is not a multiple of "
                          f"{prefix}num_attention_heads = {config.num_attention_heads}")
    if config.hidden_act not in ACTIVATIONS:
        raise ConfigError(f"{source}: {prefix}hidden_act = {config.hidden_act!r} is not supported; "
                          f"choose one of {sorted(ACTIVATIONS)}")


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, precision: Any = None) -> jax.Array:
    """Multi-head attention: q, k, v (B, L, H, Dh) -> (B, L, H, Dh); softmax in float32.

    `bias` (broadcastable to (B, H, L, L)) is added to the float32 logits (0 or a large negative).
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision).astype(jnp.float32) * scale
    if bias is not None:
        logits = logits + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=precision)


@flax.struct.dataclass
class EncoderOutput:
    """last_hidden_state (B, L, D); pooler_output (B, D') or None."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array | None = None


class Block(nn.Module):
    """Base of the layers here: a config plus compute dtype, parameter dtype and matmul precision."""

    config: Any
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None

    def dense(self, features: int, name: str, use_bias: bool = True) -> nn.Dense:
        return nn.Dense(features, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                        precision=self.precision, name=name)

    def layer_norm(self, name: str) -> nn.LayerNorm:
        # two-pass variance, as PyTorch: the fast E[x^2]-E[x]^2 form loses digits on large means
        return nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                            use_fast_variance=False, name=name)

    def sub(self, cls: type, name: str, **kwargs) -> nn.Module:
        return cls(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                   name=name, **kwargs)
