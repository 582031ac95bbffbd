"""Video object segmentation folders -> `clip` records (one per video and object); `sample_pair`.

Layouts (frames `<stem>.jpg`, annotations `<stem>.png`: palette PNGs whose pixel value is the object id):
  youtube_vos: root/JPEGImages/<video>/, root/Annotations/<video>/, optional root/meta.json
               ({"videos": {video: {"objects": {"<id>": {"frames": [stem, ...]}}}}})
  mose:        the same folders, no meta.json
  davis:       root/JPEGImages/<resolution>/<video>/, root/Annotations/<resolution>/<video>/

The index (which object is in which frames) comes from meta.json when there is one, else from reading
every annotation PNG once at construction. Frames are only decoded in `sample_pair`.

Minimum pair gap: AnyDoor pairs frames at least floor(n / K) apart for an object seen in n frames, with
K = 10 for YouTube-VOS/VIS, UVO and MOSE (reference/anydoor.md); DAVIS is not in AnyDoor's mix and
uses K = 10 here too. The gap can be 0 for clips shorter than K frames, as in the released code.

Frame order (`frame_order`), which the gap counts in: "sorted" (by name: temporal), or "released", the
order of the released loaders: meta.json's list for YouTube-VOS/VIS, `os.listdir`'s for MOSE (and
VIPSeg, MVImgNet). Directory order is the file system's: by name on some, a hash order on ext4, where
the released "gap" is not a time gap at all (pairs of any two frames) and the order differs between
machines. `frame_order_names` is the rule every reader shares.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from input_pipeline.records import RecordError, field, load_json, read_image, read_label_png

logger = logging.getLogger(__name__)
GAP_DIVISOR = {"youtube_vos": 10, "mose": 10, "davis": 10}
FRAME_ORDERS = ("released", "sorted")
# AnyDoor's data-type label for adaptive timesteps: 1 (True) multi-view low quality, 2 multi-view high
# quality; the released loaders give YouTube-VOS 1 and MOSE 2 (DAVIS is not in its mix: 1 here).
DYNAMIC = {"youtube_vos": True, "mose": 2, "davis": True}


def frame_order_names(folder: str | Path, suffix: str, frame_order: str) -> list[str]:
    """Names (without `suffix`) of the files in `folder` ending in `suffix`: in `os.listdir` order for
    "released", by name for "sorted"."""
    if frame_order not in FRAME_ORDERS:
        raise ValueError(f"frame_order = {frame_order!r}: expected one of {FRAME_ORDERS}")
    names = [n[:-len(suffix)] for n in os.listdir(folder) if n.endswith(suffix)]
    return sorted(names) if frame_order == "sorted" else names


class VideoSource:
    """grain random-access source of `clip` records.

    Args:
      root: dataset folder (see module doc for each layout).
      layout: "youtube_vos", "mose" or "davis".
      resolution: DAVIS resolution folder ("480p" or "Full-Resolution").
      gap_divisor: K of the min-gap rule (min_gap = n_frames // K); default per layout.
      use_meta: read root/meta.json when present (youtube_vos); False scans the annotation PNGs.
      dynamic: the pairs' `dynamic` label (default per layout, see DYNAMIC).
      meta_json: a meta.json in the YouTube-VOS format to read instead (any layout), e.g. one written
        from `index_meta()` of an earlier scan: scanning MOSE's ~100k PNGs takes minutes, reading it does not.
      strict: a video with frames but no annotation PNGs raises RecordError (default: such videos are
        left out with one warning giving their count).
      frame_order: "sorted" (by name) or "released" (meta.json's order, else os.listdir's; module doc).
    Records: {"frame_paths", "mask_paths" (same length, frames where the object is annotated),
              "object_id": int, "min_gap": int, "dynamic": bool | int, "source": video frame folder}.
    """

    def __init__(self, root: str | Path, layout: str = "youtube_vos", *, resolution: str = "480p",
                 gap_divisor: int | None = None, use_meta: bool = True, meta_json: str | Path | None = None,
                 dynamic: bool | int | None = None, strict: bool = False, frame_order: str = "sorted"):
        if layout not in GAP_DIVISOR:
            raise ValueError(f"VideoSource layout={layout!r}: expected one of {sorted(GAP_DIVISOR)}")
        if frame_order not in FRAME_ORDERS:
            raise ValueError(f"VideoSource frame_order={frame_order!r}: expected one of {FRAME_ORDERS}")
        root = Path(root)
        sub = Path(resolution) if layout == "davis" else Path()
        frame_root, mask_root = root / "JPEGImages" / sub, root / "Annotations" / sub
        for folder in (frame_root, mask_root):
            if not folder.is_dir():
                raise RecordError(folder, f"folder not found (expected the {layout} layout, see "
                                          "input_pipeline/sources/video.py)")
        divisor = gap_divisor or GAP_DIVISOR[layout]
        dynamic = DYNAMIC[layout] if dynamic is None else dynamic
        meta_path = root / "meta.json"
        if meta_json is not None:
            meta = self._read_meta(Path(meta_json))
        elif use_meta and layout == "youtube_vos" and meta_path.is_file():
            meta = self._read_meta(meta_path)
        else:
            meta = None
        self.root = str(root)
        self.records = []
        videos = sorted(p for p in frame_root.iterdir() if p.is_dir())
        unannotated = []  # videos with frames but no annotation PNG for any of them
        for video_dir in videos:
            video = video_dir.name
            masks = {p.stem: p for p in (mask_root / video).glob("*.png")}
            frames = frame_order_names(video_dir, ".jpg", frame_order)
            stems = [s for s in frames if s in masks]
            if frames and not stems:
                if strict:
                    raise RecordError(mask_root / video, f"no annotation PNGs for the {len(frames)} frames of "
                                                         f"{video_dir} (expected <frame stem>.png files)")
                unannotated.append(video)
                continue
            if meta is not None:
                objects = {int(i): [s for s in listed if s in masks] for i, listed in meta.get(video, {}).items()}
            else:
                objects = {}
                for stem in stems:
                    for object_id in np.unique(read_label_png(masks[stem])).tolist():
                        if object_id:
                            objects.setdefault(object_id, []).append(stem)
            for object_id, frames in sorted(objects.items()):
                frames = sorted(frames) if frame_order == "sorted" else frames
                if len(frames) < 2:
                    continue
                self.records.append({
                    "frame_paths": [str(video_dir / f"{s}.jpg") for s in frames],
                    "mask_paths": [str(masks[s]) for s in frames], "object_id": object_id,
                    "min_gap": len(frames) // divisor, "dynamic": dynamic, "source": str(video_dir)})
        if unannotated:
            logger.warning("%s: %d of %d videos have no annotation PNGs in %s and are left out (e.g. %s); "
                           "strict=True makes this an error", frame_root, len(unannotated), len(videos), mask_root,
                           ", ".join(unannotated[:3]))

    @staticmethod
    def _read_meta(path: Path) -> dict[str, dict[str, list[str]]]:
        """meta.json -> {video: {object id string: [frame stems]}}, checked field by field."""
        videos = field(load_json(path), "videos", dict, path, "")
        out = {}
        for video, entry in videos.items():
            objects = field(entry, "objects", dict, path, f"videos.{video}")
            out[video] = {}
            for object_id, obj in objects.items():
                where = f"videos.{video}.objects.{object_id}"
                if not object_id.isdigit():
                    raise RecordError(path, f"{where}: object keys must be integer ids, got {object_id!r}")
                frames = field(obj, "frames", list, path, where)
                if not all(isinstance(f, str) for f in frames):
                    raise RecordError(path, f"field '{where}.frames': expected a list of frame names (strings)")
                out[video][object_id] = frames
        return out

    def index_meta(self) -> dict:
        """The index as a YouTube-VOS meta.json dict ({"videos": {video: {"objects": {id: {"frames"}}}}}),
        to save with json.dump and pass back as `meta_json`."""
        videos: dict = {}
        for record in self.records:
            video = Path(record["source"]).name
            frames = [Path(p).stem for p in record["frame_paths"]]
            videos.setdefault(video, {"objects": {}})["objects"][str(record["object_id"])] = {"frames": frames}
        return {"videos": videos}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {**record, "frame_paths": list(record["frame_paths"]), "mask_paths": list(record["mask_paths"])}


def sample_pair(record: dict, rng: np.random.Generator) -> dict:
    """`clip` record -> `pair` record: frames i < j with j - i >= min_gap, both uniform over what the gap
    allows, reference = frame i, target = frame j, masks = (annotation == object_id), `dynamic` from the
    record (True when absent; 2 for MOSE, AnyDoor's label).

    Raises RecordError naming the file when a frame or mask is unreadable, their sizes differ, or the
    object is absent from a chosen frame.
    """
    n, gap = len(record["frame_paths"]), int(record["min_gap"])
    if n < 2 or gap >= n:
        raise RecordError(record["source"], f"object {record['object_id']}: {n} frames cannot give a pair "
                                            f"{gap} frames apart")
    start = int(rng.integers(0, n - gap))
    end = int(rng.integers(start + gap, n))
    out = {"dynamic": record.get("dynamic", True), "source": record["source"]}
    for role, k in (("reference", start), ("target", end)):
        image = read_image(record["frame_paths"][k])
        mask_path = record["mask_paths"][k]
        mask = (read_label_png(mask_path) == record["object_id"]).astype(np.uint8)
        if mask.shape != image.shape[:2]:
            raise RecordError(mask_path, f"annotation is {mask.shape[::-1]} (WxH) but its frame "
                                         f"{record['frame_paths'][k]} is {image.shape[1::-1]}")
        if not mask.any():
            raise RecordError(mask_path, f"object {record['object_id']} is absent from this frame")
        out[f"{role}_image"], out[f"{role}_mask"] = image, mask
    return out
