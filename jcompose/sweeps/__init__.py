"""Ablation sweeps: a sweep file's variants, each trained, generated and evaluated, scheduled by Ray.

    spec.py       sweep files -> variants, training runs (grid, zip_runs, Variant)
    trial.py      training units (packed or not) and trials as stages of user commands
    stages.py     one stage: a subprocess with its log and markers (skip / resume / clear)
    packing.py    K variants as one K-model program, each written out as its own run
    scheduler.py  Ray tasks (local, GPU nodes, TPU slices) or one after another
    collect.py    the table with the paper's values; report.py: HTML + figures
    cli.py        python -m jcompose.sweep
"""

from jcompose.sweeps.spec import PACKABLE, Sweep, Variant, grid, load_sweep, run_name, train_flags, zip_runs

__all__ = ["PACKABLE", "Sweep", "Variant", "grid", "load_sweep", "run_name", "train_flags", "zip_runs"]
