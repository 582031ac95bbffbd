"""grain assembly: seeded shuffle, repeat, per-process shard, transform, skip bad records, batch, prefetch.

`make_iterator` returns a grain `DatasetIterator` whose `get_state()` / `set_state()` the trainer stores
with each checkpoint, so a resumed run sees exactly the batches it would have: the order is a pure
function of `seed` (index shuffle reseeded each epoch) and a transform's rng a pure function of `seed`
and the element's position (grain `random_map`).

Bad records. A source or transform raising `RecordError` (unreadable file, empty mask, failed filter)
does not stop training: the element becomes a `Skipped(path, reason)` marker, which is dropped before
batching (in the worker processes, so batches are still built there). Each example carries how many
markers were dropped just before it; the main process pops that field off every batch (batches keep the
transform's keys) and adds it to `iterator.skipped`, a `SkipCounter` (`.count`) that training logs. A
counter object rather than a batch field, so model code never sees bookkeeping keys, and it counts in
the main process, where a plain attribute would not see worker-side increments. `strict=True` lets the
`RecordError` (naming the file) propagate instead. The count is per process and restarts at 0 on resume.
A source with no records, or a stream in which `max_consecutive_skips` records in a row are unusable,
stops with a `RecordError` naming the source and the most frequent reasons, instead of an endless
retry; the first few skips are logged one by one, then one line per power of ten.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np

from input_pipeline.records import RecordError

SKIPPED_KEY = "_skipped_before"
MAX_CONSECUTIVE_SKIPS = 1000
LOGGED_ONE_BY_ONE = 5  # skipped records logged individually per process, then one line per power of ten
logger = logging.getLogger(__name__)


class Skipped(NamedTuple):
    """Marker for a record that raised RecordError (picklable: it may come from a worker process)."""
    path: str
    reason: str


class SkipCounter:
    """Records skipped for RecordError so far, as seen by the process iterating the batches."""

    def __init__(self):
        self.count = 0

    def add(self, batch: dict) -> dict:
        """Pops the per-example skip counts off a batch and adds them up; returns the batch."""
        self.count += int(np.sum(batch.pop(SKIPPED_KEY)))
        return batch

    def __repr__(self) -> str:
        return f"SkipCounter(count={self.count})"


class _CatchRecordErrors(grain.MapDataset):
    """parent[i], or Skipped(path, reason) where reading/transforming element i raised RecordError.

    Sits after the transform: MapDataset ops run lazily inside `parent[i]`, so errors from the source's
    `__getitem__`, a mixture's record-to-pair step and the method transform all land here.
    """

    def __init__(self, parent: grain.MapDataset):
        super().__init__(parent)
        self._logged = 0  # per process (each grain worker has its own copy)

    def __len__(self) -> int:
        return len(self._parent)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        try:
            return self._parent[index]
        except RecordError as err:
            self._logged += 1
            if self._logged <= LOGGED_ONE_BY_ONE:
                logger.warning("skipping bad record %s: %s", err.path, err.reason)
            elif str(self._logged).strip("0") == "1":  # 10, 100, 1000, ...
                logger.warning("skipped %d bad records in this process so far (latest: %s: %s)", self._logged,
                               err.path, err.reason)
            return Skipped(err.path, err.reason)

    def __str__(self) -> str:
        return "CatchRecordErrors"


class _DropSkipped(grain.IterDataset):
    """Drops Skipped markers; each example gets SKIPPED_KEY = how many were dropped right before it.

    `limit` markers in a row raise RecordError(source_name, the most frequent reasons with counts).
    """

    def __init__(self, parent: grain.IterDataset, limit: int, source_name: str):
        super().__init__(parent)
        self._limit, self._source_name = limit, source_name

    def __iter__(self):
        return _DropSkippedIterator(self._parent.__iter__(), self._limit, self._source_name)

    def __str__(self) -> str:
        return "DropSkipped"


class _DropSkippedIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, limit: int, source_name: str):
        super().__init__(parent)
        self._limit, self._source_name = limit, source_name

    def __next__(self) -> dict:
        skipped = 0
        reasons: Counter = Counter()
        examples: dict[str, str] = {}
        while True:
            element = next(self._parent)
            if isinstance(element, Skipped):
                skipped += 1
                reasons[element.reason] += 1
                examples.setdefault(element.reason, element.path)
                if skipped >= self._limit:
                    raise _no_usable_records(self._source_name, skipped, reasons, examples)
                continue
            if not isinstance(element, dict):
                raise TypeError(f"transform must return a dict of arrays, got {type(element).__name__}")
            return {**element, SKIPPED_KEY: np.int64(skipped)}

    def get_state(self):  # no state of its own: markers are a pure function of the parent's position
        return self._parent.get_state()

    def set_state(self, state) -> None:
        self._parent.set_state(state)


def _no_usable_records(source_name: str, count: int, reasons: Counter, examples: dict) -> RecordError:
    common = "; ".join(f"{reason!r} x{n} (e.g. {examples[reason]})" for reason, n in reasons.most_common(3))
    more = f"; and {len(reasons) - 3} other reasons" if len(reasons) > 3 else ""
    return RecordError(source_name, f"no usable record in the last {count} records: {common}{more}. Fix the data, "
                                    "or raise data.max_consecutive_skips if most records are meant to be filtered")


def source_name(source: Any) -> str:
    """A source's name for messages: its class and the file or folder it reads, where it has one."""
    name = type(source).__name__
    for attribute in ("annotation_path", "root", "path", "image_dir"):
        where = getattr(source, attribute, None)
        if where:
            return f"{where} ({name})"
    return name


def takes_rng(transform: Callable) -> bool:
    """Whether `transform` is `(record, rng)` (two positional parameters) rather than `(record)`."""
    try:
        parameters = inspect.signature(transform).parameters.values()
    except (TypeError, ValueError):  # builtins / C callables: assume the one-argument form
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def mix_sources(components: Sequence[tuple[Any, float] | tuple[Any, float, Callable | None]], *,
                seed: int) -> grain.MapDataset:
    """A weighted mixture of sources as one endless grain MapDataset (AnyDoor's training mix).

    Args:
      components: (source, weight) or (source, weight, prepare) per dataset; `prepare(record, rng)` (or
        `prepare(record)`) turns the source's record into the common record kind (e.g. `video.sample_pair`
        for clips, `coco.image_pair` for instances, for AnyDoor's pair transform). Weights need not sum to 1.
      seed: base seed; each component gets its own.
    Each component is an endless stream of its source, reshuffled on every pass, and the streams are
    interleaved by weight (grain `MapDataset.mix`), so any window of the mix holds each source at its
    weight and a source of n records is seen completely once per n / weight mixed elements. Endless,
    so `prepare` draws new randomness (new frame pairs) on every pass: its rng is a pure function of
    the seed and the element's position in its stream. Pass the result to `make_iterator` as the
    source (it is then sharded as is, not shuffled again).
    """
    if not components:
        raise ValueError("mix_sources: no components")
    weights = np.array([float(c[1]) for c in components])
    if (weights <= 0).any():
        raise ValueError(f"mix_sources: weights must be > 0, got {weights.tolist()}")
    datasets = []
    for i, component in enumerate(components):
        source, prepare = component[0], component[2] if len(component) > 2 else None
        if len(source) == 0:
            raise ValueError(f"mix_sources: component {i} ({type(source).__name__}) has no records")
        dataset = grain.MapDataset.source(source).seed(seed + 1000003 * (i + 1)).shuffle().repeat()
        if prepare is not None:
            dataset = dataset.random_map(prepare) if takes_rng(prepare) else dataset.map(prepare)
        datasets.append(dataset)
    return grain.MapDataset.mix(datasets, (weights / weights.sum()).tolist())


def make_dataset(source: Any, transform: Callable, *, per_process_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1, worker_count: int = 0, strict: bool = False,
                 random_transform: bool | None = None, worker_buffer_size: int = 1,
                 read_options: grain.ReadOptions | None = None,
                 max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPS) -> grain.IterDataset:
    """The grain IterDataset behind `make_iterator` (same arguments); batches still carry SKIPPED_KEY."""
    if per_process_batch < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"per_process_batch={per_process_batch} must be >= 1 and process_index={process_index} "
                         f"in [0, process_count={process_count})")
    if max_consecutive_skips < 1:
        raise ValueError(f"max_consecutive_skips={max_consecutive_skips}: expected >= 1")
    name = source_name(source)
    base = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
    if len(base) == 0:
        raise RecordError(name, "the source has no records (an empty annotation file or folder, or every record "
                                "filtered out)")
    # One global shuffled stream per epoch, dealt round-robin to processes: N shards partition each epoch.
    # An endless dataset (e.g. mix_sources) is already a shuffled stream: it is only dealt out.
    endless = len(base) >= sys.maxsize
    # Unusable records in a row before giving up: two epochs of this shard if that is fewer (a small
    # source whose every record fails), but never under 100 (random filters may reject many in a row).
    limit = max_consecutive_skips if endless else min(max_consecutive_skips,
                                                      max(2 * -(-len(base) // process_count), 100))
    dataset = (base.seed(seed) if endless else base.seed(seed).shuffle().repeat())[process_index::process_count]
    random = takes_rng(transform) if random_transform is None else random_transform
    dataset = dataset.random_map(transform) if random else dataset.map(transform)
    if not strict:
        dataset = _CatchRecordErrors(dataset)
    dataset = _DropSkipped(dataset.to_iter_dataset(read_options), limit, name).batch(per_process_batch,
                                                                                     drop_remainder=True)
    if worker_count > 0:
        _absl_flags_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                                   per_worker_buffer_size=worker_buffer_size),
                                      worker_init_fn=single_threaded_worker)
    return dataset


def make_iterator(
    source: Any,
    transform: Callable,
    *,
    per_process_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    strict: bool = False,
    random_transform: bool | None = None,
    worker_buffer_size: int = 1,
    read_options: grain.ReadOptions | None = None,
    max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPS,
) -> grain.DatasetIterator:
    """Endless iterator of host-local batches (dicts of stacked numpy arrays, leading axis per_process_batch).

    Args:
      source: a random-access source (len + getitem) of raw records, or a grain MapDataset: a finite one
        is shuffled and repeated like a source, an endless one (e.g. from `mix_sources`) only sharded.
      transform: raw record -> fixed-shape example dict of numpy arrays; either `(record)` (pure) or
        `(record, rng: np.random.Generator)` (run through grain's random_map: rng is a pure function of
        seed and position, so resume and every worker count give the same examples).
      per_process_batch: examples per batch on this host (the global batch / process count).
      seed: shuffle and transform seed; each epoch reshuffles deterministically.
      process_index, process_count: this host's shard: element k of the global stream goes to host
        k % process_count.
      worker_count: grain worker processes (mp_prefetch) reading, transforming and batching (0: in the
        main process).
      strict: raise the first RecordError (it names the file) instead of skipping and counting.
      random_transform: force the (record, rng) form (True) or the (record) form (False); default: from
        the transform's signature.
      worker_buffer_size: batches each worker prepares ahead.
      read_options: grain.ReadOptions for reading+transforming elements in each process (grain's default:
        16 threads, 500 elements buffered, i.e. about 1.5 GB per process at 512x512 float32 images; lower
        `prefetch_buffer_size` when memory is short).
      max_consecutive_skips: unusable records in a row after which the stream stops with a RecordError
        naming the source and the most frequent reasons (at most two epochs of this shard, at least 100).
    Returns: a grain DatasetIterator (checkpointable with grain's handler) with an extra attribute
      `skipped`: SkipCounter of records skipped since it was created.
    """
    counter = SkipCounter()
    dataset = make_dataset(source, transform, per_process_batch=per_process_batch, seed=seed,
                           process_index=process_index, process_count=process_count, worker_count=worker_count,
                           strict=strict, random_transform=random_transform, worker_buffer_size=worker_buffer_size,
                           read_options=read_options, max_consecutive_skips=max_consecutive_skips)
    iterator = iter(dataset.map(counter.add))
    iterator.skipped = counter
    return iterator


def single_threaded_worker(worker_index: int, worker_count: int) -> None:
    """grain worker start-up: OpenCV single-threaded, so N workers load N cores rather than N x cores."""
    del worker_index, worker_count
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(1)


def _absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; mark them parsed when the program did not use absl.app."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
