"""H-T hierarchical recipe encoder (Salvador et al., CVPR 2021, Sec. 3.1 and Fig. 2).

"Revamping cross-modal recipe retrieval with hierarchical transformers and self-supervised
learning": one word embedding shared by all components; the title is a transformer over its words,
averaged; ingredients and instructions are lists of sentences, each encoded by a word-level
transformer and averaged, then a second, sentence-level transformer runs over the sentence vectors
and is averaged again. The recipe feature is a linear layer over the concatenated component
features. Every average is masked (token id 0 is padding), so padding never changes the result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xmodal.data.records import PAD_ID
from xmodal.models.layers import (
    DENSE_INIT,
    AttentionImpl,
    Dtype,
    TransformerEncoder,
    masked_mean,
)

COMPONENTS = ("title", "ingredients", "instructions")


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
        self.drop = nnx.Dropout(dropout, rngs=rngs)
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

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        """x: [N, T, width], valid: [N, T] bool -> [N, width] (zeros where a row has no token)."""
        length, max_len = x.shape[1], self.pos_embed.shape[0]
        if length > max_len:
            raise ValueError(f"sequence of {length} exceeds the {max_len} learned positions")
        x = self.drop(x + self.pos_embed[:length].astype(x.dtype))
        return masked_mean(self.encoder(x, valid), valid, axis=1)


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
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
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
        self, tokens: jax.Array, words: PooledTransformer, sentences: PooledTransformer
    ) -> jax.Array:
        """[B, S, T] ids -> [B, width]: words within each sentence, then sentences (H-T Fig. 2)."""
        b, s, t = tokens.shape
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
            "ingredients": self._sentences(ingredients, self.ingredients, self.ingredients_merge),
            "instructions": self._sentences(
                instructions, self.instructions, self.instructions_merge
            ),
        }
        feats["recipe"] = self.merge(jnp.concatenate([feats[c] for c in COMPONENTS], axis=-1))
        return feats
