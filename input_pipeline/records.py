"""The raw-record error type and the small readers every source shares.

Record kinds (what sources yield, what method transforms read; arrays are numpy):
  instances: {"image": uint8 (H, W, 3) RGB, "masks": uint8 (N, H, W) {0,1}, "labels": list[str],
              "captions": list[str], "source": str}
  clip:      {"frame_paths": list[str], "mask_paths": list[str], "object_id": int, "min_gap": int,
              "dynamic": bool | int (copied to its pairs), "source": str}
  pair:      {"reference_image": uint8 (H, W, 3), "reference_mask": uint8 (H, W), "target_image": uint8 (H', W', 3),
              "target_mask": uint8 (H', W'), "dynamic": bool (video True, image False) or AnyDoor's int label
              (2 = multi-view high quality, MOSE), "source": str}
  reference: {"image": uint8 (H, W, 3), "mask": uint8 (H, W), "source": str}
  background:{"image": uint8 (H, W, 3), "box": (x0, y0, x1, y1) int, half-open pixel bounds, "source": str}
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

# What PIL raises for a damaged or truncated file (OSError covers "image file is truncated" and
# UnidentifiedImageError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error)


class RecordError(ValueError):
    """A record (or the index file describing records) that cannot be used.

    `path` names the file (image, mask, JSON) or folder at fault and `reason` says what is wrong and what
    was expected. The pipeline skips records that raise it (and counts them) unless `strict=True`.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when the error crosses a grain worker-process boundary
        return (type(self), (self.path, self.reason))


def read_image(path: str | Path) -> np.ndarray:
    """Decodes an image file to uint8 RGB (H, W, 3); grey and RGBA files are converted.

    Raises RecordError naming the file when it is missing, unreadable, empty, truncated or
    otherwise not a decodable image: every decode failure, so the pipeline skips and counts it.
    """
    import cv2  # imported here so workers that never decode do not pay for it

    try:
        if "://" in str(path):  # an object store (gs://): read through etils
            from etils import epath

            remote = epath.Path(path)
            data = np.frombuffer(remote.read_bytes(), np.uint8) if remote.is_file() else None
        else:
            data = np.fromfile(str(path), np.uint8) if Path(path).is_file() else None
    except OSError as err:
        raise RecordError(path, f"image file not readable ({err})") from None
    if data is None:
        raise RecordError(path, "image file not found")
    if data.size == 0:
        raise RecordError(path, "image file is empty (0 bytes)")
    # A JPEG cut short has no end-of-image marker; some OpenCV builds decode such files into a
    # grey-filled image instead of failing. FF D9 cannot occur inside entropy-coded data.
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-64:].tobytes():
        raise RecordError(path, "truncated JPEG (no end-of-image marker)")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # 8-bit BGR whatever the file holds
    except cv2.error as err:
        raise RecordError(path, f"not a decodable image ({str(err).strip().splitlines()[-1][:120]})") from None
    if image is None:
        raise RecordError(path, "not a decodable image (truncated, or not JPEG/PNG/BMP/WebP)")
    return np.ascontiguousarray(image[..., ::-1])


def read_label_png(path: str | Path) -> np.ndarray:
    """Reads an annotation PNG as integer labels (H, W) uint8: palette indices for palette PNGs
    (YouTube-VOS/DAVIS/MOSE object ids), grey values for single-channel PNGs.

    Raises RecordError naming the file for a missing file or an RGB/RGBA PNG (no label per pixel).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "1"):
                raise RecordError(path, f"annotation PNG has mode {image.mode!r}; expected a palette ('P') or "
                                        "single-channel ('L'/'1') PNG whose values are object ids")
            return np.array(image.convert("L") if image.mode == "1" else image, dtype=np.uint8)
    except RecordError:
        raise
    except FileNotFoundError:
        raise RecordError(path, "annotation PNG not found") from None
    except _DECODE_ERRORS as err:  # PIL raises several kinds for damaged files
        raise RecordError(path, f"not a readable PNG ({err})") from None


def read_binary_mask(path: str | Path, threshold: int = 128) -> np.ndarray:
    """Reads a mask image (grey, palette, RGB or RGBA-alpha) as uint8 {0,1} (H, W): value > threshold.

    RGBA files use their alpha channel (AnyDoor's cut-out foregrounds); others their grey level; a
    palette/1-bit PNG with values {0,1} is treated as already binary.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in ("1", "P") or (image.mode == "L" and np.array(image).max() <= 1):
                values = np.array(image.convert("L") if image.mode == "1" else image)
                return (values > 0).astype(np.uint8)
            if image.mode in ("RGBA", "LA"):
                values = np.array(image.getchannel("A"))
            else:
                values = np.array(image.convert("L"))
    except FileNotFoundError:
        raise RecordError(path, "mask file not found") from None
    except _DECODE_ERRORS as err:
        raise RecordError(path, f"not a readable mask image ({err})") from None
    return (values > threshold).astype(np.uint8)


def load_json(path: str | Path) -> Any:
    """Parses a JSON file; RecordError naming the file for a missing file or invalid JSON."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise RecordError(path, "JSON file not found") from None
    except json.JSONDecodeError as err:
        raise RecordError(path, f"invalid JSON ({err})") from None


def field(obj: Any, key: str, kind: type | tuple[type, ...], path: str | Path, where: str) -> Any:
    """`obj[key]` checked to be of `kind`; else RecordError naming the file, the field and the expected type.

    `where` locates `obj` in the file, e.g. "annotations[12]".
    """
    name = f"{where}.{key}" if where else key
    if not isinstance(obj, dict):
        raise RecordError(path, f"{where or 'top level'}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise RecordError(path, f"missing field {name!r}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python but never a valid id/size in these formats
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise RecordError(path, f"field {name!r}: expected {expected}, got {type(value).__name__} {value!r:.60}")
    return value


def rgb_field(record: dict, key: str, source: str) -> np.ndarray:
    """record[key] as a uint8 (H, W, 3) RGB array, or RecordError naming the record and the field."""
    image = record.get(key)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise RecordError(source, f"field {key!r} must be uint8 (H, W, 3) RGB, got {got}")
    return image
