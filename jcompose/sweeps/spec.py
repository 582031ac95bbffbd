"""Sweep files: what `configs/sweeps/<name>.py` returns, expanded into variants, training runs and packs.

A sweep file defines `get_sweep(arg) -> dict` with

    config    "configs/<method>.py[:variant]": the training config every variant starts from
    runs      [override dict or Variant, ...]: the variants (`grid` / `zip_runs` build dicts)
    generate  (optional) the argv after `python -m jcompose.compose`, e.g. ["dreamcom", "--checkpoint",
              "{run}", "--benchmark", "murecom", "{config.data.murecom_root}", "--out", "{generated}"]
    evaluate  (optional) {"config": "configs/eval/<m>.py", "<field>": value, ...} for `python -m
              jcompose.evaluate`; its values may hold placeholders too
    prepare   (optional) [[module, arg, ...], ...]: commands run once before any trial (a benchmark
              builder), e.g. ["input_pipeline.anyscene_benchmark", "--out", "{root}/benchmark"]
    set       (optional) {key: value} for every variant (not a table column): a tiny run's step count
    pack      (optional, default False) train variants that differ only in packable fields as one
              program of K models (`jcompose/sweeps/packing.py`)
    devices   (optional, default 1) accelerators per trial
    paper     (optional) {"source": "DreamCom Table 4", "note": ...}: the caption of the published values

An override key says which stage it changes: `compose.<flag>` is a flag of the generate command
(`compose.self-attention: "none"` -> `--self-attention none`; True -> the bare flag, False -> left out),
`evaluate.<field>` an evaluation config field; both are *inference-only*: variants that differ only in
them share one training run. Any other key is a training config field (`optim.lr`).
Placeholders: {run} (the variant's training run folder), {generated}, {eval}, {trial}, {root}, and
{config.<field>} (the variant's resolved training config).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jcompose.cli import InputError

COMPOSE, EVALUATE = "compose.", "evaluate."
# Training fields whose values do not change the compiled program and that the engine can give each
# model of one program its own value of (packing.py): the peak learning rate (a traced optimizer
# hyperparameter) and the data seed (each model's own input stream).
PACKABLE = ("optim.lr", "data.seed")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of an ablation table.

    Attributes:
      name: file-safe name (default: from the overrides, `run_name`).
      overrides: {key: value}; keys as the module doc says (training field, compose.<flag>, evaluate.<field>).
      label: the row's name in the table (default: the name), e.g. the paper's "-MCAttn".
      paper: the published value of each metric for this row ({"DINO": 0.566}); keys are `collect`'s
        metric names.
      train: False for a row that trains nothing (a baseline of pretrained weights): {run} is unavailable.
      generate: this row's own generate argv (a baseline's compose subcommand); default the sweep's.
    """

    name: str = ""
    overrides: dict = dataclasses.field(default_factory=dict)
    label: str = ""
    paper: dict = dataclasses.field(default_factory=dict)
    train: bool = True
    generate: tuple = ()



def training_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if not k.startswith((COMPOSE, EVALUATE))}


def compose_flags(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k[len(COMPOSE):]: v for k, v in overrides.items() if k.startswith(COMPOSE)}


def evaluate_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k[len(EVALUATE):]: v for k, v in overrides.items() if k.startswith(EVALUATE)}


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


def format_value(value: Any) -> str:
    """A value as config_flags parses it on the command line."""
    return value if isinstance(value, str) else repr(value)


def run_name(overrides: dict[str, Any]) -> str:
    """'lr=0.0001,seed=1' from {"optim.lr": 1e-4, "seed": 1}: the last part of each key, file-safe."""
    parts = [f"{key.split('.')[-1]}={format_value(value)}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9=,._+-]", "_", ",".join(parts)) or "default"


def train_flags(config: str, overrides: dict[str, Any]) -> list[str]:
    return [f"--config={config}", *(f"--config.{key}={format_value(value)}" for key, value in overrides.items())]


def training_key(overrides: dict[str, Any]) -> str:
    """A file-safe name of one training config: readable when short, hashed when long."""
    name = run_name(overrides)
    if len(name) <= 80:
        return name
    return name[:60] + "-" + hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclasses.dataclass
class Sweep:
    """A loaded, validated sweep file."""

    spec: str
    config: str
    variants: dict[str, Variant]
    generate: tuple = ()
    evaluate: dict = dataclasses.field(default_factory=dict)
    prepare: tuple = ()
    pack: bool = False
    devices: int = 1
    paper: dict = dataclasses.field(default_factory=dict)
    fixed: dict = dataclasses.field(default_factory=dict)

    def overrides(self, variant: Variant) -> dict[str, Any]:
        """All of a variant's keys: the sweep's fixed ones, then its own."""
        return {**self.fixed, **variant.overrides}

    @property
    def name(self) -> str:
        return Path(self.spec.partition(":")[0]).stem

    def training_runs(self) -> dict[str, dict[str, Any]]:
        """Distinct training configs: run name (from the swept training keys) -> all training overrides;
        variants differing only in inference-only keys share one."""
        runs: dict[str, dict] = {}
        for variant in self.variants.values():
            if variant.train:
                runs.setdefault(self.training_run_of(variant), training_overrides(self.overrides(variant)))
        return runs

    def training_run_of(self, variant: Variant) -> str | None:
        return training_key(training_overrides(variant.overrides)) if variant.train else None


def _variant(entry: Any, path: str) -> Variant:
    if isinstance(entry, Variant):
        overrides = dict(entry.overrides)
        return dataclasses.replace(entry, overrides=overrides, name=entry.name or run_name(overrides),
                                   generate=tuple(entry.generate))
    if isinstance(entry, dict):
        return Variant(name=run_name(entry), overrides=dict(entry))
    raise InputError(f"{path}: each run is a dict of overrides or a Variant, got {entry!r:.100}")


def load_sweep(spec: str) -> Sweep:
    """Loads `path.py[:arg]` and validates what its get_sweep returns: InputError naming the file for a
    missing file or get_sweep, a bad return value, duplicate or badly named runs, and a config, variant or
    training override field (with a "did you mean") the train command would refuse, before anything runs."""
    from configs import common

    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise InputError(f"--sweep {path}: no such file (expected configs/sweeps/<name>.py[:arg])")
    try:
        module = common.load_module(path, "sweep")
    except common.ConfigError as err:
        raise InputError(str(err)) from None
    if not hasattr(module, "get_sweep"):
        raise InputError(f"--sweep {path}: defines no get_sweep(arg)")
    try:
        raw = module.get_sweep(arg)
    except Exception as err:
        raise InputError(f"--sweep {spec}: get_sweep({arg!r}) raised {type(err).__name__}: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), str) or not isinstance(
            raw.get("runs"), list) or not raw["runs"]:
        raise InputError(f"{path}: get_sweep must return dict(config='configs/<method>.py[:variant]', "
                         f"runs=[{{'dotted.key': value, ...}}, ...]) with at least one run, got {raw!r:.200}")
    unknown = sorted(set(raw) - {"config", "runs", "generate", "evaluate", "prepare", "pack", "devices", "paper",
                                 "set"})
    if unknown:
        raise InputError(f"{path}: get_sweep returned unknown keys {unknown}")
    variants = [_variant(entry, path) for entry in raw["runs"]]
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"{path}: runs with the same overrides: {duplicates}")
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9=,._+-]+", n)]
    if bad:
        raise InputError(f"{path}: run names must be file-safe ([A-Za-z0-9=,._+-]), got {bad}")
    evaluate = dict(raw.get("evaluate") or {})
    if evaluate and not isinstance(evaluate.get("config"), str):
        raise InputError(f"{path}: evaluate must be {{'config': 'configs/eval/<method>.py', ...}}, got {evaluate!r:.200}")
    devices = raw.get("devices", 1)
    if not isinstance(devices, int) or devices < 1:
        raise InputError(f"{path}: devices = {devices!r}: expected a positive integer (accelerators per trial)")
    sweep = Sweep(spec=spec, config=raw["config"], variants=dict(zip(names, variants, strict=True)),
                  generate=tuple(raw.get("generate") or ()), evaluate=evaluate,
                  prepare=tuple(tuple(c) for c in raw.get("prepare") or ()), pack=bool(raw.get("pack", False)),
                  devices=devices, paper=dict(raw.get("paper") or {}), fixed=dict(raw.get("set") or {}))
    check_fields(sweep, path)
    return sweep


def check_fields(sweep: Sweep, path: str) -> None:
    """Every training override names a config field; evaluate overrides name eval-config fields; a row
    without a generate command has no compose flags; {run} only where there is a training run."""
    from configs import common

    config_path = sweep.config.partition(":")[0]
    if not Path(config_path).is_file():
        raise InputError(f"{path}: config {sweep.config!r}: no such file {config_path}")
    try:
        config = common.load(sweep.config)
        for name, variant in sweep.variants.items():
            for key in training_overrides(sweep.overrides(variant)):
                common.check_override(config, key, flag=f"run {name}: --config")
        if sweep.evaluate:
            eval_config = common.load(sweep.evaluate["config"], flag="evaluate config")
            for name, variant in sweep.variants.items():
                keys = [k for k in sweep.evaluate if k != "config"] + list(evaluate_overrides(sweep.overrides(variant)))
                for key in keys:
                    common.check_override(eval_config, key, flag=f"run {name}: evaluate")
    except common.ConfigError as err:
        raise InputError(f"{path}: {err}") from None
    for name, variant in sweep.variants.items():
        generate = variant.generate or sweep.generate
        overrides = sweep.overrides(variant)
        if compose_flags(overrides) and not generate:
            raise InputError(f"{path}: run {name} sets compose flags {sorted(compose_flags(overrides))} but the sweep "
                             "has no generate command")
        if not variant.train and "{run}" in " ".join(generate):
            raise InputError(f"{path}: run {name} trains nothing (train=False) but its generate command uses {{run}}")
        if not sweep.evaluate and evaluate_overrides(overrides):
            raise InputError(f"{path}: run {name} sets evaluate fields but the sweep has no evaluate config")


def resolved_config(config_spec: str, overrides: dict[str, Any]):
    """The training config `python -m jcompose.train --config=<config_spec> --config.<key>=<value> ...` builds."""
    from configs import common

    config = common.load(config_spec)
    with config.unlocked():
        for key, value in overrides.items():
            *parents, last = key.split(".")
            node = config
            for part in parents:
                node = node[part]
            node[last] = tuple(value) if isinstance(value, list) else value
    return config


def fill(text: str, values: dict[str, str], config=None, where: str = "") -> str:
    """`text` with its {placeholders} replaced: from `values`, or {config.<field>} from `config`.

    Raises InputError naming `where` for an unknown placeholder."""
    def one(match):
        key = match.group(1)
        if key in values:
            return str(values[key])
        if key.startswith("config.") and config is not None:
            node = config
            try:
                for part in key[len("config."):].split("."):
                    node = node[part]
            except (KeyError, AttributeError):
                raise InputError(f"{where}: placeholder {{{key}}}: the training config has no such field") from None
            return str(node)
        raise InputError(f"{where}: unknown placeholder {{{key}}} (known: {', '.join(sorted(values))}, config.<field>)")

    return _PLACEHOLDER.sub(one, text)
