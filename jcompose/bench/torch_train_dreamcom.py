"""DreamCom's PyTorch reference training step for `bench train` (registered with `torch_train.register`).

The released fine-tuning step (bcmi/DreamCom-Image-Composition train.py) with diffusers PyTorch on the
same inpainting base and batch: the whole 9-channel UNet trains (VAE and text encoder frozen); input =
[noisy latents; box mask at latent size; masked-image latents]; context = CLIP("") with positions
1..n from the instance prompt and n+1..2n from "background"; every cross-attention layer masked after
the softmax (instance tokens inside the box, nothing outside, no renormalisation) by an attention
processor; loss = epsilon MSE weighted by the loss mask, per sample over (C, h, w) / sum of the mask;
AdamW with global-norm clipping; bf16 autocast on a GPU.
"""

from __future__ import annotations

from pathlib import Path

from jcompose.bench.torch_train import nchw, optimizer_step_seconds, register, sd_modules, token_ids, torch_device

DREAMCOM_SYNTHETIC = {"data.murecom_root": "synthetic", "data.objects": ("murecom:Toy/fg1",)}


class MaskedCrossAttnProcessor:
    """diffusers attention processor: cross-attention probabilities kept on tokens 1..n inside the box
    (latent-size mask (B, h, w), reduced per layer by strided slicing), zero elsewhere; self-attention plain."""

    def __init__(self, mask, num_inside: int):
        self.mask, self.num_inside = mask, num_inside

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        import torch

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, length, _ = hidden_states.shape
        q, k, v = (attn.head_to_batch_dim(x) for x in (attn.to_q(hidden_states), attn.to_k(context),
                                                       attn.to_v(context)))
        probs = attn.get_attention_scores(q, k, None)  # (B * heads, Nq, Nk)
        if encoder_hidden_states is not None:
            h, w = self.mask.shape[1:]
            factor = int(round((h * w / length) ** 0.5))
            small = self.mask[:, ::factor, ::factor].reshape(batch, 1, -1, 1).float()
            keep = torch.zeros(probs.shape[-1], device=probs.device)
            keep[1:self.num_inside + 1] = 1
            probs = (probs.view(batch, -1, length, probs.shape[-1]) * small * keep).view_as(probs)
        out = attn.batch_to_head_dim(torch.bmm(probs.to(v.dtype), v))
        return attn.to_out[1](attn.to_out[0](out))


class DreamComTorch:
    """The released fine-tuning step on a base folder with diffusers PyTorch: frozen VAE and text encoder,
    the whole 9-channel UNet trained (`self.unet`), the released context layout, masked cross-attention.

    `batch` fixes the conditions: image / masked_image (B, H, W, 3) in [-1, 1], mask / loss_mask
    (B, H, W, 1) {0, 1}, input_ids (B, L).
    """

    def __init__(self, folder: Path, batch: dict, config, device: str):
        import torch
        from transformers import CLIPTokenizer

        self.device, self.autocast = device, device == "cuda"
        self.vae, text, self.unet, self.scheduler = sd_modules(folder, device)
        self.unet.requires_grad_(True).train()
        self.images, self.masked = nchw(batch, "image", device), nchw(batch, "masked_image", device)
        self.mask = nchw(batch, "mask", device)[:, :, ::8, ::8]  # latent size by strided slicing, as released
        self.loss_mask = nchw(batch, "loss_mask", device)[:, :, ::8, ::8]
        ids = token_ids(batch, device)
        length = ids.shape[1]
        n = config.model.num_inside or (length - 1) // 2
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")

        def encode(prompt):
            tokens = tokenizer([prompt] * ids.shape[0], padding="max_length", max_length=length, truncation=True,
                               return_tensors="pt").input_ids.to(device)
            return text(tokens)[0]

        with torch.no_grad():
            self.context = encode("")
            self.context[:, 1:n + 1] = text(ids)[0][:, 1:n + 1]
            self.context[:, n + 1:2 * n + 1] = encode(config.model.background_prompt)[:, 1:n + 1]
        self.unet.set_attn_processor(MaskedCrossAttnProcessor(self.mask[:, 0], n))

    def latents(self, images, generator=None):
        """Sampled, scaled VAE latents of (B, 3, H, W) images, without gradient."""
        import torch

        with torch.no_grad(), torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
            dist = self.vae.encode(images).latent_dist
            return dist.sample(generator) * self.vae.config.scaling_factor

    def loss(self, latents, masked_latents, noise, t):
        """The released loss on a given draw: epsilon MSE weighted by the loss mask, per sample over
        (C, h, w) / the mask's sum, mean over the batch."""
        import torch

        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
            x_in = torch.cat([self.scheduler.add_noise(latents, noise, t), self.mask, masked_latents], dim=1)
            pred = self.unet(x_in, t, self.context).sample.float()
            err = (pred - noise.float()) ** 2 * self.loss_mask
            return (err.sum((1, 2, 3)) / self.loss_mask.sum((1, 2, 3)).clamp(min=1)).mean()


@register("dreamcom", overrides=DREAMCOM_SYNTHETIC, base="sd15-inpaint")
def dreamcom_step_seconds(folder: Path, batch: dict, config, repeats: int) -> float:
    import torch

    model = DreamComTorch(folder, batch, config, torch_device())
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                                  eps=config.optim.eps)

    def loss_fn():  # a fresh draw each step, as training does
        latents, masked = model.latents(model.images), model.latents(model.masked)
        noise = torch.randn_like(latents)
        t = torch.randint(0, model.scheduler.config.num_train_timesteps, (latents.shape[0],), device=model.device)
        return model.loss(latents, masked, noise, t)

    return optimizer_step_seconds(loss_fn, model.unet.parameters(), optimizer, config.optim.clip_norm or 1e9, repeats)
