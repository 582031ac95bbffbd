"""The multi-host path on one machine: two CPU processes (2 devices each) joined by a localhost
`jax.distributed` coordinator, running the toy least-squares method (tests/multihost_worker.py).

Checked against a single process on the same data: one global step equals the single-process step
on the same global batch, also with the params split over the 'fsdp' axis and the step taken in
micro-batches; each process reads its own shard of the stream; checkpoints hold both processes'
iterator states; a pair killed mid-run (FSDP and gradient accumulation on) resumes to exactly the
uninterrupted result.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from toy_method import ToyMethod, toy_config

from input_pipeline.pipeline import make_iterator
from jcompose import parallel, train
from jcompose.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_pair(mode, out, *extra):
    port = _free_port()
    env = dict(os.environ)  # the worker sets its device count (tests/forced_devices.py)
    return [subprocess.Popen([sys.executable, str(WORKER), str(port), str(i), mode, str(out), *map(str, extra)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True) for i in range(2)]


def _finish(pair, timeout=240):
    outputs = []
    for proc in pair:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in pair:
                os.killpg(p.pid, signal.SIGKILL)
            raise
        outputs.append(out)
    for proc, out in zip(pair, outputs, strict=True):
        assert proc.returncode == 0, "\n".join(line for line in out.splitlines() if "Gloo" not in line)[-3000:]
    return outputs


def test_one_global_step_equals_the_single_process_step(tmp_path):
    """Mesh data 2 (one row per process) x fsdp 2 (within a process), 2 micro-batches per step."""
    per_process_batch, fsdp, accum = 4, 2, 2
    _finish(_start_pair("step", tmp_path, per_process_batch, fsdp, accum))
    runs = [dict(np.load(tmp_path / f"step_{i}.npz")) for i in range(2)]
    # Each process read its own shard: elements 0, 2, ... and 1, 3, ... of the one seeded stream.
    config = toy_config(grad_accum=accum)
    method = ToyMethod(config)
    stream = next(make_iterator(method.make_source(), method.make_transform(), per_process_batch=2 * per_process_batch,
                                seed=config.data.seed))
    np.testing.assert_array_equal(runs[0]["local_index"], stream["index"][0::2])
    np.testing.assert_array_equal(runs[1]["local_index"], stream["index"][1::2])
    np.testing.assert_array_equal(runs[0]["global_index"], np.concatenate([r["local_index"] for r in runs]))
    for key in ("w", "ema", "mu", "global_x"):
        np.testing.assert_array_equal(runs[0][key], runs[1][key])  # both processes hold the same result
    # w (6, 4) and its Adam moments split over 'fsdp': each device holds 3 of the 6 rows.
    assert str(runs[0]["w_spec"]) == str(runs[0]["mu_spec"]) == str(jax.P("fsdp", None))
    assert runs[0]["w_local_shards"].tolist() == [[3, 4], [3, 4]]
    # The same global batch through the same step (same micro-batches) on this 1-device process.
    mesh = parallel.make_mesh()
    state, frozen, tx, _ = train.init_state(config, method, mesh, str(tmp_path))
    batch = {"x": jnp.asarray(runs[0]["global_x"]), "y": jnp.asarray(runs[0]["global_y"]),
             "index": jnp.asarray(runs[0]["global_index"])}
    new, metrics = jax.jit(train.make_train_step(method, tx, config))(state, frozen, batch)
    np.testing.assert_allclose(runs[0]["w"], np.asarray(new["params"]["w"]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(runs[0]["ema"], np.asarray(new["ema"]["w"]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(runs[0]["mu"], np.asarray(new["opt_state"][1][0].mu["w"]), rtol=0, atol=1e-7)
    np.testing.assert_allclose(runs[0]["loss"], float(metrics["loss"]), rtol=1e-6)
    assert not np.allclose(runs[0]["w"], np.asarray(state["params"]["w"]))  # the step did something


def _final_params(workdir, step):
    reader = Checkpointer(workdir)
    state, _ = reader.read(step)
    reader.close()
    return {k: np.asarray(state[k]["w"]) for k in ("params", "ema")}


def test_checkpoints_hold_both_iterators_and_a_killed_pair_resumes_exactly(tmp_path):
    """With the params split over 'fsdp' (each process writes its shards) and 2 micro-batches per step."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    fsdp_accum = (2, 2)
    _finish(_start_pair("train", straight, 8, *fsdp_accum))
    # The same run, killed (SIGKILL, no chance to save) once its step-4 checkpoint is complete.
    pair = _start_pair("train", killed, 100000, *fsdp_accum)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "4" / "commit_success.txt").exists():
        assert time.time() < deadline and all(p.poll() is None for p in pair), "the pair stopped or hung"
        time.sleep(0.2)
    for proc in pair:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    states = sorted((killed / "checkpoints" / "4" / "data").glob("process_*-of-2.json"))
    assert [p.name for p in states] == ["process_0-of-2.json", "process_1-of-2.json"]
    # Each process read its half of 4 global batches of 8 (no record of the toy source is skipped).
    assert [json.loads(p.read_text())["next_index"] for p in states] == [4 * 8 // 2] * 2
    outputs = _finish(_start_pair("train", killed, 8, *fsdp_accum))
    assert "process 0 done at step 8" in outputs[0] and "resuming from" in outputs[0]
    resumed_from = int(outputs[0].split("resuming from")[1].split("at step")[1].split()[0])
    assert resumed_from >= 4
    want, got = _final_params(straight, 8), _final_params(killed, 8)
    for key in want:
        np.testing.assert_array_equal(want[key], got[key], err_msg=key)


def test_sigterm_on_one_process_stops_both_at_the_same_step(tmp_path):
    """Preemption may reach one host first: the pair agrees at the next log step and saves together."""
    pair = _start_pair("train", tmp_path, 100000)
    deadline = time.time() + 240
    while not (tmp_path / "checkpoints" / "2" / "commit_success.txt").exists():
        assert time.time() < deadline and all(p.poll() is None for p in pair), "the pair stopped or hung"
        time.sleep(0.2)
    pair[1].send_signal(signal.SIGTERM)
    outputs = _finish(pair, timeout=120)
    assert "stopped by signal 15" in outputs[1] and "stopped by signal on another process" in outputs[0]
    step = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert f"at step {step};" in outputs[0] and f"at step {step};" in outputs[1]
