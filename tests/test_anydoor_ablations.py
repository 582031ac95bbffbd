"""AnyDoor's ablation options (paper Tables 3 and 4, Sec. 4.3) and their sweep files.

What the model sees is compared with arrays built by hand from the record (a window of the photo, the
object's pixels, patches, noise statistics); the CLIP ID tokens with transformers' PyTorch CLIPModel on
the same random weights; the global DINOv2 token with the DINOv2 module called directly. A training step
runs for every data variant (one compiled program: the default's, which tests/test_anydoor.py compiles
too) and is traced for every ID-extractor variant (one program each).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.anydoor import get_config
from input_pipeline import anydoor as anydoor_data
from input_pipeline.anydoor_collage import COLLAGE_KINDS
from jcompose import sweep
from jcompose.methods import anydoor, anydoor_id
from jcompose.methods import anydoor_inference as inference
from jcompose.models import tiny
from jcompose.models.diffusers_config import ConfigError
from jcompose.sweeps.spec import resolved_config

# The hand-built record: no resize anywhere, so every pixel the transform writes is checkable.
# Reference object: an ellipse in the 40 x 32 box [60, 100) x [64, 96) of a 240-px photo; the released 1.2x
# pad (48 x 38) squared makes the 48-px window [56, 104)^2 = the reference side. Target box [78, 121)^2 ->
# 1.1x = [75, 123)^2 (48 px) -> 2.0x crop [51, 147)^2 (96 px) = the collage side.
REF_SIZE, SIZE, WINDOW = 48, 96, (56, 104, 56, 104)
EXACT = dict(size=SIZE, ref_size=REF_SIZE, augment=False, ref_expand_tenths=(12, 13), crop_expand_tenths=(20, 21))


def _record(seed=0, ref_origin=60):
    rng = np.random.default_rng(seed)
    photo = rng.integers(40, 201, (240, 240, 3), dtype=np.uint8)   # background: never white, never black
    yy, xx = np.mgrid[:240, :240]
    c = ref_origin + 19.5
    mask = (((yy - c) / 20) ** 2 + ((xx - c) / 16) ** 2 <= 1).astype(np.uint8)  # [o, o+40) x [o+4, o+36)
    photo[mask > 0] = rng.integers(90, 166, (int(mask.sum()), 3), dtype=np.uint8)  # object: x in [-0.3, 0.3]
    target = rng.integers(40, 201, (240, 240, 3), dtype=np.uint8)
    target_mask = np.zeros((240, 240), np.uint8)
    target_mask[78:121, 78:121] = 1
    return {"reference_image": photo, "reference_mask": mask, "target_image": target, "target_mask": target_mask,
            "dynamic": True, "source": "mem://pair"}


def _box(example):
    """The collage's target box (the mask channel is the box without augmentation): RGB in [-1, 1]."""
    rows, cols = np.flatnonzero((example["collage"][..., 3] == 1).any(1)), np.flatnonzero(
        (example["collage"][..., 3] == 1).any(0))
    assert rows[-1] - rows[0] + 1 == cols[-1] - cols[0] + 1 == REF_SIZE  # the map is pasted unresized
    return example["collage"][rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1, :3]


def _signed(uint8):
    return uint8.astype(np.float32) / 127.5 - 1.0


def _window(record, key):
    y0, y1, x0, x1 = WINDOW
    return record[key][y0:y1, x0:x1]


@pytest.fixture(scope="module")
def by_kind():
    record = _record()
    return record, {kind: anydoor_data.make_transform(**EXACT, collage=kind)(record, np.random.default_rng(1))
                    for kind in COLLAGE_KINDS}


# ------------------------------------------------------------------------------------ Table 4


def test_each_collage_kind_puts_its_map_in_the_box(by_kind):
    record, ex = by_kind
    photo, inside = _window(record, "reference_image"), _window(record, "reference_mask")[..., None] > 0
    obj = np.where(inside, photo, 0)                                    # the object with no background, on black
    np.testing.assert_array_equal(ex["none"]["reference"], _signed(np.where(inside, photo, 255)))  # on white
    np.testing.assert_array_equal(_box(ex["none"]), -1.0)               # all-zero map
    np.testing.assert_array_equal(_box(ex["object"]), _signed(obj))     # the object's own pixels
    # the HF map: edges of the textured object only (zero where the photo is flat white or outside)
    hf = _box(ex["hf_map"])
    assert ((hf > -1).any(-1) <= inside[..., 0]).all() and (hf > -1).mean() > 0.05
    # shuffle: the object's 12-px patches (grid 4), every one used once, in another order
    def patches(image):
        return [image[i:i + 12, j:j + 12].tobytes() for i in range(0, 48, 12) for j in range(0, 48, 12)]

    shuffled, original = patches(_box(ex["shuffle"])), patches(_signed(obj))
    assert sorted(shuffled) == sorted(original) and shuffled != original
    # the rest of the example is the same for every kind (one seed, one geometry)
    for kind in COLLAGE_KINDS:
        for key in ("reference", "target", "crop_box", "sizes"):
            np.testing.assert_array_equal(ex[kind][key], ex["hf_map"][key], err_msg=f"{kind} {key}")
        np.testing.assert_array_equal(ex[kind]["collage"][..., 3], ex["hf_map"]["collage"][..., 3])
        outside = ex[kind]["collage"][..., 3] != 1
        np.testing.assert_array_equal(ex[kind]["collage"][..., :3][outside], ex["hf_map"]["collage"][..., :3][outside])


def test_noise_collage_is_the_forward_diffused_object():
    """sqrt(a) x + sqrt(1 - a) eps inside the object (eps ~ N(0, 1): mean 0, std 1, uncorrelated with x),
    black outside; a = 1 is the object itself."""
    record = _record()
    inside = _window(record, "reference_mask") > 0
    x = _signed(_window(record, "reference_image"))[inside]
    plain = _box(anydoor_data.make_transform(**EXACT, collage="object")(record, np.random.default_rng(1)))
    same = _box(anydoor_data.make_transform(**EXACT, collage="noise", collage_noise_alpha_bar=1.0)(
        record, np.random.default_rng(1)))
    np.testing.assert_array_equal(same, plain)
    a = 0.9
    t = anydoor_data.make_transform(**EXACT, collage="noise", collage_noise_alpha_bar=a)
    boxes = np.stack([_box(t(record, np.random.default_rng(s))) for s in range(16)])
    np.testing.assert_array_equal(boxes[:, ~inside], -1.0)
    xs = np.broadcast_to(x, boxes[:, inside].shape)
    slope = np.polyfit(xs.ravel(), boxes[:, inside].ravel(), 1)[0]
    residual = (boxes[:, inside] - np.sqrt(a) * xs) / np.sqrt(1 - a)
    print(f"noise: slope on x {slope:.4f} (sqrt(a) = {np.sqrt(a):.4f}); eps mean {residual.mean():.3f} std "
          f"{residual.std():.3f}")
    assert abs(slope - np.sqrt(a)) < 0.025 and abs(residual.mean()) < 0.03 and abs(residual.std() - 1) < 0.05
    assert not np.array_equal(boxes[0], boxes[1])  # the draw is the example's own


def test_collage_kinds_share_the_training_geometry():
    """With augmentation (flip, brightness, crop zoom, mask perturbation) every kind draws the same geometry:
    the map's own draws come last."""
    record = _record(3)
    out = {kind: anydoor_data.make_transform(size=128, ref_size=56, collage=kind)(record, np.random.default_rng(7))
           for kind in COLLAGE_KINDS}
    for kind in COLLAGE_KINDS:
        for key in ("reference", "target", "crop_box", "sizes"):
            np.testing.assert_array_equal(out[kind][key], out["hf_map"][key], err_msg=f"{kind} {key}")
        np.testing.assert_array_equal(out[kind]["collage"][..., 3], out["hf_map"]["collage"][..., 3])
    assert not np.array_equal(out["object"]["collage"], out["none"]["collage"])


# ------------------------------------------------------------------------------------ Table 3


@pytest.mark.parametrize("origin", [60, 2])
def test_reference_keeps_its_background_without_removal(origin):
    """remove_background=False: the reference is the same 48-px window of the photo (white past its edge);
    the collage (the detail extractor's input) is the one made from the object on white."""
    record = _record(ref_origin=origin)
    y0, y1, x0, x1 = (v + origin - 60 for v in WINDOW)
    padded = np.pad(record["reference_image"], ((48, 48), (48, 48), (0, 0)), constant_values=255)  # by hand
    want = padded[y0 + 48:y1 + 48, x0 + 48:x1 + 48]
    kept = anydoor_data.make_transform(**EXACT, remove_background=False)(record, np.random.default_rng(1))
    removed = anydoor_data.make_transform(**EXACT)(record, np.random.default_rng(1))
    np.testing.assert_array_equal(kept["reference"], _signed(want))
    assert (want == 255).all(-1).any() == (origin == 2)  # the second case leaves the photo
    np.testing.assert_array_equal(kept["collage"], removed["collage"])
    # augmented: the same flip and brightness as the object on white (equal on the object's pixels)
    t = {flag: anydoor_data.make_transform(size=SIZE, ref_size=REF_SIZE, ref_expand_tenths=(12, 13),
                                           remove_background=flag) for flag in (True, False)}
    inside = np.pad(record["reference_mask"], 48)[y0 + 48:y1 + 48, x0 + 48:x1 + 48] > 0  # symmetric left-right
    flips, whites = set(), set()
    for seed in range(6):
        white, photo = (t[flag](record, np.random.default_rng(seed))["reference"] for flag in (True, False))
        np.testing.assert_array_equal(photo[inside], white[inside])
        assert not np.array_equal(photo[~inside], white[~inside])  # the photo's background, not white
        as_is, mirrored = (np.corrcoef(photo.ravel(), _signed(w).ravel())[0, 1] for w in (want, want[:, ::-1]))
        flips.add(bool(mirrored > as_is))
        whites.add(float(white[~inside].max()))
    assert flips == {True, False} and len(whites) > 1  # both flips and several brightness draws were seen


# ------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("field, value, message", [
    ("data.collage", "hf", r"config.data.collage = 'hf': expected one of \('hf_map', 'none'"),
    ("model.id_encoder", "vgg", r"config.model.id_encoder = 'vgg': expected one of \('dinov2', 'clip'\)"),
    ("model.id_tokens", "patch", r"config.model.id_tokens = 'patch'"),
    ("data.collage_shuffle_grid", 5, r"collage_shuffle_grid = 5: expected a positive divisor of the reference side 224"),
    ("loss.uniform_probability", 1.5, r"config.loss.uniform_probability = 1.5: expected a share in \[0, 1\]"),
])
def test_ablation_fields_are_checked(field, value, message):
    config = get_config("tiny")
    section, name = field.split(".")
    config[section][name] = value
    if field == "data.collage_shuffle_grid":
        config.data.collage = "shuffle"
    with pytest.raises(ConfigError, match=message):
        anydoor.AnyDoorMethod(config)


def test_training_and_compose_build_the_configured_collage():
    """The method's training transform and compose's inference transform both read config.data (compose gets
    the run's stored config): an "object" run without background removal composes with both."""
    config = get_config("tiny")
    config.data.update(collage="object", remove_background=False, image_size=SIZE, reference_size=REF_SIZE)
    config.sample.update(ref_expand_tenths=(12, 13), crop_expand_tenths=(20, 21), collage_mask="training")
    method = anydoor.AnyDoorMethod(config)
    record = _record()
    obj = inference.ObjectInput(record["reference_image"], record["reference_mask"], record["target_mask"])
    composed = inference.prepare_example(inference.inference_transform(method), obj, record["target_image"], 1)
    photo, inside = _window(record, "reference_image"), _window(record, "reference_mask")[..., None] > 0
    np.testing.assert_array_equal(_box(composed), _signed(np.where(inside, photo, 0)))
    np.testing.assert_array_equal(composed["reference"], _signed(photo))
    trained = method.make_transform(augment=False, ref_expand_tenths=(12, 13), crop_expand_tenths=(20, 21))
    np.testing.assert_array_equal(trained(record, np.random.default_rng(1))["collage"], composed["collage"])


def test_uniform_timesteps_ignore_the_data_type():
    """loss.uniform_probability = 1.0 is the paper's "even distribution sampler": videos (dynamic 1) and images
    (dynamic 0) alike draw t uniformly from [0, 1000)."""
    from jcompose import diffusion

    for dynamic in (0, 1):
        t = np.asarray(diffusion.adaptive_timesteps(jax.random.PRNGKey(dynamic), jnp.full((100_000,), dynamic),
                                                    1000, 1.0))
        assert abs((t < 500).mean() - 0.5) < 0.01 and t.min() == 0 and t.max() == 999
        assert abs(np.histogram(t, bins=10, range=(0, 1000))[0] / 1e4 - 1).max() < 0.05


# ---------------------------------------------------------------------------------- ID tokens


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_bases):
    """Tiny base, DINOv2 and CLIP (msgpack for jcompose, safetensors for transformers) in one workdir."""
    workdir = tmp_path_factory.mktemp("anydoor_ablations")
    clip_folder = anydoor_id.write_tiny_clip(workdir / "clip_both", 3, formats=("msgpack", "safetensors"))
    built = {}

    def build(encoder="dinov2", tokens="global_patch"):
        if (encoder, tokens) not in built:
            config = get_config("tiny")
            config.model.update(id_encoder=encoder, id_tokens=tokens, clip=str(clip_folder), base=str(tiny_bases["sd21-base"]))
            method = anydoor.AnyDoorMethod(config)
            built[encoder, tokens] = (method, *method.init(str(workdir)))
        return built[encoder, tokens]

    return build, clip_folder, workdir


def _references(n=2):
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)


def test_global_token_is_the_projected_dinov2_cls(models):
    build = models[0]
    method, params, frozen = build("dinov2", "global")
    assert "dinov2" in frozen and params["projector"]["kernel"].shape == (32, 64)
    images = _references()
    pixels = ((images / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32)
    tokens, features = jax.jit(lambda: (method.id_tokens(params, frozen, jnp.asarray(_signed(images))),
                                        method.dinov2.apply({"params": frozen["dinov2"]}, pixels).last_hidden_state))()
    assert features.shape == (2, 257, 32)  # CLS + 16 x 16 patches
    want = np.asarray(features)[:, 0] @ np.asarray(params["projector"]["kernel"]) + np.asarray(params["projector"]["bias"])
    tokens = np.asarray(tokens)
    assert tokens.shape == (2, 1, 64)
    np.testing.assert_allclose(tokens[:, 0], want, atol=1e-5)


@pytest.mark.parity
def test_clip_tokens_match_transformers_clip(models):
    """Released FrozenOpenCLIPImageEncoder, restated on transformers' CLIPModel: [image embedding -> projector
    embed; post-LayerNorm patch tokens -> projector token], CLIP's normalisation by CLIPImageProcessor."""
    torch = pytest.importorskip("torch", reason="parity tests need the parity extra: pip install -e '.[parity]'")
    transformers = pytest.importorskip("transformers")
    build, clip_folder, _ = models
    method, params, frozen = build("clip", "global_patch")
    assert set(frozen) == {"clip", "unet_encoder", "vae"}
    images = _references()
    tokens = np.asarray(jax.jit(method.id_tokens)(params, frozen, jnp.asarray(_signed(images))))

    model = transformers.CLIPModel.from_pretrained(clip_folder).eval()
    processor = transformers.CLIPImageProcessor(do_resize=False, do_center_crop=False)
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embed = model.get_image_features(pixel_values=pixels)
        embed = getattr(embed, "pooler_output", embed)  # transformers 5 may wrap it
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state
        patches = model.vision_model.post_layernorm(hidden[:, 1:])
    proj = jax.tree_util.tree_map(np.asarray, params["projector"])
    want = np.concatenate([embed.numpy()[:, None] @ proj["embed"]["kernel"] + proj["embed"]["bias"],
                           patches.numpy() @ proj["token"]["kernel"] + proj["token"]["bias"]], axis=1)
    assert tokens.shape == want.shape == (2, 257, 64) and embed.shape[-1] == 24 and patches.shape[-1] == 32
    error = float(np.abs(tokens - want).max())
    print(f"max |jcompose - transformers CLIP tokens| {error:.1e} (scale {np.abs(want).max():.2f})")
    assert error < 1e-4
    # "global": the image-embedding token alone, and no patch projector to train
    single, p1, f1 = build("clip", "global")
    assert set(p1["projector"]) == {"embed"}
    one = np.asarray(jax.jit(single.id_tokens)(p1, f1, jnp.asarray(_signed(images))))  # same seed: the same embed layer
    assert one.shape == (2, 1, 64)
    np.testing.assert_allclose(one[:, 0], want[:, 0], atol=1e-4)


def test_clip_needs_its_image_size(models):
    _, clip_folder, workdir = models
    config = get_config("tiny")
    config.model.update(id_encoder="clip", clip=str(clip_folder))
    config.data.reference_size = 112
    with pytest.raises(ConfigError, match=r"clip_both/config.json: vision_config.image_size = 224, but "
                                          r"config.data.reference_size = 112.*--config.data.reference_size=224"):
        anydoor.AnyDoorMethod(config).init(str(workdir))


# ------------------------------------------------------------------------------ training steps


def test_a_training_step_runs_for_every_data_variant(models):
    """The collage kinds and the kept background share the default program (compiled once): on the same
    targets, noise and timesteps, each variant's batch changes the loss (random extractor weights, so its
    residuals are live) and trains the extractor."""
    build = models[0]
    method, params, frozen = build()
    params = jax.tree_util.tree_map(jnp.asarray, tiny.random_params(jax.eval_shape(lambda: params), 11))
    records = [_record(seed) for seed in (4, 5)]  # textured objects: their HF maps are not empty
    step = jax.jit(jax.value_and_grad(method.loss, argnums=(0, 1), has_aux=True))
    variants = {kind: dict(collage=kind) for kind in COLLAGE_KINDS} | {"photo": dict(remove_background=False)}
    losses = {}
    for name, overrides in variants.items():
        transform = method.make_transform(**overrides)
        examples = [transform(r, np.random.default_rng(i)) for i, r in enumerate(records)]  # one geometry per seed
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}  # as the input pipeline batches them
        (loss, _), (grads, _) = step(params, frozen, batch, jax.random.PRNGKey(0))
        extractor = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads["extractor"]))
        assert np.isfinite(float(loss)) and extractor > 0, name
        losses[name] = float(loss)
    print("loss per data variant:", {k: round(v, 6) for k, v in losses.items()})
    assert len(set(losses.values())) == len(losses)


def test_a_training_step_traces_with_a_new_id_extractor(models):
    """Traced only: CLIP's global token alone, the variant that holds both new parts of the step (a one-token
    context, which DINOv2 (G) has too; the CLIP tree and projector, which CLIP (G+P) has with the default's
    257 tokens; their values are checked above): the context has one token and the projector trains."""
    method, params, frozen = models[0]("clip", "global")
    batch = {"reference": np.zeros((2, 224, 224, 3), np.float32), "target": np.zeros((2, 64, 64, 3), np.float32),
             "collage": np.zeros((2, 64, 64, 4), np.float32), "dynamic": np.zeros((2,), np.int32)}
    step = jax.jit(jax.value_and_grad(method.loss, argnums=0, has_aux=True))
    traced = step.trace(params, frozen, batch, jax.random.PRNGKey(0))
    grads = jax.tree_util.tree_map(lambda s: s.shape, traced.out_info[1])
    assert grads["projector"] == jax.tree_util.tree_map(jnp.shape, params["projector"])
    context = jax.eval_shape(method.id_tokens, params, frozen, batch["reference"])
    assert context.shape == (2, 1, 64) and set(frozen) == {"clip", "unet_encoder", "vae"}


# --------------------------------------------------------------------------------- sweep files


@pytest.mark.parametrize("name, rows", [
    ("anydoor_id_extractor.py", {"dinov2-gp-seg": (82.1, 67.8), "dinov2-gp": (81.0, 64.1), "dinov2-g": (73.1, 35.4),
                                 "clip-gp": (73.8, 31.5)}),
    ("anydoor_collage.py", {"none": (80.4, 63.2), "object": (82.2, 68.8), "noise": (81.6, 68.1),
                            "shuffle": (82.0, 66.9), "hf-map": (82.1, 67.8), "uniform-timesteps": None}),
])
def test_sweep_files_list_the_papers_rows(name, rows, monkeypatch, capsys, tmp_path):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert sweep.main(["list", f"--sweep=configs/sweeps/{name}", f"--root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    for spec, config_name in ((f"configs/sweeps/{name}", "configs/anydoor.py:paper"),
                              (f"configs/sweeps/{name}:tiny", "configs/anydoor.py:tiny")):
        loaded = sweep.load_sweep(spec)
        assert loaded.config == config_name and set(loaded.variants) == set(rows)
        for variant in loaded.variants.values():
            published = rows[variant.name]
            assert variant.paper == ({} if published is None else {"CLIP-I": published[0], "DINO": published[1]})
            # every row's values are accepted by the method (the sweep itself checks the field names)
            anydoor.AnyDoorMethod(resolved_config(loaded.config, loaded.overrides(variant)))
        assert len(loaded.training_runs()) == len(rows)  # every row trains its own model
    for variant in rows:
        assert f"trial {variant}" in out
    assert out.count("python -m jcompose.compose anydoor") == len(rows)
