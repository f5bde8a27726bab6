"""Joining a multi-process JAX job: one process per host (or per GPU), all forming one mesh.

Three ways to launch, checked in this order:
1. Explicit: JAX_COORDINATOR_ADDRESS=host:port with JAX_NUM_PROCESSES and JAX_PROCESS_ID (or the
   flags --coordinator_address / --num_processes / --process_id of `xmodal.main`). JAX itself
   reads only the address from the environment, so the count and the id are passed here.
2. A cluster JAX detects by itself: SLURM under `srun`, Open MPI's `mpirun`, and the other
   environments of `jax.distributed.initialize()`'s cluster detection.
3. Neither: one process, nothing to join.
On CPU the cross-process collectives go over gloo (TCP), so a job of several processes runs on
one machine too (tests/test_multiprocess.py).
"""

from __future__ import annotations

import os

import jax

CLUSTER_MARKERS = ("SLURM_STEP_ID", "OMPI_COMM_WORLD_SIZE")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join the job this process was launched into, if any (see the module docstring)."""
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if address:
        if num_processes is None or process_id is None:
            raise ValueError(
                f"joining the job at {address} needs the number of processes and this process's "
                "id: set JAX_NUM_PROCESSES and JAX_PROCESS_ID (or --num_processes and "
                "--process_id)"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process id {process_id} is not in [0, {num_processes})")
        jax.distributed.initialize(
            coordinator_address=address, num_processes=num_processes, process_id=process_id
        )
    elif any(os.environ.get(m) for m in CLUSTER_MARKERS):
        jax.distributed.initialize()
