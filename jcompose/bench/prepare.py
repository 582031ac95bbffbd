"""`python -m jcompose.bench prepare --dir DIR`: what the suite's parts share, done once: the base
folders (`DIR/<model>-<architecture>`, random weights), the run's environment (date, device,
versions) and the device's measured bf16 matrix-product rate (the ceiling MFU is read against,
beside the datasheet peak in `jcompose.parallel.PEAK_BF16_FLOPS`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jcompose import parallel
from jcompose.bench import timing, weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, help="folder for the base folders")
    parser.add_argument("--model", choices=("tiny", "sd15"), default=None,
                        help="tiny (default on CPU) or the full SD 1.5 architecture (default on GPU/TPU)")
    parser.add_argument("--architectures", default="sd15", help=f"comma list of {weights.ARCHITECTURES}")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="side of the bf16 matrix product timed (default: 8192 off CPU, 512 on CPU)")


def matmul_tflops(n: int, repeats: int = 10) -> float:
    """Measured TFLOP/s of an n x n x n bf16 matrix product (random operands, median of `repeats`)."""
    keys = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(keys[0], (n, n), jnp.bfloat16)
    b = jax.random.normal(keys[1], (n, n), jnp.bfloat16)
    product = jax.jit(lambda a, b: a @ b)
    _, seconds = timing.timed(lambda: product(a, b), repeats)
    return 2 * n**3 / seconds / 1e12


def run(args: argparse.Namespace) -> dict[str, Any]:
    """{'environment', 'bases': {architecture: folder}, 'write_s', 'matmul_tflops', 'peak_tflops'}."""
    architectures = [a.strip() for a in args.architectures.split(",") if a.strip()]
    bad = sorted(set(architectures) - set(weights.ARCHITECTURES))
    if bad or not architectures:
        raise ValueError(f"--architectures {args.architectures!r}: expected a comma list of {weights.ARCHITECTURES}")
    start = time.perf_counter()
    bases = {}
    for architecture in architectures:
        base = argparse.Namespace(base=Path(args.dir) / f"{args.model}-{architecture}", model=args.model)
        bases[architecture] = str(weights.base_folder(base, str(args.dir), architecture))
    write_s = time.perf_counter() - start
    n = args.matmul_size or (8192 if jax.default_backend() != "cpu" else 512)
    peak = parallel.peak_flops()
    return {"environment": timing.environment(), "model": args.model, "bases": bases, "write_s": write_s,
            "matmul_size": n, "matmul_tflops": matmul_tflops(n),
            "peak_tflops": peak / 1e12 if peak else None}
