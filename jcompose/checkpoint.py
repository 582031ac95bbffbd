"""Orbax checkpoints of the train state and the data iterator, with resume, fallback and best-N.

Layout: `<workdir>/checkpoints/<step>/{state,data}`. `state` is the pytree (params, optimizer
state, step, rng, EMA) saved asynchronously; `data` holds one JSON file per process with that
host's grain iterator state (`process_<i>-of-<n>.json`, grain's own checkpoint handler), so every
host of a pod resumes its own shard of the stream. Restore targets the current mesh's shardings,
so a run resumes on a different device count. `workdir` may be local or a `gs://` URI.

Kept: the newest `keep` checkpoints, plus the `keep_best` with the best value of `best_metric`
(passed to `save` as metrics) when `keep_best` > 0.

Damage and mismatch. A checkpoint whose files cannot be read is damaged: `restore_latest` moves it
to `<workdir>/checkpoints/damaged/<step>` (as it is, never deleted; a warning names the new place)
and tries the previous one, so training redoes the lost steps once and saves them anew. A
checkpoint that reads fine but whose tree differs from the state the config builds (another
method, EMA switched on or off, another model size) is not damage: `CheckpointMismatch` lists
every differing path and shape, and nothing is moved.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from jcompose import cli, storage

DAMAGED = "damaged"  # sub-folder of the checkpoints directory holding the damaged steps


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint whose tree (paths, shapes, dtypes) differs from the restore target."""


class CheckpointWriteError(CheckpointError):
    """The run could not write (full disk, read-only or denied storage); the checkpoints before are intact."""


def _key(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaves(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """{"params.unet.conv_in.kernel": (shape, dtype name)} for arrays or orbax ArrayMetadata leaves."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(_key(k) for k in path): (tuple(leaf.shape), str(jax.numpy.dtype(leaf.dtype)))
            for path, leaf in flat}


def tree_differences(saved: Any, wanted: Any, limit: int = 12) -> list[str]:
    """What differs between a checkpoint's tree and the restore target, one line per path.

    Args: saved, wanted: pytrees with `.shape` / `.dtype` leaves (arrays, ShapeDtypeStructs or
    orbax metadata). Returns at most `limit` lines (and a count of the rest); [] when they fit.
    """
    a, b = _leaves(saved), _leaves(wanted)
    lines = []
    for path in sorted(a.keys() | b.keys()):
        if path not in b:
            lines.append(f"{path}: only in the checkpoint")
        elif path not in a:
            lines.append(f"{path}: only in this config")
        elif a[path] != b[path]:
            (sa, da), (sb, db) = a[path], b[path]
            lines.append(f"{path}: saved {sa} {da}, this config {sb} {db}")
    # Summarise subtrees that are wholly on one side (e.g. "ema" with its hundreds of arrays).
    lines = _collapse(lines, a, b)
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def _collapse(lines: list[str], saved: dict, wanted: dict) -> list[str]:
    out: list[str] = []
    for side, mine, other in (("only in the checkpoint", saved, wanted), ("only in this config", wanted, saved)):
        paths = [line.split(": ", 1)[0] for line in lines if line.endswith(side)]
        done: set[str] = set()
        for path in paths:
            if path in done:
                continue
            parts = path.split(".")
            # The shortest prefix with nothing of it on the other side.
            for n in range(1, len(parts) + 1):
                prefix = ".".join(parts[:n])
                if not any(p == prefix or p.startswith(prefix + ".") for p in other):
                    break
            members = [p for p in paths if p == prefix or p.startswith(prefix + ".")]
            done.update(members)
            count = sum(1 for p in mine if p == prefix or p.startswith(prefix + "."))
            out.append(f"{prefix}: {side}" + (f" ({count} arrays)" if count > 1 else ""))
    return out + [line for line in lines if not line.endswith(("only in the checkpoint", "only in this config"))]


def _directory(workdir: str | epath.PathLike) -> epath.Path:
    path = epath.Path(workdir)
    return (path if "://" in str(workdir) else path.absolute()) / "checkpoints"


class Checkpointer:
    """Saves and restores (state, data iterator) pairs in `<workdir>/checkpoints`.

    Args:
      workdir: the run directory (local path or gs://...).
      keep: newest checkpoints kept.
      keep_best: additionally kept checkpoints with the best `best_metric` (0: none).
      best_metric, best_mode: the metrics key ranking checkpoints and whether lower ("min") or
        higher ("max") is better.
      async_save: write the state in a background thread (the step loop continues).
      writer: the training run that holds the workdir: half-written steps an earlier run left are
        removed at the start (readers such as `compose` leave the folder as it is).

    A save that fails for lack of space or a read-only or denied folder (now, or in the background,
    reported by the next `save`, `wait` or `close`) raises CheckpointWriteError naming the folder,
    the step, the last good step and the space needed; its half-written step folder is removed.
    """

    def __init__(self, workdir, keep: int = 3, *, keep_best: int = 0, best_metric: str = "loss",
                 best_mode: str = "min", async_save: bool = True, writer: bool = False):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode = {best_mode!r}: expected 'min' or 'max'")
        self.directory = _directory(workdir)
        self._pending: int | None = None  # the step whose background save has not been confirmed
        self._state_bytes = 0  # bytes of the arrays of the last state saved (the space a step needs, at least)
        if writer:
            storage.hide_reported_faults()
        policies = [preservation.LatestN(keep)]
        if keep_best:
            def metric(metrics: dict) -> float:
                return float(metrics[best_metric])

            policies.append(preservation.BestN(get_metric_fn=metric, reverse=best_mode == "min", n=keep_best,
                                               keep_checkpoints_without_metrics=False))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=writer,
                preservation_policy=preservation.AnyPreservationPolicy(policies),
                # Step folders are made before save() returns, so a read-only folder raises here instead
                # of timing out minutes later in the background thread.
                async_options=ocp.AsyncOptions(create_directories_asynchronously=False)),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        )

    def save(self, step: int, state: Any, data_iterator: Any, *, metrics: dict | None = None,
             force: bool = False) -> None:
        """Saves `state` (async) and this host's iterator position; `metrics` rank best-N.

        Raises CheckpointWriteError when this step, or the previous one still being written, fails for
        lack of space or write access."""
        self.wait()
        try:
            storage.check_writable(self.directory)  # a read-only or lost folder fails here, not in orbax's threads
            self._state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             data=grain.checkpoint.CheckpointSave(data_iterator)),
                              metrics=metrics, force=force)
        except Exception as err:
            self._raise_write_error(step, err)
            raise
        self._pending = step

    def wait(self) -> None:
        """Waits for the background save; CheckpointWriteError when it failed for lack of space or access."""
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            self._raise_write_error(step, err)
            raise

    def check_writable(self) -> None:
        """CheckpointWriteError unless a file can be created in the checkpoints folder (as `save` needs)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            storage.check_writable(self.directory)
        except OSError as err:
            fault = storage.write_failure(err) or err.strerror or cli.message(err)
            raise CheckpointWriteError(f"{self.directory}: not writable ({fault}); the run saves its checkpoints "
                                       "there") from None

    def _raise_write_error(self, step: int | None, err: BaseException) -> None:
        """Raises CheckpointWriteError for `step` when `err` is a storage fault (after removing its partial
        folder); returns otherwise."""
        fault = storage.write_failure(err)
        if fault is None or isinstance(err, CheckpointWriteError):
            return
        if step is not None:
            self._discard_partial(step)
        raise self.write_error(f"could not save checkpoint step {step}", fault) from err

    def write_error(self, what: str, fault: str) -> CheckpointWriteError:
        """'<checkpoints>: <what>: <fault> (needs, free). The last good checkpoint, step N, is intact ...': the
        error for any write the run could not make (a checkpoint, a log, a sample grid)."""
        if self._pending is not None:  # its outcome decides the last good step (and a failure is the error)
            self.wait()
        good = self.steps()
        text = f"{self.directory}: {what}: {fault}"
        if fault in storage.SPACE_FAULTS:
            needed = (storage.folder_bytes(self.directory / str(good[-1])) if good else 0) or self._state_bytes
            free = storage.free_bytes(self.directory)
            text += (f" (a checkpoint needs about {storage.format_bytes(needed)}"
                     + (f", {storage.format_bytes(free)} free)" if free is not None else ")"))
        fix = ("free some space (or lower train.keep)" if fault in storage.SPACE_FAULTS
               else "make the folder writable")
        if good:
            text += (f". The last good checkpoint, step {good[-1]}, is intact and the run resumes from it exactly: "
                     f"{fix} and run the same command again")
        else:
            text += f". No checkpoint was saved yet: {fix} and run the same command again (it starts over)"
        return CheckpointWriteError(text)

    def _discard_partial(self, step: int) -> None:
        """Removes what a failed save of `step` left (orbax's temporary folder; an uncommitted step folder
        on object stores), so neither a rerun nor the space count trips on it."""
        with contextlib.suppress(Exception):  # orbax's step list, read anew: the failed step is not in it
            self.manager.reload()
        if jax.process_index() != 0:
            return
        partial = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        if step not in self.steps() and (self.directory / str(step)).exists():
            partial.append(self.directory / str(step))
        for folder in partial:
            with contextlib.suppress(OSError):
                folder.rmtree()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest readable checkpoint, or None if there is none.

        `data_iterator` is moved to the saved position. A damaged checkpoint (unreadable, half
        written) is moved to `checkpoints/damaged/<step>` with a warning naming it, and the previous
        one is tried; `CheckpointError` when every one was damaged. A readable checkpoint that does
        not fit `abstract_state` raises `CheckpointMismatch` listing the differences (nothing moved).
        """
        steps = self.steps()
        if not steps:
            return None
        damaged = []
        for step in reversed(steps):
            try:
                saved = self.manager.item_metadata(step)["state"]
                _leaves(saved)
            except Exception as err:  # orbax/tensorstore/json raise many types for damaged files
                saved, failure = None, err
            if saved is not None:
                differences = tree_differences(saved, abstract_state)
                if differences:
                    raise CheckpointMismatch(
                        f"{self.directory / str(step)}: checkpoint step {step} does not fit the state this config "
                        f"builds (it is readable, not damaged): {'; '.join(differences)}. Train into a new "
                        "--workdir, or use the config the run was started with.")
                try:
                    restored = self.manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=grain.checkpoint.CheckpointRestore(data_iterator)))
                    failure = None
                except Exception as err:
                    failure = err
            if _all_processes_ok(failure is None):
                return step, restored["state"]
            damaged.append(step)
            self._set_aside(step, failure)
        raise CheckpointError(f"{self.directory}: no readable checkpoint: steps {damaged} were damaged and moved "
                              f"to {self.directory / DAMAGED}")

    def _set_aside(self, step: int, error: BaseException | None) -> None:
        """Moves a damaged step folder to `damaged/<step>` (`<step>.1`, ... when taken) on process 0."""
        source = self.directory / str(step)
        target = self.directory / DAMAGED / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            n = 0
            while target.exists():
                n += 1
                target = self.directory / DAMAGED / f"{step}.{n}"
            _move_tree(source, target)
        else:
            target = self.directory / DAMAGED / f"{step}[.n]"
        _sync(f"jcompose_set_aside_{step}")
        reason = f"{type(error).__name__}: {str(error)[:300]}" if error is not None else "unreadable on another host"
        logging.warning("checkpoint step %d is damaged (%s); moved it to %s and trying the previous one",
                        step, reason, target)
        self.manager.reload()

    def read(self, step: int) -> tuple[Any, dict]:
        """(state, data state of process 0) of one step as saved (host arrays, no target shardings).

        Raises CheckpointError naming the step folder when it is missing or damaged.
        """
        folder = self.directory / str(step)
        if step not in self.steps():
            raise CheckpointError(f"{folder}: no checkpoint step {step} (steps: {self.steps()})")
        # Target: the saved shapes on one local device, whatever topology wrote them.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        try:
            saved = self.manager.item_metadata(step)["state"]
            target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
            files = sorted((folder / "data").glob("process_0-of-*.json"))
            data = json.loads(files[0].read_text()) if files else {}
        except Exception as err:
            raise CheckpointError(f"{folder}: step {step} is damaged ({type(err).__name__}: {str(err)[:200]})") from err
        return restored["state"], data

    def read_latest(self) -> tuple[int, Any, dict]:
        """(step, state, data state) of the newest readable step, as `read`; damaged newer steps are
        skipped with a warning (and left where they are: readers do not change a run)."""
        errors = []
        for step in reversed(self.steps()):
            try:
                return (step, *self.read(step))
            except CheckpointError as err:
                logging.warning("checkpoint step %d is damaged; using the previous one (%s)", step, err)
                errors.append(step)
        raise CheckpointError(f"{self.directory}: no readable checkpoint" + (
            f": steps {errors} are damaged" if errors else " (no checkpoints/<step> folders)"))

    def close(self) -> None:
        """Waits for the last save (CheckpointWriteError when it failed) and releases orbax's threads."""
        try:
            self.wait()
        finally:
            self.manager.close()


def _move_tree(source: epath.Path, target: epath.Path) -> None:
    """Renames a folder; where the file system cannot (object stores), copies it, then removes it."""
    try:
        source.rename(target)
        return
    except OSError:
        if not source.is_dir():
            raise
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            path.copy(destination)
    source.rmtree()


def _all_processes_ok(ok: bool) -> bool:
    """Whether every process succeeded (all hosts must restore the same step)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(np.array([ok])).all())


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def abstract_like(state: Any) -> Any:
    """Shape/dtype/sharding structs of a state, the restore target."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
