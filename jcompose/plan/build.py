"""A run's programs built as the run builds them, from shapes alone.

`build(config, config_path, mesh, workdir)` returns what `jcompose.train` would hold before its first step,
abstractly: the method (built from the config), its params and frozen modules as `jax.ShapeDtypeStruct`s
with the run's shardings (the loaders read config.json files only, under `files.abstract_weights` and
`jax.eval_shape`: nothing is read, allocated or written but small config folders), the train state of the
run's optimizer, and one batch's shapes. Model folders named by the config that are not on this machine
are replaced by config-only folders of the released architecture their names suggest (`architectures`).

The batch's shapes come from the method's own input pipeline: one example is made by its transform from
the generated data of the config's `tiny` variant (every config has one), at the run's sizes (the data
fields ending in `_size`), so they are the shapes the run's transform makes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from jcompose import methods, parallel, train_state
from jcompose.models import files
from jcompose.plan import architectures


@dataclasses.dataclass
class Run:
    """A run's pieces, abstract. `state`, `frozen` and `batch` are trees of `jax.ShapeDtypeStruct`s carrying
    the run's shardings on the target mesh; `params_bytes` etc. are global (all models, unsharded)."""

    config: Any
    method: Any
    models: int
    mesh: Any
    tx: Any
    state: Any
    frozen: Any
    batch: dict
    example: dict  # one example as the transform makes it (host arrays), to re-shape the batch
    notes: list[str]
    eval_config: Any = None  # the method's benchmark evaluation config (configs/eval/<method>.py), if any


def resolve_model_folders(config, workdir: Path) -> list[str]:
    """Points the config's missing model folders at config-only folders of their architecture (in
    `workdir`); returns a note per replaced folder. `model.base` may also be "tiny:<base>" (written by the
    method itself) or an existing folder (its config.json files are read, not its weights)."""
    notes = []
    model = config.model
    base = str(model.base)
    if not base.startswith("tiny:") and not Path(base).is_dir():
        arch = architectures.architecture_of_name(base)
        model.base = str(architectures.write_base(workdir / "arch" / arch, arch))
        notes.append(f"model.base {base}: not on this machine; the released {arch} architecture (configs only)")
    for field, value in model.items():
        if field == "base" or not isinstance(value, str) or "/" not in value or Path(value).exists():
            continue
        name = value.lower()
        if "dinov2" in name:
            size = architectures.dinov2_size(name)
            model[field] = str(architectures.write_dinov2(workdir / "arch" / f"dinov2-{size}", size))
            notes.append(f"model.{field} {value}: not on this machine; DINOv2 ViT-{size} (configs only)")
        elif "control" in name and not base.startswith("tiny:"):
            model[field] = str(architectures.write_controlnet(workdir / "arch" / "controlnet", Path(model.base)))
            notes.append(f"model.{field} {value}: not on this machine; a ControlNet of the base UNet's encoder "
                         "with a 16/32/96/256 RGB hint embedding (configs only)")
    return notes


def _scrub_tracers(method) -> None:
    """The method keeps what its init loaded (e.g. `pipe.unet.params`); traced under `jax.eval_shape`
    those are dead tracers: replace them by their shapes (the same as what the trace returned)."""
    def scrub(value, depth=0):
        if isinstance(value, jax.core.Tracer):
            return jax.ShapeDtypeStruct(value.shape, value.dtype)
        if depth > 3:
            return value
        if isinstance(value, dict):
            return {k: scrub(v, depth + 1) for k, v in value.items()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {f.name: scrub(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)
                       if f.init}
            return dataclasses.replace(value, **changes)
        return value

    for name, value in list(vars(method).items()):
        if name != "config":
            setattr(method, name, scrub(value))


def abstract_init(method, workdir: Path) -> tuple[Any, Any]:
    """The method's (params, frozen) as shapes, from its model folders' configs alone."""
    with files.abstract_weights():
        params, frozen = jax.eval_shape(lambda: method.init(str(workdir)))
    _scrub_tracers(method)
    return params, frozen


def example(config, config_path: str, workdir: Path) -> dict[str, np.ndarray]:
    """One training example as the method's transform makes it, from the tiny variant's generated data at
    the run's sizes (module doc)."""
    from configs import common
    from input_pipeline.pipeline import make_iterator

    tiny = common.load(f"{config_path}:tiny")
    data_config = config.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.data = tiny.data
        for key, value in config.data.items():
            if key.endswith("_size"):
                data_config.data[key] = value
        data_config.data.worker_count = 0
    method = methods.build(data_config)
    abstract_init(method, workdir)
    source = method.make_source(0) if train_state.num_models(method) > 1 else method.make_source()
    transform = method.make_transform(0) if train_state.num_models(method) > 1 else method.make_transform()
    return next(make_iterator(source, transform, per_process_batch=1, seed=0))


def batch_shapes(example_batch: dict, batch_size: int, models: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """A global batch of `batch_size` (per model) with the run's shardings: split over every device, or for
    K models the model axis split like the state (else the batch axis), as `parallel.model_batch`."""
    out = {}
    for key, value in example_batch.items():
        value = np.asarray(value)
        shape = (batch_size,) + value.shape[1:]
        if models == 1:
            out[key] = jax.ShapeDtypeStruct(shape, value.dtype, sharding=parallel.batch_sharding(mesh))
            continue
        spec = parallel.model_axis_spec(mesh, models)
        spec = spec if spec != jax.sharding.PartitionSpec() else jax.sharding.PartitionSpec(None, parallel.BATCH_AXES)
        out[key] = jax.ShapeDtypeStruct((models,) + shape, value.dtype, sharding=NamedSharding(mesh, spec))
    return out


def with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def build(config, config_path: str, mesh, workdir: Path) -> Run:
    """The run of `config` on `mesh`, abstract (module doc); `workdir` receives config-only model folders,
    the tiny variant's generated data and, for "tiny:" bases, the tiny model."""
    workdir = Path(workdir)
    notes = resolve_model_folders(config, workdir)
    method = methods.build(config)
    models = train_state.num_models(method)
    params, frozen = abstract_init(method, workdir)
    tx, _ = train_state.make_optimizer(config)
    if models == 1:
        state = jax.eval_shape(lambda p: train_state._fresh(p, tx, config), params)
        shardings = parallel.fsdp_shardings(state, mesh, config.mesh.fsdp_min_size)
    else:
        stacked = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct((models,) + s.shape, s.dtype), params)
        state = jax.eval_shape(jax.vmap(lambda p: train_state._fresh(p, tx, config)), stacked)
        shardings = parallel.model_shardings(state, mesh)
    state = with_shardings(state, shardings)
    frozen = with_shardings(frozen, parallel.fsdp_shardings(frozen, mesh, config.mesh.fsdp_min_size))
    one = example(config, config_path, workdir)
    batch = batch_shapes(one, config.train.batch_size, models, mesh)
    return Run(config, method, models, mesh, tx, state, frozen, batch, one, notes)


def with_train(run: Run, **train) -> Run:
    """The run with `config.train` fields changed (e.g. batch_size, remat), the batch re-shaped to match;
    the method, state and mesh are shared (the step is rebuilt from the config when compiled)."""
    config = run.config.copy_and_resolve_references()
    with config.unlocked():
        config.train.update(train)
    batch = batch_shapes(run.example, config.train.batch_size, run.models, run.mesh)
    return dataclasses.replace(run, config=config, batch=batch)
