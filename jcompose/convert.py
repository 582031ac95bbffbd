"""Convert model folders between the Flax and the diffusers/transformers PyTorch layouts.

    python -m jcompose.convert to-flax SRC DST       # PyTorch safetensors -> Flax msgpack
    python -m jcompose.convert to-diffusers SRC DST  # Flax msgpack -> PyTorch safetensors
    python -m jcompose.convert anydoor-ckpt epoch=1-step=8687.ckpt OUT  # AnyDoor's released model
    python -m jcompose.convert sd-ckpt v2-1_512-ema-pruned.ckpt OUT    # an original SD checkpoint -> base folder
    python -m jcompose.convert merge-lora BASE pytorch_lora_weights.safetensors OUT  # a UNet LoRA baked in

SRC is one model folder (config.json + weights: unet, controlnet, vae, CLIP text encoder,
DINOv2) or a whole base-model folder (unet/, vae/, text_encoder/, ...); other files (tokenizer,
scheduler, model_index.json) are copied. Conversion runs in numpy: torch is neither needed nor
imported. `to-diffusers` output loads in PyTorch with `UNet2DConditionModel.from_pretrained`,
`ControlNetModel.from_pretrained`, `AutoencoderKL.from_pretrained`, `CLIPTextModel` /
`Dinov2Model.from_pretrained` (also CLIP and ViT folders); `to-flax` output (Flax msgpack, the
parameter trees of diffusers'/transformers' former Flax classes) loads with `jcompose.models`.

`anydoor-ckpt` reads AnyDoor's PyTorch Lightning checkpoint (or a pruned copy, .ckpt or .safetensors)
torch-free and lazily (the optimizer state is never read; pickled objects of unknown classes become
inert placeholders) and writes a folder for `python -m jcompose.compose anydoor --weights OUT`: unet/,
vae/, scheduler/, extractor/, dinov2/, projector/, config.json (jcompose/models/ldm_convert.py).
`sd-ckpt` writes a diffusers-layout base (unet/, vae/, scheduler/) from `v2-1_512-ema-pruned.ckpt`
(or .safetensors, or SD 1.x); its text encoder is not converted (AnyDoor does not use one).
`merge-lora` applies a diffusers/PEFT UNet LoRA file (as `pipe.load_lora_weights` reads it, e.g. a DreamCom
LoRA run's `export/<object>/pytorch_lora_weights.safetensors`) to a UNet folder or a base-model folder's
unet/ and writes the merged weights (W + alpha/r B A) in the diffusers layout, the rest of a base copied.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from jcompose import atomic, cli
from jcompose.models import encoders, loading
from jcompose.models.diffusers_config import KINDS, read_config

_DTYPES = {"float32": np.float32, "float16": np.float16}
_TRANSFORMERS = {"clip_text_model": encoders.load_clip_text, "clip": encoders.load_clip, "vit": encoders.load_vit,
                 "dinov2": encoders.load_dinov2}


def _component(folder: Path) -> str | None:
    """'unet' / 'controlnet' / 'vae' / a transformers model_type, or None for a non-model folder."""
    if not (folder / "config.json").is_file():
        return None
    config = read_config(folder)
    class_name = str(config.get("_class_name", "")).removeprefix("Flax")
    for name, kind in KINDS.items():
        if class_name == kind.pytorch_class:
            return name
    if config.get("model_type") in _TRANSFORMERS:
        return config["model_type"]
    raise ValueError(
        f"{folder / 'config.json'}: cannot tell which model this is (_class_name {config.get('_class_name')!r}, "
        f"model_type {config.get('model_type')!r}); convertible: {[k.pytorch_class for k in KINDS.values()]}, "
        f"model_type {list(_TRANSFORMERS)}"
    )


def convert_model(src: Path, dst: Path, target: str, dtype: str = "float32") -> str:
    """Converts one model folder; returns a one-line report."""
    component = _component(src)
    if component is None:
        raise FileNotFoundError(f"{src}: no config.json, so not a model folder")
    if target not in ("flax", "diffusers"):
        raise ValueError(f"target must be 'flax' or 'diffusers', got {target!r}")
    source_format = "safetensors" if target == "flax" else "msgpack"
    out_format = "msgpack" if target == "flax" else "safetensors"
    if component in KINDS:
        model = loading.load_component(src, KINDS[component], weights=source_format)
        loading.export_diffusers(model.module, model.params, dst, formats=(out_format,), dtype=_DTYPES[dtype])
    else:
        model = _TRANSFORMERS[component](src, weights=source_format)
        encoders.export_encoder(model.module, model.params, dst, formats=(out_format,), dtype=_DTYPES[dtype])
    return f"{src} ({component}, {source_format}) -> {dst} ({out_format}, {dtype})"


def convert(src: Path, dst: Path, target: str, dtype: str = "float32") -> list[str]:
    """Converts a model folder or every model subfolder of a base-model folder (copying the rest).

    `dst` appears complete or not at all (written under a temporary name, then renamed; `jcompose.atomic`);
    an existing `dst` must be empty."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: folder not found")
    if src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: destination must differ from the source")
    with atomic.folder(dst, owns=_empty) as partial:
        reports = _convert(src, partial, target, dtype)
    return [line.replace(str(partial), str(dst)) for line in reports]


def _empty(folder: Path) -> bool:
    return not any(folder.iterdir())


def _convert(src: Path, dst: Path, target: str, dtype: str) -> list[str]:
    if (src / "config.json").is_file():
        return [convert_model(src, dst, target, dtype)]
    reports = []
    for entry in sorted(src.iterdir()):
        if entry.is_dir() and (entry / "config.json").is_file():
            reports.append(convert_model(entry, dst / entry.name, target, dtype))
        elif entry.is_dir():
            shutil.copytree(entry, dst / entry.name, dirs_exist_ok=True)
            reports.append(f"{entry} -> {dst / entry.name} (copied)")
        else:
            shutil.copy2(entry, dst / entry.name)
    if not any("copied" not in r for r in reports):
        raise FileNotFoundError(f"{src}: neither a model folder (config.json) nor one with model subfolders")
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jcompose.convert",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="target", required=True, metavar="DIRECTION")
    for name, help_text in (
        ("to-flax", "PyTorch safetensors (diffusers/transformers layout) -> Flax msgpack"),
        ("to-diffusers", "Flax msgpack -> PyTorch safetensors with PyTorch key names and layouts"),
    ):
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("src", type=Path, help="model folder or base-model folder to read")
        command.add_argument("dst", type=Path, help="folder to write (created)")
        command.add_argument("--dtype", choices=sorted(_DTYPES), default="float32",
                             help="dtype of the written tensors (default float32)")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of input errors too (or set "
                        f"{cli.DEBUG_ENV}=1)")
    _add_checkpoint_parsers(sub)
    merge = sub.add_parser("merge-lora", help="a UNet LoRA file (diffusers/PEFT) merged into a UNet or base folder")
    merge.add_argument("src", type=Path, help="UNet folder, or base-model folder (its unet/ is merged)")
    merge.add_argument("lora", type=Path, help="pytorch_lora_weights.safetensors, or a folder holding it")
    merge.add_argument("dst", type=Path, help="folder to write (created)")
    args = parser.parse_args(cli.pop_debug(sys.argv[1:] if argv is None else argv))
    with cli.guard(), cli.input_errors():  # bad folders and files: one `error:` line, exit 2
        if args.target in ("anydoor-ckpt", "sd-ckpt"):
            lines = _convert_checkpoint(args)
        elif args.target == "merge-lora":
            lines = merge_lora(args.src, args.lora, args.dst)
        else:
            lines = convert(args.src, args.dst, "flax" if args.target == "to-flax" else "diffusers", args.dtype)
        for line in lines:
            print(line)
    return 0


def merge_lora(src: Path, lora_file: Path, dst: Path) -> list[str]:
    """Writes `src` (a UNet folder, or a base-model folder whose other entries are copied) with the UNet LoRA
    `lora_file` merged in (diffusers safetensors); `dst` appears complete or not at all."""
    from jcompose import lora
    from jcompose.models import lora_files

    src, dst = Path(src), Path(dst)
    unet_folder = src if (src / "config.json").is_file() else src / "unet"
    unet = loading.load_unet(unet_folder)
    adapters, spec = lora_files.read(lora_file, unet.params)
    merged = lora.merge(unet.params, adapters, spec.scale)
    with atomic.folder(dst, owns=_empty) as partial:
        if unet_folder != src:
            for entry in sorted(src.iterdir()):
                if entry.name != "unet":
                    (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, partial / entry.name)
        loading.export_diffusers(unet.module, merged, partial / "unet" if unet_folder != src else partial)
    return [f"{unet_folder} + {lora_file} ({len(lora.modules(adapters))} modules, rank {spec.rank}, alpha "
            f"{spec.alpha:g}) -> {dst / 'unet' if unet_folder != src else dst}"]


def _add_checkpoint_parsers(sub) -> None:
    from jcompose.models.ldm_convert import DTYPES

    for name, help_text in (
        ("anydoor-ckpt", "AnyDoor's released Lightning checkpoint -> a folder for `compose anydoor --weights`"),
        ("sd-ckpt", "an original Stable Diffusion single-file checkpoint -> a diffusers-layout base folder"),
    ):
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("src", type=Path, help="the .ckpt / .pth / .safetensors file")
        command.add_argument("dst", type=Path, help="folder to write (created)")
        command.add_argument("--dtype", choices=sorted(DTYPES), default="keep",
                             help="dtype of the written float tensors (default: as in the checkpoint)")
        command.add_argument("--sample-size", type=int, default=64,
                             help="latent side the UNet was trained at (64 = 512 px, SD 2.1-base / AnyDoor)")
        command.add_argument("--head-channels", type=int, default=None,
                             help="UNet channels per attention head (default: 64 for SD 2.x, 8 heads for SD 1.x)")
        if name == "sd-ckpt":
            command.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon",
                                 help="epsilon for v2-1_512 (SD 2.1-base) and SD 1.x; v_prediction for v2-1_768")
        else:
            command.add_argument("--dinov2-head-channels", type=int, default=64,
                                 help="DINOv2 channels per head (ViT-g/14: 64, i.e. 24 heads)")


def _convert_checkpoint(args) -> list[str]:
    from jcompose.models import ldm_convert

    if not args.src.is_file():
        raise FileNotFoundError(f"{args.src}: checkpoint file not found")
    common = dict(dtype=args.dtype, sample_size=args.sample_size, head_channels=args.head_channels)
    with atomic.folder(args.dst, owns=_empty) as partial:  # a kill leaves no half-converted release
        if args.target == "sd-ckpt":
            lines = ldm_convert.convert_sd(args.src, partial, prediction_type=args.prediction_type, **common)
        else:
            lines = ldm_convert.convert_anydoor(args.src, partial, dinov2_head_channels=args.dinov2_head_channels,
                                                **common)
    return [line.replace(str(partial), str(args.dst)) for line in lines]


if __name__ == "__main__":
    sys.exit(main())
