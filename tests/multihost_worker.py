"""One process of a two-process CPU "pod" for tests/test_multihost.py (not a test itself).

    python tests/multihost_worker.py PORT PROCESS_ID MODE OUT [STEPS|PER_PROCESS_BATCH] [FSDP] [GRAD_ACCUM]

Each process has 2 CPU devices and joins a localhost coordinator (process 0 hosts it). MODE:
  step:  one train step of the toy method on this process's first local batch (PER_PROCESS_BATCH, default
         2); writes OUT/step_<i>.npz with the local batch's record indices, the global batch, the new
         params (all gathered to every process) and how the params are laid out over the devices.
  train: `jcompose.train.train` of the toy method for STEPS steps into the workdir OUT.
FSDP > 1 splits the params and optimizer state over the 'fsdp' mesh axis (every array, however small);
GRAD_ACCUM > 1 takes each step in that many micro-batches.
"""

import os
import sys

# tests/ and the checkout first: a script's sys.path holds only its own folder, and an installed jcompose
# may be another checkout's.
_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_TESTS, os.path.dirname(_TESTS)]

import forced_devices  # noqa: E402

forced_devices.force_here(2)

import jax  # noqa: E402
import numpy as np  # noqa: E402

port, process_id, mode, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=120)

from jax.experimental import multihost_utils  # noqa: E402
from toy_method import ToyMethod, light_prefetch, toy_config  # noqa: E402

from input_pipeline.pipeline import make_iterator  # noqa: E402
from jcompose import parallel, train  # noqa: E402

assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
fsdp, accum = (int(a) for a in (sys.argv[6:8] + ["1", "1"])[:2])


def configured(**train_fields):
    config = toy_config(grad_accum=accum, **train_fields)
    config.mesh.update(fsdp=fsdp, fsdp_min_size=1)
    return config


if mode == "step":
    per_process_batch = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    config = configured(batch_size=2 * per_process_batch)
    method = ToyMethod(config)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    state, frozen, tx, _ = train.init_state(config, method, mesh, out)
    data = make_iterator(method.make_source(), method.make_transform(), per_process_batch=per_process_batch,
                         seed=config.data.seed, process_index=jax.process_index(), process_count=jax.process_count())
    local = next(data)
    batch = parallel.global_batch(local, mesh)
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    step = jax.jit(train.make_train_step(method, tx, config), out_shardings=(shardings, None))
    new, metrics = step(state, frozen, batch)
    w = new["params"]["w"]
    gathered = multihost_utils.process_allgather({**batch, "w": w, "ema": new["ema"]["w"],
                                                  "mu": new["opt_state"][1][0].mu["w"]}, tiled=True)
    np.savez(os.path.join(out, f"step_{process_id}.npz"), local_index=local["index"],
             global_index=gathered["index"], global_x=gathered["x"], global_y=gathered["y"],
             w=gathered["w"], ema=gathered["ema"], mu=gathered["mu"], loss=train.to_host(metrics["loss"]),
             w_spec=str(w.sharding.spec), mu_spec=str(new["opt_state"][1][0].mu["w"].sharding.spec),
             w_local_shards=np.array([s.data.shape for s in w.addressable_shards]))
elif mode == "train":
    config = configured(steps=int(sys.argv[5]), batch_size=4 * accum)  # a micro-batch per device
    with light_prefetch():
        result = train.train(config, out, method=ToyMethod(config))
    print(f"process {process_id} done at step {result['step']}", flush=True)
else:
    raise SystemExit(f"unknown mode {mode}")
