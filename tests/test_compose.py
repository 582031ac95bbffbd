"""`python -m jcompose.compose anyscene`: foreground/mask reading and its errors (no model needed).

The end-to-end run on a trained tiny checkpoint is `tests/test_anyscene.py::test_compose_end_to_end`.
"""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from jcompose import compose, inference
from jcompose.cli import InputError
from jcompose.methods import anyscene_inference

REPO = Path(__file__).resolve().parents[1]


def _png(path, array):
    assert cv2.imwrite(str(path), array)
    return str(path)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    image = (rng.random((32, 40, 3)) * 255).astype(np.uint8)  # BGR on disk
    mask = np.zeros((32, 40), np.uint8)
    mask[8:20, 10:30] = 255
    return {
        "fg": _png(tmp_path / "fg.png", image),
        "mask": _png(tmp_path / "mask.png", mask),
        "rgba": _png(tmp_path / "rgba.png", np.dstack([image, mask])),
        "small_mask": _png(tmp_path / "small.png", mask[:24]),
        "empty": _png(tmp_path / "empty.png", np.zeros_like(mask)),
        "odd": _png(tmp_path / "odd.png", image[:30]),
        "image": image,
        "m": mask,
    }


def test_rgb_with_mask_and_rgba_give_the_same_composite(files):
    a, ma = anyscene_inference.read_foregrounds([files["fg"]], [files["mask"]])
    b, mb = anyscene_inference.read_foregrounds([files["rgba"]], [])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    on = files["m"] > 127
    assert a.shape == (32, 40, 3) and ma.shape == (32, 40, 1)
    np.testing.assert_array_equal(ma[..., 0], on.astype(np.float32))
    rgb = files["image"][..., ::-1].astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(a[on], rgb[on], atol=1e-6)
    assert (a[~on] == -1).all()  # the black canvas


def test_later_foregrounds_lie_on_top(files, tmp_path):
    second = np.full((32, 40, 3), 255, np.uint8)
    mask2 = np.zeros((32, 40), np.uint8)
    mask2[15:25, 0:15] = 255
    comp, union = anyscene_inference.read_foregrounds([files["fg"], _png(tmp_path / "w.png", second)],
                                           [files["mask"], _png(tmp_path / "m2.png", mask2)])
    assert (comp[mask2 > 127] == 1).all()
    np.testing.assert_array_equal(union[..., 0], ((files["m"] > 127) | (mask2 > 127)).astype(np.float32))


@pytest.mark.parametrize("case, expected", [
    ("missing", "RGB without alpha and no --mask"),
    ("size", r"is 40x24 \(WxH\) but --foreground"),
    ("empty", "empty foreground"),
    ("odd", "multiples of 8"),
    ("nofile", "no such file"),
])
def test_bad_inputs_name_the_file_and_problem(files, tmp_path, case, expected):
    fg, masks = files["fg"], [files["mask"]]
    if case == "missing":
        masks = []
    elif case == "size":
        masks = [files["small_mask"]]
    elif case == "empty":
        masks = [files["empty"]]
    elif case == "odd":
        fg, masks = files["odd"], []
        _png(tmp_path / "odd_mask.png", files["m"][:30])
        masks = [str(tmp_path / "odd_mask.png")]
    elif case == "nofile":
        masks = [str(tmp_path / "nope.png")]
    with pytest.raises(InputError, match=expected) as err:
        anyscene_inference.read_foregrounds([fg], masks)
    if case == "size":
        assert "40x32" in str(err.value) and "small.png" in str(err.value)


def test_command_line_reports_input_errors_without_a_traceback(files, tmp_path):
    cmd = [sys.executable, "-m", "jcompose.compose", "anyscene", "--base", str(tmp_path), "--checkpoint",
           str(tmp_path), "--foreground", files["fg"], "--mask", files["small_mask"], "--prompt", "a dog",
           "--out", str(tmp_path / "o.png")]
    result = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error: --mask" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.png").exists()


def test_checkpoint_path_must_be_a_run_or_step(tmp_path):
    with pytest.raises(InputError, match="neither a training workdir"):
        inference.resolve_checkpoint(str(tmp_path))


def test_benchmark_mode_needs_a_benchmark_folder(tmp_path):
    args = compose.build_parser().parse_args(["anyscene", "--base", str(tmp_path), "--checkpoint", str(tmp_path),
                                              "--benchmark", str(tmp_path), "--out", str(tmp_path / "gen")])
    with pytest.raises(InputError, match="no prompts.json"):
        anyscene_inference.compose_anyscene(args)
    args = compose.build_parser().parse_args(["anyscene", "--base", str(tmp_path), "--checkpoint", str(tmp_path),
                                              "--out", str(tmp_path / "o.png")])
    with pytest.raises(InputError, match="give --foreground"):
        anyscene_inference.compose_anyscene(args)


def test_ema_on_a_run_without_ema_is_refused(tmp_path):
    import grain
    import jax.numpy as jnp

    from jcompose.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save(3, {"step": jnp.array(3), "params": {"controlnet": {"w": jnp.zeros(2)}}},
              iter(grain.MapDataset.range(4).to_iter_dataset()))
    ckpt.close()
    args = compose.build_parser().parse_args(["anyscene", "--base", str(tmp_path), "--checkpoint", str(tmp_path),
                                              "--ema", "--out", str(tmp_path / "o.png")])
    with pytest.raises(InputError, match=r"--ema: checkpoint step 3 of .* has no EMA params"):
        anyscene_inference.load_anyscene(args)
