"""Name rules from the original LDM / ControlLDM / DINOv2-hub state dicts to diffusers' and transformers' names.

The released checkpoints of Stable Diffusion (`v2-1_512-ema-pruned.ckpt`) and AnyDoor (a ControlLDM)
name their tensors after the CompVis/ControlNet modules; jcompose reads diffusers/transformers PyTorch
names (then `pt_layout` converts those to its Flax trees). Each function here maps one component's
keys (prefix removed) to `Rule`s: the target name, plus the rows to take (DINOv2's fused qkv splits
into query/key/value) or a 1x1-conv squeeze (the VAE's attention projections are linear in diffusers).
A key no rule places raises `LayoutError` naming it, so nothing is dropped silently.

UNet (`model.diffusion_model.`), LDM -> diffusers (L = layers per block):
  time_embed.{0,2} -> time_embedding.linear_{1,2};  input_blocks.0.0 -> conv_in;  out.{0,2} -> conv_norm_out, conv_out
  input_blocks.i (i >= 1; level (i-1)//(L+1), slot (i-1)%(L+1)): .0 ResBlock -> down_blocks.l.resnets.s,
      .1 SpatialTransformer -> down_blocks.l.attentions.s, slot L: .0.op -> down_blocks.l.downsamplers.0.conv
  middle_block.{0,1,2} -> mid_block.resnets.0, mid_block.attentions.0, mid_block.resnets.1
  output_blocks.i (level i//(L+1), slot i%(L+1)): .0 -> up_blocks.l.resnets.s, .1 -> up_blocks.l.attentions.s,
      the Upsample (.1 or .2, holding only `conv`) -> up_blocks.l.upsamplers.0.conv
  ResBlock: in_layers.{0,2} -> norm1, conv1; emb_layers.1 -> time_emb_proj; out_layers.{0,3} -> norm2, conv2;
      skip_connection -> conv_shortcut.  SpatialTransformer internals keep their names.
ControlNet (`control_model.`): the UNet encoder's rules, plus input_hint_block.{0, 2, ..., 2n} -> controlnet_cond_embedding
  conv_in, blocks.0 .. blocks.{n-2}, conv_out; zero_convs.i.0 -> controlnet_down_blocks.i; middle_block_out.0 ->
  controlnet_mid_block.
VAE (`first_stage_model.`): {encoder,decoder}.norm_out -> conv_norm_out; down.i.block.j -> down_blocks.i.resnets.j;
  down.i.downsample.conv -> down_blocks.i.downsamplers.0.conv; up.i -> up_blocks.(n-1-i) (diffusers counts from the
  bottom); mid.block_{1,2} -> mid_block.resnets.{0,1}; mid.attn_1.{norm,q,k,v,proj_out} -> mid_block.attentions.0
  .{group_norm,to_q,to_k,to_v,to_out.0} (1x1 convs squeezed to linear); nin_shortcut -> conv_shortcut.
DINOv2 hub (`cond_stage_model.model.`) -> transformers Dinov2Model: cls_token, mask_token, pos_embed ->
  embeddings.{cls_token, mask_token, position_embeddings}; patch_embed.proj -> embeddings.patch_embeddings.projection;
  blocks.i (or chunked blocks.c.i) -> encoder.layer.i: attn.qkv -> attention.attention.{query,key,value} (rows
  thirds), attn.proj -> attention.output.dense, ls{1,2}.gamma -> layer_scale{1,2}.lambda1, mlp.w12/w3 ->
  mlp.weights_in/weights_out (SwiGLU), mlp.fc1/fc2 kept; norm -> layernorm.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from jcompose.models.pt_layout import LayoutError

UNET_PREFIX = "model.diffusion_model."
CONTROLNET_PREFIX = "control_model."
VAE_PREFIX = "first_stage_model."
DINOV2_PREFIX = "cond_stage_model.model."
PROJECTOR_PREFIX = "cond_stage_model.projector."
TEXT_ENCODER_PREFIX = "cond_stage_model."  # SD's OpenCLIP / CLIP text encoder
# LatentDiffusion's noise-schedule buffers and EMA bookkeeping: not network weights.
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "scale_factor",
    "lvlb_weights", "model_ema.decay", "model_ema.num_updates",
})

_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
           "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


@dataclasses.dataclass(frozen=True)
class Rule:
    """Where one source tensor goes: `target` name; `rows` (start, stop) of dim 0 to take; `squeeze` a
    (out, in, 1, 1) conv weight to (out, in)."""

    target: str
    rows: tuple[int, int] | None = None
    squeeze: bool = False


def _fail(component: str, key: str, why: str = "") -> None:
    raise LayoutError(f"{component}: cannot place tensor {key!r}{' (' + why + ')' if why else ''}; is this checkpoint "
                      "an SD 1.x/2.x LDM / AnyDoor ControlLDM?")


def _split(key: str, component: str) -> tuple[str, str]:
    """'in_layers.2.weight' -> ('in_layers.2', 'weight'); the leaf is weight/bias (or a bare parameter)."""
    if "." not in key:
        _fail(component, key)
    module, leaf = key.rsplit(".", 1)
    return module, leaf


def _resnet(rest: str, component: str, full: str) -> str:
    module, leaf = _split(rest, component)
    if module not in _RESNET:
        _fail(component, full, f"unknown ResBlock part {module!r}")
    return f"{_RESNET[module]}.{leaf}"


def layers_per_block(keys: Iterable[str]) -> int:
    """LDM input blocks per level minus the downsampler: the first `input_blocks.i.0.op` is at i = L + 1."""
    ops = sorted(int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k)))
    if ops:
        return ops[0] - 1
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    return max(blocks)  # a single level: every block after conv_in is a layer


def _encoder_rule(key: str, layers: int, component: str) -> str | None:
    """Rules shared by the UNet and the ControlNet: time embedding, input blocks, middle block."""
    if m := re.fullmatch(r"time_embed\.([02])\.(weight|bias)", key):
        return f"time_embedding.linear_{1 if m.group(1) == '0' else 2}.{m.group(2)}"
    if m := re.fullmatch(r"input_blocks\.0\.0\.(weight|bias)", key):
        return f"conv_in.{m.group(1)}"
    if m := re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key):
        i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        level, slot = (i - 1) // (layers + 1), (i - 1) % (layers + 1)
        if slot == layers:
            if j != 0 or not rest.startswith("op."):
                _fail(component, key, "expected the level's downsampler input_blocks.i.0.op")
            return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
        if j == 0:
            return f"down_blocks.{level}.resnets.{slot}.{_resnet(rest, component, key)}"
        if j == 1:
            return f"down_blocks.{level}.attentions.{slot}.{rest}"
        _fail(component, key)
    if m := re.fullmatch(r"middle_block\.([012])\.(.+)", key):
        j, rest = int(m.group(1)), m.group(2)
        if j == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{j // 2}.{_resnet(rest, component, key)}"
    return None


def unet_rules(keys: Iterable[str]) -> dict[str, Rule]:
    """LDM UNet keys (without `model.diffusion_model.`) -> diffusers UNet2DConditionModel names."""
    keys = list(keys)
    layers = layers_per_block(keys)
    rules = {}
    for key in keys:
        target = _encoder_rule(key, layers, "UNet")
        if target is None and (m := re.fullmatch(r"out\.([02])\.(weight|bias)", key)):
            target = f"{'conv_norm_out' if m.group(1) == '0' else 'conv_out'}.{m.group(2)}"
        if target is None and (m := re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key)):
            i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            level, slot = i // (layers + 1), i % (layers + 1)
            if j in (1, 2) and re.fullmatch(r"conv\.(weight|bias)", rest):  # an Upsample holds only `conv`
                target = f"up_blocks.{level}.upsamplers.0.conv.{rest[5:]}"
            elif j == 0:
                target = f"up_blocks.{level}.resnets.{slot}.{_resnet(rest, 'UNet', key)}"
            elif j == 1:
                target = f"up_blocks.{level}.attentions.{slot}.{rest}"
        if target is None:
            _fail("UNet", key)
        rules[key] = Rule(target)
    return rules


def controlnet_rules(keys: Iterable[str]) -> dict[str, Rule]:
    """ControlLDM `control_model.` keys (prefix removed) -> diffusers ControlNetModel names (conv_in included)."""
    keys = list(keys)
    layers = layers_per_block(keys)
    hint = sorted({int(m.group(1)) for k in keys if (m := re.match(r"input_hint_block\.(\d+)\.", k))})
    if hint and hint != list(range(0, 2 * len(hint), 2)):
        raise LayoutError(f"ControlNet: input_hint_block convs at {hint}; expected every second index 0, 2, ... "
                          "(conv, SiLU, conv, ...)")
    rules = {}
    for key in keys:
        target = _encoder_rule(key, layers, "ControlNet")
        if target is None and (m := re.fullmatch(r"input_hint_block\.(\d+)\.(weight|bias)", key)):
            k = hint.index(int(m.group(1)))
            part = "conv_in" if k == 0 else "conv_out" if k == len(hint) - 1 else f"blocks.{k - 1}"
            target = f"controlnet_cond_embedding.{part}.{m.group(2)}"
        if target is None and (m := re.fullmatch(r"zero_convs\.(\d+)\.0\.(weight|bias)", key)):
            target = f"controlnet_down_blocks.{m.group(1)}.{m.group(2)}"
        if target is None and (m := re.fullmatch(r"middle_block_out\.0\.(weight|bias)", key)):
            target = f"controlnet_mid_block.{m.group(1)}"
        if target is None:
            _fail("ControlNet", key)
        rules[key] = Rule(target)
    return rules


def vae_rules(keys: Iterable[str]) -> dict[str, Rule]:
    """LDM AutoencoderKL keys (without `first_stage_model.`) -> diffusers AutoencoderKL names."""
    keys = list(keys)
    up_levels = len({m.group(1) for k in keys if (m := re.match(r"decoder\.up\.(\d+)\.", k))})
    rules = {}
    for key in keys:
        rule = None
        if re.fullmatch(r"(post_)?quant_conv\.(weight|bias)", key) or re.fullmatch(
                r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)", key):
            rule = Rule(key)
        elif m := re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", key):
            rule = Rule(f"{m.group(1)}.conv_norm_out.{m.group(2)}")
        elif m := re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.+)", key):
            part, level, rest = m.group(1), int(m.group(3)), m.group(6)
            if m.group(2) == "up":
                level = up_levels - 1 - level  # diffusers' up_blocks run from the bottom of the LDM's list
            blocks = f"{part}.{m.group(2)}_blocks.{level}"
            if m.group(5) is not None:
                rule = Rule(f"{blocks}.resnets.{m.group(5)}.{rest.replace('nin_shortcut', 'conv_shortcut')}")
            elif re.fullmatch(r"conv\.(weight|bias)", rest):
                rule = Rule(f"{blocks}.{m.group(2)}samplers.0.{rest}")
        elif m := re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(.+)", key):
            rule = Rule(f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}."
                        f"{m.group(3).replace('nin_shortcut', 'conv_shortcut')}")
        elif m := re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", key):
            rule = Rule(f"{m.group(1)}.mid_block.attentions.0.{_VAE_ATTENTION[m.group(2)]}.{m.group(3)}",
                        squeeze=m.group(2) != "norm" and m.group(3) == "weight")
        if rule is None:
            _fail("VAE", key)
        rules[key] = rule
    return rules


_DINOV2_BLOCK = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.output.dense", "mlp.w12": "mlp.weights_in",
                 "mlp.w3": "mlp.weights_out", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def dinov2_rules(keys: Iterable[str], hidden_size: int) -> dict[str, list[Rule]]:
    """DINOv2 hub keys (without `cond_stage_model.model.`) -> transformers Dinov2Model names (a list per key:
    the fused qkv gives three)."""
    rules: dict[str, list[Rule]] = {}
    top = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
           "pos_embed": "embeddings.position_embeddings", "patch_embed.proj.weight":
           "embeddings.patch_embeddings.projection.weight", "patch_embed.proj.bias":
           "embeddings.patch_embeddings.projection.bias", "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    d = hidden_size
    for key in keys:
        if key in top:
            rules[key] = [Rule(top[key])]
            continue
        m = re.fullmatch(r"blocks\.(?:\d+\.)?(\d+)\.(.+)\.(weight|bias|gamma)", key)
        if m is None:
            _fail("DINOv2", key, "register tokens and other hub variants are not supported" if "register" in key else "")
        layer, module, leaf = f"encoder.layer.{m.group(1)}", m.group(2), m.group(3)
        if module == "attn.qkv":
            rules[key] = [Rule(f"{layer}.attention.attention.{name}.{leaf}", rows=(i * d, (i + 1) * d))
                          for i, name in enumerate(("query", "key", "value"))]
        elif module in ("ls1", "ls2") and leaf == "gamma":
            rules[key] = [Rule(f"{layer}.layer_scale{module[-1]}.lambda1")]
        elif module in _DINOV2_BLOCK and leaf != "gamma":
            rules[key] = [Rule(f"{layer}.{_DINOV2_BLOCK[module]}.{leaf}")]
        else:
            _fail("DINOv2", key)
    return rules


def projector_rules(keys: Iterable[str]) -> dict[str, Rule]:
    """AnyDoor's `cond_stage_model.projector.` (nn.Linear 1536 -> 1024) keys -> weight / bias."""
    rules = {}
    for key in keys:
        if key not in ("weight", "bias"):
            _fail("projector", key)
        rules[key] = Rule(key)
    return rules
