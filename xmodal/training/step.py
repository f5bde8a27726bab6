"""The train step: one pure function of (state, global batch), and the one place it is jitted
with its shardings and donation (as MaxText's train-step factory): the train loop, the
benchmarks and the tests all compile it through `compile_train_step`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from xmodal.runtime import sharding
from xmodal.runtime import state as state_lib
from xmodal.runtime.metrics import NONFINITE
from xmodal.training import accumulate, adversarial_step, losses

__all__ = ["NONFINITE", "TrainStep", "compile_train_step", "make_train_step"]

TrainStep = Callable[
    [state_lib.TrainState, dict[str, jax.Array]],
    tuple[state_lib.TrainState, dict[str, jax.Array]],
]


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    adversarial: state_lib.AdversarialNets | None = None,
) -> TrainStep:
    """Pure step: (state, global batch) -> (new state, scalar metrics).

    With `config.adversarial.enabled`, ACME's two-player step
    (`xmodal.training.adversarial_step`), given the networks' static half `adversarial`
    (`StateLayout.adversarial`, `state.adversarial_nets`).

    Every step reports `NONFINITE` = 1 when its loss or gradient is not finite; the loop reads
    the flag when it fetches metrics anyway (`loop.NonFiniteWatch`). The global gradient norm is
    non-finite exactly when some gradient is (or when the squares overflow float32, an update
    that clipping would zero anyway), so the flag costs no extra pass. Under
    `train.on_nonfinite='stop'` the loop raises before anything after the bad step is logged,
    evaluated or saved, so the step needs nothing more. Under 'skip' such a step leaves the state
    as it was (only `step` advances): a `jnp.where` over the state, which adds copies of the state
    to the compiled step, so only 'skip' pays for it. It keeps
    the optimizer state's structure, unlike `optax.apply_if_finite` (checkpoints restore under
    either policy), and also holds back the non-parameter state (batch statistics).
    """
    if config.adversarial.enabled:
        if adversarial is None:
            raise ValueError(
                "config.adversarial.enabled: the train step needs the adversarial networks' "
                "graph definitions and optimizers (runtime.state.adversarial_nets)"
            )
        return adversarial_step.make_adversarial_train_step(graphdef, tx, config, adversarial)
    loss_config = config.loss
    total_steps = config.train.num_steps
    schedule = state_lib.learning_rate_schedule(config.train)

    skip_nonfinite = config.train.on_nonfinite == "skip"
    num_micro = config.train.grad_accum_steps
    accumulate_fn = accumulate.accumulated_grads(config.train.grad_accum)

    def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array]):
        def loss_of_outputs(outputs, labelled):  # the margin schedule follows the step
            return losses.compute_losses(
                outputs, labelled, loss_config, step=state.step, total_steps=total_steps
            )

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.model_state, copy=True)
            model.train()
            nnx.reseed(model, dropout=jax.random.fold_in(state.rng, state.step))
            loss, metrics = loss_of_outputs(model(batch), batch)
            _, _, model_state = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, model_state)

        if num_micro > 1:  # batches larger than memory (xmodal.training.accumulate)
            grads, metrics, model_state = accumulate_fn(
                graphdef,
                state.params,
                state.model_state,
                jax.random.fold_in(state.rng, state.step),
                batch,
                loss_of_outputs,
                num_micro,
            )
        else:
            grads, (metrics, model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

        def if_finite(new, old):
            if not skip_nonfinite:  # 'stop' raises before a bad state is used (see above)
                return new
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = state.replace(
            step=state.step + 1,
            params=if_finite(optax.apply_updates(state.params, updates), state.params),
            model_state=if_finite(model_state, state.model_state),
            opt_state=if_finite(opt_state, state.opt_state),
        )
        metrics["learning_rate"] = schedule(state.step)
        metrics["grad_norm"] = grad_norm
        metrics[NONFINITE] = jnp.logical_not(finite).astype(jnp.int32)
        return new_state, metrics

    return train_step


def compile_train_step(
    layout: state_lib.StateLayout, config: ml_collections.ConfigDict, mesh: Mesh
) -> jax.stages.Wrapped:
    """The train step of `config` on `layout`'s state, jitted with every sharding spelled out:
    the state in its own shardings (data parallel or FSDP), the batch sharded on 'data', the
    metrics replicated, and the state donated (updated in place). Call it, or `.lower(...)` it
    for ahead-of-time compilation."""
    return jax.jit(
        make_train_step(layout.graphdef, layout.tx, config, layout.adversarial),
        in_shardings=(layout.shardings, sharding.batch_sharding(mesh)),
        out_shardings=(layout.shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
