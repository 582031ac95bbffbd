"""Plain SD noise-prediction fine-tuning of the UNet: the engine's reference method.

Loss: the UNet's prediction of the added noise (or v) on VAE latents of the batch images,
conditioned on their captions through the frozen text encoder; MSE against the target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline.sources.shapes import ShapesSource
from jcompose import diffusion
from jcompose.methods.base import base_folder as base_model_folder
from jcompose.models import loading


class DenoiseMethod:
    def __init__(self, config):
        self.config = config
        self.dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32

    # -------------------------------------------------------------------------------- models
    def _base_folder(self, workdir) -> Path:
        """`model.base` as a folder (a "tiny:<base>" is written into <workdir>/base/<base>)."""
        return base_model_folder(self.config.model.base, workdir, self.config.seed)

    def init(self, workdir: str) -> tuple[Any, Any]:
        pipe = loading.load_pipeline(self._base_folder(workdir), dtype=self.dtype)
        self.pipe = pipe
        self.schedule = diffusion.make_schedule(pipe.scheduler)
        return {"unet": pipe.unet.params}, {"vae": pipe.vae.params, "text_encoder": pipe.text_encoder.params}

    # ---------------------------------------------------------------------------------- data
    def make_source(self):
        data = self.config.data
        return ShapesSource(data.num_records, data.image_size, seed=data.seed)

    def make_transform(self):
        tokenizer = self.pipe.tokenizer
        length = tokenizer.model_max_length

        def transform(record: dict) -> dict:
            ids = tokenizer(record["caption"], padding="max_length", max_length=length, truncation=True).input_ids
            return {"image": record["image"], "input_ids": np.asarray(ids, np.int32)}

        return transform

    # ---------------------------------------------------------------------------------- model
    def _context(self, frozen, input_ids):
        text = self.pipe.text_encoder.module
        return text.apply({"params": frozen["text_encoder"]}, input_ids).last_hidden_state.astype(self.dtype)

    def loss(self, params, frozen, batch, rng):
        vae, unet = self.pipe.vae.module, self.pipe.unet.module
        k_latent, k_noise, k_t = jax.random.split(rng, 3)
        images = batch["image"].transpose(0, 3, 1, 2)  # NHWC -> NCHW
        posterior = vae.apply({"params": frozen["vae"]}, images, method=vae.encode).latent_dist
        latents = jax.lax.stop_gradient(posterior.sample(k_latent) * vae.scaling_factor).astype(jnp.float32)
        noise = jax.random.normal(k_noise, latents.shape)
        t = diffusion.uniform_timesteps(k_t, latents.shape[0], self.schedule.num_train_timesteps)
        noisy = diffusion.add_noise(self.schedule, latents, noise, t)
        context = jax.lax.stop_gradient(self._context(frozen, batch["input_ids"]))
        pred = unet.apply({"params": params["unet"]}, noisy.astype(self.dtype), t, context).sample
        target = diffusion.training_target(self.schedule, latents, noise, t)
        loss = jnp.mean((pred.astype(jnp.float32) - target) ** 2)
        return loss, {"mse": loss}

    def sample(self, params, frozen, batch, rng):
        unet, vae = self.pipe.unet.module, self.pipe.vae.module
        context = self._context(frozen, batch["input_ids"])
        uncond_ids = self.pipe.tokenizer([""], padding="max_length", max_length=batch["input_ids"].shape[1],
                                         return_tensors="np").input_ids
        uncond = jnp.broadcast_to(self._context(frozen, uncond_ids), context.shape)
        size = batch["image"].shape[1] // 8
        latents = jax.random.normal(rng, (context.shape[0], unet.out_channels, size, size))
        denoise = diffusion.guided_denoiser(unet, params["unet"], context, uncond, self.config.sample.guidance_scale)
        z = diffusion.sample(denoise, latents, self.schedule, self.pipe.scheduler, self.config.sample.steps)
        image = vae.apply({"params": frozen["vae"]}, z / vae.scaling_factor, method=vae.decode).sample
        return jnp.clip(image.transpose(0, 2, 3, 1).astype(jnp.float32), -1, 1)
