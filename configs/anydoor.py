"""AnyDoor: ID tokens + detail extractor on SD 2.1-base, trained on video pairs (jcompose/methods/anydoor.py).

    python -m jcompose.train --config=configs/anydoor.py:tiny --workdir=/tmp/anydoor
    python -m jcompose.train --config=configs/anydoor.py --workdir=/runs/anydoor \
        --config.model.base=/models/stable-diffusion-2-1-base --config.model.dinov2=/models/dinov2-giant \
        --config.data.roots.ytb_vos=/data/ytbvos/train --config.data.roots.sam=/data/sa1b/sub1

Variants (`arg`):
  "" (released, ali-vilab/AnyDoor run_train_anydoor.py): SD 2.1-base (eps), DINOv2 ViT-g/14 at 224 px
    with the hub's position interpolation, extractor + projector + UNet decoder trained with AdamW
    lr 1e-5 (torch defaults: betas 0.9/0.999, eps 1e-8, weight decay 1e-2), no clipping, no schedule,
    no EMA, batch 32 (16 x 2 GPUs), 512 px target / 224 px reference, bf16 compute, gradient
    checkpointing; the released training mixture from whichever `data.roots` are given (the others
    are left out and the weights renormalised); sampling DDIM 50 steps, eta 0, CFG 5.0.
    Departure, on purpose: the projector trains (`model.train_projector`; False = released, where it
    never receives a gradient).
    Released details kept by default, each a named option: the clip readers' frame order
    (`data.frame_order`: "released" = meta.json's / os.listdir's order, "sorted"), the hint encoder's
    initialisation (`model.hint_init`: "torch" = nn.Conv2d's default, "flax"), and at inference
    run_inference.py's collage mask (`sample.collage_mask`: "run_inference" = its square padding 1 and
    bilinear resize, "training" = -1 padding, nearest, as training and the demo) and its dropped first
    row of the generated square (`sample.drop_first_row`).
  "paper": the paper's tables' model and protocol: box-only training (`data.box_mask_prob = 1.0`: the
    mask channel is always the box) and a fixed 2.0 crop zoom at inference (`sample.crop_expand_tenths
    = (20, 21)`); everything else as released. `compose --benchmark` records the variant it ran.
  "tiny": a tiny random SD 2.1-base and DINOv2 (37x37 position grid, 518-px config, so the 224-px
    reference really interpolates) written into the workdir, synthetic YouTube-VOS-layout video pairs
    and COCO-layout image pairs, 64 px target / 224 px reference; CPU-sized.
"""

import ml_collections

from configs.common import base_config
from input_pipeline.anydoor_mixture import RELEASED_WEIGHTS, ROOT_KEYS


def get_config(arg: str = ""):
    c = base_config()
    c.method = "anydoor"
    c.variant = arg or "released"       # recorded in the run and in `compose --benchmark` manifests
    c.model.update(
        base="/models/stable-diffusion-2-1-base",  # diffusers folder: unet/, vae/, scheduler/ (text encoder unused)
        dinov2="/models/dinov2-giant",      # transformers DINOv2 folder (facebook/dinov2-giant = the hub's ViT-g/14)
        dinov2_interpolation="dinov2_hub",  # position table resampling: "dinov2_hub" (released) or "transformers"
        context_dim=1024,                   # the UNet's cross_attention_dim this base must have (SD 2.x)
        hint_widths=(16, 32, 96, 256),      # the extractor's hint encoder stages (then a zero conv to 320)
        train_projector=True,               # False: the projector stays at its random init (released behaviour)
        id_dropout=0.0,                     # probability of replacing an example's reference by a black image
        control_scale=1.0,                  # the 13 residual scales (released `strength`)
        hint_init="torch",                  # hint encoder convs: "torch" (released: nn.Conv2d's kaiming-uniform
                                            # a=sqrt(5), bias U(+-1/sqrt(fan_in))) or "flax" (LeCun normal, zero bias)
        remat=True,                         # recompute UNet decoder / extractor activations in the backward
    )
    c.data.update(
        image_size=512,           # target / collage side
        reference_size=224,       # DINOv2 input side
        box_mask_prob=0.3,        # mask channel = the box (else a perturbed object mask); paper: 1.0
        frame_order="released",   # clip frames: "released" (meta.json's / os.listdir's order) or "sorted"
        synthetic=False,          # True: the generated video + image set in <workdir>/data (tiny)
        num_videos=8, num_frames=8, num_images=8,    # its size
        roots=ml_collections.ConfigDict({key: "" for key in ROOT_KEYS}),   # see input_pipeline/anydoor_mixture.py
        weights=ml_collections.ConfigDict({k: float(v) for k, v in RELEASED_WEIGHTS.items()}),  # 0 leaves one out
        worker_count=8,
    )
    c.train.update(batch_size=32, steps=300_000, log_every=50, ckpt_every=5000, sample_every=5000, sample_count=4)
    c.optim.update(lr=1e-5, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2,
                   clip_norm=0.0)
    c.loss = ml_collections.ConfigDict(dict(uniform_probability=0.3))  # adaptive timesteps: share drawn uniformly
    c.sample = ml_collections.ConfigDict(dict(
        steps=50, guidance_scale=5.0, eta=0.0, margin=5,
        ref_expand_tenths=(12, 13),     # reference padding 1.2 (run_inference.py)
        crop_expand_tenths=(15, 30),    # crop zoom drawn from 1.5..2.9 (run_inference.py); paper: (20, 21) = 2.0
        collage_mask="run_inference",   # "run_inference": square padding 1, bilinear resize > 0.5 (its -1 wraps
                                        # to 255 in uint8); "training": -1, nearest (training, demo, predict.py)
        drop_first_row=True,            # released: the generated square's first row is dropped before pasting
    ))
    c.compute_dtype = "bfloat16"
    if arg == "tiny":
        c.model.update(base="tiny:sd21-base", dinov2="tiny", context_dim=64, hint_widths=(16, 32, 32, 32), remat=False)
        c.data.update(image_size=64, reference_size=224, synthetic=True, worker_count=0)
        c.train.update(batch_size=4, steps=40, log_every=10, ckpt_every=20, sample_every=0, sample_count=2)
        c.optim.update(lr=1e-3, weight_decay=0.0)
        c.sample.update(steps=4)
        c.compute_dtype = "float32"
    elif arg == "paper":
        c.data.box_mask_prob = 1.0
        c.sample.crop_expand_tenths = (20, 21)
    elif arg != "":
        raise ValueError(f"configs/anydoor.py: unknown variant {arg!r}; use 'tiny', 'paper' or nothing")
    return c
