"""Methods: one small module each, built from a config, called only through `base.Method`."""

from jcompose.methods.base import Method


def build(config) -> Method:
    """The method named by `config.method`."""
    if config.method == "denoise":
        from jcompose.methods.denoise import DenoiseMethod

        return DenoiseMethod(config)
    if config.method == "anyscene":
        from jcompose.methods.anyscene import AnySceneMethod

        return AnySceneMethod(config)
    raise ValueError(f"config.method = {config.method!r}: unknown; available: 'denoise', 'anyscene'")
