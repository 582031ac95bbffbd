"""Plan a run for a target: compile its programs there and read off memory, FLOPs, time and kernels.

`prepare` builds the run abstractly on the target's devices (once); `plan` compiles its programs and
returns the plan dict that `output` writes (plan.json, plan.md, hbm.png); `max_batch` finds the largest
per-chip batch whose train step fits, per remat / FSDP variant, reusing the built run.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import jax

from configs.common import ConfigError, validate
from jcompose import parallel
from jcompose.plan import build, evaluation, programs, report, targets

VARIANTS = ("as configured", "remat", "fsdp", "remat+fsdp")


def variant_changes(config, variant: str) -> dict:
    """The config fields a `max_batch` variant sets (-1: every chip). Remat is the method's per-block
    remat (`model.remat`: UNet / ControlNet blocks recomputed in the backward) where its config has one,
    else `train.remat` (the whole loss under one jax.checkpoint: the backward reruns the forward and then
    holds all of its activations at once, so the step's peak barely moves)."""
    remat = {"model.remat": True} if "remat" in config.model else {"train.remat": True}
    return {"as configured": {}, "remat": remat, "fsdp": {"mesh.fsdp": -1},
            "remat+fsdp": {**remat, "mesh.fsdp": -1}}[variant]


def make_mesh(config, devices: list) -> jax.sharding.Mesh:
    """The run's ('data', 'fsdp') mesh over the target's devices (`config.mesh`, data -1 = the rest)."""
    n, fsdp = len(devices), config.mesh.fsdp
    data = config.mesh.data if config.mesh.data != -1 else n // fsdp
    if n % fsdp or data * fsdp != n:
        raise ConfigError(f"config.mesh: data {config.mesh.data} x fsdp {fsdp} does not match the target's "
                          f"{n} chips")
    return jax.make_mesh((data, fsdp), parallel.BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=devices)


def check_batch(config, devices: int, models: int) -> None:
    """The batch must split over the target's chips, as `jcompose.train.check_layout` demands of the run."""
    accum = config.train.grad_accum
    if models > 1 and models % devices == 0:
        return
    if config.train.batch_size % (devices * accum):
        raise ConfigError(f"config.train.batch_size = {config.train.batch_size}: must divide into {devices} chips x "
                          f"{accum} micro-batches on this target")


def prepare(config, config_path: str, target: targets.Target, workdir: str | Path) -> build.Run:
    """The run of `config` built abstractly on `target`'s devices (see `build`)."""
    validate(config)
    devices = targets.devices(target)
    run = build.build(config, config_path, make_mesh(config, devices), Path(workdir))
    check_batch(config, len(devices), run.models)
    if importlib.util.find_spec(f"configs.eval.{config.method}"):  # its benchmark evaluation, at its defaults
        run.eval_config = importlib.import_module(f"configs.eval.{config.method}").get_config()
        run.notes += evaluation.resolve(run.eval_config, Path(workdir))
    return run


def compile_reports(run: build.Run, target: targets.Target, names=programs.PROGRAMS, margin: float = 0.05,
                    hbm_bytes: float | None = None, log=print, cache_dir: str | None = None) -> list[dict[str, Any]]:
    """Each named program of `run` compiled for `target` and reported (`report.program_report`); with
    `cache_dir`, a program compiled before (the same lowered text, devices and compiler) is not compiled again."""
    reports = []
    for name in names:
        log(f"compiling {name} for {target.name} ({target.devices_count} x {target.chip.kind}) ...")
        built = programs.BUILDERS[name](run, target.platform, cache_dir)
        if built is None:
            log(f"  {name}: {run.config.method} has no such program")
            continue
        for compiled in built if isinstance(built, list) else [built]:  # evaluate: one program per network
            reports.append(_reported(compiled, target, margin, hbm_bytes, log))
    return reports


def _reported(compiled: programs.Compiled, target: targets.Target, margin: float, hbm_bytes: float | None,
              log) -> dict[str, Any]:
    name = compiled.name
    if compiled.error:
        log(f"  {name}: the compiler refused it: {compiled.error}")
        return {"program": name, "fits": False, "error": compiled.error, "lower_s": compiled.lower_s,
                "compile_s": compiled.compile_s, "compile_cpu_s": compiled.compile_cpu_s,
                "host_peak_gib": compiled.host_peak_gib}
    one = report.program_report(compiled, target, compiled.flops, margin, hbm_bytes)
    log(f"  {name}: {one['memory_bytes']['total'] / 2**30:.2f} GiB per chip of {one['hbm_bytes'] / 2**30:.1f} "
        f"({'fits' if one['fits'] else 'does NOT fit'}), {one['flops_per_chip'] / 1e12:.3g} TFLOP per chip, "
        f"traced in {compiled.lower_s:.0f} s, "
        + ("compiled before (plan cache)" if compiled.cached else f"compiled in {compiled.compile_s:.0f} s "
                                                                  f"({compiled.compile_cpu_s:.0f} CPU s)"))
    return one


def plan(run: build.Run, config_path: str, target: targets.Target, *, names=programs.PROGRAMS,
         margin: float = 0.05, hbm_bytes: float | None = None, log=print, cache_dir: str | None = None) -> dict[str, Any]:
    """The plan of a prepared run (module doc)."""
    start = time.perf_counter()
    config = run.config
    reports = compile_reports(run, target, names, margin, hbm_bytes, log, cache_dir)
    chips = target.devices_count
    return {
        "config": config_path, "method": config.method, "target": target.name, "platform": target.platform,
        "chip": target.chip.kind, "chips": chips, "slices": target.slices, "mesh": dict(run.mesh.shape),
        "batch_size": config.train.batch_size, "models": run.models,
        "per_chip_batch": config.train.batch_size * run.models / chips, "remat": bool(config.train.remat),
        "grad_accum": config.train.grad_accum, "ema": bool(config.train.ema_decay),
        "compute_dtype": config.compute_dtype, "image_size": config.data.image_size,
        "attention_setting": config.model.get("attention", "auto"), "margin": margin,
        "hbm_bytes": float(hbm_bytes or target.chip.hbm_bytes), "peak_bf16_flops": target.chip.peak_bf16_flops,
        "notes": run.notes, "programs": reports, "compile_total_s": time.perf_counter() - start,
        "host_peak_gib": programs.host_peak_gib(), "fits": all(r["fits"] for r in reports), "jax": jax.__version__,
    }


def _variant_config(config, changes: dict, chips: int):
    config = copy.deepcopy(config)
    for field, value in changes.items():
        group, leaf = field.split(".")
        config[group][leaf] = chips if value == -1 else value
    return config


def keeping_batch(global_batch: int, chips: int, micro_per_chip: int) -> tuple[int, int] | None:
    """(grad_accum, micro-batch per chip) that keeps `global_batch` with micro-batches of at most
    `micro_per_chip` per chip (the fewest accumulation steps), or None when no whole split exists."""
    for accum in range(1, global_batch + 1):
        if global_batch % (accum * chips) == 0 and global_batch // (accum * chips) <= micro_per_chip:
            return accum, global_batch // (accum * chips)
    return None


def max_batch(run: build.Run, config_path: str, target: targets.Target, *, variants=tuple(VARIANTS),
              margin: float = 0.05, hbm_bytes: float | None = None, workdir: str | Path = ".", limit: int = 4096,
              log=print, cache_dir: str | None = None) -> list[dict[str, Any]]:
    """The largest per-chip batch whose train step fits, per variant (remat; FSDP over every chip): the
    memory at 1 and 2 micro-batches per chip gives a line, its crossing with the budget a guess, and compiles
    at the guess and next to it settle the boundary (memory grows with the batch). Returns per variant the
    batch, the memory there and one micro-batch above, the overrides that run it, and the overrides that keep
    the configured global batch by accumulating gradients over micro-batches that fit."""
    chips = target.devices_count
    step = run.config.train.grad_accum  # the per-chip batch moves in whole micro-batches
    budget = float(hbm_bytes or target.chip.hbm_bytes) * (1 - margin)
    results, seen = [], set()
    for variant in variants:
        changes = variant_changes(run.config, variant)
        config = _variant_config(run.config, changes, chips)
        key = (bool(config.train.remat), bool(config.model.get("remat")), config.mesh.fsdp)
        if key in seen:  # e.g. FSDP on one chip, or remat already on
            continue
        seen.add(key)
        same_build = config.mesh.fsdp == run.config.mesh.fsdp and config.model == run.config.model
        base = run if same_build else prepare(config, config_path, target, workdir)  # a new mesh or model
        log(f"largest per-chip batch, {variant}:")
        known: dict[int, tuple[bool, float | None]] = {}

        def probe(n: int) -> bool:
            if n not in known:
                trial = build.with_train(base, batch_size=n * step * chips, remat=config.train.remat)
                train = compile_reports(trial, target, ("train",), margin, hbm_bytes, lambda *_: None, cache_dir)[0]
                known[n] = (train["fits"], train.get("memory_bytes", {}).get("total"))
                total = known[n][1]
                log(f"  per-chip batch {n * step}: " + (f"{total / 2**30:.2f} GiB" if total is not None else
                                                         train.get("error", "refused"))
                    + (", fits" if known[n][0] else ", does not fit"))
            return known[n][0]

        if not probe(1):
            results.append({"variant": variant, "per_chip_batch": 0, "compiles": len(known),
                            "note": "one micro-batch per chip does not fit"})
            continue
        n = 2
        if probe(2):
            (_, m1), (_, m2) = known[1], known[2]
            if m1 is not None and m2 is not None and m2 > m1:
                n = int(1 + (budget - m1) // (m2 - m1))
            n = max(2, min(limit // step, n))
            if probe(n):
                while n * step < limit and probe(n + 1):
                    n += 1
            else:
                while not probe(n - 1):
                    n -= 1
                n -= 1
        else:
            n = 1
        changed = [f"--config.{f}={chips if v == -1 else v}" for f, v in changes.items()]
        overrides = [f"--config.train.batch_size={n * step * chips}", *changed]
        above = known.get(n + 1)
        result = {"variant": variant, "per_chip_batch": n * step, "global_batch": n * step * chips,
                  "memory_bytes": known[n][1], "next_per_chip_batch": (n + 1) * step if above else None,
                  "next_memory_bytes": above[1] if above else None, "compiles": len(known),
                  "overrides": " ".join(overrides)}
        kept = keeping_batch(run.config.train.batch_size, chips, n)
        if kept:  # the configured batch as micro-batches of a size that fits (its memory: at most known[n])
            result["keeping_batch_overrides"] = " ".join([f"--config.train.grad_accum={kept[0]}", *changed])
        results.append(result)
        log(f"  -> per-chip batch {n * step}: {' '.join(overrides)}"
            + (f"; the configured batch {run.config.train.batch_size}: {result['keeping_batch_overrides']}"
               if kept else ""))
    return results
