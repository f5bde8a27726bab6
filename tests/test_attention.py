"""Attention in the form cuDNN's fused kernel takes (xmodal.models.layers): every mask broadcast to
[B, N|1, Tq, Tk], odd lengths padded to even with the extra key hidden and the extra query row
dropped — the same attention as the unpadded one, checked on the portable XLA path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal.models.layers import dot_product_attention, even_lengths, key_padding_mask


def _qkv(b, tq, tk, heads=2, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, heads, dim)), jnp.float32) for t in (tq, tk, tk))
    return q, k, v


def _brute(q, k, v, mask, causal):
    """softmax(q k^T / sqrt(d)) v per example and head, masked keys excluded, in NumPy."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, _, n, d = q.shape
    out = np.zeros_like(q)
    for i in range(b):
        for h in range(n):
            logits = q[i, :, h] @ k[i, :, h].T / np.sqrt(d)
            allowed = np.ones(logits.shape, bool) if mask is None else np.asarray(mask)[i, 0]
            if causal:
                allowed = allowed & np.tril(np.ones(logits.shape, bool))
            logits = np.where(allowed, logits, -np.inf)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            out[i, :, h] = (p / p.sum(-1, keepdims=True)) @ v[i, :, h]
    return out


@pytest.mark.parametrize(
    "tq, tk, masked, causal",
    [(15, 15, True, False), (197, 197, False, False), (7, 12, True, False), (9, 9, False, True)],
)
def test_even_lengths_keeps_the_attention(tq, tk, masked, causal):
    q, k, v = _qkv(3, tq, tk)
    mask = None
    if masked:
        valid = np.arange(tk)[None] < np.array([[tk], [tk // 2], [1]])  # padded keys
        mask = jnp.broadcast_to(key_padding_mask(jnp.asarray(valid)), (3, 1, tq, tk))
    pq, pk, pv, pmask, lengths = even_lengths(q, k, v, mask)
    assert pq.shape[1] % 2 == 0 and pk.shape[1] % 2 == 0
    assert (pmask is None) == (mask is None) and (lengths is None) == (mask is not None)
    got = jax.nn.dot_product_attention(
        pq, pk, pv, mask=pmask, is_causal=causal, key_value_seq_lengths=lengths
    )[:, :tq]
    np.testing.assert_allclose(np.asarray(got), _brute(q, k, v, mask, causal), atol=1e-5)


def test_padding_masks_are_broadcast_to_the_query_length():
    """A [B, 1, 1, Tk] padding mask gives the same result as its full [B, 1, Tq, Tk] form."""
    q, k, v = _qkv(2, 6, 10, seed=1)
    valid = jnp.asarray(np.arange(10)[None] < np.array([[10], [4]]))
    short = dot_product_attention(q, k, v, mask=key_padding_mask(valid), implementation="xla")
    full = jnp.broadcast_to(key_padding_mask(valid), (2, 1, 6, 10))
    np.testing.assert_allclose(np.asarray(short), _brute(q, k, v, full, False), atol=1e-5)
