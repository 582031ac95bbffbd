"""AnyScene's benchmark as a generation job: `python -m jcompose.compose anyscene --benchmark BENCH --out GEN`.

BENCH is a folder from `python -m input_pipeline.anyscene_benchmark` (foregrounds/, masks/, prompts.json);
pair <name> is generated into GEN/<name>.png (the names `evaluate --config=configs/eval/anyscene.py` pairs)
with key fold_in(PRNGKey(seed), i), i its position in the sorted names, on every device and host
(`jcompose.generation`). The untrained SD baselines (`compose sd`) read the same folders.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from jcompose import generation, generation_files
from jcompose.cli import InputError


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """An AnyScene benchmark folder: pair names (sorted) and their captions."""

    root: Path
    names: list[str]
    prompts: dict[str, str]

    @classmethod
    def read(cls, root: str | Path) -> Benchmark:
        """InputError naming --benchmark when prompts.json is missing, not JSON or empty."""
        root = Path(root)
        path = root / "prompts.json"
        if not path.is_file():
            raise InputError(f"--benchmark {root}: no prompts.json (build it with python -m input_pipeline."
                             "anyscene_benchmark)")
        try:
            prompts = json.loads(path.read_text())
        except ValueError as err:
            raise InputError(f"--benchmark {path}: not JSON ({err})") from None
        if not isinstance(prompts, dict) or not prompts:
            raise InputError(f"--benchmark {path}: expected a non-empty {{name: caption}} object")
        return cls(root, sorted(prompts), prompts)

    def files(self, i: int) -> tuple[Path, Path]:
        """(foreground, mask) files of pair i."""
        name = self.names[i]
        return self.root / "foregrounds" / f"{name}.png", self.root / "masks" / f"{name}.png"

    def read_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair i -> (composite float32 (H, W, 3) in [-1, 1], mask float32 (H, W, 1) {0, 1})."""
        from jcompose.methods.anyscene_inference import read_foregrounds

        foreground, mask = self.files(i)
        return read_foregrounds([str(foreground)], [str(mask)])

    def entry(self, i: int) -> dict:
        foreground, mask = self.files(i)
        return {"name": self.names[i], "prompt": self.prompts[self.names[i]], "foreground": str(foreground),
                "mask": str(mask)}

    def output_size(self, i: int) -> tuple[int, int]:
        return generation_files.image_size(self.files(i)[0])


MODEL_INPUTS = ("foreground", "mask", "input_ids")  # what `sample` reads of an item (training example names)
STEPS, GUIDANCE, BLEND = 25, 7.5, "poisson"  # `compose anyscene`'s defaults


def make_sample(method, *, steps: int, guidance: float, blend: str):
    """The job's `sample`: ((params, frozen), inputs (B, ...), keys (B, 2)) -> images (B, H, W, 3) in [-1, 1],
    each item sampled as a single compose with its key, then blended back as `blend` says."""
    from jcompose.methods.anyscene_inference import blend_images

    def sample(trees, batch, keys):
        params, frozen = trees

        def one(example, key):
            single = jax.tree_util.tree_map(lambda x: x[None], example)
            return method.sample(params, frozen, single, key, num_steps=steps, guidance_scale=guidance)[0]

        images = jax.vmap(one)(batch, keys)
        return blend_images(blend, batch["foreground"], images, batch["mask"], method.config.sample.blend_erode)

    return sample


def plan_sampler(method):
    """(`make_sample` at `compose anyscene`'s defaults, MODEL_INPUTS): the program `jcompose.plan` compiles."""
    return make_sample(method, steps=STEPS, guidance=GUIDANCE, blend=BLEND), MODEL_INPUTS


def benchmark_job(method, params, frozen, bench: Benchmark, *, seed: int, steps: int, guidance: float, blend: str,
                  settings: dict) -> generation.Job:
    """The job of `bench` for a loaded AnyScene method (`load_anyscene`): images blended as `blend` says."""
    input_ids = method.tokenize([bench.prompts[n] for n in bench.names])

    def read(i: int):
        composite, mask = bench.read_pair(i)
        return {"foreground": composite, "mask": mask, "input_ids": input_ids[i]}, None

    return generation.Job(
        items=[f"{n}.png" for n in bench.names], read=read,
        sample=make_sample(method, steps=steps, guidance=guidance, blend=blend),
        key=lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i), write=lambda image, _: image,
        size=bench.output_size, entry=bench.entry,
        settings={"method": "anyscene", "benchmark": str(bench.root), "seed": seed, "steps": steps,
                  "guidance": guidance, "blend": blend, **settings},
        params=lambda _: (params, frozen))


def compose_benchmark(args) -> dict:
    """`compose anyscene --benchmark BENCH --out GEN` (module doc)."""
    from jcompose.inference import resolve_checkpoint
    from jcompose.methods.anyscene_inference import load_anyscene

    bench = Benchmark.read(args.benchmark)
    loaded = load_anyscene(args)
    method, params, frozen, step = loaded.method, loaded.params, loaded.frozen, loaded.step
    settings = {"run": str(resolve_checkpoint(args.checkpoint)[0]), "step": step, "ema": bool(args.ema),
                "variant": method.config.get("variant", "unrecorded"), "dtype": args.dtype}
    job = benchmark_job(method, params, frozen, bench, seed=args.seed, steps=args.steps, guidance=args.guidance,
                        blend=args.blend, settings=settings)
    written = generation.generate(job, args.out, per_device_batch=generation.per_device_batch(args), workers=args.workers,
                                  desc="anyscene")
    return {**written, "step": step}
