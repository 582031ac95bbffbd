"""Attention controls against hand-written numpy references, through the attention modules' own hook."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcompose import attention
from jcompose.models import loading
from jcompose.models.transformer import Attention
from jcompose.tokens import token_positions

HEADS, DIM_HEAD, QUERY_DIM, CONTEXT_DIM, TOKENS = 2, 8, 16, 12, 10
LATENT = (8, 12)  # non-square latent


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class _Layer:
    """One attention module with random params, run plain, controlled, and as a numpy reference."""

    def __init__(self, rng, cross, factor):
        self.module = Attention(QUERY_DIM, heads=HEADS, dim_head=DIM_HEAD)
        self.h, self.w = -(-LATENT[0] // factor), -(-LATENT[1] // factor)
        self.hidden = rng.normal(size=(2, self.h * self.w, QUERY_DIM)).astype(np.float32)
        self.context = rng.normal(size=(2, TOKENS, CONTEXT_DIM)).astype(np.float32) if cross else None
        src = self.context if cross else self.hidden
        self.params = self.module.init(jax.random.PRNGKey(0), self.hidden, src)["params"]
        self.params = jax.tree_util.tree_map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32),
                                             self.params)

    def run(self, controls, mutable=False, timestep=None):
        ctx = attention.AttentionContext(tuple(controls), latent_hw=LATENT, timestep=timestep)
        return self.module.apply({"params": self.params}, self.hidden, self.context, (self.h, self.w), ctx,
                                 mutable=[attention.CAPTURE_COLLECTION] if mutable else False)

    def reference(self, edit):
        """numpy attention with `edit(probs)` on (B, heads, Nq, Nk) probabilities."""
        p = {k: {n: np.asarray(v) for n, v in d.items()} for k, d in self.params.items()}
        src = self.hidden if self.context is None else self.context
        q = (self.hidden @ p["to_q"]["kernel"]).reshape(2, -1, HEADS, DIM_HEAD)
        k = (src @ p["to_k"]["kernel"]).reshape(2, -1, HEADS, DIM_HEAD)
        v = (src @ p["to_v"]["kernel"]).reshape(2, -1, HEADS, DIM_HEAD)
        probs = _softmax(np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(DIM_HEAD))
        probs = edit(probs)
        out = np.einsum("bnqk,bknh->bqnh", probs, v).reshape(2, -1, HEADS * DIM_HEAD)
        return out @ p["to_out_0"]["kernel"] + p["to_out_0"]["bias"], probs


def _mask(rng):
    return (rng.uniform(size=(2,) + LATENT) > 0.5).astype(np.float32)


def _pixel_mask(mask, factor):
    """The layer-resolution mask, flattened per batch: nearest = every factor-th row/column."""
    b, hh, ww = mask.shape
    rows, cols = range(0, hh, factor), range(0, ww, factor)
    return np.array([[mask[i, r, c] for r in rows for c in cols] for i in range(b)])


@pytest.mark.parametrize("factor, cross", [(1, True), (2, False)])
def test_no_control_equals_plain_attention(rng, factor, cross):
    layer = _Layer(rng, cross=cross, factor=factor)
    want = layer.reference(lambda p: p)[0]
    np.testing.assert_allclose(np.asarray(layer.run(())), want, atol=1e-5)
    plain = layer.module.apply({"params": layer.params}, layer.hidden, layer.context, (layer.h, layer.w))
    np.testing.assert_allclose(np.asarray(plain), want, atol=1e-5)


@pytest.mark.parametrize("renormalize", [False, True])
def test_masked_cross_attention(rng, renormalize):
    layer, mask = _Layer(rng, cross=True, factor=2), _mask(rng)
    control = attention.MaskedCrossAttention(mask, background_tokens=(7, 8), renormalize=renormalize)
    inside = _pixel_mask(mask, 2)

    def edit(p):
        p = p.copy()
        for b in range(2):
            for q in range(p.shape[2]):
                kept = range(1, TOKENS // 2 + 1) if inside[b, q] else (7, 8)
                for k in range(TOKENS):
                    if k not in kept:
                        p[b, :, q, k] = 0.0
                if renormalize:
                    p[b, :, q, :] /= p[b, :, q, :].sum(-1, keepdims=True)
        return p

    want, _ = layer.reference(edit)
    np.testing.assert_allclose(np.asarray(layer.run([control])), want, atol=1e-5)


def test_released_masked_cross_attention_silences_the_background(rng):
    layer, mask = _Layer(rng, cross=True, factor=1), _mask(rng)
    out = np.asarray(layer.run([attention.MaskedCrossAttention(mask)]))
    outside = _pixel_mask(mask, 1) == 0
    bias = np.asarray(layer.params["to_out_0"]["bias"])
    np.testing.assert_allclose(out[outside], np.broadcast_to(bias, out[outside].shape), atol=1e-6)


def test_masked_self_attention_on_chosen_layers_only(rng):
    layer, mask = _Layer(rng, cross=False, factor=2), _mask(rng)
    name = ""  # a lone top-level attention module has the empty path
    m = _pixel_mask(mask, 2)

    def edit(p):
        p = p.copy()
        for b in range(2):
            for q in range(p.shape[2]):
                for k in range(p.shape[3]):
                    if m[b, q] != m[b, k]:
                        p[b, :, q, k] *= 0.3
        return p

    want, _ = layer.reference(edit)
    control = attention.MaskedSelfAttention(mask, layers=frozenset({name}), cross_weight=0.3)
    np.testing.assert_allclose(np.asarray(layer.run([control])), want, atol=1e-5)
    other = attention.MaskedSelfAttention(mask, layers=frozenset({"up_blocks_9/x"}))
    np.testing.assert_allclose(np.asarray(layer.run([other])), layer.reference(lambda p: p)[0], atol=1e-5)


@pytest.mark.parametrize("factor, active", [(2, True), (8, False)])
def test_layout_control(rng, factor, active):
    layer, mask = _Layer(rng, cross=True, factor=factor), _mask(rng)
    m = _pixel_mask(mask, factor)

    def edit(p):
        p = p.copy()
        if active:
            for k in (3, 4):
                p[:, :, :, k] *= m[:, None, :]
        return p

    control = attention.LayoutControl(mask, tokens=(3, 4), factors=(1, 2, 4))
    np.testing.assert_allclose(np.asarray(layer.run([control])), layer.reference(edit)[0], atol=1e-5)


def test_layout_control_max_pooling_and_conditional_half(rng):
    layer, mask = _Layer(rng, cross=True, factor=2), _mask(rng)
    # max pooling with the ceil rule, written out: cell (r, c) covers rows 2r..2r+1, columns 2c..2c+1
    pooled = np.array([[[mask[b, 2 * r:2 * r + 2, 2 * c:2 * c + 2].max() for c in range(layer.w)]
                        for r in range(layer.h)] for b in range(2)]).reshape(2, -1)

    def edit(p):
        p = p.copy()
        p[:, :, :, 3] *= pooled[:, None, :]
        return p

    control = attention.LayoutControl(mask, tokens=(3,), reduce="max")
    np.testing.assert_allclose(np.asarray(layer.run([control])), layer.reference(edit)[0], atol=1e-5)
    # A CFG-doubled batch [uncond; cond] with halves="cond": the first half is plain attention.
    layer.hidden = np.concatenate([layer.hidden, layer.hidden])
    layer.context = np.concatenate([layer.context, layer.context])
    out = np.asarray(layer.run([attention.LayoutControl(mask, tokens=(3,), reduce="max", halves="cond")]))
    plain = np.asarray(layer.run([]))
    np.testing.assert_allclose(out[:2], plain[:2], atol=1e-6)
    np.testing.assert_allclose(out[2:], np.asarray(layer.run([control]))[2:], atol=1e-6)
    assert np.abs(out[2:] - plain[2:]).max() > 1e-3


def test_schedule_blends_by_timestep(rng):
    layer, mask = _Layer(rng, cross=True, factor=1), _mask(rng)
    half = attention.LayoutControl(mask, tokens=(2,), schedule=lambda t: jnp.where(t > 500, 0.5, 0.0))

    def run(t):
        return np.asarray(layer.run([half], timestep=jnp.asarray(t)))

    m = _pixel_mask(mask, 1)

    def edit(p):
        p = p.copy()
        p[:, :, :, 2] *= 0.5 + 0.5 * m[:, None, :]
        return p

    np.testing.assert_allclose(run(800), layer.reference(edit)[0], atol=1e-5)
    np.testing.assert_allclose(run(100), layer.reference(lambda p: p)[0], atol=1e-5)


def test_capture_returns_head_averaged_maps(rng):
    layer = _Layer(rng, cross=True, factor=2)
    _, state = layer.run([attention.CaptureCrossAttention(factor=2)], mutable=True)
    maps = np.asarray(attention.average_captured(state))
    _, probs = layer.reference(lambda p: p)
    np.testing.assert_allclose(maps, probs.mean(1).reshape(2, layer.h, layer.w, TOKENS), atol=1e-6)


def test_spatial_size_and_mask_downsampling():
    assert attention.spatial_size(64 * 64, (64, 64)) == (64, 64, 1)
    assert attention.spatial_size(16 * 16, (64, 64)) == (16, 16, 4)
    assert attention.spatial_size(4 * 6, (8, 12)) == (4, 6, 2)
    assert attention.spatial_size(3 * 4, (5, 7)) == (3, 4, 2)  # ceil, as a stride-2 pad-1 conv
    with pytest.raises(ValueError, match="no downsampling of the 8x12 latent"):
        attention.spatial_size(7, (8, 12))
    mask = np.arange(64).reshape(8, 8)
    np.testing.assert_array_equal(attention.downsample_mask(mask, 4), [[0, 4], [32, 36]])


@pytest.fixture(scope="module")
def tiny_unet(tiny_bases):
    return loading.load_unet(tiny_bases["sd15"] / "unet", weights="msgpack")


def test_unet_with_a_neutral_control_matches_plain_unet(tiny_unet, rng):
    """The explicit (controlled) attention path of every layer equals the uncontrolled one."""
    x = rng.normal(size=(2, 4, 8, 12)).astype(np.float32)
    ctx = rng.normal(size=(2, 16, 32)).astype(np.float32)
    t = jnp.array([5, 600])
    plain = jax.jit(tiny_unet.module.apply)({"params": tiny_unet.params}, x, t, ctx).sample  # jitted: op by op
    everywhere = attention.LayoutControl(np.ones((8, 12), np.float32), tokens=(1,), factors=(1, 2, 4))  # ~10 s
    routed = jax.jit(lambda p: tiny_unet.module.apply(p, x, t, ctx, attention=attention.AttentionContext(
        (everywhere,), latent_hw=(8, 12))).sample)({"params": tiny_unet.params})
    np.testing.assert_allclose(np.asarray(routed), np.asarray(plain), atol=1e-5)


def test_layer_listing_and_decoder_selection(tiny_unet):
    module, params = tiny_unet.module, tiny_unet.params
    calls = attention.attention_layers(
        lambda ctx: module.apply({"params": params}, jnp.zeros((1, 4, 8, 8)), jnp.array([1]), jnp.zeros((1, 16, 32)),
                                 attention=ctx),
        latent_hw=(8, 8),
    )
    # 2 cross-attention down blocks x 1 layer, mid, 2 cross-attention up blocks x 2 layers; attn1+attn2 each.
    assert len(calls) == 2 * (2 + 1 + 4)
    assert [c.is_cross for c in calls[:2]] == [False, True]
    assert sorted({(c.height, c.factor) for c in calls}) == [(2, 4), (4, 2), (8, 1)]
    last = attention.decoder_self_attention_layers(calls, 3)
    assert last == {
        "up_blocks_1/attentions_1/transformer_blocks_0/attn1",
        "up_blocks_2/attentions_0/transformer_blocks_0/attn1",
        "up_blocks_2/attentions_1/transformer_blocks_0/attn1",
    }
    with pytest.raises(ValueError, match="the UNet has 4"):
        attention.decoder_self_attention_layers(calls, 7)


def test_token_positions(tiny_bases):
    tok = loading.load_tokenizer(tiny_bases["sd15"] / "tokenizer")
    assert token_positions(tok, "a photo of sks dog on the beach", ["dog", "beach"]) == [5, 8]
    assert token_positions(tok, "a teddy bear", ["teddy bear"]) == [2, 3]
    with pytest.raises(ValueError, match=r"word 'cat' .* is not in the prompt 'a dog'"):
        token_positions(tok, "a dog", ["cat"])


def test_mask_batch_serves_the_cfg_doubled_batch(rng):
    layer, mask = _Layer(rng, cross=True, factor=1), _mask(rng)  # 2 different masks for batch 2
    single = np.asarray(layer.run([attention.LayoutControl(mask, tokens=(1, 2))]))
    layer.hidden = np.concatenate([layer.hidden, layer.hidden])  # [uncond; cond] halves, batch 4
    layer.context = np.concatenate([layer.context, layer.context])
    doubled = np.asarray(layer.run([attention.LayoutControl(mask, tokens=(1, 2))]))
    np.testing.assert_allclose(doubled[:2], single, atol=1e-6)
    np.testing.assert_allclose(doubled[2:], single, atol=1e-6)
    with pytest.raises(ValueError, match="mask batch 3 does not divide the attention batch 4"):
        layer.run([attention.LayoutControl(np.concatenate([mask, mask[:1]]), tokens=(1,))])
