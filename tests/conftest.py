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


@pytest.fixture
def rng():
    return np.random.default_rng(0)
