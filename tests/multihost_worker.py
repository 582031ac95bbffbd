"""One process of a two-process CPU "pod" for tests/test_multihost.py (not a test itself).

    python tests/multihost_worker.py PORT PROCESS_ID MODE OUT [STEPS]

Each process has 2 CPU devices and joins a localhost coordinator (process 0 hosts it). MODE:
  step:  one train step of the toy method on this process's first local batch; writes OUT/step_<i>.npz
         with the local batch's record indices, the global batch and the new params (both gathered
         to every process).
  train: `jcompose.train.train` of the toy method for STEPS steps into the workdir OUT.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

port, process_id, mode, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=120)

from jax.experimental import multihost_utils  # noqa: E402
from toy_method import ToyMethod, toy_config  # noqa: E402

from input_pipeline.pipeline import make_iterator  # noqa: E402
from jcompose import parallel, train  # noqa: E402

assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2

if mode == "step":
    config = toy_config()
    method = ToyMethod(config)
    mesh = parallel.make_mesh()
    state, frozen, tx, _ = train.init_state(config, method, mesh, out)
    data = make_iterator(method.make_source(), method.make_transform(), per_process_batch=2, seed=config.data.seed,
                         process_index=jax.process_index(), process_count=jax.process_count())
    local = next(data)
    batch = parallel.global_batch(local, mesh)
    step = jax.jit(train.make_train_step(method, tx, config))
    new, metrics = step(state, frozen, batch)
    gathered = multihost_utils.process_allgather({k: v for k, v in batch.items()}, tiled=True)
    np.savez(os.path.join(out, f"step_{process_id}.npz"), local_index=local["index"],
             global_index=gathered["index"], global_x=gathered["x"], global_y=gathered["y"],
             w=train.to_host(new["params"]["w"]), ema=train.to_host(new["ema"]["w"]),
             loss=train.to_host(metrics["loss"]))
elif mode == "train":
    config = toy_config(steps=int(sys.argv[5]))
    result = train.train(config, out, method=ToyMethod(config))
    print(f"process {process_id} done at step {result['step']}", flush=True)
else:
    raise SystemExit(f"unknown mode {mode}")
