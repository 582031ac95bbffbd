"""Methods: one small module each, built from a config, called only through `base.Method`."""

import importlib

from jcompose import attention_kernels
from jcompose.methods.base import Method

# config.method -> (module, class); imported on demand so one method's dependencies never load another's.
METHODS = {
    "denoise": ("jcompose.methods.denoise", "DenoiseMethod"),
    "anyscene": ("jcompose.methods.anyscene", "AnySceneMethod"),
    "dreamcom": ("jcompose.methods.dreamcom", "DreamComMethod"),
    "anydoor": ("jcompose.methods.anydoor", "AnyDoorMethod"),
}


def build(config) -> Method:
    """The method named by `config.method`."""
    if config.method not in METHODS:
        raise ValueError(f"config.method = {config.method!r}: unknown; available: {', '.join(map(repr, METHODS))}")
    module, cls = METHODS[config.method]
    # The attention implementation is chosen when programs are traced, from this process-wide setting.
    attention_kernels.set_implementation(config.model.get("attention", "auto"))
    return getattr(importlib.import_module(module), cls)(config)
