"""Running one suite part: in a child process of its own (killed with its children at its time
box or when the suite is stopped) or in this process; errors become the part's record."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from jcompose.bench import timing

OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OutOfMemory")
_LIVE: set[int] = set()  # process groups of running isolated parts
_LIVE_LOCK = threading.Lock()


class Terminated(BaseException):
    """SIGTERM while a part runs (a BaseException: the per-part error handling must not catch it)."""


@dataclasses.dataclass(frozen=True)
class Part:
    """One benchmark invocation of the suite: `argv` for `python -m jcompose.bench`, the section
    its result goes to, its expected wall time, argvs to try in turn when it runs out of memory,
    variables for its process, whether it may run beside the device parts (host CPU only), and the
    module it runs (`python -m <module> *argv --out result.json`)."""

    name: str
    section: str
    argv: tuple[str, ...]
    estimate_s: float
    fallbacks: tuple[tuple[str, ...], ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    background: bool = False
    module: str = "jcompose.bench"


def kill_live_parts() -> None:
    """Kills every isolated part still running (and its children): for a suite being stopped."""
    with _LIVE_LOCK:
        groups = list(_LIVE)
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_isolated(argv: tuple[str, ...], out_json: Path, log_path: Path, timeout_s: float,
                 env: dict[str, str] | None = None, module: str = "jcompose.bench") -> dict[str, Any]:
    """Runs `python -m <module> *argv --out out_json` in its own process group, killed (with its
    children, e.g. grain workers) after `timeout_s`; returns its report or raises RuntimeError with
    the log's last lines. `env`: variables to set for the child."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", module, *argv, "--out", str(out_json)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        with _LIVE_LOCK:
            _LIVE.add(child.pid)
        try:
            code = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s (time box); " + _tail(log_path)) from None
        finally:  # a time box, or this suite being stopped: the part and its workers go too
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            with _LIVE_LOCK:
                _LIVE.discard(child.pid)
    if code != 0:
        raise RuntimeError(f"exit code {code}: {_tail(log_path)}")
    return json.loads(out_json.read_text())


def run_in_process(argv: tuple[str, ...], out_json: Path, module: str = "jcompose.bench") -> dict[str, Any]:
    """The same benchmark in this process (CPU: no device to hand back, no start-up per part)."""
    if module != "jcompose.bench":
        import importlib

        importlib.import_module(module).main([*argv, "--out", str(out_json)])
        return json.loads(out_json.read_text())
    from jcompose.bench import commands

    report = commands.run(list(argv))
    timing.write_json(out_json, report)
    return report


def _tail(path: Path, lines: int = 12) -> str:
    text = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:])[-3000:]


def run_part(part: Part, folder: Path, isolate: bool, time_left: float) -> dict[str, Any]:
    """{'name', 'section', 'status': ok|error|timeout, 'seconds', 'result'|'error', 'argv'}; an
    out-of-memory error moves on to the part's fallbacks while time is left."""
    start = time.perf_counter()
    entry: dict[str, Any] = {"name": part.name, "section": part.section}
    tried = []
    for argv in (part.argv, *part.fallbacks):
        left = time_left - (time.perf_counter() - start)
        box = max(min(left, 2.0 * part.estimate_s), 1.0)
        entry["argv"] = list(argv)
        try:
            if isolate:
                entry["result"] = run_isolated(argv, folder / f"{part.name}.json", folder / f"{part.name}.log", box,
                                               part.env, part.module)
            else:
                entry["result"] = run_in_process(argv, folder / f"{part.name}.json", part.module)
            entry["status"] = "ok"
            entry.pop("error", None)
            break
        except Exception as err:  # noqa: BLE001 - one failing part must not stop the suite
            entry["status"] = "timeout" if isinstance(err, TimeoutError) else "error"
            entry["error"] = f"{type(err).__name__}: {err}"[-3000:]
            if not isolate:
                (folder / f"{part.name}.log").write_text(traceback.format_exc())
            tried.append(argv[-1])
            if not any(marker in entry["error"] for marker in OUT_OF_MEMORY):
                break
    if len(tried) > 0 and entry["status"] == "ok":
        entry["note"] = f"out of memory at per-device batch {', '.join(tried)}"
    entry["seconds"] = time.perf_counter() - start
    return entry
