"""AnyDoor: zero-shot object teleportation on SD 2.1-base (ali-vilab/AnyDoor; reference/anydoor.md 1, 2, 4, 5).

* ID tokens: frozen DINOv2 (ViT-g/14) on the 224-px reference (the object on white; ImageNet
  normalisation), [CLS; 256 patches] after the final LayerNorm (257 x 1536), through a linear
  projector to the UNet's context width (1024). They replace the text context in the UNet and in
  the detail extractor; no text encoder is loaded. Table 3's other ID extractors (a CLIP image
  encoder, the global token only) are `model.id_encoder` / `model.id_tokens` (methods/anydoor_id.py);
  its background removal, and Table 4's collages, are data options (input_pipeline/anydoor.py).
* Detail extractor: a ControlNet copy of the UNet encoder that does not see the noisy latent (no
  conv_in: the 4-channel hint embedding -- 16/32/96/256 convs, zero conv to 320 -- is its input),
  reading the collage (HF map in the target box, RGB in [-1, 1]) + shape mask; 13 zero convs; its
  residuals are added to the UNet's mid-block output and to every decoder skip.
* Trained: extractor, projector (`model.train_projector`; the released code never gives it a
  gradient, False reproduces that: it then stays at its seeded random init, in `frozen`), UNet
  decoder (up blocks, conv_norm_out, conv_out). Frozen, with no backward pass: UNet encoder, mid
  block and time embedding (run by `unet.encode` under stop_gradient, as the released no_grad, so
  no gradient reaches the ID tokens through them either), VAE, DINOv2.
* Loss: epsilon MSE (mean over C, h, w and the batch); t from `diffusion.adaptive_timesteps` by each
  example's `dynamic` label. Optional condition dropout (`model.id_dropout`, released: 0): the
  reference becomes a black image, whose tokens are the unconditional ones.
* Sampling: DDIM (eta 0), CFG with the unconditional ID tokens = projector(DINOv2(black image)), the
  hint the same for both halves (the extractor sees each half's tokens, as released).

Param trees: params = {"extractor", "unet_decoder"[, "projector"]}, frozen = {"unet_encoder",
"vae", "dinov2" (or "clip")[, "projector"]}; the UNet trees are the diffusers UNet's, split by top-level name.
With `train.lora.rank` > 0 the pretrained decoder trains as LoRA adapters (`jcompose.lora`): params
"unet_decoder_lora" instead of "unet_decoder", which moves to frozen; the extractor (new zero
convolutions and hint embedding) and the projector (new) have no pretrained base to adapt and train whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from input_pipeline import anydoor as anydoor_data
from input_pipeline import anydoor_collage
from jcompose import diffusion, lora, storage
from jcompose.methods import anydoor_id
from jcompose.methods.anydoor_id import write_tiny_dinov2  # noqa: F401 (its old home; bench imports it here)
from jcompose.methods.base import base_folder as base_model_folder
from jcompose.models import loading, vit
from jcompose.models.controlnet import HINT_INITS, ConditioningEmbedding, init_conditioning_embedding
from jcompose.models.diffusers_config import ConfigError

DECODER_KEYS = ("conv_norm_out", "conv_out")  # plus every "up_blocks_<i>"


def is_decoder_key(name: str) -> bool:
    """Whether a top-level UNet param name belongs to the decoder (trained by AnyDoor)."""
    return name.startswith("up_blocks") or name in DECODER_KEYS


def split_unet(params: dict) -> tuple[dict, dict]:
    """UNet params -> (encoder: conv_in, time embedding, down blocks, mid block; decoder)."""
    encoder = {k: v for k, v in params.items() if not is_decoder_key(k)}
    decoder = {k: v for k, v in params.items() if is_decoder_key(k)}
    return encoder, decoder


def latent_box(mask_channel: jax.Array, factor: int = 8) -> jax.Array:
    """(B, H, W) collage mask channel ({-1, 0, 1}) -> (B, H/f, W/f) float {0, 1}: latent cells with any
    pixel inside the box / shape mask (where the object is generated; for the `box_mse` metric)."""
    b, h, w = mask_channel.shape
    cells = mask_channel.reshape(b, h // factor, factor, w // factor, factor).max(axis=(2, 4))
    return (cells > 0.5).astype(jnp.float32)


class AnyDoorMethod:
    """The AnyDoor recipe (see module doc); built from `configs/anydoor.py`."""

    trains_lora = True  # `train.lora`: adapters of the UNet decoder (module doc)

    def __init__(self, config):
        self.config = config
        self.dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
        if config.model.dinov2_interpolation not in vit.INTERPOLATIONS:
            raise ConfigError(f"config.model.dinov2_interpolation = {config.model.dinov2_interpolation!r}: expected "
                              f"one of {vit.INTERPOLATIONS}")
        if config.model.hint_init not in HINT_INITS:
            raise ConfigError(f"config.model.hint_init = {config.model.hint_init!r}: expected one of {HINT_INITS}")
        if not 0.0 <= config.model.id_dropout < 1.0:
            raise ConfigError(f"config.model.id_dropout = {config.model.id_dropout!r}: expected a probability in [0, 1)")
        check_ablations(config)
        self.lora = lora.spec_from_config(config)  # None: the decoder trains whole
        self.workdir: Path | None = None

    # -------------------------------------------------------------------------------- models
    def base_folder(self, workdir) -> Path:
        """`model.base` as a folder (a "tiny:<base>" is written into <workdir>/base/<base>)."""
        return base_model_folder(self.config.model.base, workdir, self.config.seed)

    def dinov2_folder(self, workdir: str | Path | None) -> Path:
        """`model.dinov2`, or for "tiny" a tiny random DINOv2 (37x37 grid) written (once) into <workdir>/dinov2."""
        if self.config.model.dinov2 == "tiny":
            folder = Path(workdir) / "dinov2"
            if not (folder / "config.json").is_file():
                write_tiny_dinov2(folder, self.config.seed + 5)
            return folder
        return Path(self.config.model.dinov2)

    def clip_folder(self, workdir: str | Path | None) -> Path:
        """`model.clip`, or for "tiny" a tiny random CLIP (224 px, patch 14) written (once) into <workdir>/clip."""
        if self.config.model.clip == "tiny":
            folder = Path(workdir) / "clip"
            if not (folder / "config.json").is_file():
                anydoor_id.write_tiny_clip(folder, self.config.seed + 6)
            return folder
        return Path(self.config.model.clip)

    def id_encoder_folder(self, workdir: str | Path | None) -> Path:
        """The folder of the ID extractor `model.id_encoder` names (DINOv2 or CLIP)."""
        return self.clip_folder(workdir) if self.config.model.id_encoder == "clip" else self.dinov2_folder(workdir)

    def load_models(self, base_folder: str | Path, id_folder: str | Path) -> None:
        """Loads the SD 2.x UNet, VAE and scheduler and the ID extractor's encoder (`id_folder`: DINOv2, or
        CLIP with `model.id_encoder="clip"`); builds the extractor module.

        Raises ConfigError naming the file for a UNet whose cross_attention_dim is not
        `model.context_dim` (1024: SD 2.x) or a base that does not predict epsilon.
        """
        m = self.config.model
        base_folder = Path(base_folder)
        try:
            self.pipe = loading.load_pipeline(base_folder, ("unet", "vae", "scheduler"), dtype=self.dtype,
                                              unet_expect={"cross_attention_dim": m.context_dim, "in_channels": 4})
        except ConfigError as err:
            raise ConfigError(f"{err}: AnyDoor needs an SD 2.x base with a {m.context_dim}-d context and a 4-channel "
                              "UNet (released: stable-diffusion-2-1-base)") from None
        if self.pipe.scheduler.prediction_type != "epsilon":
            raise ConfigError(f"{base_folder / 'scheduler' / 'scheduler_config.json'}: prediction_type = "
                              f"{self.pipe.scheduler.prediction_type!r}; AnyDoor trains eps-prediction on "
                              "SD 2.1-base (512 px), not the 768-px v-prediction SD 2.1")
        self.schedule = diffusion.make_schedule(self.pipe.scheduler)
        self.unet = self.pipe.unet.module.clone(remat=m.remat)
        self.vae = self.pipe.vae.module
        self.id_encoder, self.id_encoder_params = anydoor_id.load(
            m.id_encoder, id_folder, dtype=self.dtype, reference_size=self.config.data.reference_size,
            dinov2_interpolation=m.dinov2_interpolation)
        if m.id_encoder == "dinov2":
            self.dinov2, self.dinov2_params = self.id_encoder.module, self.id_encoder_params
        self.extractor = loading.controlnet_like(self.unet, tuple(m.hint_widths), conditioning_channels=4,
                                                 reads_latent=False).clone(remat=m.remat)

    def init_extractor(self, unet_params: dict, rng: jax.Array) -> dict:
        """The extractor's params: the UNet encoder's time embedding, down and mid blocks copied; a fresh
        hint embedding (`model.hint_init`: torch's nn.Conv2d default as released, or Flax's; its last conv
        zero); every zero conv zero (so its residuals start at 0)."""
        expected = loading.abstract_params(self.extractor)
        size = 2 ** len(self.config.model.hint_widths)
        embedding = ConditioningEmbedding(self.unet.block_out_channels[0], tuple(self.config.model.hint_widths))
        params = {}
        for name, spec in expected.items():
            if name == "controlnet_cond_embedding":
                params[name] = jax.jit(init_conditioning_embedding, static_argnums=(0, 2, 3, 4))(
                    embedding, rng, 4, size, self.config.model.hint_init)
            elif name in unet_params:
                params[name] = unet_params[name]
            else:
                params[name] = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), spec)
        return params

    def init_projector(self, seed: int) -> dict:
        """The ID encoder's linear layer(s) to the context width (methods/anydoor_id.py: DINOv2 (D_dino ->
        D_context) {"kernel", "bias"}), initialised as torch.nn.Linear (U(+-1/sqrt(fan_in)))."""
        return self.id_encoder.init_projector(seed, self.unet.cross_attention_dim,
                                              self.config.model.id_tokens == "global")

    def init(self, workdir: str) -> tuple[Any, Any]:
        """Loads the models and builds (params, frozen) as the module doc lists them; the projector's init is
        seeded (config.seed + 7), so a run with `train_projector` False rebuilds the same one."""
        self.workdir = storage.as_path(workdir)  # gs:// stays a bucket path
        self.load_models(self.base_folder(workdir), self.id_encoder_folder(workdir))
        encoder, decoder = split_unet(self.pipe.unet.params)
        params = {"extractor": self.init_extractor(self.pipe.unet.params, jax.random.PRNGKey(self.config.seed))}
        frozen = {"unet_encoder": encoder, "vae": self.pipe.vae.params, self.id_encoder.key: self.id_encoder_params}
        if self.lora:
            params["unet_decoder_lora"] = lora.init(decoder, self.lora, jax.random.PRNGKey(self.config.seed + 11),
                                                    what="AnyDoor's trained UNet decoder")
            frozen["unet_decoder"] = decoder
        else:
            params["unet_decoder"] = decoder
        (params if self.config.model.train_projector else frozen)["projector"] = self.init_projector(
            self.config.seed + 7)
        return params, frozen

    # ---------------------------------------------------------------------------------- data
    def make_source(self):
        """The released mixture of the datasets in `data.roots` (input_pipeline/anydoor_mixture.py), or with
        `data.synthetic` a generated YouTube-VOS-layout + COCO-layout set in <workdir>/data."""
        from input_pipeline import anydoor_mixture

        d = self.config.data
        if d.synthetic:
            if self.workdir is None:
                raise ValueError("config.data.synthetic needs init(workdir) first (the data is written there)")
            return synthetic_mixture(self.workdir / "data", d)
        roots = {k: str(v) for k, v in d.roots.items() if v}
        if not roots:
            raise ValueError(f"config.data.roots: no dataset folder given; set at least one of "
                             f"{', '.join('config.data.roots.' + k for k in d.roots)} (layouts: "
                             "input_pipeline/anydoor_mixture.py), or config.data.synthetic=True for a generated set")
        return anydoor_mixture.released_mixture(roots, seed=d.seed, weights=dict(d.weights),
                                                frame_order=d.frame_order)

    def write_example_inputs(self, batch: dict, folder) -> None:
        """With the generated set (`data.synthetic`, the tiny run), a reference, its mask, a background and
        a target mask from it in `folder` (reference.png, reference_mask.png, background.png, mask.png):
        the README's first `compose anydoor` after the tiny run reads them. Nothing for real data."""
        del batch  # AnyDoor's training examples are crops and collages, not compose's inputs
        if self.config.data.synthetic and self.workdir is not None:
            from jcompose.methods import example_inputs

            example_inputs.anydoor(self.workdir / "data", str(folder))

    def make_transform(self, **overrides):
        """The released `process_pairs` (input_pipeline/anydoor.py) at the config's sizes; keyword
        arguments override `anydoor.make_transform`'s (e.g. inference settings)."""
        d = self.config.data
        kwargs = dict(size=d.image_size, ref_size=d.reference_size, box_mask_prob=d.box_mask_prob,
                      collage=d.collage, collage_noise_alpha_bar=d.collage_noise_alpha_bar,
                      collage_shuffle_grid=d.collage_shuffle_grid, remove_background=d.remove_background)
        return anydoor_data.make_transform(**{**kwargs, **overrides})

    # ---------------------------------------------------------------------------------- model
    def projector(self, params, frozen) -> dict:
        """The projector's {"kernel" (D_dino, D_context), "bias"}: trained or frozen, wherever it is."""
        return params["projector"] if "projector" in params else frozen["projector"]

    def id_tokens(self, params, frozen, reference: jax.Array) -> jax.Array:
        """(B, R, R, 3) reference in [-1, 1] -> ID tokens (B, 1 + (R/14)^2, D_context) in the compute dtype
        (DINOv2 or CLIP, `model.id_encoder`); (B, 1, D_context) with `model.id_tokens="global"`."""
        tokens = self.id_encoder.tokens(frozen[self.id_encoder.key], self.projector(params, frozen), reference,
                                        self.config.model.id_tokens == "global", self.dtype)
        if "projector" not in params:
            tokens = jax.lax.stop_gradient(tokens)
        return tokens.astype(self.dtype)

    def uncond_tokens(self, params, frozen, like: jax.Array) -> jax.Array:
        """projector(DINOv2(black image)) broadcast to the shape of `like` (B, N, D)."""
        size = self.config.data.reference_size
        black = -jnp.ones((1, size, size, 3), jnp.float32)
        return jnp.broadcast_to(self.id_tokens(params, frozen, black), like.shape)

    def residuals(self, params, t, context, hint):
        """The extractor's (13 down residuals (NHWC), mid residual) for hint (B, 4, H, W), t (B,), tokens."""
        out = self.extractor.apply({"params": params["extractor"]}, None, t, context, hint.astype(self.dtype),
                                   conditioning_scale=self.config.model.control_scale)
        return out.down_block_res_samples, out.mid_block_res_sample

    def predict(self, params, frozen, noisy, t, context, hint) -> jax.Array:
        """Noise prediction (B, 4, h, w) float32: frozen encoder (no backward), residuals, trained decoder."""
        down, mid = self.residuals(params, t, context, hint)
        state = self.unet.apply({"params": frozen["unet_encoder"]}, noisy.astype(self.dtype), t, context,
                                method=self.unet.encode)
        state = jax.lax.stop_gradient(state)
        if len(down) != len(state.skips):
            raise ValueError(f"{len(down)} extractor residuals for {len(state.skips)} UNet skips")
        state = state.replace(skips=tuple(s + r.astype(s.dtype) for s, r in zip(state.skips, down)),
                              hidden=state.hidden + mid.astype(state.hidden.dtype))
        out = self.unet.apply({"params": self.decoder_params(params, frozen)}, state, context, method=self.unet.decode)
        return out.sample.astype(jnp.float32)

    def latents(self, frozen, images, key) -> jax.Array:
        """(B, H, W, 3) in [-1, 1] -> sampled scaled latents (B, 4, H/8, W/8) float32, no gradient."""
        dist = self.vae.apply({"params": frozen["vae"]}, images.astype(self.dtype).transpose(0, 3, 1, 2),
                              method=self.vae.encode).latent_dist
        return jax.lax.stop_gradient((dist.sample(key) * self.vae.scaling_factor).astype(jnp.float32))

    def draw(self, frozen, batch, rng):
        """The random parts of one loss: (latents, noise, t, dropped (B,) bool), from `rng` as `loss` splits it."""
        k_latent, k_noise, k_t, k_drop = jax.random.split(rng, 4)
        latents = self.latents(frozen, batch["target"], k_latent)
        noise = jax.random.normal(k_noise, latents.shape)
        t = diffusion.adaptive_timesteps(k_t, jnp.asarray(batch["dynamic"]), self.schedule.num_train_timesteps,
                                         self.config.loss.uniform_probability)
        dropped = jax.random.uniform(k_drop, (latents.shape[0],)) < self.config.model.id_dropout
        return latents, noise, t, dropped

    def loss_terms(self, params, frozen, batch, latents, noise, t, dropped):
        """Epsilon MSE for given draws (see `draw`): (loss, metrics)."""
        reference = jnp.where(dropped[:, None, None, None], -1.0, batch["reference"].astype(jnp.float32))
        context = self.id_tokens(params, frozen, reference)
        hint = batch["collage"].astype(jnp.float32).transpose(0, 3, 1, 2)
        noisy = diffusion.add_noise(self.schedule, latents, noise, t)
        pred = self.predict(params, frozen, noisy, t, context, hint)
        err = (pred - diffusion.training_target(self.schedule, latents, noise, t)) ** 2
        mse = jnp.mean(err)
        box = latent_box(batch["collage"][..., 3])[:, None]
        box_mse = jnp.sum(err * box) / jnp.maximum(jnp.sum(box) * err.shape[1], 1.0)
        return mse, {"mse": mse, "box_mse": box_mse, "t_mean": jnp.mean(t.astype(jnp.float32))}

    def loss(self, params, frozen, batch, rng):
        """Epsilon MSE of one batch (reference, target, collage, dynamic from the transform): (loss, metrics)."""
        return self.loss_terms(params, frozen, batch, *self.draw(frozen, batch, rng))

    # ------------------------------------------------------------------------------- sampling
    def decoder_params(self, params, frozen) -> dict:
        """The trained decoder, or with LoRA the frozen one with each adapted kernel W + alpha/r A B."""
        if "unet_decoder_lora" in params:
            return lora.merge(frozen["unet_decoder"], params["unet_decoder_lora"], self.lora.scale)
        return params["unet_decoder"]

    def unet_params(self, params, frozen) -> dict:
        """The whole UNet tree: frozen encoder + trained decoder."""
        return {**frozen["unet_encoder"], **self.decoder_params(params, frozen)}

    def sample(self, params, frozen, batch, rng, num_steps=None, guidance_scale=None, noise=None):
        """Generated target squares (B, H, W, 3) in [-1, 1].

        batch: reference (B, R, R, 3) in [-1, 1], collage (B, H, W, 4) (RGB in [-1, 1], mask channel in
        {-1, 0, 1}); H, W multiples of 8. noise: optional initial latents (B, 4, H/8, W/8) (else drawn
        from `rng`), so several objects can be generated in one call with the noise of single calls.
        """
        sc = self.config.sample
        num_steps = num_steps or sc.steps
        guidance_scale = sc.guidance_scale if guidance_scale is None else guidance_scale
        context = self.id_tokens(params, frozen, jnp.asarray(batch["reference"], jnp.float32))
        uncond = self.uncond_tokens(params, frozen, context)
        hint = jnp.asarray(batch["collage"], jnp.float32).transpose(0, 3, 1, 2)
        hint2 = jnp.concatenate([hint, hint])  # [uncond; cond] halves see the same hint

        def hook(x_in, t_in, ctx):
            return self.residuals(params, t_in, ctx, hint2)

        b, h, w = hint.shape[0], hint.shape[2] // 8, hint.shape[3] // 8
        latents = jax.random.normal(rng, (b, self.unet.in_channels, h, w)) if noise is None else noise
        denoise = diffusion.guided_denoiser(self.unet, self.unet_params(params, frozen), context, uncond,
                                            guidance_scale, residuals=hook)
        z = diffusion.sample(denoise, latents, self.schedule, self.pipe.scheduler, num_steps, method="ddim",
                             eta=sc.eta, rng=jax.random.fold_in(rng, 1) if sc.eta > 0 else None)
        image = self.vae.apply({"params": frozen["vae"]}, (z / self.vae.scaling_factor).astype(self.dtype),
                               method=self.vae.decode).sample
        return jnp.clip(image.transpose(0, 2, 3, 1).astype(jnp.float32), -1, 1)


def check_ablations(config) -> None:
    """ConfigError naming the field for an ablation option (paper Tables 3 and 4, timestep sampling) out of range."""
    m, d = config.model, config.data
    for field, value, allowed in (("model.id_encoder", m.id_encoder, anydoor_id.ID_ENCODERS),
                                  ("model.id_tokens", m.id_tokens, anydoor_id.ID_TOKENS),
                                  ("data.collage", d.collage, anydoor_collage.COLLAGE_KINDS)):
        if value not in allowed:
            raise ConfigError(f"config.{field} = {value!r}: expected one of {allowed} (configs/anydoor.py)")
    try:
        anydoor_collage.check(d.collage, d.reference_size, d.collage_noise_alpha_bar, d.collage_shuffle_grid)
    except ValueError as err:
        raise ConfigError(f"config.data.{err}") from None
    if not 0.0 <= config.loss.uniform_probability <= 1.0:
        raise ConfigError(f"config.loss.uniform_probability = {config.loss.uniform_probability!r}: expected a share "
                          "in [0, 1] (0.3 released adaptive sampling, 1.0 uniform)")


def synthetic_mixture(root: Path, data) -> Any:
    """The generated training set: YouTube-VOS-layout video pairs (tagged as ytb_vos) and COCO-layout
    same-image pairs (tagged as lvis), mixed at their released weights; written under `root` once."""
    from input_pipeline import anydoor_mixture, pipeline
    from input_pipeline.sources import coco, synthetic, video

    if not (root / "youtube_vos" / "meta.json").is_file():
        synthetic.write_synthetic(root, num_images=data.num_images, num_videos=data.num_videos,
                                  num_frames=data.num_frames, image_size=(96, 128), seed=data.seed)
    clips = video.VideoSource(root / "youtube_vos", "youtube_vos", frame_order=data.frame_order)
    images = coco.CocoSource(root / "coco" / "images", root / "coco" / "annotations" / "instances.json")
    weights = anydoor_mixture.RELEASED_WEIGHTS
    return pipeline.mix_sources([
        (clips, weights["ytb_vos"], anydoor_mixture.TagPair("ytb_vos", video.sample_pair)),
        (images, weights["lvis"], anydoor_mixture.TagPair("lvis", coco.image_pair))], seed=data.seed)
