"""The Method protocol: all the trainer, sampler, compose and evaluate ever call."""

from __future__ import annotations

from typing import Any, Protocol

import jax


class Method(Protocol):
    """A training/sampling recipe on the shared engine.

    Params are split in two pytrees: `params` (trained: gradients and optimizer state) and
    `frozen` (loaded modules used as they are: VAE, text encoder, base UNet...).
    """

    def init(self, workdir: str) -> tuple[Any, Any]:
        """Loads/initialises the models: returns (params, frozen)."""

    def make_transform(self) -> Any:
        """Raw data record -> fixed-shape example dict of numpy arrays (runs in the input pipeline)."""

    def make_source(self) -> Any:
        """The random-access training data source."""

    def loss(self, params: Any, frozen: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Scalar loss and a dict of scalar metrics for one (micro)batch."""

    def sample(self, params: Any, frozen: Any, batch: dict, rng: jax.Array) -> jax.Array:
        """Images (B, H, W, 3) in [-1, 1] for a batch's conditions (for sample grids)."""

    # Optional: `write_example_inputs(batch, folder)` writes, once per run, input files for a first
    # `compose` into `<workdir>/example` (from the sample batch or the run's data), so the README's
    # compose line after a quick start runs as written.


def base_folder(base: str, workdir, seed: int, controlnet: bool = False):
    """A config's `model.base` as a folder: the path itself, or for "tiny:<base>" (CPU runs, tests) a tiny
    random base written once into `<workdir>/base/<base>` (`jcompose.models.tiny`; with a random
    ControlNet when `controlnet`)."""
    from pathlib import Path

    from jcompose.models import tiny

    if not base.startswith("tiny:"):
        return Path(base)
    name = base.split(":", 1)[1]
    folder = Path(workdir) / "base" / name
    if not tiny.is_complete_base(folder):  # written whole; an incomplete one (an older jcompose's) is replaced
        tiny.write_tiny_base(folder, name, formats=("msgpack",), controlnet=controlnet, seed=seed)
    return folder
