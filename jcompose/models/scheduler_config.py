"""A base model's noise schedule: `scheduler/scheduler_config.json` read into a SchedulerConfig (the
fields that define the forward process and the sampler's timestep grid; samplers: `jcompose.diffusion`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jcompose.models.diffusers_config import ConfigError
from jcompose.models.files import require_dir


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """The noise schedule of a base model (`scheduler/scheduler_config.json`).

    Only the fields that define the training-time forward process and the sampler's timestep
    grid; samplers themselves live in `jcompose.diffusion`.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False


_SCHEDULER_CHOICES = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "timestep_spacing": ("leading", "trailing", "linspace"),
}


def load_scheduler_config(folder: str | Path) -> SchedulerConfig:
    """Reads `scheduler_config.json`; keys of other scheduler classes (e.g. PNDM's) are ignored."""
    folder = require_dir(folder, "scheduler")
    path = folder / "scheduler_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no scheduler_config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if raw.get("trained_betas") is not None:
        raise ConfigError(f"{path}: trained_betas is set; jcompose supports parametric beta schedules only")
    fields = {f.name: f for f in dataclasses.fields(SchedulerConfig)}
    values = {k: v for k, v in raw.items() if k in fields}
    for key, choices in _SCHEDULER_CHOICES.items():
        if key in values and values[key] not in choices:
            raise ConfigError(f"{path}: {key} = {values[key]!r}; expected one of {choices}")
    return SchedulerConfig(**values)
