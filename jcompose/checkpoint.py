"""Orbax checkpoints of the train state and the data iterator, with resume and fallback.

Layout: `<workdir>/checkpoints/<step>/{state,data}`. `state` is the pytree (params, optimizer
state, step, rng, EMA) saved asynchronously; `data` is the grain iterator state as JSON. Restore
targets the current mesh's shardings, so a run resumes on a different device count.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required."""


class Checkpointer:
    def __init__(self, workdir: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 create=True),
            item_names=("state", "data"),
        )

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         data=ocp.args.JsonSave(data_state)), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """(step, state, data_state) of the newest readable checkpoint, or None if there is none.

        A checkpoint that fails to read (corrupt, half-written) is logged and skipped in favour of
        the previous one; if none can be read, `CheckpointError` names the directory.
        """
        steps = self.steps()
        if not steps:
            return None
        errors = []
        for step in reversed(steps):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                if errors:
                    logging.warning("checkpoints %s unreadable; resumed from step %d", errors, step)
                return step, restored["state"], dict(restored["data"])
            except Exception as err:  # orbax/tensorstore raise many types for damaged files
                errors.append(f"{step} ({type(err).__name__}: {str(err)[:200]})")
        raise CheckpointError(f"{self.directory}: no readable checkpoint among steps {steps}: {'; '.join(errors)}")

    def read(self, step: int) -> tuple[Any, dict]:
        """(state, data_state) of one step as saved (host arrays, no target shardings): for tools."""
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                       data=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["data"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """Shape/dtype/sharding structs of a state, the restore target."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
