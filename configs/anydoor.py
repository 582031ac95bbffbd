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
    Ablations (paper Tables 3 and 4, Sec. 4.3; configs/sweeps/anydoor_id_extractor.py and anydoor_collage.py):
    `model.id_encoder` / `model.id_tokens` / `data.remove_background` (ID extractor), `data.collage` (what the
    detail extractor sees in the box), `loss.uniform_probability` (adaptive vs uniform timesteps); the
    defaults are the released model's. Training and `compose` build the same collage (the run's stored config).
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
        # ID extractor, paper Table 3 (jcompose/methods/anydoor_id.py):
        id_encoder="dinov2",                # "dinov2" (the DINOv2 rows, released) or "clip" (row "CLIP (G+P)": a CLIP
                                            # image encoder as the released FrozenOpenCLIPImageEncoder, `model.clip`)
        id_tokens="global_patch",           # "global_patch" (rows "(G+P)", released: 1 + 256 tokens) or "global"
                                            # (row "DINOv2 (G)": the global token alone)
        clip="/models/CLIP-ViT-H-14-laion2B-s32B-b79K",  # transformers CLIP folder for id_encoder="clip" (OpenCLIP
                                            # ViT-H/14, the released encoder's); its image_size = data.reference_size
    )
    c.data.update(
        image_size=512,           # target / collage side
        reference_size=224,       # DINOv2 input side
        box_mask_prob=0.3,        # mask channel = the box (else a perturbed object mask); paper: 1.0
        # Table 3 "+ Seg": the reference on white (True, released) or with its photo background (False)
        remove_background=True,
        # Table 4, what the collage's target box holds (input_pipeline/anydoor_collage.py): "hf_map" (High-frequency
        # Map, released), "none" (None, i.e. all-zero map), "object" (Original Image), "noise" (Noise Image),
        # "shuffle" (Patch-shuffled Image)
        collage="hf_map",
        collage_noise_alpha_bar=0.5,   # "noise": sqrt(a) x + sqrt(1 - a) eps in [-1, 1] (the paper gives no level)
        collage_shuffle_grid=4,        # "shuffle": grid x grid patches of the reference (the paper gives no size)
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
    # Adaptive timestep sampling (paper Sec. 4.3, "ATS"): the share of t drawn uniformly; the rest by data type
    # (videos [500, 1000), images [0, 500)). 0.3 released; 1.0 = the ablation's "even distribution sampler".
    c.loss = ml_collections.ConfigDict(dict(uniform_probability=0.3))
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
        c.model.update(base="tiny:sd21-base", dinov2="tiny", clip="tiny", context_dim=64, hint_widths=(16, 32, 32, 32),
                       remat=False)
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
