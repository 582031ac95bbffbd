"""Weight files of model folders, read in numpy (PyTorch is never imported).

Shared by the diffusers-layout loaders (`loading.py`) and the transformer encoders (`encoders.py`):
which weight file a folder has (Flax msgpack, PyTorch safetensors single or sharded, variants),
reading them with errors that name the file, checking a tree against the shapes a module expects,
and `Loaded`, the (module, params, config, path) bundle every loader returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict

from jcompose.models import pt_layout
from jcompose.models.diffusers_config import ConfigError, read_config  # noqa: F401 (re-exported)

DIFFUSERS_FLAX_WEIGHTS = "diffusion_flax_model.msgpack"
DIFFUSERS_PT_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_FLAX_WEIGHTS = "flax_model.msgpack"
TRANSFORMERS_PT_WEIGHTS = "model.safetensors"

DType = Any

_ABSTRACT = contextvars.ContextVar("abstract_weights", default=False)


@contextlib.contextmanager
def abstract_weights():
    """Inside, the loaders read only `config.json`: no weight file is looked for or read, and parameters are
    zeros of the shapes the config implies, made where the loading runs. Call the loading under
    `jax.eval_shape` and they are shapes only, nothing allocated: `jcompose.plan` builds a run's programs
    for another chip this way, from a model's configs alone."""
    token = _ABSTRACT.set(True)
    try:
        yield
    finally:
        _ABSTRACT.reset(token)


def reading_abstract() -> bool:
    """Whether loaders are inside `abstract_weights`."""
    return _ABSTRACT.get()


def zeros_of(expected: Any) -> Any:
    """Zeros for a tree of `jax.ShapeDtypeStruct`s (the stand-in weights of `abstract_weights`)."""
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), expected)


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A module with its parameters.

    Attributes:
      module: a jcompose linen module (call with ``module.apply({"params": params}, ...)``).
      params: nested dict of jax arrays in the Flax layout.
      config: the folder's config.json as read.
      path: the folder it came from (None when built in memory).
    """

    module: Any
    params: Any
    config: dict
    path: Path | None


def require_dir(folder: str | Path, what: str) -> Path:
    """`folder` as a Path if it is a directory; else FileNotFoundError listing what its parent holds."""
    folder = Path(folder)
    if not folder.is_dir():
        hint = ""
        if folder.parent.is_dir():
            present = sorted(p.name for p in folder.parent.iterdir() if p.is_dir())
            hint = f" ({folder.parent} has: {', '.join(present) or 'no subfolders'})"
        raise FileNotFoundError(f"{folder}: {what} folder not found{hint}")
    return folder


def find_weights(folder: Path, flax_name: str, pt_name: str, prefer: str, variant: str | None) -> tuple[list[Path], str]:
    """Picks the weight file(s): returns (paths, "msgpack" | "safetensors")."""
    if prefer not in ("auto", "msgpack", "safetensors"):
        raise ValueError(f"weights must be 'auto', 'msgpack' or 'safetensors', got {prefer!r}")

    def variant_name(name: str) -> str:
        stem, ext = name.rsplit(".", 1)
        return f"{stem}.{variant}.{ext}" if variant else name

    msgpack = folder / variant_name(flax_name)
    single = folder / variant_name(pt_name)
    index = folder / variant_name(pt_name + ".index.json")  # diffusers: *.safetensors.index.fp16.json
    found: dict[str, list[Path]] = {}
    if msgpack.is_file():
        found["msgpack"] = [msgpack]
    if single.is_file():
        found["safetensors"] = [single]
    elif index.is_file():
        found["safetensors"] = shards(index)
    order = ("msgpack", "safetensors") if prefer == "auto" else (prefer,)
    for fmt in order:
        if fmt in found:
            return found[fmt], fmt
    present = sorted(p.name for p in folder.iterdir())
    pickles = [p for p in present if p.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = (
        f" It has {', '.join(pickles)}: PyTorch pickles cannot be read without torch; save them as "
        "safetensors (diffusers `save_pretrained(..., safe_serialization=True)`)."
        if pickles
        else ""
    )
    wanted = " or ".join(str(folder / n) for n in ([msgpack.name, single.name] if prefer == "auto" else
                                                    [msgpack.name if prefer == "msgpack" else single.name]))
    raise FileNotFoundError(f"{folder}: no weights: expected {wanted}; found {present}.{hint}")


def shards(index: Path) -> list[Path]:
    """The shard files a safetensors `.index.json` names (each must exist)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{index}: not a safetensors index (needs a 'weight_map' object): {err}") from None
    paths = [index.parent / name for name in sorted(set(weight_map.values()))]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{index}: lists shard {path.name}, which is missing")
    return paths


def read_safetensors(paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """All tensors of one or more safetensors files as host numpy arrays (bfloat16 via ml_dtypes).

    Read with the numpy framework so nothing lands on an accelerator before it is converted.
    """
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, np.ndarray] = {}
    for path in paths:
        try:
            with safe_open(str(path), framework="numpy") as handle:
                for key in handle.keys():
                    tensors[key] = handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    return tensors


def read_msgpack(path: Path) -> dict:
    """A Flax msgpack parameter file as a nested dict of numpy arrays; errors name the file."""
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several unrelated types on corrupt input
        raise ValueError(f"{path}: not a readable Flax msgpack file ({type(err).__name__}: {err})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a msgpack map of parameters, got {type(tree).__name__}")
    return tree


def check_tree(tree: Mapping, expected: Mapping, source: str) -> None:
    """Raises `LayoutError` unless `tree` has exactly the keys and shapes of `expected`."""
    flat, want = flatten_dict(dict(tree)), flatten_dict(dict(expected))
    missing = sorted("/".join(k) for k in want.keys() - flat.keys())
    unexpected = sorted("/".join(k) for k in flat.keys() - want.keys())
    mismatched = [
        f"{'/'.join(key)}: shape {tuple(np.shape(flat[key]))}, config.json implies {tuple(spec.shape)}"
        for key, spec in want.items()
        if key in flat and tuple(np.shape(flat[key])) != tuple(spec.shape)
    ]
    pt_layout.raise_if_mismatched(source, missing, unexpected, mismatched)


def cast_params(params: Any, param_dtype: DType) -> Any:
    """Floating leaves -> `param_dtype` as jax arrays; other leaves unchanged."""

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(param_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(cast, params)


