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


def controlled_unet(unet, controls, latent_hw):
    """(params, x_t (N, C, h, w), timesteps (N,), context (N, L, D)) -> the UNet's output under the attention
    `controls` (jcompose.attention), (N, 4, h, w)."""
    from jcompose import attention

    return jax.jit(lambda params, x, t, context: unet.apply(
        {"params": params}, x, t, context, attention=attention.AttentionContext(controls, latent_hw=latent_hw)).sample)


def text_controlnet_unet_vae_dino(pipe, dino):
    """A tiny base's text encoder -> ControlNet -> UNet (t = 321), VAE decode and DINOv2 in one program:
    (params of `pipeline_params`, tokens (1, L), x (1, 4, h, w), cond (1, 3, 8h, 8w), pixels (1, S, S, 3))
    -> {"ctx", "eps", "image", "feats"}."""
    import jax.numpy as jnp

    @jax.jit
    def forward(params, tokens, x, cond, pixels):
        ctx = pipe.text_encoder.module.apply({"params": params["text"]}, tokens).last_hidden_state
        t = jnp.array([321])
        res = pipe.controlnet.module.apply({"params": params["controlnet"]}, x, t, ctx, cond)
        eps = pipe.unet.module.apply({"params": params["unet"]}, x, t, ctx,
                                     down_block_additional_residuals=res.down_block_res_samples,
                                     mid_block_additional_residual=res.mid_block_res_sample).sample
        image = pipe.vae.module.apply({"params": params["vae"]}, x, method=pipe.vae.module.decode).sample
        feats = dino.module.apply({"params": params["dino"]}, pixels).last_hidden_state
        return {"ctx": ctx, "eps": eps, "image": image, "feats": feats}

    return forward


def pipeline_params(pipe, dino) -> dict:
    """The params `text_controlnet_unet_vae_dino` takes."""
    return {"text": pipe.text_encoder.params, "controlnet": pipe.controlnet.params, "unet": pipe.unet.params,
            "vae": pipe.vae.params, "dino": dino.params}
