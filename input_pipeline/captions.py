"""Captions for datasets that have none: a side file `{image: caption}` and a label-based fallback.

AnyScene's paper captions the training images that come without text with BLIP-2; jcompose reads
such captions from a JSON side file made once by any captioner (see the README):

    {"00000.png": "a woman with long hair smiling", "000a1249af2bc5f0": ["a dog on a sofa", "..."]}

Keys are image file names ("00000.png") or stems ("00000"); a key with folders ("train/00000.png")
is matched by its last component. Values are one caption or a list of captions. Where an image has
no entry, `fallback_caption` makes "a photo of <labels>" from the record's object names.

COCO keeps its own captions JSON (`CocoSource`); this helper is for Open Images and face folders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from input_pipeline.records import RecordError, load_json


def _article(word: str) -> str:
    # by the first letter: a plain rule, right for the dataset class names it meets ("an apple",
    # "a person"); exceptions like "an hour" / "a unicorn" are not worth a dictionary
    return "an" if word[:1].lower() in "aeiou" else "a"


def fallback_caption(labels: Sequence[str]) -> str:
    """"a photo of <labels>" in plain English, or "" when there is no non-empty label.

    Labels are de-duplicated in order of first appearance, each gets an indefinite article (a/an by
    its first letter), and they are joined as "x", "x and y", "x, y and z":
    ["dog", "cat", "dog"] -> "a photo of a dog and a cat"; ["apple"] -> "a photo of an apple".
    """
    names = [name for name in dict.fromkeys(str(label).strip() for label in labels) if name]
    if not names:
        return ""
    phrases = [f"{_article(name)} {name}" for name in names]
    joined = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return "a photo of " + joined


def load_caption_file(path: str | Path) -> dict[str, list[str]]:
    """Reads a side caption file -> {file name or stem: [caption, ...]} (captions stripped, empty ones
    dropped; an entry left with none is dropped too).

    Raises RecordError naming the file (and the entry) for invalid JSON, a top level that is not an
    object, a value that is not a string or a list of strings, or two keys that name the same image
    (e.g. "a/x.jpg" and "b/x.jpg") with different captions.
    """
    data = load_json(path)
    if not isinstance(data, dict):
        raise RecordError(path, f"top level: expected a JSON object {{image file name or stem: caption}}, got "
                                f"{type(data).__name__}")
    table: dict[str, list[str]] = {}
    origin: dict[str, str] = {}
    for key, value in data.items():
        captions = [value] if isinstance(value, str) else value
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise RecordError(path, f"entry {key!r}: expected a caption string or a list of caption strings, got "
                                    f"{type(value).__name__} {value!r:.60}")
        captions = [c.strip() for c in captions if c.strip()]
        name = Path(key).name
        if not name:
            raise RecordError(path, f"entry {key!r}: the key must name an image file or its stem")
        if not captions:
            continue
        if name in table and table[name] != captions:
            raise RecordError(path, f"entries {origin[name]!r} and {key!r} name the same image {name!r} with "
                                    "different captions")
        table[name], origin[name] = captions, key
    return table


class SideCaptions:
    """Captions of a record: the side file's entry for its image, else the fallback.

    Args:
      path: side caption file (see `load_caption_file`), or None for no file (fallback only).
      fallback: give `[fallback_caption(labels)]` where the file has no entry (False: `[]`, leaving
        the choice to the method's transform).
    """

    def __init__(self, path: str | Path | None = None, *, fallback: bool = True):
        self.path = str(path) if path else None
        self.table = load_caption_file(path) if path else {}
        self.fallback = fallback

    def __len__(self) -> int:
        return len(self.table)

    def __call__(self, image_path: str | Path, labels: Sequence[str]) -> list[str]:
        """[caption, ...] for the image at `image_path` (looked up by file name, then stem)."""
        name = Path(image_path).name
        found = self.table.get(name) or self.table.get(Path(name).stem)
        if found:
            return list(found)
        text = fallback_caption(labels) if self.fallback else ""
        return [text] if text else []
