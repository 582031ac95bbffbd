"""A small synthetic dataset on disk in the real COCO and YouTube-VOS layouts, with no download.

Backgrounds are scikit-image's bundled sample photos (astronaut, coffee, chelsea, rocket, hubble deep
field, and the brick/grass/gravel textures); objects are procedurally drawn textured polygons (star,
blob, box, disc). In the videos they move, scale, rotate and change brightness from frame to frame,
and a second object enters late (so `meta.json` frame lists differ per object).

    python -m input_pipeline.sources.synthetic --out DIR

writes

    DIR/coco/images/000000.jpg ...
    DIR/coco/annotations/instances.json   # segmentation cycles polygon / uncompressed RLE / compressed RLE
    DIR/coco/annotations/captions.json    # COCO captions format
    DIR/youtube_vos/JPEGImages/<video>/00000.jpg ...
    DIR/youtube_vos/Annotations/<video>/00000.png   # palette PNG, pixel value = object id
    DIR/youtube_vos/meta.json             # {"videos": {video: {"objects": {id: {"category", "frames"}}}}}

`write_synthetic` also returns what it drew (masks per image, label maps per frame), which the
tests compare readers against. Everything is a pure function of `seed`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "brick", "grass", "gravel")
CATEGORIES = ("star", "blob", "box", "disc")
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (230, 200, 40),
           "purple": (140, 50, 170), "orange": (240, 130, 30), "white": (240, 240, 240), "black": (20, 20, 20)}
PATTERNS = ("striped", "checkered", "dotted", "plain")
# A DAVIS-like palette: index 0 black, then distinct colours, so PNGs are viewable.
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128, 128, 0, 128, 0, 128, 128] + [255] * (3 * 249)


@dataclass
class SyntheticTruth:
    """What `write_synthetic` drew, for tests.

    images[i]: {"file": path, "masks": uint8 (N, H, W) {0,1}, "labels": [category], "captions": [str],
                "encodings": ["polygon" | "rle" | "compressed_rle"], "polygons": [(K, 2) float vertices]}
    videos[name]: {"frames": [jpg paths], "annotations": [png paths], "labels": uint8 (T, H, W) object ids,
                   "objects": {id: category}}
    """

    coco_dir: Path
    youtube_vos_dir: Path
    images: list[dict] = field(default_factory=list)
    videos: dict[str, dict] = field(default_factory=dict)


def background(name: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a bundled scikit-image sample, resized to uint8 RGB (height, width, 3)."""
    import cv2
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3]
    h, w = image.shape[:2]
    # largest crop with the target aspect ratio, at a random place
    ch, cw = (h, round(h * width / height)) if w * height >= h * width else (round(w * height / width), w)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return cv2.resize(np.ascontiguousarray(image[y:y + ch, x:x + cw]), (width, height), interpolation=cv2.INTER_AREA)


def shape_outline(category: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-size polygon (K, 2) of (x, y) vertices around the origin, radius about 1."""
    if category == "star":
        points = int(rng.integers(5, 8))
        angles = np.arange(2 * points) * np.pi / points
        radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, rng.uniform(0.4, 0.6))
    elif category == "blob":
        angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        radii = 0.75 + 0.25 * np.sin(angles * int(rng.integers(2, 4)) + rng.uniform(0, 6)) * rng.uniform(0.5, 1)
    elif category == "box":
        angles = np.array([0.25, 0.75, 1.25, 1.75]) * np.pi + rng.uniform(0, np.pi / 2)
        radii = np.ones(4)
    else:  # disc, squashed into an ellipse
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        radii = 1.0 / np.sqrt(np.cos(angles) ** 2 + (np.sin(angles) / rng.uniform(0.6, 1.0)) ** 2)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)


def texture(height: int, width: int, pattern: str, colours: tuple, rng: np.random.Generator) -> np.ndarray:
    """float32 (height, width, 3) RGB in [0, 255]: two colours in a pattern, plus a soft shading gradient."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = float(rng.uniform(6, 14))
    if pattern == "striped":
        theta = rng.uniform(0, np.pi)
        select = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period) > 0
    elif pattern == "checkered":
        select = ((xx // period) + (yy // period)) % 2 == 0
    elif pattern == "dotted":
        select = (np.sin(xx * 2 * np.pi / period) * np.sin(yy * 2 * np.pi / period)) > 0.5
    else:
        select = np.zeros((height, width), bool)
    a, b = (np.asarray(c, np.float32) for c in colours)
    image = np.where(select[..., None], b, a)
    shade = 0.85 + 0.3 * (xx + yy) / max(height + width, 1)  # so plain objects still have texture
    return image * shade[..., None]


def draw_object(canvas: np.ndarray, outline: np.ndarray, centre, scale: float, angle: float, gain: float,
                tex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pastes a textured polygon into canvas (uint8 (H, W, 3), in place); returns (mask (H, W) uint8, vertices).

    The polygon is `outline` rotated by `angle`, scaled by `scale` pixels and moved to `centre` (x, y);
    vertices are rounded to integer pixels, and the mask is exactly OpenCV's fill of those vertices.
    """
    import cv2

    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    vertices = np.round(outline @ rotation.T * scale + np.asarray(centre)).astype(np.int32)
    mask = np.zeros(canvas.shape[:2], np.uint8)
    cv2.fillPoly(mask, [vertices], 1)
    inside = mask.astype(bool)
    canvas[inside] = np.clip(tex[inside] * gain, 0, 255).astype(np.uint8)
    return mask, vertices.astype(np.float64)


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO run lengths of a (H, W) {0,1} mask: column-major runs, starting with a (possibly empty) 0-run."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    return ([0] + counts) if flat.size and flat[0] == 1 else counts


def compress_counts(counts: list[int]) -> str:
    """COCO's compressed RLE string: each count (minus the count two back, after the third) in 5-bit
    little-endian groups with a continuation bit, offset by 48 into printable ASCII."""
    chars = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        while True:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: negative differences end at -1
            more = value != -1 if group & 0x10 else value != 0
            chars.append(chr(group + (0x20 if more else 0) + 48))
            if not more:
                break
    return "".join(chars)


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"{path}: could not write JPEG")


def _write_palette_png(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(PALETTE)
    image.save(path)


def _object_style(rng: np.random.Generator) -> tuple[str, str, tuple[str, str]]:
    category = CATEGORIES[rng.integers(len(CATEGORIES))]
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    names = list(COLOURS)
    first, second = rng.choice(len(names), size=2, replace=False)
    return category, pattern, (names[first], names[second])


def write_coco(root: Path, truth: SyntheticTruth, num_images: int, size: tuple[int, int],
               rng: np.random.Generator) -> None:
    """COCO layout under `root`: 2-3 non-overlapping objects per image (so every mask is fully visible)."""
    height, width = size
    images, annotations, captions = [], [], []
    encodings = ("polygon", "rle", "compressed_rle")
    for index in range(num_images):
        bg_name = BACKGROUNDS[index % len(BACKGROUNDS)]
        canvas = background(bg_name, height, width, rng)
        count = int(rng.integers(2, 4))
        slot = width / count
        masks, labels, polygons, kinds, phrases = [], [], [], [], []
        for k in range(count):
            category, pattern, (c1, c2) = _object_style(rng)
            radius = min(slot, height) * rng.uniform(0.25, 0.4)
            centre = (slot * (k + 0.5) + rng.uniform(-0.05, 0.05) * slot, height * rng.uniform(0.35, 0.65))
            tex = texture(height, width, pattern, (COLOURS[c1], COLOURS[c2]), rng)
            mask, vertices = draw_object(canvas, shape_outline(category, rng), centre, radius,
                                         rng.uniform(0, 2 * np.pi), 1.0, tex)
            kind = encodings[(index + k) % 3]
            if kind == "polygon":
                segmentation = [vertices.flatten().tolist()]
            elif kind == "rle":
                segmentation = {"size": [height, width], "counts": rle_counts(mask)}
            else:
                segmentation = {"size": [height, width], "counts": compress_counts(rle_counts(mask))}
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": CATEGORIES.index(category) + 1, "segmentation": segmentation,
                                "area": float(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0})
            masks.append(mask)
            labels.append(category)
            polygons.append(vertices)
            kinds.append(kind)
            phrases.append(f"a {c1} {pattern} {category}" if pattern != "plain" else f"a {c1} {category}")
        file_name = f"{index:06d}.jpg"
        _write_jpeg(root / "images" / file_name, canvas)
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
        scene = bg_name.replace("_", " ")
        texts = [f"{' and '.join(phrases)} in front of a photo of {scene}",
                 f"{len(phrases)} drawn shapes over a {scene} picture"]
        for text in texts:
            captions.append({"id": len(captions) + 1, "image_id": index + 1, "caption": text})
        truth.images.append({"file": str(root / "images" / file_name), "image": canvas, "masks": np.stack(masks),
                             "labels": labels, "captions": texts, "encodings": kinds, "polygons": polygons})
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    info = {"description": "jcompose synthetic COCO-layout data", "version": "1.0"}
    (root / "annotations" / "instances.json").write_text(json.dumps(
        {"info": info, "images": images, "annotations": annotations, "categories": categories}))
    (root / "annotations" / "captions.json").write_text(json.dumps(
        {"info": info, "images": images, "annotations": captions}))


def write_youtube_vos(root: Path, truth: SyntheticTruth, num_videos: int, num_frames: int,
                      size: tuple[int, int], rng: np.random.Generator) -> None:
    """YouTube-VOS layout under `root`: object 1 in every frame, object 2 (drawn on top) from frame 2 on."""
    height, width = size
    meta = {"videos": {}}
    for v in range(num_videos):
        name = f"video{v:03d}"
        bg = background(BACKGROUNDS[(v + 3) % len(BACKGROUNDS)], height, width, rng)
        objects = []
        for obj in range(2):
            category, pattern, (c1, c2) = _object_style(rng)
            start = np.array([rng.uniform(0.25, 0.4) * width if obj == 0 else rng.uniform(0.6, 0.75) * width,
                              rng.uniform(0.3, 0.7) * height])
            velocity = rng.uniform(-0.03, 0.03, size=2) * np.array([width, height])
            objects.append({"category": category, "outline": shape_outline(category, rng),
                            "tex": texture(height, width, pattern, (COLOURS[c1], COLOURS[c2]), rng),
                            "start": start, "velocity": velocity, "first": 0 if obj == 0 else min(2, num_frames - 1),
                            "radius": min(height, width) * rng.uniform(0.15, 0.22),
                            "angle": rng.uniform(0, 2 * np.pi), "spin": rng.uniform(-0.2, 0.2)})
        frames, pngs, label_maps = [], [], []
        presence = {1: [], 2: []}
        for t in range(num_frames):
            # the camera pans a little; objects' brightness (gain) drifts with `progress` below
            pan = round(t * rng.uniform(0, 1.5))
            canvas = np.roll(bg, pan, axis=1).copy()
            labels = np.zeros((height, width), np.uint8)
            for object_id, obj in enumerate(objects, start=1):
                if t < obj["first"]:
                    continue
                progress = t / max(num_frames - 1, 1)
                mask, _ = draw_object(canvas, obj["outline"], obj["start"] + obj["velocity"] * t,
                                      obj["radius"] * (0.8 + 0.4 * progress), obj["angle"] + obj["spin"] * t,
                                      0.7 + 0.6 * progress, obj["tex"])
                labels[mask.astype(bool)] = object_id  # later objects occlude earlier ones
            for object_id in (1, 2):
                if (labels == object_id).any():
                    presence[object_id].append(f"{t:05d}")
            frame = root / "JPEGImages" / name / f"{t:05d}.jpg"
            png = root / "Annotations" / name / f"{t:05d}.png"
            _write_jpeg(frame, canvas)
            _write_palette_png(png, labels)
            frames.append(str(frame))
            pngs.append(str(png))
            label_maps.append(labels)
        meta["videos"][name] = {"objects": {str(i): {"category": objects[i - 1]["category"], "frames": presence[i]}
                                            for i in (1, 2)}}
        truth.videos[name] = {"frames": frames, "annotations": pngs, "labels": np.stack(label_maps),
                              "objects": {i: objects[i - 1]["category"] for i in (1, 2)}}
    root.mkdir(parents=True, exist_ok=True)  # also when num_videos == 0
    (root / "meta.json").write_text(json.dumps(meta, indent=1))


def write_synthetic(root: str | Path, *, num_images: int = 8, num_videos: int = 4, num_frames: int = 8,
                    image_size: tuple[int, int] = (192, 256), seed: int = 0) -> SyntheticTruth:
    """Writes the COCO-layout and YouTube-VOS-layout synthetic datasets under `root` (see module doc).

    Args:
      root: output folder (created); `root/coco` and `root/youtube_vos` are written.
      num_images, num_videos, num_frames: dataset size (defaults: about 1.5 MB, under a second or two).
      image_size: (height, width) of every image and frame, each >= 32.
      seed: everything drawn is a pure function of it.
    Returns: SyntheticTruth with the paths and the masks/labels that were drawn.
    """
    height, width = image_size
    problems = [f"{name} = {value}: expected {expected}" for name, value, ok, expected in (
        ("num_images", num_images, num_images >= 0, ">= 0"), ("num_videos", num_videos, num_videos >= 0, ">= 0"),
        ("num_frames", num_frames, num_frames >= 2, ">= 2"),
        ("image_size", image_size, min(height, width) >= 32, "(height, width) with both >= 32 px")) if not ok]
    if problems:
        raise ValueError(f"write_synthetic: {'; '.join(problems)}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: is a file, not a folder to write the datasets into")
    from jcompose import atomic

    truth = SyntheticTruth(coco_dir=root / "coco", youtube_vos_dir=root / "youtube_vos")
    rng = np.random.default_rng(seed)
    # Each dataset folder appears whole or not at all (a kill leaves none; a rerun replaces one).
    with atomic.folder(truth.coco_dir, owns=atomic.only(("images", "annotations"))) as partial:
        write_coco(partial, truth, num_images, (height, width), rng)
    _moved(truth, partial, truth.coco_dir)
    with atomic.folder(truth.youtube_vos_dir, owns=atomic.only(("JPEGImages", "Annotations", "meta.json"))) as partial:
        write_youtube_vos(partial, truth, num_videos, num_frames, (height, width), rng)
    _moved(truth, partial, truth.youtube_vos_dir)
    return truth


def _moved(truth: SyntheticTruth, partial: Path, final: Path) -> None:
    """The file paths in `truth` written under `partial`, now under `final`."""
    def rebase(path: str) -> str:
        return str(final / Path(path).relative_to(partial)) if Path(path).is_relative_to(partial) else path

    for image in truth.images:
        image["file"] = rebase(image["file"])
    for video in truth.videos.values():
        video["frames"] = [rebase(p) for p in video["frames"]]
        video["annotations"] = [rebase(p) for p in video["annotations"]]


def main(argv: list[str] | None = None) -> int:
    """`python -m input_pipeline.sources.synthetic` (argv without the program name).

    Input errors print `error: ...` and exit 2 (`--debug` or JCOMPOSE_DEBUG=1: the traceback);
    `jcompose.cli` is imported only then, so the writer starts without loading jcompose.
    """
    parser = argparse.ArgumentParser(prog="python -m input_pipeline.sources.synthetic",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks (or set JCOMPOSE_DEBUG=1)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num_images", type=int, default=8)
    parser.add_argument("--num_videos", type=int, default=4)
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        # The flags' own names in errors (write_synthetic's arguments are named differently).
        for flag, value, minimum in (("--num_images", args.num_images, 0), ("--num_videos", args.num_videos, 0),
                                     ("--num_frames", args.num_frames, 2), ("--height", args.height, 32),
                                     ("--width", args.width, 32)):
            if value < minimum:
                from jcompose.cli import InputError

                raise InputError(f"{flag} {value}: expected an integer >= {minimum}")
        truth = write_synthetic(args.out, num_images=args.num_images, num_videos=args.num_videos,
                                num_frames=args.num_frames, image_size=(args.height, args.width), seed=args.seed)
    except Exception as err:
        from jcompose import cli

        cli.report(err, debug=args.debug)
    print(f"wrote {len(truth.images)} images to {truth.coco_dir} and {len(truth.videos)} videos x "
          f"{args.num_frames} frames to {truth.youtube_vos_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
