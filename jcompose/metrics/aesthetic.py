"""LAION aesthetic score: a small head on L2-normalised CLIP ViT-L/14 image embeddings (~1-10).

Heads (read torch-free from their published `.pth` files):

* improved-aesthetic-predictor MLPs, keys ``layers.<i>.{weight,bias}``: 768 -> 1024 -> 128 -> 64
  -> 16 -> 1. In ``*-linearMSE.pth`` (e.g. ``sac+logos+ava1-l14-linearMSE.pth``, indices 0,2,4,6,7)
  the ReLUs are commented out in the reference code, so the head is affine; in ``*-reluMSE.pth``
  (indices 0,3,6,9,11) a ReLU follows each hidden layer. Which one applies is read from the
  indices: a gap of 3 (Linear, ReLU, Dropout) only occurs with ReLUs; a gap of 2 is ambiguous
  (Linear, Dropout or Linear, ReLU), so `relu=` can force it.
* LAION-AI aesthetic-predictor V1 linear heads: ``weight (1, 768)``, ``bias (1,)``.

Dropout is identity at evaluation. The input is `clip_score.image_embeddings` of the
`openai/clip-vit-large-patch14` model (projected, then L2-normalised here again for safety).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jcompose.metrics import torch_files

Head = list[tuple[np.ndarray, np.ndarray, bool]]  # (W (in, out), b (out,), ReLU after)


def head_from_state_dict(sd: dict[str, np.ndarray], source: str = "aesthetic head", relu: bool | None = None) -> Head:
    """A published aesthetic-head state dict -> [(W, b, relu_after), ...].

    relu: ReLU after each hidden layer; None infers it from the layer indices (see module doc).
    """
    if set(sd) == {"weight", "bias"}:
        return [(sd["weight"].astype(np.float32).T, sd["bias"].astype(np.float32).reshape(-1), False)]
    indices = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"layers\.(\d+)\.weight", k))})
    if not indices or any(f"layers.{i}.bias" not in sd for i in indices):
        raise torch_files.TorchFileError(
            f"{source}: expected an aesthetic head: 'weight'/'bias' (linear) or 'layers.<i>.weight/bias' (MLP), "
            f"got {sorted(sd)[:6]}")
    if relu is None:
        relu = any(b - a == 3 for a, b in itertools.pairwise(indices))
    head: Head = [(sd[f"layers.{i}.weight"].astype(np.float32).T, sd[f"layers.{i}.bias"].astype(np.float32),
                   relu and pos + 1 < len(indices)) for pos, i in enumerate(indices)]
    for (w, _, _), (w_next, _, _) in itertools.pairwise(head):
        if w.shape[1] != w_next.shape[0]:
            raise torch_files.TorchFileError(f"{source}: layer widths do not chain ({w.shape} then {w_next.shape})")
    return head


def load_head(path: str | Path, relu: bool | None = None) -> Head:
    """Reads an aesthetic head `.pth` (zip or legacy) or `.safetensors`."""
    return head_from_state_dict(torch_files.state_dict(path), str(path), relu)


PREDICTORS = {"v1": "LAION-Aesthetics predictor V1 (linear head on CLIP ViT-L/14, sa_0_4_vit_l_14_linear.pth)",
              "v2": "improved aesthetic predictor (V2: MLP head on CLIP ViT-L/14, e.g. sac+logos+ava1-l14-linearMSE)"}


def version_of(head: Head) -> str:
    """"v1" for the single linear layer of LAION-Aesthetics V1, "v2" for the improved predictor's MLP."""
    return "v1" if len(head) == 1 else "v2"


def check_version(head: Head, wanted: str, source) -> str:
    """The head's version; ValueError naming config.aesthetic.version when it is not the one asked for."""
    found = version_of(head)
    if wanted and wanted != found:
        raise ValueError(f"config.aesthetic.version = {wanted!r}, but {source} is a {found} head "
                         f"({PREDICTORS[found]}); give the {wanted} head or set version to {found!r}")
    return found


def score(head: Head, embeddings: jnp.ndarray) -> jnp.ndarray:
    """(N, 768) CLIP image embeddings -> (N,) aesthetic scores (jit-able)."""
    x = embeddings.astype(jnp.float32)
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    for w, b, relu in head:
        x = x @ w + b
        if relu:
            x = jnp.maximum(x, 0)
    return x[:, 0]
