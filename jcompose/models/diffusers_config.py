"""Reading diffusers `config.json` files into diffusers' Flax classes, refusing silent mismatches.

The Flax UNet, ControlNet and VAE accept a PyTorch config but silently ignore keys they do not
have, and hard-code what those keys would choose (32 GroupNorm groups, eps 1e-5, SiLU, positional
time embedding, ...). A config with a non-default value for such a key would load and compute
something else. `flax_kwargs` therefore compares every ignored key with the value the Flax class
implies and raises `ConfigError` naming the key on any difference.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from diffusers import FlaxAutoencoderKL, FlaxControlNetModel, FlaxUNet2DConditionModel

_ANY = object()  # the key may take any value: it cannot change a float32 Flax forward.

# Keys of the PyTorch UNet2DConditionModel that the Flax UNet/ControlNet do not have, with the
# value their code hard-codes. `_ANY` marks keys that only matter for fp16 PyTorch numerics.
_UNET_IMPLIED: dict[str, Any] = {
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "class_embed_type": None,
    "num_class_embeds": None,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "mid_block_only_cross_attention": None,
    "center_input_sample": False,
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "class_embeddings_concat": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "attention_type": "default",
    "cross_attention_norm": None,
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "reverse_transformer_layers_per_block": None,
    "addition_embed_type_num_heads": 64,
    # SD 2.1 (768) sets it; it upcasts attention to fp32 in PyTorch fp16. jcompose keeps the
    # attention softmax in float32, so it is a no-op here.
    "upcast_attention": _ANY,
}

_CONTROLNET_IMPLIED: dict[str, Any] = {
    **{
        key: _UNET_IMPLIED[key]
        for key in (
            "act_fn", "norm_num_groups", "norm_eps", "resnet_time_scale_shift", "class_embed_type",
            "num_class_embeds", "mid_block_scale_factor", "mid_block_type", "downsample_padding",
            "encoder_hid_dim", "encoder_hid_dim_type", "upcast_attention", "addition_embed_type_num_heads",
        )
    },
    "conditioning_channels": _ANY,  # read from the weights: the cond embedding infers it.
    "global_pool_conditions": False,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "projection_class_embeddings_input_dim": None,
    "transformer_layers_per_block": 1,
}

_VAE_IMPLIED: dict[str, Any] = {
    "force_upcast": _ANY,  # an fp16 PyTorch switch
    "latents_mean": None,
    "latents_std": None,
    "shift_factor": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

_SUPPORTED_BLOCKS = {
    "down_block_types": {"CrossAttnDownBlock2D", "DownBlock2D"},
    "up_block_types": {"CrossAttnUpBlock2D", "UpBlock2D"},
}
_VAE_BLOCKS = {
    "down_block_types": {"DownEncoderBlock2D"},
    "up_block_types": {"UpDecoderBlock2D"},
}


class ConfigError(ValueError):
    """A config.json describes an architecture the Flax class cannot reproduce exactly."""


@dataclasses.dataclass(frozen=True)
class ComponentKind:
    """How one diffusers component maps to its Flax class."""

    name: str  # "unet", "controlnet", "vae"
    flax_class: type
    pytorch_class: str
    implied: dict[str, Any]
    blocks: dict[str, set[str]]
    flax_only: tuple[str, ...]  # Flax fields PyTorch does not know (dropped on export)


UNET = ComponentKind(
    "unet", FlaxUNet2DConditionModel, "UNet2DConditionModel", _UNET_IMPLIED, _SUPPORTED_BLOCKS,
    ("dtype", "split_head_dim", "use_memory_efficient_attention"),
)
CONTROLNET = ComponentKind(
    "controlnet", FlaxControlNetModel, "ControlNetModel", _CONTROLNET_IMPLIED, _SUPPORTED_BLOCKS,
    ("dtype", "dropout", "sample_size"),  # sample_size only sizes Flax's dummy init inputs
)
VAE = ComponentKind("vae", FlaxAutoencoderKL, "AutoencoderKL", _VAE_IMPLIED, _VAE_BLOCKS, ("dtype",))
KINDS = {kind.name: kind for kind in (UNET, CONTROLNET, VAE)}
_BY_PYTORCH_CLASS = {kind.pytorch_class: kind for kind in KINDS.values()}
_BY_FLAX_CLASS = {kind.flax_class: kind for kind in KINDS.values()}


def kind_of_module(module: Any) -> ComponentKind:
    """The component kind of a diffusers Flax module instance."""
    try:
        return _BY_FLAX_CLASS[type(module)]
    except KeyError:
        raise TypeError(
            f"{type(module).__name__} is not one of the exportable diffusers Flax classes "
            f"({', '.join(c.__name__ for c in _BY_FLAX_CLASS)})"
        ) from None


def read_config(folder: Path) -> dict[str, Any]:
    """Reads `folder/config.json` with errors that name the file."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (a diffusers/transformers model folder has one)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _flax_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def _as_hashable(value: Any) -> Any:
    # Flax modules are frozen dataclasses that hash their fields: JSON lists become tuples.
    return tuple(_as_hashable(v) for v in value) if isinstance(value, list) else value


def flax_kwargs(config: dict[str, Any], kind: ComponentKind, source: Path) -> dict[str, Any]:
    """Checks a diffusers config against `kind` and returns the Flax constructor arguments.

    Args:
      config: the parsed config.json.
      kind: which component the folder should hold.
      source: the config file, named in errors.

    Raises:
      ConfigError: wrong `_class_name`, an unsupported block type, or a key the Flax class would
        silently ignore set to a value other than the one it hard-codes.
    """
    class_name = config.get("_class_name")
    if class_name is not None and class_name not in (kind.pytorch_class, kind.flax_class.__name__):
        other = _BY_PYTORCH_CLASS.get(class_name)
        hint = f" (that is a {other.name} config)" if other else ""
        raise ConfigError(
            f"{source}: _class_name is {class_name!r}{hint}; expected {kind.pytorch_class!r} for a {kind.name}"
        )
    fields = _flax_fields(kind.flax_class)
    kwargs = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in fields:
            kwargs[key] = _as_hashable(value)
            continue
        if key not in kind.implied:
            raise ConfigError(
                f"{source}: key {key!r} = {value!r} is unknown to {kind.flax_class.__name__}; it cannot "
                f"be checked to be harmless, so the architecture is refused"
            )
        implied = kind.implied[key]
        if implied is not _ANY and value != implied:
            raise ConfigError(
                f"{source}: {key} = {value!r}, but {kind.flax_class.__name__} hard-codes {key} = "
                f"{implied!r}; loading it would silently compute a different model"
            )
    for key, allowed in kind.blocks.items():
        for block in kwargs.get(key, ()):
            if block not in allowed:
                raise ConfigError(f"{source}: {key} contains {block!r}; supported: {sorted(allowed)}")
    if kind is UNET and kwargs.get("addition_embed_type") not in (None,):
        raise ConfigError(
            f"{source}: addition_embed_type = {kwargs['addition_embed_type']!r} (an SDXL-style UNet); "
            "jcompose supports the SD 1.x / 2.x UNets"
        )
    return kwargs


def pytorch_config(module: Any, conditioning_channels: int | None = None) -> dict[str, Any]:
    """The diffusers PyTorch config.json of a Flax module: its fields plus the implied values."""
    import diffusers

    kind = kind_of_module(module)
    config: dict[str, Any] = {"_class_name": kind.pytorch_class, "_diffusers_version": diffusers.__version__}
    for key in sorted(_flax_fields(kind.flax_class) - set(kind.flax_only)):
        value = getattr(module, key)
        config[key] = list(value) if isinstance(value, tuple) else value
    for key, value in kind.implied.items():
        if value is not _ANY:
            config[key] = value
    if kind is CONTROLNET:
        config["conditioning_channels"] = conditioning_channels or 3
    return config
