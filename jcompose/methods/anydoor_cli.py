"""`python -m jcompose.compose anydoor ...`: put one or several objects into a background with AnyDoor.

    python -m jcompose.compose anydoor --checkpoint RUN --reference obj.png --reference-mask obj_mask.png \
        --background bg.jpg --mask target_mask.png [--shape-control] [--steps 50] [--guidance 5.0] \
        [--show] --out result.png
    python -m jcompose.compose anydoor --weights RELEASE --reference obj.png ... --out result.png
    python -m jcompose.compose anydoor --weights RELEASE --benchmark BENCH --out GEN [--batch 8]

`--checkpoint`: a jcompose training run; its stored config (`RUN/config.json`) says which base, DINOv2
and settings it was trained with (`--base` / `--dinov2` override the folders). `--weights`: the folder
`python -m jcompose.convert anydoor-ckpt` wrote from AnyDoor's released checkpoint (no training run).
`--reference/--reference-mask/--mask` repeat for several objects: objects whose regions do not meet
are generated in one batched call, overlapping ones one after another
(`jcompose/methods/anydoor_inference.py`). `--show` also writes `<out>_show.png`: the references as
DINOv2 sees them, the background with the targets outlined, each collage, the result.

`--benchmark BENCH` (built by `python -m input_pipeline.anydoor_benchmark`) generates every
concept x background pair into GEN/<concept>/<background>.png on every device (and host, `--multihost`),
`--batch_size` (or `--batch`) pairs per call, resumably, and writes GEN/manifest.json for `python -m
jcompose.evaluate --config=configs/eval/anydoor.py`. Pair k uses seed + k (crop ratio and initial noise),
so it equals a single compose with that seed (`jcompose/methods/anydoor_generation.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jcompose import cli, generation
from jcompose.cli import InputError
from jcompose.inference import Loaded, read_checkpoint, run_config, trained_tree, write_image


def release_config(info: dict, folder: Path, dtype: str):
    """The AnyDoor config (configs/anydoor.py, released settings) for a converted release folder."""
    from configs.anydoor import get_config

    config = get_config()
    model, data = info.get("method", {}).get("model", {}), info.get("method", {}).get("data", {})
    config.model.update(base=str(folder), dinov2=str(folder / info["components"]["dinov2"]), remat=False,
                        **{k: tuple(v) if isinstance(v, list) else v for k, v in model.items()})
    config.data.update(**data)
    config.compute_dtype = dtype or config.compute_dtype
    return config


def load_release(folder: str | Path, dtype: str = ""):
    """(method, params, frozen, step) of a folder written by `convert anydoor-ckpt`: the release's UNet (its
    trained decoder in params), extractor and projector (params), VAE and DINOv2 (frozen); step is the
    Lightning global_step the checkpoint recorded ("unrecorded" for a pruned file without one).

    dtype: compute dtype ("float32" / "bfloat16"; default the released config's, bfloat16)."""
    import jax.numpy as jnp

    from jcompose.methods.anydoor import AnyDoorMethod, split_unet
    from jcompose.models import ldm_convert, loading

    folder = Path(folder)
    with cli.input_errors("--weights: "):
        info = ldm_convert.read_release(folder)
        projector = ldm_convert.load_projector(folder / info["components"]["projector"])
        check_release_widths(folder, info, projector["kernel"].shape)
        method = AnyDoorMethod(release_config(info, folder, dtype))
        method.load_models(folder, method.config.model.dinov2)
        extractor = ldm_convert.load_extractor(folder / info["components"]["extractor"],
                                               loading.abstract_params(method.extractor))
    encoder, decoder = split_unet(method.pipe.unet.params)
    params = {"extractor": extractor, "unet_decoder": decoder,
              "projector": {k: jnp.asarray(v) for k, v in projector.items()}}
    frozen = {"unet_encoder": encoder, "vae": method.pipe.vae.params, "dinov2": method.dinov2_params}
    return method, params, frozen, info.get("global_step", "unrecorded")


def check_release_widths(folder: Path, info: dict, projector_shape: tuple[int, int]) -> None:
    """The projector (D_dino, D_context) must join the release's DINOv2 (hidden_size) and UNet
    (cross_attention_dim); a part swapped in from another model raises InputError naming both files."""
    from jcompose.models import ldm_convert
    from jcompose.models.files import read_config

    parts = info["components"]
    weights = folder / parts["projector"] / ldm_convert.PROJECTOR_WEIGHTS
    for part, field, width, side in (("dinov2", "hidden_size", projector_shape[0], "input"),
                                     ("unet", "cross_attention_dim", projector_shape[1], "output")):
        config = folder / parts[part] / "config.json"
        value = read_config(config.parent).get(field)
        if value != width:
            raise InputError(f"--weights {folder}: the parts do not fit together: {weights} projects {side} width "
                             f"{width} (weight {projector_shape[1]} x {projector_shape[0]}), but {config} has {field} "
                             f"{value}; convert the released checkpoint again into a new folder")


def load_anydoor(args) -> Loaded:
    """The model of --checkpoint (a training run) or --weights (a converted release): params {"extractor",
    "unet_decoder", "projector"}, frozen {"unet_encoder", "vae", "dinov2"}."""
    from jcompose.methods import anydoor_inference as inference

    if bool(args.checkpoint) == bool(args.weights):
        raise InputError("give one of --checkpoint RUN (a jcompose training run) or --weights FOLDER (the released "
                         "model converted with `python -m jcompose.convert anydoor-ckpt`)")
    if args.weights:
        if args.base or args.dinov2 or args.ema:
            raise InputError("--base / --dinov2 / --ema belong to --checkpoint runs; a --weights folder holds its "
                             "own UNet, VAE and DINOv2")
        return Loaded(*load_release(args.weights, args.dtype))
    workdir, config = run_config(args.checkpoint, "anydoor", base=args.base, dinov2=args.dinov2)
    if args.dtype:
        config.compute_dtype = args.dtype
    step, state = read_checkpoint(args.checkpoint)
    tree = trained_tree(state, ema=args.ema, step=step, checkpoint=args.checkpoint, needs="extractor",
                        method="AnyDoor")
    method, params, frozen = inference.load_trained(config, workdir, tree)
    return Loaded(method, params, frozen, step)


class Request(NamedTuple):
    """One compose's checked flags and read inputs (no model needed): the background uint8 (H, W, 3) RGB and
    the objects (anydoor_inference.read_objects)."""

    args: Any
    background: np.ndarray
    objects: list


def read_request(args) -> Request:
    """--steps checked, the references, masks and background read, before any model loads."""
    from jcompose.methods import anydoor_inference as inference

    if args.steps is not None:
        cli.require_positive(("--steps", args.steps))
    objects = inference.read_objects(args.reference or [], args.reference_mask or [], args.mask or [])
    if not args.background:
        raise InputError("--background: give the image to put the objects into")
    return Request(args, inference.read_rgb(args.background, "--background"), objects)


def run_anydoor(loaded: Loaded, request: Request) -> dict:
    """Puts the objects into the background with the loaded model, writes --out (and --show's sheet); returns
    {"image", "step"[, "attention": the sheet]}. The compiled sampler is anydoor_inference.sampler's (kept
    per method and steps)."""
    from jcompose.methods import anydoor_inference as inference

    args = request.args
    result = inference.compose(loaded.method, loaded.params, loaded.frozen, request.background, request.objects,
                               seed=args.seed, num_steps=args.steps, guidance_scale=args.guidance,
                               shape_control=args.shape_control, paste_mode=args.paste,
                               background_name=args.background)
    out = Path(args.out)
    write_image(out, result.image)
    written = {"image": str(out), "step": loaded.step}
    if args.show:
        show = out.with_name(out.stem + "_show.png")
        write_image(show, inference.side_by_side(request.background, request.objects, result))
        written["attention"] = str(show)  # printed by compose as "and <path>"
    return written


def compose_anydoor(args) -> dict:
    """`compose anydoor`: read_request, load_anydoor, run_anydoor (or --benchmark's generation)."""
    if args.benchmark:
        if args.reference or args.background or args.mask:
            raise InputError("--benchmark generates its own pairs; leave out --reference / --background / --mask")
        from jcompose.methods.anydoor_generation import compose_benchmark

        return compose_benchmark(args)
    request = read_request(args)
    return run_anydoor(load_anydoor(args), request)


def add_parser(sub) -> None:
    """Registers `anydoor` on the compose command line's subparsers."""
    p = sub.add_parser("anydoor", help="put reference objects into a background (AnyDoor)")
    p.set_defaults(run=compose_anydoor)
    p.add_argument("--checkpoint", default="", help="training workdir or <workdir>/checkpoints/<step>")
    p.add_argument("--weights", default="", help="the released model, converted: `python -m jcompose.convert "
                   "anydoor-ckpt epoch=1-step=8687.ckpt FOLDER` (instead of --checkpoint)")
    p.add_argument("--reference", action="append", help="object photo (RGB with --reference-mask, or RGBA); repeat")
    p.add_argument("--reference-mask", action="append", help="the object's mask in its photo (white = object)")
    p.add_argument("--background", help="the image to put the objects into")
    p.add_argument("--mask", action="append", help="where the object goes in the background (white); repeat")
    p.add_argument("--benchmark", default="", help="a folder built by `python -m input_pipeline.anydoor_benchmark`: "
                   "generate every pair into the --out folder")
    p.add_argument("--shape-control", action="store_true", help="follow the target mask's shape, not its box")
    p.add_argument("--paste", choices=("crop", "box"), default="crop", help="paste back the whole crop (released "
                   "run_inference.py) or only the target box (the demo)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the run's, 50)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the run's, 5.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="",
                   help="compute dtype (default: the run's; bfloat16 for --weights)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA params (trained with EMA)")
    p.add_argument("--base", default="", help="SD 2.1-base folder (default: the run's)")
    p.add_argument("--dinov2", default="", help="DINOv2 folder (default: the run's)")
    p.add_argument("--show", action="store_true", help="also write <out>_show.png (inputs, collage, result)")
    p.add_argument("--out", required=True, help="output image (.png), or folder with --benchmark (may be gs://)")
    generation.add_arguments(p, batch_flags=("--batch_size", "--batch"))
