"""COCO-style instance annotations (COCO, LVIS, the synthetic set) -> `instances` records; `image_pair`.

The instances JSON is the index (parsed once, checked field by field); images are decoded and masks
rasterised only in `__getitem__`. Segmentations may be polygons (list of [x0, y0, x1, y1, ...]),
uncompressed RLE ({"size": [h, w], "counts": [int, ...]}) or compressed RLE ({"size", "counts": str});
decoding uses pycocotools (C, the format's reference implementation). LVIS JSON has the same fields;
its images carry `coco_url` instead of `file_name`, whose basename is then the file in `image_dir`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from input_pipeline.records import RecordError, field, load_json, read_image


def decode_segmentation(segmentation, height: int, width: int, path: str | Path, where: str) -> np.ndarray:
    """A COCO segmentation (polygons or RLE, see module doc) -> uint8 (height, width) {0,1}.

    RecordError names `path` and `where` (e.g. "annotations[3].segmentation") for a malformed value.
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list)]
        if len(polygons) != len(segmentation) or not polygons or any(
                len(p) < 6 or len(p) % 2 or not all(isinstance(v, (int, float)) for v in p) for p in polygons):
            raise RecordError(path, f"{where}: expected polygons [[x0, y0, x1, y1, x2, y2, ...], ...] with at "
                                    "least 3 points each")
        rles = mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)):
            raise RecordError(path, f"{where}.size: expected [height, width], got {size!r:.60}")
        if list(size) != [height, width]:
            raise RecordError(path, f"{where}.size: {size} differs from the image's [height, width] "
                                    f"[{height}, {width}]")
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise RecordError(path, f"{where}.counts: expected non-negative run lengths summing to "
                                        f"height*width = {height * width}")
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str):
            rle = {"size": [height, width], "counts": counts.encode("ascii")}
        else:
            raise RecordError(path, f"{where}.counts: expected a list of run lengths or a compressed RLE string, "
                                    f"got {type(counts).__name__}")
    else:
        raise RecordError(path, f"{where}: expected polygons (list) or RLE (dict with size and counts), "
                                f"got {type(segmentation).__name__}")
    try:
        return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)
    except (ValueError, TypeError) as err:  # pycocotools' errors on corrupt strings name nothing
        raise RecordError(path, f"{where}: undecodable RLE ({err})") from None


class CocoSource:
    """grain random-access source of `instances` records from a COCO/LVIS instances JSON.

    Args:
      image_dir: folder holding the images named by `images[].file_name`.
      instances_json: COCO instances / LVIS JSON (`images`, `annotations`, `categories`).
      captions_json: optional COCO captions JSON (`annotations[].image_id`, `.caption`).
      min_area: annotations with `area` below it are dropped (AnyDoor's LVIS loader keeps area > 3600).
      include_crowd: keep `iscrowd=1` annotations (crowd regions, usually off for object insertion).
      keep_empty: keep images left with no annotation (their records have masks (0, H, W)).
    Records: {"image": uint8 (H, W, 3), "masks": uint8 (N, H, W), "labels": category names,
              "captions": list[str], "source": image path}.
    """

    def __init__(self, image_dir: str | Path, instances_json: str | Path, captions_json: str | Path | None = None,
                 *, min_area: float = 0.0, include_crowd: bool = False, keep_empty: bool = False):
        self.image_dir = Path(image_dir)
        path = Path(instances_json)
        data = load_json(path)
        images = field(data, "images", list, path, "")
        annotations = field(data, "annotations", list, path, "")
        categories = field(data, "categories", list, path, "")
        names = {}
        for i, category in enumerate(categories):
            names[field(category, "id", int, path, f"categories[{i}]")] = str(
                field(category, "name", str, path, f"categories[{i}]"))
        by_image = defaultdict(list)
        for i, ann in enumerate(annotations):
            where = f"annotations[{i}]"
            image_id = field(ann, "image_id", int, path, where)
            category_id = field(ann, "category_id", int, path, where)
            if category_id not in names:
                raise RecordError(path, f"{where}.category_id: {category_id} is not among categories[].id")
            if "segmentation" not in ann:
                raise RecordError(path, f"missing field '{where}.segmentation'")
            if not include_crowd and ann.get("iscrowd", 0):
                continue
            if min_area and float(ann.get("area", np.inf)) < min_area:
                continue
            by_image[image_id].append((names[category_id], ann["segmentation"], where))
        captions = defaultdict(list)
        if captions_json is not None:
            cpath = Path(captions_json)
            cdata = load_json(cpath)
            for i, ann in enumerate(field(cdata, "annotations", list, cpath, "")):
                captions[field(ann, "image_id", int, cpath, f"annotations[{i}]")].append(
                    field(ann, "caption", str, cpath, f"annotations[{i}]").strip())
        self.annotation_path = str(path)
        self.entries = []
        for i, image in enumerate(images):
            where = f"images[{i}]"
            image_id = field(image, "id", int, path, where)
            if "file_name" in image:
                file_name = field(image, "file_name", str, path, where)
            elif "coco_url" in image:  # LVIS
                file_name = field(image, "coco_url", str, path, where).rsplit("/", 1)[-1]
            else:
                raise RecordError(path, f"missing field '{where}.file_name' (or LVIS '{where}.coco_url')")
            height = field(image, "height", int, path, where)
            width = field(image, "width", int, path, where)
            if not by_image.get(image_id) and not keep_empty:
                continue
            self.entries.append({"file": str(self.image_dir / file_name), "height": height, "width": width,
                                 # JSON text, not Python lists: several times smaller for COCO/LVIS polygons,
                                 # and cheap to pickle into each of grain's worker processes
                                 "objects": json.dumps(by_image.get(image_id, [])),
                                 "captions": captions.get(image_id, [])})

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        image = read_image(entry["file"])
        height, width = entry["height"], entry["width"]
        if image.shape[:2] != (height, width):
            raise RecordError(entry["file"], f"image is {image.shape[1]}x{image.shape[0]} (WxH) but "
                                             f"{self.annotation_path} says {width}x{height}")
        objects = json.loads(entry["objects"])
        masks = np.zeros((len(objects), height, width), np.uint8)
        for k, (_, segmentation, where) in enumerate(objects):
            masks[k] = decode_segmentation(segmentation, height, width, self.annotation_path,
                                           f"{where}.segmentation")
        return {"image": image, "masks": masks, "labels": [name for name, _, _ in objects],
                "captions": list(entry["captions"]), "source": entry["file"]}


def image_pair(record: dict, rng: np.random.Generator) -> dict:
    """`instances` record -> `pair` record: one random non-empty instance, the same image as reference
    and target (AnyDoor's rule for image datasets), `dynamic=False`.

    Raises RecordError naming record["source"] when no instance has a non-empty mask.
    """
    masks = record["masks"]
    usable = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)) if len(masks) else np.array([], int)
    if usable.size == 0:
        raise RecordError(record["source"], "no instance with a non-empty mask")
    k = int(usable[rng.integers(usable.size)])
    return {"reference_image": record["image"], "reference_mask": masks[k], "target_image": record["image"],
            "target_mask": masks[k], "dynamic": False, "source": record["source"]}
