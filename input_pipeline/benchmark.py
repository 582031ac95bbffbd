"""Input-pipeline throughput: examples/s per worker process, and how many workers feed a train step rate.

Generic over methods: give it a factory of the method's transform and a source (or mixture). It times
(1) reading a record and transforming it directly, without grain (where the time goes), and
(2) the grain pipeline of `make_iterator` for each requested worker count (what training gets),
excluding the first batch (worker start-up, imports). `python -m jcompose.bench data` wires it per method.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from input_pipeline.pipeline import make_iterator, takes_rng
from input_pipeline.records import RecordError


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
