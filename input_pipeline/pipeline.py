"""grain assembly: seeded shuffle, repeat, per-process shard, transform, batch; checkpointable.

`make_iterator` returns a grain `DatasetIterator` whose `get_state()` / `set_state()` the
trainer stores with each checkpoint, so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grain


def make_iterator(
    source: Any,
    transform: Callable[[dict], dict],
    *,
    per_process_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """Endless iterator of host-local batches (dicts of stacked numpy arrays).

    Args:
      source: a random-access source (len + getitem) of raw records.
      transform: raw record -> fixed-shape example dict of numpy arrays (pure, seedless).
      per_process_batch: examples per batch on this host (the global batch / process count).
      seed: shuffle seed; each epoch reshuffles deterministically.
      process_index, process_count: this host's shard of every epoch.
      worker_count: grain worker processes for prefetching (0: in the main process).
    """
    dataset = (
        grain.MapDataset.source(source)
        .seed(seed)
        .shuffle()
        .repeat()[process_index::process_count]
        .map(transform)
        .batch(per_process_batch, drop_remainder=True)
        .to_iter_dataset()
    )
    if worker_count > 0:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(dataset)
