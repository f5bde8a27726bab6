"""Loss terms as pure functions of embeddings, and their combination chosen by `config.loss`.

Every term sees the *global* batch: inside `jax.jit` the embeddings are batch-sharded arrays and
XLA inserts the all-gather for the B x B similarity matrix, so negatives come from every device.
Embeddings are unit-norm, so cosine distance is d(a, b) = 1 - <a, b>.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from xmodal.data import schema
from xmodal.models.cross_decoder import teacher_forcing

REDUCTIONS = ("violating", "hardest", "mean", "batch_mean")
SEMANTIC_POSITIVES = ("all", "first")
MARGIN_KINDS = ("constant", "linear", "adaptive", "adaptive_tfood")
# How the ranking terms (instance and semantic triplet) enter the total: `ranking_total`.
COMBINES = ("sum", "direction_mean")


def triplet_costs(
    queries: jax.Array, candidates: jax.Array, margin: float | jax.Array
) -> jax.Array:
    """[B, B] hinge costs [m + d(q_i, c_i) - d(q_i, c_j)]_+ with the diagonal (positives) zeroed.

    Row i holds query i against every negative j != i; with unit-norm inputs the cosine distance
    difference is sim_ij - sim_ii.
    """
    sims = jnp.einsum("id,jd->ij", queries.astype(jnp.float32), candidates.astype(jnp.float32))
    positives = jnp.diagonal(sims)[:, None]
    costs = jax.nn.relu(margin + sims - positives)
    return jnp.where(jnp.eye(sims.shape[0], dtype=bool), 0.0, costs)


def reduce_costs(costs: jax.Array, reduction: str) -> jax.Array:
    """Reduce [B, B] triplet costs (diagonal already zero) to a scalar.

    violating: sum over triplets / number of triplets with non-zero cost — AdaMine's adaptive
        mining (Carvalho et al., SIGIR 2018, Eq. 4-5): the update never vanishes as constraints
        become satisfied, moving from "average" towards "hardest negative" automatically.
    hardest:   mean over queries of the hardest negative's cost (VSE++).
    mean:      mean over all B(B-1) triplets.
    batch_mean: mean over the whole B x B matrix, the zeroed diagonal included — H-T's loss
        (amzn/image-to-recipe-transformers, src/utils/loss.py, `TripletLoss.forward`:
        `(cost_s + cost_im).mean()`), so `mean` x (B-1)/B.
    """
    if reduction == "violating":
        active = jnp.sum(costs > 0)
        return jnp.sum(costs) / jnp.maximum(active, 1).astype(costs.dtype)
    if reduction == "hardest":
        return jnp.mean(jnp.max(costs, axis=1))
    if reduction == "mean":
        n = costs.shape[0]
        return jnp.sum(costs) / max(n * (n - 1), 1)
    if reduction == "batch_mean":
        return jnp.sum(costs) / max(costs.shape[0] * costs.shape[1], 1)
    raise ValueError(f"unknown triplet reduction {reduction!r}; choose from {REDUCTIONS}")


def active_fraction(costs: jax.Array) -> jax.Array:
    """Share of (query, negative) triplets that still violate the margin."""
    n = costs.shape[0]
    return jnp.sum(costs > 0) / max(n * (n - 1), 1)


def bidirectional_triplet_loss(
    image: jax.Array,
    recipe: jax.Array,
    *,
    margin: float | jax.Array,
    reduction: str = "violating",
    margin_r2i: float | jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Image->recipe plus recipe->image in-batch triplet loss (H-T / TNLBT retrieval loss).

    `margin` is the image->recipe margin and, unless `margin_r2i` is given, the recipe->image one
    too (dynamic margins set each direction separately). Returns the summed loss and the
    per-direction share of active triplets.
    """
    i2r = triplet_costs(image, recipe, margin)
    r2i = triplet_costs(recipe, image, margin if margin_r2i is None else margin_r2i)
    loss = reduce_costs(i2r, reduction) + reduce_costs(r2i, reduction)
    return loss, {"active_i2r": active_fraction(i2r), "active_r2i": active_fraction(r2i)}


def margin_settings(loss_config: Any) -> dict[str, Any]:
    """`config.loss.margin` as a checked dict (kind, start, end, steps, min, max)."""
    margin = loss_config.margin
    if not hasattr(margin, "keys"):  # a dict or a ConfigDict
        raise TypeError(
            f"loss.margin must be a dict (kind, start, end, steps, min, max; configs/common.py), "
            f"got {margin!r}; a constant margin m is kind='constant', start=m"
        )
    settings = margin.to_dict() if hasattr(margin, "to_dict") else dict(margin)
    kind = settings["kind"]
    if kind not in MARGIN_KINDS:
        raise ValueError(f"unknown margin kind {kind!r}; choose from {MARGIN_KINDS}")
    if kind.startswith("adaptive") and not settings["min"] <= settings["max"]:
        raise ValueError(
            f"adaptive margin needs min <= max, got {settings['min']}, {settings['max']}"
        )
    return settings


def linear_margin(step: jax.Array, start: float, end: float, ramp_steps: int) -> jax.Array:
    """m(t) = start + (end - start) * min(t / ramp_steps, 1): TNLBT's margin raised over training
    so the retrieval task gets harder as the embeddings improve. `step` may be traced."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(ramp_steps, 1), 0.0, 1.0)
    return start + (end - start) * frac


def adaptive_margin(
    queries: jax.Array, candidates: jax.Array, *, reference: float, low: float, high: float
) -> jax.Array:
    """m = low + (high - low) * (1 - a), a = share of in-batch triplets active at `reference`.

    A pure function of the current batch: `a` is measured with the reference margin on
    stop-gradient similarities, so the margin is a constant of the loss (no gradient flows through
    it). Early on nearly every triplet violates the reference margin (a ~ 1) and the margin sits at
    `low`; as the model separates pairs (a -> 0) it grows towards `high` — harder as the model
    improves. Always inside [low, high].
    """
    costs = triplet_costs(
        jax.lax.stop_gradient(queries), jax.lax.stop_gradient(candidates), reference
    )
    return low + (high - low) * (1.0 - active_fraction(costs))


def tfood_adaptive_margin(
    queries: jax.Array, candidates: jax.Array, *, reference: float, low: float, high: float
) -> jax.Array:
    """T-Food's adaptive margin: m = clip(high * (1 - a), low, high), a = share of the B x B
    matrix (its zeroed diagonal counted) active at `reference`; no gradient flows through it.

    mshukor/TFood 466c120, recipe1m/models/criterions/triplet.py, `Triplet.__call__` with
    `margin_params.adaptive_margin` (`alpha_irr`, `alpha_rii`). The same signal as
    `adaptive_margin`, another map: high scaled by the inactive share, floored at `low`, where
    `adaptive_margin` interpolates from `low` to `high` over the B(B-1) triplets.
    """
    costs = triplet_costs(
        jax.lax.stop_gradient(queries), jax.lax.stop_gradient(candidates), reference
    )
    share = jnp.sum(costs > 0) / max(costs.size, 1)
    return jnp.clip(high * (1.0 - share), low, high)


def retrieval_margins(
    settings: dict[str, Any],
    image: jax.Array,
    recipe: jax.Array,
    *,
    step: jax.Array | int,
    total_steps: int,
) -> tuple[jax.Array, jax.Array]:
    """The (image->recipe, recipe->image) margins in use at `step` (the dynamic margins).

    constant: `start`. linear: `start` -> `end` over `steps` (0: the whole run, `total_steps`).
    adaptive: `adaptive_margin` per direction with reference `start`, bounds [`min`, `max`];
    adaptive_tfood: `tfood_adaptive_margin` likewise.
    """
    kind = settings["kind"]
    if kind == "constant":
        m = jnp.asarray(settings["start"], jnp.float32)
        return m, m
    if kind == "linear":
        ramp = settings["steps"] or total_steps
        m = linear_margin(step, settings["start"], settings["end"], ramp)
        return m, m
    if kind == "adaptive":
        bounds = dict(reference=settings["start"], low=settings["min"], high=settings["max"])
        return adaptive_margin(image, recipe, **bounds), adaptive_margin(recipe, image, **bounds)
    if kind == "adaptive_tfood":
        bounds = dict(reference=settings["start"], low=settings["min"], high=settings["max"])
        return (
            tfood_adaptive_margin(image, recipe, **bounds),
            tfood_adaptive_margin(recipe, image, **bounds),
        )
    raise ValueError(f"unknown margin kind {kind!r}; choose from {MARGIN_KINDS}")


def recipe_ssl_loss(
    pairs: Mapping[str, tuple[jax.Array, jax.Array]], *, margin: float | jax.Array, reduction: str
) -> jax.Array:
    """H-T's self-supervised recipe loss (Salvador et al., CVPR 2021, Sec. 3.3), as released.

    For each ordered pair of recipe components (a, b) the model maps a's feature into b's space,
    g_ab(e_a); H-T's two-direction triplet loss then asks g_ab(e_a) of recipe i to be nearer e_b
    of recipe i than e_b of any other recipe, *and* e_b of recipe i to be nearer g_ab(e_a) of
    recipe i than that of any other recipe. Averaged over the pairs. The released code
    (amzn/image-to-recipe-transformers 96e257e, src/train.py `trainIter`, lines 51-71) calls its
    `TripletLoss` (src/utils/loss.py: both directions, `(cost_s + cost_im).mean()`) on
    (e_b, g_ab(e_a)) for the six ordered pairs of raw (un-merged) component features and divides
    by their count (`loss_recipe /= c`); with `reduction='batch_mean'` this is that loss.
    """
    if not pairs:
        return jnp.zeros((), jnp.float32)
    terms = [
        reduce_costs(triplet_costs(pred, target, margin), reduction)
        + reduce_costs(triplet_costs(target, pred, margin), reduction)
        for pred, target in pairs.values()
    ]
    return sum(terms) / len(terms)


def semantic_triplet_costs(
    queries: jax.Array,
    candidates: jax.Array,
    classes: jax.Array,
    margin: float,
    positives: str = "all",
) -> tuple[jax.Array, jax.Array]:
    """AdaMine's semantic triplets (Carvalho et al., SIGIR 2018, Eq. 3-4), one direction.

    For query i and candidates p, n of the other modality: cost [m + d(q_i, c_p) - d(q_i, c_n)]_+
    where p shares the query's class and n has another class. The query's own match (p = i) is
    the instance loss's positive, not a semantic one. `positives`: 'all' = every other item of
    the class (the paper's Eq. 4); 'first' = the released code's selection (Cadene/
    recipe1m.bootstrap.pytorch 6ca20a2, recipe1m/models/criterions/triplet.py,
    `Triplet.semantic_multimodal`): only the first of them in batch order, and each query keeps
    only its first k negatives in batch order, k = the fewest negatives any labelled query has
    (the released [queries, k] cost matrix; a query with no positive has no triplet, where the
    released code fails). Class 0 is Recipe1M's "no class" (about half the pairs): such items are
    neither queries, positives nor negatives, since an unlabelled dish may well be of the query's
    class. Returns (costs
    [B, B, B] indexed [query, positive, negative], valid [B, B, B] bool marking real triplets).
    Memory is O(B^3): fine at AdaMine's batch of 100 (1M triplets), ~2 GB at 768.
    """
    if positives not in SEMANTIC_POSITIVES:
        raise ValueError(
            f"loss.semantic_positives must be one of {SEMANTIC_POSITIVES}, got {positives!r}"
        )
    sims = jnp.einsum("id,jd->ij", queries.astype(jnp.float32), candidates.astype(jnp.float32))
    labelled = classes > 0
    n = classes.shape[0]
    same = (classes[:, None] == classes[None, :]) & labelled[:, None] & labelled[None, :]
    same &= ~jnp.eye(n, dtype=bool)  # the instance pair is L_ins's, not a semantic positive
    if positives == "first":
        same &= jnp.cumsum(same, axis=1) == 1
    other = (classes[:, None] != classes[None, :]) & labelled[:, None] & labelled[None, :]
    if positives == "first":
        fewest = jnp.min(jnp.where(labelled, jnp.sum(other, axis=1), n))
        other &= jnp.cumsum(other, axis=1) <= fewest
    valid = same[:, :, None] & other[:, None, :]
    costs = jax.nn.relu(margin + sims[:, None, :] - sims[:, :, None])
    return jnp.where(valid, costs, 0.0), valid


def reduce_masked_costs(costs: jax.Array, valid: jax.Array, reduction: str) -> jax.Array:
    """Reduce costs over the `valid` triplets: 'violating' = sum / number of non-zero triplets
    (AdaMine Eq. 4-5, adaptive mining), 'mean' = sum / number of valid triplets (AdaMine_avg)."""
    total = jnp.sum(costs)
    if reduction == "violating":
        return total / jnp.maximum(jnp.sum(costs > 0), 1).astype(costs.dtype)
    if reduction == "mean":
        return total / jnp.maximum(jnp.sum(valid), 1).astype(costs.dtype)
    raise ValueError(f"semantic loss reduction must be 'violating' or 'mean', got {reduction!r}")


def bidirectional_semantic_loss(
    image: jax.Array,
    recipe: jax.Array,
    classes: jax.Array,
    *,
    margin: float,
    reduction: str = "violating",
    positives: str = "all",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """AdaMine's L_sem (Eq. 1, 3): image->recipe plus recipe->image semantic triplet loss, each
    direction normalised on its own (Eq. 4-5). Returns the loss and the share of active triplets."""
    terms, stats = [], {}
    for name, (q, c) in (("i2r", (image, recipe)), ("r2i", (recipe, image))):
        costs, valid = semantic_triplet_costs(q, c, classes, margin, positives)
        terms.append(reduce_masked_costs(costs, valid, reduction))
        stats[f"active_sem_{name}"] = jnp.sum(costs > 0) / jnp.maximum(jnp.sum(valid), 1)
    return terms[0] + terms[1], stats


def pairwise_cosine_loss(
    image: jax.Array,
    recipe: jax.Array,
    *,
    pos_margin: float,
    neg_margin: float,
    mismatch_rate: float,
) -> jax.Array:
    """Pairwise cosine loss of im2recipe (Salvador et al., CVPR 2017, Sec. 5.1) and PWC++
    (AdaMine, Carvalho et al. 2018, Eq. 6):

        l(q, x) = y [d(q, x) - a_pos]_+ + (1 - y) [a_neg - d(q, x)]_+,   d = 1 - cos.

    im2recipe's CosineEmbeddingLoss (1 - cos for matches, [cos - 0.1]_+ otherwise) is
    a_pos = 0, a_neg = 0.9; PWC++ is a_pos = 0.3, a_neg = 0.9. im2recipe trains on pairs of
    which a share `mismatch_rate` (0.8) is non-matching, drawn uniformly; here the loss is that
    sampling's expectation over the batch, (1 - r) * mean over matching pairs + r * mean over all
    B(B-1) non-matching pairs: the same objective without sampling noise or an RNG.
    """
    sims = jnp.einsum("id,jd->ij", image.astype(jnp.float32), recipe.astype(jnp.float32))
    dist = 1.0 - sims
    n = sims.shape[0]
    eye = jnp.eye(n, dtype=bool)
    positive = jnp.mean(jax.nn.relu(jnp.diagonal(dist) - pos_margin))
    negative = jnp.sum(jnp.where(eye, 0.0, jax.nn.relu(neg_margin - dist))) / max(n * (n - 1), 1)
    return (1.0 - mismatch_rate) * positive + mismatch_rate * negative


def classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over classes, class 0 (Recipe1M's background) included as in
    im2recipe's semantic regularisation (Salvador et al., CVPR 2017, Sec. 5.2)."""
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    )


def cross_decoder_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Teacher-forced token cross-entropy of the cross decoder, averaged over non-pad targets.

    logits [B, L, V] predict targets [B, L] (the decoder input shifted by one); PAD (0) positions
    are ignored. Computed in float32 whatever the compute dtype.
    """
    valid = (targets != 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def ranking_total(terms: Mapping[str, tuple[float, jax.Array]], combine: str) -> jax.Array:
    """The ranking terms' contribution to the loss; `terms` maps a name to (weight, value), each
    value the sum of its two directions (image->recipe + recipe->image).

    sum: sum of weight x value — AdaMine's Eq. 1, L = L_ins + lambda L_sem, and every other
        method. direction_mean: that sum over the number of directional terms (two per term) —
        the released AdaMine (Cadene/recipe1m.bootstrap.pytorch 6ca20a2,
        recipe1m/models/criterions/triplet.py, `Triplet.__call__`: `out['loss'] = total_loss /
        len(losses.keys())` over the weighted IRR, RII, SIRR, SRII of
        recipe1m/options/adamine.yaml), i.e. (IRR + RII + 0.1 SIRR + 0.1 SRII) / 4.
    """
    if combine not in COMBINES:
        raise ValueError(f"loss.combine must be one of {COMBINES}, got {combine!r}")
    total = jnp.zeros((), jnp.float32)
    for weight, value in terms.values():
        total += weight * value
    if combine == "direction_mean" and terms:
        total /= 2 * len(terms)
    return total


def compute_losses(
    outputs: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    loss_config: Any,
    *,
    step: jax.Array | int,
    total_steps: int,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted sum of the loss terms that `loss_config` switches on, and their values.

    `outputs` are the model's (embeddings, logits, SSL pairs, decoder logits); the labels come
    from the `batch` the model saw (`xmodal.data.schema`): `CLASS_ID` for the class-aware terms,
    `DECODER_TOKENS` for the cross decoder (shifted by `teacher_forcing`). `step` (traced inside
    jit) and `total_steps` drive the margin schedule; the margins in use are reported as
    'margin_i2r' / 'margin_r2i'. The recipe SSL loss keeps the schedule's base margin
    (`margin.start`): the schedule tunes the cross-modal task only. The instance and semantic
    triplet terms enter through `ranking_total` (`loss.combine`), the others as weight x value.
    """
    metrics: dict[str, jax.Array] = {}
    margin = margin_settings(loss_config)
    ranking: dict[str, tuple[float, jax.Array]] = {}  # the ranking terms: (weight, value)
    if loss_config.triplet:
        m_i2r, m_r2i = retrieval_margins(
            margin, outputs["image"], outputs["recipe"], step=step, total_steps=total_steps
        )
        triplet, stats = bidirectional_triplet_loss(
            outputs["image"],
            outputs["recipe"],
            margin=m_i2r,
            margin_r2i=m_r2i,
            reduction=loss_config.reduction,
        )
        ranking["triplet"] = (loss_config.triplet, triplet)
        metrics["loss_triplet"] = triplet
        metrics["margin_i2r"], metrics["margin_r2i"] = m_i2r, m_r2i
        metrics.update(stats)
    if loss_config.semantic:
        semantic = _semantic_loss(outputs, batch, loss_config, metrics)
        ranking["semantic"] = (loss_config.semantic, semantic)
        metrics["loss_semantic"] = semantic
    total = ranking_total(ranking, loss_config.combine)
    if loss_config.recipe_ssl and outputs.get("ssl"):
        ssl = recipe_ssl_loss(
            outputs["ssl"], margin=margin["start"], reduction=loss_config.reduction
        )
        total += loss_config.recipe_ssl * ssl
        metrics["loss_recipe_ssl"] = ssl
    total += _class_aware_losses(outputs, batch, loss_config, metrics)
    if loss_config.recipe_ssl and outputs.get("ssl_text_only"):
        # H-T also trains the recipe-only loss on recipes without photos (one extra batch).
        text_ssl = recipe_ssl_loss(
            outputs["ssl_text_only"], margin=margin["start"], reduction=loss_config.reduction
        )
        total += loss_config.recipe_ssl * text_ssl
        metrics["loss_recipe_ssl_text_only"] = text_ssl
    weight = loss_config.cross_decoder
    if weight and "decoder_logits" in outputs:
        _, labels = teacher_forcing(batch[schema.DECODER_TOKENS])
        dec = cross_decoder_loss(outputs["decoder_logits"], labels)
        total += weight * dec
        metrics["loss_cross_decoder"] = dec
    metrics["loss"] = total
    return total, metrics


def _class_aware_losses(
    outputs: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    loss_config: Any,
    metrics: dict[str, jax.Array],
) -> jax.Array:
    """The pairwise cosine loss of im2recipe / PWC++ (`loss.pairwise`) and the classification
    heads (`loss.image_cls`, `loss.recipe_cls`); each weight 0 leaves its term out. Class labels:
    the batch's `schema.CLASS_ID`."""
    total = jnp.zeros((), jnp.float32)
    if loss_config.pairwise:
        pairwise = pairwise_cosine_loss(
            outputs["image"],
            outputs["recipe"],
            pos_margin=loss_config.pos_margin,
            neg_margin=loss_config.neg_margin,
            mismatch_rate=loss_config.mismatch_rate,
        )
        total += loss_config.pairwise * pairwise
        metrics["loss_pairwise"] = pairwise
    for side in ("image", "recipe"):
        weight = loss_config[f"{side}_cls"]
        if not weight:
            continue
        if f"{side}_logits" not in outputs or schema.CLASS_ID not in batch:
            raise ValueError(
                f"loss.{side}_cls needs a class head (model.num_classes > 0) and "
                f"{schema.CLASS_ID!r} in the batch"
            )
        ce = classification_loss(outputs[f"{side}_logits"], batch[schema.CLASS_ID])
        total += weight * ce
        metrics[f"loss_{side}_cls"] = ce
    return total


def _semantic_loss(
    outputs: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    loss_config: Any,
    metrics: dict[str, jax.Array],
) -> jax.Array:
    """AdaMine's semantic triplet (`loss.semantic`) on the batch's `schema.CLASS_ID` labels; its
    shares of active triplets go to `metrics`."""
    if schema.CLASS_ID not in batch:
        raise ValueError(f"loss.semantic needs {schema.CLASS_ID!r} in the batch")
    semantic, stats = bidirectional_semantic_loss(
        outputs["image"],
        outputs["recipe"],
        batch[schema.CLASS_ID],
        margin=loss_config.semantic_margin,
        reduction=loss_config.semantic_reduction,
        positives=loss_config.semantic_positives,
    )
    metrics.update(stats)
    return semantic
