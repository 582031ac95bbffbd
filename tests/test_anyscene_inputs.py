"""AnyScene's inputs: the conditioning image as F_c receives it in each format (training and both
classifier-free guidance halves), layout control on the UNet's cross-attention maps (paper eq. 7), and the
benchmark set built from COCO-format files.

Everything runs on the tiny random SD 1.5 (`configs/anyscene.py:tiny`) at 64 px or less.
"""

import json

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from anyscene_runs import tiny_anyscene

from input_pipeline import anyscene_benchmark
from input_pipeline.sources.synthetic import write_synthetic
from jcompose import attention
from jcompose.methods import anyscene_inference
from jcompose.tokens import token_positions


@pytest.fixture(scope="module")
def anyscene(tmp_path_factory):
    """(method, params with live conditioning, frozen, batch of 2 at 64 px, workdir): anyscene_runs.tiny_anyscene."""
    return tiny_anyscene(tmp_path_factory.mktemp("anyscene_inputs"))


class _Seen(Exception):
    """Raised by `_ControlNetSpy` with the conditioning image F_c was called with."""


class _ControlNetSpy:
    """Stands in for F_c's module: raises `_Seen(cond)` with the conditioning image of its first call, so
    the method's code up to F_c runs op by op (un-jitted), with nothing compiled past it."""

    def __init__(self, module):
        self.module = module

    def apply(self, variables, x, t, context, cond, **kwargs):
        raise _Seen(np.asarray(cond))


def _conditioning_seen(method, run) -> np.ndarray:
    method.controlnet = _ControlNetSpy(method.controlnet)
    try:
        run()
    except _Seen as seen:
        return seen.args[0]
    finally:
        method.controlnet = method.controlnet.module
    raise AssertionError("F_c was not called")


def test_the_controlnet_receives_the_conditioning_image_of_its_format(anyscene, tmp_path):
    """F_c's input, read at its call, against the image files: "inpaint" (the community ControlNet-Inpaint's
    format, diffusers' make_inpaint_condition) is the object's 8-bit RGB / 255 with every pixel to generate
    at -1; "signed" is the composite at (RGB / 127.5 - 1) with the canvas colour around the object. Training
    (the loss) and sampling (both classifier-free guidance halves) alike."""
    method, params, frozen, batch, _ = anyscene
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    cv2.rectangle(mask, (10, 14), (41, 50), 255, -1)
    cv2.imwrite(str(tmp_path / "fg.png"), rgb[..., ::-1])
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    foreground, union = anyscene_inference.read_foregrounds([str(tmp_path / "fg.png")], [str(tmp_path / "mask.png")])
    one = {"image": batch["image"][:1], "foreground": jnp.asarray(foreground[None]), "mask": jnp.asarray(union[None]),
           "input_ids": batch["input_ids"][:1]}
    inside = (mask > 127)[None]
    expected = {"inpaint": np.where(inside[..., None], rgb / 255.0, -1.0),
                "signed": np.where(inside[..., None], rgb / 127.5 - 1.0, -1.0)}  # read_foregrounds' canvas: black
    latents, t = jnp.zeros((1, 4, 8, 8)), jnp.array([500])  # the loss past `draw` (no VAE encode)
    cond_format = method.config.model.cond_format
    try:
        for fmt in ("inpaint", "signed"):
            method.config.model.cond_format = fmt
            training = _conditioning_seen(method, lambda: method.loss_terms(params, frozen, one, latents, latents, t))
            sampling = _conditioning_seen(method, lambda: method.sample(params, frozen, one, jax.random.PRNGKey(0),
                                                                        num_steps=1, guidance_scale=7.5))
            np.testing.assert_allclose(training.transpose(0, 2, 3, 1), expected[fmt], atol=1e-6, err_msg=fmt)
            assert sampling.shape == (2, 3, 64, 64)  # [uncond; cond]: both halves see the foreground
            for half in sampling:
                np.testing.assert_allclose(half.transpose(1, 2, 0), expected[fmt][0], atol=1e-6, err_msg=fmt)
    finally:
        method.config.model.cond_format = cond_format


def test_layout_control_zeroes_word_attention_outside_the_mask(anyscene):
    method, params, frozen, _, _ = anyscene
    prompt = "a red dog on the beach"
    tokens = token_positions(method.pipe.tokenizer, prompt, ["dog"])
    mask = np.zeros((1, 64, 64, 1), np.float32)
    mask[:, 12:40, 20:52] = 1
    batch = {"foreground": jnp.zeros((1, 64, 64, 3)), "mask": jnp.asarray(mask),
             "input_ids": jnp.asarray(method.tokenize([prompt]))}
    context = method._context(frozen, batch["input_ids"])
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 8, 8))
    t = jnp.array([500])
    cond = jnp.asarray(np.where(mask > 0.5, 0.5, -1.0).repeat(3, -1).transpose(0, 3, 1, 2), jnp.float32)

    def pooled(f):  # written independently: a cell of (8 f)^2 pixels is on if any of its pixels is
        side = 64 // (8 * f)
        return mask[0, ..., 0].reshape(side, 8 * f, side, 8 * f).max(axis=(1, 3))

    def maps(controlled):
        down, mid = method.residuals(params, x, t, context, cond)
        controls = method.layout_controls(batch, tokens) if controlled else ()
        captures = tuple(attention.CaptureCrossAttention(factor=f) for f in (1, 2))
        _, state = method.pipe.unet.module.apply(
            {"params": frozen["unet"]}, x, t, context, down_block_additional_residuals=tuple(down),
            mid_block_additional_residual=mid, mutable=[attention.CAPTURE_COLLECTION],
            attention=attention.AttentionContext(controls + captures, latent_hw=(8, 8)))
        return jax.tree_util.tree_leaves_with_path(state)

    layers = 0
    for (path, on), (_, off) in zip(maps(True), maps(False), strict=True):
        on, off = np.asarray(on)[0], np.asarray(off)[0]  # (h, w, N)
        factor = 8 // on.shape[0]
        outside = 1 - pooled(factor)  # the config's one rule: max pooling from pixels at every resolution
        mass_on = (on[..., tokens].sum(-1) * outside).sum()
        mass_off = (off[..., tokens].sum(-1) * outside).sum()
        print(f"{jax.tree_util.keystr(path)}: {on.shape[0]}x{on.shape[1]} outside-mask mass of 'dog' "
              f"{mass_off:.4f} -> {mass_on:.2e}")
        assert mass_on == 0.0 and mass_off > 1e-3
        if layers == 0:  # the first controlled layer (down_blocks_0): other tokens' maps are untouched
            others = [k for k in range(on.shape[-1]) if k not in tokens]
            np.testing.assert_allclose(on[..., others], off[..., others], atol=1e-6)
        layers += 1
    assert layers >= 2


# --------------------------------------------------------------------------------- benchmark set


def test_benchmark_construction(tmp_path):
    truth = write_synthetic(tmp_path / "data", num_images=6, num_videos=1, num_frames=2, image_size=(48, 64))
    coco = truth.coco_dir
    argv = ["--image_dir", str(coco / "images"), "--instances_json", str(coco / "annotations/instances.json"),
            "--captions_json", str(coco / "annotations/captions.json"), "--num", "4", "--size", "32",
            "--min_object_area", "0.005", "--seed", "3"]
    summary = anyscene_benchmark.main(argv + ["--out", str(tmp_path / "a")])
    anyscene_benchmark.main(argv + ["--out", str(tmp_path / "b")])
    assert summary["pairs"] == 4
    prompts = json.loads((tmp_path / "a" / "prompts.json").read_text())
    assert sorted(prompts) == [f"{i:05d}" for i in range(4)]
    all_captions = {c for record in truth.images for c in record["captions"]}
    for name, caption in prompts.items():
        assert caption in all_captions
        fg, ref, mask = (cv2.imread(str(tmp_path / "a" / sub / f"{name}.png"), cv2.IMREAD_UNCHANGED)
                         for sub in ("foregrounds", "reference", "masks"))
        assert fg.shape == ref.shape == (32, 32, 3) and mask.shape == (32, 32)
        on = mask == 255
        assert on.any() and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(fg[on], ref[on])  # objects copied from the scene
        assert (fg[~on] == 0).all()  # the blank canvas
        for sub in ("foregrounds", "reference", "masks"):  # a fixed seed gives the same files
            assert (tmp_path / "a" / sub / f"{name}.png").read_bytes() == (tmp_path / "b" / sub /
                                                                           f"{name}.png").read_bytes()
    rows = (tmp_path / "a" / "pairs.csv").read_text().splitlines()
    assert rows[0] == "name,source,caption" and len(rows) == 5
    more = anyscene_benchmark.main(argv[:-2] + ["--seed", "3", "--num", "50", "--out", str(tmp_path / "c")])
    assert more["pairs"] + more["skipped"] == 6  # the source ran out: every image used or skipped
