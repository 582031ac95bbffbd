"""SA-1B (Segment Anything 1B) folders -> `instances` records.

Layout: any number of folders of `sa_<id>.jpg` + `sa_<id>.json`, the JSON being
{"image": {"height", "width", ...}, "annotations": [{"segmentation": {"size": [h, w], "counts": str},
"area": int, ...}, ...]} with COCO compressed RLE. AnyDoor keeps masks with area > 50,000 px
(`min_area`); images have about 100 masks of 1500x2250 px, so `max_masks` bounds the memory of a
record by keeping the largest ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from input_pipeline.records import RecordError, field, load_json, read_image
from input_pipeline.sources.coco import decode_segmentation


class SA1BSource:
    """grain random-access source of `instances` records (labels "", no captions) from SA-1B folders.

    Args:
      folders: one folder or a list of folders holding `*.jpg` + same-stem `*.json`.
      min_area: masks whose `area` is below it are dropped (AnyDoor: 50000).
      max_masks: keep at most this many masks per image, the largest first (None: all).
    """

    def __init__(self, folders: str | Path | list, *, min_area: float = 0.0, max_masks: int | None = None):
        folders = [Path(f) for f in (folders if isinstance(folders, (list, tuple)) else [folders])]
        self.files = []
        for folder in folders:
            if not folder.is_dir():
                raise RecordError(folder, "SA-1B folder not found")
            for image in sorted(folder.glob("*.jpg")):
                if image.with_suffix(".json").is_file():
                    self.files.append((str(image), str(image.with_suffix(".json"))))
        if not self.files:
            raise RecordError(folders[0], "no *.jpg with a same-name *.json annotation file (SA-1B layout)")
        self.min_area, self.max_masks = min_area, max_masks

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        image_path, json_path = self.files[index]
        data = load_json(json_path)
        info = field(data, "image", dict, json_path, "")
        height, width = field(info, "height", int, json_path, "image"), field(info, "width", int, json_path, "image")
        annotations = field(data, "annotations", list, json_path, "")
        chosen = []
        for i, ann in enumerate(annotations):
            where = f"annotations[{i}]"
            segmentation = field(ann, "segmentation", dict, json_path, where)
            area = float(field(ann, "area", (int, float), json_path, where))
            if area >= self.min_area:
                chosen.append((area, segmentation, where))
        chosen.sort(key=lambda item: -item[0])
        chosen = chosen[:self.max_masks] if self.max_masks is not None else chosen
        image = read_image(image_path)
        if image.shape[:2] != (height, width):
            raise RecordError(image_path, f"image is {image.shape[1]}x{image.shape[0]} (WxH) but {json_path} "
                                          f"says {width}x{height}")
        masks = np.zeros((len(chosen), height, width), np.uint8)
        for k, (_, segmentation, where) in enumerate(chosen):
            masks[k] = decode_segmentation(segmentation, height, width, json_path, f"{where}.segmentation")
        return {"image": image, "masks": masks, "labels": [""] * len(chosen), "captions": [], "source": image_path}
