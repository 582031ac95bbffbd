"""Original single-file checkpoints -> jcompose model folders, torch-free, one component at a time.

* `convert_sd(ckpt, out)`: Stable Diffusion's `v2-1_512-ema-pruned.ckpt` / `.safetensors` (or SD 1.x) ->
  a diffusers-layout base folder: `unet/`, `vae/`, `scheduler/`, `model_index.json`. The text encoder
  (`cond_stage_model.*`) is not converted and never read: AnyDoor replaces the text with DINOv2 tokens,
  and jcompose's tokenizer files are not in the checkpoint (use the diffusers folder of the base for
  text-conditioned methods); the report says how many tensors were left.
* `convert_anydoor(ckpt, out)`: AnyDoor's released ControlLDM (`epoch=1-step=8687.ckpt`, or a pruned copy)
  -> that base layout (its UNet with the trained decoder) plus `extractor/` (the detail extractor: a
  ControlNet without conv_in, 4-channel hint; the unused `control_model.input_blocks.0.0` is dropped),
  `dinov2/` (a transformers Dinov2Model folder), `projector/` (DINOv2 -> context linear layer) and a
  `config.json` saying how to build the AnyDoor method (`read_release`).

Names follow `ldm_names`, architectures `ldm_configs`; every component is checked against the jcompose
module its config builds (names and shapes; `LayoutError` lists every difference) before it is written.
Only the tensors of the component being written are in memory (the checkpoint is read lazily,
`lightning_ckpt`), and safetensors files are streamed tensor by tensor: peak memory is about the largest
component, never the checkpoint (whose optimizer state is never read). Tensors are written in the
PyTorch layout, so unet/, vae/ and dinov2/ also load in diffusers / transformers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from jcompose.models import encoders, ldm_configs, ldm_names, loading, pt_layout, vit
from jcompose.models.diffusers_config import CONTROLNET, UNET, VAE, ComponentKind, module_kwargs
from jcompose.models.files import DIFFUSERS_PT_WEIGHTS, TRANSFORMERS_PT_WEIGHTS
from jcompose.models.lightning_ckpt import Checkpoint, open_checkpoint

RELEASE_MARK = "anydoor-release"
RELEASE_FORMAT = 1
PROJECTOR_WEIGHTS = "projector.safetensors"
DTYPES = {"keep": None, "float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
_SAFETENSORS_CODES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                      np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32",
                      np.dtype(np.int16): "I16", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8",
                      np.dtype(np.bool_): "BOOL"}


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], dtype: Any = None,
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes a safetensors file one tensor at a time (no second copy of the whole dict in memory).

    Format: little-endian u64 header length, a JSON header {name: {dtype, shape, data_offsets}} padded with
    spaces to 8 bytes, then the tensors' bytes back to back. `dtype` casts floating tensors as written."""
    def out_dtype(a):
        return np.dtype(dtype) if dtype is not None and np.issubdtype(a.dtype, np.floating) else a.dtype

    header: dict[str, Any] = {}
    offset = 0
    for name in sorted(tensors):
        a = tensors[name]
        kind = out_dtype(a)
        if kind not in _SAFETENSORS_CODES:
            raise TypeError(f"{path}: tensor {name} has dtype {kind}, which safetensors cannot hold")
        size = int(np.prod(a.shape, dtype=np.int64)) * kind.itemsize
        header[name] = {"dtype": _SAFETENSORS_CODES[kind], "shape": list(a.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(tensors):
            a = np.ascontiguousarray(tensors[name].astype(out_dtype(tensors[name]), copy=False))
            f.write(memoryview(a.astype(a.dtype.newbyteorder("<"), copy=False)).cast("B"))


# ------------------------------------------------------------------------------- components


def _apply(arrays: Mapping[str, Any], rules: Mapping[str, Any]) -> dict[str, Any]:
    """Source arrays (or shapes) -> target names by the rules (rows taken, 1x1 convs squeezed)."""
    out = {}
    for key, rule_list in rules.items():
        for rule in rule_list if isinstance(rule_list, list) else [rule_list]:
            x = arrays[key]
            if isinstance(x, tuple):  # a shape
                x = ((rule.rows[1] - rule.rows[0]),) + x[1:] if rule.rows else x
                out[rule.target] = x[:2] if rule.squeeze else x
                continue
            if rule.rows:
                x = x[rule.rows[0]:rule.rows[1]]
            if rule.squeeze:
                if x.ndim != 4 or x.shape[2:] != (1, 1):
                    raise pt_layout.LayoutError(f"{key}: expected a 1x1 conv weight to squeeze, got shape {x.shape}")
                x = x.reshape(x.shape[:2])
            out[rule.target] = x
    return out


class _Component:
    """One component of a checkpoint: its source keys under `prefix`, their rules and target shapes."""

    def __init__(self, ckpt: Checkpoint, prefix: str, rules_of: Callable[[list[str]], dict]):
        self.ckpt, self.prefix = ckpt, prefix
        self.keys = [k[len(prefix):] for k in ckpt.tensors if k.startswith(prefix)]
        self.rules = rules_of(self.keys) if self.keys else {}
        self.shapes = _apply({k: tuple(ckpt.tensors[prefix + k].shape) for k in self.keys}, self.rules)

    def sources(self) -> list[str]:
        return [self.prefix + k for k in self.keys]

    def read(self, drop: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        arrays = self.ckpt.read(self.sources())
        out = _apply({k: arrays[self.prefix + k] for k in self.keys}, self.rules)
        return {k: v for k, v in out.items() if k not in drop}


def _stand_ins(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Zero-memory arrays of the given shapes (for checking names and shapes without data)."""
    return {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in shapes.items()}


def _check(shapes, expected, source: str, naming=pt_layout.pytorch_keys, ignore=()) -> None:
    pt_layout.state_dict_to_flax(_stand_ins(shapes), expected, source, naming=naming, ignore=ignore)


def _write_diffusers(component: _Component, kind: ComponentKind, config: dict, folder: Path, dtype,
                     drop: tuple[str, ...] = ()) -> int:
    """Checks a diffusers-named component against the jcompose module of `config`, then writes the folder."""
    module = kind.module_class(**module_kwargs(config, kind, folder / "config.json"))
    shapes = {k: v for k, v in component.shapes.items() if k not in drop}
    _check(shapes, loading.abstract_params(module), f"{component.ckpt.path} ({component.prefix}*)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = component.read(drop)
    write_safetensors(folder / DIFFUSERS_PT_WEIGHTS, tensors, dtype, {"format": "pt"})
    return len(tensors)


def _base(ckpt: Checkpoint, out: Path, dtype, *, sample_size: int, heads: int | None, head_channels: int | None,
          prediction_type: str, scaling_factor: float) -> tuple[dict, list[str], set[str]]:
    """Writes unet/, vae/, scheduler/ of an LDM checkpoint; returns (unet config, report lines, used keys)."""
    unet = _Component(ckpt, ldm_names.UNET_PREFIX, ldm_names.unet_rules)
    vae = _Component(ckpt, ldm_names.VAE_PREFIX, ldm_names.vae_rules)
    for part, name in ((unet, "UNet"), (vae, "VAE")):
        if not part.keys:
            raise pt_layout.LayoutError(f"{ckpt.path}: no {part.prefix}* tensors ({name}); not an LDM checkpoint")
    unet_cfg = ldm_configs.unet_config(unet.shapes, sample_size=sample_size, heads=heads, head_channels=head_channels)
    n_unet = _write_diffusers(unet, UNET, unet_cfg, out / "unet", dtype)
    vae_cfg = ldm_configs.vae_config(vae.shapes, sample_size=8 * sample_size, scaling_factor=scaling_factor)
    n_vae = _write_diffusers(vae, VAE, vae_cfg, out / "vae", dtype)
    betas = ckpt.read(["betas"])["betas"] if "betas" in ckpt.tensors else None
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(ldm_configs.scheduler_config(betas, prediction_type), indent=2) + "\n")
    report = [f"{out / 'unet'}: {n_unet} tensors, {unet_cfg['block_out_channels']} channels, context "
              f"{unet_cfg['cross_attention_dim']}, heads {unet_cfg['attention_head_dim']}",
              f"{out / 'vae'}: {n_vae} tensors",
              f"{out / 'scheduler'}: {'betas of the checkpoint' if betas is not None else 'SD default betas'}, "
              f"{prediction_type}"]
    return unet_cfg, report, set(unet.sources()) | set(vae.sources())


def _leftovers(ckpt: Checkpoint, used: set[str], skipped_prefixes: tuple[str, ...]) -> tuple[list[str], int]:
    """(ignored buffer names, skipped tensor count); LayoutError for any other tensor no component took."""
    ignored, skipped, unknown = [], 0, []
    for key in ckpt.tensors:
        if key in used:
            continue
        if key in ldm_names.SCHEDULE_BUFFERS or key.startswith("model_ema."):
            ignored.append(key)
        elif key.startswith(skipped_prefixes):
            skipped += 1
        else:
            unknown.append(key)
    if unknown:
        pt_layout.raise_if_mismatched(str(ckpt.path), [], sorted(unknown), [])
    return sorted(ignored), skipped


def _model_index(components: list[str]) -> dict:
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.39.0",
             "text_encoder": [None, None], "tokenizer": [None, None], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    kinds = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "scheduler": "DDIMScheduler"}
    index.update({name: ["diffusers", kinds[name]] for name in components})
    return index


def convert_sd(path: str | Path, out: str | Path, *, dtype: str = "keep", sample_size: int = 64,
               heads: int | None = None, head_channels: int | None = None, prediction_type: str = "epsilon",
               scaling_factor: float = 0.18215) -> list[str]:
    """SD single-file checkpoint -> diffusers-layout base folder (module doc); returns report lines.

    sample_size: latent side (64 = 512 px: SD 2.1-base; 96 for the 768-px SD 2.1, which is v_prediction).
    heads / head_channels: attention heads (default by context width: SD 1.x 8 heads, SD 2.x 64 channels)."""
    out = Path(out)
    with open_checkpoint(path) as ckpt:
        if any(k.startswith(ldm_names.CONTROLNET_PREFIX) for k in ckpt.tensors):
            raise pt_layout.LayoutError(f"{path}: has control_model.* tensors (a ControlLDM such as AnyDoor); use "
                                        "`python -m jcompose.convert anydoor-ckpt`")
        _, report, used = _base(ckpt, out, DTYPES[dtype], sample_size=sample_size, heads=heads,
                                head_channels=head_channels, prediction_type=prediction_type,
                                scaling_factor=scaling_factor)
        ignored, skipped = _leftovers(ckpt, used, (ldm_names.TEXT_ENCODER_PREFIX,))
        (out / "model_index.json").write_text(json.dumps(_model_index(["unet", "vae", "scheduler"]), indent=2) + "\n")
        report.append(f"text encoder: {skipped} cond_stage_model.* tensors not converted (not read; AnyDoor does "
                      "not use a text encoder)")
        report.append(f"ignored {len(ignored)} schedule/EMA buffers; {ckpt.unread_bytes / 2**20:.1f} MiB of other "
                      "tensors (optimizer state) never read")
    return report


def convert_anydoor(path: str | Path, out: str | Path, *, dtype: str = "keep", sample_size: int = 64,
                    head_channels: int | None = None, dinov2_head_channels: int = 64,
                    reference_size: int = 224) -> list[str]:
    """AnyDoor's released ControlLDM checkpoint -> a release folder (module doc); returns report lines."""
    out = Path(out)
    cast = DTYPES[dtype]
    with open_checkpoint(path) as ckpt:
        control = _Component(ckpt, ldm_names.CONTROLNET_PREFIX, ldm_names.controlnet_rules)
        if not control.keys:
            raise pt_layout.LayoutError(f"{path}: no control_model.* tensors, so not an AnyDoor (ControlLDM) "
                                        "checkpoint; for Stable Diffusion itself use `convert sd-ckpt`")
        unet_cfg, report, used = _base(ckpt, out, cast, sample_size=sample_size, heads=None,
                                       head_channels=head_channels, prediction_type="epsilon", scaling_factor=0.18215)
        extractor_cfg = ldm_configs.controlnet_config(control.shapes, unet_cfg, reads_latent=False)
        if extractor_cfg["conditioning_channels"] != 4:
            raise pt_layout.LayoutError(f"{path}: the ControlNet reads a {extractor_cfg['conditioning_channels']}-"
                                        "channel hint; AnyDoor's collage hint has 4 (RGB + mask)")
        dropped = tuple(k for k in control.shapes if k.startswith("conv_in."))  # x_t never reaches the extractor
        n = _write_diffusers(control, CONTROLNET, extractor_cfg, out / "extractor", cast, drop=dropped)
        report.append(f"{out / 'extractor'}: {n} tensors, hint widths {extractor_cfg['conditioning_embedding_out_channels']}"
                      f" (dropped the unused {', '.join(ldm_names.CONTROLNET_PREFIX + 'input_blocks.0.0.' + k[8:] for k in dropped)})")
        dino_cfg, n = _write_dinov2(ckpt, out / "dinov2", cast, dinov2_head_channels)
        report.append(f"{out / 'dinov2'}: {n} tensors, width {dino_cfg['hidden_size']}, {dino_cfg['num_hidden_layers']}"
                      f" layers, {dino_cfg['image_size']} px grid")
        projector = _Component(ckpt, ldm_names.PROJECTOR_PREFIX, ldm_names.projector_rules)
        shape = projector.shapes.get("weight")
        if shape != (unet_cfg["cross_attention_dim"], dino_cfg["hidden_size"]) or "bias" not in projector.shapes:
            raise pt_layout.LayoutError(f"{path}: cond_stage_model.projector.weight/bias: weight shape {shape}, "
                                        f"expected ({unet_cfg['cross_attention_dim']}, {dino_cfg['hidden_size']})")
        (out / "projector").mkdir(parents=True, exist_ok=True)
        (out / "projector" / "config.json").write_text(json.dumps(
            {"in_features": dino_cfg["hidden_size"], "out_features": shape[0], "layout": "torch nn.Linear"}) + "\n")
        write_safetensors(out / "projector" / PROJECTOR_WEIGHTS, projector.read(), cast, {"format": "pt"})
        used |= set(control.sources()) | set(projector.sources()) | {
            k for k in ckpt.tensors if k.startswith(ldm_names.DINOV2_PREFIX)}
        ignored, _ = _leftovers(ckpt, used, ())
        (out / "model_index.json").write_text(json.dumps(_model_index(["unet", "vae", "scheduler"]), indent=2) + "\n")
        info = {"_jcompose": RELEASE_MARK, "format_version": RELEASE_FORMAT, "source": str(path),
                **{k: ckpt.meta[k] for k in ("epoch", "global_step", "pytorch-lightning_version") if k in ckpt.meta},
                "method": {"model": {"context_dim": unet_cfg["cross_attention_dim"],
                                     "hint_widths": extractor_cfg["conditioning_embedding_out_channels"],
                                     "dinov2_interpolation": "dinov2_hub"},
                           "data": {"image_size": 8 * sample_size, "reference_size": reference_size}},
                "components": {k: k for k in ("unet", "vae", "scheduler", "extractor", "dinov2", "projector")},
                "dropped": [ldm_names.CONTROLNET_PREFIX + "input_blocks.0.0." + k[8:] for k in dropped],
                "ignored_buffers": ignored, "placeholders": ckpt.placeholders,
                "unread_mib": round(ckpt.unread_bytes / 2**20, 1)}
        (out / "config.json").write_text(json.dumps(info, indent=2) + "\n")
        report.append(f"{out / 'config.json'}: step {info.get('global_step', 'unrecorded')}; {len(ignored)} buffers ignored; "
                      f"{info['unread_mib']} MiB of optimizer state never read"
                      + (f"; inert placeholders for {', '.join(ckpt.placeholders)}" if ckpt.placeholders else ""))
    return report


def _write_dinov2(ckpt: Checkpoint, folder: Path, dtype, head_channels: int) -> tuple[dict, int]:
    prefix = ldm_names.DINOV2_PREFIX
    shapes = {k[len(prefix):]: tuple(v.shape) for k, v in ckpt.tensors.items() if k.startswith(prefix)}
    if not shapes:
        raise pt_layout.LayoutError(f"{ckpt.path}: no {prefix}* tensors (AnyDoor's DINOv2 ID extractor)")
    config = ldm_configs.dinov2_config(shapes, head_channels=head_channels)
    component = _Component(ckpt, prefix, lambda keys: ldm_names.dinov2_rules(keys, config["hidden_size"]))
    module = vit.Dinov2Model(vit.Dinov2Config(**config))
    _check(component.shapes, encoders.abstract_params(module), f"{ckpt.path} ({prefix}*)",
           naming=pt_layout.transformers_keys)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(module.config.to_dict(), indent=2, sort_keys=True) + "\n")
    tensors = component.read()
    write_safetensors(folder / TRANSFORMERS_PT_WEIGHTS, tensors, dtype, {"format": "pt"})
    return config, len(tensors)


# ---------------------------------------------------------------------------------- reading


def read_release(folder: str | Path) -> dict:
    """A release folder's config.json (checked: written by `convert_anydoor`, every component present).

    Raises FileNotFoundError / ValueError naming the folder and what is missing."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--weights {folder}: no config.json; convert the released checkpoint with "
                                "`python -m jcompose.convert anydoor-ckpt PATH.ckpt OUT` and pass OUT")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(info, dict) or info.get("_jcompose") != RELEASE_MARK:
        raise ValueError(f"{path}: not an AnyDoor release folder written by `convert anydoor-ckpt` "
                         f"(_jcompose = {info.get('_jcompose') if isinstance(info, dict) else None!r})")
    if info.get("format_version") != RELEASE_FORMAT:
        raise ValueError(f"{path}: format_version {info.get('format_version')!r}; this jcompose reads {RELEASE_FORMAT}")
    for name in info["components"].values():
        if not (folder / name).is_dir():
            raise FileNotFoundError(f"{folder}: component folder {name}/ missing (re-run convert anydoor-ckpt)")
    return info


def load_projector(folder: str | Path) -> dict[str, np.ndarray]:
    """`projector/` -> {"kernel" (D_dino, D_context), "bias" (D_context,)} float32 (jcompose's layout)."""
    from jcompose.models.files import read_safetensors

    tensors = read_safetensors([Path(folder) / PROJECTOR_WEIGHTS])
    if set(tensors) != {"weight", "bias"} or tensors["weight"].ndim != 2:
        raise ValueError(f"{folder / PROJECTOR_WEIGHTS}: expected a linear layer's weight (out, in) and bias")
    return {"kernel": np.asarray(tensors["weight"], np.float32).T, "bias": np.asarray(tensors["bias"], np.float32)}


def load_extractor(folder: str | Path, expected: Any) -> Any:
    """`extractor/` -> its Flax params, checked against `expected` (the method's extractor tree)."""
    loaded = loading.load_controlnet(folder)
    if jax.tree_util.tree_structure(jax.tree_util.tree_map(np.shape, loaded.params)) != \
            jax.tree_util.tree_structure(jax.tree_util.tree_map(lambda s: tuple(s.shape), expected)):
        raise ValueError(f"{folder}: the extractor's tree does not fit the AnyDoor method built from config.json")
    return loaded.params
