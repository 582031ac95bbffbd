"""Training engine reliability: exact resume, SIGTERM, damaged checkpoints, data-parallel equivalence."""

import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import forced_devices
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from configs import common
from configs.denoise import get_config
from jcompose import train
from jcompose.checkpoint import Checkpointer, CheckpointError, abstract_like

REPO = Path(__file__).resolve().parents[1]


def _small(steps, **train):
    config = get_config("tiny")
    config.data.image_size = 32
    # EMA on: its state must survive donation, checkpoints and resume like the params.
    config.train.update(batch_size=4, steps=steps, log_every=1, ckpt_every=2, sample_count=2, ema_decay=0.9,
                        **train)
    config.sample.steps = 2
    return config


def _params(workdir):
    ckpt = Checkpointer(workdir)
    step = ckpt.steps()[-1]
    state, _ = ckpt.read(step)
    ckpt.close()
    trained = {"params": state["params"], **({"ema": state["ema"]} if "ema" in state else {})}
    return step, {k: np.asarray(v) for k, v in flatten_dict(trained).items()}


@pytest.mark.slow
def test_resume_is_exact(tmp_path, capsys):
    """The run's folder without its step-4 checkpoint (a run killed after step 3), resumed: the same bits."""
    straight = train.train(_small(4), tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    resumed = train.train(_small(4), tmp_path / "b")
    assert "at step 2" in capsys.readouterr().out  # resumed, not trained again from step 0
    assert straight["step"] == resumed["step"] == 4
    assert straight["loss"] == resumed["loss"]  # same data order and rng
    step_a, a = _params(tmp_path / "a")
    step_b, b = _params(tmp_path / "b")
    assert step_a == step_b == 4 and a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    ema_kernel = next(k for k in a if k[0] == "ema" and k[-1] == "kernel")
    assert not np.array_equal(a[ema_kernel], a[("params",) + ema_kernel[1:]])  # the EMA is tracked separately
    assert list((tmp_path / "a" / "tb").iterdir())  # TensorBoard event file
    assert list((tmp_path / "a" / "samples").glob("*.png"))


@pytest.mark.slow
def test_sigterm_leaves_a_restorable_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    # `_small`'s settings (the same compiled step, from the suite's shared cache), run until stopped.
    cmd = [sys.executable, "-m", "jcompose.train", "--config=configs/denoise.py:tiny", f"--workdir={workdir}",
           "--config.data.image_size=32", "--config.train.steps=100000", "--config.train.ckpt_every=100000",
           "--config.train.log_every=1", "--config.train.batch_size=4", "--config.train.sample_count=2",
           "--config.train.ema_decay=0.9", "--config.sample.steps=2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.time() + 600
    while "loss=" not in seen and time.time() < deadline:  # wait until steps are running
        seen += proc.stdout.read(1) or ""
        if proc.poll() is not None:
            break
    assert "loss=" in seen, seen[-2000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, (seen + out)[-3000:]
    assert "stopped by signal" in out
    ckpt = Checkpointer(workdir)
    steps = ckpt.steps()
    assert steps and 0 < steps[-1] < 100000
    state, data_state = ckpt.read(steps[-1])
    assert int(state["step"]) == steps[-1] and data_state
    ckpt.close()


def _numbers():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def test_damaged_checkpoints_fall_back_or_fail_clearly(tmp_path):
    state = {"step": jnp.array(0), "w": jnp.arange(6.0).reshape(2, 3)}
    ckpt = Checkpointer(tmp_path, keep=5, async_save=False)
    data = _numbers()
    for step in (1, 2):
        next(data)
        ckpt.save(step, dict(state, step=jnp.array(step)), data)
    ckpt.close()
    for f in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):  # damage the newest
        if f.is_file():
            f.write_bytes(b"garbage")
    ckpt = Checkpointer(tmp_path)
    data = _numbers()
    step, restored = ckpt.restore_latest(abstract_like(state), data)
    assert step == 1 and int(restored["step"]) == 1 and next(data) == 1  # the iterator resumes after 1 item
    assert ckpt.steps() == [1] and (tmp_path / "checkpoints" / "damaged" / "2").is_dir()  # set aside
    for f in (tmp_path / "checkpoints" / "1" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"checkpoints: no readable checkpoint: steps \[1\] were damaged"):
        ckpt.restore_latest(abstract_like(state), _numbers())
    ckpt.close()
    assert Checkpointer(tmp_path / "empty").restore_latest(abstract_like(state), _numbers()) is None


def test_keeps_newest_and_best_checkpoints(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2, keep_best=2, best_metric="loss", best_mode="min", async_save=False)
    losses = {1: 0.5, 2: 1.0, 3: 4.0, 4: 5.0, 5: 3.0, 6: 6.0}
    for step, loss in losses.items():
        ckpt.save(step, {"w": jnp.full(3, loss)}, _numbers(), metrics={"loss": loss})
    ckpt.close()
    assert Checkpointer(tmp_path).steps() == [1, 2, 5, 6]  # best two (0.5, 1.0) + newest two, nothing else
    newest = Checkpointer(tmp_path / "newest", keep=2, async_save=False)
    for step in range(1, 6):
        newest.save(step, {"w": jnp.full(3, step)}, _numbers())
    newest.close()
    assert Checkpointer(tmp_path / "newest").steps() == [4, 5]


def test_config_errors_name_the_field():
    config = get_config("tiny")
    config.train.grad_accum = 3
    expected = r"config.train.grad_accum = 3: expected a positive divisor of train.batch_size \(8\)"
    with pytest.raises(ValueError, match=expected):
        common.validate(config)
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        get_config("huge")
    config = get_config("tiny")
    config.train.xla_options = "--xla_backend_optimization_level=1 xla_cpu_fast_math"
    with pytest.raises(ValueError, match=r"config.train.xla_options = .*'xla_cpu_fast_math' is not --xla_<name>=<value>"):
        common.validate(config)
    assert common.xla_options("--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=TRUE "
                              "--xla_dump_to=/tmp/x") == {"xla_backend_optimization_level": 1,
                                                          "xla_llvm_disable_expensive_passes": True,
                                                          "xla_dump_to": "/tmp/x"}


def test_non_finite_step_is_not_applied():
    class Linear:
        def loss(self, params, frozen, batch, rng):
            return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2), {}

    config = get_config("tiny")
    config.train.ema_decay = 0.5
    tx, _ = train.make_optimizer(config)
    params = {"w": jnp.ones((3, 2))}
    state = {"step": jnp.array(0), "params": params, "opt_state": tx.init(params), "rng": jax.random.PRNGKey(0),
             "nonfinite": jnp.array(0), "ema": params}
    step = jax.jit(train.make_train_step(Linear(), tx, config))
    good = {"x": jnp.ones((4, 3)), "y": jnp.zeros((4, 2))}
    state, _ = step(state, {}, good)
    assert int(state["nonfinite"]) == 0 and not np.allclose(state["params"]["w"], 1.0)
    before = jax.tree_util.tree_map(np.asarray, state)
    state, metrics = step(state, {}, {"x": good["x"], "y": good["y"].at[0, 0].set(jnp.nan)})
    assert not np.isfinite(float(metrics["loss"]))
    assert int(state["nonfinite"]) == 1 and int(state["step"]) == 2
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(before["params"]), leaves(state["params"]), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    np.testing.assert_array_equal(before["ema"]["w"], np.asarray(state["ema"]["w"]))


_FSDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from configs.denoise import get_config
    from jcompose import train
    config = get_config("tiny")
    config.data.image_size = 32
    config.train.update(batch_size=4, steps=2, log_every=1, ckpt_every=2, sample_count=2, ema_decay=0.9)
    config.sample.steps = 2
    config.mesh.update(fsdp=2, fsdp_min_size=1024)  # the tiny UNet's kernels are small
    train.train(config, sys.argv[1])
    """
)


@pytest.mark.slow
def test_fsdp_run_resumes_on_another_device_count(tmp_path, capsys):
    """2 steps on 4 devices (data 2 x fsdp 2, params split), then resumed on this 1-device process."""
    workdir = tmp_path / "run"
    run = subprocess.run([sys.executable, "-c", _FSDP_SCRIPT, str(workdir)], cwd=REPO, capture_output=True,
                         text=True, timeout=600, env=forced_devices.env(4), check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    mesh_line = next(line for line in run.stdout.splitlines() if line.startswith("mesh "))
    total, most = (float(x) for x in re.findall(r"([\d.]+) MiB", mesh_line))
    assert "'data': 2, 'fsdp': 2" in mesh_line and most < 0.75 * total, mesh_line  # really sharded

    ckpt = Checkpointer(workdir)
    saved, data_state = ckpt.read(2)
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(-1, 1), ("data", "fsdp"))
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(mesh, jax.P())), saved)
    step, restored = ckpt.restore_latest(target, _numbers())
    ckpt.close()
    assert step == 2 and len(jax.devices()) == 1
    for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # resharded 4 -> 1 device, bit for bit

    resumed = train.train(_small(4), workdir)
    assert "at step 2" in capsys.readouterr().out
    assert resumed["step"] == 4 and np.isfinite(resumed["loss"])


class _LeastSquares:
    """loss = mean((x @ w - y)^2): deterministic (no rng), gradient known in closed form."""

    def loss(self, params, frozen, batch, rng):
        return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2), {}


def _least_squares_problem(seed=0, n=8):
    rng = np.random.default_rng(seed)
    batch = {"x": rng.normal(size=(n, 5)).astype(np.float32), "y": rng.normal(size=(n, 3)).astype(np.float32)}
    return batch, rng.normal(size=(5, 3)).astype(np.float32)


def _state(tx, w):
    params = {"w": jnp.asarray(w)}
    return {"step": jnp.array(0), "params": params, "opt_state": tx.init(params), "rng": jax.random.PRNGKey(0),
            "nonfinite": jnp.array(0)}


def test_grad_accumulation_equals_one_big_batch():
    """4 micro-batches of 2 = one batch of 8: same loss, gradient norm and update (a missing / accum
    would double the first two; AdamW's update alone would not show it)."""
    batch, w = _least_squares_problem()
    results = {}
    for accum in (1, 2, 4):
        config = get_config("tiny")
        config.train.grad_accum = accum
        tx, _ = train.make_optimizer(config)
        step = jax.jit(train.make_train_step(_LeastSquares(), tx, config))
        state, metrics = step(_state(tx, w), {}, batch)
        state, metrics2 = step(state, {}, batch)
        results[accum] = (np.asarray(state["params"]["w"]), [float(m[k]) for m in (metrics, metrics2)
                                                             for k in ("loss", "grad_norm")])
    err = batch["x"] @ w - batch["y"]
    np.testing.assert_allclose(results[1][1][0], np.mean(err.astype(np.float64) ** 2), rtol=1e-6)
    grad = 2 * batch["x"].T.astype(np.float64) @ err / err.size
    np.testing.assert_allclose(results[1][1][1], np.linalg.norm(grad), rtol=1e-5)
    for accum in (2, 4):
        np.testing.assert_allclose(results[accum][1], results[1][1], rtol=1e-5, err_msg=f"accum {accum}")
        np.testing.assert_allclose(results[accum][0], results[1][0], rtol=0, atol=1e-6, err_msg=f"accum {accum}")


class _NoiseGradient:
    """loss = sum(w * n) with n ~ N(0, 1) drawn from the step's key: the gradient is the draw itself."""

    def loss(self, params, frozen, batch, rng):
        return jnp.sum(params["w"] * jax.random.normal(rng, params["w"].shape)) + 0.0 * jnp.sum(batch["x"]), {}


def test_grad_accumulation_draws_independent_keys_per_micro_batch():
    """Each micro-batch gets its own key: the accumulated gradient of `_NoiseGradient` is the mean of A
    independent N(0, 1) draws, so |g|^2 ~ n / A (n = 4096 weights: within 10% with overwhelming
    probability); one key reused for every micro-batch would give |g|^2 ~ n. Steps draw anew too."""
    n, accum = 4096, 8
    batch = {"x": np.ones((16, 1), np.float32)}
    config = get_config("tiny")
    config.train.grad_accum = accum
    config.optim.update(clip_norm=0.0, lr=0.0)  # nothing moves: only the gradients are of interest
    tx, _ = train.make_optimizer(config)
    step = jax.jit(train.make_train_step(_NoiseGradient(), tx, config))
    state = _state(tx, np.zeros((64, 64), np.float32))
    norms = []
    for _ in range(2):
        state, metrics = step(state, {}, batch)
        norms.append(float(metrics["grad_norm"]) ** 2 * accum / n)
    print(f"grad_accum {accum}: |g|^2 * A / n over two steps = {np.round(norms, 3)} (1 expected)")
    assert all(0.9 < v < 1.1 for v in norms), norms
    assert norms[0] != norms[1]  # the step key advanced


def test_ema_is_the_exponential_average_of_the_params():
    """EMA starts at the initial params and after each step becomes decay * ema + (1 - decay) * params
    (the new params), checked in float64 over three steps of the real train step."""
    config = get_config("tiny")
    config.train.ema_decay = 0.75
    config.optim.lr = 0.1
    tx, _ = train.make_optimizer(config)
    batch, w0 = _least_squares_problem(seed=2)
    step = jax.jit(train.make_train_step(_LeastSquares(), tx, config))
    state = dict(_state(tx, w0), ema={"w": jnp.asarray(w0)})
    ema = w0.astype(np.float64)
    for t in range(3):
        state, _ = step(state, {}, batch)
        ema = 0.75 * ema + 0.25 * np.asarray(state["params"]["w"], np.float64)
        np.testing.assert_allclose(np.asarray(state["ema"]["w"]), ema, rtol=1e-6, atol=1e-7, err_msg=f"step {t}")
    assert np.abs(ema - np.asarray(state["params"]["w"])).max() > 1e-3  # the EMA lags the params


def _hand_lr(t, peak, warmup, total, schedule):
    """The schedule as the README states it: linear warm-up from 0, then constant or cosine to 0."""
    if t < warmup:
        return peak * t / warmup
    if schedule == "constant":
        return peak
    return peak * 0.5 * (1 + np.cos(np.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize("schedule, warmup", [("constant", 0), ("constant", 3), ("cosine", 3), ("cosine", 0)])
def test_schedules_drive_the_adamw_updates(schedule, warmup):
    """Six steps of the real train step against AdamW with clipping written out in numpy (float64),
    the learning rate from the hand formula at each step."""
    config = get_config("tiny")
    config.train.steps = 8
    config.optim.update(lr=0.05, warmup_steps=warmup, schedule=schedule, weight_decay=0.1, clip_norm=0.5)
    o = config.optim
    tx, lr_schedule = train.make_optimizer(config)
    for t in range(9):
        assert float(lr_schedule(t)) == pytest.approx(_hand_lr(t, o.lr, warmup, 8, schedule), abs=1e-8), t
    batch, w0 = _least_squares_problem(seed=1)
    step = jax.jit(train.make_train_step(_LeastSquares(), tx, config))
    state = _state(tx, w0)
    w, m, v = w0.astype(np.float64), 0.0, 0.0
    x, y = batch["x"].astype(np.float64), batch["y"].astype(np.float64)
    for t in range(6):
        state, _ = step(state, {}, batch)
        g = 2 * x.T @ (x @ w - y) / y.size
        g = g * min(1.0, o.clip_norm / np.linalg.norm(g))
        m = o.b1 * m + (1 - o.b1) * g
        v = o.b2 * v + (1 - o.b2) * g * g
        update = (m / (1 - o.b1 ** (t + 1))) / (np.sqrt(v / (1 - o.b2 ** (t + 1))) + o.eps) + o.weight_decay * w
        w = w - _hand_lr(t, o.lr, warmup, 8, schedule) * update
        np.testing.assert_allclose(np.asarray(state["params"]["w"]), w, rtol=2e-5, atol=2e-6, err_msg=f"step {t}")
    if warmup:  # the first update ran at lr 0: nothing moved but the optimizer moments
        first, _ = step(_state(tx, w0), {}, batch)
        np.testing.assert_array_equal(np.asarray(first["params"]["w"]), w0)
