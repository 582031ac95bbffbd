"""DreamCom inference: `python -m jcompose.compose dreamcom ...` (a fine-tuned object inpainted into a box).

    python -m jcompose.compose dreamcom --checkpoint RUN [--object Dog_fg1] --background bg.jpg \
        --box x1,y1,x2,y2 [--no-crop] [--num 5] [--steps 50] [--guidance 7.5] --out DIR
    python -m jcompose.compose dreamcom --checkpoint RUN --benchmark murecom /data/MureCom --out GEN

The released test.py: with `--do-crop` (default) a box smaller than a quarter of the image is grown by
half its size on each side and only that region is inpainted (resized to the model's size), then
pasted back; the masked cross-attention keeps the prompt inside the box at every layer, the masked
self-attention (the run's rule: released = last 5 decoder layers) keeps box and background apart.
`--num` images per input come from one batched call with keys fold_in(seed, i).

`--benchmark murecom|dreameditbench ROOT` generates `--num` images for every (object of the run,
background of its category / set) pair into `GEN/<object>/<background>/<i>.png` on every device (and host,
`--multihost`), resumably, and writes `GEN/manifest.json` for `python -m jcompose.evaluate
--config=configs/eval/dreamcom.py`: per image its object, the object's reference photos and masks, the
background and the box (`jcompose/methods/dreamcom_generation.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jcompose import generation
from jcompose.cli import InputError, require_positive
from jcompose.inference import Loaded, read_checkpoint, read_image_file, run_config, to_uint8, trained_tree, write_image


def parse_box(text: str, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """'x1,y1,x2,y2' (pixels, inclusive, as MureCom's bbox.txt) -> half-open (x0, y0, x1, y1) inside `shape`."""
    try:
        x1, y1, x2, y2 = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--box {text!r}: expected four integers x1,y1,x2,y2 (pixel corners, inclusive)") from None
    h, w = shape
    if not (0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h):
        raise InputError(f"--box {text}: outside the {w}x{h} background or of zero area (need 0 <= x1 <= x2 < {w}, "
                         f"0 <= y1 <= y2 < {h})")
    return x1, y1, x2 + 1, y2 + 1


def box_of_mask(path: str, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The tight box (x0, y0, x1, y1) of a mask file (white = where the object goes)."""
    from jcompose import imaging

    mask = read_image_file(Path(path), "--mask")
    mask = (mask if mask.ndim == 2 else mask[..., :3].max(-1)) > 127
    if mask.shape != tuple(shape):
        raise InputError(f"--mask {path} is {mask.shape[1]}x{mask.shape[0]}, the background {shape[1]}x{shape[0]}")
    box = imaging.bbox_from_mask(mask)
    if box is None:
        raise InputError(f"--mask {path}: empty (no pixel > 127)")
    y0, y1, x0, x1 = box
    return x0, y0, x1, y1


def load_dreamcom(args) -> Loaded:
    """The run of --checkpoint (--base, --dtype, --ema): params = the trained tree (with several objects a
    leading model axis: `object_params` picks one), frozen = what sampling adds to it. A named --object is
    checked against the run's objects (`chosen_object`)."""
    from jcompose.methods.dreamcom import DreamComMethod

    workdir, config = run_config(args.checkpoint, "dreamcom", base=args.base)
    config.compute_dtype = args.dtype
    method = DreamComMethod(config)
    method.workdir = workdir
    method.load_models(method.base_folder(workdir))
    step, state = read_checkpoint(args.checkpoint)
    tree = trained_tree(state, ema=args.ema, step=step, checkpoint=args.checkpoint,
                        needs="unet_lora" if method.lora else "unet", method="DreamCom")
    if args.object or not args.benchmark:
        chosen_object(method, args)
    frozen = method.frozen_of(tree)  # with LoRA the base UNet too: sample forms base + adapters
    return Loaded(method, tree, frozen, step)


def chosen_object(method, args) -> str:
    """--object, or the run's only object; InputError when it is not one of the run's or one must be named."""
    names = method.model_names
    if args.object and args.object not in names:
        raise InputError(f"--object {args.object}: the run trained {', '.join(names)}")
    if not args.object and len(names) > 1:
        raise InputError(f"--object: the run trained {len(names)} objects ({', '.join(names)}); name one")
    return args.object or names[0]


def object_params(loaded: Loaded, name: str):
    """The trained tree of object `name` (the run's tree itself when it trained one object)."""
    import jax

    names = loaded.method.model_names
    if len(names) == 1:
        return loaded.params
    k = names.index(name)
    return jax.tree_util.tree_map(lambda x: x[k], loaded.params)


def _generator(method, steps: int, guidance: float, self_attention: str | None, cross_attention: str):
    """jit (params, frozen, batch, key) -> (B, S, S, 3) images: the batch's B inputs, each its own noise."""
    import jax

    def generate(params, frozen, batch, keys):
        def one(example, key):
            b = jax.tree_util.tree_map(lambda x: x[None], example)
            return method.sample(params, frozen, b, key, num_steps=steps, guidance_scale=guidance,
                                 self_attention=self_attention, cross_attention=cross_attention == "masked")[0]

        return jax.vmap(one)(batch, keys)

    return jax.jit(generate)


def inference_inputs(method, index: int, record: dict, do_crop: bool) -> dict:
    """Object `index`'s model inputs on a background record (image, mask, masked_image, input_ids, region)."""
    from input_pipeline import dreamcom as dreamcom_data

    inputs = dreamcom_data.inference_inputs(record, size=method.config.data.image_size, do_crop=do_crop)
    inputs["input_ids"] = method.tokenize([method.prompt(index)])[0]
    return inputs


def _run_batched(run, params, frozen, examples: list[dict], seed: int, first: int) -> np.ndarray:
    """Stacks the examples (model inputs only), image j gets key fold_in(seed, first + j): uint8 (B, S, S, 3)."""
    import jax
    import jax.numpy as jnp

    keys = ("image", "mask", "masked_image", "input_ids")
    batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in keys}
    rngs = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(seed), first + j) for j in range(len(examples))])
    return to_uint8(np.asarray(run(params, frozen, batch, rngs)))


def check_flags(args) -> None:
    """The flag values, checked before anything loads (InputError naming the flag)."""
    from jcompose.methods.dreamcom import SELF_ATTENTION_RULES

    require_positive(("--num", args.num), ("--steps", args.steps))
    if args.self_attention is not None and args.self_attention not in SELF_ATTENTION_RULES:
        raise InputError(f"--self-attention {args.self_attention!r}: expected one of {', '.join(SELF_ATTENTION_RULES)} "
                         "(default: the run's)")


class Request(NamedTuple):
    """One compose's checked flags and read inputs (no model needed): the background uint8 (H, W, 3) RGB and
    the box (x0, y0, x1, y1), half-open, inside it."""

    args: Any
    background: np.ndarray
    box: tuple[int, int, int, int]


def read_request(args) -> Request:
    """The flags checked, the background read and the box parsed (--box or --mask's), before any model loads."""
    check_flags(args)
    if not args.background or bool(args.box) == bool(args.mask):
        raise InputError("give --background and one of --box x1,y1,x2,y2 or --mask (or --benchmark NAME ROOT)")
    background = read_image_file(Path(args.background), "--background")[..., :3][..., ::-1].copy()
    shape = background.shape[:2]
    box = parse_box(args.box, shape) if args.box else box_of_mask(args.mask, shape)
    return Request(args, background, box)


def run_dreamcom(loaded: Loaded, request: Request) -> dict:
    """--num images of the chosen object in the box (one batched call, keys fold_in(seed, i)), written as
    <out>/<i>.png; returns {"image": out, "images", "step", "count"}. The compiled sampler is kept in `loaded`
    per settings."""
    from input_pipeline import dreamcom as dreamcom_data

    args, method = request.args, loaded.method
    name = chosen_object(method, args)
    settings = (args.steps, args.guidance, args.self_attention, args.cross_attention)
    run = loaded.program(("generate", *settings), lambda: _generator(method, *settings))
    record = {"image": request.background, "box": request.box, "source": args.background}
    inputs = inference_inputs(method, method.model_names.index(name), record, args.do_crop)
    images = _run_batched(run, object_params(loaded, name), loaded.frozen, [inputs] * args.num, args.seed, 0)
    out, written = Path(args.out), []
    for i, image in enumerate(images):
        written.append(out / f"{i}.png")
        write_image(written[-1], dreamcom_data.paste_region(image, request.background, inputs["region"]))
    return {"image": str(out), "images": [str(p) for p in written], "step": loaded.step, "count": len(images)}


def compose_dreamcom(args) -> dict:
    """`compose dreamcom`: read_request, load_dreamcom, run_dreamcom (or --benchmark's generation)."""
    if args.benchmark:
        check_flags(args)
        from jcompose.methods.dreamcom_generation import compose_benchmark

        return compose_benchmark(args)
    request = read_request(args)
    return run_dreamcom(load_dreamcom(args), request)


def add_parser(sub) -> None:
    """Registers `dreamcom` on the compose command line's subparsers."""
    from jcompose.methods import dreamcom_generation as defaults  # the benchmark job's defaults are the command's

    p = sub.add_parser("dreamcom", help="inpaint a fine-tuned object into a box of a background (DreamCom)")
    p.set_defaults(run=compose_dreamcom)
    p.add_argument("--checkpoint", required=True, help="training workdir or <workdir>/checkpoints/<step>")
    p.add_argument("--object", default="", help="which of the run's objects (default: its only one)")
    p.add_argument("--background", help="the image to insert the object into")
    p.add_argument("--box", default="", help="x1,y1,x2,y2: pixel corners of the box, inclusive")
    p.add_argument("--mask", default="", help="or a mask image whose white region's box is used")
    p.add_argument("--do-crop", dest="do_crop", action="store_true", default=True,
                   help="inpaint a crop around a small box (released --do_crop; default)")
    p.add_argument("--no-crop", dest="do_crop", action="store_false", help="inpaint the whole image resized")
    p.add_argument("--num", type=int, default=5, help="images per input (the paper's 5)")
    p.add_argument("--steps", type=int, default=defaults.STEPS)
    p.add_argument("--guidance", type=float, default=defaults.GUIDANCE)
    p.add_argument("--cross-attention", dest="cross_attention", choices=("masked", "vanilla"),
                   default=defaults.CROSS_ATTENTION,
                   help="masked (default, as trained) or vanilla cross-attention at sampling (paper Table 4)")
    p.add_argument("--self-attention", dest="self_attention", default=None,
                   help="masked self-attention rule: released, paper or none (default: the run's)")
    p.add_argument("--seed", type=int, default=666, help="the released test.py's seed")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA params (trained with EMA)")
    p.add_argument("--base", default="", help="SD 1.5 inpainting folder (default: the run's)")
    p.add_argument("--benchmark", nargs=2, metavar=("NAME", "ROOT"), default=None,
                   help="murecom|dreameditbench ROOT: every pair of the run's objects into the --out folder")
    p.add_argument("--out", required=True, help="output folder (with --benchmark, may be gs://)")
    generation.add_arguments(p)
