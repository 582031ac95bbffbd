"""`python -m jcompose.bench train --config=configs/<method>.py[:variant]`: the method's jit train
step (after compile) on one fixed batch: step time, img/s, MFU from XLA-counted FLOPs, peak device
memory, compile time, and the method's PyTorch reference step (`torch_train.py`'s registry) on the
same weights and batch in the same run, with the ratio.

The PyTorch step runs first and frees its memory before jcompose's compiles, so each gets the
device to itself (with XLA_PYTHON_CLIENT_PREALLOCATE=false, which `bench` sets when unset).
"""

from __future__ import annotations

import argparse
import ast
import tempfile
import time
from typing import Any

import jax

from jcompose import parallel
from jcompose.bench import timing, torch_train, weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/denoise.py", help="configs/<method>.py[:variant]")
    parser.add_argument("--model", choices=("tiny", "sd15"), default=None,
                        help="tiny (default on CPU) or the full SD 1.5 architecture with random weights")
    parser.add_argument("--base", default=None, help="a base folder written beforehand (`bench prepare`)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    parser.add_argument("--per-device-batch", type=int, default=None, help="batch per device (overrides --batch)")
    parser.add_argument("--size", type=int, default=None, help="image size (default: tiny 64, sd15 512)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override, e.g. --set train.remat=True (repeatable)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference step")


def parse_override(text: str) -> tuple[str, Any]:
    """'train.remat=True' -> ('train.remat', True); values are Python literals, else strings."""
    field, equals, value = text.partition("=")
    if not equals or not field.strip():
        raise ValueError(f"--set {text!r}: expected FIELD=VALUE, e.g. --set train.remat=True")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return field.strip(), parsed


def apply_overrides(config, overrides: dict[str, Any], source: str) -> None:
    """Sets dotted `overrides` on `config`, each checked to name a field (`source` names them in errors)."""
    from configs import common

    for field, value in overrides.items():
        common.check_override(config, field, flag=source)
        *groups, leaf = field.split(".")
        node = config
        for group in groups:
            node = node[group]
        try:
            node[leaf] = value
        except TypeError as err:
            raise common.ConfigError(f"{source}.{field} = {value!r}: {err}") from err


def configure(config, args: argparse.Namespace, base_folder, devices: int, on_accelerator: bool) -> None:
    """The benchmarked config, in place: the method's reference overrides, `--set`, the base folder, image
    size, batch (per device x `devices`), one micro-batch, bf16 for the full model on an accelerator
    (`bench suite`'s plan part builds the same config to predict this step's memory)."""
    from configs import common

    reference = torch_train.reference_for(config.method)
    apply_overrides(config, reference.overrides if reference else {}, "bench overrides")
    apply_overrides(config, dict(parse_override(s) for s in args.set), "--set")
    config.model.base = str(base_folder)
    config.data.image_size = args.size or (512 if args.model == "sd15" else 64)
    if args.per_device_batch:
        config.train.batch_size = args.per_device_batch * devices
    elif args.batch:
        config.train.batch_size = args.batch
    config.train.grad_accum = 1
    if on_accelerator and args.model == "sd15":
        config.compute_dtype = "bfloat16"
    common.validate(config)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The train benchmark's report (see the module doc)."""
    from configs import common
    from input_pipeline.pipeline import make_iterator
    from jcompose import methods, train

    config = common.load(args.config)
    reference = torch_train.reference_for(config.method)
    on_accelerator = jax.default_backend() != "cpu"
    architecture = (reference and reference.base) or weights.architecture_of(config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = weights.base_folder(args, tmp, architecture)
        configure(config, args, folder, jax.device_count(), on_accelerator)
        mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
        method = methods.build(config)
        state, frozen, tx, _ = train.init_state(config, method, mesh, tmp)
        local = next(make_iterator(method.make_source(), method.make_transform(),
                                   per_process_batch=config.train.batch_size // jax.process_count(), seed=0))
        batch = parallel.global_batch(local, mesh)
        report: dict[str, Any] = {
            "config": args.config, "method": config.method, "model": args.model, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "dtype": config.compute_dtype,
            "size": config.data.image_size, "batch": config.train.batch_size,
            "per_device_batch": config.train.batch_size // jax.device_count(), "remat": bool(config.train.remat),
            "repeats": args.repeats,
        }
        if not args.no_torch:
            report.update(_torch_reference(reference, folder, local, config, args.repeats))

        models = int(getattr(method, "num_models", 1))
        if models != 1:
            raise ValueError(f"{args.config}: the config trains {models} models at once; bench train times one "
                             "(e.g. --set data.objects='(\"murecom:Toy/fg1\",)')")
        step = jax.jit(train.make_train_step(method, tx, config), donate_argnums=(0,))
        start = time.perf_counter()
        compiled, compile_s, flops = timing.compile_timed(step, state, frozen, batch)
        timing.log(f"  jcompose {config.method} step compiled in {compile_s:.1f} s "
                   f"(lowering included: {time.perf_counter() - start:.1f} s)")
        holder = {"state": state}

        def one_step():
            holder["state"], metrics = compiled(holder["state"], frozen, batch)
            return metrics

        seconds = timing.back_to_back_seconds(one_step, args.repeats)
        report.update({
            "compile_s": compile_s, "step_s": seconds, "img_per_s": config.train.batch_size / seconds,
            "tflop_per_step": flops / 1e12,
            "mfu": timing.mfu(flops, seconds, parallel.peak_flops(), jax.device_count()),
            "peak_memory_gib": timing.peak_memory_gib(),
        })
        report["speedup_vs_torch"] = timing.ratio(report.get("torch_step_s"), seconds)
        report["note"] = "" if on_accelerator or args.model == "tiny" else "full-size model timed off-accelerator"
    return report


def _torch_reference(reference, folder, local: dict, config, repeats: int) -> dict[str, Any]:
    """{'torch_step_s', 'torch_peak_memory_gib'} of the registered reference (None values when
    the method has none or torch is missing), its device memory freed afterwards."""
    import importlib.util

    if reference is None or importlib.util.find_spec("torch") is None:
        why = "no PyTorch reference registered" if reference is None else "torch is not installed"
        return {"torch_step_s": None, "torch_note": why}
    import gc

    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        seconds = reference.step_seconds(folder, local, config, repeats)
    except Exception as err:  # noqa: BLE001 - e.g. PyTorch out of memory at a batch jcompose fits: keep jcompose's row
        out = {"torch_step_s": None, "torch_error": f"PyTorch step failed: {type(err).__name__}: {err}"[:500]}
        timing.log(f"  {out['torch_error']}")
    else:
        out = {"torch_step_s": seconds,
               "torch_peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
        timing.log(f"  PyTorch {config.method} step: {seconds:.4f} s")
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out
