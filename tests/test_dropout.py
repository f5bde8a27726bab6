"""xmodal.models.layers.Dropout: nnx.Dropout's behaviour from one random byte per element."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xmodal.models.layers import Dropout


def make(rate: float, **kwargs) -> Dropout:
    return Dropout(rate, rngs=nnx.Rngs(dropout=jax.random.key(0, impl="rbg")), **kwargs)


def test_drops_the_rounded_rate_and_keeps_the_expectation():
    x = jnp.full((64, 40, 99), 2.0)  # last dim not a multiple of 4: bytes are sliced to fit
    y = np.asarray(make(0.1)(x))
    assert y.shape == x.shape
    dropped = np.mean(y == 0)
    assert abs(dropped - 26 / 256) < 0.004  # 253k draws: the standard error is 0.0006
    np.testing.assert_allclose(np.unique(y[y != 0]), 2.0 * 256 / 230, rtol=1e-6)
    assert abs(y.mean() - 2.0) < 0.02
    # Dropped positions are spread over every axis, not a pattern of the byte packing.
    for axis in range(3):
        per_slice = np.mean(y == 0, axis=tuple(a for a in range(3) if a != axis))
        assert per_slice.min() > 0.02 and per_slice.max() < 0.25


def test_masks_change_between_calls_and_follow_the_stream():
    x = jnp.ones((8, 32))
    drop = make(0.5)
    first, second = np.asarray(drop(x)), np.asarray(drop(x))
    assert not np.array_equal(first == 0, second == 0)
    np.testing.assert_array_equal(np.asarray(make(0.5)(x)), first)  # same seed, same mask


def test_eval_mode_and_edge_rates_are_exact():
    x = jax.random.normal(jax.random.key(1), (4, 6))
    drop = make(0.3)
    drop.eval()
    np.testing.assert_array_equal(drop(x), x)
    np.testing.assert_array_equal(make(0.0)(x), x)
    np.testing.assert_array_equal(make(0.001)(x), x)  # rounds to 0 / 256: nothing dropped
    np.testing.assert_array_equal(make(1.0)(x), np.zeros_like(x))


def test_broadcast_dims_share_the_mask():
    y = np.asarray(make(0.5, broadcast_dims=(1,))(jnp.ones((16, 5, 8))))
    assert np.all(y == y[:, :1])
    assert 0 < np.mean(y == 0) < 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradient_is_the_mask_times_the_scale(dtype):
    x = jnp.ones((3, 10), dtype)
    drop = make(0.25)
    y, grad = drop(x), jax.grad(lambda v: jnp.sum(make(0.25)(v).astype(jnp.float32)))(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(y, np.float32))


def test_state_matches_nnx_dropout():
    """Same RNG stream variables as nnx.Dropout, so checkpoints restore across the two."""
    ours = nnx.state(make(0.1))
    theirs = nnx.state(nnx.Dropout(0.1, rngs=nnx.Rngs(dropout=jax.random.key(0, impl="rbg"))))
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
