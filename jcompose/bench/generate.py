"""`python -m jcompose.bench generate`: benchmark generation's images/s on 1 device and on N, as a ratio.

The AnyScene benchmark job (`jcompose/methods/anyscene_generation.py`: PNG reading, the sampler with CFG
and the VAE decode, paste-back, PNG writing; the full SD 1.5 + ControlNet architecture with random weights,
bf16, 512 px off CPU; the tiny model, 64 px, on CPU) on a synthetic benchmark folder, through the engine
(`jcompose.generation`) on the first d devices for each d of `--devices`, with `--batches` batches of
`--per-device-batch` images per device (so every device count does the same work per device). For each d:

* `img_per_s`: the engine's whole run, after a first run that compiles (images deleted in between);
* `sampler_img_per_s`: the same compiled step dispatched back to back on device-resident batches (no
  reading, writing or transfers): `overlap` = img_per_s / sampler_img_per_s says how much of the host
  work the engine hides behind the devices (1.0: all of it).

`scaling` = img_per_s(N) / img_per_s(1) and `scaling_efficiency` = scaling / N (target >= 0.9 on chips).
On a CPU the "devices" are forced host devices sharing the same cores (`XLA_FLAGS=
--xla_force_host_platform_device_count=4`): the ratio then shows the engine's overhead, not chips' speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jcompose.bench import timing, weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=("tiny", "sd15"), default=None,
                        help="tiny (default on CPU) or the full SD 1.5 architecture (default on GPU/TPU)")
    parser.add_argument("--base", default=None, help="a base folder written beforehand (`bench prepare`)")
    parser.add_argument("--size", type=int, default=None, help="image size (default: tiny 64, sd15 512)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: 50; tiny 4)")
    parser.add_argument("--per-device-batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3, help="batches per device count timed")
    parser.add_argument("--devices", default="1,all", help="comma list of device counts ('all': every device)")
    parser.add_argument("--workers", type=int, default=4, help="reader/writer threads")


def device_counts(text: str) -> list[int]:
    """'1,all' -> [1, jax.device_count()] (sorted, unique); ValueError for counts the machine lacks."""
    total = jax.device_count()
    counts = sorted({total if c.strip() == "all" else int(c) for c in text.split(",") if c.strip()})
    if not counts or counts[0] < 1 or counts[-1] > total:
        raise ValueError(f"--devices {text!r}: expected counts between 1 and the {total} devices")
    return counts


def write_benchmark(folder: Path, count: int, size: int) -> Path:
    """A synthetic AnyScene benchmark folder (random objects on black, prompts.json) of `count` pairs."""
    import cv2

    rng = np.random.default_rng(0)
    for sub in ("foregrounds", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    prompts = {}
    for i in range(count):
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        mask[y:y + size // 3, x:x + size // 3] = 255
        foreground = rng.integers(0, 255, (size, size, 3), np.uint8) * (mask[..., None] > 0)
        cv2.imwrite(str(folder / "foregrounds" / f"{i:05d}.png"), foreground.astype(np.uint8))
        cv2.imwrite(str(folder / "masks" / f"{i:05d}.png"), mask)
        prompts[f"{i:05d}"] = "a photo of a dog on the beach"
    (folder / "prompts.json").write_text(json.dumps(prompts))
    return folder


def _method(args, folder: Path, on_accelerator: bool):
    from configs.anyscene import get_config
    from jcompose.methods.anyscene import AnySceneMethod

    config = get_config("tiny" if args.model == "tiny" else "")
    config.model.update(base=str(folder), controlnet="")
    config.compute_dtype = "bfloat16" if on_accelerator and args.model == "sd15" else "float32"
    method = AnySceneMethod(config)
    method.load_models(folder)
    frozen = {"unet": method.pipe.unet.params, "vae": method.pipe.vae.params,
              "text_encoder": method.pipe.text_encoder.params}
    return method, {"controlnet": method.controlnet_params}, frozen


def _sampler_img_per_s(job, mesh, per_device: int, repeats: int) -> float:
    """The job's compiled step back to back on one device-resident batch (no host work)."""
    from jcompose import generation, parallel

    batch, _ = job.read(0)
    size = per_device * mesh.size
    stacked = parallel.global_batch({k: np.stack([v] * size) for k, v in batch.items()}, mesh)
    index = parallel.global_batch({"i": np.arange(size, dtype=np.int32)}, mesh)["i"]
    params = parallel.put_replicated(job.params(None), mesh)
    run = generation.compiled_step(job, mesh)
    seconds = timing.back_to_back_seconds(lambda: run(params, stacked, index), repeats)
    return size / seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The generation benchmark's report (module doc)."""
    from jcompose import generation
    from jcompose.methods import anyscene_generation

    on_accelerator = jax.default_backend() != "cpu"
    counts = device_counts(args.devices)
    size = args.size or (512 if args.model == "sd15" else 64)
    steps = args.steps or (50 if args.model == "sd15" else 4)
    report: dict[str, Any] = {"model": args.model, "backend": jax.default_backend(),
                              "device": jax.devices()[0].device_kind, "size": size, "steps": steps,
                              "per_device_batch": args.per_device_batch, "batches": args.batches, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = weights.base_folder(args, str(tmp))
        method, params, frozen = _method(args, folder, on_accelerator)
        per_run = args.per_device_batch * args.batches
        bench = anyscene_generation.Benchmark.read(write_benchmark(tmp / "bench", per_run * counts[-1], size))
        for d in counts:
            mesh = generation.mesh_of(jax.devices()[:d])
            subset = anyscene_generation.Benchmark(bench.root, bench.names[:per_run * d], bench.prompts)
            job = anyscene_generation.benchmark_job(method, params, frozen, subset, seed=0, steps=steps,
                                                    guidance=7.5, blend="paste", settings={})
            out = tmp / f"out{d}"
            kwargs = dict(per_device_batch=args.per_device_batch, workers=args.workers, mesh=mesh, progress=False)
            start = time.perf_counter()
            generation.generate(job, out, **kwargs)  # compiles
            first = time.perf_counter() - start
            shutil.rmtree(out)
            start = time.perf_counter()
            generation.generate(job, out, **kwargs)
            seconds = time.perf_counter() - start
            row = {"devices": d, "images": len(subset.names), "img_per_s": len(subset.names) / seconds,
                   "first_run_s": first,
                   "sampler_img_per_s": _sampler_img_per_s(job, mesh, args.per_device_batch, args.batches)}
            row["overlap"] = row["img_per_s"] / row["sampler_img_per_s"]
            report["rows"].append(row)
            timing.log(f"  generate on {d} device(s): {row['img_per_s']:.3f} img/s (sampler alone "
                       f"{row['sampler_img_per_s']:.3f}, overlap {row['overlap']:.2f})")
    first, last = report["rows"][0], report["rows"][-1]
    if last["devices"] > first["devices"]:
        report["scaling"] = last["img_per_s"] / first["img_per_s"]
        report["scaling_efficiency"] = report["scaling"] * first["devices"] / last["devices"]
    report["img_per_s"] = last["img_per_s"]
    report["note"] = ("forced host devices share the CPU cores: the ratio shows the engine's overhead"
                      if not on_accelerator else "")
    return report
