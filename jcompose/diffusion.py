"""Diffusion math: noise schedules, noising, predictions, timestep samplers, DDIM and DPM-Solver++.

All functions are pure and jit-friendly. `sample` runs a whole sampling loop as one `lax.scan`
(the denoiser is traced once, whatever the number of steps); `guided_denoiser` builds the
classifier-free-guided UNet call (one batched call for the conditional and unconditional halves)
with hooks for extra input channels (inpainting), ControlNet-style residuals and attention
controls.

Conventions: latents are NCHW float32/bfloat16 as jcompose's UNet takes them; timesteps are
integer indices into the training schedule (0 .. T-1); `alphas_cumprod[t]` is alpha-bar_t.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcompose import attention
from jcompose.models.scheduler_config import SchedulerConfig

Array = jax.Array
Denoiser = Callable[[Array, Array], Array]  # (x_t (B, C, H, W), t scalar int) -> model output


# ------------------------------------------------------------------------------------- schedule


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The forward process of a base model.

    Attributes:
      alphas_cumprod: (T,) float32 alpha-bar_t, a host (numpy) constant: sampler tables are
        built from it at trace time, so a schedule can be made inside or outside `jit`.
      prediction_type: "epsilon", "v_prediction" or "sample" (what the UNet predicts).
    """

    alphas_cumprod: np.ndarray
    prediction_type: str = "epsilon"

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])


def betas_for(config: SchedulerConfig) -> np.ndarray:
    """(T,) betas of the config's beta_schedule, computed in float64 on the host."""
    t = config.num_train_timesteps
    if config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, t, dtype=np.float64)
    elif config.beta_schedule == "scaled_linear":  # SD / LDM "linear": linear in sqrt(beta)
        betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, t, dtype=np.float64) ** 2
    elif config.beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal cosine, beta capped at 0.999
        def alpha_bar(x):
            return np.cos((x + 0.008) / 1.008 * np.pi / 2) ** 2

        steps = np.arange(t, dtype=np.float64)
        betas = np.minimum(1 - alpha_bar((steps + 1) / t) / alpha_bar(steps / t), 0.999)
    else:
        raise ValueError(f"unknown beta_schedule {config.beta_schedule!r}")
    if config.rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return betas


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023: shift and scale sqrt(alpha-bar) so the last step has zero SNR."""
    root = np.sqrt(np.cumprod(1 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    alphas_bar = root**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def make_schedule(config: SchedulerConfig) -> NoiseSchedule:
    """The `NoiseSchedule` of a loaded `scheduler_config.json`."""
    alphas_cumprod = np.cumprod(1.0 - betas_for(config))
    # float32 as diffusers (torch) keeps them: parity of samplers depends on it.
    return NoiseSchedule(alphas_cumprod.astype(np.float32), config.prediction_type)


def _at(values: Array, t: Array, ndim: int) -> Array:
    """values[t] shaped to broadcast against an (B, ...) array of rank `ndim`."""
    v = jnp.asarray(values)[jnp.asarray(t)]
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def add_noise(schedule: NoiseSchedule, x0: Array, noise: Array, t: Array) -> Array:
    """q(x_t | x_0): sqrt(ab_t) x0 + sqrt(1 - ab_t) noise. `t`: (B,) or scalar integer timesteps."""
    ab = _at(schedule.alphas_cumprod, t, x0.ndim).astype(x0.dtype)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * noise


def training_target(schedule: NoiseSchedule, x0: Array, noise: Array, t: Array) -> Array:
    """What the UNet is trained to predict: noise, v = sqrt(ab) noise - sqrt(1-ab) x0, or x0."""
    if schedule.prediction_type == "epsilon":
        return noise
    if schedule.prediction_type == "v_prediction":
        ab = _at(schedule.alphas_cumprod, t, x0.ndim).astype(x0.dtype)
        return jnp.sqrt(ab) * noise - jnp.sqrt(1 - ab) * x0
    return x0


def predict_x0_eps(schedule: NoiseSchedule, x_t: Array, model_output: Array, t: Array) -> tuple[Array, Array]:
    """(x0 estimate, noise estimate) from the UNet's output at timestep(s) t."""
    ab = _at(schedule.alphas_cumprod, t, x_t.ndim).astype(jnp.float32)
    x_t, out = x_t.astype(jnp.float32), model_output.astype(jnp.float32)
    a, s = jnp.sqrt(ab), jnp.sqrt(1 - ab)
    if schedule.prediction_type == "epsilon":
        return (x_t - s * out) / a, out
    if schedule.prediction_type == "v_prediction":
        return a * x_t - s * out, a * out + s * x_t
    return out, (x_t - a * out) / s


# ---------------------------------------------------------------------------- timestep samplers


def uniform_timesteps(rng: Array, batch: int, num_train_timesteps: int = 1000) -> Array:
    """(B,) int32 timesteps uniform in [0, T)."""
    return jax.random.randint(rng, (batch,), 0, num_train_timesteps)


def adaptive_timesteps(rng: Array, dynamic: Array, num_train_timesteps: int = 1000,
                       uniform_probability: float = 0.3) -> Array:
    """AnyDoor's adaptive timestep sampling by data type (its released `sample_timestep`).

    With probability `uniform_probability` t is uniform in [0, T); otherwise by `dynamic`:
    1 (coarse video pairs) -> [T/2, T), 0 (static images) -> [0, T/2), 2 (fine multi-view) ->
    [0, T).

    Args:
      rng: PRNG key.
      dynamic: (B,) int data-type labels in {0, 1, 2}.
    """
    half = num_train_timesteps // 2
    k_choice, k_t = jax.random.split(rng)
    lo = jnp.where(dynamic == 1, half, 0)
    hi = jnp.where(dynamic == 0, half, num_train_timesteps)
    uniform = jax.random.uniform(k_choice, dynamic.shape) < uniform_probability
    lo, hi = jnp.where(uniform, 0, lo), jnp.where(uniform, num_train_timesteps, hi)
    return jax.random.randint(k_t, dynamic.shape, lo, hi)


# ---------------------------------------------------------------------------------- sampling grid


def inference_timesteps(config: SchedulerConfig, num_steps: int, spacing: str | None = None) -> np.ndarray:
    """The descending timesteps of an `num_steps` sampler, as diffusers computes them.

    spacing "leading" (DDIM's default in SD configs): (0, r, 2r, ...) + steps_offset, r = T // n;
    "trailing": round(T - i T/n) - 1; "linspace": round(linspace(0, T-1, n)).
    """
    t, n = config.num_train_timesteps, num_steps
    if not 0 < n <= t:
        raise ValueError(f"num_steps must be in 1..{t}, got {n}")
    spacing = spacing or config.timestep_spacing
    if spacing == "leading":
        steps = (np.arange(0, n) * (t // n)).round()[::-1] + config.steps_offset
    elif spacing == "trailing":
        steps = np.round(np.arange(t, 0, -t / n)) - 1
    elif spacing == "linspace":
        steps = np.linspace(0, t - 1, n).round()[::-1]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}")
    return steps.astype(np.int32)


def _ddim_tables(schedule: NoiseSchedule, config: SchedulerConfig, num_steps: int, eta: float):
    steps = inference_timesteps(config, num_steps)
    ab = np.asarray(schedule.alphas_cumprod, np.float64)
    prev = steps - config.num_train_timesteps // num_steps
    final = 1.0 if config.set_alpha_to_one else ab[0]
    ab_t = ab[steps]
    ab_prev = np.where(prev >= 0, ab[np.clip(prev, 0, None)], final)
    sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
    return {
        "t": steps,
        "ab_prev": ab_prev.astype(np.float32),
        "sigma": sigma.astype(np.float32),
    }


def _dpm_tables(schedule: NoiseSchedule, config: SchedulerConfig, num_steps: int):
    # diffusers' DPMSolverMultistepScheduler: linspace spacing over T+1 points, the last dropped,
    # sigmas from alpha-bar, a final sigma of 0 ("zero" final_sigmas_type).
    t = config.num_train_timesteps
    steps = np.linspace(0, t - 1, num_steps + 1).round()[::-1][:-1].astype(np.int32)
    ab = np.asarray(schedule.alphas_cumprod, np.float64)
    sigmas = np.sqrt((1 - ab) / ab)[steps]
    sigmas = np.concatenate([sigmas, [0.0]])
    alpha = 1 / np.sqrt(sigmas**2 + 1)
    sigma = sigmas * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    i = np.arange(num_steps)
    h = lam[i + 1] - lam[i]
    h_prev = np.where(i > 0, lam[i] - lam[np.maximum(i - 1, 0)], 1.0)
    # First step: no history, first order. Last step (to sigma 0): first order, as diffusers.
    second_order = (i > 0) & (i < num_steps - 1)
    return {
        "t": steps,
        "ratio": (sigma[i + 1] / sigma[i]).astype(np.float32),
        "alpha_next": alpha[i + 1].astype(np.float32),
        "expm1": np.where(np.isinf(h), -1.0, np.expm1(-np.where(np.isinf(h), 0, h))).astype(np.float32),
        "inv_r": np.where(second_order, h / h_prev, 0.0).astype(np.float32),
    }


_step_report = threading.local()  # .fn: the hook `sample` bakes into programs traced on this thread, or unset


@contextlib.contextmanager
def reporting_steps(report: Callable[[int, int], None]):
    """Programs that trace `sample` on this thread inside this block call `report(steps_done, num_steps)` from
    their compiled loop after each step (a `jax.debug.callback`, so the loop stays one compiled call): the
    demo's per-step progress. Traced outside (compose, training, benchmarks), `sample` is unchanged and has
    no callback. The hook is baked in at trace time: a program reused later keeps calling `report`."""
    previous = getattr(_step_report, "fn", None)
    _step_report.fn = report
    try:
        yield
    finally:
        _step_report.fn = previous


def _with_step_report(step, xs, num_steps: int):
    """A `lax.scan` body and its xs -> the same two when no reporting_steps hook is set; else a body that also
    reports each finished step (the callback takes a value of the new carry, so it runs after the step)."""
    report = getattr(_step_report, "fn", None)
    if report is None:
        return step, xs

    def reported_step(carry, inputs):
        inputs, index = inputs
        carry, out = step(carry, inputs)
        after = jax.tree.leaves(carry)[0].reshape(-1)[0]
        jax.debug.callback(lambda done, _: report(int(done), num_steps), index + 1, after)
        return carry, out

    return reported_step, (xs, jnp.arange(num_steps))


def sample(
    denoiser: Denoiser,
    latents: Array,
    schedule: NoiseSchedule,
    config: SchedulerConfig,
    num_steps: int,
    *,
    method: str = "ddim",
    eta: float = 0.0,
    rng: Array | None = None,
) -> Array:
    """Runs a sampler from `latents` (x_T, NCHW) to x_0 in one `lax.scan`.

    Args:
      denoiser: (x_t, t) -> model output (noise, v or x0 as the schedule says); t is a scalar
        int32 array. Usually `guided_denoiser(...)`.
      latents: (B, C, H, W) initial noise (DDIM and DPM-Solver++ start at unit variance).
      schedule, config: the base model's noise schedule and scheduler config.
      num_steps: sampler steps (a static Python int: one compile per value).
      method: "ddim" (eta configurable) or "dpm++2m" (DPM-Solver++ 2M, as diffusers' default).
      eta: DDIM stochasticity (0: deterministic DDIM; 1: DDPM-like).
      rng: needed when eta > 0.

    Returns:
      (B, C, H, W) float32 denoised latents.
    """
    x = latents.astype(jnp.float32)
    if method == "ddim":
        tables = {k: jnp.asarray(v) for k, v in _ddim_tables(schedule, config, num_steps, eta).items()}
        if eta > 0 and rng is None:
            raise ValueError("DDIM with eta > 0 needs an rng")
        keys = jax.random.split(rng if rng is not None else jax.random.PRNGKey(0), num_steps)

        def ddim_step(x, inputs):
            row, key = inputs
            x0, eps = predict_x0_eps(schedule, x, denoiser(x, row["t"]), row["t"])
            ab_prev, sigma = row["ab_prev"], row["sigma"]
            x = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1 - ab_prev - sigma**2) * eps
            if eta > 0:
                x = x + sigma * jax.random.normal(key, x.shape, x.dtype)
            return x, None

        body, xs = _with_step_report(ddim_step, (tables, keys), num_steps)
        x, _ = jax.lax.scan(body, x, xs)
        return x
    if method == "dpm++2m":
        tables = {k: jnp.asarray(v) for k, v in _dpm_tables(schedule, config, num_steps).items()}

        def dpm_step(carry, row):
            x, previous_x0 = carry
            x0, _ = predict_x0_eps(schedule, x, denoiser(x, row["t"]), row["t"])
            d = x0 + 0.5 * row["inv_r"] * (x0 - previous_x0)  # inv_r = 0: first order
            x = row["ratio"] * x - row["alpha_next"] * row["expm1"] * d
            return (x, x0), None

        body, xs = _with_step_report(dpm_step, tables, num_steps)
        (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), xs)
        return x
    raise ValueError(f"unknown sampling method {method!r}; use 'ddim' or 'dpm++2m'")


# ------------------------------------------------------------------------------- guided denoiser


def guided_denoiser(
    unet: Any,
    params: Any,
    context: Array,
    uncond_context: Array | None,
    guidance_scale: float,
    *,
    extra_channels: Array | None = None,
    residuals: Callable[[Array, Array, Array], tuple[Sequence[Array], Array]] | None = None,
    controls: Sequence[attention.Control] = (),
) -> Denoiser:
    """A classifier-free-guided UNet call: one batched call on [uncond; cond], then
    out = uncond + s (cond - uncond).

    Args:
      unet, params: a `UNet2DConditionModel` module and its params.
      context: (B, N, D) conditional context (text or ID tokens).
      uncond_context: (B, N, D) unconditional context; None disables guidance (s ignored).
      guidance_scale: s (7.5 in SD's default).
      extra_channels: (B, C', H, W) channels concatenated after the latents (the inpainting
        UNet's mask and masked-image latents), the same for both halves.
      residuals: hook (x_in, t, ctx) -> (down residuals, mid residual) on the doubled batch,
        e.g. a ControlNet call; added to the UNet's skip connections.
      controls: attention controls applied to every UNet call (see `jcompose.attention`);
        controls with a schedule get the current t.
    """
    guided = uncond_context is not None
    ctx = jnp.concatenate([uncond_context, context]) if guided else context

    def denoise(x: Array, t: Array) -> Array:
        x_in = jnp.concatenate([x, x]) if guided else x
        if extra_channels is not None:
            extra = jnp.concatenate([extra_channels, extra_channels]) if guided else extra_channels
            x_in = jnp.concatenate([x_in, extra.astype(x_in.dtype)], axis=1)
        t_in = jnp.broadcast_to(t, (x_in.shape[0],))
        kwargs = {}
        if residuals is not None:  # controls target the UNet; the residual network runs uncontrolled
            down, mid = residuals(x_in, t_in, ctx)
            kwargs = dict(down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid)
        context = attention.AttentionContext(tuple(controls), latent_hw=tuple(x.shape[2:]), timestep=t)
        out = unet.apply({"params": params}, x_in, t_in, ctx, attention=context, **kwargs).sample
        if not guided:
            return out
        uncond, cond = jnp.split(out, 2)
        return uncond + guidance_scale * (cond - uncond)

    return denoise
