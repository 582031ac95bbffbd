"""DreamCom: fine-tune the SD 1.5 inpainting UNet on 3-5 photos of one object, then inpaint it into a box.

The released recipe (bcmi/DreamCom-Image-Composition; reference/dreamcom.md A.1-A.3), on the shared engine:

* the whole 9-channel UNet trains (text encoder optionally, `model.train_text_encoder`); VAE frozen; or,
  with `train.lora.rank` > 0, only LoRA adapters of the UNet (`jcompose.lora`: params {"unet_lora"}, the base
  UNet in frozen, the effective kernels W + alpha/r A B formed in `unet_params` for the loss and sampling);
* UNet input = [noisy latents; box mask at latent size (nearest: m[::8, ::8]); masked-image latents]
  (the masked image is the photo with its box set to 0; both latents are VAE samples, as released);
* loss = epsilon MSE weighted by the padding-free loss mask, per sample sum over (C, h, w) divided by
  the mask's sum over (h, w) (the released normalisation, so C times a per-element mean), then the
  batch mean; t uniform;
* context: the released token layout. E_empty = CLIP(""), with positions 1..n replaced by the instance
  prompt's ("a photo of sks <class>") and n+1..2n by the background prompt's ("background"), n = (L-1)//2
  (38 of 77); masked cross-attention at every layer, in training and sampling: inside the box only
  tokens 1..n, outside nothing, SOT dropped, no renormalisation;
* prior preservation (`train.prior`, off as released; `dreamcom_prior.py`): class images of the base model
  paired with the photos, one UNet call on [instances; class examples], loss = instance + weight * prior;
* sampling: DDIM (50 steps, CFG 7.5, both halves masked), masked self-attention on the released layers
  (the last 5 decoder self-attention layers, `sample.self_attention = "released"`) or the paper's rule
  (every self-attention layer except the last 6 of the decoder: 10 of SD 1.5's 16, `"paper"`), or none.

One model per object: the engine trains several objects at once by vmapping this loss over a leading
model axis (`num_models`, `make_source(k)`, `make_transform(k)`); the method itself sees one object.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import dreamcom as dreamcom_data
from input_pipeline import dreamcom_objects, dreamcom_prior
from jcompose import attention, attention_kernels, diffusion, lora, storage
from jcompose.methods import dreamcom_prior as prior_preservation
from jcompose.methods.base import base_folder as base_model_folder
from jcompose.models import loading, lora_files

SELF_ATTENTION_RULES = ("released", "paper", "none")
VAE_FACTOR = 8


def latent_mask(mask: jax.Array) -> jax.Array:
    """(B, H, W, 1) pixel mask -> (B, H/8, W/8) by nearest sampling (m[::8, ::8], torch's default rule)."""
    return mask[:, ::VAE_FACTOR, ::VAE_FACTOR, 0].astype(jnp.float32)


def masked_mse(pred: jax.Array, target: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """The released loss: per sample sum((pred - target)^2 * m) over (C, h, w) / sum(m) over (h, w), batch mean.

    pred, target: (B, C, h, w); loss_mask: (B, h, w) in {0, 1}.
    """
    m = loss_mask[:, None]
    per_sample = jnp.sum((pred - target) ** 2 * m, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(m, axis=(1, 2, 3)), 1.0)
    return jnp.mean(per_sample)


def prior_preservation_loss(pred: jax.Array, target: jax.Array, loss_mask: jax.Array,
                            weight: float) -> tuple[jax.Array, dict]:
    """Prior preservation on a (2B, C, h, w) prediction of [B instance rows; B class rows] (diffusers'
    DreamBooth: `chunk(2)`): loss = masked_mse(instance half) + weight * masked_mse(class half);
    returns (loss, {"instance_loss", "prior_loss"})."""
    pred_instance, pred_class = jnp.split(pred, 2, axis=0)
    target_instance, target_class = jnp.split(target, 2, axis=0)
    mask_instance, mask_class = jnp.split(loss_mask, 2, axis=0)
    instance = masked_mse(pred_instance, target_instance, mask_instance)
    prior = masked_mse(pred_class, target_class, mask_class)
    return instance + weight * prior, {"instance_loss": instance, "prior_loss": prior}


def self_attention_names(unet, params) -> list[str]:
    """Names of every self-attention layer of a 9-channel inpainting `unet` in call order (encoder, mid
    block, decoder), traced abstractly: `params` may be `jax.ShapeDtypeStruct`s (no weights, no FLOPs)."""
    size = 2 ** len(unet.down_block_types)
    calls = []

    def trace(p):
        calls.extend(attention.attention_layers(lambda ctx: unet.apply(
            {"params": p}, jnp.zeros((1, unet.in_channels, size, size)), jnp.ones((1,), jnp.int32),
            jnp.zeros((1, 1, unet.cross_attention_dim)), attention=ctx), (size, size)))
        return jnp.zeros(())

    with attention_kernels.not_recording():  # a probe, not a call of the program (plan's attention table)
        jax.eval_shape(trace, params)
    return [c.name for c in calls if not c.is_cross]


def self_attention_rule_layers(names: list[str], rule: str) -> frozenset[str]:
    """The layers masked self-attention acts on, of `names` (the UNet's self-attention layer names in call
    order, `self_attention_names`): "released" = the last 5 of the decoder (bcmi/DreamCom's inference: up
    32x32 layers 2 and 3, all three up 64x64 layers), "paper" = every layer except the last 6 of the
    decoder (the paper's Sec. 4.3 and implementation details; on SD 1.5 the 6 encoder layers, the mid
    block and the 16x16 decoder block: 10 of 16), "none" = none. A rule that picks no layer of a UNet
    that has some raises ValueError rather than silently masking nothing."""
    if rule not in SELF_ATTENTION_RULES:
        raise ValueError(f"self-attention rule {rule!r}: expected one of {SELF_ATTENTION_RULES}")
    decoder = [name for name in names if name.startswith("up_blocks")]
    chosen = {"released": decoder[-5:], "paper": [n for n in names if n not in decoder[-6:]], "none": []}[rule]
    if rule != "none" and names and not chosen:
        raise ValueError(f"self-attention rule {rule!r} picks none of this UNet's {len(names)} self-attention "
                         "layers: use 'released' or 'none'")
    return frozenset(chosen)


class DreamComMethod:
    """The DreamCom recipe (see module doc); built from `configs/dreamcom.py`."""

    trains_lora = True  # `train.lora`: adapters of the UNet (methods.build refuses LoRA for methods without)

    def __init__(self, config):
        self.config = config
        self.dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
        if config.sample.self_attention not in SELF_ATTENTION_RULES:
            raise ValueError(f"config.sample.self_attention = {config.sample.self_attention!r}: expected one of "
                             f"{SELF_ATTENTION_RULES}")
        self.objects = dreamcom_objects.parse_objects(config.data)
        self.lora = lora.spec_from_config(config)  # None: the whole UNet trains
        self.prior = prior_preservation.spec_from_config(config)  # None: no prior preservation
        self.workdir: Path | None = None

    @property
    def num_models(self) -> int:
        """Independent models the run trains: one per object."""
        return len(self.objects)

    @property
    def model_names(self) -> list[str]:
        """The objects' names, in model order (checkpoint rows, export folders, `compose --object`)."""
        return [o.name for o in self.objects]

    def export(self, params, folder: str | Path) -> None:
        """One object's fine-tuned UNet (and text encoder, if trained) as diffusers/transformers folders
        `folder/unet`, `folder/text_encoder`: load with diffusers' `UNet2DConditionModel.from_pretrained`
        and use them in an inpainting pipeline of the base model. A LoRA run's UNet is the merged one (base +
        adapters), and its adapters are also written as `folder/pytorch_lora_weights.safetensors`, which
        ``pipe.load_lora_weights(folder)`` applies to a pipeline of the base."""
        from jcompose.models import encoders

        unet = self.unet_params(params, self.frozen_of(params))
        loading.export_diffusers(self.pipe.unet.module, unet, Path(folder) / "unet")
        if "unet_lora" in params:
            lora_files.write(Path(folder) / lora_files.WEIGHT_NAME, params["unet_lora"], self.lora)
        if "text_encoder" in params:
            encoders.export_encoder(self.pipe.text_encoder.module, params["text_encoder"], Path(folder) / "text_encoder")

    # -------------------------------------------------------------------------------- models
    def base_folder(self, workdir) -> Path:
        """`model.base` as a folder (a "tiny:<base>" is written into <workdir>/base/<base>)."""
        return base_model_folder(self.config.model.base, workdir, self.config.seed)

    def load_models(self, base_folder: str | Path) -> None:
        """The inpainting base: 9-channel UNet, VAE, text encoder, tokenizer, scheduler."""
        self.pipe = loading.load_pipeline(base_folder, dtype=self.dtype, unet_expect={"in_channels": 9})
        self.schedule = diffusion.make_schedule(self.pipe.scheduler)

    def init(self, workdir: str) -> tuple[Any, Any]:
        self.workdir = storage.as_path(workdir)  # gs:// stays a bucket path
        self.load_models(self.base_folder(workdir))
        unet = self.pipe.unet.params
        params = {"unet_lora": lora.init(unet, self.lora, jax.random.PRNGKey(self.config.seed))} if self.lora else {
            "unet": unet}
        if self.config.model.train_text_encoder:
            params["text_encoder"] = self.pipe.text_encoder.params
        return params, self.frozen_of(params)

    def frozen_of(self, params) -> dict:
        """The loaded modules that a trained tree `params` (the run's params or a checkpoint's) does not hold:
        the VAE, the text encoder unless it trained, and with LoRA the base UNet."""
        frozen = {"vae": self.pipe.vae.params}
        if "text_encoder" not in params:
            frozen["text_encoder"] = self.pipe.text_encoder.params
        if "unet_lora" in params:
            frozen["unet"] = self.pipe.unet.params
        return frozen

    def unet_params(self, params, frozen) -> dict:
        """The UNet params a call uses: the trained UNet, or with LoRA the base with each adapted kernel
        W + alpha/r A B (`lora.merge`; under jit, formed once per loss or sampling call)."""
        if "unet_lora" in params:
            return lora.merge(frozen["unet"], params["unet_lora"], self.lora.scale)
        return params["unet"]

    # ---------------------------------------------------------------------------------- data
    def _resolved(self, index: int):
        ref, source = dreamcom_objects.resolve(self.objects[index], self.config.data, self.workdir)
        self.objects[index] = ref
        return ref, source

    def make_source(self, index: int = 0):
        """The reference photos (with masks) of object `index`; with prior preservation each paired with a class
        image of its class folder, whose missing images are generated first (`dreamcom_prior`)."""
        ref, source = self._resolved(index)
        if self.prior is None:
            return source
        if not prior_preservation.has_weights(self):  # jcompose.plan (shapes only): the photos stand in
            return dreamcom_prior.PairedSource(source, source)
        from input_pipeline.sources.class_images import ClassImageSource

        prior_preservation.check_shared_folders(self.prior, [self._resolved(k)[0].class_noun
                                                             for k in range(self.num_models)], self.workdir)
        folder = prior_preservation.ensure_class_images(self, self.prior, ref.class_noun)
        return dreamcom_prior.PairedSource(source, ClassImageSource(folder, self.prior.num_class_images))

    def tokenize(self, prompts) -> np.ndarray:
        """Prompts -> (B, L) int32 ids padded with the tokenizer's pad token to its context length."""
        tok = self.pipe.tokenizer
        return np.asarray(tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
                              truncation=True).input_ids, np.int32)

    def prompt(self, index: int = 0) -> str:
        m = self.config.model
        return m.template.format(token=m.token, noun=self._resolved(index)[0].class_noun)

    def _example_transform(self, noun: str, template: str):
        """(reference record, rng) -> a training example of the released augmentation, prompt `template`."""
        d, token = self.config.data, self.config.model.token
        example = dreamcom_data.make_transform(class_noun=noun, token=token, template=template, size=d.image_size,
                                               zoom_prob=d.zoom_prob, fill=d.fill, crop_fallback=d.crop_fallback)
        ids = self.tokenize([template.format(token=token, noun=noun)])[0]
        keys = ("image", "mask", "masked_image", "loss_mask", "crop_fallback")

        def transform(record: dict, rng: np.random.Generator) -> dict:
            out = example(record, rng)
            return {**{k: out[k] for k in keys}, "input_ids": ids}

        return transform

    def make_transform(self, index: int = 0):
        """Object `index`'s example transform; with prior preservation the paired one (instance keys plus
        `class_image`, `class_mask`, `class_masked_image`, `class_loss_mask`, `class_input_ids`)."""
        noun = self._resolved(index)[0].class_noun
        instance = self._example_transform(noun, self.config.model.template)
        if self.prior is None:
            return instance
        return dreamcom_prior.paired_transform(instance, self._example_transform(noun, self.prior.class_prompt),
                                               ("image", "mask", "masked_image", "loss_mask", "input_ids"))

    # ---------------------------------------------------------------------------------- model
    @property
    def num_inside(self) -> int:
        """n: context positions 1..n carry the instance prompt (38 of 77, as released)."""
        length = self.pipe.tokenizer.model_max_length
        return self.config.model.num_inside or (length - 1) // 2

    def _encode_text(self, text_params, ids) -> jax.Array:
        text = self.pipe.text_encoder.module
        return text.apply({"params": text_params}, jnp.asarray(ids)).last_hidden_state.astype(self.dtype)

    def text_params(self, params, frozen):
        return params["text_encoder"] if "text_encoder" in params else frozen["text_encoder"]

    def training_context(self, text_params, input_ids) -> jax.Array:
        """(B, L, D): CLIP("") with 1..n from the instance prompt and n+1..2n from the background prompt."""
        n = self.num_inside
        empty, background = (self.tokenize([p]) for p in ("", self.config.model.background_prompt))
        e_in = self._encode_text(text_params, input_ids)
        e_out = jnp.broadcast_to(self._encode_text(text_params, background), e_in.shape)
        ctx = jnp.broadcast_to(self._encode_text(text_params, empty), e_in.shape)
        ctx = ctx.at[:, 1:n + 1].set(e_in[:, 1:n + 1])
        return ctx.at[:, n + 1:2 * n + 1].set(e_out[:, 1:n + 1])

    def controls(self, mask_latent, *, sampling: bool, self_attention: str | None = None,
                 cross_attention: bool = True) -> tuple:
        """The attention controls of a UNet call on box masks (B, h, w): masked cross-attention (instance
        tokens 1..n inside the box, nothing outside; `cross_attention=False`: vanilla, the paper's Table 4
        ablation), masked self-attention when sampling."""
        cross = (attention.MaskedCrossAttention(mask_latent, foreground_tokens=tuple(range(1, self.num_inside + 1))),
                 ) if cross_attention else ()
        layers = self.self_attention_layers(self_attention) if sampling else frozenset()
        return cross + ((attention.MaskedSelfAttention(mask_latent, layers=layers),) if layers else ())

    def _latents(self, frozen, images, key) -> jax.Array:
        """(B, H, W, 3) in [-1, 1] -> sampled scaled latents (B, 4, H/8, W/8) float32, no gradient."""
        vae = self.pipe.vae.module
        dist = vae.apply({"params": frozen["vae"]}, images.transpose(0, 3, 1, 2), method=vae.encode).latent_dist
        return jax.lax.stop_gradient((dist.sample(key) * vae.scaling_factor).astype(jnp.float32))

    def unet_input(self, frozen, batch, key) -> tuple[jax.Array, jax.Array]:
        """(box mask (B, h, w), extra channels [mask; masked latents] (B, 5, h, w))."""
        m = latent_mask(batch["mask"])
        masked = self._latents(frozen, batch["masked_image"], key)
        return m, jnp.concatenate([m[:, None], masked], axis=1)

    def prediction(self, params, frozen, batch, rng) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The training UNet call on `batch`: (prediction, target) (B, C, h, w) float32 and the loss mask (B, h, w)."""
        k_latent, k_masked, k_noise, k_t = jax.random.split(rng, 4)
        latents = self._latents(frozen, batch["image"], k_latent)
        mask, extra = self.unet_input(frozen, batch, k_masked)
        noise = jax.random.normal(k_noise, latents.shape)
        t = diffusion.uniform_timesteps(k_t, latents.shape[0], self.schedule.num_train_timesteps)
        noisy = diffusion.add_noise(self.schedule, latents, noise, t)
        text = self.text_params(params, frozen)
        context = self.training_context(text, batch["input_ids"])
        if "text_encoder" not in params:
            context = jax.lax.stop_gradient(context)
        ctx = attention.AttentionContext(self.controls(mask, sampling=False), latent_hw=tuple(latents.shape[2:]))
        x_in = jnp.concatenate([noisy, extra], axis=1).astype(self.dtype)
        pred = self.pipe.unet.module.apply({"params": self.unet_params(params, frozen)}, x_in, t, context,
                                           attention=ctx).sample
        target = diffusion.training_target(self.schedule, latents, noise, t)
        return pred.astype(jnp.float32), target, latent_mask(batch["loss_mask"])

    def loss(self, params, frozen, batch, rng):
        """The released loss; a batch with `class_` examples (prior preservation) is one UNet call on both."""
        prior = "class_image" in batch
        pred, target, loss_mask = self.prediction(
            params, frozen, prior_preservation.with_class_examples(batch) if prior else batch, rng)
        loss, metrics = prior_preservation_loss(pred, target, loss_mask, self.prior.weight) if prior else (
            masked_mse(pred, target, loss_mask), {})
        metrics.update(masked_mse=loss, mse=jnp.mean((pred - target) ** 2))
        if "crop_fallback" in batch:  # share of the batch whose crop needed data.crop_fallback
            metrics["crop_fallback"] = jnp.mean(batch["crop_fallback"].astype(jnp.float32))
        return loss, metrics

    # ------------------------------------------------------------------------------- sampling
    @cached_property
    def self_attention_names(self) -> list[str]:
        """Names of this UNet's self-attention layers in call order (traced once, no FLOPs)."""
        return self_attention_names(self.pipe.unet.module, self.pipe.unet.params)

    def self_attention_layers(self, rule: str | None = None) -> frozenset[str]:
        """The masked self-attention layers of a rule (`self_attention_rule_layers`) on this UNet."""
        return self_attention_rule_layers(self.self_attention_names, rule or self.config.sample.self_attention)

    def sample(self, params, frozen, batch, rng, num_steps=None, guidance_scale=None, self_attention=None,
               cross_attention=True):
        """Inpaints each batch box: (B, H, W, 3) in [-1, 1].

        batch: image (B, H, W, 3) [-1, 1] (only its shape is used), mask (B, H, W, 1) {0, 1},
        masked_image (B, H, W, 3), input_ids (B, L) of "a photo of sks <class>".
        """
        sc = self.config.sample
        num_steps = num_steps or sc.steps
        guidance_scale = sc.guidance_scale if guidance_scale is None else guidance_scale
        k_masked, k_noise = jax.random.split(rng)
        mask, extra = self.unet_input(frozen, batch, k_masked)
        text = self.text_params(params, frozen)
        context = self._encode_text(text, batch["input_ids"])  # the plain prompt, as the released test.py
        uncond = jnp.broadcast_to(self._encode_text(text, self.tokenize([""])), context.shape)
        controls = self.controls(mask, sampling=True, self_attention=self_attention, cross_attention=cross_attention)
        unet, vae = self.pipe.unet.module, self.pipe.vae.module
        latents = jax.random.normal(k_noise, (mask.shape[0], unet.out_channels, *mask.shape[1:]))
        denoise = diffusion.guided_denoiser(unet, self.unet_params(params, frozen), context, uncond, guidance_scale,
                                            extra_channels=extra, controls=controls)
        z = diffusion.sample(denoise, latents, self.schedule, self.pipe.scheduler, num_steps, method=sc.sampler)
        image = vae.apply({"params": frozen["vae"]}, z / vae.scaling_factor, method=vae.decode).sample
        return jnp.clip(image.transpose(0, 2, 3, 1).astype(jnp.float32), -1, 1)
