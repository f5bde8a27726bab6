"""Loss terms against brute-force loops over every (query, positive, negative) triplet."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from xmodal.data import schema
from xmodal.training import losses


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embeddings(seed, n=7, d=5):
    rng = np.random.default_rng(seed)
    return _unit(rng.normal(size=(n, d))), _unit(rng.normal(size=(n, d)))


def _cos_dist(a, b):
    return 1.0 - float(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))


def _brute_direction(queries, candidates, margin, reduction):
    n = len(queries)
    per_query = []
    for i in range(n):
        costs = [
            max(
                0.0,
                margin
                + _cos_dist(queries[i], candidates[i])
                - _cos_dist(queries[i], candidates[j]),
            )
            for j in range(n)
            if j != i
        ]
        per_query.append(costs)
    flat = list(itertools.chain.from_iterable(per_query))
    if reduction == "violating":
        active = sum(c > 0 for c in flat)
        return sum(flat) / max(active, 1)
    if reduction == "hardest":
        return float(np.mean([max(c) for c in per_query]))
    if reduction == "batch_mean":  # the diagonal's zeros count: B x B entries
        return sum(flat) / n**2
    return float(np.mean(flat))


def _ht_triplet_loss(im, s, margin):
    """H-T's released TripletLoss.forward (amzn/image-to-recipe-transformers, src/utils/loss.py)
    by loops: cosine distances D[i, j] = 1 - <im_i, s_j>; MarginRankingLoss(x1, x2, y=1) is
    max(0, -(x1 - x2) + margin); cost_im compares D[i, j] with D[i, i] (image anchor), cost_s
    with D[j, j] (recipe anchor j); diagonals cleared; (cost_s + cost_im).mean() over B x B."""
    n = len(im)
    dist = [[_cos_dist(im[i], s[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            total += max(0.0, -(dist[i][j] - dist[i][i]) + margin)  # cost_im
            total += max(0.0, -(dist[i][j] - dist[j][j]) + margin)  # cost_s
    return total / (n * n)


@pytest.mark.parametrize("margin", [0.1, 0.3, 1.0])
def test_batch_mean_is_ht_released_triplet_loss(margin):
    img, rec = _embeddings(11, n=7)
    got, _ = losses.bidirectional_triplet_loss(
        jnp.asarray(img), jnp.asarray(rec), margin=margin, reduction="batch_mean"
    )
    np.testing.assert_allclose(float(got), _ht_triplet_loss(img, rec, margin), rtol=1e-5)


def test_ht_and_paper_size_tnlbt_train_ht_loss():
    from configs import ht, tnlbt

    for preset in ("default", "tiny", "r50", "vit"):
        assert ht.get_config(preset).loss.reduction == "batch_mean", preset
    assert tnlbt.get_config("b16").loss.reduction == "batch_mean"


@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
@pytest.mark.parametrize("margin", [0.1, 0.3, 1.5])
def test_bidirectional_triplet_matches_brute_force(reduction, margin):
    img, rec = _embeddings(seed=int(margin * 10))
    loss, stats = losses.bidirectional_triplet_loss(
        jnp.asarray(img), jnp.asarray(rec), margin=margin, reduction=reduction
    )
    expected = _brute_direction(img, rec, margin, reduction) + _brute_direction(
        rec, img, margin, reduction
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-6)
    n = len(img)
    active = sum(
        max(0.0, margin + _cos_dist(img[i], rec[i]) - _cos_dist(img[i], rec[j])) > 0
        for i in range(n)
        for j in range(n)
        if i != j
    )
    np.testing.assert_allclose(float(stats["active_i2r"]), active / (n * (n - 1)), rtol=1e-6)


def test_violating_reduction_does_not_vanish_as_triplets_are_satisfied():
    # Only one negative violates: the mean shrinks with the batch, adaptive mining keeps its size.
    n, d = 6, 6
    img = np.eye(n, d)
    rec = np.eye(n, d)
    rec[1] = _unit(np.eye(d)[1] + 1.2 * np.eye(d)[0])  # recipe 1 drifts towards image 0
    for_mean = losses.bidirectional_triplet_loss(
        jnp.asarray(img), jnp.asarray(rec), margin=0.3, reduction="mean"
    )[0]
    for_violating = losses.bidirectional_triplet_loss(
        jnp.asarray(img), jnp.asarray(rec), margin=0.3, reduction="violating"
    )[0]
    assert float(for_violating) > 5 * float(for_mean) > 0


def test_perfectly_separated_batch_has_zero_loss_and_no_active_triplets():
    img = np.eye(4)
    loss, stats = losses.bidirectional_triplet_loss(
        jnp.asarray(img), jnp.asarray(img), margin=0.3, reduction="violating"
    )
    assert float(loss) == 0.0
    assert float(stats["active_i2r"]) == 0.0


def test_unknown_reduction_is_a_clear_error():
    img, rec = _embeddings(0)
    with pytest.raises(ValueError, match="unknown triplet reduction"):
        losses.bidirectional_triplet_loss(
            jnp.asarray(img), jnp.asarray(rec), margin=0.3, reduction="max"
        )


def test_recipe_ssl_loss_averages_two_directional_triplets_over_pairs():
    """H-T's released recipe loss scores each pair in both directions (its TripletLoss): the
    one-directional form this replaced was about half of it (tests/test_reference_losses.py
    holds the released values)."""
    a, b = _embeddings(1)
    c, d = _embeddings(2)
    pairs = {
        "title->ingredients": (jnp.asarray(a), jnp.asarray(b)),
        "x->y": (jnp.asarray(c), jnp.asarray(d)),
    }
    got = losses.recipe_ssl_loss(pairs, margin=0.3, reduction="violating")
    expected = (
        _brute_direction(a, b, 0.3, "violating")
        + _brute_direction(b, a, 0.3, "violating")
        + _brute_direction(c, d, 0.3, "violating")
        + _brute_direction(d, c, 0.3, "violating")
    ) / 2
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_triplet_gradient_pulls_positive_closer():
    img, rec = _embeddings(3)
    grad = jax.grad(
        lambda r: losses.bidirectional_triplet_loss(
            jnp.asarray(img), r, margin=0.5, reduction="mean"
        )[0]
    )(jnp.asarray(rec))
    step = _unit(rec - 0.1 * np.asarray(grad))
    before = np.sum(img * rec, axis=1).mean()
    after = np.sum(img * step, axis=1).mean()
    assert after > before


# --- AdaMine semantic triplet, pairwise cosine (im2recipe / PWC++), classification -------------


def _brute_semantic(queries, candidates, classes, margin, reduction, positives="all"):
    """AdaMine Eq. 3-5 by loops: labelled query q, positive p != q of q's class (every one:
    the paper's Eq. 4; or only the first in batch order: the released `semantic_multimodal`,
    which also keeps only each query's first k negatives, k the fewest any labelled query has),
    negative n of another labelled class; adaptive = sum / #non-zero, mean = sum / #triplets."""
    costs = []
    n = len(queries)

    def negatives(q):
        return [j for j in range(n) if classes[j] not in (0, classes[q])]

    fewest = min((len(negatives(q)) for q in range(n) if classes[q]), default=n)

    def is_positive(q, p):
        if p == q or classes[q] == 0 or classes[p] != classes[q]:
            return False
        if positives == "first":
            return p == min(j for j in range(n) if j != q and classes[j] == classes[q])
        return True

    for q, p, neg in itertools.product(range(n), repeat=3):
        if not is_positive(q, p) or neg not in negatives(q):
            continue
        if positives == "first" and negatives(q).index(neg) >= fewest:
            continue
        d_pos = _cos_dist(queries[q], candidates[p])
        costs.append(max(0.0, margin + d_pos - _cos_dist(queries[q], candidates[neg])))
    if not costs:
        return 0.0
    if reduction == "violating":
        return sum(costs) / max(sum(c > 0 for c in costs), 1)
    return sum(costs) / len(costs)


# classes with unlabelled items (0), a singleton class (4) and repeated classes
CLASSES = np.array([1, 0, 2, 1, 2, 0, 4, 1], np.int32)


@pytest.mark.parametrize("positives", ["all", "first"])
@pytest.mark.parametrize("reduction", ["violating", "mean"])
@pytest.mark.parametrize("margin", [0.3, 1.5])
def test_semantic_loss_matches_brute_force(reduction, margin, positives):
    image, recipe = _embeddings(3, n=len(CLASSES))
    loss, stats = losses.bidirectional_semantic_loss(
        jnp.asarray(image),
        jnp.asarray(recipe),
        jnp.asarray(CLASSES),
        margin=margin,
        reduction=reduction,
        positives=positives,
    )
    expected = _brute_semantic(
        image, recipe, CLASSES, margin, reduction, positives
    ) + _brute_semantic(recipe, image, CLASSES, margin, reduction, positives)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-6)
    assert 0.0 < float(stats["active_sem_i2r"]) <= 1.0


def test_adaptive_mining_normaliser_differs_from_average_when_few_triplets_violate():
    # Make most semantic triplets satisfied: classes sit on separate axes, one pair is swapped.
    classes = np.array([1, 1, 2, 2, 3, 3], np.int32)
    base = np.eye(6)[[0, 0, 1, 1, 2, 2]] + 0.01 * np.arange(6)[:, None]
    image, recipe = _unit(base), _unit(base.copy())
    recipe[0] = _unit(np.eye(6)[1])  # recipe 0 looks like class 2: a few violations
    args = (jnp.asarray(image), jnp.asarray(recipe), jnp.asarray(classes))
    adaptive, _ = losses.bidirectional_semantic_loss(*args, margin=0.3, reduction="violating")
    average, _ = losses.bidirectional_semantic_loss(*args, margin=0.3, reduction="mean")
    np.testing.assert_allclose(
        float(adaptive),
        _brute_semantic(image, recipe, classes, 0.3, "violating")
        + _brute_semantic(recipe, image, classes, 0.3, "violating"),
        rtol=1e-5,
    )
    assert float(adaptive) > 3 * float(average) > 0  # the update does not vanish


def test_semantic_loss_without_labelled_pairs_is_zero():
    image, recipe = _embeddings(4, n=4)
    loss, _ = losses.bidirectional_semantic_loss(
        jnp.asarray(image), jnp.asarray(recipe), jnp.zeros(4, jnp.int32), margin=0.3
    )
    assert float(loss) == 0.0


def _brute_pairwise(image, recipe, pos_margin, neg_margin, mismatch_rate):
    n = len(image)
    pos = [max(0.0, _cos_dist(image[i], recipe[i]) - pos_margin) for i in range(n)]
    neg = [
        max(0.0, neg_margin - _cos_dist(image[i], recipe[j]))
        for i in range(n)
        for j in range(n)
        if i != j
    ]
    return (1 - mismatch_rate) * np.mean(pos) + mismatch_rate * np.mean(neg)


@pytest.mark.parametrize(
    "pos_margin, neg_margin, rate", [(0.0, 0.9, 0.8), (0.3, 0.9, 0.8), (0.3, 0.9, 0.5)]
)
def test_pairwise_cosine_loss_matches_brute_force(pos_margin, neg_margin, rate):
    image, recipe = _embeddings(5)
    loss = losses.pairwise_cosine_loss(
        jnp.asarray(image),
        jnp.asarray(recipe),
        pos_margin=pos_margin,
        neg_margin=neg_margin,
        mismatch_rate=rate,
    )
    np.testing.assert_allclose(
        float(loss), _brute_pairwise(image, recipe, pos_margin, neg_margin, rate), rtol=1e-5
    )


def test_pairwise_loss_is_im2recipe_cosine_embedding_loss():
    # torch.nn.CosineEmbeddingLoss(margin=0.1): 1 - cos for y=1, max(0, cos - 0.1) for y=-1.
    image, recipe = _embeddings(6)
    cos = image @ recipe.T
    n = len(image)
    expected = 0.2 * np.mean(1 - np.diag(cos)) + 0.8 * np.sum(
        np.maximum(0, cos - 0.1) * (1 - np.eye(n))
    ) / (n * (n - 1))
    loss = losses.pairwise_cosine_loss(
        jnp.asarray(image),
        jnp.asarray(recipe),
        pos_margin=0.0,
        neg_margin=0.9,
        mismatch_rate=0.8,
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_classification_loss_matches_log_softmax_loop():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 4)), np.array([0, 3, 1, 1, 2])
    expected = np.mean(
        [np.log(np.sum(np.exp(row))) - row[y] for row, y in zip(logits, labels, strict=True)]
    )
    got = losses.classification_loss(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_compute_losses_combines_class_aware_terms():
    image, recipe = _embeddings(7, n=len(CLASSES))
    rng = np.random.default_rng(1)
    outputs = {
        "image": jnp.asarray(image),
        "recipe": jnp.asarray(recipe),
        "image_logits": jnp.asarray(rng.normal(size=(len(CLASSES), 5))),
        "recipe_logits": jnp.asarray(rng.normal(size=(len(CLASSES), 5))),
    }
    batch = {schema.CLASS_ID: jnp.asarray(CLASSES)}
    cfg = common.base_config("test").loss
    cfg.update(
        dict(
            triplet=1.0,
            reduction="violating",
            recipe_ssl=0.0,
            semantic=0.3,
            semantic_margin=0.3,
            pairwise=0.5,
            pos_margin=0.3,
            neg_margin=0.9,
            mismatch_rate=0.8,
            image_cls=0.1,
            recipe_cls=0.2,
        )
    )
    cfg.margin.start = 0.3
    total, metrics = losses.compute_losses(outputs, batch, cfg, step=0, total_steps=1)
    expected = (
        metrics["loss_triplet"]
        + 0.3 * metrics["loss_semantic"]
        + 0.5 * metrics["loss_pairwise"]
        + 0.1 * metrics["loss_image_cls"]
        + 0.2 * metrics["loss_recipe_cls"]
    )
    np.testing.assert_allclose(float(total), float(expected), rtol=1e-6)
    del batch[schema.CLASS_ID]
    with pytest.raises(ValueError, match="class_id"):
        losses.compute_losses(outputs, batch, cfg, step=0, total_steps=1)


def test_compute_losses_takes_the_decoder_labels_from_the_batch():
    """The cross decoder's labels are the batch's decoder tokens shifted by one (teacher
    forcing): the logits at position t predict token t + 1; PAD labels count for nothing."""
    image, recipe = _embeddings(3, n=2)
    tokens = np.array([[2, 7, 5, 3, 0], [2, 6, 3, 0, 0]], np.int32)
    logits = np.random.default_rng(4).normal(size=(2, 4, 9)).astype(np.float32)
    outputs = {"image": image, "recipe": recipe, "decoder_logits": jnp.asarray(logits)}
    cfg = common.base_config("test").loss
    cfg.cross_decoder = 0.5
    batch = {schema.DECODER_TOKENS: jnp.asarray(tokens)}
    total, metrics = losses.compute_losses(outputs, batch, cfg, step=0, total_steps=1)
    expected = np.mean(
        [
            np.log(np.sum(np.exp(logits[b, t]))) - logits[b, t, tokens[b, t + 1]]
            for b, t in itertools.product(range(2), range(4))
            if tokens[b, t + 1] != schema.PAD_ID
        ]
    )
    np.testing.assert_allclose(float(metrics["loss_cross_decoder"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(total), 0.5 * expected, rtol=1e-5)


def test_the_instance_pair_is_not_a_semantic_positive():
    """Two items of one class, each nearest its own match and as far from the other as from the
    negative: Eq. 4's only positive of item 0 is item 1 — a violation of the margin; counting the
    match itself (as before) added satisfied triplets that halved the mean."""
    classes = np.array([1, 1, 2], np.int32)
    image = _unit(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    recipe = image.copy()
    loss, _ = losses.bidirectional_semantic_loss(
        jnp.asarray(image), jnp.asarray(recipe), jnp.asarray(classes), margin=0.3, reduction="mean"
    )
    # Each of items 0, 1: positive at distance 1, negative (item 2) at distance 1: cost 0.3, for
    # both directions; item 2 has no positive.
    np.testing.assert_allclose(float(loss), 0.3 + 0.3, rtol=1e-6)


def test_unknown_semantic_positives_is_a_clear_error():
    image, recipe = _embeddings(4, n=4)
    with pytest.raises(ValueError, match="semantic_positives"):
        losses.bidirectional_semantic_loss(
            jnp.asarray(image),
            jnp.asarray(recipe),
            jnp.ones(4, jnp.int32),
            margin=0.3,
            positives="nearest",
        )
