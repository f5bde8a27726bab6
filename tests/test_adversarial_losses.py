"""ACME's loss terms against its released functions on the same tensors (no torch needed).

The values are in tests/data/reference_losses.json under 'acme', written by
`tools/reference_losses.py --acme_dir=ACME` from a checkout of hwang1996/ACME (318091b).
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal.training import adversarial

REFERENCE = json.loads((Path(__file__).parent / "data" / "reference_losses.json").read_text())
ACME = REFERENCE["acme"]
TOLERANCE = 1e-5


def _a(x) -> jnp.ndarray:
    return jnp.asarray(np.asarray(x, np.float32))


def _close(got, expected) -> None:
    np.testing.assert_allclose(float(got), expected, rtol=0, atol=TOLERANCE)


def test_the_values_come_from_the_released_commit():
    assert REFERENCE["sources"]["acme"]["commit"].startswith("318091b")


def _critic(params: dict):
    def critic(x: jax.Array) -> jax.Array:
        h = x @ _a(params["w1"]) + _a(params["b1"])
        return jax.nn.leaky_relu(h, params["leaky_relu"]) @ _a(params["w2"]) + _a(params["b2"])

    return critic


@pytest.mark.parametrize("case", ACME["cases"], ids=lambda c: f"B{len(c['image'])}")
def test_modality_alignment_is_the_released_wgan_gp(case):
    """`compute_gradient_penalty` at the same interpolation weights, and the critic's and the
    encoders' Wasserstein terms (train.py 238, 244)."""
    critic = _critic(case["critic"])
    image, recipe = _a(case["image"]), _a(case["recipe"])
    penalty = adversarial.gradient_penalty(critic, image, recipe, _a(case["alpha"]))
    _close(penalty, case["gradient_penalty"])
    _close(adversarial.wgan_critic_loss(critic(image), critic(recipe)), case["critic_loss"])
    _close(adversarial.wgan_generator_loss(critic(recipe)), case["generator_loss"])


@pytest.mark.parametrize("case", ACME["cases"], ids=lambda c: f"B{len(c['image'])}")
def test_image_generation_terms_are_the_released_dnet_and_gnet(case):
    """`train_Dnet` (BCE real + BCE fake) and `train_Gnet` (BCE fake as real, the class head on
    real and fake photos with class 0 weighing nothing, 2 x KL) from the same outputs."""
    weights, labels = _a(case["class_weights"]), jnp.asarray(case["labels"])
    real, fake = _a(case["real_logit"]), _a(case["fake_logit"])
    _close(adversarial.discriminator_bce_loss(real, fake), case["train_Dnet"])
    kl = adversarial.kl_loss(_a(case["mu"]), _a(case["logvar"]))
    _close(kl, case["KL_loss"])
    cls = lambda key: adversarial.weighted_class_loss(_a(case[key]), labels, weights)
    generator = (
        adversarial.generator_bce_loss(fake)
        + cls("real_class_logits")
        + cls("fake_class_logits")
        + ACME["kl_weight"] * kl
    )
    _close(generator, case["train_Gnet"])
    _close(cls("real_class_logits"), case["class_loss"])


@pytest.mark.parametrize("case", ACME["cases"], ids=lambda c: f"B{len(c['image'])}")
def test_ingredients_from_the_image_are_pytorchs_multilabel_margin_loss(case):
    got = adversarial.multilabel_margin_loss(_a(case["scores"]), jnp.asarray(case["multi_hot"]))
    _close(got, case["multilabel_margin"])


@pytest.mark.parametrize("case", ACME["cases"], ids=lambda c: f"B{len(c['image'])}")
def test_retrieval_is_the_released_batch_hard_triplet(case):
    """`global_loss` over images and recipes stacked, labels the pair index twice."""
    features = jnp.concatenate([_a(case["image"]), _a(case["recipe"])])
    pairs = jnp.tile(jnp.arange(len(case["image"])), 2)
    got = adversarial.hardest_triplet_loss(features, pairs, ACME["margin"])
    _close(got, case["hardest_triplet"])


def test_balance_scales_the_larger_loss_to_the_smaller_without_its_gradient():
    """train.py 285-288: the larger of the text and image losses is multiplied by
    smaller / larger, a constant: its value becomes the smaller's, its gradient is scaled."""
    for text, image in ((1.0, 4.0), (6.0, 2.0)):
        t, i = adversarial.balance_losses(jnp.float32(text), jnp.float32(image))
        assert float(t) == float(i) == min(text, image)
    grads = jax.grad(lambda x: sum(adversarial.balance_losses(x[0], x[1])))(jnp.array([1.0, 4.0]))
    np.testing.assert_allclose(grads, [1.0, 0.25])  # d(0.25 * image)/d(image), ratio constant
