"""One process of a two-process CPU "pod" for tests/test_eval_multihost.py (not a test itself).

    python tests/eval_multihost_worker.py PORT PROCESS_ID JOBS_JSON OUT

Each process has 2 CPU devices and joins a localhost coordinator (process 0 hosts it), then runs
`jcompose.evaluate.evaluate` for every job of JOBS_JSON ([{"name", "config": "configs/eval/x.py[:variant]",
"fields": {dotted: value}}]), writing the scores every process computed to OUT/<name>_<process>.json
(the report files come from process 0 only, into the job's own `out`). A job {"name", "stats": N} instead
streams N feature rows (row i: `stats_row(i)`, 2048 values) through `sharded_map.map_items`, accumulates this
process's rows in a `FeatureStats`, reduces them across processes (`evaluate.reduced_stats`) and gathers the
rows in item order for KID, as evaluate does with Inception features (without Inception's compile time).
"""

import json
import os
import sys

# the checkout first: a script's sys.path holds only its own folder (tests/), and an installed jcompose
# may be another checkout's.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import forced_devices  # noqa: E402

forced_devices.force_here(2)

import jax  # noqa: E402

port, process_id, jobs_path, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=120)
assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2

import numpy as np  # noqa: E402

from configs import common  # noqa: E402
from jcompose import evaluate, parallel, sharded_map  # noqa: E402
from jcompose.metrics import fid  # noqa: E402


def stats_row(i: int) -> np.ndarray:
    return np.random.default_rng(i).normal(size=2048).astype(np.float32) + i % 3


def stats_job(n: int) -> dict:
    mesh = parallel.make_mesh()
    local = fid.FeatureStats(2048)
    rows = sharded_map.map_items(range(n), lambda i: {"x": stats_row(i)}, lambda p, b: {"x": b["x"] * p}, np.float32(1),
                                 mesh, batch_size=4, workers=2, on_local=lambda r, _: local.update(r["x"]),
                                 progress=False)["x"]
    total = evaluate.reduced_stats(local)
    mu, sigma = total.mean_cov()
    kid = fid.kernel_inception_distance(rows, rows[::-1] + 0.5, subset_size=4)
    return {"n_local": local.n, "n": total.n, "mu": mu.tolist(), "sigma_diag": np.diag(sigma).tolist(),
            "sigma_01": sigma[0, 1], "kid": kid}


for job in json.loads(open(jobs_path).read()):
    if "stats" in job:
        with open(os.path.join(out, f"{job['name']}_{process_id}.json"), "w") as f:
            json.dump(stats_job(job["stats"]), f)
        continue
    config = common.load(job["config"])
    for dotted, value in job["fields"].items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = tuple(value) if isinstance(value, list) else value
    scores = evaluate.evaluate(config, progress=False)
    with open(os.path.join(out, f"{job['name']}_{process_id}.json"), "w") as f:
        json.dump(scores, f, default=str)
print(f"process {process_id} done", flush=True)
