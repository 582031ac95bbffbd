"""`python -m jcompose.compose anydoor ...`: put one or several objects into a background with AnyDoor.

    python -m jcompose.compose anydoor --checkpoint RUN --reference obj.png --reference-mask obj_mask.png \
        --background bg.jpg --mask target_mask.png [--shape-control] [--steps 50] [--guidance 5.0] \
        [--show] --out result.png

The run's stored config (`RUN/config.json`) says which base, DINOv2 and settings it was trained with
(`--base` / `--dinov2` override the folders). `--reference/--reference-mask/--mask` repeat for several
objects: objects whose regions do not meet are generated in one batched call, overlapping ones one
after another (`jcompose/methods/anydoor_inference.py`). `--show` also writes `<out>_show.png`: the
references as DINOv2 sees them, the background with the targets outlined, each collage, the result.
"""

from __future__ import annotations

from pathlib import Path

from jcompose.cli import InputError
from jcompose.inference import read_checkpoint, run_config, trained_tree, write_image


def compose_anydoor(args) -> dict:
    from jcompose.methods import anydoor_inference as inference

    objects = inference.read_objects(args.reference or [], args.reference_mask or [], args.mask or [])
    if not args.background:
        raise InputError("--background: give the image to put the objects into")
    background = inference.read_rgb(args.background, "--background")
    workdir, config = run_config(args.checkpoint, "anydoor", base=args.base, dinov2=args.dinov2)
    step, state = read_checkpoint(args.checkpoint)
    tree = trained_tree(state, ema=args.ema, step=step, checkpoint=args.checkpoint, needs="extractor",
                        method="AnyDoor")
    method, params, frozen = inference.load_trained(config, workdir, tree)
    result = inference.compose(method, params, frozen, background, objects, seed=args.seed, num_steps=args.steps,
                               guidance_scale=args.guidance, shape_control=args.shape_control,
                               paste_mode=args.paste, background_name=args.background)
    out = Path(args.out)
    write_image(out, result.image)
    written = {"image": str(out), "step": step}
    if args.show:
        show = out.with_name(out.stem + "_show.png")
        write_image(show, inference.side_by_side(background, objects, result))
        written["attention"] = str(show)  # printed by compose as "and <path>"
    return written


def add_parser(sub) -> None:
    """Registers `anydoor` on the compose command line's subparsers."""
    p = sub.add_parser("anydoor", help="put reference objects into a background (AnyDoor)")
    p.set_defaults(run=compose_anydoor)
    p.add_argument("--checkpoint", required=True, help="training workdir or <workdir>/checkpoints/<step>")
    p.add_argument("--reference", action="append", help="object photo (RGB with --reference-mask, or RGBA); repeat")
    p.add_argument("--reference-mask", action="append", help="the object's mask in its photo (white = object)")
    p.add_argument("--background", help="the image to put the objects into")
    p.add_argument("--mask", action="append", help="where the object goes in the background (white); repeat")
    p.add_argument("--shape-control", action="store_true", help="follow the target mask's shape, not its box")
    p.add_argument("--paste", choices=("crop", "box"), default="crop", help="paste back the whole crop (released "
                   "run_inference.py) or only the target box (the demo)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the run's, 50)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the run's, 5.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA params (trained with EMA)")
    p.add_argument("--base", default="", help="SD 2.1-base folder (default: the run's)")
    p.add_argument("--dinov2", default="", help="DINOv2 folder (default: the run's)")
    p.add_argument("--show", action="store_true", help="also write <out>_show.png (inputs, collage, result)")
    p.add_argument("--out", required=True, help="output image (.png)")
