"""Local model folders -> Flax modules and params, and back (PyTorch is never imported).

A base model is a folder in the diffusers layout::

    <root>/unet/ vae/ text_encoder/ tokenizer/ scheduler/ [controlnet/]

Each model subfolder holds `config.json` and weights as diffusers/transformers Flax msgpack
(`diffusion_flax_model.msgpack`, `flax_model.msgpack`) or PyTorch safetensors
(`diffusion_pytorch_model.safetensors`, `model.safetensors`, optionally sharded with an
`.index.json`), converted here in numpy. Supported bases: SD 1.5 (4-channel UNet), SD 1.5
inpainting (9-channel UNet), SD 2.1-base (1024-d context, linear projections); plus DINOv2
(transformers Flax) and ControlNets, either loaded or initialised from a UNet.

Every function returns `Loaded(module, params, config, path)` with one of jcompose's own linen
modules (`jcompose.models.unet/controlnet/vae`, the encoders in `clip`/`vit`): call it as
``module.apply({"params": params}, ...)``. Parameter trees are those of diffusers' / transformers'
former Flax classes, so their msgpack files load unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jcompose.models import encoders, pt_layout
from jcompose.models.controlnet import ConditioningEmbedding, ControlNetModel
from jcompose.models.diffusers_config import (
    CONTROLNET,
    UNET,
    VAE,
    ComponentKind,
    ConfigError,
    kind_of_module,
    module_kwargs,
    pytorch_config,
    read_config,
)
from jcompose.models.files import (
    DIFFUSERS_FLAX_WEIGHTS,
    DIFFUSERS_PT_WEIGHTS,
    Loaded,
    cast_params,
    check_tree,
    find_weights,
    read_msgpack,
    read_safetensors,
    reading_abstract,
    require_dir,
    zeros_of,
)
from jcompose.models.scheduler_config import SchedulerConfig, load_scheduler_config  # noqa: F401 (public here too)

PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
KINDS_BY_FOLDER = {"unet": UNET, "vae": VAE, "controlnet": CONTROLNET}

DType = Any

# ----------------------------------------------------------------------------- diffusers modules


_ABSTRACT_PARAMS: dict[str, dict] = {}  # module repr (its class and every field) -> shapes


def abstract_params(module: Any) -> dict:
    """Shapes and dtypes of a UNet / ControlNet / VAE module's parameters, computed without any FLOPs
    (tracing a full-size UNet's init takes seconds, so each architecture is traced once per process)."""
    key = f"{type(module).__module__}.{type(module).__qualname__}: {module!r}"
    if key not in _ABSTRACT_PARAMS:
        _ABSTRACT_PARAMS[key] = _trace_params(module)
    return _ABSTRACT_PARAMS[key]


def _trace_params(module: Any) -> dict:
    kind = kind_of_module(module)
    rng = jax.random.PRNGKey(0)
    if kind is VAE:
        size = 2 ** len(module.block_out_channels)
        args = (jnp.zeros((1, module.in_channels, size, size)),)
    else:
        size = 2 ** len(module.down_block_types)  # divisible by every level's stride
        args = (jnp.zeros((1, module.in_channels, size, size)), jnp.ones((1,), jnp.int32),
                jnp.zeros((1, 1, module.cross_attention_dim)))
        if kind is CONTROLNET:
            factor = 2 ** (len(module.conditioning_embedding_out_channels) - 1)
            args += (jnp.zeros((1, module.conditioning_channels, size * factor, size * factor)),)
    return jax.eval_shape(lambda: module.init(rng, *args)["params"])


def load_component(
    folder: str | Path,
    kind: ComponentKind,
    *,
    dtype: DType = jnp.float32,
    param_dtype: DType = jnp.float32,
    weights: str = "auto",
    variant: str | None = None,
    expect: Mapping[str, Any] | None = None,
) -> Loaded:
    """Loads a diffusers UNet / ControlNet / VAE folder.

    Args:
      folder: holds config.json and the weights.
      kind: `diffusers_config.UNET`, `CONTROLNET` or `VAE`.
      dtype: compute dtype of the module (activations), e.g. `jnp.bfloat16`.
      param_dtype: dtype the parameters are stored in.
      weights: "auto" (msgpack if present, else safetensors), "msgpack" or "safetensors".
      variant: weight-file variant, e.g. "fp16" for `diffusion_pytorch_model.fp16.safetensors`.
      expect: config values the caller requires, e.g. ``{"in_channels": 9}`` for an inpainting
        UNet; a mismatch raises `ConfigError`.
    """
    folder = require_dir(folder, kind.name)
    config = read_config(folder)
    kwargs = module_kwargs(config, kind, folder / "config.json")
    for key, value in (expect or {}).items():
        actual = config.get(key, getattr(kind.module_class, key, None))
        if _as_tuple(actual) != _as_tuple(value):
            raise ConfigError(f"{folder / 'config.json'}: {key} = {actual!r}, but this use needs {key} = {value!r}")
    module = kind.module_class(**kwargs, dtype=dtype)
    expected = abstract_params(module)
    if reading_abstract():  # `files.abstract_weights`: the config's shapes, no weight file
        return Loaded(module, cast_params(zeros_of(expected), param_dtype), config, folder)
    paths, fmt = find_weights(folder, DIFFUSERS_FLAX_WEIGHTS, DIFFUSERS_PT_WEIGHTS, weights, variant)
    if fmt == "msgpack":
        params = read_msgpack(paths[0])
        check_tree(params, expected, str(paths[0]))
    else:
        source = str(paths[0]) if len(paths) == 1 else f"{folder} ({len(paths)} safetensors shards)"
        params = pt_layout.state_dict_to_flax(read_safetensors(paths), expected, source)
    return Loaded(module, cast_params(params, param_dtype), config, folder)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def load_unet(folder: str | Path, **kwargs) -> Loaded:
    """`load_component` for a UNet folder (SD 1.5, SD 1.5 inpainting, SD 2.1-base)."""
    return load_component(folder, UNET, **kwargs)


def load_controlnet(folder: str | Path, **kwargs) -> Loaded:
    """`load_component` for a ControlNet folder (any number of conditioning channels)."""
    return load_component(folder, CONTROLNET, **kwargs)


def load_vae(folder: str | Path, **kwargs) -> Loaded:
    """`load_component` for an AutoencoderKL folder."""
    return load_component(folder, VAE, **kwargs)


def controlnet_like(unet: Any, conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256), *,
                    conditioning_channels: int = 3, reads_latent: bool = True) -> ControlNetModel:
    """The ControlNet module whose encoder has the architecture of a UNet module.

    Args:
      unet: a `UNet2DConditionModel` module.
      conditioning_embedding_out_channels: widths of the conditioning embedding's stages.
      conditioning_channels: channels of the conditioning image (RGB 3; AnyDoor's hint 4).
      reads_latent: False for a branch that does not see the noisy latent (AnyDoor's extractor).
    """
    return ControlNetModel(
        sample_size=unet.sample_size,
        in_channels=unet.in_channels,
        conditioning_channels=conditioning_channels,
        down_block_types=tuple(unet.down_block_types),
        only_cross_attention=unet.only_cross_attention,
        block_out_channels=tuple(unet.block_out_channels),
        layers_per_block=unet.layers_per_block,
        attention_head_dim=unet.attention_head_dim,
        num_attention_heads=unet.num_attention_heads,
        cross_attention_dim=unet.cross_attention_dim,
        use_linear_projection=unet.use_linear_projection,
        transformer_layers_per_block=unet.transformer_layers_per_block,
        flip_sin_to_cos=unet.flip_sin_to_cos,
        freq_shift=unet.freq_shift,
        norm_num_groups=unet.norm_num_groups,
        norm_eps=unet.norm_eps,
        conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
        reads_latent=reads_latent,
        dtype=unet.dtype,
    )


def controlnet_from_unet(
    unet: Loaded,
    *,
    conditioning_channels: int = 3,
    conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
    rng: jax.Array | None = None,
) -> Loaded:
    """A ControlNet initialised from a UNet's encoder, as diffusers' `ControlNetModel.from_unet`.

    conv_in, the time embedding, the down blocks and the mid block are copies of the UNet's; the
    conditioning embedding is freshly initialised (its last conv zero) and every zero convolution
    (`controlnet_down_blocks_*`, `controlnet_mid_block`) is zero, so the ControlNet's residuals
    are exactly zero until it is trained.

    Args:
      unet: a loaded UNet (any of the supported bases; its `in_channels` is kept).
      conditioning_channels: channels of the conditioning image (RGB: 3).
      conditioning_embedding_out_channels: channels of the conditioning embedding's stages; 4
        entries downsample by 8, the SD VAE factor.
      rng: key for the conditioning embedding (default PRNGKey(0)).
    """
    module = controlnet_like(unet.module, conditioning_embedding_out_channels,
                             conditioning_channels=conditioning_channels)
    expected = abstract_params(module)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    fresh = jax.jit(lambda key: _init_conditioning_embedding(module, key))(rng)
    params = {}
    for name, spec in expected.items():
        if name == "controlnet_cond_embedding":
            params[name] = fresh
        elif name in unet.params:
            params[name] = unet.params[name]
        else:  # zero convolutions
            params[name] = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), spec)
    param_dtype = jax.tree_util.tree_leaves(unet.params)[0].dtype
    check_tree(params, expected, "controlnet_from_unet")
    return Loaded(module, cast_params(params, param_dtype), pytorch_config(module), None)


def _init_conditioning_embedding(module: ControlNetModel, rng: jax.Array) -> dict:
    """Fresh conditioning-embedding params (PyTorch-like default init, zero conv_out)."""
    embedding = ConditioningEmbedding(module.block_out_channels[0], module.conditioning_embedding_out_channels)
    size = 2 ** len(module.conditioning_embedding_out_channels)
    return embedding.init(rng, jnp.zeros((1, size, size, module.conditioning_channels)))["params"]


def export_diffusers(
    module: Any, params: Any, out_dir: str | Path, *, formats: Iterable[str] = ("safetensors",), dtype: DType = np.float32
) -> Path:
    """Writes a UNet / ControlNet / VAE in the diffusers layout.

    Args:
      module, params: a jcompose UNet / ControlNet / VAE module and its parameters.
      out_dir: created if needed; receives `config.json` (PyTorch class name, PyTorch keys) and,
        per entry of `formats`, `diffusion_pytorch_model.safetensors` (PyTorch key names and
        layouts: loads with diffusers PyTorch `from_pretrained`) and/or
        `diffusion_flax_model.msgpack` (jcompose's Flax layout).
      dtype: numpy dtype of the written tensors (float32 default; np.float16 halves the size).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    host = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), jax.device_get(params))
    config = pytorch_config(module)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for fmt in formats:
        if fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file(pt_layout.flax_to_state_dict(host), str(out_dir / DIFFUSERS_PT_WEIGHTS), metadata={"format": "pt"})
        elif fmt == "msgpack":
            (out_dir / DIFFUSERS_FLAX_WEIGHTS).write_bytes(serialization.msgpack_serialize(host))
        else:
            raise ValueError(f"unknown weight format {fmt!r}: use 'safetensors' and/or 'msgpack'")
    return out_dir


# --------------------------------------------------------------------------- transformers models


def load_text_encoder(folder: str | Path, **kwargs) -> Loaded:
    """CLIP text encoder (SD 1.5: CLIP ViT-L/14 text, 768-d; SD 2.x: OpenCLIP-H text, 1024-d).

    ``module.apply({"params": params}, ids[, attention_mask]).last_hidden_state`` is the UNet context.
    """
    return encoders.load_clip_text(folder, **kwargs)


def load_dinov2(folder: str | Path, **kwargs) -> Loaded:
    """DINOv2 image encoder (AnyDoor's ID extractor: ViT-g/14, 1536-d, 257 tokens at 224 px); NHWC pixels."""
    return encoders.load_dinov2(folder, **kwargs)


def load_tokenizer(folder: str | Path):
    """The CLIP BPE tokenizer of a `tokenizer/` folder (vocab.json + merges.txt)."""
    from transformers import CLIPTokenizer

    folder = require_dir(folder, "tokenizer")
    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name} (a CLIP tokenizer folder has vocab.json and merges.txt)")
    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder}: not a readable CLIP tokenizer ({err})") from None


# ------------------------------------------------------------------------------------- pipeline


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """The components of a base-model folder; absent ones are None."""

    root: Path
    unet: Loaded | None = None
    vae: Loaded | None = None
    text_encoder: Loaded | None = None
    tokenizer: Any = None
    scheduler: SchedulerConfig | None = None
    controlnet: Loaded | None = None


def load_pipeline(
    root: str | Path,
    components: Sequence[str] = PIPELINE_COMPONENTS,
    *,
    dtype: DType = jnp.float32,
    param_dtype: DType = jnp.float32,
    weights: str = "auto",
    unet_expect: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Loads the named components of a diffusers-layout base-model folder.

    Args:
      root: the folder holding `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`
        (and `controlnet/` if asked for).
      components: which to load; any of "unet", "vae", "text_encoder", "tokenizer", "scheduler",
        "controlnet".
      dtype, param_dtype: compute and storage dtypes of the networks.
      weights: "auto", "msgpack" or "safetensors" (see `load_component`).
      unet_expect: config values the UNet must have (e.g. ``{"in_channels": 9}``).
    """
    root = require_dir(root, "base model")
    unknown = set(components) - set(PIPELINE_COMPONENTS) - {"controlnet"}
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; choose from {PIPELINE_COMPONENTS + ('controlnet',)}")
    nets = dict(dtype=dtype, param_dtype=param_dtype)
    loaded: dict[str, Any] = {}
    for name in components:
        sub = root / name
        if name == "unet":
            loaded[name] = load_unet(sub, weights=weights, expect=unet_expect, **nets)
        elif name in ("vae", "controlnet"):
            loaded[name] = load_component(sub, KINDS_BY_FOLDER[name], weights=weights, **nets)
        elif name == "text_encoder":
            loaded[name] = load_text_encoder(sub, weights=weights, **nets)
        elif name == "tokenizer":
            loaded[name] = load_tokenizer(sub)
        elif name == "scheduler":
            loaded[name] = load_scheduler_config(sub)
    if "unet" in loaded and "text_encoder" in loaded:
        context = loaded["text_encoder"].config.get("hidden_size")
        if context != loaded["unet"].module.cross_attention_dim:
            raise ConfigError(
                f"{root}: text_encoder hidden_size {context} != unet cross_attention_dim "
                f"{loaded['unet'].module.cross_attention_dim}; the folders belong to different bases"
            )
    return Pipeline(root=root, **loaded)
