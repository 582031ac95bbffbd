"""Base-model folders for the benchmarks: the full SD 1.5 architecture with random weights, written
on the spot (nothing is downloaded), or the tiny model.

Speed does not depend on the weights' values, so random ones serve for timing; they are drawn so
that activations stay in range through the depth (LeCun-normal kernels, norm scales near 1), which
the bf16-vs-fp32 comparison needs. One folder is written in the PyTorch layout (safetensors,
fp16): jcompose loads it (`weights="auto"` falls back to safetensors) and so does diffusers
PyTorch, so both run the very same weights.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jcompose.bench.timing import log

ARCHITECTURES = ("sd15", "sd15-inpaint", "sd21-base")
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "attention_head_dim": 8,
    "cross_attention_dim": 768,
}
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
CLIP_L_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "max_position_embeddings": 77, "hidden_act": "quick_gelu"}
# SD 2.1-base: per-block head dims, linear projections, 1024-wide context from OpenCLIP ViT-H/14.
SD21_UNET = {**SD15_UNET, "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024,
             "use_linear_projection": True}
OPENCLIP_H_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
                   "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 512}


def full_size_configs(architecture: str) -> tuple[dict, dict]:
    """(UNet constructor arguments, CLIP text-encoder config fields) of a full-size architecture."""
    if architecture == "sd21-base":
        return SD21_UNET, OPENCLIP_H_TEXT
    if architecture in ("sd15", "sd15-inpaint"):
        return {**SD15_UNET, "in_channels": 9 if architecture == "sd15-inpaint" else 4}, CLIP_L_TEXT
    raise ValueError(f"architecture {architecture!r}: expected one of {ARCHITECTURES}")


def architecture_of(config: Any) -> str:
    """The base architecture a train config needs: a 'tiny:<architecture>' base names it; else
    'sd15-inpaint' for a path naming 'inpaint', 'sd21-base' for one naming '2-1' or '21', else 'sd15'."""
    base = str(config.model.base)
    if base.startswith("tiny:") and base[5:] in ARCHITECTURES:
        return base[5:]
    if "inpaint" in base:
        return "sd15-inpaint"
    return "sd21-base" if ("2-1" in base or "sd21" in base) else "sd15"


def random_tree(abstract: Any, seed: int, noise: float = 0.02) -> dict:
    """float32 random parameters for a tree of shapes (drawn in float32: ~4x faster than
    `tiny.random_params`, whose float64 draws would take minutes at full size).

    Kernels: N(0, 1/fan_in); norm scales 1 + N(0, noise^2); everything else N(0, noise^2).
    """
    rng = np.random.default_rng(seed)
    flat = flatten_dict(dict(abstract))
    out = {}
    for key in sorted(flat):
        shape = tuple(flat[key].shape)
        value = rng.standard_normal(shape, dtype=np.float32)
        if key[-1] == "kernel":
            value *= np.float32(1.0 / np.sqrt(max(int(np.prod(shape[:-1])), 1)))
        else:
            value *= np.float32(noise)
            if key[-1] in ("scale", "lambda1"):
                value += np.float32(1.0)
        out[key] = value
    return unflatten_dict(out)


def write_full_size(root: Path, architecture: str = "sd15", seed: int = 0) -> Path:
    """Writes the SD 1.5, SD 1.5 inpainting (9 UNet input channels) or SD 2.1-base architecture
    with random weights: unet/, vae/, text_encoder/ (CLIP ViT-L/14 or OpenCLIP ViT-H/14 text shapes),
    tokenizer/ (77 tokens), scheduler/; fp16 safetensors in the PyTorch layout (about 2.1 GB for
    SD 1.5). Returns `root`."""
    from jcompose.models import clip, encoders, loading, tiny
    from jcompose.models.unet import UNet2DConditionModel
    from jcompose.models.vae import AutoencoderKL

    unet_config, text_config = full_size_configs(architecture)
    start = time.perf_counter()
    root = Path(root)
    unet = UNet2DConditionModel(**unet_config)
    loading.export_diffusers(unet, random_tree(loading.abstract_params(unet), seed), root / "unet",
                             formats=("safetensors",), dtype=np.float16)
    vae = AutoencoderKL(**SD15_VAE)
    loading.export_diffusers(vae, random_tree(loading.abstract_params(vae), seed + 1), root / "vae",
                             formats=("safetensors",), dtype=np.float16)
    vocab = tiny.write_tokenizer(root / "tokenizer", pad_token="!" if architecture == "sd21-base" else "<|endoftext|>")
    config = clip.CLIPTextConfig(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                 pad_token_id=vocab - 1, **text_config)
    text = clip.CLIPTextModel(config)
    encoders.export_encoder(text, random_tree(encoders.abstract_params(text), seed + 2), root / "text_encoder",
                            formats=("safetensors",), dtype=np.float16)
    tok_file = root / "tokenizer" / "tokenizer_config.json"
    tok_file.write_text(json.dumps({**json.loads(tok_file.read_text()), "model_max_length": 77}))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(tiny.scheduler_config("sd15")))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "jcompose_bench": architecture}))
    log(f"  wrote the full-size {architecture} base with random weights in {time.perf_counter() - start:.1f} s")
    return root


def write_base(root: Path, model: str, architecture: str = "sd15") -> Path:
    """`model` "sd15": `write_full_size`; "tiny": the tiny base of `architecture` with both weight
    formats and a controlnet/ (CPU-sized)."""
    from jcompose.models import tiny

    if model == "tiny":
        return tiny.write_tiny_base(Path(root), architecture, formats=("msgpack", "safetensors"), controlnet=True)
    if model == "sd15":
        return write_full_size(Path(root), architecture)
    raise ValueError(f"--model {model!r}: expected 'tiny' or 'sd15'")


def base_folder(args: Any, tmp: str, architecture: str = "sd15") -> Path:
    """The folder a benchmark runs on: `--base` (written there first when it holds no unet/, so
    parts of the suite that share it write it once), else a fresh one under `tmp`."""
    folder = Path(args.base) if getattr(args, "base", None) else Path(tmp) / f"{args.model}-{architecture}"
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")  # renamed when complete: a killed write leaves no base
        shutil.rmtree(partial, ignore_errors=True)
        write_base(partial, args.model, architecture)
        partial.rename(folder)
    return folder
