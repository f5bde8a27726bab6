"""Vision Transformer image encoder (Dosovitskiy et al., ICLR 2021), as used by TNLBT (Yang 2023).

The module tree follows timm's `VisionTransformer` so pretrained weights map one-to-one:
`patch_embed.proj` (conv), `cls_token`, `pos_embed`, `blocks[i].{norm1, attn, norm2, mlp.fc1,
mlp.fc2}`, `norm`. timm fuses q/k/v into `attn.qkv`; here they are `attn.{query, key, value}` (split
the fused kernel in three) and timm's `attn.proj` is `attn.out`.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from xmodal.models.layers import (
    AttentionImpl,
    BlockLayout,
    Dropout,
    Dtype,
    TransformerEncoder,
    layer_norm,
    masked_mean,
)

# Standard sizes (ViT paper Table 1; Ti and S from DeiT, Touvron et al. 2021).
VIT_VARIANTS: dict[str, dict[str, int]] = {
    "Ti/16": dict(patch_size=16, width=192, depth=12, num_heads=3, mlp_dim=768),
    "S/16": dict(patch_size=16, width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B/16": dict(patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072),
    "B/32": dict(patch_size=32, width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L/16": dict(patch_size=16, width=1024, depth=24, num_heads=16, mlp_dim=4096),
}


class PatchEmbed(nnx.Module):
    """Non-overlapping patches -> tokens, as one strided conv (timm: `patch_embed.proj`)."""

    def __init__(self, patch_size: int, width: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.proj = nnx.Conv(
            3,
            width,
            kernel_size=(patch_size, patch_size),
            strides=(patch_size, patch_size),
            padding="VALID",
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=nnx.initializers.lecun_normal(),
            rngs=rngs,
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.proj(images)  # [B, H/p, W/p, width]
        return x.reshape(x.shape[0], -1, x.shape[-1])


class ConvStem(nnx.Module):
    """Stride-2 3x3 convs down to one token per patch, then a 1x1 projection (Xiao et al. 2021,
    "Early Convolutions Help Transformers See Better"): it optimises more easily from scratch than
    one big patchify conv; on the built-in data it beat patchifying to 4x as many tokens
    (docs/methods.md). Same token grid as `PatchEmbed` of the same patch size."""

    def __init__(
        self,
        patch_size: int,
        width: int,
        *,
        first_norm: bool = True,
        dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        n = patch_size.bit_length() - 1
        if patch_size < 2 or 2**n != patch_size:
            raise ValueError(f"the conv stem needs a power-of-two patch size, got {patch_size}")
        widths = [3] + [max(8, width // 2 ** (n - i)) for i in range(1, n + 1)]
        self.convs = nnx.List(
            [
                nnx.Conv(
                    c_in,
                    c_out,
                    kernel_size=(3, 3),
                    strides=(2, 2),
                    padding="SAME",
                    dtype=dtype,
                    param_dtype=jnp.float32,
                    kernel_init=nnx.initializers.he_normal(),
                    rngs=rngs,
                )
                for c_in, c_out in itertools.pairwise(widths)
            ]
        )
        # The first conv's output is the largest activation of the stem; without its LayerNorm
        # (`first_norm=False`) the stem costs about half on CPU.
        self.norms = nnx.List(
            [
                layer_norm(c, dtype=dtype, rngs=rngs) if i or first_norm else None
                for i, c in enumerate(widths[1:])
            ]
        )
        self.proj = nnx.Conv(
            widths[-1],
            width,
            kernel_size=(1, 1),
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=nnx.initializers.lecun_normal(),
            rngs=rngs,
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x)
            x = nnx.relu(x if norm is None else norm(x))
        x = self.proj(x)  # [B, H/p, W/p, width]
        return x.reshape(x.shape[0], -1, x.shape[-1])


class ViT(TransformerEncoder):
    """ViT backbone: returns all output tokens (for cross-attention) and a pooled feature.

    A `TransformerEncoder` (pre-LN blocks + final LayerNorm: timm's and the released H-T's ViT)
    with a patch stem, a class token and position embeddings in front: its blocks and norm keep
    the `blocks.N` / `norm` names of timm's layout, which the weight import maps one-to-one.
    `block`, `activation`, `norm_eps`, `final_norm` and `attention_dropout` are the ViT's own
    `BlockLayout` (`config.model.vit`), independent of the recipe transformers'."""

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        pool: str = "cls",
        stem: str = "patch",
        stem_first_norm: bool = True,
        dropout: float = 0.0,
        block: str = "pre_ln",
        activation: str = "gelu",
        norm_eps: float = 1e-6,
        final_norm: bool = True,
        attention_dropout: float = 0.0,
        dtype: Dtype = jnp.float32,
        attention: AttentionImpl = "auto",
        rngs: nnx.Rngs,
    ):
        layout = BlockLayout(
            block=block,
            activation=activation,
            norm_eps=norm_eps,
            final_norm=final_norm,
            attention_dropout=attention_dropout,
        )
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        if pool not in ("cls", "gap"):
            raise ValueError(f"pool must be 'cls' or 'gap', got {pool!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {sorted(STEMS)}, got {stem!r}")
        self.pool = pool
        self.dtype = dtype
        self.num_patches = (image_size // patch_size) ** 2
        # Only the conv stem has norms; presets that patchify inherit the first-run default.
        stem_options = {} if stem == "patch" else {"first_norm": stem_first_norm}
        self.patch_embed = STEMS[stem](patch_size, width, dtype=dtype, rngs=rngs, **stem_options)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, width), jnp.float32))
        self.pos_embed = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (1, 1 + self.num_patches, width))
        )
        self.pos_drop = Dropout(dropout, rngs=rngs)
        block_options = dict(
            dropout=dropout, dtype=dtype, attention=attention, layout=layout, rngs=rngs
        )
        super().__init__(width, depth, num_heads, mlp_dim, **block_options)

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images: normalised float [B, H, W, 3] -> (tokens [B, 1+N, width], pooled [B, width]).

        tokens[:, 0] is the class token; all tokens are after the final LayerNorm (if any).
        """
        x = self.patch_embed(images.astype(self.dtype))
        if x.shape[1] != self.num_patches:
            raise ValueError(
                f"got {x.shape[1]} patches, built for {self.num_patches}: wrong image size"
            )
        cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls.astype(x.dtype), x], axis=1)
        x = self.pos_drop(x + self.pos_embed[...].astype(x.dtype))
        x = super().__call__(x)  # the blocks, then the final LayerNorm
        pooled = x[:, 0] if self.pool == "cls" else masked_mean(x[:, 1:], None, axis=1)
        return x, pooled


# patch: one patchify conv (ViT, timm-compatible); conv: ConvStem (small data, from scratch).
STEMS = {"patch": PatchEmbed, "conv": ConvStem}
