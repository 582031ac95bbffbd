"""AnyDoor Table 3: the ID extractor's backbone, its tokens and background removal ("Seg").

    python -m jcompose.sweep list --sweep=configs/sweeps/anydoor_id_extractor.py --root=/runs/anydoor-t3
    python -m jcompose.sweep run  --sweep=configs/sweeps/anydoor_id_extractor.py --root=/runs/anydoor-t3 \
        --set data.roots.ytb_vos=/data/ytbvos/train --set data.roots.sam=/data/sa1b/sub1

Rows (configs/anydoor.py; each trains its own model, then generates the DreamBooth x COCO-val benchmark and
scores it with the paper's protocol, configs/sweeps/_anydoor.py):
  DINOv2 (G+P) + Seg   the released model: DINOv2 [CLS; patches], the reference on white
  DINOv2 (G+P)         data.remove_background=False: the reference keeps its photo background
  DINOv2 (G)           model.id_tokens="global": the CLS token alone, background kept
  CLIP (G+P)           model.id_encoder="clip": a CLIP image encoder (model.clip, default OpenCLIP ViT-H/14, the
                       encoder of the released code's FrozenOpenCLIPImageEncoder), background kept
The table names "+ Seg" on its last row only; the rows above are read as without background removal (Fig. 8
shows VGG, CLIP and DINOv2 on the raw photo and "DINOv2*" with it). Not expressible: the VGG row (the paper
does not say how VGG features become tokens, and jcompose has no VGG ID encoder).
"""

from configs.sweeps._anydoor import sweep
from jcompose.sweep import Variant

# (name, label, encoder, tokens, background removed, published CLIP Score, DINO Score)
ROWS = [("dinov2-gp-seg", "DINOv2 (G+P) + Seg (released)", "dinov2", "global_patch", True, 82.1, 67.8),
        ("dinov2-gp", "DINOv2 (G+P)", "dinov2", "global_patch", False, 81.0, 64.1),
        ("dinov2-g", "DINOv2 (G)", "dinov2", "global", False, 73.1, 35.4),
        ("clip-gp", "CLIP (G+P)", "clip", "global_patch", False, 73.8, 31.5)]


def get_sweep(arg: str = ""):
    rows = [Variant(name, {"model.id_encoder": encoder, "model.id_tokens": tokens, "data.remove_background": seg},
                    label=label, paper={"CLIP-I": clip_score, "DINO": dino})
            for name, label, encoder, tokens, seg, clip_score, dino in ROWS]
    return sweep(arg, rows, "AnyDoor (CVPR 2024) Table 3, DreamBooth x COCO-val")
