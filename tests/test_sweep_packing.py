"""Packed trials equal separate runs: two denoise variants with their own learning rate and data seed, trained
as one 2-model program (jcompose/sweeps/packing.py); the second (its traced rate and its data seed are the
per-model values) against the same variant trained alone with `train.train`.

Each unpacked model is an ordinary run: its checkpoint has exactly a single run's tree (a further `train`
resumes it), its config.json has its own values, its data stream is where its separate run's is, and the
pack's shared folders (the tiny base it wrote) are linked in.
"""

import json

import jax
import numpy as np
import pytest

from configs.common import load
from jcompose import train
from jcompose.checkpoint import Checkpointer
from jcompose.sweeps import packing

# Tiny denoise at 32 px, 3 steps. Adam's eps raised to 1: with eps 1e-8 the first updates are ~lr * sign(g)
# for weights with near-zero gradients, which turns rounding-level differences of g (the vmapped program
# groups convolutions differently) into lr-sized ones (tests/test_multimodel.py explains the same).
BASE = {"train.steps": 3, "train.batch_size": 2, "train.log_every": 3, "train.ckpt_every": 3,
        "train.sample_every": -1, "data.image_size": 32, "optim.eps": 1.0}
MODELS = {"a": {**BASE, "optim.lr": 1e-3, "data.seed": 0}, "b": {**BASE, "optim.lr": 1e-4, "data.seed": 1}}


def _config(overrides):
    config = load("configs/denoise.py:tiny")
    for key, value in overrides.items():
        group, field = key.split(".")
        config[group][field] = value
    return config


def _state(folder):
    checkpoints = Checkpointer(folder)
    step, state, data = checkpoints.read_latest()
    checkpoints.close()
    flat = {packing._path(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}
    return step, flat, data


@pytest.mark.slow
def test_packed_models_equal_their_separate_runs(tmp_path):
    train.train(_config(MODELS["b"]), str(tmp_path / "alone"))
    alone_step, alone, alone_data = _state(tmp_path / "alone")
    folders = packing.train_pack("configs/denoise.py:tiny", MODELS, str(tmp_path / "pack"), str(tmp_path / "runs"))
    assert folders == [str(tmp_path / "runs" / n) for n in MODELS]
    pack_tree = _state(tmp_path / "pack")[1]
    np.testing.assert_allclose(pack_tree["opt_state.1.hyperparams.peak_lr"], [1e-3, 1e-4], rtol=1e-7)  # traced rates
    step, unpacked, data = _state(tmp_path / "runs" / "b")
    assert step == alone_step == 3
    assert set(unpacked) == set(alone)  # exactly a single run's tree (no injected hyperparameters)
    assert data == alone_data  # the model's data stream stopped where its own run's did
    worst = max(float(np.abs(unpacked[k] - alone[k]).max()) for k in alone if k.startswith("params"))
    other = _state(tmp_path / "runs" / "a")[1]
    between = max(float(np.abs(unpacked[k] - other[k]).max()) for k in alone if k.startswith("params"))
    print(f"max |packed - alone| over every param: {worst:.2e}; |model a - model b|: {between:.2e}")
    assert worst < 1e-6 and between > 100 * worst
    for name in MODELS:
        stored = json.loads((tmp_path / "runs" / name / "config.json").read_text())["config"]
        assert stored["optim"]["lr"] == MODELS[name]["optim.lr"] and stored["data"]["seed"] == MODELS[name]["data.seed"]
        assert (tmp_path / "runs" / name / "base").resolve() == (tmp_path / "pack" / "base").resolve()
    # The unpacked run is an ordinary run: training it further resumes from its checkpoint.
    result = train.train(_config({**MODELS["b"], "train.steps": 4}), str(tmp_path / "runs" / "b"))
    assert result["step"] == 4 and np.isfinite(result["loss"])
