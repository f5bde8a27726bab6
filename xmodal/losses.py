"""Loss terms as pure functions of embeddings, and their combination chosen by `config.loss`.

Every term sees the *global* batch: inside `jax.jit` the embeddings are batch-sharded arrays and
XLA inserts the all-gather for the B x B similarity matrix, so negatives come from every device.
Embeddings are unit-norm, so cosine distance is d(a, b) = 1 - <a, b>.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

REDUCTIONS = ("violating", "hardest", "mean")


def triplet_costs(queries: jax.Array, candidates: jax.Array, margin: float) -> jax.Array:
    """[B, B] hinge costs [m + d(q_i, c_i) - d(q_i, c_j)]_+ with the diagonal (positives) zeroed.

    Row i holds query i against every negative j != i; with unit-norm inputs the cosine distance
    difference is sim_ij - sim_ii.
    """
    sims = jnp.einsum("id,jd->ij", queries.astype(jnp.float32), candidates.astype(jnp.float32))
    positives = jnp.diagonal(sims)[:, None]
    costs = jax.nn.relu(margin + sims - positives)
    return jnp.where(jnp.eye(sims.shape[0], dtype=bool), 0.0, costs)


def reduce_costs(costs: jax.Array, reduction: str) -> jax.Array:
    """Reduce [B, B] triplet costs (diagonal already zero) to a scalar.

    violating: sum over triplets / number of triplets with non-zero cost — AdaMine's adaptive
        mining (Carvalho et al., SIGIR 2018, Eq. 4-5): the update never vanishes as constraints
        become satisfied, moving from "average" towards "hardest negative" automatically.
    hardest:   mean over queries of the hardest negative's cost (VSE++).
    mean:      mean over all B(B-1) triplets.
    """
    if reduction == "violating":
        active = jnp.sum(costs > 0)
        return jnp.sum(costs) / jnp.maximum(active, 1).astype(costs.dtype)
    if reduction == "hardest":
        return jnp.mean(jnp.max(costs, axis=1))
    if reduction == "mean":
        n = costs.shape[0]
        return jnp.sum(costs) / max(n * (n - 1), 1)
    raise ValueError(f"unknown triplet reduction {reduction!r}; choose from {REDUCTIONS}")


def active_fraction(costs: jax.Array) -> jax.Array:
    """Share of (query, negative) triplets that still violate the margin."""
    n = costs.shape[0]
    return jnp.sum(costs > 0) / max(n * (n - 1), 1)


def bidirectional_triplet_loss(
    image: jax.Array, recipe: jax.Array, *, margin: float, reduction: str = "violating"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Image->recipe plus recipe->image in-batch triplet loss (H-T / TNLBT retrieval loss).

    Returns the summed loss and the per-direction share of active triplets.
    """
    i2r = triplet_costs(image, recipe, margin)
    r2i = triplet_costs(recipe, image, margin)
    loss = reduce_costs(i2r, reduction) + reduce_costs(r2i, reduction)
    return loss, {"active_i2r": active_fraction(i2r), "active_r2i": active_fraction(r2i)}


def recipe_ssl_loss(
    pairs: Mapping[str, tuple[jax.Array, jax.Array]], *, margin: float, reduction: str
) -> jax.Array:
    """H-T's self-supervised recipe loss (Salvador et al., CVPR 2021, Sec. 3.3).

    For each ordered pair of recipe components (a, b) the model maps a's embedding towards b's,
    g_ab(e_a); a triplet loss then asks g_ab(e_a) of recipe i to be closer to e_b of recipe i than
    to e_b of any other recipe in the batch. Averaged over the pairs.
    """
    if not pairs:
        return jnp.zeros((), jnp.float32)
    terms = [
        reduce_costs(triplet_costs(pred, target, margin), reduction)
        for pred, target in pairs.values()
    ]
    return sum(terms) / len(terms)


def compute_losses(
    outputs: Mapping[str, Any], loss_config: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted sum of the loss terms that `loss_config` switches on, and their values."""
    metrics: dict[str, jax.Array] = {}
    total = jnp.zeros((), jnp.float32)
    if loss_config.triplet:
        triplet, stats = bidirectional_triplet_loss(
            outputs["image"],
            outputs["recipe"],
            margin=loss_config.margin,
            reduction=loss_config.reduction,
        )
        total += loss_config.triplet * triplet
        metrics["loss_triplet"] = triplet
        metrics.update(stats)
    if loss_config.recipe_ssl and outputs.get("ssl"):
        ssl = recipe_ssl_loss(
            outputs["ssl"], margin=loss_config.margin, reduction=loss_config.reduction
        )
        total += loss_config.recipe_ssl * ssl
        metrics["loss_recipe_ssl"] = ssl
    metrics["loss"] = total
    return total, metrics
