"""The untrained Stable Diffusion baselines of AnyScene's Table 1 on its benchmark folder (no training run).

    python -m jcompose.compose sd text    --base /models/stable-diffusion-v1-5 --benchmark BENCH --out GEN
    python -m jcompose.compose sd inpaint --base /models/stable-diffusion-inpainting --benchmark BENCH --out GEN

`text`: the scene from its caption alone (the paper's "Stable Diffusion" row). `inpaint`: an inpainting UNet
(9 input channels) fills everything around the pasted foreground: image = the benchmark's composite,
mask = 1 outside the objects, masked image = the composite with the outside zeroed (diffusers' inpainting
convention), then the objects pasted back (`--blend paste`; the row closest to the paper's "Inpaint
Anything", which fills around a kept object with an SD inpainting model). Both write `GEN/<name>.png` for
every pair of a folder from `python -m input_pipeline.anyscene_benchmark`, image i with key
fold_in(seed, i), DDIM with classifier-free guidance, as `compose anyscene --benchmark` does.
`--base tiny:sd15` / `tiny:sd15-inpaint` writes a tiny random base (seed 0) under GEN/.tiny (smoke runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jcompose.cli import InputError
from jcompose.inference import to_uint8, write_image

MODES = ("text", "inpaint")


def _pipeline(args):
    """The base's pipeline, checked to fit the mode (InputError naming --base)."""
    import jax.numpy as jnp

    from jcompose import cli
    from jcompose.methods.base import base_folder
    from jcompose.models import loading

    folder = base_folder(args.base, Path(args.out) / ".tiny", seed=0)
    with cli.input_errors(f"--base {args.base}: "):
        pipe = loading.load_pipeline(folder, dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    channels = pipe.unet.module.in_channels
    wanted = 9 if args.mode == "inpaint" else 4
    if channels != wanted:
        raise InputError(f"--base {args.base}: its UNet reads {channels} input channels; `sd {args.mode}` needs "
                         f"{'an inpainting' if wanted == 9 else 'a text-to-image'} UNet ({wanted})")
    return pipe


def _generator(pipe, args):
    """jit (context, uncond, composite, mask, keys) -> images (B, H, W, 3) in [-1, 1]."""
    import jax
    import jax.numpy as jnp

    from jcompose import diffusion

    unet, vae = pipe.unet.module, pipe.vae.module
    schedule = diffusion.make_schedule(pipe.scheduler)

    def one(unet_params, vae_params, context, uncond, composite, outside, key):
        k_noise, k_masked = jax.random.split(key)
        h, w = composite.shape[0] // 8, composite.shape[1] // 8
        extra = None
        if args.mode == "inpaint":
            masked = (composite * (1.0 - outside))[None].transpose(0, 3, 1, 2)
            dist = vae.apply({"params": vae_params}, masked, method=vae.encode).latent_dist
            latents_masked = dist.sample(k_masked) * vae.scaling_factor
            extra = jnp.concatenate([outside[None, ::8, ::8, 0][:, None], latents_masked], axis=1)
        noise = jax.random.normal(k_noise, (1, unet.out_channels, h, w))
        denoise = diffusion.guided_denoiser(unet, unet_params, context[None], uncond[None], args.guidance,
                                            extra_channels=extra)
        z = diffusion.sample(denoise, noise, schedule, pipe.scheduler, args.steps)
        image = vae.apply({"params": vae_params}, z / vae.scaling_factor, method=vae.decode).sample
        return jnp.clip(image[0].transpose(1, 2, 0).astype(jnp.float32), -1, 1)

    batched = jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0, 0))
    return jax.jit(batched)


def compose_baseline(args) -> dict:
    import jax
    import jax.numpy as jnp

    from jcompose import sampling
    from jcompose.methods.anyscene_inference import read_foregrounds

    if args.mode not in MODES:
        raise InputError(f"sd {args.mode!r}: expected one of {MODES}")
    root = Path(args.benchmark)
    prompts_path = root / "prompts.json"
    if not prompts_path.is_file():
        raise InputError(f"--benchmark {root}: no prompts.json (build it with python -m input_pipeline.anyscene_benchmark)")
    prompts = json.loads(prompts_path.read_text())
    names = sorted(prompts)
    if not names:
        raise InputError(f"--benchmark {prompts_path}: no pairs")
    pipe = _pipeline(args)
    run = _generator(pipe, args)
    out = Path(args.out)
    size = max(1, args.batch_size)
    uncond_one = sampling.encode_prompts(pipe, [""])[0]
    for start in range(0, len(names), size):
        chunk = names[start:start + size]
        padded = chunk + [chunk[-1]] * (size - len(chunk))  # one compiled batch shape
        pairs = [read_foregrounds([str(root / "foregrounds" / f"{n}.png")], [str(root / "masks" / f"{n}.png")])
                 for n in padded]
        composite = jnp.asarray(np.stack([p[0] for p in pairs]))
        outside = 1.0 - jnp.asarray(np.stack([p[1] for p in pairs]))
        context = sampling.encode_prompts(pipe, [prompts[n] for n in padded])
        uncond = jnp.broadcast_to(uncond_one, context.shape)
        keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(args.seed), start + i) for i in range(size)])
        images = np.asarray(run(pipe.unet.params, pipe.vae.params, context, uncond, composite, outside, keys))
        if args.mode == "inpaint" and args.blend == "paste":
            images = np.where(np.asarray(outside) > 0.5, images, np.asarray(composite))
        for name, image in zip(chunk, images, strict=False):
            write_image(out / f"{name}.png", to_uint8(image))
        print(f"{min(start + size, len(names))}/{len(names)}", flush=True)
    return {"image": str(out), "step": "none (pretrained base)", "count": len(names)}


def add_parser(sub) -> None:
    """Registers `sd` (the untrained baselines) on the compose command line's subparsers."""
    p = sub.add_parser("sd", help="Stable Diffusion baselines on an AnyScene benchmark (text-only, inpainting)")
    p.set_defaults(run=compose_baseline)
    p.add_argument("mode", choices=MODES, help="text: from the caption; inpaint: around the pasted foreground")
    p.add_argument("--base", required=True, help="SD base folder (inpaint: an inpainting base), or tiny:<base>")
    p.add_argument("--benchmark", required=True, help="a folder from python -m input_pipeline.anyscene_benchmark")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--blend", choices=("paste", "none"), default="paste", help="inpaint: paste the objects back")
    p.add_argument("--batch_size", type=int, default=4, help="pairs per sampling call")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
