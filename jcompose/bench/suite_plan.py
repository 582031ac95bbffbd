"""The suite's check of `jcompose.plan`: the memory the plan predicts for a train step that the suite then
measures, on the same machine.

`python -m jcompose.bench.suite_plan --config=... [bench train's flags] --out result.json` builds the config
exactly as `bench train` does (`bench.train.configure`), plans its train step for this machine's chips
(the deviceless target of its GPU kind, e.g. h200 for an H200: the path users take on a CPU machine; or
the local devices when the kind has no target) and writes the prediction per chip. The suite's report
sets it next to the peak memory `bench train` measured for the same method and per-device batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GiB = 2**30


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from configs import common
    from jcompose.bench import torch_train, weights
    from jcompose.bench import train as bench_train
    from jcompose.plan import planner, targets

    start = time.perf_counter()
    config = common.load(args.config)
    on_accelerator = jax.default_backend() != "cpu"
    reference = torch_train.reference_for(config.method)
    architecture = (reference and reference.base) or weights.architecture_of(config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = weights.base_folder(args, tmp, architecture)
        bench_train.configure(config, args, folder, jax.device_count(), on_accelerator)
        target = targets.parse(targets.name_for(jax.devices()[0].device_kind, jax.device_count()))
        config_path = args.config.split(":", 1)[0]
        run_ = planner.prepare(config, config_path, target, Path(tmp) / "plan")
        plan = planner.plan(run_, config_path, target, names=("train",))
    step = plan["programs"][0]
    memory = step.get("memory_bytes", {})
    return {"method": config.method, "target": target.name, "chip": target.chip.kind,
            "per_device_batch": config.train.batch_size // target.devices_count, "size": config.data.image_size,
            "dtype": config.compute_dtype, "fits": step["fits"], "error": step.get("error"),
            "predicted_total_gib": memory.get("total", 0) / GiB if memory else None,
            "predicted_gib": {k: v / GiB for k, v in memory.items()},
            "tflop_per_step": step.get("flops_global", 0) / 1e12, "compile_s": step.get("compile_s"),
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    from jcompose.bench import train as bench_train

    parser = argparse.ArgumentParser(prog="python -m jcompose.bench.suite_plan", description=__doc__)
    bench_train.add_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="the prediction as JSON")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
