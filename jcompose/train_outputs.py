"""What a training run writes besides its checkpoints: the logged means of the step metrics, sample grids
as PNG, exported models; and `to_host`, a replicated array as numpy on any process."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from etils import epath

from jcompose import atomic


def write_grid(images: np.ndarray, path: epath.Path) -> np.ndarray:
    """(N, H, W, 3) (or (K, N, H, W, 3): a row per model) in [-1, 1] -> uint8 tiles saved as PNG; returns
    the grid (K*H, N*W, 3)."""
    from PIL import Image

    tiles = ((np.asarray(images) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    rows = tiles if tiles.ndim == 5 else tiles[None]
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        Image.fromarray(grid).save(f, format="PNG")
    return grid


class NullWriter:
    """Stands in for the TensorBoard writer on hosts other than process 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def to_host(x: Any) -> np.ndarray:
    """A replicated (or fully addressable) array as numpy, also when it spans several processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def mean_metrics(window: list[dict], model_names: list[str] | None = None) -> dict[str, float]:
    """Per-key means of the step metrics since the last log (over models too); with several models also
    each one's loss as `loss/<name>`."""
    host = [{k: to_host(v) for k, v in m.items()} for m in window]
    means = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    if model_names and np.ndim(host[0]["loss"]) == 1:
        per_model = np.mean([m["loss"] for m in host], axis=0)
        means.update({f"loss/{name}": float(v) for name, v in zip(model_names, per_model)})
    return means


def export_models(method, params, folder: epath.Path, models: int) -> None:
    """Each trained model exported by the method to `folder/<name>` (diffusers layout for DreamCom)."""
    names = getattr(method, "model_names", None) or [f"model_{k}" for k in range(models)]
    for k, name in enumerate(names if models > 1 else names[:1]):
        one = params if models == 1 else jax.tree_util.tree_map(lambda x, k=k: to_host(x)[k], params)
        with atomic.folder(folder / name) as partial:  # a killed export leaves no half model folder
            method.export(jax.tree_util.tree_map(to_host, one), partial)
        print(f"exported {name} to {folder / name}", flush=True)
