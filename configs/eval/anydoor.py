"""AnyDoor: CLIP-I and DINO scores of generated objects against the reference objects (paired by name).

    python -m jcompose.evaluate --config=configs/eval/anydoor.py --config.generated=GEN \
        --config.reference=REF --config.out=OUT --config.clip.model=/models/clip-vit-base-patch32 \
        --config.dino.model=/models/dino-vits16
"""

from configs.eval.base import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.metrics = ("clip_i", "dino")
    if arg:
        raise ValueError(f"configs/eval/anydoor.py: unknown variant {arg!r}")
    return c
