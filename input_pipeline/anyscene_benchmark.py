"""AnyScene's evaluation set (paper Sec. 5.2): composited foregrounds + scene captions from COCO.

    python -m input_pipeline.anyscene_benchmark --coco_root /data/coco --out /data/anyscene_bench
    python -m input_pipeline.anyscene_benchmark --image_dir IMGS --instances_json I.json \
        --captions_json C.json --num 100 --out OUT

The paper forms 3,108 pairs on COCO "the same method as for constructing the training data"
(`input_pipeline.anyscene.benchmark_composite`: centred square view, 1-3 objects, no colour
augmentation). Images are visited in a permutation fixed by `seed`; an image whose objects all
fail the area filter is skipped and counted; construction stops at `num` pairs (or when the
images run out: the count written is reported).

Output folder (what `python -m jcompose.evaluate --config=configs/eval/anyscene.py` scores):
  foregrounds/<name>.png   composited foreground (objects on the black canvas), RGB
  masks/<name>.png         union mask of the chosen objects, 0/255 grey
  reference/<name>.png     the real scene (FID/KID reference), RGB
  prompts.json             {name: caption} (the evaluator's `config.prompts`)
  pairs.csv                name, source image, caption
  benchmark.json           construction settings and counts
Generated images go in another folder under the same names (`<name>.png`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from input_pipeline.anyscene import benchmark_composite
from input_pipeline.records import RecordError
from input_pipeline.sources.coco import CocoSource

PAPER_PAIRS = 3108


def _png(path: Path, array: np.ndarray) -> None:
    import cv2

    image = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: could not write PNG")


def _uint8(signed: np.ndarray) -> np.ndarray:
    return np.clip(np.round((signed + 1.0) * 127.5), 0, 255).astype(np.uint8)


def build_benchmark(source, out: str | Path, **settings) -> dict:
    """`write_benchmark` into `out`, which appears complete or not at all (`jcompose.atomic`: a killed build
    leaves no half folder; a rerun replaces an earlier benchmark folder)."""
    from jcompose import atomic

    entries = ("foregrounds", "masks", "reference", "prompts.json", "pairs.csv", "benchmark.json")
    with atomic.folder(out, owns=atomic.only(entries)) as partial:
        return write_benchmark(source, partial, **settings)


def write_benchmark(source, out: str | Path, *, num: int = PAPER_PAIRS, seed: int = 0, size: int = 512,
                    max_objects: int = 3, min_object_area: float = 0.01, max_object_area: float = 0.8) -> dict:
    """Writes `num` benchmark pairs drawn from `source` (a `CocoSource` or any sequence of instances
    records) into `out` (layout in the module doc); returns the summary written to benchmark.json.

    The same (source, seed, settings) always give the same files: the image order is a
    permutation seeded by `seed` and each composite is seeded by (seed, image index).
    """
    if num <= 0:
        raise ValueError(f"num = {num}: expected a positive number of pairs")
    out = Path(out)
    for sub in ("foregrounds", "masks", "reference"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(source))
    prompts, rows, skipped = {}, [], []
    for index in order:
        if len(rows) == num:
            break
        try:
            record = source[int(index)]  # a damaged image is skipped and counted like a filtered one
            example = benchmark_composite(record, int(index), seed, size=size, max_objects=max_objects,
                                          min_object_area=min_object_area, max_object_area=max_object_area)
        except RecordError as err:
            skipped.append(str(err))
            continue
        name = f"{len(rows):05d}"
        _png(out / "foregrounds" / f"{name}.png", _uint8(example["foreground"]))
        _png(out / "masks" / f"{name}.png", (example["mask"][..., 0] > 0.5).astype(np.uint8) * 255)
        _png(out / "reference" / f"{name}.png", _uint8(example["image"]))
        prompts[name] = example["caption"]
        rows.append((name, str(record.get("source", index)), example["caption"]))
    (out / "prompts.json").write_text(json.dumps(prompts, indent=1))
    with open(out / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "source", "caption"])
        writer.writerows(rows)
    summary = {"pairs": len(rows), "requested": num, "skipped": len(skipped), "seed": seed, "size": size,
               "max_objects": max_objects, "min_object_area": min_object_area, "max_object_area": max_object_area,
               "images_in_source": len(source), "skipped_examples": skipped[:20]}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> dict:
    """`python -m input_pipeline.anyscene_benchmark` (argv without the program name); returns the summary.
    Input errors print `error: ...` and exit 2 (`--debug` or JCOMPOSE_DEBUG=1: the traceback)."""
    from jcompose import cli

    parser = argparse.ArgumentParser(prog="python -m input_pipeline.anyscene_benchmark",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {cli.DEBUG_ENV}=1)")
    parser.add_argument("--coco_root", default="", help="COCO root: val2017/ and annotations/ under it")
    parser.add_argument("--image_dir", default="", help="default <coco_root>/val2017")
    parser.add_argument("--instances_json", default="", help="default <coco_root>/annotations/instances_val2017.json")
    parser.add_argument("--captions_json", default="", help="default <coco_root>/annotations/captions_val2017.json")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num", type=int, default=PAPER_PAIRS, help=f"pairs (paper: {PAPER_PAIRS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--max_objects", type=int, default=3)
    parser.add_argument("--min_object_area", type=float, default=0.01)
    parser.add_argument("--max_object_area", type=float, default=0.8)
    args = parser.parse_args(cli.pop_debug(sys.argv[1:] if argv is None else argv))
    with cli.guard():
        summary = _build_from_args(args)
    short = "" if summary["pairs"] == args.num else f" (only {summary['pairs']} of {args.num}: source exhausted)"
    print(f"wrote {summary['pairs']} pairs to {args.out}{short}; {summary['skipped']} images skipped")
    return summary


def _build_from_args(args) -> dict:
    from jcompose.cli import InputError

    root = Path(args.coco_root) if args.coco_root else None
    if root is None and not (args.image_dir and args.instances_json):
        raise InputError("give --coco_root, or --image_dir and --instances_json")
    if root is not None and not root.is_dir():
        raise InputError(f"--coco_root {root}: no such folder")
    image_dir = Path(args.image_dir) if args.image_dir else root / "val2017"
    instances = Path(args.instances_json) if args.instances_json else root / "annotations" / "instances_val2017.json"
    captions = (Path(args.captions_json) if args.captions_json
                else (root / "annotations" / "captions_val2017.json" if root else None))
    flag = "--image_dir" if args.image_dir else "--coco_root"
    if not image_dir.is_dir():
        raise InputError(f"{flag}: image folder {image_dir} not found")
    if captions is not None and not captions.is_file():
        raise InputError(f"--captions_json {captions}: no such file (captions are the scene descriptions)")
    for flag, value, ok, expected in (("--num", args.num, args.num > 0, "> 0"),
                                      ("--size", args.size, args.size >= 8 and args.size % 8 == 0,
                                       "a positive multiple of 8"),
                                      ("--max_objects", args.max_objects, args.max_objects >= 1, ">= 1"),
                                      ("--min_object_area", args.min_object_area,
                                       0 <= args.min_object_area < args.max_object_area <= 1,
                                       "0 <= --min_object_area < --max_object_area <= 1")):
        if not ok:
            raise InputError(f"{flag} {value}: expected {expected}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder")
    source = CocoSource(image_dir, instances, captions)
    if len(source) == 0:
        raise InputError(f"{instances}: no image with an annotation to build pairs from")
    return build_benchmark(source, args.out, num=args.num, seed=args.seed, size=args.size,
                           max_objects=args.max_objects, min_object_area=args.min_object_area,
                           max_object_area=args.max_object_area)


if __name__ == "__main__":
    main()
