"""Dynamic margins (xmodal.training.losses): each schedule against an independent formula, and
the margin really reaching the triplet loss."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from xmodal.training import losses


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embeddings(seed, n=6, d=8):
    rng = np.random.default_rng(seed)
    img = _unit(rng.normal(size=(n, d)))
    rec = _unit(img + 0.7 * rng.normal(size=(n, d)))
    return img.astype(np.float32), rec.astype(np.float32)


def _active_share(q, c, margin):
    """Brute force: share of (i, j != i) with margin + d(q_i, c_i) - d(q_i, c_j) > 0."""
    n = len(q)
    pairs = [(i, j) for i, j in itertools.product(range(n), range(n)) if i != j]
    hits = sum(margin + (1 - q[i] @ c[i]) - (1 - q[i] @ c[j]) > 0 for i, j in pairs)
    return hits / len(pairs)


def _loss_config(**margin):
    """The schema's loss fields (configs/common.py), mean-reduced triplet only, this margin."""
    c = common.base_config("test").loss
    c.update(dict(triplet=1.0, reduction="mean"))
    c.margin.update(margin)
    return c


def _losses_at_step_0(img, rec, cfg):
    """`compute_losses` on the embeddings alone (no labels in the batch) at step 0 of 1."""
    return losses.compute_losses({"image": img, "recipe": rec}, {}, cfg, step=0, total_steps=1)


def test_constant_margin_is_start_at_every_step():
    img, rec = _embeddings(0)
    for step in (0, 7, 1000):
        _, m = losses.compute_losses(
            {"image": img, "recipe": rec},
            {},
            _loss_config(kind="constant", start=0.25),
            step=step,
            total_steps=1,
        )
        assert float(m["margin_i2r"]) == pytest.approx(0.25)
        assert float(m["margin_r2i"]) == pytest.approx(0.25)


@pytest.mark.parametrize("steps", [0, 40])
def test_linear_margin_ramps_then_holds(steps):
    img, rec = _embeddings(1)
    cfg = _loss_config(kind="linear", start=0.1, end=0.5, steps=steps)
    total = 100
    ramp = steps or total
    margin_at = jax.jit(
        lambda s: losses.compute_losses(
            {"image": img, "recipe": rec}, {}, cfg, step=s, total_steps=total
        )[1]["margin_i2r"]
    )
    for step in (0, 10, 25, 40, 99, 100, 250):
        expected = 0.1 + 0.4 * min(step, ramp) / ramp
        assert float(margin_at(jnp.int32(step))) == pytest.approx(expected, abs=1e-6)
    assert margin_at._cache_size() == 1  # a traced step: one compilation for every step


def test_adaptive_margin_follows_active_share_per_direction():
    img, rec = _embeddings(2)
    cfg = _loss_config(kind="adaptive", start=0.3, min=0.1, max=0.6)
    _, m = _losses_at_step_0(img, rec, cfg)
    for key, (q, c) in {"margin_i2r": (img, rec), "margin_r2i": (rec, img)}.items():
        a = _active_share(q, c, 0.3)
        assert float(m[key]) == pytest.approx(0.1 + 0.5 * (1 - a), abs=1e-6)
        assert 0.1 <= float(m[key]) <= 0.6
    assert float(m["margin_i2r"]) != pytest.approx(float(m["margin_r2i"]))


def test_adaptive_margin_bounds_and_no_gradient():
    img, _ = _embeddings(3)
    _, rec = _embeddings(4)
    # Perfect pairs at reference 0: nothing active -> max; reference 2.5 > any distance gap:
    # every triplet active -> min.
    assert float(losses.adaptive_margin(img, img, reference=0.0, low=0.1, high=0.6)) == (
        pytest.approx(0.6)
    )
    assert float(losses.adaptive_margin(img, rec, reference=2.5, low=0.1, high=0.6)) == (
        pytest.approx(0.1)
    )
    grad = jax.grad(lambda q: losses.adaptive_margin(q, img, reference=0.3, low=0.1, high=0.6))
    assert np.all(np.asarray(grad(jnp.asarray(img))) == 0)


def test_scheduled_margin_is_the_one_the_loss_uses():
    img, rec = _embeddings(4)
    cfg = _loss_config(kind="adaptive", start=0.3, min=0.05, max=0.9)
    loss, m = _losses_at_step_0(img, rec, cfg)
    expected, _ = losses.bidirectional_triplet_loss(
        img, rec, margin=m["margin_i2r"], margin_r2i=m["margin_r2i"], reduction="mean"
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    other, _ = losses.bidirectional_triplet_loss(img, rec, margin=0.3, reduction="mean")
    assert float(loss) != pytest.approx(float(other), rel=1e-3)


def test_a_bare_number_is_refused_and_bad_kinds_are_refused():
    """loss.margin has one type (a dict); a bare number from an old config is a clear error."""
    img, rec = _embeddings(5)
    old = ml_collections.ConfigDict(dict(triplet=1.0, margin=0.2, reduction="mean", recipe_ssl=0))
    with pytest.raises(TypeError, match=r"loss\.margin must be"):
        _losses_at_step_0(img, rec, old)
    _, m = _losses_at_step_0(img, rec, _loss_config(start=0.2))
    assert float(m["margin_i2r"]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="unknown margin kind 'cosine'"):
        _losses_at_step_0(img, rec, _loss_config(kind="cosine", start=1))
    with pytest.raises(ValueError, match="min <= max"):
        losses.margin_settings(_loss_config(kind="adaptive", start=0.3, min=0.5, max=0.1))
