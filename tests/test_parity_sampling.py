"""Samplers against diffusers PyTorch pipelines on the same tiny weights (the `parity` extra)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcompose import diffusion
from jcompose.models import loading

torch = pytest.importorskip("torch", reason="parity tests need the parity extra: pip install -e '.[parity]'")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.parity
PROMPT = "a photo of sks dog on the beach"


@pytest.fixture(scope="module")
def torch_pipeline(tiny_bases):
    folder = tiny_bases["sd15"]
    return dict(
        vae=diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoder=transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def test_schedule_and_timesteps_match_diffusers(tiny_bases):
    config = loading.load_scheduler_config(tiny_bases["sd15"] / "scheduler")
    ddim = diffusers.DDIMScheduler.from_pretrained(tiny_bases["sd15"] / "scheduler")
    np.testing.assert_allclose(np.asarray(diffusion.make_schedule(config).alphas_cumprod), ddim.alphas_cumprod.numpy(),
                               rtol=1e-6)
    for steps in (10, 50):
        ddim.set_timesteps(steps)
        np.testing.assert_array_equal(diffusion.inference_timesteps(config, steps), ddim.timesteps.numpy())


@pytest.mark.parametrize("method, scheduler_class, steps", [
    ("ddim", "DDIMScheduler", 10),
    ("dpm++2m", "DPMSolverMultistepScheduler", 10),
    ("dpm++2m", "DPMSolverMultistepScheduler", 20),
])
def test_cfg_sampling_matches_diffusers_pipeline(tiny_bases, torch_pipeline, method, scheduler_class, steps):
    folder = tiny_bases["sd15"]
    scheduler = getattr(diffusers, scheduler_class).from_pretrained(folder / "scheduler")
    pipe = diffusers.StableDiffusionPipeline(scheduler=scheduler, **torch_pipeline)
    pipe.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(0).normal(size=(2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = pipe([PROMPT, "a cat"], num_inference_steps=steps, guidance_scale=7.5, height=64, width=64,
                    latents=torch.from_numpy(latents), output_type="latent").images.numpy()

    ours = loading.load_pipeline(folder, ("unet", "text_encoder", "tokenizer", "scheduler"), weights="msgpack")
    tokenize = lambda texts: ours.tokenizer(texts, padding="max_length", max_length=16, truncation=True,  # noqa: E731
                                            return_tensors="np").input_ids
    encode = lambda ids: ours.text_encoder.module.apply({"params": ours.text_encoder.params},  # noqa: E731
                                                        ids).last_hidden_state
    context, uncond = encode(tokenize([PROMPT, "a cat"])), encode(tokenize(["", ""]))
    schedule = diffusion.make_schedule(ours.scheduler)

    @jax.jit
    def run(x):
        denoise = diffusion.guided_denoiser(ours.unet.module, ours.unet.params, context, uncond, 7.5)
        return diffusion.sample(denoise, x, schedule, ours.scheduler, steps, method=method)

    got = np.asarray(run(jnp.asarray(latents)))
    err = np.abs(got - want).max()
    assert err < 1e-3, f"{method}: max |jcompose - diffusers| = {err:.2e} (scale {np.abs(want).max():.2f})"


def _encode(ours, texts):
    ids = ours.tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="np").input_ids
    return ours.text_encoder.module.apply({"params": ours.text_encoder.params}, ids).last_hidden_state


def test_inpainting_channels_match_diffusers_inpaint_pipeline(tiny_bases):
    """The extra-channels hook: 9-channel UNet fed [latents, mask, masked-image latents], DDIM + CFG."""
    folder = tiny_bases["sd15-inpaint"]
    rng = np.random.default_rng(1)
    latents = rng.normal(size=(1, 4, 8, 8)).astype(np.float32)
    masked_latents = rng.normal(size=(1, 4, 8, 8)).astype(np.float32)
    mask = np.zeros((1, 1, 64, 64), np.float32)
    mask[..., 16:48, 8:40] = 1
    image = rng.uniform(-1, 1, size=(1, 3, 64, 64)).astype(np.float32)
    pipe = diffusers.StableDiffusionInpaintPipeline(
        vae=diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoder=transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"),
        scheduler=diffusers.DDIMScheduler.from_pretrained(folder / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = pipe(PROMPT, image=torch.from_numpy(image), mask_image=torch.from_numpy(mask),
                    masked_image_latents=torch.from_numpy(masked_latents), latents=torch.from_numpy(latents),
                    num_inference_steps=8, guidance_scale=7.5, height=64, width=64, strength=1.0,
                    output_type="latent").images.numpy()

    ours = loading.load_pipeline(folder, ("unet", "text_encoder", "tokenizer", "scheduler"), weights="msgpack",
                                 unet_expect={"in_channels": 9})
    extra = np.concatenate([mask[:, :, ::8, ::8], masked_latents], axis=1)  # nearest-resized mask, as diffusers
    denoise = diffusion.guided_denoiser(ours.unet.module, ours.unet.params, _encode(ours, [PROMPT]),
                                        _encode(ours, [""]), 7.5, extra_channels=jnp.asarray(extra))
    got = np.asarray(jax.jit(lambda x: diffusion.sample(denoise, x, diffusion.make_schedule(ours.scheduler),
                                                        ours.scheduler, 8))(jnp.asarray(latents)))
    assert np.abs(got - want).max() < 1e-3, np.abs(got - want).max()


def test_controlnet_residual_hook_matches_diffusers_controlnet_pipeline(tiny_bases, torch_pipeline):
    folder = tiny_bases["sd15"]
    rng = np.random.default_rng(2)
    latents = rng.normal(size=(1, 4, 8, 8)).astype(np.float32)
    cond = rng.uniform(size=(1, 3, 64, 64)).astype(np.float32)
    pipe = diffusers.StableDiffusionControlNetPipeline(
        controlnet=diffusers.ControlNetModel.from_pretrained(folder / "controlnet"),
        scheduler=diffusers.DDIMScheduler.from_pretrained(folder / "scheduler"), **torch_pipeline)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = pipe(PROMPT, image=torch.from_numpy(cond), latents=torch.from_numpy(latents), num_inference_steps=8,
                    guidance_scale=7.5, height=64, width=64, output_type="latent").images.numpy()

    ours = loading.load_pipeline(folder, ("unet", "text_encoder", "tokenizer", "scheduler", "controlnet"),
                                 weights="msgpack")
    net = ours.controlnet
    both = jnp.asarray(np.concatenate([cond, cond]))  # diffusers feeds the hint to both CFG halves

    def residuals(x, t, ctx):
        out = net.module.apply({"params": net.params}, x, t, ctx, both)
        return out.down_block_res_samples, out.mid_block_res_sample

    denoise = diffusion.guided_denoiser(ours.unet.module, ours.unet.params, _encode(ours, [PROMPT]),
                                        _encode(ours, [""]), 7.5, residuals=residuals)
    got = np.asarray(jax.jit(lambda x: diffusion.sample(denoise, x, diffusion.make_schedule(ours.scheduler),
                                                        ours.scheduler, 8))(jnp.asarray(latents)))
    assert np.abs(got - want).max() < 1e-3, np.abs(got - want).max()
