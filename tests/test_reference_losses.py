"""The losses against the released PyTorch code's values on the same inputs (no torch needed).

tests/data/reference_losses.json is written by `tools/reference_losses.py` from checkouts of
amzn/image-to-recipe-transformers (H-T), Cadene/recipe1m.bootstrap.pytorch (AdaMine) and
mshukor/TFood (its adaptive margin); the file names each commit.
"""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from configs import adamine, common, ht
from xmodal.data import schema
from xmodal.training import losses

REFERENCE = json.loads((Path(__file__).parent / "data" / "reference_losses.json").read_text())
TOLERANCE = 1e-6


def _unit(x) -> jnp.ndarray:
    """The released losses normalise their inputs (F.normalize); the model's outputs are unit."""
    x = np.asarray(x, np.float64)
    return jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), jnp.float32)


def _close(got, expected) -> None:
    np.testing.assert_allclose(float(got), expected, rtol=0, atol=TOLERANCE)


def test_reference_file_names_its_sources():
    assert REFERENCE["sources"]["ht"]["commit"].startswith("96e257e")
    assert REFERENCE["sources"]["adamine"]["commit"].startswith("6ca20a2")
    assert REFERENCE["sources"]["tfood"]["commit"].startswith("466c120")


def _ssl_pairs(case) -> dict:
    """The model's 'a->b' pair is (g_ab(e_a), e_b): the released projected[a][b] and raw[b]."""
    pairs = {}
    for key, projected in case["projected"].items():
        target = key.split("->")[1]
        pairs[key] = (_unit(projected), _unit(case["raw"][target]))
    assert len(pairs) == 6
    return pairs


@pytest.mark.parametrize("case", REFERENCE["ht"]["cases"], ids=lambda c: f"B{len(c['image'])}")
def test_ht_preset_trains_the_released_losses(case):
    """src/train.py: loss_paired + recipe_loss_weight * loss_recipe, each as released."""
    margin = REFERENCE["ht"]["margin"]
    pairs = _ssl_pairs(case)
    ssl = losses.recipe_ssl_loss(pairs, margin=margin, reduction="batch_mean")
    _close(ssl, case["loss_recipe"])
    cfg = ht.get_config("tiny").loss
    assert cfg.margin.kind == "constant" and cfg.margin.start == margin
    assert cfg.recipe_ssl == REFERENCE["ht"]["recipe_loss_weight"]
    outputs = {"image": _unit(case["image"]), "recipe": _unit(case["recipe"]), "ssl": pairs}
    total, metrics = losses.compute_losses(outputs, {}, cfg, step=0, total_steps=1)
    _close(metrics["loss_triplet"], case["loss_paired"])
    _close(total, case["loss"])


def _adamine_outputs(case):
    outputs = {"image": _unit(case["image"]), "recipe": _unit(case["recipe"])}
    return outputs, {schema.CLASS_ID: jnp.asarray(case["classes"], jnp.int32)}


@pytest.mark.parametrize(
    "case", REFERENCE["adamine"]["cases"], ids=lambda c: f"B{len(c['classes'])}"
)
def test_adamine_terms_and_total_are_the_released_ones(case):
    """Each directional term of `Triplet.__call__` (adamine.yaml: adaptive mining, released
    semantic selection), and the total the released configuration trains."""
    ref = REFERENCE["adamine"]
    weights = dict(zip(ref["substrategy"], ref["substrategy_weights"], strict=True))
    released = case["adamine"]
    outputs, batch = _adamine_outputs(case)
    image, recipe, classes = outputs["image"], outputs["recipe"], batch[schema.CLASS_ID]
    for name, (q, c) in (("IRR", (image, recipe)), ("RII", (recipe, image))):
        term = losses.reduce_costs(losses.triplet_costs(q, c, ref["margin"]), "violating")
        _close(term, released[f"loss_{name}"] / weights[name])
    for name, (q, c) in (("SIRR", (image, recipe)), ("SRII", (recipe, image))):
        costs, valid = losses.semantic_triplet_costs(q, c, classes, ref["margin"], "first")
        term = losses.reduce_masked_costs(costs, valid, "violating")
        _close(term, released[f"loss_{name}"] / weights[name])
    total, _ = losses.compute_losses(
        outputs, batch, adamine.get_config("tiny").loss, step=0, total_steps=1
    )
    _close(total, released["loss"])
    average, _ = losses.compute_losses(
        outputs, batch, adamine.get_config("tiny,avg").loss, step=0, total_steps=1
    )
    _close(average, case["avg"]["loss"])


def test_adamine_eq_flag_trains_the_papers_equation():
    """Eq. 1: L_ins + 0.3 L_sem, summed, every same-class positive (Eq. 4); in any flag order."""
    eq = adamine.get_config("tiny,eq").loss
    assert (eq.combine, eq.semantic, eq.semantic_positives) == ("sum", 0.3, "all")
    assert adamine.get_config("paper,ins,eq").loss.semantic == 0.0
    assert adamine.get_config("paper,eq,ins").loss.semantic == 0.0
    case = REFERENCE["adamine"]["cases"][1]
    outputs, batch = _adamine_outputs(case)
    total, metrics = losses.compute_losses(outputs, batch, eq, step=0, total_steps=1)
    _close(total, float(metrics["loss_triplet"]) + 0.3 * float(metrics["loss_semantic"]))
    released, _ = losses.compute_losses(
        outputs, batch, adamine.get_config("tiny").loss, step=0, total_steps=1
    )
    assert abs(float(total) - float(released)) > 0.5  # the two forms are far apart


def test_unknown_combine_is_a_clear_error():
    cfg = common.base_config("test").loss
    cfg.update(dict(triplet=1.0, combine="mean"))
    image = _unit(np.eye(3))
    with pytest.raises(ValueError, match=r"loss\.combine"):
        losses.compute_losses({"image": image, "recipe": image}, {}, cfg, step=0, total_steps=1)


@pytest.mark.parametrize(
    "case",
    REFERENCE["tfood"]["cases"],
    ids=lambda c: f"B{len(c['image'])}-m{c['reference_margin']}",
)
def test_adaptive_tfood_margin_and_loss_are_tfoods(case):
    """`kind=adaptive_tfood` picks T-Food's margins; with its IRR + RII averaged
    (`combine=direction_mean`) the loss is T-Food's too."""
    ref = REFERENCE["tfood"]
    cfg = common.base_config("test").loss
    cfg.update(dict(triplet=1.0, reduction="violating", combine="direction_mean"))
    cfg.margin.update(
        kind="adaptive_tfood",
        start=case["reference_margin"],
        min=ref["min_margin"],
        max=ref["max_margin"],
    )
    outputs = {"image": _unit(case["image"]), "recipe": _unit(case["recipe"])}
    total, metrics = losses.compute_losses(outputs, {}, cfg, step=0, total_steps=1)
    _close(metrics["margin_i2r"], case["margin_i2r"])
    _close(metrics["margin_r2i"], case["margin_r2i"])
    _close(total, case["loss"])
