"""Name and layout rules between diffusers PyTorch and Flax, checked by hand-written examples."""

import numpy as np
import pytest

from jcompose.models import pt_layout


@pytest.mark.parametrize(
    "flax_key, pytorch_key",
    [
        (("down_blocks_0", "attentions_1", "proj_in", "kernel"), "down_blocks.0.attentions.1.proj_in.weight"),
        (("up_blocks_3", "attentions_2", "transformer_blocks_0", "attn2", "to_out_0", "bias"),
         "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0.bias"),
        (("mid_block", "attentions_0", "transformer_blocks_0", "ff", "net_0", "proj", "kernel"),
         "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"),
        (("time_embedding", "linear_1", "kernel"), "time_embedding.linear_1.weight"),
        (("conv_norm_out", "scale"), "conv_norm_out.weight"),
        (("controlnet_down_blocks_11", "kernel"), "controlnet_down_blocks.11.weight"),
        (("controlnet_cond_embedding", "blocks_5", "bias"), "controlnet_cond_embedding.blocks.5.bias"),
        (("encoder", "mid_block", "attentions_0", "proj_attn", "kernel"), "encoder.mid_block.attentions.0.to_out.0.weight"),
        (("decoder", "up_blocks_0", "resnets_2", "conv_shortcut", "kernel"), "decoder.up_blocks.0.resnets.2.conv_shortcut.weight"),
    ],
)
def test_pytorch_key_names(flax_key, pytorch_key):
    assert pt_layout.pytorch_keys(flax_key)[0] == pytorch_key


def test_old_vae_attention_names_are_accepted():
    assert pt_layout.pytorch_keys(("encoder", "mid_block", "attentions_0", "query", "bias")) == [
        "encoder.mid_block.attentions.0.to_q.bias",
        "encoder.mid_block.attentions.0.query.bias",
    ]


def test_conv_and_dense_layouts(rng):
    conv = rng.normal(size=(8, 3, 5, 7))  # PyTorch (out, in, kh, kw)
    flax = pt_layout.to_flax_layout(("conv", "kernel"), conv)
    assert flax.shape == (5, 7, 3, 8)
    assert flax[2, 4, 1, 6] == conv[6, 1, 2, 4]
    dense = rng.normal(size=(4, 6))  # PyTorch (out, in)
    assert np.array_equal(pt_layout.to_flax_layout(("fc", "kernel"), dense), dense.T)
    for key, x in ((("conv", "kernel"), flax), (("fc", "kernel"), dense.T), (("n", "scale"), dense[0])):
        back = pt_layout.to_pytorch_layout(key, x)
        assert np.array_equal(pt_layout.to_flax_layout(key, back), x)


class _Spec:
    def __init__(self, shape):
        self.shape, self.dtype = shape, np.float32


def test_missing_unexpected_and_mismatched_tensors_are_named():
    expected = {"conv_in": {"kernel": _Spec((3, 3, 4, 32)), "bias": _Spec((32,))}}
    good = {"conv_in.weight": np.zeros((32, 4, 3, 3)), "conv_in.bias": np.zeros(32)}
    tree = pt_layout.state_dict_to_flax(good, expected, "f.safetensors")
    assert tree["conv_in"]["kernel"].shape == (3, 3, 4, 32)

    with pytest.raises(pt_layout.LayoutError, match=r"(?s)f\.safetensors.*missing.*conv_in\.bias.*unexpected.*conv_in\.b"):
        pt_layout.state_dict_to_flax({"conv_in.weight": good["conv_in.weight"], "conv_in.b": np.zeros(32)},
                                     expected, "f.safetensors")
    with pytest.raises(pt_layout.LayoutError, match=r"(?s)f\.safetensors: .*wrong shape:\n    conv_in\.weight: shape \(32, 9, 3, 3\)"):
        pt_layout.state_dict_to_flax({**good, "conv_in.weight": np.zeros((32, 9, 3, 3))}, expected, "f.safetensors")


def test_scalar_parameters_stay_scalars():
    # e.g. CLIP's logit_scale: a 0-d tensor in PyTorch checkpoints
    out = pt_layout.transformers_state_dict({"logit_scale": np.float32(2.5), "proj": {"kernel": np.ones((2, 3))}})
    assert out["logit_scale"].shape == () and out["proj.weight"].shape == (3, 2)
    assert pt_layout.flax_to_state_dict({"norm": {"scale": np.float32(1.0)}})["norm.weight"].shape == ()
