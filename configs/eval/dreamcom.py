"""DreamCom (paper Sec. 5.2, Tables 1-2): DINO and CLIP-I of each generated object (its box) against every
reference photo of the object, LPIPS and SSIM of the background outside the box, averaged per
foreground-background pair (5 images each) and over pairs. Reads the manifest compose writes:

    python -m jcompose.compose dreamcom --checkpoint RUN --benchmark murecom /data/MureCom --out GEN
    python -m jcompose.evaluate --config=configs/eval/dreamcom.py --config.manifest=GEN/manifest.json \
        --config.clip.model=/models/clip-vit-base-patch32 --config.dino.model=/models/dino-vits16 --config.out=OUT

Without a manifest the folder-pairing protocol of jcompose.evaluate runs (generated vs reference by file name,
with `masks` for crops and blanked backgrounds).
"""

from configs.eval.base import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.method = "dreamcom"
    c.metrics = ("dino", "clip_i", "lpips", "ssim")
    c.manifest = ""         # GEN/manifest.json of `compose dreamcom --benchmark`: the paper's protocol
    if arg:
        raise ValueError(f"configs/eval/dreamcom.py: unknown variant {arg!r}")
    return c
