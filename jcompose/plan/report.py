"""A compiled program's figures per chip, and the plan's files (plan.json, plan.md, hbm.png).

Memory per chip: parameters, optimizer state, EMA, frozen modules and the batch are the bytes each device
holds of the program's arguments (from their shardings); temporaries, generated code and the outputs
that do not reuse a donated argument come from the compiler's memory analysis. Their sum is what the
chip needs; it fits when it stays under the chip's HBM less the margin.

Time per step: the roofline is the larger of compute time (model FLOPs per chip at the chip's bf16 peak)
and HBM time (the compiler's bytes accessed at the HBM bandwidth, where it reports them); collectives
are estimated apart at the chip's interconnect bandwidth. A measured step time t means MFU = model
FLOPs per chip / (t x peak).
"""

from __future__ import annotations

import math
from typing import Any

import jax

from jcompose.plan import flops as flop_count

GiB = 2**30
CATEGORIES = ("params", "optimizer", "ema", "frozen", "batch", "temp", "outputs", "code", "other")


def per_device_bytes(tree: Any) -> float:
    """Bytes one device holds of a tree of `jax.ShapeDtypeStruct`s with shardings (the first device; the
    run's shardings split evenly)."""
    total = 0.0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def memory(facts: dict, arguments: dict) -> dict[str, float]:
    """Per-chip bytes by category (module doc), and their `total`, from a program's facts (`programs.facts_of`)
    and its arguments' shapes."""
    analysis = facts["memory"]
    state = arguments.get("state") or {"params": arguments.get("params", {})}
    parts = {"params": per_device_bytes(state.get("params", {})),
             "optimizer": per_device_bytes(state.get("opt_state", {})),
             "ema": per_device_bytes(state.get("ema", {})),
             "frozen": per_device_bytes(arguments.get("frozen", {})),
             "batch": per_device_bytes(arguments.get("batch", {}))}
    arguments_bytes = analysis["argument"]
    parts["other"] = max(0.0, arguments_bytes - sum(parts.values()))  # small state leaves, layout padding
    parts["temp"] = analysis["temp"]
    parts["outputs"] = max(0.0, analysis["output"] - analysis["alias"])
    parts["code"] = analysis["generated_code"]
    parts["total"] = sum(parts[c] for c in CATEGORIES)
    parts["arguments"] = arguments_bytes
    return parts


def program_report(compiled, target, jaxpr_count: flop_count.Count, margin: float,
                   hbm_bytes: float | None = None) -> dict[str, Any]:
    """Everything the plan says about one compiled program (per chip unless named global)."""
    chip = target.chip
    hbm = float(hbm_bytes or chip.hbm_bytes)
    mem = memory(compiled.facts, compiled.arguments)
    devices = target.devices_count
    summary = compiled.facts["hlo"]
    xla = compiled.facts["cost"]
    flops_chip = jaxpr_count.flops / devices
    compute_s = flops_chip / chip.peak_bf16_flops if chip.peak_bf16_flops else None
    bytes_accessed = xla.get("bytes accessed")
    memory_s = bytes_accessed / chip.hbm_bytes_per_s if bytes_accessed and chip.hbm_bytes_per_s else None
    collective_bytes = sum(v["bytes"] for v in summary["collectives"].values())
    comm_s = collective_bytes / chip.link_bytes_per_s if chip.link_bytes_per_s else None
    roofline_s = max(t for t in (compute_s, memory_s) if t is not None) if compute_s else None
    budget = hbm * (1 - margin)
    attention: dict[str, dict] = {}
    for call in compiled.attention:
        row = attention.setdefault(call.layer or "(layer)", {
            "implementation": call.implementation, "reason": call.reason, "cross": call.is_cross,
            "q_len": call.q_len, "kv_len": call.kv_len, "heads": call.heads, "head_dim": call.head_dim, "calls": 0})
        row["calls"] += 1
    return {
        "program": compiled.name,
        "images": compiled.images,
        "memory_bytes": mem,
        "hbm_bytes": hbm,
        "fits": mem["total"] <= budget,
        "margin_bytes": budget - mem["total"],
        "flops_global": jaxpr_count.flops,
        "flops_per_chip": flops_chip,
        "flops_per_image": jaxpr_count.flops / max(compiled.images, 1),
        "attention_kernel_flops_global": jaxpr_count.attention_kernel_flops,
        "loops_of_unknown_length": jaxpr_count.unknown_loops,
        "compiled_flops_per_chip": summary["flops"],
        "xla_cost_analysis_flops": xla.get("flops"),
        "roofline": {"compute_s": compute_s, "hbm_s": memory_s, "collectives_s": comm_s, "step_s": roofline_s,
                     "mfu_at_roofline": compute_s / roofline_s if roofline_s else None,
                     "step_s_at_mfu": {f"{m:.0%}": flops_chip / (m * chip.peak_bf16_flops)
                                       for m in (0.3, 0.4, 0.5)} if chip.peak_bf16_flops else {}},
        "collectives": summary["collectives"],
        "kernels": summary["kernels"],
        "attention": attention,
        "attention_kernel_layers_in_program": summary["attention_kernel_layers"],
        "loops": summary["loops"],
        "from_plan_cache": compiled.cached,
        "lower_s": compiled.lower_s,
        "compile_s": compiled.compile_s,
        "compile_cpu_s": compiled.compile_cpu_s,
        "host_peak_gib": compiled.host_peak_gib,
    }


def mfu(report: dict, step_s: float, peak_flops: float) -> float:
    """The MFU a measured step time means for a program of this plan."""
    return report["flops_per_chip"] / (step_s * peak_flops)
