"""tools/ingredient_classifier.py: the decoder-free photo -> ingredients reference."""

import numpy as np
import pytest
from conftest import tiny_config

from tools import ingredient_classifier as ic


def test_multi_hot_and_thresholds():
    vocab = ["a", "b", "c"]
    y = ic.multi_hot([["a", "c"], ["zzz"], []], vocab)
    np.testing.assert_array_equal(y, [[1, 0, 1], [0, 0, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.3, 0.12], [0.05, 0.5, 0.2]])
    assert ic.named_above(probs, vocab, 0.2) == [["a", "b"], ["b", "c"]]
    # truth {a}, {b}: up to 0.3 row 0 also names b (0.3); from 0.35 to 0.5 the rows name a and b
    # (F1 1); above 0.5 row 1 names nothing. The best is the lowest threshold scoring 1.
    assert ic.best_threshold(probs, [["a"], ["b"]], vocab) == pytest.approx(0.35)


def test_trains_and_scores_test_at_the_validation_threshold(tiny_data):
    # Imported with another tool in one process (pytest does): no command-line flags collide.
    from tools import compare_methods  # noqa: F401

    args = ["--config=configs/tnlbt.py:tiny", f"--config.data.dir={tiny_data}", "--steps=3"]
    got = ic.main(args)
    assert got["steps"] == 3 and np.isfinite(got["final_loss"])
    assert got["image_size"] == tiny_config(tiny_data).data.image_size
    assert got["val_threshold"] in ic.THRESHOLDS
    assert got["micro_f1"] == got["test_micro_f1_by_threshold"][str(got["val_threshold"])]
    assert got["labels"] > 0 and got["test_recipes"] > 0
    with pytest.raises(SystemExit, match="max_photos"):
        ic.main([*args, "--encoder=resnet18", "--resnet_width=8", "--max_photos=10"])
