"""Orbax checkpoints of the train state together with the Grain iterator position.

One `CheckpointManager` per workdir: async saves, the latest `keep` checkpoints plus the best one by
validation recall kept, restore onto any device count through target shardings on the abstract
state, and the data iterator saved in the same `Composite` so a resume continues at the same batch.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = "val_recall@1"
STATE = "state"
DATA = "data"


def _best_fn(metrics: dict[str, float]) -> float:
    return float(metrics[BEST_METRIC])


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        best_fn=_best_fn,
        best_mode="max",
        preservation_policy=policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=max(keep, 1)),
                policies.BestN(get_metric_fn=_best_fn, n=1, keep_checkpoints_without_metrics=False),
            ]
        ),
        enable_async_checkpointing=not read_only,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        item_names=(STATE, DATA),
        options=options,
    )


class FrozenIteratorState:
    """Stands in for a data iterator at save time: hands Grain's handler a captured position
    (serialised the way Grain's handler expects from a non-dataset iterator)."""

    def __init__(self, state: Any):
        self._state = state

    def get_state(self) -> bytes:
        return json.dumps(self._state, indent=2).encode()


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_state: Any | None,
    metrics: dict[str, float] | None = None,
) -> None:
    """Save asynchronously; `data_state` is the iterator position after the last consumed batch."""
    items = {STATE: ocp.args.StandardSave(state)}
    if data_state is not None:
        items[DATA] = grain.checkpoint.CheckpointSave(FrozenIteratorState(data_state))
    manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def select_step(manager: ocp.CheckpointManager, which: str | int = "best") -> int:
    """'best' (falls back to latest when no step has metrics), 'latest', or an explicit step."""
    steps = list(manager.all_steps())
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {manager.directory}")
    if str(which) == "latest":
        return int(manager.latest_step())
    if str(which) == "best":
        with_metrics = [s for s in steps if manager.metrics(s)]
        return int(manager.best_step()) if with_metrics else int(manager.latest_step())
    step = int(which)
    if step not in steps:
        raise FileNotFoundError(
            f"no checkpoint at step {step} in {manager.directory}; have {steps}"
        )
    return step


def restore(
    manager: ocp.CheckpointManager,
    step: int,
    abstract_state: Any,
    data_iterator: Any | None = None,
) -> Any:
    """Restore the state onto the shardings carried by `abstract_state` (ShapeDtypeStructs with
    `sharding=`), and the data iterator in place when given."""
    items = {STATE: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
        items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except ValueError as e:
        diffs = shape_mismatches(manager, step, abstract_state)
        if not diffs:
            raise
        raise ValueError(
            f"the checkpoint at step {step} in {manager.directory} does not fit this model "
            "configuration (made by another model or config?); parameters that differ:\n  "
            + "\n  ".join(diffs[:20])
            + (f"\n  ... and {len(diffs) - 20} more" if len(diffs) > 20 else "")
        ) from e
    return restored[STATE]


def _path_name(path: tuple) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    if parts and parts[-1] == "value":  # nnx Variable's payload: noise in a parameter name
        parts.pop()
    return ".".join(parts)


def shape_mismatches(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> list[str]:
    """'name: checkpoint has (a, b), this model has (c, d)' for every leaf whose shape differs
    (or that exists on one side only), read from the checkpoint's metadata."""
    import jax

    stored_tree = manager.item_metadata(step)[STATE]
    stored = {
        _path_name(p): tuple(getattr(m, "shape", ()) or ())
        for p, m in jax.tree_util.tree_flatten_with_path(stored_tree)[0]
    }
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    # PRNG keys are stored as raw key data (another shape): not a model difference.
    keys = {_path_name(p) for p, a in leaves if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)}
    wanted = {_path_name(p): tuple(a.shape) for p, a in leaves if _path_name(p) not in keys}
    stored = {k: v for k, v in stored.items() if k not in keys}
    diffs = []
    for name in sorted(set(stored) | set(wanted)):
        a, b = stored.get(name), wanted.get(name)
        if a != b:
            fmt = lambda s: "nothing" if s is None else str(s)
            diffs.append(f"{name}: checkpoint has {fmt(a)}, this model has {fmt(b)}")
    model_diffs = [d for d in diffs if not d.startswith("opt_state.")]
    return model_diffs or diffs  # the optimizer moments repeat the parameters' differences
