"""A folder of 3-5 photos of one object with its masks (DreamBooth-style) -> `reference` records.

Each photo `<stem>.jpg|.jpeg|.png` takes its mask from, in this order: `<mask_dir>/<stem>.png`, a
sibling `<stem>.png` next to a JPEG (the MureCom `fg{k}/{i}.jpg` + `{i}.png` layout), or the photo's own
alpha channel when it is an RGBA PNG (AnyDoor's cut-out foregrounds). Masks are binarised at > 128,
except 1-bit/palette/{0,1} masks (taken as > 0). A photo with no mask is an error at construction.
"""

from __future__ import annotations

import re
from pathlib import Path

from input_pipeline.records import RecordError, read_binary_mask, read_image

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def _has_alpha(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        return image.mode in ("RGBA", "LA")


class ReferenceFolderSource:
    """grain random-access source of `reference` records {"image": uint8 (H, W, 3), "mask": uint8 (H, W) {0,1},
    "source": photo path}.

    Args:
      folder: the object's photos.
      mask_dir: optional folder of `<stem>.png` masks.
      pattern: regular expression the photo file names must match (MureCom: r"^\\d+\\.jpg$", leaving out
        `*_rmobj.jpg` and the `*_bbox.png` masks of its newer layout).
      threshold: grey mask values above it are the object.
    """

    def __init__(self, folder: str | Path, mask_dir: str | Path | None = None, *, pattern: str | None = None,
                 threshold: int = 128):
        folder = Path(folder)
        if not folder.is_dir():
            raise RecordError(folder, "reference photo folder not found")
        mask_dir = Path(mask_dir) if mask_dir is not None else None
        names = {p.name for p in folder.iterdir()}
        self.items = []
        for photo in sorted(folder.iterdir()):
            if photo.suffix.lower() not in PHOTO_SUFFIXES or (pattern and not re.match(pattern, photo.name)):
                continue
            sibling = photo.stem + ".png"
            if mask_dir is not None:
                mask = mask_dir / sibling
                if not mask.is_file():
                    raise RecordError(mask, f"mask of {photo} not found (expected <mask_dir>/<stem>.png)")
                self.items.append((str(photo), str(mask)))
            elif photo.suffix.lower() != ".png" and sibling in names:
                self.items.append((str(photo), str(folder / sibling)))
            elif photo.suffix.lower() == ".png" and photo.stem + ".jpg" in names:
                continue  # this PNG is the mask of a JPEG
            elif photo.suffix.lower() == ".png" and _has_alpha(photo):
                self.items.append((str(photo), str(photo)))
            else:
                raise RecordError(photo, "no mask found: expected a sibling <stem>.png, an RGBA PNG, or mask_dir")
        if not self.items:
            raise RecordError(folder, "no reference photos found (*.jpg, *.jpeg or RGBA *.png)")
        self.threshold = threshold

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        photo, mask_path = self.items[index]
        image = read_image(photo)
        mask = read_binary_mask(mask_path, self.threshold)
        if mask.shape != image.shape[:2]:
            raise RecordError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the photo {photo} "
                                         f"is {image.shape[1]}x{image.shape[0]}")
        if not mask.any():
            raise RecordError(mask_path, "mask is empty (no pixel above the threshold)")
        return {"image": image, "mask": mask, "source": photo}
