"""Text-to-image sampling from a loaded base model, with attention controls.

The building blocks (`diffusion.guided_denoiser`, `diffusion.sample`, `jcompose.attention`) are
what the methods compose; this module wires them for the plain case and for benchmarks:

    pipe = loading.load_pipeline("stable-diffusion-v1-5")
    images = sampling.text_to_image(pipe, ["a photo of a dog on the beach"], num_steps=50)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jcompose import attention, diffusion
from jcompose.models.loading import Pipeline

ControlsFn = Callable[[tuple[int, int]], Sequence[attention.Control]]


def encode_prompts(pipe: Pipeline, prompts: Sequence[str]) -> jax.Array:
    """(B, N, D) text-encoder context of `prompts`, padded/truncated to the tokenizer's length."""
    ids = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="np").input_ids
    return pipe.text_encoder.module.apply({"params": pipe.text_encoder.params}, ids).last_hidden_state


def make_generator(pipe: Pipeline, num_steps: int, *, method: str = "ddim", guidance_scale: float = 7.5,
                   controls: Sequence[attention.Control] = (), eta: float = 0.0) -> Callable:
    """A jitted (context, uncond_context, latents, rng) -> images function for one step count.

    The whole loop (batched CFG UNet calls under `lax.scan`) and the VAE decode compile once per
    input shape. Images come back NHWC float32 in [-1, 1].
    """
    unet, vae = pipe.unet, pipe.vae
    schedule = diffusion.make_schedule(pipe.scheduler)
    scaling = vae.module.scaling_factor

    # Parameters are arguments, not closure constants: XLA would otherwise embed every weight in
    # the compiled program (GBs at full size, slow compiles).
    @jax.jit
    def generate(unet_params, vae_params, context, uncond_context, latents, rng):
        denoise = diffusion.guided_denoiser(unet.module, unet_params, context, uncond_context, guidance_scale,
                                            controls=controls)
        z = diffusion.sample(denoise, latents, schedule, pipe.scheduler, num_steps, method=method, eta=eta, rng=rng)
        image = vae.module.apply({"params": vae_params}, z / scaling, method=vae.module.decode).sample
        return jnp.clip(image.transpose(0, 2, 3, 1).astype(jnp.float32), -1, 1)

    return functools.partial(generate, unet.params, vae.params)


def text_to_image(pipe: Pipeline, prompts: Sequence[str], *, num_steps: int = 50, guidance_scale: float = 7.5,
                  method: str = "ddim", height: int | None = None, width: int | None = None, seed: int = 0,
                  controls: Sequence[attention.Control] = (), negative_prompt: str = "") -> np.ndarray:
    """Samples one image per prompt: (B, H, W, 3) float32 in [-1, 1].

    Args:
      pipe: a loaded pipeline with unet, vae, text_encoder, tokenizer and scheduler.
      prompts: one prompt per image.
      num_steps, guidance_scale, method: sampler settings (SD defaults: 50, 7.5, DDIM).
      height, width: image size in pixels, multiples of 8 (default: the UNet's sample_size x 8).
      seed: seed of the initial noise.
      controls: attention controls; masks in them are at latent resolution (height/8, width/8).
      negative_prompt: the unconditional prompt.
    """
    size = pipe.unet.module.sample_size * 8
    height, width = height or size, width or size
    if height % 8 or width % 8:
        raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
    context = encode_prompts(pipe, prompts)
    uncond = encode_prompts(pipe, [negative_prompt] * len(prompts))
    channels = pipe.unet.module.out_channels
    rng_noise, rng_sampler = jax.random.split(jax.random.PRNGKey(seed))
    latents = jax.random.normal(rng_noise, (len(prompts), channels, height // 8, width // 8))
    generate = make_generator(pipe, num_steps, method=method, guidance_scale=guidance_scale, controls=controls)
    return np.asarray(generate(context, uncond, latents, rng_sampler))
