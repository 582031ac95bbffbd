"""FFHQ-style face photos with segmentation -> `instances` records with one mask (the person).

Two layouts, matched by file stem (folders may nest, e.g. FFHQ's 00000/ ... 69000/ chunks):
  image folder + mask folder: binary masks `<stem><mask_suffix>` (grey/palette/RGBA PNGs, foreground
    where > 128, or > 0 for 0/1 PNGs), e.g. matting or person-segmentation masks made for FFHQ;
  image folder + label-map folder: integer label PNGs `<stem>.png` (palette or single-channel, one
    class id per pixel). The foreground is the union of `foreground_labels`; the default is every
    label but 0, i.e. the whole head and upper body. This fits the public face-parsing layouts whose
    background is 0: CelebAMask-HQ label maps (19 classes: 0 background, 1 skin, 2 nose, 3 eye_g,
    4 l_eye, 5 r_eye, 6 l_brow, 7 r_brow, 8 l_ear, 9 r_ear, 10 mouth, 11 u_lip, 12 l_lip, 13 hair,
    14 hat, 15 ear_r, 16 neck_l, 17 neck, 18 cloth, the maps made from its per-part masks), the
    face-parsing.PyTorch / BiSeNet maps (the same 19 classes in another order), FFHQ-Aging's
    parsings (CelebAMask-HQ's classes) and LaPa (11 classes). Pass `foreground_labels` for a part,
    e.g. the face without hair, neck and clothes: (1, ..., 12) in CelebAMask-HQ's numbering.
    CelebAMask-HQ's raw per-part files (`<n:05d>_skin.png`, ...) must first be merged into maps.

Masks and label maps may have another resolution than the photo (CelebAMask-HQ: 512 px maps for
1024 px photos): they are resized to it by nearest neighbour (`openimages.resize_nearest`); an
aspect ratio that differs by more than 2 % means the wrong pair and raises RecordError.
Captions come from a side file or fall back to "a photo of a <label>" (`input_pipeline.captions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from input_pipeline.captions import SideCaptions
from input_pipeline.records import RecordError, read_binary_mask, read_image, read_label_png
from input_pipeline.sources.openimages import resize_nearest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _by_stem(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise RecordError(folder, f"{what} folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        name = path.name.lower()
        suffix = next((s for s in suffixes if name.endswith(s.lower())), None)
        if suffix is None or not path.is_file():
            continue
        stem = path.name[: len(path.name) - len(suffix)]
        if stem in found:
            raise RecordError(path, f"{what} stem {stem!r} also names {found[stem]}; stems must be unique")
        found[stem] = path
    return found


class FaceSource:
    """grain random-access source of `instances` records {"image", "masks" (1, H, W), "labels": [label],
    "captions", "source"} from a face photo folder and a mask or label-map folder (module doc).

    Args:
      image_dir: photos (.jpg/.jpeg/.png/.webp/.bmp), any nesting.
      mask_dir: binary masks named `<photo stem><mask_suffix>`; exactly one of mask_dir / label_dir.
      label_dir: integer label PNGs named `<photo stem>.png`.
      foreground_labels: label ids forming the foreground; None or (): all but `background_labels`.
      background_labels: ids never in the foreground when `foreground_labels` is empty.
      label: the instance's name ("person" by default, a COCO category; "face" for face-only masks).
      captions_json: optional side caption file keyed by photo file name or stem.
      caption_fallback: "a photo of a <label>" where the side file has no entry.
      mask_suffix: mask file ending in mask_dir.
      threshold: binary-mask grey level above which a pixel is foreground.
    Photos without a mask/label map are left out of the index; none at all raises RecordError.
    """

    def __init__(self, image_dir: str | Path, mask_dir: str | Path | None = None,
                 label_dir: str | Path | None = None, *, foreground_labels: Sequence[int] | None = None,
                 background_labels: Sequence[int] = (0,), label: str = "person",
                 captions_json: str | Path | None = None, caption_fallback: bool = True,
                 mask_suffix: str = ".png", threshold: int = 128):
        if (mask_dir is None) == (label_dir is None):
            raise ValueError("FaceSource: give exactly one of mask_dir (binary masks) or label_dir (label maps)")
        image_dir = Path(image_dir)
        images = _by_stem(image_dir, IMAGE_SUFFIXES, "face image")
        self.label_maps = label_dir is not None
        folder = Path(label_dir if self.label_maps else mask_dir)
        annotations = _by_stem(folder, (".png",) if self.label_maps else (mask_suffix,),
                               "label-map" if self.label_maps else "mask")
        self.pairs = [(str(images[s]), str(annotations[s])) for s in sorted(images) if s in annotations
                      and images[s] != annotations[s]]
        if not self.pairs:
            raise RecordError(image_dir, f"no photo has a matching {'label map' if self.label_maps else 'mask'} "
                                         f"'<stem>{'.png' if self.label_maps else mask_suffix}' in {folder}")
        foreground = tuple(int(v) for v in (foreground_labels or ()))
        if any(not 0 <= v <= 255 for v in foreground + tuple(background_labels)):
            raise ValueError(f"FaceSource: label ids must be in [0, 255] (8-bit PNG values), got "
                             f"foreground {foreground}, background {tuple(background_labels)}")
        self.foreground = np.zeros(256, bool)
        if foreground:
            self.foreground[list(foreground)] = True
        else:
            self.foreground[:] = True
            self.foreground[list(background_labels)] = False
        self.label, self.threshold = str(label), threshold
        self.captions = SideCaptions(captions_json, fallback=caption_fallback)

    def __len__(self) -> int:
        return len(self.pairs)

    def foreground_mask(self, annotation_path: str | Path) -> np.ndarray:
        """The annotation file's foreground as uint8 (h, w) {0,1} at its own resolution."""
        if self.label_maps:
            return self.foreground[read_label_png(annotation_path)].astype(np.uint8)
        return read_binary_mask(annotation_path, self.threshold)

    def __getitem__(self, index: int) -> dict:
        image_path, annotation_path = self.pairs[index]
        image = read_image(image_path)
        height, width = image.shape[:2]
        mask = self.foreground_mask(annotation_path)
        if abs(mask.shape[0] / mask.shape[1] - height / width) > 0.02 * height / width:
            raise RecordError(annotation_path, f"is {mask.shape[1]}x{mask.shape[0]} (WxH), another aspect ratio "
                                               f"than its photo {image_path} ({width}x{height})")
        mask = resize_nearest(mask[None], height, width)
        if not mask.any():
            raise RecordError(annotation_path, "no foreground pixel (no label among the foreground labels)"
                              if self.label_maps else "empty mask")
        return {"image": image, "masks": mask, "labels": [self.label],
                "captions": self.captions(image_path, [self.label]), "source": image_path}
