"""The fused attention path: the Pallas TPU flash kernel (interpreted on CPU) against the explicit XLA path
and a numpy reference, and which implementation each layer gets per platform and setting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import ConfigError, base_config, validate
from jcompose import attention, attention_kernels
from jcompose.models.transformer import Attention


def _numpy_attention(q, k, v, scale):
    """(B, N, heads, D) float64 softmax attention."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqnh,bknh->bnqk", q, k) * scale
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnqk,bknh->bqnh", p, v)


def _inputs(q_len, kv_len, head_dim, dtype):
    keys = jax.random.split(jax.random.PRNGKey(head_dim), 4)
    q = jax.random.normal(keys[0], (1, q_len, 2, head_dim))
    k, v = (jax.random.normal(key, (1, kv_len, 2, head_dim)) for key in keys[1:3])
    return [a.astype(dtype) for a in (q, k, v)], jax.random.normal(keys[3], q.shape, dtype)


def _xla(q, k, v, scale):
    logits = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=jnp.float32) * scale
    return jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)


def _output_and_grads(fn, qkv, cotangent):
    out, vjp = jax.vjp(fn, *qkv)
    return [out, *vjp(cotangent)]


# SD 1.5's head dims 40 and 160 (> 128: padded to 256); 77 text tokens (keys padded to 128 and masked); 200
# queries: two 128-blocks, the second padded.
@pytest.mark.parametrize("q_len, kv_len, head_dim, dtype", [(200, 77, 40, jnp.bfloat16), (128, 77, 160, jnp.float32)])
def test_pallas_kernel_equals_xla(q_len, kv_len, head_dim, dtype):
    """Output and gradients of the kernel (interpreted) against the XLA path: within bf16 rounding in bf16,
    to float32 rounding in float32 (and the float32 output against a float64 numpy reference)."""
    qkv, cotangent = _inputs(q_len, kv_len, head_dim, dtype)
    scale = head_dim ** -0.5
    kernel = jax.jit(lambda *a: _output_and_grads(
        lambda *x: attention_kernels.pallas_attention(*x, scale=scale, interpret=True), a[:3], a[3]))
    fused = [np.asarray(a, np.float32) for a in kernel(*qkv, cotangent)]
    exact = [np.asarray(a, np.float32) for a in _output_and_grads(lambda *x: _xla(*x, scale), qkv, cotangent)]
    tolerance = 0.02 if dtype == jnp.bfloat16 else 2e-5
    for name, a, b in zip(("out", "dq", "dk", "dv"), fused, exact):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < tolerance, name
    if dtype == jnp.float32:
        np.testing.assert_allclose(fused[0], _numpy_attention(*qkv, scale), atol=2e-5)


def _layer(cross):
    module = Attention(16, heads=2, dim_head=8)
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 8 * 8, 16)).astype(np.float32)
    context = rng.normal(size=(2, 77, 12)).astype(np.float32) if cross else None
    params = module.init(jax.random.PRNGKey(0), hidden, context if cross else hidden)["params"]
    return module, params, hidden, context


@pytest.mark.parametrize("cross", [False, True])
def test_model_attention_through_the_kernel(cross):
    """The UNet's attention module with `model.attention = "fused"` (interpreted kernel on CPU) equals the
    XLA path; with a control on the layer it keeps the exact path."""
    module, params, hidden, context = _layer(cross)

    def run(setting, controls=()):
        ctx = attention.AttentionContext(tuple(controls), latent_hw=(8, 8))
        with attention_kernels.using(setting), attention_kernels.recording() as calls:
            out = module.apply({"params": params}, hidden, context, (8, 8), ctx)
        return np.asarray(out), [c.implementation for c in calls]

    exact, kinds = run("xla")
    assert kinds == ["xla"]
    fused, kinds = run("fused")
    assert kinds == ["pallas-interpret"]
    np.testing.assert_allclose(fused, exact, atol=2e-5)
    mask = np.ones((2, 8, 8), np.float32)
    control = attention.LayoutControl(mask, tokens=(3,)) if cross else attention.MaskedSelfAttention(
        mask, layers=frozenset({""}))
    controlled, kinds = run("fused", [control])
    assert kinds == ["xla"]
    np.testing.assert_allclose(controlled, exact, atol=1e-6)  # an all-ones mask changes nothing


def test_gpu_training_traces_through_text_cross_attention():
    """For NVIDIA, the gradient of the UNet's attention with SD's 77 text tokens traces (jax's cuDNN kernel
    refuses odd lengths in training: such a layer takes XLA); self-attention over 64 queries keeps cuDNN."""
    for cross, expected in ((True, "xla"), (False, "cudnn")):
        module, params, hidden, context = _layer(cross)
        module = module.clone(dtype=jnp.bfloat16)  # bf16 compute, as the paper configs run

        def loss(p, h, c):
            return module.apply({"params": p}, h, c, (8, 8), None).astype(jnp.float32).sum()

        with attention_kernels.compiling_for("gpu"), attention_kernels.using("auto"), \
                attention_kernels.recording() as calls:
            jax.make_jaxpr(jax.grad(loss))(params, hidden, context)
        assert [(c.implementation, c.kv_len) for c in calls] == [(expected, 77 if cross else 64)], cross


def test_choice_per_platform_and_setting():
    def chosen(platform, setting, dtype=jnp.bfloat16, head_dim=40, controlled=False, kv_len=None):
        q = jnp.zeros((2, 64, 8, head_dim), dtype)
        with attention_kernels.compiling_for(platform), attention_kernels.using(setting):
            return attention_kernels.choose(q, controlled=controlled, kv_len=kv_len)[0]

    assert chosen("tpu", "auto") == "pallas" and chosen("tpu", "auto", jnp.float32, 160) == "pallas"
    assert chosen("tpu", "auto", controlled=True) == "xla" and chosen("tpu", "xla") == "xla"
    assert chosen("cuda", "auto") == "cudnn" and chosen("gpu", "auto", head_dim=160) == "xla"
    assert chosen("gpu", "auto", jnp.float32) == "xla"
    assert chosen("gpu", "auto", kv_len=77) == "xla" and chosen("gpu", "auto", kv_len=78) == "cudnn"
    with pytest.raises(ValueError, match="bf16/fp16"):
        chosen("gpu", "fused", jnp.float32)
    assert chosen("cpu", "auto") == "xla" and chosen("cpu", "fused") == "pallas-interpret"
    with pytest.raises(ValueError, match="'auto', 'xla', 'fused'"):
        attention_kernels.set_implementation("flash")
    config = base_config()
    config.model.update(base="tiny:sd15", attention="flash")
    with pytest.raises(ConfigError, match="config.model.attention = 'flash'"):
        validate(config)
