"""jcompose's own CLIP / ViT / DINOv2 modules (models/clip.py, vit.py, encoders.py).

* parity: transformers PyTorch builds and randomises each model (N(0, 0.02^2) on every
  parameter), `save_pretrained` writes safetensors, jcompose loads it torch-free, both run;
* export: jcompose writes, transformers PyTorch `from_pretrained` loads;
* bad input: errors name the file and the key.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jcompose.models import clip, encoders, tiny, vit
from jcompose.models.diffusers_config import ConfigError
from jcompose.models.pt_layout import LayoutError

ATOL = 1e-4
VOCAB = 300  # tiny CLIP text vocab: ids 298 (BOS) and 299 (EOS) as tiny.text_encoder_config sets


def _torch():
    torch = pytest.importorskip("torch", reason="parity tests need the parity extra: pip install -e '.[parity]'")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    return torch


def _randomise(model, seed):
    torch = _torch()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return model.eval()


def _err(ours, theirs) -> float:
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs)
    ours = np.asarray(ours, np.float64)
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max())


def _features(out):
    # transformers 5 returns a ModelOutput from get_*_features (projected features in pooler_output)
    return out if hasattr(out, "detach") else out.pooler_output


def _nchw(pixels):
    return _torch().from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))


def _text_inputs(rng, eos=VOCAB - 1):
    ids = rng.integers(0, VOCAB - 2, size=(2, tiny.CONTEXT_TOKENS))
    ids[:, 0], ids[0, 9], ids[1, 5], ids[1, 12] = VOCAB - 2, eos, eos, eos  # row 1: pooled at the first EOS
    mask = np.ones_like(ids)
    mask[1, 13:] = 0  # right padding
    return ids, mask


def _tiny_clip_config(eos=98):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 16, "eos_token_id": eos},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8, "hidden_act": "gelu"},
        projection_dim=24)


def _vit_config(**kw):
    from transformers import ViTConfig

    return ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                     patch_size=8, layer_norm_eps=1e-6, **kw)


def _as_transformers(config, cls_name):
    """A jcompose config dataclass as the transformers config class of the same fields."""
    import transformers

    fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures")}
    return getattr(transformers, cls_name)(**fields)


def _dinov2_config(swiglu=True, **kw):
    """The tiny DINOv2 as a transformers config; the LayerNorm epsilon is transformers' own default (1e-6,
    DINOv2's), not jcompose's, unless given."""
    config = _as_transformers(dataclasses.replace(tiny.dinov2_config(), use_swiglu_ffn=swiglu), "Dinov2Config")
    import transformers

    fields = {**config.to_dict(), "layer_norm_eps": transformers.Dinov2Config().layer_norm_eps, **kw}
    return transformers.Dinov2Config(**{k: v for k, v in fields.items() if k not in ("model_type", "architectures")})


def _text_config(base, **kw):
    return _as_transformers(dataclasses.replace(tiny.text_encoder_config(base, VOCAB), **kw), "CLIPTextConfig")


# ------------------------------------------------------------------------------------ parity


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["sd15", "sd21-base", "legacy-eos"])
def test_clip_text_matches_transformers_pytorch(variant, tmp_path, rng):
    """quick_gelu 32-d (SD 1.5), gelu 64-d (SD 2.x), and eos_token_id 2: the legacy argmax-id pooling."""
    from transformers import CLIPTextModel

    legacy = variant == "legacy-eos"
    config = _text_config("sd15" if legacy else variant, **({"eos_token_id": 2} if legacy else {}))
    ids, mask = _text_inputs(rng)
    if legacy:
        ids[:, 0], ids[0, 4], ids[1, 11] = 0, VOCAB - 1, VOCAB - 1  # the largest id is pooled
    pt = _randomise(CLIPTextModel(config), 4)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    text = encoders.load_clip_text(tmp_path)
    torch = _torch()
    for m in (None, mask):
        with torch.no_grad():
            want = pt(torch.from_numpy(ids), attention_mask=None if m is None else torch.from_numpy(m))
        got = text.module.apply({"params": text.params}, ids, m)
        assert _err(got.last_hidden_state, want.last_hidden_state) < ATOL
        assert _err(got.pooler_output, want.pooler_output) < ATOL


@pytest.mark.parity
def test_clip_features_match_transformers_pytorch(tmp_path, rng):
    from transformers import CLIPModel

    torch = _torch()
    pt = _randomise(CLIPModel(_tiny_clip_config()), 6)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    model = encoders.load_clip(tmp_path)
    ids, mask = rng.integers(0, 97, size=(2, 16)), np.ones((2, 16), np.int64)
    ids[:, 9], mask[1, 11:] = 98, 0
    pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    variables = {"params": model.params}
    with torch.no_grad():
        t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
        want_text = _features(pt.get_text_features(input_ids=t_ids, attention_mask=t_mask))
        want_image = _features(pt.get_image_features(pixel_values=_nchw(pixels)))
        want = pt(input_ids=t_ids, pixel_values=_nchw(pixels), attention_mask=t_mask)
    assert _err(model.module.apply(variables, ids, mask, method="get_text_features"), want_text) < ATOL
    assert _err(model.module.apply(variables, pixels, method="get_image_features"), want_image) < ATOL
    got = model.module.apply(variables, ids, pixels, mask)
    assert _err(got.logits_per_image, want.logits_per_image) < ATOL
    assert _err(got.vision_model_output.last_hidden_state, want.vision_model_output.last_hidden_state) < ATOL


@pytest.mark.parity
@pytest.mark.parametrize("pooler", [False, True])
def test_vit_matches_transformers_pytorch(pooler, tmp_path, rng):
    """The loader builds the pooler exactly when the file has one; 48 px needs interpolation (as PyTorch)."""
    from transformers import ViTModel

    torch = _torch()
    pt = _randomise(ViTModel(_vit_config(), add_pooling_layer=pooler), 7)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    model = encoders.load_vit(tmp_path)
    assert model.module.add_pooling_layer is pooler
    for size, interpolate in ((32, False), (48, True)):
        pixels = rng.normal(size=(2, size, size, 3)).astype(np.float32)
        with torch.no_grad():
            want = pt(pixel_values=_nchw(pixels), interpolate_pos_encoding=interpolate)
        got = model.module.apply({"params": model.params}, pixels, interpolate_pos_encoding=interpolate)
        assert _err(got.last_hidden_state, want.last_hidden_state) < ATOL
        if pooler:
            assert _err(got.pooler_output, want.pooler_output) < ATOL
        else:
            assert got.pooler_output is None
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model.module.apply({"params": model.params}, pixels)


@pytest.mark.parity
@pytest.mark.parametrize("swiglu", [True, False], ids=["swiglu", "mlp"])
def test_dinov2_matches_transformers_pytorch(swiglu, tmp_path, rng):
    from transformers import Dinov2Model

    torch = _torch()
    pt = _randomise(Dinov2Model(_dinov2_config(swiglu, layerscale_value=0.5)), 5)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    model = encoders.load_dinov2(tmp_path)
    pixels = rng.normal(size=(2, 224, 224, 3)).astype(np.float32)
    masked = rng.uniform(size=(2, 256)) < 0.3
    with torch.no_grad():
        want = pt(pixel_values=_nchw(pixels), bool_masked_pos=torch.from_numpy(masked))
    got = model.module.apply({"params": model.params}, pixels, masked)
    assert got.last_hidden_state.shape == (2, 257, 32)
    assert _err(got.last_hidden_state, want.last_hidden_state) < ATOL
    assert _err(got.pooler_output, want.pooler_output) < ATOL


def test_vision_config_defaults_are_transformers():
    """A config.json without a key means transformers' default: jcompose's ViT / DINOv2 config defaults are
    the same values (DINOv2's LayerNorm eps 1e-6, ViT's 1e-12, ...)."""
    import transformers

    for ours, theirs in ((vit.Dinov2Config(), transformers.Dinov2Config()), (vit.ViTConfig(), transformers.ViTConfig())):
        # transformers resolves pooler_output_size None to hidden_size at construction; None means that here
        fields = [f.name for f in dataclasses.fields(ours) if hasattr(theirs, f.name) and f.name != "pooler_output_size"]
        assert len(fields) >= 10 and "layer_norm_eps" in fields
        assert {k: getattr(ours, k) for k in fields} == {k: getattr(theirs, k) for k in fields}, type(ours).__name__


@pytest.mark.parity
def test_dinov2_layer_norm_epsilon_on_quiet_activations(tmp_path, rng):
    """Embeddings scaled down 1000x: the first LayerNorms see a variance near DINOv2's eps (1e-6), so the
    output depends on eps strongly. jcompose equals transformers at 1e-6 and is far from it at 1e-5."""
    from transformers import Dinov2Model

    torch = _torch()
    pt = _randomise(Dinov2Model(_dinov2_config()), 6)
    with torch.no_grad():
        for p in pt.embeddings.parameters():
            p.mul_(1e-3)
    pt.save_pretrained(tmp_path / "dinov2", safe_serialization=True)
    model = encoders.load_dinov2(tmp_path / "dinov2")
    pixels = rng.normal(size=(1, 224, 224, 3)).astype(np.float32)
    got = model.module.apply({"params": model.params}, pixels).last_hidden_state
    other = _randomise(Dinov2Model(_dinov2_config(layer_norm_eps=1e-5)), 6)
    other.load_state_dict(pt.state_dict())
    with torch.no_grad():
        want, wrong = (m(pixel_values=_nchw(pixels)).last_hidden_state for m in (pt, other))
    errors = _err(got, want), _err(got, wrong)
    print(f"max |jcompose - transformers| at eps 1e-6: {errors[0]:.1e}, against eps 1e-5: {errors[1]:.1e}")
    assert errors[0] < ATOL and errors[1] > 100 * ATOL


@pytest.mark.parity
def test_dinov2_518px_checkpoint_at_224px_equals_pytorch(tmp_path, rng):
    """A 37x37 position grid (image_size 518, patch 14, as the published ViT-g/14) run at 224 px.

    transformers PyTorch resamples the grid to 16x16 with `interpolate(size=(16, 16),
    mode="bicubic", align_corners=False)` (4.57 and 5.x): cubic a = -0.75, no antialiasing. Our
    host-built matrices reproduce it (~1e-8 on the table, ~4e-6 on the output). What the
    alternatives give on this tiny model (max |error| of last_hidden_state, values up to ~3.5):
    `jax.image.resize(..., "bicubic")` (a = -0.5 and antialiasing when shrinking) 0.15; the
    removed transformers `FlaxDinov2Model` (`scale_and_translate` with DINO's +0.1 offset) 0.06.
    """
    from transformers import Dinov2Model

    torch = _torch()
    pt = _randomise(Dinov2Model(_dinov2_config(image_size=518)), 8)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    model = encoders.load_dinov2(tmp_path)
    table = model.params["embeddings"]["position_embeddings"]
    assert table.shape == (1, 37 * 37 + 1, 32)
    for height, width in ((224, 224), (168, 224)):
        pixels = rng.normal(size=(2, height, width, 3)).astype(np.float32)
        with torch.no_grad():
            want = pt(pixel_values=_nchw(pixels)).last_hidden_state
        got = model.module.apply({"params": model.params}, pixels).last_hidden_state
        assert got.shape == (2, 1 + (height // 14) * (width // 14), 32)
        assert _err(got, want) < ATOL
    # the table itself, and why jax.image.resize is not used
    grid = torch.from_numpy(np.array(table[0, 1:]).reshape(1, 37, 37, 32)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(256, 32)
    ours = vit.interpolate_positions(table, (16, 16))[0, 1:]
    assert _err(ours, ref) < 1e-6
    resized = jax.image.resize(table[0, 1:].reshape(37, 37, 32), (16, 16, 32), "bicubic").reshape(256, 32)
    assert _err(resized, ref) > 1e-2 * float(ref.abs().max())


# --------------------------------------------------------------------------------- export


def _random_module(family):
    """(module, random params, dummy inputs) of a tiny encoder, torch-free."""
    pixels = np.zeros((1, 32, 32, 3), np.float32)
    ids = jnp.zeros((1, 1), jnp.int32)
    if family == "clip-text":
        module, dummy = clip.CLIPTextModel(clip.CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                           eos_token_id=VOCAB - 1)), (ids,)
    elif family == "clip":
        text = clip.CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                   num_attention_heads=4, max_position_embeddings=16, eos_token_id=98)
        vision = clip.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                       num_attention_heads=4, image_size=32, patch_size=8)
        module, dummy = clip.CLIPModel(clip.CLIPConfig(text, vision, projection_dim=24)), (ids, pixels)
    elif family == "vit":
        module, dummy = vit.ViTModel(vit.ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                                   num_attention_heads=4, image_size=32, patch_size=8)), (pixels,)
    else:
        module, dummy = vit.Dinov2Model(vit.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                         image_size=28, use_swiglu_ffn=True)), (pixels[:, :28, :28],)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *dummy))["params"]
    return module, tiny.random_params(shapes, 3), dummy


@pytest.mark.parity
@pytest.mark.parametrize("family", ["clip-text", "clip", "vit", "dinov2"])
def test_export_loads_in_transformers_pytorch(family, tmp_path, rng):
    import transformers

    torch = _torch()
    module, params, _ = _random_module(family)
    encoders.export_encoder(module, params, tmp_path, formats=("safetensors", "msgpack"))
    pt_class = {"clip-text": transformers.CLIPTextModel, "clip": transformers.CLIPModel,
                "vit": transformers.ViTModel, "dinov2": transformers.Dinov2Model}[family]
    pt, info = pt_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    pt.eval()
    loader = {"clip-text": encoders.load_clip_text, "clip": encoders.load_clip, "vit": encoders.load_vit,
              "dinov2": encoders.load_dinov2}[family]
    a, b = loader(tmp_path, weights="safetensors"), loader(tmp_path, weights="msgpack")
    flat_a, flat_b = flatten_dict(a.params), flatten_dict(b.params)
    assert flat_a.keys() == flat_b.keys() == flatten_dict(params).keys()
    for key, value in flatten_dict(params).items():
        np.testing.assert_array_equal(np.asarray(flat_a[key]), value, err_msg=str(key))
        np.testing.assert_array_equal(np.asarray(flat_b[key]), value, err_msg=str(key))
    variables = {"params": a.params}
    with torch.no_grad():
        if family in ("clip-text", "clip"):
            ids = rng.integers(0, 98, size=(2, 16))
            ids[:, 6] = 98 if family == "clip" else VOCAB - 1
            if family == "clip-text":
                want, got = pt(torch.from_numpy(ids)).pooler_output, a.module.apply(variables, ids).pooler_output
            else:
                want = _features(pt.get_text_features(input_ids=torch.from_numpy(ids)))
                got = a.module.apply(variables, ids, method="get_text_features")
        else:
            size = module.config.image_size
            pixels = rng.normal(size=(2, size, size, 3)).astype(np.float32)
            want, got = pt(pixel_values=_nchw(pixels)).pooler_output, a.module.apply(variables, pixels).pooler_output
    assert _err(got, want) < ATOL


def test_bfloat16_params_and_compute(tmp_path, rng):
    module, params, _ = _random_module("dinov2")
    encoders.export_encoder(module, params, tmp_path)
    ref = encoders.load_dinov2(tmp_path)
    half = encoders.load_dinov2(tmp_path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
    pixels = rng.normal(size=(1, 28, 28, 3)).astype(np.float32)
    out = jax.jit(half.module.apply)({"params": half.params}, pixels).last_hidden_state  # bf16 eager compiles per op
    assert out.dtype == jnp.bfloat16
    want = jax.jit(ref.module.apply)({"params": ref.params}, pixels).last_hidden_state
    assert _err(out.astype(jnp.float32), want) < 0.1 * float(jnp.abs(want).max())


# --------------------------------------------------------------------------------- bad input


@pytest.fixture
def text_folder(tmp_path):
    module, params, _ = _random_module("clip-text")
    return encoders.export_encoder(module, params, tmp_path / "text_encoder")


def _edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_wrong_model_type_is_refused_by_name(text_folder):
    held = r"\(the folder holds a CLIP text encoder\)"
    with pytest.raises(ConfigError, match=rf"text_encoder/config\.json: model_type is 'clip_text_model' {held}; "
                                          r"dinov2 needs model_type 'dinov2'"):
        encoders.load_dinov2(text_folder)
    with pytest.raises(ConfigError, match="model_type is 'clip_text_model'.*needs model_type 'clip'"):
        encoders.load_clip(text_folder)


@pytest.mark.parametrize("key, value, message", [
    ("hidden_size", "32", r"hidden_size = '32': expected an integer"),
    ("layer_norm_eps", "1e-5", r"layer_norm_eps = '1e-5': expected a number"),
    ("num_attention_heads", 5, r"hidden_size = 32 is not a multiple of num_attention_heads = 5"),
    ("hidden_act", "gelu_42", r"hidden_act = 'gelu_42' is not supported"),
    ("eos_token_id", [1, 2], r"eos_token_id = \[1, 2\]: expected an integer"),
])
def test_bad_config_values_name_file_and_key(text_folder, key, value, message):
    _edit_config(text_folder, **{key: value})
    with pytest.raises(ConfigError, match=r"text_encoder/config\.json: " + message):
        encoders.load_clip_text(text_folder)


def test_bad_nested_clip_config_names_the_sub_key(tmp_path):
    module, params, _ = _random_module("clip")
    folder = encoders.export_encoder(module, params, tmp_path / "clip")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["patch_size"] = "8"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"clip/config\.json: vision_config\.patch_size = '8': expected an integer"):
        encoders.load_clip(folder)


def test_missing_and_mismatched_weights_are_named(text_folder):
    _edit_config(text_folder, intermediate_size=48)
    with pytest.raises(LayoutError, match=r"(?s)model\.safetensors.*text_model\.encoder\.layers\.0\.mlp\.fc1\.weight"):
        encoders.load_clip_text(text_folder)
    (text_folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights: expected .*flax_model\.msgpack or .*model\.safetensors"):
        encoders.load_clip_text(text_folder)


def test_export_refuses_foreign_modules_and_formats(tmp_path):
    module, params, _ = _random_module("vit")
    with pytest.raises(ValueError, match="unknown weight formats"):
        encoders.export_encoder(module, params, tmp_path, formats=("pickle",))
    with pytest.raises(TypeError, match="not one of jcompose's encoder modules"):
        encoders.export_encoder(object(), params, tmp_path)
