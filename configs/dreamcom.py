"""DreamCom: fine-tune the SD 1.5 inpainting UNet per object (see jcompose/methods/dreamcom.py).

    python -m jcompose.train --config=configs/dreamcom.py:tiny --workdir=/tmp/dreamcom
    python -m jcompose.train --config=configs/dreamcom.py --workdir=/runs/dreamcom-dog \
        --config.model.base=/models/stable-diffusion-inpainting --config.data.murecom_root=/data/MureCom \
        --config.data.objects='("murecom:Dog/fg1", "murecom:Cat/fg1")'

Variants (`arg`):
  "" (released, bcmi/DreamCom-Image-Composition train_and_test.sh): SD 1.5 inpainting, the whole UNet
    trained in fp32 with AdamW lr 5e-6, wd 1e-2, eps 1e-8, clip 1, constant lr, 400 steps, batch 1 per
    object (any batch size works here), 512 px, "a photo of sks <class>", masked cross-attention everywhere;
    sampling: 50 DDIM steps, CFG 7.5, masked self-attention on the last 5 decoder layers.
  "paper": the same with the paper's masked self-attention rule (every U-Net self-attention layer except
    the last 6 of the decoder: the encoder, the mid block and the 16x16 decoder block, 10 of SD 1.5's 16)
    and its 80% rule kept for objects wider than a crop (`data.crop_fallback = "shrink"`).
  "lora": the released recipe with LoRA instead of the whole UNet (`train.lora`: rank 4 on the attention
    projections to_q/to_k/to_v/to_out.0, alpha = rank, AdamW lr 1e-4 as diffusers' DreamBooth-LoRA example):
    each object costs its adapters (about 0.8 M numbers), not a UNet and its Adam moments.
  "tiny": the tiny random inpainting base and a synthetic MureCom-layout benchmark written into the workdir
    (two objects available: "murecom:Toy/fg1", "murecom:Toy/fg2"), 64 px, CPU-sized.
Every `data.objects` entry trains its own UNet; all of them train in one compiled program.
"""

import ml_collections

from configs.common import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.method = "dreamcom"
    c.variant = arg or "released"   # recorded in the run and in `compose --benchmark` manifests
    c.model.update(
        base="/models/stable-diffusion-inpainting",
        train_text_encoder=False,
        token="sks",
        template="a photo of {token} {noun}",
        background_prompt="background",
        num_inside=0,             # context positions 1..n for the instance prompt; 0: (L - 1) // 2 (38 of 77)
    )
    c.data.update(
        objects=(),               # "murecom:<Category>/fg<k>", "dreameditbench:<subject>", "folder:<path>:<noun>"
        murecom_root="/data/MureCom",
        dreambooth_root="",       # DreamBooth dataset folder, for dreameditbench: objects
        dreambooth_masks="",      # <subject>/<stem>.png masks, or "whole" (each photo whole)
        image_size=512,
        zoom_prob=0.6,
        fill=0,                   # zoom-out padding colour (released: black)
        # an object no crop keeps 80% of (after 100 draws): "relax" (released: the threshold keeps
        # relaxing) or "shrink" (the paper's 80% rule: the photo shrunk so the whole box fits); counted
        # in the `crop_fallback` training metric either way, never dropped
        crop_fallback="relax",
    )
    c.train.update(batch_size=1, steps=400, log_every=10, ckpt_every=100, sample_every=0, sample_count=2,
                   export=True)    # each object's UNet to <workdir>/export/<object>/unet at the end
    c.optim.update(lr=5e-6, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2,
                   clip_norm=1.0)
    c.sample = ml_collections.ConfigDict(dict(steps=50, guidance_scale=7.5, sampler="ddim",
                                              self_attention="released", do_crop=True, num=5))
    if arg == "tiny":
        c.model.base = "tiny:sd15-inpaint"
        c.data.update(objects=("murecom:Toy/fg1",), murecom_root="synthetic", image_size=64, num_records=5)
        c.train.update(batch_size=2, steps=60, log_every=10, ckpt_every=30)
        c.optim.update(lr=1e-4, weight_decay=0.0)
        c.sample.update(steps=10, num=2)
    elif arg == "lora":
        c.train.lora.update(rank=4, alpha=4.0)
        c.optim.lr = 1e-4
    elif arg == "paper":
        c.sample.self_attention = "paper"
        c.data.crop_fallback = "shrink"
    elif arg != "":
        raise ValueError(f"configs/dreamcom.py: unknown variant {arg!r}; use 'tiny', 'paper', 'lora' or nothing")
    return c
