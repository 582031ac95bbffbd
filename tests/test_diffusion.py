"""Diffusion math against hand-computed values; samplers compile once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcompose import diffusion
from jcompose.models import loading
from jcompose.models.loading import SchedulerConfig

SD = SchedulerConfig()  # the SD 1.x / 2.x-base schedule


def test_scaled_linear_schedule_by_hand():
    schedule = diffusion.make_schedule(SD)
    betas = [(0.00085**0.5 + i * (0.012**0.5 - 0.00085**0.5) / 999) ** 2 for i in range(1000)]
    alphas_cumprod = np.cumprod([1 - b for b in betas])
    np.testing.assert_allclose(np.asarray(schedule.alphas_cumprod), alphas_cumprod, rtol=1e-6)
    assert abs(float(schedule.alphas_cumprod[-1]) - 0.0046) < 1e-4  # SD's well-known terminal alpha-bar
    linear = diffusion.betas_for(SchedulerConfig(beta_schedule="linear", beta_start=1e-4, beta_end=0.02))
    assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02) and linear[1] - linear[0] == pytest.approx(
        (0.02 - 1e-4) / 999)
    zsnr = diffusion.make_schedule(SchedulerConfig(rescale_betas_zero_snr=True))
    assert float(zsnr.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_noise_and_predictions_invert(prediction, rng):
    schedule = diffusion.NoiseSchedule(diffusion.make_schedule(SD).alphas_cumprod, prediction)
    x0 = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    noise = rng.normal(size=x0.shape).astype(np.float32)
    t = jnp.array([0, 500, 999])
    x_t = diffusion.add_noise(schedule, x0, noise, t)
    ab = np.asarray(schedule.alphas_cumprod)[[0, 500, 999]][:, None, None, None]
    np.testing.assert_allclose(np.asarray(x_t), np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise, rtol=1e-5, atol=1e-6)
    target = diffusion.training_target(schedule, x0, noise, t)
    x0_hat, eps_hat = diffusion.predict_x0_eps(schedule, x_t, target, t)
    np.testing.assert_allclose(np.asarray(x0_hat)[1], x0[1], atol=2e-4)
    np.testing.assert_allclose(np.asarray(eps_hat)[1], noise[1], atol=2e-4)


def test_adaptive_timesteps_follow_anydoor_rule():
    n = 20000
    dynamic = jnp.array([0, 1, 2] * n)
    t = np.asarray(diffusion.adaptive_timesteps(jax.random.PRNGKey(0), dynamic)).reshape(n, 3)
    assert t.min() >= 0 and t.max() < 1000
    # P(late half) for static images = 0.3 * 0.5 = 0.15; for coarse videos 0.7 + 0.15 = 0.85.
    assert abs((t[:, 0] >= 500).mean() - 0.15) < 0.015
    assert abs((t[:, 1] >= 500).mean() - 0.85) < 0.015
    assert abs((t[:, 2] >= 500).mean() - 0.5) < 0.015


def test_inference_timesteps_by_hand():
    np.testing.assert_array_equal(diffusion.inference_timesteps(SD, 5), [801, 601, 401, 201, 1])
    np.testing.assert_array_equal(diffusion.inference_timesteps(SD, 4, "trailing"), [999, 749, 499, 249])
    np.testing.assert_array_equal(diffusion.inference_timesteps(SD, 4, "linspace"), [999, 666, 333, 0])
    with pytest.raises(ValueError, match="num_steps must be in 1..1000"):
        diffusion.inference_timesteps(SD, 0)


def test_ddim_step_with_eta_by_hand(rng):
    """One DDIM step (eta = 0.7) against the formula of Song et al. (2021), eq. 12."""
    schedule = diffusion.make_schedule(SD)
    x = rng.normal(size=(1, 4, 2, 2)).astype(np.float32)
    eps = rng.normal(size=x.shape).astype(np.float32)
    key = jax.random.PRNGKey(3)
    out = diffusion.sample(lambda x_t, t: jnp.asarray(eps), jnp.asarray(x), schedule, SD, 1, eta=0.7, rng=key)
    ab = np.asarray(schedule.alphas_cumprod, np.float64)
    # One step runs at t = 1 (leading spacing + steps_offset); its previous timestep 1 - 1000 is
    # negative, so alpha-bar_prev is the final one: alpha-bar_0, since set_alpha_to_one is False.
    ab_t, ab_prev = ab[1], ab[0]
    x0 = (x - np.sqrt(1 - ab_t) * eps) / np.sqrt(ab_t)
    sigma = 0.7 * np.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
    z = np.asarray(jax.random.normal(jax.random.split(key, 1)[0], x.shape))
    want = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma**2) * eps + sigma * z
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["ddim", "dpm++2m"])
def test_sampling_traces_the_unet_once_per_step_count(tiny_bases, method, rng):
    unet = loading.load_unet(tiny_bases["sd15"] / "unet", weights="msgpack")
    schedule = diffusion.make_schedule(SD)
    ctx = jnp.asarray(rng.normal(size=(1, 16, 32)).astype(np.float32))
    traces = []

    class CountingUNet:
        def apply(self, *args, **kwargs):
            traces.append(1)
            return unet.module.apply(*args, **kwargs)

    def run(num_steps, x):
        denoise = diffusion.guided_denoiser(CountingUNet(), unet.params, ctx, jnp.zeros_like(ctx), 7.5)
        return diffusion.sample(denoise, x, schedule, SD, num_steps, method=method)

    x = jnp.asarray(rng.normal(size=(1, 4, 8, 8)).astype(np.float32))
    for steps in (50, 20):
        out = jax.jit(run, static_argnums=0)(steps, x)
        assert np.all(np.isfinite(np.asarray(out)))
    assert len(traces) == 2  # one UNet trace for the 50-step loop, one for the 20-step loop


@pytest.mark.parity
@pytest.mark.parametrize("config", [SD, SchedulerConfig(rescale_betas_zero_snr=True, prediction_type="v_prediction")],
                         ids=["scaled_linear", "zero_snr"])
def test_v_prediction_target_equals_diffusers_get_velocity(config, rng):
    """v = sqrt(ab) noise - sqrt(1 - ab) x0 against diffusers' PyTorch DDPMScheduler.get_velocity."""
    torch = pytest.importorskip("torch")
    from diffusers import DDPMScheduler

    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=config.beta_start, beta_end=config.beta_end,
                              beta_schedule=config.beta_schedule, prediction_type="v_prediction",
                              rescale_betas_zero_snr=config.rescale_betas_zero_snr)
    schedule = diffusion.NoiseSchedule(diffusion.make_schedule(config).alphas_cumprod, "v_prediction")
    x0 = rng.normal(size=(5, 4, 3, 3)).astype(np.float32)
    noise = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0, 1, 250, 777, 999])
    ours = np.asarray(diffusion.training_target(schedule, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t)))
    theirs = reference.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert np.abs(ours - noise).max() > 0.1  # really v, not epsilon
