"""Packed H-T sentence encoding (xmodal.models.recipe_encoder.pack_lines): the lines of a recipe
laid end to end must give the same recipe features as padding every line on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tnlbt
from xmodal import perf
from xmodal.data import pipeline, records
from xmodal.models.recipe_encoder import HierarchicalRecipeEncoder, pack_lines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_COMPILE = {"xla_backend_optimization_level": 0}
VOCAB = 40
B, S, T = 4, 5, 6


def ragged_lines(seed: int) -> np.ndarray:
    """[B, S, T] ids: lines of random lengths (some empty, one in the middle of a recipe)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, VOCAB, size=(B, S, T))
    lengths = rng.integers(0, T + 1, size=(B, S))
    lengths[0, 1] = 0  # an empty line between two real ones
    lengths[1] = 0  # a recipe without lines
    lengths[2] = T  # every line full
    return np.where(np.arange(T) < lengths[..., None], ids, 0).astype(np.int32)


def brute_force_pack(tokens: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
    """Line by line: append the line's tokens while the whole line fits, else stop the recipe."""
    ids, segments, positions = (np.zeros((len(tokens), length), np.int32) for _ in range(3))
    for b, recipe in enumerate(tokens):
        at = 0
        for s, line in enumerate(recipe):
            words = [w for w in line if w != 0]
            if at + len(words) > length:
                break
            for t, w in enumerate(words):
                ids[b, at + t], segments[b, at + t], positions[b, at + t] = w, s + 1, t
            at += len(words)
    return ids, segments, positions


@pytest.mark.parametrize("length", [S * T, 13, 1])
def test_pack_lines_matches_brute_force(length):
    tokens = ragged_lines(0)
    packed = pack_lines(jnp.asarray(tokens), length)
    want = brute_force_pack(tokens, length)
    for got, expected in zip(packed[:3], want, strict=True):
        np.testing.assert_array_equal(got, expected)
    # `kept`: exactly the lines whose tokens made it into the row.
    in_row = np.stack([np.isin(np.arange(1, S + 1), row) for row in want[1]])
    np.testing.assert_array_equal(packed.kept, in_row)
    assert packed.max_line_length == T


def build(packed_tokens: dict[str, int] | None) -> HierarchicalRecipeEncoder:
    # The same seed gives the same parameters: packing only changes how they are applied.
    rngs = nnx.Rngs(params=0, dropout=jax.random.key(0, impl="unsafe_rbg"))
    return HierarchicalRecipeEncoder(
        VOCAB,
        width=16,
        depth=1,
        num_heads=2,
        mlp_dim=32,
        max_len=T,
        packed_tokens=packed_tokens,
        rngs=rngs,
    )


def features(model: HierarchicalRecipeEncoder, *args: np.ndarray) -> dict[str, np.ndarray]:
    model.eval()
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, *x: nnx.merge(graphdef, s)(*x), compiler_options=FAST_COMPILE)
    return jax.device_get(fn(state, *args))


def test_packed_encoder_is_the_same_function():
    title = ragged_lines(1)[:, 0]
    ingredients, instructions = ragged_lines(2), ragged_lines(3)
    args = (title, ingredients, instructions)
    padded, packed = build(None), build({"ingredients": S * T, "instructions": S * T})
    # The same variables: checkpoints of either restore into the other.
    assert jax.tree.structure(nnx.state(padded)) == jax.tree.structure(nnx.state(packed))
    want, got = features(padded, *args), features(packed, *args)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=2e-5, err_msg=name)

    # A budget too small for every line leaves out the lines that do not fit, and only those.
    budget = 9
    _, segments, _ = brute_force_pack(instructions, budget)
    kept = np.stack([np.isin(np.arange(1, S + 1), row) for row in segments])
    truncated = np.where(kept[..., None], instructions, 0)
    assert 0 < kept.sum() < (instructions != 0).any(-1).sum()  # the budget does drop lines
    want = features(build(None), title, ingredients, truncated)
    got = features(build({"instructions": budget}), *args)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=2e-5, err_msg=name)


def test_packed_encoder_trains_on_empty_recipes():
    model = build({"ingredients": 8, "instructions": 8})
    model.train()
    title = np.zeros((B, T), np.int32)  # no titles at all
    args = (title, ragged_lines(4), ragged_lines(5))

    def loss(m: HierarchicalRecipeEncoder) -> jax.Array:
        return jnp.sum(m(*args)["recipe"] ** 2)

    grads = nnx.jit(nnx.grad(loss)).lower(model).compile(FAST_COMPILE)(model)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
    assert np.abs(grads["ingredients"]["pos_embed"][...]).sum() > 0


@pytest.mark.parametrize(
    "packed", [{"title": 8}, {"ingredients": -1}], ids=["unknown component", "negative budget"]
)
def test_bad_budgets_are_refused(packed):
    with pytest.raises(ValueError, match="packed_tokens"):
        build(packed)


def test_analytic_flops_count_the_packed_rows():
    packed = tnlbt.get_config()
    padded = tnlbt.get_config()
    padded.model.text.packed_ingredient_tokens = 0
    padded.model.text.packed_instruction_tokens = 0
    d, text = packed.data, packed.model.text

    def words(tokens: int) -> float:
        return perf._transformer_forward_flops(tokens, text.width, text.mlp_dim, text.depth)

    saved = d.max_ingredients * words(d.max_ingredient_tokens) - words(56)
    saved += d.max_instructions * words(d.max_instruction_tokens) - words(88)
    got = perf.train_flops_per_example(packed)["recipe"]
    assert got == pytest.approx(perf.train_flops_per_example(padded)["recipe"] - 3 * saved)
    assert (text.packed_ingredient_tokens, text.packed_instruction_tokens) == (56, 88)


def test_packing_budget_tool_counts_what_pack_lines_leaves_out(tiny_data, tmp_path):
    """tools/packing_budget.py on the tiny data, with a budget that cuts: its counts of recipes
    losing lines and of lines left out are what the model's `pack_lines` drops from the same
    pipeline features."""
    budget = 40
    out = tmp_path / "budget.json"
    cmd = [
        sys.executable,
        "tools/packing_budget.py",
        "--config=configs/tnlbt.py:tiny",
        f"--config.data.dir={tiny_data}",
        f"--config.model.text.packed_instruction_tokens={budget}",
        f"--json={out}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    config = tnlbt.get_config("tiny")
    limits = pipeline.TextLimits.from_config(config.data)
    source = pipeline.open_split(tiny_data, "train")
    instructions = np.stack(
        [
            pipeline.text_features(records.decode_record(source[i]), limits)["instructions"]
            for i in range(len(source))
        ]
    )
    packed = pack_lines(jnp.asarray(instructions), budget)
    dropped = np.asarray((instructions != 0).any(-1) & ~packed.kept)
    got = report["instructions"]
    assert got["recipes"] == len(source) and got["budget"] == budget
    assert got["lines_left_out"] == dropped.sum() > 0  # the budget does cut on this data
    assert got["recipes_losing_lines"] == dropped.any(-1).sum()
    assert got["tokens_per_recipe"]["max"] == (instructions != 0).sum((1, 2)).max() > budget
    assert report["ingredients"]["budget"] == 0 and "lines_left_out" not in report["ingredients"]
