"""Orbax checkpoints of the train state and the data iterator, with resume, fallback and best-N.

Layout: `<workdir>/checkpoints/<step>/{state,data}`. `state` is the pytree (params, optimizer
state, step, rng, EMA) saved asynchronously; `data` holds one JSON file per process with that
host's grain iterator state (`process_<i>-of-<n>.json`, grain's own checkpoint handler), so every
host of a pod resumes its own shard of the stream. Restore targets the current mesh's shardings,
so a run resumes on a different device count. `workdir` may be local or a `gs://` URI.

Kept: the newest `keep` checkpoints, plus the `keep_best` with the best value of `best_metric`
(passed to `save` as metrics) when `keep_best` > 0.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required."""


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
    """

    def __init__(self, workdir, keep: int = 3, *, keep_best: int = 0, best_metric: str = "loss",
                 best_mode: str = "min", async_save: bool = True):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode = {best_mode!r}: expected 'min' or 'max'")
        self.directory = _directory(workdir)
        policies = [preservation.LatestN(keep)]
        if keep_best:
            def metric(metrics: dict) -> float:
                return float(metrics[best_metric])

            policies.append(preservation.BestN(get_metric_fn=metric, reverse=best_mode == "min", n=keep_best,
                                               keep_checkpoints_without_metrics=False))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save, create=True,
                                                 preservation_policy=preservation.AnyPreservationPolicy(policies)),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        )

    def save(self, step: int, state: Any, data_iterator: Any, *, metrics: dict | None = None,
             force: bool = False) -> None:
        """Saves `state` (async) and this host's iterator position; `metrics` rank best-N."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         data=grain.checkpoint.CheckpointSave(data_iterator)),
                          metrics=metrics, force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest readable checkpoint, or None if there is none.

        `data_iterator` is moved to the saved position. A checkpoint that fails to read
        (corrupt, half-written) is logged and skipped in favour of the previous one; if none can
        be read, `CheckpointError` names the directory and each failure.
        """
        steps = self.steps()
        if not steps:
            return None
        errors = []
        for step in reversed(steps):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=grain.checkpoint.CheckpointRestore(data_iterator)))
                if errors:
                    logging.warning("checkpoints %s unreadable; resumed from step %d", errors, step)
                return step, restored["state"]
            except Exception as err:  # orbax/tensorstore/json raise many types for damaged files
                errors.append(f"{step} ({type(err).__name__}: {str(err)[:200]})")
        raise CheckpointError(f"{self.directory}: no readable checkpoint among steps {steps}: {'; '.join(errors)}")

    def read(self, step: int) -> tuple[Any, dict]:
        """(state, data state of process 0) of one step as saved (host arrays, no target shardings)."""
        # Target: the saved shapes on one local device, whatever topology wrote them.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        saved = self.manager.item_metadata(step)["state"]
        target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        files = sorted((self.directory / str(step) / "data").glob("process_0-of-*.json"))
        return restored["state"], json.loads(files[0].read_text()) if files else {}

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """Shape/dtype/sharding structs of a state, the restore target."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
