"""What every benchmark shares: timers, XLA-counted FLOPs, peak memory, MFU, the run's environment
and the report writer (JSON + Markdown tables).

Timings synchronise on the results (`jax.block_until_ready`), so they measure device work, not
dispatch. FLOPs come from XLA's cost analysis of the lowered (unoptimised, unpartitioned) program:
no compile is needed, the count is global (all devices together), and it counts a `lax.scan` body
once, which is why the sampler counts one denoising step and multiplies.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "diffusers", "transformers", "grain")


# ------------------------------------------------------------------------------------------ timers


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of `repeats` further calls) of `fn()`.

    `fn`'s result is waited for (`jax.block_until_ready`; a PyTorch `fn` synchronises itself).
    The first call carries compilation, allocator growth and autotuning.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def back_to_back_seconds(step: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Mean seconds per call of `repeats` calls of `step()` dispatched back to back (as a training
    loop does), after `warmup` calls; the last result is waited for. `step` may carry state in
    a closure (e.g. a donated train state)."""
    for _ in range(warmup):
        jax.block_until_ready(step())
    start = time.perf_counter()
    out = None
    for _ in range(repeats):
        out = step()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


# ------------------------------------------------------------------------------ FLOPs and memory


def cost_flops(analysis: Any) -> float:
    """FLOPs from a `cost_analysis()` result (a dict, a one-element list of dicts, or None -> 0)."""
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return float((analysis or {}).get("flops", 0.0))


def lowered_flops(fn: Callable, *args: Any) -> float:
    """XLA-counted FLOPs of `jax.jit(fn)(*args)`, from the lowered program (no compile)."""
    return cost_flops(jax.jit(fn).lower(*args).cost_analysis())


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, float, float]:
    """(compiled executable, compile seconds, global FLOPs) of a `jax.jit`-ed function on `args`.

    Call the executable with the same arguments (minus static ones); the jit's own cache is
    not filled, so do not time the jit function afterwards expecting no compile.
    """
    lowered = jitted.lower(*args)
    flops = cost_flops(lowered.cost_analysis())
    start = time.perf_counter()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start, flops


def peak_memory_gib(device: Any = None) -> float | None:
    """Peak bytes in use on `device` (default: the first local device) in GiB, or None where the
    backend keeps no statistics (CPU). `device` is anything with `memory_stats()`."""
    device = jax.local_devices()[0] if device is None else device
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def mfu(flops: float, seconds: float, peak_flops_per_device: float | None, devices: int = 1) -> float | None:
    """Model FLOP utilisation: `flops` (global, per call) / `seconds` (per call) over the peak of
    `devices` devices; None when the peak is unknown (CPU) or nothing was counted."""
    if not peak_flops_per_device or not flops or seconds <= 0:
        return None
    return flops / seconds / (peak_flops_per_device * devices)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# ----------------------------------------------------------------------------------- environment


def package_versions(names: Sequence[str] = VERSIONED) -> dict[str, str | None]:
    """Installed versions from package metadata (nothing is imported; None = not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    """Date (UTC), host, Python, JAX backend and devices, and package versions of this run."""
    devices = jax.devices()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(), "python": platform.python_version(), "backend": jax.default_backend(),
        "device": devices[0].device_kind, "device_count": len(devices), "versions": package_versions(),
    }


# ---------------------------------------------------------------------------------------- reports


def format_value(value: Any) -> str:
    """One table cell: None -> 'n/a', floats to 3-4 significant digits, lists joined."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 1e-3:
            return f"{value:.4g}"
        return f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub Markdown table: `columns` = (key, header) pairs, one line per row dict; a key a
    row lacks shows as 'n/a'. Returns '' for no rows."""
    if not rows:
        return ""
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """`value` with numpy/jax scalars as Python numbers, NaN/inf as strings, other objects as str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / jax scalars
        return jsonable(value.item())
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """`data` as indented JSON (numpy scalars as numbers, NaN/inf as strings) at `path`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(jsonable(data), indent=2) + "\n")


def write_report(out_dir: Path, data: dict[str, Any], sections: Sequence[tuple[str, str, str]],
                 header: Sequence[str]) -> tuple[Path, Path]:
    """Writes `out_dir/report.json` (`data`) and `out_dir/report.md`: a title, the `header` lines,
    then per (title, intro, table) section a heading, its intro paragraph and its table.
    Returns the two paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "report.json", data)
    lines = ["# jcompose benchmark suite", ""] + [f"- {line}" for line in header]
    for title, intro, table in sections:
        lines += ["", f"## {title}", ""]
        if intro:
            lines += [intro, ""]
        lines.append(table or "(nothing measured)")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return out_dir / "report.json", out_dir / "report.md"


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the JSON report)."""
    print(message, file=sys.stderr, flush=True)
