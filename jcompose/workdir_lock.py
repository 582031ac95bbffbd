"""One run per workdir: `<workdir>/run.lock` names the run that holds the folder.

Two training runs in one folder would interleave their checkpoints (the last one equals neither
run). `acquire(workdir)` creates the lock file or refuses with `WorkdirLocked`, one line naming the
holder: its host, PID, start time and command. The holder rewrites the file's heartbeat every
quarter lease (a daemon thread) and removes the file when the run ends (`release`).

A lock whose holder is gone is taken over with a warning naming it:
- on the holder's own host, when its PID is no longer running (or is now another process: the
  recorded process start time differs), at once;
- from another host (shared storage: NFS, gs://, where PIDs mean nothing), when its heartbeat is
  older than `lease` seconds (`train --lock_lease`, default 10 minutes).

Creation is atomic: on a local or NFS folder the complete file is hard-linked into place (the link
fails if any lock exists); on an object store (gs://) a single object write is atomic but there is
no create-if-absent through epath, so the writer reads the object back after `settle` seconds and
gives way if another run's write replaced its own (last writer wins, the loser refuses).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from etils import epath

from jcompose.cli import InputError

LOCK_NAME = "run.lock"
DEFAULT_LEASE_S = 600.0


class WorkdirLocked(InputError):
    """Another live run holds the workdir (the message names it)."""


def _is_remote(path: epath.Path) -> bool:
    return "://" in str(path)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def describe(holder: dict[str, Any]) -> str:
    """'host H, pid P, started T, command "..."' of a lock's content."""
    command = " ".join(str(a) for a in holder.get("command", []))
    if len(command) > 200:
        command = command[:197] + "..."
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}, "
            f"command {command!r}")


class WorkdirLock:
    """A held lock (from `acquire`); `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, path: epath.Path, holder: dict[str, Any], lease: float, clock: Callable[[], float]):
        self.path, self.holder, self.lease, self._clock = path, holder, lease, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="jcompose-workdir-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = max(self.lease / 4, 0.05)
        while not self._stop.wait(interval):
            try:
                current = _read(self.path)
                if current is None or current.get("token") != self.holder["token"]:
                    logging.error("the lock %s was taken over by another run (%s); this run no longer holds its "
                                  "workdir", self.path, describe(current or {}))
                    return
                self.holder["heartbeat"] = self._clock()
                _replace(self.path, self.holder)
            except OSError as err:  # a full or unreachable disk: the run reports its own write errors
                logging.warning("could not refresh the workdir lock %s: %s", self.path, err)

    def release(self) -> None:
        """Stops the heartbeat and removes the lock file if this run still holds it."""
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            current = _read(self.path)
            if current is not None and current.get("token") == self.holder["token"]:
                self.path.unlink()

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read(path: epath.Path) -> dict[str, Any] | None:
    """The lock's content; None when there is no lock; {} when it cannot be parsed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _replace(path: epath.Path, holder: dict[str, Any]) -> None:
    """Writes the lock's content whole (readers never see half of it)."""
    text = json.dumps(holder, indent=1) + "\n"
    if _is_remote(path):
        path.write_text(text)  # one object write: atomic on object stores
        return
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex}"
    temp.write_text(text)
    os.replace(temp, path)


def _create_local(path: epath.Path, holder: dict[str, Any]) -> bool:
    """Creates the lock file complete, or returns False when one exists (hard link: atomic, also on NFS)."""
    temp = path.parent / f".{path.name}.{holder['token']}"
    temp.write_text(json.dumps(holder, indent=1) + "\n")
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    finally:
        temp.unlink()


def _stale(holder: dict[str, Any], path: epath.Path, lease: float, now: float) -> str | None:
    """Why the lock's holder is gone (None: it may still be running)."""
    if not holder:
        age = now - _mtime(path, now)
        return f"unreadable lock file, {age:.0f} s old" if age > lease else None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        pid = holder["pid"]
        if not _pid_running(pid):
            return f"pid {pid} is no longer running on this host"
        started = holder.get("process_start")
        if started is not None and _process_start(pid) not in (None, started):
            return f"pid {pid} is now another process"
        return None
    silent = now - float(holder.get("heartbeat", 0.0))
    if silent > lease:
        return f"no heartbeat for {silent:.0f} s (lease {lease:.0f} s)"
    return None


def _mtime(path: epath.Path, default: float) -> float:
    try:
        return float(path.stat().mtime) or default
    except OSError:
        return default


def acquire(workdir: str | epath.PathLike, *, lease: float = DEFAULT_LEASE_S, command: Sequence[str] | None = None,
            clock: Callable[[], float] = time.time, settle: float = 1.0) -> WorkdirLock:
    """Takes `<workdir>/run.lock` (the folder must exist) and starts its heartbeat.

    Args:
      workdir: the run folder (local, NFS or gs://).
      lease: seconds without a heartbeat after which another host's lock counts as abandoned.
      command: recorded as the holder's command line (default sys.argv).
      clock: time source (tests).
      settle: object stores only: seconds between writing the lock and reading it back.

    Raises:
      WorkdirLocked: another live run holds it (the message names its host, PID, start and command).
    """
    if lease <= 0:
        raise InputError(f"--lock_lease {lease}: expected a positive number of seconds")
    path = epath.Path(workdir) / LOCK_NAME
    now = clock()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
              "started": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="seconds"),
              "heartbeat": now, "command": list(sys.argv if command is None else command),
              "token": uuid.uuid4().hex}
    for _ in range(5):  # a few rounds: another run may take over or release between our steps
        current = _read(path)
        if current is not None:
            reason = _stale(current, path, lease, clock())
            if reason is None:
                raise WorkdirLocked(
                    f"{epath.Path(workdir)}: another run is using this workdir ({describe(current)}). Wait for it "
                    f"to end or stop it; if it is gone, its lock {path} is taken over after the lease "
                    f"({lease:.0f} s without a heartbeat) or when you delete that file.")
            if not _take_over(path, current):
                continue
            logging.warning("took over the workdir lock %s of a run that is gone (%s; %s)", path, reason,
                            describe(current))
        if _is_remote(path):
            path.write_text(json.dumps(holder, indent=1) + "\n")
            time.sleep(settle)
            if (_read(path) or {}).get("token") == holder["token"]:
                return WorkdirLock(path, holder, lease, clock)
        elif _create_local(path, holder):
            return WorkdirLock(path, holder, lease, clock)
    current = _read(path) or {}
    raise WorkdirLocked(f"{epath.Path(workdir)}: another run took this workdir while this one started "
                        f"({describe(current)})")


def _take_over(path: epath.Path, stale: dict[str, Any]) -> bool:
    """Removes a stale lock; False when it changed meanwhile (another run took it first)."""
    if _is_remote(path):
        return True  # overwritten by the caller's write, then read back
    aside = path.parent / f".{path.name}.stale.{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)  # only one of several runs taking over gets the file
    except FileNotFoundError:
        return False
    try:
        if _read(aside) == stale:
            return True
        with contextlib.suppress(FileExistsError):  # a live run's fresh lock, moved by mistake: put it back
            os.link(aside, path)
        return False
    finally:
        aside.unlink()


def acquire_on_process_zero(workdir: str | epath.PathLike, lease: float = DEFAULT_LEASE_S) -> WorkdirLock | None:
    """For a (possibly multi-host) run: process 0 takes the lock (None on the others); every process learns
    whether it did, so all stop together (WorkdirLocked) when another run holds the folder."""
    import jax

    lock, refused = None, None
    if jax.process_index() == 0:
        try:
            lock = acquire(workdir, lease=lease)
        except WorkdirLocked as err:
            refused = err
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        if multihost_utils.broadcast_one_to_all(np.int32(refused is not None)) and refused is None:
            refused = WorkdirLocked(f"{workdir}: process 0 found this workdir held by another run (its error "
                                    "names the holder)")
    if refused is not None:
        raise refused
    return lock
