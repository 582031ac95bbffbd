"""What each folder on the demo's command line offers: a training run (its method from `config.json`) or
AnyDoor's released model converted by `python -m jcompose.convert anydoor-ckpt`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jcompose.cli import InputError

METHODS = ("anyscene", "dreamcom", "anydoor")
TITLES = {"anyscene": "AnyScene", "dreamcom": "DreamCom", "anydoor": "AnyDoor"}


@dataclasses.dataclass(frozen=True)
class Source:
    """One model the demo serves. kind "run": `path` is a workdir or one of its checkpoint step folders
    (compose's --checkpoint); kind "release": a converted AnyDoor release (compose's --weights).
    objects: DreamCom's trained objects (model order), else ()."""

    method: str
    kind: str
    path: str
    objects: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        name = Path(self.path).name
        if Path(self.path).parent.name == "checkpoints":
            name = f"{Path(self.path).parent.parent.name} step {name}"
        return f"{TITLES[self.method]}: {name}"


def _release(folder: Path) -> bool:
    from jcompose.models import ldm_convert

    try:
        info = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("_jcompose") == ldm_convert.RELEASE_MARK


def find(folder: str) -> Source:
    """The Source a folder offers; InputError naming it when it is neither a run nor a converted release."""
    from jcompose import run_record
    from jcompose.inference import resolve_checkpoint

    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{folder}: no such folder (give training runs or converted AnyDoor releases)")
    if _release(path):
        from jcompose.models import ldm_convert

        try:
            ldm_convert.read_release(path)
        except (OSError, ValueError) as err:
            raise InputError(str(err)) from None
        return Source("anydoor", "release", str(path))
    try:
        workdir, _ = resolve_checkpoint(folder)
    except InputError:
        raise InputError(f"{folder}: neither a training run (a workdir with checkpoints/<step> folders, or one step "
                         "folder) nor AnyDoor's release converted with `python -m jcompose.convert anydoor-ckpt`") from None
    config = run_record.read_config(workdir)
    if config is None:
        raise InputError(f"{folder}: {workdir} has no {run_record.RECORD} (the config the run was trained with)")
    if config.method not in METHODS:
        raise InputError(f"{folder}: a {config.method!r} run; the demo serves {', '.join(METHODS)}")
    objects = ()
    if config.method == "dreamcom":
        from input_pipeline import dreamcom_objects

        objects = tuple(o.name for o in dreamcom_objects.parse_objects(config.data))
    return Source(config.method, "run", str(path), objects)
