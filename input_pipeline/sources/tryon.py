"""Virtual try-on sets -> `pair` records (garment photo as reference, the worn garment as target).

VITON-HD, root/<split>/:
  cloth/<name>.jpg            the garment (reference image)
  cloth-mask/<name>.jpg       its mask, > 128 (reference mask)
  image/<name>.jpg            the person wearing it (target image)
  image-parse-v3/<name>.png   human parsing, palette/grey PNG; label 5 = upper clothes (target mask)
FashionTryon, root/<garment>/:
  target.jpg, mask.jpg        the garment and its mask (> 128)
  <person>/segment.png        parsing of a person wearing it; label 7, eroded three times with a 3x3
                              square (as released), is the target mask
  <person>.jpg                that person (target image)
Both have dynamic 2 (reference/anydoor.md 3.2) and the released `max_ratio` 1.0 (see anydoor_mixture).
One record per VITON-HD cloth file and per FashionTryon (garment, person) pair: the released loader
draws a garment and then one of its persons, so garments with many persons weigh more here. Folders
are listed in sorted order (the released loaders use unsorted `os.listdir`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from input_pipeline.records import RecordError, read_image, read_label_png
from input_pipeline.sources.vipseg import decode_png

DYNAMIC = 2
VITON_UPPER_CLOTHES = 5
FASHIONTRYON_LABEL = 7
VITON_FOLDERS = ("cloth", "cloth-mask", "image", "image-parse-v3")


def read_grey_mask(path: str | Path, threshold: int = 128) -> np.ndarray:
    """A mask image (JPEG/PNG) -> uint8 (H, W) {0,1}: first BGR channel > threshold, the released rule
    (grey masks have equal channels). RecordError naming the file if missing or undecodable."""
    return (read_image(path)[..., 2] > threshold).astype(np.uint8)


def read_parse_labels(path: str | Path) -> np.ndarray:
    """A parsing PNG -> uint8 (H, W) labels: palette indices, grey values, or the value of an RGB PNG
    whose three channels are equal (a grey label map saved as colour).

    RecordError naming the file if missing, unreadable, or a colour PNG with differing channels.
    """
    def convert(image) -> np.ndarray:
        if image.mode in ("RGB", "RGBA"):
            rgb = np.asarray(image.convert("RGB"))
            if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 0] != rgb[..., 2]).any():
                raise RecordError(path, "parsing PNG is colour with differing channels; expected labels as "
                                        "grey values, palette indices, or equal R=G=B")
            return np.ascontiguousarray(rgb[..., 0])
        if image.mode in ("P", "L"):
            return np.array(image, dtype=np.uint8)
        raise RecordError(path, f"parsing PNG has mode {image.mode!r}; expected a grey, palette or grey-as-RGB "
                                "label PNG")

    return decode_png(path, "parsing PNG", convert)


def _checked(image: np.ndarray, mask: np.ndarray, image_path, mask_path, what: str) -> np.ndarray:
    if mask.shape != image.shape[:2]:
        raise RecordError(mask_path, f"mask is {mask.shape[::-1]} (WxH) but {image_path} is {image.shape[1::-1]}")
    if not mask.any():
        raise RecordError(mask_path, f"empty mask (expected {what})")
    return mask


def _pair(ref, ref_mask, tar, tar_mask, source) -> dict:
    return {"reference_image": ref, "reference_mask": ref_mask, "target_image": tar, "target_mask": tar_mask,
            "dynamic": DYNAMIC, "source": source}


class VitonHDSource:
    """grain random-access source of VITON-HD `pair` records (see module doc).

    Args:
      root: the VITON-HD folder holding <split>/.
      split: "train" (released) or "test".
    Raises RecordError at construction when a folder of the layout is missing or cloth/ has no JPEG.
    """

    def __init__(self, root: str | Path, split: str = "train"):
        base = Path(root) / split
        for name in VITON_FOLDERS:
            if not (base / name).is_dir():
                raise RecordError(base / name, "folder not found (expected the VITON-HD layout <split>/cloth, "
                                               "cloth-mask, image, image-parse-v3)")
        self.base = base
        self.names = sorted(p.name for p in (base / "cloth").glob("*.jpg"))
        if not self.names:
            raise RecordError(base / "cloth", "no garment JPEG (*.jpg)")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        cloth, cloth_mask = self.base / "cloth" / name, self.base / "cloth-mask" / name
        person, parse = self.base / "image" / name, self.base / "image-parse-v3" / (Path(name).stem + ".png")
        ref, tar = read_image(cloth), read_image(person)
        ref_mask = _checked(ref, read_grey_mask(cloth_mask), cloth, cloth_mask, "garment pixels > 128")
        labels = read_label_png(parse)
        tar_mask = _checked(tar, (labels == VITON_UPPER_CLOTHES).astype(np.uint8), person, parse,
                            f"label {VITON_UPPER_CLOTHES} = upper clothes")
        return _pair(ref, ref_mask, tar, tar_mask, str(cloth))


class FashionTryonSource:
    """grain random-access source of FashionTryon `pair` records (see module doc).

    Args:
      root: folder of per-garment folders.
      label: the parsing label of the garment (7, released).
      erode_iterations: 3x3 erosions of the target mask (3, released).
    Garment folders without a person subfolder give no record. Raises RecordError at construction
    when root is missing or no (garment, person) pair is found.
    """

    def __init__(self, root: str | Path, *, label: int = FASHIONTRYON_LABEL, erode_iterations: int = 3):
        root = Path(root)
        if not root.is_dir():
            raise RecordError(root, "FashionTryon folder not found (expected <garment>/target.jpg, mask.jpg, "
                                    "<person>/segment.png and <person>.jpg)")
        self.pairs = [(str(garment), person.name)
                      for garment in sorted(p for p in root.iterdir() if p.is_dir())
                      for person in sorted(p for p in garment.iterdir() if p.is_dir())]
        if not self.pairs:
            raise RecordError(root, "no garment folder with a person subfolder (<garment>/<person>/segment.png)")
        self.label, self.erode_iterations = label, erode_iterations

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        import cv2

        garment, person = Path(self.pairs[index][0]), self.pairs[index][1]
        ref_path, ref_mask_path = garment / "target.jpg", garment / "mask.jpg"
        tar_path, segment_path = garment / f"{person}.jpg", garment / person / "segment.png"
        ref, tar = read_image(ref_path), read_image(tar_path)
        ref_mask = _checked(ref, read_grey_mask(ref_mask_path), ref_path, ref_mask_path, "garment pixels > 128")
        labels = read_parse_labels(segment_path)
        # the released loader erodes the parsed garment, trimming its boundary (parser bleed)
        tar_mask = cv2.erode((labels == self.label).astype(np.uint8), np.ones((3, 3), np.uint8),
                             iterations=self.erode_iterations)
        tar_mask = _checked(tar, tar_mask, tar_path, segment_path,
                            f"label {self.label} surviving {self.erode_iterations} 3x3 erosions")
        return _pair(ref, ref_mask, tar, tar_mask, str(garment / person))
