"""Training engine reliability: exact resume, SIGTERM, damaged checkpoints, data-parallel equivalence."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from configs import common
from configs.denoise import get_config
from jcompose import train
from jcompose.checkpoint import CheckpointError, Checkpointer, abstract_like

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _compile_cache(tmp_path_factory):
    # Runs of the same config compile the same programs: the persistent cache makes repeats cheap.
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_compilation_cache_dir", None)


def _small(steps, **train):
    config = get_config("tiny")
    config.data.image_size = 32
    config.train.update(batch_size=4, steps=steps, log_every=1, ckpt_every=2, sample_count=2, **train)
    config.sample.steps = 2
    return config


def _params(workdir):
    ckpt = Checkpointer(workdir)
    step = ckpt.steps()[-1]
    state, _ = ckpt.read(step)
    ckpt.close()
    return step, {k: np.asarray(v) for k, v in flatten_dict(state["params"]).items()}


def test_resume_is_exact(tmp_path):
    straight = train.train(_small(4), tmp_path / "a")
    first = train.train(_small(2), tmp_path / "b")
    assert first["step"] == 2 and (tmp_path / "b" / "samples").is_dir()
    resumed = train.train(_small(4), tmp_path / "b")
    assert straight["step"] == resumed["step"] == 4
    assert straight["loss"] == resumed["loss"]  # same data order and rng
    step_a, a = _params(tmp_path / "a")
    step_b, b = _params(tmp_path / "b")
    assert step_a == step_b == 4 and a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    assert list((tmp_path / "a" / "tb").iterdir())  # TensorBoard event file
    assert list((tmp_path / "a" / "samples").glob("*.png"))


def test_sigterm_leaves_a_restorable_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "jcompose.train", "--config=configs/denoise.py:tiny", f"--workdir={workdir}",
           "--config.data.image_size=32", "--config.train.steps=100000", "--config.train.ckpt_every=100000",
           "--config.train.log_every=1"]
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


def test_damaged_checkpoints_fall_back_or_fail_clearly(tmp_path):
    state = {"step": jnp.array(0), "w": jnp.arange(6.0).reshape(2, 3)}
    ckpt = Checkpointer(tmp_path, keep=5, async_save=False)
    for step in (1, 2):
        ckpt.save(step, dict(state, step=jnp.array(step)), {"next_index": step})
    ckpt.close()
    for f in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):  # damage the newest
        if f.is_file():
            f.write_bytes(b"garbage")
    ckpt = Checkpointer(tmp_path)
    step, restored, data = ckpt.restore_latest(abstract_like(state))
    assert step == 1 and int(restored["step"]) == 1 and data == {"next_index": 1}
    for f in (tmp_path / "checkpoints" / "1" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"checkpoints: no readable checkpoint among steps \[1, 2\]"):
        ckpt.restore_latest(abstract_like(state))
    ckpt.close()
    assert Checkpointer(tmp_path / "empty").restore_latest(abstract_like(state)) is None


_DP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh
    from configs.denoise import get_config
    from jcompose import parallel, train

    class Linear:  # a method with the protocol's loss: least squares on the batch
        def loss(self, params, frozen, batch, rng):
            pred = batch["x"] @ params["w"] + frozen["b"]
            return jnp.mean((pred - batch["y"]) ** 2), {}

    config = get_config("tiny")
    config.train.grad_accum = int(sys.argv[1])
    tx, _ = train.make_optimizer(config)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 5)).astype(np.float32), "y": rng.normal(size=(8, 3)).astype(np.float32)}
    params = {"w": jnp.asarray(rng.normal(size=(5, 3)).astype(np.float32))}
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = Mesh(np.array(devices).reshape(len(devices), 1), parallel.BATCH_AXES)
        state = parallel.put_replicated({"step": jnp.array(0), "params": params, "opt_state": tx.init(params),
                                         "rng": jax.random.PRNGKey(0), "nonfinite": jnp.array(0)}, mesh)
        step = jax.jit(train.make_train_step(Linear(), tx, config))
        new, metrics = step(state, parallel.put_replicated({"b": jnp.ones(3)}, mesh), parallel.global_batch(batch, mesh))
        assert len(new["params"]["w"].sharding.device_set) == len(devices)
        results.append((np.asarray(new["params"]["w"]), float(metrics["loss"])))
    (w1, l1), (w4, l4) = results
    print("DIFF", float(np.abs(w1 - w4).max()), abs(l1 - l4), len(jax.devices()))
    """
)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_data_parallel_step_equals_single_device(grad_accum):
    run = subprocess.run([sys.executable, "-c", _DP_SCRIPT, str(grad_accum)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-3000:]
    _, param_diff, loss_diff, devices = run.stdout.strip().splitlines()[-1].split()
    assert int(devices) == 4
    assert float(param_diff) < 1e-6 and float(loss_diff) < 1e-6


def test_config_errors_name_the_field():
    config = get_config("tiny")
    config.train.grad_accum = 3
    with pytest.raises(ValueError, match=r"config.train.grad_accum = 3: expected a positive divisor of train.batch_size \(8\)"):
        common.validate(config)
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        get_config("huge")


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
    for a, b in zip(jax.tree_util.tree_leaves(before["params"]), jax.tree_util.tree_leaves(state["params"])):
        np.testing.assert_array_equal(a, np.asarray(b))
    np.testing.assert_array_equal(before["ema"]["w"], np.asarray(state["ema"]["w"]))
