"""Recipe encoders of the methods before H-T: LSTMs (im2recipe, AdaMine) and a flat transformer.

im2recipe (Salvador et al., CVPR 2017, Sec. 4) and AdaMine (Carvalho et al., SIGIR 2018,
Sec. 3.2.1): ingredients go through a *bidirectional* LSTM over word embeddings; instructions
through a *hierarchical* LSTM (a word-level LSTM per sentence, a sentence-level LSTM over the
sentence vectors); the component features are concatenated and a linear layer (the dual encoder's
`recipe_proj`) maps them into the joint space. im2recipe's ingredients are single word2vec tokens
("olive_oil"); here an ingredient is a short token list, so its vector is the masked mean of its
word embeddings before the bi-LSTM runs over the ingredient sequence. Word vectors are learned
from scratch (the built-in dataset has no word2vec / skip-thought weights).

`TransformerRecipeEncoder` is the reproduction report's transformer variant of the JE text
branch: one flat (non-hierarchical) transformer per component over all of its tokens.

Padding (token id 0) is trailing; sequences are run with `seq_lengths`, so the LSTM state is read
at the last real step and padding never changes a feature. Empty components give zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from xmodal.data.schema import COMPONENTS, PAD_ID
from xmodal.models.layers import DEFAULT_LAYOUT, AttentionImpl, BlockLayout, Dtype, masked_mean
from xmodal.models.recipe_encoder import WORD_INITS, PooledTransformer, check_init


def _check_components(components: Sequence[str]) -> tuple[str, ...]:
    components = tuple(components)
    if not components or any(c not in COMPONENTS for c in components):
        raise ValueError(f"components must be a non-empty subset of {COMPONENTS}, got {components}")
    return components


def _lstm(in_features: int, hidden: int, dtype: Dtype, rngs: nnx.Rngs) -> nnx.RNN:
    cell = nnx.OptimizedLSTMCell(
        in_features, hidden, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )
    return nnx.RNN(cell, return_carry=True, rngs=False)


def _zero_carry(x: jax.Array, rnn: nnx.RNN) -> tuple[jax.Array, jax.Array]:
    """LSTM (c, h) zeros in float32 (the cell state accumulates; keep it full precision). Passed
    explicitly so the RNNs need no RNG stream in the model state."""
    zeros = jnp.zeros((x.shape[0], rnn.cell.hidden_features), jnp.float32)
    return zeros, zeros


def _final_hidden(rnn: nnx.RNN, x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Last valid hidden state [N, H] of `x` [N, T, F]; zeros for empty sequences."""
    (_, h), _ = rnn(x, initial_carry=_zero_carry(x, rnn), seq_lengths=jnp.maximum(lengths, 1))
    return jnp.where((lengths > 0)[:, None], h, jnp.zeros_like(h))


class BiLSTM(nnx.Module):
    """Forward and backward LSTM; the feature is [h_forward_last, h_backward_last] (2 x hidden)."""

    def __init__(self, in_features: int, hidden: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.lstm = nnx.Bidirectional(
            _lstm(in_features, hidden, dtype, rngs),
            _lstm(in_features, hidden, dtype, rngs),
            return_carry=True,
            rngs=False,
        )

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        carry = (
            _zero_carry(x, self.lstm.forward_rnn),
            _zero_carry(x, self.lstm.backward_rnn),
        )
        ((_, h_fwd), (_, h_bwd)), _ = self.lstm(
            x, initial_carry=carry, seq_lengths=jnp.maximum(lengths, 1)
        )
        h = jnp.concatenate([h_fwd, h_bwd], axis=-1)
        return jnp.where((lengths > 0)[:, None], h, jnp.zeros_like(h))


class LSTMRecipeEncoder(nnx.Module):
    """im2recipe / AdaMine text branch: token ids -> per-component features and their concat.

    Features: title 2*title_hidden (bi-LSTM over words), ingredients 2*ingredient_hidden,
    instructions instruction_hidden. `components` picks the branches that exist and feed
    'recipe' (AdaMine's ingredients-only / instructions-only ablations).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        word_dim: int = 300,
        title_hidden: int = 300,
        ingredient_hidden: int = 300,
        sentence_hidden: int = 1024,
        instruction_hidden: int = 1024,
        components: Sequence[str] = ("ingredients", "instructions"),
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.components = _check_components(components)
        self.dtype = dtype
        self.word_embed = nnx.Embed(
            vocab_size,
            word_dim,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=nnx.initializers.normal(0.1),
            rngs=rngs,
        )
        widths = {
            "title": 2 * title_hidden,
            "ingredients": 2 * ingredient_hidden,
            "instructions": instruction_hidden,
        }
        has = set(self.components)
        self.title = (
            BiLSTM(word_dim, title_hidden, dtype=dtype, rngs=rngs) if "title" in has else None
        )
        self.ingredients = (
            BiLSTM(word_dim, ingredient_hidden, dtype=dtype, rngs=rngs)
            if "ingredients" in has
            else None
        )
        if "instructions" in has:
            self.instruction_words = _lstm(word_dim, sentence_hidden, dtype, rngs)
            self.instruction_sentences = _lstm(sentence_hidden, instruction_hidden, dtype, rngs)
        else:
            self.instruction_words = self.instruction_sentences = None
        self.widths = {c: widths[c] for c in self.components}
        self.width = sum(self.widths.values())

    def _ingredients(self, tokens: jax.Array) -> jax.Array:
        valid = tokens != PAD_ID  # [B, Ni, T]
        vectors = masked_mean(self.word_embed(tokens), valid, axis=-2)  # [B, Ni, word_dim]
        return self.ingredients(vectors, jnp.sum(jnp.any(valid, -1), -1))

    def _instructions(self, tokens: jax.Array) -> jax.Array:
        b, s, t = tokens.shape
        flat = tokens.reshape(b * s, t)
        word_lengths = jnp.sum(flat != PAD_ID, axis=-1)
        sentences = _final_hidden(self.instruction_words, self.word_embed(flat), word_lengths)
        sentence_lengths = jnp.sum(word_lengths.reshape(b, s) > 0, axis=-1)
        return _final_hidden(
            self.instruction_sentences, sentences.reshape(b, s, -1), sentence_lengths
        )

    def __call__(
        self, title: jax.Array, ingredients: jax.Array, instructions: jax.Array
    ) -> dict[str, jax.Array]:
        """title [B, T], ingredients [B, Ni, T], instructions [B, Ns, T] (0 = pad) ->
        {<component>: [B, widths[c]] for the chosen components, 'recipe': [B, width]}."""
        feats: dict[str, jax.Array] = {}
        if self.title is not None:
            feats["title"] = self.title(self.word_embed(title), jnp.sum(title != PAD_ID, -1))
        if self.ingredients is not None:
            feats["ingredients"] = self._ingredients(ingredients)
        if self.instruction_words is not None:
            feats["instructions"] = self._instructions(instructions)
        feats["recipe"] = self.merge_components(feats)
        return feats

    def merge_components(self, feats: dict[str, jax.Array]) -> jax.Array:
        """Component features -> the recipe feature: their concatenation."""
        return jnp.concatenate([feats[c] for c in self.components], axis=-1)


class TransformerRecipeEncoder(nnx.Module):
    """Flat transformer text branch (JE's transformer variant): each component's tokens are one
    sequence (ingredients and instructions flattened across sentences), encoded and mean-pooled;
    the component features are concatenated (width = width x number of components)."""

    def __init__(
        self,
        vocab_size: int,
        *,
        width: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        max_len: int,
        dropout: float = 0.1,
        components: Sequence[str] = ("ingredients", "instructions"),
        dtype: Dtype = jnp.float32,
        attention: AttentionImpl = "auto",
        layout: BlockLayout = DEFAULT_LAYOUT,
        rngs: nnx.Rngs,
    ):
        self.components = _check_components(components)
        check_init(layout.init)
        self.word_embed = nnx.Embed(
            vocab_size,
            width,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=WORD_INITS[layout.init],
            rngs=rngs,
        )
        self.encoders = nnx.Dict(
            {
                c: PooledTransformer(
                    width,
                    depth,
                    num_heads,
                    mlp_dim,
                    max_len=max_len,
                    dropout=dropout,
                    dtype=dtype,
                    attention=attention,
                    layout=layout,
                    rngs=rngs,
                )
                for c in self.components
            }
        )
        self.widths = {c: width for c in self.components}
        self.width = width * len(self.components)

    def __call__(
        self, title: jax.Array, ingredients: jax.Array, instructions: jax.Array
    ) -> dict[str, jax.Array]:
        inputs = {"title": title, "ingredients": ingredients, "instructions": instructions}
        feats: dict[str, jax.Array] = {}
        for c in self.components:
            tokens = inputs[c].reshape(inputs[c].shape[0], -1)
            feats[c] = self.encoders[c](self.word_embed(tokens), tokens != PAD_ID)
        feats["recipe"] = self.merge_components(feats)
        return feats

    def merge_components(self, feats: dict[str, jax.Array]) -> jax.Array:
        """Component features -> the recipe feature: their concatenation."""
        return jnp.concatenate([feats[c] for c in self.components], axis=-1)
