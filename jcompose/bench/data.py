"""`python -m jcompose.bench data --method=anyscene|anydoor|dreamcom`: a method's input pipeline
(source -> transform -> grain batches): examples/s per worker process, and the worker processes one
host needs to feed a train step rate (`--steps-per-s`, from `bench train`).

Generic over methods: `run_data_benchmark` takes a factory of the method's transform and a source
(or mixture) and times (1) reading a record and transforming it directly, without grain (where the
time goes), and (2) the grain pipeline of `make_iterator` for each requested worker count (what
training gets), excluding the first batch (worker start-up, imports). The data are synthetic
photos at a COCO-like 480x640 (or real COCO / YouTube-VOS-layout folders).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from input_pipeline.pipeline import make_iterator, takes_rng
from input_pipeline.records import RecordError

METHODS = ("anyscene", "anydoor", "dreamcom")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2],
                        help="comma-separated grain worker counts to time (0: main process)")
    parser.add_argument("--batch", type=int, default=8, help="per-process batch of the timed pipeline")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per worker count")
    parser.add_argument("--steps-per-s", type=float, default=None, help="train step rate to feed (from bench train)")
    parser.add_argument("--host-batch", type=int, default=None, help="per-host batch of that train step")
    parser.add_argument("--coco-images", help="real COCO-layout data instead of synthetic: image folder")
    parser.add_argument("--coco-instances", help="...its instances JSON")
    parser.add_argument("--coco-captions", help="...its captions JSON")
    parser.add_argument("--video-root", help="a YouTube-VOS-layout folder (AnyDoor)")


def time_record_path(source: Any, transform: Callable, *, num_examples: int, seed: int = 0) -> dict:
    """Milliseconds per example to read a record (`source[i]`) and to transform it, in this process.

    Records that raise RecordError are counted (`skipped`) and not timed.
    """
    random = takes_rng(transform)
    rng = np.random.default_rng(seed)
    read_s = transform_s = 0.0
    done = skipped = 0
    index = 0
    while done < num_examples and index < 10 * num_examples + len(source):
        position = index % len(source)
        index += 1
        start = time.perf_counter()
        try:
            record = source[position]
            middle = time.perf_counter()
            transform(record, rng) if random else transform(record)
        except RecordError:
            skipped += 1
            continue
        end = time.perf_counter()
        read_s += middle - start
        transform_s += end - middle
        done += 1
    if done == 0:
        raise RecordError(str(type(source).__name__), f"every one of {index} records tried was skipped")
    return {"read_ms": 1e3 * read_s / done, "transform_ms": 1e3 * transform_s / done, "examples": done,
            "skipped": skipped}


def time_pipeline(source: Any, transform: Callable, *, worker_count: int, per_process_batch: int,
                  num_batches: int, seed: int = 0, read_threads: int = 1) -> dict:
    """Examples/s of `make_iterator` with `worker_count` workers, after one warm-up batch.

    "per_worker" divides by max(worker_count, 1): with 0 workers the main process does the work.
    Each process reads with `read_threads` threads and buffers one batch, so the timed batches are
    produced while timed (grain's default 500-element read-ahead would serve them from the warm-up).
    """
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=per_process_batch)
    iterator = make_iterator(source, transform, per_process_batch=per_process_batch, seed=seed,
                             worker_count=worker_count, read_options=options)
    try:
        next(iterator)  # start-up: worker processes, imports, first reads
        start = time.perf_counter()
        for _ in range(num_batches):
            next(iterator)
        seconds = time.perf_counter() - start
    finally:
        getattr(iterator, "close", lambda: None)()
    rate = num_batches * per_process_batch / seconds
    return {"worker_count": worker_count, "examples_per_s": rate, "per_worker": rate / max(worker_count, 1),
            "skipped": iterator.skipped.count}


def workers_needed(examples_per_s_per_worker: float, steps_per_s: float, per_host_batch: int) -> int:
    """Worker processes one host needs to produce `steps_per_s * per_host_batch` examples/s."""
    if examples_per_s_per_worker <= 0:
        raise ValueError(f"examples_per_s_per_worker must be > 0, got {examples_per_s_per_worker}")
    return max(1, math.ceil(steps_per_s * per_host_batch / examples_per_s_per_worker))


def run_data_benchmark(method_transform_factory: Callable[[], Callable], source: Any, *,
                       worker_counts: Sequence[int] = (0,), per_process_batch: int = 8, num_batches: int = 8,
                       num_direct: int = 16, steps_per_s: float | None = None, per_host_batch: int | None = None,
                       seed: int = 0, read_threads: int = 1) -> dict:
    """Throughput of a method's input pipeline.

    Args:
      method_transform_factory: () -> transform, `(record)` or `(record, rng)` -> example dict.
      source: random-access source of raw records, or a grain MapDataset (e.g. `mix_sources`);
        the direct timing needs indexable records, so for a MapDataset it indexes the dataset itself.
      worker_counts: grain worker counts to time (0 = main process only).
      per_process_batch, num_batches: batch size and timed batches per worker count.
      num_direct: examples for the direct (no grain) timing.
      steps_per_s, per_host_batch: the train step rate (steps/s, from the engine benchmark) and host
        batch to feed; when given, `workers_needed` is computed from the best per-worker rate.
      read_threads: reading/transform threads per process (1: a per-process figure that does not
        count on the GIL being released).
    Returns: {"direct": time_record_path(...), "pipelines": [time_pipeline(...) per worker count],
              "examples_per_s_per_worker": best per-worker rate, "workers_needed": int or None}
    """
    transform = method_transform_factory()
    direct = time_record_path(source, transform, num_examples=num_direct, seed=seed)
    pipelines = [time_pipeline(source, transform, worker_count=w, per_process_batch=per_process_batch,
                               num_batches=num_batches, seed=seed, read_threads=read_threads) for w in worker_counts]
    best = max(p["per_worker"] for p in pipelines)
    needed = None
    if steps_per_s is not None:
        needed = workers_needed(best, steps_per_s, per_host_batch or per_process_batch)
    return {"direct": direct, "pipelines": pipelines, "examples_per_s_per_worker": best, "workers_needed": needed}


def format_report(result: dict) -> str:
    """A short plain-text table of `run_data_benchmark`'s result."""
    direct = result["direct"]
    lines = [(f"direct: read {direct['read_ms']:.1f} ms + transform {direct['transform_ms']:.1f} ms per example "
              f"({direct['examples']} examples, {direct['skipped']} skipped)")]
    for p in result["pipelines"]:
        lines.append(f"workers={p['worker_count']:>2}: {p['examples_per_s']:8.1f} examples/s, "
                     f"{p['per_worker']:7.1f} per worker process, {p['skipped']} skipped")
    if result["workers_needed"] is not None:
        lines.append(f"worker processes needed per host: {result['workers_needed']}")
    return "\n".join(lines)


class _FirstInstanceAsReference:
    """instances records -> DreamCom `reference` records (the image and its first object mask)."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        record = self.source[index]
        return {"image": record["image"], "mask": record["masks"][0], "source": record["source"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Examples/s per worker process of a method's input pipeline (source -> transform -> batches)."""
    from input_pipeline import anydoor, anyscene, dreamcom
    from input_pipeline.pipeline import mix_sources
    from input_pipeline.sources import coco, synthetic, video
    from jcompose.bench.timing import log

    with tempfile.TemporaryDirectory() as tmp:
        if args.coco_instances:
            images = coco.CocoSource(args.coco_images, args.coco_instances, args.coco_captions)
        else:  # synthetic photos at a COCO-like resolution
            synthetic.write_synthetic(Path(tmp), num_images=16, num_videos=4, num_frames=8, image_size=(480, 640))
            images = coco.CocoSource(Path(tmp) / "coco" / "images", Path(tmp) / "coco" / "annotations" /
                                     "instances.json", Path(tmp) / "coco" / "annotations" / "captions.json")
        if args.method == "anyscene":
            source, factory = images, lambda: anyscene.make_transform(size=args.size)
        elif args.method == "dreamcom":
            source = _FirstInstanceAsReference(images)
            factory = lambda: dreamcom.make_transform(class_noun="object", size=args.size)
        else:  # AnyDoor's mixture: video frame pairs and same-image pairs
            clips = video.VideoSource(args.video_root or Path(tmp) / "youtube_vos")
            source = mix_sources([(clips, 1.0, video.sample_pair), (images, 1.0, coco.image_pair)], seed=0)
            factory = lambda: anydoor.make_transform(size=args.size)
        result = run_data_benchmark(
            factory, source, worker_counts=args.workers, per_process_batch=args.batch, num_batches=args.batches,
            steps_per_s=args.steps_per_s, per_host_batch=args.host_batch)
    log(format_report(result))
    return {"method": args.method, "size": args.size, "data": "coco" if args.coco_instances else "synthetic",
            **result}
