"""Procedural captioned images, generated per index in memory: the training engine's smoke data.

Each record is a solid background with one filled shape (disc, square or triangle) of another
colour at a random place and size, and its caption ("a red disc on a blue background"). Records
are pure functions of (seed, index), so any shard or resume sees the same data without files.
"""

from __future__ import annotations

import numpy as np

COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
    "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("disc", "square", "triangle")


class ShapesSource:
    """grain RandomAccessDataSource of {"image": (S, S, 3) float32 in [-1, 1], "caption": str}."""

    def __init__(self, num_records: int, image_size: int, seed: int = 0):
        if num_records <= 0 or image_size < 8:
            raise ValueError(f"ShapesSource needs num_records > 0 and image_size >= 8, got {num_records}, {image_size}")
        self.num_records, self.image_size, self.seed = num_records, image_size, seed

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} out of range(0, {self.num_records})")
        rng = np.random.default_rng([self.seed, index])
        names = list(COLOURS)
        bg, fg = rng.choice(len(names), size=2, replace=False)
        shape = SHAPES[rng.integers(len(SHAPES))]
        s = self.image_size
        yy, xx = np.mgrid[0:s, 0:s] + 0.5
        cy, cx = rng.uniform(0.25, 0.75, size=2) * s
        r = rng.uniform(0.15, 0.35) * s
        if shape == "disc":
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        elif shape == "square":
            inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        else:
            inside = (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) / 2)
        image = np.where(inside[..., None], COLOURS[names[fg]], COLOURS[names[bg]]).astype(np.float32)
        return {
            "image": image / 127.5 - 1.0,
            "caption": f"a {names[fg]} {shape} on a {names[bg]} background",
        }
