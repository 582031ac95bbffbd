"""VIPSeg (video panoptic segmentation, 720P release) -> per-video clip records; `sample_pair`.

Layout (the released AnyDoor loader's):
  root/images/<video>/<frame>.jpg
  root/panomasksRGB/<video>/<frame>.png   RGB panoptic PNGs: segment id = R + 256 G + 256^2 B (the
                                          panopticapi `rgb2id` rule); id 0 is void

Records are one per video (as the released loader: it draws two frames, then one segment id present
in both), so construction only lists folders and no PNG is decoded before pairing:
  {"frame_paths": [jpg], "mask_paths": [png] (same length), "min_gap": n // K, "dynamic": 1,
   "source": video frame folder}
An object is eligible for a pair when its id is non-zero and present in both drawn frames. K = 100
(reference/anydoor.md 3.2), so clips under 100 frames have no minimum gap, as released. The released
code pairs `os.listdir` order (not temporal): `frame_order="released"`; "sorted" (by name) is the
default. The reference mask must be one piece (a single external contour), the released loader's filter.

`frame_pair_indices` (AnyDoor's min-gap draw) and `decode_png` are shared with the UVO, MVImgNet and
try-on readers.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from input_pipeline.records import RecordError, read_image
from input_pipeline.sources.video import frame_order_names

GAP_DIVISOR = 100
DYNAMIC = 1


def frame_pair_indices(n: int, min_gap: int, rng: np.random.Generator, source: str) -> tuple[int, int]:
    """AnyDoor's frame draw: start uniform in [0, n - min_gap), end uniform in [start + min_gap, n).

    There is a minimum gap and no maximum; with min_gap 0 both may be the same frame (released rule).
    RecordError naming `source` when n frames cannot give a pair min_gap apart.
    """
    if n < 1 or min_gap >= n or min_gap < 0:
        raise RecordError(source, f"{n} frames cannot give a pair {min_gap} frames apart")
    start = int(rng.integers(0, n - min_gap))
    return start, int(rng.integers(start + min_gap, n))


def decode_png(path: str | Path, what: str, convert: Callable[[Any], np.ndarray]) -> np.ndarray:
    """`convert(PIL image)` of the PNG at `path`; every open/decode failure becomes RecordError(path, ...).

    `what` names the file kind in the messages ("panoptic PNG"); `convert` may itself raise RecordError
    (e.g. for a wrong mode). PIL reports damaged files as OSError, SyntaxError, ValueError, EOFError or
    zlib.error, so all of those are caught. Shared by the VIPSeg, MVImgNet and try-on readers.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            return convert(image)
    except RecordError:
        raise
    except FileNotFoundError:
        raise RecordError(path, f"{what} not found") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as err:
        raise RecordError(path, f"not a readable PNG ({err})") from None


def read_panoptic_ids(path: str | Path) -> np.ndarray:
    """A panoptic RGB PNG -> int64 (H, W) segment ids, id = R + 256 G + 65536 B.

    RecordError naming the file when it is missing, unreadable, or not 3/4-channel (a grey or palette
    PNG holds no RGB-encoded ids).
    """
    def convert(image) -> np.ndarray:
        if image.mode not in ("RGB", "RGBA"):
            raise RecordError(path, f"panoptic PNG has mode {image.mode!r}; expected an RGB PNG whose "
                                    "colour encodes the segment id (R + 256 G + 256^2 B)")
        return np.asarray(image.convert("RGB"), dtype=np.int64)

    rgb = decode_png(path, "panoptic PNG", convert)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def is_one_piece(mask: np.ndarray) -> bool:
    """Whether a {0,1} uint8 mask has exactly one external contour (OpenCV, the released check)."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return len(contours) == 1


class VIPSegSource:
    """grain random-access source of per-video VIPSeg clip records (see module doc).

    Args:
      root: the VIPSeg_720P folder (holding images/ and panomasksRGB/).
      gap_divisor: K of the min-gap rule (min_gap = n_frames // K), 100 as released.
      dynamic: the pairs' `dynamic` label (1: multi-view, low quality).
      frame_order: "sorted" (by name) or "released" (os.listdir's, as the released loader; see video.py).
    Raises RecordError at construction when a top-level folder is missing or no video has 2 frames
    with masks.
    """

    def __init__(self, root: str | Path, *, gap_divisor: int = GAP_DIVISOR, dynamic: int = DYNAMIC,
                 frame_order: str = "sorted"):
        root = Path(root)
        image_root, mask_root = root / "images", root / "panomasksRGB"
        for folder in (image_root, mask_root):
            if not folder.is_dir():
                raise RecordError(folder, "folder not found (expected the VIPSeg_720P layout: "
                                          "images/<video>/*.jpg and panomasksRGB/<video>/*.png)")
        self.records = []
        for video_dir in sorted(p for p in image_root.iterdir() if p.is_dir()):
            masks = {p.stem: p for p in (mask_root / video_dir.name).glob("*.png")}
            stems = [s for s in frame_order_names(video_dir, ".jpg", frame_order) if s in masks]
            if len(stems) < 2:
                continue
            self.records.append({
                "frame_paths": [str(video_dir / f"{s}.jpg") for s in stems],
                "mask_paths": [str(masks[s]) for s in stems], "min_gap": len(stems) // gap_divisor,
                "dynamic": dynamic, "source": str(video_dir)})
        if not self.records:
            raise RecordError(image_root, "no video with at least 2 frames that have same-name panoptic PNGs")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {**record, "frame_paths": list(record["frame_paths"]), "mask_paths": list(record["mask_paths"])}


def sample_pair(record: dict, rng: np.random.Generator, *, one_piece: bool = True) -> dict:
    """VIPSeg clip record -> `pair` record: two frames by `frame_pair_indices`, then one non-zero segment
    id present in both, uniformly; masks = (ids == chosen id) as uint8 {0,1}.

    one_piece: require the reference mask to be a single external contour (the released filter).
    RecordError naming the file for an unreadable frame or PNG, a PNG/frame size mismatch, or naming
    the video when the frames share no segment or the reference is in several pieces.
    """
    start, end = frame_pair_indices(len(record["frame_paths"]), int(record["min_gap"]), rng, record["source"])
    images, ids = [], []
    for k in (start, end):
        image, segments = read_image(record["frame_paths"][k]), read_panoptic_ids(record["mask_paths"][k])
        if segments.shape != image.shape[:2]:
            raise RecordError(record["mask_paths"][k], f"panoptic PNG is {segments.shape[::-1]} (WxH) but its "
                                                       f"frame {record['frame_paths'][k]} is {image.shape[1::-1]}")
        images.append(image)
        ids.append(segments)
    common = np.setdiff1d(np.intersect1d(ids[0], ids[1]), [0])
    if common.size == 0:
        raise RecordError(record["source"], f"frames {start} and {end} share no non-void segment")
    chosen = int(common[rng.integers(common.size)])
    masks = [(segments == chosen).astype(np.uint8) for segments in ids]
    if one_piece and not is_one_piece(masks[0]):
        raise RecordError(record["mask_paths"][start], f"segment {chosen} is in several pieces (reference "
                                                       "must be one contour)")
    return {"reference_image": images[0], "reference_mask": masks[0], "target_image": images[1],
            "target_mask": masks[1], "dynamic": record.get("dynamic", DYNAMIC), "source": record["source"]}
