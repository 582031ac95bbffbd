"""Starting a multi-host run (`train --multihost`): `jax.distributed.initialize` with its flags checked.

Every process of a TPU pod slice or a multi-node GPU job calls `start` before any JAX computation.
Settings left out are detected from the platform by JAX (TPU VMs, SLURM, Open MPI, Kubernetes).
"""

from __future__ import annotations

import re
import sys

import jax

from jcompose import cli


def start(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
    """`jax.distributed.initialize(...)` with the flags checked first; its failures become one InputError line."""
    if num_processes is not None and num_processes < 1:
        raise cli.InputError(f"--num_processes {num_processes}: expected a positive number of processes")
    if process_id is not None and not (0 <= process_id < (num_processes or sys.maxsize)):
        expected = f"0 to {num_processes - 1} (--num_processes {num_processes})" if num_processes else "0 or more"
        raise cli.InputError(f"--process_id {process_id}: expected {expected}")
    if coordinator_address is not None and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^\s:\[\]]+):\d{1,5}",
                                                             coordinator_address):
        raise cli.InputError(f"--coordinator_address {coordinator_address!r}: expected HOST:PORT of process 0")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (ValueError, RuntimeError) as err:  # missing settings jax could not detect, an unreachable coordinator
        raise cli.InputError(
            f"--multihost: jax.distributed.initialize failed: {cli.message(err)} (pass --coordinator_address=HOST:PORT "
            "of process 0, --num_processes and --process_id where the platform does not provide them)") from err
