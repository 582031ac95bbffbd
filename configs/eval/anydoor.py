"""AnyDoor (paper Sec. 4.1, Tables 3-4): CLIP-I and DINO of the generated region (the target box) against the
reference object, cosine x 100 as the paper reports (jcompose/metrics/anydoor_protocol.py).

    python -m jcompose.compose anydoor --weights RELEASE --benchmark BENCH --out GEN
    python -m jcompose.evaluate --config=configs/eval/anydoor.py --config.manifest=GEN/manifest.json \
        --config.out=OUT --config.clip.model=/models/clip-vit-base-patch32 --config.dino.model=/models/dino-vits16

Without a manifest: generated images and references paired by file name (`config.generated`,
`config.reference`: RGBA cut-outs or RGB with `config.reference_masks`), `config.masks` giving each target
region (its bounding box is cropped; `config.crop=False` scores whole images).
"""

from configs.eval.base import base_config


def get_config(arg: str = ""):
    c = base_config("anydoor", arg)
    c.method = "anydoor"
    c.protocol = "anydoor"            # jcompose.evaluate dispatches to jcompose/metrics/anydoor_protocol.py
    c.metrics = ("clip_i", "dino")
    c.manifest = ""                   # GEN/manifest.json written by `compose anydoor --benchmark`
    c.crop = True                     # score the target box of each generated image (the "generated region")
    c.reference_background = "white"  # reference pixels outside its mask: "white" (AnyDoor's input) or "photo"
    c.reference_masks = ""            # folder mode: masks of RGB references, paired by name
    if arg:
        raise ValueError(f"configs/eval/anydoor.py: unknown variant {arg!r}")
    return c
