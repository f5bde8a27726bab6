"""A diverged model (NaN / Inf embeddings) never scores as a good one: ranks put NaN last, and
every entry point of the protocol refuses such embeddings, naming the split, side and rows."""

import os
import types

import numpy as np
import pytest
from conftest import tiny_config

from xmodal import evaluate
from xmodal.apps import gallery


def _pairs(n=4):
    """n pairs whose queries each match their own candidate perfectly (rank 1 when finite)."""
    return np.eye(n, dtype=np.float32), np.eye(n, dtype=np.float32)


def test_a_nan_or_inf_pair_ranks_last():
    q, c = _pairs()
    q[2] = np.nan  # a NaN query: its true similarity is NaN
    q[0, 0] = np.inf  # an Inf entry normalises to NaN as well
    np.testing.assert_array_equal(evaluate.retrieval_ranks(q, c), [4, 1, 4, 1])


def test_a_nan_candidate_never_beats_a_finite_match():
    q, c = _pairs()
    c[1] = np.nan  # query 1 loses its match; the other queries keep rank 1
    np.testing.assert_array_equal(evaluate.retrieval_ranks(q, c), [1, 4, 1, 1])


def test_all_nan_embeddings_score_worst_not_perfect():
    # What validation during training computes (`loop.validate`): it must not look perfect.
    x = np.full((20, 8), np.nan, np.float32)
    assert evaluate.rank_metrics(evaluate.retrieval_ranks(x, x)) == {
        "medR": 20.0,
        "R@1": 0.0,
        "R@5": 0.0,
        "R@10": 0.0,
    }


def test_huge_finite_rows_are_still_ranked_by_direction():
    # 1e20 squared overflows float32: a float32 norm would turn every row into zeros (all ties).
    q, c = _pairs()
    np.testing.assert_array_equal(evaluate.retrieval_ranks(q * 1e20, c), [1, 1, 1, 1])


def test_bag_metrics_refuse_nonfinite_rows():
    image = np.random.default_rng(0).normal(size=(30, 4))
    recipe = image.copy()
    image[[3, 7]] = np.nan
    recipe[5, 1] = -np.inf
    with pytest.raises(evaluate.NonFiniteEmbeddings, match="2 of 30 image rows and 1 of 30 recipe"):
        evaluate.bag_metrics(image, recipe, bag_sizes=(10,), num_bags=(2,))


def _fake_run(workdir, image, recipe):
    return types.SimpleNamespace(
        config=tiny_config(""),
        workdir=str(workdir),
        data_dir="unused",
        embed_split=lambda state, split, limit=None: (image, recipe),
        restore=lambda which=None: types.SimpleNamespace(step=7),
    )


def test_evaluate_state_refuses_nan_and_writes_nothing(tmp_path):
    image = np.ones((12, 4), np.float32)
    recipe = np.full((12, 4), np.nan, np.float32)
    run = _fake_run(tmp_path, image, recipe)
    state = types.SimpleNamespace(step=7)
    with pytest.raises(evaluate.NonFiniteEmbeddings, match=r"'val' split: 12 of 12 recipe rows"):
        evaluate.evaluate_state(run, state, split="val")
    assert not os.path.exists(tmp_path / "eval_val.json")


def test_eval_and_embed_modes_refuse_nan_and_write_nothing(tmp_path, monkeypatch):
    image = np.ones((12, 4), np.float32)
    image[0] = np.nan
    run = _fake_run(tmp_path, image, np.ones((12, 4), np.float32))
    monkeypatch.setattr(evaluate.Run, "from_workdir", lambda *a, **k: run)
    with pytest.raises(evaluate.NonFiniteEmbeddings, match=r"'test' split: 1 of 12 image rows"):
        evaluate.evaluate_checkpoint(run.config, str(tmp_path), split="test")
    with pytest.raises(evaluate.NonFiniteEmbeddings, match=r"'test' split: 1 of 12 image rows"):
        evaluate.embed_checkpoint(run.config, str(tmp_path), split="test")
    assert os.listdir(tmp_path) == []


def test_a_gallery_refuses_nan_rows_which_top_k_would_rank_first():
    emb = np.eye(3, dtype=np.float32)
    emb[1] = np.nan
    with pytest.raises(evaluate.NonFiniteEmbeddings, match="1 of 3 recipe embeddings"):
        gallery.Gallery("recipe", emb, [{"id": str(i)} for i in range(3)])
