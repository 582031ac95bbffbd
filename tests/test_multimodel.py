"""Several independent models in one program (one per DreamCom object) train as each would alone.

Two tiny DreamCom objects are trained for three steps in one run whose model axis is split over 2
forced CPU devices (each device holds one object's UNet and Adam moments), and each object alone in
a 1-device run with the same seeds. Each object's params after the combined run equal its own run's,
and the checkpoint holds both objects and both data streams.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import jax
    from flax.traverse_util import flatten_dict
    from configs.common import load
    from jcompose import train
    from jcompose.checkpoint import Checkpointer

    out = sys.argv[1]  # the suite's compilation cache comes through JAX_COMPILATION_CACHE_DIR
    report = {}
    for objects in json.loads(sys.argv[2]):
        config = load("configs/dreamcom.py:tiny")
        config.data.objects = tuple(objects)
        config.train.update(steps=3, log_every=3, ckpt_every=3, export=False)
        # Adam's first steps move every weight by ~lr * g / (|g| + eps): with eps 1e-8, weights whose
        # gradient is near zero (|g| ~ 1e-8) turn rounding-level differences of g (the vmapped program
        # groups convolutions differently) into updates that differ by a fraction of lr (seen: 3e-5 after
        # one step at lr 1e-4). A large eps keeps the update linear in g, so the comparison sees the
        # computation itself.
        config.optim.eps = 1.0
        config.sample.steps = 1
        workdir = os.path.join(out, "_".join(o.split("/")[-1] for o in objects))
        result = train.train(config, workdir)
        checkpoints = Checkpointer(workdir)
        state, data = checkpoints.read(3)
        checkpoints.close()
        params = {"/".join(k): np.asarray(v) for k, v in flatten_dict(state["params"]).items()}
        np.savez(workdir + ".npz", **params)
        report[os.path.basename(workdir)] = {"loss": result["loss"], "losses": {k: v for k, v in result.items() if
                                             k.startswith("loss/")}, "devices": jax.device_count()}
    print(json.dumps(report))
    """
)


def _run(tmp_path, devices: int, runs: list[list[str]]) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path), json.dumps(runs)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["mesh_lines"] = [line for line in proc.stdout.splitlines() if line.startswith("mesh ")]
    return report


@pytest.mark.slow
def test_two_objects_in_one_program_equal_each_alone(tmp_path):
    objects = ["murecom:Toy/fg1", "murecom:Toy/fg2"]
    together = _run(tmp_path, 2, [objects])
    alone = _run(tmp_path, 1, [[objects[0]], [objects[1]]])
    both = np.load(tmp_path / "fg1_fg2.npz")
    assert together["fg1_fg2"]["devices"] == 2 and alone["fg1"]["devices"] == 1
    # The object axis is split over the 2 devices: each holds one object's UNet and Adam moments (plus
    # the replicated frozen VAE and text encoder), about half of the whole state.
    total, most = (float(x) for x in re.findall(r"([\d.]+) MiB", together["mesh_lines"][0]))
    assert most < 0.6 * total, together["mesh_lines"]
    for name in ("fg1", "fg2"):  # the logged per-object losses are the objects' own runs' losses
        np.testing.assert_allclose(together["fg1_fg2"]["losses"][f"loss/Toy_{name}"], alone[name]["loss"], rtol=1e-5)
    worst = 0.0
    for k, name in enumerate(("fg1", "fg2")):
        single = np.load(tmp_path / f"{name}.npz")
        assert set(single.files) == set(both.files)
        for key in single.files:
            assert both[key].shape == (2, *single[key].shape), key
            err = float(np.abs(both[key][k] - single[key]).max())
            worst = max(worst, err)
    print(f"max |together - alone| over every param of both objects: {worst:.2e}")
    assert worst < 1e-6
    a, b = (np.load(tmp_path / f"{n}.npz") for n in ("fg1", "fg2"))
    between = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
    print(f"max |object 1 - object 2| (two different models): {between:.2e}")
    assert between > 1e-6 and between > 100 * worst
    steps = os.listdir(tmp_path / "fg1_fg2" / "checkpoints" / "3" / "data")
    state = json.loads((tmp_path / "fg1_fg2" / "checkpoints" / "3" / "data" / steps[0]).read_text())
    assert len(state) == 2  # both objects' data streams are in the checkpoint
