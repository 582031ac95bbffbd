"""AnyScene inference: `python -m jcompose.compose anyscene ...` (a scene around composited foregrounds).

    python -m jcompose.compose anyscene --base /models/stable-diffusion-v1-5 --checkpoint RUN_DIR \
        --foreground dog.png --mask dog_mask.png --prompt "a dog on a beach" --words dog --out result.png

Each `--foreground` is an RGB image with a `--mask` of the same size (white = object), or an RGBA
composite whose alpha is the mask; several are stacked on one canvas in order (later ones on top).
Width and height must be multiples of 8. `--words` picks prompt words for layout control (their
cross-attention kept inside the mask); `--blend` puts the original foreground back (Poisson by
default); `--show-attention` also writes `<out>_attention.png`: the result, then each word's
cross-attention map (layout-controlled, averaged over heads, layers and three timesteps) over it.
`--benchmark DIR` generates every pair of a benchmark folder (`python -m input_pipeline.anyscene_benchmark`)
on every device (and host, `--multihost`), resumably: `jcompose/methods/anyscene_generation.py`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jcompose import generation
from jcompose.cli import InputError, require_positive
from jcompose.inference import Loaded, read_checkpoint, read_image_file, run_config, to_uint8, trained_tree, write_image

BLENDS = ("poisson", "paste", "none")


def read_foregrounds(foregrounds: list[str], masks: list[str], canvas_value: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Foreground files (+ masks) -> (composite float32 (H, W, 3) in [-1, 1], mask float32 (H, W, 1) {0, 1}).

    Each foreground is RGB with the mask at the same index of `masks` (white > 127 = object), or
    RGBA (alpha > 127 = object) when no mask is given for it. Raises InputError naming the file for
    a missing mask, a size mismatch (both sizes), an empty mask or sizes not multiples of 8.
    """
    import cv2

    if not foregrounds:
        raise InputError("--foreground: give at least one foreground image")
    if len(masks) > len(foregrounds):
        raise InputError(f"--mask: {len(masks)} masks for {len(foregrounds)} foregrounds")
    canvas = union = None
    for i, name in enumerate(foregrounds):
        image = read_image_file(Path(name), "--foreground")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if i < len(masks):
            mask_image = read_image_file(Path(masks[i]), "--mask")
            mask = (mask_image if mask_image.ndim == 2 else mask_image[..., :3].max(axis=-1)) > 127
            mask_name = masks[i]
        elif image.shape[2] == 4:
            mask, mask_name = image[..., 3] > 127, f"{name} (alpha)"
        else:
            raise InputError(f"--foreground {name}: RGB without alpha and no --mask for it; give --mask (white = "
                             "object) or an RGBA composite")
        rgb = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
        if mask.shape != rgb.shape[:2]:
            raise InputError(f"--mask {mask_name} is {mask.shape[1]}x{mask.shape[0]} (WxH) but --foreground {name} "
                             f"is {rgb.shape[1]}x{rgb.shape[0]}; they must be the same size")
        if not mask.any():
            raise InputError(f"--mask {mask_name}: empty foreground (no pixel > 127) for --foreground {name}")
        if canvas is None:
            h, w = rgb.shape[:2]
            if h % 8 or w % 8:
                raise InputError(f"--foreground {name} is {w}x{h} (WxH); width and height must be multiples of 8 "
                                 "(the VAE factor): resize or pad it")
            canvas = np.full((h, w, 3), canvas_value, np.uint8)
            union = np.zeros((h, w), bool)
        elif rgb.shape[:2] != canvas.shape[:2]:
            raise InputError(f"--foreground {name} is {rgb.shape[1]}x{rgb.shape[0]} but {foregrounds[0]} is "
                             f"{canvas.shape[1]}x{canvas.shape[0]}; all foregrounds share one canvas")
        canvas = np.where(mask[..., None], rgb, canvas)
        union |= mask
    composite = canvas.astype(np.float32) / 127.5 - 1.0
    return composite, union[..., None].astype(np.float32)


def attention_grid(result: np.ndarray, maps: np.ndarray, words: list[str]) -> np.ndarray:
    """uint8 (H, W, 3) result + float (h, w, K) per-word maps -> uint8 (H, (K+1) W, 3): the result, then
    each map (normalised to its max, JET colours) blended over it."""
    import cv2

    h, w = result.shape[:2]
    tiles = [result]
    for k in range(len(words)):
        m = maps[..., k]
        m = m / max(float(m.max()), 1e-12)
        heat = cv2.resize((m * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        colour = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        tiles.append((0.5 * result + 0.5 * colour).astype(np.uint8))
    return np.concatenate(tiles, axis=1)


# ------------------------------------------------------------------------------- compose


def load_anyscene(args) -> Loaded:
    """The run of --checkpoint (its stored config), with --base, --dtype, --ema: params {"controlnet"},
    frozen {"unet", "vae", "text_encoder"}."""
    from configs.anyscene import get_config
    from jcompose.methods.anyscene import AnySceneMethod

    workdir, config = run_config(args.checkpoint, "anyscene", base=args.base, fallback=lambda: get_config(""))
    step, state = read_checkpoint(args.checkpoint)
    tree = trained_tree(state, ema=args.ema, step=step, checkpoint=args.checkpoint, needs="controlnet",
                        method="AnyScene")
    config.compute_dtype = args.dtype
    method = AnySceneMethod(config)
    method.load_models(method._base_folder(str(workdir)), controlnet_params=tree["controlnet"])
    params = {"controlnet": method.controlnet_params}
    frozen = {"unet": method.pipe.unet.params, "vae": method.pipe.vae.params,
              "text_encoder": method.pipe.text_encoder.params}
    return Loaded(method, params, frozen, step)


@functools.cache
def _poisson_blend(erode: int):
    """The compiled Poisson paste-back for one erosion size (kept: a second call with the same shapes does not
    recompile, which the demo's repeated requests rely on)."""
    import jax

    from jcompose import blending

    return jax.jit(lambda s, t, m: blending.poisson_blend(s, t, m, erode_kernel=erode, clip=(-1.0, 1.0)))


def blend_images(kind: str, foreground, generated, mask, erode: int):
    """The original foreground put back into generated (B, H, W, 3) images: `kind` poisson, paste or none."""
    from jcompose import blending

    if kind == "poisson":
        return _poisson_blend(erode)(foreground, generated, mask)
    if kind == "paste":
        return blending.copy_paste(foreground, generated, mask)
    return generated


def generator(method, tokens: tuple[int, ...], layout: bool, steps: int, guidance: float):
    """jit (params, frozen, batch, rng) -> generated (B, H, W, 3) in [-1, 1]: layout control on the prompt
    positions `tokens` (when `layout`), `steps` DDIM steps, CFG `guidance` (a constant of the program)."""
    import jax

    def generate(params, frozen, batch, rng):
        controls = method.layout_controls(batch, list(tokens)) if layout else ()
        return method.sample(params, frozen, batch, rng, controls=controls, num_steps=steps, guidance_scale=guidance)

    return jax.jit(generate)


class Request(NamedTuple):
    """One compose's checked flags and read inputs (no model needed): composite float32 (H, W, 3) in [-1, 1],
    mask float32 (H, W, 1) {0, 1} (`read_foregrounds`), the --words split at commas."""

    args: Any
    composite: np.ndarray
    mask: np.ndarray
    words: list[str]


def check_flags(args) -> None:
    """--blend and --steps, checked before anything is read or loaded (InputError naming the flag)."""
    if args.blend not in BLENDS:
        raise InputError(f"--blend {args.blend!r}: expected one of {BLENDS}")
    require_positive(("--steps", args.steps))


def read_request(args) -> Request:
    """The flags checked and the foregrounds read, before any model loads (InputError naming flag and file)."""
    check_flags(args)
    if not args.foreground or args.prompt is None:
        raise InputError("give --foreground (with --mask, or RGBA) and --prompt, or --benchmark DIR")
    composite, mask = read_foregrounds(args.foreground, args.mask or [])
    words = [w.strip() for w in (args.words or "").split(",") if w.strip()]
    if args.show_attention and not words:
        raise InputError("--show-attention needs --words (the prompt words whose maps to show)")
    return Request(args, composite, mask, words)


def run_anyscene(loaded: Loaded, request: Request) -> dict:
    """Generates one scene with the loaded run, writes --out (and --show-attention's grid); returns
    {"image", "step", "tokens"[, "attention"]}. Its compiled programs are kept in `loaded` per settings."""
    import jax
    import jax.numpy as jnp

    from jcompose.tokens import token_positions

    args, method, params, frozen = request.args, loaded.method, loaded.params, loaded.frozen
    context_length = method.pipe.tokenizer.model_max_length
    try:
        per_word = [token_positions(method.pipe.tokenizer, args.prompt, [w], context_length) for w in request.words]
    except ValueError as err:
        raise InputError(f"--words: {err}") from None
    tokens = sorted({k for positions in per_word for k in positions})
    batch = {"foreground": jnp.asarray(request.composite[None]), "mask": jnp.asarray(request.mask[None]),
             "input_ids": jnp.asarray(method.tokenize([args.prompt]))}

    rng = jax.random.PRNGKey(args.seed)
    settings = (tuple(tokens), args.layout, args.steps, args.guidance)
    generate = loaded.program(("generate", *settings), lambda: generator(method, *settings))
    generated = generate(params, frozen, batch, rng)
    result = blend_images(args.blend, batch["foreground"], generated, batch["mask"], method.config.sample.blend_erode)
    image = to_uint8(np.asarray(result[0]))
    out = Path(args.out)
    write_image(out, image)
    written = {"image": str(out), "step": loaded.step, "tokens": tokens}
    if args.show_attention:
        def maps_fn(params, frozen, batch, image, rng):
            controls = method.layout_controls(batch, tokens) if args.layout else ()
            return method.attention_maps(params, frozen, batch, image, rng, controls=controls, factor=1)

        attention = loaded.program(("attention", tuple(tokens), args.layout), lambda: jax.jit(maps_fn))
        maps = np.asarray(attention(params, frozen, batch, result, jax.random.fold_in(rng, 1))[0])
        per_word_maps = np.stack([maps[..., p].sum(-1) for p in per_word], axis=-1)
        grid_path = out.with_name(out.stem + "_attention.png")
        write_image(grid_path, attention_grid(image, per_word_maps, request.words))
        written["attention"] = str(grid_path)
    return written


def compose_anyscene(args) -> dict:
    """`compose anyscene`: read_request, load_anyscene, run_anyscene (or --benchmark's generation)."""
    if args.benchmark:
        check_flags(args)
        from jcompose.methods.anyscene_generation import compose_benchmark

        return compose_benchmark(args)
    request = read_request(args)
    return run_anyscene(load_anyscene(args), request)


def add_parser(sub) -> None:
    """Registers `anyscene` on the compose command line's subparsers."""
    from jcompose.methods import anyscene_generation as defaults  # the benchmark job's defaults are the command's

    p = sub.add_parser("anyscene", help="generate a scene around composited foregrounds (AnyScene)")
    p.set_defaults(run=compose_anyscene)
    p.add_argument("--base", default="", help="SD 1.5 base-model folder (diffusers layout; default: the run's)")
    p.add_argument("--checkpoint", required=True, help="training workdir or <workdir>/checkpoints/<step>")
    p.add_argument("--foreground", action="append", help="RGB(A) image; repeat for several")
    p.add_argument("--mask", action="append", help="mask of the foreground at the same position (white = object)")
    p.add_argument("--prompt", help="scene description")
    p.add_argument("--benchmark", default="", help="a benchmark folder (foregrounds/, masks/, prompts.json): "
                   "generate every pair into the --out folder instead")
    p.add_argument("--words", default="", help="comma-separated prompt words for layout control, e.g. 'dog,cat'")
    p.add_argument("--no-layout", dest="layout", action="store_false", help="no layout control even with --words")
    p.add_argument("--blend", default=defaults.BLEND, help=f"poisson, paste or none (default {defaults.BLEND})")
    p.add_argument("--steps", type=int, default=defaults.STEPS)
    p.add_argument("--guidance", type=float, default=defaults.GUIDANCE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA params (trained with EMA)")
    p.add_argument("--show-attention", action="store_true", help="also write <out>_attention.png")
    p.add_argument("--out", required=True, help="output image (.png), or a folder with --benchmark (may be gs://)")
    generation.add_arguments(p)
