"""Open Images (V5-V7) instance segmentation -> `instances` records, one per image with all its masks.

On-disk layout (as downloaded from the official site / CVDF):

    <split>-annotations-object-segmentation.csv   # header: MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,
                                                  #   BoxYMin,BoxYMax,PredictedIoU,Clicks; one row per mask
    class-descriptions-boxable.csv                # no header: "/m/011k07,Tortoise" (V5/V6), or
    oidv7-class-descriptions.csv                  # header "LabelName,DisplayName" (V7)
    masks: <MaskPath> PNGs, e.g. "0a1b2c3d4e5f6789_m0k4j_8d6f4b2a.png"; the zips train-masks-0 ... -f
           unpack to folders <split>-masks-<c>/ (c = the first character of the file name)
    images: <ImageID>.jpg, flat or in the CVDF folders <split>_<c>/

Masks are binary PNGs at their own resolution (not the image's): each is resized to its image's size
by nearest neighbour (`resize_nearest`, OpenCV's INTER_NEAREST rule, as the Open Images converters
do) and read as foreground where > 0 (0/1 PNGs) or > 128 (0/255 PNGs). Of the CSV, MaskPath, ImageID
and LabelName are used; box, PredictedIoU and Clicks columns are not needed to cut objects out.
Labels are the class display names, lower-cased by default ("Human face" -> "human face", like
COCO's category names). Captions come from a side file or fall back to "a photo of <labels>"
(`input_pipeline.captions`). Image rotation metadata (`Rotation`) is not applied.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from input_pipeline.captions import SideCaptions
from input_pipeline.records import RecordError, read_binary_mask, read_image

REQUIRED_COLUMNS = ("MaskPath", "ImageID", "LabelName")


def resize_nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of masks (N, h, w) -> (N, height, width), same dtype.

    Output pixel (i, j) takes source pixel (floor(i * h / height), floor(j * w / width)): OpenCV's
    INTER_NEAREST rule (the one the Open Images tooling applies to its mask PNGs), computed with
    integer arithmetic so it is exact for any size ratio.
    """
    h, w = masks.shape[-2:]
    rows = np.arange(height) * h // height
    cols = np.arange(width) * w // width
    return np.ascontiguousarray(masks[..., rows[:, None], cols[None, :]])


def read_class_names(path: str | Path) -> dict[str, str]:
    """A class-description CSV -> {MID: display name}. With or without the header "LabelName,DisplayName".

    Raises RecordError naming the file and line for a missing file or a row that is not "MID,name".
    """
    try:
        with open(path, encoding="utf-8", newline="") as file:
            names = {}
            reader = csv.reader(file)
            for row in reader:
                if reader.line_num == 1 and row[:2] == ["LabelName", "DisplayName"]:
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise RecordError(path, f"line {reader.line_num}: expected 'MID,display name' (e.g. "
                                            f"'/m/011k07,Tortoise'), got {','.join(row)!r:.80}")
                names[row[0].strip()] = row[1].strip()
    except FileNotFoundError:
        raise RecordError(path, "class-description CSV not found") from None
    if not names:
        raise RecordError(path, "class-description CSV has no rows")
    return names


def _split_of(csv_path: Path) -> str:
    suffix = "-annotations-object-segmentation.csv"
    return csv_path.name[: -len(suffix)] if csv_path.name.endswith(suffix) else ""


class OpenImagesSource:
    """grain random-access source of `instances` records from Open Images segmentation annotations.

    Args:
      segmentation_csv: `<split>-annotations-object-segmentation.csv` (see module doc).
      masks_dir: folder of the mask PNGs (flat, or with the `<split>-masks-<c>/` folders).
      images_dir: folder of `<ImageID>.jpg` (flat, or with the `<split>_<c>/` folders).
      class_descriptions: class-description CSV (MID -> display name).
      captions_json: optional side caption file keyed by `<ImageID>.jpg` or `<ImageID>`.
      caption_fallback: "a photo of <labels>" where the side file has no entry.
      min_mask_area: masks covering less than this fraction of their image are dropped (empty ones
        always are).
      max_instances: at most this many masks per record, the largest first (0: no limit).
      lowercase_labels: lower-case the display names.
    Records: {"image": uint8 (H, W, 3), "masks": uint8 (N, H, W) {0,1} at the image's size, "labels":
    class names, "captions": list[str], "source": image path}; N may be 0 when every mask is below
    `min_mask_area` (the AnyScene transform then skips the record).
    """

    def __init__(self, segmentation_csv: str | Path, masks_dir: str | Path, images_dir: str | Path,
                 class_descriptions: str | Path, captions_json: str | Path | None = None, *,
                 caption_fallback: bool = True, min_mask_area: float = 0.0, max_instances: int = 0,
                 lowercase_labels: bool = True):
        path = Path(segmentation_csv)
        self.masks_dir, self.images_dir = Path(masks_dir), Path(images_dir)
        for folder, what in ((self.masks_dir, "mask"), (self.images_dir, "image")):
            if not folder.is_dir():
                raise RecordError(folder, f"Open Images {what} folder not found")
        names = read_class_names(class_descriptions)
        by_image = defaultdict(list)
        try:
            with open(path, encoding="utf-8", newline="") as file:
                reader = csv.DictReader(file)
                missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise RecordError(path, f"header lacks column(s) {missing}; expected an Open Images "
                                            f"segmentation CSV with columns {list(REQUIRED_COLUMNS)} and more, got "
                                            f"{reader.fieldnames}")
                for row in reader:
                    where = f"line {reader.line_num}"
                    if None in row or any(row[c] is None for c in reader.fieldnames):
                        raise RecordError(path, f"{where}: expected {len(reader.fieldnames)} comma-separated "
                                                "fields like the header")
                    for column in REQUIRED_COLUMNS:
                        if not row[column].strip():
                            raise RecordError(path, f"{where}, column {column}: empty")
                    mask_path, label = row["MaskPath"].strip(), row["LabelName"].strip()
                    if "/" in mask_path or "\\" in mask_path:
                        raise RecordError(path, f"{where}, column MaskPath: expected a PNG file name, got "
                                                f"{mask_path!r}")
                    if label not in names:
                        raise RecordError(path, f"{where}, column LabelName: {label!r} is not in "
                                                f"{class_descriptions}")
                    name = names[label].lower() if lowercase_labels else names[label]
                    by_image[row["ImageID"].strip()].append((mask_path, name))
        except FileNotFoundError:
            raise RecordError(path, "Open Images segmentation CSV not found") from None
        if not by_image:
            raise RecordError(path, "no mask rows")
        self.csv_path, self.split = str(path), _split_of(path)
        # JSON text per image: compact to pickle into grain's worker processes
        self.entries = [(image_id, json.dumps(objects)) for image_id, objects in by_image.items()]
        self.captions = SideCaptions(captions_json, fallback=caption_fallback)
        self.min_mask_area, self.max_instances = float(min_mask_area), int(max_instances)

    def __len__(self) -> int:
        return len(self.entries)

    def _find(self, folder: Path, name: str, shard: str, what: str) -> Path:
        candidates = [folder / name, folder / shard / name]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise RecordError(candidates[0], f"{what} not found (also looked in {candidates[1].parent}); named by "
                                         f"{self.csv_path}")

    def image_path(self, image_id: str) -> Path:
        """Where `<ImageID>.jpg` is: `images_dir/` or its CVDF folder `images_dir/<split>_<c>/`."""
        return self._find(self.images_dir, f"{image_id}.jpg", f"{self.split}_{image_id[:1]}", "image")

    def mask_path(self, mask_name: str) -> Path:
        """Where a MaskPath PNG is: `masks_dir/` or its zip's folder `masks_dir/<split>-masks-<c>/`."""
        return self._find(self.masks_dir, mask_name, f"{self.split}-masks-{mask_name[:1]}", "mask PNG")

    def __getitem__(self, index: int) -> dict:
        image_id, objects = self.entries[index]
        image_file = self.image_path(image_id)
        image = read_image(image_file)
        height, width = image.shape[:2]
        masks, labels = [], []
        for mask_name, label in json.loads(objects):
            mask = read_binary_mask(self.mask_path(mask_name))
            masks.append(resize_nearest(mask[None], height, width)[0])
            labels.append(label)
        stack = np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
        areas = stack.reshape(len(stack), -1).mean(axis=1) if len(stack) else np.zeros(0)
        keep = [k for k in np.argsort(-areas, kind="stable") if areas[k] >= self.min_mask_area and areas[k] > 0]
        if self.max_instances:
            keep = keep[: self.max_instances]
        keep = sorted(keep)  # back to CSV order
        labels = [labels[k] for k in keep]
        return {"image": image, "masks": stack[keep], "labels": labels,
                "captions": self.captions(image_file, labels), "source": str(image_file)}
