"""What the demo's tabs share: a folder per request, the model loaded once, the compose command line (parsed
by compose's own parser), input errors as page messages, and boxes / masks from what the user drew on an
image."""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import shlex
import threading
from pathlib import Path

import numpy as np

from jcompose.cli import InputError

COMPOSE = ("python", "-m", "jcompose.compose")


class RequestFolders:
    """A new folder per request under `root` (`<root>/<method>-<n>`): the drawn masks and the results."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def new(self, method: str) -> Path:
        with self._lock:
            while True:
                folder = self.root / f"{method}-{next(self._counter)}"
                if not folder.exists():
                    folder.mkdir(parents=True)
                    return folder


class LoadedOnce:
    """A tab's model: loaded by its first request with that request's arguments (`load`: a method's
    `load_<method>(args) -> inference.Loaded`, the compose command's own loader) and served to every later
    request, with the programs compiled for it. A load that fails (an InputError) is tried again next time."""

    def __init__(self, load):
        self._load = load
        self._loaded = None
        self._lock = threading.Lock()

    def __call__(self, args):
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load(args)
            return self._loaded


class StepProgress:
    """A tab's progress per denoising step: the tab's samplers, compiled on their first run inside `steps()`,
    report each finished step (`diffusion.reporting_steps`: a callback in the compiled loop, which compose's
    own programs do not have) to the gr.Progress of the request running them. Gradio runs one request per
    tab at a time (the queue's default concurrency), so one reporter per tab suffices. Disabled
    (`enabled=False`), the tab's programs are compose's own, which JAX's compilation cache then shares."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._show = None

    def _report(self, done: int, total: int) -> None:  # called on JAX's callback thread
        show = self._show
        if show is not None:
            show(done, total)

    @contextlib.contextmanager
    def steps(self, progress, desc: str):
        """Within: the steps go to `progress` (a gr.Progress) with `desc`, e.g. "image 1 of 2"."""
        from jcompose import diffusion

        if not self.enabled:
            yield
            return
        request = contextvars.copy_context()  # gr.Progress finds its request through context variables
        self._show = lambda done, total: request.run(progress, (done, total), desc=desc, unit="steps")
        try:
            with diffusion.reporting_steps(self._report):
                yield
        finally:
            self._show = None


def command_line(argv: list[str]) -> str:
    """The shell command that composes `argv` (compose's arguments): what the page shows and offers."""
    return shlex.join([*COMPOSE, *argv])


def parse(argv: list[str]):
    """compose's arguments -> its argparse namespace (the very parser `python -m jcompose.compose` uses)."""
    import contextlib
    import io

    from jcompose import compose

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return compose.build_parser().parse_args(argv)
    except SystemExit:  # argparse's usage error: its last line says which argument
        raise InputError(stderr.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1]) from None


def upload_path(value, what: str) -> str:
    """A gr.File value (a path string, or None when nothing was uploaded) -> the path; InputError naming `what`."""
    if not value:
        raise InputError(f"{what}: upload an image")
    return str(value)


def seeds_of(seed, samples) -> list[int]:
    """The seeds of `samples` images starting at `seed` (sample i uses seed + i, as its CLI command says)."""
    seed, samples = int(seed), int(samples)
    if samples < 1:
        raise InputError(f"samples: {samples}; expected at least 1")
    return [seed + i for i in range(samples)]


def drawn_mask(editor_value, shape: tuple[int, int]) -> np.ndarray | None:
    """The strokes of a gr.ImageEditor value (dict with "layers": RGBA arrays) -> bool (H, W) mask at the
    background's `shape` (nearest-neighbour scaled when the canvas differs), or None when nothing is drawn."""
    import cv2

    layers = (editor_value or {}).get("layers") or []
    drawn = None
    for layer in layers:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4:
            alpha = layer[..., 3] > 0
        else:
            alpha = (layer if layer.ndim == 2 else layer.max(-1)) > 0
        drawn = alpha if drawn is None else (drawn | alpha)
    if drawn is None or not drawn.any():
        return None
    if drawn.shape != tuple(shape):
        drawn = cv2.resize(drawn.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return drawn


def box_text(mask: np.ndarray) -> str:
    """bool (H, W) mask -> 'x1,y1,x2,y2' (its bounding box, pixel corners inclusive: compose's --box form)."""
    ys, xs = np.nonzero(mask)
    return f"{xs.min()},{ys.min()},{xs.max()},{ys.max()}"


def write_mask(path: Path, mask: np.ndarray) -> str:
    """bool (H, W) -> a white-on-black PNG at `path` (compose's --mask form); returns the path."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask.astype(np.uint8) * 255)
    return str(path)


def image_shape(path: str, what: str) -> tuple[int, int]:
    """(H, W) of an image file; InputError naming `what` when it is not an image."""
    from jcompose.inference import read_image_file

    return read_image_file(Path(path), what).shape[:2]
