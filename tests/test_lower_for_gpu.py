"""tools/lower_for_gpu.py: its HLO analysis on known programs (everywhere), and the paper-size
presets lowered for CUDA with cuDNN attention where the CUDA wheels are installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from tools import lower_for_gpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_cuda_wheels() -> bool:
    try:
        return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13))
    except ModuleNotFoundError:  # no jax_plugins package at all
        return False


HAS_CUDA_WHEELS = _has_cuda_wheels()


def test_convolution_flops_count_forward_and_both_gradients():
    """A ResNet's matrix work is convolutions: each of the three (forward, input and kernel
    gradients) is 2 x 2*8*8*6 outputs x 3*3*4 MACs here, whatever its dimension layout."""
    import jax
    import jax.numpy as jnp

    def conv(x, w):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)

    x, w = jnp.ones((2, 8, 8, 4), jnp.bfloat16), jnp.ones((3, 3, 4, 6), jnp.bfloat16)
    grads = jax.value_and_grad(lambda x, w: conv(x, w).astype(jnp.float32).sum(), (0, 1))
    text = jax.jit(grads).lower(x, w).as_text()
    assert lower_for_gpu.matmul_flops(text) == {"bf16": 3 * 2 * (2 * 8 * 8 * 6) * (3 * 3 * 4)}


def test_matmul_flops_by_dtype_and_the_f32_share():
    def f(a, b, c, d):
        return (a @ b).sum() + (c @ d).sum()

    args = (
        jax.ShapeDtypeStruct((4, 8), jnp.bfloat16),
        jax.ShapeDtypeStruct((8, 16), jnp.bfloat16),
        jax.ShapeDtypeStruct((2, 3, 5), jnp.float32),
        jax.ShapeDtypeStruct((5, 7), jnp.float32),
    )
    text = jax.jit(f).trace(*args).lower().as_text()
    flops = lower_for_gpu.matmul_flops(text)
    assert flops == {"bf16": 2 * 4 * 16 * 8, "f32": 2 * 2 * 3 * 7 * 5}
    report = lower_for_gpu.analyse(text)
    assert report["cudnn_attention_calls"] == 0
    assert report["f32_matmul_share"] == pytest.approx(420 / (420 + 1024))
    assert not report["ok"]  # 29% of the matmul FLOPs in f32


@pytest.mark.skipif(
    not HAS_CUDA_WHEELS,
    reason='needs the CUDA wheels (pip install "jax[cuda12]==<jax version>" or cuda13; README)',
)
@pytest.mark.parametrize(
    "config", ["configs/tnlbt.py:b16", "configs/tnlbt.py:b16,adversarial", "configs/ht.py:vit"]
)
def test_paper_presets_lower_for_cuda_with_cudnn_attention(config, tmp_path):
    out = tmp_path / "lowered.json"
    cmd = [sys.executable, "tools/lower_for_gpu.py", f"--config={config}", f"--out={out}"]
    cmd += ["--batch_size=64"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["train_step"]["cudnn_attention_calls"] > 0
    assert report["eval_embed"]["cudnn_attention_calls"] > 0
    assert report["train_step"]["f32_matmul_share"] < 0.01
