"""`model.init_from=WORKDIR`: a new run starts from the model weights of another run's
checkpoint (a trained run, or a released checkpoint imported by `xmodal.apps.import_checkpoint`).

Only the model is taken (parameters and batch statistics): the step, the optimizer state, the
data position and the RNG streams stay the new run's own. The checkpoint must be of the same
architecture, parameter for parameter; the first that differs is named with both shapes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from xmodal.runtime import checkpointing

MODEL_PARTS = ("params.", "model_state.")  # what is taken; opt_state, step, rng are not


def read_model_arrays(
    workdir: str, sharding: jax.sharding.Sharding, which: str | int = "best"
) -> tuple[int, dict[str, Any]]:
    """(step, {name: array}) of the model parts of WORKDIR's checkpoint `which` (best, else
    latest), every array restored with `sharding` (this run's replicated one) whatever devices
    wrote it."""
    manager = checkpointing.make_manager(workdir, keep=None, read_only=True)
    try:
        step = checkpointing.select_step(manager, which)
        stored = manager.item_metadata(step)[checkpointing.STATE]
        like = lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding)
        target = jax.tree.map(like, stored)
        restore = ocp.args.StandardRestore(target, fallback_sharding=sharding)
        args = ocp.args.Composite(**{checkpointing.STATE: restore})
        restored = manager.restore(step, args=args)[checkpointing.STATE]
    finally:
        manager.close()
    leaves = jax.tree_util.tree_flatten_with_path(restored)[0]
    named = {checkpointing.path_name(p): v for p, v in leaves}
    return step, {k: v for k, v in named.items() if k.startswith(MODEL_PARTS)}


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def architecture_differences(stored: dict[str, Any], abstract_state: Any) -> list[str]:
    """'name: checkpoint has S, this model has T' for each model array that differs in shape
    or exists on one side only, sorted by name (RNG stream keys are the run's own: skipped)."""
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    ours = {
        checkpointing.path_name(p): tuple(a.shape)
        for p, a in leaves
        if checkpointing.path_name(p).startswith(MODEL_PARTS) and not _is_key(a)
    }
    keys = {checkpointing.path_name(p) for p, a in leaves if _is_key(a)}
    theirs = {k: tuple(np.shape(v)) for k, v in stored.items() if k not in keys}
    fmt = lambda s: "nothing" if s is None else str(s)
    return [
        f"{name}: checkpoint has {fmt(theirs.get(name))}, this model has {fmt(ours.get(name))}"
        for name in sorted(set(ours) | set(theirs))
        if ours.get(name) != theirs.get(name)
    ]


def read_checked(workdir: str, abstract_state: Any) -> dict[str, Any]:
    """The model arrays of WORKDIR's best (else latest) checkpoint, checked against this run's
    abstract state before anything is initialised: a ValueError naming the first parameter that
    differs (and how many do) when WORKDIR's model is another architecture."""
    try:
        # the step counter is replicated in every layout (runtime.state.state_shardings)
        step, stored = read_model_arrays(workdir, abstract_state.step.sharding)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model.init_from={workdir!r}: {e}") from None
    diffs = architecture_differences(stored, abstract_state)
    if diffs:
        raise ValueError(
            f"model.init_from={workdir!r}: its checkpoint (step {step}) is of another "
            f"architecture: {diffs[0]} ({len(diffs)} model arrays differ; the model fields of "
            "this config must be those of the run that wrote it, see its config.json)"
        )
    if jax.process_index() == 0:
        print(f"[xmodal] model initialised from {workdir} (step {step})", flush=True)
    return stored


def apply(state: Any, stored: dict[str, Any], shardings: Any) -> Any:
    """`state` (a fresh one) with its parameters and batch statistics from `stored`
    (`read_checked`), in `shardings`; its step, optimizer state and RNG keys kept."""

    def take(path: Any, ours: Any) -> Any:
        name = checkpointing.path_name(path)
        if not name.startswith(MODEL_PARTS) or _is_key(ours):
            return ours
        return stored[name].astype(ours.dtype)  # on device: no host round trip

    return jax.device_put(jax.tree_util.tree_map_with_path(take, state), shardings)
