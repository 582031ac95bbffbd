"""Shared fixtures: tiny model folders written once per test session."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

from jcompose.models import tiny


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory):
    """base name -> folder of a tiny base model, with both weight formats and a controlnet/."""
    root = tmp_path_factory.mktemp("tiny")
    return {base: tiny.write_tiny_base(root / base, base, controlnet=True, seed=i) for i, base in enumerate(tiny.BASES)}


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    return tiny.write_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "dinov2")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA compilation cache for one test module: repeated programs compile once."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_compilation_cache_dir", None)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def require_package(module: str, pip_name: str, purpose: str) -> None:
    """Skips the calling test when the optional package `module` is not installed; fails instead when
    JCOMPOSE_REQUIRE_OPTIONAL is set (CI installs every optional test package, so none may skip there).

    For packages used only as data (published weight files), whose import would pull in torch/torchvision.
    """
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return
    message = (f"optional test dependency {pip_name} ({purpose}) is not installed: "
               f"pip install --no-deps {pip_name}")
    if os.environ.get("JCOMPOSE_REQUIRE_OPTIONAL"):
        pytest.fail(message)
    pytest.skip(message)
