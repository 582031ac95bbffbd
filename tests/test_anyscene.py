"""AnyScene: loss wiring vs an independent numpy/OpenCV computation, the learning signal, compose from
the trained run (checkpoint and EMA params, the Poisson blend). Its inputs (conditioning formats, layout
control, the benchmark set): tests/test_anyscene_inputs.py.

Everything runs on the tiny random SD 1.5 (`configs/anyscene.py:tiny`) at 64 px or less.
"""

import json

import cv2
import jax
import jax.numpy as jnp
import module_calls
import numpy as np
import pytest
from anyscene_runs import heldout_batch, heldout_errors, latest_state, run_config, tiny_anyscene

from configs.anyscene import get_config
from input_pipeline import anyscene_benchmark
from jcompose import methods
from jcompose.methods import anyscene_inference
from jcompose.methods.anyscene import AnySceneMethod


@pytest.fixture(scope="module")
def anyscene(tmp_path_factory):
    """(method, params with live conditioning, frozen, batch of 2 at 64 px, workdir): anyscene_runs.tiny_anyscene."""
    return tiny_anyscene(tmp_path_factory.mktemp("anyscene"))


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
    z0 = np.asarray(module_calls.vae_sample(vae)(frozen["vae"], jnp.asarray(images.transpose(0, 3, 1, 2)), k_latent))
    z0 = z0 * vae.scaling_factor
    noise = np.asarray(jax.random.normal(k_noise, z0.shape))
    t = np.asarray(jax.random.randint(k_t, (z0.shape[0],), 0, 1000))
    a = ab[t][:, None, None, None]
    zt = (np.sqrt(a) * z0 + np.sqrt(1 - a) * noise).astype(np.float32)
    context = module_calls.text_states(pipe.text_encoder.module)(frozen["text_encoder"], np.asarray(batch["input_ids"]))
    fg, mask = np.asarray(batch["foreground"]), np.asarray(batch["mask"])
    cond = np.where(mask > 0.5, (fg + 1) / 2, -1.0).transpose(0, 3, 1, 2).astype(np.float32)
    tj = jnp.asarray(t)

    @jax.jit
    def controlled_unet(controlnet, unet, zt, tj, context, cond):
        out = method.controlnet.apply({"params": controlnet}, zt, tj, context, cond)
        return pipe.unet.module.apply({"params": unet}, zt, tj, context,
                                      down_block_additional_residuals=out.down_block_res_samples,
                                      mid_block_additional_residual=out.mid_block_res_sample).sample

    eps = np.asarray(controlled_unet(params["controlnet"], frozen["unet"], zt, tj, context, cond), np.float64)
    mse = np.mean((eps - noise) ** 2)
    x0 = ((zt - np.sqrt(1 - a) * eps) / np.sqrt(a)).astype(np.float32)
    decoded = module_calls.vae_decode(vae)(frozen["vae"], jnp.asarray(x0 / vae.scaling_factor))
    decoded = np.asarray(decoded).transpose(0, 2, 3, 1).astype(np.float64)
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
