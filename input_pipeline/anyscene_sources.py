"""AnyScene's training data: COCO, Open Images and FFHQ-style faces, mixed by weight (paper Sec. 5.1).

The paper trains on 240K pairs "sourced from FFHQ, COCO and OpenImage", captioned with BLIP-2 where a
dataset has no text, and gives neither the share of each dataset nor how the 240K were drawn. Here
each dataset whose root is set in `config.data` becomes an `instances` source, and they are mixed
by `<name>_weight` (default 1 : 1 : 1, a guess: equal shares, i.e. 80K of each in 240K draws).
A weight of 0 or an empty root leaves a dataset out; the others' weights are renormalised.

config.data fields read (configs/anyscene.py documents them):
  coco_root ("synthetic": a COCO-layout set written into the workdir), image_dir, instances_json,
    captions_json, min_area, coco_weight; num_records, image_size, seed for the synthetic set;
  openimages_root, openimages_csv, openimages_masks, openimages_images, openimages_classes,
    openimages_captions, openimages_min_mask_area, openimages_max_instances, openimages_weight;
  faces_root, faces_images, faces_masks | faces_label_maps, faces_foreground_labels,
    faces_background_labels, faces_label, faces_captions, faces_weight;
  caption_fallback ("a photo of <labels>" where a side caption file has no entry).
Paths are relative to their dataset's root unless absolute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from input_pipeline import pipeline
from input_pipeline.sources.coco import CocoSource
from input_pipeline.sources.faces import FaceSource
from input_pipeline.sources.openimages import OpenImagesSource

DATASETS = ("coco", "openimages", "faces")


def coco_paths(data: Any, workdir: str | Path | None) -> tuple[Path, Path, Path | None]:
    """(image folder, instances JSON, captions JSON or None) of `data.coco_root`.

    `coco_root == "synthetic"` writes (once) a small COCO-layout set of `data.num_records` images of
    image_size x 1.25 image_size px under `<workdir>/data/coco` and returns its paths.
    """
    if data.coco_root == "synthetic":
        if workdir is None:
            raise ValueError("config.data.coco_root = 'synthetic' needs a workdir to write the data into")
        from input_pipeline.sources.synthetic import write_synthetic

        root = Path(workdir) / "data" / "coco"
        if not (root / "annotations" / "instances.json").exists():
            write_synthetic(Path(workdir) / "data", num_images=data.num_records, num_videos=0,
                            image_size=(data.image_size, data.image_size + data.image_size // 4), seed=data.seed)
        return root / "images", root / "annotations" / "instances.json", root / "annotations" / "captions.json"
    root = Path(data.coco_root)
    captions = root / data.captions_json if data.captions_json else None
    return root / data.image_dir, root / data.instances_json, captions


def _optional(root: Path, relative: str) -> Path | None:
    return root / relative if relative else None


def _build(name: str, data: Any, workdir: str | Path | None):
    fallback = bool(data.get("caption_fallback", True))
    if name == "coco":
        image_dir, instances, captions = coco_paths(data, workdir)
        return CocoSource(image_dir, instances, captions, min_area=data.min_area)
    if name == "openimages":
        root = Path(data.openimages_root)
        return OpenImagesSource(root / data.openimages_csv, root / data.openimages_masks,
                                root / data.openimages_images, root / data.openimages_classes,
                                _optional(root, data.openimages_captions), caption_fallback=fallback,
                                min_mask_area=data.openimages_min_mask_area,
                                max_instances=data.openimages_max_instances)
    root = Path(data.faces_root)
    if bool(data.faces_masks) == bool(data.faces_label_maps):
        raise ValueError(f"config.data.faces_masks = {data.faces_masks!r}, faces_label_maps = "
                         f"{data.faces_label_maps!r}: expected exactly one folder (binary masks or label maps)")
    return FaceSource(root / data.faces_images, _optional(root, data.faces_masks),
                      _optional(root, data.faces_label_maps), foreground_labels=tuple(data.faces_foreground_labels),
                      background_labels=tuple(data.faces_background_labels), label=data.faces_label,
                      captions_json=_optional(root, data.faces_captions), caption_fallback=fallback)


def anyscene_components(data: Any, workdir: str | Path | None = None) -> list[tuple[str, Any, float]]:
    """[(dataset name, source, weight), ...] for the datasets `data` turns on (root set, weight > 0),
    in the order coco, openimages, faces. Sources are built (their index files parsed) here.

    Raises ValueError naming the config field for a negative weight or when no dataset is on, and
    RecordError (naming the file) for unreadable annotations.
    """
    components = []
    for name in DATASETS:
        root = data.get(f"{name}_root", "")
        weight = float(data.get(f"{name}_weight", 1.0))
        if weight < 0:
            raise ValueError(f"config.data.{name}_weight = {weight}: expected >= 0 (0 leaves {name} out)")
        if root and weight > 0:
            components.append((name, _build(name, data, workdir), weight))
    if not components:
        raise ValueError("config.data: no training data; set coco_root ('synthetic' for a generated set), "
                         "openimages_root or faces_root, with a weight > 0")
    return components


def make_anyscene_source(data: Any, workdir: str | Path | None = None) -> Any:
    """AnyScene's training source: one dataset's `instances` source as is, or for several an endless
    grain MapDataset mixing them by weight (`pipeline.mix_sources`, seeded with `data.seed`), each
    element an `instances` record from one dataset. Pass it to `pipeline.make_iterator`.
    """
    components = anyscene_components(data, workdir)
    if len(components) == 1:
        return components[0][1]
    return pipeline.mix_sources([(source, weight) for _, source, weight in components], seed=int(data.seed))
