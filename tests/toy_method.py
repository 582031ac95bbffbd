"""A method of the `jcompose.methods.base.Method` protocol small enough to train in a second: least
squares y = x @ w + b on a fixed random source. Used to test the training loop itself (checkpoints,
damage, resume, several processes) without compiling a UNet.

Each example carries its record `index`, so tests can see which records a process read.
"""

import jax
import jax.numpy as jnp
import numpy as np

from configs.common import base_config
from input_pipeline.records import RecordError

IN, OUT = 6, 4


def toy_config(steps: int = 4, **train):
    """A config the trainer accepts for the toy method (batch 4, checkpoints every 2 steps)."""
    c = base_config()
    c.method = "toy"
    c.model.base = "toy"
    c.data.num_records = 40
    c.train.update(batch_size=4, steps=steps, log_every=1, ckpt_every=2, keep=5, sample_count=2, ema_decay=0.5)
    c.train.update(**train)
    c.optim.update(lr=1e-2, weight_decay=0.0)
    return c


class Records:
    """Random-access records {"x": (IN,), "y": (OUT,), "index"}: a pure function of the index (and `stream`).

    `stream` k > 0: another model's data (other values), in which every (k + 2)-th record is unusable
    (RecordError, skipped by the pipeline), so the streams of several models advance at different paces.
    """

    def __init__(self, n: int, stream: int = 0):
        self.n, self.stream = n, stream

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.stream and i % (self.stream + 2) == 0:
            raise RecordError(f"stream{self.stream}/{i}", "unusable (toy)")
        rng = np.random.default_rng(1000 + i + 100_000 * self.stream)
        return {"x": rng.normal(size=IN).astype(np.float32), "y": rng.normal(size=OUT).astype(np.float32),
                "index": i}


class ToyMethod:
    def __init__(self, config):
        self.config = config

    def init(self, workdir):
        rng = np.random.default_rng(0)
        return {"w": rng.normal(size=(IN, OUT)).astype(np.float32)}, {"b": np.ones(OUT, np.float32)}

    def make_source(self):
        return Records(self.config.data.num_records)

    def make_transform(self):
        def transform(record, rng):  # seeded jitter: the transform's rng is part of the stream state
            x = record["x"] + np.float32(0.01) * rng.standard_normal(IN).astype(np.float32)
            return {"x": x, "y": record["y"], "index": np.int64(record["index"])}

        return transform

    def loss(self, params, frozen, batch, rng):
        target = batch["y"] + 0.01 * jax.random.normal(rng, batch["y"].shape)  # the step rng matters too
        mse = jnp.mean((batch["x"] @ params["w"] + frozen["b"] - target) ** 2)
        return mse, {"mse": mse}

    def sample(self, params, frozen, batch, rng):
        values = jnp.tanh(batch["x"] @ params["w"])[:, None, None, :3]
        return jnp.broadcast_to(values, (values.shape[0], 4, 4, 3))


class ToyModels(ToyMethod):
    """Several toy models trained in one program (`num_models` = len(streams)), model k on stream
    `streams[k]` (see `Records`); ToyModels(config, (k,)) is stream k's model trained alone."""

    def __init__(self, config, streams=(0, 1, 2)):
        super().__init__(config)
        self.streams = tuple(streams)
        self.num_models = len(self.streams)
        self.model_names = [f"stream{k}" for k in self.streams]

    def make_source(self, k: int = 0):
        return Records(self.config.data.num_records, self.streams[k])

    def make_transform(self, k: int = 0):
        return super().make_transform()


def light_prefetch():
    """A context in which `jcompose.train` reads data with 1 thread and 2 elements of read-ahead instead of
    grain's 16 threads and 500 elements per iterator: starting those threads took 5 of a toy run's 7 s on
    two busy cores. Read-ahead stays (a checkpoint must still store the consumed position, not the
    prefetched one); batches do not depend on it."""
    import functools
    from unittest import mock

    import grain

    from input_pipeline.pipeline import make_iterator
    from jcompose import train

    light = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    return mock.patch.object(train, "make_iterator", functools.partial(make_iterator, read_options=light))


def use_toy_method(monkeypatch):
    """Makes `jcompose.methods.build` return the toy method for config.method == 'toy'."""
    from jcompose import methods

    build = methods.build
    monkeypatch.setattr(methods, "build", lambda config: ToyMethod(config) if config.method == "toy" else build(config))
