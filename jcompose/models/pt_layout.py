"""Flax <-> PyTorch parameter layouts of diffusers modules, in numpy (torch is never imported).

diffusers' Flax modules keep the PyTorch module tree with two systematic differences:

* names: a PyTorch list index ``down_blocks.0`` is the Flax submodule ``down_blocks_0``;
* leaves: PyTorch ``weight`` is Flax ``kernel`` (Dense: transposed; Conv: OIHW -> HWIO),
  ``scale`` (norms) or ``embedding``; ``bias`` is ``bias``.

The mapping here goes from each *expected* Flax key to its PyTorch key, so loading reports every
missing or unexpected tensor by name instead of failing deep inside a conversion, and export uses
the very same rule in reverse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

FlaxKey = tuple[str, ...]

# Flax segments that end in `_<digit>` as part of their PyTorch name (not a list index).
_NAMES_WITH_DIGIT_SUFFIX = frozenset({"linear_1", "linear_2"})

# Attention projections of the VAE's attention block: Flax names -> current PyTorch names, and
# the names PyTorch checkpoints used before diffusers 0.14 (still found in old VAE files).
_VAE_ATTENTION_NAMES = {
    "query": ("to_q", "query"),
    "key": ("to_k", "key"),
    "value": ("to_v", "value"),
    "proj_attn": ("to_out.0", "proj_attn"),
}

_ROOTS_V5_DROPS = frozenset({"text_model", "vision_model"})

_INDEX_SUFFIX = re.compile(r"^(.*[A-Za-z])_(\d+)$")


class LayoutError(ValueError):
    """A PyTorch state dict does not match the Flax module it is loaded into."""


def _pt_segment(segment: str) -> str:
    if segment in _NAMES_WITH_DIGIT_SUFFIX:
        return segment
    match = _INDEX_SUFFIX.match(segment)
    return f"{match.group(1)}.{match.group(2)}" if match else segment


def pytorch_keys(flax_key: FlaxKey) -> list[str]:
    """PyTorch state-dict names a Flax parameter may have, preferred (current diffusers) first.

    Example: ``('down_blocks_0', 'attentions_0', 'proj_in', 'kernel')`` ->
    ``['down_blocks.0.attentions.0.proj_in.weight']``.
    """
    *modules, leaf = flax_key
    pt_leaf = "bias" if leaf == "bias" else "weight"
    if modules and modules[-1] in _VAE_ATTENTION_NAMES:
        prefix = ".".join(_pt_segment(s) for s in modules[:-1])
        return [f"{prefix}.{name}.{pt_leaf}" for name in _VAE_ATTENTION_NAMES[modules[-1]]]
    return [".".join([*(_pt_segment(s) for s in modules), pt_leaf])]


def to_flax_layout(flax_key: FlaxKey, tensor: np.ndarray) -> np.ndarray:
    """PyTorch tensor -> the layout of the Flax leaf ``flax_key``."""
    if flax_key[-1] == "kernel":
        if tensor.ndim == 4:  # conv: (out, in, kh, kw) -> (kh, kw, in, out)
            return tensor.transpose(2, 3, 1, 0)
        if tensor.ndim == 2:  # dense: (out, in) -> (in, out)
            return tensor.T
    return tensor


def to_pytorch_layout(flax_key: FlaxKey, array: np.ndarray) -> np.ndarray:
    """Flax leaf -> the PyTorch tensor layout (inverse of `to_flax_layout`)."""
    if flax_key[-1] == "kernel":
        if array.ndim == 4:
            return array.transpose(3, 2, 0, 1)
        if array.ndim == 2:
            return array.T
    return array


def _layout_for_expected(flax_key: FlaxKey, tensor: np.ndarray, expected_shape: tuple) -> np.ndarray:
    out = to_flax_layout(flax_key, tensor)
    # Old VAE attention checkpoints stored 1x1 convs; current ones store linear weights. The Flax
    # attention block uses Dense, so squeeze a (out, in, 1, 1) conv weight to (in, out).
    if out.ndim == 4 and len(expected_shape) == 2 and out.shape[:2] == (1, 1):
        out = out[0, 0]
    return out


def transformers_keys(flax_key: FlaxKey, prefix: str = "") -> list[str]:
    """PyTorch names of a transformers Flax parameter (CLIP text, DINOv2).

    transformers' Flax modules name list items by bare index (``layers/0``), so names join with
    dots unchanged. Checkpoints saved from a model with a task head carry the base model's
    prefix (e.g. ``dinov2.``): accepted as a second choice.
    """
    *modules, leaf = flax_key
    name = ".".join([*modules, "weight" if leaf in ("kernel", "scale", "embedding") else leaf])
    names = [name, f"{prefix}.{name}"] if prefix else [name]
    if modules and modules[0] in _ROOTS_V5_DROPS:
        # transformers 5 saves CLIPTextModel / CLIPVisionModel without their `text_model.` /
        # `vision_model.` root (and loads both spellings); published SD folders keep the root.
        names.append(name.split(".", 1)[1])
    return names


def state_dict_to_flax(
    state_dict: Mapping[str, np.ndarray],
    expected: Mapping[str, Any],
    source: str,
    naming=pytorch_keys,
    ignore: tuple[str, ...] = (),
) -> dict:
    """Converts a PyTorch-named state dict of numpy arrays to a Flax parameter tree.

    Args:
      state_dict: PyTorch key -> numpy array (e.g. from `safetensors.numpy.load_file`).
      expected: the Flax parameter tree the module expects; leaves need only `.shape` and
        `.dtype` (e.g. `jax.eval_shape` of the module's init).
      source: the file the tensors came from, named in errors.
      naming: Flax key -> candidate PyTorch names (`pytorch_keys` for diffusers modules,
        `transformers_keys` for transformers models).
      ignore: suffixes of PyTorch names that are buffers, not parameters (e.g. "position_ids").

    Returns:
      The Flax parameter tree (nested dict of numpy arrays, the dtype of `expected`).

    Raises:
      LayoutError: naming every missing or unexpected tensor, or the first shape mismatch.
    """
    flat_expected = flatten_dict(dict(expected))
    remaining = dict(state_dict)
    converted, missing, mismatched = {}, [], []
    for flax_key, want in flat_expected.items():
        candidates = naming(flax_key)
        pt_key = next((k for k in candidates if k in remaining), None)
        if pt_key is None:
            missing.append(candidates[0])
            continue
        original = np.asarray(remaining.pop(pt_key))
        tensor = _layout_for_expected(flax_key, original, tuple(want.shape))
        if tuple(tensor.shape) != tuple(want.shape):
            mismatched.append(
                f"{pt_key}: shape {original.shape} (Flax layout {tuple(tensor.shape)}), config.json implies "
                f"{tuple(want.shape)}"
            )
            continue
        converted[flax_key] = tensor.astype(want.dtype, copy=False)
    unexpected = sorted(k for k in remaining if not (ignore and k.endswith(ignore)))
    raise_if_mismatched(source, missing, unexpected, mismatched)
    return unflatten_dict(converted)


def raise_if_mismatched(source: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
    """Raises one `LayoutError` listing every missing, unexpected and wrongly shaped tensor."""
    if missing or unexpected or mismatched:
        raise LayoutError(
            f"{source}: the weights do not match the architecture in config.json "
            "(does config.json belong to these weights?)\n"
            + _listing("tensors with the wrong shape", mismatched)
            + _listing("missing tensors (expected by config.json, absent in the file)", missing)
            + _listing("unexpected tensors (in the file, unknown to the model)", unexpected)
        )


def flax_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax parameter tree -> PyTorch-named state dict (contiguous numpy arrays).

    The names are those of current diffusers PyTorch modules, so `from_pretrained` loads them.
    """
    out = {}
    for flax_key, value in flatten_dict(dict(params)).items():
        array = np.asarray(value)  # np.array, not ascontiguousarray: 0-d stays 0-d
        out[pytorch_keys(flax_key)[0]] = np.array(to_pytorch_layout(flax_key, array), order="C")
    return out


def _listing(title: str, keys: list[str], limit: int = 12) -> str:
    if not keys:
        return ""
    shown = "\n".join(f"    {k}" for k in keys[:limit])
    more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"  {len(keys)} {title}:\n{shown}{more}\n"


def transformers_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """transformers Flax params -> PyTorch state dict (inverse of loading with `transformers_keys`)."""
    return {
        transformers_keys(flax_key)[0]: np.array(to_pytorch_layout(flax_key, np.asarray(value)), order="C")
        for flax_key, value in flatten_dict(dict(params)).items()
    }
