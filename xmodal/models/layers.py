"""Transformer building blocks shared by every encoder (ViT, H-T recipe encoder, cross decoder).

All layers compute in a configurable `dtype` (bf16 on accelerators) and keep parameters in float32.
Attention goes through `jax.nn.dot_product_attention` with a *boolean* mask so that cuDNN's fused
kernel can be used on GPU (nnx's default attention never asks for it; DESIGN.md "Known pitfalls").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = Any
AttentionImpl = Literal["auto", "xla", "cudnn"]

# Rematerialisation policies for transformer blocks (`config.model.remat`): what the backward
# pass may keep from the forward pass instead of recomputing it. 'none' keeps everything (fastest,
# most memory); 'full' keeps only the block inputs (~1 extra forward of compute); 'dots' keeps
# matmul outputs and recomputes the cheap elementwise ops (LayerNorm, GELU, softmax);
# 'dots_no_batch' keeps only matmuls without batch dims (weights x activations), recomputing
# the attention score matmuls, whose [B, heads, T, T] outputs dominate memory at long T.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# Initialisers as in ViT / timm (trunc-normal 0.02 would also do; xavier is big_vision's choice).
DENSE_INIT = nnx.initializers.xavier_uniform()
BIAS_INIT = nnx.initializers.normal(stddev=1e-6)

BLOCKS = ("pre_ln", "post_ln")
ACTIVATIONS = {"gelu": functools.partial(nnx.gelu, approximate=False), "relu": nnx.relu}
INITS = ("xmodal", "pytorch")


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    """The one error for a layout option outside its choices (activation, init, block)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """How the blocks of one transformer are wired and initialised (one per encoder config:
    `model.text.*`, `model.vit.*`).

    The defaults are this project's (ViT / timm): LayerNorm before each sub-layer ('pre_ln'),
    exact GELU, eps 1e-6, a final LayerNorm, no dropout on attention probabilities. H-T's
    released recipe encoder is PyTorch's `nn.TransformerEncoderLayer` as it comes: 'post_ln'
    (LayerNorm after each residual sum), 'relu', eps 1e-5, attention-probability dropout = the
    block's dropout, and no final LayerNorm (`nn.TransformerEncoder` adds none). A different
    layout is a different function of the same parameters (issue 25: up to 1.27 apart).

    `init`: 'xmodal' (xavier-uniform kernels, tiny biases) | 'pytorch' (what the released model's
    PyTorch layers get by default: `pytorch_linear_init`, attention in-projections
    xavier-uniform over the fused [3W, W] matrix with zero biases, and every block of a stack a
    copy of the first, as `nn.TransformerEncoder` deep-copies its layer).
    """

    block: str = "pre_ln"
    activation: str = "gelu"
    norm_eps: float = 1e-6
    final_norm: bool = True
    attention_dropout: float = 0.0
    init: str = "xmodal"

    def __post_init__(self) -> None:
        check_choice("block", self.block, BLOCKS)
        check_choice("activation", self.activation, ACTIVATIONS)
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        check_choice("init", self.init, INITS)


DEFAULT_LAYOUT = BlockLayout()  # this project's blocks
ZEROS = nnx.initializers.zeros_init()


def uniform_init(bound: float) -> nnx.Initializer:
    """U(-bound, bound), whatever the shape (PyTorch's initialisers fix the bound up front)."""

    def init(key: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def pytorch_linear_init(fan_in: int) -> tuple[nnx.Initializer, nnx.Initializer]:
    """(kernel, bias) initialisers of `torch.nn.Linear`: kaiming-uniform with a=sqrt(5), which
    is U(+-1/sqrt(fan_in)) for the weight, and the same bound for the bias."""
    bound = 1.0 / math.sqrt(fan_in)
    return uniform_init(bound), uniform_init(bound)


def linear_inits(
    fan_in: int, init: str, bias_init: nnx.Initializer = ZEROS
) -> dict[str, nnx.Initializer]:
    """`kernel_init` / `bias_init` keywords for an `nnx.Linear` under `BlockLayout.init`
    ('xmodal': DENSE_INIT and `bias_init`, what each layer had before the option existed)."""
    check_choice("init", init, INITS)
    if init == "pytorch":
        kernel, bias = pytorch_linear_init(fan_in)
        return {"kernel_init": kernel, "bias_init": bias}
    return {"kernel_init": DENSE_INIT, "bias_init": bias_init}


def resolve_dtype(name: str | Dtype) -> Dtype:
    """'float32' | 'bfloat16' | 'float16' (or a dtype) -> jnp dtype."""
    return jnp.dtype(name) if isinstance(name, str) else name


def attention_implementation(requested: AttentionImpl, dtype: Dtype) -> str | None:
    """Picks the `implementation=` for `jax.nn.dot_product_attention` (decided at trace time).

    'auto' takes cuDNN's fused kernel only where it exists and pays off: on GPU with a 16-bit
    compute dtype. 'cudnn' forces it (and fails loudly off GPU); 'xla' forces the portable path.
    """
    if requested == "xla":
        return "xla"
    if requested == "cudnn":
        return "cudnn"
    if requested != "auto":
        raise ValueError(f"attention must be 'auto', 'xla' or 'cudnn', got {requested!r}")
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and jax.default_backend() == "gpu" else "xla"


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    implementation: AttentionImpl = "auto",
    is_causal: bool = False,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    **unused: Any,
) -> jax.Array:
    """`attention_fn` for `nnx.MultiHeadAttention` that calls `jax.nn.dot_product_attention`.

    nnx hands us q/k/v as [B, T, N, H] (the layout jax.nn expects) and a mask broadcastable to
    [B, N, Tq, Tk]. cuDNN's fused kernel turns a boolean mask into a bias that must be
    [B, N or 1, Tq, Tk] (a [B, 1, 1, Tk] padding mask fails at lowering: "Bias must have same seq
    length as QKV"), so the mask is broadcast to that form here, for every attention site at once
    (XLA fuses the broadcast), and odd sequence lengths are padded for it (`even_lengths`). Causal
    attention is `is_causal`, which the kernel handles without a mask.

    Dropout on the attention probabilities (`BlockLayout.attention_dropout`, PyTorch's default in
    H-T's released encoder) exists in neither `jax.nn.dot_product_attention` nor cuDNN's fused
    kernel: while it is active (a rate > 0 and not deterministic, i.e. training) the attention is
    computed here with an explicit softmax (`attention_with_dropout`), whatever `implementation`
    says; evaluation, and every attention without that dropout, takes the requested kernel.
    """
    del unused
    if dropout_rate > 0.0 and not deterministic:
        if dropout_rng is None:
            raise ValueError("attention dropout is active but no dropout key was given")
        return attention_with_dropout(
            query, key, value, mask=mask, is_causal=is_causal, rate=dropout_rate, rng=dropout_rng
        )
    impl = attention_implementation(implementation, query.dtype)
    tq = query.shape[1]
    if mask is not None:
        heads = mask.shape[-3] if mask.ndim == 4 else 1
        shape = (query.shape[0], heads, tq, key.shape[1])
        mask = jnp.broadcast_to(mask.astype(jnp.bool_), shape)
    key_lengths = None
    if impl == "cudnn":
        query, key, value, mask, key_lengths = even_lengths(query, key, value, mask)
    out = jax.nn.dot_product_attention(
        query,
        key,
        value,
        mask=mask,
        is_causal=is_causal,
        key_value_seq_lengths=key_lengths,
        implementation=impl,
    )
    return out[:, :tq]


def attention_with_dropout(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None,
    is_causal: bool,
    rate: float,
    rng: jax.Array,
) -> jax.Array:
    """softmax(q k^T / sqrt(H)) with dropout on the probabilities, then times v (PyTorch's
    `nn.MultiheadAttention` in training). q/k/v [B, T, N, H]; scores and softmax in float32.
    The dropout is `byte_dropout`'s: the rate rounded to a multiple of 1/256 (0.1 -> 26/256)."""
    depth = query.shape[-1]
    logits = jnp.einsum("bqnh,bknh->bnqk", query, key, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(depth)
    keep = jnp.ones((), jnp.bool_)
    if mask is not None:
        keep = mask.astype(jnp.bool_)
    if is_causal:
        tq, tk = query.shape[1], key.shape[1]
        keep = keep & jnp.tril(jnp.ones((tq, tk), jnp.bool_))
    logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    probs = byte_dropout(jax.nn.softmax(logits, axis=-1), rate, rng)
    return jnp.einsum("bnqk,bknh->bqnh", probs.astype(value.dtype), value)


def even_lengths(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """cuDNN's fused backward pass needs even sequence lengths (ViT's 197 tokens, H-T's 15-token
    lines): pad an odd query length with one row (the caller drops its output) and an odd key
    length with one key, hidden by the [B, N, Tq, Tk] mask when there is one, else by key
    lengths (returned; no bias for the kernel to read). Even inputs pass through.

    Returns (query, key, value, mask, key lengths or None)."""
    b, tq, tk = query.shape[0], query.shape[1], key.shape[1]
    pad_q, pad_k = tq % 2, tk % 2
    if not (pad_q or pad_k):
        return query, key, value, mask, None
    query = jnp.pad(query, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
    key, value = (jnp.pad(x, ((0, 0), (0, pad_k), (0, 0), (0, 0))) for x in (key, value))
    if mask is None:
        return query, key, value, None, jnp.full((b,), tk, jnp.int32)
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad_q), (0, pad_k)), constant_values=False)
    mask = mask.at[:, :, tq:, :tk].set(True)  # the extra query row attends to the real keys
    return query, key, value, mask, None


def key_padding_mask(valid: jax.Array) -> jax.Array:
    """Boolean attention mask [..., 1, 1, T] from a [..., T] validity mask.

    A fully padded row (an empty ingredient sentence, a recipe with no instructions) would leave
    every key masked; softmax over nothing is ill-defined (NaN with some kernels), so such rows
    attend to all positions instead. Their outputs are garbage but finite, and every pooling in
    this package ignores them (`masked_mean`).
    """
    valid = valid.astype(jnp.bool_)
    empty = ~jnp.any(valid, axis=-1, keepdims=True)
    return (valid | empty)[..., None, None, :]


def segment_mask(segment_ids: jax.Array) -> jax.Array:
    """Boolean attention mask [B, 1, T, T]: tokens see only tokens of their own segment.

    Padding shares one segment id, so its rows are never fully masked (see `key_padding_mask`).
    """
    return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


def masked_mean(x: jax.Array, valid: jax.Array | None, axis: int = -2) -> jax.Array:
    """Mean of `x` over `axis` counting only positions where `valid` is true.

    Empty rows give zeros (not 0/0), and their gradients are zero, never NaN. Sums are taken in
    float32 so bf16 features averaged over many tokens do not lose precision.
    """
    xf = x.astype(jnp.float32)
    if valid is None:
        return jnp.mean(xf, axis=axis).astype(x.dtype)
    m = jnp.expand_dims(valid.astype(jnp.float32), -1)
    total = jnp.sum(xf * m, axis=axis)
    count = jnp.maximum(jnp.sum(m, axis=axis), 1.0)
    return (total / count).astype(x.dtype)


class Dropout(nnx.Dropout):
    """`nnx.Dropout` drawing 8 random bits per element instead of 32.

    XLA's counter-based generator is slow on CPU; one byte per element (a quarter of the words)
    took the first-run step from 161 to 196 examples/s (docs/methods.md). The rate is rounded to
    a multiple of 1/256 (0.1 -> 26/256) and kept elements are scaled by the exact inverse keep
    rate, so the output's expectation is unchanged.
    Same constructor, `deterministic` flag and RNG stream as `nnx.Dropout` (checkpoints match).
    """

    def __call__(self, inputs: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic or round(self.rate * 256) == 0:
            return inputs
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        return byte_dropout(inputs, self.rate, self.rngs(), tuple(shape))


def byte_dropout(
    inputs: jax.Array, rate: float, key: jax.Array, shape: tuple[int, ...] | None = None
) -> jax.Array:
    """Dropout with one random byte per element (`Dropout`): the rate rounded to a multiple of
    1/256, kept elements scaled by the exact inverse keep rate. `shape`: the mask's shape,
    broadcast to the input's (default: the input's)."""
    drop = round(rate * 256)
    if drop == 0:
        return inputs
    if drop == 256:
        return jnp.zeros_like(inputs)
    *lead, last = inputs.shape if shape is None else shape
    words = jax.random.bits(key, (*lead, -(-last // 4)), jnp.uint32)
    byte = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(*lead, -1)[..., :last]
    keep = jnp.broadcast_to(byte >= drop, inputs.shape)
    scale = jnp.asarray(256 / (256 - drop), inputs.dtype)
    return jax.lax.select(keep, inputs * scale, jnp.zeros_like(inputs))


def layer_norm(width: int, *, dtype: Dtype, rngs: nnx.Rngs, eps: float = 1e-6) -> nnx.LayerNorm:
    """The LayerNorm of every transformer here (eps 1e-6 as in ViT; PyTorch's default is 1e-5;
    f32 parameters)."""
    return nnx.LayerNorm(width, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def attention_layer(
    width: int,
    num_heads: int,
    *,
    dtype: Dtype,
    attention: AttentionImpl,
    rngs: nnx.Rngs,
    dropout: float = 0.0,
    init: str = "xmodal",
) -> nnx.MultiHeadAttention:
    """Multi-head attention routed through `jax.nn.dot_product_attention` (cuDNN-capable), shared
    by encoder self-attention and decoder self-/cross-attention (`is_causal=True` at the call).

    `dropout` > 0 drops attention probabilities while training (`dot_product_attention`). `init`
    'pytorch' is `nn.MultiheadAttention`'s: q/k/v kernels xavier-uniform over the fused [3W, W]
    in-projection, the output kernel as `nn.Linear`'s, every bias zero."""
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    check_choice("init", init, INITS)
    inits: dict[str, Any] = {"kernel_init": DENSE_INIT}
    if init == "pytorch":
        inits = {
            "kernel_init": uniform_init(math.sqrt(6.0 / (width + 3 * width))),
            "out_kernel_init": pytorch_linear_init(width)[0],
        }
    return nnx.MultiHeadAttention(
        num_heads=num_heads,
        in_features=width,
        qkv_features=width,
        out_features=width,
        dtype=dtype,
        param_dtype=jnp.float32,
        bias_init=nnx.initializers.zeros_init(),
        attention_fn=functools.partial(dot_product_attention, implementation=attention),
        dropout_rate=dropout,
        # Train mode from the start, like every Dropout here (`model.eval()` flips it).
        deterministic=False if dropout else None,
        decode=False,
        rngs=rngs,
        **inits,
    )


class Mlp(nnx.Module):
    """Transformer feed-forward: Linear -> GELU (or ReLU) -> Linear (timm names: fc1, fc2)."""

    def __init__(
        self,
        width: int,
        mlp_dim: int,
        *,
        dropout: float = 0.0,
        activation: str = "gelu",
        init: str = "xmodal",
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_choice("activation", activation, ACTIVATIONS)
        linear = functools.partial(nnx.Linear, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.fc1 = linear(width, mlp_dim, **linear_inits(width, init, BIAS_INIT))
        self.fc2 = linear(mlp_dim, width, **linear_inits(mlp_dim, init, BIAS_INIT))
        self.drop = Dropout(dropout, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        x = ACTIVATIONS[self.activation](self.fc1(x))
        return self.fc2(self.drop(x))


class EncoderBlock(nnx.Module):
    """Transformer block, pre-LN by default: x + Attn(LN(x)); x + MLP(LN(x)) (ViT, Dosovitskiy
    et al. 2021), or post-LN: LN(x + Attn(x)); LN(x + MLP(x)) (Vaswani et al. 2017; PyTorch's
    `nn.TransformerEncoderLayer` default, which H-T's released recipe encoder uses).

    Pre-LN trains stably without warm-up tricks at depth; post-LN is kept to be the released H-T
    (`BlockLayout`). Dropout sits where PyTorch puts it: on each residual branch and inside the
    MLP, plus on the attention probabilities when `layout.attention_dropout` > 0.
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_dim: int,
        *,
        dropout: float = 0.0,
        dtype: Dtype = jnp.float32,
        attention: AttentionImpl = "auto",
        layout: BlockLayout = DEFAULT_LAYOUT,
        rngs: nnx.Rngs,
    ):
        self.post_ln = layout.block == "post_ln"
        self.norm1 = layer_norm(width, dtype=dtype, rngs=rngs, eps=layout.norm_eps)
        self.attn = attention_layer(
            width,
            num_heads,
            dtype=dtype,
            attention=attention,
            dropout=layout.attention_dropout,
            init=layout.init,
            rngs=rngs,
        )
        self.drop = Dropout(dropout, rngs=rngs)
        self.norm2 = layer_norm(width, dtype=dtype, rngs=rngs, eps=layout.norm_eps)
        self.mlp = Mlp(
            width,
            mlp_dim,
            dropout=dropout,
            activation=layout.activation,
            init=layout.init,
            dtype=dtype,
            rngs=rngs,
        )
        self.remat = "none"  # a key of REMAT_POLICIES; set for a whole model with `set_remat`

    def forward(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if self.post_ln:
            x = self.norm1(x + self.drop(self.attn(x, mask=mask)))
            return self.norm2(x + self.drop(self.mlp(x)))
        x = x + self.drop(self.attn(self.norm1(x), mask=mask))
        return x + self.drop(self.mlp(self.norm2(x)))

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: [B, T, width]; mask: boolean, broadcastable to [B, heads, T, T] (key_padding_mask)."""
        if self.remat == "none":
            return self.forward(x, mask)
        policy = REMAT_POLICIES[self.remat]
        return nnx.remat(EncoderBlock.forward, policy=policy)(self, x, mask)


def set_remat(module: nnx.Module, policy: str) -> None:
    """Apply a remat policy (see REMAT_POLICIES) to every transformer block inside `module`."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {policy!r}")
    for _, node in nnx.iter_graph(module):
        if isinstance(node, EncoderBlock):
            node.remat = policy


class TransformerEncoder(nnx.Module):
    """A stack of blocks (`layout.block`) with an optional final LayerNorm (`layout.final_norm`:
    needed after pre-LN blocks, absent from PyTorch's `nn.TransformerEncoder`)."""

    def __init__(
        self,
        width: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        *,
        dropout: float = 0.0,
        dtype: Dtype = jnp.float32,
        attention: AttentionImpl = "auto",
        layout: BlockLayout = DEFAULT_LAYOUT,
        rngs: nnx.Rngs,
    ):
        self.blocks = nnx.List(
            [
                EncoderBlock(
                    width,
                    num_heads,
                    mlp_dim,
                    dropout=dropout,
                    dtype=dtype,
                    attention=attention,
                    layout=layout,
                    rngs=rngs,
                )
                for _ in range(depth)
            ]
        )
        if layout.init == "pytorch":  # nn.TransformerEncoder deep-copies one initialised layer
            first = nnx.state(self.blocks[0], nnx.Param)
            for block in list(self.blocks)[1:]:
                nnx.update(block, jax.tree.map(jnp.copy, first))
        self.norm = (
            layer_norm(width, dtype=dtype, rngs=rngs, eps=layout.norm_eps)
            if layout.final_norm
            else None
        )

    def __call__(
        self,
        x: jax.Array,
        valid: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """x: [B, T, width]; valid: [B, T] boolean (False = padding) or None; or segment_ids:
        [B, T] ints, each token attending only to tokens of its own segment (packed sequences)."""
        if valid is not None and segment_ids is not None:
            raise ValueError("pass either valid or segment_ids, not both")
        mask = None
        if valid is not None:
            mask = key_padding_mask(valid)
        elif segment_ids is not None:
            mask = segment_mask(segment_ids)
        for block in self.blocks:
            x = block(x, mask)
        return x if self.norm is None else self.norm(x)


def count_params(module: nnx.Module) -> int:
    """Number of trainable parameters; works on abstract modules from `nnx.eval_shape`."""
    leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
    return sum(math.prod(leaf.shape) for leaf in leaves)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Unit-norm rows in float32 (retrieval uses cosine similarity = dot product of these)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))
