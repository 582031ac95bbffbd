"""Runs a sweep's units and trials on Ray: embedded on this machine, or on an existing cluster.

    ray.init()                   python -m jcompose.sweep run ...                  (this machine's devices)
    ray.init(address=ADDRESS)    python -m jcompose.sweep run --address=auto ...   (GPU nodes, TPU slices)

What a trial asks for (`placement`): on GPUs `num_gpus=devices` (Ray sets CUDA_VISIBLE_DEVICES, so the
trial's JAX sees only its own); on TPU slices (`--tpu v5p:2x2x2`) the training stage gets the whole slice
through Ray's slice placement group (`ray.util.tpu.run_on_slice`: one task per host, each running the
train command with `--multihost`, jax.distributed finding its peers from the TPU metadata), generation and
evaluation one host's chips (compose and evaluate run on one process); on CPUs a "device" is a core: a
trial takes `devices` of Ray's CPUs and its JAX sees that many host devices
(`--xla_force_host_platform_device_count`). So on a 2-GPU host two 1-device trials run at once, or one
2-device trial.

Each unit is a Ray task; each trial a task that depends on its unit's result, so generation starts as
soon as its model is trained and trials sharing a unit run side by side. Stage processes inherit the
JAX_*/XLA_*/JCOMPOSE_* environment of the sweep command (the compilation cache above all). A failed
stage fails only its trial (and the trials of its unit): reported with its log, the others go on.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

from jcompose.cli import InputError
from jcompose.sweeps import stages
from jcompose.sweeps import trial as trial_lib
from jcompose.sweeps.stages import Stage, is_done, run_stage, stage_env

FORWARDED = ("JAX_", "XLA_", "JCOMPOSE_", "TF_CPP_", "NCCL_", "LIBTPU_", "TPU_")
NOT_FORWARDED = ("CUDA_VISIBLE_DEVICES", "TPU_VISIBLE_CHIPS", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES")


def forwarded_env() -> dict[str, str]:
    """The variables a stage process on any node gets from the sweep command (not the ones Ray sets per task)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED) and k not in NOT_FORWARDED}


@dataclasses.dataclass(frozen=True)
class Placement:
    """What each task of a trial asks Ray for.

    kind: "cpu", "gpu" or "tpu"; devices: per trial (chips per host on TPU); hosts: TPU hosts of a slice.
    """

    kind: str
    devices: int
    hosts: int = 1
    topology: str = ""
    accelerator: str = ""

    def task_options(self) -> dict:
        """Ray options of a single-host stage task."""
        if self.kind == "gpu":
            return {"num_cpus": 1, "num_gpus": self.devices}
        if self.kind == "tpu":
            return {"num_cpus": 1, "resources": {"TPU": self.devices}}
        return {"num_cpus": self.devices}

    @property
    def cpu_devices(self) -> int:
        """Forced host devices of each stage process (CPU trials only)."""
        return self.devices if self.kind == "cpu" else 0

    def describe(self) -> str:
        if self.kind == "tpu":
            return (f"TPU {self.accelerator} {self.topology}: {self.hosts} host(s) x {self.devices} chips "
                    "(training on the whole slice, generation and evaluation on one host)")
        return f"{self.devices} {self.kind.upper()} device(s) per trial"


def placement(cluster: dict, devices: int, tpu: str = "") -> Placement:
    """The placement of a trial on a cluster with `cluster` resources (`ray.cluster_resources()`).

    tpu: "<version>:<topology>" (e.g. "v5p:2x2x2"): a TPU slice per trial; else GPUs when the cluster
    has them, else CPU cores. InputError when the cluster cannot hold one trial.
    """
    if tpu:
        version, _, topology = tpu.partition(":")
        from ray.util import tpu as ray_tpu

        try:
            hosts, per_host = ray_tpu.get_tpu_worker_resources(topology, version)
        except Exception as err:
            raise InputError(f"--tpu {tpu}: expected <version>:<topology> such as v5p:2x2x2 or v6e:4x4 "
                             f"({type(err).__name__}: {err})") from None
        return Placement("tpu", int(per_host["TPU"]), hosts, topology, version)
    if cluster.get("GPU", 0) >= 1:
        if devices > cluster["GPU"]:
            raise InputError(f"--devices {devices}: the cluster has {int(cluster['GPU'])} GPU(s)")
        return Placement("gpu", devices)
    if devices > cluster.get("CPU", 0):
        raise InputError(f"--devices {devices}: the cluster has {int(cluster.get('CPU', 0))} CPU(s), the "
                         "devices of a CPU trial (one core each)")
    return Placement("cpu", devices)


def host_stage(stage: Stage, extra_env: dict, cwd: str | None, host_log: str) -> int:
    """One host's part of a multi-host stage (run on every host of a TPU slice): the stage's command as
    it is (it carries --multihost), logged per host; markers are the orchestrator's."""
    import socket

    log = Path(host_log.format(host=socket.gethostname()))
    return run_stage(stage, stage_env(extra=extra_env), cwd, log=log, mark=False)["returncode"]


def _guarded(fn, what: str, *args) -> dict:
    """fn(*args), or a failure record with the traceback (a task never raises: one trial's error is data)."""
    try:
        return fn(*args)
    except Exception:
        return {"status": "failed", "failed": what, "tail": traceback.format_exc(limit=8), "stages": []}


def unit_task(sweep, layout, unit, extra_env: dict, cwd: str | None, place: Placement) -> dict:
    """Trains one unit (all hosts of a slice for a multi-host TPU placement)."""
    def go():
        env = stage_env(extra=extra_env, cpu_devices=place.cpu_devices)
        if place.kind != "tpu" or place.hosts == 1 or unit.packed:
            return trial_lib.run_stages([trial_lib.train_stage(sweep, layout, unit)], env, cwd)
        return _slice_train(sweep, layout, unit, extra_env, cwd, place)

    return {"unit": unit.name, **_guarded(go, "train")}


def _slice_train(sweep, layout, unit, extra_env, cwd, place: Placement) -> dict:
    """The train command with --multihost on every host of one TPU slice (Ray's slice placement group)."""
    import ray
    from ray.util import tpu as ray_tpu

    stage = trial_lib.train_stage(sweep, layout, unit, multihost=True)
    if is_done(stage):
        return {"status": "done", "stages": [{"stage": "train", "status": "skipped", "log": str(stage.log)}]}
    stages.begin(stage)
    host_log = str(stage.log).replace(".log", ".{host}.log")
    start = time.perf_counter()
    refs = ray_tpu.run_on_slice(ray.remote(host_stage), stage, extra_env, cwd, host_log,
                                topology=place.topology, accelerator_version=place.accelerator)
    codes = ray.get(refs)
    if any(codes):
        return {"status": "failed", "failed": "train", "log": host_log, "command": stage.command,
                "tail": f"exit codes per host: {codes}", "stages": []}
    stages.mark_done(stage, time.perf_counter() - start, None)
    return {"status": "done", "stages": [{"stage": "train", "status": "done", "log": host_log}]}


def trial_task(sweep, layout, variant, extra_env: dict, cwd: str | None, place: Placement,
               unit_result: dict | None) -> dict:
    env = stage_env(extra=extra_env, cpu_devices=place.cpu_devices)
    return {"variant": variant.name, **_guarded(trial_lib.run_trial, "trial", sweep, layout, variant, env, cwd,
                                                unit_result)}


# ------------------------------------------------------------------------------------------ driver


def connect(address: str = "", local_devices: int = 0) -> None:
    """Starts Ray on this machine (no setup: `ray.init()`, `local_devices` CPUs when given) or joins the
    cluster at `address`, shipping this checkout as the tasks' working directory. Reuses a running one."""
    try:
        import ray
    except ImportError:
        raise InputError("sweeps run on Ray: pip install -e '.[sweep]' (or run with --no-ray, one trial after "
                         "another on this machine)") from None
    if ray.is_initialized():
        return
    options = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    if address:
        code = {"working_dir": os.getcwd(), "excludes": [".git", "*.whl", "*.npz", "runs/", "data/"]}
        ray.init(address=address, runtime_env=code, **options)
    else:
        ray.init(num_cpus=local_devices or None, object_store_memory=200 * 2**20, **options)


def _report(result: dict, done: int, total: int) -> None:
    who = result.get("variant") or f"train {result.get('unit')}"
    timing = ", ".join(f"{s['stage']} {s['status']}" + (f" {s['seconds']:.0f} s / {s.get('cpu_s', 0):.0f} cpu-s"
                                                        if s.get("seconds") else "") for s in result.get("stages", []))
    print(f"[{done}/{total}] {who}: {result['status']}" + (f" ({timing})" if timing else ""), flush=True)
    if result["status"] != "done":
        print(f"    {result.get('failed')} failed; log: {result.get('log')}\n" +
              "\n".join("    | " + line for line in str(result.get("tail", "")).splitlines()[-15:]), flush=True)


def run_sweep(sweep, root: str, *, use_ray: bool = True, address: str = "", devices: int | None = None,
              tpu: str = "", local_devices: int = 0, pack: bool | None = None, only=(),
              cwd: str | None = None) -> dict[str, dict]:
    """Runs the prepare commands, then every unit and trial (`only`: these variants); returns
    {variant: result} with status "done" / "failed" / "blocked".

    cwd: where stage commands run (this checkout); None on a cluster, where tasks run in the checkout
    Ray shipped as their working directory."""
    layout = trial_lib.Layout(str(Path(root).absolute()) if "://" not in root else root)
    extra_env = forwarded_env()
    prepared = trial_lib.run_stages(trial_lib.prepare_stages(sweep, layout), stage_env(extra=extra_env), cwd)
    if prepared["status"] != "done":
        _report({**prepared, "variant": "prepare"}, 0, 0)
        return {name: {**prepared, "variant": name, "status": "blocked"} for name in sweep.variants}
    variants = [v for v in sweep.variants.values() if not only or v.name in only]
    wanted = {sweep.training_run_of(v) for v in variants}
    devices = devices or sweep.devices
    if use_ray:
        connect(address, local_devices)
        import ray

        place = placement(ray.cluster_resources(), devices, tpu)
    else:
        place = placement({"CPU": os.cpu_count() or 1}, devices, tpu)
        if place.hosts > 1:
            raise InputError(f"--tpu {tpu}: a multi-host slice per trial needs Ray (leave out --no-ray)")
    if place.kind == "tpu" and place.hosts > 1 and (sweep.pack if pack is None else pack):
        print("packing is single-process: multi-host trials train unpacked", flush=True)
        pack = False
    units = [u for u in trial_lib.plan_units(sweep, pack) if wanted & set(u.members)]
    unit_of = {name: u for u in units for name in u.members}
    total = len(units) + len(variants)
    print(f"{len(variants)} trial(s), {len(units)} training unit(s); {place.describe()}", flush=True)
    runner = _run_on_ray if use_ray else _run_here
    return runner(sweep, layout, units, unit_of, variants, extra_env, cwd, place, total)


def _run_here(sweep, layout, units, unit_of, variants, extra_env, cwd, place, total) -> dict:
    """Every unit, then every trial, one after another in this process (--no-ray)."""
    unit_results, results = {}, {}
    for unit in units:
        unit_results[unit.name] = unit_task(sweep, layout, unit, extra_env, cwd, place)
        _report(unit_results[unit.name], len(unit_results), total)
    for v in variants:
        run = sweep.training_run_of(v)
        results[v.name] = trial_task(sweep, layout, v, extra_env, cwd, place,
                                     unit_results[unit_of[run].name] if run else None)
        _report(results[v.name], len(unit_results) + len(results), total)
    return results


def _run_on_ray(sweep, layout, units, unit_of, variants, extra_env, cwd, place, total) -> dict:
    """A Ray task per unit and per trial (each trial's task waits for its unit's result); reports each as it ends."""
    import ray

    multi_host = place.kind == "tpu" and place.hosts > 1
    train_options = {"num_cpus": 0} if multi_host else place.task_options()  # the slice's hosts do the work
    unit_fn, trial_fn = ray.remote(unit_task), ray.remote(trial_task)
    unit_refs = {u.name: unit_fn.options(**train_options, name=f"train {u.name}").remote(
        sweep, layout, u, extra_env, cwd, place) for u in units}
    trial_refs = {}
    for v in variants:
        run = sweep.training_run_of(v)
        trial_refs[v.name] = trial_fn.options(**place.task_options(), name=f"trial {v.name}").remote(
            sweep, layout, v, extra_env, cwd, place, unit_refs[unit_of[run].name] if run else None)
    pending = {ref: ("unit", name) for name, ref in unit_refs.items()}
    pending.update({ref: ("variant", name) for name, ref in trial_refs.items()})
    results, done = {}, 0
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        kind, name = pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as err:  # the task's worker died (out of memory, node lost)
            result = {kind: name, "status": "failed", "failed": "ray task", "tail": f"{type(err).__name__}: {err}",
                      "stages": []}
        done += 1
        _report(result, done, total)
        if kind == "variant":
            results[name] = result
    return results


def exit_summary(results: dict[str, dict]) -> int:
    failed = {n: r for n, r in results.items() if r["status"] != "done"}
    for name, result in failed.items():
        print(f"trial {name}: {result['status']} at {result.get('failed')} (log: {result.get('log')})", file=sys.stderr)
    return 1 if failed else 0
