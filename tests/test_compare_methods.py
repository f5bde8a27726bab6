"""tools/compare_methods.py: the table picks the largest bag, never the whole-split numbers."""

import json
import os

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


def _eval(medr_i2r, medr_r2i):
    return {
        "n_pairs": 1165,
        "image_to_recipe": {"1k": _metrics(medr_i2r), "full": _metrics(99.0)},
        "recipe_to_image": {"1k": _metrics(medr_r2i), "full": _metrics(99.0)},
    }


def test_seed_table_averages_each_config_over_its_seeds():
    records = [
        {"name": "a", "seed": 0, "eval": _eval(9.0, 10.0), "seconds": 100.0,
         "ingredients": {"micro_f1": 0.50, "title_word_f1": 0.2}},
        {"name": "a", "seed": 1, "eval": _eval(11.0, 12.0), "seconds": 120.0,
         "ingredients": {"micro_f1": 0.54, "title_word_f1": 0.4}},
        {"name": "b", "seed": 0, "eval": _eval(20.0, 21.0), "seconds": 50.0},
        {"name": "b", "seed": 1, "error": "exit status 1"},
    ]  # fmt: skip
    lines = compare_methods.seed_table(records).splitlines()
    head = lines[0].split(" | ")
    a, b = (line.split(" | ") for line in lines[2:])
    # medR i2r: mean of 9 and 11 = 10, sample std sqrt(2) = 1.4; F1 in percent
    assert a[1] == "0,1" and a[head.index("medR i2r")] == "10.0 ± 1.4"
    assert a[head.index("medR r2i")] == "11.0 ± 1.4"
    assert a[head.index("ingredient F1")] == "52.0 ± 2.8"
    assert a[head.index("title word F1")] == "30.0 ± 14.1" and a[-1] == "110 |"
    # a failed seed is left out of the mean, and a run without a decoder has no F1
    assert b[1] == "0" and b[head.index("medR i2r")] == "20.0"  # one seed: no spread
    assert b[head.index("ingredient F1")] == "-"


def test_a_run_keeps_its_wall_clock_time_for_tables_collected_later(tmp_path, monkeypatch):
    def fake_main(cmd, **kwargs):  # stands in for `python -m xmodal.main`: writes the result
        workdir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
        os.makedirs(workdir)
        with open(os.path.join(workdir, "eval_test.json"), "w") as f:
            json.dump(_eval(9.0, 10.0), f)
        assert "--config.seed=1" in cmd

    monkeypatch.setattr(compare_methods.subprocess, "run", fake_main)
    first = compare_methods.run_one("m", "configs/tnlbt.py", str(tmp_path), [], seed="1")
    assert first["seed"] == 1 and first["seconds"] >= 0.0
    monkeypatch.setattr(compare_methods.subprocess, "run", None)  # not run again
    again = compare_methods.run_one("m", "configs/tnlbt.py", str(tmp_path), [], seed="1")
    assert again["seconds"] == first["seconds"] and again["eval"] == first["eval"]


def test_decoder_scores_from_another_decoding_are_not_reported_as_greedy(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    with open(os.path.join(workdir, "eval_test.json"), "w") as f:
        json.dump({"n_pairs": 1165}, f)
    path = os.path.join(workdir, "ingredients_test.json")
    calls = []

    def fake_predict(cmd, **kwargs):  # stands in for `python -m xmodal.apps.predict --split=test`
        calls.append(cmd)
        with open(path, "w") as f:
            json.dump({"beam": 1, "n_recipes": 1165, "micro_f1": 0.4}, f)

    monkeypatch.setattr(compare_methods.subprocess, "run", fake_predict)
    for stale in ({"beam": 4, "n_recipes": 1165}, {"beam": 1, "n_recipes": 512}):
        with open(path, "w") as f:
            json.dump({**stale, "micro_f1": 0.9}, f)
        assert compare_methods.score_decoder(workdir)["ingredients"]["micro_f1"] == 0.4
    assert len(calls) == 2
    compare_methods.score_decoder(workdir)  # a greedy full-split score is reused
    assert len(calls) == 2
