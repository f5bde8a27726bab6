"""Convolution-network ops in the forms XLA:CPU runs fast, with the values of their lax forms.

Three lax forms run far below XLA:CPU's speed (jax 0.10), and a ResNet at the first runs' 64 px
meets all three in every step (a `tools/bench_train.py --trace_dir` profile of ACME's step):
- max pooling's gradient: select-and-scatter is expanded into reductions that carry each
  window's argmax in four index arrays; here, the maximum of strided slices with a gradient to
  each window's first maximum;
- a convolution whose output map is smaller than its kernel (layer4's 3x3 on a 2 x 2 map):
  off the fast convolution path; here, one matmul over the patches;
- the input gradient of a strided convolution over a few channels (a stem over RGB pixels, which
  the generated images' ranking pulls back to the generator): a convolution over a dilated map
  with 3 output channels; here, the gradient of the same convolution written over s x s blocks
  of pixels (space to depth).
`python tools/bench_conv_ops.py` times each against its lax form (docs/performance.md has the
numbers). Each is chosen per platform (`jax.lax.platform_dependent`): on CPU this form, on every
other platform (cuDNN, TPU) the lax op, so a GPU program is the one it was.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Padding = Sequence[tuple[int, int]]
# A strided convolution over at most this many input channels (a stem over RGB pixels) takes its
# input gradient through the space-to-depth form on CPU.
PIXEL_CHANNELS = 4


def _windows(
    padded: jax.Array, window: Sequence[int], strides: Sequence[int], out_hw: Sequence[int]
):
    """(i, j, the [B, oh, ow, C] values at window offset (i, j)) for every offset, row-major."""
    b, _, _, c = padded.shape
    (oh, ow), (sh, sw) = out_hw, strides
    for i in range(window[0]):
        for j in range(window[1]):
            limit = (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c)
            yield i, j, lax.slice(padded, (0, i, j, 0), limit, (1, sh, sw, 1))


def _out_size(size: int, window: int, stride: int) -> int:
    return (size - window) // stride + 1


def _pad_spatial(x: jax.Array, padding: Padding, value: float) -> jax.Array:
    return jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)), constant_values=value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _sliced_max_pool(x: jax.Array, window: tuple, strides: tuple, padding: tuple) -> jax.Array:
    return _sliced_max_pool_fwd(x, window, strides, padding)[0]


def _sliced_max_pool_fwd(x, window, strides, padding):
    padded = _pad_spatial(x, padding, -jnp.inf)
    out_hw = [_out_size(padded.shape[d + 1], window[d], strides[d]) for d in range(2)]
    out = None
    for _, _, values in _windows(padded, window, strides, out_hw):
        out = values if out is None else jnp.maximum(out, values)
    return out, (x, out)


def _sliced_max_pool_bwd(window, strides, padding, residuals, g):
    """Each window's gradient to its first maximum in row-major order (select-and-scatter's
    choice, and PyTorch's), placed back by interior padding."""
    x, out = residuals
    padded = _pad_spatial(x, padding, -jnp.inf)
    oh, ow = out.shape[1:3]
    taken = jnp.zeros(out.shape, bool)
    grad = jnp.zeros(padded.shape, g.dtype)
    zero = jnp.zeros((), g.dtype)
    for i, j, values in _windows(padded, window, strides, (oh, ow)):
        hit = (values == out) & ~taken
        taken = taken | hit
        placed = [
            (0, 0, 0),
            (i, padded.shape[1] - i - (oh - 1) * strides[0] - 1, strides[0] - 1),
            (j, padded.shape[2] - j - (ow - 1) * strides[1] - 1, strides[1] - 1),
            (0, 0, 0),
        ]
        grad = grad + lax.pad(jnp.where(hit, g, zero), zero, placed)
    (top, _), (left, _) = padding
    return (grad[:, top : top + x.shape[1], left : left + x.shape[2]],)


_sliced_max_pool.defvjp(_sliced_max_pool_fwd, _sliced_max_pool_bwd)


def _reduce_window_max_pool(x, window, strides, padding):
    pads = ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), pads)


def max_pool(
    x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: Padding
) -> jax.Array:
    """Max pooling of NHWC `x` (padding with -inf, as PyTorch and `nnx.max_pool`)."""
    args = (tuple(window), tuple(strides), tuple(tuple(p) for p in padding))
    return lax.platform_dependent(
        x,
        cpu=lambda v: _sliced_max_pool(v, *args),
        default=lambda v: _reduce_window_max_pool(v, *args),
    )


def _patch_matmul_conv(x, kernel, strides, padding, precision, preferred_element_type):
    """The convolution as one matmul over its patches (NHWC input, HWIO kernel)."""
    kh, kw, cin, cout = kernel.shape
    padded = _pad_spatial(x, padding, 0.0)
    out_hw = [_out_size(padded.shape[d + 1], kernel.shape[d], strides[d]) for d in range(2)]
    patches = jnp.concatenate(
        [v for _, _, v in _windows(padded, (kh, kw), strides, out_hw)], axis=-1
    )
    return lax.dot_general(
        patches,
        kernel.reshape(kh * kw * cin, cout),
        (((3,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _space_to_depth_conv(x, kernel, stride, padding, precision, preferred_element_type):
    """A stride-s convolution as a stride-1 one over s x s blocks of pixels (space to depth):
    the same values; its input gradient is a plain convolution, not one over a dilated map."""
    b, _, _, c = x.shape
    cout = kernel.shape[-1]
    out_hw, taps, blocks, pads = [], [], [], [(0, 0)]
    for d in range(2):
        size, k = x.shape[d + 1] + sum(padding[d]), kernel.shape[d]
        out_hw.append(_out_size(size, k, stride))
        taps.append(-(-k // stride))  # the kernel in blocks, rounded up
        blocks.append(max(-(-size // stride), out_hw[d] - 1 + taps[d]))
        pads.append((padding[d][0], blocks[d] * stride - x.shape[d + 1] - padding[d][0]))
    folded = jnp.pad(x, [*pads, (0, 0)]).reshape(b, blocks[0], stride, blocks[1], stride, c)
    folded = folded.transpose(0, 1, 3, 2, 4, 5).reshape(*folded.shape[:2], blocks[1], -1)
    k = jnp.pad(
        kernel,
        [(0, t * stride - n) for t, n in zip(taps, kernel.shape[:2], strict=True)] + [(0, 0)] * 2,
    )
    k = k.reshape(taps[0], stride, taps[1], stride, c, cout).transpose(0, 2, 1, 3, 4, 5)
    y = _lax_conv(
        folded,
        k.reshape(taps[0], taps[1], stride * stride * c, cout),
        1,
        "VALID",
        precision,
        preferred_element_type,
    )
    return y[:, : out_hw[0], : out_hw[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _pixel_stem_conv(x, kernel, stride, padding, precision, preferred_element_type):
    return _lax_conv(x, kernel, stride, padding, precision, preferred_element_type)


def _lax_conv(x, kernel, stride, padding, precision, preferred_element_type):
    return lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _pixel_stem_conv_fwd(x, kernel, stride, padding, precision, preferred_element_type):
    return _lax_conv(x, kernel, stride, padding, precision, preferred_element_type), (x, kernel)


def _pixel_stem_conv_bwd(stride, padding, precision, preferred_element_type, residuals, g):
    """The input gradient through the space-to-depth form, the kernel's through the lax op
    (the faster of the two for each)."""
    x, kernel = residuals
    args = (stride, padding, precision, preferred_element_type)
    dx = jax.vjp(lambda v: _space_to_depth_conv(v, kernel, *args), x)[1](g.astype(x.dtype))[0]
    dk = jax.vjp(lambda k: _lax_conv(x, k, *args), kernel)[1](g)[0]
    return dx, dk


_pixel_stem_conv.defvjp(_pixel_stem_conv_fwd, _pixel_stem_conv_bwd)


def _is_nhwc_hwio(dimension_numbers, ndim: int) -> bool:
    if ndim != 4 or dimension_numbers is None:
        return False
    dn = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, dimension_numbers)
    return dn == lax.conv_dimension_numbers((1,) * 4, (1,) * 4, ("NHWC", "HWIO", "NHWC"))


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    **kwargs,
) -> jax.Array:
    """`lax.conv_general_dilated`, for `nnx.Conv(conv_general_dilated=...)`. On CPU, a 2-D NHWC
    convolution whose output map is smaller than its kernel runs as a matmul over its patches,
    and a strided one over pixels (at most `PIXEL_CHANNELS` channels) takes its input gradient
    through the space-to-depth form; anything else, and every other platform, is the lax op."""

    def lax_conv(x):
        return lax.conv_general_dilated(
            x,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
            **kwargs,
        )

    plain = (
        _is_nhwc_hwio(dimension_numbers, lhs.ndim)
        and not isinstance(padding, str)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and kwargs.get("out_sharding") is None
    )
    if not plain:
        return lax_conv(lhs)
    kernel_hw = rhs.shape[:2]
    padding = tuple(tuple(p) for p in padding)
    out_hw = [
        _out_size(lhs.shape[d + 1] + sum(padding[d]), kernel_hw[d], window_strides[d])
        for d in range(2)
    ]
    if any(o < k for o, k in zip(out_hw, kernel_hw, strict=True)):
        cpu = lambda x: _patch_matmul_conv(
            x, rhs, window_strides, padding, precision, preferred_element_type
        )
    elif (
        window_strides[0] == window_strides[1] > 1
        and lhs.shape[-1] <= PIXEL_CHANNELS
        and min(kernel_hw) >= window_strides[0]
    ):
        cpu = lambda x: _pixel_stem_conv(
            x, rhs, window_strides[0], padding, precision, preferred_element_type
        )
    else:
        return lax_conv(lhs)
    return lax.platform_dependent(lhs, cpu=cpu, default=lax_conv)
