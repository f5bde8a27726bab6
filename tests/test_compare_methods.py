"""tools/compare_methods.py: the table picks the largest bag, never the whole-split numbers."""

from tools import compare_methods


def _metrics(medr):
    return {
        k: {"mean": v, "std": 0.0}
        for k, v in zip(("medR", "R@1", "R@5", "R@10"), (medr, 1, 2, 3), strict=True)
    }


def test_table_uses_the_largest_bag_not_the_full_split():
    ev = {
        "n_pairs": 1165,
        "image_to_recipe": {"50": _metrics(2.0), "1k": _metrics(10.0), "full": _metrics(11.0)},
        "recipe_to_image": {"50": _metrics(3.0), "1k": _metrics(12.0), "full": _metrics(14.0)},
    }
    table = compare_methods.markdown_table([{"name": "m", "eval": ev, "seconds": 5.0}])
    row = table.splitlines()[-1].split(" | ")
    assert row[1:4] == ["1k", "1165", "10.0 ± 0.0"] and "12.0 ± 0.0" in row
    assert "11.0" not in table and "14.0" not in table
    assert compare_methods.bag_size("10k") == 10_000 and compare_methods.bag_size("50") == 50
