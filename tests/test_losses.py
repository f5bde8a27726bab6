"""Loss terms against brute-force loops over every (query, positive, negative) triplet."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal import losses


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embeddings(seed, n=7, d=5):
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(n, d))), _unit(rng.normal(size=(n, d)))


def _cos_dist(a, b):
    return 1.0 - float(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))


def _brute_direction(queries, candidates, margin, reduction):
    n = len(queries)
    per_query = []
    for i in range(n):
        costs = [
            max(
                0.0,
                margin
                + _cos_dist(queries[i], candidates[i])
                - _cos_dist(queries[i], candidates[j]),
            )
            for j in range(n)
            if j != i
        ]
        per_query.append(costs)
    flat = list(itertools.chain.from_iterable(per_query))
    if reduction == "violating":
        active = sum(c > 0 for c in flat)
        return sum(flat) / max(active, 1)
    if reduction == "hardest":
        return float(np.mean([max(c) for c in per_query]))
    return float(np.mean(flat))


@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
@pytest.mark.parametrize("margin", [0.1, 0.3, 1.5])
def test_bidirectional_triplet_matches_brute_force(reduction, margin):
    img, rec = _embeddings(seed=int(margin * 10))
    loss, stats = losses.bidirectional_triplet_loss(
        jnp.asarray(img), jnp.asarray(rec), margin=margin, reduction=reduction
    )
    expected = _brute_direction(img, rec, margin, reduction) + _brute_direction(
        rec, img, margin, reduction
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-6)
    n = len(img)
    active = sum(
        max(0.0, margin + _cos_dist(img[i], rec[i]) - _cos_dist(img[i], rec[j])) > 0
        for i in range(n)
        for j in range(n)
        if i != j
    )
    np.testing.assert_allclose(float(stats["active_i2r"]), active / (n * (n - 1)), rtol=1e-6)


def test_violating_reduction_does_not_vanish_as_triplets_are_satisfied():
    # Only one negative violates: the mean shrinks with the batch, adaptive mining keeps its size.
    n, d = 6, 6
    img = np.eye(n, d)
    rec = np.eye(n, d)
    rec[1] = _unit(np.eye(d)[1] + 1.2 * np.eye(d)[0])  # recipe 1 drifts towards image 0
    for_mean = losses.bidirectional_triplet_loss(
        jnp.asarray(img), jnp.asarray(rec), margin=0.3, reduction="mean"
    )[0]
    for_violating = losses.bidirectional_triplet_loss(
        jnp.asarray(img), jnp.asarray(rec), margin=0.3, reduction="violating"
    )[0]
    assert float(for_violating) > 5 * float(for_mean) > 0


def test_perfectly_separated_batch_has_zero_loss_and_no_active_triplets():
    img = np.eye(4)
    loss, stats = losses.bidirectional_triplet_loss(
        jnp.asarray(img), jnp.asarray(img), margin=0.3, reduction="violating"
    )
    assert float(loss) == 0.0
    assert float(stats["active_i2r"]) == 0.0


def test_unknown_reduction_is_a_clear_error():
    img, rec = _embeddings(0)
    with pytest.raises(ValueError, match="unknown triplet reduction"):
        losses.bidirectional_triplet_loss(
            jnp.asarray(img), jnp.asarray(rec), margin=0.3, reduction="max"
        )


def test_recipe_ssl_loss_averages_one_directional_triplets_over_pairs():
    a, b = _embeddings(1)
    c, d = _embeddings(2)
    pairs = {
        "title->ingredients": (jnp.asarray(a), jnp.asarray(b)),
        "x->y": (jnp.asarray(c), jnp.asarray(d)),
    }
    got = losses.recipe_ssl_loss(pairs, margin=0.3, reduction="violating")
    expected = (
        _brute_direction(a, b, 0.3, "violating") + _brute_direction(c, d, 0.3, "violating")
    ) / 2
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_triplet_gradient_pulls_positive_closer():
    img, rec = _embeddings(3)
    grad = jax.grad(
        lambda r: losses.bidirectional_triplet_loss(
            jnp.asarray(img), r, margin=0.5, reduction="mean"
        )[0]
    )(jnp.asarray(rec))
    step = _unit(rec - 0.1 * np.asarray(grad))
    before = np.sum(img * rec, axis=1).mean()
    after = np.sum(img * step, axis=1).mean()
    assert after > before
