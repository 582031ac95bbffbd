"""A run remembers how it was made: `<workdir>/config.json`.

Training writes the resolved config, the jcompose version and the command line into the run folder
when it starts. On a resume (the folder has checkpoints) the new config is compared with the stored
one: a field that changes the model or the data (`method`, `seed`, `compute_dtype`, `model.*`,
`data.*` but the strictness switches, `train.batch_size`) must be the same, else `ConfigError` lists
every such field with both values; other fields (steps, logging and checkpoint cadence, learning
rate...) may change and each change is recorded in the file's `history`. `compose` reads the stored
config back (`read_config`), so a run composes with the settings it was trained with.

A record older than the method's config (a field added to jcompose since, or removed by hand) is
completed from the method's current config (`configs/<method>.py`, the variant the recorded command
named): each filled field and its default are named in a warning. `method` and `model.base` have no
default that could stand in for the run's: a record without them is a ConfigError naming the file.

    {"config": {...}, "jcompose_version": "0.1.0", "command": [...], "history": [{"command", "changed"}]}
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import ml_collections
from etils import epath

from configs.common import ConfigError
from jcompose import atomic

RECORD = "config.json"
# Fields (dotted prefixes) a resume must not change: they define the trained model or its data stream.
PROTECTED = ("method", "seed", "compute_dtype", "model", "data", "train.batch_size")
# Under a protected prefix, still free to change (the attention implementation changes no weight).
FREE = ("data.strict", "data.max_consecutive_skips", "model.attention")
# Fields no default can replace in a stored record (they say which model the run trained).
REQUIRED = ("method", "model.base")


def _plain(config: Any) -> dict:
    """The config as JSON values (tuples become lists), so a stored and a new config compare equal."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(data, default=str))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _protected(field: str) -> bool:
    def under(prefixes):
        return any(field == p or field.startswith(p + ".") for p in prefixes)

    return under(PROTECTED) and not under(FREE)


def differences(stored: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (stored value, new value)} for every field that differs (missing = None)."""
    a, b = _flatten(stored), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def record(config: Any, workdir: str | epath.PathLike, *, resuming: bool, write: bool = True,
           argv: list[str] | None = None) -> dict[str, tuple[Any, Any]]:
    """Writes (or, `resuming`, checks and updates) `<workdir>/config.json`; returns the changed fields.

    Args:
      config: the resolved run config.
      workdir: the run folder.
      resuming: the folder holds checkpoints of an earlier start: compare with the stored config.
      write: False on processes other than 0 (they check, process 0 writes).
      argv: the command line to record (default sys.argv).

    Raises:
      ConfigError: resuming with a protected field changed (all of them listed, stored -> new).
    """
    from jcompose import __version__

    path = epath.Path(workdir) / RECORD
    new = _plain(config)
    entry = {"command": list(sys.argv if argv is None else argv)}
    previous = None
    if resuming and path.exists():
        try:
            previous = json.loads(path.read_text())
            stored = complete(previous["config"], previous.get("command", []), path)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"{path}: not a jcompose run record ({err}); move it away to resume") from None
        changed = differences(stored, new)
        blocked = {k: v for k, v in changed.items() if _protected(k)}
        if blocked:
            listing = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in blocked.items())
            raise ConfigError(f"{path}: resuming this run with a different model or data would mix two runs: "
                              f"{listing}. Use the stored values (config.json) or a new --workdir.")
        entry["changed"] = {k: list(v) for k, v in changed.items()}
    else:
        changed = {}
    if write:
        history = (previous or {}).get("history", [])
        body = {"config": new, "jcompose_version": __version__, "command": entry["command"],
                "history": history + ([entry] if previous is not None else [])}
        atomic.write_text(path, json.dumps(body, indent=2, sort_keys=True) + "\n")  # a kill never leaves half a record
    return changed


def read_config(workdir: str | epath.PathLike) -> ml_collections.ConfigDict | None:
    """The config a run was trained with (None for a run folder without a record)."""
    path = epath.Path(workdir) / RECORD
    if not path.exists():
        return None
    def tuples(value):  # configs hold tuples (module fields must hash); JSON stored them as lists
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    try:
        body = json.loads(path.read_text())
        stored = complete(body["config"], body.get("command", []), path)
        return ml_collections.ConfigDict(tuples(stored))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path}: not a jcompose run record ({err})") from None


def complete(stored: dict, command: list, path: epath.Path) -> dict:
    """`stored` (a record's "config") with every field the method's current config has and it lacks
    filled with today's default (a warning names them); ConfigError naming `path` for a REQUIRED one.

    The defaults come from `configs/<method>.py` with the variant the recorded `command` named (a
    method without such a file, a test's toy one say, is returned as stored)."""
    flat = _flatten(stored)
    absent = [field for field in REQUIRED if flat.get(field) in (None, "")]
    if absent:
        raise ConfigError(f"{path}: the stored config has no {' / '.join(absent)}: the record cannot say which "
                          "model the run trained; restore the file from the run's TensorBoard text tab or retrain")
    defaults = _current_defaults(str(stored["method"]), command)
    if defaults is None:
        return stored
    missing = {k: v for k, v in _flatten(defaults).items() if k not in flat}
    if not missing:
        return stored
    logging.warning("%s lacks %s (fields added to jcompose since the run was made, or removed by hand); using "
                    "today's defaults", path, ", ".join(f"{k} = {v!r}" for k, v in missing.items()))
    filled = json.loads(json.dumps(stored))
    for dotted, value in missing.items():
        node = filled
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return filled


def _current_defaults(method: str, command: list) -> dict | None:
    """The method's config today as JSON values, in the variant the recorded command line named."""
    import configs
    from configs import common

    file = epath.Path(configs.__file__).parent / f"{method}.py"
    if not file.exists():
        return None
    spec = next((str(a).split("=", 1)[1] for a in command if str(a).startswith("--config=")), "")
    recorded_file, _, variant = spec.partition(":")
    variants = [variant, ""] if variant and epath.Path(recorded_file).name == file.name else [""]
    for arg in variants:
        try:
            return _plain(common.load(f"{file}:{arg}" if arg else str(file)))
        except ConfigError:  # a variant renamed since: the plain config's defaults
            continue
    return None


def summary(config: Any) -> str:
    """The config as Markdown for TensorBoard's text tab."""
    return "```\n" + json.dumps(_plain(config), indent=2, sort_keys=True) + "\n```"
