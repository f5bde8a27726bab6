"""H-T hierarchical recipe encoder (Salvador et al., CVPR 2021, Sec. 3.1 and Fig. 2).

"Revamping cross-modal recipe retrieval with hierarchical transformers and self-supervised
learning": one word embedding shared by all components; the title is a transformer over its words,
averaged; ingredients and instructions are lists of sentences, each encoded by a word-level
transformer and averaged, then a second, sentence-level transformer runs over the sentence vectors
and is averaged again. The recipe feature is a linear layer over the concatenated component
features (`merge_linear`; without it the concatenation itself, which the dual encoder's one
Linear(3W -> D) + tanh head maps, as the released H-T's `merger_recipe` does). Every average is
masked (token id 0 is padding), so padding never changes the result.

Released H-T (amzn/image-to-recipe-transformers, src/models.py): its blocks are PyTorch's
post-LN / ReLU / eps 1e-5 layers with attention-probability dropout and no final norm
(`BlockLayout`), its position tables have 50 rows, xavier-normal, and its word embedding is
N(0, 1) (`init='pytorch'`). A fully padded ingredient or instruction line: the released code lets
it attend to its first (padding) token and the sentence-level transformer masks it out; here it
attends everywhere and is masked out the same way, so real rows agree.

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
    DEFAULT_LAYOUT,
    INITS,
    AttentionImpl,
    BlockLayout,
    Dropout,
    Dtype,
    TransformerEncoder,
    linear_inits,
    masked_mean,
)

# Position tables: normal(0.02) here; xavier-normal in the released H-T (LearnedPositionalEncoding).
POSITION_INITS = {
    "xmodal": nnx.initializers.normal(0.02),
    "pytorch": nnx.initializers.variance_scaling(1.0, "fan_avg", "normal"),  # not truncated
}
# Word embedding: normal(0.02) here; N(0, 1) in the released H-T (nn.Embedding's default).
WORD_INITS = {"xmodal": nnx.initializers.normal(0.02), "pytorch": nnx.initializers.normal(1.0)}


def check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


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
    """Learned positions + transformer + masked average: H-T's `SingleTransformerEncoder`
    (`layout` wires and initialises the blocks; `layout.init` also picks the position init)."""

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
        layout: BlockLayout = DEFAULT_LAYOUT,
        rngs: nnx.Rngs,
    ):
        check_init(layout.init)
        self.pos_embed = nnx.Param(POSITION_INITS[layout.init](rngs.params(), (max_len, width)))
        self.drop = Dropout(dropout, rngs=rngs)
        self.encoder = TransformerEncoder(
            width,
            depth,
            num_heads,
            mlp_dim,
            dropout=dropout,
            dtype=dtype,
            attention=attention,
            layout=layout,
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
        layout: BlockLayout = DEFAULT_LAYOUT,
        merge_linear: bool = True,
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
        check_init(layout.init)
        self.word_embed = nnx.Embed(
            vocab_size,
            width,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=WORD_INITS[layout.init],
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
                layout=layout,
                rngs=rngs,
            )

        self.title = pooled()
        self.ingredients = pooled()  # words of one ingredient -> ingredient vector
        self.ingredients_merge = pooled()  # ingredient vectors -> ingredients feature
        self.instructions = pooled()
        self.instructions_merge = pooled()
        self.widths = {c: width for c in self.components}
        # merge_linear: Linear(3W -> W) (this project's default); else the concatenation [3W].
        self.merge = (
            nnx.Linear(
                3 * width,
                out_features or width,
                dtype=dtype,
                param_dtype=jnp.float32,
                rngs=rngs,
                **linear_inits(3 * width, layout.init),
            )
            if merge_linear
            else None
        )
        self.width = (out_features or width) if merge_linear else 3 * width

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
        merged = jnp.concatenate([feats[c] for c in self.components], axis=-1)
        return merged if self.merge is None else self.merge(merged)
