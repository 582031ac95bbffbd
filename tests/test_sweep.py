"""Sweeps: expansion, naming, pod commands, and a real two-run sweep collected into one table."""

import csv
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jcompose import sweep

REPO = Path(__file__).resolve().parents[1]


def test_grid_and_zip_expand_as_written():
    runs = sweep.grid(**{"optim.lr": [1e-4, 1e-5], "seed": [0, 1, 2]})
    assert len(runs) == 6 and runs[0] == {"optim.lr": 1e-4, "seed": 0} and runs[-1] == {"optim.lr": 1e-5, "seed": 2}
    assert sweep.zip_runs(**{"a.x": [1, 2], "b": ["p", "q"]}) == [{"a.x": 1, "b": "p"}, {"a.x": 2, "b": "q"}]
    with pytest.raises(ValueError, match="same length"):
        sweep.zip_runs(a=[1], b=[1, 2])
    name = sweep.run_name({"optim.lr": 1e-4, "model.base": "tiny:sd15", "flag": True})
    assert name == "lr=0.0001,base=tiny_sd15,flag=True"
    assert sweep.train_flags("configs/denoise.py:tiny", {"optim.lr": 3e-5, "model.base": "/m/sd"}) == [
        "--config=configs/denoise.py:tiny", "--config.optim.lr=3e-05", "--config.model.base=/m/sd"]


def _sweep_file(tmp_path, body):
    path = tmp_path / "my_sweep.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.parametrize("body, message", [
    ("x = 1\n", "defines no get_sweep"),
    ("def get_sweep(arg):\n    return {'config': 'configs/denoise.py', 'runs': []}\n", "at least one run"),
    ("def get_sweep(arg):\n    return {'config': 'configs/nope.py', 'runs': [{'seed': 1}]}\n",
     "no such file configs/nope.py"),
    ("def get_sweep(arg):\n    return {'config': 'configs/denoise.py', 'runs': [{'seed': 1}, {'seed': 1}]}\n",
     r"same overrides: \['seed=1'\]"),
])
def test_bad_sweep_files_are_named(tmp_path, monkeypatch, body, message):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match=message):
        sweep.load_sweep(_sweep_file(tmp_path, body))


def test_tpu_commands_are_valid_launch_commands(monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = sweep.load_sweep("configs/sweeps/denoise_lr.py")
    commands = sweep.tpu_commands(loaded, "gs://bucket/lr-sweep", "lr")
    assert len(commands) == 4
    for i, command in enumerate(commands):
        args = shlex.split(command)
        args.insert(args.index("--"), "--dry-run")  # what launch_tpu.sh would do, without gcloud
        dry = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=False, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert f"create lr-{i} " in dry.stdout
        assert "--config=configs/denoise.py" in dry.stdout and "--workdir=gs://bucket/lr-sweep/lr=" in dry.stdout


SMALL = """
from jcompose.sweep import grid

def get_sweep(arg):
    base = {"data.image_size": 32, "train.steps": 2, "train.batch_size": 4, "train.log_every": 1,
            "train.ckpt_every": 2, "train.sample_count": 2, "sample.steps": 2, "train.ema_decay": 0.9}
    # Runs differ in a data seed only: the second reuses the first's compiled step from the cache (the
    # programs are also test_train.py's `_small` ones, which the suite's shared cache may already hold).
    return {"config": "configs/denoise.py:tiny", "runs": [dict(base, **{"data.seed": s}) for s in (0, 1)]}
"""


@pytest.mark.slow
def test_run_sweep_and_collect_the_table(tmp_path):
    root = tmp_path / "runs"
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path / "cache")  # the suite's (conftest.py)
    command = [sys.executable, "-m", "jcompose.sweep", "run", f"--sweep={_sweep_file(tmp_path, SMALL)}",
               f"--root={root}", f"--cache-dir={cache}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(root / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["seed"] for row in rows] == ["0", "1"]
    for row in rows:
        assert row["step"] == "2" and float(row["loss"]) > 0  # each run trained to the end and logged
        assert (root / row["run"] / "checkpoints" / "2").is_dir()
    assert rows[0]["loss"] != rows[1]["loss"]  # different data: really two runs
    assert "| run |" in result.stdout


def test_collect_labels_each_row_from_the_runs_stored_config(tmp_path):
    """Rows carry what each run was trained with (its config.json), not what the sweep file says now; a
    run that has not started shows its overrides; fields sharing a last name keep their whole path."""
    import json

    from toy_method import toy_config

    from jcompose import run_record

    runs = {name: {"optim.lr": lr, "model.dropout": 0.0, "loss.dropout": 0.1} for name, lr in
            (("a", 0.1), ("b", 0.2), ("c", 0.3))}
    for name, lr in (("a", 0.5), ("b", 0.2)):  # a ran with lr 0.5: the sweep file was edited since
        config = toy_config()
        config.optim.lr = lr
        config.model.dropout = 0.0
        config.loss = {"dropout": 0.1}
        (tmp_path / name).mkdir()
        run_record.record(config, tmp_path / name, resuming=False, argv=["train"])
    (tmp_path / "a" / "metrics.json").write_text(json.dumps({"step": 4, "loss": 1.5}))
    rows = sweep.collect({"config": "configs/denoise.py", "runs": runs}, str(tmp_path))
    assert rows[0] == {"run": "a", "lr": 0.5, "model.dropout": 0.0, "loss.dropout": 0.1, "step": 4, "loss": 1.5}
    assert rows[1] == {"run": "b", "lr": 0.2, "model.dropout": 0.0, "loss.dropout": 0.1}
    assert rows[2] == {"run": "c", "lr": 0.3, "model.dropout": 0.0, "loss.dropout": 0.1}  # not started yet
