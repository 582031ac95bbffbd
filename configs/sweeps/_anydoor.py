"""What AnyDoor's ablation sweep files share (not a sweep file itself): the base config per `arg`, the paper's
benchmark built once (`prepare`), generation and the paper's protocol (CLIP-I / DINO x 100 of the generated
region against the reference object, configs/eval/anydoor.py).

`arg`: "" = configs/anydoor.py:paper (the paper's tables' model: box-only training, a fixed 2.0 crop zoom),
"released" = the released settings, "tiny" = the tiny random models on the synthetic video and image pairs,
8 training steps and no generation (the tiny data has no DreamBooth x COCO benchmark): a CPU smoke run.
"""

ARGS = ("", "released", "tiny")
PUBLISHED_NOTE = ("CLIP-I / DINO here are the paper's CLIP Score / DINO Score (x 100); the published values come "
                  "from the authors' weights, data and unreleased benchmark draw: comparable only with those.")


def sweep(arg: str, rows: list, source: str) -> dict:
    """The get_sweep(arg) dict for `rows` (Variants) whose published values are `source`'s."""
    if arg not in ARGS:
        raise ValueError(f"unknown arg {arg!r}: use '' (the paper's model), 'released' or 'tiny'")
    if arg == "tiny":
        return {"config": "configs/anydoor.py:tiny", "runs": rows,
                "set": {"train.steps": 8, "train.log_every": 4, "train.ckpt_every": 4}}
    bench = "{root}/benchmark"
    return {"config": "configs/anydoor.py" if arg == "released" else "configs/anydoor.py:paper", "runs": rows,
            "prepare": [["input_pipeline.anydoor_benchmark", "--dreambooth", "/data/dreambooth/dataset", "--coco",
                         "/data/coco", "--out", bench]],
            "generate": ["anydoor", "--checkpoint", "{run}", "--benchmark", bench, "--out", "{generated}"],
            "evaluate": {"config": "configs/eval/anydoor.py", "manifest": "{generated}/manifest.json",
                         "clip.model": "/models/clip-vit-base-patch32", "dino.model": "/models/dino-vits16"},
            "paper": {"source": source, "note": PUBLISHED_NOTE}}
