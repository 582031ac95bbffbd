"""The benchmark package: timing helpers against hand computations, the report writer, the PyTorch
reference registry, the suite's plan and failure handling, and the CLIs end to end on small
settings (timings are reported, never asserted)."""

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcompose import bench
from jcompose.bench import commands, runner, suite, suite_report, timing, torch_train

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- timing


def test_mfu_from_a_known_flop_count_and_time():
    # 2 TFLOP in 0.5 s = 4 TFLOP/s against an 8 TFLOP/s peak: 50 %; over two such devices 25 %.
    assert timing.mfu(2e12, 0.5, 8e12) == pytest.approx(0.5)
    assert timing.mfu(2e12, 0.5, 8e12, devices=2) == pytest.approx(0.25)
    assert timing.mfu(2e12, 0.5, None) is None and timing.mfu(0.0, 0.5, 8e12) is None
    assert timing.ratio(3.0, 1.5) == 2.0 and timing.ratio(None, 1.0) is None and timing.ratio(1.0, 0.0) is None


def test_peak_memory_from_a_fake_device():
    class Device:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    assert timing.peak_memory_gib(Device({"peak_bytes_in_use": 3 * 2**30, "bytes_in_use": 1})) == 3.0
    assert timing.peak_memory_gib(Device({"bytes_in_use": 5})) is None
    assert timing.peak_memory_gib(Device(None)) is None  # CPU keeps no statistics


def test_xla_flop_count_of_a_matmul_is_2mkn():
    a, b = jnp.ones((32, 48)), jnp.ones((48, 16))
    assert timing.lowered_flops(lambda a, b: a @ b, a, b) == 2 * 32 * 48 * 16
    compiled, seconds, flops = timing.compile_timed(jax.jit(lambda a, b: a @ b), a, b)
    assert flops == 2 * 32 * 48 * 16 and seconds >= 0
    np.testing.assert_allclose(compiled(a, b), np.full((32, 16), 48.0))
    assert timing.cost_flops([{"flops": 7.0}]) == 7.0 and timing.cost_flops(None) == 0.0


def test_timers_count_calls_and_measure_a_known_sleep():
    calls = []

    def sleepy():
        calls.append(1)
        time.sleep(0.01)
        return np.zeros(1)

    first, median = timing.timed(sleepy, repeats=3)
    assert len(calls) == 4 and 0.01 <= median < 0.5 and first >= 0.01
    calls.clear()
    mean = timing.back_to_back_seconds(sleepy, repeats=2, warmup=1)
    assert len(calls) == 3 and 0.01 <= mean < 0.5
    with pytest.raises(ValueError, match="repeats"):
        timing.timed(sleepy, repeats=0)


# ----------------------------------------------------------------------------------- report


def test_markdown_table_from_rows():
    rows = [{"name": "a|b", "s": 0.123456, "n": 3, "ok": True}, {"name": "c", "s": None, "big": 12345.6}]
    table = timing.markdown_table(rows, [("name", "name"), ("s", "seconds"), ("n", "count"), ("ok", "ok")])
    assert table == textwrap.dedent("""\
        | name | seconds | count | ok |
        | --- | --- | --- | --- |
        | a\\|b | 0.1235 | 3 | yes |
        | c | n/a | n/a | n/a |""")
    assert timing.markdown_table([], [("x", "x")]) == ""
    assert [timing.format_value(v) for v in (12345.6, 2.5e-5, 0.0, [1.5, 2])] == ["12,346", "2.50e-05", "0", "1.5, 2"]


def test_write_report_writes_json_and_markdown(tmp_path):
    data = {"x": np.float32(1.5), "nan": float("nan"), "rows": [{"a": 1}]}
    json_path, md_path = timing.write_report(tmp_path, data, [("First", "intro.", "| a |"), ("Empty", "", "")],
                                             ["date: today"])
    assert json.loads(json_path.read_text()) == {"x": 1.5, "nan": "nan", "rows": [{"a": 1}]}
    text = md_path.read_text()
    assert text.startswith("# jcompose benchmark suite\n\n- date: today\n")
    assert "## First\n\nintro.\n\n| a |" in text and "## Empty\n\n(nothing measured)" in text


# --------------------------------------------------------------------------------- registry


def test_reference_registry_and_plugin_discovery(tmp_path, monkeypatch):
    assert {"denoise", "anyscene"} <= set(torch_train.methods_with_references())
    assert torch_train.reference_for("denoise").step_seconds is torch_train.denoise_step_seconds
    assert torch_train.reference_for("anyscene").overrides["data.coco_root"] == "synthetic"
    assert torch_train.reference_for("no-such-method") is None

    # A method added later: a torch_train_<method>.py module in the package registers itself.
    (tmp_path / "torch_train_fakemethod.py").write_text(textwrap.dedent("""
        from jcompose.bench.torch_train import register

        @register("fakemethod", overrides={"train.remat": True}, base="sd15-inpaint")
        def fake_step_seconds(folder, batch, config, repeats):
            return 0.25
    """))
    monkeypatch.setattr(bench, "__path__", [*bench.__path__, str(tmp_path)])
    monkeypatch.delitem(torch_train.REFERENCES, "fakemethod", raising=False)
    try:
        assert "fakemethod" in torch_train.methods_with_references()
        reference = torch_train.reference_for("fakemethod")
        assert reference.base == "sd15-inpaint" and reference.overrides == {"train.remat": True}
        assert reference.step_seconds(None, {}, None, 1) == 0.25
        with pytest.raises(ValueError, match="already registered"):
            torch_train.register("fakemethod")(lambda *a: 1.0)
    finally:
        torch_train.REFERENCES.pop("fakemethod", None)
        sys.modules.pop("jcompose.bench.torch_train_fakemethod", None)


def test_train_overrides_are_checked():
    from configs import common
    from jcompose.bench import train

    config = common.load(str(REPO / "configs" / "anyscene.py") + ":tiny")
    train.apply_overrides(config, dict(map(train.parse_override, ["train.remat=True", "data.coco_root="])), "--set")
    assert config.train.remat is True and config.data.coco_root == ""
    with pytest.raises(common.ConfigError, match="did you mean 'train.remat'"):
        train.apply_overrides(config, {"train.rematt": True}, "--set")
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        train.parse_override("train.remat")


# ------------------------------------------------------------------------------------ suite


def test_accelerator_plan_has_the_full_size_settings(tmp_path):
    parts = {p.name: p for p in suite.plan(True, tmp_path, ["denoise", "anyscene"])}
    b1, b8 = parts["sample_b1"].argv, parts["sample_b8"].argv
    assert "sd15" in b1 and b1[b1.index("--steps") + 1] == "50" and b8[b8.index("--batch") + 1] == "8"
    train16 = parts["train_anyscene_b16"]
    assert train16.argv[-2:] == ("--per-device-batch", "16") and train16.fallbacks[0][-1] == "12"
    assert {"data_anyscene", "data_anydoor", "data_dreamcom", "numerics", "eval", "control_self"} <= set(parts)
    assert parts["data_anydoor"].background and parts["data_anydoor"].env == {"JAX_PLATFORMS": "cpu"}
    assert [n for n in parts if not parts[n].background][:3] == ["setup", "sample_b1", "train_denoise_b8"]
    order = [n for n in parts if not parts[n].background]
    assert order[order.index("train_denoise_b8") + 1] == "plan_denoise_b8"  # the plan checked on the first GPU
    check = parts["plan_denoise_b8"]
    assert check.module == "jcompose.bench.suite_plan" and check.argv[-2:] == ("--per-device-batch", "8")
    cpu = suite.plan(False, tmp_path, ["denoise", "anyscene"])
    assert [p.name for p in cpu[-2:]] == ["train_anyscene_b2", "plan_denoise_b2"]
    assert all("--model" not in p.argv or "tiny" in p.argv for p in cpu)


def test_a_failing_part_is_recorded_and_a_slow_one_is_killed(tmp_path):
    bad = suite.Part("bad", "training", ("train", "--config", str(tmp_path / "missing.py")), 5)
    entry = suite.run_part(bad, tmp_path, isolate=False, time_left=60)
    assert entry["status"] == "error" and "missing.py: no such file" in entry["error"]
    assert "Traceback" in (tmp_path / "bad.log").read_text()
    # An isolated part past its time box is killed (its process group with it) and reported.
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="time box"):
        runner.run_isolated(("data", "--method", "anyscene", "--batches", "100000"), tmp_path / "slow.json",
                           tmp_path / "slow.log", timeout_s=3)
    assert time.perf_counter() - start < 30


def test_host_parts_run_beside_the_others(tmp_path, monkeypatch):
    """On an accelerator the input-pipeline parts run in a thread beside the device parts; each
    still gets its own record (here two parts that fail at once, in child processes)."""
    parts = [suite.Part("setup", "setup", ("prepare",), 30),  # no --dir: exit 2
             suite.Part("data_x", "data", ("data", "--method", "nope"), 30, env={"JAX_PLATFORMS": "cpu"},
                        background=True)]
    monkeypatch.setattr(suite, "plan", lambda *args: parts)
    data = commands.run(["suite", "--out", str(tmp_path), "--isolate", "yes", "--budget-s", "300"])
    by_name = {e["name"]: e for e in data["parts"]}
    assert set(by_name) == {"setup", "data_x"} and by_name["data_x"]["note"].startswith("ran beside")
    assert all(e["status"] == "error" and "exit code 2" in e["error"] for e in by_name.values())
    assert "invalid choice: 'nope'" in (tmp_path / "parts" / "data_x.log").read_text()


def test_a_terminated_suite_stops_its_part_and_leaves_the_report(tmp_path):
    """SIGTERM (the device script's wall-clock timeout) while an isolated part runs: the part's
    process group is killed, the part is recorded as stopped and report.md is there."""
    import signal

    suite_run = subprocess.Popen([sys.executable, "-m", "jcompose.bench", "suite", "--out", str(tmp_path),
                                  "--isolate", "yes", "--parts", "sample_b1", "--budget-s", "600"],
                                 cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (tmp_path / "report.json").exists() and time.time() < deadline:  # written once setup is done
        time.sleep(0.5)
    time.sleep(2)  # sample_b1's child is starting (it takes far longer than this)
    suite_run.send_signal(signal.SIGTERM)
    _, err = suite_run.communicate(timeout=60)
    assert suite_run.returncode == 128 + signal.SIGTERM, err[-2000:]
    data = json.loads((tmp_path / "report.json").read_text())
    stopped = [e for e in data["parts"] if e["name"] == "sample_b1"]
    assert stopped and stopped[0]["status"] == "timeout" and "signal 15" in stopped[0]["error"]
    assert "| sample_b1 | timeout |" in (tmp_path / "report.md").read_text()
    time.sleep(1)
    assert _processes_naming(str(tmp_path)) == []


def _processes_naming(text: str) -> list[str]:
    """Command lines of running processes that contain `text` (Linux /proc; [] elsewhere)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_suite_with_no_time_skips_every_part_and_still_reports(tmp_path):
    data = commands.run(["suite", "--out", str(tmp_path), "--budget-s", "1"])
    assert {e["status"] for e in data["parts"]} == {"skipped"}
    text = (tmp_path / "report.md").read_text()
    assert "not enough time left" in text and "## Training\n\n" in text


@pytest.mark.slow
def test_suite_on_cpu_end_to_end(tmp_path):
    """`python -m jcompose.bench suite --out DIR` on the tiny model: every section has rows."""
    parts = "setup,sample_b1,train_denoise_b2,data_anyscene,control_layout,numerics,eval,plan_denoise_b2"
    run = subprocess.run([sys.executable, "-m", "jcompose.bench", "suite", "--out", str(tmp_path), "--parts", parts,
                          "--budget-s", "900"], check=False, capture_output=True, text=True, timeout=900, cwd=REPO,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((tmp_path / "report.json").read_text())
    failed = [(e["name"], e.get("error")) for e in data["parts"] if e["status"] != "ok"]
    assert failed == [] and [e["name"] for e in data["parts"]] == parts.split(",")
    text = (tmp_path / "report.md").read_text()
    for title, *_ in suite_report.SECTIONS:
        assert f"## {title}" in text
        assert data["tables"][title], title  # every section has at least one row
    assert "- date: " in text and "jax 0." in text
    (sample,) = data["tables"]["Sampling"]
    assert sample["s_per_image"] > 0 and sample["tflop"] > 0
    (train,) = data["tables"]["Training"]
    assert train["method"] == "denoise" and train["step_s"] > 0 and train["tflop"] > 0
    (pipeline,) = data["tables"]["Input pipeline"]
    # workers for an 8-device host = ceil(8 x batch x steps/s / examples/s per worker), from the two parts
    rate = 8 * train["per_device_batch"] / train["step_s"]
    assert pipeline["workers"] == max(1, math.ceil(rate / pipeline["per_worker"]))
    (planned,) = data["tables"]["Plan vs measured memory"]  # CPUs keep no peak: the prediction stands alone
    assert planned["target"] == "cpu" and planned["predicted"] > 0 and planned["per_device_batch"] == 2
    fused = [r for r in data["tables"]["Numerics"] if "fused" in r["comparison"]]
    assert fused and all(r["rel_l2"] is None and "not applicable on cpu" in r["note"] for r in fused)
    assert any(r["comparison"] == "UNet bf16 vs fp32" and 0 < r["rel_l2"] < 0.1 for r in data["tables"]["Numerics"])


# ------------------------------------------------------------------------------------ tools


def _check_wheels():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_wheels", REPO / "tools" / "check_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(folder, name, version, requires=()):
    import zipfile

    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        lines = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}"] + [f"Requires-Dist: {r}" for r in requires]
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_check_wheels_finds_missing_and_mismatched_requirements(tmp_path):
    tool = _check_wheels()
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels, "pkg", "1.0", ["dep>=2", "winonly; sys_platform == 'win32'", "extra-only; extra == 'dev'"])
    pins, image = tmp_path / "pins.txt", tmp_path / "image.txt"
    pins.write_text("# comment\npkg==1.0\n")

    def problems(image_text, limit=64.0):
        image.write_text(image_text)
        return tool.check(wheels, "3.12", limit, pins_file=pins, image_file=image)

    assert problems("dep==2.5 other") == []  # markers for Windows and extras do not apply
    assert problems("dep==1.0") == ["pkg needs dep>=2, the image has 1.0: carry a wheel"]
    assert problems("other") == [f"pkg needs dep>=2: neither the image nor {wheels} has it"]
    assert "exceeds the 0 MiB carry limit" in problems("dep", limit=0.0)[-1]
    _wheel(wheels, "dep", "1.5")
    assert problems("dep") == ["dep-1.5-py3-none-any.whl: not in tools/device_wheels.txt",
                               "pkg needs dep>=2, the wheel is 1.5"]


def test_device_lists_cover_every_dependency():
    """Each runtime and parity dependency of pyproject.toml is in the GPU image or pinned as a wheel."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tool = _check_wheels()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["parity"]]
    pins = tool.read_pins(REPO / "tools" / "device_wheels.txt")
    image = tool.read_image(REPO / "tools" / "device_image_packages.txt")
    missing = [str(r) for r in needed if canonicalize_name(r.name) not in pins and canonicalize_name(r.name) not in image]
    assert missing == []
    assert {"grain", "diffusers", "ml-collections", "tensorboardx", "pycocotools"} <= set(pins)


# ------------------------------------------------------------------------------------ CLIs


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


def test_bench_eval_reports_throughput():
    report = commands.run(["eval", "--extractors", "dino", "--batch", "1", "--repeats", "1"])
    entry = report["extractors"]["dino"]
    assert report["batch"] == 1 and entry["input"] == [224, 224, 3]
    assert entry["jax_images_per_s"] > 0
    if "torch_images_per_s" in entry:  # the reference runs when torch is installed
        assert entry["speedup_vs_torch"] > 0
    with pytest.raises(ValueError, match="--extractors: unknown"):
        commands.run(["eval", "--extractors", "psnr"])
