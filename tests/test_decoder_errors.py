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
