"""Scalars to `WORKDIR/metrics.jsonl` (one JSON object per line) and TensorBoard event files.

tensorboardX writes event files without TensorFlow (clu's writers import it). Only process 0 writes.
A resumed run first forgets what an earlier attempt logged after the step it resumes from (that
attempt got further than its last checkpoint), so no step appears twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"
NONFINITE = "nonfinite"  # step metric: 1 when the step's loss or gradient was not finite
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
    def __init__(self, workdir: str, *, start_step: int = 0):
        """`start_step`: the step training starts or resumes from; rows and TensorBoard events
        of later steps, left by an earlier attempt, are dropped."""
        self._active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._active:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, METRICS_FILE)
            drop_rows_after(path, start_step)
            self._jsonl = open(path, "a")  # noqa: SIM115
            # TensorBoard's own restart mechanism: a SessionLog.START event at purge_step hides
            # every earlier-written event of that step or later. The suffix keeps a writer from
            # overwriting the file of one opened in the same second (names carry whole seconds).
            self._tb = SummaryWriter(
                os.path.join(workdir, TENSORBOARD_DIR),
                purge_step=start_step + 1,
                filename_suffix=f".{os.getpid()}.{start_step}",
            )

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._active:
            return
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))
        self._tb.flush()

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """One uint8 [H, W, 3] picture to TensorBoard (not to metrics.jsonl)."""
        if self._active:
            self._tb.add_image(tag, image, int(step), dataformats="HWC")
            self._tb.flush()

    def close(self) -> None:
        if self._active:
            self._jsonl.close()
            self._tb.close()


def drop_rows_after(path: str, step: int) -> None:
    """Rewrite `path` (atomically: a crash leaves the old or the new file) without the rows of
    steps after `step`, and without a line cut short by a crash mid-write."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if _row_step(line) is not None and _row_step(line) <= step]
    if len(kept) == len(lines):
        return
    with open(path + ".tmp", "w") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for line in kept)
    os.replace(path + ".tmp", path)


def _row_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """All rows of `metrics.jsonl` (for tests and tools)."""
    path = os.path.join(workdir, METRICS_FILE)
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
