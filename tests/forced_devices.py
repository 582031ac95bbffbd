"""The suite's XLA flags, and the environment of a test process that forces N host CPU devices.

conftest.py exports SUITE_XLA_FLAGS (faster compiles) to every test process; a subprocess that forces a
device count keeps them (the same flags also keep the persistent compilation cache shared with the
in-process tests where the programs are the same) and adds only the count.
"""

import os

# The suite compiles far more than it runs, so LLVM runs at -O0 without its expensive passes: a 3-step tiny
# DreamCom run took 56 s instead of 79 s at -O1 (its train step compiled in 20 s instead of 35 s, ran as
# fast), three compile-bound test files 255 s instead of 289 s. Programs that run many steps at -O0 run
# slower (the tiny AnyScene step 1.5x): tests training them for long set config.train.xla_options to
# "--xla_backend_optimization_level=1" (tests/anyscene_runs.py). Tests only; users keep XLA's defaults.
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# What the train steps of the long learning runs compile with instead (config.train.xla_options).
LONG_RUN_XLA_OPTIONS = "--xla_backend_optimization_level=1"
_COUNT = "--xla_force_host_platform_device_count"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS of this process (the suite's by default) with the host device count set to `devices`."""
    kept = [f for f in os.environ.get("XLA_FLAGS", SUITE_XLA_FLAGS).split() if not f.startswith(_COUNT)]
    return " ".join([*kept, f"{_COUNT}={devices}"])


def env(devices: int, base: dict | None = None) -> dict:
    """A copy of `base` (os.environ) for a child JAX process on `devices` forced CPU devices."""
    return {**(os.environ if base is None else base), "XLA_FLAGS": xla_flags(devices), "JAX_PLATFORMS": "cpu"}


def force_here(devices: int) -> None:
    """For a worker script, before it imports jax: this process sees `devices` CPU devices."""
    os.environ.update(env(devices, {}))
