"""AnyDoor's benchmark as a generation job: `python -m jcompose.compose anydoor --benchmark BENCH --out GEN`.

BENCH is built by `python -m input_pipeline.anydoor_benchmark`; every concept x background pair k is
generated into GEN/<concept>/<background>.png with seed + k (its crop ratio, drawn on the host, and its
initial noise PRNGKey(seed + k)), so it equals a single `compose anydoor --seed <seed + k>` of that pair,
on every device and host (`jcompose.generation`). GEN/manifest.json gives per image its concept, reference,
background, box and seed for `python -m jcompose.evaluate --config=configs/eval/anydoor.py`.
"""

from __future__ import annotations

from pathlib import Path

import jax

from jcompose import generation, generation_files

MODEL_INPUTS = ("reference", "collage")  # what `sample` reads of an item (names of the training example's)


def make_sample(method, *, steps: int, guidance: float):
    """The job's `sample`: ((params, frozen), inputs (B, ...), keys (B, 2)) -> images (B, H, W, 3) in [-1, 1],
    each item as a single compose with its key (its initial noise drawn from the key)."""
    size = method.config.data.image_size

    def sample(trees, batch, keys):
        params, frozen = trees

        def one(example, key):  # the noise of a single compose with this pair's seed
            noise = jax.random.normal(key, (1, method.unet.in_channels, size // 8, size // 8))
            single = jax.tree_util.tree_map(lambda x: x[None], example)
            return method.sample(params, frozen, single, key, num_steps=steps, guidance_scale=guidance,
                                 noise=noise)[0]

        return jax.vmap(one)(batch, keys)

    return sample


def plan_sampler(method):
    """(`make_sample` at the config's steps and guidance, MODEL_INPUTS): the program `jcompose.plan` compiles."""
    return make_sample(method, steps=int(method.config.sample.steps),
                       guidance=float(method.config.sample.guidance_scale)), MODEL_INPUTS


def benchmark_job(method, params, frozen, pairs: list[dict], *, seed: int, steps: int, guidance: float,
                  shape_control: bool, paste: str, settings: dict) -> generation.Job:
    """The job of `pairs` (`anydoor_benchmark.read_benchmark`) for a loaded AnyDoor method."""
    from jcompose.methods import anydoor_inference as inference

    sc = method.config.sample
    transform = inference.inference_transform(method, shape_control)

    def read(k: int):
        pair = pairs[k]
        obj = inference.read_object(str(pair["reference"]), None, str(pair["mask"]))
        background = inference.read_rgb(pair["background"], "background")
        inference.check_object(obj, background.shape, str(pair["background"]))
        example = inference.prepare_example(transform, obj, background, seed + k)
        return {name: example[name] for name in MODEL_INPUTS}, (background, example)

    def write(generated, context):
        background, example = context
        return inference.paste(generated, background, example, paste, int(sc.margin),
                               drop_first_row=bool(sc.drop_first_row))

    def entry(k: int) -> dict:
        pair = pairs[k]
        return {"object": pair["concept"], "reference": str(pair["reference"]), "background": str(pair["background"]),
                "box": pair["box"], "seed": seed + k}

    c = method.config  # which configs/anydoor.py variant (released / paper) and its settings made the images
    variant = {"variant": c.get("variant", "unrecorded"), "box_mask_prob": c.data.box_mask_prob,
               **{k: sc.get(k) for k in ("crop_expand_tenths", "ref_expand_tenths", "collage_mask", "drop_first_row",
                                          "margin")}}
    return generation.Job(
        items=[f"{p['concept']}/{Path(p['background']).stem.removesuffix('_GT')}.png" for p in pairs],
        read=read, sample=make_sample(method, steps=steps, guidance=guidance),
        key=lambda k: jax.random.PRNGKey(seed + k), write=write,
        size=lambda k: generation_files.image_size(pairs[k]["background"]), entry=entry,
        settings={"method": "anydoor", **variant, "steps": steps, "guidance": guidance,
                  "shape_control": bool(shape_control), "paste": paste, "seed": seed, **settings},
        params=lambda _: (params, frozen))


def compose_benchmark(args) -> dict:
    """`compose anydoor --benchmark BENCH --out GEN` (module doc)."""
    from input_pipeline import anydoor_benchmark
    from jcompose.inference import resolve_checkpoint
    from jcompose.methods.anydoor_cli import load_anydoor

    header, pairs = anydoor_benchmark.read_benchmark(args.benchmark)  # RecordErrors name the file
    loaded = load_anydoor(args)
    method, params, frozen, step = loaded.method, loaded.params, loaded.frozen, loaded.step
    sc = method.config.sample
    settings = {"benchmark": header.get("name"), "bench": str(args.benchmark), "step": step,
                "weights": str(args.weights or args.checkpoint), "ema": bool(args.ema),
                "run": str(resolve_checkpoint(args.checkpoint)[0]) if args.checkpoint else ""}
    job = benchmark_job(method, params, frozen, pairs, seed=args.seed, steps=int(args.steps or sc.steps),
                        guidance=float(sc.guidance_scale if args.guidance is None else args.guidance),
                        shape_control=args.shape_control, paste=args.paste, settings=settings)
    written = generation.generate(job, args.out, per_device_batch=generation.per_device_batch(args), workers=args.workers,
                                  desc="anydoor")
    return {**written, "step": step}
