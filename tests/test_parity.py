"""Parity with diffusers / transformers PyTorch on the same random weights (the `parity` extra).

PyTorch is the reference oracle only: models are built and randomised in PyTorch, saved with
`save_pretrained` (safetensors), loaded by jcompose, and both run on the same inputs. Export is
checked the other way round: jcompose writes, PyTorch loads.
"""

import inspect
import json

import jax.numpy as jnp
import numpy as np
import pytest

from jcompose.models import loading, pt_layout, tiny
from jcompose.models.diffusers_config import KINDS, module_kwargs

torch = pytest.importorskip("torch", reason="parity tests need the parity extra: pip install -e '.[parity]'")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.parity
ATOL = 1e-4


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(2)


def _randomise(model, seed):
    """Adds N(0, 0.02^2) to every PyTorch parameter, so zero/one initialisations are not trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return model.eval()


def _as_transformers(config, cls):
    """A jcompose encoder config dataclass as the transformers config class with the same fields."""
    return cls(**{k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures")})


def _controlnet_kwargs(base):
    cfg = tiny.unet_config(base)
    drop = ("up_block_types", "out_channels", "sample_size")
    return {**{k: v for k, v in cfg.items() if k not in drop}, "conditioning_embedding_out_channels": (16, 32, 32, 32)}


def _inputs(rng, channels, context_dim, batch=2, height=8, width=12):
    x = rng.normal(size=(batch, channels, height, width)).astype(np.float32)
    ctx = rng.normal(size=(batch, tiny.CONTEXT_TOKENS, context_dim)).astype(np.float32)
    return x, np.array([17, 803]), ctx


def _close(jax_out, torch_out, name=""):
    a, b = np.asarray(jax_out, np.float64), torch_out.detach().numpy().astype(np.float64)
    assert a.shape == b.shape, name
    err = np.abs(a - b).max()
    assert err < ATOL, f"{name}: max |jcompose - torch| = {err:.2e} (scale {np.abs(b).max():.2f})"


@pytest.mark.parametrize("base", tiny.BASES + ("sd15-groups8",))
def test_unet_matches_diffusers(base, tmp_path, rng):
    # sd15-groups8: GroupNorm with 8 groups and eps 1e-6, keys diffusers' former Flax UNet ignored.
    config = tiny.unet_config("sd15") if base == "sd15-groups8" else tiny.unet_config(base)
    if base == "sd15-groups8":
        config.update(norm_num_groups=8, norm_eps=1e-6)
    pt = _randomise(diffusers.UNet2DConditionModel(**config), 1)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    unet = loading.load_unet(tmp_path)
    x, t, ctx = _inputs(rng, unet.module.in_channels, unet.module.cross_attention_dim)
    want = pt(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    _close(unet.module.apply({"params": unet.params}, x, jnp.asarray(t), ctx).sample, want, base)


def test_controlnet_matches_diffusers(tmp_path, rng):
    pt = _randomise(diffusers.ControlNetModel(**_controlnet_kwargs("sd15")), 2)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    net = loading.load_controlnet(tmp_path)
    x, t, ctx = _inputs(rng, 4, 32)
    cond = rng.uniform(size=(2, 3, 64, 96)).astype(np.float32)
    want = pt(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx), torch.from_numpy(cond), return_dict=False)
    out = net.module.apply({"params": net.params}, x, jnp.asarray(t), ctx, cond)
    down, mid = out.down_block_res_samples, out.mid_block_res_sample
    assert len(down) == len(want[0]) == 6  # conv_in + one per layer (3) + 2 downsamplers
    for i, (a, b) in enumerate(zip(down, want[0])):  # Flax residuals are NHWC, PyTorch's NCHW
        _close(a.transpose(0, 3, 1, 2), b, f"down residual {i}")
    _close(mid.transpose(0, 3, 1, 2), want[1], "mid residual")


def test_vae_encode_decode_match_diffusers(tmp_path, rng):
    pt = _randomise(diffusers.AutoencoderKL(**tiny.vae_config()), 3)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    vae = loading.load_vae(tmp_path)
    image = rng.uniform(-1, 1, size=(2, 3, 64, 96)).astype(np.float32)
    mean = vae.module.apply({"params": vae.params}, image, method=vae.module.encode).latent_dist.mean
    _close(mean, pt.encode(torch.from_numpy(image)).latent_dist.mean, "encode mean")
    z = rng.normal(size=(2, 4, 8, 12)).astype(np.float32)
    decoded = vae.module.apply({"params": vae.params}, z, method=vae.module.decode).sample
    _close(decoded, pt.decode(torch.from_numpy(z)).sample, "decode")


@pytest.mark.parametrize("base", ["sd15", "sd21-base"])
def test_clip_text_matches_transformers(base, tmp_path, rng):
    vocab = tiny.write_tokenizer(tmp_path / "tokenizer")
    pt = _randomise(transformers.CLIPTextModel(_as_transformers(tiny.text_encoder_config(base, vocab),
                                                                transformers.CLIPTextConfig)), 4)
    pt.save_pretrained(tmp_path / "text_encoder", safe_serialization=True)
    text = loading.load_text_encoder(tmp_path / "text_encoder")
    ids = rng.integers(0, vocab, size=(2, tiny.CONTEXT_TOKENS))
    want = pt(torch.from_numpy(ids))
    got = text.module.apply({"params": text.params}, ids)
    _close(got.last_hidden_state, want.last_hidden_state, "last_hidden_state")
    _close(got.pooler_output, want.pooler_output, "pooler_output")


def test_dinov2_matches_transformers(tmp_path, rng):
    pt = _randomise(transformers.Dinov2Model(_as_transformers(tiny.dinov2_config(), transformers.Dinov2Config)), 5)
    pt.save_pretrained(tmp_path, safe_serialization=True)
    dino = loading.load_dinov2(tmp_path)
    pixels = rng.normal(size=(2, 3, 224, 224)).astype(np.float32)
    want = pt(torch.from_numpy(pixels))
    got = dino.module.apply({"params": dino.params}, pixels.transpose(0, 2, 3, 1))  # jcompose: NHWC
    assert got.last_hidden_state.shape == (2, 257, 32)  # CLS + 16x16 patches, as AnyDoor's ID tokens
    _close(got.last_hidden_state, want.last_hidden_state, "last_hidden_state")
    _close(got.pooler_output, want.pooler_output, "pooler_output")


@pytest.mark.parametrize("name", ["unet", "controlnet", "vae"])
def test_exported_weights_reload_in_diffusers(name, tiny_bases, tmp_path, rng):
    src = loading.load_component(tiny_bases["sd15"] / name, KINDS[name], weights="msgpack")
    loading.export_diffusers(src.module, src.params, tmp_path)
    pt_class = {"unet": diffusers.UNet2DConditionModel, "controlnet": diffusers.ControlNetModel,
                "vae": diffusers.AutoencoderKL}[name]
    pt, info = pt_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    pt.eval()
    params = {"params": src.params}
    if name == "vae":
        z = rng.normal(size=(1, 4, 8, 8)).astype(np.float32)
        _close(src.module.apply(params, z, method=src.module.decode).sample, pt.decode(torch.from_numpy(z)).sample)
        return
    x, t, ctx = _inputs(rng, 4, 32)
    if name == "unet":
        _close(src.module.apply(params, x, jnp.asarray(t), ctx).sample, pt(torch.from_numpy(x), torch.from_numpy(t),
                                                               torch.from_numpy(ctx)).sample)
    else:
        cond = rng.uniform(size=(2, 3, 64, 96)).astype(np.float32)
        mid = src.module.apply(params, x, jnp.asarray(t), ctx, cond).mid_block_res_sample
        want = pt(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx), torch.from_numpy(cond),
                  return_dict=False)
        _close(mid.transpose(0, 3, 1, 2), want[1])


def test_exported_text_encoder_reloads_in_transformers(tiny_bases, rng):
    folder = tiny_bases["sd15"] / "text_encoder"  # written by jcompose with model.safetensors
    pt, info = transformers.CLIPTextModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    text = loading.load_text_encoder(folder, weights="msgpack")
    ids = rng.integers(0, text.config["vocab_size"], size=(2, tiny.CONTEXT_TOKENS))
    _close(text.module.apply({"params": text.params}, ids).last_hidden_state,
           pt.eval()(torch.from_numpy(ids)).last_hidden_state)


def test_controlnet_from_unet_matches_diffusers_from_unet(tiny_bases):
    unet = loading.load_unet(tiny_bases["sd15"] / "unet", weights="msgpack")
    ours = pt_layout.flax_to_state_dict(
        loading.controlnet_from_unet(unet, conditioning_embedding_out_channels=(16, 32, 32, 32)).params
    )
    pt_unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_bases["sd15"] / "unet")
    theirs = diffusers.ControlNetModel.from_unet(pt_unet, conditioning_embedding_out_channels=(16, 32, 32, 32)).state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if key.startswith("controlnet_cond_embedding.") and not key.startswith("controlnet_cond_embedding.conv_out"):
            assert ours[key].shape == tuple(value.shape), key  # freshly initialised in both
        else:
            np.testing.assert_array_equal(ours[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("name, key, bad", [("unet", "resnet_time_scale_shift", "scale_shift"),
                                            ("controlnet", "act_fn", "gelu"), ("vae", "mid_block_add_attention", False)])
def test_full_pytorch_configs_are_understood(name, key, bad, tmp_path):
    """Every key a current diffusers PyTorch model writes is a module field or a checked default."""
    pt_class = {"unet": diffusers.UNet2DConditionModel, "controlnet": diffusers.ControlNetModel,
                "vae": diffusers.AutoencoderKL}[name]
    # register_to_config records every __init__ argument: the signature's defaults are the full
    # config a default PyTorch model writes (without building an 860M-parameter model).
    config = {
        arg: p.default for arg, p in inspect.signature(pt_class.__init__).parameters.items()
        if arg != "self" and p.default is not inspect.Parameter.empty
    }
    config = json.loads(json.dumps({"_class_name": pt_class.__name__, **config}))
    assert module_kwargs(config, KINDS[name], tmp_path / "config.json")
    with pytest.raises(ValueError, match=key):
        module_kwargs({**config, key: bad}, KINDS[name], tmp_path / "config.json")
