"""Orbax checkpoints of the train state together with the Grain iterator position.

One `CheckpointManager` per workdir: async saves, the latest `keep` checkpoints plus the best one by
validation recall kept, restore onto any device count through target shardings on the abstract
state, and the data iterator saved in the same `Composite` so a resume continues at the same batch.
A resume whose newest checkpoint does not restore (files cut short by a crash or a full disk)
falls back to the one before, saying so, and moves the bad one aside.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from xmodal.runtime import distributed

BEST_METRIC = "val_recall@1"
STATE = "state"
DATA = "data"
UNREADABLE_DIR = "checkpoints_unreadable"  # WORKDIR/checkpoints_unreadable/<step>: moved aside


class CheckpointMismatchError(ValueError):
    """The checkpoint was made by another model configuration (no other step will fit either)."""


def _best_fn(metrics: dict[str, float]) -> float:
    """The keep-best score; a missing or non-finite recall ranks below every real one."""
    value = float(metrics.get(BEST_METRIC, math.nan))
    return value if math.isfinite(value) else -math.inf


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(
    workdir: str, *, keep: int | None, read_only: bool = False
) -> ocp.CheckpointManager:
    """WORKDIR's checkpoints: the latest `keep` (`train.keep_checkpoints`) and the best by
    validation recall are kept; `read_only` (`keep=None`) opens them to restore."""
    if keep is None and not read_only:
        raise ValueError("a writable checkpoint manager needs keep (train.keep_checkpoints)")
    options = ocp.CheckpointManagerOptions(
        best_fn=_best_fn,
        best_mode="max",
        preservation_policy=policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=max(keep or 1, 1)),
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
    """Save asynchronously; `data_state` is the iterator position after the last consumed batch.

    Metrics whose recall is not finite are not stored: such a step can never be the best one
    (`select_step('best')` then ignores it as it ignores steps saved without validation).
    """
    items = {STATE: ocp.args.StandardSave(state)}
    if data_state is not None:
        items[DATA] = grain.checkpoint.CheckpointSave(FrozenIteratorState(data_state))
    if metrics is not None and not math.isfinite(float(metrics.get(BEST_METRIC, math.nan))):
        metrics = None
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
        try:
            diffs = shape_mismatches(manager, step, abstract_state)
        except Exception:  # unreadable metadata: the restore's own error says more
            diffs = []
        if not diffs:
            raise
        raise CheckpointMismatchError(
            f"the checkpoint at step {step} in {manager.directory} does not fit this model "
            "configuration (made by another model or config?); parameters that differ:\n  "
            + "\n  ".join(diffs[:20])
            + (f"\n  ... and {len(diffs) - 20} more" if len(diffs) > 20 else "")
        ) from e
    return restored[STATE]


def restore_newest(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: Any | None = None
) -> tuple[int, Any] | None:
    """(step, state) of the newest checkpoint that restores, the data iterator with it; None
    when there is none. A step that fails is named in a warning and moved to
    WORKDIR/checkpoints_unreadable/ (a later save of that step must not collide with it);
    when no step restores, an error names each one and why. Never a silent fresh start."""
    failed: dict[int, str] = {}
    for step in sorted(manager.all_steps(), reverse=True):
        restored = _try_restore(manager, step, abstract_state, data_iterator)
        if isinstance(restored, str):  # why it failed (a state is never a string)
            failed[step] = restored
            if jax.process_index() == 0:
                print(
                    f"warning: the checkpoint at step {step} in {manager.directory} does not "
                    f"restore ({restored}); trying the one before",
                    flush=True,
                )
            continue
        _move_aside(manager, list(failed))
        return step, restored
    if failed:
        raise RuntimeError(
            f"no checkpoint in {manager.directory} restores:\n  "
            + "\n  ".join(f"step {step}: {why}" for step, why in failed.items())
            + "\nmove them away to start this run over, or use another --workdir"
        )
    return None


def _try_restore(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iterator: Any | None
) -> Any | str:
    """The state, or why the checkpoint of `step` does not restore. The processes of a job agree:
    one process's bad file fails the step for all, so that they all resume at the same step."""
    try:
        result: Any | str = restore(manager, step, abstract_state, data_iterator)
    except CheckpointMismatchError:
        raise  # another model: every step would fail the same way
    except Exception as e:  # whatever a cut-short or corrupt file raises (tensorstore, json, OS)
        lines = str(e).strip().splitlines()
        result = f"{type(e).__name__}: {lines[0][:300] if lines else ''}"
    if jax.process_count() > 1:
        ok = multihost_utils.process_allgather(np.asarray(not isinstance(result, str)))
        if not np.all(ok) and not isinstance(result, str):
            result = "another process of the job could not restore it"
    return result


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Move unreadable step folders to WORKDIR/checkpoints_unreadable/ (process 0 moves)."""
    if not steps:
        return
    aside = os.path.join(os.path.dirname(str(manager.directory)), UNREADABLE_DIR)
    if jax.process_index() == 0:
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            target = os.path.join(aside, str(step))
            while os.path.exists(target):
                target += "+"
            os.rename(os.path.join(str(manager.directory), str(step)), target)
            print(
                f"warning: moved the unreadable checkpoint of step {step} to {target}", flush=True
            )
    distributed.wait_for_all("unreadable checkpoints moved aside")
    manager.reload()


def path_name(path: tuple) -> str:
    """A pytree path as a dotted name (`params.image_encoder.fc.kernel`), as the checkpoint
    metadata and the train state both name a leaf."""
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
    (or that exists on one side only), read from the checkpoint's metadata; [] when the two
    trees share no name (metadata that could not be read, e.g. after a failed restore)."""
    stored_tree = manager.item_metadata(step)[STATE]
    stored = {
        path_name(p): tuple(getattr(m, "shape", ()) or ())
        for p, m in jax.tree_util.tree_flatten_with_path(stored_tree)[0]
    }
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    # PRNG keys are stored as raw key data (another shape): not a model difference.
    keys = {path_name(p) for p, a in leaves if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)}
    wanted = {path_name(p): tuple(a.shape) for p, a in leaves if path_name(p) not in keys}
    stored = {k: v for k, v in stored.items() if k not in keys}
    if not set(stored) & set(wanted):  # metadata not read as this kind of tree: nothing to compare
        return []
    diffs = []
    for name in sorted(set(stored) | set(wanted)):
        a, b = stored.get(name), wanted.get(name)
        if a != b:
            fmt = lambda s: "nothing" if s is None else str(s)
            diffs.append(f"{name}: checkpoint has {fmt(a)}, this model has {fmt(b)}")
    model_diffs = [d for d in diffs if not d.startswith("opt_state.")]
    return model_diffs or diffs  # the optimizer moments repeat the parameters' differences
