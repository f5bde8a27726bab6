"""The train step with ACME's two players (`config.adversarial`), in the one jitted step.

Per step, in the released code's order (hwang1996/ACME train.py 227-303) with one encoder pass:
1. the encoders (and the generator, the image -> recipe heads) run forward once under `jax.vjp`:
   embeddings, generated images, conditioning augmentation's (mu, logvar);
2. the discriminators take `adversarial.critic_steps` Adam steps on those outputs held fixed:
   the embedding critic's WGAN-GP (image embeddings real, recipe embeddings fake) and the image
   discriminator's real/fake BCE plus its class head on the real photos;
3. the generative side's loss is formed with the *updated* discriminators: the retrieval losses,
   `align` x the encoder's WGAN term, `translate` x the balanced translation losses (generator:
   BCE + class + `kl` x KL; image -> recipe: ingredients + class), `generated_triplet` x the
   ranking of generated images against recipes (through the image encoder held fixed); its
   gradient is pulled back through step 1 to the encoders and the generative side, each updated
   by its own optimizer.

Departures from the release, each for a reason: the image discriminator's class head is trained
on real photos in its own step (the release adds that term to the generator's loss, where no
optimizer owns the head, so it stays random); real photos reach the discriminator in the
generator's range [-1, 1] (the release feeds ImageNet-normalised photos against tanh images);
the ingredient targets are the words of the recipe's ingredient lines (a multi-hot over the
vocabulary), given to the documented loss (docs/methods.md).

Randomness (noise, conditioning augmentation, the penalty's mixing weights) is folded from the
state's key and the step, so a resumed run draws what the uninterrupted one drew. Gradient
accumulation is refused (`xmodal.run.check_config`): the discriminators' step, the batch-hard
mining and BatchNorm's statistics are per global batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from xmodal.data import schema
from xmodal.models.gan import INGREDIENT_LOSSES, jitter, to_generator_range, to_pixels
from xmodal.runtime import state as state_lib
from xmodal.runtime.metrics import NONFINITE
from xmodal.training import adversarial as terms
from xmodal.training import losses

# The generated images' ranking sees them moved by up to 1/8 of their side (gan.jitter).
JITTER_FRACTION = 8


def ingredient_words(ingredients: jax.Array, vocab_size: int) -> jax.Array:
    """Token ids of the ingredient lines [B, N, T] -> multi-hot [B, vocab] of the words they use
    (padding and the tokenizer's reserved ids left out)."""
    ids = ingredients.reshape(ingredients.shape[0], -1)
    rows = jnp.arange(ids.shape[0])[:, None]
    hot = jnp.zeros((ids.shape[0], vocab_size), jnp.float32).at[rows, ids].set(1.0)
    return hot.at[:, : schema.EOS_ID + 1].set(0.0)


def ingredient_loss(logits: jax.Array, targets: jax.Array, kind: str) -> jax.Array:
    if kind == "bce":
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))
    if kind == "margin":  # ACME's MultiLabelMarginLoss on the sigmoid scores
        return terms.multilabel_margin_loss(jax.nn.sigmoid(logits), targets)
    raise ValueError(
        f"adversarial.ingredient_loss must be one of {INGREDIENT_LOSSES}, got {kind!r}"
    )


def class_weights(num_classes: int) -> jax.Array:
    """ACME's class weights: class 0 (no class) counts for nothing."""
    return jnp.ones((num_classes,), jnp.float32).at[0].set(0.0)


def make_adversarial_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    nets: state_lib.AdversarialNets,
) -> Any:
    """Pure step: (state, global batch) -> (new state, scalar metrics), as
    `xmodal.training.step.make_train_step` (same metrics, same non-finite policy) plus each
    player's terms: loss_critic (the critic's Wasserstein estimate to minimise),
    gradient_penalty, loss_align, loss_d_image, loss_d_class, loss_g_image, kl,
    loss_image_to_recipe, loss_generated_triplet, d_grad_norm, gen_grad_norm."""
    a = config.adversarial
    loss_config = config.loss
    total_steps = config.train.num_steps
    schedule = state_lib.learning_rate_schedule(config.train)
    skip_nonfinite = config.train.on_nonfinite == "skip"
    weights = class_weights(a.num_classes)
    encoder_size = config.data.image_size
    base_margin = losses.margin_settings(loss_config)["start"]

    def classes(logits: jax.Array, labels: jax.Array) -> jax.Array:
        return terms.weighted_class_loss(logits, labels, weights)

    embed_held = state_lib.in_eval_mode(graphdef, lambda model, x: model.embed_image(x))

    def generated_ranking(params, model_state, fake, recipe, key) -> jax.Array:
        """The generated images, embedded as a test photo is (eval mode, weights and recipe
        embeddings held), rank their recipes first: only the generator learns from it, so it
        must draw what the encoder learnt from real photos, and neither the encoder (weights,
        BatchNorm statistics) learns the generator's patterns nor the recipes move to them."""
        every = a.generated_triplet_stride
        fake, recipe = fake[::every], recipe[::every]
        pixels = jitter(to_pixels(fake, encoder_size), key, encoder_size // JITTER_FRACTION)
        embedded = embed_held(jax.lax.stop_gradient(params), model_state, pixels)
        loss, _ = losses.bidirectional_triplet_loss(
            embedded,
            jax.lax.stop_gradient(recipe),
            margin=base_margin,
            reduction=loss_config.reduction,
        )
        return loss

    def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array]):
        adv = state.adversarial
        key = jax.random.fold_in(state.rng, state.step)
        k_dropout, k_noise, k_eps, k_alpha = jax.random.split(key, 4)
        k_jitter = jax.random.fold_in(key, 1)
        batch_size = batch[schema.IMAGE].shape[0]
        labels = batch[schema.CLASS_ID]

        def forward(params, gen_params):
            model = nnx.merge(graphdef, params, state.model_state, copy=True)
            model.train()
            nnx.reseed(model, dropout=k_dropout)
            outputs = model(batch)
            retrieval, metrics = losses.compute_losses(
                outputs, batch, loss_config, step=state.step, total_steps=total_steps
            )
            gen = nnx.merge(nets.gen_graphdef, gen_params, adv.gen_state, copy=True)
            gen.train()
            out = {"retrieval": retrieval, "image": outputs[schema.IMAGE]}
            out["recipe"] = outputs["recipe"]
            if gen.generator is not None:
                noise = jax.random.normal(k_noise, (batch_size, a.z_dim))
                eps = jax.random.normal(k_eps, (batch_size, a.ca_dim))
                out["fake"], out["mu"], out["logvar"] = gen.generator(noise, out["recipe"], eps)
                if a.generated_triplet:
                    out["generated_triplet"] = generated_ranking(
                        params, state.model_state, out["fake"], out["recipe"], k_jitter
                    )
            if gen.heads is not None:
                ingredient_logits, class_logits = gen.heads(out["image"])
                words = ingredient_words(batch[schema.COMPONENTS[1]], ingredient_logits.shape[-1])
                out["image_to_recipe"] = ingredient_loss(
                    ingredient_logits, words, a.ingredient_loss
                ) + classes(class_logits, labels)
            _, _, model_state = nnx.split(model, nnx.Param, ...)
            _, _, gen_state = nnx.split(gen, nnx.Param, ...)
            return out, (metrics, model_state, gen_state)

        out, pullback, (metrics, model_state, gen_state) = jax.vjp(
            forward, state.params, adv.gen_params, has_aux=True
        )
        held = jax.lax.stop_gradient(out)
        real_images = (
            to_generator_range(batch[schema.IMAGE], a.image_size) if "fake" in held else None
        )

        def disc_loss(disc_params, disc_state, k):
            d = nnx.merge(nets.disc_graphdef, disc_params, disc_state, copy=True)
            d.train()
            total, m = jnp.zeros((), jnp.float32), {}
            if d.critic is not None:
                alpha = jax.random.uniform(k, (batch_size, 1))
                m["loss_critic"] = terms.wgan_critic_loss(
                    d.critic(held["image"]), d.critic(held["recipe"])
                )
                m["gradient_penalty"] = terms.gradient_penalty(
                    d.critic, held["image"], held["recipe"], alpha
                )
                total += m["loss_critic"] + a.gradient_penalty * m["gradient_penalty"]
            if d.image is not None:
                real_logit, real_classes = d.image(real_images, held["mu"])
                fake_logit, _ = d.image(held["fake"], held["mu"])
                m["loss_d_image"] = terms.discriminator_bce_loss(real_logit, fake_logit)
                m["loss_d_class"] = classes(real_classes, labels)
                total += m["loss_d_image"] + m["loss_d_class"]
            _, _, new_state = nnx.split(d, nnx.Param, ...)
            return total, (m, new_state)

        disc_params, disc_state, disc_opt = adv.disc_params, adv.disc_state, adv.disc_opt_state
        d_finite = jnp.array(True)
        for i in range(a.critic_steps):  # a handful: unrolled
            (d_total, (d_metrics, disc_state)), d_grads = jax.value_and_grad(
                disc_loss, has_aux=True
            )(disc_params, disc_state, jax.random.fold_in(k_alpha, i))
            d_updates, disc_opt = nets.disc_tx.update(d_grads, disc_opt, disc_params)
            disc_params = optax.apply_updates(disc_params, d_updates)
            d_grad_norm = optax.tree.norm(d_grads)
            d_finite &= jnp.isfinite(d_total) & jnp.isfinite(d_grad_norm)
        frozen = jax.lax.stop_gradient(disc_params)

        def generative_loss(out):
            d = nnx.merge(nets.disc_graphdef, frozen, disc_state, copy=True)
            d.train()
            total, m = out["retrieval"], {"loss_retrieval": out["retrieval"]}
            if d.critic is not None:
                m["loss_align"] = terms.wgan_generator_loss(d.critic(out["recipe"]))
                total += a.align * m["loss_align"]
            if d.image is not None:
                fake_logit, fake_classes = d.image(out["fake"], out["mu"])
                m["kl"] = terms.kl_loss(out["mu"], out["logvar"])
                m["loss_g_image"] = (
                    terms.generator_bce_loss(fake_logit)
                    + classes(fake_classes, labels)
                    + a.kl * m["kl"]
                )
                m["loss_image_to_recipe"] = out["image_to_recipe"]
                text, image = out["image_to_recipe"], m["loss_g_image"]
                if a.balance:
                    text, image = terms.balance_losses(text, image)
                total += a.translate * (text + image)
            if "generated_triplet" in out:
                m["loss_generated_triplet"] = out["generated_triplet"]
                total += a.generated_triplet * out["generated_triplet"]
            return total, m

        (loss, g_metrics), cotangent = jax.value_and_grad(generative_loss, has_aux=True)(out)
        grads, gen_grads = pullback(cotangent)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        gen_updates, gen_opt = nets.gen_tx.update(gen_grads, adv.gen_opt_state, adv.gen_params)
        grad_norm = optax.tree.norm(grads)
        gen_grad_norm = optax.tree.norm(gen_grads)
        finite = (
            jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(gen_grad_norm) & d_finite
        )

        def if_finite(new, old):
            if not skip_nonfinite:  # 'stop' raises before a bad state is used (step.py)
                return new
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_adv = adv.replace(
            gen_params=optax.apply_updates(adv.gen_params, gen_updates),
            gen_state=gen_state,
            gen_opt_state=gen_opt,
            disc_params=disc_params,
            disc_state=disc_state,
            disc_opt_state=disc_opt,
        )
        new_state = state.replace(
            step=state.step + 1,
            params=if_finite(optax.apply_updates(state.params, updates), state.params),
            model_state=if_finite(model_state, state.model_state),
            opt_state=if_finite(opt_state, state.opt_state),
            adversarial=if_finite(new_adv, adv),
        )
        metrics.update(d_metrics)
        metrics.update(g_metrics)
        metrics["loss"] = loss
        metrics["learning_rate"] = schedule(state.step)
        metrics["grad_norm"] = grad_norm
        metrics["gen_grad_norm"] = gen_grad_norm
        metrics["d_grad_norm"] = d_grad_norm
        metrics[NONFINITE] = jnp.logical_not(finite).astype(jnp.int32)
        return new_state, metrics

    return train_step
