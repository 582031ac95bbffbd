"""Tiny checkpoints with the released key names (CompVis LDM, ControlNet's ControlLDM, Meta's DINOv2 hub),
written from a description of those original modules, not from jcompose's name rules.

Each writer walks the original architecture (LDM `UNetModel`'s input/middle/output blocks with their
channel bookkeeping, `ControlNet`'s hint block and zero convs, `AutoencoderKL`'s encoder/decoder,
`DinoVisionTransformer`'s blocks) and gives every tensor random values. diffusers' and transformers'
own loaders are strict, so a layout mistake here fails the oracle side of a test, not only jcompose's.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

# Tiny SD 2.1-base-like sizes: the same as jcompose.models.tiny's sd21-base UNet / VAE (LDM spelling).
UNET = dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(0, 1), context_dim=64,
            head_channels=16, in_channels=4, out_channels=4, linear=True, depth=1)
HINT_WIDTHS = (16, 32, 32, 32)
VAE = dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=4, in_channels=3, out_ch=3)
DINOV2 = dict(dim=32, depth=2, head_channels=8, patch=14, grid=37, swiglu_width=88)


def _res(s: dict, name: str, cin: int, cout: int, emb: int) -> None:
    s[f"{name}.in_layers.0.weight"] = s[f"{name}.in_layers.0.bias"] = (cin,)
    s[f"{name}.in_layers.2.weight"], s[f"{name}.in_layers.2.bias"] = (cout, cin, 3, 3), (cout,)
    s[f"{name}.emb_layers.1.weight"], s[f"{name}.emb_layers.1.bias"] = (cout, emb), (cout,)
    s[f"{name}.out_layers.0.weight"] = s[f"{name}.out_layers.0.bias"] = (cout,)
    s[f"{name}.out_layers.3.weight"], s[f"{name}.out_layers.3.bias"] = (cout, cout, 3, 3), (cout,)
    if cin != cout:
        s[f"{name}.skip_connection.weight"], s[f"{name}.skip_connection.bias"] = (cout, cin, 1, 1), (cout,)


def _transformer(s: dict, name: str, ch: int, context: int, linear: bool, depth: int) -> None:
    s[f"{name}.norm.weight"] = s[f"{name}.norm.bias"] = (ch,)
    proj = (ch, ch) if linear else (ch, ch, 1, 1)
    s[f"{name}.proj_in.weight"], s[f"{name}.proj_in.bias"] = proj, (ch,)
    for d in range(depth):
        b = f"{name}.transformer_blocks.{d}"
        for attn, kv in (("attn1", ch), ("attn2", context)):
            s[f"{b}.{attn}.to_q.weight"] = (ch, ch)
            s[f"{b}.{attn}.to_k.weight"] = s[f"{b}.{attn}.to_v.weight"] = (ch, kv)
            s[f"{b}.{attn}.to_out.0.weight"], s[f"{b}.{attn}.to_out.0.bias"] = (ch, ch), (ch,)
        s[f"{b}.ff.net.0.proj.weight"], s[f"{b}.ff.net.0.proj.bias"] = (8 * ch, ch), (8 * ch,)  # GEGLU
        s[f"{b}.ff.net.2.weight"], s[f"{b}.ff.net.2.bias"] = (ch, 4 * ch), (ch,)
        for n in (1, 2, 3):
            s[f"{b}.norm{n}.weight"] = s[f"{b}.norm{n}.bias"] = (ch,)
    s[f"{name}.proj_out.weight"], s[f"{name}.proj_out.bias"] = proj, (ch,)


def ldm_unet_shapes(cfg: dict = UNET, control_hint: tuple[int, ...] | None = None, hint_channels: int = 4) -> dict:
    """LDM `UNetModel` (or, with `control_hint`, ControlNet's `ControlNet`) tensor names -> shapes."""
    mc, mult, layers = cfg["model_channels"], cfg["channel_mult"], cfg["num_res_blocks"]
    emb, s = 4 * mc, {}
    args = (cfg["context_dim"], cfg["linear"], cfg["depth"])
    s["time_embed.0.weight"], s["time_embed.0.bias"] = (emb, mc), (emb,)
    s["time_embed.2.weight"], s["time_embed.2.bias"] = (emb, emb), (emb,)
    s["input_blocks.0.0.weight"], s["input_blocks.0.0.bias"] = (mc, cfg["in_channels"], 3, 3), (mc,)
    chans, ch, i = [mc], mc, 1
    for level, m in enumerate(mult):
        for _ in range(layers):
            _res(s, f"input_blocks.{i}.0", ch, m * mc, emb)
            ch = m * mc
            if level in cfg["attention_levels"]:
                _transformer(s, f"input_blocks.{i}.1", ch, *args)
            chans.append(ch)
            i += 1
        if level != len(mult) - 1:
            s[f"input_blocks.{i}.0.op.weight"], s[f"input_blocks.{i}.0.op.bias"] = (ch, ch, 3, 3), (ch,)
            chans.append(ch)
            i += 1
    _res(s, "middle_block.0", ch, ch, emb)
    _transformer(s, "middle_block.1", ch, *args)
    _res(s, "middle_block.2", ch, ch, emb)
    if control_hint is not None:
        widths = list(control_hint)
        convs = [(widths[0], hint_channels)]
        for a, b in zip(widths[:-1], widths[1:]):
            convs += [(a, a), (b, a)]
        convs.append((mc, widths[-1]))
        for k, (cout, cin) in enumerate(convs):
            s[f"input_hint_block.{2 * k}.weight"], s[f"input_hint_block.{2 * k}.bias"] = (cout, cin, 3, 3), (cout,)
        for k, c in enumerate(chans):
            s[f"zero_convs.{k}.0.weight"], s[f"zero_convs.{k}.0.bias"] = (c, c, 1, 1), (c,)
        s["middle_block_out.0.weight"], s["middle_block_out.0.bias"] = (ch, ch, 1, 1), (ch,)
        return s
    i = 0
    for level in reversed(range(len(mult))):
        for j in range(layers + 1):
            _res(s, f"output_blocks.{i}.0", ch + chans.pop(), mult[level] * mc, emb)
            ch, k = mult[level] * mc, 1
            if level in cfg["attention_levels"]:
                _transformer(s, f"output_blocks.{i}.1", ch, *args)
                k = 2
            if level and j == layers:
                s[f"output_blocks.{i}.{k}.conv.weight"], s[f"output_blocks.{i}.{k}.conv.bias"] = (ch, ch, 3, 3), (ch,)
            i += 1
    s["out.0.weight"] = s["out.0.bias"] = (mc,)
    s["out.2.weight"], s["out.2.bias"] = (cfg["out_channels"], mc, 3, 3), (cfg["out_channels"],)
    return s


def _vae_res(s: dict, name: str, cin: int, cout: int) -> None:
    s[f"{name}.norm1.weight"] = s[f"{name}.norm1.bias"] = (cin,)
    s[f"{name}.conv1.weight"], s[f"{name}.conv1.bias"] = (cout, cin, 3, 3), (cout,)
    s[f"{name}.norm2.weight"] = s[f"{name}.norm2.bias"] = (cout,)
    s[f"{name}.conv2.weight"], s[f"{name}.conv2.bias"] = (cout, cout, 3, 3), (cout,)
    if cin != cout:
        s[f"{name}.nin_shortcut.weight"], s[f"{name}.nin_shortcut.bias"] = (cout, cin, 1, 1), (cout,)


def _vae_mid(s: dict, part: str, c: int) -> None:
    _vae_res(s, f"{part}.mid.block_1", c, c)
    s[f"{part}.mid.attn_1.norm.weight"] = s[f"{part}.mid.attn_1.norm.bias"] = (c,)
    for p in ("q", "k", "v", "proj_out"):
        s[f"{part}.mid.attn_1.{p}.weight"], s[f"{part}.mid.attn_1.{p}.bias"] = (c, c, 1, 1), (c,)
    _vae_res(s, f"{part}.mid.block_2", c, c)


def ldm_vae_shapes(cfg: dict = VAE) -> dict:
    """LDM `AutoencoderKL` (encoder, decoder, quant convs) tensor names -> shapes."""
    ch, mult, layers, z = cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"], cfg["z_channels"]
    s = {"encoder.conv_in.weight": (ch, cfg["in_channels"], 3, 3), "encoder.conv_in.bias": (ch,)}
    block_in = ch
    for i, m in enumerate(mult):
        for j in range(layers):
            _vae_res(s, f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
        if i != len(mult) - 1:
            s[f"encoder.down.{i}.downsample.conv.weight"] = (block_in, block_in, 3, 3)
            s[f"encoder.down.{i}.downsample.conv.bias"] = (block_in,)
    _vae_mid(s, "encoder", block_in)
    s["encoder.norm_out.weight"] = s["encoder.norm_out.bias"] = (block_in,)
    s["encoder.conv_out.weight"], s["encoder.conv_out.bias"] = (2 * z, block_in, 3, 3), (2 * z,)
    s["quant_conv.weight"], s["quant_conv.bias"] = (2 * z, 2 * z, 1, 1), (2 * z,)
    s["post_quant_conv.weight"], s["post_quant_conv.bias"] = (z, z, 1, 1), (z,)
    block_in = ch * mult[-1]
    s["decoder.conv_in.weight"], s["decoder.conv_in.bias"] = (block_in, z, 3, 3), (block_in,)
    _vae_mid(s, "decoder", block_in)
    for i in reversed(range(len(mult))):
        for j in range(layers + 1):
            _vae_res(s, f"decoder.up.{i}.block.{j}", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i != 0:
            s[f"decoder.up.{i}.upsample.conv.weight"] = (block_in, block_in, 3, 3)
            s[f"decoder.up.{i}.upsample.conv.bias"] = (block_in,)
    s["decoder.norm_out.weight"] = s["decoder.norm_out.bias"] = (block_in,)
    s["decoder.conv_out.weight"], s["decoder.conv_out.bias"] = (cfg["out_ch"], block_in, 3, 3), (cfg["out_ch"],)
    return s


def hub_dinov2_shapes(cfg: dict = DINOV2, chunks: int = 0) -> dict:
    """Meta's DINOv2 hub `DinoVisionTransformer` (SwiGLU, LayerScale) names -> shapes; `chunks` > 0 nests
    the blocks as the hub's BlockChunk does (blocks.<chunk>.<i>)."""
    d, h, p = cfg["dim"], cfg["swiglu_width"], cfg["patch"]
    s = {"cls_token": (1, 1, d), "pos_embed": (1, 1 + cfg["grid"] ** 2, d), "mask_token": (1, d),
         "patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,)}
    per_chunk = -(-cfg["depth"] // chunks) if chunks else None
    for i in range(cfg["depth"]):
        b = f"blocks.{i // per_chunk}.{i}" if chunks else f"blocks.{i}"
        s[f"{b}.norm1.weight"] = s[f"{b}.norm1.bias"] = s[f"{b}.norm2.weight"] = s[f"{b}.norm2.bias"] = (d,)
        s[f"{b}.attn.qkv.weight"], s[f"{b}.attn.qkv.bias"] = (3 * d, d), (3 * d,)
        s[f"{b}.attn.proj.weight"], s[f"{b}.attn.proj.bias"] = (d, d), (d,)
        s[f"{b}.ls1.gamma"] = s[f"{b}.ls2.gamma"] = (d,)
        s[f"{b}.mlp.w12.weight"], s[f"{b}.mlp.w12.bias"] = (2 * h, d), (2 * h,)
        s[f"{b}.mlp.w3.weight"], s[f"{b}.mlp.w3.bias"] = (d, h), (d,)
    s["norm.weight"], s["norm.bias"] = (d,), (d,)
    return s


def random_tensors(shapes: dict, seed: int, prefix: str = "") -> dict[str, np.ndarray]:
    """Random float32 values: norm scales / layer scales 1 + N(0, 0.02^2), biases and tokens N(0, 0.02^2),
    weights N(0, 1 / fan_in); every zero conv non-zero, so every path is live."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        leaf = name.rsplit(".", 1)[-1]
        scale_like = leaf == "gamma" or (leaf == "weight" and len(shape) == 1)
        if scale_like:
            value = 1.0 + rng.normal(0, 0.02, shape)
        elif leaf == "weight" and len(shape) > 1:
            value = rng.normal(0, 1.0 / np.sqrt(np.prod(shape[1:])), shape)
        else:
            value = rng.normal(0, 0.02, shape)
        out[prefix + name] = value.astype(np.float32)
    return out


def sd_betas(steps: int = 1000, start: float = 0.00085, end: float = 0.012) -> np.ndarray:
    """LDM's `make_beta_schedule("linear")`: squares of evenly spaced square roots, in float64 as LDM builds it."""
    return np.linspace(start ** 0.5, end ** 0.5, steps, dtype=np.float64) ** 2


def anydoor_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny AnyDoor ControlLDM state dict with the released key names (and LatentDiffusion's buffers)."""
    sd = {}
    sd.update(random_tensors(ldm_unet_shapes(), seed, "model.diffusion_model."))
    sd.update(random_tensors(ldm_unet_shapes(control_hint=HINT_WIDTHS), seed + 1, "control_model."))
    sd.update(random_tensors(ldm_vae_shapes(), seed + 2, "first_stage_model."))
    sd.update(random_tensors(hub_dinov2_shapes(), seed + 3, "cond_stage_model.model."))
    sd.update(random_tensors({"weight": (UNET["context_dim"], DINOV2["dim"]), "bias": (UNET["context_dim"],)},
                             seed + 4, "cond_stage_model.projector."))
    betas = sd_betas()
    alphas = np.cumprod(1 - betas)
    sd.update({"betas": betas.astype(np.float32), "alphas_cumprod": alphas.astype(np.float32),
               "sqrt_alphas_cumprod": np.sqrt(alphas).astype(np.float32)})
    return sd


def sd_state_dict(seed: int = 0, text_tensors: int = 3) -> dict[str, np.ndarray]:
    """A tiny SD 2.x single-file state dict: UNet, VAE, a stand-in text encoder, schedule buffers."""
    sd = {}
    sd.update(random_tensors(ldm_unet_shapes(), seed, "model.diffusion_model."))
    sd.update(random_tensors(ldm_vae_shapes(), seed + 2, "first_stage_model."))
    sd.update(random_tensors({f"model.transformer.resblocks.{i}.ln_1.weight": (8,) for i in range(text_tensors)},
                             seed + 5, "cond_stage_model."))
    sd["betas"] = sd_betas().astype(np.float32)
    return sd


# ----------------------------------------------------------------------------- .ckpt files (torch)


def torch_or_skip():
    torch = pytest.importorskip("torch", reason="writing .ckpt fixtures needs torch (the parity extra)")
    torch.set_num_threads(2)
    return torch


def save_ckpt(path, state, extra=None, zipped=True):
    """A Lightning-style checkpoint: state_dict next to an optimizer state and Lightning's bookkeeping."""
    torch = torch_or_skip()
    ckpt = {"state_dict": collections.OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v)))
                                                  for k, v in state.items()),
            "epoch": 1, "global_step": 8687, "pytorch-lightning_version": "1.5.0", **(extra or {})}
    torch.save(ckpt, path, _use_new_zipfile_serialization=zipped)
    return path
