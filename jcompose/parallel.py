"""Device mesh and shardings: data parallelism as a jit over a ('data', 'fsdp') mesh."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")

# Dense bf16 peak FLOP/s per chip (vendor specs) by `device_kind` prefix, for MFU.
PEAK_BF16_FLOPS = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12, "TPU v5p": 459e12,
                   "TPU v5 lite": 197e12, "TPU v6": 918e12, "TPU v4": 275e12}


def peak_flops() -> float | None:
    """The bf16 peak of one local device, or None when unknown (e.g. CPU)."""
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_BF16_FLOPS.items() if kind.startswith(k)), None)


def make_mesh(data: int = -1, fsdp: int = 1) -> Mesh:
    """A ('data', 'fsdp') mesh over all devices; -1 takes what the other axis leaves."""
    n = jax.device_count()
    if data == -1:
        if n % fsdp:
            raise ValueError(f"config.mesh.fsdp = {fsdp} does not divide the {n} devices")
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"config.mesh: data {data} x fsdp {fsdp} != {n} devices")
    # Auto axes: XLA propagates shardings from the inputs (the diffusers modules carry no
    # sharding annotations, which explicit-axis meshes would require).
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's part of the batch -> global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))
