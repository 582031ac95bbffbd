"""`python -m jcompose.plan --config=configs/<method>.py[:variant] --target=v5p-8 [--config.x=...]`

Compiles the run's programs ahead of time for the target (see `jcompose.plan`) and writes plan.json,
plan.md and hbm.png into `--out`; prints the verdict. Exit status 0 when every program fits, 3 when one
does not (`launch_tpu.sh` stops there), 2 for bad input (1 stays a crash's).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

if not any(arg in ("--target=local", "local") for arg in sys.argv):
    # The plan compiles for other chips and runs nothing: JAX need not look for local accelerators (with
    # libtpu and the CUDA plugin installed, that search takes half a minute on a CPU machine).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jcompose import cli  # noqa: E402 (after the platform choice)

NO_FIT = 3  # exit status when a program does not fit (0: fits, 2: bad input, 1: a crash)


def _define_flags(values, argv: list[str]) -> None:
    from absl import flags
    from ml_collections import config_flags

    from jcompose.plan import planner, programs, targets

    config_flags.DEFINE_config_file("config", None, "configs/<method>.py[:variant]", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string("target", None, f"accelerator: {targets.EXAMPLES}, or cpu", flag_values=values)
    flags.DEFINE_integer("slices", 1, "TPU slices joined over the data-centre network (multislice)",
                         flag_values=values)
    flags.DEFINE_list("programs", list(programs.PROGRAMS),
                      "programs to compile: train, sample, generate (the benchmark-generation step), evaluate (its metrics)",
                      flag_values=values)
    flags.DEFINE_bool("max_batch", False, "also find the largest per-chip batch whose train step fits",
                      flag_values=values)
    flags.DEFINE_list("max_batch_variants", list(planner.VARIANTS), "with --max_batch: " + ", ".join(planner.VARIANTS),
                      flag_values=values)
    flags.DEFINE_float("margin", 0.05, "HBM fraction kept free (fragmentation, runtime buffers)", flag_values=values)
    flags.DEFINE_float("hbm_gib", None, "per-chip memory to plan against instead of the chip's HBM", flag_values=values)
    flags.DEFINE_string("out", None, "folder for plan.json, plan.md, hbm.png (default plan-<method>-<target>)",
                        flag_values=values)
    flags.DEFINE_string("cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "jcompose", "plans"),
                        "what compiled programs said, by program text: an unchanged program is not compiled again "
                        "('' turns it off)", flag_values=values)
    flags.DEFINE_bool("debug", False, f"show the traceback of input errors too (or set {cli.DEBUG_ENV}=1)",
                      flag_values=values)


def main(argv: list[str]) -> int:
    values = cli.parse_absl_flags(argv, _define_flags, prog="python -m jcompose.plan")
    if values.config is None or not values.target:
        raise cli.InputError("--config=configs/<method>.py[:variant] and --target=<accelerator> are required")
    from jcompose.plan import output, planner, programs, targets

    try:
        target = targets.parse(values.target, values.slices)
    except ValueError as err:
        raise cli.InputError(str(err)) from None
    unknown = set(values.programs) - set(programs.PROGRAMS)
    if unknown:
        raise cli.InputError(f"--programs: unknown {sorted(unknown)}; choose from {', '.join(programs.PROGRAMS)}")
    bad_variants = set(values.max_batch_variants) - set(planner.VARIANTS)
    if bad_variants:
        raise cli.InputError(f"--max_batch_variants: unknown {sorted(bad_variants)}; choose from {', '.join(planner.VARIANTS)}")
    if not 0 <= values.margin < 1:
        raise cli.InputError(f"--margin {values.margin}: expected a fraction in [0, 1)")
    missing = targets.missing_plugin(target)
    if missing:
        raise cli.InputError(f"--target {values.target}: its compiler is not installed: {missing}")
    config_path = argv_config(argv)
    config = values.config
    out = values.out or f"plan-{config.method}-{target.name}"
    hbm = values.hbm_gib * 2**30 if values.hbm_gib else None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jcompose-plan-") as workdir:
        run = planner.prepare(config, config_path, target, workdir)
        print(f"built the run from shapes in {time.perf_counter() - start:.0f} s"
              + "".join(f"\n  {note}" for note in run.notes), flush=True)
        cache = values.cache_dir or None
        result = planner.plan(run, config_path, target, names=values.programs, margin=values.margin, hbm_bytes=hbm,
                              cache_dir=cache)
        batches = planner.max_batch(run, config_path, target, variants=values.max_batch_variants, margin=values.margin,
                                    hbm_bytes=hbm, workdir=workdir, cache_dir=cache) if values.max_batch else None
    result["wall_s"] = time.perf_counter() - start
    result["cpu_s"] = programs.cpu_seconds()
    result["host_peak_gib"] = programs.host_peak_gib()
    folder = output.write(result, out, batches)
    print(output.verdict(result))
    print(f"plan written to {folder}/plan.md (and plan.json, hbm.png) in {result['wall_s']:.0f} s "
          f"({result['cpu_s']:.0f} CPU s), host memory peak {result['host_peak_gib']:.1f} GiB")
    return 0 if result["fits"] else NO_FIT


def argv_config(argv: list[str]) -> str:
    """The config file path of `--config=path[:variant]` (the tiny variant of that file gives example data)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":", 1)[0]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
    raise cli.InputError("--config=configs/<method>.py[:variant] is required")


if __name__ == "__main__":
    sys.exit(cli.run(main))
