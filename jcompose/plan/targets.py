"""Target accelerators a plan compiles for, and their devices without the hardware.

TPU slices come from libtpu: `jax.experimental.topologies.get_topology_desc` describes a slice's chips
on any machine. NVIDIA targets come from the CUDA PJRT plugin (`jax-cuda12-pjrt` and `jax-cuda12-plugin`,
plus cuDNN, which its fused attention needs at compile time): the same call with a
`GpuTargetConfigProto` in text form gives the devices of a GPU that is not there. The proto's facts per
GPU (SMs, shared memory, HBM size and bandwidth, clock, compute capability) are restated below from the
vendors' specifications, as XLA keeps them for its own deviceless compiles.

Names: TPU as Cloud TPU spells accelerator types, `v5p-8`, `v4-32` (TensorCores: two per v4/v5p chip,
so v5p-8 is 4 chips), `v5e-16`, `v6e-8` (chips); GPUs as `h100x8`, `h200`, `a100x8` (`x1` by default).
Peak bf16 FLOP/s, HBM bandwidth and interconnect bandwidth per chip are vendor specs (dense, no sparsity).
"""

from __future__ import annotations

import dataclasses
import math
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    kind: str                # what `device_kind` says
    hbm_bytes: int
    peak_bf16_flops: float   # dense, per chip
    hbm_bytes_per_s: float
    link_bytes_per_s: float  # chip-to-chip (TPU ICI / NVLink), each direction, per chip
    cores_per_chip: int = 1  # TPU TensorCores a "v4-8"-style name counts


TPU_CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1228e9, 300e9, cores_per_chip=2),
    "v5e": Chip("TPU v5 lite", 16 * GiB, 197e12, 819e9, 200e9),
    "v5p": Chip("TPU v5", 95 * GiB, 459e12, 2765e9, 600e9, cores_per_chip=2),
    "v6e": Chip("TPU v6 lite", 32 * GiB, 918e12, 1640e9, 448e9),
}
# GPU facts for the target config (GpuTargetConfigProto text) and the roofline.
GPUS = {
    "h100": dict(chip=Chip("NVIDIA H100 80GB HBM3", 84942979072, 989e12, 3.35e12, 450e9), sms=132, fpus=128,
                 l2=50 * 2**20, clock=1.98, smem_core=233472, smem_optin=232448, cc=(9, 0)),
    "h200": dict(chip=Chip("NVIDIA H200 141GB HBM3e", 151397597184, 989e12, 4.8e12, 450e9), sms=132, fpus=128,
                 l2=50 * 2**20, clock=1.98, smem_core=233472, smem_optin=232448, cc=(9, 0)),
    "a100": dict(chip=Chip("NVIDIA A100-SXM4-80GB", 85100068864, 312e12, 2.039e12, 300e9), sms=108, fpus=64,
                 l2=40 * 2**20, clock=1.41, smem_core=167936, smem_optin=166912, cc=(8, 0)),
}
EXAMPLES = "v5p-8, v4-32, v5e-16, v6e-8, h100x8, h200, a100x8"


@dataclasses.dataclass(frozen=True)
class Target:
    """A slice (or a GPU host) of `chips` chips; `slices` > 1: several TPU slices over the data-centre network."""

    name: str
    platform: str  # "tpu", "cuda" or "cpu"
    chip: Chip
    chips: int
    topology: str
    slices: int = 1

    @property
    def devices_count(self) -> int:
        return self.chips * self.slices


def _tpu_shape(generation: str, chips: int) -> tuple[int, ...]:
    """Cloud TPU's slice shape: 3-D tori for v4/v5p (2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...), 2-D grids for
    v5e/v6e (1x1, 2x2, 2x4, 4x4, 4x8, ...); each step doubles the smallest side (the last of equals)."""
    dims = [2, 2, 1] if generation in ("v4", "v5p") and chips >= 4 else [1, 1, 1] if generation in ("v4", "v5p") \
        else [1, 1]
    while math.prod(dims) < chips:
        smallest = min(dims)
        dims[max(i for i, d in enumerate(dims) if d == smallest)] *= 2
    if math.prod(dims) != chips:
        raise ValueError(f"{chips} {generation} chips do not form a slice (a power of two, or 1-3 for v4/v5p "
                         "is not offered)")
    return tuple(dims)


def parse(name: str, slices: int = 1) -> Target:
    """'v5p-8' / 'v6e-16' / 'h100x8' / 'h200' / 'cpu' -> Target; ValueError naming the accepted forms."""
    text = name.strip().lower()
    tpu = re.fullmatch(r"(v4|v5e|v5p|v6e|v5litepod)-(\d+)", text)
    gpu = re.fullmatch(r"(h100|h200|a100)(?:x(\d+))?", text)
    if slices < 1:
        raise ValueError(f"--slices {slices}: expected a positive count")
    if tpu:
        generation = "v5e" if tpu.group(1) == "v5litepod" else tpu.group(1)
        chip = TPU_CHIPS[generation]
        count = int(tpu.group(2))
        if count % chip.cores_per_chip:
            raise ValueError(f"--target {name}: {generation} names count TensorCores, {chip.cores_per_chip} per chip")
        chips = count // chip.cores_per_chip
        shape = "x".join(map(str, _tpu_shape(generation, chips)))
        return Target(text, "tpu", chip, chips, f"{generation}:{shape}", slices)
    if gpu:
        if slices != 1:
            raise ValueError("--slices: TPU targets only")
        count = int(gpu.group(2) or 1)
        return Target(text, "cuda", GPUS[gpu.group(1)]["chip"], count, f"1x{math.ceil(count / 8)}x{min(count, 8)}")
    if text == "local":  # this machine's own devices (a GPU or TPU kind without a deviceless target here)
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() or {}
        chip = next((c for c in [g["chip"] for g in GPUS.values()] + list(TPU_CHIPS.values())
                     if device.device_kind.startswith(c.kind)), None)
        chip = chip or Chip(device.device_kind, int(stats.get("bytes_limit", 0)), 0.0, 0.0, 0.0)
        platform = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
        return Target("local", platform, chip, jax.device_count(), "local", 1)
    if text == "cpu":
        import os

        import jax

        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # the host's memory stands for HBM
        return Target("cpu", "cpu", Chip("cpu", host, 0.0, 0.0, 0.0), jax.device_count("cpu"), "", 1)
    raise ValueError(f"--target {name}: expected a TPU slice or GPUs such as {EXAMPLES} (or cpu)")


def name_for(device_kind: str, count: int) -> str:
    """The deviceless target of `count` devices of a kind ('NVIDIA H200 ...' -> 'h200x1'), else 'local'/'cpu'."""
    for name, g in GPUS.items():
        if device_kind.startswith(g["chip"].kind.split(" ")[0] + " " + g["chip"].kind.split(" ")[1]):
            return f"{name}x{count}"
    return "cpu" if device_kind.lower() == "cpu" else "local"


def gpu_target_config(kind: str) -> str:
    """The `GpuTargetConfigProto` text of a GPU ("h100", "h200", "a100")."""
    g = GPUS[kind]
    chip = g["chip"]
    return "\n".join([
        "gpu_device_info {",
        "  threads_per_block_limit: 1024", "  threads_per_warp: 32", "  shared_memory_per_block: 49152",
        f"  shared_memory_per_core: {g['smem_core']}", "  threads_per_core_limit: 2048",
        f"  core_count: {g['sms']}", f"  fpus_per_core: {g['fpus']}",
        "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535", "  block_dim_limit_z: 65535",
        f"  memory_bandwidth: {int(chip.hbm_bytes_per_s)}", f"  l2_cache_size: {g['l2']}",
        f"  clock_rate_ghz: {g['clock']}", f"  device_memory_size: {chip.hbm_bytes}",
        f"  shared_memory_per_block_optin: {g['smem_optin']}",
        f"  cuda_compute_capability {{ major: {g['cc'][0]} minor: {g['cc'][1]} }}",
        "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536",
        "}",
        'platform_name: "CUDA"',
        "dnn_version_info { major: 9 minor: 10 patch: 0 }",
        f'device_description_str: "{chip.kind}"',
    ])


def missing_plugin(target: Target) -> str | None:
    """The pip packages a target's compiler needs when they are not installed, else None."""
    import importlib.util

    if target.platform == "tpu" and importlib.util.find_spec("libtpu") is None:
        return "libtpu (pip install 'jcompose[plan]', or jax[tpu])"
    if target.platform == "cuda":
        wanted = {"jax_plugins.xla_cuda12": "jax-cuda12-pjrt", "jax_cuda12_plugin": "jax-cuda12-plugin",
                  "nvidia.cudnn": "nvidia-cudnn-cu12"}
        missing = []
        for module, package in wanted.items():
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                missing.append(package)
        if missing:
            return f"{', '.join(missing)} (pip install 'jcompose[plan]', or jax[cuda12])"
    return None


def devices(target: Target) -> list:
    """The target's devices, for a mesh to compile against (no hardware needed)."""
    import jax

    if target.platform == "cpu":
        return jax.devices("cpu")
    if target.topology == "local":
        return jax.devices()
    from jax.experimental import topologies

    if target.platform == "tpu":
        import os

        # A plan only compiles: several may share libtpu (plans side by side, a test run beside a plan).
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        dims = [int(d) for d in target.topology.split(":")[1].split("x")] + [1]
        host = (2, 2, 1) if len(dims) == 4 else (2, 4, 1)  # chips per host: 4 (v4/v5p), up to 8 (v5e/v6e)
        per_host = tuple(min(d, h) for d, h in zip(dims[:3], host))
        topology = topologies.get_topology_desc(platform="tpu", topology_name=target.topology,
                                                chip_config_name="default", chips_per_host_bounds=per_host,
                                                num_slices=target.slices)
    else:
        kind = next(k for k, g in GPUS.items() if g["chip"] is target.chip)
        topology = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(kind),
                                                topology=target.topology)
    return list(topology.devices)
