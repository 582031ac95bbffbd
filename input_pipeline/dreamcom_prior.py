"""Prior preservation input: each DreamCom example carries one instance and one class example.

As diffusers' (inpainting) DreamBooth dataset, which DreamCom's `--with_prior_preservation` copies: the
dataset has max(instances, class images) elements, element i pairs instance i % n_instance with class image
i % n_class, and a batch holds its instance examples and, under `class_`-prefixed keys, as many class
examples; the loss concatenates them (instance rows first) into one UNet call. One record stream, so the
grain iterator's checkpointed state is the position of both, and a resumed run continues both exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CLASS_PREFIX = "class_"


class PairedSource:
    """grain random-access source of {"instance": record, "class": record} (module doc).

    Args:
      instances: the object's reference records (3-5 photos).
      classes: the class records (`sources.class_images.ClassImageSource`).
    """

    def __init__(self, instances, classes):
        if not len(instances) or not len(classes):
            raise ValueError(f"PairedSource: {len(instances)} instance and {len(classes)} class records; both "
                             "need at least one")
        from input_pipeline.pipeline import source_name

        self.instances, self.classes = instances, classes
        self.path = f"{source_name(instances)} paired with {source_name(classes)}"  # named in the pipeline's messages

    def __len__(self) -> int:
        return max(len(self.instances), len(self.classes))

    def __getitem__(self, index: int) -> dict:
        return {"instance": self.instances[index % len(self.instances)],
                "class": self.classes[index % len(self.classes)]}


def paired_transform(instance: Callable[[dict, np.random.Generator], dict],
                     klass: Callable[[dict, np.random.Generator], dict],
                     class_keys: tuple[str, ...]) -> Callable[[dict, np.random.Generator], dict]:
    """(paired record, rng) -> the instance example plus `class_<key>` for each of `class_keys` of the class
    example (both transforms draw from the one rng, instance first: a pure function of the element)."""

    def transform(record: dict, rng: np.random.Generator) -> dict:
        out = instance(record["instance"], rng)
        extra = klass(record["class"], rng)
        return {**out, **{CLASS_PREFIX + k: extra[k] for k in class_keys}}

    return transform
