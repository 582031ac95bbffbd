"""Salient-object datasets (image + mask folders) -> `instances` records with one mask.

MSRA10K keeps `x.jpg` and its mask `x.png` in one folder (`mask_dir=None`); DUTS keeps them in two
(`DUTS-TR-Image/x.jpg`, `DUTS-TR-Mask/x.png`). Masks are grey images binarised at value > 128 (as in
AnyDoor's loader). Images without a mask file are left out of the index.
"""

from __future__ import annotations

from pathlib import Path

from input_pipeline.records import RecordError, read_binary_mask, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class SaliencySource:
    """grain random-access source of `instances` records {"image", "masks" (1, H, W), "labels": [""],
    "captions": [], "source"} from an image folder and a mask folder.

    Args:
      image_dir: folder of photos.
      mask_dir: folder of masks named `<image stem><mask_suffix>`; None: the same folder.
      mask_suffix: mask file ending (".png"; HFlickr-style names need their own suffix).
      threshold: mask pixels above it are foreground.
    """

    def __init__(self, image_dir: str | Path, mask_dir: str | Path | None = None, *, mask_suffix: str = ".png",
                 threshold: int = 128):
        image_dir = Path(image_dir)
        mask_dir = Path(mask_dir) if mask_dir is not None else image_dir
        for folder in {image_dir, mask_dir}:
            if not folder.is_dir():
                raise RecordError(folder, "saliency folder not found")
        masks = {p.name for p in mask_dir.iterdir()}
        self.pairs = []
        for image in sorted(image_dir.iterdir()):
            mask_name = image.stem + mask_suffix
            if image.suffix.lower() in IMAGE_SUFFIXES and mask_name in masks and image.name != mask_name:
                self.pairs.append((str(image), str(mask_dir / mask_name)))
        if not self.pairs:
            raise RecordError(image_dir, f"no image with a matching mask '<stem>{mask_suffix}' in {mask_dir}")
        self.threshold = threshold

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = read_binary_mask(mask_path, self.threshold)
        if mask.shape != image.shape[:2]:
            raise RecordError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                                         f"{image_path} is {image.shape[1]}x{image.shape[0]}")
        return {"image": image, "masks": mask[None], "labels": [""], "captions": [], "source": image_path}
