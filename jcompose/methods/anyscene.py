"""AnyScene (CVPR 2024): a foreground injection ControlNet on frozen SD 1.5.

F_c (a ControlNet) reads the *composited foreground* c_f (objects at their places on a blank
canvas) and the prompt; its residuals go into the frozen UNet's skip connections. Only F_c trains.

Loss (paper Eq. 6), one jit step:

    L = w_d ||eps - eps_theta||^2  +  w_c L_content(D(x0_hat), x0, M)  +  w_e [t < alpha T] L_edge(...)

with x0_hat the latent x0 estimate from the prediction, D the frozen VAE decoder (`jcompose.losses`
has the pixel terms and their normalisation). The decode runs only when a pixel term has a weight
> 0, in the compute dtype (bf16 on accelerators), optionally rematerialised (`loss.remat_decode`)
so its activations are not kept for the backward pass.

Sampling: classifier-free guidance with the ControlNet residuals on both halves, optional layout
control (paper Eq. 7, `layout_controls`) and, in `jcompose.compose`, Poisson blending of the
original foreground.

Conditioning image (`model.cond_format`):
  "inpaint": [0, 1] RGB with the area to generate set to -1, as the community ControlNet-Inpaint
    (control_v11p_sd15_inpaint) the paper starts from expects (diffusers' make_inpaint_condition);
  "signed": the composite in [-1, 1] as it comes from the pipeline (canvas colour outside).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import anyscene as anyscene_data
from input_pipeline.anyscene_sources import make_anyscene_source
from jcompose import attention, diffusion, losses, storage
from jcompose.methods.base import base_folder as base_model_folder
from jcompose.models import loading

COND_FORMATS = ("inpaint", "signed")


def conditioning_image(foreground: jax.Array, mask: jax.Array, cond_format: str = "inpaint") -> jax.Array:
    """The ControlNet's input: (B, H, W, 3) foreground in [-1, 1], (B, H, W, 1) mask {0,1} -> (B, 3, H, W)."""
    if cond_format == "inpaint":
        cond = jnp.where(mask > 0.5, (foreground + 1.0) / 2.0, -1.0)
    elif cond_format == "signed":
        cond = foreground
    else:
        raise ValueError(f"config.model.cond_format = {cond_format!r}: expected one of {COND_FORMATS}")
    return cond.transpose(0, 3, 1, 2)


def latent_mask(mask: jax.Array, factor: int = 8) -> jax.Array:
    """(B, H, W, 1) pixel mask -> (B, H/f, W/f) latent mask: a latent cell is on if any of its pixels is
    (max pooling), so a foreground word may attend to every cell its object touches."""
    b, h, w, _ = mask.shape
    if h % factor or w % factor:
        raise ValueError(f"mask of {h}x{w} px is not a multiple of the VAE factor {factor}")
    return mask.reshape(b, h // factor, factor, w // factor, factor).max(axis=(2, 4)).astype(jnp.float32)


def controlnet_module(unet_module: Any, controlnet_params: Any) -> Any:
    """The ControlNet module matching a UNet and a ControlNet param tree (the conditioning-embedding
    widths and channels are read from the params, so checkpoints of either initialisation load)."""
    emb = controlnet_params["controlnet_cond_embedding"]
    count = len([k for k in emb if k.startswith("blocks_")]) // 2
    widths = [emb["conv_in"]["kernel"].shape[-1]] + [emb[f"blocks_{2 * i + 1}"]["kernel"].shape[-1]
                                                    for i in range(count)]
    return loading.controlnet_like(unet_module, tuple(int(w) for w in widths),
                                   conditioning_channels=int(emb["conv_in"]["kernel"].shape[2]))


class AnySceneMethod:
    """The AnyScene recipe on the shared engine (see module doc); built from `configs/anyscene.py`."""

    # `train.lora`: refused (jcompose.methods.build). The base UNet is already frozen; the one trained module
    # is F_c, a new ControlNet whose zero convolutions and hint embedding start at zero / at random and are
    # where the foreground enters, so they must train whole, and the paper trains all of F_c.
    lora_refusal = ("its only trained module is the foreground-injection ControlNet F_c, trained whole as the "
                    "paper does: its zero convolutions and hint embedding start from zero / random and have no "
                    "pretrained base to adapt, and the SD 1.5 UNet is frozen already")

    def __init__(self, config):
        self.config = config
        self.dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
        if config.model.cond_format not in COND_FORMATS:
            raise ValueError(f"config.model.cond_format = {config.model.cond_format!r}: expected one of "
                             f"{COND_FORMATS}")
        self.workdir: Path | None = None

    # -------------------------------------------------------------------------------- models
    def _base_folder(self, workdir) -> Path:
        """`model.base` as a folder (a "tiny:<base>" is written into <workdir>/base/<base>)."""
        return base_model_folder(self.config.model.base, workdir, self.config.seed, controlnet=True)

    def load_models(self, base_folder: str | Path, controlnet_params: Any = None) -> None:
        """Loads the frozen base (unet, vae, text encoder, tokenizer, scheduler) and builds F_c.

        F_c's params: `controlnet_params` if given (a trained checkpoint), else the folder
        `config.model.controlnet` ("base" = `<base>/controlnet`), else a copy of the UNet encoder.
        """
        self.pipe = loading.load_pipeline(base_folder, dtype=self.dtype)
        self.schedule = diffusion.make_schedule(self.pipe.scheduler)
        source = self.config.model.controlnet
        if controlnet_params is not None:
            params = controlnet_params
        elif source:
            folder = Path(base_folder) / "controlnet" if source == "base" else Path(source)
            params = loading.load_controlnet(folder, dtype=self.dtype).params
        else:
            params = loading.controlnet_from_unet(self.pipe.unet, rng=jax.random.PRNGKey(self.config.seed)).params
            # Own buffers: the copied encoder must not alias the frozen UNet's (the trainer donates params).
            params = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)
        remat = self.config.model.remat  # per-block jax.checkpoint in training (same values, less memory)
        self.controlnet = controlnet_module(self.pipe.unet.module, params).clone(dtype=self.dtype, remat=remat)
        self.unet = self.pipe.unet.module.clone(remat=remat)
        self.controlnet_params = params

    def init(self, workdir: str) -> tuple[Any, Any]:
        self.workdir = storage.as_path(workdir)  # gs:// stays a bucket path
        self.load_models(self._base_folder(workdir))
        frozen = {"unet": self.pipe.unet.params, "vae": self.pipe.vae.params,
                  "text_encoder": self.pipe.text_encoder.params}
        return {"controlnet": self.controlnet_params}, frozen

    # ---------------------------------------------------------------------------------- data
    def make_source(self):
        """The training source: COCO (or the synthetic set), Open Images and FFHQ-style faces as
        `config.data` turns them on, mixed by weight (input_pipeline/anyscene_sources.py)."""
        if self.config.data.coco_root == "synthetic" and self.workdir is None:
            raise ValueError("config.data.coco_root = 'synthetic' needs init(workdir) first")
        return make_anyscene_source(self.config.data, self.workdir)

    def write_example_inputs(self, batch: dict, folder) -> None:
        """A training batch's first foreground and mask as `folder/fg.png`, `mask.png`: the README's first
        `compose anyscene` after the quick start reads them."""
        from jcompose.methods import example_inputs

        example_inputs.anyscene(batch, folder)

    def tokenize(self, prompts) -> np.ndarray:
        """Prompts -> (B, N) int32 ids padded to the tokenizer's context length."""
        tok = self.pipe.tokenizer
        return np.asarray(tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
                              truncation=True).input_ids, np.int32)

    def make_transform(self):
        d = self.config.data
        composite = anyscene_data.make_transform(
            size=d.image_size, max_objects=d.max_objects, min_object_area=d.min_object_area,
            max_object_area=d.max_object_area, canvas_value=d.canvas_value, jitter_prob=d.jitter_prob)
        tokenize = self.tokenize

        def transform(record: dict, rng: np.random.Generator) -> dict:
            example = composite(record, rng)
            return {"image": example["image"], "foreground": example["foreground"], "mask": example["mask"],
                    "input_ids": tokenize([example["caption"]])[0]}

        return transform

    # ---------------------------------------------------------------------------------- model
    def _context(self, frozen, input_ids):
        text = self.pipe.text_encoder.module
        return text.apply({"params": frozen["text_encoder"]}, input_ids).last_hidden_state.astype(self.dtype)

    def residuals(self, params, x, t, context, cond):
        """F_c's (down residuals, mid residual) for latents x (B, 4, h, w), t (B,), cond (B, 3, H, W)."""
        out = self.controlnet.apply({"params": params["controlnet"]}, x.astype(self.dtype), t, context,
                                    cond.astype(self.dtype), conditioning_scale=self.config.model.conditioning_scale)
        return out.down_block_res_samples, out.mid_block_res_sample

    def predict(self, params, frozen, x, t, context, cond):
        """The UNet's output with F_c's residuals: (B, 4, h, w) float32."""
        down, mid = self.residuals(params, x, t, context, cond)
        return self.unet.apply({"params": frozen["unet"]}, x.astype(self.dtype), t, context,
                          down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid
                          ).sample.astype(jnp.float32)

    def encode(self, frozen, images, key):
        """(B, H, W, 3) in [-1, 1] -> sampled, scaled latents (B, 4, H/8, W/8) float32 (no gradient)."""
        vae = self.pipe.vae.module
        posterior = vae.apply({"params": frozen["vae"]}, images.transpose(0, 3, 1, 2), method=vae.encode).latent_dist
        return jax.lax.stop_gradient((posterior.sample(key) * vae.scaling_factor).astype(jnp.float32))

    def decode(self, frozen, latents):
        """Scaled latents (B, 4, h, w) -> images (B, 8h, 8w, 3) float32, unclipped (differentiable)."""
        vae = self.pipe.vae.module

        def run(vae_params, z):
            out = vae.apply({"params": vae_params}, z / vae.scaling_factor, method=vae.decode)
            return out.sample.transpose(0, 2, 3, 1).astype(jnp.float32)

        if self.config.loss.remat_decode:  # recompute the decoder's activations in the backward pass
            run = jax.checkpoint(run)
        return run(frozen["vae"], latents)

    def loss_terms(self, params, frozen, batch, latents, noise, t):
        """All loss terms for given latents (B, 4, h, w), noise and timesteps t (B,): (loss, metrics)."""
        lc = self.config.loss
        context = jax.lax.stop_gradient(self._context(frozen, batch["input_ids"]))
        cond = conditioning_image(batch["foreground"], batch["mask"], self.config.model.cond_format)
        noisy = diffusion.add_noise(self.schedule, latents, noise, t)
        pred = self.predict(params, frozen, noisy, t, context, cond)
        target = diffusion.training_target(self.schedule, latents, noise, t)
        mse = jnp.mean((pred - target) ** 2)
        metrics = {"mse": mse}
        total = lc.denoise_weight * mse
        if lc.content_weight > 0 or lc.edge_weight > 0:  # static: no decode when no pixel term is on
            x0, _ = diffusion.predict_x0_eps(self.schedule, noisy, pred, t)
            decoded = self.decode(frozen, x0)
            image, mask = batch["image"].astype(jnp.float32), batch["mask"].astype(jnp.float32)
            content = losses.content_loss(decoded, image, mask)
            edge = losses.edge_loss(decoded, image, mask, t, alpha=lc.alpha,
                                    num_train_timesteps=self.schedule.num_train_timesteps,
                                    laplacian_ksize=lc.laplacian_ksize, dilate_k=lc.dilate_kernel,
                                    erode_k=lc.erode_kernel)
            total = total + lc.content_weight * content + lc.edge_weight * edge
            gate = losses.timestep_gate(t, lc.alpha, self.schedule.num_train_timesteps)
            metrics.update(content=content, edge=edge, edge_fraction=jnp.mean(gate))
        return total, metrics

    def draw(self, frozen, batch, rng):
        """The random parts of one loss evaluation: (latents, noise, t), from `rng` as `loss` splits it."""
        k_latent, k_noise, k_t = jax.random.split(rng, 3)
        latents = self.encode(frozen, batch["image"], k_latent)
        noise = jax.random.normal(k_noise, latents.shape)
        t = diffusion.uniform_timesteps(k_t, latents.shape[0], self.schedule.num_train_timesteps)
        return latents, noise, t

    def loss(self, params, frozen, batch, rng):
        return self.loss_terms(params, frozen, batch, *self.draw(frozen, batch, rng))

    # ------------------------------------------------------------------------------- sampling
    def layout_controls(self, batch, tokens, factors=None) -> tuple[attention.Control, ...]:
        """Paper Eq. 7: the cross-attention of `tokens` (positions in the prompt) kept only inside the
        mask, at the layers `factors` (latent/layer ratio; (1, 2, 4) = 64/32/16 at 512 px). The mask reaches
        every resolution by one rule, max pooling from pixels (`sample.layout_reduce = "max"`: a cell is
        on if any of its pixels is; "slice" picks every f-th latent cell instead); with guidance both
        halves are controlled (`sample.layout_halves = "both"`) or only the conditional one ("cond")."""
        if not tokens:
            return ()
        sc = self.config.sample
        factors = tuple(sc.layout_factors if factors is None else factors)
        return (attention.LayoutControl(latent_mask(batch["mask"]), tuple(int(k) for k in tokens), factors,
                                        halves=sc.get("layout_halves", "both"), reduce=sc.get("layout_reduce", "max")),)

    def sample(self, params, frozen, batch, rng, controls=(), num_steps=None, guidance_scale=None):
        """Images (B, H, W, 3) in [-1, 1] generated around `batch` foregrounds.

        batch: foreground (B, H, W, 3) [-1, 1], mask (B, H, W, 1), input_ids (B, N); H, W multiples of 8.
        controls: attention controls on the UNet (e.g. `layout_controls`).
        """
        unet, vae = self.pipe.unet.module, self.pipe.vae.module
        sc = self.config.sample
        num_steps = num_steps or sc.steps
        guidance_scale = sc.guidance_scale if guidance_scale is None else guidance_scale
        context = self._context(frozen, batch["input_ids"])
        uncond = jnp.broadcast_to(self._context(frozen, self.tokenize([""])), context.shape)
        cond = conditioning_image(batch["foreground"], batch["mask"], self.config.model.cond_format)
        cond2 = jnp.concatenate([cond, cond])  # [uncond; cond] halves both see the foreground

        def hook(x_in, t_in, ctx):
            return self.residuals(params, x_in, t_in, ctx, cond2)

        h, w = batch["foreground"].shape[1] // 8, batch["foreground"].shape[2] // 8
        latents = jax.random.normal(rng, (context.shape[0], unet.in_channels, h, w))
        denoise = diffusion.guided_denoiser(unet, frozen["unet"], context, uncond, guidance_scale,
                                            residuals=hook, controls=tuple(controls))
        z = diffusion.sample(denoise, latents, self.schedule, self.pipe.scheduler, num_steps)
        image = vae.apply({"params": frozen["vae"]}, z / vae.scaling_factor, method=vae.decode).sample
        return jnp.clip(image.transpose(0, 2, 3, 1).astype(jnp.float32), -1, 1)

    def attention_maps(self, params, frozen, batch, image, rng, controls=(), factor=1,
                       timesteps=(200, 500, 800)):
        """Head- and layer-averaged cross-attention maps (B, h, w, N) at layers of `factor`, for the
        generated `image` (B, H, W, 3): it is re-noised to each of `timesteps` and the guided UNet's
        conditional half is run with `controls` (the same layout control as sampling) and a capture;
        maps are averaged over the timesteps."""
        context = self._context(frozen, batch["input_ids"])
        cond = conditioning_image(batch["foreground"], batch["mask"], self.config.model.cond_format)
        latents = self.encode(frozen, image, jax.random.fold_in(rng, 0))
        hw = latents.shape[2:]
        total = 0.0
        for i, step in enumerate(timesteps):
            t = jnp.full((latents.shape[0],), step, jnp.int32)
            noisy = diffusion.add_noise(self.schedule, latents, jax.random.normal(jax.random.fold_in(rng, i + 1),
                                                                                latents.shape), t)
            down, mid = self.residuals(params, noisy, t, context, cond)
            capture = attention.CaptureCrossAttention(factor=factor)
            ctx = attention.AttentionContext(tuple(controls) + (capture,), latent_hw=tuple(hw), timestep=t[0])
            _, state = self.pipe.unet.module.apply(
                {"params": frozen["unet"]}, noisy.astype(self.dtype), t, context,
                down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid,
                attention=ctx, mutable=[attention.CAPTURE_COLLECTION])
            total = total + attention.average_captured(state)
        return total / len(timesteps)
