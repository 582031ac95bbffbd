"""A synthetic benchmark in the MureCom layout: objects photographed a few times, and backgrounds with boxes.

DreamCom's tiny config and tests need what MureCom holds (reference photos of one object with masks,
backgrounds with a box to insert it into) without the download. Each object is one procedurally
drawn textured shape (fixed outline, pattern and colours: its identity); its photos put it over
different scikit-image backgrounds at a different place, scale, rotation and brightness, as a
photographer would. `held_out_views` draws further photos of the same object that were not written,
for measuring whether a fine-tuned model learnt it.

    MureCom/<Category>/bg/{i}.jpg, bg/bbox.txt   "<Category> <i>.jpg x1 y1 x2 y2" (inclusive pixels)
    MureCom/<Category>/fg{k}/{i}.jpg, {i}.png    photos and 1-bit masks ({0, 255})

Everything is a pure function of `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from input_pipeline.sources import synthetic


@dataclass(frozen=True)
class SyntheticObject:
    """One object's identity: its outline (K, 2), pattern and colour names."""

    category: str
    outline: np.ndarray
    pattern: str
    colours: tuple[str, str]


def make_object(rng: np.random.Generator) -> SyntheticObject:
    """A random object identity."""
    category, pattern, colours = synthetic._object_style(rng)
    return SyntheticObject(category, synthetic.shape_outline(category, rng), pattern, colours)


def photograph(obj: SyntheticObject, size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One photo of `obj`: (uint8 (H, W, 3) RGB, uint8 (H, W) {0, 1} mask), the object on a random background.

    The object covers about 10-30% of the side, fully inside the frame, so a crop keeps it.
    """
    h, w = size
    name = synthetic.BACKGROUNDS[rng.integers(len(synthetic.BACKGROUNDS))]
    canvas = synthetic.background(name, h, w, rng)
    scale = float(rng.uniform(0.18, 0.3)) * min(h, w)
    centre = (rng.uniform(scale, w - scale), rng.uniform(scale, h - scale))
    tex = synthetic.texture(h, w, obj.pattern, tuple(synthetic.COLOURS[c] for c in obj.colours), rng)
    mask, _ = synthetic.draw_object(canvas, obj.outline, centre, scale, float(rng.uniform(-0.4, 0.4)),
                                    float(rng.uniform(0.85, 1.15)), tex)
    return canvas, mask


def _write_mask(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((mask > 0).astype(np.uint8) * 255).convert("1").save(path)


def write_synthetic_murecom(root: str | Path, *, categories: tuple[str, ...] = ("Toy",), objects: int = 1,
                            photos: int = 5, backgrounds: int = 4, size: tuple[int, int] = (96, 128),
                            seed: int = 0) -> dict[str, SyntheticObject]:
    """Writes `root/<Category>/{bg, fg1..fg<objects>}` for each category; returns {"<Category>/fg<k>": object}.

    Args:
      root: the benchmark folder; it appears complete or not at all (a rerun replaces an incomplete one).
      categories: category folder names (also the class nouns DreamCom prompts with, lower-cased).
      objects, photos: objects per category and photos per object.
      backgrounds: backgrounds per category, each with a box of 25-50% of its sides.
      size: (height, width) of every image.
      seed: everything derives from it.
    """
    from jcompose import atomic

    with atomic.folder(root, owns=atomic.only(categories)) as partial:  # whole or not at all
        return _write(partial, categories, objects, photos, backgrounds, size, seed)


def _write(root: Path, categories: tuple[str, ...], objects: int, photos: int, backgrounds: int,
           size: tuple[int, int], seed: int) -> dict[str, SyntheticObject]:
    rng = np.random.default_rng(seed)
    written = {}
    for category in categories:
        for k in range(1, objects + 1):
            obj = make_object(rng)
            folder = root / category / f"fg{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(photos):
                image, mask = photograph(obj, size, rng)
                synthetic._write_jpeg(folder / f"{i}.jpg", image)
                _write_mask(folder / f"{i}.png", mask)
            written[f"{category}/fg{k}"] = obj
        lines = []
        for i in range(backgrounds):
            h, w = size
            image = synthetic.background(synthetic.BACKGROUNDS[rng.integers(len(synthetic.BACKGROUNDS))], h, w, rng)
            bh, bw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
            y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
            synthetic._write_jpeg(root / category / "bg" / f"{i}.jpg", image)
            lines.append(f"{category} {i}.jpg {x0} {y0} {x0 + bw - 1} {y0 + bh - 1}")
        (root / category / "bg" / "bbox.txt").write_text("\n".join(lines) + "\n")
    return written


def held_out_views(obj: SyntheticObject, count: int, size: tuple[int, int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` further photos (image, mask) of `obj`, never written to disk (a seed the writer does not use)."""
    rng = np.random.default_rng([seed, 7919])
    return [photograph(obj, size, rng) for _ in range(count)]
