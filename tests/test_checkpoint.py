"""Damaged checkpoints are set aside (never reused, never deleted), a config that does not fit the
checkpoint is told apart from damage, and readers (compose) fall back like training does.

Training runs use the toy least-squares method (tests/toy_method.py): the loop is what is tested.
"""

import hashlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_method import light_prefetch, toy_config, use_toy_method

from jcompose import inference, train
from jcompose.checkpoint import Checkpointer, CheckpointError, CheckpointMismatch, abstract_like
from jcompose.cli import InputError


def _tree_bytes(folder):
    """{relative path: sha256} of every file under folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _light_prefetch():
    with light_prefetch():  # toy runs: grain's default read-ahead threads cost more than the run
        yield


def _final_state(workdir, step):
    reader = Checkpointer(workdir)
    state, data = reader.read(step)
    reader.close()
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}, data


def _damage(step_dir):
    for f in (step_dir / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")


def test_training_sets_a_damaged_checkpoint_aside_and_finishes_in_one_rerun(tmp_path, monkeypatch, caplog):
    use_toy_method(monkeypatch)
    workdir = tmp_path / "run"
    assert train.train(toy_config(steps=4), workdir)["step"] == 4
    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2", "4"]
    _damage(checkpoints / "4")
    damaged = _tree_bytes(checkpoints / "4")

    with caplog.at_level(logging.WARNING):
        result = train.train(toy_config(steps=6), workdir)  # falls back to 2, retrains 3-4, saves 4 anew
    assert result["step"] == 6
    aside = checkpoints / "damaged" / "4"
    assert _tree_bytes(aside) == damaged  # kept, byte for byte
    assert any(str(aside) in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    reader = Checkpointer(workdir)
    assert reader.steps() == [2, 4, 6]
    reader.close()
    # The redone steps equal an uninterrupted run's: params, EMA, optimizer state, rng and data position.
    train.train(toy_config(steps=6), tmp_path / "straight")
    (want, want_data), (got, got_data) = _final_state(tmp_path / "straight", 6), _final_state(workdir, 6)
    assert want.keys() == got.keys() and got["['step']"] == 6
    for key in want:
        np.testing.assert_array_equal(want[key], got[key], err_msg=str(key))
    assert want_data == got_data
    # A second damage of the same step keeps both copies.
    _damage(checkpoints / "6")
    with caplog.at_level(logging.WARNING):
        assert train.train(toy_config(steps=6), workdir)["step"] == 6
    assert (checkpoints / "damaged" / "6").is_dir()


def _save(tmp_path, state, steps=(1, 2)):
    ckpt = Checkpointer(tmp_path, keep=5, async_save=False)
    for step in steps:
        ckpt.save(step, dict(state, step=jnp.array(step)), _numbers())
    ckpt.close()


def _numbers():
    import grain

    return iter(grain.MapDataset.range(10).to_iter_dataset())


def test_a_config_that_does_not_fit_is_not_called_damage(tmp_path):
    saved = {"step": jnp.array(0), "params": {"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)}, "ema": {"a": jnp.zeros(1)}}
    _save(tmp_path, saved)
    # Another shape for params.a, params.b gone, a new params.c, and no EMA (ema_decay switched off).
    wanted = {"step": jnp.array(0), "params": {"a": jnp.zeros((4, 3)), "c": jnp.zeros(2)}}
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CheckpointMismatch) as err:
        ckpt.restore_latest(abstract_like(wanted), _numbers())
    text = str(err.value)
    print(text)
    assert "does not fit" in text and "damaged" not in text.split("does not fit")[0]
    assert "params.a: saved (2, 3) float32, this config (4, 3) float32" in text
    assert "params.b: only in the checkpoint" in text and "params.c: only in this config" in text
    assert "ema: only in the checkpoint" in text and "step 2" in text
    assert ckpt.steps() == [1, 2] and not (tmp_path / "checkpoints" / "damaged").exists()  # nothing moved
    ckpt.close()
    assert isinstance(err.value, CheckpointError)


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    state = {"step": jnp.array(0), "w": jnp.arange(6.0)}
    _save(tmp_path, state)
    for step in (1, 2):
        _damage(tmp_path / "checkpoints" / str(step))
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match=r"no readable checkpoint: steps \[2, 1\] were damaged"):
        ckpt.restore_latest(abstract_like(state), _numbers())
    ckpt.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "damaged").iterdir()) == ["1", "2"]


def test_compose_falls_back_from_a_damaged_newest_checkpoint(tmp_path, caplog):
    state = {"step": jnp.array(0), "params": {"controlnet": {"w": jnp.arange(3.0)}}}
    _save(tmp_path, state)
    _damage(tmp_path / "checkpoints" / "2")
    with caplog.at_level(logging.WARNING):
        step, restored = inference.read_checkpoint(str(tmp_path))
    assert step == 1 and int(restored["step"]) == 1
    np.testing.assert_array_equal(np.asarray(restored["params"]["controlnet"]["w"]), [0, 1, 2])
    assert any("step 2" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "checkpoints" / "2").is_dir()  # a reader leaves the run as it is
    with pytest.raises(InputError, match=r"checkpoints/2: step 2 is damaged"):
        inference.read_checkpoint(str(tmp_path / "checkpoints" / "2"))


@pytest.mark.parametrize("every, grids", [(-1, []), (0, ["step_0000004.png"]),
                                          (2, ["step_0000002.png", "step_0000004.png"])])
def test_sample_grids_every_n_steps_at_the_end_or_never(tmp_path, monkeypatch, every, grids):
    use_toy_method(monkeypatch)
    train.train(toy_config(steps=4, sample_every=every), str(tmp_path / "run"))
    written = sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.png"))
    assert written == grids
