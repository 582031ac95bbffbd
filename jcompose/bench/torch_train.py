"""PyTorch reference training steps for `bench train`, one per method, in a small registry.

A reference is the method's training step written with diffusers / transformers PyTorch on the
same base folder (safetensors) and the same batch, timed in the same run as jcompose's step:

    @register("mymethod", overrides={"data.root": "synthetic"})
    def mymethod_step_seconds(folder, batch, config, repeats):  # -> seconds per optimizer step
        ...

`overrides` are config fields `bench train` sets before building the method, so that it runs on
synthetic data and the random-weight base (e.g. no external checkpoint paths); `base` names the
base architecture when the config's own base does not say it ("sd15" / "sd15-inpaint").

A method added later registers without editing this file: put its reference in
`jcompose/bench/torch_train_<method>.py` (importing `register` from here); `reference_for(method)`
imports that module on first use, and `suite` benchmarks every method that has a reference.
torch is imported inside the reference functions only, never at import time.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jcompose.bench import timing

ReferenceFn = Callable[[Path, dict, Any, int], float]
PLUGIN_PREFIX = "torch_train_"


@dataclasses.dataclass(frozen=True)
class Reference:
    """A method's PyTorch reference step and how `bench train` sets the method up for it."""

    method: str
    step_seconds: ReferenceFn
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    base: str | None = None


REFERENCES: dict[str, Reference] = {}


def register(method: str, overrides: dict[str, Any] | None = None, base: str | None = None):
    """Decorator: registers `fn(folder, batch, config, repeats) -> seconds per step` for `method`
    (a `config.method`). Registering a method twice is an error (two files claim it)."""
    def decorate(fn: ReferenceFn) -> ReferenceFn:
        if method in REFERENCES and REFERENCES[method].step_seconds is not fn:
            raise ValueError(f"a PyTorch reference step for {method!r} is already registered "
                             f"({REFERENCES[method].step_seconds.__module__})")
        REFERENCES[method] = Reference(method, fn, dict(overrides or {}), base)
        return fn
    return decorate


def reference_for(method: str) -> Reference | None:
    """The registered reference of `method`, importing `jcompose.bench.torch_train_<method>` if
    one exists; None when the method has none."""
    if method not in REFERENCES:
        name = f"jcompose.bench.{PLUGIN_PREFIX}{method}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    return REFERENCES.get(method)


def methods_with_references() -> list[str]:
    """Registered methods plus every `torch_train_<method>` module of this package, sorted."""
    import jcompose.bench

    plugins = [m.name[len(PLUGIN_PREFIX):] for m in pkgutil.iter_modules(list(jcompose.bench.__path__))
               if m.name.startswith(PLUGIN_PREFIX)]
    return sorted(set(REFERENCES) | set(plugins))


# ------------------------------------------------------------------------------ shared helpers


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sd_modules(folder: Path, device: str):
    """diffusers/transformers PyTorch VAE, CLIP text encoder, UNet (fp32 weights, all frozen) and
    the DDPM scheduler of a base folder."""
    import diffusers
    import transformers

    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae").to(device).requires_grad_(False)
    text = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").to(device).requires_grad_(False)
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").to(device).requires_grad_(False)
    return vae, text, unet, diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")


def nchw(batch: dict, key: str, device: str):
    """batch[key] (B, H, W, C) -> a float32 torch tensor (B, C, H, W) on `device`."""
    import torch

    return torch.from_numpy(np.array(batch[key], np.float32)).permute(0, 3, 1, 2).contiguous().to(device)


def token_ids(batch: dict, device: str):
    import torch

    return torch.from_numpy(np.asarray(batch["input_ids"]).astype(np.int64)).to(device)


def optimizer_step_seconds(loss_fn: Callable[[], Any], params, optimizer, clip_norm: float, repeats: int) -> float:
    """Seconds per step of loss -> backward -> clip -> optimizer step, synchronised each step."""
    import torch

    cuda = torch.cuda.is_available()
    params = list(params)  # a parameters() generator would be empty after the first clip

    def step():
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return loss.detach().cpu().numpy()

    return timing.back_to_back_seconds(step, repeats)


# ---------------------------------------------------------------------------- built-in methods


@register("denoise")
def denoise_step_seconds(folder: Path, batch: dict, config, repeats: int) -> float:
    """UNet fine-tuning (VAE and text encoder frozen), epsilon MSE, AdamW, global-norm clipping;
    bf16 autocast on a GPU."""
    import torch

    device = torch_device()
    cuda = device == "cuda"
    vae, text, unet, scheduler = sd_modules(folder, device)
    unet.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.optim.lr)
    images, ids = nchw(batch, "image", device), token_ids(batch, device)

    def loss_fn():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            with torch.no_grad():
                latents = vae.encode(images).latent_dist.sample() * vae.config.scaling_factor
                context = text(ids)[0]
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
            pred = unet(scheduler.add_noise(latents, noise, t), t, context).sample
            return torch.nn.functional.mse_loss(pred.float(), noise.float())

    return optimizer_step_seconds(loss_fn, unet.parameters(), optimizer, config.optim.clip_norm or 1e9, repeats)


ANYSCENE_SYNTHETIC = {"model.controlnet": "", "data.coco_root": "synthetic", "data.openimages_root": "",
                      "data.faces_root": "", "data.num_records": 32}


@register("anyscene", overrides=ANYSCENE_SYNTHETIC)
def anyscene_step_seconds(folder: Path, batch: dict, config, repeats: int) -> float:
    """AnyScene's step with diffusers PyTorch: a ControlNet copied from the UNet encoder
    (`ControlNetModel.from_unet`) trained on frozen SD, with the denoising, VAE-decoded content
    and gated Laplacian edge losses, the same weights, terms and gate as the method."""
    import diffusers
    import torch
    import torch.nn.functional as F

    device = torch_device()
    cuda = device == "cuda"
    lc = config.loss
    vae, text, unet, scheduler = sd_modules(folder, device)
    controlnet = diffusers.ControlNetModel.from_unet(unet).to(device).train()
    alphas = scheduler.alphas_cumprod.to(device)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=config.optim.lr)
    images, foreground, mask = nchw(batch, "image", device), nchw(batch, "foreground", device), nchw(batch, "mask", device)
    cond = torch.where(mask > 0.5, (foreground + 1) / 2, torch.full_like(foreground, -1.0))
    ids = token_ids(batch, device)
    laplace = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], device=device).expand(3, 1, 3, 3)
    band = F.max_pool2d(mask, lc.dilate_kernel, 1, lc.dilate_kernel // 2) + F.max_pool2d(
        -mask, lc.erode_kernel, 1, lc.erode_kernel // 2)  # dilate(M) - erode(M)

    def masked_mean(err, weight):
        return ((err * weight).sum((1, 2, 3)) / (weight.sum((1, 2, 3)) * err.shape[1]).clamp(min=1)).mean()

    def loss_fn():
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
            return loss

    return optimizer_step_seconds(loss_fn, controlnet.parameters(), optimizer, config.optim.clip_norm or 1e9,
                                  repeats)
