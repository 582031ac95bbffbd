"""A method of the `jcompose.methods.base.Method` protocol small enough to train in a second: least
squares y = x @ w + b on a fixed random source. Used to test the training loop itself (checkpoints,
damage, resume, several processes) without compiling a UNet.

Each example carries its record `index`, so tests can see which records a process read.
"""

import jax
import jax.numpy as jnp
import numpy as np

from configs.common import base_config

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
    """Random-access records {"x": (IN,), "y": (OUT,), "index"}: a pure function of the index."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(1000 + i)
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


def use_toy_method(monkeypatch):
    """Makes `jcompose.methods.build` return the toy method for config.method == 'toy'."""
    from jcompose import methods

    build = methods.build
    monkeypatch.setattr(methods, "build", lambda config: ToyMethod(config) if config.method == "toy" else build(config))
