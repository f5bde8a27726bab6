"""Lower the train step, the eval embedding step and decoding for CUDA, on a machine without a GPU.

    pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"   # ~5 GB, once
    # or jax[cuda13] (the CUDA 13 wheels: the plugin and cuDNN alone are enough to lower)
    python tools/lower_for_gpu.py --config=configs/tnlbt.py:b16 [--config.x=y] [--out=F.json]

JAX lowers for a platform whose plugin is installed even when no such device is present
(`jit(f).trace(...).lower(lowering_platforms=('cuda',))`), and the cuDNN fused-attention rules
(mask shapes, head sizes) are checked at lowering. Each program runs with `model.attention=cudnn`
and `model.dtype=bfloat16` (what `auto` picks on a GPU in bf16). Per program it prints: lowered or
the error; the number of cuDNN fused-attention calls; the matmul and convolution FLOPs by operand
dtype, and fails on float32 ones that hold >= 1% of the program's matmul + convolution FLOPs
(bf16 was asked for; the f32 projections and losses stay far below that). Exits 1 on any failure.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from xmodal.data import pipeline, schema
from xmodal.models.decoding import greedy_decode
from xmodal.run import decoder_trains
from xmodal.runtime import state as state_lib
from xmodal.training.step import make_train_step

VOCAB = 16_000  # about H-T's Recipe1M vocabulary
F32_SHARE_LIMIT = 0.01
CUDNN_FMHA = "__cudnn$fmha"
_DOT = re.compile(
    r"stablehlo\.dot_general [^\n]*?contracting_dims = \[([\d, ]*)\] x \[[\d, ]*\][^\n]*?"
    r": \(tensor<([^>]*)>, tensor<([^>]*)>\) -> tensor<([^>]*)>"
)
_CONV = re.compile(
    r"stablehlo\.convolution\([^\n]*?dim_numbers = \[[^\]]*\]x\[([^\]]*)\][^\n]*?"
    r": \(tensor<([^>]*)>, tensor<([^>]*)>\) -> tensor<([^>]*)>"
)


def _dims(tensor: str) -> tuple[list[int], str]:
    *shape, dtype = tensor.split("x")
    return [int(d) for d in shape], dtype


def matmul_flops(hlo_text: str) -> dict[str, float]:
    """FLOPs of every `dot_general` and `convolution` in StableHLO text (the work of the matrix
    units: a ResNet's is nearly all convolutions), summed by lhs operand dtype."""
    out: dict[str, float] = {}

    def add(dtype: str, flops: float) -> None:
        out[dtype] = out.get(dtype, 0.0) + flops

    for contracting, lhs, _, result in _DOT.findall(hlo_text):
        lhs_shape, dtype = _dims(lhs)
        result_shape, _ = _dims(result)
        k = math.prod(lhs_shape[int(d)] for d in contracting.split(",") if d.strip())
        add(dtype, 2.0 * math.prod(result_shape) * k)
    for kernel_dims, lhs, rhs, result in _CONV.findall(hlo_text):
        _, dtype = _dims(lhs)
        kernel_shape, _ = _dims(rhs)
        result_shape, _ = _dims(result)
        # Each output element sums the kernel's window x input features: the kernel's size
        # over its output-feature dimension ('o'), whatever the layout (forward or gradients).
        out_features = kernel_shape[[d.strip() for d in kernel_dims.split(",")].index("o")]
        add(dtype, 2.0 * math.prod(result_shape) * math.prod(kernel_shape) / out_features)
    return out


def analyse(hlo_text: str) -> dict[str, Any]:
    """cuDNN fused-attention calls and matmul FLOPs by dtype; `ok` False on a large f32 share."""
    flops = matmul_flops(hlo_text)
    total = sum(flops.values()) or 1.0
    f32_share = flops.get("f32", 0.0) / total
    return {
        "cudnn_attention_calls": hlo_text.count(CUDNN_FMHA),
        "matmul_gflops_by_dtype": {k: v / 1e9 for k, v in sorted(flops.items())},
        "f32_matmul_share": f32_share,
        "ok": f32_share < F32_SHARE_LIMIT,
    }


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def programs(config: Any, batch_size: int) -> dict[str, tuple[Callable[..., Any], tuple]]:
    """name -> (function, abstract arguments): train step, eval embedding, greedy decoding."""
    graphdef, state, tx = state_lib.abstract_train_state(config, VOCAB)
    decoder = config.data.max_decoder_tokens if decoder_trains(config) else 0
    host = pipeline.random_batch(config.data, batch_size, VOCAB, decoder_tokens=decoder)
    batch = _abstract(host)

    embed = state_lib.in_eval_mode(graphdef, lambda model, batch: model.embed_pairs(batch))
    out = {
        "train_step": (
            make_train_step(graphdef, tx, config, state_lib.adversarial_nets(config, VOCAB)),
            (state, batch),
        ),
        "eval_embed": (embed, (state.params, state.model_state, batch)),
    }
    if config.model.cross_decoder.enabled:

        def decode(model: Any, images: jax.Array) -> jax.Array:
            memory, valid = model.photo_memory(images)
            length = config.data.max_decoder_tokens
            return greedy_decode(model.decoder_logits, memory, valid, length)

        decode_args = (state.params, state.model_state, batch[schema.IMAGE])
        out["decode"] = (state_lib.in_eval_mode(graphdef, decode), decode_args)
    return out


def lower_all(config: Any, batch_size: int) -> dict[str, dict[str, Any]]:
    """Each program lowered for CUDA with cuDNN attention in bf16, and its analysis."""
    config.model.attention = "cudnn"
    config.model.dtype = "bfloat16"
    report = {}
    for name, (fn, args) in programs(config, batch_size).items():
        try:
            text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        except Exception as e:  # report every program, then fail
            report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
            continue
        report[name] = {"lowered": True, **analyse(text)}
    return report


def _define_flags() -> None:
    """Defined when run as a script only: the tests import this module next to other tools."""
    config_flags.DEFINE_config_file("config", None, "Config file[:preset] to lower.")
    flags.DEFINE_integer("batch_size", 0, "Global batch (0: the config's).")
    flags.DEFINE_string("out", "", "Also write the report as JSON here.")
    flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    del argv
    config, out = flags.FLAGS.config, flags.FLAGS.out
    batch_size = flags.FLAGS.batch_size or config.train.batch_size
    report = lower_all(config, batch_size)
    print(f"{config.method}:{config.preset}  batch {batch_size}  (CUDA, cuDNN attention, bf16)")
    for name, r in report.items():
        if "error" in r:
            print(f"  {name:<11} FAILED  {r['error']}")
            continue
        dots = ", ".join(f"{k} {v:,.0f}" for k, v in r["matmul_gflops_by_dtype"].items())
        print(
            f"  {name:<11} {'ok' if r['ok'] else 'FAILED'}  cuDNN attention calls "
            f"{r['cudnn_attention_calls']}  matmul GFLOP by dtype: {dots}  "
            f"(f32 share {100 * r['f32_matmul_share']:.2f}%)"
        )
    if out:
        with open(out, "w") as f:
            json.dump({"config": f"{config.method}:{config.preset}", **report}, f, indent=2)
    sys.exit(0 if all(r["ok"] for r in report.values()) else 1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
