"""TNLBT's cross decoder: "fuse before generating" (the extended TNLBT of the slides, after Yang
et al., MMM 2023).

A small pre-LN transformer decoder (causal self-attention, cross-attention, MLP) reads a fused
memory — the image encoder's output tokens followed by the recipe embedding projected to
`recipe_tokens` memory tokens — and generates the recipe's clean ingredients and title
(`xmodal.data.decoder_targets`). Its cross-entropy trains both encoders through the memory.

During training the recipe tokens are dropped from the memory with probability `recipe_drop` per
example (masked out of cross-attention and zeroed), so the decoder also learns to generate from
the photo alone, which is how it is used at inference (`xmodal.predict`).

Attention follows `xmodal.models.layers`: `jax.nn.dot_product_attention` with boolean masks, so
cuDNN's fused kernel is used on GPU with a 16-bit compute dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from xmodal.data.schema import PAD_ID
from xmodal.models.layers import (
    BIAS_INIT,
    DENSE_INIT,
    AttentionImpl,
    Dropout,
    Dtype,
    Mlp,
    attention_layer,
    layer_norm,
)


class MemoryDrop(nnx.Module):
    """Per-example Bernoulli keep flags for the recipe memory tokens (the 'dropout' RNG stream).

    Follows `nnx.Dropout`'s conventions: `model.eval()` sets `deterministic` (keep everything),
    `nnx.reseed(model, dropout=key)` reseeds it with the rest of the dropout streams.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"recipe_drop must be in [0, 1], got {rate}")
        self.rate = rate
        self.deterministic = False
        self.rngs = rngs["dropout"].fork()

    def __call__(self, batch_size: int) -> jax.Array:
        """[B] bool: True where the example keeps its recipe tokens."""
        if self.deterministic or self.rate == 0.0:
            return jnp.ones((batch_size,), jnp.bool_)
        if self.rate == 1.0:
            return jnp.zeros((batch_size,), jnp.bool_)
        return jax.random.bernoulli(self.rngs(), 1.0 - self.rate, (batch_size,))


class DecoderBlock(nnx.Module):
    """Pre-LN decoder block: x + SelfAttn(LN(x), causal); x + CrossAttn(LN(x), memory); x + MLP."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_dim: int,
        *,
        dropout: float = 0.0,
        dtype: Dtype = jnp.float32,
        attention: AttentionImpl = "auto",
        rngs: nnx.Rngs,
    ):
        norm = lambda: layer_norm(width, dtype=dtype, rngs=rngs)
        attn = lambda: attention_layer(
            width, num_heads, dtype=dtype, attention=attention, rngs=rngs
        )
        self.norm1, self.self_attn = norm(), attn()
        self.norm2, self.cross_attn = norm(), attn()
        self.norm3 = norm()
        self.mlp = Mlp(width, mlp_dim, dropout=dropout, dtype=dtype, rngs=rngs)
        self.drop = Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, memory: jax.Array, memory_mask: jax.Array) -> jax.Array:
        """x [B, L, W] (causal self-attention); memory [B, M, W]; memory_mask boolean,
        broadcastable to [B, heads, L, M]."""
        x = x + self.drop(self.self_attn(self.norm1(x), is_causal=True))
        h = self.norm2(x)
        x = x + self.drop(self.cross_attn(h, memory, memory, mask=memory_mask))
        return x + self.drop(self.mlp(self.norm3(x)))


class CrossDecoder(nnx.Module):
    """Generates token ids from a fused (image tokens, recipe embedding) memory."""

    def __init__(
        self,
        vocab_size: int,
        *,
        image_width: int,
        embed_dim: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        max_len: int,
        recipe_tokens: int = 1,
        recipe_drop: float = 0.5,
        dropout: float = 0.1,
        dtype: Dtype = jnp.float32,
        attention: AttentionImpl = "auto",
        rngs: nnx.Rngs,
    ):
        if recipe_tokens < 1:
            raise ValueError(f"recipe_tokens must be >= 1, got {recipe_tokens}")
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.recipe_tokens = recipe_tokens
        self.width = width
        self.dtype = dtype
        linear = functools.partial(
            nnx.Linear,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=DENSE_INIT,
            bias_init=BIAS_INIT,
            rngs=rngs,
        )
        self.token_embed = nnx.Embed(
            vocab_size,
            width,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=nnx.initializers.normal(0.02),
            rngs=rngs,
        )
        self.pos_embed = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (max_len, width)))
        self.image_proj = linear(image_width, width)
        self.recipe_proj = linear(embed_dim, recipe_tokens * width)
        self.memory_drop = MemoryDrop(recipe_drop, rngs=rngs)
        self.blocks = nnx.List(
            [
                DecoderBlock(
                    width,
                    num_heads,
                    mlp_dim,
                    dropout=dropout,
                    dtype=dtype,
                    attention=attention,
                    rngs=rngs,
                )
                for _ in range(depth)
            ]
        )
        self.norm = layer_norm(width, dtype=dtype, rngs=rngs)
        self.head = linear(width, vocab_size)

    def memory(
        self, image_tokens: jax.Array, recipe: jax.Array | None, keep: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Fused memory [B, N + R, W] and its validity [B, N + R].

        `recipe` [B, D] (None: photo only) is projected to R = `recipe_tokens` tokens; rows with
        `keep` False have them zeroed and masked. Without `keep`, training draws it with
        probability 1 - `recipe_drop` per example; eval keeps every recipe.
        """
        b = image_tokens.shape[0]
        img = self.image_proj(image_tokens.astype(self.dtype))
        img_valid = jnp.ones(img.shape[:2], jnp.bool_)
        if recipe is None:
            return img, img_valid
        keep = self.memory_drop(b) if keep is None else keep.astype(jnp.bool_)
        rec = self.recipe_proj(recipe.astype(self.dtype)).reshape(b, self.recipe_tokens, -1)
        rec = rec * keep[:, None, None].astype(rec.dtype)
        rec_valid = jnp.broadcast_to(keep[:, None], (b, self.recipe_tokens))
        return jnp.concatenate([img, rec], 1), jnp.concatenate([img_valid, rec_valid], 1)

    def __call__(self, tokens: jax.Array, memory: jax.Array, memory_valid: jax.Array) -> jax.Array:
        """tokens [B, L] int (L <= max_len) -> next-token logits [B, L, vocab] float32."""
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"decoder input of {length} tokens exceeds max_len {self.max_len}")
        x = self.token_embed(tokens) + self.pos_embed[:length].astype(self.dtype)
        memory_mask = memory_valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, memory, memory_mask)
        return self.head(self.norm(x)).astype(jnp.float32)


def teacher_forcing(targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, L] framed targets -> (inputs [B, L-1], next-token labels [B, L-1]): the one home of
    the shift, used by the model (inputs) and by the loss (labels, read from the batch); PAD
    labels are ignored by the loss. EOS is fed as input only where it is followed by PAD
    (harmless)."""
    inputs = targets[:, :-1]
    labels = targets[:, 1:]
    return jnp.where(inputs == PAD_ID, PAD_ID, inputs), labels
