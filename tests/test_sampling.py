"""Text-to-image with controls on the tiny model, and the benchmark command (run, not timed)."""

import json

import numpy as np

from jcompose import attention, bench, sampling
from jcompose.models import loading
from jcompose.tokens import token_positions


def test_text_to_image_with_layout_control(tiny_bases):
    pipe = loading.load_pipeline(tiny_bases["sd15"], weights="msgpack")
    prompt = "a photo of sks dog on the beach"
    plain = sampling.text_to_image(pipe, [prompt], num_steps=4, seed=1)
    assert plain.shape == (1, 64, 64, 3) and plain.dtype == np.float32
    assert -1 <= plain.min() and plain.max() <= 1 and plain.std() > 0

    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 2:6] = 1
    control = attention.LayoutControl(mask, tokens=token_positions(pipe.tokenizer, prompt, ["dog"]))
    controlled = sampling.text_to_image(pipe, [prompt], num_steps=4, seed=1, controls=[control])
    again = sampling.text_to_image(pipe, [prompt], num_steps=4, seed=1)
    np.testing.assert_array_equal(plain, again)  # deterministic for a seed
    assert np.abs(controlled - plain).max() > 1e-4  # the control acts


def test_bench_sample_runs(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["sample", "--model", "tiny", "--steps", "2", "--repeats", "1", "--no-torch", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["control_overhead"]) == {"masked cross-attention", "masked self-attention (last 5 decoder)",
                                               "layout control"}
    assert report["tflop_per_image"] > 0 and report["jcompose_s_per_image"] > 0
