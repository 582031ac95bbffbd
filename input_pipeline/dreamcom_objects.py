"""Which objects a DreamCom run fine-tunes on: `config.data.objects` -> reference sources and class nouns.

Each entry of `data.objects` names one object (one fine-tuned UNet); several train in one program:

    "murecom:<Category>/fg<k>"     MureCom photos `<murecom_root>/<Category>/fg<k>/{i}.jpg + {i}.png`;
                                   class noun = the category, lower case, '_' as space ("Computer_keyboard"
                                   -> "computer keyboard"), as the released train_and_test.sh names them
    "dreameditbench:<subject>"     DreamBooth photos `<dreambooth_root>/dataset/<subject>/`, class from its
                                   prompts_and_classes.txt; masks from `data.dreambooth_masks/<subject>/`
                                   or, with `dreambooth_masks = "whole"`, each photo whole
    "folder:<path>:<class noun>"   any folder of photos with masks (`ReferenceFolderSource` rules)

`data.murecom_root = "synthetic"` writes a small MureCom-layout benchmark into the run folder
(`sources/synthetic_murecom.py`), for the tiny config and tests: the categories the run's "murecom:"
objects name (Toy when none), each with as many objects as the highest fg<k> asked for (at least 2).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

KINDS = ("murecom", "dreameditbench", "folder")


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    """One object of a run: its name (checkpoint/export folder), class noun (prompt) and where its photos are."""

    name: str
    class_noun: str
    kind: str
    location: str


def murecom_root(data: Any, workdir: str | Path | None) -> Path:
    """The MureCom root of `data`, writing the synthetic one into `workdir` when asked."""
    if data.murecom_root != "synthetic":
        return Path(data.murecom_root)
    if workdir is None:
        raise ValueError("config.data.murecom_root = 'synthetic' needs the run folder (method.init(workdir) first)")
    from input_pipeline.sources.synthetic_murecom import write_synthetic_murecom

    root = Path(workdir) / "data" / "murecom"
    categories, objects = synthetic_murecom_layout(data.objects)
    if not all((root / c / "bg" / "bbox.txt").is_file() for c in categories):
        write_synthetic_murecom(root, categories=categories, objects=objects, photos=5, backgrounds=4,
                                size=synthetic_photo_size(data.image_size), seed=data.seed)
    return root


def synthetic_photo_size(image_size: int) -> tuple[int, int]:
    """(height, width) of the synthetic MureCom photos for a run at `image_size`."""
    return image_size + image_size // 2, image_size * 2


def synthetic_murecom_layout(objects) -> tuple[tuple[str, ...], int]:
    """(categories, objects per category) of the synthetic MureCom set for `data.objects`: the categories
    its "murecom:<Category>/fg<k>" entries name, in order of appearance (Toy when none), and the highest k
    (at least 2)."""
    categories, most = [], 2
    for spec in objects:
        kind, _, rest = str(spec).partition(":")
        if kind == "murecom" and "/" in rest:
            category, fg = rest.split("/", 1)
            categories += [category] if category not in categories else []
            most = max(most, int(fg[2:])) if fg[2:].isdigit() else most
    return tuple(categories) or ("Toy",), most


def parse_objects(data: Any) -> list[ObjectRef]:
    """`data.objects` -> [ObjectRef], with errors naming the entry and the expected forms."""
    specs = tuple(data.objects)
    if not specs:
        raise ValueError("config.data.objects is empty: name at least one object, e.g. "
                         "'murecom:Dog/fg1', 'dreameditbench:dog8' or 'folder:/photos/dog:dog'")
    refs = []
    for spec in specs:
        kind, _, rest = str(spec).partition(":")
        if kind == "murecom" and "/" in rest:
            category, fg = rest.split("/", 1)
            if not category.strip() or not fg.strip():
                raise ValueError(f"config.data.objects entry {spec!r}: expected 'murecom:<Category>/fg<k>' (the "
                                 "category names the class noun), e.g. 'murecom:Dog/fg1'")
            refs.append(ObjectRef(f"{category}_{fg}", category.replace("_", " ").lower(), kind, rest))
        elif kind == "dreameditbench" and rest:
            refs.append(ObjectRef(rest, "", kind, rest))  # class noun read from the DreamBooth classes file
        elif kind == "folder" and rest.count(":") >= 1:
            path, _, noun = rest.rpartition(":")
            if not noun.strip():
                raise ValueError(f"config.data.objects entry {spec!r}: no class noun after the folder "
                                 "('folder:<path>:<class noun>', e.g. 'folder:/photos/dog:dog')")
            refs.append(ObjectRef(Path(path).name or path, noun.strip(), kind, path))
        else:
            raise ValueError(f"config.data.objects entry {spec!r}: expected 'murecom:<Category>/fg<k>', "
                             "'dreameditbench:<subject>' or 'folder:<path>:<class noun>'")
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise ValueError(f"config.data.objects: object names repeat ({names}); each object trains once")
    return refs


def resolve(ref: ObjectRef, data: Any, workdir: str | Path | None) -> tuple[ObjectRef, Any]:
    """(ref with its class noun filled in, random-access source of its `reference` records)."""
    if ref.kind == "murecom":
        from input_pipeline.sources.murecom import murecom_references

        category, fg = ref.location.split("/", 1)
        if not fg.startswith("fg") or not fg[2:].isdigit():
            raise ValueError(f"config.data.objects entry 'murecom:{ref.location}': expected <Category>/fg<k>")
        return ref, murecom_references(murecom_root(data, workdir), category, int(fg[2:]))
    if ref.kind == "dreameditbench":
        from input_pipeline.sources import dreameditbench

        if not data.dreambooth_root:
            raise ValueError("config.data.dreambooth_root is empty: 'dreameditbench:' objects read their photos "
                             "from the DreamBooth dataset folder")
        classes = dict(dreameditbench.parse_classes(dreameditbench._classes_file(Path(data.dreambooth_root))))
        if ref.location not in classes:
            raise ValueError(f"config.data.objects entry 'dreameditbench:{ref.location}': no such subject in "
                             f"{data.dreambooth_root} (subjects: {', '.join(sorted(classes))})")
        whole = data.dreambooth_masks == "whole"
        source = dreameditbench.dreameditbench_references(
            data.dreambooth_root, ref.location, mask_dir=None if whole or not data.dreambooth_masks else
            data.dreambooth_masks, whole_image=whole)
        return dataclasses.replace(ref, class_noun=classes[ref.location]), source
    from input_pipeline.sources.dreambooth import ReferenceFolderSource

    return ref, ReferenceFolderSource(ref.location)
