"""The adversarial and translation loss terms of ACME (Wang et al., CVPR 2019), as pure functions.

Each is the released code's term (hwang1996/ACME @ 318091b: `train.py`, `triplet_loss.py`),
checked against it on the same tensors by `tests/test_adversarial_losses.py` (values from
`tools/reference_losses.py --acme_dir`):

- modality alignment, WGAN-GP on embeddings: `wgan_critic_loss` + 10 x `gradient_penalty`
  (train.py 235-238, `compute_gradient_penalty` 196-215), `wgan_generator_loss` (243-244);
- recipe -> image: the image discriminator's real/fake BCE (`train_Dnet`, 156-168; the
  generator's side `train_Gnet`, 175-194), its class head (`weighted_class_loss`: class 0 weighs
  nothing, 49-51) and conditioning augmentation's `kl_loss` (170-173);
- image -> recipe: ingredients as `multilabel_margin_loss` (PyTorch's MultiLabelMarginLoss,
  47, 266, on the sigmoid scores) and the class. One departure: train.py 266 hands that loss the
  0/1 ingredient vector itself, which PyTorch reads as a list of class ids, so the released term
  pushes up outputs 0 and 1 only (docs/methods.md); this is the documented loss, given the
  ingredients as a multi-hot mask;
- retrieval: `hardest_triplet_loss` (`global_loss` with hard example mining, margin 0.3);
- `balance_losses`: the smaller of the text and image translation losses scales the larger
  down to it (285-288), as a constant factor.

Discriminator outputs are logits here (the released D ends in a sigmoid and uses BCELoss on the
probabilities; the same value where the probabilities are not saturated).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def wgan_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
    """The critic's Wasserstein estimate to minimise: -E[D(real)] + E[D(fake)] (ACME: real =
    image embeddings, fake = recipe embeddings)."""
    return -jnp.mean(real_scores) + jnp.mean(fake_scores)


def wgan_generator_loss(fake_scores: jax.Array) -> jax.Array:
    """The encoder's side: -E[D(fake)], so that the recipe embeddings pass as images."""
    return -jnp.mean(fake_scores)


def gradient_penalty(
    critic: Callable[[jax.Array], jax.Array],
    real: jax.Array,
    fake: jax.Array,
    alpha: jax.Array,
) -> jax.Array:
    """WGAN-GP (Gulrajani et al. 2017): E[(|grad_x D(x)|_2 - 1)^2] at x = alpha real +
    (1 - alpha) fake, alpha [B, 1] in [0, 1) (drawn by the caller). `critic` maps [B, ...] to
    [B, 1] row by row (no batch statistics), so the gradient of the summed scores is each row's."""
    x = alpha * real + (1.0 - alpha) * fake
    grads = jax.grad(lambda v: jnp.sum(critic(v)))(x)
    norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1))
    return jnp.mean(jnp.square(norms - 1.0))


def discriminator_bce_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """The image discriminator's real/fake term: BCE(real, 1) + BCE(fake, 0), each a mean."""
    real = optax.sigmoid_binary_cross_entropy(real_logits, jnp.ones_like(real_logits))
    fake = optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits))
    return jnp.mean(real) + jnp.mean(fake)


def generator_bce_loss(fake_logits: jax.Array) -> jax.Array:
    """The generator's real/fake term: BCE(fake, 1), a mean."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)))


def kl_loss(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """Conditioning augmentation's KL(N(mu, exp(logvar)) || N(0, I)), averaged over every
    element (not summed over dimensions), as the released `KL_loss`."""
    return -0.5 * jnp.mean(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar))


def weighted_class_loss(
    logits: jax.Array, labels: jax.Array, class_weights: jax.Array
) -> jax.Array:
    """Softmax cross-entropy averaged with per-class weights, as PyTorch's CrossEntropyLoss(weight):
    sum_i w[y_i] nll_i / sum_i w[y_i]. ACME weighs class 0 (no class) by 0. A batch whose
    weights are all 0 gives 0 (PyTorch: NaN, which would stop the run)."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    w = class_weights[labels]
    total = jnp.sum(w)
    return jnp.sum(w * nll) / jnp.where(total > 0, total, 1.0)


def multilabel_margin_loss(scores: jax.Array, targets: jax.Array) -> jax.Array:
    """PyTorch's MultiLabelMarginLoss with the targets as a multi-hot [B, C] mask: per row,
    sum over targets j and non-targets i of max(0, 1 - (x_j - x_i)), divided by C; the mean
    over rows. (The released code lists a row's targets as class ids ended by -1.)"""
    scores = scores.astype(jnp.float32)
    is_target = targets.astype(bool)
    hinge = jax.nn.relu(1.0 - scores[:, :, None] + scores[:, None, :])  # [B, j, i]
    pairs = is_target[:, :, None] & ~is_target[:, None, :]
    return jnp.mean(jnp.sum(jnp.where(pairs, hinge, 0.0), axis=(1, 2)) / scores.shape[1])


def hardest_triplet_loss(features: jax.Array, labels: jax.Array, margin: float) -> jax.Array:
    """Batch-hard triplet loss (Hermans et al. 2017): each anchor's farthest positive and nearest
    negative in Euclidean distance over `features` [N, D] (ACME: images and recipes stacked,
    labels = the pair index twice), mean of max(0, margin + d_ap - d_an). A row is its own
    positive at distance sqrt(1e-12), the released clamp."""
    f = features.astype(jnp.float32)
    sq = jnp.sum(jnp.square(f), axis=-1)
    dist = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 1e-12))
    same = labels[:, None] == labels[None, :]
    d_ap = jnp.max(jnp.where(same, dist, -jnp.inf), axis=1)
    d_an = jnp.min(jnp.where(same, jnp.inf, dist), axis=1)
    return jnp.mean(jax.nn.relu(margin + d_ap - d_an))


def balance_losses(text: jax.Array, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(text, image) with the larger scaled down to the smaller's value by a constant factor (no
    gradient through the factor): the released way of weighing the two translation directions."""
    ratio = jax.lax.stop_gradient(jnp.minimum(text, image) / jnp.maximum(text, image))
    text_larger = text > image
    return jnp.where(text_larger, ratio * text, text), jnp.where(text_larger, image, ratio * image)
