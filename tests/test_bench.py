"""Benchmark CLIs run end to end on small settings (timings are reported, never asserted)."""

import json
import math

import pytest

from jcompose import bench


@pytest.mark.parametrize("method", ["anyscene", "anydoor", "dreamcom"])
def test_bench_data_reports_rates_and_workers_needed(tmp_path, method):
    out = tmp_path / "report.json"
    assert bench.main(["data", "--method", method, "--size", "64", "--workers", "0", "--batch", "2",
                       "--batches", "2", "--steps-per-s", "3", "--host-batch", "8", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["method"] == method and report["data"] == "synthetic"
    rate = report["examples_per_s_per_worker"]
    assert rate > 0 and report["direct"]["examples"] > 0
    assert report["workers_needed"] == max(1, math.ceil(3 * 8 / rate))
