"""The plan's counters against hand-computed values: model FLOPs on jaxprs, and FLOPs, kernels and collectives
read from optimized HLO text (loops multiplied by their trip counts)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcompose import attention_kernels
from jcompose.plan import flops, hlo, targets


def _jaxpr(fn, *args):
    return jax.jit(fn).trace(*args).jaxpr


def test_model_flops_of_dots_convolutions_and_loops():
    x, w = jnp.ones((8, 16)), jnp.ones((16, 32))
    assert flops.count(_jaxpr(lambda x, w: x @ w, x, w)).flops == 2 * 8 * 32 * 16
    image, kernel = jnp.ones((2, 10, 12, 3)), jnp.ones((3, 3, 3, 5))  # NHWC, HWIO, 'SAME' keeps 10x12

    def conv(a, b):
        return jax.lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    assert flops.count(_jaxpr(conv, image, kernel)).flops == 2 * (2 * 10 * 12 * 5) * 9 * 3

    def loop(x, w):  # 7 steps of a (8,16)@(16,16) product, and a grad through it (2 more products per step)
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=7)[0].sum()

    square = jnp.ones((16, 16))
    assert flops.count(_jaxpr(loop, x, square)).flops == 7 * 2 * 8 * 16 * 16
    assert flops.count(_jaxpr(jax.grad(loop, argnums=1), x, square)).flops == 3 * 7 * 2 * 8 * 16 * 16


def test_attention_kernel_flops_count_the_unpadded_sizes():
    """The Pallas kernel runs on 128-padded inputs; the model count uses the caller's sizes: forward 4·B·h·Nq·Nk·D,
    backward 8 (two kernels of 4)."""
    b, nq, nk, h, d = 2, 200, 77, 3, 40
    q, k = jnp.ones((b, nq, h, d)), jnp.ones((b, nk, h, d))

    def attend(q, k):
        return attention_kernels.pallas_attention(q, k, k, scale=0.1).sum()

    forward = flops.count(_jaxpr(attend, q, k))
    assert forward.attention_kernel_flops == forward.flops == 4 * b * h * nq * nk * d
    both = flops.count(_jaxpr(jax.value_and_grad(attend, argnums=(0, 1)), q, k))
    assert both.attention_kernel_flops == 3 * 4 * b * h * nq * nk * d
    # Vmapped (a benchmark job's items, each sampled as a single compose): the kernel gets a leading axis.
    items = 5
    batched = flops.count(_jaxpr(jax.vmap(attend), jnp.ones((items, *q.shape)), jnp.ones((items, *k.shape))))
    assert batched.attention_kernel_flops == items * 4 * b * h * nq * nk * d


def test_compiled_program_counts_loop_bodies_by_trip_count():
    """XLA's own analysis counts a loop body once; the HLO reading multiplies it out."""
    def loop(x):
        return jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=10)[0]

    compiled = jax.jit(loop).lower(jnp.ones((64, 64))).compile()
    one = 2 * 64 * 64 * 64
    assert compiled.cost_analysis()["flops"] == pytest.approx(one, rel=0.01)  # the body once
    summary = hlo.summarize(compiled.as_text())
    assert summary.flops == pytest.approx(10 * one) and summary.loops == [10]


# Shaped like the optimized HLO of real deviceless compiles (H100 and v5p), trimmed: a cuDNN attention forward
# and backward, a cuDNN convolution and its filter gradient, a Pallas flash kernel without a cost estimate, and an
# all-reduce, inside a while loop that runs 5 times.
HLO = """
HloModule jit_step, entry_computation_layout={()->()}

%body (p: (s32[], bf16[2,64,4,16])) -> (s32[], bf16[2,64,4,16]) {
  %p = (s32[], bf16[2,64,4,16]{3,2,1,0}) parameter(0)
  %q = bf16[2,64,4,16]{3,2,1,0} get-tuple-element(%p), index=1
  %kv = bf16[2,16,4,16]{3,2,1,0} parameter(1)
  %fwd.1 = (bf16[2,4,64,16]{3,1,2,0}, u8[0]{0}) custom-call(%q, %kv, %kv), custom_call_target="__cudnn$fmhaSoftmax", operand_layout_constraints={bf16[2,64,4,16]{3,2,1,0}, bf16[2,16,4,16]{3,2,1,0}, bf16[2,16,4,16]{3,2,1,0}}, api_version=API_VERSION_STATUS_RETURNING, metadata={op_name="jit(step)/UNet2DConditionModel.decode/up_blocks_1/attentions_0/transformer_blocks_0/attn2/custom_partitioning"}
  %bwd.2 = (bf16[2,4,64,16]{3,1,2,0}, u8[0]{0}) custom-call(%q, %kv, %kv), custom_call_target="__cudnn$fmhaSoftmaxBackward", operand_layout_constraints={bf16[2,64,4,16]{3,2,1,0}, bf16[2,16,4,16]{3,2,1,0}, bf16[2,16,4,16]{3,2,1,0}}, api_version=API_VERSION_STATUS_RETURNING
  %x = bf16[2,8,8,32]{3,2,1,0} parameter(2)
  %w = bf16[64,3,3,32]{3,2,1,0} parameter(3)
  %conv.3 = (bf16[2,8,8,64]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %dy = bf16[2,8,8,64]{3,2,1,0} parameter(4)
  %conv.4 = (bf16[64,3,3,32]{3,2,1,0}, u8[0]{0}) custom-call(%x, %dy), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %qp = bf16[2,4,128,16]{3,2,1,0} parameter(5)
  %flash_mha_bwd_dq_block_q_major_128.5 = bf16[2,4,128,16]{3,2,1,0} custom-call(%qp, %qp, %qp), custom_call_target="tpu_custom_call", backend_config={"custom_call_config":{"body":"x"}}
  %g = f32[1000]{0} parameter(6)
  %all-reduce.6 = f32[1000]{0} all-reduce(%g), replica_groups={}, to_apply=%add
  ROOT %t = (s32[], bf16[2,64,4,16]{3,2,1,0}) tuple(%p)
}

%cond (p: (s32[], bf16[2,64,4,16])) -> pred[] {
  %p = (s32[], bf16[2,64,4,16]{3,2,1,0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main () -> () {
  %init = (s32[], bf16[2,64,4,16]{3,2,1,0}) parameter(0)
  %while.7 = (s32[], bf16[2,64,4,16]{3,2,1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  ROOT %r = () tuple()
}
"""


def test_hlo_kernels_and_collectives_are_counted_per_loop_trip():
    summary = hlo.summarize(HLO)
    attention = 2 * 4 * 64 * 16 * 16  # B·h·Nq·Nk·D
    conv = 2 * (2 * 8 * 8 * 64) * 9 * 32
    flash_dq = 6 * 2 * 4 * 128 * 128 * 16
    assert summary.kernels == {"__cudnn$fmhaSoftmax": 5, "__cudnn$fmhaSoftmaxBackward": 5, "__cudnn$convForward": 5,
                               "__cudnn$convBackwardFilter": 5, "flash_mha_bwd_dq": 5}
    assert summary.flops == pytest.approx(5 * (14 * attention + 2 * conv + flash_dq))
    assert summary.collectives["all-reduce"] == [5, 5 * 4000]
    assert summary.attention_kernel_layers == {"UNet2DConditionModel/up_blocks_1/attentions_0/transformer_blocks_0/attn2"}


# Two cuBLAS GEMMs as a deviceless H100 compile with Triton GEMMs off writes them (trimmed): a padded 2-D dot and a
# batched one.
CUBLAS_HLO = """
HloModule jit_f, entry_computation_layout={()->()}

ENTRY %main () -> () {
  %a = bf16[1032,1536]{1,0} parameter(0)
  %b = bf16[1536,1536]{1,0} parameter(1)
  %custom-call.2 = (bf16[1032,1536]{1,0}, s8[4194304]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(<lambda>)/dot_general"}, backend_config={"operation_queue_id":"0","gemm_backend_config":{"selected_algorithm":"0","alpha_real":1,"beta":0,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]},"epilogue":"DEFAULT"}}
  %c = bf16[4,64,32]{2,1,0} parameter(2)
  %d = bf16[4,32,48]{2,1,0} parameter(3)
  %custom-call.3 = (bf16[4,64,48]{2,1,0}, s8[4194304]{0}) custom-call(%c, %d), custom_call_target="__cublas$lt$matmul", backend_config={"operation_queue_id":"0","gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["2"],"rhs_contracting_dimensions":["1"],"lhs_batch_dimensions":["0"],"rhs_batch_dimensions":["0"]},"epilogue":"DEFAULT"}}
  ROOT %r = () tuple()
}
"""


def test_cublas_gemms_are_counted():
    summary = hlo.summarize(CUBLAS_HLO)
    assert summary.kernels == {"__cublas$lt$matmul": 2}
    assert summary.flops == 2 * 1032 * 1536 * 1536 + 2 * 4 * 64 * 48 * 32


def test_targets_parse_cloud_names_and_refuse_others():
    v5p = targets.parse("v5p-8")
    assert (v5p.platform, v5p.chips, v5p.topology, v5p.chip.hbm_bytes) == ("tpu", 4, "v5p:2x2x1", 95 * 2**30)
    assert targets.parse("v4-32").topology == "v4:2x2x4" and targets.parse("v5p-128").topology == "v5p:4x4x4"
    assert targets.parse("v5e-16").topology == "v5e:4x4" and targets.parse("v6e-8").topology == "v6e:2x4"
    h100 = targets.parse("h100x8")
    assert (h100.platform, h100.chips, h100.chip.kind) == ("cuda", 8, "NVIDIA H100 80GB HBM3")
    assert targets.parse("h200").chips == 1 and targets.parse("v5p-8", slices=2).devices_count == 8
    config = targets.gpu_target_config("h100")
    assert "core_count: 132" in config and "cuda_compute_capability { major: 9 minor: 0 }" in config
    for bad in ("v5p-3", "tpu-8", "h100x"):
        with pytest.raises(ValueError, match="--target"):
            targets.parse(bad)
    with pytest.raises(ValueError, match="do not form a slice"):
        targets.parse("v6e-12")
    assert np.isclose(targets.TPU_CHIPS["v5p"].peak_bf16_flops, 459e12)
