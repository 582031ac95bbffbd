"""AnyScene's memory options reach the networks they name: `model.remat` puts every block of F_c (down,
mid) and of the frozen UNet (down, mid, up: F_c's gradient flows back through them) under
jax.checkpoint; `loss.remat_decode` puts the VAE decoder of the pixel losses under one more. Counted
on the traced training loss against the block counts of the tiny SD 1.5's config files (trace only,
nothing compiled: the values under remat are the plain module's, tests/test_loading.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.anyscene import get_config
from jcompose import methods


def _checkpoints(jaxpr) -> int:
    """jax.checkpoint (remat) equations in a closed jaxpr and every jaxpr nested in it."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name in ("checkpoint", "remat", "remat2")
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += _checkpoints(inner)
    return count


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """(remat, remat_decode) -> checkpoint equations in the traced loss; the base folder."""
    workdir = tmp_path_factory.mktemp("anyscene_memory")
    counts, batch, base = {}, None, None
    for remat, remat_decode in ((False, False), (True, False), (False, True), (True, True)):
        config = get_config("tiny")
        config.data.num_records = 2
        config.model.remat, config.loss.remat_decode = remat, remat_decode
        method = methods.build(config)
        params, frozen = method.init(str(workdir))
        if batch is None:
            source, transform = method.make_source(), method.make_transform()
            example = transform(source[0], np.random.default_rng(0))
            batch = {k: jnp.asarray(v)[None] for k, v in example.items()}
            base = method._base_folder(str(workdir))
        jaxpr = jax.make_jaxpr(lambda p: method.loss(p, frozen, batch, jax.random.PRNGKey(0))[0])(params)
        counts[remat, remat_decode] = _checkpoints(jaxpr.jaxpr)
    return counts, base


def test_block_remat_and_decoder_remat_reach_their_networks(traced):
    counts, base = traced
    unet = json.loads((base / "unet" / "config.json").read_text())
    encoder_blocks = len(unet["down_block_types"]) + 1  # down blocks + the mid block (F_c and the UNet)
    decoder_blocks = len(unet["up_block_types"])  # the UNet's up blocks
    assert counts[False, False] == 0
    assert counts[True, False] == 2 * encoder_blocks + decoder_blocks  # 2 x 4 + 3 on the tiny SD 1.5
    assert counts[False, True] == 1  # the VAE decoder, once
    assert counts[True, True] == counts[True, False] + 1
