"""Benchmarks: `python -m jcompose.bench sample|train [--model tiny|sd15] ...`.

`train --config=configs/<method>.py`: the method's jit train step (after compile) on one fixed batch:
step time, img/s, MFU from XLA-counted FLOPs, peak device memory, compile time, and the equivalent
diffusers PyTorch training step in the same run (ratio) for `denoise` (UNet fine-tuning) and
`anyscene` (ControlNet with the VAE-decoded pixel losses).

`data --method=<m>`: the method's input pipeline (synthetic or given COCO/video data -> transform ->
grain batches): examples/s per worker process and the worker processes one host needs at a train
step rate (`--steps-per-s`, from `train`).

`eval`: images/s of each evaluation feature extractor (Inception, CLIP, DINO, LPIPS) against its
PyTorch reference in the same run (`jcompose/metrics/benchmark.py`).

`sample`:
Reports seconds per image of a full CFG sampling run (default 50 DDIM steps + VAE decode) for
jcompose and, in the same process on the same weights, for diffusers' PyTorch
`StableDiffusionPipeline`, with their ratio; the overhead of each attention control relative to
no control; compile time; and MFU from XLA-counted FLOPs where the device's peak is known.

`--model tiny` uses the tiny SD 1.5 model (CPU-sized); `--model sd15` the full SD 1.5
architecture with random weights (bf16 on GPU, where PyTorch runs fp16 with SDPA).
Absolute times are only meaningful on an accelerator; ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcompose import attention, diffusion, parallel, sampling
from jcompose.models import loading, tiny

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8, cross_attention_dim=768,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of `repeats` further calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis.get("flops", 0.0))


def _full_size_folder(root: Path) -> Path:
    """Writes the SD 1.5 architecture with random weights (config + msgpack), CLIP-L text shapes."""
    from jcompose.models import clip, encoders
    from jcompose.models.unet import UNet2DConditionModel
    from jcompose.models.vae import AutoencoderKL

    unet = UNet2DConditionModel(**SD15_UNET)
    loading.export_diffusers(unet, tiny.random_params(loading.abstract_params(unet), 0), root / "unet",
                             formats=("msgpack", "safetensors"), dtype=np.float16)
    vae = AutoencoderKL(**SD15_VAE)
    loading.export_diffusers(vae, tiny.random_params(loading.abstract_params(vae), 1), root / "vae",
                             formats=("msgpack", "safetensors"), dtype=np.float16)
    vocab = tiny.write_tokenizer(root / "tokenizer")
    config = clip.CLIPTextConfig(vocab_size=vocab, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                 bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    text = clip.CLIPTextModel(config)
    encoders.export_encoder(text, tiny.random_params(encoders.abstract_params(text), 2), root / "text_encoder",
                            formats=("msgpack", "safetensors"))
    tok_config = json.loads((root / "tokenizer" / "tokenizer_config.json").read_text())
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({**tok_config, "model_max_length": 77}))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(tiny.scheduler_config("sd15")))
    return root


def _torch_seconds(folder: Path, prompts: list[str], steps: int, size: int, repeats: int) -> float | None:
    try:
        import diffusers
        import torch
        import transformers
    except ImportError:
        return None
    cuda = torch.cuda.is_available()
    dtype = torch.float16 if cuda else torch.float32
    device = "cuda" if cuda else "cpu"
    pipe = diffusers.StableDiffusionPipeline(
        vae=diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoder=transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"),
        scheduler=diffusers.DDIMScheduler.from_pretrained(folder / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)

    def run():
        with torch.no_grad():
            out = pipe(prompts, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                       output_type="np").images
        if cuda:
            torch.cuda.synchronize()
        return out

    _, seconds = _timed(run, repeats)
    return seconds / len(prompts)


def bench_sample(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "tiny":
            folder = tiny.write_tiny_base(Path(tmp) / "tiny", "sd15", formats=("msgpack", "safetensors"))
        else:
            folder = _full_size_folder(Path(tmp) / "sd15")
        on_gpu = jax.default_backend() == "gpu"
        half = args.model == "sd15" and jax.default_backend() != "cpu"
        dtype = jnp.bfloat16 if half else jnp.float32
        pipe = loading.load_pipeline(folder, dtype=dtype, param_dtype=dtype, weights="msgpack")
        size = args.size or pipe.unet.module.sample_size * 8
        latent_hw = (size // 8, size // 8)
        prompts = ["a photo of a dog on the beach"] * args.batch
        context = sampling.encode_prompts(pipe, prompts).astype(dtype)
        uncond = sampling.encode_prompts(pipe, [""] * args.batch).astype(dtype)
        latents = jax.random.normal(jax.random.PRNGKey(0), (args.batch, 4, *latent_hw))
        rng = jax.random.PRNGKey(1)

        mask = np.zeros(latent_hw, np.float32)
        mask[latent_hw[0] // 4: 3 * latent_hw[0] // 4, latent_hw[1] // 4: 3 * latent_hw[1] // 4] = 1
        calls = attention.attention_layers(
            lambda ctx: pipe.unet.module.apply({"params": pipe.unet.params}, latents, jnp.array([1] * args.batch),
                                               context, attention=ctx), latent_hw)
        decoder = [c for c in calls if not c.is_cross and c.path[0].startswith("up_blocks")]
        variants = {
            "none": (),
            "masked cross-attention": (attention.MaskedCrossAttention(mask),),
            "masked self-attention (last 5 decoder)": (attention.MaskedSelfAttention(
                mask, attention.decoder_self_attention_layers(calls, min(5, len(decoder)))),),
            "layout control": (attention.LayoutControl(mask, tokens=(5,)),),
        }
        report: dict[str, Any] = {
            "model": args.model, "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "dtype": jnp.dtype(dtype).name, "size": size, "batch": args.batch, "steps": args.steps,
        }
        times = {}
        for name, controls in variants.items():
            generate = sampling.make_generator(pipe, args.steps, controls=controls)
            first, seconds = _timed(lambda g=generate: g(context, uncond, latents, rng), args.repeats)
            times[name] = seconds / args.batch
            if name == "none":
                report["compile_s"] = first - seconds
            print(f"  jcompose [{name}]: {times[name]:.4f} s/image", file=sys.stderr)
        report["jcompose_s_per_image"] = times["none"]
        report["control_overhead"] = {k: v / times["none"] for k, v in times.items() if k != "none"}

        unet, vae = pipe.unet.module, pipe.vae.module

        def one_step(params, x):
            return diffusion.guided_denoiser(unet, params, context, uncond, 7.5)(x, jnp.array(1))

        step_flops = _flops(one_step, pipe.unet.params, latents)
        decode_flops = _flops(lambda params, z: vae.apply({"params": params}, z, method=vae.decode).sample,
                              pipe.vae.params, latents.astype(dtype))
        flops_per_image = (args.steps * step_flops + decode_flops) / args.batch
        report["tflop_per_image"] = flops_per_image / 1e12
        peak = parallel.peak_flops()
        report["mfu"] = flops_per_image / times["none"] / peak if peak else None

        if not args.no_torch:
            torch_seconds = _torch_seconds(folder, prompts, args.steps, size, args.repeats)
            report["diffusers_torch_s_per_image"] = torch_seconds
            report["speedup_vs_diffusers"] = torch_seconds / times["none"] if torch_seconds else None
        report["note"] = "" if on_gpu or args.model == "tiny" else "full-size model timed off-GPU"
    return report


def _seconds_per_step(step, repeats: int) -> float:
    """Mean seconds of `repeats` calls of a synchronising `step()`, after one warm-up call
    (allocator, cuDNN autotuning)."""
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def _torch_sd_modules(folder: Path, device: str):
    """diffusers/transformers PyTorch VAE, CLIP text encoder, UNet (all frozen) and DDPM scheduler."""
    import diffusers
    import transformers

    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae").to(device).requires_grad_(False)
    text = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").to(device).requires_grad_(False)
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").to(device).requires_grad_(False)
    return vae, text, unet, diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")


def _torch_denoise_step_seconds(folder: Path, batch: dict, lr: float, repeats: int) -> float | None:
    """Seconds per optimizer step of the equivalent diffusers PyTorch training step (UNet trained,
    VAE/text encoder frozen, AdamW, clip 1.0; bf16 autocast on GPU), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    vae, text, unet, scheduler = _torch_sd_modules(folder, device)
    unet.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)
    images = torch.from_numpy(np.asarray(batch["image"])).permute(0, 3, 1, 2).contiguous().to(device)
    ids = torch.from_numpy(np.asarray(batch["input_ids"]).astype(np.int64)).to(device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            with torch.no_grad():
                latents = vae.encode(images).latent_dist.sample() * vae.config.scaling_factor
                context = text(ids)[0]
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
            pred = unet(scheduler.add_noise(latents, noise, t), t, context).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return loss

    return _seconds_per_step(step, repeats)


def _torch_anyscene_step_seconds(folder: Path, batch: dict, config, repeats: int) -> float | None:
    """Seconds per optimizer step of AnyScene's training step written with diffusers PyTorch: a
    ControlNet (copied from the UNet encoder) trained on frozen SD, denoising + content + gated edge
    losses through the VAE decoder (same weights, terms and gate as the method; timing reference)."""
    try:
        import diffusers
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    lc = config.loss
    vae, text, unet, scheduler = _torch_sd_modules(folder, device)
    controlnet = diffusers.ControlNetModel.from_unet(unet).to(device).train()
    alphas = scheduler.alphas_cumprod.to(device)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=config.optim.lr)

    def nchw(key):
        return torch.from_numpy(np.asarray(batch[key], np.float32)).permute(0, 3, 1, 2).contiguous().to(device)

    images, foreground, mask = nchw("image"), nchw("foreground"), nchw("mask")
    cond = torch.where(mask > 0.5, (foreground + 1) / 2, torch.full_like(foreground, -1.0))
    ids = torch.from_numpy(np.asarray(batch["input_ids"]).astype(np.int64)).to(device)
    laplace = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], device=device).expand(3, 1, 3, 3)
    band = F.max_pool2d(mask, lc.dilate_kernel, 1, lc.dilate_kernel // 2) + F.max_pool2d(
        -mask, lc.erode_kernel, 1, lc.erode_kernel // 2)  # dilate(M) - erode(M)

    def masked_mean(err, weight):
        return ((err * weight).sum((1, 2, 3)) / (weight.sum((1, 2, 3)) * err.shape[1]).clamp(min=1)).mean()

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            with torch.no_grad():
                latents = vae.encode(images).latent_dist.sample() * vae.config.scaling_factor
                context = text(ids)[0]
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
            noisy = scheduler.add_noise(latents, noise, t)
            down, mid = controlnet(noisy, t, context, controlnet_cond=cond, return_dict=False)
            pred = unet(noisy, t, context, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample.float()
            loss = lc.denoise_weight * F.mse_loss(pred, noise.float())
            if lc.content_weight > 0 or lc.edge_weight > 0:
                a = alphas[t].view(-1, 1, 1, 1)
                x0 = (noisy.float() - (1 - a).sqrt() * pred) / a.sqrt()
                decoded = vae.decode(x0 / vae.config.scaling_factor).sample.float()
                gate = (t < lc.alpha * scheduler.config.num_train_timesteps).float().view(-1, 1, 1, 1)
                edge_err = (F.conv2d(F.pad(decoded, (1, 1, 1, 1), mode="reflect"), laplace, groups=3)
                            - F.conv2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), laplace, groups=3)) ** 2
                loss = loss + lc.content_weight * masked_mean((decoded - images) ** 2, mask)
                loss = loss + lc.edge_weight * masked_mean(edge_err * gate, band)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), config.optim.clip_norm or 1e9)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return loss

    return _seconds_per_step(step, repeats)


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Times the method's jit train step (after compile) on one fixed batch; see `main`."""
    from configs import common
    from input_pipeline.pipeline import make_iterator
    from jcompose import methods, train

    config = common.load(args.config)
    on_accelerator = jax.default_backend() != "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "sd15":
            folder = _full_size_folder(Path(tmp) / "sd15")
            config.data.image_size = args.size or 512
        else:  # the tiny base, written here with safetensors too so PyTorch can read it
            folder = tiny.write_tiny_base(Path(tmp) / "tiny", "sd15", formats=("msgpack", "safetensors"),
                                          controlnet=True)
            config.data.image_size = args.size or 64
        config.model.base = str(folder)
        if args.batch:
            config.train.batch_size = args.batch
        config.train.grad_accum = 1
        if on_accelerator and args.model == "sd15":
            config.compute_dtype = "bfloat16"
        common.validate(config)
        mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
        method = methods.build(config)
        state, frozen, tx, _ = train.init_state(config, method, mesh, tmp)
        local = next(make_iterator(method.make_source(), method.make_transform(),
                                   per_process_batch=config.train.batch_size, seed=0))
        batch = parallel.global_batch(local, mesh)
        step = jax.jit(train.make_train_step(method, tx, config), donate_argnums=(0,))
        start = time.perf_counter()
        compiled = step.lower(state, frozen, batch).compile()
        compile_s = time.perf_counter() - start
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        flops = float((analysis or {}).get("flops", 0.0))
        state, metrics = compiled(state, frozen, batch)  # warm-up
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(args.repeats):  # dispatch back to back, as the training loop does
            state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready((state, metrics))
        seconds = (time.perf_counter() - start) / args.repeats
        peak = parallel.peak_flops()
        memory = jax.devices()[0].memory_stats() or {}
        report: dict[str, Any] = {
            "config": args.config, "method": config.method, "model": args.model, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "dtype": config.compute_dtype,
            "size": config.data.image_size, "batch": config.train.batch_size, "compile_s": compile_s,
            "step_s": seconds, "img_per_s": config.train.batch_size / seconds,
            "tflop_per_step": flops / 1e12, "mfu": flops / seconds / (peak * jax.device_count()) if peak else None,
            "peak_memory_gib": memory["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in memory else None,
        }
        references = {"denoise": lambda: _torch_denoise_step_seconds(folder, local, config.optim.lr, args.repeats),
                      "anyscene": lambda: _torch_anyscene_step_seconds(folder, local, config, args.repeats)}
        if not args.no_torch:
            torch_s = references[config.method]() if config.method in references else None
            report["diffusers_torch_step_s"] = torch_s
            report["speedup_vs_diffusers"] = torch_s / seconds if torch_s else None
        report["note"] = "" if on_accelerator or args.model == "tiny" else "full-size model timed off-accelerator"
    return report


class _FirstInstanceAsReference:
    """instances records -> DreamCom `reference` records (the image and its first object mask)."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        record = self.source[index]
        return {"image": record["image"], "mask": record["masks"][0], "source": record["source"]}


def bench_data(args: argparse.Namespace) -> dict[str, Any]:
    """Examples/s per worker process of a method's input pipeline (source -> transform -> batches)."""
    from input_pipeline import anydoor, anyscene, benchmark, dreamcom
    from input_pipeline.pipeline import mix_sources
    from input_pipeline.sources import coco, synthetic, video

    with tempfile.TemporaryDirectory() as tmp:
        if args.coco_instances:
            images = coco.CocoSource(args.coco_images, args.coco_instances, args.coco_captions)
        else:  # synthetic photos at a COCO-like resolution
            synthetic.write_synthetic(Path(tmp), num_images=16, num_videos=4, num_frames=8, image_size=(480, 640))
            images = coco.CocoSource(Path(tmp) / "coco" / "images", Path(tmp) / "coco" / "annotations" /
                                     "instances.json", Path(tmp) / "coco" / "annotations" / "captions.json")
        if args.method == "anyscene":
            source, factory = images, lambda: anyscene.make_transform(size=args.size)
        elif args.method == "dreamcom":
            source = _FirstInstanceAsReference(images)
            factory = lambda: dreamcom.make_transform(class_noun="object", size=args.size)  # noqa: E731
        else:  # AnyDoor's mixture: video frame pairs and same-image pairs
            clips = video.VideoSource(args.video_root or Path(tmp) / "youtube_vos")
            source = mix_sources([(clips, 1.0, video.sample_pair), (images, 1.0, coco.image_pair)], seed=0)
            factory = lambda: anydoor.make_transform(size=args.size)  # noqa: E731
        result = benchmark.run_data_benchmark(
            factory, source, worker_counts=args.workers, per_process_batch=args.batch, num_batches=args.batches,
            steps_per_s=args.steps_per_s, per_host_batch=args.host_batch)
    print(benchmark.format_report(result), file=sys.stderr)
    return {"method": args.method, "size": args.size, "data": "coco" if args.coco_instances else "synthetic",
            **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jcompose.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sample", help="CFG sampling: jcompose vs diffusers PyTorch, control overheads, MFU")
    s.add_argument("--model", choices=("tiny", "sd15"), default=None,
                   help="tiny (default on CPU) or the full SD 1.5 architecture (default on GPU/TPU)")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--size", type=int, default=None, help="image size in pixels (default: tiny 64, sd15 512)")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--no-torch", action="store_true", help="skip the diffusers PyTorch reference")
    s.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    t = sub.add_parser("train", help="train step: img/s, MFU, peak memory, compile time vs diffusers PyTorch")
    t.add_argument("--config", default="configs/denoise.py", help="configs/<method>.py[:variant]")
    t.add_argument("--model", choices=("tiny", "sd15"), default=None,
                   help="tiny (default on CPU) or the full SD 1.5 architecture with random weights")
    t.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    t.add_argument("--size", type=int, default=None, help="image size (default: tiny 64, sd15 512)")
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--no-torch", action="store_true", help="skip the diffusers PyTorch reference step")
    t.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    d = sub.add_parser("data", help="input pipeline: examples/s per worker process, workers needed per host")
    d.add_argument("--method", choices=("anyscene", "anydoor", "dreamcom"), required=True)
    d.add_argument("--size", type=int, default=512)
    d.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2],
                   help="comma-separated grain worker counts to time (0: main process)")
    d.add_argument("--batch", type=int, default=8, help="per-process batch of the timed pipeline")
    d.add_argument("--batches", type=int, default=6, help="timed batches per worker count")
    d.add_argument("--steps-per-s", type=float, default=None, help="train step rate to feed (from bench train)")
    d.add_argument("--host-batch", type=int, default=None, help="per-host batch of that train step")
    d.add_argument("--coco-images", help="real COCO-layout data instead of synthetic: image folder")
    d.add_argument("--coco-instances", help="...its instances JSON")
    d.add_argument("--coco-captions", help="...its captions JSON")
    d.add_argument("--video-root", help="a YouTube-VOS-layout folder (AnyDoor)")
    d.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    from jcompose.metrics import benchmark as eval_benchmark

    e = sub.add_parser("eval", help="evaluation feature extractors: images/s vs their PyTorch references")
    eval_benchmark.add_arguments(e)
    args = parser.parse_args(argv)
    if args.what == "eval":
        report = eval_benchmark.bench_eval(args)
        print(json.dumps(report, indent=2))
        return 0
    if args.what == "data":
        report = bench_data(args)
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 0
    if args.model is None:
        args.model = "tiny" if jax.default_backend() == "cpu" else "sd15"
    report = bench_sample(args) if args.what == "sample" else bench_train(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
