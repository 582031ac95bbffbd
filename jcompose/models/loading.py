"""Local model folders -> Flax modules and params, and back (PyTorch is never imported).

A base model is a folder in the diffusers layout::

    <root>/unet/ vae/ text_encoder/ tokenizer/ scheduler/ [controlnet/]

Each model subfolder holds `config.json` and weights as diffusers/transformers Flax msgpack
(`diffusion_flax_model.msgpack`, `flax_model.msgpack`) or PyTorch safetensors
(`diffusion_pytorch_model.safetensors`, `model.safetensors`, optionally sharded with an
`.index.json`), converted here in numpy. Supported bases: SD 1.5 (4-channel UNet), SD 1.5
inpainting (9-channel UNet), SD 2.1-base (1024-d context, linear projections); plus DINOv2
(transformers Flax) and ControlNets, either loaded or initialised from a UNet.

Every function returns `Loaded(module, params, config, path)`: call diffusers modules as
``module.apply({"params": params}, ...)`` and transformers models as ``module(..., params=params)``.
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
from flax.traverse_util import flatten_dict

from jcompose.models import pt_layout
from jcompose.models.diffusers_config import (
    CONTROLNET,
    UNET,
    VAE,
    ComponentKind,
    ConfigError,
    flax_kwargs,
    kind_of_module,
    pytorch_config,
    read_config,
)

DIFFUSERS_FLAX_WEIGHTS = "diffusion_flax_model.msgpack"
DIFFUSERS_PT_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_FLAX_WEIGHTS = "flax_model.msgpack"
TRANSFORMERS_PT_WEIGHTS = "model.safetensors"

PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
KINDS_BY_FOLDER = {"unet": UNET, "vae": VAE, "controlnet": CONTROLNET}

DType = Any


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A module with its parameters.

    Attributes:
      module: a diffusers Flax `nn.Module` (call with ``module.apply({"params": params}, ...)``)
        or a transformers `FlaxPreTrainedModel` (call with ``module(..., params=params)``).
      params: nested dict of jax arrays in the Flax layout.
      config: the folder's config.json as read.
      path: the folder it came from (None when built in memory).
    """

    module: Any
    params: Any
    config: dict
    path: Path | None


def _require_dir(folder: str | Path, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        hint = ""
        if folder.parent.is_dir():
            present = sorted(p.name for p in folder.parent.iterdir() if p.is_dir())
            hint = f" ({folder.parent} has: {', '.join(present) or 'no subfolders'})"
        raise FileNotFoundError(f"{folder}: {what} folder not found{hint}")
    return folder


def _find_weights(folder: Path, flax_name: str, pt_name: str, prefer: str, variant: str | None) -> tuple[list[Path], str]:
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
        found["safetensors"] = _shards(index)
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


def _shards(index: Path) -> list[Path]:
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


def _read_msgpack(path: Path) -> dict:
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


# ----------------------------------------------------------------------------- diffusers modules


def abstract_params(module: Any, conditioning_channels: int = 3) -> dict:
    """Shapes and dtypes of a diffusers Flax module's parameters, computed without any FLOPs."""
    kind = kind_of_module(module)
    rng = jax.random.PRNGKey(0)
    if kind is CONTROLNET:
        size = module.sample_size

        def init():
            rngs = {"params": rng, "dropout": rng}
            return module.init(
                rngs,
                jnp.zeros((1, module.in_channels, size, size)),
                jnp.ones((1,), jnp.int32),
                jnp.zeros((1, 1, module.cross_attention_dim)),
                jnp.zeros((1, conditioning_channels, size * 8, size * 8)),
            )["params"]

        return jax.eval_shape(init)
    return jax.eval_shape(module.init_weights, rng)


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
    folder = _require_dir(folder, kind.name)
    config = read_config(folder)
    kwargs = flax_kwargs(config, kind, folder / "config.json")
    for key, value in (expect or {}).items():
        actual = config.get(key, getattr(kind.flax_class, key, None))
        if _as_tuple(actual) != _as_tuple(value):
            raise ConfigError(f"{folder / 'config.json'}: {key} = {actual!r}, but this use needs {key} = {value!r}")
    module = kind.flax_class(**kwargs, dtype=dtype)
    expected = abstract_params(module, conditioning_channels=config.get("conditioning_channels", 3))
    paths, fmt = _find_weights(folder, DIFFUSERS_FLAX_WEIGHTS, DIFFUSERS_PT_WEIGHTS, weights, variant)
    if fmt == "msgpack":
        params = _read_msgpack(paths[0])
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


def controlnet_like(unet: Any, conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256)) -> Any:
    """The FlaxControlNetModel whose encoder has the architecture of a Flax UNet module."""
    from diffusers import FlaxControlNetModel

    return FlaxControlNetModel(
        sample_size=unet.sample_size,
        in_channels=unet.in_channels,
        down_block_types=unet.down_block_types,
        only_cross_attention=unet.only_cross_attention,
        block_out_channels=unet.block_out_channels,
        layers_per_block=unet.layers_per_block,
        attention_head_dim=unet.attention_head_dim,
        num_attention_heads=unet.num_attention_heads,
        cross_attention_dim=unet.cross_attention_dim,
        use_linear_projection=unet.use_linear_projection,
        flip_sin_to_cos=unet.flip_sin_to_cos,
        freq_shift=unet.freq_shift,
        conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
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
    module = controlnet_like(unet.module, conditioning_embedding_out_channels)
    expected = abstract_params(module, conditioning_channels)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    fresh = jax.jit(
        lambda key: _init_conditioning_embedding(module, key, conditioning_channels)
    )(rng)
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
    config = pytorch_config(module, conditioning_channels)
    return Loaded(module, cast_params(params, param_dtype), config, None)


def _init_conditioning_embedding(module: Any, rng: jax.Array, channels: int) -> dict:
    from diffusers.models.controlnets.controlnet_flax import FlaxControlNetConditioningEmbedding

    embedding = FlaxControlNetConditioningEmbedding(
        conditioning_embedding_channels=module.block_out_channels[0],
        block_out_channels=module.conditioning_embedding_out_channels,
    )
    size = module.sample_size * 8
    return embedding.init(rng, jnp.zeros((1, size, size, channels)))["params"]


def export_diffusers(
    module: Any, params: Any, out_dir: str | Path, *, formats: Iterable[str] = ("safetensors",), dtype: DType = np.float32
) -> Path:
    """Writes a UNet / ControlNet / VAE in the diffusers layout.

    Args:
      module, params: a diffusers Flax module and its parameters.
      out_dir: created if needed; receives `config.json` (PyTorch class name, PyTorch keys) and,
        per entry of `formats`, `diffusion_pytorch_model.safetensors` (PyTorch key names and
        layouts: loads with diffusers PyTorch `from_pretrained`) and/or
        `diffusion_flax_model.msgpack` (loads with jcompose and diffusers Flax).
      dtype: numpy dtype of the written tensors (float32 default; np.float16 halves the size).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    host = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), jax.device_get(params))
    conditioning_channels = None
    if kind_of_module(module) is CONTROLNET:
        conditioning_channels = host["controlnet_cond_embedding"]["conv_in"]["kernel"].shape[2]
    config = pytorch_config(module, conditioning_channels)
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


def load_transformers_model(
    folder: str | Path,
    model_class: type,
    input_shape: tuple[int, ...],
    *,
    dtype: DType = jnp.float32,
    param_dtype: DType = jnp.float32,
    weights: str = "auto",
    what: str = "model",
) -> Loaded:
    """Loads a transformers Flax model from `flax_model.msgpack` or a PyTorch `model.safetensors`.

    Weights are read and checked here (transformers itself only warns about missing or unused
    weights, and its PyTorch-safetensors path needs initialised random params first).

    Args:
      folder: holds config.json and the weights.
      model_class: e.g. `transformers.FlaxCLIPTextModel`.
      input_shape: dummy input shape for tracing the parameter shapes.
      dtype, param_dtype: compute and storage dtypes.
      weights: "auto" (msgpack if present, else safetensors), "msgpack" or "safetensors".
      what: the component's name in errors.
    """
    folder = _require_dir(folder, what)
    config = read_config(folder)
    expected_type = model_class.config_class.model_type
    if config.get("model_type") not in (None, expected_type):
        raise ConfigError(
            f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, expected {expected_type!r} for {what}"
        )
    try:
        model_config = model_class.config_class.from_dict(config)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{folder / 'config.json'}: not a valid {model_class.config_class.__name__} ({err})") from None
    model = model_class(model_config, dtype=dtype, _do_init=False)
    expected = jax.eval_shape(lambda: model.init_weights(jax.random.PRNGKey(0), input_shape))
    paths, fmt = _find_weights(folder, TRANSFORMERS_FLAX_WEIGHTS, TRANSFORMERS_PT_WEIGHTS, weights, None)
    if fmt == "msgpack":
        params = _read_msgpack(paths[0])
        check_tree(params, expected, str(paths[0]))
    else:
        prefix = model_class.base_model_prefix

        def naming(key):
            return pt_layout.transformers_keys(key, prefix)

        source = str(paths[0]) if len(paths) == 1 else f"{folder} ({len(paths)} safetensors shards)"
        params = pt_layout.state_dict_to_flax(read_safetensors(paths), expected, source, naming=naming,
                                              ignore=("position_ids",))
    return Loaded(model, cast_params(params, param_dtype), config, folder)


def export_transformers(model: Any, params: Any, folder: str | Path, formats: Iterable[str] = ("safetensors",)) -> Path:
    """Writes a transformers Flax model's config.json and weights.

    "safetensors" writes `model.safetensors` with PyTorch names and layouts (loads in
    transformers PyTorch and, torch-free, in jcompose); "msgpack" writes `flax_model.msgpack`.
    transformers' Flax loader prefers the msgpack when a folder has both.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    host = jax.device_get(params)
    for fmt in formats:
        if fmt == "msgpack":
            (folder / TRANSFORMERS_FLAX_WEIGHTS).write_bytes(serialization.msgpack_serialize(host))
        elif fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file(pt_layout.transformers_state_dict(host), str(folder / TRANSFORMERS_PT_WEIGHTS),
                      metadata={"format": "pt"})
        else:
            raise ValueError(f"unknown weight format {fmt!r}: use 'safetensors' and/or 'msgpack'")
    return folder


def load_text_encoder(folder: str | Path, **kwargs) -> Loaded:
    """CLIP text encoder (SD 1.5: CLIP ViT-L/14 text, 768-d; SD 2.x: OpenCLIP-H text, 1024-d)."""
    from transformers import FlaxCLIPTextModel

    return load_transformers_model(folder, FlaxCLIPTextModel, (1, 1), what="text_encoder", **kwargs)


def load_dinov2(folder: str | Path, **kwargs) -> Loaded:
    """DINOv2 image encoder (AnyDoor's ID extractor: ViT-g/14, 1536-d, 257 tokens at 224 px)."""
    from transformers import FlaxDinov2Model

    config = read_config(_require_dir(folder, "dinov2"))
    size = config.get("image_size", 224)
    return load_transformers_model(folder, FlaxDinov2Model, (1, size, size, config.get("num_channels", 3)),
                                   what="dinov2", **kwargs)


def load_tokenizer(folder: str | Path):
    """The CLIP BPE tokenizer of a `tokenizer/` folder (vocab.json + merges.txt)."""
    from transformers import CLIPTokenizer

    folder = _require_dir(folder, "tokenizer")
    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name} (a CLIP tokenizer folder has vocab.json and merges.txt)")
    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder}: not a readable CLIP tokenizer ({err})") from None


# ------------------------------------------------------------------------------------ scheduler


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """The noise schedule of a base model (`scheduler/scheduler_config.json`).

    Only the fields that define the training-time forward process and the sampler's timestep
    grid; samplers themselves live in `jcompose.diffusion`.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False


_SCHEDULER_CHOICES = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "timestep_spacing": ("leading", "trailing", "linspace"),
}


def load_scheduler_config(folder: str | Path) -> SchedulerConfig:
    """Reads `scheduler_config.json`; keys of other scheduler classes (e.g. PNDM's) are ignored."""
    folder = _require_dir(folder, "scheduler")
    path = folder / "scheduler_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no scheduler_config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if raw.get("trained_betas") is not None:
        raise ConfigError(f"{path}: trained_betas is set; jcompose supports parametric beta schedules only")
    fields = {f.name: f for f in dataclasses.fields(SchedulerConfig)}
    values = {k: v for k, v in raw.items() if k in fields}
    for key, choices in _SCHEDULER_CHOICES.items():
        if key in values and values[key] not in choices:
            raise ConfigError(f"{path}: {key} = {values[key]!r}; expected one of {choices}")
    return SchedulerConfig(**values)


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
    root = _require_dir(root, "base model")
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
