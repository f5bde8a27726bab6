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

Work that one process does alone, or faster than the others, is kept out of the collectives'
way: a collective waits only so long for its peers (gloo: 30 s to set up a communicator), while
one process may build the built-in dataset alone, or get a program from the persistent
compilation cache (which JAX fills from process 0 only) while another compiles it for minutes.
`wait_for_all` is a barrier of the coordination service instead (its key-value store over TCP,
no collective, no 30 s limit), and `compile_together` compiles a jitted function ahead of its
first call and waits there, so every process enters the program's first collective together.

A process that dies takes the job down within a bounded time, never a hang: its peers' next
collective fails at once (the connection is gone), and JAX's coordination service, which
misses its heartbeats for `heartbeat_timeout_s`, ends every other process (also one waiting at
a barrier). `failing_together` makes a process that fails exit at once after printing why,
rather than wait at JAX's shutdown barrier for peers that are stuck waiting for it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

CLUSTER_MARKERS = ("SLURM_STEP_ID", "OMPI_COMM_WORLD_SIZE")
# How long a process waits at a barrier for the others (a compile of the paper-size step on a
# slow host, building the built-in dataset): past it, the job fails naming the barrier instead
# of hanging.
BARRIER_TIMEOUT_S = 30 * 60
# JAX's default: a process whose heartbeats stop for this long is dead, and the job ends.
HEARTBEAT_TIMEOUT_S = 100
_barriers: collections.Counter[str] = collections.Counter()


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
) -> None:
    """Join the job this process was launched into, if any (see the module docstring).
    `heartbeat_timeout_s`: how long a silent process counts as alive (a longer one tolerates
    a host that stalls; a shorter one ends a job with a dead host sooner)."""
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
            coordinator_address=address,
            num_processes=num_processes,
            process_id=process_id,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
        )
    elif any(os.environ.get(m) for m in CLUSTER_MARKERS):
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)
    else:  # one process: nothing joined, and the backend is left to initialise later
        return
    if jax.process_count() > 1 and jax.default_backend() == "cpu":
        without_cached_executables()


def without_cached_executables() -> None:
    """Turn the persistent compilation cache off for this CPU process of a multi-process job.

    JAX's CPU cache keys differ between processes and only process 0 writes, so with a warm
    cache process 0 runs an executable read back from disk beside its peers' fresh compiles.
    Where such a program has a collective inside a loop (an LSTM's scan over FSDP-sharded
    weights: ACME, im2recipe), process 0's two devices waited in different collectives (one in
    the loop's all-gather, the other in an all-reduce) and the job hung in its first step; with
    every process compiling, it runs (tests/test_multiprocess.py). GPUs keep the cache (seen
    with CPU executables and gloo only).
    Called before the first compilation: JAX decides whether to use the cache once."""
    jax.config.update("jax_enable_compilation_cache", False)
    if jax.process_index() == 0:
        print(
            "[xmodal] several CPU processes: the persistent compilation cache is off (an "
            "executable read from it deadlocks beside fresh compiles in looped collectives)",
            flush=True,
        )


def wait_for_all(name: str, *, timeout_s: int = BARRIER_TIMEOUT_S) -> float:
    """Block until every process of the job has reached the barrier `name` (called in the same
    order by every process; a name may repeat). Returns the seconds waited; no-op in a job of
    one process. A process that never arrives (it died, or hangs) fails the others after
    `timeout_s` with an error naming the barrier."""
    if jax.process_count() == 1:
        return 0.0
    _barriers[name] += 1
    key = f"xmodal/{name}/{_barriers[name]}"
    start = time.perf_counter()
    try:
        ocp.multihost.get_jax_distributed_client().wait_at_barrier(
            key, timeout_in_ms=timeout_s * 1000
        )
    except Exception as e:  # the client raises XlaRuntimeError (DEADLINE_EXCEEDED, UNAVAILABLE)
        raise RuntimeError(
            f"process {jax.process_index()} of {jax.process_count()}: not every process reached "
            f"{name!r} within {timeout_s} s (another process died or hangs; see its log): {e}"
        ) from e
    waited = time.perf_counter() - start
    logging.info("waited %.1f s at %r for the other processes", waited, name)
    return waited


def compile_together(jitted: Any, name: str, *args: Any) -> Callable[..., Any]:
    """`jitted` compiled for `args` (its first call's arguments), then `wait_for_all`: no process
    enters the program (and its collectives) before every process can run it. One process:
    `jitted` itself, compiled on first call as usual."""
    if jax.process_count() == 1:
        return jitted
    compiled = jitted.lower(*args).compile()
    waited = wait_for_all(f"compiled {name}")
    if jax.process_index() == 0 and waited >= 1.0:
        print(f"[xmodal] waited {waited:.1f} s for every process to compile {name}", flush=True)
    return compiled


@contextlib.contextmanager
def failing_together() -> Iterator[None]:
    """Around a job's work: in a job of several processes, an error ends this process at once,
    printed, with exit status 1. Without it the process would wait at JAX's shutdown barrier for
    peers that wait for it in a collective, until the heartbeat timeout aborts everyone; with
    it the peers see it gone and stop too. One process: the error is raised as usual."""
    try:
        yield
    except Exception:
        if jax.process_count() == 1:
            raise
        traceback.print_exc()
        print(
            f"[xmodal] process {jax.process_index()} of {jax.process_count()} stops on the error "
            "above (a failed collective or barrier means another process stopped first: see its "
            "log); the others stop when they see it gone",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(1)  # not the shutdown barrier: the peers may never reach it
