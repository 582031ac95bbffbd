"""AnyScene helpers shared by the test files that train tiny runs: the run config, a held-out batch
from fresh synthetic data, a run's newest checkpoint, and held-out errors per timestep."""

import jax
import jax.numpy as jnp
import numpy as np
from forced_devices import LONG_RUN_XLA_OPTIONS

from configs.anyscene import get_config
from input_pipeline.sources.coco import CocoSource
from input_pipeline.sources.synthetic import write_synthetic


def heldout_batch(method, root):
    truth = write_synthetic(root, num_images=8, num_videos=1, num_frames=2, image_size=(64, 80), seed=123)
    coco = truth.coco_dir
    source = CocoSource(coco / "images", coco / "annotations/instances.json", coco / "annotations/captions.json")
    transform = method.make_transform()
    examples = [transform(source[i], np.random.default_rng(i)) for i in range(len(source))]
    return {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}


def run_config():
    config = get_config("tiny")
    config.sample.steps = 2
    config.train.ema_decay = 0.9  # so compose --ema has EMA params to use
    config.train.xla_options = LONG_RUN_XLA_OPTIONS  # 60-150 steps: the step at -O1 runs 1.5x faster than -O0
    return config


def latest_state(workdir):
    from jcompose.checkpoint import Checkpointer

    checkpoints = Checkpointer(workdir)
    state, _ = checkpoints.read(max(checkpoints.steps()))
    checkpoints.close()
    return state


def heldout_errors(method, frozen, timesteps):
    """(params, batch) -> (content, mse) per timestep, each the mean over 3 keys."""
    @jax.jit
    def terms(params, batch, key):
        latents, noise, _ = method.draw(frozen, batch, key)

        def at(step):  # one trace for all timesteps
            m = method.loss_terms(params, frozen, batch, latents, noise, jnp.full((latents.shape[0],), step))[1]
            return jnp.stack([m["content"], m["mse"]])

        return jax.lax.map(at, jnp.array(timesteps))

    def errors(params, batch):
        values = np.mean([terms(params, batch, jax.random.PRNGKey(k)) for k in range(3)], axis=0)
        return values[:, 0], values[:, 1]

    return errors
