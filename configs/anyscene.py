"""AnyScene: foreground injection ControlNet on frozen SD 1.5 (see jcompose/methods/anyscene.py).

    python -m jcompose.train --config=configs/anyscene.py:tiny --workdir=/tmp/anyscene
    python -m jcompose.train --config=configs/anyscene.py --workdir=... \
        --config.model.base=/models/stable-diffusion-v1-5 \
        --config.model.controlnet=/models/control_v11p_sd15_inpaint --config.data.coco_root=/data/coco

Variants (`arg`):
  "tiny": a tiny random SD 1.5 + ControlNet and a synthetic COCO-layout dataset, both written into the
    workdir; 64 px, CPU-sized (about two minutes on 2 cores).
  "" (paper, Sec. 5.1): 512 px, batch 16, AdamW lr 1e-5, 100k steps, alpha 0.25, F_c from the community
    ControlNet-Inpaint checkpoint, COCO train2017 with its captions. bf16 compute.
Loss weights and the edge band/Laplacian sizes are not given in the paper: 1, 1, 1 and 5/5/1 here.
"""

import ml_collections

from configs.common import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.method = "anyscene"
    c.model.update(
        controlnet="",            # ControlNet folder; "base" = <model.base>/controlnet; "" = copy of the UNet encoder
        cond_format="inpaint",    # "inpaint": [0,1] with the area to generate at -1 (ControlNet-Inpaint); "signed"
        conditioning_scale=1.0,
        remat=False,              # recompute F_c's and the UNet's block activations in the backward (less memory,
                                  # ~1/3 more compute; the paper says nothing: off). v5e-8 at batch 16: with FSDP
    )
    # Training data (input_pipeline/anyscene_sources.py): each dataset with a root and a weight > 0 is
    # used; several are mixed by weight. Paths are relative to their root unless absolute.
    c.data.update(
        coco_root="",             # COCO root, or "synthetic" (written into the workdir)
        image_dir="train2017",
        instances_json="annotations/instances_train2017.json",
        captions_json="annotations/captions_train2017.json",
        min_area=0.0,             # COCO annotation area (px) below which instances are dropped
        coco_weight=1.0,
        openimages_root="",       # Open Images segmentation (input_pipeline/sources/openimages.py)
        openimages_csv="train-annotations-object-segmentation.csv",
        openimages_masks="masks",           # mask PNGs, flat or in train-masks-<c>/ folders
        openimages_images="train",          # <ImageID>.jpg, flat or in train_<c>/ folders
        openimages_classes="class-descriptions-boxable.csv",  # or oidv7-class-descriptions.csv
        openimages_captions="",   # side captions JSON {image: caption}; "": "a photo of <labels>"
        openimages_min_mask_area=0.0,       # fraction of the image below which masks are dropped
        openimages_max_instances=0,         # largest masks kept per image (0: all)
        openimages_weight=1.0,
        faces_root="",            # FFHQ-style faces (input_pipeline/sources/faces.py)
        faces_images="images",
        faces_masks="",           # binary masks <stem>.png, or
        faces_label_maps="label_maps",      # integer label PNGs <stem>.png (face parsing)
        faces_foreground_labels=(),         # () = every label but faces_background_labels
        faces_background_labels=(0,),
        faces_label="person",
        faces_captions="",        # side captions JSON; "": "a photo of a person"
        faces_weight=1.0,         # the paper gives no shares: 1 : 1 : 1 is a guess
        caption_fallback=True,    # "a photo of <labels>" where a side file has no caption
        max_objects=3,
        min_object_area=0.01,
        max_object_area=0.8,
        canvas_value=0,
        jitter_prob=0.5,
    )
    c.loss = ml_collections.ConfigDict({
        "denoise_weight": 1.0,
        "content_weight": 1.0,
        "edge_weight": 1.0,
        "alpha": 0.25,               # edge loss only for t < alpha * T (paper default)
        "laplacian_ksize": 1,
        "dilate_kernel": 5,
        "erode_kernel": 5,
        "remat_decode": True,        # recompute the VAE decoder in the backward pass instead of storing it
    })
    # Layout control (the paper gives neither): the mask reaches 64/32/16 by max pooling from pixels
    # ("max"; "slice": every f-th latent cell), on both CFG halves ("both"; "cond": the conditional only).
    c.sample.update(layout_factors=(1, 2, 4), layout_reduce="max", layout_halves="both", blend="poisson",
                    blend_erode=7)
    if arg == "tiny":
        c.model.update(base="tiny:sd15", controlnet="")
        c.data.update(coco_root="synthetic", num_records=64, image_size=64, min_object_area=0.005)
        c.train.update(batch_size=8, steps=60, log_every=10, ckpt_every=30, sample_every=0, sample_count=4)
        c.optim.update(lr=1e-4, weight_decay=0.0)
        c.sample.update(steps=10)
        c.loss.remat_decode = False
    elif arg == "":
        c.model.update(base="/models/stable-diffusion-v1-5", controlnet="/models/control_v11p_sd15_inpaint")
        # COCO + Open Images + FFHQ (paper Sec. 5.1); the side files hold BLIP-2 captions (README)
        c.data.update(coco_root="/data/coco", openimages_root="/data/openimages",
                      openimages_captions="captions_blip2.json", faces_root="/data/ffhq",
                      faces_captions="captions_blip2.json", image_size=512, worker_count=8)
        c.train.update(batch_size=16, steps=100_000, ckpt_every=5000, sample_every=5000)
        c.optim.update(lr=1e-5, weight_decay=1e-2)
        c.compute_dtype = "bfloat16"
    else:
        raise ValueError(f"configs/anyscene.py: unknown variant {arg!r}; use 'tiny' or nothing")
    return c
