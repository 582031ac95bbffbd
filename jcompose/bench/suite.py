"""`python -m jcompose.bench suite --out DIR`: every benchmark in one call, time-boxed, into
`DIR/report.md` and `DIR/report.json`.

On an accelerator: the full SD 1.5 architecture with random weights (written once by `prepare`),
512 px, bf16: sampling (50 DDIM steps, CFG 7.5, VAE decode; batch 1 and 8, diffusers PyTorch fp16
in the same run), each attention control's overhead, the train steps of `denoise`, `anyscene` and
every method with a registered PyTorch reference at per-device batch 8 and 16 (12 if 16 does not
fit), the memory `jcompose.plan` predicts for the first of those steps (next to its measured peak),
the input pipelines, the evaluation extractors and the numerics. On a CPU the same parts run
on the tiny model with fewer repeats (what CI's smoke test exercises).

The parts run in priority order within `--budget-s`: a part whose estimate does not fit in the
time left is skipped and listed as such; an isolated part (on accelerators: one child process
each, so each starts with a clean device) is killed at its time box. A failing part is recorded
with its error and the rest go on. Per-part logs and JSON land in `DIR/parts/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from jcompose.bench import suite_report, timing, torch_train, weights
from jcompose.bench.runner import Part, Terminated, kill_live_parts, run_part
from jcompose.cli import InputError

REPO = Path(__file__).resolve().parents[2]
BUILT_IN_METHODS = ("denoise", "anyscene")
CPU_PROCESS_START_S = 25.0  # importing jax, torch, diffusers and the method's modules in a child on 2 cores


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

    def plan_check(method: str, batch: int) -> Part:
        """The plan's prediction of the memory of `train(method, batch)` (`bench.suite_plan`)."""
        config = str(REPO / "configs" / f"{method}.py") + ("" if accelerator else ":tiny")
        argv = ("--config", config, *common, "--base", str(work / f"{model}-{_architecture(method)}"),
                "--per-device-batch", str(batch))
        return Part(f"plan_{method}_b{batch}", "plan", argv, 150 if accelerator else 60,
                    module="jcompose.bench.suite_plan")

    data_flags = ("--size", "512", "--workers", "0,2", "--batch", "8", "--batches", "4") if accelerator else (
        "--size", "64", "--workers", "0", "--batch", "2", "--batches", "2")
    # On an accelerator the input pipelines (host CPU only) run beside the device parts.
    data = [Part(f"data_{m}", "data", ("data", "--method", m, *data_flags), 25 if accelerator else 5,
                 env={"JAX_PLATFORMS": "cpu"} if accelerator else {}, background=accelerator)
            for m in ("anyscene", "anydoor", "dreamcom")]
    controls = [Part(f"control_{c}", "controls", (*sample, "--batch", "1", "--controls", c, "--repeats", repeats,
                                                  "--no-torch"), 50 if accelerator else 10)
                for c in ("self", "cross", "layout")]
    numerics = Part("numerics", "numerics", ("numerics", *common, "--base", base), 80 if accelerator else 15)
    evals = ("--batch", "64", "--repeats", "3") if accelerator else (
        "--batch", "1", "--repeats", "1", "--extractors", "inception,dino,lpips")
    eval_part = Part("eval", "eval", ("eval", *evals, *torch_flag), 60 if accelerator else 20)
    # Benchmark generation through the engine on 1 device and on all (issue 22's scaling, >= 0.9 N on chips).
    generate = Part("generate", "generation", ("generate", *common, "--base", base, "--devices", "1,all") + (
        ("--steps", "50", "--per-device-batch", "4", "--batches", "2") if accelerator else
        ("--steps", "2", "--per-device-batch", "2", "--batches", "1")), 150 if accelerator else 25)
    if not accelerator:
        return [setup, sample_b1, train(methods[0], 2), *data, *controls, numerics, eval_part, generate,
                *(train(m, 2) for m in methods[1:]), plan_check(methods[0], 2)]
    sample_b8 = Part("sample_b8", "sampling", (*sample, "--batch", "8", "--controls", "none", "--repeats", "2",
                                               *torch_flag), 90)
    built_in = [m for m in methods if m in BUILT_IN_METHODS]
    added = [m for m in methods if m not in BUILT_IN_METHODS]
    # The plan's predicted memory is checked right after the first train step it predicts was measured.
    return [setup, *data, sample_b1, train(built_in[0], 8), plan_check(built_in[0], 8),
            *(train(m, 8) for m in built_in[1:]), sample_b8, generate, *controls,
            *(train(m, 8) for m in added), numerics, *(train(m, 16, fallbacks=(12,)) for m in methods), eval_part]


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Plans, runs and reports the suite; returns the report's data (also DIR/report.json)."""
    started = time.perf_counter()
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError(f"--out {args.out}: is a file, not a folder")
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
    lock = threading.Lock()

    def record(entry: dict[str, Any] | None = None) -> dict[str, Any]:
        """Adds a part's entry and rewrites the report (after every part: a suite killed from
        outside still leaves one)."""
        with lock:
            if entry is not None:
                entries.append(entry)
            data = {"backend": probe["backend"], "device": probe["device"], "isolated": isolate, "budget_s": budget,
                    "elapsed_s": time.perf_counter() - started, "methods": methods, "parts": list(entries),
                    "planned": [p.name for p in parts]}
            suite_report.write(Path(args.out), data)
            return data

    def finished(part: Part, entry: dict[str, Any]) -> None:
        timing.log(f"suite: {part.name} {entry['status']} in {entry['seconds']:.1f} s"
                   + (f": {entry['error'][:300]}" if entry["status"] != "ok" else ""))
        record(entry)

    # Host-only parts (the input pipelines on an accelerator) run one after another beside the rest.
    beside = [p for p in parts if p.background and isolate]

    def run_beside() -> None:
        for part in beside:
            entry = run_part(part, folder, True, 2.0 * part.estimate_s)
            entry["note"] = "ran beside the device parts (host CPU)"
            finished(part, entry)

    def stop(signum, frame):
        raise Terminated(f"the suite received signal {signum} (a wall-clock limit from outside)")

    previous = signal.signal(signal.SIGTERM, stop)
    current = None
    try:
        helper = threading.Thread(target=run_beside, daemon=True)
        if beside:
            helper.start()
        for part in (p for p in parts if p not in beside):
            left = budget - (time.perf_counter() - started)
            # An isolated part is killed at its time box, so it may start on half its estimate;
            # one in this process cannot be stopped, so it needs its whole estimate.
            if left < (0.5 if isolate else 1.0) * part.estimate_s or left < 5:
                record({"name": part.name, "section": part.section, "status": "skipped", "seconds": 0.0,
                        "error": f"not enough time left ({left:.0f} s of the {budget:.0f} s budget; "
                                 f"the part needs ~{part.estimate_s:.0f} s)"})
                timing.log(f"suite: {part.name} skipped ({left:.0f} s left)")
                continue
            timing.log(f"suite: {part.name} ({left:.0f} s left)")
            current = part
            entry = run_part(part, folder, isolate, left)
            current = None
            finished(part, entry)
            if part.name == "setup" and entry["status"] != "ok":
                break  # every later part needs the base folders
        if beside:
            helper.join(timeout=max(budget - (time.perf_counter() - started), 60.0))
    except Terminated as err:
        kill_live_parts()
        if current is not None:
            record({"name": current.name, "section": current.section, "status": "timeout", "seconds": None,
                    "error": str(err)})
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    data = record()
    timing.log(f"suite: wrote {Path(args.out) / 'report.md'} and report.json in {data['elapsed_s']:.0f} s")
    return data
