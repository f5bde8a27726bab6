"""Ranks and the bag protocol against independent brute-force implementations."""

import numpy as np
import pytest

from xmodal import evaluate


def _brute_ranks(queries, candidates):
    ranks = []
    for i, q in enumerate(queries):
        sims = [float(np.dot(q, c) / (np.linalg.norm(q) * np.linalg.norm(c))) for c in candidates]
        # 1 + number of *other* candidates at least as similar as the match (ties against).
        ranks.append(1 + sum(s >= sims[i] for j, s in enumerate(sims) if j != i))
    return np.array(ranks)


def test_retrieval_ranks_matches_brute_force():
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    np.testing.assert_array_equal(evaluate.retrieval_ranks(q, c), _brute_ranks(q, c))


def test_retrieval_ranks_counts_ties_against_the_model():
    q = np.ones((5, 3))
    c = np.ones((5, 3))  # every candidate equally similar: the match ranks last
    np.testing.assert_array_equal(evaluate.retrieval_ranks(q, c), np.full(5, 5))


def test_retrieval_ranks_perfect_and_chunked(monkeypatch):
    monkeypatch.setattr(evaluate, "RANK_CHUNK", 16)  # several chunks plus a padded tail
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 16))
    np.testing.assert_array_equal(evaluate.retrieval_ranks(x, x), np.ones(50, int))
    q, c = rng.normal(size=(50, 16)), rng.normal(size=(50, 16))
    np.testing.assert_array_equal(evaluate.retrieval_ranks(q, c), _brute_ranks(q, c))


def test_retrieval_ranks_rejects_unpaired_inputs():
    with pytest.raises(ValueError, match="paired"):
        evaluate.retrieval_ranks(np.ones((3, 2)), np.ones((4, 2)))


def test_bag_metrics_match_brute_force_protocol():
    rng = np.random.default_rng(2)
    n, d = 300, 6
    image = rng.normal(size=(n, d))
    recipe = image + 0.8 * rng.normal(size=(n, d))
    got = evaluate.bag_metrics(
        image, recipe, bag_sizes=(100, 250, 1000), num_bags=(4, 2, 3), seed=7
    )

    bag_rng = np.random.default_rng(7)
    for size, count, label in ((100, 4, "100"), (250, 2, "250")):
        rows = {"image_to_recipe": [], "recipe_to_image": []}
        for _ in range(count):
            idx = bag_rng.choice(n, size=size, replace=False)
            for direction, (a, b) in {
                "image_to_recipe": (image[idx], recipe[idx]),
                "recipe_to_image": (recipe[idx], image[idx]),
            }.items():
                r = _brute_ranks(a, b)
                rows[direction].append(
                    {
                        "medR": np.median(r),
                        "R@1": 100 * np.mean(r <= 1),
                        "R@5": 100 * np.mean(r <= 5),
                        "R@10": 100 * np.mean(r <= 10),
                    }
                )
        for direction, bags in rows.items():
            for metric in ("medR", "R@1", "R@5", "R@10"):
                values = [b[metric] for b in bags]
                assert got[direction][label][metric]["mean"] == pytest.approx(np.mean(values))
                assert got[direction][label][metric]["std"] == pytest.approx(np.std(values))
    assert "1k" not in got["image_to_recipe"]  # larger than the split: left out


def test_bag_label_names_thousands():
    assert evaluate.bag_label(1000) == "1k"
    assert evaluate.bag_label(10000) == "10k"
    assert evaluate.bag_label(250) == "250"


def test_bag_metrics_full_split_matches_brute_force():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(60, 5))
    recipe = image + rng.normal(size=(60, 5))
    got = evaluate.bag_metrics(image, recipe, bag_sizes=(1000,), num_bags=(2,), seed=0)
    for direction, (a, b) in {
        "image_to_recipe": (image, recipe),
        "recipe_to_image": (recipe, image),
    }.items():
        r = _brute_ranks(a, b)
        assert list(got[direction]) == ["full"]  # the 1k bag is larger than the split
        full = got[direction]["full"]
        assert full["medR"] == {"mean": pytest.approx(np.median(r)), "std": 0.0}
        for k in (1, 5, 10):
            assert full[f"R@{k}"]["mean"] == pytest.approx(100 * np.mean(r <= k))


def test_retrieval_ranks_10k_bag_is_one_device_call(monkeypatch):
    calls = []
    real = evaluate._chunk_ranks
    monkeypatch.setattr(evaluate, "_chunk_ranks", lambda *a: calls.append(a[0].shape) or real(*a))
    rng = np.random.default_rng(4)
    # Candidate j has cosine t_j with every query (all along the first axis, of any length):
    # distinct cosines in [0, 1), so candidate i ranks 1 + (number of larger t) = 10,000 - perm_i.
    perm = rng.permutation(10_000)
    t = (perm / 10_000).astype(np.float32)
    candidates = np.stack([t, np.sqrt(1 - t * t), np.zeros_like(t), np.zeros_like(t)], axis=1)
    queries = np.zeros((10_000, 4), np.float32)
    queries[:, 0] = rng.uniform(0.5, 2.0, size=10_000)
    ranks = evaluate.retrieval_ranks(queries, candidates)
    assert calls == [(10_000, 4)]
    np.testing.assert_array_equal(ranks, 10_000 - perm)
