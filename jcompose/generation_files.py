"""The files of a benchmark-generation folder (`jcompose/generation.py`): whole-file writes, PNG encoding, the
validity check a resume relies on, and the settings guard (`.generation.json`, then `manifest.json`).

Every function takes local paths or etils paths (gs://...)."""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import numpy as np
from etils import epath

from jcompose import cli
from jcompose.cli import InputError

MANIFEST = "manifest.json"
SETTINGS = ".generation.json"  # the settings of a started folder (hidden: evaluate's folder scans skip it)


def _is_remote(path: epath.Path) -> bool:
    return "://" in os.fspath(path)


def write_file(path: epath.Path, data: bytes) -> None:
    """Writes `data` whole: a hidden temporary sibling renamed to `path` (gs://: one object write)."""
    if _is_remote(path):
        path.write_bytes(data)
        return
    partial = path.parent / f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def encode_png(rgb: np.ndarray) -> bytes:
    """uint8 RGB (H, W, 3) -> PNG bytes."""
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode the image as PNG")
    return data.tobytes()


def is_valid_image(path: epath.Path, size: tuple[int, int], modes: tuple[str, ...] = ("RGB",)) -> bool:
    """Whether `path` is an image file that decodes completely, has one of the PIL `modes` and (H, W) = `size`."""
    from PIL import Image

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a truncated file fails here, not at open
            return image.mode in modes and image.size == (size[1], size[0])
    except (OSError, ValueError, SyntaxError):  # missing, unreadable, not an image, truncated
        return False


def image_size(path) -> tuple[int, int]:
    """(H, W) of an image file from its header (nothing decoded); InputError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with epath.Path(path).open("rb") as f, Image.open(f) as image:  # a bucket's file too
            return image.size[1], image.size[0]
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(f"{path}: not a readable image ({cli.message(err)})") from None


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def check_settings(out: epath.Path, settings: dict, flag: str = "--out") -> None:
    """Refuses to resume a folder started (or finished) with other settings, naming each difference and the
    `flag` (or config field) that chose the folder."""
    settings = jsonable(settings)
    for name in (SETTINGS, MANIFEST):
        path = out / name
        if not path.exists():
            continue
        try:
            recorded = json.loads(path.read_text())
        except ValueError as err:
            raise InputError(f"{flag} {out}: {path} is not JSON ({err}); remove it or choose another {flag}") from None
        recorded = recorded.get("settings", recorded)
        differ = [f"{k} {recorded.get(k)!r} (this run: {v!r})" for k, v in settings.items() if recorded.get(k) != v]
        if differ:
            raise InputError(f"{flag} {out}: its images were generated with other settings ({'; '.join(differ)}); "
                             f"choose another {flag} or remove that folder")
        return
