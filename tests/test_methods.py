"""Every method's config: the tiny preset trains on CPU and its loss falls; the paper-size presets
build (abstractly) with the papers' parameter counts; ablation flags and bad arguments."""

from __future__ import annotations

import itertools
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from configs import adamine, common, ht, je
from xmodal import state as state_lib
from xmodal import train
from xmodal.data import info as data_info
from xmodal.data import pipeline
from xmodal.models.dual_encoder import abstract_model
from xmodal.models.layers import count_params

STEPS = 40


def _losses(config, data_dir, steps=STEPS):
    """Per-step losses of `steps` jitted train steps on one device (the loop of train.py minus
    the mesh, checkpoints and validation, which test_train.py covers)."""
    info = data_info.load_info(data_dir)
    graphdef, state, tx = state_lib.init_train_state(config, info["vocab_size"])
    step_fn = jax.jit(train.make_train_step(graphdef, tx, config), donate_argnums=0)
    batches = iter(
        pipeline.train_dataset(data_dir, config.data, batch_size=config.train.batch_size, seed=0)
    )
    out = []
    for batch in itertools.islice(batches, steps):
        state, metrics = step_fn(state, batch)
        out.append(metrics)
    return jax.device_get(out), state


@pytest.mark.parametrize(
    "module, arg", [(ht, "tiny"), (adamine, "tiny"), (je, "tiny"), (je, "tiny,transformer")]
)
def test_tiny_preset_loss_falls(module, arg, tiny_data):
    config = module.get_config(arg)
    config.data.dir = tiny_data
    config.train.num_steps = STEPS
    config.train.lr = 3e-3
    metrics, _ = _losses(config, tiny_data)
    loss = np.array([m["loss"] for m in metrics])
    assert np.all(np.isfinite(loss))
    assert loss[-10:].mean() < 0.9 * loss[:10].mean(), loss
