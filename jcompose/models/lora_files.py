"""LoRA adapters as the files diffusers' `load_lora_weights` reads (PEFT-style safetensors), in numpy.

The file (`pytorch_lora_weights.safetensors`, diffusers' default name, so a folder holding it loads with
``pipe.load_lora_weights(folder)``) holds, per adapted module of the UNet,

    unet.<diffusers module name>.lora_A.weight   Linear (r, in);  Conv2d (r, in, kh, kw)
    unet.<diffusers module name>.lora_B.weight   Linear (out, r); Conv2d (out, r, 1, 1)

and the safetensors metadata {"format": "pt", "lora_adapter_metadata": JSON}, the JSON being the
`peft.LoraConfig` fields with the component prefix ("unet.r", "unet.lora_alpha", "unet.target_modules",
...), as diffusers' `save_lora_weights` writes them and `load_lora_adapter` reads them (diffusers 0.42:
`loaders/lora_base.py` `_save_lora_weights` / `write_lora_layers`, `loaders/peft.py`). PEFT computes
``W x + (lora_alpha / r) * B A x``; jcompose's `lora.merge` forms the same kernel.

Reading accepts the keys with or without the "unet." prefix (files saved by `save_attn_procs` or PEFT's
`get_peft_model_state_dict` have none), per-module ranks and alphas (`rank_pattern`, `alpha_pattern`,
`use_rslora`): a module whose scale differs from the file's common one gets it folded into its B, so the
adapters come back as one `LoraSpec` with the same effective weights. Safetensors holds tensors only:
nothing in a file is executed.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jcompose import lora

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
_KEY = re.compile(r"^(?P<module>.+)\.(?P<leaf>lora_A|lora_B)\.weight$")


class LoraFileError(ValueError):
    """A LoRA file that cannot be used here; the message names the file (and the key)."""


def _to_pytorch(leaf: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if leaf == "lora_A":  # (in, r) -> (r, in); (kh, kw, in, r) -> (r, in, kh, kw)
        return np.ascontiguousarray(x.T if x.ndim == 2 else x.transpose(3, 2, 0, 1))
    return np.ascontiguousarray(x.T)  # (r, out) -> (out, r)


def state_dict(adapters: Any, prefix: str = "unet") -> dict[str, np.ndarray]:
    """Adapters (`lora.init`'s tree) -> PEFT state dict {"<prefix>.<module>.lora_A.weight": array}; B of a
    convolution (A 4-d) becomes (out, r, 1, 1)."""
    out = {}
    for path, ab in sorted(lora.modules(adapters).items()):
        name = f"{prefix}.{lora.module_name(path)}" if prefix else lora.module_name(path)
        a, b = _to_pytorch("lora_A", ab["lora_A"]), _to_pytorch("lora_B", ab["lora_B"])
        out[f"{name}.lora_A.weight"] = a
        out[f"{name}.lora_B.weight"] = b[:, :, None, None] if a.ndim == 4 else b
    return out


def adapter_config(adapters: Any, spec: lora.LoraSpec) -> dict:
    """The `peft.LoraConfig` fields of the adapters (target_modules: the exact module names)."""
    return {"r": spec.rank, "lora_alpha": spec.alpha, "target_modules": sorted(lora.module_name(p) for p in
                                                                              lora.modules(adapters)),
            "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False, "use_rslora": False, "lora_bias": False,
            "lora_dropout": 0.0, "bias": "none", "init_lora_weights": True}


def write(path: str | Path, adapters: Any, spec: lora.LoraSpec, prefix: str = "unet") -> Path:
    """Writes the adapters as a diffusers LoRA file (module doc); `path` a file or a folder (then
    `<path>/pytorch_lora_weights.safetensors`). float32 tensors."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / WEIGHT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {f"{prefix}.{k}" if prefix else k: v for k, v in adapter_config(adapters, spec).items()}
    save_file(state_dict(adapters, prefix), str(path),
              metadata={"format": "pt", METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)})
    return path


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise LoraFileError(f"{path}: not a readable safetensors file ({err})") from None
    config = {}
    if metadata.get(METADATA_KEY):
        try:
            config = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as err:
            raise LoraFileError(f"{path}: metadata {METADATA_KEY!r} is not JSON ({err})") from None
        if not isinstance(config, dict):
            raise LoraFileError(f"{path}: metadata {METADATA_KEY!r} is not a JSON object")
    return tensors, config


def _strip_prefix(path: Path, tensors: dict, config: dict, prefix: str) -> tuple[dict, dict]:
    """The `prefix` component's tensors and config (keys without the prefix); a file of unprefixed keys as it is."""
    mine = {k.removeprefix(prefix + "."): v for k, v in tensors.items() if k.startswith(prefix + ".")}
    if mine:
        others = sorted({k.split(".")[0] for k in tensors if not k.startswith(prefix + ".")})
        if others:
            raise LoraFileError(f"{path}: adapters for {', '.join(others)} too; jcompose applies {prefix} LoRAs only")
        config = {k.removeprefix(prefix + "."): v for k, v in config.items() if k.startswith(prefix + ".")} or config
        return mine, config
    known_prefixes = ("text_encoder.", "text_encoder_2.", "transformer.")
    if any(k.startswith(known_prefixes) for k in tensors):
        raise LoraFileError(f"{path}: no {prefix}.* adapters (keys such as {next(iter(tensors))!r})")
    return tensors, config


def read(path: str | Path, base: Any, prefix: str = "unet") -> tuple[dict, lora.LoraSpec]:
    """(adapters, spec) of a diffusers/PEFT LoRA file (or a folder holding `pytorch_lora_weights.safetensors`)
    for the module whose params are `base` (a UNet tree). LoraFileError naming the file and key for another
    layout (kohya keys, DoRA, LoKr, biases), a module `base` lacks, or shapes that do not fit it."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NAME
    if not path.is_file():
        raise LoraFileError(f"{path}: no such LoRA file")
    tensors, config = _strip_prefix(path, *_read(path), prefix)
    if not tensors:
        raise LoraFileError(f"{path}: holds no tensors")
    for unsupported in ("use_dora", "lora_bias"):
        if config.get(unsupported):
            raise LoraFileError(f"{path}: {unsupported} = true; jcompose reads plain LoRA adapters only")
    pairs: dict[str, dict] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if not match:
            raise LoraFileError(f"{path}: key {key!r} is not '<module>.lora_A.weight' / '<module>.lora_B.weight' "
                                "(PEFT / diffusers layout; kohya-style files: convert them with diffusers first)")
        pairs.setdefault(match["module"], {})[match["leaf"]] = np.asarray(value, np.float32)
    kernels = {lora.module_name(k[:-1]): (k[:-1], tuple(v.shape)) for k, v in flatten_dict(base).items()
               if k[-1] == "kernel" and len(v.shape) in (2, 4)}
    converted = {}
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise LoraFileError(f"{path}: module {name!r} has {sorted(ab)} only (needs lora_A and lora_B)")
        if name not in kernels:
            raise LoraFileError(f"{path}: module {name!r} is not a Dense/Conv layer of this UNet")
        converted[name] = _from_pytorch(path, name, ab["lora_A"], ab["lora_B"], kernels[name][1])
    # PEFT: a module's rank / alpha is its rank_pattern / alpha_pattern entry, else r / lora_alpha; a file
    # without lora_alpha (no metadata) means alpha = rank per module (diffusers' reading: scale 1).
    ranks = [a.shape[-1] for a, _ in converted.values()]
    rank = int(config.get("r") or max(set(ranks), key=ranks.count))
    alpha = float(config.get("lora_alpha") or rank)
    rslora = bool(config.get("use_rslora", False))
    flat = {}
    for name, (a, b) in converted.items():
        r = a.shape[-1]
        if r > rank:
            raise LoraFileError(f"{path}: module {name!r} has rank {r} > the file's r = {rank}")
        module_alpha = _pattern(config.get("alpha_pattern"), name) or (alpha if "lora_alpha" in config else r)
        scale = _scale(float(module_alpha), r, rslora) / _scale(alpha, rank, rslora)
        # One spec for all modules: a lower rank is padded with zero columns (the product is unchanged), a
        # scale other than the common one is folded into B.
        a = np.concatenate([a, np.zeros((*a.shape[:-1], rank - r), np.float32)], axis=-1)
        b = np.concatenate([b * np.float32(scale), np.zeros((rank - r, b.shape[1]), np.float32)], axis=0)
        module_path = kernels[name][0]
        flat[(*module_path, "lora_A")], flat[(*module_path, "lora_B")] = a, b
    return unflatten_dict(flat), lora.LoraSpec(rank, alpha, tuple(sorted(converted)))


def _pattern(patterns: dict | None, name: str):
    """A PEFT rank/alpha pattern's value for module `name` (a key equal to it or to an ending after a '.')."""
    return next((v for k, v in (patterns or {}).items() if lora.matches(name, (k,))), None)


def _scale(alpha: float, rank: int, rslora: bool) -> float:
    return alpha / (math.sqrt(rank) if rslora else rank)


def _from_pytorch(path: Path, name: str, a: np.ndarray, b: np.ndarray, kernel: tuple) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch lora_A / lora_B -> Flax (…, in, r) / (r, out), checked against the base kernel's shape."""
    *window, fan_in, fan_out = kernel
    conv = len(kernel) == 4
    want_a = (a.shape[0], fan_in, *window) if conv else (a.shape[0], fan_in)
    want_b = (fan_out, a.shape[0], 1, 1) if conv else (fan_out, a.shape[0])
    if a.shape != want_a or b.shape != want_b:
        raise LoraFileError(f"{path}: module {name!r}: lora_A {a.shape}, lora_B {b.shape}; the base kernel "
                            f"{tuple(kernel)} needs lora_A {want_a} and lora_B {want_b}")
    a = a.T if not conv else a.transpose(2, 3, 1, 0)
    b = b.T if not conv else b[:, :, 0, 0].T
    return np.ascontiguousarray(a), np.ascontiguousarray(b)
