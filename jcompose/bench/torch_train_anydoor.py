"""AnyDoor's PyTorch reference training step for `bench train` (registered with `torch_train.register`).

The released ControlLDM step with diffusers / transformers PyTorch on the same base folder and batch:
DINOv2 (transformers `Dinov2Model`, the hub's position interpolation when the config asks for it)
-> a trained `nn.Linear` projector -> ID tokens as the context of a diffusers `ControlNetModel`
(initialised `from_unet`, 4-channel hint) whose conv_in is bypassed (AnyDoor's extractor never sees
x_t: the hint embedding alone is the encoder input) and of the UNet, whose encoder and mid block run
under `torch.no_grad()` while the decoder (up blocks, conv_norm_out, conv_out) trains; epsilon MSE,
adaptive timesteps by `dynamic`; AdamW on extractor + projector + decoder, as the method.

`AnyDoorTorch.predict` is the forward on its own, so tests can compare it with jcompose's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jcompose.bench.torch_train import (
    nchw,
    optimizer_step_seconds,
    register,
    torch_device,
)

ANYDOOR_SYNTHETIC = {"model.dinov2": "tiny", "model.context_dim": 64, "data.synthetic": True,
                     "data.worker_count": 0}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def hub_position_embeddings(embeddings: Any, tokens: Any, height: int, width: int) -> Any:
    """The DINOv2 hub code's position table for an image of height x width px, for a transformers
    `Dinov2Embeddings` (bound in place of its `interpolate_pos_encoding`): bicubic resampling with
    `scale_factor=(h + 0.1) / S` per axis (source step 1 / scale), not `size=(h, w)`."""
    import torch

    table = embeddings.position_embeddings
    n = table.shape[1] - 1
    side = round(n**0.5)
    patch = embeddings.patch_embeddings.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if tokens.shape[1] - 1 == n and height == width:
        return table
    grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    scale = ((height // patch + 0.1) / side, (width // patch + 0.1) / side)
    grid = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="bicubic")
    return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1]).to(table.dtype)], 1)


def dinov2_folder(config: Any) -> tuple[Path, Any]:
    """The DINOv2 folder of `config` in the PyTorch layout: `model.dinov2`, or for "tiny" the method's
    tiny DINOv2 (same seed, so the same weights) written with safetensors into a temporary folder."""
    import tempfile

    if config.model.dinov2 != "tiny":
        return Path(config.model.dinov2), None
    from jcompose.methods.anydoor import write_tiny_dinov2

    tmp = tempfile.TemporaryDirectory()
    return write_tiny_dinov2(Path(tmp.name), config.seed + 5, formats=("safetensors",)), tmp


class AnyDoorTorch:
    """The PyTorch modules of one AnyDoor model (see module doc), on `device`.

    `load(extractor=..., projector=...)` state dicts may replace the fresh initialisations."""

    def __init__(self, folder: Path, config: Any, device: str):
        import diffusers
        import torch
        import transformers

        self.config, self.device = config, device
        self.vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae").to(device).requires_grad_(False)
        self.unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").to(device)
        self.scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
        path, self._tmp = dinov2_folder(config)
        self.dinov2 = transformers.Dinov2Model.from_pretrained(path).to(device).requires_grad_(False).eval()
        if config.model.dinov2_interpolation == "dinov2_hub":
            import types

            self.dinov2.embeddings.interpolate_pos_encoding = types.MethodType(hub_position_embeddings,
                                                                               self.dinov2.embeddings)
        self.extractor = diffusers.ControlNetModel.from_unet(
            self.unet, conditioning_channels=4,
            conditioning_embedding_out_channels=tuple(config.model.hint_widths)).to(device)
        self.extractor.conv_in = no_latent(self.unet.config.block_out_channels[0])
        self.projector = torch.nn.Linear(self.dinov2.config.hidden_size, self.unet.config.cross_attention_dim)
        self.projector.to(device)
        self.unet.requires_grad_(False)
        for module in self.decoder_modules():
            module.requires_grad_(True)
        if config.model.remat:
            self.unet.enable_gradient_checkpointing()
            self.extractor.enable_gradient_checkpointing()
        self.alphas = self.scheduler.alphas_cumprod.to(device)

    def decoder_modules(self) -> list:
        return [self.unet.up_blocks, self.unet.conv_norm_out, self.unet.conv_out]

    def trained_parameters(self) -> list:
        """Extractor (without its unused conv_in), projector, UNet decoder."""
        params = list(self.extractor.parameters()) + list(self.projector.parameters())
        return params + [p for m in self.decoder_modules() for p in m.parameters()]

    def id_tokens(self, reference: Any) -> Any:
        """(B, 3, R, R) reference in [-1, 1] -> (B, 1 + (R/14)^2, D_context) tokens (DINOv2 frozen)."""
        import torch

        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        with torch.no_grad():
            features = self.dinov2(pixel_values=((reference + 1) / 2 - mean) / std).last_hidden_state
        return self.projector(features)

    def predict(self, noisy: Any, t: Any, context: Any, hint: Any) -> Any:
        """Noise prediction: extractor residuals; UNet encoder + mid block under no_grad; decoder with grad."""
        import torch

        unet = self.unet
        down, mid = self.extractor(noisy, t, context, controlnet_cond=hint,
                                   conditioning_scale=self.config.model.control_scale, return_dict=False)
        with torch.no_grad():
            emb = unet.time_embedding(unet.get_time_embed(sample=noisy, timestep=t))
            hidden = unet.conv_in(noisy)
            skips = (hidden,)
            for block in unet.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=context)
                else:
                    hidden, res = block(hidden_states=hidden, temb=emb)
                skips += res
            hidden = unet.mid_block(hidden, emb, encoder_hidden_states=context)
        skips = [s + r for s, r in zip(skips, down)]
        hidden = hidden + mid
        for block in unet.up_blocks:
            res, skips = tuple(skips[-len(block.resnets):]), skips[:-len(block.resnets)]
            if getattr(block, "has_cross_attention", False):
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res,
                               encoder_hidden_states=context)
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res)
        return unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))

    def adaptive_timesteps(self, dynamic: Any) -> Any:
        """The released sample_timestep: 30% uniform in [0, T); else 1 -> [T/2, T), 0 -> [0, T/2), 2 -> [0, T)."""
        import torch

        total = self.scheduler.config.num_train_timesteps
        uniform = torch.rand(dynamic.shape, device=self.device) < self.config.loss.uniform_probability
        lo = torch.where(uniform | (dynamic != 1), 0, total // 2)
        hi = torch.where(uniform | (dynamic != 0), total, total // 2)
        return lo + (torch.rand(dynamic.shape, device=self.device) * (hi - lo)).long()

    def loss(self, target: Any, reference: Any, hint: Any, dynamic: Any) -> Any:
        import torch

        with torch.no_grad():
            latents = self.vae.encode(target).latent_dist.sample() * self.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = self.adaptive_timesteps(dynamic)
        pred = self.predict(self.scheduler.add_noise(latents, noise, t), t, self.id_tokens(reference), hint)
        return torch.nn.functional.mse_loss(pred.float(), noise.float())


def no_latent(channels: int) -> Any:
    """A module standing in for the ControlNet's conv_in: zeros, so conv_in(x_t) + hint = hint."""
    import torch

    class NoLatent(torch.nn.Module):
        def forward(self, x):
            return x.new_zeros((x.shape[0], channels, *x.shape[2:]))

    return NoLatent()


@register("anydoor", overrides=ANYDOOR_SYNTHETIC, base="sd21-base")
def anydoor_step_seconds(folder: Path, batch: dict, config, repeats: int) -> float:
    """Seconds per optimizer step of the PyTorch AnyDoor step (see module doc); bf16 autocast when the
    config computes in bf16."""
    import torch

    device = torch_device()
    model = AnyDoorTorch(folder, config, device)
    target, reference, hint = nchw(batch, "target", device), nchw(batch, "reference", device), nchw(
        batch, "collage", device)
    dynamic = torch.from_numpy(np.asarray(batch["dynamic"]).astype(np.int64)).to(device)
    params = model.trained_parameters()
    o = config.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)
    bf16 = config.compute_dtype == "bfloat16"

    def loss_fn():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            return model.loss(target, reference, hint, dynamic)

    return optimizer_step_seconds(loss_fn, params, optimizer, o.clip_norm or 1e9, repeats)
