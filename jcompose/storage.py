"""What a failed write means, how much room there is, and closing a run's outputs on a full disk.

A full disk or a read-only folder reaches a run as many exception types: Python's OSError (errno),
tensorstore's `ValueError: RESOURCE_EXHAUSTED ... [os_error_code='28']` raised inside orbax (often
wrapped in another exception), an object store's status (PERMISSION_DENIED, RESOURCE_EXHAUSTED).
`write_failure` reads an exception and what it wraps and says which storage fault it is, so callers
can turn it into one error line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

from etils import epath

NO_SPACE = "no space left on device"
QUOTA = "disk quota exceeded"
READ_ONLY = "read-only file system"
DENIED = "permission denied"
EXHAUSTED = "storage exhausted (a full disk, a quota or the store's rate limit)"
SPACE_FAULTS = (NO_SPACE, QUOTA, EXHAUSTED)

_ERRNOS = {errno.ENOSPC: NO_SPACE, errno.EDQUOT: QUOTA, errno.EROFS: READ_ONLY, errno.EACCES: DENIED,
           errno.EPERM: DENIED}
# Substrings of the messages tensorstore / orbax / object-store clients raise for the same faults.
_TEXTS = (("No space left on device", NO_SPACE), ("os_error_code='28'", NO_SPACE), ("Disk quota exceeded", QUOTA),
          ("os_error_code='122'", QUOTA), ("Read-only file system", READ_ONLY), ("os_error_code='30'", READ_ONLY),
          ("Permission denied", DENIED), ("PERMISSION_DENIED", DENIED), ("RESOURCE_EXHAUSTED", EXHAUSTED))


def write_failure(err: BaseException | None) -> str | None:
    """The storage fault behind `err` or any exception it wraps (NO_SPACE, QUOTA, READ_ONLY, DENIED), else None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _ERRNOS:
            return _ERRNOS[err.errno]
        fault = fault_in_text(str(err))
        if fault is not None:
            return fault
        err = err.__cause__ or err.__context__
    return None


def fault_in_text(text: str) -> str | None:
    """The storage fault a message reports (as `write_failure`), else None."""
    return next((fault for needle, fault in _TEXTS if needle in text), None)


class _HideReportedFaults(logging.Filter):
    """Drops orbax's ERROR logs of a storage fault (each with a traceback, from its background threads and
    their asyncio tasks): the checkpointer reports the fault itself, as one error line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "orbax" not in record.pathname + record.getMessage():
            return True
        error = record.exc_info[1] if record.exc_info else None
        return write_failure(error) is None and fault_in_text(record.getMessage()) is None


_hidden = False


def hide_reported_faults() -> None:
    """Installs (once per process) `_HideReportedFaults` on absl's and asyncio's loggers, and an unraisable
    hook that drops tensorstore's late callbacks into the event loop orbax closed after a failed save
    ("RuntimeError: Event loop is closed", printed with a traceback). Both only hide reports of faults
    the checkpointer reports itself; everything else passes unchanged."""
    global _hidden
    if _hidden:
        return
    _hidden = True
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_HideReportedFaults())
    previous = sys.unraisablehook

    def unraisable(info) -> None:
        if isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed":
            return
        previous(info)

    sys.unraisablehook = unraisable


def check_writable(folder: epath.Path) -> None:
    """Creates and removes a probe file in `folder` (unique per process: hosts may share it); raises the OSError."""
    probe = folder / f".write_test_{uuid.uuid4().hex}"
    probe.write_text("")
    probe.unlink()


def as_path(path) -> epath.Path | Path:
    """A local `pathlib.Path`, or an etils path for a URL (gs://...): pathlib folds 'gs://b/run' into the
    local 'gs:/b/run', so a path that may be a bucket's must not go through it."""
    return epath.Path(path) if "://" in str(path) else Path(path)


def free_bytes(folder: epath.Path) -> int | None:
    """Free space where `folder` lives (None on object stores, which have no such number)."""
    if "://" in str(folder):
        return None
    try:
        return shutil.disk_usage(os.fspath(folder)).free
    except OSError:
        return None


def folder_bytes(folder: epath.Path) -> int:
    """Space a folder takes: allocated blocks for local files, object sizes on object stores."""
    total = 0
    if "://" in str(folder):
        for path in folder.rglob("*"):
            if not path.is_dir():
                total += int(path.stat().length)
        return total
    for root, _, files in os.walk(os.fspath(folder)):
        for name in files:
            stat = os.lstat(os.path.join(root, name))
            total += stat.st_blocks * 512 if hasattr(stat, "st_blocks") else stat.st_size
    return total


def format_bytes(n: float) -> str:
    """1536 -> '2 KiB', 5.2e6 -> '5.0 MiB', 3e9 -> '2.8 GiB'."""
    if n < 2**20:
        return f"{n / 2**10:.0f} KiB"
    if n < 2**30:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**30:.1f} GiB"


# ------------------------------------------------------------------ a run's outputs on a failing disk


@contextlib.contextmanager
def write_errors(checkpoints, when: str):
    """OSErrors of a full or read-only disk inside become the CheckpointWriteError of
    `checkpoints.write_error` (a `jcompose.checkpoint.Checkpointer`), naming the file and `when`."""
    try:
        yield
    except OSError as err:
        fault = write_failure(err)
        if fault is None:
            raise
        raise checkpoints.write_error(f"could not write {err.filename or 'the run folder'} {when}", fault) from err


def close_outputs(checkpoints, writer, workdir: epath.Path, *, quiet: bool) -> None:
    """Waits for the last checkpoint (`checkpoints.close()`) and closes the TensorBoard `writer`. After an
    error (`quiet`) their own failures (often the same full disk) are logged, so that error stays the one
    reported; otherwise the first is raised, a storage fault as CheckpointWriteError."""
    from jcompose.checkpoint import CheckpointWriteError

    errors = []
    for close in (checkpoints.close, lambda: close_writer(writer)):
        try:
            close()
        except Exception as err:  # noqa: BLE001 - both must close; reported below
            errors.append(err)
    if quiet:
        for err in errors:
            logging.warning("while stopping: %s", " ".join(str(err).split()))
    elif errors:
        fault = write_failure(errors[0])
        if fault is None or isinstance(errors[0], CheckpointWriteError):
            raise errors[0]
        raise checkpoints.write_error(f"could not write the TensorBoard log in {workdir / 'tb'}", fault) from errors[0]


def close_writer(writer) -> None:
    """Closes the TensorBoard writer. When that fails (a full or read-only disk), the events it could not
    write are dropped before the OSError is raised: tensorboardX would otherwise retry at exit and print
    a traceback."""
    try:
        writer.close()
    except OSError:
        with contextlib.suppress(AttributeError):  # tensorboardX internals; a newer version brings back the noise
            for file_writer in writer.all_writers.values():
                records = file_writer.event_writer._ev_writer._py_recordio_writer
                unwritten, records._writer = records._writer, _Sink()
                with contextlib.suppress(OSError):
                    unwritten.close()
                file_writer.close()
        raise


class _Sink:
    """A file that discards what is written (for event files whose disk is full)."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
