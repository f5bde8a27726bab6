"""tools/decoder_errors.py: the split of the decoder's recall into drawn and pantry ingredients."""

import pytest

from tools import decoder_errors


def test_breakdown_counts_drawn_and_pantry_ingredients_apart():
    got = decoder_errors.error_breakdown(
        [["a", "salt", "b"], []],
        [["a", "c", "salt"], ["d", "pepper"]],
        frozenset({"salt", "pepper"}),
    )
    assert got["drawn_recall"] == pytest.approx(1 / 3)  # a of a, c, d
    assert got["pantry_recall"] == pytest.approx(1 / 2)  # salt of salt, pepper
    assert got["pantry_share"] == pytest.approx(2 / 5)
    assert got["predicted_per_recipe"] == 1.5 and got["true_per_recipe"] == 2.5
    assert got["pantry_predicted_per_recipe"] == 0.5
    # naming a, c and d only: precision 1, recall 3 / 5
    assert got["ceiling_f1"] == pytest.approx(2 * 0.6 / 1.6)
    assert got["micro_precision"] == pytest.approx(2 / 3)  # a, salt of a, salt, b


def test_class_pools_hold_each_recipes_core_ingredients():
    from xmodal.data.builtin.recipes import PANTRY_NAMES, generate_recipes

    recipes = generate_recipes(60, 3)
    pools = decoder_errors.class_pools(60, 3)
    assert set(pools) == {r["id"] for r in recipes}
    for r in recipes:  # 2-6 of a recipe's first ingredients are drawn from its class's pool
        drawn = [name for name, *_ in r["dish"]["pieces"]]
        assert drawn[0] in pools[r["id"]] and drawn[1] in pools[r["id"]]
        assert not PANTRY_NAMES & set(pools[r["id"]])


def test_built_in_recipes_are_regenerated_from_their_seed(tiny_data):
    from configs import tnlbt
    from xmodal.data import pipeline, records
    from xmodal.data.builtin.recipes import generate_recipes

    c = tnlbt.get_config("tiny").data.synthetic
    by_id = {r["id"]: r for r in generate_recipes(c.num_recipes, c.seed)}
    source = pipeline.open_split(tiny_data, "test")
    for i in range(len(source)):
        recipe = records.decode_record(source[i])
        assert by_id[recipe["id"]]["title"] == recipe["title"]


def test_class_pools_of_a_run_and_a_split_of_other_recipes_refused(trained, monkeypatch, capsys):
    """The tiny run's test split scored with its class pools; the same split against another
    seed's recipes is refused before predicting, not a KeyError on a recipe id."""
    _, workdir, _ = trained
    got = decoder_errors.main([f"--workdir={workdir}", "--limit=8"])
    assert got["recipes"] == 8 and 0 < got["class_pool_f1"] <= 1
    # Pools that are exactly each recipe's own clean ingredients score 1: the pools are matched
    # to the right recipes (each one's neighbour's list scores less).
    from xmodal.data import pipeline, records

    config, _, _ = trained
    source = pipeline.open_split(config.data.dir, "test")
    recs = [records.decode_record(source[i]) for i in range(8)]
    own = {r["id"]: r["clean_ingredients"] for r in recs}
    monkeypatch.setattr(decoder_errors, "class_pools", lambda n, seed: own)
    exact = decoder_errors.main([f"--workdir={workdir}", "--limit=8"])
    assert exact["class_pool_precision"] == exact["class_pool_recall"] == 1.0
    shifted = {r["id"]: recs[(i + 1) % 8]["clean_ingredients"] for i, r in enumerate(recs)}
    monkeypatch.setattr(decoder_errors, "class_pools", lambda n, seed: shifted)
    assert decoder_errors.main([f"--workdir={workdir}", "--limit=8"])["class_pool_f1"] < 1.0
    monkeypatch.undo()
    real = decoder_errors.class_pools
    monkeypatch.setattr(decoder_errors, "class_pools", lambda n, seed: real(n, seed + 1))
    with pytest.raises(SystemExit, match=r"8 of 8 recipes .* are not the built-in dataset's"):
        decoder_errors.main([f"--workdir={workdir}", "--limit=8"])
