"""The run's programs, lowered and compiled ahead of time for a target mesh.

Each is built by the code the run uses: the train step by `train_state.make_step` (remat, gradient
accumulation, EMA and the K-model program included) jitted as `jcompose.train` jits it (state donated,
its shardings kept), the sample-grid sampler by `train_state.make_sampler` on `train.sample_count`
conditions, the benchmark-generation step by `generation.step_function` of the method's job sampler, as
`compose <method> --benchmark` runs it. Tracing happens under `attention_kernels.compiling_for(<target
platform>)`, so each attention layer gets the implementation it would get on the target, and the choices
are recorded per layer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import resource
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding

from configs.common import xla_options
from jcompose import attention_kernels, generation, methods, parallel, train_state
from jcompose.plan import evaluation, hlo
from jcompose.plan import flops as flop_count

PROGRAMS = ("train", "sample", "generate", "evaluate")


@dataclasses.dataclass
class Compiled:
    """One compiled program: what the compiler says of it (`facts`, see `facts_of`) and what it took to make it
    (`facts` None when the compiler refused it: `error` says why, e.g. out of HBM)."""

    name: str
    facts: dict | None
    flops: flop_count.Count   # model FLOPs of its jaxpr (global)
    attention: list[attention_kernels.Choice]
    lower_s: float
    compile_s: float
    compile_cpu_s: float  # this process's CPU seconds while compiling (wall time depends on the machine's load)
    host_peak_gib: float  # the process's peak resident memory after compiling (cumulative)
    images: int           # images (or samples) one call processes, over all chips
    arguments: dict       # argument name -> abstract tree (for the memory breakdown)
    error: str = ""
    cached: bool = False  # the facts came from the plan cache (the same program compiled before)


def cpu_seconds() -> float:
    """This process's user + system CPU time so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def host_peak_gib() -> float:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def facts_of(executable) -> dict:
    """What a compiled executable says of itself, as plain data: memory analysis, XLA's cost analysis and
    the reading of its optimized HLO (`hlo.summarize`)."""
    memory = executable.memory_analysis()
    cost = executable.cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    return {"memory": {name: float(getattr(memory, f"{name}_size_in_bytes"))
                       for name in ("argument", "output", "alias", "temp", "generated_code")},
            "cost": {k: float(v) for k, v in cost.items() if isinstance(v, (int, float))},
            "hlo": hlo.summarize(executable.as_text()).to_json()}


def _cache_path(cache_dir: str | None, lowered, platform: str, devices: list, options: str = "") -> Path | None:
    """Where the facts of this exact program for these devices are kept (None: no plan cache). The key is
    the lowered program's text, the target's devices, the compiler's versions and the XLA options."""
    if not cache_dir:
        return None
    versions = f"{jax.__version__} {platform} {devices[0].device_kind} {len(devices)} " + " ".join(
        f"{m}={_version(m)}" for m in ("jaxlib", "libtpu", "jax-cuda12-pjrt"))
    digest = hashlib.sha256((versions + " " + options + "\n" + lowered.as_text()).encode()).hexdigest()
    return Path(cache_dir) / f"{digest}.json"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _compile(name, jitted, args: tuple, arguments: dict, platform: str, images: int, mesh,
             cache_dir: str | None = None, options: str = "") -> Compiled:
    start = time.perf_counter()
    with attention_kernels.compiling_for(platform), attention_kernels.recording() as calls, jax.set_mesh(mesh):
        traced = jitted.trace(*args)
        lowered = traced.lower()
    count = flop_count.count(traced.jaxpr)
    lower_s = time.perf_counter() - start
    cached = _cache_path(cache_dir, lowered, platform, list(mesh.devices.flat), options)
    start, cpu = time.perf_counter(), cpu_seconds()
    facts, error = None, ""
    hit = cached is not None and cached.is_file()
    if hit:
        facts = json.loads(cached.read_text())
    else:
        # JAX's persistent cache cannot load executables compiled without their devices (jax 0.10.2: "PjRtCompiler
        # must be constructed with a Client"): keep them out of it; the plan cache above keeps their facts.
        previous = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", platform == "cpu" and previous)
        try:
            facts = facts_of(lowered.compile())
        except Exception as err:  # noqa: BLE001 - XLA reports "out of memory" and the like as runtime errors
            if "RESOURCE_EXHAUSTED" not in str(err) and "memory" not in str(err).lower():
                raise
            error = str(err).strip().splitlines()[0][:500]
        finally:
            jax.config.update("jax_enable_compilation_cache", previous)
        if cached is not None and facts is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(facts))
    return Compiled(name, facts, count, list(calls), lower_s, time.perf_counter() - start, cpu_seconds() - cpu,
                    host_peak_gib(), images, arguments, error, hit)


def train_step(run, platform: str, cache_dir: str | None = None) -> Compiled:
    """The run's jitted train step (as `jcompose.train` builds and jits it) compiled for the mesh."""
    state_shardings = jax.tree_util.tree_map(lambda s: s.sharding, run.state)
    metric_sharding = parallel.replicated(run.mesh) if run.models == 1 else NamedSharding(
        run.mesh, parallel.model_axis_spec(run.mesh, run.models))
    options = run.config.train.get("xla_options", "")
    step = jax.jit(train_state.make_step(run.method, run.tx, run.config, run.mesh), donate_argnums=(0,),
                   out_shardings=(state_shardings, metric_sharding), compiler_options=xla_options(options) or None)
    images = run.config.train.batch_size * run.models
    return _compile("train", step, (run.state, run.frozen, run.batch),
                    {"state": run.state, "frozen": run.frozen, "batch": run.batch}, platform, images, run.mesh,
                    cache_dir, options)


def sampler(run, platform: str, cache_dir: str | None = None) -> Compiled:
    """The run's sample-grid sampler (`train_state.make_sampler`) on `train.sample_count` conditions,
    replicated over the mesh as the run places them."""
    count = run.config.train.sample_count
    replicated = parallel.replicated(run.mesh)

    def conditions(spec):
        lead = spec.shape[:1] if run.models > 1 else ()
        shape = lead + (count,) + spec.shape[(2 if run.models > 1 else 1):]
        sharding = replicated if run.models == 1 else spec.sharding
        return jax.ShapeDtypeStruct(shape, spec.dtype, sharding=sharding)

    batch = {k: conditions(v) for k, v in run.batch.items()}
    params = run.state["params"]
    key = jax.ShapeDtypeStruct((2,), jax.numpy.uint32, sharding=replicated)
    sample = jax.jit(train_state.make_sampler(run.method, run.mesh))
    return _compile("sample", sample, (params, run.frozen, batch, key),
                    {"params": params, "frozen": run.frozen, "batch": batch}, platform, count * run.models, run.mesh,
                    cache_dir)


def generate(run, platform: str, cache_dir: str | None = None) -> Compiled | None:
    """The benchmark-generation step (`generation.step_function` of the method's job sampler,
    `methods.benchmark_sampler`, at `compose`'s defaults) on `generation.PER_DEVICE_BATCH` items per chip,
    on the job's mesh, its weights replicated on every chip as the job places them (for a K-model run one
    model's: the job generates each object with its own). An item's inputs have the shapes of the training
    example's fields of the same names. None: the method has no benchmark job."""
    found = methods.benchmark_sampler(run.config, run.method)
    if found is None:
        return None
    sample, inputs = found
    mesh = generation.mesh_of(list(run.mesh.devices.flat))
    count = generation.PER_DEVICE_BATCH * mesh.devices.size
    rows, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    batch = {name: jax.ShapeDtypeStruct((count,) + np.shape(run.example[name])[1:], np.asarray(run.example[name]).dtype,
                                        sharding=rows) for name in inputs}
    def on_every_chip(spec, drop_axes=0):  # the spec without its first `drop_axes` axes, replicated
        return jax.ShapeDtypeStruct(spec.shape[drop_axes:], spec.dtype, sharding=replicated)

    model_axis = 1 if run.models > 1 else 0  # a K-model run's state has a leading model axis
    params = jax.tree_util.tree_map(lambda s: on_every_chip(s, model_axis), run.state["params"])
    frozen = jax.tree_util.tree_map(on_every_chip, run.frozen)
    index = jax.ShapeDtypeStruct((count,), np.int32, sharding=rows)
    step = jax.jit(generation.step_function(sample, lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i), mesh),
                   out_shardings=rows)
    return _compile("generate", step, ((params, frozen), batch, index),
                    {"params": params, "frozen": frozen, "batch": batch}, platform, count, mesh, cache_dir)


def evaluate(run, platform: str, cache_dir: str | None = None) -> list[Compiled] | None:
    """The evaluation's feature extractors (`evaluation.networks` of the run's eval config, `run.eval_config`)
    on `batch_size` images (rounded up to the chips), the batch split over the chips and the weights on
    every chip, as `jcompose.evaluate` runs them (`sharded_map`). None: no eval config for the method."""
    if run.eval_config is None:
        return None
    mesh = generation.mesh_of(list(run.mesh.devices.flat))
    chips = mesh.devices.size
    count = -(-run.eval_config.batch_size // chips) * chips
    rows, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    out = []
    for net in evaluation.networks(run.eval_config):
        params = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                                        net.params)
        batch = [jax.ShapeDtypeStruct((count, *item.shape), item.dtype, sharding=rows) for item in net.inputs]
        step = jax.jit(net.apply, out_shardings=rows)  # as `sharded_map.map_items` jits its step
        out.append(_compile(f"evaluate:{net.name}", step, (params, *batch),
                            {"params": params, "batch": batch}, platform, count, mesh, cache_dir))
    return out


BUILDERS = {"train": train_step, "sample": sampler, "generate": generate, "evaluate": evaluate}
