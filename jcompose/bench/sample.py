"""`python -m jcompose.bench sample`: a full CFG sample (default 50 DDIM steps, guidance 7.5, VAE
decode) with jcompose and, in the same process on the same weights, with diffusers' PyTorch
`StableDiffusionPipeline` (fp16 + SDPA on a GPU); each attention control's overhead; compile time;
MFU from XLA-counted FLOPs; peak device memory.

`--model sd15` (default off CPU): the full SD 1.5 architecture with random weights, bf16 off CPU,
512 px. `--model tiny` (default on CPU): the tiny model, fp32, 64 px. jcompose's time is the
denoising loop plus the VAE decode from given text embeddings; diffusers' is its whole pipeline call.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcompose import attention, diffusion, parallel, sampling
from jcompose.bench import timing, weights
from jcompose.models import loading

CONTROLS = ("none", "cross", "self", "layout")
CONTROL_NAMES = {"none": "none", "cross": "masked cross-attention",
                 "self": "masked self-attention (last 5 decoder)", "layout": "layout control"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=("tiny", "sd15"), default=None,
                        help="tiny (default on CPU) or the full SD 1.5 architecture (default on GPU/TPU)")
    parser.add_argument("--base", default=None, help="a base folder written beforehand (`bench prepare`)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=None, help="image size in pixels (default: tiny 64, sd15 512)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--controls", default=",".join(CONTROLS),
                        help=f"comma list of {CONTROLS} to time (overheads are relative to 'none')")
    parser.add_argument("--no-torch", action="store_true", help="skip the diffusers PyTorch reference")


def torch_seconds_per_image(folder: Path, prompts: list[str], steps: int, size: int, repeats: int) -> dict | None:
    """diffusers PyTorch `StableDiffusionPipeline` on `folder` (fp16 on CUDA, fp32 on CPU; SDPA
    attention, diffusers' default): {'s_per_image', 'peak_memory_gib'}; None without torch."""
    try:
        import diffusers
        import torch
        import transformers
    except ImportError:
        return None
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    pipe = diffusers.StableDiffusionPipeline(
        vae=diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoder=transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"),
        scheduler=diffusers.DDIMScheduler.from_pretrained(folder / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def run():
        with torch.no_grad():
            out = pipe(prompts, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                       output_type="np").images
        if cuda:
            torch.cuda.synchronize()
        return out

    _, seconds = timing.timed(run, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    pipe = None  # frees its device memory for the benchmarks after this one
    if cuda:
        torch.cuda.empty_cache()
    return {"s_per_image": seconds / len(prompts), "peak_memory_gib": peak}


def _control_variants(pipe, latents, context, latent_hw, batch) -> dict[str, tuple]:
    mask = np.zeros(latent_hw, np.float32)
    mask[latent_hw[0] // 4: 3 * latent_hw[0] // 4, latent_hw[1] // 4: 3 * latent_hw[1] // 4] = 1
    calls = attention.attention_layers(
        lambda ctx: pipe.unet.module.apply({"params": pipe.unet.params}, latents, jnp.array([1] * batch),
                                           context, attention=ctx), latent_hw)
    decoder = [c for c in calls if not c.is_cross and c.path[0].startswith("up_blocks")]
    return {
        "none": (),
        "cross": (attention.MaskedCrossAttention(mask),),
        "self": (attention.MaskedSelfAttention(mask, attention.decoder_self_attention_layers(
            calls, min(5, len(decoder)))),),
        "layout": (attention.LayoutControl(mask, tokens=(5,)),),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The sample benchmark's report (see the module doc)."""
    controls = [c.strip() for c in args.controls.split(",") if c.strip()]
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown or not controls:
        raise ValueError(f"--controls {args.controls!r}: expected a comma list of {CONTROLS}")
    on_accelerator = jax.default_backend() != "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = weights.base_folder(args, tmp)
        dtype = jnp.bfloat16 if args.model == "sd15" and on_accelerator else jnp.float32
        pipe = loading.load_pipeline(folder, dtype=dtype, param_dtype=dtype)
        size = args.size or pipe.unet.module.sample_size * 8
        latent_hw = (size // 8, size // 8)
        prompts = ["a photo of a dog on the beach"] * args.batch
        context = sampling.encode_prompts(pipe, prompts).astype(dtype)
        uncond = sampling.encode_prompts(pipe, [""] * args.batch).astype(dtype)
        latents = jax.random.normal(jax.random.PRNGKey(0), (args.batch, 4, *latent_hw))
        rng = jax.random.PRNGKey(1)
        variants = _control_variants(pipe, latents, context, latent_hw, args.batch)
        report: dict[str, Any] = {
            "model": args.model, "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "dtype": jnp.dtype(dtype).name, "size": size, "batch": args.batch, "steps": args.steps,
            "repeats": args.repeats, "controls": {},
        }
        for name in controls:
            generate = sampling.make_generator(pipe, args.steps, controls=variants[name])
            compiled, compile_s, _ = timing.compile_timed(generate.func, *generate.args, context, uncond, latents, rng)
            _, seconds = timing.timed(lambda c=compiled, g=generate: c(*g.args, context, uncond, latents, rng),
                                      args.repeats)
            report["controls"][CONTROL_NAMES[name]] = {"s_per_image": seconds / args.batch, "compile_s": compile_s}
            timing.log(f"  jcompose [{CONTROL_NAMES[name]}]: {seconds / args.batch:.4f} s/image "
                       f"(compile {compile_s:.1f} s)")
        first = report["controls"][CONTROL_NAMES[controls[0]]]
        report["jcompose_s_per_image"] = first["s_per_image"]
        report["img_per_s"] = 1.0 / first["s_per_image"]
        report["compile_s"] = first["compile_s"]
        report["timed_control"] = CONTROL_NAMES[controls[0]]
        if "none" in controls:
            base = report["controls"]["none"]["s_per_image"]
            report["control_overhead"] = {CONTROL_NAMES[c]: report["controls"][CONTROL_NAMES[c]]["s_per_image"] / base
                                          for c in controls if c != "none"}

        unet, vae = pipe.unet.module, pipe.vae.module
        step_flops = timing.lowered_flops(
            lambda p, x: diffusion.guided_denoiser(unet, p, context, uncond, 7.5)(x, jnp.array(1)),
            pipe.unet.params, latents)
        decode_flops = timing.lowered_flops(
            lambda p, z: vae.apply({"params": p}, z, method=vae.decode).sample, pipe.vae.params, latents.astype(dtype))
        flops_per_image = (args.steps * step_flops + decode_flops) / args.batch
        report["tflop_per_image"] = flops_per_image / 1e12
        report["mfu"] = timing.mfu(flops_per_image, report["jcompose_s_per_image"], parallel.peak_flops())
        report["peak_memory_gib"] = timing.peak_memory_gib()

        if not args.no_torch:
            try:
                ref = torch_seconds_per_image(folder, prompts, args.steps, size, args.repeats)
            except Exception as err:  # noqa: BLE001 - the reference failing must not lose jcompose's figures
                ref, report["torch_error"] = None, f"diffusers failed: {type(err).__name__}: {err}"[:500]
            report["diffusers_torch_s_per_image"] = ref and ref["s_per_image"]
            report["torch_peak_memory_gib"] = ref and ref["peak_memory_gib"]
            report["speedup_vs_diffusers"] = timing.ratio(ref and ref["s_per_image"], report["jcompose_s_per_image"])
        report["note"] = "" if on_accelerator or args.model == "tiny" else "full-size model timed off-accelerator"
    return report
