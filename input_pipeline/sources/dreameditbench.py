"""The DreamEditBench layout (DreamEdit, Li et al. 2023) -> `background` and `reference` records.

Released layout (Hugging Face dataset repo `tianleliphoebe/DreamEditBench`, main at 4e6ada9; tree pages
read for data/, data/addition_source/<set>/ and data/replacement_source/<set>/ at main and 45cf974):

    DreamEditBench/data/addition_source/<set>/found{0..9}.jpg   backgrounds for subject addition
    DreamEditBench/data/addition_source/<set>/bbox.json         {"found0.jpg": [x_min, y_min, x_max, y_max], ...}
    DreamEditBench/data/replacement_source/<set>/found{0..9}.jpg   photos whose main subject is replaced (no boxes)
    DreamEditBench/data/addition_subset.csv, data/relacement_subset.csv (sic)   "easy/hard" subsets (not read)

The 22 <set> folders are named after DreamBooth subjects (backpack, bear_plushie, berry_bowl, can, candle, cat,
clock, colorful_sneaker, dog, duck_toy, fancy_boot, grey_sloth_plushie, monster_toy, pink_sunglasses,
poop_emoji, rc_car, red_cartoon, robot_toy, shiny_sneaker, teapot, vase, wolf_plushie: the replacement_source
listing). Stray files seen in the release: addition_source/dog/.DS_Store, addition_source/red_cartoon/image.png;
only `*.jpg` files are backgrounds here.

Boxes (DreamEditBenchTeam/DreamEdit src/iterate_generate.py @9d452bc, src/utils/mask_helper.py and
src/pipelines/inpainting_pipelines.py @e110097): `bbox.json` is read with `json.load` and indexed by the image's
file name; the box is used as `mask[y_min:y_max, x_min:x_max]` on a 512 x 512 mask (half-open pixel bounds)
after the background was resized to 512 x 512, and divided by 512 for GLIGEN. So the boxes are read here as
half-open bounds in the 512 x 512 frame (`box_frame=512`) and scaled to the decoded image outward:
x0 = floor(x_min * W / 512), x1 = ceil(x_max * W / 512) (same for y with H). `box_frame=None` takes them as
pixels of the image itself. The self-contained parquet export (`tianleliphoebe/DreamEditBench_SelfContained`)
stores the same boxes as `add_bounding_box` int64 lists keyed found0.jpg..found9.jpg.

Reference photos are not part of the release: the 30 objects are the DreamBooth subjects (google/dreambooth
@e9b8c01: `dataset/<subject>/NN.jpg`, classes in `dataset/prompts_and_classes.txt` as "subject_name,class"
lines under a "Classes" heading). They are plain photos with no masks. Sets are shared by subjects of one
class (dog, dog2, ... dog8 -> dog; cat, cat2 -> cat; the DreamEdit config for dog8 reads its backgrounds from
the "dog" folder), so an object's set is the folder named after it, else the folder named after its class.
DreamCom (paper, section 5) uses the addition part: 22 sets x 10 backgrounds, 30 objects in 15 classes,
300 = 30 x 10 object-background pairs.

Not confirmed: the bbox.json contents themselves (only their size, ~357 bytes for 10 entries, was visible), so
the 512-frame reading rests on the DreamEdit code; that backpack_dog shares the "backpack" set (inferred from
22 sets for 30 subjects); the column layout of the subset CSVs; which class noun DreamCom prompted with
(DreamBooth's class here; ImagenHub strips digits and underscores from the subject name instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from input_pipeline.records import RecordError, load_json, read_image
from input_pipeline.sources.dreambooth import PHOTO_SUFFIXES, ReferenceFolderSource

TASKS = {"addition": "addition_source", "replacement": "replacement_source"}
BOX_FORM = "[x_min, y_min, x_max, y_max] integers (half-open pixel bounds, x_min < x_max, y_min < y_max)"

Box = tuple[int, int, int, int]


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _data_dir(root: Path) -> Path:
    """The folder holding addition_source/: `root/data` (a clone of the dataset repo) or `root` itself."""
    for candidate in (root / "data", root):
        if (candidate / TASKS["addition"]).is_dir() or (candidate / TASKS["replacement"]).is_dir():
            return candidate
    raise RecordError(root, "DreamEditBench folder not found (expected <root>/data/addition_source/<set>/bbox.json)")


def _line_of(text: str, key: str) -> str:
    position = text.find(f'"{key}"')
    return f"line {text.count(chr(10), 0, position) + 1}, " if position >= 0 else ""


def parse_bbox_json(path: str | Path, box_frame: int | None = 512) -> dict[str, Box]:
    """bbox.json -> {image file name: (x0, y0, x1, y1) half-open, in the file's frame}.

    Raises RecordError naming the file (and the entry's line) for a missing file, invalid JSON, an entry
    that is not four integers, a box of zero area, or one outside the `box_frame` x `box_frame` frame.
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise RecordError(path, f"expected a JSON object {{\"found0.jpg\": {BOX_FORM}, ...}}, "
                                f"got {type(data).__name__}")
    text = path.read_text(encoding="utf-8")
    boxes = {}
    for name, value in data.items():
        where = f"{_line_of(text, name)}entry {name!r}"
        if not (isinstance(value, list) and len(value) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise RecordError(path, f"{where}: expected {BOX_FORM}, got {value!r:.60}")
        x0, y0, x1, y1 = value
        if not (x0 < x1 and y0 < y1):
            raise RecordError(path, f"{where}: box {value} has zero area (expected {BOX_FORM})")
        if box_frame is not None and not (0 <= x0 and 0 <= y0 and x1 <= box_frame and y1 <= box_frame):
            raise RecordError(path, f"{where}: box {value} is outside the {box_frame}x{box_frame} frame the boxes "
                                    "are given in (box_frame=None reads them as pixels of each image)")
        boxes[name] = (x0, y0, x1, y1)
    return boxes


def scale_box(box: Box, frame: int, width: int, height: int) -> Box:
    """A half-open box in the `frame` x `frame` frame -> the width x height image, rounded outwards."""
    x0, y0, x1, y1 = box
    return (x0 * width // frame, y0 * height // frame, -(-x1 * width // frame), -(-y1 * height // frame))


class DreamEditBenchBackgrounds:
    """grain random-access source of `background` records {"image": uint8 (H, W, 3), "box": (x0, y0, x1, y1)
    half-open pixels of that image, "category": the set folder (e.g. "dog"), "source": image path}.

    Args:
      root: the dataset repo clone (holding data/) or its data/ folder.
      task: "addition" (boxes from the release's bbox.json) or "replacement" (the release has no boxes:
        `box_dir/<set>/bbox.json` in the same format must supply them).
      sets: set folders to read (default: every folder of the task).
      box_frame: side of the square frame the boxes are given in (512, as DreamEdit uses them), or None
        when they are pixels of each image.
    Every `*.jpg` of a set needs a box and every box names an image; other files are ignored.
    """

    def __init__(self, root: str | Path, task: str = "addition", sets: list[str] | None = None, *,
                 box_frame: int | None = 512, box_dir: str | Path | None = None):
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        task_dir = _data_dir(Path(root)) / TASKS[task]
        if not task_dir.is_dir():
            raise RecordError(task_dir, f"folder of the {task} task not found")
        if task == "replacement" and box_dir is None:
            raise RecordError(task_dir, "the release has no boxes for replacement; pass box_dir holding "
                                        f"<set>/bbox.json ({BOX_FORM} per image name)")
        box_root = Path(box_dir) if box_dir is not None else task_dir
        if sets is None:
            sets = sorted(p.name for p in task_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.box_frame, self.items = box_frame, []
        for name in sets:
            folder = task_dir / name
            if not folder.is_dir():
                raise RecordError(folder, f"set folder not found (expected {TASKS[task]}/<set>/)")
            boxes = parse_bbox_json(box_root / name / "bbox.json", box_frame)
            for image in sorted((p.name for p in folder.glob("*.jpg")), key=_natural_key):
                if image not in boxes:
                    raise RecordError(folder / image, f"no box for this background in {box_root / name / 'bbox.json'}")
            for image in sorted(boxes, key=_natural_key):
                self.items.append((str(folder / image), boxes[image], name))
        if not self.items:
            raise RecordError(task_dir, "no backgrounds found (expected <set>/found<i>.jpg with <set>/bbox.json)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, box, category = self.items[index]
        image = read_image(path)
        height, width = image.shape[:2]
        if self.box_frame is not None:
            box = scale_box(box, self.box_frame, width, height)
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise RecordError(path, f"box {list(self.items[index][1])} in bbox.json is empty or outside the "
                                    f"{width}x{height} image")
        return {"image": image, "box": box, "category": category, "source": path}


@dataclass(frozen=True)
class DreamEditObject:
    """One benchmark object: `name` its DreamBooth subject folder ("dog8"), `class_noun` its DreamBooth class
    ("dog", the prompt's noun), `background_set` the set folder it is composed into ("dog")."""

    name: str
    class_noun: str
    background_set: str


def _classes_file(dreambooth_root: Path) -> Path:
    for folder in (dreambooth_root, dreambooth_root / "dataset"):
        candidate = folder / "prompts_and_classes.txt"
        if candidate.is_file():
            return candidate
    raise RecordError(dreambooth_root / "prompts_and_classes.txt",
                      "DreamBooth classes file not found (expected <dreambooth>/dataset/prompts_and_classes.txt)")


def _subject_dir(dreambooth_root: Path, name: str) -> Path:
    return _classes_file(dreambooth_root).parent / name


def parse_classes(path: str | Path) -> list[tuple[str, str]]:
    """prompts_and_classes.txt -> [(subject, class)] from the "subject_name,class" block (up to its first
    blank line); RecordError naming the file and line for a missing header or a line not "<subject>,<class>"."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next((k for k, line in enumerate(lines) if line.strip() == "subject_name,class"), None)
    if start is None:
        raise RecordError(path, "no 'subject_name,class' header line (the DreamBooth classes block)")
    pairs = []
    for number, line in enumerate(lines[start + 1:], start=start + 2):
        if not line.strip():
            if pairs:
                break
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not all(fields):
            raise RecordError(path, f"line {number}: expected '<subject>,<class>', got {line!r:.80}")
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise RecordError(path, "the 'subject_name,class' block lists no subjects")
    return pairs


def objects(root: str | Path, dreambooth_root: str | Path, task: str = "addition") -> list[DreamEditObject]:
    """The benchmark's objects in the classes file's order, each with its class noun and background set.

    A subject's set is `<task folder>/<subject>` if present, else `<task folder>/<class>`; neither is a
    RecordError naming the subject and both folders tried.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    task_dir = _data_dir(Path(root)) / TASKS[task]
    found = []
    for name, noun in parse_classes(_classes_file(Path(dreambooth_root))):
        background_set = next((s for s in (name, noun) if (task_dir / s).is_dir()), None)
        if background_set is None:
            raise RecordError(task_dir / name, f"no background set for subject {name!r} (class {noun!r}): "
                                               f"expected {task_dir / name} or {task_dir / noun}")
        found.append(DreamEditObject(name, noun, background_set))
    return found


def pairs(backgrounds: DreamEditBenchBackgrounds, objs: list[DreamEditObject]) -> list[tuple[DreamEditObject, int]]:
    """Every (object, background index) with the background in the object's set (DreamCom's 300 pairs)."""
    by_set: dict[str, list[int]] = {}
    for index, (_, _, category) in enumerate(backgrounds.items):
        by_set.setdefault(category, []).append(index)
    return [(obj, index) for obj in objs for index in by_set.get(obj.background_set, [])]


class WholeImageReferences:
    """`reference` records of a folder of photos, each taken whole as the object: "mask" is all ones."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not folder.is_dir():
            raise RecordError(folder, "reference photo folder not found")
        self.items = sorted((str(p) for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES),
                            key=_natural_key)
        if not self.items:
            raise RecordError(folder, "no reference photos found (*.jpg, *.jpeg or *.png)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image = read_image(self.items[index])
        return {"image": image, "mask": np.ones(image.shape[:2], np.uint8), "source": self.items[index]}


def dreameditbench_references(dreambooth_root: str | Path, name: str, *, mask_dir: str | Path | None = None,
                              whole_image: bool = False) -> ReferenceFolderSource | WholeImageReferences:
    """`reference` records of DreamBooth subject `name` (`<dreambooth>/dataset/<name>/NN.jpg`).

    The photos have no masks: give `mask_dir` with `<name>/<stem>.png` masks (binarised at > 128), or
    `whole_image=True` to take each photo whole as the object (mask all ones; DreamCom then inpaints the
    whole image in training). Neither is a RecordError naming the photo folder.
    """
    folder = _subject_dir(Path(dreambooth_root), name)
    if mask_dir is not None:
        return ReferenceFolderSource(folder, Path(mask_dir) / name)
    if whole_image:
        return WholeImageReferences(folder)
    raise RecordError(folder, "DreamBooth reference photos have no masks: pass mask_dir (holding "
                              f"{name}/<stem>.png masks) or whole_image=True")

