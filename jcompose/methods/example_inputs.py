"""Input files for a user's first `compose` after a tiny run, written once by training (the optional
`write_example_inputs` of the Method protocol): the methods call these, and the inference modules never
have to be imported by training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jcompose.cli import InputError


def anyscene(batch: dict, folder) -> None:
    """The first example's `foreground` (in [-1, 1]) and `mask` of a training batch as `folder/fg.png` and
    `mask.png` (white = object), ready for `compose anyscene --foreground --mask`. `folder` may be an
    etils path (gs:// workdirs)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rgb = ((np.asarray(batch["foreground"][0], np.float32) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    mask = (np.asarray(batch["mask"][0], np.float32)[..., 0] > 0.5).astype(np.uint8) * 255
    for name, image in (("fg.png", rgb), ("mask.png", mask)):
        with (folder / name).open("wb") as f:
            Image.fromarray(image).save(f, format="PNG")


def anydoor(data_root: str | Path, out: str | Path) -> dict[str, str]:
    """Inputs for a first `compose anydoor` after the tiny run, from its synthetic YouTube-VOS-layout
    set (`<workdir>/data`): the first object of the first video (frame 0) as reference.png +
    reference_mask.png, the last frame of the second video as background.png, and its first object's
    mask there as mask.png. Returns {name: path}."""
    import cv2

    from input_pipeline.records import read_image, read_label_png

    videos = sorted(p for p in (Path(data_root) / "youtube_vos" / "JPEGImages").iterdir() if p.is_dir())
    if len(videos) < 2:
        raise InputError(f"{data_root}: expected a synthetic youtube_vos/ set with at least two videos")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first, second = (sorted(v.glob("*.jpg")) for v in videos[:2])

    def label(frame):
        return (read_label_png(frame.parent.parent.parent / "Annotations" / frame.parent.name / f"{frame.stem}.png")
                == 1).astype(np.uint8) * 255

    files = {"reference": (read_image(first[0]), True), "reference_mask": (label(first[0]), False),
             "background": (read_image(second[-1]), True), "mask": (label(second[-1]), False)}
    written = {}
    for name, (image, rgb) in files.items():
        path = out / f"{name}.png"
        cv2.imwrite(str(path), image[..., ::-1] if rgb else image)
        written[name] = str(path)
    return written
