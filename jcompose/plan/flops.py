"""A program's model FLOPs, counted on its jaxpr: the same number whichever chip it is compiled for.

Matrix work only (element-wise work is a few percent of an SD UNet): `dot_general` 2 x output x contracted
size, `conv_general_dilated` 2 x output x window x input features per group; loops multiplied out (`scan`
by its length; a `while` of unknown trip count counted once and reported); `cond` by its costliest branch;
the fused attention kernels by their unpadded shapes: forward 4·B·h·Nq·Nk·D, backward 8·B·h·Nq·Nk·D (the
dK/dV kernel 8 and the dQ kernel 6 of the Pallas TPU kernel each recompute the scores, which a model
count leaves out: 4 and 4; cuDNN's backward likewise 8). Rematerialised forward passes are counted again
(they run again). Per-device work inside `shard_map` is multiplied by the devices it runs on.

XLA's own cost analysis of the compiled program is reported next to it: it counts a loop body once and
leaves out kernels without a cost estimate (and is empty for deviceless GPU programs).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

_LOGICAL = re.compile(r"attention_q(\d+)_k(\d+)_d(\d+)")


@dataclasses.dataclass
class Count:
    flops: float = 0.0
    attention_kernel_flops: float = 0.0
    unknown_loops: int = 0  # while loops without a static trip count (counted once)

    def add(self, other: Count, times: float = 1.0) -> None:
        self.flops += times * other.flops
        self.attention_kernel_flops += times * other.attention_kernel_flops
        self.unknown_loops += other.unknown_loops


def _shape(var) -> tuple[int, ...]:
    return tuple(getattr(var.aval, "shape", ()))


def _dot(eqn) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = _shape(eqn.invars[0])
    return 2.0 * math.prod(_shape(eqn.outvars[0])) * math.prod(lhs[d] for d in lhs_contract)


def _conv(eqn) -> float:
    numbers = eqn.params["dimension_numbers"]
    kernel = _shape(eqn.invars[1])
    rhs_spec = numbers.rhs_spec  # (out features, in features, *spatial)
    window = math.prod(kernel[d] for d in rhs_spec[2:])
    return 2.0 * math.prod(_shape(eqn.outvars[0])) * window * kernel[rhs_spec[1]]


def _attention_kernel(eqn, scope: str) -> float | None:
    """FLOPs of a fused attention kernel call, None for other primitives. A Pallas kernel on padded inputs
    is counted at the unpadded sizes its caller names in the scope (`attention_kernels.logical_scope`)."""
    name = eqn.primitive.name
    if name == "pallas_call":
        debug = getattr(eqn.params["jaxpr"], "debug_info", None)
        kernel = getattr(debug, "func_name", "") or ""
        if "flash" not in kernel and "splash" not in kernel:
            return None
        # (..., B, heads, N, D), padded; vmapped calls (e.g. a benchmark job's items) have more leading axes
        q, k = _shape(eqn.invars[0]), _shape(eqn.invars[1])
        logical = _LOGICAL.findall(scope)
        q_len, kv_len, dim = (int(x) for x in logical[-1]) if logical else (q[-2], k[-2], q[-1])
        # forward 4 (QK^T, PV); the backward's model work 8 is split 4 (dK, dV) + 4 (dP, dQ) over its kernels
        return 4.0 * math.prod(q[:-2]) * q_len * kv_len * dim
    if name.startswith("dot_product_attention_fwd"):
        q, k = _shape(eqn.invars[0]), _shape(eqn.invars[1])  # (B, T, heads, D)
        return 4.0 * q[0] * q[2] * q[1] * k[1] * q[3]
    if name.startswith("dot_product_attention_bwd"):
        q, k = _shape(eqn.invars[0]), _shape(eqn.invars[1])
        return 8.0 * q[0] * q[2] * q[1] * k[1] * q[3]
    return None


def _subjaxprs(eqn) -> list[Any]:
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns"):
                found.append(inner)
    return found


def count(jaxpr, scope: str = "") -> Count:
    """The model FLOPs of a (closed) jaxpr, global (all devices); `scope`: the enclosing name stack."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = Count()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        inner_scope = f"{scope}/{eqn.source_info.name_stack}"
        kernel = _attention_kernel(eqn, inner_scope)
        if kernel is not None:
            total.flops += kernel
            total.attention_kernel_flops += kernel
        elif name == "dot_general":
            total.flops += _dot(eqn)
        elif name == "conv_general_dilated":
            total.flops += _conv(eqn)
        elif name == "scan":
            total.add(count(eqn.params["jaxpr"], inner_scope), eqn.params["length"])
        elif name == "while":
            total.unknown_loops += 1
            total.add(count(eqn.params["body_jaxpr"], inner_scope))
        elif name == "cond":
            branches = [count(b, inner_scope) for b in eqn.params["branches"]]
            total.add(max(branches, key=lambda c: c.flops))
        elif name == "shard_map":
            mesh = eqn.params["mesh"]
            shards = math.prod(mesh.shape[a] for a in (eqn.params.get("newly_manual_axes") or mesh.axis_names))
            total.add(count(eqn.params["jaxpr"], inner_scope), shards)
        elif name != "pallas_call":
            for inner in _subjaxprs(eqn):
                total.add(count(inner, inner_scope))
    return total
