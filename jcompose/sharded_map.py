"""A jitted function mapped over a list of items on every device of every process, results back in item order.

The convention every batch job over files follows (evaluation here; benchmark generation can use the same):

* Every process holds the same item list and builds the same *plan* (`plan_batches`): global batches of
  `batch_size` items (rounded up to a multiple of the device count). Items of one *group* (e.g. one image
  size) never share a batch, so a batch always stacks; each group's last batch is padded.
* In a global batch of items c_0..c_{m-1}, process p of P reads c_p, c_{p+P}, ... (its share of the files,
  the work balanced), padded to B / P rows with one of the batch's items marked invalid. Host-side
  reading runs in `workers` threads (grain) ahead of the device work.
* The batch is one global array sharded over the mesh's batch axes, so every local device computes its
  rows; outputs are gathered to every process and scattered back by item index (`map_items`), or handed
  to `on_local` as this process's own valid rows (e.g. for statistics reduced later with `allgather`).

Results do not depend on the number of devices or processes: each item is computed on its own row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import numpy as np

from jcompose import parallel


@dataclasses.dataclass(frozen=True)
class GlobalBatch:
    """rows: (P, L) item indices per process, -1 for padding; stand_in: an item of this batch (read for a
    process whose rows are all padding, so its arrays have the batch's shapes); count: valid items."""

    rows: np.ndarray
    stand_in: int
    count: int


def global_batch_size(batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the global device count."""
    devices = jax.device_count()
    return -(-max(batch_size, 1) // devices) * devices


def plan_batches(n_items: int, batch_size: int, process_count: int,
                 groups: Sequence[Hashable] | None = None) -> list[GlobalBatch]:
    """Global batches of at most `batch_size` items, one group per batch, each split over the processes.

    groups: a key per item (None: one group); groups keep their first appearance's order, items theirs.
    """
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} must be a multiple of the {process_count} processes")
    per_process = batch_size // process_count
    by_group: dict[Hashable, list[int]] = {}
    for i in range(n_items):
        by_group.setdefault(None if groups is None else groups[i], []).append(i)
    plan = []
    for members in by_group.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            rows = np.full((process_count, per_process), -1, np.int32)
            for k, item in enumerate(chunk):
                rows[k % process_count, k // process_count] = item
            plan.append(GlobalBatch(rows, chunk[0], len(chunk)))
    return plan


def _stack(arrays: list[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
    """Stacks prepared items and pads to `size` rows by repeating the last one."""
    arrays = arrays + [arrays[-1]] * (size - len(arrays))
    return {key: np.stack([a[key] for a in arrays]) for key in arrays[0]}


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in the order of its local batch."""
    shards = {}
    for shard in array.addressable_shards:
        shards.setdefault(shard.index[0].start or 0, shard.data)
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def map_items(items: Sequence[Any], prepare: Callable[[Any], dict[str, np.ndarray]], step: Callable, params: Any,
              mesh, *, batch_size: int, workers: int = 4, groups: Sequence[Hashable] | None = None,
              gather: Sequence[str] | None = None, on_local: Callable[[dict, np.ndarray], None] | None = None,
              desc: str = "", progress: bool = True) -> dict[str, np.ndarray]:
    """Runs `step(params, batch)` over all items, every process and device taking its share (module doc).

    Args:
      items: the same list on every process; `prepare(item)` turns one into a dict of host arrays (run only
        for this process's items).
      step: `(params, batch) -> dict of (B, ...) arrays`, traced here under jit (compiled once per group shape).
      params: replicated on `mesh` (see `parallel.put_replicated`).
      batch_size: global items per step, rounded up to a multiple of the device count.
      groups: a hashable per item; items of different groups never share a batch (their shapes differ).
      gather: output keys returned for every item (default all; () for none).
      on_local: called per batch with this process's valid output rows and their item indices.

    Returns:
      {key: (len(items), ...) numpy array} on every process, in item order.
    """
    import grain
    from tqdm import tqdm

    process, processes = jax.process_index(), jax.process_count()
    size = global_batch_size(batch_size)
    plan = plan_batches(len(items), size, processes, groups)
    local = [(b.rows[process], b.stand_in) for b in plan]
    per_process = size // processes

    def read(entry) -> dict[str, np.ndarray]:
        rows, stand_in = entry
        valid = [int(i) for i in rows if i >= 0]
        return _stack([prepare(items[i]) for i in (valid or [stand_in])], per_process)

    run = jax.jit(step, out_shardings=parallel.batch_sharding(mesh))
    results: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(items), desc=desc, disable=not progress or process != 0)

    def collect(out: dict[str, jax.Array], index: jax.Array, rows: np.ndarray, count: int) -> None:
        keys = list(out) if gather is None else list(gather)
        if keys:
            gathered = allgather_tiled({"index": index, **{k: out[k] for k in keys}})
            order = gathered.pop("index")
            valid = order >= 0
            for key, value in gathered.items():
                if key not in results:
                    results[key] = np.zeros((len(items), *value.shape[1:]), value.dtype)
                results[key][order[valid]] = value[valid]
        if on_local is not None:
            keep = rows >= 0
            on_local({k: local_rows(v)[keep] for k, v in out.items()}, rows[keep])
        bar.update(count)

    stream = grain.MapDataset.source(local).map(read).to_iter_dataset(
        grain.ReadOptions(num_threads=max(workers, 1), prefetch_buffer_size=max(workers, 2)))
    pending = None
    for batch, (rows, _), global_plan in zip(stream, local, plan, strict=True):
        # Dispatch this batch before fetching the previous one's results: the devices work while the host
        # gathers, scatters and reads ahead.
        out = run(params, parallel.global_batch(batch, mesh))
        index = parallel.global_batch({"index": rows}, mesh)["index"]
        if pending is not None:
            collect(*pending)
        pending = (out, index, rows, global_plan.count)
    if pending is not None:
        collect(*pending)
    bar.close()
    return results


def allgather_tiled(tree: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """Batch-sharded global arrays -> whole numpy arrays on every process."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return {k: np.asarray(v) for k, v in tree.items()}
    return multihost_utils.process_allgather(tree, tiled=True)


def allgather(value: np.ndarray) -> list[np.ndarray]:
    """Every process's host array (any dtype, float64 kept exact; shapes may differ in the leading axis),
    as a list indexed by process."""
    from jax.experimental import multihost_utils

    value = np.ascontiguousarray(value)
    if jax.process_count() == 1:
        return [value]
    # jax without x64 would round float64 to float32: move the bytes instead.
    raw = value.reshape(-1).view(np.uint8)
    sizes = multihost_utils.process_allgather(np.array([raw.size], np.int64)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:raw.size] = raw
    everyone = multihost_utils.process_allgather(padded)
    rows = [everyone[p, :sizes[p]].view(value.dtype) for p in range(len(sizes))]
    tail = value.shape[1:]
    return [r.reshape(-1, *tail) if value.ndim else r.reshape(()) for r in rows]
