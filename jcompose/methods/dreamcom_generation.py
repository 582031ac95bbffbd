"""DreamCom's benchmarks as a generation job: `python -m jcompose.compose dreamcom --benchmark murecom ROOT --out GEN`.

Every (object of the run, background of its MureCom category / DreamEditBench set) pair gets `--num` images,
GEN/<object>/<background>/<j>.png; image i (its position over all pairs and j) uses key fold_in(seed, i),
as a single `compose dreamcom` does for its j-th image. Each object's images are batched together (its own
fine-tuned UNet), on every device and host (`jcompose.generation`). GEN/manifest.json gives per image its
object, the object's reference photos and masks, the background and the box, for `python -m
jcompose.evaluate --config=configs/eval/dreamcom.py`, and the settings (`do_crop` among them: the
'released' background protocol needs it).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax

from jcompose import generation, generation_files
from jcompose.cli import InputError

BENCHMARKS = ("murecom", "dreameditbench")
MODEL_INPUTS = ("image", "mask", "masked_image", "input_ids")


STEPS, GUIDANCE, CROSS_ATTENTION = 50, 7.5, "masked"  # `compose dreamcom`'s defaults


def make_sample(method, *, steps: int, guidance: float, self_attention: str | None, cross_attention: str):
    """The job's `sample`: ((one object's params, frozen), inputs (B, ...), keys (B, 2)) -> images (B, H, W, 3)
    in [-1, 1], each item sampled as a single compose with its key."""
    def sample(trees, batch, keys):
        params, frozen = trees

        def one(example, key):
            single = jax.tree_util.tree_map(lambda x: x[None], example)
            return method.sample(params, frozen, single, key, num_steps=steps, guidance_scale=guidance,
                                 self_attention=self_attention, cross_attention=cross_attention == "masked")[0]

        return jax.vmap(one)(batch, keys)

    return sample


def plan_sampler(method):
    """(`make_sample` at `compose dreamcom`'s defaults, MODEL_INPUTS): the program `jcompose.plan` compiles."""
    return make_sample(method, steps=STEPS, guidance=GUIDANCE, self_attention=None,
                       cross_attention=CROSS_ATTENTION), MODEL_INPUTS


def benchmark_pairs(kind: str, root: str, method, objects: list[str] | None = None) -> list[tuple]:
    """(object index, backgrounds source, background index, reference source) for every (object of the run, or
    of `objects`, background) pair: MureCom pairs an object with its category's backgrounds, DreamEditBench
    with its set's."""
    from input_pipeline import dreamcom_objects

    if kind not in BENCHMARKS:
        raise InputError(f"--benchmark {kind!r}: expected one of {BENCHMARKS}")
    pairs = []
    for index, ref in enumerate(method.objects):
        if objects and ref.name not in objects:
            continue
        ref, references = dreamcom_objects.resolve(ref, method.config.data, method.workdir)
        if kind == "murecom":
            from input_pipeline.sources.murecom import MureComBackgrounds

            if ref.kind != "murecom":
                raise InputError(f"--benchmark murecom: object {ref.name} is not a MureCom object ({ref.kind}:)")
            backgrounds = MureComBackgrounds(root, [ref.location.split("/")[0]])
        else:
            from input_pipeline.sources import dreameditbench

            subject = dreameditbench.objects(root, method.config.data.dreambooth_root)
            sets = {o.name: o.background_set for o in subject}
            if ref.location not in sets:
                raise InputError(f"--benchmark dreameditbench: no background set for object {ref.name}")
            backgrounds = dreameditbench.DreamEditBenchBackgrounds(root, sets=[sets[ref.location]])
        pairs += [(index, backgrounds, b, references) for b in range(len(backgrounds))]
    return pairs


def reference_files(references) -> list[dict]:
    """[{"photo", "mask"}] of a reference source's files (mask None: the photo is the object, whole)."""
    return [{"photo": item[0], "mask": item[1]} if isinstance(item, tuple) else {"photo": item, "mask": None}
            for item in references.items]


def benchmark_job(method, params_of, frozen, pairs: list[tuple], *, seed: int, steps: int, guidance: float,
                  num: int, do_crop: bool, self_attention: str | None, cross_attention: str,
                  settings: dict) -> generation.Job:
    """The job of `pairs` (`benchmark_pairs`) for a loaded DreamCom method: `params_of(name)` is an object's
    trained tree, `frozen` the VAE (and text encoder when it was not trained)."""
    from input_pipeline import dreamcom as dreamcom_data
    from jcompose.methods.dreamcom_inference import inference_inputs

    items, groups, pair_of = [], [], []
    for p, (index, backgrounds, b, _) in enumerate(pairs):
        name, stem = method.model_names[index], Path(backgrounds.items[b][0]).stem
        items += [f"{name}/{stem}/{j}.png" for j in range(num)]
        groups += [name] * num
        pair_of += [p] * num

    @functools.lru_cache(maxsize=32)
    def record(p: int) -> dict:
        _, backgrounds, b, _ = pairs[p]
        return backgrounds[b]

    @functools.lru_cache(maxsize=32)
    def inputs(p: int) -> dict:  # the pair's `num` images share their inputs: read and resized once
        return inference_inputs(method, pairs[p][0], record(p), do_crop)

    def read(i: int):
        p = pair_of[i]
        return {k: inputs(p)[k] for k in MODEL_INPUTS}, (record(p)["image"], inputs(p)["region"])

    def entry(i: int) -> dict:
        index, _, _, references = pairs[pair_of[i]]
        found = record(pair_of[i])
        return {"object": method.model_names[index], "background": found["source"],
                "box": [int(v) for v in found["box"]], "references": reference_files(references)}

    def size(i: int) -> tuple[int, int]:
        _, backgrounds, b, _ = pairs[pair_of[i]]
        return generation_files.image_size(backgrounds.items[b][0])

    c = method.config
    return generation.Job(
        items=items, read=read,
        sample=make_sample(method, steps=steps, guidance=guidance, self_attention=self_attention,
                           cross_attention=cross_attention),
        key=lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i),
        write=lambda image, context: dreamcom_data.paste_region(image, *context), size=size, entry=entry,
        settings={"method": "dreamcom", "variant": c.get("variant", "unrecorded"),
                  "self_attention": self_attention or c.sample.self_attention,
                  "crop_fallback": c.data.get("crop_fallback", "relax"), "cross_attention": cross_attention,
                  "do_crop": bool(do_crop), "seed": seed, "steps": steps, "guidance": guidance, "num": num,
                  **settings},
        params=lambda name: (params_of(name), frozen), groups=groups)


def compose_benchmark(args) -> dict:
    """`compose dreamcom --benchmark murecom|dreameditbench ROOT --out GEN` (module doc)."""
    from jcompose.inference import resolve_checkpoint
    from jcompose.methods.dreamcom_inference import load_dreamcom, object_params

    kind, root = args.benchmark
    loaded = load_dreamcom(args)
    method, frozen, step = loaded.method, loaded.frozen, loaded.step
    params_of = functools.partial(object_params, loaded)
    pairs = benchmark_pairs(kind, root, method, [args.object] if args.object else None)
    settings = {"benchmark": kind, "root": str(root), "step": step, "run": str(resolve_checkpoint(args.checkpoint)[0]),
                "ema": bool(args.ema), "dtype": args.dtype}
    job = benchmark_job(method, params_of, frozen, pairs, seed=args.seed, steps=args.steps, guidance=args.guidance,
                        num=args.num, do_crop=args.do_crop, self_attention=args.self_attention,
                        cross_attention=args.cross_attention, settings=settings)
    written = generation.generate(job, args.out, per_device_batch=generation.per_device_batch(args), workers=args.workers,
                                  desc="dreamcom")
    return {**written, "step": step}
