"""MVImgNet (multi-view object captures, the subset with masks) -> per-object clip records; `sample_pair`.

Layout: root/<class>/<object>/images/ holding `<frame>.jpg` views and RGBA mask PNGs `<frame>_<any>.png`
(alpha > 128 = object). The object folders come either from a list file like the released
`datasets/Preprocess/mvimagenet.txt` (49,016 lines `MVDir/<class>/<object>/images`, the `MVDir/` prefix
standing for root) or from a scan of root/*/*/images/.

Records (built in `__getitem__`, which lists the object folder, so construction from a list file reads
nothing but the list): {"frame_paths": [jpg per mask], "mask_paths": [mask PNGs, in `frame_order`],
"min_gap": n // 8, "dynamic": 2, "source": the object folder}. K = 8 and dynamic 2 (multi-view, high
quality) as released (reference/anydoor.md 3.2). Only objects with masks are used: a scan keeps folders
with at least 2 mask PNGs; a listed folder with fewer raises RecordError when read (the pipeline skips
it). The released loader pairs masks in `os.listdir` order: `frame_order="released"`; "sorted" (by name) is
the default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from input_pipeline.records import RecordError, read_image
from input_pipeline.sources.video import frame_order_names
from input_pipeline.sources.vipseg import decode_png, frame_pair_indices

GAP_DIVISOR = 8
DYNAMIC = 2
LIST_PREFIX = "MVDir/"


def _mask_names(folder: Path, frame_order: str = "sorted") -> list[str]:
    """`<frame>_*.png` names in an object folder, by name or in os.listdir order (`frame_order`)."""
    return [f"{n}.png" for n in frame_order_names(folder, ".png", frame_order) if "_" in n]


def read_alpha_mask(path: str | Path, threshold: int = 128) -> np.ndarray:
    """An RGBA (or grey+alpha) PNG -> uint8 (H, W) {0,1}: alpha > threshold.

    RecordError naming the file when it is missing, unreadable, or has no alpha channel.
    """
    def convert(image) -> np.ndarray:
        if image.mode not in ("RGBA", "LA"):
            raise RecordError(path, f"mask PNG has mode {image.mode!r}; expected an RGBA PNG whose alpha "
                                    "channel is the object mask")
        return np.asarray(image.getchannel("A"))

    alpha = decode_png(path, "mask PNG", convert)
    return (alpha > threshold).astype(np.uint8)


class MVImgNetSource:
    """grain random-access source of MVImgNet object clip records (see module doc).

    Args:
      root: the MVImgNet folder (root/<class>/<object>/images/).
      list_file: optional list of object folders, one per line; lines starting with `list_prefix` have
        it replaced by root, other relative lines are taken relative to root. None: scan root.
      list_prefix: the list file's stand-in for root ("MVDir/" in the released list).
      gap_divisor: K of the min-gap rule (8).
      dynamic: the pairs' `dynamic` label (2).
      frame_order: "sorted" (by name) or "released" (os.listdir's, as the released loader; see video.py).
    Raises RecordError at construction for a missing root or list file, or when nothing is found.
    """

    def __init__(self, root: str | Path, *, list_file: str | Path | None = None, list_prefix: str = LIST_PREFIX,
                 gap_divisor: int = GAP_DIVISOR, dynamic: int = DYNAMIC, frame_order: str = "sorted"):
        root = Path(root)
        if not root.is_dir():
            raise RecordError(root, "MVImgNet folder not found (expected root/<class>/<object>/images/ with "
                                    "<frame>.jpg views and <frame>_*.png RGBA masks)")
        if list_file is not None:
            try:
                lines = Path(list_file).read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                raise RecordError(list_file, "MVImgNet list file not found (expected lines like "
                                             f"'{list_prefix}1/0100012d/images')") from None
            folders = [root / line[len(list_prefix):] if line.startswith(list_prefix) else root / line
                       for line in (raw.strip() for raw in lines) if line]
            source = list_file
        else:
            folders = [p for p in sorted(root.glob("*/*/images")) if p.is_dir() and len(_mask_names(p)) >= 2]
            source = root
        if not folders:
            raise RecordError(source, "no object folder (expected <class>/<object>/images/ with at least 2 "
                                      "<frame>_*.png masks)")
        self.folders = [str(f) for f in folders]
        self.gap_divisor, self.dynamic, self.frame_order = gap_divisor, dynamic, frame_order

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, index: int) -> dict:
        folder = Path(self.folders[index])
        if not folder.is_dir():
            raise RecordError(folder, "object folder not found")
        masks = _mask_names(folder, self.frame_order)
        if len(masks) < 2:
            raise RecordError(folder, f"{len(masks)} mask PNGs named <frame>_*.png; expected at least 2 "
                                      "(only MVImgNet objects with masks are usable)")
        return {"frame_paths": [str(folder / (name.split("_", 1)[0] + ".jpg")) for name in masks],
                "mask_paths": [str(folder / name) for name in masks], "min_gap": len(masks) // self.gap_divisor,
                "dynamic": self.dynamic, "source": str(folder)}


def sample_pair(record: dict, rng: np.random.Generator) -> dict:
    """MVImgNet clip record -> `pair` record: views by `frame_pair_indices`, masks = alpha > 128.

    RecordError naming the file for a missing/undecodable view or mask, a mask without alpha, a mask of
    another size than its view, or an empty mask.
    """
    start, end = frame_pair_indices(len(record["frame_paths"]), int(record["min_gap"]), rng, record["source"])
    out = {"dynamic": record.get("dynamic", DYNAMIC), "source": record["source"]}
    for role, k in (("reference", start), ("target", end)):
        image, mask_path = read_image(record["frame_paths"][k]), record["mask_paths"][k]
        mask = read_alpha_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise RecordError(mask_path, f"mask is {mask.shape[::-1]} (WxH) but its view "
                                         f"{record['frame_paths'][k]} is {image.shape[1::-1]}")
        if not mask.any():
            raise RecordError(mask_path, "empty mask (no alpha above 128)")
        out[f"{role}_image"], out[f"{role}_mask"] = image, mask
    return out
