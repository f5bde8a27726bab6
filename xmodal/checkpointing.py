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
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

CONFIG_FILE = "config.json"  # WORKDIR/config.json: everything a run did
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
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE]


def model_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config fields that fix the shapes of a checkpoint."""
    flat = {f"model.{k}": v for k, v in _flatten(config.model.to_dict()).items()}
    flat["data.image_size"] = config.data.image_size
    return flat


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuse to resume or evaluate a checkpoint made by a different model, naming the fields."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = ml_collections.ConfigDict(json.load(f))
    ours, theirs = model_fields(config), model_fields(saved)
    diffs = [
        f"{k}: checkpoint has {theirs.get(k)!r}, this run has {ours.get(k)!r}"
        for k in sorted(set(ours) | set(theirs))
        if ours.get(k) != theirs.get(k)
    ]
    if diffs:
        raise ValueError(
            f"the checkpoints in {workdir!r} were made by another model configuration "
            f"({saved.get('method')}:{saved.get('preset')}):\n  " + "\n  ".join(diffs)
        )
