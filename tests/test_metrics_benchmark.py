"""The eval benchmark runs and reports images/s (tiny batch; timings themselves are not asserted)."""

import argparse

import pytest

from jcompose.metrics import benchmark


def test_bench_eval_reports_throughput():
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    report = benchmark.bench_eval(parser.parse_args(["--extractors", "dino", "--batch", "1", "--repeats", "1"]))
    entry = report["extractors"]["dino"]
    assert report["batch"] == 1 and entry["input"] == [224, 224, 3]
    assert entry["jax_images_per_s"] > 0
    if "torch_images_per_s" in entry:  # the reference runs when torch is installed
        assert entry["speedup_vs_torch"] > 0
    with pytest.raises(ValueError, match="--extractors: unknown"):
        benchmark.bench_eval(parser.parse_args(["--extractors", "psnr"]))
