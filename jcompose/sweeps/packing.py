"""Packed trials: K variants that differ only in packable values train as K models of one program.

    python -m jcompose.sweeps.packing --config=configs/denoise.py:tiny --workdir=ROOT/packs/P \
        --runs-root=ROOT/train --models='{"lr=0.0001": {"optim.lr": 0.0001}, "lr=3e-05": {"optim.lr": 3e-05}}'

The variants' configs may differ only in `spec.PACKABLE` fields (peak learning rate, data seed): the
compiled program is the same, so the engine's K-model machinery (train_state: a leading model axis on
params, optimizer state and batches, the step vmapped; input_pipeline/stacked.py: one stream per model)
trains them together: one compile, one input pipeline, every device busy. Each model gets its own peak
learning rate (a traced optimizer hyperparameter, `make_optimizer(traced_lr=True)`) and its own data
seed. When training ends every model is written out as an ordinary single-model run
(`<runs-root>/<name>/`: its own config.json, checkpoint with the single-run state tree and data-stream
position, metrics.json), so compose, evaluate and collect treat it as the run it equals, and
`python -m jcompose.train` can even continue it alone.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from etils import epath

from jcompose.cli import InputError

PACKED_FROM = "packed_from.json"
# What a run folder holds of its own; anything else in the pack's folder (a tiny base, synthetic data, example
# inputs the method wrote there) is shared by its models and linked into each model's run.
_RUN_OWN = {"checkpoints", "tb", "metrics.json", "config.json", "pack.json", "samples", "export", ".sweep",
            PACKED_FROM}


def packable_difference(configs: list, names: list[str]) -> dict[str, list]:
    """{field: per-model values} of the fields in which the configs differ; InputError when one of them
    is not packable (it would change the compiled program or the models' initialisation)."""
    from jcompose import run_record
    from jcompose.sweeps.spec import PACKABLE

    flat = [run_record._flatten(run_record._plain(c)) for c in configs]
    fields = sorted(set().union(*flat))
    differing = {f: [d.get(f) for d in flat] for f in fields if len({json.dumps(d.get(f)) for d in flat}) > 1}
    other = sorted(set(differing) - set(PACKABLE))
    if other:
        raise InputError(f"models {names} differ in {other}: only {list(PACKABLE)} can differ within one program")
    return differing


class PackedMethod:
    """K copies of one method as a K-model method (the trainer's `num_models` protocol).

    Model k reads its data through member k (built from its own config: its data seed); the loss,
    sampler and models are member 0's, which the others share after `init` (one load of the base).
    """

    def __init__(self, configs: list, names: list[str]):
        from jcompose import methods

        self.members = [methods.build(c) for c in configs]
        if int(getattr(self.members[0], "num_models", 1)) != 1:
            raise InputError(f"{configs[0].method}: a run that already trains several models (config.data.objects) "
                             "cannot be packed with others; set pack=False in the sweep")
        differing = packable_difference(configs, names)
        self.config = configs[0]
        self.num_models = len(configs)
        self.model_names = list(names)
        self.model_learning_rates = differing.get("optim.lr")  # None: one rate for all (no traced hyperparameter)
        self.data_seeds = differing.get("data.seed")

    def init(self, workdir: str):
        params, frozen = self.members[0].init(workdir)
        for member in self.members[1:]:  # share what init loaded (models, tokenizer, schedule), keep own config
            member.__dict__.update({k: v for k, v in self.members[0].__dict__.items() if k != "config"})
        return params, frozen

    def make_source(self, index: int = 0):
        return self.members[index].make_source()

    def make_transform(self, index: int = 0):
        return self.members[index].make_transform()

    def loss(self, params, frozen, batch, rng):
        return self.members[0].loss(params, frozen, batch, rng)

    def sample(self, params, frozen, batch, rng):
        return self.members[0].sample(params, frozen, batch, rng)

    def __getattr__(self, name: str) -> Any:  # optional protocol parts (write_example_inputs, ...)
        if name == "members":
            raise AttributeError(name)
        return getattr(self.members[0], name)


def _path(entries) -> str:
    from jcompose.checkpoint import _key

    return ".".join(_key(k) for k in entries)


def single_model_state(packed: Any, k: int, config) -> Any:
    """Model k of a restored packed state, in the tree a single run of `config` builds (the optimizer's
    injected `peak_lr` dropped: a single run keeps its rate in the schedule)."""
    import jax
    import numpy as np

    from jcompose.train_state import _fresh, make_optimizer

    params = jax.tree_util.tree_map(lambda x: np.asarray(x)[k], packed["params"])
    tx, _ = make_optimizer(config)
    target = jax.eval_shape(lambda p: _fresh(p, tx, config), params)
    # The injected optimizer wraps the inner AdamW state: its paths carry an extra "inner_state" part.
    leaves = {_path(p).replace(".inner_state", ""): np.asarray(v)
              for p, v in jax.tree_util.tree_flatten_with_path(packed)[0] if ".hyperparams." not in _path(p)}
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
        name = _path(path)
        if name not in leaves or leaves[name].shape[1:] != tuple(leaf.shape):
            raise ValueError(f"packed state: no model-{k} value of shape {tuple(leaf.shape)} for {name}")
        out.append(leaves[name][k].astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), out)


class _StreamState:
    """One stream's saved position, handed to grain's checkpoint handler as a single run's iterator saves it."""

    def __init__(self, state: Any):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state, indent=4).encode()


def unpack(workdir: str, runs_root: str, configs: list, names: list[str]) -> list[str]:
    """Writes each model of the pack's newest checkpoint as a single run `<runs_root>/<name>` (config.json,
    checkpoint, metrics.json, the pack's shared folders linked); returns the folders. A model's checkpoint
    already written at that step is kept."""
    from jcompose import run_record
    from jcompose.checkpoint import Checkpointer
    from jcompose.train_state import make_optimizer

    pack = Checkpointer(workdir)
    step, state, data = pack.read_latest()
    pack.close()
    metrics_path = epath.Path(workdir) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    folders = []
    for k, (config, name) in enumerate(zip(configs, names, strict=True)):
        folder = epath.Path(runs_root) / name
        folders.append(str(folder))
        run = Checkpointer(folder, keep=config.train.keep)
        try:
            if step not in run.steps():  # a rerun after a kill finishes what is missing
                run_record.record(config, folder, resuming=False, argv=[
                    "python", "-m", "jcompose.sweeps.packing", f"--workdir={workdir}", f"(model {k}: {name})"])
                run.save(step, single_model_state(state, k, config), _StreamState(data[k]), force=True)
        finally:
            run.close()
        # The pack's logged means are over all models: keep the model-free ones (throughput), and its own loss and rate.
        own = {key: v for key, v in metrics.items() if "/" not in key and key not in ("loss", "lr")}
        own.update(loss=metrics.get(f"loss/{name}"), lr=float(make_optimizer(config)[1](step)))
        (folder / "metrics.json").write_text(json.dumps({**own, "step": step}))
        (folder / PACKED_FROM).write_text(json.dumps({"pack": str(workdir), "model": k, "step": step,
                                                      "names": names}))
        _link_shared(workdir, folder)
    return folders


def _link_shared(pack: str, run: epath.Path) -> None:
    """Links the pack's shared folders (base/, data/, example/) into a model's run (local file systems)."""
    from pathlib import Path

    if "://" in str(pack):
        return
    for entry in Path(pack).iterdir():
        target = Path(run) / entry.name
        if entry.name not in _RUN_OWN and not target.exists() and not target.is_symlink():
            target.symlink_to(entry.absolute(), target_is_directory=entry.is_dir())


def train_pack(config_spec: str, models: dict[str, dict], workdir: str, runs_root: str) -> list[str]:
    """Trains the models as one K-model run in `workdir` (resuming it), then unpacks them (`unpack`)."""
    from configs.common import validate
    from jcompose import train
    from jcompose.sweeps.spec import resolved_config

    names = list(models)
    configs = [resolved_config(config_spec, overrides) for overrides in models.values()]
    for config in configs:
        validate(config)
    method = PackedMethod(configs, names)
    folder = epath.Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pack.json").write_text(json.dumps({"config": config_spec, "models": models}, indent=1))
    result = train.train(configs[0], workdir, method=method)
    print("trained: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()),
          flush=True)
    folders = unpack(workdir, runs_root, configs, names)
    for name, path in zip(names, folders, strict=True):
        print(f"model {name} -> {path}", flush=True)
    return folders


def main(argv: list[str]) -> int:
    import argparse

    from jcompose import cli

    parser = argparse.ArgumentParser(prog="python -m jcompose.sweeps.packing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="configs/<method>.py[:variant]")
    parser.add_argument("--workdir", required=True, help="the pack's run folder")
    parser.add_argument("--runs-root", required=True, help="where each model is written as its own run")
    parser.add_argument("--models", required=True, help='JSON {"<run name>": {"<field>": value, ...}, ...}')
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(cli.pop_debug(argv))
    try:
        models = json.loads(args.models)
    except ValueError as err:
        raise InputError(f"--models: not JSON ({err})") from None
    if not isinstance(models, dict) or len(models) < 2 or not all(isinstance(v, dict) for v in models.values()):
        raise InputError("--models: expected a JSON object of at least two {run name: {field: value}} entries")
    train_pack(args.config, models, args.workdir, args.runs_root)
    return 0


if __name__ == "__main__":
    from jcompose import cli as _cli

    sys.exit(_cli.run(main))
