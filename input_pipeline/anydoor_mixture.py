"""AnyDoor's released training mixture (run_train_anydoor.py), from whichever datasets are on disk.

The released ConcatDataset is `image + video + tryon + 3D + video + tryon + 3D` with
  image = [Saliency, SAM, LVIS], video = [YTB-VOS, VIPSeg, YTB-VIS, UVO, UVO-val, MOSE],
  tryon = [VITON-HD, FashionTryon], 3D = [MVImgNet],
each dataset reporting a fixed `__len__`, so a dataset's share of an epoch is its length times the
number of times it appears (RELEASED_WEIGHTS; 556k samples: image 10.8%, video 65.8%, try-on 9.0%,
MVImgNet 14.4%; by `dynamic` 0 / 1 / 2: 10.8 / 51.4 / 37.8%). Reference: reference/anydoor.md 3.2.

`released_mixture(roots, seed=...)` mixes the datasets whose root is given with `pipeline.mix_sources`
at those weights (renormalised over what is present) and prints one line of what it uses. Each element
is a `pair` record with three extra keys: "dataset" (the name below), and the released per-dataset
filter settings "region_rule" ('any' / 'both', see `anydoor.make_transform`) and "max_target_region"
(1.0 for try-on, else 0.8). `dynamic` is set from DYNAMIC (ints 0 / 1 / 2).

roots keys (paths; an absent or empty key leaves its dataset out):
  saliency      folders joined by os.pathsep, each MSRA10K-style (x.jpg + x.png in one folder) or
                DUTS-style (holding <name>-Image/ and <name>-Mask/); HFlickr's multi-mask layout is
                not read
  sam           SA-1B folders (sa_*.jpg + sa_*.json) joined by os.pathsep
  lvis          COCO root holding train2017/; lvis_json (default <lvis>/lvis_v1_train.json)
  ytb_vos, ytb_vis   YouTube-VOS layout roots (JPEGImages/, Annotations/, meta.json); YT-VIS converted
  vipseg        VIPSeg_720P (images/, panomasksRGB/)
  uvo_frames    UVO frames folder, with uvo_json (train JSON -> "uvo") and/or uvo_val_json ("uvo_val")
  mose          MOSE train root (JPEGImages/, Annotations/); mose_meta: optional cached index
                (video.VideoSource.index_meta), saving the PNG scan
  vitonhd       VITON-HD root (train/cloth, ...)
  fashiontryon  FashionTryon root of garment folders
  mvimgnet      MVImgNet root; mvimgnet_list: optional list file (the released mvimagenet.txt)
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from input_pipeline import pipeline
from input_pipeline.records import RecordError
from input_pipeline.sources import coco, mvimgnet, tryon, uvo, video, vipseg
from input_pipeline.sources.sa1b import SA1BSource
from input_pipeline.sources.saliency import SaliencySource

# run_train_anydoor.py: image + video + tryon + 3D + video + tryon + 3D
GROUPS = {"image": ("saliency", "sam", "lvis"),
          "video": ("ytb_vos", "vipseg", "ytb_vis", "uvo", "uvo_val", "mose"),
          "tryon": ("vitonhd", "fashiontryon"), "3d": ("mvimgnet",)}
CONCAT_ORDER = ("image", "video", "tryon", "3d", "video", "tryon", "3d")
RELEASED_LENGTHS = {"saliency": 20000, "sam": 20000, "lvis": 20000, "ytb_vos": 40000, "vipseg": 30000,
                    "ytb_vis": 40000, "uvo": 25000, "uvo_val": 8000, "mose": 40000, "vitonhd": 20000,
                    "fashiontryon": 5000, "mvimgnet": 40000}
RELEASED_WEIGHTS = {name: RELEASED_LENGTHS[name] * CONCAT_ORDER.count(group)
                    for group, names in GROUPS.items() for name in names}
DATASETS = tuple(RELEASED_WEIGHTS)
DYNAMIC = {"saliency": 0, "sam": 0, "lvis": 0, "ytb_vos": 1, "vipseg": 1, "ytb_vis": 1, "uvo": 1, "uvo_val": 1,
           "mose": 2, "vitonhd": 2, "fashiontryon": 2, "mvimgnet": 2}
# The released loaders' check_region_size variant: 'any' side out of bounds fails, or only 'both'.
REGION_RULE = {name: "any" for name in ("saliency", "sam", "lvis", "vipseg", "mose")} | {
    name: "both" for name in ("ytb_vos", "ytb_vis", "uvo", "uvo_val", "mvimgnet", "vitonhd", "fashiontryon")}
MAX_TARGET_REGION = {name: 1.0 if name in GROUPS["tryon"] else 0.8 for name in DATASETS}
ROOT_KEYS = ("saliency", "sam", "lvis", "lvis_json", "ytb_vos", "ytb_vis", "vipseg", "uvo_frames", "uvo_json",
             "uvo_val_json", "mose", "mose_meta", "vitonhd", "fashiontryon", "mvimgnet", "mvimgnet_list")
SAM_MIN_AREA, LVIS_MIN_AREA = 100 * 100 * 5, 3600


class ConcatSource:
    """Several random-access sources read as one (index runs through them in order)."""

    def __init__(self, sources: list):
        self.sources = sources
        self.ends = np.cumsum([len(s) for s in sources]).tolist()

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, index: int) -> Any:
        k = bisect.bisect_right(self.ends, index)
        return self.sources[k][index - (self.ends[k - 1] if k else 0)]


class TagPair:
    """`prepare(record, rng)` for one dataset: its record -> `pair` record (via `to_pair`, or as is for
    sources yielding pairs), with the table's `dynamic`, the dataset name and its filter settings.
    A class rather than a closure so grain can pickle it into worker processes.
    """

    def __init__(self, name: str, to_pair: Callable | None, one_piece: bool = False):
        self.name, self.to_pair, self.one_piece = name, to_pair, one_piece

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        pair = self.to_pair(record, rng) if self.to_pair is not None else record
        if self.one_piece and not vipseg.is_one_piece(pair["reference_mask"]):
            raise RecordError(pair["source"], "reference object is in several pieces (the released MOSE loader "
                                              "requires one contour)")
        return {**pair, "dynamic": DYNAMIC[self.name], "dataset": self.name,
                "region_rule": REGION_RULE[self.name], "max_target_region": MAX_TARGET_REGION[self.name]}


def _paths(value: str) -> list[Path]:
    return [Path(p) for p in value.split(os.pathsep) if p]


def _saliency(value: str) -> Any:
    sources = []
    for folder in _paths(value):
        split = sorted(p for p in folder.glob("*-Image") if p.is_dir()) if folder.is_dir() else []
        if split:  # DUTS: <name>-Image/x.jpg with <name>-Mask/x.png
            sources += [SaliencySource(d, d.with_name(d.name[:-len("Image")] + "Mask")) for d in split]
        else:
            sources.append(SaliencySource(folder))
    return sources[0] if len(sources) == 1 else ConcatSource(sources)


def _build(name: str, roots: Mapping[str, str], frame_order: str = "released") -> tuple[Any, Callable | None, bool]:
    """(source, record-to-pair function, one-piece reference filter) of one dataset; `frame_order` for the
    clip readers (video.py: "released" = meta.json's / os.listdir's order, "sorted" = by name)."""
    if name == "saliency":
        return _saliency(roots["saliency"]), coco.image_pair, False
    if name == "sam":
        return SA1BSource(_paths(roots["sam"]), min_area=SAM_MIN_AREA), coco.image_pair, False
    if name == "lvis":
        root = Path(roots["lvis"])
        return (coco.CocoSource(root / "train2017", roots.get("lvis_json") or root / "lvis_v1_train.json",
                                min_area=LVIS_MIN_AREA), coco.image_pair, False)
    if name in ("ytb_vos", "ytb_vis"):
        return video.VideoSource(roots[name], "youtube_vos", frame_order=frame_order), video.sample_pair, False
    if name == "mose":
        return video.VideoSource(roots["mose"], "mose", meta_json=roots.get("mose_meta") or None,
                                 frame_order=frame_order), video.sample_pair, True
    if name == "vipseg":
        return vipseg.VIPSegSource(roots["vipseg"], frame_order=frame_order), vipseg.sample_pair, False
    if name in ("uvo", "uvo_val"):
        split = "train" if name == "uvo" else "val"
        return (uvo.UVOSource(roots["uvo_frames"], roots["uvo_json" if name == "uvo" else "uvo_val_json"],
                              gap_divisor=uvo.GAP_DIVISOR[split]), uvo.sample_pair, False)
    if name == "vitonhd":
        return tryon.VitonHDSource(roots["vitonhd"]), None, False
    if name == "fashiontryon":
        return tryon.FashionTryonSource(roots["fashiontryon"]), None, False
    return (mvimgnet.MVImgNetSource(roots["mvimgnet"], list_file=roots.get("mvimgnet_list") or None,
                                    frame_order=frame_order), mvimgnet.sample_pair, False)


def _given(name: str, roots: Mapping[str, str]) -> bool:
    if name == "uvo":
        return bool(roots.get("uvo_frames") and roots.get("uvo_json"))
    if name == "uvo_val":
        return bool(roots.get("uvo_frames") and roots.get("uvo_val_json"))
    return bool(roots.get(name))


def anydoor_components(roots: Mapping[str, str], weights: Mapping[str, float] | None = None,
                       frame_order: str = "released") -> list[tuple[str, Any, float, TagPair]]:
    """[(dataset name, source, weight, prepare), ...] in the released order for the datasets whose roots
    are given (see module doc), with RELEASED_WEIGHTS updated by `weights` (0 leaves a dataset out);
    `frame_order` of the clip readers (see `_build`).

    Raises ValueError for an unknown roots/weights key, a negative weight or nothing to train on;
    RecordError (naming the folder/file) for a given root that is not in its layout or has no records.
    """
    unknown = sorted(set(roots) - set(ROOT_KEYS)) + sorted(set(weights or {}) - set(DATASETS))
    if unknown:
        raise ValueError(f"unknown AnyDoor dataset key(s) {unknown}: roots take {list(ROOT_KEYS)}, weights "
                         f"{list(DATASETS)}")
    table = {**RELEASED_WEIGHTS, **(weights or {})}
    components = []
    for name in DATASETS:
        weight = float(table[name])
        if weight < 0:
            raise ValueError(f"AnyDoor weight {name}={weight}: expected >= 0 (0 leaves it out)")
        if weight == 0 or not _given(name, roots):
            continue
        source, to_pair, one_piece = _build(name, roots, frame_order)
        if len(source) == 0:
            raise RecordError(roots.get(name) or roots.get("uvo_frames", ""), f"{name}: no usable records")
        components.append((name, source, weight, TagPair(name, to_pair, one_piece)))
    if not components:
        raise ValueError(f"no AnyDoor training data: give at least one of the roots {list(ROOT_KEYS)}")
    return components


def describe(components: list[tuple[str, Any, float, Any]]) -> str:
    """One line: each used dataset's share of the mixture and dynamic label, and what is left out."""
    total = sum(c[2] for c in components)
    used = ", ".join(f"{name} {100 * weight / total:.1f}% (dynamic {DYNAMIC[name]}, {len(source)} records)"
                     for name, source, weight, _ in components)
    missing = [name for name in DATASETS if name not in {c[0] for c in components}]
    return f"AnyDoor mixture: {used}" + (f"; left out: {', '.join(missing)}" if missing else "")


def released_mixture(roots: Mapping[str, str], *, seed: int, weights: Mapping[str, float] | None = None,
                     frame_order: str = "released") -> Any:
    """AnyDoor's training mixture of `pair` records as an endless grain MapDataset (`pipeline.mix_sources`:
    each dataset at weight / sum of the present weights), for `pipeline.make_iterator` with the
    `anydoor.make_transform()` transform. Prints the `describe` line. Arguments as `anydoor_components`.
    """
    components = anydoor_components(roots, weights, frame_order)
    print(describe(components), flush=True)
    return pipeline.mix_sources([(source, weight, prepare) for _, source, weight, prepare in components], seed=seed)
