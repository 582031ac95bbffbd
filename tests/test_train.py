"""Training engine reliability: exact resume, SIGTERM, damaged checkpoints, data-parallel equivalence."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grain
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


# Runs of the same config compile the same programs: the persistent cache makes repeats cheap.
pytestmark = pytest.mark.usefixtures("compile_cache")


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
    ema_kernel = next(k for k in a if k[0] == "ema" and k[-1] == "kernel")
    assert not np.array_equal(a[ema_kernel], a[("params",) + ema_kernel[1:]])  # the EMA is tracked separately
    assert list((tmp_path / "a" / "tb").iterdir())  # TensorBoard event file
    assert list((tmp_path / "a" / "samples").glob("*.png"))


@pytest.mark.slow
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
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 0.5, 5: 3.0, 6: 6.0}
    for step, loss in losses.items():
        ckpt.save(step, {"w": jnp.full(3, loss)}, _numbers(), metrics={"loss": loss})
    ckpt.close()
    assert Checkpointer(tmp_path).steps() == [2, 4, 5, 6]  # best two (0.5, 1.0) + newest two


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
    batch = {"x": rng.normal(size=(8, 6)).astype(np.float32), "y": rng.normal(size=(8, 4)).astype(np.float32)}
    params = {"w": jnp.asarray(rng.normal(size=(6, 4)).astype(np.float32))}
    results = []
    for data, fsdp in ((1, 1), (4, 1), (2, 2)):
        mesh = Mesh(np.array(jax.devices()[: data * fsdp]).reshape(data, fsdp), parallel.BATCH_AXES)
        state = {"step": jnp.array(0), "params": params, "opt_state": tx.init(params),
                 "rng": jax.random.PRNGKey(0), "nonfinite": jnp.array(0)}
        shardings = parallel.fsdp_shardings(state, mesh, min_size=1)
        state = jax.device_put(state, shardings)
        step = jax.jit(train.make_train_step(Linear(), tx, config), out_shardings=(shardings, None))
        frozen = parallel.put_replicated({"b": jnp.ones(4)}, mesh)
        new, metrics = step(state, frozen, parallel.global_batch(batch, mesh))
        w = new["params"]["w"]
        assert len(w.sharding.device_set) == data * fsdp
        if fsdp > 1:  # split over fsdp along the first dimension (6 rows -> 3 per device), moments too
            assert w.sharding.spec == jax.P("fsdp", None), w.sharding.spec
            assert {s.data.shape for s in w.addressable_shards} == {(3, 4)}
            mu = new["opt_state"][1][0].mu["w"]
            assert mu.sharding.spec == jax.P("fsdp", None), mu.sharding.spec
        results.append((np.asarray(w), float(metrics["loss"])))
    (w1, l1), *others = results
    print("DIFF", max(float(np.abs(w1 - w).max()) for w, _ in others), max(abs(l1 - l) for _, l in others),
          len(jax.devices()))
    """
)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_data_parallel_and_fsdp_steps_equal_single_device(grad_accum):
    run = subprocess.run([sys.executable, "-c", _DP_SCRIPT, str(grad_accum)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    _, param_diff, loss_diff, devices = run.stdout.strip().splitlines()[-1].split()
    assert int(devices) == 4
    assert float(param_diff) < 1e-6 and float(loss_diff) < 1e-6


def test_config_errors_name_the_field():
    config = get_config("tiny")
    config.train.grad_accum = 3
    expected = r"config.train.grad_accum = 3: expected a positive divisor of train.batch_size \(8\)"
    with pytest.raises(ValueError, match=expected):
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
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(before["params"]), leaves(state["params"]), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    np.testing.assert_array_equal(before["ema"]["w"], np.asarray(state["ema"]["w"]))


_FSDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
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
                         text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
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
