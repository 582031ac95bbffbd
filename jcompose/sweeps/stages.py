"""A trial's stages as the commands a user would type, run as subprocesses with a log and a marker each.

Layout under the sweep root:

    train/<run>/              a training run (python -m jcompose.train ... --workdir=train/<run>)
    packs/<pack>/             K packed training runs in one program (packing.py); each model is then
                              written out as train/<run>/ so the later stages cannot tell it from a run
    trials/<variant>/generated/   python -m jcompose.compose <method> ... --benchmark ... --out generated
    trials/<variant>/eval/        python -m jcompose.evaluate --config=configs/eval/<m>.py ... (scores.json)
    <stage folder>/.sweep/<stage>.{started,done}.json and <stage>.log

A stage is finished when its `done` marker exists and records the same command: a rerun skips it. A
killed stage has a `started` marker only; rerunning the same command resumes (the trainer from its
checkpoint; compose writes over, or skips, the images already there), while a *different* command (the
sweep file changed) first clears a generate/evaluate output folder, so no image of the old command
survives. Training folders are never cleared: the trainer itself refuses a changed model or data
(run_record) and continues a changed step count.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

MARKERS = ".sweep"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One command of a trial.

    Attributes:
      name: "train", "generate", "evaluate", "prepare-0", ...
      argv: the command without the interpreter: ["-m", "jcompose.train", "--config=...", ...].
      folder: where its outputs go (its markers and log go in folder/.sweep).
      clear_on_change: clear `folder` when the recorded command differs (generate / evaluate outputs).
    """

    name: str
    argv: tuple[str, ...]
    folder: str
    clear_on_change: bool = True

    @property
    def command(self) -> str:
        """The command line as a user would type it."""
        return shlex.join(["python", *self.argv])

    def marker(self, kind: str) -> Path:
        return Path(self.folder) / MARKERS / f"{self.name}.{kind}.json"

    @property
    def log(self) -> Path:
        return Path(self.folder) / MARKERS / f"{self.name}.log"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_done(stage: Stage) -> bool:
    """Whether the stage finished with exactly this command."""
    done = _read(stage.marker("done"))
    return bool(done) and done.get("command") == stage.command


def _kill_with_parent() -> None:
    """In the child, before exec: die when the process that started it dies (Linux), so killing a
    sweep (or Ray killing a trial's worker) never leaves a training run behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def begin(stage: Stage) -> None:
    """Before a stage runs: clears the outputs of another command (when the stage clears on change) and
    records this command as started."""
    folder = Path(stage.folder)
    started = _read(stage.marker("started"))
    if stage.clear_on_change and started and started.get("command") != stage.command and folder.is_dir():
        for child in folder.iterdir():  # another command's outputs (the markers folder stays: it has the logs)
            if child.name != MARKERS:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    stage.marker("started").parent.mkdir(parents=True, exist_ok=True)
    stage.marker("started").write_text(json.dumps({"command": stage.command, "time": time.time()}))


def mark_done(stage: Stage, seconds: float, cpu_s: float | None) -> None:
    stage.marker("done").write_text(json.dumps({"command": stage.command, "seconds": seconds, "cpu_s": cpu_s,
                                                "time": time.time()}))


def run_stage(stage: Stage, env: dict[str, str], cwd: str | None = None, *, log: Path | None = None,
              mark: bool = True) -> dict:
    """Runs the stage unless it is done; returns {"stage", "status": "done"|"skipped"|"failed", "log",
    "seconds" (wall), "cpu_s" (CPU of the process), "returncode"}. The log gets every attempt, each under a
    header with the command. `mark=False`: one host's part of a multi-host stage (the caller marks)."""
    if is_done(stage):
        return {"stage": stage.name, "status": "skipped", "log": str(stage.log), "seconds": 0.0, "cpu_s": 0.0,
                "returncode": 0}
    if mark:
        begin(stage)
    log = log or stage.log
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {stage.command}\n")
        out.flush()
        process = subprocess.Popen([sys.executable, *stage.argv], stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=cwd, preexec_fn=_kill_with_parent)
        _, status, usage = os.wait4(process.pid, 0)  # also its CPU time (the process and what it waited for)
        process.returncode = code = os.waitstatus_to_exitcode(status)
        out.write(f"===== exit code {code}\n")
    seconds, cpu = time.perf_counter() - start, usage.ru_utime + usage.ru_stime
    if code == 0 and mark:
        mark_done(stage, seconds, cpu)
    return {"stage": stage.name, "status": "done" if code == 0 else "failed", "log": str(log),
            "seconds": seconds, "cpu_s": cpu, "returncode": code}


def log_tail(path: str | Path, lines: int = 30) -> str:
    """The last lines of a stage log (for failure reports)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stage_env(base: dict[str, str] | None = None, *, cpu_devices: int = 0, extra: dict | None = None) -> dict:
    """The environment of a stage process: `base` (default os.environ) plus `extra`; with `cpu_devices`
    the trial's JAX sees that many host devices (XLA_FLAGS keeps its other flags)."""
    env = dict(os.environ if base is None else base)
    env.update(extra or {})
    if cpu_devices:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={cpu_devices}"])
    return env
