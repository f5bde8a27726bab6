"""The one loop that runs a model over a prepared split: eval mode, batch-sharded over every
device of every process, results gathered in record order.

Validation, `--mode=eval|embed`, search galleries and CCA's features all go through it; what is
computed per batch is a method of the model (`DualEncoder.embed_pairs` by default; CCA:
`DualEncoder.branch_features`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from xmodal.data import pipeline, schema
from xmodal.models.dual_encoder import DualEncoder
from xmodal.runtime import sharding
from xmodal.runtime.state import StateLayout, TrainState

BatchFn = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]


class Embedder:
    """`outputs(model, batch) -> {name: [B, ...]}` over a split, jit-compiled with the state's
    own shardings (a data-parallel or FSDP state goes in as it was trained)."""

    def __init__(self, layout: StateLayout, mesh: Any, outputs: BatchFn = DualEncoder.embed_pairs):
        self.mesh = mesh
        graphdef = layout.graphdef

        def run(params: Any, model_state: Any, batch: dict[str, jax.Array]):
            model = nnx.merge(graphdef, params, model_state)
            model.eval()
            return outputs(model, batch)

        data = sharding.batch_sharding(mesh)
        self._run = jax.jit(
            run,
            in_shardings=(layout.shardings.params, layout.shardings.model_state, data),
            out_shardings=data,
        )

    def split(
        self,
        state: TrainState,
        data_dir: str,
        split: str,
        config: Any,
        *,
        limit: int | None = None,
    ) -> dict[str, np.ndarray]:
        """{name: [N, ...]} for the first `limit` records of `split`, in record order."""
        local_batch = sharding.check_batch_size(config.eval.batch_size, self.mesh)
        ds, n = pipeline.eval_dataset(
            data_dir,
            split,
            config.data,
            batch_size=local_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            limit=limit,
        )
        parts: dict[str, list[np.ndarray]] = {}
        for batch in sharding.DevicePrefetcher(iter(ds), self.mesh, config.data.prefetch):
            out = self._run(state.params, state.model_state, batch)
            out[schema.INDEX] = batch[schema.INDEX]
            valid = batch[schema.VALID]
            out, valid = multihost_utils.process_allgather((out, valid), tiled=True)
            for k, v in out.items():
                parts.setdefault(k, []).append(np.asarray(v)[np.asarray(valid)])
        indices = parts.pop(schema.INDEX)
        order = np.argsort(np.concatenate(indices), kind="stable")
        result = {k: np.concatenate(v)[order] for k, v in parts.items()}
        if len(order) != n:
            raise RuntimeError(f"embedded {len(order)} records of {split!r}, expected {n}")
        return result
