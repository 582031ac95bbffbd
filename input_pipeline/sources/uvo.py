"""UVO (Unidentified Video Objects) sparse set -> one clip record per annotated instance; `sample_pair`.

Layout: a frames folder (the released `uvo_frames_sparse/`) and a video JSON in the COCO-video
(YouTube-VIS) style, e.g. `UVO_sparse_train_video_with_interpolation.json` / `UVO_sparse_val_video.json`:
  {"videos": [{"id": int, "file_names": ["<video>/<frame>.png", ...], "height": int, "width": int}, ...],
   "annotations": [{"id": int, "video_id": int, "segmentations": [RLE or null per file name], ...}, ...]}
Frame files are `frames_dir / file_name`; RLE is COCO's ({"size": [h, w], "counts": str or [int]}),
decoded with pycocotools. The released loader reads a "reorg" JSON {video_id: [file names]} made by a
preprocessing script; here the frame list comes from the `videos` entries of the same JSON.

Records: {"frame_paths": [frames where the instance has a mask], "segmentations": JSON text of their
RLEs, "frame_indices": their positions in the video, "height", "width", "object_id": annotation id,
"min_gap": n // K, "dynamic": 1, "annotation_path": the JSON, "where": "annotations[i]", "source":
the first frame's folder}. K = 10 for the train JSON, 5 for the val JSON (used as training data),
reference/anydoor.md 3.2. Unlike the released loader, which draws over all of a video's frames and
retries when the instance has no mask there (null), frames without a mask are left out before the
draw, as `video.VideoSource` does for YouTube-VOS objects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from input_pipeline.records import RecordError, field, load_json, read_image
from input_pipeline.sources.coco import decode_segmentation
from input_pipeline.sources.vipseg import frame_pair_indices

GAP_DIVISOR = {"train": 10, "val": 5}
DYNAMIC = 1


class UVOSource:
    """grain random-access source of UVO instance clip records (see module doc).

    Args:
      frames_dir: folder the JSON's `file_names` are relative to.
      video_json: the UVO sparse video JSON.
      gap_divisor: K of the min-gap rule (10 for the train JSON, 5 for val).
      dynamic: the pairs' `dynamic` label (1).
    Raises RecordError naming the folder or the JSON (with the field) for a missing frames folder, a
    malformed JSON, an annotation of an unknown video or one whose `segmentations` length differs from
    its video's `file_names`.
    """

    def __init__(self, frames_dir: str | Path, video_json: str | Path, *, gap_divisor: int = GAP_DIVISOR["train"],
                 dynamic: int = DYNAMIC):
        frames_dir, path = Path(frames_dir), Path(video_json)
        if not frames_dir.is_dir():
            raise RecordError(frames_dir, "UVO frames folder not found (expected the folder that the video "
                                          "JSON's file_names are relative to, e.g. uvo_frames_sparse/)")
        data = load_json(path)
        videos = {}
        for i, video in enumerate(field(data, "videos", list, path, "")):
            where = f"videos[{i}]"
            names = field(video, "file_names", list, path, where)
            if not all(isinstance(n, str) for n in names):
                raise RecordError(path, f"field '{where}.file_names': expected a list of frame file names")
            videos[field(video, "id", int, path, where)] = (
                names, field(video, "height", int, path, where), field(video, "width", int, path, where))
        self.records = []
        for i, ann in enumerate(field(data, "annotations", list, path, "")):
            where = f"annotations[{i}]"
            video_id = field(ann, "video_id", int, path, where)
            if video_id not in videos:
                raise RecordError(path, f"{where}.video_id: {video_id} is not among videos[].id")
            segmentations = field(ann, "segmentations", list, path, where)
            names, height, width = videos[video_id]
            if len(segmentations) != len(names):
                raise RecordError(path, f"{where}.segmentations has {len(segmentations)} entries but video "
                                        f"{video_id} has {len(names)} file_names (expected one per frame)")
            present = [k for k, s in enumerate(segmentations) if s is not None]
            if len(present) < 2:
                continue
            self.records.append({
                "frame_paths": [str(frames_dir / names[k]) for k in present],
                # JSON text: several times smaller than the parsed dicts in each grain worker
                "segmentations": json.dumps([segmentations[k] for k in present]), "frame_indices": present,
                "height": height, "width": width, "object_id": int(ann.get("id", i)),
                "min_gap": len(present) // gap_divisor, "dynamic": dynamic, "annotation_path": str(path),
                "where": where, "source": str((frames_dir / names[present[0]]).parent)})
        if not self.records:
            raise RecordError(path, "no annotation with masks in at least 2 frames")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {**record, "frame_paths": list(record["frame_paths"]), "frame_indices": list(record["frame_indices"])}


def sample_pair(record: dict, rng: np.random.Generator) -> dict:
    """UVO clip record -> `pair` record: frames by `frame_pair_indices`, masks decoded from their RLE.

    RecordError naming the frame file (missing/undecodable, or a size other than the video's), or the
    JSON and field (malformed RLE, or an empty mask).
    """
    start, end = frame_pair_indices(len(record["frame_paths"]), int(record["min_gap"]), rng, record["source"])
    segmentations = json.loads(record["segmentations"])
    height, width, path = record["height"], record["width"], record["annotation_path"]
    out = {"dynamic": record.get("dynamic", DYNAMIC), "source": record["source"]}
    for role, k in (("reference", start), ("target", end)):
        frame_path = record["frame_paths"][k]
        image = read_image(frame_path)
        if image.shape[:2] != (height, width):
            raise RecordError(frame_path, f"frame is {image.shape[1]}x{image.shape[0]} (WxH) but {path} says "
                                          f"{width}x{height}")
        where = f"{record['where']}.segmentations[{record['frame_indices'][k]}]"
        mask = decode_segmentation(segmentations[k], height, width, path, where)
        if not mask.any():
            raise RecordError(path, f"{where}: empty mask")
        out[f"{role}_image"], out[f"{role}_mask"] = image, mask
    return out
