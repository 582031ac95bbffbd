"""`compose sd text|inpaint`: the untrained Stable Diffusion rows of AnyScene's Table 1 on a benchmark folder."""

import json

import cv2
import numpy as np
import pytest

from jcompose import compose


@pytest.fixture
def bench(tmp_path):
    """A 2-pair benchmark folder in input_pipeline.anyscene_benchmark's layout (32 px): objects on black."""
    rng = np.random.default_rng(0)
    for sub in ("foregrounds", "masks"):
        (tmp_path / "bench" / sub).mkdir(parents=True)
    for i in range(2):
        mask = np.zeros((32, 32), np.uint8)
        mask[8 + 4 * i:20 + 4 * i, 6:22] = 255
        foreground = np.where(mask[..., None] > 0, rng.integers(0, 255, (32, 32, 3)), 0).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "bench" / "foregrounds" / f"{i:05d}.png"), foreground)
        cv2.imwrite(str(tmp_path / "bench" / "masks" / f"{i:05d}.png"), mask)
    prompts = {"00000": "a red box on a table", "00001": "a dog in the snow"}
    (tmp_path / "bench" / "prompts.json").write_text(json.dumps(prompts))
    return tmp_path / "bench"


def _read(path):
    return cv2.imread(str(path))


def test_inpainting_fills_around_the_kept_foreground(bench, tmp_path, tiny_bases):
    out = tmp_path / "inpaint"
    written = compose.main(["sd", "inpaint", "--base", str(tiny_bases["sd15-inpaint"]), "--benchmark", str(bench),
                            "--out", str(out), "--steps", "2", "--batch_size", "2"])
    assert written["count"] == 2
    for i in range(2):
        image, foreground = _read(out / f"{i:05d}.png"), _read(bench / "foregrounds" / f"{i:05d}.png")
        inside = _read(bench / "masks" / f"{i:05d}.png")[..., 0] > 127
        np.testing.assert_array_equal(image[inside], foreground[inside])  # the objects are pasted back exactly
        assert np.abs(image[~inside].astype(int) - foreground[~inside]).mean() > 5  # the black canvas was filled
    unblended = tmp_path / "unblended"
    compose.main(["sd", "inpaint", "--base", str(tiny_bases["sd15-inpaint"]), "--benchmark", str(bench),
                  "--out", str(unblended), "--steps", "2", "--batch_size", "2", "--blend", "none"])
    outside = ~(_read(bench / "masks" / "00000.png")[..., 0] > 127)
    np.testing.assert_array_equal(_read(unblended / "00000.png")[outside], _read(out / "00000.png")[outside])


def test_text_only_runs_per_caption_and_refuses_an_inpainting_base(bench, tmp_path, tiny_bases, capsys):
    out = tmp_path / "text"
    compose.main(["sd", "text", "--base", str(tiny_bases["sd15"]), "--benchmark", str(bench), "--out", str(out),
                  "--steps", "2", "--batch_size", "2"])
    assert np.abs(_read(out / "00000.png").astype(int) - _read(out / "00001.png")).mean() > 1  # another caption
    with pytest.raises(SystemExit) as exit_info:
        compose.main(["sd", "text", "--base", str(tiny_bases["sd15-inpaint"]), "--benchmark", str(bench),
                      "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "its UNet reads 9 input channels; `sd text` needs a text-to-image UNet (4)" in capsys.readouterr().err
