"""AnyDoor Table 4: what the detail extractor sees in the collage's target box; and Sec. 4.3's adaptive
timestep sampling (ATS) against an even sampler.

    python -m jcompose.sweep list --sweep=configs/sweeps/anydoor_collage.py --root=/runs/anydoor-t4
    python -m jcompose.sweep run  --sweep=configs/sweeps/anydoor_collage.py --root=/runs/anydoor-t4 \
        --set data.roots.ytb_vos=/data/ytbvos/train --set data.roots.sam=/data/sa1b/sub1

Rows (`data.collage`, input_pipeline/anydoor_collage.py; each trains its own model, then generates the
DreamBooth x COCO-val benchmark and scores it with the paper's protocol, configs/sweeps/_anydoor.py):
  None (i.e. all-zero map)   "none": a black box; the extractor keeps the surroundings and the shape mask
  Original Image             "object": the object's pixels without background
  Noise Image                "noise": the object forward-diffused, sqrt(a) x + sqrt(1 - a) eps (a =
                             data.collage_noise_alpha_bar, 0.5: the paper gives no level)
  Patch-shuffled Image       "shuffle": its 4 x 4 patches in random order (data.collage_shuffle_grid: the
                             paper gives no patch size)
  High-frequency Map         "hf_map": the released and the paper's standard model
  uniform timesteps          the HF-map model with loss.uniform_probability=1.0 (released 0.3: 30% uniform, the rest
                             by data type): the paper's "even distribution sampler", reported only qualitatively
                             (Fig. 7: more diverse, lower quality and fidelity), so without a published value
Every kind keeps the crop, box and shape mask of the same seed (input_pipeline/anydoor.py), and compose builds
the collage the run was trained with (its stored config).
"""

from configs.sweeps._anydoor import sweep
from jcompose.sweep import Variant

# (name, Table 4 strategy, data.collage, published CLIP Score, DINO Score)
ROWS = [("none", "None (i.e. all-zero map)", "none", 80.4, 63.2),
        ("object", "Original Image", "object", 82.2, 68.8),
        ("noise", "Noise Image", "noise", 81.6, 68.1),
        ("shuffle", "Patch-shuffled Image", "shuffle", 82.0, 66.9),
        ("hf-map", "High-frequency Map (released, ATS)", "hf_map", 82.1, 67.8)]
ADAPTIVE, UNIFORM = 0.3, 1.0  # loss.uniform_probability


def get_sweep(arg: str = ""):
    rows = [Variant(name, {"data.collage": kind, "loss.uniform_probability": ADAPTIVE}, label=label,
                    paper={"CLIP-I": clip_score, "DINO": dino})
            for name, label, kind, clip_score, dino in ROWS]
    rows.append(Variant("uniform-timesteps", {"data.collage": "hf_map", "loss.uniform_probability": UNIFORM},
                        label="High-frequency Map, uniform timesteps (Sec. 4.3, Fig. 7)"))
    return sweep(arg, rows, "AnyDoor (CVPR 2024) Table 4 (DreamBooth x COCO-val); Sec. 4.3 for the timesteps")
