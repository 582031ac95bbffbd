"""Tiny random models of the real classes, written as real model folders.

Tests and the CPU quick-start use these instead of multi-GB checkpoints, through exactly the
loading path real weights take. Each base has the same classes and the same structural options
as its full-size original (block types, linear vs conv projections, 9-channel inpainting input,
x8 VAE, CLIP BPE tokenizer, DINOv2 with SwiGLU), only narrower and shallower (channel counts of
the UNet and ControlNet are multiples of the 32 GroupNorm groups SD uses).

Command line (writes a folder, loads it back and runs one UNet forward)::

    python -m jcompose.models.tiny --base sd15 --out /tmp/tiny-sd15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jcompose import atomic
from jcompose.models import clip, encoders, files, loading, vit
from jcompose.models.unet import UNet2DConditionModel
from jcompose.models.vae import AutoencoderKL

BASES = ("sd15", "sd15-inpaint", "sd21-base")
# What a tiny base folder holds (an existing folder of only these is replaced by a rerun).
BASE_ENTRIES = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "controlnet", "model_index.json")
MODEL_FILES = ("config.json", files.TRANSFORMERS_PT_WEIGHTS, files.TRANSFORMERS_FLAX_WEIGHTS)
CONTEXT_TOKENS = 16  # tokenizer model_max_length and text-encoder positions
LATENT_SIZE = 8  # UNet sample_size; images are 8x larger (64 px)

# Words with their own BPE merges, so prompts in tests tokenize to whole-word tokens.
_WORDS = (
    "a photo of sks dog cat backpack teddy bear vase toy car on the in at with and beach table "
    "room park street grass snow forest kitchen city red blue green white black small big"
).split()


def unet_config(base: str) -> dict[str, Any]:
    """UNet constructor arguments (= diffusers config keys) of the tiny `base`."""
    _check_base(base)
    sd2 = base == "sd21-base"
    return dict(
        sample_size=LATENT_SIZE,
        in_channels=9 if base == "sd15-inpaint" else 4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        # As in the originals: SD 1.5 gives one head count for all blocks, SD 2.x one per block.
        attention_head_dim=(2, 4, 4) if sd2 else 2,
        cross_attention_dim=64 if sd2 else 32,
        use_linear_projection=sd2,
    )


def vae_config() -> dict[str, Any]:
    """AutoencoderKL arguments (= diffusers config keys): 4 stages, so the x8 downsampling of the SD VAE."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=LATENT_SIZE * 8,
        scaling_factor=0.18215,
    )


def text_encoder_config(base: str, vocab_size: int) -> clip.CLIPTextConfig:
    """A 2-layer CLIP text encoder: OpenAI CLIP-L's options (quick GELU) for SD 1.5, OpenCLIP-H's (GELU) for 2.x."""
    sd2 = base == "sd21-base"
    return clip.CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64 if sd2 else 32,
        intermediate_size=128 if sd2 else 64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT_TOKENS,
        projection_dim=32,
        hidden_act="gelu" if sd2 else "quick_gelu",  # OpenCLIP-H vs OpenAI CLIP-L
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )


def dinov2_config() -> vit.Dinov2Config:
    """A 2-layer DINOv2 with the giant model's options (patch 14, SwiGLU, layer scale)."""
    return vit.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=4,
        patch_size=14,
        image_size=224,
        use_swiglu_ffn=True,
        layerscale_value=1.0,
    )


def scheduler_config(base: str) -> dict[str, Any]:
    """The SD 1.5 / 2.1-base scheduler_config.json (PNDM as shipped; the schedule is what counts)."""
    _check_base(base)
    return {
        "_class_name": "PNDMScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "clip_sample": False,
    }


def _check_base(base: str) -> None:
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; choose one of {BASES}")


def random_params(abstract: Any, seed: int, noise: float = 0.02) -> Any:
    """Random parameters for a tree of shapes, drawn in numpy (no init trace, no compile).

    Kernels get a LeCun-normal draw (std 1/sqrt(fan_in)), norm scales and DINOv2 layer scales
    1 + N(0, noise^2), everything else (biases, embeddings, tokens) N(0, noise^2). Unlike the
    modules' own initialisers, nothing is exactly zero or one, so a layout mistake anywhere (a
    zero conv, a norm bias) changes the outputs of a test.

    Args:
      abstract: pytree of leaves with `.shape` (e.g. `jax.eval_shape` of an init function).
      seed: seed of the numpy generator; the same seed gives the same tree.
    """
    rng = np.random.default_rng(seed)
    flat = flatten_dict(dict(abstract))
    out = {}
    for key in sorted(flat):  # sorted: the draw does not depend on the order modules were built in
        spec = flat[key]
        shape = tuple(spec.shape)
        leaf = key[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1])) or 1
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        elif leaf in ("scale", "lambda1"):
            value = 1.0 + rng.normal(0.0, noise, shape)
        else:
            value = rng.normal(0.0, noise, shape)
        out[key] = value.astype(np.float32)
    return unflatten_dict(out)


# ------------------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for bytes, in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> int:
    """Writes a small CLIP BPE tokenizer (vocab.json, merges.txt, configs); returns its vocab size.

    The vocabulary has CLIP's structure: every byte, every byte as a word end (`</w>`), the merges
    of `_WORDS` (so those words are single tokens), then <|startoftext|> and <|endoftext|> last.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = _bytes_to_unicode()
    vocab = base + [c + "</w>" for c in base]
    merges: list[str] = []
    for word in _WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            merged = symbols[0] + symbols[1]
            rule = f"{symbols[0]} {symbols[1]}"
            if rule not in merges:
                merges.append(rule)
                vocab.append(merged)
            symbols = [merged] + symbols[2:]
    vocab = list(dict.fromkeys(vocab)) + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({**special, "model_max_length": CONTEXT_TOKENS, "do_lower_case": True,
                    "tokenizer_class": "CLIPTokenizer"}, indent=2)
    )
    return len(vocab)


# --------------------------------------------------------------------------------------- writers


def write_tiny_base(
    out: str | Path,
    base: str = "sd15",
    *,
    formats: tuple[str, ...] = ("safetensors", "msgpack"),
    controlnet: bool = False,
    seed: int = 0,
) -> Path:
    """Writes a tiny base-model folder (unet, vae, text_encoder, tokenizer, scheduler[, controlnet]).

    Args:
      out: destination folder; it appears complete or not at all (`jcompose.atomic`: a killed writer
        leaves no half base, a rerun replaces an incomplete one).
      base: "sd15", "sd15-inpaint" or "sd21-base".
      formats: weight formats to write: "safetensors" (PyTorch names and layouts) and/or
        "msgpack" (Flax). Loaders choose with `weights=`.
      controlnet: also write a `controlnet/` with the UNet's encoder architecture (random weights).
      seed: all weights derive from it.
    """
    _check_base(base)
    with atomic.folder(out, owns=atomic.only(BASE_ENTRIES)) as partial:
        _write_base(partial, base, formats, controlnet, seed)
    return Path(out)


def is_complete_base(folder: str | Path) -> bool:
    """Whether `folder` holds a whole tiny base (`write_tiny_base` writes model_index.json last)."""
    return (Path(folder) / "model_index.json").is_file()


def _write_base(out: Path, base: str, formats: tuple[str, ...], controlnet: bool, seed: int) -> None:
    unet = UNet2DConditionModel(**unet_config(base))
    unet_params = random_params(loading.abstract_params(unet), seed)
    loading.export_diffusers(unet, unet_params, out / "unet", formats=formats)

    vae = AutoencoderKL(**vae_config())
    loading.export_diffusers(vae, random_params(loading.abstract_params(vae), seed + 1), out / "vae", formats=formats)

    vocab_size = write_tokenizer(out / "tokenizer", pad_token="!" if base == "sd21-base" else "<|endoftext|>")
    text = clip.CLIPTextModel(text_encoder_config(base, vocab_size))
    encoders.export_encoder(text, random_params(encoders.abstract_params(text), seed + 2), out / "text_encoder",
                            formats)

    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(base), indent=2))

    if controlnet:
        net = loading.controlnet_like(unet, conditioning_embedding_out_channels=(16, 32, 32, 32))
        loading.export_diffusers(net, random_params(loading.abstract_params(net), seed + 3), out / "controlnet",
                                 formats=formats)

    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionInpaintPipeline" if base == "sd15-inpaint" else "StableDiffusionPipeline",
        "jcompose_tiny_base": base,
    }, indent=2))


def write_tiny_dinov2(out: str | Path, *, formats: tuple[str, ...] = ("safetensors", "msgpack"), seed: int = 0) -> Path:
    """Writes a tiny DINOv2 folder (transformers layout) to `out` (complete or not at all)."""
    model = vit.Dinov2Model(dinov2_config())
    with atomic.folder(out, owns=atomic.only(MODEL_FILES)) as partial:
        encoders.export_encoder(model, random_params(encoders.abstract_params(model), seed), partial, formats)
    return Path(out)


# ------------------------------------------------------------------------------------------ demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jcompose.models.tiny",
        description="Write a tiny random base model, load it back through jcompose's loader and run one UNet forward.",
    )
    parser.add_argument("--base", choices=BASES, default="sd15")
    parser.add_argument("--out", type=Path, default=Path("tiny-models"), help="folder to write (default: ./tiny-models)")
    parser.add_argument("--weights", choices=("safetensors", "msgpack"), default="safetensors",
                        help="which written format to load back")
    args = parser.parse_args(argv)

    folder = args.out / args.base
    write_tiny_base(folder, args.base, controlnet=True)
    print(f"wrote {folder}: {', '.join(sorted(p.name for p in folder.iterdir() if p.is_dir()))}")
    pipe = loading.load_pipeline(folder, weights=args.weights)
    tokens = pipe.tokenizer(["a photo of a dog"], padding="max_length", max_length=CONTEXT_TOKENS,
                            return_tensors="np").input_ids
    context = pipe.text_encoder.module.apply({"params": pipe.text_encoder.params}, tokens).last_hidden_state
    unet = pipe.unet.module
    latents = jax.random.normal(jax.random.PRNGKey(0), (1, unet.in_channels, unet.sample_size, unet.sample_size))
    forward = jax.jit(lambda p, x, t, c: unet.apply({"params": p}, x, t, c).sample)
    start = time.perf_counter()
    eps = jax.block_until_ready(forward(pipe.unet.params, latents, jnp.array([500]), context))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(pipe.unet.params))
    print(f"UNet ({n_params:,} params, {args.weights}) forward: in {latents.shape} -> out {eps.shape}, "
          f"mean {float(eps.mean()):+.4f} std {float(eps.std()):.4f}, "
          f"{time.perf_counter() - start:.1f} s incl. compile on {jax.default_backend()}")


if __name__ == "__main__":
    main()
