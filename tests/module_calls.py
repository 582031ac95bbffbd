"""The tiny models' modules called directly, each call one jitted program, for tests' independent reference
computations (called op by op, every primitive of a tiny VAE or UNet compiles as its own program: the
DreamCom loss reference took 95 s that way on 2 cores, 23 s jitted)."""

import jax


def vae_sample(vae):
    """(params, images (N, 3, H, W) in [-1, 1], key) -> a latent drawn from the posterior, unscaled (N, 4, H/8, W/8)."""
    return jax.jit(lambda params, images, key: vae.apply({"params": params}, images, method=vae.encode)
                   .latent_dist.sample(key))


def vae_decode(vae):
    """(params, unscaled latents (N, 4, h, w)) -> images (N, 3, 8h, 8w)."""
    return jax.jit(lambda params, latents: vae.apply({"params": params}, latents, method=vae.decode).sample)


def text_states(text_encoder):
    """(params, token ids (N, L)) -> the last hidden states (N, L, D)."""
    return jax.jit(lambda params, ids: text_encoder.apply({"params": params}, ids).last_hidden_state)
