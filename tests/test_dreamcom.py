"""DreamCom: the loss against numpy on the same draw, and the attention masks it trains and samples with."""

import jax
import jax.numpy as jnp
import module_calls
import numpy as np
import pytest
from flax import struct

from configs.common import load
from input_pipeline.pipeline import make_iterator
from jcompose import attention, methods
from jcompose.attention import CAPTURE_COLLECTION


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = load("configs/dreamcom.py:tiny")
    method = methods.build(config)
    params, frozen = method.init(str(tmp_path_factory.mktemp("dreamcom")))
    data = make_iterator(method.make_source(0), method.make_transform(0), per_process_batch=2, seed=0)
    for _ in range(30):  # a batch with zoom-out padding, so the loss mask is exercised too
        batch = {k: jnp.asarray(v) for k, v in next(data).items()}
        if float(batch["loss_mask"][:, ::8, ::8].mean()) < 0.95:
            break
    return method, params, frozen, batch


def _alphas_cumprod():
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2  # the tiny base's scaled-linear
    return np.cumprod(1 - betas).astype(np.float32).astype(np.float64)


def test_loss_equals_numpy_on_the_same_draw(setup):
    method, params, frozen, batch = setup
    rng = jax.random.PRNGKey(3)
    loss, metrics = jax.jit(method.loss)(params, frozen, batch, rng)

    # The same draw, the forward through the modules called directly, the loss in numpy.
    k_latent, k_masked, k_noise, k_t = jax.random.split(rng, 4)
    vae, unet, text = method.pipe.vae.module, method.pipe.unet.module, method.pipe.text_encoder.module

    encode_image = module_calls.vae_sample(vae)

    def latents(images, key):
        latent = encode_image(frozen["vae"], np.asarray(images).transpose(0, 3, 1, 2), key)
        return np.asarray(latent) * vae.scaling_factor

    z0, zm = latents(batch["image"], k_latent), latents(batch["masked_image"], k_masked)
    mask = np.asarray(batch["mask"])[:, ::8, ::8, 0]
    loss_mask = np.asarray(batch["loss_mask"])[:, ::8, ::8, 0]
    noise = np.asarray(jax.random.normal(k_noise, z0.shape))
    t = np.asarray(jax.random.randint(k_t, (2,), 0, 1000))
    a = _alphas_cumprod()[t][:, None, None, None]
    zt = np.sqrt(a) * z0 + np.sqrt(1 - a) * noise

    encode_text = module_calls.text_states(text)

    def encode(ids):
        return np.asarray(encode_text(frozen["text_encoder"], np.asarray(ids)))

    n = (16 - 1) // 2  # the tiny tokenizer's 16 positions: instance 1..7, background 8..14
    e_in, e_out, e_empty = encode(batch["input_ids"]), encode(method.tokenize(["background"])), encode(
        method.tokenize([""]))
    context = np.repeat(e_empty, 2, axis=0)
    context[:, 1:n + 1] = e_in[:, 1:n + 1]
    context[:, n + 1:2 * n + 1] = e_out[:, 1:n + 1]
    control = attention.MaskedCrossAttention(mask, foreground_tokens=tuple(range(1, n + 1)))
    x_in = np.concatenate([zt, mask[:, None], zm], axis=1).astype(np.float32)
    controlled = module_calls.controlled_unet(unet, (control,), (8, 8))
    eps = np.asarray(controlled(params["unet"], x_in, jnp.asarray(t), context), np.float64)
    per_sample = [((eps[b] - noise[b]) ** 2 * loss_mask[b]).sum() / loss_mask[b].sum() for b in range(2)]
    want = float(np.mean(per_sample))
    print(f"jcompose {float(loss):.7f} numpy {want:.7f}; box area {mask.mean():.2f}, loss-mask area {loss_mask.mean():.2f}")
    assert abs(float(loss) - want) < 1e-5 * max(1.0, want)
    np.testing.assert_allclose(float(metrics["mse"]), np.mean((eps - noise) ** 2), rtol=1e-5)
    assert 0 < mask.mean() < 1 and loss_mask.mean() < 1  # a real box and padding: both masks are exercised


@struct.dataclass
class _CaptureAll(attention.Control):
    """Test probe: sows the (already controlled) probabilities of every attention layer of one kind."""

    cross: bool = struct.field(pytree_node=False, default=True)

    def applies(self, call):
        return call.is_cross == self.cross

    def __call__(self, probs, call, module):
        module.sow(CAPTURE_COLLECTION, "probs", probs)
        return probs


def _captured(method, params, frozen, batch, controls, probe):
    mask, extra = method.unet_input(frozen, batch, jax.random.PRNGKey(0))
    x = jnp.concatenate([jax.random.normal(jax.random.PRNGKey(1), (2, 4, 8, 8)), extra], axis=1)
    context = method.training_context(frozen["text_encoder"], batch["input_ids"])
    _, state = method.pipe.unet.module.apply(
        {"params": params["unet"]}, x, jnp.array([300, 700]), context, mutable=[CAPTURE_COLLECTION],
        attention=attention.AttentionContext(tuple(controls(mask)) + (probe,), latent_hw=(8, 8)))
    return np.asarray(mask), jax.tree_util.tree_leaves_with_path(state)


def _layer_mask(mask, probs):
    factor = int(round((mask.shape[1] * mask.shape[2] / probs.shape[2]) ** 0.5))
    return mask[:, ::factor, ::factor].reshape(mask.shape[0], -1)  # (B, Nq)


def test_training_cross_attention_keeps_instance_tokens_inside_the_box(setup):
    method, params, frozen, batch = setup
    n = method.num_inside
    mask, maps = _captured(method, params, frozen, batch, lambda m: method.controls(m, sampling=False),
                           _CaptureAll(cross=True))
    assert len(maps) == 7  # every cross-attention layer of the tiny UNet (2 down, mid, 4 up)
    for path, probs in maps:
        probs = np.asarray(probs)  # (B, heads, Nq, Nk)
        inside = _layer_mask(mask, probs)[:, None, :, None]
        outside_mass = (probs[..., 1:n + 1] * (1 - inside)).sum()
        inside_mass = (probs[..., 1:n + 1] * inside).sum()
        assert outside_mass == 0.0, jax.tree_util.keystr(path)
        assert inside_mass > 0, jax.tree_util.keystr(path)
        assert np.abs(probs[..., 0]).max() == 0 and np.abs(probs[..., n + 1:]).max() == 0  # SOT, background


@pytest.mark.parametrize("rule", ["released", "paper", "none"])
def test_sampling_self_attention_does_not_mix_box_and_background(setup, rule):
    method, params, frozen, batch = setup
    layers = method.self_attention_layers(rule)
    mask, maps = _captured(method, params, frozen, batch,
                           lambda m: method.controls(m, sampling=True, self_attention=rule), _CaptureAll(cross=False))
    masked = 0
    for path, probs in maps:
        name = "/".join(k.key for k in path[1:-2])  # .../attn1/probs/0 -> layer path
        probs = np.asarray(probs)
        m = _layer_mask(mask, probs)
        across = m[:, None, :, None] * (1 - m[:, None, None, :]) + (1 - m[:, None, :, None]) * m[:, None, None, :]
        mixed = (probs * across).sum()
        if name in layers:
            masked += 1
            assert mixed == 0.0, name
        elif across.any():
            assert mixed > 0, name
    # the tiny UNet's 7 layers: released = its 4 decoder layers, paper = the 3 before its last 6 decoder ones
    assert masked == len(layers) == {"released": 4, "paper": 3, "none": 0}[rule]


def test_self_attention_rules_on_the_full_size_inpainting_unet():
    """On SD 1.5-inpainting's own architecture (traced abstractly: no weights, no FLOPs), by name: its 16
    self-attention layers; released = up 32x32 layers 2 and 3 and all three up 64x64 layers (the last 5
    decoder layers, reference/dreamcom.md A.2); paper = every layer but the last 6 of the decoder (Sec.
    4.3 and the implementation details: the 6 encoder layers, the mid block and the 16x16 decoder block,
    10 of 16)."""
    from jcompose.bench.weights import full_size_configs
    from jcompose.methods.dreamcom import self_attention_names, self_attention_rule_layers
    from jcompose.models.unet import UNet2DConditionModel

    unet = UNet2DConditionModel(**full_size_configs("sd15-inpaint")[0])
    x, t, ctx = jnp.zeros((1, 9, 64, 64)), jnp.ones((1,), jnp.int32), jnp.zeros((1, 77, 768))
    params = jax.eval_shape(lambda: unet.init(jax.random.PRNGKey(0), x, t, ctx))["params"]
    names = self_attention_names(unet, params)

    def layer(block, attn):
        return f"{block}/attentions_{attn}/transformer_blocks_0/attn1"

    down = [layer(f"down_blocks_{b}", a) for b in range(3) for a in range(2)]
    up = [layer(f"up_blocks_{b}", a) for b in range(1, 4) for a in range(3)]
    assert names == down + [layer("mid_block", 0)] + up  # SD 1.5's 16, in call order
    assert self_attention_rule_layers(names, "released") == set(up[-5:]) == {
        layer("up_blocks_2", 1), layer("up_blocks_2", 2), layer("up_blocks_3", 0), layer("up_blocks_3", 1),
        layer("up_blocks_3", 2)}
    paper = self_attention_rule_layers(names, "paper")
    assert paper == set(down) | {layer("mid_block", 0)} | {layer("up_blocks_1", a) for a in range(3)}
    assert len(paper) == 10
    assert self_attention_rule_layers(names, "none") == frozenset()


TINY_DECODER_SELF_ATTENTION = frozenset(f"up_blocks_{b}/attentions_{a}/transformer_blocks_0/attn1"
                                        for b in (1, 2) for a in (0, 1))  # the tiny UNet's 4 decoder layers


def test_sampling_runs_under_both_masked_attentions(setup):
    """`sample` (2 DDIM steps, CFG 7.5) against a loop written here: the same draws, the UNet called with
    masked cross-attention (tokens 1..n inside the box) and masked self-attention on the released layers
    (here all 4 decoder layers, named by hand) in both CFG halves, DDIM eta 0 in numpy (leading spacing:
    t = 501, 1; final alpha = alphas_cumprod[0]). The loop without masked self-attention ends far from
    `sample` (0.8 of [-1, 1]; without any control 2.0): a sampler that drops either fails this test."""
    method, params, frozen, batch = setup
    rng = jax.random.PRNGKey(7)
    got = np.asarray(jax.jit(lambda p, f, b, r: method.sample(p, f, b, r, num_steps=2))(params, frozen, batch, rng))

    vae, unet, text = method.pipe.vae.module, method.pipe.unet.module, method.pipe.text_encoder.module
    k_masked, k_noise = jax.random.split(rng)
    mask = np.asarray(batch["mask"])[:, ::8, ::8, 0]
    masked = np.asarray(batch["masked_image"]).transpose(0, 3, 1, 2)
    latent = module_calls.vae_sample(vae)(frozen["vae"], masked, k_masked)
    extra = np.concatenate([mask[:, None], np.asarray(latent) * vae.scaling_factor], axis=1)
    z0 = np.asarray(jax.random.normal(k_noise, (2, 4, 8, 8)), np.float64)

    encode_text = module_calls.text_states(text)

    def encode(ids):
        return np.asarray(encode_text(frozen["text_encoder"], np.asarray(ids)))

    context = np.concatenate([np.repeat(encode(method.tokenize([""])), 2, axis=0), encode(batch["input_ids"])])
    n = (16 - 1) // 2
    cross = attention.MaskedCrossAttention(np.concatenate([mask, mask]), foreground_tokens=tuple(range(1, n + 1)))
    masked_self = attention.MaskedSelfAttention(np.concatenate([mask, mask]), layers=TINY_DECODER_SELF_ATTENTION)
    alphas = _alphas_cumprod()

    decode = module_calls.vae_decode(vae)

    def run(controls):
        z = z0
        controlled = module_calls.controlled_unet(unet, controls, (8, 8))
        for t, prev in ((501, 1), (1, -499)):
            x_in = np.concatenate([np.concatenate([z, z]), np.concatenate([extra, extra])], axis=1)
            out = np.asarray(controlled(params["unet"], x_in.astype(np.float32), jnp.full((4,), t), context),
                             np.float64)
            eps = out[:2] + 7.5 * (out[2:] - out[:2])
            a, a_prev = alphas[t], alphas[prev] if prev >= 0 else alphas[0]
            x0 = (z - np.sqrt(1 - a) * eps) / np.sqrt(a)
            z = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
        image = decode(frozen["vae"], (z / vae.scaling_factor).astype(np.float32))
        return np.clip(np.asarray(image).transpose(0, 2, 3, 1), -1, 1)

    errors = {name: float(np.abs(got - run(controls)).max()) for name, controls in (
        ("both", (cross, masked_self)), ("cross only", (cross,)))}
    print("max |sample - loop| by the loop's controls:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert errors["both"] < 2e-4
    assert errors["cross only"] > 50 * max(errors["both"], 1e-5)  # the self-attention mask alone matters


def test_objects_of_different_classes_keep_their_own_prompts_and_photos(tmp_path):
    """A run of a toy and a cup (the synthetic MureCom set then holds both categories): the stacked batches
    the trainer draws (one stream per object, `make_source(k)` / `make_transform(k)`) carry in row k object
    k's prompt, "a photo of sks <its class noun>", and object k's stream reads only object k's photos."""
    from input_pipeline.stacked import StackedIterator
    from jcompose.models import loading, tiny

    config = load("configs/dreamcom.py:tiny")
    config.data.objects = ("murecom:Toy/fg1", "murecom:Cup/fg1")
    method = methods.build(config)
    method.workdir = tmp_path  # the data and the tiny base's tokenizer only: no model is loaded
    tiny.write_tokenizer(tmp_path / "base" / "tokenizer")
    method.pipe = loading.load_pipeline(tmp_path / "base", ("tokenizer",))
    streams = StackedIterator([make_iterator(method.make_source(k), method.make_transform(k), per_process_batch=2,
                                             seed=k) for k in range(2)])
    assert sorted(p.name for p in (tmp_path / "data" / "murecom").iterdir()) == ["Cup", "Toy"]
    assert method.model_names == ["Toy_fg1", "Cup_fg1"]
    batch = next(streams)
    assert batch["input_ids"].shape[:2] == batch["image"].shape[:2] == (2, 2)
    for k, (noun, folder) in enumerate((("toy", "Toy/fg1"), ("cup", "Cup/fg1"))):
        want = method.tokenize([f"a photo of sks {noun}"])[0]
        assert all(np.array_equal(ids, want) for ids in batch["input_ids"][k]), noun
        source = method.make_source(k)
        assert len(source) == 5 and all(f"/{folder}/" in str(source[i]["source"]) for i in range(5))
    assert not np.array_equal(batch["input_ids"][0], batch["input_ids"][1])


def test_loss_and_gradients_match_the_pytorch_reference(setup, tmp_path):
    """The `bench train` PyTorch step (jcompose/bench/torch_train_dreamcom.py: diffusers' 9-channel UNet,
    a masked cross-attention processor, the released context layout and loss normalisation) on the same
    weights and the same draw gives the same loss and UNet gradients: the benchmark compares equal work."""
    import shutil

    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from jcompose.bench.torch_train_dreamcom import DreamComTorch
    from jcompose.models import encoders, loading, pt_layout

    method, params, frozen, batch = setup
    params = jax.tree_util.tree_map(lambda v: v + 0.01 * jnp.sign(v), params)  # not the base: a trained-like UNet
    folder = tmp_path / "base"
    loading.export_diffusers(method.pipe.unet.module, params["unet"], folder / "unet")
    loading.export_diffusers(method.pipe.vae.module, frozen["vae"], folder / "vae")
    encoders.export_encoder(method.pipe.text_encoder.module, frozen["text_encoder"], folder / "text_encoder")
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(method.pipe.root / part, folder / part)

    rng = jax.random.PRNGKey(5)
    # jitted: one compile instead of thousands of op-by-op dispatches (~60 s of this test on 2 cores)
    loss, grads = jax.jit(jax.value_and_grad(lambda p: method.loss(p, frozen, batch, rng)[0]))(params)
    k_latent, k_masked, k_noise, k_t = jax.random.split(rng, 4)  # the loss's own draw (see DreamComMethod.loss)
    encode = jax.jit(method._latents)
    latents = np.array(encode(frozen, batch["image"], k_latent))  # writable copies for torch
    masked = np.array(encode(frozen, batch["masked_image"], k_masked))
    noise = np.array(jax.random.normal(k_noise, latents.shape))
    t = np.array(jax.random.randint(k_t, (latents.shape[0],), 0, 1000))

    model = DreamComTorch(folder, {k: np.asarray(v) for k, v in batch.items()}, method.config, "cpu")
    torch_loss = model.loss(*(torch.from_numpy(x) for x in (latents, masked, noise)), torch.from_numpy(t))
    torch_loss.backward()
    named = dict(model.unet.named_parameters())
    pairs = [(v, named[k].grad.numpy()) for k, v in pt_layout.flax_to_state_dict(grads["unet"]).items()]
    # max |jcompose - torch| over all UNet gradients / the largest gradient (per-leaf ratios would see
    # float rounding on leaves whose gradient is ~0)
    error = max(float(np.abs(a - b).max()) for a, b in pairs) / max(float(np.abs(b).max()) for _, b in pairs)
    print(f"loss jcompose {float(loss):.7f} torch {float(torch_loss.detach()):.7f}; relative UNet gradient error {error:.1e}")
    want = float(torch_loss.detach())
    assert abs(float(loss) - want) < 1e-5 * max(1.0, want)
    assert error < 1e-3 and len(pairs) == len(named)
