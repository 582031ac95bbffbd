"""DreamCom Table 4: masked cross-attention (MCAttn) and masked self-attention (MSAttn), each on and off.

    python -m jcompose.sweep list --sweep=configs/sweeps/dreamcom_attention.py
    python -m jcompose.sweep run  --sweep=configs/sweeps/dreamcom_attention.py --root=/runs/dc-attn \
        --set 'data.objects=("murecom:Dog/fg1", "murecom:Cat/fg1")' --set model.base=/models/stable-diffusion-inpainting

Both switches act at sampling (`compose dreamcom --cross-attention masked|vanilla --self-attention
<rule>|none`), so the four rows share one fine-tuned model per object: the sweep trains once and generates
and evaluates four times (MureCom, the paper's protocol: DINO / CLIP-I of the box against the object's
photos, LPIPS / SSIM of the background). The paper does not say whether its "-MCAttn" model was also
*trained* without the masked cross-attention; here training keeps it (the released code's), only sampling
drops it.

`arg`: "" (released settings, MureCom at config.data.murecom_root), "paper" (the paper's masked
self-attention layers), "tiny" (the tiny base and the synthetic MureCom written into the run; 8 steps,
one image per pair: a smoke run on a CPU; the evaluation models come from
`--set evaluate.clip.model=... --set evaluate.dino.model=...`).
"""

from jcompose.sweep import Variant, grid

# Table 4 of the paper, on MureCom (DINO_fg, CLIP_fg): keyed by (cross-attention, self-attention) switch.
PUBLISHED = {("masked", True): ("DreamCom", 0.584, 0.778), ("vanilla", True): ("-MCAttn", 0.566, 0.771),
             ("masked", False): ("-MSAttn", 0.573, 0.775), ("vanilla", False): ("-Both", 0.546, 0.764)}


def get_sweep(arg: str = ""):
    tiny = arg == "tiny"
    config = f"configs/dreamcom.py:{arg}" if arg else "configs/dreamcom.py"
    rule = "paper" if arg == "paper" else "released"
    rows = []
    for overrides in grid(**{"compose.cross-attention": ["masked", "vanilla"], "compose.self-attention": [rule, "none"]}):
        label, dino, clip = PUBLISHED[overrides["compose.cross-attention"], overrides["compose.self-attention"] != "none"]
        name = {"DreamCom": "dreamcom", "-MCAttn": "no-mcattn", "-MSAttn": "no-msattn", "-Both": "no-both"}[label]
        rows.append(Variant(name, overrides, label=label, paper={"foreground.DINO": dino, "foreground.CLIP": clip}))
    murecom = "{run}/data/murecom" if tiny else "{config.data.murecom_root}"
    generate = ["dreamcom", "--checkpoint", "{run}", "--benchmark", "murecom", murecom, "--out", "{generated}"]
    evaluate = {"config": "configs/eval/dreamcom.py", "manifest": "{generated}/manifest.json"}
    if tiny:
        generate += ["--num", "1", "--steps", "2"]
        evaluate.update({"lpips.weights": "random", "pair_size": 32})
    else:
        evaluate.update({"clip.model": "/models/clip-vit-base-patch32", "dino.model": "/models/dino-vits16"})
    fixed = {"train.steps": 8, "train.log_every": 4, "train.ckpt_every": 4, "train.sample_every": -1,
             "train.export": False} if tiny else {}
    return {"config": config, "runs": rows, "set": fixed, "generate": generate, "evaluate": evaluate,
            "paper": {"source": "DreamCom (Lu et al.) Table 4, MureCom",
                      "note": "DINO_fg / CLIP_fg here are foreground.DINO / foreground.CLIP."}}
