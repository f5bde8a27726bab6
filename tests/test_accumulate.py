"""Gradient accumulation: GradCache gives the big-batch gradient; naive accumulation does not
(its negatives are per micro-batch); remat changes memory, not the numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from step_fixtures import VOCAB, micro_config, random_batch

from xmodal.runtime import state as state_lib
from xmodal.training import accumulate, losses
from xmodal.training.step import make_train_step

# pytest-xdist: one worker builds the module's reference gradients.
pytestmark = pytest.mark.xdist_group("accumulate")

MICRO = 4


@pytest.fixture(scope="module")
def setup():
    config = micro_config()
    graphdef, state, _ = state_lib.init_train_state(config, VOCAB)
    batch = jax.tree.map(jnp.asarray, random_batch(config, seed=3))
    return config, graphdef, state, batch


def grads_of(method, config, graphdef, state, batch, num_micro):
    """Jitted (grads, metrics) of the config's loss: method None = the plain big-batch step."""

    def loss_of_outputs(outputs, labelled):
        return losses.compute_losses(outputs, labelled, config.loss, step=0, total_steps=1)

    def run(params):
        key = jax.random.key(7, impl=state_lib.RNG_IMPL)
        if method is None:

            def loss_fn(p):
                out, _ = accumulate.apply_model(graphdef, p, state.model_state, key, batch)
                return loss_of_outputs(out, batch)

            grads, metrics = jax.grad(loss_fn, has_aux=True)(params)
            return grads, metrics
        fn = accumulate.accumulated_grads(method)
        grads, metrics, _ = fn(
            graphdef, params, state.model_state, key, batch, loss_of_outputs, num_micro
        )
        return grads, metrics

    return jax.device_get(jax.jit(run)(state.params))


@pytest.fixture(scope="module")
def big_batch(setup):
    return grads_of(None, *setup, 1)


def test_micro_batch_split_round_trips_and_interleaves():
    x = jnp.arange(12)
    micro = accumulate.split_micro_batches(x, 4)
    assert micro.shape == (4, 3) and micro[1].tolist() == [1, 5, 9]
    assert accumulate.merge_micro_batches(micro).tolist() == x.tolist()
    with pytest.raises(ValueError, match="does not split into 5"):
        accumulate.split_micro_batches(x, 5)


def test_gradcache_equals_the_big_batch_gradient(setup, big_batch):
    grads, metrics = grads_of("gradcache", *setup, MICRO)
    ref_grads, ref_metrics = big_batch
    for k in ("loss", "loss_triplet", "loss_recipe_ssl", "active_i2r"):
        np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5)
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)


def test_naive_accumulation_uses_micro_batch_negatives_only(setup, big_batch):
    """The naive loss is the mean of 4-pair losses: equal to a per-micro-batch computation,
    not to the 16-pair loss."""
    config, graphdef, state, batch = setup
    _, metrics = grads_of("naive", *setup, MICRO)
    key = jax.random.key(7, impl=state_lib.RNG_IMPL)
    out, _ = accumulate.apply_model(graphdef, state.params, state.model_state, key, batch)
    micro_losses = [
        losses.compute_losses(
            *jax.tree.map(lambda x, j=j: x[j::MICRO], (out, batch)),
            config.loss,
            step=0,
            total_steps=1,
        )[0]
        for j in range(MICRO)
    ]
    np.testing.assert_allclose(metrics["loss"], np.mean(micro_losses), rtol=1e-5)
    assert abs(float(metrics["loss"]) - float(big_batch[1]["loss"])) > 1e-3


def test_unknown_accumulation_method_is_a_clear_error():
    with pytest.raises(ValueError, match="grad_accum must be one of"):
        accumulate.accumulated_grads("sometimes")


def test_remat_gives_the_same_loss_and_gradients(setup, big_batch):
    batch = setup[3]
    remat_config = micro_config(**{"model.remat": "full"})
    graphdef, state, _ = state_lib.init_train_state(remat_config, VOCAB)
    blocks = [n for _, n in nnx.iter_graph(nnx.merge(graphdef, state.params, state.model_state))]
    assert any(getattr(n, "remat", None) == "full" for n in blocks)
    grads, metrics = grads_of(None, remat_config, graphdef, state, batch, 1)
    ref_grads, ref_metrics = big_batch
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(ref_grads))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)


def test_unknown_remat_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="remat must be one of"):
        state_lib.init_train_state(micro_config(**{"model.remat": "some"}), VOCAB)


def test_an_accumulated_step_follows_the_margin_schedule(setup):
    """The train step with accumulation gives the loss the step: at step 5 of 10 a linear
    margin 0.1 -> 0.5 is at 0.3, and the loss is the big-batch loss at that margin."""
    _, graphdef, state, batch = setup
    config = micro_config(
        **{
            "loss.margin.kind": "linear",
            "loss.margin.start": 0.1,
            "loss.margin.end": 0.5,
            "loss.margin.steps": 0,
            "train.num_steps": 10,
            "train.grad_accum_steps": MICRO,
        }
    )
    tx = state_lib.make_optimizer(config.train)
    at_step_5 = state.replace(step=jnp.asarray(5, jnp.int32), opt_state=tx.init(state.params))
    _, metrics = jax.jit(make_train_step(graphdef, tx, config))(at_step_5, batch)

    def big_batch_loss(params):
        key = jax.random.key(7, impl=state_lib.RNG_IMPL)
        out, _ = accumulate.apply_model(graphdef, params, state.model_state, key, batch)
        return losses.compute_losses(out, batch, config.loss, step=5, total_steps=10)[1]

    reference = jax.jit(big_batch_loss)(state.params)
    np.testing.assert_allclose(metrics["margin_i2r"], 0.3, rtol=1e-6)
    np.testing.assert_allclose(metrics["margin_r2i"], 0.3, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss_triplet"], reference["loss_triplet"], rtol=1e-5)
