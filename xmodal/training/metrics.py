"""Scalars to `WORKDIR/metrics.jsonl` (one JSON object per line) and TensorBoard event files.

tensorboardX writes event files without TensorFlow (clu's writers import it). Only process 0 writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str):
        self._active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._active:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self._active:
            return
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._active:
            self._jsonl.close()
            self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """All rows of `metrics.jsonl` (for tests and tools)."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
