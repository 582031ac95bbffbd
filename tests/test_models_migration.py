"""Migration check: jcompose's own UNet / ControlNet / VAE equal the diffusers-Flax-based modules they replace.

The same random parameters go through diffusers' former Flax classes (with the PyTorch-numerics
fixes jcompose applied to them, `jcompose._diffusers_fixes`) and through jcompose's modules: the
parameter trees are identical and the outputs agree within 1e-5. Kept only while the old path
exists (diffusers < 0.40 installed); the lasting checks are the PyTorch parity tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jcompose.models import loading, tiny
from jcompose.models.unet import UNet2DConditionModel
from jcompose.models.vae import AutoencoderKL

diffusers = pytest.importorskip("diffusers")
if not hasattr(diffusers, "FlaxUNet2DConditionModel"):
    pytest.skip(f"diffusers {diffusers.__version__} has no Flax classes (the old path is gone)", allow_module_level=True)


def _shapes(tree):
    return {k: tuple(v.shape) for k, v in flatten_dict(dict(tree)).items()}


def _close(a, b):
    err = float(jnp.abs(jnp.asarray(a) - jnp.asarray(b)).max())
    assert err < 1e-5, err


@pytest.mark.parametrize("base", tiny.BASES)
def test_unet_equals_diffusers_flax(base, rng):
    cfg = tiny.unet_config(base)
    ours, theirs = UNet2DConditionModel(**cfg), diffusers.FlaxUNet2DConditionModel(**cfg)
    params = tiny.random_params(loading.abstract_params(ours), 1)
    assert _shapes(params) == _shapes(jax.eval_shape(theirs.init_weights, jax.random.PRNGKey(0)))
    x = rng.normal(size=(2, cfg["in_channels"], 8, 12)).astype(np.float32)
    ctx = rng.normal(size=(2, 16, cfg["cross_attention_dim"])).astype(np.float32)
    t = jnp.array([17, 803])
    _close(ours.apply({"params": params}, x, t, ctx).sample, theirs.apply({"params": params}, x, t, ctx).sample)


def test_controlnet_and_vae_equal_diffusers_flax(rng):
    cfg = tiny.unet_config("sd15")
    ours = loading.controlnet_like(UNet2DConditionModel(**cfg), (16, 32, 32, 32))
    kept = {k: v for k, v in cfg.items() if k not in ("up_block_types", "out_channels", "sample_size")}
    theirs = diffusers.FlaxControlNetModel(**kept, conditioning_embedding_out_channels=(16, 32, 32, 32), sample_size=8)
    params = tiny.random_params(loading.abstract_params(ours), 2)
    assert _shapes(params) == _shapes(jax.eval_shape(theirs.init_weights, jax.random.PRNGKey(0)))
    x, ctx = rng.normal(size=(2, 4, 8, 12)).astype(np.float32), rng.normal(size=(2, 16, 32)).astype(np.float32)
    cond, t = rng.uniform(size=(2, 3, 64, 96)).astype(np.float32), jnp.array([17, 803])
    a = ours.apply({"params": params}, x, t, ctx, cond)
    b = theirs.apply({"params": params}, x, t, ctx, cond)
    for u, v in zip(a.down_block_res_samples, b.down_block_res_samples, strict=True):
        _close(u, v)
    _close(a.mid_block_res_sample, b.mid_block_res_sample)

    vae, old = AutoencoderKL(**tiny.vae_config()), diffusers.FlaxAutoencoderKL(**tiny.vae_config())
    params = tiny.random_params(loading.abstract_params(vae), 3)
    assert _shapes(params) == _shapes(jax.eval_shape(old.init_weights, jax.random.PRNGKey(0)))
    image = rng.uniform(-1, 1, size=(2, 3, 64, 96)).astype(np.float32)
    _close(vae.apply({"params": params}, image, method=vae.encode).latent_dist.mean,
           old.apply({"params": params}, image, method=old.encode).latent_dist.mean.transpose(0, 3, 1, 2))
    z = rng.normal(size=(2, 4, 8, 12)).astype(np.float32)
    _close(vae.apply({"params": params}, z, method=vae.decode).sample,
           old.apply({"params": params}, z, method=old.decode).sample)
