"""Autoregressive decoding of the cross decoder: greedy and beam search over a fixed-length buffer.

Pure functions of a next-token logits function (`DualEncoder.decoder_logits`) and the decoder's
memory: each is one `jax.lax.fori_loop` over a [B, length] token buffer (BOS first, PAD after
EOS: the vocabulary's ids, `Framing`), so under `jax.jit` there is one compilation per (batch
size, beam) and none per token; every step re-runs the small decoder over the buffer with the
causal mask (no KV cache: the decoder is a few layers over <= 64 tokens). Photo -> ingredients
with a restored model is `xmodal.predict`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from xmodal.data import schema

NEG_INF = -1e9


class Framing(NamedTuple):
    """The ids a generated sequence starts with, ends with and is padded with after its end: the
    vocabulary's (`xmodal.data.tokenizer.special_ids`)."""

    bos: int
    eos: int
    pad: int


SCHEMA_FRAMING = Framing(schema.BOS_ID, schema.EOS_ID, schema.PAD_ID)  # a learned vocabulary's
LogitsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def greedy_decode(
    logits_fn: LogitsFn,
    memory: jax.Array,
    memory_valid: jax.Array,
    length: int,
    framing: Framing = SCHEMA_FRAMING,
) -> jax.Array:
    """[B, length] ids: BOS, then the argmax token at each step; PAD after EOS.
    `logits_fn(tokens, memory, valid)` gives next-token logits (`DualEncoder.decoder_logits`)."""
    b = memory.shape[0]
    buf = jnp.full((b, length), framing.pad, jnp.int32).at[:, 0].set(framing.bos)

    def step(t, carry):
        buf, done = carry
        logits = logits_fn(buf, memory, memory_valid)[:, t - 1]
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, framing.pad, nxt)
        return buf.at[:, t].set(nxt), done | (nxt == framing.eos)

    buf, _ = jax.lax.fori_loop(1, length, step, (buf, jnp.zeros((b,), jnp.bool_)))
    return buf


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
    """GNMT's length normaliser ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, Eq. 14): a beam is ranked
    by its summed log-probability divided by this, so alpha > 0 stops beam search from preferring
    short sequences (every added token lowers the plain sum); alpha = 0 ranks by the plain sum."""
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_decode(
    logits_fn: LogitsFn,
    memory: jax.Array,
    memory_valid: jax.Array,
    length: int,
    beam: int,
    alpha: float = 0.0,
    framing: Framing = SCHEMA_FRAMING,
) -> tuple[jax.Array, jax.Array]:
    """Beam search: ([B, length] best sequence, [B] its summed log-probability).

    Each step extends every live beam by every token and keeps the `beam` candidates of the
    B x beam x V with the best summed log-probability divided by `length_penalty(generated tokens,
    alpha)`; a finished beam (EOS emitted) extends only by PAD at no cost, so its score and length
    stay. The returned score is the plain sum. beam=1 is greedy decoding (for any alpha).
    """
    b = memory.shape[0]
    mem = jnp.repeat(memory, beam, axis=0)
    mem_valid = jnp.repeat(memory_valid, beam, axis=0)
    buf = jnp.full((b, beam, length), framing.pad, jnp.int32).at[:, :, 0].set(framing.bos)
    scores = jnp.full((b, beam), NEG_INF).at[:, 0].set(0.0)  # one live beam at the start
    done = jnp.zeros((b, beam), jnp.bool_)
    lengths = jnp.zeros((b, beam), jnp.int32)  # generated tokens, EOS included

    def step(t, carry):
        buf, scores, done, lengths = carry
        logits = logits_fn(buf.reshape(b * beam, length), mem, mem_valid)[:, t - 1]
        vocab = logits.shape[-1]
        pad_only = jnp.full((vocab,), NEG_INF).at[framing.pad].set(0.0)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, beam, vocab)
        logp = jnp.where(done[..., None], pad_only, logp)
        cand = (scores[..., None] + logp).reshape(b, beam * vocab)
        cand_len = jnp.repeat(jnp.where(done, lengths, lengths + 1), vocab, axis=1)
        _, flat = jax.lax.top_k(cand / length_penalty(cand_len, alpha), beam)
        scores = jnp.take_along_axis(cand, flat, axis=1)
        origin, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        buf = jnp.take_along_axis(buf, origin[..., None], axis=1).at[:, :, t].set(token)
        lengths = jnp.take_along_axis(cand_len, flat, axis=1)
        done = jnp.take_along_axis(done, origin, axis=1) | (token == framing.eos)
        return buf, scores, done, lengths

    buf, scores, _, _ = jax.lax.fori_loop(1, length, step, (buf, scores, done, lengths))
    return buf[:, 0], scores[:, 0]
