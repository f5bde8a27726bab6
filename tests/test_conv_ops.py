"""Tests for xmodal.models.conv_ops: the CPU forms give the lax ops' values and gradients (max
pooling's gradient to each window's first maximum, ties included), run where they should (no
select-and-scatter, no convolution in the CPU program of a small map) and leave every other
platform's program the lax op."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from xmodal.models import conv_ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NHWC = ("NHWC", "HWIO", "NHWC")
POOL = ((3, 3), (2, 2), ((1, 1), (1, 1)))


def lax_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), POOL_PADS)


POOL_PADS = ((0, 0), (1, 1), (1, 1), (0, 0))


def cpu_text(f, *args) -> str:
    return jax.jit(f).lower(*args).as_text()


@pytest.mark.parametrize("size", [9, 16])
def test_max_pool_gives_lax_values_and_first_maximum_gradients_with_ties(size):
    # Integer values from {0, 1, 2}: most windows hold their maximum more than once, where a
    # max-of-slices left to autodiff would split the gradient between the tied places.
    x = jnp.floor(jax.random.uniform(jax.random.key(0), (2, size, size, 3)) * 3)
    pool = lambda v: conv_ops.max_pool(v, *POOL)
    np.testing.assert_array_equal(pool(x), lax_pool(x))
    g = jax.random.normal(jax.random.key(1), lax_pool(x).shape)
    ours = jax.vjp(pool, x)[1](g)[0]
    want = jax.vjp(lax_pool, x)[1](g)[0]
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-6)
    split = jax.vjp(lambda v: _autodiff_max_of_slices(v), x)[1](g)[0]
    assert np.abs(np.asarray(split - want)).max() > 0.1  # the ties matter in this input


def _autodiff_max_of_slices(x):
    p = jnp.pad(x, POOL_PADS, constant_values=-jnp.inf)
    n = (p.shape[1] - 3) // 2 + 1
    out = None
    for i in range(3):
        for j in range(3):
            v = p[:, i : i + 2 * (n - 1) + 1 : 2, j : j + 2 * (n - 1) + 1 : 2]
            out = v if out is None else jnp.maximum(out, v)
    return out


def test_max_pool_on_cpu_has_no_select_and_scatter_but_other_platforms_keep_reduce_window():
    x = jnp.zeros((2, 8, 8, 4))
    grad = jax.grad(lambda v: jnp.sum(conv_ops.max_pool(v, *POOL) ** 2))
    assert "select_and_scatter" not in cpu_text(grad, x)
    assert "reduce_window" not in cpu_text(grad, x)
    tpu = jax.jit(grad).trace(x).lower(lowering_platforms=("tpu",)).as_text()
    assert "select_and_scatter" in tpu or "reduce_window" in tpu


@pytest.mark.parametrize(
    "size, cin, cout, kernel, stride, pad",
    [
        (2, 8, 8, 3, 1, 1),  # ResNet layer4's 3x3 at 64 px: a 2 x 2 map
        (4, 8, 16, 3, 2, 1),  # its strided first conv: 4 x 4 -> 2 x 2
        (4, 8, 1, 4, 4, 0),  # the image discriminator's 4 x 4 logit: one output position
        (1, 5, 6, 3, 1, 1),  # a single pixel
    ],
)
def test_small_map_conv_gives_lax_values_and_gradients(size, cin, cout, kernel, stride, pad):
    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (3, size, size, cin))
    w = jax.random.normal(kw, (kernel, kernel, cin, cout))
    pads = [(pad, pad)] * 2

    def ours(x, w):
        return conv_ops.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=NHWC)

    def want(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=NHWC)

    np.testing.assert_allclose(ours(x, w), want(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
    ours_grads, want_grads = jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(want), (0, 1))(x, w)
    for a, b in zip(ours_grads, want_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert "convolution" not in cpu_text(ours, x, w)  # the matmul over patches ran
    tpu = jax.jit(ours).trace(x, w).lower(lowering_platforms=("tpu",)).as_text()
    assert "convolution" in tpu


def test_maps_at_least_the_kernel_and_other_layouts_stay_lax_convolutions():
    x, w = jnp.ones((2, 3, 3, 4)), jnp.ones((3, 3, 4, 4))
    same = lambda x, w: conv_ops.conv_general_dilated(
        x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=NHWC
    )
    assert "convolution" in cpu_text(same, x, w)  # a 3 x 3 output of a 3 x 3 kernel
    dilated = lambda x, w: conv_ops.conv_general_dilated(
        x[:, :2, :2], w, (1, 1), [(1, 1)] * 2, rhs_dilation=(2, 2), dimension_numbers=NHWC
    )
    assert "convolution" in cpu_text(dilated, x, w)
    nchw, oihw = jnp.ones((2, 4, 2, 2)), jnp.ones((4, 4, 3, 3))
    layout = ("NCHW", "OIHW", "NCHW")
    plain = lambda x, w: conv_ops.conv_general_dilated(
        x, w, (1, 1), [(1, 1)] * 2, dimension_numbers=layout
    )
    assert "convolution" in cpu_text(plain, nchw, oihw)
    want = lax.conv_general_dilated(nchw, oihw, (1, 1), [(1, 1)] * 2, dimension_numbers=layout)
    np.testing.assert_allclose(plain(nchw, oihw), want)


@pytest.mark.parametrize("size, kernel, pad", [(16, 7, 3), (15, 7, 3), (9, 3, 1)])
def test_strided_pixel_conv_gives_lax_gradients_without_a_dilated_input_gradient(size, kernel, pad):
    kx, kw, kg = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, size, size, 3))
    w = jax.random.normal(kw, (kernel, kernel, 3, 5))
    pads = [(pad, pad)] * 2

    def ours(x, w):
        return conv_ops.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=NHWC)

    def want(x, w):
        return lax.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=NHWC)

    np.testing.assert_allclose(ours(x, w), want(x, w), rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, want(x, w).shape)
    for a, b in zip(jax.vjp(ours, x, w)[1](g), jax.vjp(want, x, w)[1](g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    input_grad = lambda x, w: jax.vjp(lambda v: ours(v, w), x)[1](g)[0]
    assert "lhs_dilate = [2, 2]" not in cpu_text(input_grad, x, w)
    lax_input_grad = lambda x, w: jax.vjp(lambda v: want(v, w), x)[1](g)[0]
    assert "lhs_dilate = [2, 2]" in cpu_text(lax_input_grad, x, w)  # what the CPU form avoids


def test_bench_conv_ops_times_each_op_both_ways(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "tools/bench_conv_ops.py", "--steps=1", f"--out={out}"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    assert [r["op"].split(",")[0] for r in rows] == [
        "stem max pool 3x3/2",
        "layer4 conv 3x3 on a 2x2 map",
        "stem conv 7x7/2 over RGB",
    ]
    assert all(r["lax_ms"] > 0 and r["conv_ops_ms"] > 0 for r in rows)
