"""Tiny runs for the demo tests, written without training: a method's tiny config, its init params replaced
by random non-zero ones (AnyScene's zero convolutions would hide the conditioning), one checkpoint and the run
record, so `compose` and the demo load them as they load a trained run. A DreamCom run with several objects
holds one random UNet per object on the leading model axis, as multi-object training saves them."""

from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np

from configs import common as configs
from jcompose import methods, run_record
from jcompose.checkpoint import Checkpointer
from jcompose.models import tiny

STEP = 7


def _random_like(tree, seed):
    return jax.tree_util.tree_map(jnp.asarray, tiny.random_params(jax.eval_shape(lambda: tree), seed))


def write_run(workdir: Path, spec: str, seed: int = 0, **data) -> Path:
    """`spec` ("configs/anyscene.py:tiny", ...) -> a run folder with one checkpoint of random params;
    `data` overrides config.data fields (e.g. DreamCom's objects)."""
    config = configs.load(spec)
    with config.unlocked():
        config.data.update(**data)
    method = methods.build(config)
    params, _ = method.init(str(workdir))
    if getattr(method, "num_models", 1) > 1:
        copies = [_random_like(params, seed + k) for k in range(method.num_models)]
        params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *copies)
    else:
        params = _random_like(params, seed)
    checkpoints = Checkpointer(workdir, async_save=False)
    checkpoints.save(STEP, {"step": jnp.array(STEP), "params": params},
                     iter(grain.MapDataset.range(4).to_iter_dataset()))
    checkpoints.close()
    run_record.record(config, workdir, resuming=False,
                      argv=["jcompose.train", f"--config={spec}", f"--workdir={workdir}"])
    return workdir


def photo(shape, seed) -> np.ndarray:
    """uint8 (H, W, 3) smooth random picture (colour gradients + noise), BGR as cv2 writes it."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    base = np.stack([yy, xx, 1 - yy], -1) * 200 + rng.random((h, w, 3)) * 55
    return base.astype(np.uint8)
