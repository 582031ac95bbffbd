"""AnyDoor Sec. 4.3: adaptive timestep sampling (ATS) against uniform ("an even distribution sampler").

    python -m jcompose.sweep run --sweep=configs/sweeps/anydoor_timesteps.py --root=/runs/anydoor-ats \
        --set data.roots.ytb_vos=/data/ytbvos/train --set data.roots.sam=/data/sa1b/sub1

Two trainings that differ only in `loss.uniform_probability` (the share of timesteps drawn uniformly; the
rest by each example's data type: videos early, images late): 0.3 (released) and 1.0 (uniform), each
generated on the paper's DreamBooth x COCO-val benchmark (built once by `prepare`) and scored by its
protocol (CLIP-I / DINO x 100 of the generated region). The paper reports this ablation qualitatively only
(Fig. 7: uniform gives more diversity but lower quality and fidelity); the adaptive row is AnyDoor's
standard setting, whose published scores are Table 4's HF-map row.

The same machinery takes AnyDoor's Tables 3 and 4 as one sweep file each once their options exist in
`configs/anydoor.py`: ID extractor (`model.id_tokens`: global / global + patch, `model.id_encoder`:
dinov2 / clip, `data.reference_background`: removed / kept) and collage (`data.collage`: none / original /
noise / shuffle / hf_map).

`arg`: "" (released settings), "tiny" (the two trainings only, 8 steps on the tiny synthetic video pairs: the
tiny data has no DreamBooth x COCO benchmark to generate on).
"""

from jcompose.sweep import Variant


def get_sweep(arg: str = ""):
    if arg not in ("", "tiny"):
        raise ValueError(f"unknown arg {arg!r}: use '' or 'tiny'")
    tiny = arg == "tiny"
    rows = [Variant("adaptive", {"loss.uniform_probability": 0.3}, label="ATS (released)",
                    paper={"CLIP-I": 82.1, "DINO": 67.8}),
            Variant("uniform", {"loss.uniform_probability": 1.0}, label="uniform timesteps")]
    if tiny:
        return {"config": "configs/anydoor.py:tiny", "runs": rows,
                "set": {"train.steps": 8, "train.log_every": 4, "train.ckpt_every": 4}}
    bench = "{root}/benchmark"
    return {"config": "configs/anydoor.py", "runs": rows,
            "prepare": [["input_pipeline.anydoor_benchmark", "--dreambooth", "/data/dreambooth/dataset", "--coco",
                         "/data/coco", "--out", bench]],
            "generate": ["anydoor", "--checkpoint", "{run}", "--benchmark", bench, "--out", "{generated}"],
            "evaluate": {"config": "configs/eval/anydoor.py", "manifest": "{generated}/manifest.json",
                         "clip.model": "/models/clip-vit-base-patch32", "dino.model": "/models/dino-vits16"},
            "paper": {"source": "AnyDoor (CVPR 2024) Table 4 HF-map row (its standard model, with ATS)",
                      "note": "the uniform row has no published value (Fig. 7 is qualitative)."}}
