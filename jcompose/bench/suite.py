"""`python -m jcompose.bench suite --out DIR`: every benchmark in one call, time-boxed, into
`DIR/report.md` and `DIR/report.json`.

On an accelerator: the full SD 1.5 architecture with random weights (written once by `prepare`),
512 px, bf16: sampling (50 DDIM steps, CFG 7.5, VAE decode; batch 1 and 8, diffusers PyTorch fp16
in the same run), each attention control's overhead, the train steps of `denoise`, `anyscene` and
every method with a registered PyTorch reference at per-device batch 8 and 16 (12 if 16 does not
fit), the input pipelines, the evaluation extractors and the numerics. On a CPU the same parts run
on the tiny model with fewer repeats (what CI's smoke test exercises).

The parts run in priority order within `--budget-s`: a part whose estimate does not fit in the
time left is skipped and listed as such; an isolated part (on accelerators: one child process
each, so each starts with a clean device) is killed at its time box. A failing part is recorded
with its error and the rest go on. Per-part logs and JSON land in `DIR/parts/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from jcompose.bench import suite_report, timing, torch_train, weights

REPO = Path(__file__).resolve().parents[2]
BUILT_IN_METHODS = ("denoise", "anyscene")
CPU_PROCESS_START_S = 25.0  # importing jax, torch, diffusers and the method's modules in a child on 2 cores
OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OutOfMemory")


class Terminated(BaseException):
    """SIGTERM while a part runs (a BaseException: the per-part error handling must not catch it)."""


@dataclasses.dataclass(frozen=True)
class Part:
    """One benchmark invocation of the suite: `argv` for `python -m jcompose.bench`, the section
    its result goes to, its expected wall time, and argvs to try in turn when it runs out of memory."""

    name: str
    section: str
    argv: tuple[str, ...]
    estimate_s: float
    fallbacks: tuple[tuple[str, ...], ...] = ()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md, report.json and parts/")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget for all parts (default: 450 on an accelerator, 150 on CPU)")
    parser.add_argument("--parts", default="", help="comma list of part names or sections to run (default: all)")
    parser.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                        help="one child process per part (auto: on accelerators)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the base folders (default: a temp dir)")
    parser.add_argument("--no-torch", action="store_true", help="skip every PyTorch reference")


def probe_backend() -> dict[str, str]:
    """{'backend', 'device'} of this machine's default JAX backend, asked in a child process so
    this one never holds the accelerator; JAX_PLATFORMS=cpu answers without asking."""
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        return {"backend": "cpu", "device": "cpu"}
    code = "import jax; print(jax.default_backend()); print(jax.devices()[0].device_kind)"
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"could not start JAX: {out.stderr.strip()[-2000:]}")
    backend, device = out.stdout.strip().splitlines()[-2:]
    return {"backend": backend, "device": device}


def plan(accelerator: bool, work: Path, methods: list[str], no_torch: bool = False,
         isolated: bool | None = None) -> list[Part]:
    """The suite's parts in priority order (see the module doc). `methods`: train methods, the
    first of which (denoise) gives the data rows their step rate; on a CPU only it runs before
    the cheap parts, the others last (what the budget leaves). Estimates on an accelerator count
    a child process's start (imports, loading the weights); `isolated` CPU parts add it."""
    parts = _plan(accelerator, work, methods, no_torch)
    if isolated and not accelerator:
        parts = [dataclasses.replace(p, estimate_s=p.estimate_s + CPU_PROCESS_START_S) for p in parts]
    return parts


def _plan(accelerator: bool, work: Path, methods: list[str], no_torch: bool) -> list[Part]:
    model = "sd15" if accelerator else "tiny"
    torch_flag = ("--no-torch",) if no_torch else ()
    common = ("--model", model)
    base = str(work / f"{model}-sd15")
    setup = Part("setup", "setup", ("prepare", "--dir", str(work), *common, "--architectures", "sd15"),
                 60 if accelerator else 10)
    sample = ("sample", *common, "--base", base, "--steps", "50" if accelerator else "10")
    repeats = "3" if accelerator else "1"
    sample_b1 = Part("sample_b1", "sampling", (*sample, "--batch", "1", "--controls", "none", "--repeats", repeats,
                                               *torch_flag), 100 if accelerator else 15)

    def train(method: str, batch: int, fallbacks=()) -> Part:
        config = str(REPO / "configs" / f"{method}.py") + ("" if accelerator else ":tiny")
        argv = ("train", "--config", config, *common, "--base", str(work / f"{model}-{_architecture(method)}"),
                "--repeats", "10" if accelerator else "2", *torch_flag)
        estimate = (90 if method == "denoise" else 120) if accelerator else (45 if method == "denoise" else 60)
        return Part(f"train_{method}_b{batch}", "training", (*argv, "--per-device-batch", str(batch)), estimate,
                    tuple((*argv, "--per-device-batch", str(b)) for b in fallbacks))

    data_flags = ("--size", "512", "--workers", "0,2", "--batch", "8", "--batches", "4") if accelerator else (
        "--size", "64", "--workers", "0", "--batch", "2", "--batches", "2")
    data = [Part(f"data_{m}", "data", ("data", "--method", m, *data_flags), 25 if accelerator else 5)
            for m in ("anyscene", "anydoor", "dreamcom")]
    controls = [Part(f"control_{c}", "controls", (*sample, "--batch", "1", "--controls", c, "--repeats", repeats,
                                                  "--no-torch"), 50 if accelerator else 10)
                for c in ("self", "cross", "layout")]
    numerics = Part("numerics", "numerics", ("numerics", *common, "--base", base), 80 if accelerator else 15)
    evals = ("--batch", "64", "--repeats", "3") if accelerator else (
        "--batch", "1", "--repeats", "1", "--extractors", "inception,dino,lpips")
    eval_part = Part("eval", "eval", ("eval", *evals, *torch_flag), 60 if accelerator else 20)
    if not accelerator:
        return [setup, sample_b1, train(methods[0], 2), *data, *controls, numerics, eval_part,
                *(train(m, 2) for m in methods[1:])]
    sample_b8 = Part("sample_b8", "sampling", (*sample, "--batch", "8", "--controls", "none", "--repeats", "2",
                                               *torch_flag), 90)
    return [setup, sample_b1, *(train(m, 8) for m in methods), *data, sample_b8, *controls, numerics,
            *(train(m, 16, fallbacks=(12,)) for m in methods), eval_part]


def _architecture(method: str) -> str:
    """The base architecture `method`'s train step needs (its reference's, else its config's)."""
    from configs import common

    reference = torch_train.reference_for(method)
    if reference and reference.base:
        return reference.base
    return weights.architecture_of(common.load(str(REPO / "configs" / f"{method}.py")))


def _select(parts: list[Part], wanted: str) -> list[Part]:
    names = {n.strip() for n in wanted.split(",") if n.strip()}
    if not names:
        return parts
    known = {p.name for p in parts} | {p.section for p in parts}
    if names - known:
        raise ValueError(f"--parts: unknown {sorted(names - known)}; parts and sections: {sorted(known)}")
    return [p for p in parts if p.name in names or p.section in names or p.name == "setup"]


def run_isolated(argv: tuple[str, ...], out_json: Path, log_path: Path, timeout_s: float) -> dict[str, Any]:
    """Runs `python -m jcompose.bench *argv --out out_json` in its own process group, killed (with
    its children, e.g. grain workers) after `timeout_s`; returns its report or raises RuntimeError
    with the log's last lines."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "jcompose.bench", *argv, "--out", str(out_json)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s (time box); " + _tail(log_path)) from None
        finally:  # a time box, or this suite being stopped: the part and its workers go too
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    if code != 0:
        raise RuntimeError(f"exit code {code}: {_tail(log_path)}")
    return json.loads(out_json.read_text())


def run_in_process(argv: tuple[str, ...], out_json: Path) -> dict[str, Any]:
    """The same benchmark in this process (CPU: no device to hand back, no start-up per part)."""
    from jcompose.bench import commands

    report = commands.run(list(argv))
    timing.write_json(out_json, report)
    return report


def _tail(path: Path, lines: int = 12) -> str:
    text = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:])[-3000:]


def run_part(part: Part, folder: Path, isolate: bool, time_left: float) -> dict[str, Any]:
    """{'name', 'section', 'status': ok|error|timeout, 'seconds', 'result'|'error', 'argv'}; an
    out-of-memory error moves on to the part's fallbacks while time is left."""
    start = time.perf_counter()
    entry: dict[str, Any] = {"name": part.name, "section": part.section}
    tried = []
    for argv in (part.argv, *part.fallbacks):
        left = time_left - (time.perf_counter() - start)
        box = max(min(left, 2.0 * part.estimate_s), 1.0)
        entry["argv"] = list(argv)
        try:
            if isolate:
                entry["result"] = run_isolated(argv, folder / f"{part.name}.json", folder / f"{part.name}.log", box)
            else:
                entry["result"] = run_in_process(argv, folder / f"{part.name}.json")
            entry["status"] = "ok"
            entry.pop("error", None)
            break
        except Exception as err:  # noqa: BLE001 - one failing part must not stop the suite
            entry["status"] = "timeout" if isinstance(err, TimeoutError) else "error"
            entry["error"] = f"{type(err).__name__}: {err}"[-3000:]
            if not isolate:
                (folder / f"{part.name}.log").write_text(traceback.format_exc())
            tried.append(argv[-1])
            if not any(marker in entry["error"] for marker in OUT_OF_MEMORY):
                break
    if len(tried) > 0 and entry["status"] == "ok":
        entry["note"] = f"out of memory at per-device batch {', '.join(tried)}"
    entry["seconds"] = time.perf_counter() - start
    return entry


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Plans, runs and reports the suite; returns the report's data (also DIR/report.json)."""
    started = time.perf_counter()
    probe = probe_backend()
    accelerator = probe["backend"] != "cpu"
    isolate = args.isolate == "yes" or (args.isolate == "auto" and accelerator)
    budget = args.budget_s or (450.0 if accelerator else 150.0)
    methods = list(BUILT_IN_METHODS) + [m for m in torch_train.methods_with_references() if m not in BUILT_IN_METHODS]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="jcompose-suite-"))
    folder = Path(args.out) / "parts"
    folder.mkdir(parents=True, exist_ok=True)
    parts = _select(plan(accelerator, work, methods, args.no_torch, isolate), args.parts)
    timing.log(f"suite: {len(parts)} parts on {probe['device']} ({probe['backend']}), budget {budget:.0f} s, "
               f"{'one process per part' if isolate else 'in process'}")
    entries: list[dict[str, Any]] = []

    def report() -> dict[str, Any]:  # written after every part too: a suite killed from outside leaves one
        data = {"backend": probe["backend"], "device": probe["device"], "isolated": isolate, "budget_s": budget,
                "elapsed_s": time.perf_counter() - started, "methods": methods, "parts": entries,
                "planned": [p.name for p in parts]}
        suite_report.write(Path(args.out), data)
        return data

    def stop(signum, frame):
        raise Terminated(f"the suite received signal {signum} (a wall-clock limit from outside)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        for part in parts:
            left = budget - (time.perf_counter() - started)
            # An isolated part is killed at its time box, so it may start on half its estimate;
            # one in this process cannot be stopped, so it needs its whole estimate.
            if left < (0.5 if isolate else 1.0) * part.estimate_s or left < 5:
                entries.append({"name": part.name, "section": part.section, "status": "skipped", "seconds": 0.0,
                                "error": f"not enough time left ({left:.0f} s of the {budget:.0f} s budget; "
                                         f"the part needs ~{part.estimate_s:.0f} s)"})
                timing.log(f"suite: {part.name} skipped ({left:.0f} s left)")
                continue
            timing.log(f"suite: {part.name} ({left:.0f} s left)")
            try:
                entry = run_part(part, folder, isolate, left)
            except Terminated as err:
                entries.append({"name": part.name, "section": part.section, "status": "timeout", "seconds": None,
                                "error": str(err)})
                report()
                raise SystemExit(128 + signal.SIGTERM) from None
            entries.append(entry)
            timing.log(f"suite: {part.name} {entry['status']} in {entry['seconds']:.1f} s"
                       + (f": {entry['error'][:300]}" if entry["status"] != "ok" else ""))
            report()
            if part.name == "setup" and entry["status"] != "ok":
                break  # every later part needs the base folders
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    data = report()
    timing.log(f"suite: wrote {Path(args.out) / 'report.md'} and report.json in {data['elapsed_s']:.0f} s")
    return data
