"""Benchmarks: `python -m jcompose.bench sample|train|data|eval|numerics|prepare|suite ...`.

One module per benchmark, each with `add_arguments(parser)` and `run(args) -> dict`:

* `sample`: a full CFG sample (50 DDIM steps, VAE decode) vs diffusers PyTorch; control overheads.
* `train`: a method's jit train step vs its PyTorch reference step (`torch_train`'s registry).
* `data`: a method's input pipeline, examples/s per worker and workers needed per host.
* `eval`: the evaluation feature extractors' images/s vs their PyTorch references.
* `numerics`: bf16 UNet/ControlNet vs fp32, fused (cuDNN) vs explicit attention.
* `prepare`: random-weight base folders, the environment and the measured matmul ceiling.
* `suite`: all of them, time-boxed, into `DIR/report.md` and `DIR/report.json`.

Shared: `timing` (timers, XLA-counted FLOPs, peak memory, MFU, report writer), `weights` (the full
SD 1.5 architecture with random weights). Nothing here imports torch or diffusers at import time:
the PyTorch references import them inside their functions.
"""


def main(argv: list[str] | None = None) -> int:
    """The command line (`jcompose.bench.commands.main`): runs one benchmark, prints its report."""
    from jcompose.bench.commands import main as run_main

    return run_main(argv)
