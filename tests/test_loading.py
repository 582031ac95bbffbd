"""Loading tiny base folders: both weight formats, dtypes, ControlNet from UNet, bad input."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jcompose.models import loading, tiny
from jcompose.models.diffusers_config import ConfigError
from jcompose.models.pt_layout import LayoutError


def _flat(params):
    return {k: np.asarray(v) for k, v in flatten_dict(params).items()}


@pytest.mark.parametrize("base", tiny.BASES)
def test_safetensors_and_msgpack_give_identical_params(tiny_bases, base):
    folder = tiny_bases[base]
    for name in ("unet", "vae", "controlnet"):
        kind = loading.KINDS_BY_FOLDER[name]
        a = _flat(loading.load_component(folder / name, kind, weights="safetensors").params)
        b = _flat(loading.load_component(folder / name, kind, weights="msgpack").params)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")


def test_pipeline_components_match_their_base(tiny_bases):
    sd15 = loading.load_pipeline(tiny_bases["sd15"])
    assert sd15.unet.module.in_channels == 4 and sd15.unet.module.cross_attention_dim == 32
    inpaint = loading.load_pipeline(tiny_bases["sd15-inpaint"], ("unet",), unet_expect={"in_channels": 9})
    assert inpaint.unet.module.in_channels == 9
    sd21 = loading.load_pipeline(tiny_bases["sd21-base"])
    assert sd21.unet.module.use_linear_projection and sd21.unet.module.cross_attention_dim == 64
    assert sd21.text_encoder.config["hidden_act"] == "gelu"
    assert sd21.scheduler.beta_schedule == "scaled_linear" and sd21.scheduler.prediction_type == "epsilon"
    with pytest.raises(ConfigError, match=r"unet/config\.json: in_channels = 4, but this use needs in_channels = 9"):
        loading.load_pipeline(tiny_bases["sd15"], ("unet",), unet_expect={"in_channels": 9})


def test_tokenizer_keeps_known_words_whole(tiny_bases):
    tok = loading.load_tokenizer(tiny_bases["sd15"] / "tokenizer")
    ids = tok("a photo of sks dog", padding="max_length", max_length=tiny.CONTEXT_TOKENS).input_ids
    assert len(ids) == tiny.CONTEXT_TOKENS
    words = tok.convert_ids_to_tokens(ids[1:6])
    assert words == ["a</w>", "photo</w>", "of</w>", "sks</w>", "dog</w>"]
    assert ids[0] == tok.bos_token_id and ids[6] == tok.eos_token_id


def test_bfloat16_params_and_compute(tiny_bases):
    unet = loading.load_unet(tiny_bases["sd15"] / "unet", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(unet.params)} == {jnp.dtype(jnp.bfloat16)}
    ref = loading.load_unet(tiny_bases["sd15"] / "unet")
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 8, 8))
    ctx = jax.random.normal(jax.random.PRNGKey(1), (1, 16, 32))
    out = jax.jit(unet.module.apply)({"params": unet.params}, x, jnp.array([10]), ctx).sample  # jit: op by op
    want = jax.jit(ref.module.apply)({"params": ref.params}, x, jnp.array([10]), ctx).sample  # compiles ~20 s
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want), atol=0.1)


def test_controlnet_from_unet_copies_encoder_and_starts_silent(tiny_bases):
    unet = loading.load_unet(tiny_bases["sd15"] / "unet")
    net = loading.controlnet_from_unet(unet, conditioning_embedding_out_channels=(16, 32, 32, 32))
    for name in ("conv_in", "time_embedding", "down_blocks_0", "down_blocks_2", "mid_block"):
        for key, value in _flat(net.params[name]).items():
            np.testing.assert_array_equal(value, np.asarray(flatten_dict(unet.params[name])[key]))
    zero_convs = [k for k in net.params if k.startswith("controlnet_down_blocks") or k == "controlnet_mid_block"]
    assert len(zero_convs) == 1 + 3 * 1 + 2 + 1  # conv_in, one per layer of 3 blocks, 2 downsamplers, mid
    for name in zero_convs + ["controlnet_cond_embedding"]:
        tree = net.params[name] if name != "controlnet_cond_embedding" else net.params[name]["conv_out"]
        assert all(not np.any(np.asarray(v)) for v in jax.tree_util.tree_leaves(tree)), name
    assert np.any(np.asarray(net.params["controlnet_cond_embedding"]["conv_in"]["kernel"]))

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8, 8))
    ctx = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 32))
    cond = jax.random.uniform(jax.random.PRNGKey(2), (2, 3, 64, 64))
    t = jnp.array([3, 900])
    out = net.module.apply({"params": net.params}, x, t, ctx, cond)
    down, mid = out.down_block_res_samples, out.mid_block_res_sample
    assert all(not np.any(np.asarray(r)) for r in (*down, mid))
    plain = unet.module.apply({"params": unet.params}, x, t, ctx).sample
    guided = unet.module.apply({"params": unet.params}, x, t, ctx, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid).sample
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(guided))


def test_dinov2_loads_from_both_formats(tiny_dinov2, tmp_path):
    only_pt = tmp_path / "pt"
    only_pt.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dinov2 / name, only_pt / name)
    a, b = loading.load_dinov2(tiny_dinov2), loading.load_dinov2(only_pt)
    pixels = jax.random.normal(jax.random.PRNGKey(0), (1, 224, 224, 3))
    out_a = a.module.apply({"params": a.params}, pixels).last_hidden_state
    out_b = b.module.apply({"params": b.params}, pixels).last_hidden_state
    assert out_a.shape == (1, 257, 32)
    np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))


# ------------------------------------------------------------------------------------ bad input


def _copy(folder, tmp_path, name="copy"):
    return shutil.copytree(folder, tmp_path / name)


def test_missing_folder_and_subfolder(tiny_bases, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: base model folder not found"):
        loading.load_pipeline(tmp_path / "nowhere")
    base = _copy(tiny_bases["sd15"], tmp_path)
    shutil.rmtree(base / "vae")
    with pytest.raises(FileNotFoundError, match=r"copy/vae: vae folder not found \(.*copy has: controlnet, scheduler"):
        loading.load_pipeline(base)


def test_missing_weights_and_pickles(tiny_bases, tmp_path):
    unet = _copy(tiny_bases["sd15"] / "unet", tmp_path)
    for f in unet.glob("diffusion_*"):
        f.unlink()
    (unet / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"(?s)copy: no weights.*diffusion_pytorch_model\.bin.*without torch"):
        loading.load_unet(unet)
    (unet / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"copy: no config\.json"):
        loading.load_unet(unet)


def test_wrong_file_format(tiny_bases, tmp_path):
    unet = _copy(tiny_bases["sd15"] / "unet", tmp_path)
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"this is not safetensors")
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors: not a readable safetensors file"):
        loading.load_unet(unet, weights="safetensors")
    (unet / "diffusion_flax_model.msgpack").write_bytes(b"\xc1\xc1")
    with pytest.raises(ValueError, match=r"diffusion_flax_model\.msgpack: not a readable Flax msgpack file"):
        loading.load_unet(unet, weights="msgpack")
    (unet / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        loading.load_unet(unet)


@pytest.mark.parametrize("weights", ["safetensors", "msgpack"])
def test_weights_that_do_not_fit_the_config(tiny_bases, tmp_path, weights):
    unet = _copy(tiny_bases["sd15"] / "unet", tmp_path)
    config = json.loads((unet / "config.json").read_text())
    config["cross_attention_dim"] = 48
    (unet / "config.json").write_text(json.dumps(config))
    with pytest.raises(LayoutError, match=r"(?s)wrong shape.*attn2.*to_k.*shape"):
        loading.load_unet(unet, weights=weights)
    config["cross_attention_dim"] = 32
    config["layers_per_block"] = 2
    (unet / "config.json").write_text(json.dumps(config))
    with pytest.raises(LayoutError, match=r"(?s)weights do not match the architecture.*missing (tensors|parameters)"):
        loading.load_unet(unet, weights=weights)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("resnet_time_scale_shift", "scale_shift",
         r"resnet_time_scale_shift = 'scale_shift', but jcompose's UNet2DConditionModel implements only"),
        ("block_out_channels", "32,64,64", r"block_out_channels = '32,64,64': expected an integer or a list"),
        ("use_linear_projection", "yes", r"use_linear_projection = 'yes': expected true or false"),
        ("act_fn", "gelu", r"act_fn = 'gelu'"),
        ("time_embedding_type", "fourier", r"time_embedding_type"),
        ("some_future_option", True, r"'some_future_option' = True is unknown"),
        ("_class_name", "AutoencoderKL", r"_class_name is 'AutoencoderKL' \(that is a vae config\)"),
        ("down_block_types", ["CrossAttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"], r"AttnDownBlock2D"),
    ],
)
def test_unexpected_architecture_is_refused(tiny_bases, tmp_path, key, value, message):
    unet = _copy(tiny_bases["sd15"] / "unet", tmp_path)
    config = json.loads((unet / "config.json").read_text())
    config[key] = value
    (unet / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        loading.load_unet(unet)


def test_mixed_bases_are_refused(tiny_bases, tmp_path):
    base = _copy(tiny_bases["sd15"], tmp_path)
    shutil.rmtree(base / "text_encoder")
    shutil.copytree(tiny_bases["sd21-base"] / "text_encoder", base / "text_encoder")
    with pytest.raises(ConfigError, match=r"text_encoder hidden_size 64 != unet cross_attention_dim 32"):
        loading.load_pipeline(base, ("unet", "text_encoder"))


def test_bad_scheduler_and_tokenizer(tiny_bases, tmp_path):
    base = _copy(tiny_bases["sd15"], tmp_path)
    path = base / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "noise"}))
    with pytest.raises(ConfigError, match=r"scheduler_config\.json: prediction_type = 'noise'"):
        loading.load_scheduler_config(base / "scheduler")
    (base / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer: no merges\.txt"):
        loading.load_tokenizer(base / "tokenizer")
    config = base / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "bert"}))
    with pytest.raises(ConfigError, match=r"model_type is 'bert'; text_encoder needs model_type 'clip_text_model'"):
        loading.load_text_encoder(base / "text_encoder")


def test_sharded_variant_and_bfloat16_safetensors(tiny_bases, tmp_path):
    from safetensors.numpy import save_file

    from jcompose.models import pt_layout

    ref = loading.load_unet(tiny_bases["sd15"] / "unet", weights="msgpack")
    state = pt_layout.flax_to_state_dict(ref.params)
    names = sorted(state)
    folder = shutil.copytree(tiny_bases["sd15"] / "unet", tmp_path / "unet", ignore=shutil.ignore_patterns("diffusion_*"))

    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    sharded = _flat(loading.load_unet(folder).params)
    for key, value in _flat(ref.params).items():
        np.testing.assert_array_equal(sharded[key], value)

    save_file({k: v.astype(np.float16) for k, v in state.items()}, str(folder / "diffusion_pytorch_model.fp16.safetensors"))
    half = _flat(loading.load_unet(folder, variant="fp16").params)
    for key, value in _flat(ref.params).items():
        np.testing.assert_allclose(half[key], value, rtol=1e-3, atol=1e-4)

    import ml_dtypes

    (folder / "diffusion_pytorch_model.safetensors.index.json").unlink()
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    bf16 = loading.load_unet(folder, param_dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(bf16.params)} == {jnp.dtype(jnp.bfloat16)}


def test_rematerialised_blocks_give_the_same_values_and_gradients(tiny_bases):
    """`remat=True` (per block: down, mid and up blocks; the ControlNet builds its blocks with the same
    `encoder_blocks`) only changes what the backward pass recomputes: the loss and every gradient equal
    the plain module's (AnyDoor trains the UNet decoder and the extractor with it)."""
    unet = loading.load_unet(tiny_bases["sd21-base"] / "unet")
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8, 8))
    ctx = jax.random.normal(jax.random.PRNGKey(1), (2, 16, unet.module.cross_attention_dim))
    t = jnp.array([3, 900])

    def loss(params, remat):
        return jnp.mean(unet.module.clone(remat=remat).apply({"params": params}, x, t, ctx).sample ** 2)

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (plain_loss, plain), (remat_loss, remat) = grad(unet.params, False), grad(unet.params, True)
    np.testing.assert_allclose(float(remat_loss), float(plain_loss), rtol=1e-6)
    flat_plain, flat_remat = _flat(plain), _flat(remat)
    assert flat_plain.keys() == flat_remat.keys()
    for key, value in flat_plain.items():
        np.testing.assert_allclose(flat_remat[key], value, rtol=1e-4, atol=1e-7, err_msg=str(key))
    jaxpr = str(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(unet.params, True))
    assert jaxpr.count("remat") + jaxpr.count("checkpoint") >= 3  # down, mid and up blocks rematerialised
