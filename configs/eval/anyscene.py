"""AnyScene: FID / KID against real scenes, CLIP score (ViT-L/14, torchmetrics) and LAION aesthetic.

    python -m jcompose.evaluate --config=configs/eval/anyscene.py --config.generated=GEN \
        --config.reference=REAL --config.prompts=prompts.json --config.out=OUT \
        --config.clip.model=/models/clip-vit-large-patch14 \
        --config.aesthetic.head=/models/sac+logos+ava1-l14-linearMSE.pth
"""

from configs.eval.base import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.metrics = ("fid", "kid", "clip_score", "aesthetic")
    if arg:
        raise ValueError(f"configs/eval/anyscene.py: unknown variant {arg!r}")
    return c
