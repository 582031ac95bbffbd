"""The README's "Will it fit?" table: every method at its paper / released settings planned for each target.

    python tools/plan_table.py --out plans                 # plans missing ones (one at a time), then the table
    python tools/plan_table.py --out plans --table-only    # the table from the plans already there

Each plan is `python -m jcompose.plan` in its own process (one full-size compile at a time: each needs
several GiB of host memory), written to `<out>/<method>-<target>/`; the command, wall and CPU seconds
of each go to `<out>/runs.jsonl`. The table (Markdown, on stdout and in `<out>/table.md`) reads the
plans' plan.json files.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

TARGETS = ("v5e-8", "v5p-8", "v6e-8", "h100x8")
# method -> (config, overrides making the paper's run on a slice of `chips` chips)
METHODS = {
    "anyscene": ("configs/anyscene.py", lambda chips: []),  # batch 16, 512 px, bf16, ControlNet trained
    "anydoor": ("configs/anydoor.py", lambda chips: []),    # batch 32, 512 px / 224 px DINOv2-g, bf16, remat
    # DreamCom fine-tunes one UNet per object at batch 1 (released): one object per chip, in one program
    "dreamcom": ("configs/dreamcom.py", lambda chips: [
        "--config.data.objects=(" + ",".join(f"'murecom:Dog/fg{k}'" for k in range(1, chips + 1)) + ",)",
        "--config.compute_dtype=bfloat16"]),
}
CHIPS = {"v5e-8": 8, "v5p-8": 4, "v6e-8": 8, "h100x8": 8}
# (method, target) -> overrides a compiler needs for that plan. XLA's Triton GEMM tiling fails on DINOv2-g's
# 1028 x 1536 bf16 projections in the deviceless H100 compile ("Couldn't find output tile sizes that satisfy
# hlo"); with Triton GEMMs off those dots go to cuBLAS and the step compiles (2026-12-07, jax 0.10.2).
WORKAROUNDS = {("anydoor", "h100x8"): ["--config.train.xla_options=--xla_gpu_enable_triton_gemm=false"]}
# (method, target) -> {name: overrides}: where the paper's settings do not fit, the same global batch with
# memory cuts tried in turn, each its own row `<method>-<target>+<name>` under the paper's row.
# AnyDoor's state alone (15.5 GiB per chip) needs FSDP on v5e. Planning the FSDP steps (AnyDoor; AnyScene with
# remat) took more than this 24 GiB machine: OOM-killed at 23.1 GiB host after 19 and 21 min (2026-12-07).
# AnyScene + remat on v5e: 8.05 GiB of state and 7.4 GiB of temporaries that barely depend on the batch (2
# micro-batches: 7.7), so only FSDP brings it under 15.2 GiB.
FITTING = {("anyscene", "v5e-8"): {"remat": ["--config.model.remat=True"],
                                   "remat+grad_accum=2": ["--config.model.remat=True", "--config.train.grad_accum=2"],
                                   "remat+fsdp": ["--config.model.remat=True", "--config.mesh.fsdp=8"]},
           ("anydoor", "v5e-8"): {"fsdp": ["--config.mesh.fsdp=8"]}}


def rows(method: str, target: str) -> list[tuple[str, list[str]]]:
    """The table's rows for a method on a target: (folder name, overrides beyond the paper settings)."""
    return [(f"{method}-{target}", []), *((f"{method}-{target}+{name}", extra)
                                         for name, extra in FITTING.get((method, target), {}).items())]


def command(method: str, target: str, out: Path, name: str | None = None, extra=()) -> list[str]:
    config, overrides = METHODS[method]
    return [sys.executable, "-m", "jcompose.plan", f"--config={config}", f"--target={target}", "--programs=train",
            f"--out={out / (name or f'{method}-{target}')}", *overrides(CHIPS[target]),
            *WORKAROUNDS.get((method, target), []), *extra]


def run_missing(out: Path, methods, targets) -> None:
    for method in methods:
        for target in targets:
            for name, extra in rows(method, target):
                _run_one(out, method, target, name, extra)


def _run_one(out: Path, method: str, target: str, name: str, extra: list[str]) -> None:
    folder = out / name
    if (folder / "plan.json").is_file():
        return
    argv = command(method, target, out, name, extra)
    print("+", " ".join(argv), flush=True)
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = {"method": method, "target": target, "row": name, "command": argv[1:], "status": done.returncode,
              "wall_s": time.perf_counter() - start,
              "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
              "max_rss_gib": after.ru_maxrss / 2**20}
    with open(out / "runs.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")


def refusal(error: str) -> str:
    """A compiler's refusal in the table's memory column: libtpu names the temporaries it needed and the HBM it
    had ("... HLO temporaries (19.12G) exceeds available HBM (15.75G)"); other errors are shortened."""
    found = re.search(r"temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", error)
    if found:
        return f"refused: HLO temporaries {float(found[1]):.1f} > {float(found[2]):.1f} available"
    return "refused: " + error[:80]


def table(out: Path, methods, targets) -> str:
    lines = ["| method (paper settings) | target | per-chip batch | GiB per chip (of HBM) | fits | TFLOP per image "
            "(train step) | attention | compile CPU s | host GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for method in methods:
        for target in targets:
            for name, _ in rows(method, target):
                lines.append(_row(out / name / "plan.json", method + name.removeprefix(f"{method}-{target}")
                                  .replace("+", " + "), target))
    return "\n".join(lines)


def _row(path: Path, method: str, target: str) -> str:
    if not path.is_file():
        return f"| {method} | {target} | not planned yet | | | | | | |"
    plan = json.loads(path.read_text())
    step = plan["programs"][0]
    batch = f"{plan['per_chip_batch']:g}" + (f" ({plan['models']} models)" if plan["models"] > 1 else "")
    if "memory_bytes" not in step:
        # plans written before refusals recorded CPU seconds give the compile's wall seconds
        seconds = f"{step['compile_cpu_s']:.0f}" if "compile_cpu_s" in step else f"{step['compile_s']:.0f} (wall)"
        return (f"| {method} | {target} | {batch} | {refusal(step.get('error', ''))} | **no** | | | {seconds} | "
                f"{plan['host_peak_gib']:.1f} |")
    kinds: dict[str, int] = {}
    for layer in step["attention"].values():
        kinds[layer["implementation"]] = kinds.get(layer["implementation"], 0) + layer["calls"]
    attention = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return (f"| {method} | {target} | {batch} | {step['memory_bytes']['total'] / 2**30:.1f} "
            f"({step['hbm_bytes'] / 2**30:.0f}) | {'yes' if step['fits'] else '**no**'} | "
            f"{step['flops_per_image'] / 1e12:.2f} | {attention} | {step['compile_cpu_s']:.0f} | "
            f"{plan['host_peak_gib']:.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("plans"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    methods, targets = args.methods.split(","), args.targets.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        run_missing(args.out, methods, targets)
    text = table(args.out, methods, targets)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
