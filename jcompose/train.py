"""Training: `python -m jcompose.train --config=configs/<method>.py[:variant] --workdir=DIR`.

One loop for every method: the method's loss under a `jax.jit` step over a ('data', 'fsdp') mesh
(batch sharded, params replicated, state donated), optax AdamW with clipping, optional gradient
accumulation, remat and EMA; orbax checkpoints of the state and the grain iterator every
`train.ckpt_every` steps, automatic resume from the workdir, a checkpoint on SIGTERM
(preemption); tqdm progress; TensorBoard scalars (loss terms, lr, grad norm, img/s, MFU) and
sample grids (also written as PNG). A step whose loss or gradients are not finite is not applied,
and the run stops with a message naming the last good checkpoint.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from configs.common import validate
from input_pipeline.pipeline import make_iterator
from jcompose import methods, parallel
from jcompose.checkpoint import Checkpointer, abstract_like

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<method>.py[:variant]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, TensorBoard logs, samples")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() (TPU pods, multi-node GPU)")


class NonFiniteLoss(FloatingPointError):
    """The loss or the gradients became NaN/Inf."""


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    o = config.optim
    if o.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, o.lr, max(o.warmup_steps, 1), config.train.steps)
    else:
        lr = optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), optax.constant_schedule(o.lr)],
                                  [o.warmup_steps]) if o.warmup_steps else optax.constant_schedule(o.lr)
    tx = optax.chain(
        optax.clip_by_global_norm(o.clip_norm) if o.clip_norm else optax.identity(),
        optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay),
    )
    return tx, lr


def make_train_step(method, tx, config):
    """(state, frozen, batch) -> (state, metrics): one optimizer step over `grad_accum` micro-batches."""
    accum = config.train.grad_accum
    ema_decay = config.train.ema_decay

    def loss_fn(params, frozen, batch, rng):
        return method.loss(params, frozen, batch, rng)

    if config.train.remat:
        loss_fn = jax.checkpoint(loss_fn)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state, frozen, batch):
        rng, step_rng = jax.random.split(state["rng"])
        if accum == 1:
            (loss, metrics), grads = grad_fn(state["params"], frozen, batch, step_rng)
        else:
            micro = jax.tree_util.tree_map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)

            def body(carry, inputs):
                micro_batch, key = inputs
                (loss, metrics), grads = grad_fn(state["params"], frozen, micro_batch, key)
                return jax.tree_util.tree_map(jnp.add, carry, (loss, metrics, grads)), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
                lambda: grad_fn(state["params"], frozen, jax.tree_util.tree_map(lambda x: x[0], micro), step_rng)))
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            total, _ = jax.lax.scan(body, zeros, (micro, jax.random.split(step_rng, accum)))
            loss, metrics, grads = jax.tree_util.tree_map(lambda x: x / accum, total)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = dict(state, params=params, opt_state=opt_state)
        if ema_decay:
            new["ema"] = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], params)
        # A non-finite step is not applied (params, optimizer and EMA stay), only counted.
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
        new.update(step=state["step"] + 1, rng=rng, nonfinite=state["nonfinite"] + (~finite).astype(jnp.int32))
        return new, dict(metrics, loss=loss, grad_norm=grad_norm)

    return step


def _write_grid(images: np.ndarray, path: epath.Path) -> np.ndarray:
    """(N, H, W, 3) in [-1, 1] -> one row of uint8 tiles, saved as PNG; returns the grid (H, N*W, 3)."""
    from PIL import Image

    grid = np.concatenate(list(((np.asarray(images) + 1) * 127.5).clip(0, 255).astype(np.uint8)), axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        Image.fromarray(grid).save(f, format="PNG")
    return grid


class _NullWriter:
    """Stands in for the TensorBoard writer on hosts other than process 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _mean_metrics(window: list[dict]) -> dict[str, float]:
    """Per-key means of the step metrics since the last log (one device->host transfer)."""
    host = jax.device_get(window)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def init_state(config, method, mesh, workdir: str):
    """The method's models as a fresh train state and frozen tree, placed on the mesh.

    Returns (state, frozen, tx, lr_schedule). state = {step, params, opt_state, rng, nonfinite[, ema]};
    params, optimizer moments, EMA and frozen modules are replicated, or split over 'fsdp'.
    """
    params, frozen = method.init(workdir)
    # The step donates the state's buffers: params and EMA get their own copies, so none aliases
    # another state leaf or a frozen module (a method may hand out views of loaded weights).
    params = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)
    tx, lr_schedule = make_optimizer(config)
    state = {"step": jnp.array(0, jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.PRNGKey(config.seed), "nonfinite": jnp.array(0, jnp.int32)}
    if config.train.ema_decay:
        state["ema"] = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)
    state = jax.device_put(state, parallel.fsdp_shardings(state, mesh, config.mesh.fsdp_min_size))
    frozen = jax.device_put(frozen, parallel.fsdp_shardings(frozen, mesh, config.mesh.fsdp_min_size))
    return state, frozen, tx, lr_schedule


def train(config, workdir) -> dict[str, Any]:
    """Runs (or resumes) training in `workdir` (local or gs://); returns the last logged metrics and step."""
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    validate(config)
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    chief = jax.process_index() == 0  # writes logs and sample grids
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    if config.train.batch_size % (jax.device_count() * config.train.grad_accum):
        raise ValueError(f"config.train.batch_size = {config.train.batch_size}: must divide into "
                         f"{jax.device_count()} devices x {config.train.grad_accum} micro-batches")

    method = methods.build(config)
    state, frozen, tx, lr_schedule = init_state(config, method, mesh, str(workdir))
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    total, most = parallel.bytes_per_device((state, frozen))
    print(f"mesh {dict(mesh.shape)}: params, optimizer state and frozen modules {total / 2**20:.1f} MiB, "
          f"at most {most / 2**20:.1f} MiB per device", flush=True)

    data = make_iterator(method.make_source(), method.make_transform(),
                         per_process_batch=config.train.batch_size // jax.process_count(), seed=config.data.seed,
                         process_index=jax.process_index(), process_count=jax.process_count(),
                         worker_count=config.data.worker_count)
    checkpoints = Checkpointer(workdir, keep=config.train.keep, keep_best=config.train.keep_best,
                               best_metric=config.train.best_metric, best_mode=config.train.best_mode)
    restored = checkpoints.restore_latest(abstract_like(state), data)
    if restored is not None:
        step0, state = restored
        print(f"resuming from {checkpoints.directory} at step {step0}", flush=True)
    start = int(state["step"])

    train_step = jax.jit(make_train_step(method, tx, config), donate_argnums=(0,),
                         out_shardings=(state_shardings, parallel.replicated(mesh)))
    sample_fn = jax.jit(method.sample)
    writer = SummaryWriter(str(workdir / "tb")) if chief else _NullWriter()
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    peak = parallel.peak_flops()
    flops_per_step = compiled = None
    metrics: dict[str, float] = {}
    window: list[dict] = []  # device-side step metrics since the last log
    last_saved = start if restored is not None else None

    # A fixed batch of conditions for sample grids, separate from the training stream.
    sample_data = make_iterator(method.make_source(), method.make_transform(),
                                per_process_batch=config.train.sample_count, seed=config.data.seed + 1)
    sample_batch = {k: jnp.asarray(v) for k, v in next(sample_data).items()}

    def save(step: int) -> None:
        nonlocal last_saved
        ranked = {config.train.best_metric: metrics[config.train.best_metric]} if (
            config.train.best_metric in metrics) else None
        checkpoints.save(step, state, data, metrics=ranked, force=True)
        last_saved = step

    def check_finite(step: int) -> None:
        if int(state["nonfinite"]) > 0:
            checkpoints.wait()
            good = f"step {last_saved} in {checkpoints.directory}" if last_saved is not None else "none yet"
            raise NonFiniteLoss(f"loss or gradients became NaN/Inf before step {step} "
                                f"({int(state['nonfinite'])} step(s) skipped); last good checkpoint: {good}. "
                                "Lower optim.lr, enable clipping, or check the data.")

    def write_samples(step: int) -> None:
        images = sample_fn(state["params"], frozen, sample_batch, jax.random.PRNGKey(step))
        if not chief:
            return
        grid = _write_grid(images, workdir / "samples" / f"step_{step:07d}.png")
        writer.add_image("samples", grid, step, dataformats="HWC")

    bar = tqdm(range(start, config.train.steps), initial=start, total=config.train.steps, desc="train",
               unit="step", dynamic_ncols=True)
    tick, tick_step = time.perf_counter(), start
    try:
        for step in bar:
            batch = parallel.global_batch(next(data), mesh)
            if compiled is None:  # compile once, ahead of time, and read its FLOP count for MFU
                compiled = train_step.lower(state, frozen, batch).compile()
                analysis = compiled.cost_analysis()
                analysis = analysis[0] if isinstance(analysis, list) else analysis
                flops_per_step = float((analysis or {}).get("flops", 0.0)) or None
                tick = time.perf_counter()
            state, step_metrics = compiled(state, frozen, batch)
            window.append(step_metrics)
            done = step + 1
            if done % config.train.log_every == 0 or done == config.train.steps:
                check_finite(done)
                metrics, window = _mean_metrics(window), []
                elapsed = time.perf_counter() - tick
                metrics["img_per_s"] = (done - tick_step) * config.train.batch_size / max(elapsed, 1e-9)
                metrics["lr"] = float(lr_schedule(done))
                if flops_per_step and peak:
                    achieved = flops_per_step * (done - tick_step) / max(elapsed, 1e-9)
                    metrics["mfu"] = achieved / (peak * jax.device_count())
                skipped = getattr(data, "skipped", None)  # records the input pipeline dropped (RecordError)
                if skipped is not None:
                    metrics["skipped_records"] = float(skipped.count)
                for key, value in metrics.items():
                    writer.add_scalar(f"train/{key}", value, done)
                if chief:  # the latest logged metrics, for sweeps and scripts (history is in TensorBoard)
                    (workdir / "metrics.json").write_text(json.dumps({"step": done, **metrics}))
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['img_per_s']:.1f}")
                tick, tick_step = time.perf_counter(), done
            if done % config.train.ckpt_every == 0 or done == config.train.steps:
                check_finite(done)
                save(done)
            if config.train.sample_every and done % config.train.sample_every == 0:
                write_samples(done)
            if stop["signal"] is not None:
                check_finite(done)
                if last_saved != done:
                    save(done)
                print(f"stopped by signal {stop['signal']} at step {done}; checkpoint saved", flush=True)
                break
        else:
            if config.train.steps > start or not (workdir / "samples").exists():
                write_samples(config.train.steps)
    finally:
        bar.close()
        checkpoints.close()
        writer.close()
        signal.signal(signal.SIGTERM, previous)
    return {"step": int(state["step"]), **metrics}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console to tqdm
        logging.set_verbosity(logging.WARNING)
    if _MULTIHOST.value:
        jax.distributed.initialize()
    result = train(_CONFIG.value, _WORKDIR.value)
    print("done: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    app.run(main)
