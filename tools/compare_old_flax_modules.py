"""jcompose's own UNet / VAE against the diffusers Flax classes they replaced, in one process.

The module-ownership change promised that the new modules are no slower to run or compile than
diffusers' Flax classes (removed in diffusers 0.40). Those classes only install next to an old Hugging
Face stack, so this runs in its own environment (documented in tools/README.md):

    python -m venv --system-site-packages /tmp/oldflax
    /tmp/oldflax/bin/pip install "diffusers<0.40" "transformers<5"
    PYTHONPATH=. /tmp/oldflax/bin/python tools/compare_old_flax_modules.py [--full-size] [--repeats 5]

Both modules get the same random parameters (the trees are identical: the script checks it) and the
same inputs; it reports, per module and architecture, compile seconds (lower + XLA compile of a fresh
jit) and the median call time of each, their ratios, and the largest output difference (a check that
the two compute the same function). Tiny: the test suite's tiny SD 1.5 UNet (8x8 latents, batch 2),
forward and forward+backward; `--full-size`: SD 1.5's UNet at 64x64 latents (512 px) and the VAE
decoder, batch 1, forward only (a CPU-sized check).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict


def _timed(fn, args, repeats):
    """(compile s, median call s, output) of jax.jit(fn) on args."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(*args))
    calls = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        calls.append(time.perf_counter() - start)
    return compile_s, statistics.median(calls), out


def _row(name, ours, theirs, out_ours, out_theirs):
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(out_ours),
                                                             jax.tree_util.tree_leaves(out_theirs), strict=True))
    return (f"| {name} | {ours[0]:.1f} | {theirs[0]:.1f} | {theirs[0] / ours[0]:.2f}x | {ours[1] * 1e3:.1f} | "
            f"{theirs[1] * 1e3:.1f} | {theirs[1] / ours[1]:.2f}x | {diff:.1e} |")


def compare_unet(name, config, batch, latent, repeats, backward):
    from diffusers import FlaxUNet2DConditionModel

    from jcompose.bench.weights import random_tree
    from jcompose.models.unet import UNet2DConditionModel

    ours = UNet2DConditionModel(**config)
    theirs = FlaxUNet2DConditionModel(**config)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, config["in_channels"], latent, latent)),
                    jnp.float32)
    t = jnp.array([500] * batch)
    ctx = jnp.asarray(np.random.default_rng(1).standard_normal((batch, 77, config["cross_attention_dim"])),
                      jnp.float32)
    abstract = jax.eval_shape(lambda: ours.init(jax.random.PRNGKey(0), x, t, ctx))["params"]
    their_abstract = jax.eval_shape(lambda: theirs.init(jax.random.PRNGKey(0), x, t, ctx))["params"]
    assert {k: v.shape for k, v in flatten_dict(abstract).items()} == \
        {k: v.shape for k, v in flatten_dict(their_abstract).items()}, "parameter trees differ"
    params = jax.tree_util.tree_map(jnp.asarray, random_tree(abstract, 0))

    def forward(module):
        return lambda p, x, t, c: module.apply({"params": p}, x, t, c).sample

    rows = [_row(f"UNet {name} forward", *_pair(forward, ours, theirs, (params, x, t, ctx), repeats))]
    if backward:
        def grad(module):
            return jax.grad(lambda p, x, t, c: jnp.mean(module.apply({"params": p}, x, t, c).sample ** 2))
        rows.append(_row(f"UNet {name} forward+backward", *_pair(grad, ours, theirs, (params, x, t, ctx), repeats)))
    return rows


def _pair(make, ours, theirs, args, repeats):
    mine = _timed(make(ours), args, repeats)
    other = _timed(make(theirs), args, repeats)
    return mine[:2], other[:2], mine[2], other[2]


def compare_vae_decode(config, latent, repeats):
    from diffusers import FlaxAutoencoderKL

    from jcompose.bench.weights import random_tree
    from jcompose.models.vae import AutoencoderKL

    ours, theirs = AutoencoderKL(**config), FlaxAutoencoderKL(**config)
    z = jnp.asarray(np.random.default_rng(2).standard_normal((1, 4, latent, latent)), jnp.float32)
    image = jnp.zeros((1, 3, latent * 8, latent * 8))
    abstract = jax.eval_shape(lambda: ours.init(jax.random.PRNGKey(0), image))["params"]
    params = jax.tree_util.tree_map(jnp.asarray, random_tree(abstract, 1))

    def decode(module):
        return lambda p, z: module.apply({"params": p}, z, method=module.decode).sample

    return [_row(f"VAE decode {latent * 8} px", *_pair(decode, ours, theirs, (params, z), repeats))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-size", action="store_true", help="also SD 1.5's UNet and VAE decoder at 512 px")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import diffusers

    from jcompose.bench.weights import SD15_UNET, SD15_VAE
    from jcompose.models import tiny
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; diffusers {diffusers.__version__} (Flax classes)")
    print("| module | compile s jcompose | compile s diffusers | ratio | call ms jcompose | call ms diffusers | "
          "ratio | max abs diff |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    tiny_config = {**tiny.unet_config("sd15"), "sample_size": tiny.LATENT_SIZE}
    rows = compare_unet("tiny sd15", tiny_config, 2, tiny.LATENT_SIZE, args.repeats, backward=True)
    if args.full_size:
        rows += compare_unet("SD 1.5 (512 px)", SD15_UNET, 1, 64, max(args.repeats // 2, 1), backward=False)
        rows += compare_vae_decode(SD15_VAE, 64, max(args.repeats // 2, 1))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
