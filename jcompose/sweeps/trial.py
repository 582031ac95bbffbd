"""A sweep's work as training units and trials, each a list of stages (`stages.Stage`).

A *training unit* trains one distinct training config (`train/<run>`), or, packed, several that differ
only in packable values (`packs/<pack>`, then one `train/<run>` per model). A *trial* is one variant:
its unit's run -> generate the benchmark -> evaluate with the method's protocol -> scores.json.
Variants that differ only in inference-only keys share their unit, so they never retrain.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from etils import epath

from jcompose.sweeps import spec as spec_lib
from jcompose.sweeps.stages import Stage, log_tail, run_stage


@dataclasses.dataclass(frozen=True)
class Unit:
    """One training program: `members` {run name: training overrides}; packed when it trains several."""

    name: str
    members: dict

    @property
    def packed(self) -> bool:
        return len(self.members) > 1


def plan_units(sweep: spec_lib.Sweep, pack: bool | None = None) -> list[Unit]:
    """The sweep's training runs grouped into units: with packing on (`pack`, default the sweep file's),
    runs whose overrides differ only in `spec.PACKABLE` fields (same keys) form one packed unit."""
    runs = sweep.training_runs()
    if not (sweep.pack if pack is None else pack):
        return [Unit(name, {name: overrides}) for name, overrides in runs.items()]
    groups: dict[str, dict] = {}
    for name, overrides in runs.items():
        fixed = {k: v for k, v in overrides.items() if k not in spec_lib.PACKABLE}
        key = json.dumps([sorted(overrides), fixed], sort_keys=True, default=str)
        groups.setdefault(key, {})[name] = overrides
    units = []
    for members in groups.values():
        if len(members) == 1:
            (name, overrides), = members.items()
            units.append(Unit(name, {name: overrides}))
        else:
            swept = {k for v in sweep.variants.values() for k in v.overrides}  # named by swept keys only
            shared = {k: v for k, v in next(iter(members.values())).items() if k in swept and k not in spec_lib.PACKABLE}
            units.append(Unit("pack-" + spec_lib.training_key(shared), members))
    return units


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a sweep's folders are (module doc of stages.py)."""

    root: str

    def _join(self, *parts: str) -> str:
        return str(epath.Path(self.root).joinpath(*parts))  # keeps gs:// roots whole (tpu commands)

    def run(self, name: str) -> str:
        return self._join("train", name)

    def pack(self, name: str) -> str:
        return self._join("packs", name)

    def trial(self, variant: str) -> str:
        return self._join("trials", variant)

    def values(self, sweep: spec_lib.Sweep, variant: spec_lib.Variant) -> dict[str, str]:
        """Placeholder values of a variant's commands."""
        trial = self.trial(variant.name)
        values = {"root": self.root, "trial": trial, "generated": str(Path(trial) / "generated"),
                  "eval": str(Path(trial) / "eval")}
        run = sweep.training_run_of(variant)
        if run is not None:
            values["run"] = self.run(run)
        return values


def train_stage(sweep: spec_lib.Sweep, layout: Layout, unit: Unit, multihost: bool = False) -> Stage:
    """`python -m jcompose.train ...` of a single unit, or the packed trainer of a packed one."""
    if unit.packed:
        argv = ["-m", "jcompose.sweeps.packing", f"--config={sweep.config}", f"--workdir={layout.pack(unit.name)}",
                f"--runs-root={Path(layout.root) / 'train'}", f"--models={json.dumps(unit.members, default=str)}"]
        return Stage("train", tuple(argv), layout.pack(unit.name), clear_on_change=False)
    (name, overrides), = unit.members.items()
    argv = ["-m", "jcompose.train", *spec_lib.train_flags(sweep.config, overrides), f"--workdir={layout.run(name)}"]
    return Stage("train", tuple(argv + (["--multihost"] if multihost else [])), layout.run(name),
                 clear_on_change=False)


def _flag_args(flags: dict) -> list[str]:
    args = []
    for flag, value in flags.items():
        if value is True:
            args.append(f"--{flag}")
        elif value is not False and value is not None:
            args += [f"--{flag}", spec_lib.format_value(value)]
    return args


def generate_stage(sweep: spec_lib.Sweep, layout: Layout, variant: spec_lib.Variant, config) -> Stage | None:
    """`python -m jcompose.compose <method> ... --out {generated}` with the variant's compose flags."""
    template = variant.generate or sweep.generate
    if not template:
        return None
    values = layout.values(sweep, variant)
    where = f"{sweep.spec}: run {variant.name}: generate"
    flags = spec_lib.compose_flags(sweep.overrides(variant))
    argv = [spec_lib.fill(str(a), values, config, where) for a in template] + _flag_args(flags)
    return Stage("generate", ("-m", "jcompose.compose", *argv), values["generated"])


def evaluate_stage(sweep: spec_lib.Sweep, layout: Layout, variant: spec_lib.Variant, config) -> Stage | None:
    """`python -m jcompose.evaluate --config=<eval config> --config.<field>=... --config.out={eval}`."""
    if not sweep.evaluate or not (variant.generate or sweep.generate):
        return None
    values = layout.values(sweep, variant)
    where = f"{sweep.spec}: run {variant.name}: evaluate"
    fields = {**{k: v for k, v in sweep.evaluate.items() if k != "config"},
              **spec_lib.evaluate_overrides(sweep.overrides(variant))}
    args = [f"--config.{k}={spec_lib.fill(spec_lib.format_value(v), values, config, where)}" for k, v in fields.items()]
    return Stage("evaluate", ("-m", "jcompose.evaluate", f"--config={sweep.evaluate['config']}", *args,
                              f"--config.out={values['eval']}"), values["eval"])


def prepare_stages(sweep: spec_lib.Sweep, layout: Layout) -> list[Stage]:
    """The sweep's one-off commands (benchmark builders), `python -m <module> ...`, in order."""
    stages = []
    for i, command in enumerate(sweep.prepare):
        argv = [spec_lib.fill(str(a), {"root": layout.root}, None, f"{sweep.spec}: prepare {i}") for a in command]
        stages.append(Stage(f"prepare-{i}", ("-m", *argv), str(Path(layout.root) / "prepare")))
    return stages


def trial_config(sweep: spec_lib.Sweep, variant: spec_lib.Variant):
    return spec_lib.resolved_config(sweep.config, spec_lib.training_overrides(sweep.overrides(variant)))


# ----------------------------------------------------------------------------------------- running


def run_stages(stages: list[Stage], env: dict, cwd: str | None) -> dict:
    """Runs stages in order until one fails: {"status": "done"|"failed", "stages": [...], "failed": name,
    "log": its log, "tail": its last lines}."""
    results = []
    for stage in stages:
        result = run_stage(stage, env, cwd)
        results.append(result)
        if result["status"] == "failed":
            return {"status": "failed", "stages": results, "failed": stage.name, "log": result["log"],
                    "command": stage.command, "tail": log_tail(result["log"])}
    return {"status": "done", "stages": results}


def run_trial(sweep: spec_lib.Sweep, layout: Layout, variant: spec_lib.Variant, env: dict, cwd: str | None,
              unit_result: dict | None) -> dict:
    """Generate + evaluate of one variant once its training unit is done (`unit_result`, None when it trains
    nothing); a failed unit blocks the trial, reported with the unit's log."""
    if unit_result is not None and unit_result["status"] != "done":
        return {"variant": variant.name, "status": "blocked", "failed": "train", "log": unit_result.get("log"),
                "tail": unit_result.get("tail", ""), "stages": []}
    config = trial_config(sweep, variant)
    stages = [s for s in (generate_stage(sweep, layout, variant, config),
                          evaluate_stage(sweep, layout, variant, config)) if s is not None]
    return {"variant": variant.name, **run_stages(stages, env, cwd)}


def describe(sweep: spec_lib.Sweep, layout: Layout, pack: bool | None = None) -> list[str]:
    """Every unit and trial with the commands they run (`sweep list`)."""
    lines = []
    for unit in plan_units(sweep, pack):
        runs = ", ".join(unit.members)
        lines.append(f"train {unit.name}" + (f" (packed: {runs})" if unit.packed else ""))
        lines.append("    " + train_stage(sweep, layout, unit).command)
    units = {name: unit for unit in plan_units(sweep, pack) for name in unit.members}
    for variant in sweep.variants.values():
        run = sweep.training_run_of(variant)
        head = f"trial {variant.name}" + (f" [{variant.label}]" if variant.label else "")
        head += f": trains in {units[run].name}" if run else ": no training"
        lines.append(head)
        config = trial_config(sweep, variant)
        for stage in (generate_stage(sweep, layout, variant, config), evaluate_stage(sweep, layout, variant, config)):
            if stage is not None:
                lines.append("    " + stage.command)
    return lines
