"""The lax forms against xmodal.models.conv_ops' CPU forms, op by op, at the shapes of ACME's first
run (batch 64, a ResNet-18 of width 16 at 64 px, whose generated images' ranking pulls gradients
back to the pixels): forward + backward time of each, median of `--steps` blocked calls.

    python tools/bench_conv_ops.py [--steps=20] [--out=bench_conv_ops.json]

On a GPU both columns are the lax op (conv_ops picks its CPU forms on CPU only).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from xmodal.models import conv_ops

_STEPS = flags.DEFINE_integer("steps", 20, "Timed calls per op (after one warm-up call).")
_OUT = flags.DEFINE_string("out", "bench_conv_ops.json", "JSON output.")

NHWC = ("NHWC", "HWIO", "NHWC")


def _median_ms(f: Callable, *args) -> float:
    f = jax.jit(f)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _cases():
    """(name, what is differentiated, the lax form's and conv_ops' gradient functions, args)."""
    k1, k2 = jax.random.split(jax.random.key(0))
    pooled = jax.nn.relu(jax.random.normal(k1, (64, 32, 32, 16)))
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    yield (
        "stem max pool 3x3/2, [64,32,32,16]",
        "input",
        jax.grad(
            lambda x: jnp.sum(
                lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pads) ** 2
            )
        ),
        jax.grad(lambda x: jnp.sum(conv_ops.max_pool(x, (3, 3), (2, 2), pads[1:3]) ** 2)),
        (pooled,),
    )
    convs = (
        # name, input, kernel, stride, padding, the gradient's arguments
        (
            "layer4 conv 3x3 on a 2x2 map, 128 -> 128",
            (64, 2, 2, 128),
            (3, 3, 128, 128),
            1,
            1,
            (0, 1),
        ),
        ("stem conv 7x7/2 over RGB, [64,64,64,3] -> 16", (64, 64, 64, 3), (7, 7, 3, 16), 2, 3, 0),
    )
    for name, x_shape, w_shape, stride, pad, wrt in convs:

        def loss(conv, stride=stride, pad=pad):
            return lambda x, w: jnp.sum(
                conv(x, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=NHWC) ** 2
            )

        yield (
            name,
            "input and kernel" if wrt == (0, 1) else "input",
            jax.grad(loss(lax.conv_general_dilated), wrt),
            jax.grad(loss(conv_ops.conv_general_dilated), wrt),
            (jax.random.normal(k1, x_shape), jax.random.normal(k2, w_shape)),
        )


def main(argv) -> None:
    del argv
    rows = []
    for name, wrt, lax_form, ours, args in _cases():
        rows.append(
            {
                "op": name,
                "gradient": wrt,
                "lax_ms": _median_ms(lax_form, *args),
                "conv_ops_ms": _median_ms(ours, *args),
            }
        )
    print(f"{jax.devices()[0].device_kind} | forward + backward (gradient w.r.t. the column)")
    print(f"{'op':46s} {'gradient':17s} {'lax ms':>8s} {'conv_ops ms':>12s}")
    for r in rows:
        print(f"{r['op']:46s} {r['gradient']:17s} {r['lax_ms']:8.2f} {r['conv_ops_ms']:12.2f}")
    with open(_OUT.value, "w") as f:
        json.dump({"device": jax.devices()[0].device_kind, "rows": rows}, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
