"""Run one real train step of every paper-size preset on this machine with a tiny batch.

    python tools/run_paper_presets.py [--batch_size=2] [--out=paper_presets.json]

Each preset is built at full size (ViT-B/16 or ResNet-50 at 224 px, the papers' text encoders and
1024-d space), its backbone parameters are counted, and one jitted train step runs on random
inputs with the preset's text shapes. Prints one row per preset (parameters, loss, init / compile /
step seconds) and writes them as JSON. The test suite traces the same steps abstractly
(tests/test_paper_presets.py); this tool compiles and runs them, about a minute each on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from configs import acme, adamine, ht, je, tnlbt
from xmodal.data import pipeline
from xmodal.models.layers import count_params
from xmodal.run import decoder_trains
from xmodal.runtime import state as state_lib
from xmodal.training.step import make_train_step

PRESETS = [
    ("tnlbt", tnlbt, "b16"),
    ("ht", ht, "r50"),
    ("ht", ht, "vit"),
    ("adamine", adamine, "paper"),
    ("je", je, "paper"),
    ("acme", acme, "paper"),
]
VOCAB = 16_000  # about H-T's Recipe1M vocabulary

_BATCH = flags.DEFINE_integer("batch_size", 2, "Examples per step.")
_OUT = flags.DEFINE_string("out", "paper_presets.json", "JSON output.")


def run_one_step(config, batch_size: int) -> dict[str, float]:
    config.train.batch_size = batch_size
    config.train.warmup_steps = 0  # the warm-up starts at a learning rate of 0: nothing would move
    t0 = time.perf_counter()
    graphdef, state, tx = state_lib.init_train_state(config, VOCAB)
    jax.block_until_ready(state)
    model = nnx.merge(graphdef, state.params, state.model_state)
    image_params, total_params = count_params(model.image_encoder), count_params(model)
    before = jax.tree.map(np.asarray, state.params["recipe_encoder"])
    decoder = config.data.max_decoder_tokens if decoder_trains(config) else 0
    host = pipeline.random_batch(config.data, batch_size, VOCAB, decoder_tokens=decoder)
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    t1 = time.perf_counter()
    nets = state_lib.adversarial_nets(config, VOCAB)
    step = jax.jit(make_train_step(graphdef, tx, config, nets), donate_argnums=0)
    compiled = step.lower(state, batch).compile()
    t2 = time.perf_counter()
    state, metrics = compiled(state, batch)
    loss = float(metrics["loss"])
    t3 = time.perf_counter()
    moved = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != b)), state.params["recipe_encoder"], before
    )
    if not np.isfinite(loss) or int(state.step) != 1 or not any(jax.tree.leaves(moved)):
        raise RuntimeError(f"the step did not train: loss {loss}, step {int(state.step)}")
    return dict(
        image_params=image_params,
        params=total_params,
        loss=loss,
        init_s=t1 - t0,
        compile_s=t2 - t1,
        step_s=t3 - t2,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rows = []
    print(
        f"{'preset':22s} {'image params':>13s} {'all params':>12s} {'loss':>7s} "
        f"{'init s':>7s} {'compile s':>9s} {'step s':>7s}"
    )
    for name, module, arg in PRESETS:
        r = {
            "preset": f"configs/{name}.py:{arg}",
            **run_one_step(module.get_config(arg), _BATCH.value),
        }
        rows.append(r)
        print(
            f"{r['preset']:22s} {r['image_params']:13,d} {r['params']:12,d} {r['loss']:7.3f} "
            f"{r['init_s']:7.1f} {r['compile_s']:9.1f} {r['step_s']:7.1f}",
            flush=True,
        )
    with open(_OUT.value, "w") as f:
        json.dump(
            {"device": str(jax.devices()[0].device_kind), "batch_size": _BATCH.value, "rows": rows},
            f,
            indent=1,
        )
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
