"""Several models' data streams as one: batches with a leading model axis, one checkpointable state.

Training K independent models in one program (one per DreamCom object) needs K batches per step, one
from each model's own data. `StackedIterator` draws one batch from each of K grain iterators and
stacks them: every array gets shape (K, B, ...). Its state (what a checkpoint stores, through grain's
checkpoint handler) is the K iterators' states together, so a resumed run continues every stream where
it stopped. Skipped records are counted over all streams.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np


class _SummedSkips:
    """`.count`: records skipped so far over all the streams (each stream's `SkipCounter` summed)."""

    def __init__(self, iterators):
        self._iterators = iterators

    @property
    def count(self) -> int:
        return sum(getattr(it, "skipped", None).count for it in self._iterators if hasattr(it, "skipped"))


class StackedIterator:
    """Iterator of {key: (K, B, ...)} batches from K iterators of {key: (B, ...)} batches.

    Args:
      iterators: the per-model iterators (`input_pipeline.pipeline.make_iterator` results), in model order.
    """

    def __init__(self, iterators: Sequence):
        if not iterators:
            raise ValueError("StackedIterator needs at least one iterator")
        self.iterators = list(iterators)
        self.skipped = _SummedSkips(self.iterators)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(it) for it in self.iterators]
        keys = batches[0].keys()
        for k, batch in enumerate(batches[1:], start=1):
            if batch.keys() != keys:
                raise ValueError(f"model {k}'s batches have keys {sorted(batch)}, model 0's {sorted(keys)}")
        return {key: np.stack([np.asarray(b[key]) for b in batches]) for key in keys}

    # grain's checkpoint handler saves/restores a non-DatasetIterator through bytes get/set_state.
    def get_state(self) -> bytes:
        return json.dumps([it.get_state() for it in self.iterators]).encode()

    def set_state(self, state: bytes) -> None:
        states = json.loads(state.decode() if isinstance(state, bytes) else state)
        if len(states) != len(self.iterators):
            raise ValueError(f"the checkpoint holds {len(states)} data streams, this run has {len(self.iterators)} "
                             "models (config.data.objects changed?)")
        for it, s in zip(self.iterators, states):
            it.set_state(s)

    def start_prefetch(self) -> None:
        for it in self.iterators:
            if hasattr(it, "start_prefetch"):
                it.start_prefetch()
