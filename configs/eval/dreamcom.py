"""DreamCom: DINO and CLIP-I against the subject's reference photo, LPIPS and SSIM against the
original background (pairs by file name; crop foreground / mask background before, as the paper).

    python -m jcompose.evaluate --config=configs/eval/dreamcom.py --config.generated=GEN \
        --config.reference=REF --config.out=OUT --config.clip.model=/models/clip-vit-base-patch32 \
        --config.dino.model=/models/dino-vits16
"""

from configs.eval.base import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.metrics = ("dino", "clip_i", "lpips", "ssim")
    if arg:
        raise ValueError(f"configs/eval/dreamcom.py: unknown variant {arg!r}")
    return c
