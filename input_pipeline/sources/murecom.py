"""The MureCom benchmark layout -> `background` and `reference` records.

    MureCom/<Category>/bg/{i}.jpg            backgrounds
    MureCom/<Category>/bg/bbox.txt           "<Category> <i>.jpg x1 y1 x2 y2" per line, inclusive pixel bounds
    MureCom/<Category>/fg{1,2,3}/{i}.jpg     photos of one object, with {i}.png its mask (1-bit PNG)

Category names may contain spaces, so a bbox.txt line's file name is the first token containing "jpg".
Boxes become half-open (x0, y0, x1, y1) = (x1_file, y1_file, x2_file + 1, y2_file + 1), numpy-slice ready.
"""

from __future__ import annotations

from pathlib import Path

from input_pipeline.records import RecordError, read_image
from input_pipeline.sources.dreambooth import ReferenceFolderSource


def parse_bbox_file(path: str | Path) -> list[tuple[str, tuple[int, int, int, int]]]:
    """bbox.txt -> [(image file name, (x0, y0, x1, y1) half-open)], RecordError naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise RecordError(path, "bbox.txt not found (expected <Category>/bg/bbox.txt)") from None
    boxes = []
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        position = next((k for k, token in enumerate(tokens) if "jpg" in token), None)
        coords = tokens[position + 1:position + 5] if position is not None else []
        if position is None or len(coords) != 4 or not all(c.lstrip("-").isdigit() for c in coords):
            raise RecordError(path, f"line {number}: expected '<Category> <i>.jpg x1 y1 x2 y2' (integers), "
                                    f"got {line!r:.80}")
        x1, y1, x2, y2 = (int(c) for c in coords)
        boxes.append((tokens[position], (x1, y1, x2 + 1, y2 + 1)))
    return boxes


class MureComBackgrounds:
    """grain random-access source of `background` records {"image", "box": (x0, y0, x1, y1) half-open,
    "category": str, "source"} over the chosen categories (default: every folder with bg/bbox.txt)."""

    def __init__(self, root: str | Path, categories: list[str] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise RecordError(root, "MureCom folder not found")
        if categories is None:
            categories = sorted(p.name for p in root.iterdir() if (p / "bg" / "bbox.txt").is_file())
        self.items = []
        for category in categories:
            for name, box in parse_bbox_file(root / category / "bg" / "bbox.txt"):
                self.items.append((str(root / category / "bg" / name), box, category))
        if not self.items:
            raise RecordError(root, "no <Category>/bg/bbox.txt entries found")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, (x0, y0, x1, y1), category = self.items[index]
        image = read_image(path)
        height, width = image.shape[:2]
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise RecordError(path, f"box (x1 y1 x2 y2 inclusive) = ({x0} {y0} {x1 - 1} {y1 - 1}) in bbox.txt is "
                                    f"empty or outside the {width}x{height} image")
        return {"image": image, "box": (x0, y0, x1, y1), "category": category, "source": path}


def murecom_references(root: str | Path, category: str, fg: int = 1) -> ReferenceFolderSource:
    """`reference` records of MureCom/<category>/fg<fg>: only `{i}.jpg` photos (not the newer layout's
    `_rmobj`/`_aug` files), each with its `{i}.png` mask."""
    return ReferenceFolderSource(Path(root) / category / f"fg{fg}", pattern=r"^\d+\.jpg$", threshold=0)
