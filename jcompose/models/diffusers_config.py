"""Reading diffusers `config.json` files into jcompose's UNet / ControlNet / VAE, refusing silent mismatches.

jcompose's modules (`jcompose.models.unet`, `controlnet`, `vae`) have one field per diffusers config
key that changes what the SD-class networks compute. diffusers' PyTorch configs carry many more
keys, for architectures jcompose does not build (SDXL add-embeddings, class embeddings, other time
embeddings, kernel sizes...). `module_kwargs` therefore compares every key that is not a field
with the value jcompose's modules imply and raises `ConfigError` naming the key on any difference,
and refuses keys it does not know: a config is either reproduced exactly or refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jcompose.models.controlnet import ControlNetModel
from jcompose.models.unet import UNet2DConditionModel
from jcompose.models.vae import AutoencoderKL

# The diffusers release whose PyTorch layout and config keys exported folders follow.
DIFFUSERS_LAYOUT_VERSION = "0.39.0"

_ANY = object()  # the key may take any value: it cannot change a float32 forward.

# Keys of the PyTorch UNet2DConditionModel that are not fields of jcompose's UNet, with the value
# its code implies. `_ANY` marks keys that only matter for fp16 PyTorch numerics or are switches of
# diffusers' former Flax classes (found in configs those classes saved).
_UNET_IMPLIED: dict[str, Any] = {
    "act_fn": "silu",
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
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "projection_class_embeddings_input_dim": None,
    "addition_embed_type_num_heads": 64,
    "dropout": 0.0,  # jcompose's UNet has no dropout; SD's configs have 0
    # SD 2.1 (768) sets it; it upcasts attention to fp32 in PyTorch fp16. jcompose keeps the
    # attention softmax in float32, so it is a no-op here.
    "upcast_attention": _ANY,
    "split_head_dim": _ANY,
    "use_memory_efficient_attention": _ANY,
}

_CONTROLNET_IMPLIED: dict[str, Any] = {
    **{
        key: _UNET_IMPLIED[key]
        for key in (
            "act_fn", "resnet_time_scale_shift", "class_embed_type", "num_class_embeds", "mid_block_scale_factor",
            "mid_block_type", "downsample_padding", "encoder_hid_dim", "encoder_hid_dim_type", "upcast_attention",
            "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
            "addition_embed_type_num_heads", "dropout",
        )
    },
    "global_pool_conditions": False,
}

_VAE_IMPLIED: dict[str, Any] = {
    "act_fn": "silu",
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

# Field types (for errors on a wrong JSON type before anything is built): int, float, bool, str,
# "ints" (an int or a list of ints), "bools", "strs" (a list of strings).
_FIELD_TYPES = {
    "sample_size": int, "in_channels": int, "out_channels": int, "layers_per_block": int,
    "cross_attention_dim": int, "freq_shift": int, "norm_num_groups": int, "latent_channels": int,
    "conditioning_channels": int, "norm_eps": float, "scaling_factor": float, "flip_sin_to_cos": bool,
    "use_linear_projection": bool, "reads_latent": bool, "controlnet_conditioning_channel_order": str,
    "block_out_channels": "ints", "attention_head_dim": "ints", "num_attention_heads": "ints",
    "transformer_layers_per_block": "ints", "conditioning_embedding_out_channels": "ints",
    "only_cross_attention": "bools", "down_block_types": "strs", "up_block_types": "strs",
}


class ConfigError(ValueError):
    """A config.json describes an architecture jcompose cannot reproduce exactly (or is malformed)."""


@dataclasses.dataclass(frozen=True)
class ComponentKind:
    """How one diffusers component maps to its jcompose module."""

    name: str  # "unet", "controlnet", "vae"
    module_class: type
    pytorch_class: str
    implied: dict[str, Any]
    blocks: dict[str, set[str]]
    not_exported: tuple[str, ...]  # module fields diffusers' PyTorch config does not have

    @property
    def class_names(self) -> tuple[str, ...]:
        """`_class_name` values accepted in config.json: the PyTorch class and diffusers' former Flax one."""
        return (self.pytorch_class, "Flax" + self.pytorch_class)


UNET = ComponentKind("unet", UNet2DConditionModel, "UNet2DConditionModel", _UNET_IMPLIED, _SUPPORTED_BLOCKS,
                     ("dtype", "remat"))
# sample_size only sizes the dummy inputs that trace a ControlNet's parameter shapes; reads_latent
# is jcompose's (written only when False: AnyDoor's detail extractor).
CONTROLNET = ComponentKind("controlnet", ControlNetModel, "ControlNetModel", _CONTROLNET_IMPLIED, _SUPPORTED_BLOCKS,
                           ("dtype", "remat", "sample_size"))
VAE = ComponentKind("vae", AutoencoderKL, "AutoencoderKL", _VAE_IMPLIED, _VAE_BLOCKS, ("dtype",))
KINDS = {kind.name: kind for kind in (UNET, CONTROLNET, VAE)}
_BY_CLASS_NAME = {name: kind for kind in KINDS.values() for name in kind.class_names}
_BY_MODULE_CLASS = {kind.module_class: kind for kind in KINDS.values()}


def kind_of_module(module: Any) -> ComponentKind:
    """The component kind of a jcompose UNet / ControlNet / VAE module instance."""
    try:
        return _BY_MODULE_CLASS[type(module)]
    except KeyError:
        raise TypeError(
            f"{type(module).__name__} is not one of the exportable diffusers-layout modules "
            f"({', '.join(c.__name__ for c in _BY_MODULE_CLASS)})"
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


def module_fields(cls: type) -> set[str]:
    """The dataclass fields of a linen module class (its configuration)."""
    return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def _checked_value(key: str, value: Any, source: Path) -> Any:
    """A config value of the expected JSON type, lists as tuples (modules hash their fields)."""
    kind = _FIELD_TYPES.get(key)

    def fail(expected: str):
        raise ConfigError(f"{source}: {key} = {value!r}: expected {expected}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if kind is int and not is_int(value) and not (key == "sample_size" and value is None):
        fail("an integer")
    if kind is float and not (is_int(value) or isinstance(value, float)):
        fail("a number")
    if kind is bool and not isinstance(value, bool):
        fail("true or false")
    if kind is str and not isinstance(value, str):
        fail("a string")
    if kind == "ints" and value is not None and not (is_int(value) or (
            isinstance(value, list) and value and all(is_int(v) for v in value))):
        fail("an integer or a list of integers")
    if kind == "bools" and not (isinstance(value, bool) or (
            isinstance(value, list) and all(isinstance(v, bool) for v in value))):
        fail("true/false or a list of them")
    if kind == "strs" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        fail("a list of block type names")
    return tuple(value) if isinstance(value, list) else value


def module_kwargs(config: dict[str, Any], kind: ComponentKind, source: Path) -> dict[str, Any]:
    """Checks a diffusers config against `kind` and returns the module's constructor arguments.

    Args:
      config: the parsed config.json.
      kind: which component the folder should hold.
      source: the config file, named in errors.

    Raises:
      ConfigError: wrong `_class_name`, a value of the wrong type, an unsupported block type, or a key
        that is not a field set to a value other than the one jcompose's module implies.
    """
    class_name = config.get("_class_name")
    if class_name is not None and class_name not in kind.class_names:
        other = _BY_CLASS_NAME.get(class_name)
        hint = f" (that is a {other.name} config)" if other else ""
        raise ConfigError(
            f"{source}: _class_name is {class_name!r}{hint}; expected {kind.pytorch_class!r} for a {kind.name}"
        )
    fields = module_fields(kind.module_class) - set(kind.not_exported) | ({"sample_size"} & module_fields(
        kind.module_class))
    kwargs = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in fields:
            kwargs[key] = _checked_value(key, value, source)
            continue
        if key not in kind.implied:
            raise ConfigError(
                f"{source}: key {key!r} = {value!r} is unknown to jcompose's {kind.module_class.__name__}; it "
                "cannot be checked to be harmless, so the architecture is refused"
            )
        implied = kind.implied[key]
        if implied is not _ANY and value != implied:
            raise ConfigError(
                f"{source}: {key} = {value!r}, but jcompose's {kind.module_class.__name__} implements only "
                f"{key} = {implied!r}; loading it would silently compute a different model"
            )
    for key, allowed in kind.blocks.items():
        for block in kwargs.get(key, ()):
            if block not in allowed:
                raise ConfigError(f"{source}: {key} contains {block!r}; supported: {sorted(allowed)}")
    if kwargs.get("sample_size") is None:
        kwargs.pop("sample_size", None)  # PyTorch UNets may leave it null: keep the module default
    return kwargs


def pytorch_config(module: Any) -> dict[str, Any]:
    """The diffusers PyTorch config.json of a module: its fields plus the implied values."""
    kind = kind_of_module(module)
    config: dict[str, Any] = {"_class_name": kind.pytorch_class, "_diffusers_version": DIFFUSERS_LAYOUT_VERSION}
    for key in sorted(module_fields(kind.module_class) - set(kind.not_exported)):
        value = getattr(module, key)
        if key == "reads_latent" and value:
            continue  # diffusers' own ControlNet reads the latent: no key
        config[key] = list(value) if isinstance(value, tuple) else value
    for key, value in kind.implied.items():
        if value is not _ANY and key != "dropout":
            config[key] = value
    return config
