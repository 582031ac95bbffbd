"""Sweeps: expand `configs/sweeps/<name>.py` into named runs, run them, collect their metrics.

    python -m jcompose.sweep list    --sweep=configs/sweeps/denoise_lr.py --root=/tmp/sweep
    python -m jcompose.sweep run     --sweep=configs/sweeps/denoise_lr.py --root=/tmp/sweep [--only=NAME]
    python -m jcompose.sweep tpu     --sweep=configs/sweeps/denoise_lr.py --root=gs://bucket/sweep
    python -m jcompose.sweep collect --sweep=configs/sweeps/denoise_lr.py --root=/tmp/sweep

A sweep file defines `get_sweep(arg) -> dict(config="configs/<method>.py[:variant]", runs=[...])`
where each run is a dict of dotted config overrides (`{"optim.lr": 1e-4}`); `grid` and `zip_runs`
build the list. Each run trains in `<root>/<run name>` with exactly the command a user would type
(`python -m jcompose.train --config=... --config.optim.lr=0.0001 ...`), one after another; a finished
run is left as it is (the trainer resumes and has nothing to do) and a crashed one resumes.
`collect` reads each run's `metrics.json` (the last logged metrics) into one table (`results.csv`
and a Markdown table on stdout). `tpu` prints one `launch_tpu.sh` command per run instead.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from etils import epath

from jcompose.cli import InputError


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Cartesian product: grid(**{"optim.lr": [1e-4, 1e-5], "seed": [0, 1]}) -> 4 override dicts."""
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(axes[k] for k in keys))]


def zip_runs(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Element-wise: zip_runs(**{"optim.lr": [1e-4, 1e-5], "train.steps": [10, 20]}) -> 2 override dicts."""
    lengths = {k: len(v) for k, v in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zip_runs: all axes need the same length, got {lengths}")
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in zip(*(axes[k] for k in keys), strict=True)]


def _format_value(value: Any) -> str:
    """A value as config_flags parses it on the command line."""
    return value if isinstance(value, str) else repr(value)


def run_name(overrides: dict[str, Any]) -> str:
    """'lr=0.0001,seed=1' from {"optim.lr": 1e-4, "seed": 1}: the last part of each key, file-safe."""
    parts = [f"{key.split('.')[-1]}={_format_value(value)}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", ",".join(parts)) or "default"


def load_sweep(spec: str) -> dict[str, Any]:
    """Loads `path.py[:arg]` and validates what its get_sweep returns: InputError naming the file for a
    missing file or get_sweep, a bad return value, duplicate runs, and a config, variant or override
    field (with a "did you mean") the train command would refuse, before any run starts."""
    from configs import common

    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise InputError(f"--sweep {path}: no such file (expected configs/sweeps/<name>.py[:arg])")
    module = common.load_module(path, "sweep")
    if not hasattr(module, "get_sweep"):
        raise InputError(f"--sweep {path}: defines no get_sweep(arg)")
    try:
        sweep = module.get_sweep(arg)
    except Exception as err:
        raise InputError(f"--sweep {spec}: get_sweep({arg!r}) raised {type(err).__name__}: {err}") from err
    if not isinstance(sweep, dict) or not isinstance(sweep.get("config"), str) or not isinstance(
            sweep.get("runs"), list) or not sweep["runs"] or not all(isinstance(r, dict) for r in sweep["runs"]):
        raise InputError(f"{path}: get_sweep must return dict(config='configs/<method>.py[:variant]', "
                         f"runs=[{{'dotted.key': value, ...}}, ...]) with at least one run, got {sweep!r:.200}")
    names = [run_name(run) for run in sweep["runs"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{path}: runs with the same overrides: {duplicates}")
    config_path = sweep["config"].partition(":")[0]
    if not Path(config_path).is_file():
        raise InputError(f"{path}: config {sweep['config']!r}: no such file {config_path}")
    try:
        config = common.load(sweep["config"])
        for name, run in zip(names, sweep["runs"], strict=True):
            for key in run:
                common.check_override(config, key, flag=f"run {name}: --config")
    except common.ConfigError as err:
        raise InputError(f"{path}: {err}") from None
    return {"config": sweep["config"], "runs": dict(zip(names, sweep["runs"], strict=True))}


def train_flags(config: str, overrides: dict[str, Any]) -> list[str]:
    return [f"--config={config}", *(f"--config.{key}={_format_value(value)}" for key, value in overrides.items())]


def run_all(sweep: dict, root: str, only: Iterable[str] = (), cache_dir: str | None = None,
            extra: Sequence[str] = ()) -> dict[str, int]:
    """Trains each run in `<root>/<name>` in a subprocess, one after another; name -> exit code."""
    env = dict(os.environ)
    if cache_dir:  # runs differing only in traced values reuse each other's compiled programs
        env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    codes = {}
    selected = [n for n in sweep["runs"] if not only or n in only]
    for i, name in enumerate(selected, 1):
        command = [sys.executable, "-m", "jcompose.train", *train_flags(sweep["config"], sweep["runs"][name]),
                   f"--workdir={epath.Path(root) / name}", *extra]
        print(f"[{i}/{len(selected)}] {name}: {shlex.join(command[1:])}", flush=True)
        codes[name] = subprocess.run(command, env=env, check=False).returncode
        if codes[name]:
            print(f"[{i}/{len(selected)}] {name}: failed with exit code {codes[name]}; continuing", flush=True)
    return codes


def tpu_commands(sweep: dict, root: str, prefix: str) -> list[str]:
    """One `bash launch_tpu.sh` command per run (its own VM name and workdir under `root`)."""
    config, _, variant = sweep["config"].partition(":")
    method = Path(config).stem
    commands = []
    for i, (name, overrides) in enumerate(sweep["runs"].items()):
        args = ["bash", "launch_tpu.sh", method, *(["--variant", variant] if variant else []),
                "--name", f"{prefix}-{i}", "--workdir", str(epath.Path(root) / name), "--detach",
                "--", *train_flags(config, overrides)[1:]]
        commands.append(shlex.join(args))
    return commands


def collect(sweep: dict, root: str) -> list[dict[str, Any]]:
    """One row per run: the values its stored config (`<run>/config.json`, what it was trained with)
    has for the swept fields, else the overrides (a run that has not started), and its last logged
    metrics (empty if it has not logged)."""
    from jcompose import run_record

    fields = list(dict.fromkeys(f for overrides in sweep["runs"].values() for f in overrides))
    last = [f.split(".")[-1] for f in fields]
    # A column is the field's last name ("lr"), or its whole dotted path where two swept fields share it.
    column = {f: (name if last.count(name) == 1 else f) for f, name in zip(fields, last, strict=True)}
    rows = []
    for name, overrides in sweep["runs"].items():
        folder = epath.Path(root) / name
        path = folder / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else {}
        stored = run_record.read_config(folder)
        labels = {}
        for field, value in overrides.items():
            if stored is not None:
                value = stored
                for part in field.split("."):
                    value = value[part]
            labels[column[field]] = list(value) if isinstance(value, tuple) else value
        rows.append({"run": name, **labels, **metrics})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table over the union of the rows' keys (missing cells blank)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value):
        return f"{value:.5g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: epath.Path) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jcompose.sweep` (argv without the program name); returns the exit code."""
    import argparse

    from jcompose import cli

    parser = argparse.ArgumentParser(prog="python -m jcompose.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {cli.DEBUG_ENV}=1)")
    parser.add_argument("action", choices=("list", "run", "tpu", "collect"))
    parser.add_argument("--sweep", required=True, help="configs/sweeps/<name>.py[:arg]")
    parser.add_argument("--root", required=True, help="parent directory of the runs' workdirs (local or gs://)")
    parser.add_argument("--only", action="append", default=[], help="run only this run name (repeatable)")
    parser.add_argument("--cache-dir", help="XLA compilation cache shared by the runs (run)")
    parser.add_argument("--prefix", default="jcompose-sweep", help="TPU VM name prefix (tpu)")
    args, extra = parser.parse_known_args(cli.pop_debug(sys.argv[1:] if argv is None else argv))
    with cli.guard():
        return _main(args, extra)


def _main(args, extra: list[str]) -> int:
    sweep = load_sweep(args.sweep)
    unknown = sorted(set(args.only) - set(sweep["runs"]))
    if unknown:
        raise InputError(f"--only {unknown}: not in the sweep; runs are {list(sweep['runs'])}")
    if extra and args.action != "run":
        raise InputError(f"unexpected arguments {extra} (extra train flags are only for 'run')")
    if args.action == "list":
        for name, overrides in sweep["runs"].items():
            print(f"{name}\t{' '.join(train_flags(sweep['config'], overrides))}")
        return 0
    if args.action == "tpu":
        print("\n".join(tpu_commands(sweep, args.root, args.prefix)))
        return 0
    if args.action == "run":
        codes = run_all(sweep, args.root, args.only, args.cache_dir, extra)
        if any(codes.values()):
            print(f"failed runs: {[n for n, c in codes.items() if c]}", file=sys.stderr)
    rows = collect(sweep, args.root)
    root = epath.Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    write_csv(rows, root / "results.csv")
    print(format_table(rows))
    print(f"(also in {root / 'results.csv'})")
    return 1 if args.action == "run" and any(codes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
