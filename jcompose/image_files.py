"""Image files as evaluation reads them: which formats are accepted, and every conversion on the way to RGB.

`scan_folder` lists a folder's images from their headers only (no pixels decoded): each accepted file's
size *after* its EXIF orientation, format, bit depth, alpha and the conversions `read_image` will apply;
every other file is skipped with its reason and counted. `read_image` decodes one file to (H, W, 3)
uint8 RGB:

* EXIF orientation is honoured (a phone photo tagged "rotate 90" is scored upright);
* 16-bit channels (PNG, TIFF) are read at full depth (OpenCV) and scaled to 8 bits as round(v / 257),
  where Pillow alone would clip 16-bit grey to white or truncate 16-bit colour;
* alpha (RGBA, LA, PA, a palette with a transparent colour) is dropped: the RGB values are used as
  stored, not composited on any background;
* grey, bilevel, palette and CMYK images are converted to RGB by Pillow.

Accepted: PNG, JPEG, WebP, BMP, TIFF (single frame, 8 or 16 bits per channel). Refused with a count:
GIF, HEIC/HEIF/AVIF/JPEG XL and anything else. A file with an accepted extension that cannot be used
(unreadable, several frames, 32-bit integer or float pixels) is an InputError naming it.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np

from jcompose.cli import InputError

ACCEPTED = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
            ".tiff": "TIFF"}
REFUSED = {".gif": "GIF (256 colours, possibly animated): convert to PNG",
           ".heic": "HEIC needs a Pillow plugin: convert to PNG or JPEG",
           ".heif": "HEIF needs a Pillow plugin: convert to PNG or JPEG",
           ".avif": "AVIF is not read here: convert to PNG or JPEG",
           ".jxl": "JPEG XL needs a Pillow plugin: convert to PNG or JPEG"}
# What `read_image` does to a file, by key (scores.json counts them per folder).
CONVERSIONS = {
    "exif_orientation": "rotated / flipped upright by its EXIF orientation tag",
    "16bit_to_8bit": "16-bit channels read at full depth and scaled to 8 bits, round(v / 257)",
    "alpha_dropped": "alpha channel dropped: RGB values used as stored, not composited",
    "grey_to_rgb": "grey channel repeated to RGB",
    "palette_to_rgb": "palette colours looked up to RGB",
    "bilevel_to_rgb": "1-bit image to RGB (0 / 255)",
    "cmyk_to_rgb": "CMYK converted to RGB by Pillow",
}
_MODES = {"RGB": (), "RGBA": ("alpha_dropped",), "RGBX": (), "L": ("grey_to_rgb",),
          "LA": ("grey_to_rgb", "alpha_dropped"), "P": ("palette_to_rgb",), "PA": ("palette_to_rgb", "alpha_dropped"),
          "1": ("bilevel_to_rgb",), "CMYK": ("cmyk_to_rgb",), "YCbCr": (),
          "I;16": ("grey_to_rgb",), "I;16B": ("grey_to_rgb",), "I;16L": ("grey_to_rgb",), "I;16N": ("grey_to_rgb",)}
_EXIF_ORIENTATION = 0x0112
_TIFF_BITS_PER_SAMPLE = 258


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """One image file's header facts. height/width are as scored (after the EXIF orientation)."""

    path: Path
    height: int
    width: int
    format: str
    mode: str
    bits: int
    orientation: int
    conversions: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


@dataclasses.dataclass
class Folder:
    """A scanned folder: its accepted images (sorted by name) and what was skipped, by reason."""

    path: Path
    images: list[ImageInfo]
    skipped: dict[str, list[str]]

    def summary(self) -> dict:
        """JSON-ready counts: images, formats, conversions, skipped files by reason (with up to 3 names)."""
        return {"folder": str(self.path), "images": len(self.images), **summarize(self.images),
                "skipped": {reason: {"count": len(names), "examples": names[:3]}
                            for reason, names in sorted(self.skipped.items())}}


def summarize(images: list[ImageInfo]) -> dict:
    """{"formats": {format: count}, "conversions": {key: count}} over some images."""
    formats = collections.Counter(info.format for info in images)
    conversions = collections.Counter(c for info in images for c in info.conversions)
    return {"formats": dict(sorted(formats.items())),
            "conversions": {k: {"count": conversions[k], "what": CONVERSIONS[k]} for k in CONVERSIONS
                            if conversions[k]}}


def skip_reason(path: Path) -> str | None:
    """Why a folder entry is not scored (None: an accepted image file)."""
    if path.name.startswith("."):
        return "hidden file"
    if path.is_dir():
        return "folder (folders are not searched)"
    suffix = path.suffix.lower()
    if suffix in ACCEPTED:
        return None
    if suffix in REFUSED:
        return REFUSED[suffix]
    return f"not an image file ({suffix or 'no extension'})"


def scan_folder(folder: str | Path, what: str) -> Folder:
    """The accepted images of `config.<what>` (sorted by name, headers read) and the skipped entries."""
    folder = Path(folder)
    if not str(folder) or not folder.is_dir():
        raise FileNotFoundError(f"config.{what}: {folder!s} is not a folder of images")
    images, skipped = [], collections.defaultdict(list)
    for path in sorted(folder.iterdir()):
        reason = skip_reason(path)
        if reason is None:
            images.append(inspect(path))
        else:
            skipped[reason].append(path.name)
    if not images:
        accepted = ", ".join(sorted(ACCEPTED))
        raise FileNotFoundError(f"config.{what}: {folder} holds no images ({accepted}); skipped: "
                                f"{ {r: len(n) for r, n in skipped.items()} or 'nothing'}")
    return Folder(folder, images, dict(skipped))


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        header = f.read(26)  # signature (8), IHDR length and type (8), width, height (8), bit depth (1)
    return header[24] if len(header) == 26 and header[12:16] == b"IHDR" else 8


def inspect(path: Path) -> ImageInfo:
    """Header facts of one accepted image file (nothing decoded); InputError naming the file when unusable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode, fmt, (width, height) = image.mode, image.format or "?", image.size
            frames = getattr(image, "n_frames", 1)
            orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            bits = 16 if mode.startswith("I;16") else 8
            if fmt == "PNG":
                bits = max(bits, _png_bit_depth(path))
            elif fmt == "TIFF":
                per_sample = image.tag_v2.get(_TIFF_BITS_PER_SAMPLE, 8)
                bits = max(per_sample) if isinstance(per_sample, tuple) else int(per_sample)
            transparent = mode == "P" and "transparency" in image.info
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise InputError(f"{path}: unreadable image ({err})") from None
    if mode == "I" and bits == 16:  # some Pillow versions open 16-bit grey PNGs as 32-bit "I"
        mode = "I;16"
    if mode not in _MODES:
        raise InputError(f"{path}: pixel mode {mode!r} ({fmt}) has no defined 8-bit range; expected 8- or 16-bit "
                         "grey / RGB(A) / palette / CMYK")
    if frames > 1:
        raise InputError(f"{path}: {frames} frames; evaluation scores single images (save the frame you mean)")
    if bits not in (1, 8, 16):
        raise InputError(f"{path}: {bits}-bit channels; expected 8 or 16 bits per channel")
    conversions = list(_MODES[mode]) + (["alpha_dropped"] if transparent else [])
    if bits == 16:
        conversions.append("16bit_to_8bit")
    if 2 <= orientation <= 8:
        conversions.append("exif_orientation")
    if orientation in (5, 6, 7, 8):  # these orientations swap the axes
        width, height = height, width
    return ImageInfo(path, height, width, fmt, mode, 16 if bits == 16 else 8,
                     orientation if 1 <= orientation <= 8 else 1, tuple(conversions))


def read_image(path: Path | ImageInfo) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, upright, with the conversions of the module doc."""
    info = path if isinstance(path, ImageInfo) else inspect(Path(path))
    if info.bits == 16:
        rgb = _read_16bit(info.path)
    else:
        from PIL import Image

        try:
            with Image.open(info.path) as image:
                rgb = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as err:
            raise InputError(f"{info.path}: unreadable image ({err})") from None
    return _orient(rgb, info.orientation)


def read_grey(path: Path | ImageInfo) -> np.ndarray:
    """(H, W) uint8 luma (Pillow's "L" rule) of `read_image` (a grey file comes back unchanged)."""
    from PIL import Image

    return np.asarray(Image.fromarray(read_image(path)).convert("L"))


def _read_16bit(path: Path) -> np.ndarray:
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # uint16, BGR(A) or grey, orientation not applied
    if raw is None or raw.dtype != np.uint16:
        raise InputError(f"{path}: a 16-bit image OpenCV cannot read as 16-bit ({None if raw is None else raw.dtype})")
    if raw.ndim == 2:
        raw = np.repeat(raw[..., None], 3, axis=-1)
    elif raw.shape[2] == 2:  # grey + alpha
        raw = np.repeat(raw[..., :1], 3, axis=-1)
    else:
        raw = raw[..., 2::-1]  # BGR(A) -> RGB, alpha dropped
    return ((raw.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)  # round(v / 257), halves up


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Applies an EXIF orientation (2-8) the way Pillow's `ImageOps.exif_transpose` does."""
    if orientation == 1:
        return rgb
    from PIL import Image

    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}[orientation]
    return np.asarray(Image.fromarray(rgb).transpose(method))
