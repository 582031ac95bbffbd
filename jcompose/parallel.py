"""Device mesh and shardings: data parallelism as a jit over a ('data', 'fsdp') mesh."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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


def fsdp_shardings(tree: Any, mesh: Mesh, min_size: int = 2**18) -> Any:
    """A sharding per leaf: arrays of at least `min_size` elements split over the 'fsdp' axis.

    Each large array is split along its largest dimension that the fsdp axis size divides (so
    optimizer moments, which have their parameter's shape, shard the same way); small arrays,
    scalars and arrays with no divisible dimension stay replicated. With fsdp = 1 everything is
    replicated (plain data parallelism). XLA inserts the all-gathers where the forward pass needs
    whole weights and reduce-scatters the gradients.
    """
    fsdp = mesh.shape["fsdp"]

    def sharding(leaf) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        if fsdp == 1 or not shape or int(np.prod(shape)) < min_size:
            return replicated(mesh)
        for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
            if shape[axis] % fsdp == 0:
                spec = [None] * len(shape)
                spec[axis] = "fsdp"
                return NamedSharding(mesh, P(*spec))
        return replicated(mesh)

    return jax.tree_util.tree_map(sharding, tree)


def bytes_per_device(tree: Any) -> tuple[int, int]:
    """(total bytes of the arrays in `tree`, the most bytes any one device holds of them)."""
    total, per_device = 0, {}
    for leaf in jax.tree_util.tree_leaves(tree):
        total += leaf.nbytes
        for shard in leaf.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return total, max(per_device.values(), default=0)


def model_axis_spec(mesh: Mesh, models: int) -> P:
    """The partition of a leading model axis of `models`: over every device when they divide it, else none."""
    return P(BATCH_AXES) if models % mesh.size == 0 else P()


def model_shardings(tree: Any, mesh: Mesh) -> Any:
    """A sharding per leaf of a tree whose leaves all have a leading model axis (K independent models)."""
    def sharding(leaf) -> NamedSharding:
        return NamedSharding(mesh, model_axis_spec(mesh, int(leaf.shape[0])))

    return jax.tree_util.tree_map(sharding, tree)


def model_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A (K, B, ...) batch of K models (one process): the model axis split like the state's, or, when the
    devices do not divide K, the batch axis split over them (data parallelism within each model)."""
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        spec = model_axis_spec(mesh, value.shape[0])
        if spec == P():
            spec = P(None, BATCH_AXES)
        out[key] = jax.device_put(value, NamedSharding(mesh, spec))
    return out
