"""The train step on several devices (forced CPU devices in a subprocess): data parallelism and data x FSDP
equal one device, with and without gradient accumulation, and a data-parallel step gathers nothing.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import forced_devices
import pytest

REPO = Path(__file__).resolve().parents[1]


_DP_SCRIPT = textwrap.dedent(
    r"""
    import os, re, sys
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
        global_batch = parallel.global_batch(batch, mesh)
        new, metrics = step(state, frozen, global_batch)
        if data == 4:  # pure data parallelism: the only collective is the gradients' all-reduce
            hlo = step.lower(state, frozen, global_batch).compile().as_text()
            gathers = len(re.findall(r"= [^ ]+ all-(?:gather|to-all)(?:-start)?\(", hlo))
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
          len(jax.devices()), gathers)
    """
)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_data_parallel_and_fsdp_steps_equal_single_device(grad_accum):
    """The step on 4 data-parallel devices and on 2 x 2 (data x FSDP) equals the single-device step, and a
    data-parallel step gathers nothing (micro-batches included)."""
    run = subprocess.run([sys.executable, "-c", _DP_SCRIPT, str(grad_accum)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=forced_devices.env(4), check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    _, param_diff, loss_diff, devices, gathers = run.stdout.strip().splitlines()[-1].split()
    assert int(devices) == 4
    assert float(param_diff) < 1e-6 and float(loss_diff) < 1e-6
    # Each device splits its own rows into the micro-batches: the batch is never gathered (contiguous
    # micro-batches lay on half the devices and XLA all-gathered the batch: 3 gathers here, and on v5e-8 the
    # AnyScene step's temporaries grew from 7.4 to > 20 GiB).
    assert int(gathers) == 0
