"""Generated folders appear whole or not at all.

A tiny base model, synthetic data, a converted checkpoint, a benchmark folder or an export is written
under a hidden temporary name next to its place (`.<name>.partial-<host>-<pid>-<hex>`) and renamed
into place when complete. A kill in the middle leaves only the hidden folder: the next run sees no
folder, writes it anew and removes the partial ones whose writer is gone.

    with atomic.folder(workdir / "base" / "sd15", owns=atomic.only(BASE_NAMES)) as partial:
        write_everything_into(partial)

An existing folder at the place (an incomplete one an older jcompose left, or the previous output of
a rerun) is replaced when `owns` says it is this writer's kind of folder (every entry one of its
names: nothing else of the user's is inside), else refused with an InputError before anything is
written. When another process completes the same folder while this one writes (processes of one
multi-host run writing the same tiny base), the first to finish wins and the other's copy is dropped.

Local and NFS folders only: an object store (gs://) has no folder rename, so there the folder is
written in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from etils import epath

from jcompose.cli import InputError

PARTIAL = ".partial-"


def only(names: Iterable[str]) -> Callable[[Path], bool]:
    """`owns` predicate: a folder whose entries all have one of `names` (an empty folder too)."""
    allowed = frozenset(names)
    return lambda path: all(entry.name in allowed for entry in path.iterdir())


def _any(path: Path) -> bool:
    return True


def _partial_name(name: str) -> str:
    return f".{name}{PARTIAL}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _writer_gone(partial: Path) -> bool:
    """Whether the process that named `partial` (on this host) is no longer running."""
    host_pid = partial.name.rsplit(PARTIAL, 1)[-1].rsplit("-", 1)[0]
    host, _, pid = host_pid.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's writer: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_abandoned(final: Path) -> None:
    """Removes the partial copies of `final` that killed writers on this host left."""
    for partial in final.parent.glob(f".{final.name}{PARTIAL}*"):
        if _writer_gone(partial):
            shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def folder(final: str | os.PathLike, *, owns: Callable[[Path], bool] = _any) -> Iterator[Path]:
    """Yields a fresh temporary folder beside `final`; renames it to `final` when the block completes.

    Args:
      final: where the folder belongs.
      owns: whether an existing `final` is this writer's kind of folder (complete or not), to be
        replaced; when it is not, InputError before anything is written. Default: always.

    On an exception (or a kill) inside the block `final` is left as it was.
    """
    if "://" in os.fspath(final):  # object stores: no rename, write in place
        yield epath.Path(final)
        return
    final = Path(final)
    existed = final.exists()
    if existed and (not final.is_dir() or not owns(final)):
        what = "a file" if not final.is_dir() else "a folder holding other files"
        raise InputError(f"{final}: is {what}; choose a new place (or remove it) for the generated folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / _partial_name(final.name)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _commit(partial, final, replace=existed)
    remove_abandoned(final)


def _commit(partial: Path, final: Path, *, replace: bool) -> None:
    """Renames `partial` to `final`; an existing `final` is moved aside first (and then removed) when
    `replace`, else (another process finished first) this copy is dropped."""
    if final.exists():
        if not replace:
            shutil.rmtree(partial, ignore_errors=True)
            return
        aside = final.parent / f".{final.name}.replaced-{uuid.uuid4().hex[:8]}"
        final.rename(aside)
        try:
            partial.rename(final)
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        return
    try:
        partial.rename(final)
    except OSError:  # created by another process between the check and the rename
        if not final.exists():
            raise
        shutil.rmtree(partial, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes a small file whole: a temporary sibling renamed over `path` (readers and a kill never see
    half of it). gs:// paths are written directly (one object write is atomic there)."""
    if "://" in os.fspath(path):
        epath.Path(path).write_text(text)
        return
    path = Path(path)
    partial = path.parent / _partial_name(path.name)
    try:
        partial.write_text(text)
        os.replace(partial, path)
    except BaseException as err:
        partial.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:  # name the file meant, not the hidden copy
            raise OSError(err.errno, err.strerror, os.fspath(path)) from err
        raise
