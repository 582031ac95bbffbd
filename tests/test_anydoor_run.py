"""AnyDoor from a clean start as the README shows it: the tiny run through `jcompose.train`, then
`compose anydoor` on its checkpoint with the example inputs the run leaves, one object and two; and a
LoRA run (the decoder as adapters) composed the same way, its adapters applied as W + (alpha / r) A B."""

import cv2
import jax
import numpy as np
import pytest

from configs.anydoor import get_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from jcompose import train

    workdir = tmp_path_factory.mktemp("anydoor_run")
    config = get_config("tiny")
    config.train.update(steps=2, log_every=1, ckpt_every=2)  # the README's run, shortened: wiring, not learning
    result = train.train(config, str(workdir))
    assert result["step"] == 2 and np.isfinite(result["loss"])
    return workdir


def _readme_line(run, out):
    """The README's compose line after the tiny run, with its /tmp/anydoor replaced by `run`."""
    example = run / "example"
    return ["anydoor", "--checkpoint", str(run), "--reference", str(example / "reference.png"),
            "--reference-mask", str(example / "reference_mask.png"), "--background", str(example / "background.png"),
            "--mask", str(example / "mask.png"), "--out", str(out), "--show"]


@pytest.mark.slow
def test_the_tiny_run_leaves_inputs_that_compose_reads(run, tmp_path):
    from jcompose import compose

    background = cv2.imread(str(run / "example" / "background.png"))
    target = cv2.imread(str(run / "example" / "mask.png"), cv2.IMREAD_GRAYSCALE) > 127
    reference_mask = cv2.imread(str(run / "example" / "reference_mask.png"), cv2.IMREAD_GRAYSCALE) > 127
    assert target.any() and reference_mask.any() and target.shape == background.shape[:2]

    written = compose.main(_readme_line(run, tmp_path / "result.png") + ["--steps", "2"])
    result = cv2.imread(written["image"])
    assert written["step"] == 2 and result.shape == background.shape
    ys, xs = np.nonzero(target)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    assert np.abs(result[box].astype(int) - background[box]).mean() > 1  # the box was generated anew
    show = cv2.imread(written["attention"])  # --show: inputs, collage and result side by side
    assert show.shape[0] >= background.shape[0] and show.shape[1] > 2 * background.shape[1]

    # Two objects: the example object, and the same reference put into a free corner of the background.
    h, w = target.shape
    corner = np.zeros_like(target, np.uint8)
    corner[h - h // 4:h - 2, 2:w // 4] = 255
    cv2.imwrite(str(tmp_path / "corner.png"), corner)
    two = _readme_line(run, tmp_path / "two.png")
    two += ["--reference", str(run / "example" / "reference.png"), "--reference-mask",
            str(run / "example" / "reference_mask.png"), "--mask", str(tmp_path / "corner.png"), "--steps", "2"]
    written = compose.main(two)
    assert cv2.imread(written["image"]).shape == background.shape


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """The tiny run with the UNet decoder trained as rank-2 adapters (alpha 4: scale 2), 2 steps at a rate
    that moves them."""
    from jcompose import train

    workdir = tmp_path_factory.mktemp("anydoor_lora")
    config = get_config("tiny")
    config.train.lora.update(rank=2, alpha=4.0)
    config.optim.lr = 1e-2
    config.train.update(steps=2, log_every=1, ckpt_every=2, sample_every=-1)  # no grid: the plain run writes one
    train.train(config, str(workdir))
    return workdir


@pytest.mark.slow
def test_a_lora_run_composes_with_its_adapters(lora_run, tmp_path):
    """The checkpoint holds adapters, not a decoder; compose reads it (README line) and the method it builds
    forms the decoder as W + 2 A B from the checkpoint's adapters (merged here in numpy), not the base's."""
    from flax.traverse_util import flatten_dict

    from jcompose import compose, inference
    from jcompose.checkpoint import Checkpointer
    from jcompose.methods import anydoor_inference

    checkpoints = Checkpointer(lora_run)
    state, _ = checkpoints.read(2)
    checkpoints.close()
    assert "unet_decoder_lora" in state["params"] and "unet_decoder" not in state["params"]
    written = compose.main(_readme_line(lora_run, tmp_path / "result.png") + ["--steps", "2"])
    assert written["step"] == 2 and cv2.imread(written["image"]).shape[2] == 3

    _, config = inference.run_config(str(lora_run), "anydoor")
    method, params, frozen = anydoor_inference.load_trained(config, lora_run, state["params"])
    merged = flatten_dict(jax.device_get(method.decoder_params(params, frozen)))
    base = flatten_dict(jax.device_get(frozen["unet_decoder"]))
    adapters = flatten_dict(state["params"]["unet_decoder_lora"])
    adapted = {key[:-1] for key in adapters}
    assert adapted and all(np.abs(adapters[(*m, "lora_B")]).max() > 0 for m in adapted)  # trained away from 0
    for key, w in base.items():
        want = (np.asarray(w, np.float64) + 2.0 * np.asarray(adapters[(*key[:-1], "lora_A")], np.float64)
                @ np.asarray(adapters[(*key[:-1], "lora_B")], np.float64)) if key[-1] == "kernel" and key[:-1] in adapted else w
        np.testing.assert_allclose(merged[key], want, rtol=1e-5, atol=1e-6, err_msg=str(key))
