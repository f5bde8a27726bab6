"""Each paper-size preset builds at full size and runs one real train step on CPU with a batch of
two; backbone parameter counts are checked against the papers (ResNet-50 ~25.6M, ViT-B/16 ~86M)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import adamine, ht, je, tnlbt
from tests.step_fixtures import random_batch
from xmodal import state as state_lib
from xmodal import train
from xmodal.models.layers import count_params

RESNET50_NO_FC = 23_508_032  # torchvision resnet50: 25,557,032 with its 1000-way fc
VIT_B16 = 85_798_656  # timm vit_base_patch16_224 without its head (~86M)
VOCAB = 16_000  # about H-T's Recipe1M vocabulary


def _run_one_step(config):
    graphdef, state, tx = state_lib.init_train_state(config, VOCAB)
    before = jax.tree.map(np.asarray, state.params)
    step = jax.jit(train.make_train_step(graphdef, tx, config), donate_argnums=0)
    batch = jax.tree.map(jnp.asarray, random_batch(config, seed=1))
    state, metrics = step(state, batch)
    return graphdef, before, state, jax.device_get(metrics)


@pytest.mark.parametrize(
    "module, arg, image_params",
    [
        (tnlbt, "b16", VIT_B16),
        (ht, "r50", RESNET50_NO_FC),
        (ht, "vit", VIT_B16),
        (adamine, "paper", RESNET50_NO_FC),
        (je, "paper", RESNET50_NO_FC),
    ],
)
def test_paper_preset_runs_one_step(module, arg, image_params):
    config = module.get_config(arg)
    config.train.batch_size = 2
    graphdef, before, state, metrics = _run_one_step(config)

    model = nnx.merge(graphdef, state.params, state.model_state)
    assert count_params(model.image_encoder) == image_params
    assert model.image_proj.kernel.shape[-1] == config.model.embed_dim
    assert np.isfinite(metrics["loss"]) and int(state.step) == 1
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.params, before)
    # The recipe encoder learns in every preset; the image backbone is frozen at step 0 in
    # AdaMine (first phase) and always in JE (a fixed feature extractor).
    frozen = config.model.get("freeze_image", False) or config.train.get("freeze_image_steps", 0)
    assert any(jax.tree.leaves(moved["recipe_encoder"]))
    assert any(jax.tree.leaves(moved["image_encoder"])) != bool(frozen)
