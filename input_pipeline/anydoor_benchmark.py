"""AnyDoor's quantitative benchmark (paper Sec. 4.1): DreamBooth concepts placed into boxes of COCO-val images.

    python -m input_pipeline.anydoor_benchmark --dreambooth /data/dreambooth/dataset --coco /data/coco \
        --out /data/anydoor_bench [--masks /data/dreambooth_masks] [--seed 0]

What the paper says: "we construct a new benchmark with 30 new concepts provided by DreamBooth for the
target images. For the scene image, we manually pick 80 images with boxes in COCO-Val. Thus we generate
2,400 images for the object-scene combinations." The set was never released (ali-vilab/AnyDoor #115).

What this builder chooses (recorded in benchmark.json under "choices"), since "manually pick" cannot be
repeated:
  * concepts: every subfolder of --dreambooth (google/dreambooth's `dataset/` has the 30), sorted by name;
    one target image per concept ("the target images": one reference each), drawn with
    numpy default_rng([seed, 0]) among its photos whose object passes AnyDoor's reference filters (mask
    >= 1% of the photo, box sides >= 10% of the photo's: what `compose anydoor` accepts);
  * object masks: DreamBooth ships photos without masks; AnyDoor's loader reads cut-out RGBA PNGs. Each
    photo takes its mask from `--masks/<concept>/<stem>.png`, a sibling `<stem>.png`, or its own alpha
    (input_pipeline/sources/dreambooth.py); `--whole-photo` uses the whole photo instead (recorded; the
    paper's Table 3 shows background removal matters: 82.1/67.8 with, 81.0/64.1 without);
  * backgrounds: COCO val2017 images with at least one box that is not a crowd, covers 4%-40% of the
    image, has an aspect ratio (w/h) in [0.5, 2] and sides >= 64 px; 80 drawn with default_rng([seed, 1])
    from those (sorted by image id first); in each, the largest such box is the target region (the
    concept replaces that object, as the paper's examples do);
  * every concept x background pair: 30 x 80 = 2,400 (concept-major order).

Output (BENCH), the released DreamBooth test loader's naming (fg: RGBA PNGs per concept; bg: `_GT`/`_mask`):
  concepts/<concept>/<stem>.png      the chosen photo as RGBA, alpha = the object mask
  backgrounds/<image id>_GT.jpg      the COCO image (bytes copied)
  backgrounds/<image id>_mask.png    the target box, 255 inside (x0 <= x < x1, y0 <= y < y1)
  benchmark.json                     concepts, backgrounds (box, category, annotation id), rules, choices
`python -m jcompose.compose anydoor --weights OUT --benchmark BENCH --out GEN` generates every pair;
`python -m jcompose.evaluate --config=configs/eval/anydoor.py --config.manifest=GEN/manifest.json` scores them.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

from input_pipeline.records import RecordError, field, load_json, read_binary_mask, read_image

PAPER_CONCEPTS, PAPER_BACKGROUNDS = 30, 80
NAME = "anydoor-dreambooth-cocoval"
BOX_AREA = (0.04, 0.40)       # of the image
BOX_ASPECT = (0.5, 2.0)       # width / height
MIN_BOX_SIDE = 64             # pixels
MIN_REFERENCE_AREA, MIN_REFERENCE_SIDE = 0.01, 0.10  # as compose anydoor's reference check


def _png(path: Path, image: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    converted = {2: image, 3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}
    if image.ndim == 3:
        image = cv2.cvtColor(image, converted[image.shape[2]])
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: could not write PNG")


def _usable_reference(mask: np.ndarray) -> bool:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return False
    h, w = mask.shape
    return (mask.mean() >= MIN_REFERENCE_AREA and (ys.max() + 1 - ys.min()) >= MIN_REFERENCE_SIDE * h
            and (xs.max() + 1 - xs.min()) >= MIN_REFERENCE_SIDE * w)


def concept_photos(root: Path, masks: Path | None, whole_photo: bool) -> dict[str, list[tuple[str, str | None]]]:
    """{concept: [(photo, mask or None for the whole photo)]} of a DreamBooth folder (module doc)."""
    from input_pipeline.sources.dreambooth import PHOTO_SUFFIXES, ReferenceFolderSource

    if (root / "dataset").is_dir():
        root = root / "dataset"  # the google/dreambooth repository root
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise RecordError(root, "no concept folders (expected DreamBooth's dataset/<concept>/*.jpg)")
    concepts = {}
    for folder in folders:
        if whole_photo:
            photos = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
            if not photos:
                raise RecordError(folder, "no photos (*.jpg, *.jpeg, *.png)")
            concepts[folder.name] = [(p, None) for p in photos]
            continue
        try:
            source = ReferenceFolderSource(folder, masks / folder.name if masks else None)
        except RecordError as err:
            raise RecordError(err.path, f"{err.reason}. DreamBooth ships no masks: give --masks DIR with "
                                        "<concept>/<stem>.png, RGBA cut-outs, or --whole-photo") from None
        concepts[folder.name] = list(source.items)
    return concepts


def choose_references(concepts: dict, seed: int) -> dict[str, tuple[str, str | None]]:
    """One (photo, mask) per concept, drawn with default_rng([seed, 0]) among the usable ones (module doc)."""
    rng = np.random.default_rng([seed, 0])
    chosen = {}
    for name in sorted(concepts):
        usable = [(p, m) for p, m in concepts[name] if m is None or _usable_reference(read_binary_mask(m))]
        if not usable:
            raise RecordError(Path(concepts[name][0][0]).parent, "no photo whose object mask covers >= 1% of it "
                                                                 "with box sides >= 10% of its sides")
        chosen[name] = usable[int(rng.integers(len(usable)))]
    return chosen


def _qualifies(box, width: int, height: int) -> bool:
    x, y, w, h = box
    return (BOX_AREA[0] <= w * h / (width * height) <= BOX_AREA[1] and BOX_ASPECT[0] <= w / max(h, 1e-6) <= BOX_ASPECT[1]
            and min(w, h) >= MIN_BOX_SIDE)


def coco_backgrounds(instances: Path) -> list[dict]:
    """Every COCO image with a qualifying box (module doc), sorted by id: {id, file_name, width, height,
    box [x0, y0, x1, y1] (the largest qualifying one, integer pixels), category, annotation_id}."""
    data = load_json(instances)
    images = {}
    for i, image in enumerate(field(data, "images", list, instances, "")):
        where = f"images[{i}]"
        images[field(image, "id", int, instances, where)] = (field(image, "file_name", str, instances, where),
                                                             field(image, "width", int, instances, where),
                                                             field(image, "height", int, instances, where))
    names = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", []) if isinstance(c, dict)}
    best: dict[int, dict] = {}
    for i, ann in enumerate(field(data, "annotations", list, instances, "")):
        where = f"annotations[{i}]"
        image_id = field(ann, "image_id", int, instances, where)
        box = field(ann, "bbox", list, instances, where)
        if image_id not in images or len(box) != 4 or ann.get("iscrowd", 0):
            continue
        _, width, height = images[image_id]
        if not _qualifies(box, width, height) or box[2] * box[3] <= best.get(image_id, {}).get("area", 0):
            continue
        x, y, w, h = (float(v) for v in box)
        corners = [max(0, math.floor(x)), max(0, math.floor(y)), min(width, math.ceil(x + w)),
                   min(height, math.ceil(y + h))]
        best[image_id] = {"area": w * h, "box": corners, "category": names.get(ann.get("category_id")),
                          "annotation_id": ann.get("id")}
    return [{"id": i, "file_name": images[i][0], "width": images[i][1], "height": images[i][2],
             **{k: v for k, v in best[i].items() if k != "area"}} for i in sorted(best)]


def build(dreambooth: str | Path, coco: str | Path, out: str | Path, **settings) -> dict:
    """`write` into `out`, which appears complete or not at all (`jcompose.atomic`: a killed build leaves no
    half folder; a rerun replaces an earlier benchmark folder)."""
    from jcompose import atomic

    with atomic.folder(out, owns=atomic.only(("concepts", "backgrounds", "benchmark.json"))) as partial:
        return write(dreambooth, coco, partial, **settings)


def write(dreambooth: str | Path, coco: str | Path, out: str | Path, *, masks: str | Path | None = None,
          whole_photo: bool = False, num_backgrounds: int = PAPER_BACKGROUNDS, seed: int = 0,
          image_dir: str | Path | None = None, instances: str | Path | None = None) -> dict:
    """Writes the benchmark (module doc) into `out`; returns benchmark.json's content.

    coco: the COCO root (val2017/, annotations/instances_val2017.json), or give image_dir and instances."""
    coco = Path(coco)
    image_dir = Path(image_dir) if image_dir else coco / "val2017"
    instances = Path(instances) if instances else coco / "annotations" / "instances_val2017.json"
    if not image_dir.is_dir():
        raise RecordError(image_dir, "COCO image folder not found (expected <coco>/val2017)")
    concepts = concept_photos(Path(dreambooth), Path(masks) if masks else None, whole_photo)
    references = choose_references(concepts, seed)
    candidates = coco_backgrounds(instances)
    if len(candidates) < num_backgrounds:
        raise RecordError(instances, f"only {len(candidates)} images have a qualifying box; {num_backgrounds} wanted")
    order = np.random.default_rng([seed, 1]).permutation(len(candidates))[:num_backgrounds]
    chosen = sorted((candidates[int(i)] for i in order), key=lambda c: c["id"])
    out = Path(out)
    concept_rows = []
    for name, (photo, mask) in references.items():
        image = read_image(photo)
        alpha = np.full(image.shape[:2], 255, np.uint8) if mask is None else read_binary_mask(mask) * 255
        if alpha.shape != image.shape[:2]:
            raise RecordError(mask, f"mask is {alpha.shape[1]}x{alpha.shape[0]}, photo {photo} is "
                                    f"{image.shape[1]}x{image.shape[0]}")
        target = Path("concepts") / name / f"{Path(photo).stem}.png"
        _png(out / target, np.dstack([image, alpha]))
        concept_rows.append({"name": name, "reference": str(target), "source": photo, "mask_source": mask,
                             "photos": len(concepts[name])})
    background_rows = []
    for entry in chosen:
        source = image_dir / entry["file_name"]
        if not source.is_file():
            raise RecordError(source, f"COCO image of id {entry['id']} not found")
        stem = f"{entry['id']:012d}"
        (out / "backgrounds").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out / "backgrounds" / f"{stem}_GT{source.suffix.lower()}")
        mask = np.zeros((entry["height"], entry["width"]), np.uint8)
        x0, y0, x1, y1 = entry["box"]
        mask[y0:y1, x0:x1] = 255
        _png(out / "backgrounds" / f"{stem}_mask.png", mask)
        background_rows.append({"name": stem, "image": f"backgrounds/{stem}_GT{source.suffix.lower()}",
                                "mask": f"backgrounds/{stem}_mask.png", "box": entry["box"],
                                "category": entry["category"], "annotation_id": entry["annotation_id"],
                                "source": str(source)})
    summary = {
        "name": NAME, "seed": seed, "pairs": len(concept_rows) * len(background_rows),
        "paper": f"{PAPER_CONCEPTS} DreamBooth concepts x {PAPER_BACKGROUNDS} COCO-val images with boxes = 2,400",
        "rules": {"box_area_of_image": list(BOX_AREA), "box_aspect_w_over_h": list(BOX_ASPECT),
                  "min_box_side_px": MIN_BOX_SIDE, "box_choice": "largest qualifying non-crowd box",
                  "reference_filters": {"min_mask_area": MIN_REFERENCE_AREA, "min_box_side": MIN_REFERENCE_SIDE}},
        "choices": ["backgrounds drawn with numpy default_rng([seed, 1]) among the qualifying COCO-val images "
                    "(the paper picked 80 by hand)", "one reference photo per concept drawn with default_rng([seed, 0])",
                    "object masks: " + ("none, whole photos (--whole-photo)" if whole_photo else "given masks / alpha")],
        "qualifying_backgrounds": len(candidates), "concepts": concept_rows, "backgrounds": background_rows}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def read_benchmark(bench: str | Path) -> tuple[dict, list[dict]]:
    """(benchmark.json, pairs) of a built benchmark; each pair {name (concept/background), concept,
    reference (RGBA path), background, mask, box [x0, y0, x1, y1]} with absolute paths, concept-major.

    Raises RecordError naming benchmark.json or the missing file."""
    bench = Path(bench)
    path = bench / "benchmark.json"
    data = load_json(path)
    concepts = field(data, "concepts", list, path, "")
    backgrounds = field(data, "backgrounds", list, path, "")
    pairs = []
    for i, concept in enumerate(concepts):
        reference = bench / field(concept, "reference", str, path, f"concepts[{i}]")
        for j, background in enumerate(backgrounds):
            where = f"backgrounds[{j}]"
            box = field(background, "box", list, path, where)
            if len(box) != 4:
                raise RecordError(path, f"{where}.box: expected [x0, y0, x1, y1]")
            pair = {"name": f"{concept['name']}/{background['name']}", "concept": concept["name"],
                    "reference": reference, "background": bench / field(background, "image", str, path, where),
                    "mask": bench / field(background, "mask", str, path, where), "box": [int(v) for v in box]}
            for key in ("reference", "background", "mask"):
                if not pair[key].is_file():
                    raise RecordError(pair[key], f"listed in {path} but missing")
            pairs.append(pair)
    if not pairs:
        raise RecordError(path, "no concept x background pairs")
    return data, pairs


def main(argv: list[str] | None = None) -> dict:
    """`python -m input_pipeline.anydoor_benchmark` (argv without the program name); returns the summary."""
    from jcompose import cli

    parser = argparse.ArgumentParser(prog="python -m input_pipeline.anydoor_benchmark",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {cli.DEBUG_ENV}=1)")
    parser.add_argument("--dreambooth", required=True, help="DreamBooth dataset/ folder (<concept>/*.jpg)")
    parser.add_argument("--masks", default="", help="object masks: <masks>/<concept>/<stem>.png (white = object)")
    parser.add_argument("--whole-photo", action="store_true", help="no masks: the whole photo is the reference")
    parser.add_argument("--coco", default="", help="COCO root (val2017/, annotations/instances_val2017.json)")
    parser.add_argument("--image-dir", default="", help="COCO-val images (default <coco>/val2017)")
    parser.add_argument("--instances", default="", help="default <coco>/annotations/instances_val2017.json")
    parser.add_argument("--backgrounds", type=int, default=PAPER_BACKGROUNDS, help="COCO images (paper: 80)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(cli.pop_debug(sys.argv[1:] if argv is None else argv))
    with cli.guard():
        if not Path(args.dreambooth).is_dir():
            raise cli.InputError(f"--dreambooth {args.dreambooth}: no such folder (expected <concept>/*.jpg folders)")
        if not args.coco and not (args.image_dir and args.instances):
            raise cli.InputError("give --coco ROOT, or --image-dir and --instances")
        if args.backgrounds <= 0:
            raise cli.InputError(f"--backgrounds {args.backgrounds}: expected a positive count")
        if args.masks and args.whole_photo:
            raise cli.InputError("--masks and --whole-photo: choose one")
        summary = build(args.dreambooth, args.coco or ".", args.out, masks=args.masks or None,
                        whole_photo=args.whole_photo, num_backgrounds=args.backgrounds, seed=args.seed,
                        image_dir=args.image_dir or None, instances=args.instances or None)
    print(f"wrote {len(summary['concepts'])} concepts x {len(summary['backgrounds'])} backgrounds = "
          f"{summary['pairs']} pairs to {args.out}")
    return summary


if __name__ == "__main__":
    main()
