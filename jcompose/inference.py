"""What every method's inference shares: trained params from a run's checkpoint, image files in and out.

Method-specific inference lives next to each method (`jcompose/methods/<name>_inference.py`), and
`python -m jcompose.compose` is a thin command line over them. Errors from user input are
`cli.InputError`s naming the flag and the file.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np

from jcompose import run_record, storage
from jcompose.cli import InputError


def read_image_file(path: Path, what: str) -> np.ndarray:
    """An 8-bit image file as OpenCV reads it (BGR[A] or grey), InputError naming `what` and the path."""
    import cv2

    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"{what} {path}: not a readable image (PNG/JPEG/...)")
    if image.dtype != np.uint8:
        raise InputError(f"{what} {path}: expected 8-bit channels, got {image.dtype}")
    return image


def resolve_checkpoint(path: str) -> tuple[Path, int]:
    """A training workdir (-> newest step) or `<workdir>/checkpoints/<step>` -> (workdir, step). A gs:// run
    (where `launch_tpu.sh` trains) is read in place: its workdir comes back as an etils path."""
    from jcompose.checkpoint import Checkpointer

    p = storage.as_path(path)
    if p.name.isdigit() and p.parent.name == "checkpoints" and p.is_dir():
        return p.parent.parent, int(p.name)
    if (p / "checkpoints").is_dir():
        steps = Checkpointer(p).steps()
        if steps:
            return p, max(steps)
    raise InputError(f"--checkpoint {path}: neither a training workdir with checkpoints/<step> folders nor a "
                     "<workdir>/checkpoints/<step> folder")


def read_checkpoint(path: str) -> tuple[int, dict]:
    """(step, saved state as host arrays) of `--checkpoint`: a step folder as it is, or a workdir's
    newest readable step (a damaged newer one is skipped with a warning naming it, as training does).
    Raises InputError naming the path when there is no readable checkpoint."""
    from jcompose.checkpoint import Checkpointer, CheckpointError

    workdir, step = resolve_checkpoint(path)
    checkpointer = Checkpointer(workdir)
    try:
        if Path(path).name.isdigit():
            return step, checkpointer.read(step)[0]
        step, state, _ = checkpointer.read_latest()
        return step, state
    except CheckpointError as err:
        raise InputError(f"--checkpoint: {err}") from None
    finally:
        checkpointer.close()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255] (rounded)."""
    return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_image(path: Path, rgb: np.ndarray) -> None:
    """Writes uint8 RGB (H, W, 3) to `path` (format from the extension), creating its folder."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise InputError(f"--out {path}: could not write the image (extension .png/.jpg?)")


@dataclasses.dataclass(eq=False)
class Loaded:
    """A method's model as compose loads it (`load_<method>(args)`) and runs it (`run_<method>(loaded, ...)`).

    method: the method object; params: its trained tree; frozen: the frozen trees it samples with; step: the
    checkpoint step (or a release's recorded step). It also keeps the programs compiled for it, one per
    settings key (`program`), so a caller that composes many times with one model (the demo) traces each
    sampler once; jit itself keeps one executable per input shape under each."""

    method: Any
    params: Any
    frozen: Any
    step: Any
    _programs: dict = dataclasses.field(default_factory=dict, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def program(self, key: Hashable, build: Callable[[], Callable]) -> Callable:
        """The program stored under `key`, built by `build()` (e.g. a jax.jit function) on the first call."""
        with self._lock:
            if key not in self._programs:
                self._programs[key] = build()
            return self._programs[key]


def trained_tree(state: dict, *, ema: bool, step: int, checkpoint: str, needs: str, method: str) -> dict:
    """The params (or, with `ema`, the EMA params) of a restored train state, checked to hold `needs`.

    Raises InputError naming the checkpoint when EMA is asked of a run trained without it, or when the
    tree is another method's (it lacks the `needs` subtree).
    """
    if ema and "ema" not in state:
        raise InputError(f"--ema: checkpoint step {step} of {checkpoint} has no EMA params (it was trained "
                         "with train.ema_decay = 0); leave out --ema")
    tree = state["ema"] if ema else state["params"]
    if needs not in tree:
        raise InputError(f"--checkpoint {checkpoint}: step {step} holds {sorted(tree)}, not {method}'s {needs!r}")
    return tree


def run_config(checkpoint: str, method: str, *, base: str | None = None, fallback=None, **folders):
    """(workdir, the config the run was trained with: its `config.json`), checked to be `method`'s, with
    the model folders given on the command line (non-empty `base`, `folders`) put in.

    A run without a record (trained before runs kept one) gets `fallback()` with a warning, or an
    InputError when there is no fallback."""
    import logging

    workdir, _ = resolve_checkpoint(checkpoint)
    config = run_record.read_config(workdir)
    if config is None and fallback is not None:
        logging.warning("%s has no %s: composing with the %s config's defaults (its model settings may differ "
                        "from the run's)", workdir, run_record.RECORD, method)
        config = fallback()
    if config is None:
        raise InputError(f"--checkpoint {checkpoint}: {workdir} has no {run_record.RECORD} (the config the run was "
                         "trained with); runs of this jcompose version write one when they start")
    if config.method != method:
        raise InputError(f"--checkpoint {checkpoint}: a {config.method!r} run, not {method!r}")
    with config.unlocked():
        if base:
            config.model.base = base
        for key, value in folders.items():
            if value:
                config.model[key] = value
    return workdir, config
