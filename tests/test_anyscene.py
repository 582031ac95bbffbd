"""AnyScene: loss wiring vs an independent numpy/OpenCV computation, layout control, learning signal,
benchmark construction.

Everything runs on the tiny random SD 1.5 (`configs/anyscene.py:tiny`) at 64 px or less.
"""

import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from anyscene_runs import heldout_batch, heldout_errors, latest_state, run_config

from configs.anyscene import get_config
from input_pipeline import anyscene_benchmark
from input_pipeline.sources.synthetic import write_synthetic
from jcompose import attention, methods
from jcompose.methods import anyscene_inference
from jcompose.methods.anyscene import AnySceneMethod
from jcompose.tokens import token_positions


@pytest.fixture(scope="module")
def anyscene(tmp_path_factory):
    """(method, params, frozen, batch of 2 training examples at 64 px, workdir) on the tiny config."""
    workdir = tmp_path_factory.mktemp("anyscene")
    config = get_config("tiny")
    config.data.num_records = 4
    method = methods.build(config)
    params, frozen = method.init(str(workdir))
    source, transform = method.make_source(), method.make_transform()
    examples = [transform(source[i], np.random.default_rng(i)) for i in range(2)]
    batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}
    return method, _strong_conditioning(params), frozen, batch, workdir


def _strong_conditioning(params):
    """F_c as a trained one behaves: untrained, its output convolutions are zero (residuals exactly 0) and
    its random hint encoder shrinks the conditioning image to almost nothing, so the conditioning could
    not move any loss term (removing the foreground changed the loss by 4e-5 relative). All weights
    perturbed, the hint encoder's output x100 and the zero convolutions at std 0.2: removing the
    foreground now moves the denoising loss by ~2% (the test below checks it)."""
    params = jax.tree_util.tree_map(lambda x: x + 0.02 * jax.random.normal(jax.random.PRNGKey(x.size % 97), x.shape),
                                    params)
    net = dict(params["controlnet"])
    hint = dict(net["controlnet_cond_embedding"])
    hint["conv_out"] = jax.tree_util.tree_map(lambda x: 100.0 * x, hint["conv_out"])
    net["controlnet_cond_embedding"] = hint
    for name in net:
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
            net[name] = jax.tree_util.tree_map(lambda x: 10.0 * x, net[name])
    return {"controlnet": net}


# ----------------------------------------------------------------------------------- references


def _alphas_cumprod(config_json: dict) -> np.ndarray:
    """SD's scaled_linear schedule, written here from the definition (float64)."""
    t = config_json["num_train_timesteps"]
    assert config_json["beta_schedule"] == "scaled_linear"
    betas = np.linspace(config_json["beta_start"] ** 0.5, config_json["beta_end"] ** 0.5, t) ** 2
    return np.cumprod(1 - betas)


def _reference_metrics(method, params, frozen, batch, rng, alpha=0.25, dk=5, ek=5):
    """mse, content and edge of one loss evaluation, computed outside the method: the random draws
    split as documented, the forward through the modules called directly, x0 and losses in numpy/OpenCV."""
    pipe = method.pipe
    schedule = json.loads((pipe.root / "scheduler" / "scheduler_config.json").read_text())
    ab = _alphas_cumprod(schedule)
    k_latent, k_noise, k_t = jax.random.split(rng, 3)
    vae = pipe.vae.module
    images = np.asarray(batch["image"])
    posterior = vae.apply({"params": frozen["vae"]}, jnp.asarray(images.transpose(0, 3, 1, 2)),
                          method=vae.encode).latent_dist
    z0 = np.asarray(posterior.sample(k_latent)) * vae.scaling_factor
    noise = np.asarray(jax.random.normal(k_noise, z0.shape))
    t = np.asarray(jax.random.randint(k_t, (z0.shape[0],), 0, 1000))
    a = ab[t][:, None, None, None]
    zt = (np.sqrt(a) * z0 + np.sqrt(1 - a) * noise).astype(np.float32)
    context = pipe.text_encoder.module.apply({"params": frozen["text_encoder"]},
                                             np.asarray(batch["input_ids"])).last_hidden_state
    fg, mask = np.asarray(batch["foreground"]), np.asarray(batch["mask"])
    cond = np.where(mask > 0.5, (fg + 1) / 2, -1.0).transpose(0, 3, 1, 2).astype(np.float32)
    tj = jnp.asarray(t)
    out = method.controlnet.apply({"params": params["controlnet"]}, zt, tj, context, cond)
    down, mid = out.down_block_res_samples, out.mid_block_res_sample
    eps = np.asarray(pipe.unet.module.apply({"params": frozen["unet"]}, zt, tj, context,
                                            down_block_additional_residuals=down,
                                            mid_block_additional_residual=mid).sample, np.float64)
    mse = np.mean((eps - noise) ** 2)
    x0 = ((zt - np.sqrt(1 - a) * eps) / np.sqrt(a)).astype(np.float32)
    decoded = np.asarray(vae.apply({"params": frozen["vae"]}, jnp.asarray(x0 / vae.scaling_factor),
                                   method=vae.decode).sample).transpose(0, 2, 3, 1).astype(np.float64)
    content, edge, edge_ungated = [], [], []
    for b in range(len(images)):
        m = mask[b, ..., 0].astype(np.float64)
        content.append(((decoded[b] - images[b]) ** 2 * m[..., None]).sum() / (3 * max(m.sum(), 1)))
        band = (cv2.dilate(m, np.ones((dk, dk))) - cv2.erode(m, np.ones((ek, ek))))
        lap_d = cv2.Laplacian(decoded[b].astype(np.float32), cv2.CV_32F, ksize=1)
        lap_x = cv2.Laplacian(images[b].astype(np.float32), cv2.CV_32F, ksize=1)
        value = ((lap_d.astype(np.float64) - lap_x) ** 2 * band[..., None]).sum() / (3 * max(band.sum(), 1))
        edge_ungated.append(value)
        edge.append(value if t[b] < alpha * 1000 else 0.0)
    return {"mse": mse, "content": np.mean(content), "edge": np.mean(edge)}, t, np.mean(edge_ungated)


# ---------------------------------------------------------------------------------------- tests


def test_loss_terms_match_independent_computation(anyscene):
    method, params, frozen, batch, _ = anyscene
    # A key whose two timesteps straddle alpha * T = 250: one sample gated in, one out.
    for seed in range(100):
        rng = jax.random.PRNGKey(seed)
        t = np.asarray(jax.random.randint(jax.random.split(rng, 3)[2], (2,), 0, 1000))
        if (t < 250).sum() == 1:
            break
    loss, metrics = jax.jit(method.loss)(params, frozen, batch, rng)
    ref, t, edge_ungated = _reference_metrics(method, params, frozen, batch, rng)
    print(f"t={t}; method { {k: float(v) for k, v in metrics.items()} }; reference {ref}")
    # Measured agreement: 2e-7 relative (float32 modules both ways; x0 and the losses in float64 here).
    for key in ("mse", "content", "edge"):
        np.testing.assert_allclose(float(metrics[key]), ref[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert abs(float(metrics["edge"]) - edge_ungated) > 1e-3 * edge_ungated, "the t < alpha T gate did not act"
    assert ref["edge"] > 0 and ref["content"] > 0
    np.testing.assert_allclose(float(loss), ref["mse"] + ref["content"] + ref["edge"], rtol=2e-5)
    assert float(metrics["edge_fraction"]) == 0.5
    # The conditioning is visible at this tolerance: without the foreground the reference moves by far more.
    blanked, _, _ = _reference_metrics(method, params, frozen, {**batch, "foreground": -jnp.ones_like(
        batch["foreground"])}, rng)
    moved = {k: abs(blanked[k] - ref[k]) / ref[k] for k in ref}
    print(f"relative change of each term without the foreground: {moved}")
    assert moved["mse"] > 100 * 2e-5, moved


class _Seen(Exception):
    """Raised by `_ControlNetSpy` with the conditioning image F_c was called with."""


class _ControlNetSpy:
    """Stands in for F_c's module: raises `_Seen(cond)` with the conditioning image of its first call, so
    the method's code up to F_c runs op by op (un-jitted), with nothing compiled past it."""

    def __init__(self, module):
        self.module = module

    def apply(self, variables, x, t, context, cond, **kwargs):
        raise _Seen(np.asarray(cond))


def _conditioning_seen(method, run) -> np.ndarray:
    method.controlnet = _ControlNetSpy(method.controlnet)
    try:
        run()
    except _Seen as seen:
        return seen.args[0]
    finally:
        method.controlnet = method.controlnet.module
    raise AssertionError("F_c was not called")


def test_the_controlnet_receives_the_conditioning_image_of_its_format(anyscene, tmp_path):
    """F_c's input, read at its call, against the image files: "inpaint" (the community ControlNet-Inpaint's
    format, diffusers' make_inpaint_condition) is the object's 8-bit RGB / 255 with every pixel to generate
    at -1; "signed" is the composite at (RGB / 127.5 - 1) with the canvas colour around the object. Training
    (the loss) and sampling (both classifier-free guidance halves) alike."""
    method, params, frozen, batch, _ = anyscene
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    cv2.rectangle(mask, (10, 14), (41, 50), 255, -1)
    cv2.imwrite(str(tmp_path / "fg.png"), rgb[..., ::-1])
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    foreground, union = anyscene_inference.read_foregrounds([str(tmp_path / "fg.png")], [str(tmp_path / "mask.png")])
    one = {"image": batch["image"][:1], "foreground": jnp.asarray(foreground[None]), "mask": jnp.asarray(union[None]),
           "input_ids": batch["input_ids"][:1]}
    inside = (mask > 127)[None]
    expected = {"inpaint": np.where(inside[..., None], rgb / 255.0, -1.0),
                "signed": np.where(inside[..., None], rgb / 127.5 - 1.0, -1.0)}  # read_foregrounds' canvas: black
    latents, t = jnp.zeros((1, 4, 8, 8)), jnp.array([500])  # the loss past `draw` (no VAE encode)
    cond_format = method.config.model.cond_format
    try:
        for fmt in ("inpaint", "signed"):
            method.config.model.cond_format = fmt
            training = _conditioning_seen(method, lambda: method.loss_terms(params, frozen, one, latents, latents, t))
            sampling = _conditioning_seen(method, lambda: method.sample(params, frozen, one, jax.random.PRNGKey(0),
                                                                        num_steps=1, guidance_scale=7.5))
            np.testing.assert_allclose(training.transpose(0, 2, 3, 1), expected[fmt], atol=1e-6, err_msg=fmt)
            assert sampling.shape == (2, 3, 64, 64)  # [uncond; cond]: both halves see the foreground
            for half in sampling:
                np.testing.assert_allclose(half.transpose(1, 2, 0), expected[fmt][0], atol=1e-6, err_msg=fmt)
    finally:
        method.config.model.cond_format = cond_format


def test_pixel_terms_skip_the_decode_when_weightless(anyscene):
    method, params, frozen, batch, _ = anyscene
    method.config.loss.update(content_weight=0.0, edge_weight=0.0)
    try:
        jaxpr = str(jax.make_jaxpr(method.loss)(params, frozen, batch, jax.random.PRNGKey(0)))
        _, metrics = jax.eval_shape(method.loss, params, frozen, batch, jax.random.PRNGKey(0))
    finally:
        method.config.loss.update(content_weight=1.0, edge_weight=1.0)
    full = str(jax.make_jaxpr(method.loss)(params, frozen, batch, jax.random.PRNGKey(0)))
    assert set(metrics) == {"mse"}
    # The decoder's conv_out is the only 128->3 conv: present with the pixel terms, absent without.
    assert full.count("conv_general_dilated") > jaxpr.count("conv_general_dilated")


def test_layout_control_zeroes_word_attention_outside_the_mask(anyscene):
    method, params, frozen, _, _ = anyscene
    prompt = "a red dog on the beach"
    tokens = token_positions(method.pipe.tokenizer, prompt, ["dog"])
    mask = np.zeros((1, 64, 64, 1), np.float32)
    mask[:, 12:40, 20:52] = 1
    batch = {"foreground": jnp.zeros((1, 64, 64, 3)), "mask": jnp.asarray(mask),
             "input_ids": jnp.asarray(method.tokenize([prompt]))}
    context = method._context(frozen, batch["input_ids"])
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 8, 8))
    t = jnp.array([500])
    cond = jnp.asarray(np.where(mask > 0.5, 0.5, -1.0).repeat(3, -1).transpose(0, 3, 1, 2), jnp.float32)

    def pooled(f):  # written independently: a cell of (8 f)^2 pixels is on if any of its pixels is
        side = 64 // (8 * f)
        return mask[0, ..., 0].reshape(side, 8 * f, side, 8 * f).max(axis=(1, 3))

    def maps(controlled):
        down, mid = method.residuals(params, x, t, context, cond)
        controls = method.layout_controls(batch, tokens) if controlled else ()
        captures = tuple(attention.CaptureCrossAttention(factor=f) for f in (1, 2))
        _, state = method.pipe.unet.module.apply(
            {"params": frozen["unet"]}, x, t, context, down_block_additional_residuals=tuple(down),
            mid_block_additional_residual=mid, mutable=[attention.CAPTURE_COLLECTION],
            attention=attention.AttentionContext(controls + captures, latent_hw=(8, 8)))
        return jax.tree_util.tree_leaves_with_path(state)

    layers = 0
    for (path, on), (_, off) in zip(maps(True), maps(False), strict=True):
        on, off = np.asarray(on)[0], np.asarray(off)[0]  # (h, w, N)
        factor = 8 // on.shape[0]
        outside = 1 - pooled(factor)  # the config's one rule: max pooling from pixels at every resolution
        mass_on = (on[..., tokens].sum(-1) * outside).sum()
        mass_off = (off[..., tokens].sum(-1) * outside).sum()
        print(f"{jax.tree_util.keystr(path)}: {on.shape[0]}x{on.shape[1]} outside-mask mass of 'dog' "
              f"{mass_off:.4f} -> {mass_on:.2e}")
        assert mass_on == 0.0 and mass_off > 1e-3
        if layers == 0:  # the first controlled layer (down_blocks_0): other tokens' maps are untouched
            others = [k for k in range(on.shape[-1]) if k not in tokens]
            np.testing.assert_allclose(on[..., others], off[..., others], atol=1e-6)
        layers += 1
    assert layers >= 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny AnyScene run of 60 steps through `jcompose.train` (the README quick-start's config, with EMA)."""
    from jcompose import train

    workdir = tmp_path_factory.mktemp("anyscene_run")
    train.train(run_config(), str(workdir))
    return workdir


@pytest.mark.slow
def test_training_lowers_heldout_masked_content_error(trained, tmp_path):
    """The README quick start's 60 steps lower the held-out masked content error at every timestep."""
    method = methods.build(get_config("tiny"))
    untrained, frozen = method.init(str(trained))  # the same base; F_c re-initialised as before training
    batch = heldout_batch(method, tmp_path / "heldout")
    errors = heldout_errors(method, frozen, [50, 200, 400, 600])
    (before, _), (after, _) = errors(untrained, batch), errors(latest_state(trained)["params"], batch)
    print(f"held-out masked content error at t=50/200/400/600: untrained {before.round(4)} "
          f"(mean {before.mean():.4f}) -> trained 60 steps {after.round(4)} (mean {after.mean():.4f})")
    assert after.mean() < 0.97 * before.mean()
    assert (after < before).all()


@pytest.mark.slow
def test_readme_compose_line_runs_after_the_quick_start(trained, tmp_path, monkeypatch):
    """The README's second quick-start line, as written, on the run the first line leaves."""
    from jcompose import compose

    run = str(trained)
    monkeypatch.chdir(tmp_path)
    written = compose.main(["anyscene", "--base", f"{run}/base/sd15", "--checkpoint", run,
                            "--foreground", f"{run}/example/fg.png", "--mask", f"{run}/example/mask.png",
                            "--prompt", "a dog on the beach", "--words", "dog", "--out", "result.png"])
    out = cv2.imread(str(tmp_path / "result.png"))
    assert written["step"] == 60 and out.shape == (64, 64, 3) and out.std() > 1
    mask = cv2.imread(f"{run}/example/mask.png", cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(mask)) == {0, 255}  # an object on a blank canvas, from the run's own data


@pytest.mark.slow
def test_compose_uses_the_checkpoint_params_and_ema(trained, tmp_path):
    """compose's image equals sampling with the checkpoint's params (or, with --ema, its EMA params)
    loaded here directly, and differs from the untrained F_c's."""
    from jcompose import compose

    base, run = str(trained / "base" / "sd15"), str(trained)
    args = ["anyscene", "--base", base, "--checkpoint", run, "--foreground", f"{run}/example/fg.png",
            "--mask", f"{run}/example/mask.png", "--prompt", "a red dog", "--steps", "2", "--blend", "none"]
    images = {}
    for name, extra in (("params", []), ("ema", ["--ema"])):
        written = compose.main(args + extra + ["--out", str(tmp_path / f"{name}.png")])
        images[name] = cv2.cvtColor(cv2.imread(written["image"]), cv2.COLOR_BGR2RGB).astype(int)

    state = latest_state(trained)
    config = get_config("")  # compose's method config, in compose's default float32
    config.compute_dtype = "float32"
    config.model.controlnet = ""  # the untrained baseline: F_c copied from the UNet encoder, as training starts
    method = AnySceneMethod(config)
    method.load_models(base)
    untrained = method.controlnet_params
    frozen = {"unet": method.pipe.unet.params, "vae": method.pipe.vae.params,
              "text_encoder": method.pipe.text_encoder.params}
    fg, mask = anyscene_inference.read_foregrounds([f"{run}/example/fg.png"], [f"{run}/example/mask.png"])
    batch = {"foreground": jnp.asarray(fg[None]), "mask": jnp.asarray(mask[None]),
             "input_ids": jnp.asarray(method.tokenize(["a red dog"]))}
    sample = jax.jit(lambda p, f, b, k: method.sample(p, f, b, k, num_steps=2, guidance_scale=7.5))

    def reference(controlnet):
        image = np.asarray(sample({"controlnet": controlnet}, frozen, batch, jax.random.PRNGKey(0))[0])
        return np.clip(np.round((image + 1) * 127.5), 0, 255).astype(int)

    candidates = {"params": reference(state["params"]["controlnet"]), "ema": reference(state["ema"]["controlnet"]),
                  "untrained": reference(untrained)}
    for name in ("params", "ema"):
        distance = {k: float(np.abs(images[name] - v).mean()) for k, v in candidates.items()}
        print(f"compose {name}: mean |difference| (of 255) to sampling with each param set: {distance}")
        # Equal (measured: 0.0), and far from the images of the other param sets (measured: 21-36).
        assert np.abs(images[name] - candidates[name]).max() <= 1, (name, distance)
        assert min(v for k, v in distance.items() if k != name) > 5, (name, distance)


def _poisson_reference(source, target, omega):
    """Perez et al. 2003, Eq. (7), solved directly (scipy, float64) per channel: for p in omega,
    4 f_p - sum_{q in N_p, q in omega} f_q = sum_{q in N_p} (g_p - g_q) + sum_{q in N_p, not in omega} f*_q;
    f = target outside omega. source g, target f*: (H, W, C); omega: (H, W) bool, off the image frame."""
    from scipy.sparse import lil_matrix
    from scipy.sparse.linalg import spsolve

    index = -np.ones(omega.shape, int)
    points = np.argwhere(omega)
    index[omega] = np.arange(len(points))
    system = lil_matrix((len(points), len(points)))
    rhs = np.zeros((len(points), source.shape[-1]))
    for i, (y, x) in enumerate(points):
        system[i, i] = 4
        for qy, qx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            rhs[i] += source[y, x] - source[qy, qx]
            if omega[qy, qx]:
                system[i, index[qy, qx]] = -1
            else:
                rhs[i] += target[qy, qx]
    result = target.copy()
    result[omega] = spsolve(system.tocsr(), rhs)
    return result


@pytest.mark.slow
def test_compose_end_to_end(trained, tmp_path):
    from jcompose import compose

    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (30, 32), 14, 255, -1)
    cv2.imwrite(str(tmp_path / "fg.png"), image)
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    base = str(trained / "base" / "sd15")
    common = ["anyscene", "--base", base, "--checkpoint", str(trained / "checkpoints" / "60"), "--foreground",
              str(tmp_path / "fg.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", "a red dog on the beach",
              "--words", "dog", "--steps", "2"]
    # compose's steps with the model loaded once for the three blends, so its sampler is traced once (the
    # command line itself: test_readme_compose_line_runs_after_the_quick_start)
    parse = compose.build_parser().parse_args
    loaded = anyscene_inference.load_anyscene(parse(common + ["--out", str(tmp_path / "out.png")]))

    def compose_once(extra):
        return anyscene_inference.run_anyscene(loaded, anyscene_inference.read_request(parse(common + extra)))

    written = compose_once(["--show-attention", "--out", str(tmp_path / "out.png")])
    out = cv2.imread(written["image"])
    grid = cv2.imread(written["attention"])
    assert out.shape == (64, 64, 3) and grid.shape == (64, 128, 3) and out.std() > 1
    # The default blend is Poisson inside the mask eroded by sample.blend_erode (7): outside that region the
    # result is the generated scene itself, inside it the float64 sparse solve of Perez's equations below.
    written = compose_once(["--blend", "none", "--out", str(tmp_path / "none.png")])
    scene = cv2.imread(written["image"])
    omega = cv2.erode((mask > 127).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    omega[[0, -1], :] = omega[:, [0, -1]] = False
    assert 300 < omega.sum() < (mask > 127).sum()
    np.testing.assert_array_equal(out[~omega], scene[~omega])
    source = image.astype(np.float64) / 127.5 - 1  # fg.png as cv2 reads it, in the BGR order of out and scene
    reference = _poisson_reference(source, scene.astype(np.float64) / 127.5 - 1, omega)
    reference = np.clip(np.round((np.clip(reference, -1, 1) + 1) * 127.5), 0, 255)
    # 1/255: the reference's boundary values are the written 8-bit scene, compose's the float one.
    print(f"Poisson blend inside the eroded mask ({omega.sum()} px): max |compose - reference| "
          f"{np.abs(out.astype(int) - reference)[omega].max():.0f}/255; mean |compose - scene| "
          f"{np.abs(out.astype(int) - scene)[omega].mean():.1f}, |compose - object| {np.abs(out.astype(int) - image)[omega].mean():.1f}")
    assert np.abs(out.astype(int) - reference)[omega].max() <= 1
    assert np.abs(out.astype(int) - scene)[omega].mean() > 5  # blended: neither the scene ...
    assert np.abs(out.astype(int) - image)[omega].mean() > 5  # ... nor the pasted object
    written = compose_once(["--blend", "paste", "--out", str(tmp_path / "paste.png")])
    pasted = cv2.cvtColor(cv2.imread(written["image"]), cv2.COLOR_BGR2RGB)
    inside = mask > 127
    assert np.abs(pasted[inside].astype(int) - image[..., ::-1][inside]).max() <= 1  # cv2 wrote BGR
    # A benchmark folder, generated in batches (3 pairs, batches of 2) under the names the evaluator pairs.
    coco = trained / "data" / "coco"
    anyscene_benchmark.main(["--image_dir", str(coco / "images"), "--instances_json",
                             str(coco / "annotations/instances.json"), "--captions_json",
                             str(coco / "annotations/captions.json"), "--num", "3", "--size", "64",
                             "--out", str(tmp_path / "bench")])
    written = compose.main(["anyscene", "--base", base, "--checkpoint", str(trained), "--benchmark",
                            str(tmp_path / "bench"), "--batch_size", "2", "--steps", "2", "--blend", "paste",
                            "--out", str(tmp_path / "generated")])
    assert written["count"] == 3
    for name in ("00000", "00001", "00002"):
        image = cv2.imread(str(tmp_path / "generated" / f"{name}.png"))
        fg = cv2.imread(str(tmp_path / "bench" / "foregrounds" / f"{name}.png"))
        inside = cv2.imread(str(tmp_path / "bench" / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 127
        assert image.shape == (64, 64, 3)
        np.testing.assert_array_equal(image[inside], fg[inside])


# --------------------------------------------------------------------------------- benchmark set


def test_benchmark_construction(tmp_path):
    truth = write_synthetic(tmp_path / "data", num_images=6, num_videos=1, num_frames=2, image_size=(48, 64))
    coco = truth.coco_dir
    argv = ["--image_dir", str(coco / "images"), "--instances_json", str(coco / "annotations/instances.json"),
            "--captions_json", str(coco / "annotations/captions.json"), "--num", "4", "--size", "32",
            "--min_object_area", "0.005", "--seed", "3"]
    summary = anyscene_benchmark.main(argv + ["--out", str(tmp_path / "a")])
    anyscene_benchmark.main(argv + ["--out", str(tmp_path / "b")])
    assert summary["pairs"] == 4
    prompts = json.loads((tmp_path / "a" / "prompts.json").read_text())
    assert sorted(prompts) == [f"{i:05d}" for i in range(4)]
    all_captions = {c for record in truth.images for c in record["captions"]}
    for name, caption in prompts.items():
        assert caption in all_captions
        fg, ref, mask = (cv2.imread(str(tmp_path / "a" / sub / f"{name}.png"), cv2.IMREAD_UNCHANGED)
                         for sub in ("foregrounds", "reference", "masks"))
        assert fg.shape == ref.shape == (32, 32, 3) and mask.shape == (32, 32)
        on = mask == 255
        assert on.any() and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(fg[on], ref[on])  # objects copied from the scene
        assert (fg[~on] == 0).all()  # the blank canvas
        for sub in ("foregrounds", "reference", "masks"):  # a fixed seed gives the same files
            assert (tmp_path / "a" / sub / f"{name}.png").read_bytes() == (tmp_path / "b" / sub /
                                                                           f"{name}.png").read_bytes()
    rows = (tmp_path / "a" / "pairs.csv").read_text().splitlines()
    assert rows[0] == "name,source,caption" and len(rows) == 5
    more = anyscene_benchmark.main(argv[:-2] + ["--seed", "3", "--num", "50", "--out", str(tmp_path / "c")])
    assert more["pairs"] + more["skipped"] == 6  # the source ran out: every image used or skipped
