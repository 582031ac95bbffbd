"""The `python -m jcompose.bench` command line: one subcommand per benchmark module.

Each module has `add_arguments(parser)` and `run(args) -> dict`; `--out FILE` writes the dict as
JSON (it is printed either way). Modules are imported only when their subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

COMMANDS = {
    "sample": ("jcompose.bench.sample", "CFG sampling: jcompose vs diffusers PyTorch, control overheads, MFU"),
    "train": ("jcompose.bench.train", "train step: img/s, MFU, peak memory, compile time vs the PyTorch step"),
    "data": ("jcompose.bench.data", "input pipeline: examples/s per worker process, workers needed per host"),
    "eval": ("jcompose.bench.eval", "evaluation feature extractors: images/s vs their PyTorch references"),
    "numerics": ("jcompose.bench.numerics", "bf16 UNet/ControlNet vs fp32; fused vs explicit attention"),
    "generate": ("jcompose.bench.generate", "benchmark generation: images/s on 1 and N devices (scaling), overlap"),
    "prepare": ("jcompose.bench.prepare", "write the random-weight base folders, environment, matmul ceiling"),
    "suite": ("jcompose.bench.suite", "everything above, time-boxed, into DIR/report.md + DIR/report.json"),
}
# Commands whose --model defaults by backend: tiny on CPU, the full SD 1.5 architecture elsewhere.
MODEL_DEFAULTED = ("sample", "train", "numerics", "prepare", "generate")


def parser() -> argparse.ArgumentParser:
    """The full parser (every subcommand's flags)."""
    top = argparse.ArgumentParser(prog="python -m jcompose.bench",
                                  description="jcompose benchmarks (absolute times only mean something on an "
                                              "accelerator; ratios are measured in one run)")
    sub = top.add_subparsers(dest="what", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        importlib.import_module(module).add_arguments(command)
        if name != "suite":
            command.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    return top


def parse(argv: list[str]) -> argparse.Namespace:
    """Parses `argv` (without the program name); fills the backend-dependent --model default."""
    # Only what a step needs on the device (not 75% up front): the PyTorch references in the same
    # process get the rest. Read when the backend starts, so it must be set before any device use.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    args = parser().parse_args(argv)
    if args.what in MODEL_DEFAULTED and args.model is None:
        import jax

        args.model = "tiny" if jax.default_backend() == "cpu" else "sd15"
    return args


def run(argv: list[str]) -> dict[str, Any]:
    """Runs the benchmark `argv` names (without the program name) and returns its report."""
    args = parse(argv)
    return importlib.import_module(COMMANDS[args.what][0]).run(args)


def main(argv: list[str] | None = None) -> int:
    """Runs a benchmark, prints its JSON report and writes it to `--out` if given; exit code 0."""
    from jcompose.bench import timing

    args = parse(list(sys.argv[1:] if argv is None else argv))
    report = importlib.import_module(COMMANDS[args.what][0]).run(args)
    if args.what != "suite" and args.out is not None:
        timing.write_json(args.out, report)
    print(json.dumps(timing.jsonable(report), indent=2))
    return 0
