"""Model folders that hold only configs: the released architectures a plan compiles when the run's weight
folders are not on this machine.

A plan needs shapes, not weights (the loaders run under `files.abstract_weights`), so a folder with the
`config.json` files, a tokenizer and the scheduler config stands in for a base model. The architectures
are those of the released models the configs name, restated from their published configs:

* SD 1.5 (runwayml/stable-diffusion-v1-5): UNet 320/640/1280/1280 channels, 2 layers per block, 8 heads,
  768-d context; VAE 128/256/512/512; CLIP ViT-L/14 text (49408 tokens, 768 wide, 12 layers, 12 heads,
  quick GELU). The inpainting UNet (SD 1.5 inpainting) reads 9 channels.
* SD 2.1-base: the same UNet with 64 channels per head (5/10/20/20 heads), linear projections and a
  1024-d context from OpenCLIP ViT-H/14 text (23 layers, 16 heads, GELU); same VAE.
* A ControlNet (control_v11p_sd15_inpaint and the like): the base UNet's encoder with a 16/32/96/256
  conditioning embedding of an RGB hint (`loading.controlnet_like`).
* DINOv2 (facebook/dinov2-*): ViT-S/B/L/g with patch 14 at 518 px; giant 1536 wide, 40 layers, 24 heads,
  SwiGLU feed-forward.

Which architecture a missing folder stands for is read from its name, as `jcompose.bench.weights` does
for base models ("inpaint" -> SD 1.5 inpainting, "2-1"/"sd21" -> SD 2.1-base, otherwise SD 1.5).
"""

from __future__ import annotations

import json
from pathlib import Path

from jcompose.bench import weights as bench_weights
from jcompose.models import clip, diffusers_config, loading, tiny, vit
from jcompose.models.unet import UNet2DConditionModel
from jcompose.models.vae import AutoencoderKL

CLIP_VOCAB = 49408  # CLIP's BPE vocabulary (OpenAI CLIP-L and OpenCLIP-H alike)
DINOV2 = {  # facebook/dinov2-<size>: width, depth, heads, SwiGLU feed-forward
    "small": (384, 12, 6, False), "base": (768, 12, 12, False), "large": (1024, 24, 16, False),
    "giant": (1536, 40, 24, True),
}


def _write_config(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=list) + "\n")


def write_base(root: Path, architecture: str) -> Path:
    """A base-model folder of `architecture` ("sd15", "sd15-inpaint", "sd21-base") without weights:
    unet/, vae/, text_encoder/ config.json, a tokenizer (77 tokens) and the scheduler config."""
    unet_config, text_config = bench_weights.full_size_configs(architecture)
    root = Path(root)
    _write_config(root / "unet", diffusers_config.pytorch_config(UNet2DConditionModel(**unet_config)))
    _write_config(root / "vae", diffusers_config.pytorch_config(AutoencoderKL(**bench_weights.SD15_VAE)))
    vocab = tiny.write_tokenizer(root / "tokenizer", pad_token="!" if architecture == "sd21-base" else "<|endoftext|>")
    tokenizer_config = root / "tokenizer" / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({**json.loads(tokenizer_config.read_text()), "model_max_length": 77}))
    text = clip.CLIPTextConfig(vocab_size=CLIP_VOCAB, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                               pad_token_id=vocab - 1, **text_config)
    _write_config(root / "text_encoder", text.to_dict())
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(tiny.scheduler_config("sd15")))
    return root


def write_controlnet(folder: Path, base: Path) -> Path:
    """A ControlNet folder (config only) with the encoder of the UNet in `base/unet` and an RGB hint."""
    config = json.loads((Path(base) / "unet" / "config.json").read_text())
    module = UNet2DConditionModel(**diffusers_config.module_kwargs(config, diffusers_config.UNET,
                                                                   Path(base) / "unet" / "config.json"))
    _write_config(Path(folder), diffusers_config.pytorch_config(loading.controlnet_like(module)))
    return Path(folder)


def write_dinov2(folder: Path, size: str = "giant") -> Path:
    """A DINOv2 folder (config only) of `size` ("small", "base", "large", "giant")."""
    width, depth, heads, swiglu = DINOV2[size]
    config = vit.Dinov2Config(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, mlp_ratio=4,
                              patch_size=14, image_size=518, use_swiglu_ffn=swiglu, layerscale_value=1.0)
    _write_config(Path(folder), config.to_dict())
    return Path(folder)


def architecture_of_name(path: str) -> str:
    """The base architecture a (missing) folder's name suggests."""
    name = str(path).lower()
    if "inpaint" in name:
        return "sd15-inpaint"
    return "sd21-base" if ("2-1" in name or "sd21" in name or "2.1" in name) else "sd15"


def dinov2_size(path: str) -> str:
    name = str(path).lower()
    return next((size for size in ("small", "base", "large") if size in name or f"vit{size[0]}" in name), "giant")
