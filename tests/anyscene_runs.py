"""AnyScene helpers shared by its test files: the tiny method with live conditioning, the run config, a
held-out batch from fresh synthetic data, a run's newest checkpoint, and held-out errors per timestep."""

import jax
import jax.numpy as jnp
import numpy as np
from forced_devices import LONG_RUN_XLA_OPTIONS

from configs.anyscene import get_config
from input_pipeline.sources.coco import CocoSource
from input_pipeline.sources.synthetic import write_synthetic


def tiny_anyscene(workdir):
    """(method, params, frozen, batch of 2 training examples at 64 px, workdir) on the tiny config, with
    F_c's params made to pass the conditioning on (`strong_conditioning`)."""
    from jcompose import methods

    config = get_config("tiny")
    config.data.num_records = 4
    method = methods.build(config)
    params, frozen = method.init(str(workdir))
    source, transform = method.make_source(), method.make_transform()
    examples = [transform(source[i], np.random.default_rng(i)) for i in range(2)]
    batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}
    return method, strong_conditioning(params), frozen, batch, workdir


def strong_conditioning(params):
    """F_c as a trained one behaves: untrained, its output convolutions are zero (residuals exactly 0) and
    its random hint encoder shrinks the conditioning image to almost nothing, so the conditioning could
    not move any loss term (removing the foreground changed the loss by 4e-5 relative). All weights
    perturbed, the hint encoder's output x100 and the zero convolutions at std 0.2: removing the
    foreground moves the denoising loss by ~2% (tests/test_anyscene.py checks it)."""
    params = jax.tree_util.tree_map(lambda x: x + 0.02 * jax.random.normal(jax.random.PRNGKey(x.size % 97), x.shape),
                                    params)
    net = dict(params["controlnet"])
    hint = dict(net["controlnet_cond_embedding"])
    hint["conv_out"] = jax.tree_util.tree_map(lambda x: 100.0 * x, hint["conv_out"])
    net["controlnet_cond_embedding"] = hint
    for name in net:
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
            net[name] = jax.tree_util.tree_map(lambda x: 10.0 * x, net[name])
    return {"controlnet": net}


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
