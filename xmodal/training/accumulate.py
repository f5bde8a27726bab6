"""Gradient accumulation for batches larger than device memory, two ways.

`gradcache_grads` (Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", RepL4NLP 2021): the in-batch triplet losses need every other example of the step as
a negative, so a plain per-micro-batch loss would train a different, smaller-batch objective.
GradCache splits the chain rule at the embeddings: (1) forward every micro-batch without keeping
activations, collecting the embeddings of the whole accumulated batch (a few floats per example);
(2) compute the loss and its gradient w.r.t. those embeddings on the full batch; (3) run each
micro-batch forward + backward again and pull the cached embedding gradients back through it (a
VJP), summing the parameter gradients. dL/dθ = Σ_k J_k(θ)ᵀ dL/de_k, so the gradient is that of
the big batch, exactly (up to float summation order), for ~one extra forward pass of compute and
the memory of one micro-batch's activations.

`naive_grads`: each micro-batch's loss uses only its own in-batch negatives; gradients are averaged.
Cheapest (no extra forward) but the objective is the micro-batch one — fine for terms without
in-batch negatives, a weaker loss for triplets (fewer, easier negatives).

Both loop with `jax.lax.scan` over micro-batches of static shape, so the step compiles once.
The loss takes the model's outputs with the batch they came from (its labels): GradCache's the
merged outputs with the whole batch, the naive one each micro-batch's outputs with that micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

METHODS = ("gradcache", "naive")

# (model outputs, the batch they were computed from) -> (loss, metrics)
LossOfOutputs = Callable[
    [Mapping[str, Any], Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]
]


def apply_model(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    model_state: nnx.State,
    dropout_key: jax.Array,
    batch: Mapping[str, jax.Array],
) -> tuple[dict[str, Any], nnx.State]:
    """One training-mode forward pass as a pure function: (outputs, updated non-param state)."""
    model = nnx.merge(graphdef, params, model_state, copy=True)
    model.train()
    nnx.reseed(model, dropout=dropout_key)
    outputs = model(batch)
    _, _, new_model_state = nnx.split(model, nnx.Param, ...)
    return outputs, new_model_state


def split_micro_batches(tree: Any, num_micro: int) -> Any:
    """Leaves [B, ...] -> [num_micro, B / num_micro, ...], micro-batch j holding rows i*num_micro+j.

    Interleaving (rather than contiguous blocks) keeps every micro-batch spread evenly over the
    devices that hold the batch-sharded rows, so no device idles while another works.
    """

    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % num_micro:
            raise ValueError(
                f"batch of {x.shape[0]} does not split into {num_micro} equal micro-batches"
            )
        return jnp.swapaxes(x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, tree)


def merge_micro_batches(tree: Any) -> Any:
    """Inverse of `split_micro_batches`: [num_micro, b, ...] -> [num_micro * b, ...], rows in
    their original order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


def gradcache_grads(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    model_state: nnx.State,
    dropout_key: jax.Array,
    batch: Mapping[str, jax.Array],
    loss_of_outputs: LossOfOutputs,
    num_micro: int,
) -> tuple[nnx.State, dict[str, jax.Array], nnx.State]:
    """Exact big-batch gradient of `loss_of_outputs(model(batch), batch)` in `num_micro` slices.

    Micro-batch j reseeds dropout with fold_in(dropout_key, j) in both passes, so the re-run
    reproduces the first pass exactly. Returns (grads, loss metrics, model_state).
    """
    micro = split_micro_batches(batch, num_micro)
    index = jnp.arange(num_micro)

    def forward(_, xs):
        j, mb = xs
        outputs, _ = apply_model(
            graphdef, params, model_state, jax.random.fold_in(dropout_key, j), mb
        )
        return None, outputs

    _, micro_outputs = jax.lax.scan(forward, None, (index, micro))
    # The outputs are what the model computes (float embeddings, logits): all differentiable.
    # Merged, their rows are in the batch's order, so the loss reads its labels from `batch`.
    outputs = merge_micro_batches(micro_outputs)
    (_, metrics), d_outputs = jax.value_and_grad(
        lambda out: loss_of_outputs(out, batch), has_aux=True
    )(outputs)
    d_micro = split_micro_batches(d_outputs, num_micro)

    def backward(carry, xs):
        grads, _ = carry
        j, mb, d_out = xs

        def f(p):
            return apply_model(graphdef, p, model_state, jax.random.fold_in(dropout_key, j), mb)

        _, pullback, new_model_state = jax.vjp(f, params, has_aux=True)
        (g,) = pullback(d_out)
        return (jax.tree.map(jnp.add, grads, g), new_model_state), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, new_model_state), _ = jax.lax.scan(
        backward, (zeros, model_state), (index, micro, d_micro)
    )
    return grads, metrics, new_model_state


def naive_grads(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    model_state: nnx.State,
    dropout_key: jax.Array,
    batch: Mapping[str, jax.Array],
    loss_of_outputs: LossOfOutputs,
    num_micro: int,
) -> tuple[nnx.State, dict[str, jax.Array], nnx.State]:
    """Mean of per-micro-batch gradients; in-batch negatives come from each micro-batch only."""
    micro = split_micro_batches(batch, num_micro)

    def body(carry, xs):
        grads, _ = carry
        j, mb = xs

        def loss_fn(p):
            outputs, new_state = apply_model(
                graphdef, p, model_state, jax.random.fold_in(dropout_key, j), mb
            )
            loss, metrics = loss_of_outputs(outputs, mb)
            return loss, (metrics, new_state)

        g, (metrics, new_state) = jax.grad(loss_fn, has_aux=True)(params)
        return (jax.tree.map(jnp.add, grads, g), new_state), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, new_model_state), metrics = jax.lax.scan(
        body, (zeros, model_state), (jnp.arange(num_micro), micro)
    )
    grads = jax.tree.map(lambda g: g / num_micro, grads)
    return grads, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics), new_model_state


def accumulated_grads(method: str) -> Callable[..., tuple[nnx.State, dict, nnx.State]]:
    if method == "gradcache":
        return gradcache_grads
    if method == "naive":
        return naive_grads
    raise ValueError(f"grad_accum must be one of {METHODS}, got {method!r}")
