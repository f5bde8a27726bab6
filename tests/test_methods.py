"""Every method's config: the tiny preset trains on CPU and its loss falls; ablation flags and bad
arguments. The paper-size presets are in test_paper_presets.py."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from conftest import METHOD_RUN_STEPS

from configs import adamine, common, je
from xmodal.data import info as data_info
from xmodal.data import pipeline
from xmodal.run import check_data
from xmodal.runtime import state as state_lib
from xmodal.runtime.metrics import read_metrics


@pytest.mark.parametrize("method", ["ht", "adamine", "je"])
def test_tiny_preset_loss_falls(method, method_run):
    """The method's tiny run (conftest.method_run, shared with test_run.py): its loss, logged
    at every step, falls."""
    _, workdir = method_run(method)
    loss = np.array([r["loss"] for r in read_metrics(workdir) if "loss" in r])
    assert len(loss) == METHOD_RUN_STEPS
    assert np.all(np.isfinite(loss))
    # 5%: the adaptive-mining loss (AdaMine) is normalised by the number of violating triplets,
    # so it falls slowly by design even while the share of violating triplets drops.
    assert loss[-10:].mean() < 0.95 * loss[:10].mean(), loss


def test_adamine_ablation_flags():
    assert adamine.get_config("paper,ins").loss.semantic == 0.0
    assert adamine.get_config("paper,sem").loss.triplet == 0.0
    cls = adamine.get_config("paper,cls")
    assert cls.loss.semantic == 0.0 and cls.model.num_classes == common.RECIPE1M_CLASSES
    avg = adamine.get_config("tiny,avg")
    assert (avg.loss.reduction, avg.loss.semantic_reduction) == ("batch_mean", "mean")
    assert adamine.get_config("tiny,ingr").model.lstm.components == ("ingredients",)
    with pytest.raises(ValueError, match="flag"):
        adamine.get_config("paper,nosuch")
    with pytest.raises(ValueError, match="preset"):
        je.get_config("huge")


def test_je_first_run_trains_its_backbone_at_cpu_size_and_paper_keeps_im2recipe():
    """The default preset is the configuration of the JE study (docs/methods.md): a trained
    ResNet-18 (no ImageNet weights offline) and CPU-sized LSTMs; `paper` is im2recipe's."""
    first, paper = je.get_config(), je.get_config("paper")
    assert not first.model.freeze_image and first.model.resnet.depth == 18
    assert first.model.lstm.instruction_hidden == 256 and first.model.embed_dim == 256
    assert paper.model.freeze_image and paper.model.resnet.depth == 50
    assert paper.model.lstm.instruction_hidden == 1024 and paper.model.embed_dim == 1024


def test_frozen_then_finetuned_backbone_in_one_compiled_update():
    """train.freeze_image_steps: backbone updates are exactly zero before step N, non-zero
    after, the rest trains throughout, all in one jitted update (the step is traced data)."""
    import jax.numpy as jnp
    import ml_collections

    cfg = ml_collections.ConfigDict(
        dict(
            lr=0.1,
            min_lr_ratio=1.0,
            warmup_steps=0,
            num_steps=10,
            weight_decay=0.1,
            grad_clip=1.0,
            freeze_image_steps=3,
            mu_dtype="",
        )
    )
    params = {"image_encoder": {"w": jnp.ones((2, 2))}, "image_proj": {"w": jnp.ones((2, 2))}}
    tx = state_lib.make_optimizer(cfg)
    opt = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(tx.update)
    for step in range(5):
        updates, opt = update(grads, opt, params)
        frozen = step < 3
        assert bool(jnp.all(updates["image_encoder"]["w"] == 0)) == frozen, step
        assert bool(jnp.all(updates["image_proj"]["w"] != 0)), step
    assert update._cache_size() == 1
    # JE: frozen for good, weight decay included.
    tx = state_lib.make_optimizer(cfg, freeze_image=True)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert bool(jnp.all(updates["image_encoder"]["w"] == 0))


def test_class_aware_batches_are_half_labelled_and_deterministic(tiny_data):
    config = adamine.get_config("tiny")
    config.data.dir = tiny_data
    ds = pipeline.train_dataset(tiny_data, config.data, batch_size=10, seed=3)
    it = iter(ds)
    batches = [next(it)["class_id"] for _ in range(6)]
    for b in batches:
        assert np.sum(b > 0) == 5, b
    state = it.get_state()
    following = next(it)["class_id"]
    again = iter(pipeline.train_dataset(tiny_data, config.data, batch_size=10, seed=3))
    assert all(np.array_equal(next(again)["class_id"], b) for b in batches)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["class_id"], following)
    assert os.path.exists(os.path.join(tiny_data, "train_class_ids.npy"))
    config.data.labelled_fraction = 1.5
    with pytest.raises(ValueError, match="labelled_fraction"):
        pipeline.train_dataset(tiny_data, config.data, batch_size=10, seed=3)


def test_class_head_must_match_the_dataset(tiny_data):
    config = je.get_config("tiny")
    config.model.num_classes = 7
    with pytest.raises(ValueError, match="num_classes"):
        check_data(config, data_info.load_info(tiny_data), tiny_data)


def test_cca_runs_from_the_config_and_writes_the_protocol(tiny_data, tmp_path):
    from configs import cca as cca_config
    from xmodal.baselines import cca

    config = cca_config.get_config("tiny")
    config.data.dir = tiny_data
    config.cca.max_train_pairs = 200
    result = cca.run(config, str(tmp_path))
    with open(tmp_path / "eval_test.json") as f:
        saved = json.load(f)
    assert set(saved["image_to_recipe"]["50"]) == {"medR", "R@1", "R@5", "R@10"}
    assert set(result["texts"]) == {"title", "ingredients", "instructions", "all"}
    with open(tmp_path / "cca_test.json") as f:
        assert json.load(f)["train_pairs"] == 200
