"""H-T hierarchical recipe encoder (Salvador et al., CVPR 2021, Sec. 3.1 and Fig. 2).

"Revamping cross-modal recipe retrieval with hierarchical transformers and self-supervised
learning": one word embedding shared by all components; the title is a transformer over its words,
averaged; ingredients and instructions are lists of sentences, each encoded by a word-level
transformer and averaged, then a second, sentence-level transformer runs over the sentence vectors
and is averaged again. The recipe feature is a linear layer over the concatenated component
features. Every average is masked (token id 0 is padding), so padding never changes the result.

Packing (`packed_tokens`): padding every line to the longest line's length wastes most of the
word-level transformer's work (on the built-in data half of the tokens are padding). With a budget
per component, the lines of a recipe are laid end to end in one row, each attending only to itself
and keeping its own positions, so the result is the same function of the same parameters; lines
that do not fit whole are left out, like lines beyond `data.max_ingredients`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from xmodal.data.schema import COMPONENTS, PAD_ID
from xmodal.models.layers import (
    DENSE_INIT,
    AttentionImpl,
    Dropout,
    Dtype,
    TransformerEncoder,
    masked_mean,
)


class PackedLines(NamedTuple):
    """Lines of each recipe laid end to end: `pack_lines`' result."""

    ids: jax.Array  # [B, P] token ids, 0 after the last packed line
    segments: jax.Array  # [B, P] line index + 1; 0 = padding
    positions: jax.Array  # [B, P] position of the token within its line
    kept: jax.Array  # [B, S] bool: the line has tokens in the row (not empty, not left out)
    max_line_length: int  # T of the unpacked lines (positions are below it)


def pack_lines(tokens: jax.Array, length: int) -> PackedLines:
    """[B, S, T] ids (each line padded on its own) -> the lines laid end to end in `length`
    tokens per recipe. A line that does not fit whole is left out with every line after it."""
    b, s, t = tokens.shape
    valid = tokens != PAD_ID
    line_len = jnp.sum(valid, axis=-1, dtype=jnp.int32)  # [B, S]
    end = jnp.cumsum(line_len, axis=-1)
    start = end - line_len
    rank = jnp.cumsum(valid, axis=-1, dtype=jnp.int32) - 1  # index among the line's tokens
    fits = end <= length  # [B, S]
    keep = valid & fits[..., None]
    dest = jnp.where(keep, start[..., None] + rank, length)  # `length`: dropped by the scatter
    rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], dest.shape)

    def scatter(values: jax.Array) -> jax.Array:
        values = jnp.broadcast_to(values, dest.shape).astype(jnp.int32)
        return jnp.zeros((b, length), jnp.int32).at[rows, dest].set(values, mode="drop")

    return PackedLines(
        ids=scatter(tokens),
        segments=scatter(jnp.arange(1, s + 1)[None, :, None]),
        positions=scatter(jnp.arange(t)),
        kept=fits & (line_len > 0),
        max_line_length=t,
    )


class PooledTransformer(nnx.Module):
    """Learned positions + transformer + masked average: H-T's `SingleTransformerEncoder`."""

    def __init__(
        self,
        width: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        *,
        max_len: int,
        dropout: float,
        dtype: Dtype,
        attention: AttentionImpl,
        rngs: nnx.Rngs,
    ):
        self.pos_embed = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (max_len, width)))
        self.drop = Dropout(dropout, rngs=rngs)
        self.encoder = TransformerEncoder(
            width,
            depth,
            num_heads,
            mlp_dim,
            dropout=dropout,
            dtype=dtype,
            attention=attention,
            rngs=rngs,
        )

    def _check_length(self, length: int) -> None:
        if length > self.pos_embed.shape[0]:
            raise ValueError(
                f"sequence of {length} exceeds the {self.pos_embed.shape[0]} learned positions"
            )

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        """x: [N, T, width], valid: [N, T] bool -> [N, width] (zeros where a row has no token)."""
        self._check_length(x.shape[1])
        x = self.drop(x + self.pos_embed[: x.shape[1]].astype(x.dtype))
        return masked_mean(self.encoder(x, valid), valid, axis=1)

    def packed(self, x: jax.Array, packed: PackedLines, num_lines: int) -> jax.Array:
        """x: [B, P, width] embedded `pack_lines` ids -> [B, num_lines, width], each line's
        tokens averaged (zeros for a line with no token, as `__call__` gives)."""
        self._check_length(packed.max_line_length)
        x = self.drop(x + self.pos_embed[packed.positions].astype(x.dtype))
        h = self.encoder(x, segment_ids=packed.segments)
        # [B, P, lines]: which line each packed token belongs to (segment 0 is padding).
        member = packed.segments[..., None] == jnp.arange(1, num_lines + 1)
        total = jnp.einsum("bpl,bpw->blw", member.astype(jnp.float32), h.astype(jnp.float32))
        count = jnp.maximum(jnp.sum(member, axis=1, dtype=jnp.float32), 1.0)[..., None]
        return (total / count).astype(h.dtype)


class HierarchicalRecipeEncoder(nnx.Module):
    """Recipe (title, ingredients, instructions) token ids -> per-component and merged features."""

    def __init__(
        self,
        vocab_size: int,
        *,
        width: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.1,
        max_len: int = 64,
        out_features: int | None = None,
        dtype: Dtype = jnp.float32,
        attention: AttentionImpl = "auto",
        packed_tokens: dict[str, int] | None = None,
        rngs: nnx.Rngs,
    ):
        packed_tokens = dict(packed_tokens or {})
        unknown = set(packed_tokens) - {"ingredients", "instructions"}
        if unknown or any(v < 0 for v in packed_tokens.values()):
            raise ValueError(
                "packed_tokens takes token budgets >= 0 for 'ingredients' and 'instructions', "
                f"got {packed_tokens}"
            )
        self.dtype = dtype
        # Component -> packed tokens per recipe; 0 or absent: every line padded on its own.
        self.components = COMPONENTS
        self.packed_tokens = {k: int(v) for k, v in packed_tokens.items() if v}
        self.word_embed = nnx.Embed(
            vocab_size,
            width,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=nnx.initializers.normal(0.02),
            rngs=rngs,
        )

        def pooled() -> PooledTransformer:
            return PooledTransformer(
                width,
                depth,
                num_heads,
                mlp_dim,
                max_len=max_len,
                dropout=dropout,
                dtype=dtype,
                attention=attention,
                rngs=rngs,
            )

        self.title = pooled()
        self.ingredients = pooled()  # words of one ingredient -> ingredient vector
        self.ingredients_merge = pooled()  # ingredient vectors -> ingredients feature
        self.instructions = pooled()
        self.instructions_merge = pooled()
        self.merge = nnx.Linear(
            3 * width,
            out_features or width,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=DENSE_INIT,
            rngs=rngs,
        )

    def _sentences(
        self,
        tokens: jax.Array,
        words: PooledTransformer,
        sentences: PooledTransformer,
        packed_tokens: int = 0,
    ) -> jax.Array:
        """[B, S, T] ids -> [B, width]: words within each sentence, then sentences (H-T Fig. 2)."""
        b, s, t = tokens.shape
        if packed_tokens:
            packed = pack_lines(tokens, packed_tokens)
            sent = words.packed(self.word_embed(packed.ids), packed, s)
            return sentences(sent, packed.kept)
        flat = tokens.reshape(b * s, t)
        valid_tok = flat != PAD_ID
        sent = words(self.word_embed(flat), valid_tok).reshape(b, s, -1)
        valid_sent = jnp.any(valid_tok, axis=-1).reshape(b, s)
        return sentences(sent, valid_sent)

    def __call__(
        self, title: jax.Array, ingredients: jax.Array, instructions: jax.Array
    ) -> dict[str, jax.Array]:
        """title [B, T], ingredients [B, Ni, T], instructions [B, Ns, T] (int, 0 = pad) ->
        {'title', 'ingredients', 'instructions', 'recipe'}, each [B, width] in the compute dtype.
        """
        feats = {
            "title": self.title(self.word_embed(title), title != PAD_ID),
            "ingredients": self._sentences(
                ingredients,
                self.ingredients,
                self.ingredients_merge,
                self.packed_tokens.get("ingredients", 0),
            ),
            "instructions": self._sentences(
                instructions,
                self.instructions,
                self.instructions_merge,
                self.packed_tokens.get("instructions", 0),
            ),
        }
        feats["recipe"] = self.merge_components(feats)
        return feats

    def merge_components(self, feats: dict[str, jax.Array]) -> jax.Array:
        """Component features [B, width] each -> the recipe feature (H-T's merge transformer
        input is their concatenation); also how recombined queries are encoded."""
        return self.merge(jnp.concatenate([feats[c] for c in self.components], axis=-1))
