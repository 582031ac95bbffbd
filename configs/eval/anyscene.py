"""AnyScene: FID / KID against real scenes, CLIP score (ViT-L/14; both conventions reported) and the LAION
aesthetic score with the V1 predictor the supplement uses (`--config.aesthetic.version=v2` with the improved
predictor's head for V2).

    python -m jcompose.evaluate --config=configs/eval/anyscene.py --config.generated=GEN \
        --config.reference=REAL --config.prompts=prompts.json --config.out=OUT \
        --config.clip.model=/models/clip-vit-large-patch14 \
        --config.aesthetic.head=/models/sa_0_4_vit_l_14_linear.pth
"""

from configs.eval.base import base_config


def get_config(arg: str = ""):
    c = base_config("anyscene", arg)
    c.method = "anyscene"
    c.metrics = ("fid", "kid", "clip_score", "aesthetic")
    c.aesthetic.version = "v1"  # AnyScene's supplement: LAION-Aesthetics predictor V1
    if arg:
        raise ValueError(f"configs/eval/anyscene.py: unknown variant {arg!r}")
    return c
