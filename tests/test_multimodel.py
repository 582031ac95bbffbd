"""Several independent models in one program (one per DreamCom object) train as each would alone.

Two tiny DreamCom objects are trained for three steps in one run whose model axis is split over 2
forced CPU devices (each device holds one object's UNet and Adam moments), and each object alone in
a 1-device run with the same seeds. Each object's params after the combined run equal its own run's,
and the checkpoint holds both objects and both data streams.

The loop itself with the toy least-squares models (tests/toy_method.py `ToyModels`: three streams that
skip records at different paces, so each stream's iterator is at its own position): a resumed K = 3 run
equals the uninterrupted one bit for bit, on one device and on two (3 models do not split over 2
devices: the state is replicated and each model's batch split instead), and each model equals its own
run alone.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import forced_devices
import grain
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from toy_method import Records, ToyModels, light_prefetch, toy_config

from input_pipeline.pipeline import make_iterator
from input_pipeline.stacked import StackedIterator

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
        config.train.update(steps=3, log_every=3, ckpt_every=3, export=False, sample_every=-1)  # no grids
        # Adam's first steps move every weight by ~lr * g / (|g| + eps): with eps 1e-8, weights whose
        # gradient is near zero (|g| ~ 1e-8) turn rounding-level differences of g (the vmapped program
        # groups convolutions differently) into updates that differ by a fraction of lr (seen: 3e-5 after
        # one step at lr 1e-4). A large eps keeps the update linear in g, so the comparison sees the
        # computation itself.
        config.optim.eps = 1.0
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
    env = forced_devices.env(devices)
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


# ------------------------------------------------------------------------------ toy models, K = 3


def _toy_run(workdir, steps, streams=(0, 1, 2)):
    from jcompose import train

    config = toy_config(steps=steps, sample_every=-1)
    with light_prefetch():
        return train.train(config, str(workdir), method=ToyModels(config, streams))


def _state(workdir, step=4):
    from jcompose.checkpoint import Checkpointer

    checkpoints = Checkpointer(workdir)
    state, data = checkpoints.read(step)
    checkpoints.close()
    return {"/".join(map(str, k)): np.asarray(v) for k, v in flatten_dict(state, keep_empty_nodes=False).items()
            if hasattr(v, "shape")}, data


def _streams(batch=4):
    toy, light = ToyModels(toy_config()), grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    return StackedIterator([make_iterator(Records(40, k), toy.make_transform(), per_process_batch=batch, seed=0,
                                          read_options=light) for k in (0, 1, 2)])


def test_stacked_iterator_restores_each_stream_in_model_order():
    data = _streams()
    for _ in range(3):
        next(data)
    saved = data.get_state()
    positions = [s["next_index"] for s in json.loads(saved)]
    assert len(set(positions)) == 3, positions  # the streams skipped different numbers of records
    # Every record read and not delivered was skipped: counted over all streams (12 with this seed).
    assert data.skipped.count == sum(positions) - 3 * 3 * 4 > 3
    want = [next(data) for _ in range(2)]
    restored = _streams()
    restored.set_state(saved)
    for a, b in zip(want, [next(restored) for _ in range(2)], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert want[0]["index"].shape == (3, 4)
    with pytest.raises(ValueError, match="holds 3 data streams, this run has 2 models"):
        StackedIterator(_streams().iterators[:2]).set_state(saved)


@pytest.fixture(scope="module")
def toy_models_one_device(tmp_path_factory):
    """Three toy models trained 4 steps in one program on this 1-device process: straight, and 2 steps
    then resumed to 4; each stream's model alone for 4 steps."""
    root = tmp_path_factory.mktemp("toy_models")
    runs = {"straight": _toy_run(root / "straight", 4)}
    _toy_run(root / "resumed", 2)
    runs["resumed"] = _toy_run(root / "resumed", 4)
    for k in (0, 1, 2):
        runs[f"alone{k}"] = _toy_run(root / f"alone{k}", 4, streams=(k,))
    return root, runs


def test_several_models_resume_exactly_and_train_as_each_alone(toy_models_one_device):
    root, runs = toy_models_one_device
    (straight, data), (resumed, resumed_data) = _state(root / "straight"), _state(root / "resumed")
    assert straight.keys() == resumed.keys() and straight["params/w"].shape == (3, 6, 4)
    for key in straight:  # params, EMA, Adam moments, step, rng: bit for bit
        np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)
    assert data == resumed_data  # every stream at the same position
    assert runs["resumed"]["loss"] == runs["straight"]["loss"]
    for k in (0, 1, 2):
        alone, _ = _state(root / f"alone{k}")
        np.testing.assert_allclose(straight["params/w"][k], alone["params/w"], rtol=0, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(straight["ema/w"][k], alone["ema/w"], rtol=0, atol=1e-6, err_msg=k)
        assert runs["straight"][f"loss/stream{k}"] == pytest.approx(runs[f"alone{k}"]["loss"], rel=1e-6)
    between = np.abs(straight["params/w"][1] - straight["params/w"][2]).max()
    assert between > 1e-3  # three different models


_TWO_DEVICES = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, "tests")
    import jax
    from toy_method import ToyModels, light_prefetch, toy_config
    from jcompose import train

    out = sys.argv[1]
    for name, steps in (("straight", 4), ("resumed", 2), ("resumed", 4)):
        config = toy_config(steps=steps, sample_every=-1)
        with light_prefetch():
            result = train.train(config, f"{out}/{name}", method=ToyModels(config))
    print(json.dumps({"devices": jax.device_count(), "loss": result["loss"]}))
    """
)


@pytest.mark.slow
def test_models_not_dividing_the_device_count(toy_models_one_device, tmp_path):
    """K = 3 on 2 devices: the state replicated, each model's batch split over the devices; resumed equals
    uninterrupted bit for bit, and both equal the 1-device run."""
    env = forced_devices.env(2)
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["devices"] == 2
    mesh_line = next(line for line in proc.stdout.splitlines() if line.startswith("mesh "))
    total, most = (float(x) for x in re.findall(r"([\d.]+) MiB", mesh_line))
    assert "'data': 2" in mesh_line and most == total, mesh_line  # 3 models on 2 devices: replicated
    (straight, data), (resumed, resumed_data) = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)
    assert data == resumed_data
    one_device, _ = _state(toy_models_one_device[0] / "straight")
    for key in ("params/w", "ema/w"):
        np.testing.assert_allclose(straight[key], one_device[key], rtol=0, atol=1e-6, err_msg=key)
