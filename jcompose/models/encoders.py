"""Loading and export of jcompose's transformer encoders (CLIP text, CLIP, ViT, DINOv2), torch-free.

A folder holds a transformers `config.json` and `flax_model.msgpack` (the Flax tree) and/or
`model.safetensors` (PyTorch names, converted with `pt_layout.transformers_keys`). Every loader
returns `files.Loaded(module, params, config, path)` with a jcompose linen module: call it as
``module.apply({"params": params}, ...)``; `config` is the folder's config.json as read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jcompose.models import clip, files, pt_layout, vit
from jcompose.models.diffusers_config import ConfigError

DType = Any

_KIND_NAMES = {"clip_text_model": "a CLIP text encoder", "clip_vision_model": "a CLIP vision tower",
               "clip": "a full CLIP model", "vit": "a ViT (e.g. DINO v1)", "dinov2": "a DINOv2 model"}


def _read(folder: str | Path, what: str, model_types: tuple[str, ...]) -> tuple[Path, dict]:
    folder = files.require_dir(folder, what)
    raw = files.read_config(folder)
    found = raw.get("model_type")
    if found is not None and found not in model_types:
        held = f" (the folder holds {_KIND_NAMES[found]})" if found in _KIND_NAMES else ""
        raise ConfigError(f"{folder / 'config.json'}: model_type is {found!r}{held}; {what} needs "
                          f"model_type {' or '.join(map(repr, model_types))}")
    return folder, raw


def dummy_inputs(module: Any) -> tuple:
    """The smallest inputs that trace every parameter of one of this file's encoder modules."""
    def pixels(config):
        return jnp.zeros((1, config.image_size, config.image_size, config.num_channels))

    if isinstance(module, clip.CLIPTextModel):
        return (jnp.zeros((1, 1), jnp.int32),)
    if isinstance(module, clip.CLIPModel):
        return jnp.zeros((1, 1), jnp.int32), pixels(module.config.vision_config)
    if isinstance(module, (clip.CLIPVisionModel, vit.ViTModel, vit.Dinov2Model)):
        return (pixels(module.config),)
    raise TypeError(f"{type(module).__name__} is not one of jcompose's encoder modules (clip.py, vit.py)")


def abstract_params(module: Any) -> Any:
    """Shapes and dtypes of an encoder module's parameters, computed without any FLOPs."""
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *dummy_inputs(module)))["params"]


def _params(folder: Path, module: Any, weights: str, prefix: str, param_dtype: DType) -> Any:
    """Reads and checks the weights of `folder` against the tree the module's init would make."""
    expected = abstract_params(module)
    if files.reading_abstract():  # `files.abstract_weights`: the config's shapes, no weight file
        return files.cast_params(files.zeros_of(expected), param_dtype)
    paths, fmt = files.find_weights(folder, files.TRANSFORMERS_FLAX_WEIGHTS, files.TRANSFORMERS_PT_WEIGHTS,
                                       weights, None)
    if fmt == "msgpack":
        params = files.read_msgpack(paths[0])
        files.check_tree(params, expected, str(paths[0]))
    else:
        source = str(paths[0]) if len(paths) == 1 else f"{folder} ({len(paths)} safetensors shards)"
        params = pt_layout.state_dict_to_flax(
            files.read_safetensors(paths), expected, source,
            naming=lambda key: pt_layout.transformers_keys(key, prefix), ignore=("position_ids",))
    return files.cast_params(params, param_dtype)


def load_clip_text(folder: str | Path, *, dtype: DType = jnp.float32, param_dtype: DType = jnp.float32,
                   weights: str = "auto", precision: Any = None) -> files.Loaded:
    """A CLIP text encoder folder (SD 1.5: CLIP ViT-L/14 text, 768-d; SD 2.x: OpenCLIP-H, 1024-d).

    ``module.apply({"params": p}, ids (B, L) int[, attention_mask (B, L) 0/1])`` ->
    `clip.EncoderOutput` (last_hidden_state (B, L, D), pooler_output (B, D) at the EOS token).

    Args:
      folder: config.json (model_type clip_text_model) and the weights.
      dtype, param_dtype: compute and storage dtypes.
      weights: "auto" (msgpack if present, else safetensors), "msgpack" or "safetensors".
      precision: matmul precision (None: the backend default; `jax.lax.Precision.HIGHEST` for
        true float32 on accelerators).
    """
    folder, raw = _read(folder, "text_encoder", ("clip_text_model",))
    module = clip.CLIPTextModel(clip.CLIPTextConfig.from_dict(raw, str(folder / "config.json")), dtype=dtype,
                                param_dtype=param_dtype, precision=precision)
    params = _params(folder, module, weights, "", param_dtype)
    return files.Loaded(module, params, raw, folder)


def load_clip(folder: str | Path, *, dtype: DType = jnp.float32, param_dtype: DType = jnp.float32,
              weights: str = "auto", precision: Any = None) -> files.Loaded:
    """A full CLIP folder (model_type clip): both towers, projections and logit_scale.

    Features: ``module.apply({"params": p}, ids, mask, method="get_text_features")`` and
    ``module.apply({"params": p}, pixels_nhwc, method="get_image_features")`` -> (B, projection_dim).
    Arguments as `load_clip_text`.
    """
    folder, raw = _read(folder, "clip", ("clip",))
    config = clip.CLIPConfig.from_dict(raw, str(folder / "config.json"))
    module = clip.CLIPModel(config, dtype=dtype, param_dtype=param_dtype, precision=precision)
    return files.Loaded(module, _params(folder, module, weights, "", param_dtype), raw, folder)


def _has_pooler(folder: Path, weights: str) -> bool:
    if files.reading_abstract():
        return False
    paths, fmt = files.find_weights(folder, files.TRANSFORMERS_FLAX_WEIGHTS, files.TRANSFORMERS_PT_WEIGHTS,
                                       weights, None)
    if fmt == "msgpack":
        return "pooler" in files.read_msgpack(paths[0])
    from safetensors import safe_open

    for path in paths:
        try:
            with safe_open(str(path), framework="numpy") as handle:
                if any(key.split(".")[-3:-2] == ["pooler"] for key in handle.keys()):
                    return True
        except OSError as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    return False


def load_vit(folder: str | Path, *, pooler: bool | None = None, dtype: DType = jnp.float32,
             param_dtype: DType = jnp.float32, weights: str = "auto", precision: Any = None) -> files.Loaded:
    """A transformers ViT folder (model_type vit), e.g. DINO ViT-S/16 for DINO scores.

    ``module.apply({"params": p}, pixels_nhwc)`` -> `clip.EncoderOutput` (last_hidden_state
    (B, 1 + N, D) after the final LayerNorm; pooler_output (B, P) or None).

    Args:
      pooler: None (default) builds the pooler exactly when the weights hold one, so files saved
        with or without `ViTModel`'s pooler both load; True / False require it or its absence.
      other arguments: as `load_clip_text`.
    """
    folder, raw = _read(folder, "vit", ("vit",))
    config = vit.ViTConfig.from_dict(raw, str(folder / "config.json"))
    if pooler is None:
        pooler = _has_pooler(folder, weights)
    module = vit.ViTModel(config, dtype=dtype, param_dtype=param_dtype, precision=precision,
                          add_pooling_layer=pooler)
    return files.Loaded(module, _params(folder, module, weights, "vit", param_dtype), raw, folder)


def load_dinov2(folder: str | Path, *, dtype: DType = jnp.float32, param_dtype: DType = jnp.float32,
                weights: str = "auto", precision: Any = None) -> files.Loaded:
    """A DINOv2 folder (AnyDoor's ID extractor: ViT-g/14, 1536-d, 257 tokens at 224 px).

    ``module.apply({"params": p}, pixels_nhwc)`` -> `clip.EncoderOutput` (last_hidden_state
    (B, 1 + N, D), pooler_output = its CLS (B, D)); any image size (position table resampled as
    transformers PyTorch does). Arguments as `load_clip_text`.
    """
    folder, raw = _read(folder, "dinov2", ("dinov2",))
    config = vit.Dinov2Config.from_dict(raw, str(folder / "config.json"))
    module = vit.Dinov2Model(config, dtype=dtype, param_dtype=param_dtype, precision=precision)
    return files.Loaded(module, _params(folder, module, weights, "dinov2", param_dtype), raw, folder)


def export_encoder(module: Any, params: Any, folder: str | Path, formats: Iterable[str] = ("safetensors",),
                   dtype: DType | None = None) -> Path:
    """Writes one of this file's encoders as a transformers folder.

    Args:
      module: a `clip.CLIPTextModel`, `clip.CLIPVisionModel`, `clip.CLIPModel`, `vit.ViTModel` or
        `vit.Dinov2Model` (its `config.to_dict()` becomes config.json).
      params: its parameter tree.
      folder: created if needed.
      formats: "safetensors" writes `model.safetensors` with PyTorch names and layouts (loads in
        transformers PyTorch `from_pretrained` and in jcompose); "msgpack" writes
        `flax_model.msgpack` (the Flax tree).
      dtype: numpy dtype of the written tensors (default: as in `params`).
    """
    if not hasattr(getattr(module, "config", None), "to_dict"):
        raise TypeError(f"{type(module).__name__} is not one of jcompose's encoder modules (clip.py, vit.py)")
    formats = tuple(formats)
    unknown = set(formats) - {"safetensors", "msgpack"}
    if unknown:
        raise ValueError(f"unknown weight formats {sorted(unknown)}: use 'safetensors' and/or 'msgpack'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(module.config.to_dict(), indent=2, sort_keys=True) + "\n")
    host = jax.tree_util.tree_map(lambda x: np.asarray(x) if dtype is None else np.asarray(x).astype(dtype),
                                  jax.device_get(params))
    if "msgpack" in formats:
        (folder / files.TRANSFORMERS_FLAX_WEIGHTS).write_bytes(serialization.msgpack_serialize(host))
    if "safetensors" in formats:
        from safetensors.numpy import save_file

        save_file(pt_layout.transformers_state_dict(host), str(folder / files.TRANSFORMERS_PT_WEIGHTS),
                  metadata={"format": "pt"})
    return folder
