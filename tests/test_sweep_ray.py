"""A tiny DreamCom ablation sweep end to end under a local Ray cluster: trains, generates the synthetic MureCom
benchmark, evaluates with the paper's protocol, writes the table and the report; killed after its first
finished generation and rerun, it redoes no finished stage; an inference-only axis (masked / vanilla
cross-attention at sampling) does not retrain; a trial whose compose command fails is reported with its log
while the others finish. (Packed trials: tests/test_sweep_packing.py.)

One Ray instance serves the module (started here; the sweep command joins it with --address, as it would
join a cluster). Stage processes inherit the suite's compilation cache (JAX_COMPILATION_CACHE_DIR).
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the sweep extra is not installed: pip install -e '.[sweep]'")

REPO = Path(__file__).resolve().parents[1]

SWEEP = """
from jcompose.sweep import Variant

def get_sweep(arg):
    rows = [Variant("masked", {"compose.cross-attention": "masked"}, label="DreamCom", paper={"foreground.DINO": 0.584}),
            Variant("vanilla", {"compose.cross-attention": "vanilla"}, label="-MCAttn"),
            Variant("broken", {"compose.cross-attention": "diagonal"})]
    return {"config": "configs/dreamcom.py:tiny", "runs": rows,
            "set": {"train.steps": 4, "train.log_every": 2, "train.ckpt_every": 2, "train.sample_every": -1,
                    "train.export": False},
            "generate": ["dreamcom", "--checkpoint", "{run}", "--benchmark", "murecom", "{run}/data/murecom",
                         "--out", "{generated}", "--num", "1", "--steps", "1"],
            "evaluate": {"config": "configs/eval/dreamcom.py", "manifest": "{generated}/manifest.json",
                         "lpips.weights": "random", "pair_size": 32, "batch_size": 4, "workers": 1}}
"""


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with 2 CPUs (2 one-device trials at a time); its GCS address. Ray 2.60 guards a
    local cluster with a generated token by default: off here, so the sweep command can join it as a client."""
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, logging_level="ERROR",
             log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if previous is None:
        os.environ.pop("RAY_AUTH_MODE")
    else:
        os.environ["RAY_AUTH_MODE"] = previous


def _command(tmp_path, address, tiny_eval_models):
    sweep_file = tmp_path / "dreamcom_tiny_ablation.py"
    sweep_file.write_text(SWEEP)
    return [sys.executable, "-m", "jcompose.sweep", "run", f"--sweep={sweep_file}", f"--root={tmp_path / 'sweep'}",
            f"--address={address}", f"--set=evaluate.clip.model={tiny_eval_models / 'clip'}",
            f"--set=evaluate.dino.model={tiny_eval_models / 'dino'}"]


def _attempts(log: Path) -> int:
    """Times a stage ran (each attempt starts its log section with '===== <date> python ...')."""
    return sum(1 for line in log.read_text().splitlines() if line.startswith("===== ") and " python " in line)


def _processes_mentioning(text: str) -> list[str]:
    """Command lines (from /proc) of the processes whose arguments contain `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # ended meanwhile
            continue
        if any(text in a for a in args):
            found.append(" ".join(args)[:200])
    return found


def _wait_gone(root: Path, timeout: float = 60.0) -> None:
    """Until no process of the killed sweep (its stages name the root) is left: Ray ends the dead driver's
    tasks, and each stage process dies with its task (PR_SET_PDEATHSIG)."""
    deadline = time.time() + timeout
    while alive := _processes_mentioning(str(root)):
        assert time.time() < deadline, f"processes of the killed sweep still running: {alive}"
        time.sleep(0.5)


@pytest.mark.slow
def test_tiny_ablation_sweep_runs_resumes_and_reports(cluster, tmp_path, tiny_eval_models):
    root = tmp_path / "sweep"
    command = _command(tmp_path, cluster, tiny_eval_models)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    deadline = time.time() + 600
    while not list(root.glob("trials/*/generated/.sweep/generate.done.json")):
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline, "no generation finished in 10 minutes"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep dies mid-way: generation and evaluation in flight
    first.wait()
    _wait_gone(root)
    done_before = {p.parts[-4] for p in root.glob("trials/*/generated/.sweep/generate.done.json")}

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = second.stdout + second.stderr
    assert second.returncode == 1, out[-4000:]  # the broken trial fails the command, after the others finished
    assert "broken: failed" in out and "generate failed; log:" in out and "invalid choice: 'diagonal'" in out
    assert "3 trial(s), 1 training unit(s); 1 CPU device(s) per trial" in out

    # Trained once, before the kill, and both variants of the inference-only axis composed from that run.
    train_log = root / "train" / "default" / ".sweep" / "train.log"
    assert _attempts(train_log) == 1
    manifests = {v: json.loads((root / "trials" / v / "generated" / "manifest.json").read_text())
                 for v in ("masked", "vanilla")}
    assert manifests["masked"]["run"] == manifests["vanilla"]["run"] == str(root / "train" / "default")
    # Finished stages were not redone; the killed ones were finished by the rerun.
    for variant in done_before:
        assert _attempts(root / "trials" / variant / "generated" / ".sweep" / "generate.log") == 1, variant
    # Masked and vanilla cross-attention made different images from the same model, inputs and noise (with the
    # flag ignored, the two programs and so the images would be identical).
    image = manifests["masked"]["images"][0]["image"]
    a, b = (np.asarray(Image.open(root / "trials" / v / "generated" / image)) for v in ("masked", "vanilla"))
    assert a.shape == b.shape and np.any(a != b)

    with open(root / "results.csv") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    for variant in ("masked", "vanilla"):
        assert 0.0 < float(rows[variant]["foreground.DINO"]) <= 1.0 and float(rows[variant]["background.SSIM"]) > 0
        assert rows[variant]["train step"] == "4"
    assert rows["masked"]["foreground.DINO (paper)"] == "0.584" and rows["broken"]["foreground.DINO"] == ""
    assert rows["masked"]["cross-attention"] == "masked" and rows["masked"]["variant"] == "DreamCom"
    html = (root / "report.html").read_text()
    for figure in ("metrics.png", "loss.png", "grid.png"):
        assert f"report/{figure}" in html and (root / "report" / figure).stat().st_size > 1000

    markers = [json.loads(m.read_text()) for m in root.glob("**/.sweep/*.done.json")]
    print(f"stages: {len(markers)}, wall {sum(m['seconds'] for m in markers):.0f} s, "
          f"CPU {sum(m['cpu_s'] for m in markers):.0f} s (summed over the stage processes)")

    third = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 1
    for variant in ("masked", "vanilla"):  # nothing left to do but the broken trial
        assert f"{variant}: done (generate skipped, evaluate skipped)" in third.stdout, third.stdout[-3000:]
    assert "train default: done (train skipped)" in third.stdout
    assert _attempts(train_log) == 1
