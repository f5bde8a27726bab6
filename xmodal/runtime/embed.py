"""The one loop that runs a model over a prepared split: eval mode, batch-sharded over every
device of every process, results gathered in record order.

Validation, `--mode=eval|embed`, search galleries and CCA's features all go through it; what is
computed per batch is a method of the model (`DualEncoder.embed_pairs` by default; CCA:
`DualEncoder.branch_features`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from xmodal.data import pipeline, schema
from xmodal.models.dual_encoder import DualEncoder
from xmodal.runtime import distributed, sharding
from xmodal.runtime.state import StateLayout, TrainState, in_eval_mode

BatchFn = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]


def eval_jit(
    layout: StateLayout,
    mesh: Any,
    fn: Callable[..., Any],
    num_inputs: int = 1,
    *,
    out_sharded: bool = False,
) -> Callable[..., Any]:
    """jit of `(params, model_state, *inputs) -> fn(model in eval mode, *inputs)` with the
    state's own shardings (a data-parallel or FSDP state goes in as it was trained) and every
    input split by rows over the data axis; `out_sharded`: the outputs stay split by rows too."""
    data = sharding.batch_sharding(mesh)
    return jax.jit(
        in_eval_mode(layout.graphdef, fn),
        in_shardings=(layout.shardings.params, layout.shardings.model_state) + (data,) * num_inputs,
        out_shardings=data if out_sharded else None,
    )


def in_fixed_batches(fn: Callable[..., Any], arrays: Sequence[np.ndarray], size: int) -> Any:
    """`fn(*chunk)` over the rows of host arrays in batches of `size` (the last padded with
    zeros, so one compiled program serves every call and every length); the outputs as host
    arrays, concatenated without the padding."""
    n, outs = len(arrays[0]), []
    for start in range(0, n, size):
        chunk = [a[start : start + size] for a in arrays]
        real = len(chunk[0])
        chunk = [np.concatenate([c, np.zeros((size - real, *c.shape[1:]), c.dtype)]) for c in chunk]
        outs.append(jax.tree.map(lambda x, m=real: np.asarray(x)[:m], fn(*chunk)))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


class Embedder:
    """`outputs(model, batch) -> {name: [B, ...]}` over a split, jit-compiled with the state's
    own shardings (a data-parallel or FSDP state goes in as it was trained)."""

    def __init__(self, layout: StateLayout, mesh: Any, outputs: BatchFn = DualEncoder.embed_pairs):
        self.mesh = mesh
        self._run = eval_jit(layout, mesh, outputs, out_sharded=True)
        self._programs: dict[Any, Any] = {}

    def _compiled(self, params: Any, model_state: Any, batch: dict[str, jax.Array]) -> Any:
        """`self._run`, compiled together by every process for each batch shape (eval batches
        all have one) so that none enters its collectives alone (`distributed.compile_together`)."""
        key = tuple(sorted((k, x.shape, x.dtype) for k, x in batch.items()))
        if key not in self._programs:
            self._programs[key] = distributed.compile_together(
                self._run, "the embed step", params, model_state, batch
            )
        return self._programs[key](params, model_state, batch)

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
            out = self._compiled(state.params, state.model_state, batch)
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
