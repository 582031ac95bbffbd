"""AnyDoor on tiny models (jcompose/methods/anydoor.py, anydoor_inference.py, configs/anydoor.py).

References: diffusers ControlNetModel with conv_in's output replaced by zeros (the released extractor
never sees x_t); transformers Dinov2Model with the DINOv2 hub's position interpolation written in
torch (F.interpolate with a scale factor); the loss recomputed in numpy from the same rng splits
through the modules' own full calls; gradients with respect to both the trained and the frozen trees.
One value_and_grad program (batch 2) serves the loss, gradient and learning tests.
"""

import dataclasses
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.anydoor import get_config
from input_pipeline.pipeline import make_iterator
from jcompose.methods import anydoor
from jcompose.models import encoders, loading, tiny, vit

ATOL = 1e-4


def _torch():
    torch = pytest.importorskip("torch", reason="parity tests need the parity extra: pip install -e '.[parity]'")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    return torch


def _randomise_torch(model, seed):
    torch = _torch()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return model.eval()


def randomised(tree, seed):
    """Every leaf random (zero convs included), so every residual and gradient path is live."""
    return jax.tree_util.tree_map(jnp.asarray, tiny.random_params(jax.eval_shape(lambda: tree), seed))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("anydoor")
    method = anydoor.AnyDoorMethod(get_config("tiny"))
    params, frozen = method.init(str(workdir))
    data = make_iterator(method.make_source(), method.make_transform(), per_process_batch=2, seed=0)
    return method, params, frozen, next(data), workdir


@pytest.fixture(scope="module")
def grad_fn(setup):
    """(params, frozen, batch, rng) -> ((loss, metrics), (d params, d frozen))."""
    return jax.jit(jax.value_and_grad(setup[0].loss, argnums=(0, 1), has_aux=True))


@pytest.fixture(scope="module")
def random_step(setup, grad_fn):
    """The loss and gradients at random trained params on a batch with dynamic labels 0 and 1."""
    _, params, frozen, batch, _ = setup
    p = randomised(params, 11)
    batch = dict(batch, dynamic=np.array([0, 1], np.int32))
    rng = jax.random.PRNGKey(5)
    (loss, metrics), grads = grad_fn(p, frozen, batch, rng)
    return p, batch, rng, loss, metrics, grads


# ------------------------------------------------------------------------------------- parity


@pytest.mark.parity
def test_extractor_residuals_match_diffusers_controlnet_without_conv_in(setup, tmp_path, rng):
    """diffusers adds conv_in(x_t) to the hint embedding; AnyDoor's extractor starts from the hint
    embedding alone. Equivalent in diffusers: conv_in's output replaced by zeros (a forward hook)."""
    diffusers = pytest.importorskip("diffusers")
    torch = _torch()
    method = setup[0]
    unet_cfg = tiny.unet_config("sd21-base")
    kwargs = {k: v for k, v in unet_cfg.items() if k not in ("up_block_types", "out_channels", "sample_size")}
    pt = _randomise_torch(diffusers.ControlNetModel(**kwargs, conditioning_channels=4,
                                                    conditioning_embedding_out_channels=(16, 32, 32, 32)), 2)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    loaded = loading.load_controlnet(tmp_path)
    ours = {k: v for k, v in loaded.params.items() if k != "conv_in"}
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(
        loading.abstract_params(method.extractor))  # the method's extractor has exactly this tree

    x = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)  # any latent: the extractor must ignore it
    t = np.array([17, 803])
    ctx = rng.normal(size=(2, 257, 64)).astype(np.float32)
    hint = np.concatenate([rng.uniform(-1, 1, (2, 3, 64, 64)), rng.choice([-1.0, 0.0, 1.0], (2, 1, 64, 64))],
                          axis=1).astype(np.float32)
    down, mid = jax.jit(method.residuals)({"extractor": ours}, jnp.asarray(t), ctx, hint)  # jit: op by op ~10 s
    args = (torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx), torch.from_numpy(hint))
    with torch.no_grad():
        plain = pt(*args, return_dict=False)
        hook = pt.conv_in.register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
        want = pt(*args, return_dict=False)
        hook.remove()
    assert len(down) == len(want[0]) == 6  # tiny: conv_in slot + 3 layers + 2 downsamplers (13 in SD 2.1)
    errors = [float(np.abs(np.asarray(a).transpose(0, 3, 1, 2) - b.numpy()).max()) for a, b in zip(down, want[0])]
    errors.append(float(np.abs(np.asarray(mid).transpose(0, 3, 1, 2) - want[1].numpy()).max()))
    scale = max(float(b.abs().max()) for b in want[0])
    print(f"max |jcompose - diffusers without conv_in| per residual: {[f'{e:.1e}' for e in errors]} (scale {scale:.2f})")
    assert max(errors) < ATOL
    # conv_in(x_t) really changes diffusers' residuals, so the bypass is what is compared
    assert float(np.abs(np.asarray(mid).transpose(0, 3, 1, 2) - plain[1].numpy()).max()) > 100 * ATOL


@pytest.mark.parity
def test_dinov2_hub_interpolation_matches_torch_scale_factor(tmp_path, rng):
    """A 37x37 position grid (518 px, as ViT-g/14) at 224 px: the DINOv2 hub code resamples it with
    `F.interpolate(scale_factor=(16 + 0.1) / 37, mode="bicubic")` (source step 1 / scale), not with
    size=(16, 16) (step 37 / 16) as transformers does."""
    transformers = pytest.importorskip("transformers")
    torch = _torch()
    config = dataclasses.replace(tiny.dinov2_config(), image_size=518)
    pt = _randomise_torch(transformers.Dinov2Model(transformers.Dinov2Config(
        **{k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures")})), 8)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    loaded = encoders.load_dinov2(tmp_path)
    hub = loaded.module.clone(interpolation="dinov2_hub")

    def hub_positions(self, embeddings, height, width):  # Meta's rule, restated in torch
        table = self.position_embeddings
        n, side, patch = table.shape[1] - 1, 37, config.patch_size
        if embeddings.shape[1] - 1 == n and height == width:
            return table
        grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        scale = ((height // patch + 0.1) / side, (width // patch + 0.1) / side)
        grid = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="bicubic")
        return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])], dim=1)

    with torch.no_grad():
        table = pt.embeddings.position_embeddings
        for height, width in ((224, 224), (168, 224)):
            pixels = rng.normal(size=(2, height, width, 3)).astype(np.float32)
            nchw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
            by_size = pt(pixel_values=nchw).last_hidden_state.numpy()
            pt.embeddings.interpolate_pos_encoding = types.MethodType(hub_positions, pt.embeddings)
            want = pt(pixel_values=nchw).last_hidden_state.numpy()
            del pt.embeddings.interpolate_pos_encoding
            got = np.asarray(hub.apply({"params": loaded.params}, pixels).last_hidden_state)
            grid = np.asarray(vit.interpolate_positions(jnp.asarray(table.numpy()), (height // 14, width // 14),
                                                        "dinov2_hub"))
            err = float(np.abs(got - want).max())
            patches = torch.zeros(1, 1 + (height // 14) * (width // 14), 32)
            table_err = float(np.abs(grid - hub_positions(pt.embeddings, patches, height, width).numpy()).max())
            rules = float(np.abs(want - by_size).max())
            print(f"{height}x{width}: hub rule max err {err:.1e} (table {table_err:.1e}); hub vs transformers "
                  f"rule differ by {rules:.3f}")
            assert got.shape == (2, 1 + (height // 14) * (width // 14), 32)
            assert err < ATOL and table_err < 1e-5
            assert rules > 100 * ATOL  # the two rules are really different functions


@pytest.mark.parity
def test_loss_and_gradients_match_the_pytorch_reference(setup, random_step, tmp_path):
    """jcompose's loss and its gradients on the trained modules vs the `bench train` PyTorch step's
    (diffusers UNet with the encoder under no_grad, ControlNet without conv_in, transformers DINOv2 with
    the hub interpolation, nn.Linear projector), on the same weights and the same draw."""
    import shutil

    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    torch = _torch()
    from jcompose.bench import torch_train_anydoor as reference
    from jcompose.models import pt_layout

    method, _, frozen, _, workdir = setup
    p, batch, rng, loss, _, (grads, _) = random_step
    folder = tmp_path / "base"
    loading.export_diffusers(method.unet, method.unet_params(p, frozen), folder / "unet")
    loading.export_diffusers(method.vae, frozen["vae"], folder / "vae")
    shutil.copytree(Path(workdir) / "base" / "sd21-base" / "scheduler", folder / "scheduler")
    model = reference.AnyDoorTorch(folder, method.config, "cpu")
    state = {k: torch.from_numpy(v) for k, v in pt_layout.flax_to_state_dict(p["extractor"]).items()}
    assert not model.extractor.load_state_dict(state, strict=False).missing_keys  # conv_in has no weights
    with torch.no_grad():
        model.projector.weight.copy_(torch.from_numpy(np.asarray(p["projector"]["kernel"]).T.copy()))
        model.projector.bias.copy_(torch.from_numpy(np.array(p["projector"]["bias"])))

    latents, noise, t, _ = (np.array(x) for x in method.draw(frozen, batch, rng))  # the loss's own draw
    a = torch.from_numpy(_alphas_cumprod()[t]).view(-1, 1, 1, 1)
    noisy = a.sqrt() * torch.from_numpy(latents) + (1 - a).sqrt() * torch.from_numpy(noise)
    ctx = model.id_tokens(torch.from_numpy(np.ascontiguousarray(np.asarray(batch["reference"]).transpose(0, 3, 1, 2))))
    hint = torch.from_numpy(np.ascontiguousarray(np.asarray(batch["collage"]).transpose(0, 3, 1, 2)))
    pred = model.predict(noisy, torch.from_numpy(t), ctx, hint)
    torch_loss = torch.nn.functional.mse_loss(pred, torch.from_numpy(noise))
    torch_loss.backward()
    want = float(torch_loss.detach())

    def grad_error(tree, module):
        """max |jcompose - torch| over the subtree / the subtree's largest gradient (biases that a
        one-channel GroupNorm cancels have ~1e-7 gradients of rounding noise, so not per leaf)."""
        named = dict(module.named_parameters())
        pairs = [(v, named[k].grad.numpy()) for k, v in pt_layout.flax_to_state_dict(tree).items()]
        return max(float(np.abs(a - b).max()) for a, b in pairs) / max(float(np.abs(b).max()) for _, b in pairs)

    errors = {"extractor": grad_error(grads["extractor"], model.extractor),
              "unet_decoder": grad_error(grads["unet_decoder"], model.unet),
              "projector": float(np.abs(np.asarray(grads["projector"]["kernel"]).T - model.projector.weight.grad.numpy()
                                        ).max() / float(model.projector.weight.grad.abs().max()))}
    with_grad = [q for q in model.unet.parameters() if q.grad is not None]
    print(f"loss jcompose {float(loss):.7f} torch {want:.7f}; relative gradient errors "
          f"{ {k: f'{v:.1e}' for k, v in errors.items()} }; torch UNet tensors with a gradient {len(with_grad)}")
    assert abs(float(loss) - want) < 1e-5 * max(1.0, want)
    assert max(errors.values()) < 1e-3
    assert len(with_grad) == len(jax.tree_util.tree_leaves(p["unet_decoder"]))  # torch too: the decoder only


# ---------------------------------------------------------------------------------- loss, grads


def _alphas_cumprod():
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2  # SD's scaled linear
    return np.cumprod(1 - betas).astype(np.float32)


def test_loss_equals_numpy_on_the_same_draw(setup, random_step):
    method, _, frozen, _, _ = setup
    p, batch, rng, loss, metrics, _ = random_step
    k_latent, k_noise, k_t, _ = jax.random.split(rng, 4)
    vae, unet = method.vae, method.unet
    dist = vae.apply({"params": frozen["vae"]}, np.asarray(batch["target"]).transpose(0, 3, 1, 2),
                     method=vae.encode).latent_dist
    z0 = np.asarray(dist.sample(k_latent)) * 0.18215
    noise = np.asarray(jax.random.normal(k_noise, z0.shape))
    # the released sample_timestep: 30% uniform in [0, 1000), else dynamic 0 -> [0, 500), 1 -> [500, 1000)
    k_choice, k_int = jax.random.split(k_t)
    uniform = np.asarray(jax.random.uniform(k_choice, (2,))) < 0.3
    lo, hi = np.where(uniform, 0, [0, 500]), np.where(uniform, 1000, [500, 1000])
    t = np.asarray(jax.random.randint(k_int, (2,), lo, hi))
    a = _alphas_cumprod()[t][:, None, None, None]
    zt = (np.sqrt(a) * z0 + np.sqrt(1 - a) * noise).astype(np.float32)

    pixels = ((np.asarray(batch["reference"]) + 1) / 2 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    features = np.asarray(method.dinov2.apply({"params": frozen["dinov2"]}, pixels.astype(np.float32))
                          .last_hidden_state, np.float64)
    assert features.shape == (2, 257, 32)  # CLS + 16x16 patches of the 37x37-grid model at 224 px
    ctx = (features @ np.asarray(p["projector"]["kernel"], np.float64) + np.asarray(p["projector"]["bias"])
           ).astype(np.float32)
    hint = np.asarray(batch["collage"]).transpose(0, 3, 1, 2)
    out = method.extractor.apply({"params": p["extractor"]}, None, jnp.asarray(t), ctx, hint)
    whole_unet = {**frozen["unet_encoder"], **p["unet_decoder"]}
    eps = np.asarray(unet.apply({"params": whole_unet}, zt, jnp.asarray(t), ctx,
                                down_block_additional_residuals=tuple(out.down_block_res_samples),
                                mid_block_additional_residual=out.mid_block_res_sample).sample, np.float64)
    want = float(np.mean((eps - noise) ** 2))
    cells = np.asarray(batch["collage"])[..., 3].reshape(2, 8, 8, 8, 8).max(axis=(2, 4)) > 0.5
    box = np.broadcast_to(cells[:, None], eps.shape)
    want_box = float(((eps - noise) ** 2)[box].mean())
    print(f"t {t.tolist()}; loss jcompose {float(loss):.7f} numpy {want:.7f}; box mse {float(metrics['box_mse']):.7f} "
          f"numpy {want_box:.7f}")
    assert abs(float(loss) - want) < 1e-5 * max(1.0, want)
    assert abs(float(metrics["box_mse"]) - want_box) < 1e-5 * max(1.0, want_box)
    assert 0 < cells.mean() < 1


def test_gradients_reach_only_the_trained_modules(random_step):
    _, _, _, _, _, (trained, frozen) = random_step
    assert set(trained) == {"extractor", "unet_decoder", "projector"}
    counts = {}
    for name, tree in trained.items():
        norms = [float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(tree)]
        counts[name] = (sum(n > 0 for n in norms), len(norms))
    for name in ("unet_encoder", "vae", "dinov2"):  # stop_gradient: no cotangent reaches them
        assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(frozen[name])), name
    print("leaves with non-zero gradient (of all):", counts)
    assert all(nonzero == total for nonzero, total in counts.values()), counts


def test_released_projector_switch_keeps_it_frozen(setup):
    method, _, _, batch, workdir = setup
    config = get_config("tiny")
    config.model.train_projector = False
    released = anydoor.AnyDoorMethod(config)
    params, frozen = released.init(str(workdir))
    assert "projector" in frozen and "projector" not in params
    grad = jax.grad(lambda f: jnp.sum(released.id_tokens(params, f, jnp.asarray(batch["reference"]))))(frozen)
    assert float(jnp.abs(grad["projector"]["kernel"]).max()) == 0.0
    # trained (the default): the same tokens do carry a gradient to the projector
    p, f = {"projector": frozen["projector"]}, {k: v for k, v in frozen.items() if k != "projector"}
    grad = jax.grad(lambda q: jnp.sum(method.id_tokens(q, f, jnp.asarray(batch["reference"]))))(p)
    assert float(jnp.abs(grad["projector"]["kernel"]).max()) > 0


def test_fresh_extractor_is_the_unet_encoder_with_zero_residuals(setup):
    method, params, frozen, batch, _ = setup
    for name in ("time_embedding", "down_blocks_0", "mid_block"):
        same = jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), params["extractor"][name],
                                      frozen["unet_encoder"][name])
        assert all(jax.tree_util.tree_leaves(same)), name
    ctx = method.id_tokens(params, frozen, jnp.asarray(batch["reference"]))
    down, mid = method.residuals(params, jnp.array([10, 900]), ctx, jnp.asarray(batch["collage"]).transpose(0, 3, 1, 2))
    assert all(float(jnp.abs(r).max()) == 0.0 for r in [*down, mid])


def test_unconditional_tokens_are_those_of_a_black_image(setup):
    """CFG's unconditional ID tokens: the projector on DINOv2 of an all-zero (black) [0, 1] image after the
    ImageNet normalisation (the released get_learned_conditioning on torch.zeros), computed here from the
    constants; a grey image's tokens are far from them."""
    method, params, frozen, _, _ = setup
    got = np.asarray(method.uncond_tokens(params, frozen, jnp.zeros((2, 257, 64))))
    proj = params["projector"]

    def tokens(value):  # a flat [0, 1] image, ImageNet-normalised, through DINOv2 and the projector
        pixels = (np.full((1, 224, 224, 3), value) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        features = method.dinov2.apply({"params": frozen["dinov2"]}, pixels.astype(np.float32)).last_hidden_state
        return np.asarray(features) @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"])

    black, grey = tokens(0.0), tokens(0.5)
    assert got.shape == (2, 257, 64)
    error, gap = float(np.abs(got - black).max()), float(np.abs(grey - black).max())
    print(f"uncond tokens vs black-image tokens {error:.1e}; grey vs black {gap:.2f}")
    assert error < 1e-5 * max(1.0, float(np.abs(black).max())) and gap > 1e3 * error


def test_adaptive_timestep_share_drawn_uniformly(setup):
    """`draw` (the config's loss.uniform_probability, released 0.3) on 200k labels of each type: with p the
    uniform share, static images land in [500, 1000) with probability p/2 and videos in [0, 500) with p/2,
    so p is estimated to +-0.0011 (1 sd) and a change of 0.01 is seen; each type's histogram (20 bins)
    fits its mixture density by chi-square."""
    from scipy import stats

    method, _, _, _, _ = setup
    n = 200_000
    assert method.config.loss.uniform_probability == 0.3
    dynamic = np.repeat(np.array([0, 1, 2], np.int32), n)
    fake = types.SimpleNamespace(config=method.config, schedule=method.schedule,  # draw without the VAE
                                 latents=lambda frozen, images, key: jnp.zeros((images.shape[0], 4, 1, 1)))
    _, _, t, _ = anydoor.AnyDoorMethod.draw(fake, None, {"target": jnp.zeros((3 * n, 1, 1, 3)), "dynamic": dynamic},
                                            jax.random.PRNGKey(0))
    t = np.asarray(t).reshape(3, n)
    assert t.min() >= 0 and t.max() < 1000
    p_hat = (np.mean(t[0] >= 500) + np.mean(t[1] < 500))  # each is p / 2
    assert abs(p_hat - 0.3) < 0.0045, p_hat  # 4 sd
    for label, t_label in enumerate(t):
        counts = np.bincount(t_label // 50, minlength=20)
        low = {0: 0.7 / 500 + 0.3 / 1000, 1: 0.3 / 1000, 2: 1 / 1000}[label]  # density per step in [0, 500)
        high = {0: 0.3 / 1000, 1: 0.7 / 500 + 0.3 / 1000, 2: 1 / 1000}[label]
        expected = n * 50 * np.array([low] * 10 + [high] * 10)
        assert stats.chisquare(counts, expected).pvalue > 1e-4, (label, counts)


def test_hint_encoder_starts_as_torch_conv2d_default(setup):
    """The released hint encoder is LDM's nn.Conv2d stack: torch's default init (kaiming-uniform a = sqrt(5):
    kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = c_in x 3 x 3, torch.nn.Conv2d's docs), its
    last conv zero (zero_module). Flax's LeCun-normal kernels are sqrt(3) x wider and its biases zero."""
    from scipy import stats

    method, params, _, _, _ = setup
    assert method.config.model.hint_init == "torch"
    embedding = params["extractor"]["controlnet_cond_embedding"]
    assert float(jnp.abs(embedding["conv_out"]["kernel"]).max()) == 0 == float(jnp.abs(embedding["conv_out"]["bias"]).max())
    convs = {k: v for k, v in embedding.items() if k != "conv_out"}
    assert len(convs) == 7  # conv_in + 2 per stage after the first (16, 32, 32, 32)
    for name, conv in convs.items():
        kernel, bias = np.asarray(conv["kernel"]), np.asarray(conv["bias"])
        bound = 1 / np.sqrt(np.prod(kernel.shape[:3]))  # HWIO: kh x kw x c_in
        for what, values in (("kernel", kernel), ("bias", bias)):
            assert np.abs(values).max() <= bound, (name, what)
            p = stats.kstest(values.ravel(), stats.uniform(-bound, 2 * bound).cdf).pvalue
            assert p > 1e-4, (name, what, p)


# ------------------------------------------------------------------------------------ training


def test_training_lowers_heldout_box_error(setup, grad_fn):
    """Synthetic video pairs: the held-out noise-prediction error inside the target box (fixed draws)
    falls after 30 Adam steps from the released initialisation."""
    method, params, frozen, _, workdir = setup
    data = make_iterator(method.make_source(), method.make_transform(), per_process_batch=2, seed=3)
    held_config = method.config.data.copy_and_resolve_references()
    held_config.seed = 1  # other videos and images than the training set
    held_source = anydoor.synthetic_mixture(Path(workdir) / "heldout", held_config)
    held = make_iterator(held_source, method.make_transform(), per_process_batch=2, seed=1)
    held_batches = [next(held) for _ in range(2)]

    def heldout_error(p):
        return float(np.mean([grad_fn(p, frozen, b, jax.random.PRNGKey(100 + 10 * i + k))[0][1]["box_mse"]
                              for i, b in enumerate(held_batches) for k in range(2)]))

    tx = optax.adam(1e-3)
    update = jax.jit(tx.update)
    state, p = tx.init(params), params
    before = heldout_error(p)
    for step in range(30):
        (_, _), (grads, _) = grad_fn(p, frozen, next(data), jax.random.PRNGKey(step))
        updates, state = update(grads, state, p)
        p = optax.apply_updates(p, updates)
    after = heldout_error(p)
    print(f"held-out box MSE: step 0 {before:.4f}, step 30 {after:.4f}")
    assert after < 0.7 * before
