"""What a compiled program does, read from its optimized HLO text: FLOPs, kernels, collectives.

XLA's cost analysis counts a loop body once (a 50-step sampler's UNet once, not 50 times), leaves out
kernels it did not write (Pallas TPU kernels without a cost estimate, cuDNN attention and convolutions)
and is empty for deviceless GPU programs. So the plan counts from the program text itself: every
computation's multiplicity (while loops by their known trip count, fusions and calls by their call sites)
times its matrix work:

* `dot`: 2 x output elements x contracted size; `convolution`: 2 x output elements x kernel window x input
  features per group (the dense count; XLA's own analysis discounts padding);
* cuDNN convolutions (forward, backward input/filter): 2 x forward output x window x input features;
* fused attention: cuDNN forward 4·B·h·Nq·Nk·D, backward 10·B·h·Nq·Nk·D (it recomputes the scores); the
  Pallas TPU kernels forward 4, dK/dV 8, dQ 6 (each recomputes the scores), or their own cost estimate.

Element-wise work is left out (a few percent in an SD UNet). Collectives are listed per kind with their
bytes (the larger of operand and result), also multiplied by their loop trip counts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import defaultdict

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5, "token": 0}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all", "collective-broadcast")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z0-9]*)?)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_CALL_LISTS = re.compile(r"\b(branch_computations|called_computations)=\{([^}]*)\}")


def arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
    """Every array `dtype[dims]` in an HLO shape (a tuple gives several)."""
    return [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _ARRAY.findall(shape_text)]


def nbytes(shape_text: str) -> float:
    return sum(DTYPE_BYTES.get(dtype, 4 if dtype.startswith("f") else 1) * math.prod(dims)
               for dtype, dims in arrays(shape_text))


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str      # the result shape text
    opcode: str
    operands: list[str]
    attributes: str


def _split_shape(text: str) -> tuple[str, str]:
    """'(f32[2]{0}, u8[0]{0}) custom-call(...' -> (shape text, rest)."""
    depth, i = 0, 0
    if text.startswith("("):
        for i, ch in enumerate(text):
            depth += ch in "({[" and 1 or (-1 if ch in ")}]" else 0)
            if depth == 0:
                return text[:i + 1], text[i + 1:].lstrip()
    match = re.match(r"\S+", text)
    end = match.end() if match else 0
    return text[:end], text[end:].lstrip()


def _parse_instruction(line: str) -> Instruction | None:
    match = _INSTRUCTION.match(line)
    if not match:
        return None
    shape, rest = _split_shape(match.group(3))
    opcode_match = re.match(r"([\w\-$]+)\(", rest)
    if not opcode_match:
        return None
    depth, start = 0, opcode_match.end() - 1
    for j in range(start, len(rest)):
        depth += 1 if rest[j] == "(" else -1 if rest[j] == ")" else 0
        if depth == 0:
            break
    operands = re.findall(r"%([\w.\-]+)", rest[start:j + 1])
    return Instruction(match.group(2), shape, opcode_match.group(1), operands, rest[j + 1:])


def parse(text: str) -> tuple[dict[str, list[Instruction]], dict[str, dict[str, str]], str]:
    """(computation -> instructions, computation -> {value name: shape text}, entry name)."""
    text = re.sub(r"/\*.*?\*/", "", text)
    computations: dict[str, list[Instruction]] = {}
    shapes: dict[str, dict[str, str]] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(2)
            computations[current], shapes[current] = [], {}
            if header.group(1):
                entry = current
            continue
        if current is None:
            continue
        if line.strip() == "}":
            current = None
            continue
        instruction = _parse_instruction(line)
        if instruction:
            computations[current].append(instruction)
            shapes[current][instruction.name] = instruction.shape
    return computations, shapes, entry


def multiplicities(computations: dict[str, list[Instruction]], entry: str) -> dict[str, float]:
    """How many times each computation runs per program execution (while bodies by known trip count)."""
    callers: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for name, instructions in computations.items():
        for ins in instructions:
            trips = 1.0
            if ins.opcode == "while":
                found = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attributes)
                trips = float(found.group(1)) if found else 1.0
            for kind, callee in _CALLS.findall(ins.attributes):
                callers[callee].append((name, trips if kind in ("body", "condition") else 1.0))
            for _, listed in _CALL_LISTS.findall(ins.attributes):
                for callee in re.findall(r"%?([\w.\-]+)", listed):
                    callers[callee].append((name, 1.0))
    memo: dict[str, float] = {entry: 1.0}

    def times(name: str, seen=()) -> float:
        if name not in memo:
            memo[name] = sum(times(caller, seen + (name,)) * trips for caller, trips in callers.get(name, ())
                             if caller not in seen)
        return memo[name]

    return {name: times(name) for name in computations}


def _dims(shape_text: str) -> tuple[int, ...]:
    found = arrays(shape_text)
    return found[0][1] if found else ()


def _conv_flops(output: tuple, kernel: tuple, labels: str) -> float:
    """2 x output elements x window x input features of a convolution with `labels` like b01f_01io->b01f."""
    kernel_labels = labels.split("_")[1].split("->")[0]
    window = math.prod(kernel[i] for i, c in enumerate(kernel_labels) if c.isdigit())
    return 2.0 * math.prod(output) * window * kernel[kernel_labels.index("i")]


def _layout_constraints(ins: Instruction) -> list[tuple[int, ...]]:
    found = re.search(r"operand_layout_constraints=\{(.*?)\}, (?:api_version|frontend|metadata|custom_call)",
                      ins.attributes)
    return [dims for _, dims in arrays(found.group(1))] if found else []


def kernel_flops(ins: Instruction, shapes: dict[str, str]) -> tuple[str, float, bool]:
    """(kernel name, FLOPs, whether XLA's cost analysis already counts them) of a custom call."""
    target = re.search(r'custom_call_target="([^"]+)"', ins.attributes)
    target = target.group(1) if target else ""
    operand_shapes = [_dims(shapes.get(o, "")) for o in ins.operands]
    if target.startswith("__cudnn$fmha"):
        q, k = (_layout_constraints(ins) or operand_shapes)[:2]  # (B, T, heads, D)
        per = q[0] * q[2] * q[1] * k[1] * q[3]
        return target, (10.0 if "Backward" in target else 4.0) * per, False
    if target.startswith("__cudnn$conv"):
        labels = re.search(r"dim_labels=(\S+?),", ins.attributes)
        result = _dims(ins.shape)
        if "BackwardInput" in target:
            output, kernel = operand_shapes[0], operand_shapes[1]
        elif "BackwardFilter" in target:
            output, kernel = operand_shapes[1], result
        else:
            output, kernel = result, operand_shapes[1]
        return target, _conv_flops(output, kernel, labels.group(1)) if labels else 0.0, False
    if target.startswith("__cublas$"):  # GEMMs XLA hands to cuBLAS (lt$matmul, gemm): 2 x output x contracted
        contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', ins.attributes)
        lhs = operand_shapes[0] if operand_shapes else ()
        size = math.prod(lhs[int(i)] for i in re.findall(r"\d+", contracting.group(1))) if contracting and lhs else 0
        return target, 2.0 * math.prod(_dims(ins.shape)) * size, False
    if target == "tpu_custom_call":
        estimate = re.search(r'"cost_estimate":\{"flops":"(\d+)"', ins.attributes)
        name = re.sub(r"_block_.*$|[._]\d+$", "", ins.name)  # flash_mha_bwd_dq_block_q_major_128... -> flash_mha_bwd_dq
        if estimate:
            return name, float(estimate.group(1)), True
        if "flash" in name and len(operand_shapes) >= 2:
            q, k = operand_shapes[0], operand_shapes[1]  # (B, heads, N, D)
            factor = 8.0 if "dkv" in name else 6.0 if "dq" in name else 4.0
            return name, factor * q[0] * q[1] * q[2] * k[2] * q[3], False
        return name, 0.0, False
    return target, 0.0, False


@dataclasses.dataclass
class Summary:
    """Per device, per program execution."""

    flops: float = 0.0                  # dots + convolutions + kernels, loops multiplied out
    kernel_flops: float = 0.0           # of which in custom-call kernels
    uncounted_kernel_flops: float = 0.0  # kernel FLOPs XLA's cost analysis leaves out (loop bodies once)
    kernels: dict = dataclasses.field(default_factory=lambda: defaultdict(float))       # kernel -> calls
    collectives: dict = dataclasses.field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))  # kind -> [n, B]
    attention_kernel_layers: set = dataclasses.field(default_factory=set)
    loops: list = dataclasses.field(default_factory=list)  # trip counts of while loops

    def to_json(self) -> dict:
        return {"flops": self.flops, "kernel_flops": self.kernel_flops,
                "uncounted_kernel_flops": self.uncounted_kernel_flops, "kernels": dict(self.kernels),
                "collectives": {k: {"count": v[0], "bytes": v[1]} for k, v in self.collectives.items()},
                "attention_kernel_layers": sorted(self.attention_kernel_layers), "loops": self.loops}


_LAYER = re.compile(r"(\w+Model)[.\w]*/((?:down|up|mid)_blocks?(?:_\d+)?/attentions_\d+/transformer_blocks_\d+/attn[12])")


def summarize(text: str) -> Summary:
    """The program's FLOPs, kernels and collectives (module doc)."""
    computations, shapes, entry = parse(text)
    counts = multiplicities(computations, entry)
    out = Summary()
    for name, instructions in computations.items():
        times = counts.get(name, 0.0)
        if not times:
            continue
        for ins in instructions:
            op = ins.opcode
            if op == "dot":
                lhs = _dims(shapes[name].get(ins.operands[0], ""))
                contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attributes)
                size = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
                out.flops += times * 2.0 * math.prod(_dims(ins.shape)) * size
            elif op == "convolution":
                labels = re.search(r"dim_labels=(\S+?),", ins.attributes + ",")
                kernel = _dims(shapes[name].get(ins.operands[1], ""))
                if labels and kernel:
                    out.flops += times * _conv_flops(_dims(ins.shape), kernel, labels.group(1))
            elif op == "custom-call":
                kernel, flops, estimated = kernel_flops(ins, shapes[name])
                if kernel.startswith(("AssumeGatherIndicesInBound", "Sharding", "SPMD")):
                    continue
                out.kernels[kernel] += times
                out.flops += times * flops
                out.kernel_flops += times * flops
                out.uncounted_kernel_flops += (times - (1 if estimated else 0)) * flops
                layer = _LAYER.search(ins.attributes)
                if layer and ("fmha" in kernel or "flash" in kernel):
                    out.attention_kernel_layers.add(f"{layer.group(1)}/{layer.group(2)}")
            elif op == "while":
                found = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attributes)
                out.loops.append(int(found.group(1)) if found else None)
            base = op[:-6] if op.endswith("-start") else op
            if base in COLLECTIVES:
                operand_bytes = sum(nbytes(shapes[name].get(o, "")) for o in ins.operands)
                result_bytes = nbytes(ins.shape)
                if op.endswith("-start") and result_bytes >= 1.5 * operand_bytes:
                    result_bytes -= operand_bytes  # an async start's result holds its operands too
                size = max(result_bytes, operand_bytes)
                out.collectives[base][0] += times
                out.collectives[base][1] += times * size
    return out


def cost_estimate_json(text: str) -> list[dict]:
    """The Mosaic kernels' own cost estimates, for inspection."""
    return [json.loads("{" + m + "}") for m in re.findall(r'"cost_estimate":\{([^}]*)\}', text)]
