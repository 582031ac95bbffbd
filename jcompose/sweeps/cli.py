"""`python -m jcompose.sweep list|run|collect|tpu --sweep=configs/sweeps/<name>.py[:arg] --root=DIR`.

    list      every training unit and trial with the commands it runs
    run       the trials on Ray (embedded here, or `--address` of a cluster; `--no-ray`: one after another
              in this process), then collect; a rerun skips finished stages and resumes killed ones
    collect   results.csv / results.md (one table, the paper's values beside) and report.html
    tpu       one `launch_tpu.sh` command per training run (the runs on their own TPU VMs, by hand)

`--set KEY=VALUE` (repeatable) sets a key for every variant, with the sweep files' key rules (a training
field, `compose.<flag>`, `evaluate.<field>`), e.g. `--set model.base=/models/sd15 --set
evaluate.clip.model=/models/clip-vit-base-patch32`; extra `--config.<field>=VALUE` arguments are training
fields too. Input errors print one `error: ...` line and exit 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from etils import epath

from jcompose import cli
from jcompose.cli import InputError
from jcompose.sweeps import collect as collect_lib
from jcompose.sweeps import report as report_lib
from jcompose.sweeps import trial as trial_lib
from jcompose.sweeps.spec import Sweep, check_fields, load_sweep, train_flags


def _value(text: str):
    """A --set value as Python: literals ("1e-4", "True", "(1, 2)") parsed, anything else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def with_settings(sweep: Sweep, settings: dict) -> Sweep:
    """The sweep with `settings` added to its fixed keys (a variant's own value still wins)."""
    return dataclasses.replace(sweep, fixed={**sweep.fixed, **settings}) if settings else sweep


def parse_settings(pairs: Sequence[str], extra: Sequence[str]) -> dict:
    settings = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise InputError(f"--set {pair!r}: expected KEY=VALUE (e.g. --set optim.lr=1e-4)")
        settings[key] = _value(value)
    for arg in extra:
        key, eq, value = arg.partition("=")
        if not key.startswith("--config.") or not eq:
            raise InputError(f"unexpected argument {arg!r} (training fields: --config.<field>=VALUE or --set)")
        settings[key[len("--config."):]] = _value(value)
    return settings


def tpu_commands(sweep: Sweep, root: str, prefix: str) -> list[str]:
    """One `bash launch_tpu.sh` command per training run (its own VM name and workdir under `root`)."""
    config, _, variant = sweep.config.partition(":")
    method = Path(config).stem
    layout = trial_lib.Layout(root)
    commands = []
    for i, (name, overrides) in enumerate(sweep.training_runs().items()):
        args = ["bash", "launch_tpu.sh", method, *(["--variant", variant] if variant else []),
                "--name", f"{prefix}-{i}", "--workdir", layout.run(name), "--detach",
                "--", *train_flags(config, overrides)[1:]]
        commands.append(shlex.join(args))
    return commands


def collect_and_report(sweep: Sweep, root: str) -> str:
    rows = collect_lib.collect(sweep, root)
    text = collect_lib.write_tables(sweep, rows, root)
    html = report_lib.write_report(sweep, rows, root)
    return f"{text}\n(also {Path(root) / 'results.csv'}, {html})"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jcompose.sweep` (argv without the program name); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m jcompose.sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {cli.DEBUG_ENV}=1)")
    parser.add_argument("action", choices=("list", "run", "tpu", "collect"))
    parser.add_argument("--sweep", required=True, help="configs/sweeps/<name>.py[:arg]")
    parser.add_argument("--root", required=True, help="the sweep's folder (a shared file system on a cluster)")
    parser.add_argument("--only", action="append", default=[], help="run only this variant (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a key for every variant")
    parser.add_argument("--cache-dir", help="XLA compilation cache shared by every stage (default: "
                        "$JAX_COMPILATION_CACHE_DIR, else <root>/xla_cache)")
    parser.add_argument("--address", default="", help="Ray cluster address ('auto': the cluster this node is in)")
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="run trials one after another here")
    parser.add_argument("--devices", type=int, default=None, help="accelerators per trial (default: the sweep's)")
    parser.add_argument("--local-devices", type=int, default=0, help="CPU trials: cores Ray may use (default all)")
    parser.add_argument("--tpu", default="", help="<version>:<topology> (v5p:2x2x2): a TPU slice per trial")
    parser.add_argument("--pack", dest="pack", action="store_true", default=None, help="pack trials (default: sweep's)")
    parser.add_argument("--no-pack", dest="pack", action="store_false")
    parser.add_argument("--prefix", default="jcompose-sweep", help="TPU VM name prefix (tpu)")
    args, extra = parser.parse_known_args(cli.pop_debug(sys.argv[1:] if argv is None else argv))
    with cli.guard():
        return _main(args, extra)


def _main(args, extra: list[str]) -> int:
    sweep = with_settings(load_sweep(args.sweep), parse_settings(args.set, extra))
    if args.set or extra:  # the added keys must be valid too
        check_fields(sweep, args.sweep.partition(":")[0])
    unknown = sorted(set(args.only) - set(sweep.variants))
    if unknown:
        raise InputError(f"--only {unknown}: not in the sweep; runs are {list(sweep.variants)}")
    root = str(epath.Path(args.root).absolute()) if "://" not in args.root else args.root
    if args.action == "list":
        print("\n".join(trial_lib.describe(sweep, trial_lib.Layout(root), args.pack)))
        return 0
    if args.action == "tpu":
        print("\n".join(tpu_commands(sweep, root, args.prefix)))
        return 0
    code = 0
    if args.action == "run":
        from jcompose.sweeps import scheduler

        cache = args.cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(Path(root) / "xla_cache")
        # Stages whose programs are the same (another data seed, step count or run) compile once.
        os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        results = scheduler.run_sweep(sweep, root, use_ray=args.ray, address=args.address, devices=args.devices,
                                      tpu=args.tpu, local_devices=args.local_devices, pack=args.pack,
                                      only=args.only, cwd=None if args.address else os.getcwd())
        code = scheduler.exit_summary(results)
    print(collect_and_report(sweep, root))
    return code
