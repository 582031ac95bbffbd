"""LoRA as a tree transformation (jcompose/lora.py), its files (jcompose/models/lora_files.py), the config
fields and the methods' choices. Training with LoRA (and its exported files in a diffusers pipeline):
tests/test_lora_train.py."""

import json
import re

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from configs.common import ConfigError, load, validate
from jcompose import convert, lora, methods
from jcompose.models import loading, lora_files

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1")  # Dense, 1x1 and 3x3 convolutions


@pytest.fixture(scope="module")
def unet(tiny_bases):
    return loading.load_unet(tiny_bases["sd15-inpaint"] / "unet", weights="msgpack")


def random_adapters(params, spec, seed=0):
    """Adapters with A and B both random (a zero B would hide every layout mistake)."""
    adapters = lora.init(params, spec, jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), adapters)


def test_targets_follow_peft_names_and_step_zero_is_the_base(unet):
    spec = lora.LoraSpec(rank=3, alpha=6.0, targets=TARGETS)
    adapters = lora.init(unet.params, spec, jax.random.PRNGKey(0))
    names = {lora.module_name(path) for path in lora.modules(adapters)}
    # the tiny UNet: 7 transformer blocks x 2 attentions x 4 projections, 7 proj_in, 11 resnets' conv1
    assert len(names) == 56 + 7 + 11
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0" in names
    assert "up_blocks.1.resnets.0.conv1" in names and not any(n.endswith("ff.net.2") for n in names)
    conv = lora.modules(adapters)[("down_blocks_0", "resnets_0", "conv1")]
    assert conv["lora_A"].shape == (3, 3, 32, 3) and conv["lora_B"].shape == (3, 32)
    bound = 1 / np.sqrt(3 * 3 * 32)  # PEFT's kaiming-uniform(a = sqrt(5)) over the fan-in
    assert 0.9 * bound < float(np.abs(conv["lora_A"]).max()) <= bound
    merged = lora.merge(unet.params, adapters, spec.scale)  # B = 0: the base, bit for bit
    for key, value in flatten_dict(unet.params).items():
        np.testing.assert_array_equal(np.asarray(flatten_dict(merged)[key]), np.asarray(value), err_msg=str(key))
    only_cross = lora.targeted_kernels(unet.params, ("attn2.to_k",))
    assert len(only_cross) == 7 and all(p[-2:] == ("attn2", "to_k") for p in only_cross)


def test_merge_is_w_plus_scaled_a_times_b(unet):
    spec = lora.LoraSpec(rank=3, alpha=6.0, targets=TARGETS)
    adapters = random_adapters(unet.params, spec)
    merged = flatten_dict(lora.merge(unet.params, adapters, spec.scale))
    base = flatten_dict(unet.params)
    for path, ab in lora.modules(adapters).items():
        a, b = np.asarray(ab["lora_A"], np.float64), np.asarray(ab["lora_B"], np.float64)
        want = np.asarray(base[(*path, "kernel")], np.float64) + 2.0 * np.einsum("...ir,ro->...io", a, b)
        np.testing.assert_allclose(np.asarray(merged[(*path, "kernel")]), want, rtol=0, atol=1e-6, err_msg=path)
    untouched = [k for k in base if k[:-1] not in lora.modules(adapters)]
    assert untouched and all(merged[k] is base[k] for k in untouched)  # shared, not copied


def test_file_round_trip_and_layout(unet, tmp_path):
    spec = lora.LoraSpec(rank=3, alpha=6.0, targets=TARGETS)
    adapters = random_adapters(unet.params, spec)
    path = lora_files.write(tmp_path, adapters, spec)
    assert path.name == "pytorch_lora_weights.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        keys, metadata = set(f.keys()), f.metadata()
        q = f.get_tensor("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight")
        conv_b = f.get_tensor("unet.down_blocks.0.resnets.0.conv1.lora_B.weight")
    assert len(keys) == 2 * 74 and all(k.startswith("unet.") for k in keys)
    assert q.shape == (3, 32) and conv_b.shape == (32, 3, 1, 1)  # PyTorch layouts: (r, in), (out, r, 1, 1)
    config = json.loads(metadata["lora_adapter_metadata"])
    assert metadata["format"] == "pt" and config["unet.r"] == 3 and config["unet.lora_alpha"] == 6.0
    assert len(config["unet.target_modules"]) == 74
    back, spec_back = lora_files.read(tmp_path, unet.params)
    assert (spec_back.rank, spec_back.alpha) == (3, 6.0)
    flat, flat_back = flatten_dict(adapters), flatten_dict(back)
    assert flat.keys() == flat_back.keys()
    for key in flat:
        np.testing.assert_array_equal(flat_back[key], flat[key], err_msg=str(key))


@pytest.mark.parity
def test_written_file_applies_in_diffusers_as_in_jcompose(unet, tiny_bases, tmp_path):
    """Random A and B (rank 3, alpha 6: scale 2) on Linear, 1x1 and 3x3 convolution targets, written by
    jcompose and read by diffusers' `load_lora_adapter` (what `load_lora_weights` runs for the UNet): the
    UNet outputs agree within 1e-4, and the adapters move the output far more than that."""
    torch = pytest.importorskip("torch", reason="the parity extra: pip install -e '.[parity]'")
    diffusers = pytest.importorskip("diffusers", reason="the parity extra: pip install -e '.[parity]'")
    pytest.importorskip("peft", reason="diffusers' LoRA loading needs peft (the parity extra)")
    spec = lora.LoraSpec(rank=3, alpha=6.0, targets=TARGETS)
    adapters = random_adapters(unet.params, spec, seed=2)
    lora_files.write(tmp_path, adapters, spec)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 8, 8)).astype(np.float32)
    t, ctx = np.array([17, 803]), rng.normal(size=(2, 16, 32)).astype(np.float32)
    want = np.asarray(unet.module.apply({"params": lora.merge(unet.params, adapters, spec.scale)}, x, t, ctx).sample)
    base = np.asarray(unet.module.apply({"params": unet.params}, x, t, ctx).sample)
    theirs = diffusers.UNet2DConditionModel.from_pretrained(tiny_bases["sd15-inpaint"] / "unet").eval()
    theirs.load_lora_adapter(str(tmp_path), prefix="unet", weight_name=lora_files.WEIGHT_NAME)
    with torch.no_grad():
        got = theirs(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample.numpy()
    err, effect = float(np.abs(got - want).max()), float(np.abs(want - base).max())
    print(f"LoRA file in diffusers: max |diffusers - jcompose| = {err:.2e}; the adapters' effect {effect:.2e}")
    assert err < 1e-4 and effect > 1e-2


def test_bad_lora_files_are_named(unet, tmp_path):
    from safetensors.numpy import save_file

    spec = lora.LoraSpec(rank=2, alpha=2.0)
    good = lora_files.state_dict(random_adapters(unet.params, spec))
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    cases = {
        "kohya": ({"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": np.zeros((2, 32), np.float32)},
                  "is not '<module>.lora_A.weight'"),
        "missing_module": ({**good, "unet.nope.to_q.lora_A.weight": np.zeros((2, 32), np.float32),
                            "unet.nope.to_q.lora_B.weight": np.zeros((32, 2), np.float32)},
                           "module 'nope.to_q' is not a Dense/Conv layer of this UNet"),
        "shape": ({**good, key: np.zeros((2, 31), np.float32)}, "lora_A (2, 31)"),
        "text_encoder": ({**good, "text_encoder.x.lora_A.weight": np.zeros((2, 2), np.float32)},
                         "adapters for text_encoder too"),
        "half": ({k: v for k, v in good.items() if not k.endswith("lora_B.weight")}, "has ['lora_A'] only"),
    }
    for name, (tensors, message) in cases.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(lora_files.LoraFileError, match=re.escape(message)) as info:
            lora_files.read(tmp_path / f"{name}.safetensors", unet.params)
        assert str(tmp_path / f"{name}.safetensors") in str(info.value)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(lora_files.LoraFileError, match="not a readable safetensors file"):
        lora_files.read(tmp_path / "junk.safetensors", unet.params)


def test_convert_merge_lora_writes_the_merged_base(unet, tiny_bases, tmp_path, capsys):
    spec = lora.LoraSpec(rank=2, alpha=3.0, targets=TARGETS)
    adapters = random_adapters(unet.params, spec, seed=1)
    lora_files.write(tmp_path / "lora", adapters, spec)
    assert convert.main(["merge-lora", str(tiny_bases["sd15-inpaint"]), str(tmp_path / "lora"),
                         str(tmp_path / "merged")]) == 0
    assert "74 modules, rank 2, alpha 3" in capsys.readouterr().out
    assert (tmp_path / "merged" / "vae" / "config.json").is_file()  # the rest of the base copied
    got = flatten_dict(loading.load_unet(tmp_path / "merged" / "unet").params)
    want = flatten_dict(lora.merge(unet.params, adapters, spec.scale))
    for key in want:
        np.testing.assert_allclose(got[key], np.asarray(want[key]), rtol=0, atol=0, err_msg=str(key))
    with pytest.raises(SystemExit) as exit_info:  # a LoRA of another base's UNet: one line naming the module
        convert.main(["merge-lora", str(tiny_bases["sd21-base"]), str(tmp_path / "lora"), str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "proj_in': lora_A (2, 32, 1, 1)" in err and not (tmp_path / "bad").exists()


def test_config_fields_and_the_methods_choices(tmp_path):
    config = load("configs/dreamcom.py:lora")
    assert (config.train.lora.rank, config.train.lora.alpha, config.optim.lr) == (4, 4.0, 1e-4)
    assert lora.spec_from_config(load("configs/dreamcom.py")) is None  # off by default
    for field, value, message in (("rank", -1, "config.train.lora.rank = -1"),
                                  ("targets", (), "config.train.lora.targets = ()")):
        bad = load("configs/dreamcom.py:tiny")
        bad.train.lora[field] = value
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate(bad)
    for spec in ("configs/anyscene.py:tiny", "configs/denoise.py:tiny"):
        other = load(spec)
        other.train.lora.rank = 4
        with pytest.raises(ConfigError, match="config.train.lora.rank = 4: .* cannot train LoRA adapters"):
            methods.build(other)
    dreamcom = load("configs/dreamcom.py:tiny")
    dreamcom.train.lora.update(rank=2, targets=("to_qq",))
    with pytest.raises(ConfigError, match=r"config.train.lora.targets = \('to_qq',\): matches none of the 132 "):
        methods.build(dreamcom).init(str(tmp_path))


def test_anydoor_adapts_its_decoder_only(tmp_path):
    config = load("configs/anydoor.py:tiny")
    config.train.lora.update(rank=2, alpha=4.0)
    method = methods.build(config)
    params, frozen = method.init(str(tmp_path))
    assert set(params) >= {"extractor", "unet_decoder_lora"} and "unet_decoder" in frozen
    adapted = {lora.module_name(p) for p in lora.modules(params["unet_decoder_lora"])}
    assert adapted and all(n.startswith("up_blocks.") for n in adapted)
    whole = method.pipe.unet.params
    step0 = method.unet_params(params, frozen)  # B = 0: the base UNet, bit for bit
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool((np.asarray(a) == b).all()), step0,
                                                         whole))
    trained = dict(params, unet_decoder_lora=random_adapters(frozen["unet_decoder"], method.lora))
    changed = {k[:-1] for k, v in flatten_dict(method.unet_params(trained, frozen)).items()
               if not np.array_equal(np.asarray(v), np.asarray(flatten_dict(whole)[k]))}
    assert changed == set(lora.modules(trained["unet_decoder_lora"]))
