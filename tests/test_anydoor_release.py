"""AnyDoor's released checkpoint, torch-free: the .ckpt reader, the LDM/ControlLDM/DINOv2-hub name rules
(jcompose/models/{lightning_ckpt, ldm_names, ldm_configs, ldm_convert}.py) and `convert anydoor-ckpt` /
`sd-ckpt` (jcompose/convert.py). The reader's safety (no code run, the optimizer state skipped):
tests/test_lightning_ckpt.py.

Oracles: diffusers' own single-file conversion (`diffusers.loaders.single_file_utils`:
convert_ldm_unet_checkpoint, convert_controlnet_checkpoint, convert_ldm_vae_checkpoint) with strict
loading into diffusers' PyTorch models, and for DINOv2 the rename table of transformers'
`convert_dinov2_to_hf.py` (not shipped in the transformers 5 wheel: restated below from the published
script), loaded by transformers 5's own `Dinov2Model.from_pretrained`. The tiny checkpoints carry the
released key names (tests/ldm_fixtures.py describes the original modules, not jcompose's rules).
"""

import json

import ldm_fixtures as fx
import numpy as np
import pytest

from jcompose import convert
from jcompose.models import encoders, ldm_convert, ldm_names, loading
from jcompose.models.files import read_safetensors
from jcompose.models.pt_layout import LayoutError

ATOL = 1e-4

TINY = ["--sample-size", "8", "--head-channels", "16"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The tiny AnyDoor state dict, its .ckpt and the folder `convert anydoor-ckpt` writes from it."""
    root = tmp_path_factory.mktemp("release")
    state = fx.anydoor_state_dict(0)
    ckpt = fx.save_ckpt(root / "epoch=1-step=8687.ckpt", state,
                      {"optimizer_states": [{"state": {0: {"exp_avg": fx.torch_or_skip().randn(5000)}}}]})
    assert convert.main(["anydoor-ckpt", str(ckpt), str(root / "out"), *TINY, "--dinov2-head-channels", "8"]) == 0
    return state, ckpt, root / "out"


def _config(folder):
    return {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if not k.startswith("_")}


def _same_tensors(written: dict, oracle: dict, what: str):
    assert written.keys() == oracle.keys(), f"{what}: {sorted(set(written) ^ set(oracle))[:6]}"
    for key in oracle:
        np.testing.assert_array_equal(written[key], oracle[key].numpy(), err_msg=f"{what} {key}")


@pytest.mark.parity
def test_unet_extractor_vae_match_diffusers_single_file_conversion(release, rng):
    """Identical tensors under identical names, and equal UNet / extractor / VAE outputs, vs diffusers."""
    torch = fx.torch_or_skip()
    import diffusers
    from diffusers.loaders import single_file_utils as sfu

    state, _, out = release
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    unet_cfg, ctrl_cfg, vae_cfg = _config(out / "unet"), _config(out / "extractor"), _config(out / "vae")
    ctrl_cfg.pop("reads_latent")
    want_unet = sfu.convert_ldm_unet_checkpoint(tensors, unet_cfg)
    want_ctrl = sfu.convert_controlnet_checkpoint(tensors, ctrl_cfg)
    want_vae = sfu.convert_ldm_vae_checkpoint(tensors, vae_cfg)
    _same_tensors(read_safetensors([out / "unet" / "diffusion_pytorch_model.safetensors"]), want_unet, "unet")
    _same_tensors(read_safetensors([out / "vae" / "diffusion_pytorch_model.safetensors"]), want_vae, "vae")
    _same_tensors(read_safetensors([out / "extractor" / "diffusion_pytorch_model.safetensors"]),
                  {k: v for k, v in want_ctrl.items() if not k.startswith("conv_in.")}, "extractor")
    assert {"conv_in.weight", "conv_in.bias"} <= set(want_ctrl)  # diffusers keeps the unused conv_in; we drop it

    pt_unet = diffusers.UNet2DConditionModel(**{k: v for k, v in unet_cfg.items() if k != "sample_size"},
                                             sample_size=8).eval()
    pt_unet.load_state_dict(want_unet, strict=True)
    pt_ctrl = diffusers.ControlNetModel(**ctrl_cfg).eval()
    pt_ctrl.load_state_dict(want_ctrl, strict=True)
    pt_vae = diffusers.AutoencoderKL(**vae_cfg).eval()
    pt_vae.load_state_dict(want_vae, strict=True)

    x = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    t = np.array([17, 803])
    ctx = rng.normal(size=(2, 5, 64)).astype(np.float32)
    hint = rng.uniform(-1, 1, (2, 4, 64, 64)).astype(np.float32)
    images = rng.uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    unet = loading.load_unet(out / "unet")
    ctrl = loading.load_controlnet(out / "extractor")
    vae = loading.load_vae(out / "vae")
    got_eps = np.asarray(unet.module.apply({"params": unet.params}, x, t, ctx).sample)
    got = ctrl.module.apply({"params": ctrl.params}, None, t, ctx, hint)
    got_mean = np.asarray(vae.module.apply({"params": vae.params}, images, method=vae.module.encode).latent_dist.mean)
    got_image = np.asarray(vae.module.apply({"params": vae.params}, x, method=vae.module.decode).sample)
    with torch.no_grad():
        args = [torch.from_numpy(a) for a in (x, t, ctx)]
        want_eps = pt_unet(*args).sample.numpy()
        hook = pt_ctrl.conv_in.register_forward_hook(lambda m, i, o: torch.zeros_like(o))  # AnyDoor skips x_t
        want_down, want_mid = pt_ctrl(*args, torch.from_numpy(hint), return_dict=False)
        hook.remove()
        want_mean = pt_vae.encode(torch.from_numpy(images)).latent_dist.mean.numpy()
        want_image = pt_vae.decode(torch.from_numpy(x)).sample.numpy()
    errors = {
        "unet": float(np.abs(got_eps - want_eps).max()),
        "extractor": max(float(np.abs(np.asarray(a).transpose(0, 3, 1, 2) - b.numpy()).max())
                         for a, b in zip([*got.down_block_res_samples, got.mid_block_res_sample],
                                         [*want_down, want_mid])),
        "vae_encode": float(np.abs(got_mean - want_mean).max()),
        "vae_decode": float(np.abs(got_image - want_image).max()),
    }
    scales = {"unet": float(np.abs(want_eps).max()), "extractor": float(want_mid.abs().max()),
              "vae_encode": float(np.abs(want_mean).max()), "vae_decode": float(np.abs(want_image).max())}
    print("max |jcompose - diffusers|:", {k: f"{v:.1e} (scale {scales[k]:.2f})" for k, v in errors.items()})
    assert len(got.down_block_res_samples) == len(want_down) == 6  # 13 in SD 2.1; tiny: 3 levels x 1 layer
    assert max(errors.values()) < ATOL


def _transformers_rename(hub: dict, hidden: int, layers: int) -> dict:
    """transformers' convert_dinov2_to_hf.py (create_rename_keys, read_in_q_k_v, w12/w3 renaming), restated:
    the transformers 5 wheel does not ship the script."""
    table = [("cls_token", "embeddings.cls_token"), ("mask_token", "embeddings.mask_token"),
             ("pos_embed", "embeddings.position_embeddings"),
             ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
             ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
             ("norm.weight", "layernorm.weight"), ("norm.bias", "layernorm.bias")]
    for i in range(layers):
        for leaf in ("weight", "bias"):
            table += [(f"blocks.{i}.norm1.{leaf}", f"encoder.layer.{i}.norm1.{leaf}"),
                      (f"blocks.{i}.norm2.{leaf}", f"encoder.layer.{i}.norm2.{leaf}"),
                      (f"blocks.{i}.mlp.w12.{leaf}", f"encoder.layer.{i}.mlp.w12.{leaf}"),
                      (f"blocks.{i}.mlp.w3.{leaf}", f"encoder.layer.{i}.mlp.w3.{leaf}"),
                      (f"blocks.{i}.attn.proj.{leaf}", f"encoder.layer.{i}.attention.output.dense.{leaf}")]
        table += [(f"blocks.{i}.ls1.gamma", f"encoder.layer.{i}.layer_scale1.lambda1"),
                  (f"blocks.{i}.ls2.gamma", f"encoder.layer.{i}.layer_scale2.lambda1")]
    state = dict(hub)
    for src, dest in table:
        state[dest] = state.pop(src)
    for i in range(layers):
        weight, bias = state.pop(f"blocks.{i}.attn.qkv.weight"), state.pop(f"blocks.{i}.attn.qkv.bias")
        for j, name in enumerate(("query", "key", "value")):
            state[f"encoder.layer.{i}.attention.attention.{name}.weight"] = weight[j * hidden:(j + 1) * hidden]
            state[f"encoder.layer.{i}.attention.attention.{name}.bias"] = bias[j * hidden:(j + 1) * hidden]
    return {k.replace("w12", "weights_in").replace("w3", "weights_out"): v for k, v in state.items()}


@pytest.mark.parity
def test_dinov2_hub_names_match_transformers_conversion(release, tmp_path, rng):
    torch = fx.torch_or_skip()
    import transformers

    state, _, out = release
    prefix = ldm_names.DINOV2_PREFIX
    hub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    want = _transformers_rename(hub, fx.DINOV2["dim"], fx.DINOV2["depth"])
    written = read_safetensors([out / "dinov2" / "model.safetensors"])
    assert written.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(written[key], want[key], err_msg=key)

    config = _config(out / "dinov2")
    config.pop("architectures", None)
    pt_folder = tmp_path / "hf"
    transformers.Dinov2Config(**config).save_pretrained(pt_folder)
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in want.items()}, str(pt_folder / "model.safetensors"),
              metadata={"format": "pt"})
    pt = transformers.Dinov2Model.from_pretrained(pt_folder).eval()  # transformers 5 maps the legacy names itself
    ours = encoders.load_dinov2(out / "dinov2")
    pixels = rng.normal(size=(2, 224, 224, 3)).astype(np.float32)
    got = np.asarray(ours.module.apply({"params": ours.params}, pixels).last_hidden_state)
    with torch.no_grad():
        expected = pt(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())).last_hidden_state.numpy()
    err = float(np.abs(got - expected).max())
    print(f"DINOv2 hub names: {len(want)} tensors identical; 257 tokens max |jcompose - transformers| {err:.1e}")
    assert got.shape == (2, 257, fx.DINOV2["dim"]) and err < ATOL


# The published configs of the released models (Hugging Face config.json files, restated): the converter
# must write them from the original checkpoints' tensor shapes and its default head settings.
SD21_BASE_UNET = dict(block_out_channels=[320, 640, 1280, 1280], attention_head_dim=[5, 10, 20, 20],
                      cross_attention_dim=1024, use_linear_projection=True, layers_per_block=2,
                      down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                      up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, in_channels=4, out_channels=4,
                      transformer_layers_per_block=1, sample_size=64)
SD15_UNET = dict(SD21_BASE_UNET, attention_head_dim=8, cross_attention_dim=768, use_linear_projection=False)
DINOV2_GIANT = dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, mlp_ratio=4, hidden_act="gelu",
                    layer_norm_eps=1e-6, image_size=518, patch_size=14, num_channels=3, qkv_bias=True,
                    layerscale_value=1.0, use_swiglu_ffn=True)


def test_full_size_architectures_are_the_published_configs():
    """SD 2.1-base's UNet (AnyDoor: `num_head_channels: 64`, so 5/10/20/20 heads, which diffusers spells
    `attention_head_dim`), SD 1.5's (8 heads of any width) and Meta's ViT-g/14 (24 heads of 64, LayerNorm
    eps 1e-6 as its hub code builds it) read off full-size tensor shapes (no weights) with the converter's
    defaults: head count and head width are not interchangeable."""
    from jcompose.models import ldm_configs

    sd21 = dict(fx.UNET, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(0, 1, 2),
                context_dim=1024, head_channels=64, linear=True)
    def diffusers_shapes(cfg):  # LDM names -> diffusers names, as the converter reads a checkpoint's shapes
        shapes = fx.ldm_unet_shapes(cfg)
        return ldm_convert._apply(shapes, ldm_names.unet_rules(list(shapes)))

    for cfg, want in ((sd21, SD21_BASE_UNET), (dict(sd21, context_dim=768, linear=False), SD15_UNET)):
        got = ldm_configs.unet_config(diffusers_shapes(cfg))
        assert {k: got[k] for k in want} == want
    sd21_shapes = diffusers_shapes(sd21)
    assert ldm_configs.unet_config(sd21_shapes, head_channels=40)["attention_head_dim"] == [8, 16, 32, 32]
    assert ldm_configs.unet_config(sd21_shapes, heads=4)["attention_head_dim"] == 4
    giant = fx.hub_dinov2_shapes(dict(dim=1536, depth=40, patch=14, grid=37, swiglu_width=4096), chunks=4)
    got = ldm_configs.dinov2_config(giant)
    assert {k: got[k] for k in DINOV2_GIANT} == DINOV2_GIANT


def test_chunked_hub_blocks_map_like_flat_ones():
    """The hub's BlockChunk layout (blocks.<chunk>.<i>) names the same layers as the flat one."""
    flat = ldm_names.dinov2_rules(fx.hub_dinov2_shapes(), 32)
    chunked = ldm_names.dinov2_rules(fx.hub_dinov2_shapes(chunks=2), 32)
    assert sorted(r.target for rules in flat.values() for r in rules) == \
        sorted(r.target for rules in chunked.values() for r in rules)


def test_release_folder_loads_as_the_method_and_records_the_checkpoint(release):
    from jcompose.methods.anydoor_cli import load_release

    state, _, out = release
    info = json.loads((out / "config.json").read_text())
    assert info["global_step"] == 8687 and info["method"]["model"]["hint_widths"] == list(fx.HINT_WIDTHS)
    assert info["dropped"] == ["control_model.input_blocks.0.0.bias", "control_model.input_blocks.0.0.weight"]
    assert info["ignored_buffers"] == ["alphas_cumprod", "betas", "sqrt_alphas_cumprod"]
    method, params, frozen, step = load_release(out, "float32")
    assert step == 8687 and sorted(params) == ["extractor", "projector", "unet_decoder"]
    proj = state["cond_stage_model.projector.weight"]
    np.testing.assert_array_equal(np.asarray(params["projector"]["kernel"]), proj.T)  # torch Linear -> x @ W.T
    assert method.schedule.num_train_timesteps == 1000 and method.config.data.image_size == 64


def test_sd_single_file_becomes_a_base_folder(tmp_path):
    """v2-1_512-ema-pruned-style .safetensors (torch-free) -> unet/, vae/, scheduler/; the text encoder is
    left out and said so; AnyDoor's and SD's converters refuse each other's files."""
    from safetensors.numpy import save_file

    state = fx.sd_state_dict(3, text_tensors=3)
    src = tmp_path / "v2-1_512-ema-pruned.safetensors"
    save_file(state, str(src))
    report = ldm_convert.convert_sd(src, tmp_path / "base", sample_size=8, head_channels=16)
    assert any("3 cond_stage_model.* tensors not converted" in line for line in report)
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["model_index.json", "scheduler", "unet", "vae"]
    pipe = loading.load_pipeline(tmp_path / "base", ("unet", "vae", "scheduler"))
    assert pipe.scheduler.beta_schedule == "scaled_linear" and pipe.scheduler.beta_end == pytest.approx(0.012)
    unet = read_safetensors([tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors"])
    rules = ldm_names.unet_rules(k[len(ldm_names.UNET_PREFIX):] for k in state if k.startswith(ldm_names.UNET_PREFIX))
    for src_key, rule in rules.items():
        np.testing.assert_array_equal(unet[rule.target], state[ldm_names.UNET_PREFIX + src_key])
    with pytest.raises(LayoutError, match="not an AnyDoor"):
        ldm_convert.convert_anydoor(src, tmp_path / "no")
    any_src = tmp_path / "anydoor.safetensors"
    save_file(fx.anydoor_state_dict(4), str(any_src))
    with pytest.raises(LayoutError, match="anydoor-ckpt"):
        ldm_convert.convert_sd(any_src, tmp_path / "no2")


@pytest.mark.parity
def test_sd_conversion_matches_diffusers(tmp_path):
    torch = fx.torch_or_skip()
    from diffusers.loaders import single_file_utils as sfu

    state = fx.sd_state_dict(5)
    src = fx.save_ckpt(tmp_path / "sd.ckpt", state)
    ldm_convert.convert_sd(src, tmp_path / "base", sample_size=8, head_channels=16)
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    for part, fn in (("unet", sfu.convert_ldm_unet_checkpoint), ("vae", sfu.convert_ldm_vae_checkpoint)):
        _same_tensors(read_safetensors([tmp_path / "base" / part / "diffusion_pytorch_model.safetensors"]),
                      fn(tensors, _config(tmp_path / "base" / part)), part)


def test_unknown_and_damaged_tensors_are_named(tmp_path):
    from safetensors.numpy import save_file

    state = fx.anydoor_state_dict(6)
    state["control_model.input_blocks.1.7.weight"] = np.zeros(3, np.float32)
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(LayoutError, match=r"input_blocks\.1\.7\.weight"):
        ldm_convert.convert_anydoor(tmp_path / "odd.safetensors", tmp_path / "o1", sample_size=8, head_channels=16,
                                    dinov2_head_channels=8)
    state = fx.anydoor_state_dict(6)
    state["cond_stage_model.projector.weight"] = np.zeros((64, 31), np.float32)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LayoutError, match="projector"):
        ldm_convert.convert_anydoor(tmp_path / "bad.safetensors", tmp_path / "o2", sample_size=8, head_channels=16,
                                    dinov2_head_channels=8)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["anydoor-ckpt", str(tmp_path / "junk.ckpt"), str(tmp_path / "o3")])
    assert exit_info.value.code == 2


def test_compose_with_weights_end_to_end(tmp_path, capsys):
    """A tiny release as a torch-free .safetensors single file -> convert -> compose anydoor --weights."""
    import cv2
    from safetensors.numpy import save_file

    from jcompose import compose

    save_file(fx.anydoor_state_dict(7), str(tmp_path / "anydoor_pruned.safetensors"))
    assert convert.main(["anydoor-ckpt", str(tmp_path / "anydoor_pruned.safetensors"), str(tmp_path / "rel"), *TINY,
                         "--dinov2-head-channels", "8"]) == 0
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (96, 160, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "bg.png"), background[..., ::-1])
    mask = np.zeros((96, 160), np.uint8)
    mask[30:62, 20:56] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    ref = np.dstack([rng.integers(0, 255, (80, 80, 3), np.uint8), np.pad(np.full((50, 40), 255, np.uint8), ((15,), (20,)))])
    cv2.imwrite(str(tmp_path / "ref.png"), ref)
    written = compose.main(["anydoor", "--weights", str(tmp_path / "rel"), "--reference", str(tmp_path / "ref.png"),
                            "--background", str(tmp_path / "bg.png"), "--mask", str(tmp_path / "mask.png"),
                            "--steps", "2", "--dtype", "float32", "--seed", "3", "--out", str(tmp_path / "out.png")])
    assert written["step"] == "unrecorded"  # a pruned single file keeps no Lightning step
    result = cv2.imread(str(tmp_path / "out.png"))[..., ::-1]
    assert result.shape == background.shape
    changed = np.argwhere(np.any(result != background, axis=-1))
    # the crop (1.5-3x the 1.1x box, squared) stays left of x = 130; beyond it the background is untouched
    assert changed.size and changed[:, 1].max() < 130 and np.array_equal(result[:, 130:], background[:, 130:])
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        compose.main(["anydoor", "--weights", str(tmp_path / "rel" / "unet"), "--reference", str(tmp_path / "ref.png"),
                      "--background", str(tmp_path / "bg.png"), "--mask", str(tmp_path / "mask.png"),
                      "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2 and "not an AnyDoor release folder" in capsys.readouterr().err
