"""Architectures (diffusers / transformers config.json) read off the tensor shapes of a converted state dict.

An original single-file checkpoint holds weights but no config. Everything that changes a tensor's
shape is read from the shapes (channels per level, layers per block, which levels have attention,
context width, linear vs conv projections, transformer depth, hint-encoder widths, latent channels,
DINOv2 width/depth/patch/grid/FFN). What leaves no trace in the weights comes from arguments, with
the released models' values as defaults: attention heads (SD 2.x: 64 channels per head, AnyDoor's
`num_head_channels: 64`; SD 1.x: 8 heads), DINOv2 heads (64 channels each: ViT-g/14's 24 at 1536),
the VAE scaling factor (0.18215), the sample size (64 latents = 512 px).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jcompose.models.diffusers_config import DIFFUSERS_LAYOUT_VERSION, ConfigError

Shapes = Mapping[str, tuple[int, ...]]


def _count(shapes: Shapes, pattern: str) -> int:
    return len({m.group(1) for k in shapes if (m := re.match(pattern, k))})


def _need(shapes: Shapes, key: str, component: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ConfigError(f"{component}: tensor {key} missing; cannot read the architecture off the checkpoint")
    return tuple(shapes[key])


def attention_heads(channels: tuple[int, ...], context_dim: int, heads: int | None = None,
                    head_channels: int | None = None) -> int | list[int]:
    """diffusers' `attention_head_dim` (its number of heads per level): `heads` for every level, or channels
    // `head_channels`; neither given: 8 heads for a 768-d context (SD 1.x), else 64 channels a head (SD 2.x)."""
    if heads is not None and head_channels is not None:
        raise ValueError("give heads or head_channels, not both")
    if heads is None and head_channels is None:
        heads, head_channels = (8, None) if context_dim == 768 else (None, 64)
    if heads is not None:
        return heads
    for c in channels:
        if c % head_channels:
            raise ConfigError(f"{c} channels are not a multiple of {head_channels} channels per attention head")
    return [c // head_channels for c in channels]


def unet_config(shapes: Shapes, *, sample_size: int = 64, heads: int | None = None,
                head_channels: int | None = None) -> dict[str, Any]:
    """diffusers UNet2DConditionModel config of a diffusers-named UNet state dict (see module doc)."""
    c = "UNet"
    levels = _count(shapes, r"down_blocks\.(\d+)\.")
    channels = tuple(_need(shapes, f"down_blocks.{i}.resnets.0.conv1.weight", c)[0] for i in range(levels))
    attn_down = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in shapes) for i in range(levels)]
    attn_up = [any(k.startswith(f"up_blocks.{i}.attentions.") for k in shapes) for i in range(levels)]
    first = next((i for i, a in enumerate(attn_down) if a), None)
    if first is None:
        raise ConfigError(f"{c}: no cross-attention in any down block; not an SD text-to-image UNet")
    prefix = f"down_blocks.{first}.attentions.0"
    context = _need(shapes, f"{prefix}.transformer_blocks.0.attn2.to_k.weight", c)[1]
    depth = [_count(shapes, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") or 1
             for i in range(levels)]
    return {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": DIFFUSERS_LAYOUT_VERSION,
        "sample_size": sample_size,
        "in_channels": _need(shapes, "conv_in.weight", c)[1],
        "out_channels": _need(shapes, "conv_out.weight", c)[0],
        "block_out_channels": list(channels),
        "layers_per_block": _count(shapes, r"down_blocks\.0\.resnets\.(\d+)\."),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn_down],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn_up],
        "cross_attention_dim": context,
        "attention_head_dim": attention_heads(channels, context, heads, head_channels),
        "use_linear_projection": len(_need(shapes, f"{prefix}.proj_in.weight", c)) == 2,
        "transformer_layers_per_block": depth[0] if len(set(depth)) == 1 else depth,
        "flip_sin_to_cos": True, "freq_shift": 0, "norm_num_groups": 32, "norm_eps": 1e-5,
    }


def hint_widths(shapes: Shapes) -> list[int]:
    """Widths of a ControlNet hint encoder's stages: conv_in's, then every stride-2 conv's (blocks 1, 3, ...)."""
    n = _count(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    widths = [_need(shapes, "controlnet_cond_embedding.conv_in.weight", "ControlNet")[0]]
    widths += [_need(shapes, f"controlnet_cond_embedding.blocks.{i}.weight", "ControlNet")[0] for i in range(1, n, 2)]
    return widths


def controlnet_config(shapes: Shapes, unet: Mapping[str, Any], *, reads_latent: bool) -> dict[str, Any]:
    """diffusers ControlNetModel config (jcompose's `reads_latent` added when False) of a ControlNet with the
    encoder of `unet` (a `unet_config`); the conditioning channels and hint widths come from the shapes."""
    keys = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types",
            "cross_attention_dim", "attention_head_dim", "use_linear_projection", "transformer_layers_per_block",
            "flip_sin_to_cos", "freq_shift", "norm_num_groups", "norm_eps")
    config = {"_class_name": "ControlNetModel", "_diffusers_version": DIFFUSERS_LAYOUT_VERSION,
              **{k: unet[k] for k in keys},
              "conditioning_channels": _need(shapes, "controlnet_cond_embedding.conv_in.weight", "ControlNet")[1],
              "conditioning_embedding_out_channels": hint_widths(shapes)}
    if not reads_latent:
        config["reads_latent"] = False
    return config


def vae_config(shapes: Shapes, *, sample_size: int = 512, scaling_factor: float = 0.18215) -> dict[str, Any]:
    """diffusers AutoencoderKL config of a diffusers-named VAE state dict."""
    c = "VAE"
    levels = _count(shapes, r"encoder\.down_blocks\.(\d+)\.")
    channels = [_need(shapes, f"encoder.down_blocks.{i}.resnets.0.conv1.weight", c)[0] for i in range(levels)]
    return {
        "_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_LAYOUT_VERSION,
        "in_channels": _need(shapes, "encoder.conv_in.weight", c)[1],
        "out_channels": _need(shapes, "decoder.conv_out.weight", c)[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": _count(shapes, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        "latent_channels": _need(shapes, "post_quant_conv.weight", c)[0],
        "norm_num_groups": 32, "sample_size": sample_size, "scaling_factor": scaling_factor,
    }


def _swiglu_width(hidden: int, ratio: float) -> int:
    return (int(int(hidden * ratio) * 2 / 3) + 7) // 8 * 8


def dinov2_config(shapes: Shapes, *, head_channels: int = 64) -> dict[str, Any]:
    """transformers Dinov2Config (as jcompose's `vit.Dinov2Config` fields) of a DINOv2 hub state dict
    (hub names, prefix removed)."""
    c = "DINOv2"
    hidden = _need(shapes, "cls_token", c)[-1]
    layers = _count(shapes, r"blocks\.(?:\d+\.)?(\d+)\.norm1\.weight")
    patch = _need(shapes, "patch_embed.proj.weight", c)
    grid = math.isqrt(_need(shapes, "pos_embed", c)[1] - 1)
    if hidden % head_channels:
        raise ConfigError(f"{c}: width {hidden} is not a multiple of {head_channels} channels per head")
    block = next(k.rsplit(".", 2)[0] for k in shapes if k.endswith(".norm1.weight"))
    swiglu = f"{block}.mlp.w12.weight" in shapes
    if swiglu:
        width = _need(shapes, f"{block}.mlp.w12.weight", c)[0] // 2
        ratio = next((r for r in np.arange(1.0, 8.25, 0.25) if _swiglu_width(hidden, r) == width), None)
        if ratio is None:
            raise ConfigError(f"{c}: SwiGLU width {width} fits no mlp_ratio for width {hidden}")
    else:
        ratio = _need(shapes, f"{block}.mlp.fc1.weight", c)[0] / hidden
    if f"{block}.ls1.gamma" not in shapes:
        raise ConfigError(f"{c}: blocks without LayerScale (ls1.gamma) are not DINOv2")
    return {
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": hidden // head_channels,
        "mlp_ratio": int(ratio) if float(ratio).is_integer() else float(ratio), "hidden_act": "gelu",
        "layer_norm_eps": 1e-6, "image_size": grid * patch[-1], "patch_size": patch[-1], "num_channels": patch[1],
        "qkv_bias": f"{block}.attn.qkv.bias" in shapes, "layerscale_value": 1.0, "use_swiglu_ffn": swiglu,
        "use_mask_token": "mask_token" in shapes,
    }


def scheduler_config(betas: np.ndarray | None, prediction_type: str = "epsilon") -> dict[str, Any]:
    """DDIM scheduler_config.json of an LDM's training schedule. `betas` (the checkpoint's buffer, or None:
    SD's 0.00085..0.012) must be LDM's "linear" schedule, the squares of evenly spaced square roots
    (diffusers' "scaled_linear"); another schedule raises ConfigError."""
    start, end, steps = 0.00085, 0.012, 1000
    if betas is not None:
        betas = np.asarray(betas, np.float64)
        steps, start, end = len(betas), float(betas[0]), float(betas[-1])
        want = np.linspace(start ** 0.5, end ** 0.5, steps) ** 2
        if not np.allclose(betas, want, rtol=1e-5, atol=1e-9):
            raise ConfigError("the checkpoint's betas are not LDM's linear (diffusers: scaled_linear) schedule; "
                              "only that schedule is supported")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"prediction_type {prediction_type!r}: expected 'epsilon' or 'v_prediction'")
    return {"_class_name": "DDIMScheduler", "_diffusers_version": DIFFUSERS_LAYOUT_VERSION,
            "num_train_timesteps": steps, "beta_start": round(start, 8), "beta_end": round(end, 8),
            "beta_schedule": "scaled_linear", "prediction_type": prediction_type, "clip_sample": False,
            "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"}
