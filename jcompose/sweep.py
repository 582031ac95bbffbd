"""`python -m jcompose.sweep list|run|collect|tpu ...`: ablation sweeps (the code is in jcompose/sweeps/).

Sweep files import their helpers from here or from `jcompose.sweeps`:

    from jcompose.sweep import Variant, grid, zip_runs
"""

import sys

from jcompose.sweeps.cli import main, tpu_commands
from jcompose.sweeps.collect import collect, format_table
from jcompose.sweeps.spec import Variant, grid, load_sweep, run_name, train_flags, zip_runs

__all__ = ["Variant", "collect", "format_table", "grid", "load_sweep", "main", "run_name", "tpu_commands",
           "train_flags", "zip_runs"]

if __name__ == "__main__":
    sys.exit(main())
