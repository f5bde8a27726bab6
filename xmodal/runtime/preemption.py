"""Stopping a run cleanly on request: SIGTERM (a scheduler's preemption notice) or SIGINT
(Ctrl-C) ends training after the current step with a checkpoint, so rerunning the same command
resumes at that step.

One process: a signal handler sets a flag that the loop reads after each step (a Python bool, no
device sync). Several processes (`jax.distributed`): all must stop at the same step, or the next
step's collectives hang on the ones that stopped. JAX's coordination service installs its own
SIGTERM notifier and agrees on that step for every process
(`multihost_utils.reached_preemption_sync_point`, what Orbax's `reached_preemption` calls), so
SIGTERM is left to it and SIGINT is passed on to it as a SIGTERM to this process.
A second Ctrl-C acts at once (the handler that was there before: KeyboardInterrupt). A repeated
SIGTERM changes nothing: schedulers may deliver one to a process through several paths (SLURM
signals the tasks and the `srun` that forwards to them), and it must not cut the checkpoint
short; their SIGKILL after the grace time (KillWait) is the hard stop.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import jax
from jax.experimental import multihost_utils


def _synced() -> bool:
    """Whether JAX's preemption service decides the stop step (a multi-process job)."""
    return (
        jax.process_count() > 1
        and jax.distributed.is_initialized()
        and bool(jax.config.jax_enable_preemption_service)
    )


class StopSignal:
    """`with StopSignal(start) as stop:` ... `if stop.reached(step):` save and leave.

    `start`: the step training resumes from (the preemption service needs every process to count
    from the same step). Handlers are installed only in the main thread and restored on exit.
    """

    def __init__(self, start: int = 0):
        self.start = start
        self.received: str | None = None  # the signal's name, once one arrived
        self.synced = _synced()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only
        handled = (signal.SIGINT,) if self.synced else (signal.SIGINT, signal.SIGTERM)
        for sig in handled:
            self._previous[sig] = signal.signal(sig, self._handle)
        if self.synced:  # a notice before the first step must not agree on a step < start + 1
            multihost_utils.reached_preemption_sync_point(self.start)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig in list(self._previous):
            self._restore(sig)

    def _restore(self, sig: int) -> None:
        if sig not in self._previous:
            return
        previous = self._previous.pop(sig)
        # None: a handler installed outside Python, which Python cannot put back.
        signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signal.Signals(signum).name
        if signum == signal.SIGINT:
            self._restore(signum)  # a second Ctrl-C acts at once
        if self.synced:  # JAX's SIGTERM notifier tells every process of the job
            os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step` (every process of a job agrees on it)."""
        if self.synced:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None

    def reason(self) -> str:
        return self.received or "a preemption notice (SIGTERM)"
