"""Each paper-size preset builds at full size with the papers' backbone parameter counts
(ResNet-50 ~25.6M, ViT-B/16 ~86M) and a whole train step traces end to end at that size.

The trace is abstract (`jax.eval_shape`: shapes and dtypes, nothing allocated or compiled) to keep
the suite fast on 2 cores; `tools/run_paper_presets.py` runs one real step of each preset on CPU
(about a minute each; its output is in docs/methods.md)."""

from __future__ import annotations

import jax
import pytest

from configs import acme, adamine, ht, je, tnlbt
from xmodal.data import pipeline
from xmodal.models.dual_encoder import abstract_model
from xmodal.models.layers import count_params
from xmodal.run import decoder_trains
from xmodal.runtime import state as state_lib
from xmodal.training.step import make_train_step

RESNET50_NO_FC = 23_508_032  # torchvision resnet50: 25,557,032 with its 1000-way fc
VIT_B16 = 85_798_656  # timm vit_base_patch16_224 without its head (~86M)
VOCAB = 16_000  # about H-T's Recipe1M vocabulary
# (config, preset, image backbone parameters, trace a whole train step): the traces cover each
# kind of image and text encoder and loss once (tracing a full-size step costs ~10-30 s on 2 cores).
PAPER_PRESETS = [
    (tnlbt, "b16", VIT_B16, True),  # ViT-B/16 + H-T + cross decoder, dynamic margins
    (adamine, "paper", RESNET50_NO_FC, True),  # ResNet-50 + LSTMs, double triplet, frozen phase
    (je, "paper,transformer", RESNET50_NO_FC, True),  # frozen ResNet-50, cosine loss, classes
    (ht, "r50", RESNET50_NO_FC, False),
    (ht, "vit", VIT_B16, False),
    (je, "paper", RESNET50_NO_FC, False),
    (acme, "paper", RESNET50_NO_FC, True),  # ResNet-50 + LSTMs, the critic, 128 px G and D
]


def _abstract_batch(config, batch=2):
    decoder = config.data.max_decoder_tokens if decoder_trains(config) else 0
    host = pipeline.random_batch(config.data, batch, VOCAB, decoder_tokens=decoder)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)


@pytest.mark.parametrize("module, arg, image_params, trace", PAPER_PRESETS)
def test_paper_preset_builds_and_traces_a_step(module, arg, image_params, trace):
    config = module.get_config(arg)
    model = abstract_model(
        config.model,
        vocab_size=VOCAB,
        image_size=config.data.image_size,
        decoder_max_len=config.data.max_decoder_tokens,
    )
    assert count_params(model.image_encoder) == image_params
    assert model.image_proj.kernel.shape[1] == config.model.embed_dim
    if config.model.recipe == "hierarchical":  # H-T: 2 x 512 text transformer, 1024-d space,
        # reached by the released one Linear(3 x 512 -> 1024) + tanh (model.text.merge_linear)
        assert model.recipe_proj.kernel.shape == (3 * 512, 1024)
        assert model.recipe_encoder.merge is None
    if not trace:
        return
    graphdef, abstract, tx = state_lib.abstract_train_state(config, VOCAB)
    step = make_train_step(graphdef, tx, config, state_lib.adversarial_nets(config, VOCAB))
    new_state, metrics = jax.eval_shape(step, abstract, _abstract_batch(config))
    if decoder_trains(config):  # TNLBT b16: the cross decoder is in the traced step
        assert "loss_cross_decoder" in metrics
    assert metrics["loss"].shape == () and new_state.step.dtype == abstract.step.dtype
    assert jax.tree.structure(new_state) == jax.tree.structure(abstract)
