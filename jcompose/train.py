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
import sys
import time
from typing import Any

import jax
import numpy as np
from etils import epath

from configs.common import ConfigError, validate, xla_options
from input_pipeline.pipeline import make_iterator
from input_pipeline.stacked import StackedIterator
from jcompose import atomic, cli, distributed, methods, parallel, run_record, storage, workdir_lock
from jcompose.checkpoint import Checkpointer, CheckpointMismatch, CheckpointWriteError, abstract_like
from jcompose.train_outputs import NullWriter, export_models, mean_metrics, to_host, write_grid
from jcompose.train_state import init_state, make_optimizer, make_sampler, make_step, make_train_step, num_models  # noqa: F401 (public)


class NonFiniteLoss(FloatingPointError):
    """The loss or the gradients became NaN/Inf."""


def check_layout(config, models: int) -> None:
    """The batch must split over the devices; several models need one process and no FSDP (ConfigError)."""
    devices, accum = jax.device_count(), config.train.grad_accum
    if models > 1:
        if jax.process_count() > 1 or config.mesh.fsdp > 1:
            raise ConfigError(f"{models} models in one run (config.data.objects): single-process runs without "
                              "FSDP only (config.mesh.fsdp = 1, no --multihost); train the objects in separate runs")
        if models % devices == 0:
            if config.train.batch_size % accum:
                raise ConfigError(f"config.train.batch_size = {config.train.batch_size}: must divide into "
                                  f"{accum} micro-batches")
            return
    if config.train.batch_size % (devices * accum):
        raise ConfigError(f"config.train.batch_size = {config.train.batch_size}: must divide into {devices} devices x "
                          f"{accum} micro-batches" + (f" (or use a number of models, {models} now, that the "
                                                      f"devices divide)" if models > 1 else ""))


def current_step(state) -> int:
    """The state's step (with several models each has one, all equal)."""
    return int(np.asarray(to_host(state["step"])).reshape(-1)[0])


def _any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process (all must agree to stop at the same step)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(np.array([flag])).any())


def prepare_workdir(workdir: str | epath.PathLike) -> epath.Path:
    """The run folder, created; InputError when it is a file or cannot be written."""
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise cli.InputError(f"--workdir {workdir}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        storage.check_writable(path)
    except OSError as err:
        raise cli.InputError(f"--workdir {workdir}: not writable ({cli.message(err)})") from None
    return path


def _mismatch_hint(err: CheckpointMismatch, config) -> str:
    """The config fields that usually explain a checkpoint that does not fit."""
    text, hints = str(err), []
    if "ema: only in the checkpoint" in text:
        hints.append("the run was trained with EMA: set --config.train.ema_decay to its value")
    if "ema: only in this config" in text:
        hints.append(f"this config has train.ema_decay = {config.train.ema_decay}, the run had no EMA")
    if "params." in text or "opt_state." in text:
        hints.append(f"the trained modules differ: check config.method ({config.method!r}) and config.model")
    return f"{text} ({'; '.join(hints)})" if hints else text


def train(config, workdir, method=None, *, lock_lease: float = workdir_lock.DEFAULT_LEASE_S) -> dict[str, Any]:
    """Runs (or resumes) training in `workdir` (local or gs://); returns the last logged metrics and step.

    `method`: a built method (default: `methods.build(config)`). Every process of a multi-host run
    calls this with the same config; each reads its own shard of the data. The run holds the workdir's
    lock throughout (`lock_lease`: seconds after which another host may take over a silent holder's lock).
    """
    validate(config)
    if not lock_lease > 0:
        raise cli.InputError(f"--lock_lease {lock_lease}: expected a positive number of seconds")
    workdir = prepare_workdir(workdir)
    lock = workdir_lock.acquire_on_process_zero(workdir, lock_lease)
    try:
        return _train(config, workdir, method)
    finally:
        if lock is not None:
            lock.release()


def _train(config, workdir: epath.Path, method) -> dict[str, Any]:
    """`train` inside the held workdir."""
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    chief = jax.process_index() == 0  # writes logs and sample grids
    with cli.input_errors("config.mesh: "):
        mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    with cli.input_errors(f"config.model (base {config.model.base!r}): "):
        method = methods.build(config) if method is None else method
    models = num_models(method)
    check_layout(config, models)
    streams = []

    def make_sources():
        # Built after the models are loaded and before the train state is on the devices: a method that makes
        # its data with its models (DreamCom's prior-preservation class images) has the devices to itself.
        with cli.input_errors("config.data: "):
            streams.extend((method.make_source(k), method.make_transform(k)) if models > 1 else
                           (method.make_source(), method.make_transform()) for k in range(models))

    with cli.input_errors(f"config.model (base {config.model.base!r}): "):
        state, frozen, tx, lr_schedule = init_state(config, method, mesh, str(workdir), before_placement=make_sources)
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    total, most = parallel.bytes_per_device((state, frozen))
    if chief:
        print(f"mesh {dict(mesh.shape)}: params, optimizer state and frozen modules {total / 2**20:.1f} MiB, "
              f"at most {most / 2**20:.1f} MiB per device", flush=True)

    data_options = dict(strict=config.data.get("strict", False),
                        max_consecutive_skips=config.data.get("max_consecutive_skips", 1000))
    # Each model's data seed (a packed sweep's models may each have their own), else config.data.seed.
    data_seeds = getattr(method, "data_seeds", None) or [config.data.seed] * models

    def iterator(batch_size: int, seed_offset: int, **sharding):
        its = [make_iterator(src, fn, per_process_batch=batch_size, seed=seed + seed_offset, **sharding,
                             **data_options) for (src, fn), seed in zip(streams, data_seeds, strict=True)]
        return its[0] if models == 1 else StackedIterator(its)

    data = iterator(config.train.batch_size // jax.process_count(), 0,
                    process_index=jax.process_index(), process_count=jax.process_count(),
                    worker_count=config.data.worker_count)
    checkpoints = Checkpointer(workdir, keep=config.train.keep, keep_best=config.train.keep_best,
                               best_metric=config.train.best_metric, best_mode=config.train.best_mode, writer=True)
    try:
        checkpoints.check_writable()  # before any step: a read-only folder is found now, not at the first save
        with storage.write_errors(checkpoints, "before the first step"):
            run_record.record(config, workdir, resuming=bool(checkpoints.steps()), write=chief)
    except (ConfigError, CheckpointWriteError):
        checkpoints.close()
        raise
    try:
        restored = checkpoints.restore_latest(abstract_like(state), data)
    except CheckpointMismatch as err:
        checkpoints.close()
        raise CheckpointMismatch(_mismatch_hint(err, config)) from None
    if restored is not None:
        step0, state = restored
        if chief:
            print(f"resuming from {checkpoints.directory} at step {step0}", flush=True)
    start = current_step(state)

    metric_sharding = parallel.replicated(mesh) if models == 1 else jax.sharding.NamedSharding(
        mesh, parallel.model_axis_spec(mesh, models))
    train_step = jax.jit(make_step(method, tx, config, mesh), donate_argnums=(0,), out_shardings=(
        state_shardings, metric_sharding), compiler_options=xla_options(config.train.get("xla_options", "")) or None)
    sample_fn = jax.jit(make_sampler(method, mesh))
    writer = SummaryWriter(str(workdir / "tb")) if chief else NullWriter()
    writer.add_text("config", run_record.summary(config), start)
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    peak = parallel.peak_flops()
    flops_per_step = compiled = None
    metrics: dict[str, float] = {}
    window: list[dict] = []  # device-side step metrics since the last log
    last_saved = start if restored is not None else None

    # A fixed batch of conditions for sample grids, separate from the training stream (the same on
    # every process, so it is placed replicated over the whole mesh).
    sample_host = next(iterator(config.train.sample_count, 1))
    sample_batch = parallel.put_replicated({k: np.asarray(v) for k, v in sample_host.items()}, mesh)
    write_examples = getattr(method, "write_example_inputs", None)  # optional part of the Method protocol
    if chief and write_examples is not None and not (workdir / "example").exists():
        with atomic.folder(workdir / "example") as partial:  # inputs for a first `compose` (README quick starts)
            write_examples(sample_host, partial)

    def save(step: int) -> None:
        nonlocal last_saved
        ranked = {config.train.best_metric: metrics[config.train.best_metric]} if (
            config.train.best_metric in metrics) else None
        checkpoints.save(step, state, data, metrics=ranked, force=True)
        last_saved = step

    def check_finite(step: int) -> None:
        nonfinite = int(np.sum(to_host(state["nonfinite"])))
        if nonfinite > 0:
            checkpoints.wait()
            good = f"step {last_saved} in {checkpoints.directory}" if last_saved is not None else "none yet"
            raise NonFiniteLoss(f"loss or gradients became NaN/Inf before step {step} "
                                f"({nonfinite} step(s) skipped); last good checkpoint: {good}. "
                                "Lower optim.lr, enable clipping, or check the data.")

    def write_samples(step: int) -> None:
        images = sample_fn(state["params"], frozen, sample_batch, jax.random.PRNGKey(step))
        if not chief:
            return
        grid = write_grid(to_host(images), workdir / "samples" / f"step_{step:07d}.png")  # a row per model
        writer.add_image("samples", grid, step, dataformats="HWC")

    bar = tqdm(range(start, config.train.steps), initial=start, total=config.train.steps, desc="train",
               unit="step", dynamic_ncols=True, disable=not chief)
    tick, tick_step = time.perf_counter(), start
    done, finished = start, False
    try:
        for step in bar:
            batch = parallel.global_batch(next(data), mesh) if models == 1 else parallel.model_batch(next(data), mesh)
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
                metrics, window = mean_metrics(window, getattr(method, "model_names", None)), []
                elapsed = time.perf_counter() - tick
                metrics["img_per_s"] = (done - tick_step) * config.train.batch_size * models / max(elapsed, 1e-9)
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
                    atomic.write_text(workdir / "metrics.json", json.dumps({"step": done, **metrics}))
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['img_per_s']:.1f}")
                tick, tick_step = time.perf_counter(), done
            if done % config.train.ckpt_every == 0 or done == config.train.steps:
                check_finite(done)
                save(done)
            if config.train.sample_every > 0 and done % config.train.sample_every == 0:
                write_samples(done)
            # Every process stops at the same step: with several, they agree at each log step.
            stopping = stop["signal"] is not None
            if jax.process_count() > 1:
                stopping = done % config.train.log_every == 0 and _any_process(stopping)
            if stopping:
                check_finite(done)
                if last_saved != done:
                    save(done)
                print(f"stopped by signal {stop['signal'] or 'on another process'} at step {done}; "
                      "checkpoint saved", flush=True)
                break
        else:
            if config.train.sample_every >= 0 and (config.train.steps > start or not (workdir / "samples").exists()):
                write_samples(config.train.steps)
            if chief and config.train.get("export", False):  # methods.build refused it where there is no export
                export_models(method, state["params"], workdir / "export", models)
        finished = True
    except OSError as err:  # a full or read-only disk met by a log, metrics.json or a sample grid
        fault = storage.write_failure(err)
        if fault is None or (fault == storage.DENIED and not str(err.filename or workdir).startswith(str(workdir))):
            raise  # not a write of this run (a data file it may not read is the input pipeline's error)
        raise checkpoints.write_error(f"could not write {err.filename or workdir} after step {done}", fault) from err
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)
        storage.close_outputs(checkpoints, writer, workdir, quiet=not finished)
    return {"step": current_step(state), **metrics}


def prepare_data(config, workdir, *, lock_lease: float = workdir_lock.DEFAULT_LEASE_S) -> None:
    """`--prepare_only`: builds the run's training sources (the data a method makes before training, such as
    DreamCom's prior-preservation class images) on every device, and stops before any training step."""
    validate(config)
    workdir = prepare_workdir(workdir)
    lock = workdir_lock.acquire_on_process_zero(workdir, lock_lease)
    try:
        with cli.input_errors(f"config.model (base {config.model.base!r}): "):
            method = methods.build(config)
            method.init(str(workdir))
        models = num_models(method)
        with cli.input_errors("config.data: "):
            for k in range(models):
                method.make_source(k) if models > 1 else method.make_source()
    finally:
        if lock is not None:
            lock.release()


def _define_flags(values, argv: list[str]) -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configs/<method>.py[:variant]", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "run directory: checkpoints, TensorBoard logs, samples", flag_values=values)
    flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() (TPU pods, multi-node GPU)",
                      flag_values=values)
    flags.DEFINE_string("coordinator_address", None, "with --multihost: host:port of process 0, where the "
                        "platform does not provide it (default: detected)", flag_values=values)
    flags.DEFINE_integer("num_processes", None, "with --multihost: number of processes (default: detected)",
                         flag_values=values)
    flags.DEFINE_integer("process_id", None, "with --multihost: this process's index (default: detected)",
                         flag_values=values)
    flags.DEFINE_float("lock_lease", workdir_lock.DEFAULT_LEASE_S, "seconds without a heartbeat after which "
                       "another host may take over this run's workdir lock (shared storage such as gs://)",
                       flag_values=values)
    flags.DEFINE_bool("prepare_only", False, "prepare the run's training data and stop (DreamCom with "
                      "config.train.prior.enabled: generate the missing class images)", flag_values=values)
    flags.DEFINE_bool("debug", False, f"show the traceback of input errors too (or set {cli.DEBUG_ENV}=1)",
                      flag_values=values)


def main(argv: list[str]) -> int:
    """`python -m jcompose.train` (argv without the program name); input errors raise InputError & co."""
    from absl import logging

    values = cli.parse_absl_flags(argv, _define_flags, prog="python -m jcompose.train")
    if values.config is None or not values.workdir:
        raise cli.InputError("--config=configs/<method>.py[:variant] and --workdir=DIR are required")
    if "verbosity" not in values or not values["verbosity"].present:  # orbax logs every save at INFO; keep the console to tqdm
        logging.set_verbosity(logging.WARNING)
    if values.multihost:
        distributed.start(values.coordinator_address, values.num_processes, values.process_id)
    elif any(values[name].present for name in ("coordinator_address", "num_processes", "process_id")):
        raise cli.InputError("--coordinator_address / --num_processes / --process_id need --multihost")
    if values.prepare_only:
        prepare_data(values.config, values.workdir, lock_lease=values.lock_lease)
        print(f"prepared the training data of {values.workdir}")
        return 0
    result = train(values.config, values.workdir, lock_lease=values.lock_lease)
    print("done: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
