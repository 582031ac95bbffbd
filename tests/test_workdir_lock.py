"""One run per workdir: a second run is refused naming the holder; a gone holder's lock is taken over.

Local folders: a real second process holds the lock (then is SIGKILLed). Shared storage: the fake gs://
of tests/fake_gcs.py (objects, no links), with another host's lock and a clock the test moves.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from etils import epath
from fake_gcs import fake_gcs  # noqa: F401 (fixture)
from toy_method import use_toy_method

from jcompose import cli, train, workdir_lock
from jcompose.workdir_lock import WorkdirLocked

REPO = Path(__file__).resolve().parents[1]
# A stand-in for a training run that holds the workdir: takes the lock, says so, sleeps.
HOLD = ("import sys, time\nfrom jcompose import workdir_lock\n"
        "workdir_lock.acquire(sys.argv[1], command=['python', '-m', 'jcompose.train', '--workdir=' + sys.argv[1]])\n"
        "print('held', flush=True)\ntime.sleep(600)\n")


def _toy_argv(tmp_path, workdir, steps=2):
    config = tmp_path / "toy_config.py"
    config.write_text("from toy_method import toy_config\n\ndef get_config(arg=''):\n"
                      f"    return toy_config(steps={steps}, sample_every=-1)\n")
    return [f"--config={config}", f"--workdir={workdir}"]


def test_a_second_run_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, monkeypatch, capsys, caplog):
    use_toy_method(monkeypatch)
    workdir = tmp_path / "run"
    workdir.mkdir()
    argv = _toy_argv(tmp_path, workdir)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as exit_info:
            cli.run(train.main, argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert f"{workdir}: another run is using this workdir" in lines[0]
        assert f"host {socket.gethostname()}, pid {holder.pid}, started " in lines[0]
        assert f"command 'python -m jcompose.train --workdir={workdir}'" in lines[0]
        assert sorted(p.name for p in workdir.iterdir()) == ["run.lock"]  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level(logging.WARNING):
        assert cli.run(train.main, argv) == 0
    assert f"pid {holder.pid} is no longer running on this host" in caplog.text and "took over" in caplog.text
    assert not (workdir / "run.lock").exists()  # released at the end
    assert (workdir / "checkpoints" / "2").is_dir()


def test_a_reused_pid_is_not_the_holder(tmp_path):
    """A lock naming this host and a running PID whose process started at another time is stale."""
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(), "command": ["x"],
            "process_start": workdir_lock._process_start(os.getpid())}
    (tmp_path / "run.lock").write_text(json.dumps(mine))
    with pytest.raises(WorkdirLocked, match=f"pid {os.getpid()}"):
        workdir_lock.acquire(tmp_path)
    (tmp_path / "run.lock").write_text(json.dumps({**mine, "process_start": "1"}))
    with workdir_lock.acquire(tmp_path) as lock:
        assert json.loads((tmp_path / "run.lock").read_text())["token"] == lock.holder["token"]
    assert not (tmp_path / "run.lock").exists()


def test_shared_storage_lock_lease_heartbeat_and_takeover(fake_gcs, caplog):  # noqa: F811
    now = [1000.0]
    folder = epath.Path("gs://bucket/runs/a")
    folder.mkdir(parents=True)
    other = {"host": "tpu-vm-7", "pid": 4242, "started": "2025-01-01T00:00:00+00:00", "heartbeat": 990.0,
             "command": ["python3", "-m", "jcompose.train", "--workdir=gs://bucket/runs/a"], "token": "theirs"}
    (folder / "run.lock").write_text(json.dumps(other))
    with pytest.raises(WorkdirLocked, match=r"host tpu-vm-7, pid 4242, started 2025-01-01T00:00:00\+00:00"):
        workdir_lock.acquire(folder, lease=60, clock=lambda: now[0], settle=0)
    now[0] = 1051.0  # 61 s since the holder's last heartbeat
    with caplog.at_level(logging.WARNING):
        lock = workdir_lock.acquire(folder, lease=60, clock=lambda: now[0], settle=0)
    assert "no heartbeat for 61 s (lease 60 s)" in caplog.text and "host tpu-vm-7" in caplog.text
    stored = json.loads((folder / "run.lock").read_text())
    assert stored["token"] == lock.holder["token"] and stored["host"] == socket.gethostname()
    lock.release()
    assert not (folder / "run.lock").exists()

    # The holder's heartbeat keeps its lock fresh for other hosts as long as it runs.
    lock = workdir_lock.acquire(folder, lease=0.2, clock=lambda: now[0], settle=0)
    now[0] = 5000.0
    deadline = time.time() + 10
    while json.loads((folder / "run.lock").read_text())["heartbeat"] != 5000.0:
        assert time.time() < deadline, "no heartbeat written"
        time.sleep(0.02)
    assert workdir_lock._stale(json.loads((folder / "run.lock").read_text()) | {"host": "elsewhere"},
                               folder / "run.lock", 0.2, now[0]) is None
    lock.release()


def test_shared_storage_race_the_later_writer_wins(fake_gcs, monkeypatch):  # noqa: F811
    """Object stores have no create-if-absent: two runs may both write; each reads back after `settle`
    and the one whose write was replaced refuses, naming the other."""
    folder = epath.Path("gs://bucket/runs/b")
    folder.mkdir(parents=True)
    rival = {"host": "tpu-vm-3", "pid": 7, "started": "now", "heartbeat": time.time(), "command": ["rival"],
             "token": "rival"}
    monkeypatch.setattr(workdir_lock.time, "sleep", lambda s: (folder / "run.lock").write_text(json.dumps(rival)))
    with pytest.raises(WorkdirLocked, match="host tpu-vm-3, pid 7"):
        workdir_lock.acquire(folder, settle=0.5)
