"""DreamCom (paper Sec. 5.2, Tables 1-2): DINO and CLIP-I of each generated object (its box) against every
reference photo of the object, LPIPS and SSIM of the background outside the box, averaged per
foreground-background pair (5 images each) and over pairs. Reads the manifest compose writes:

    python -m jcompose.compose dreamcom --checkpoint RUN --benchmark murecom /data/MureCom --out GEN
    python -m jcompose.evaluate --config=configs/eval/dreamcom.py --config.manifest=GEN/manifest.json \
        --config.clip.model=/models/clip-vit-base-patch32 --config.dino.model=/models/dino-vits16 --config.out=OUT

`background_protocol` picks the background images scored (jcompose/metrics/dreamcom_protocol.py):
"paper" (default) jcompose's lossless output at `pair_size`; "released" (the `:released` variant) the files
the released test.py would write (JPEG quality 75; 512 x 512 where the whole image was inpainted), to sit
beside numbers computed from them. scores.json and the reports say which one produced them.

Without a manifest the folder-pairing protocol of jcompose.evaluate runs (generated vs reference by file name,
with `masks` for crops and blanked backgrounds).
"""

from configs.eval.base import base_config


def get_config(arg: str = ""):
    c = base_config("dreamcom", arg)
    c.method = "dreamcom"
    c.metrics = ("dino", "clip_i", "lpips", "ssim")
    c.manifest = ""         # GEN/manifest.json of `compose dreamcom --benchmark`: the paper's protocol
    c.background_protocol = "paper"  # or "released": the released test.py's files (JPEG q75, 512 x 512 outputs)
    c.do_crop = True        # "released": whether compose inpainted crops (--do-crop); the manifest's value wins
    if arg == "released":
        c.background_protocol = "released"
    elif arg:
        raise ValueError(f"configs/eval/dreamcom.py: unknown variant {arg!r}; use 'released' or nothing")
    return c
