"""ACME's two-player training in the one jitted step (xmodal.training.adversarial_step): the
release's order, the critic-steps knob, the non-finite policy over both players, the global batch
on 8 devices with and without FSDP, the refusals, and a warm-started run that resumes exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from step_fixtures import VOCAB, micro_config, random_batch

from configs import acme
from configs import common as configs_common
from xmodal import run as run_lib
from xmodal.data import schema
from xmodal.runtime import checkpointing, sharding
from xmodal.runtime import state as state_lib
from xmodal.training import adversarial as terms
from xmodal.training.adversarial_step import ingredient_loss, ingredient_words
from xmodal.training.step import NONFINITE, compile_train_step, make_train_step

# One worker builds the session's ACME runs (conftest.acme_runs) and this module's fixtures
# for every test that reads them: split over two workers, each built them (100 s of CPU).
pytestmark = pytest.mark.xdist_group("acme")

# Every part on, at the smallest widths the networks take.
SMALL_ADVERSARIAL = {
    "adversarial.enabled": True,
    "adversarial.align": 0.005,
    "adversarial.translate": 0.002,
    "adversarial.generated_triplet": 0.1,
    "adversarial.gf_dim": 2,
    "adversarial.df_dim": 2,
    "adversarial.ca_dim": 4,
    "adversarial.z_dim": 4,
    "adversarial.num_classes": 5,
}


# These tests check values, not XLA's optimisations: its cheapest backend level compiles the
# two-player step in two thirds of the time.
QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def _setup(**overrides):
    config = micro_config(**{**SMALL_ADVERSARIAL, **overrides})
    graphdef, state, tx = state_lib.init_train_state(config, VOCAB)
    nets = state_lib.adversarial_nets(config, VOCAB)
    step = jax.jit(make_train_step(graphdef, tx, config, nets), compiler_options=QUICK_COMPILE)
    return config, graphdef, state, nets, step


def _adam_count(opt_state) -> int:
    counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=_is_adam) if _is_adam(s)]
    return int(counts[0])


def _is_adam(x) -> bool:
    return isinstance(x, optax.ScaleByAdamState)


def _changed(before, after) -> bool:
    return any(
        not np.array_equal(a, b, equal_nan=True)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )


@pytest.fixture(scope="module")
def one_step():
    """One two-player step of the micro model on one device (non-finite steps skipped):
    (config, graphdef, nets, batch, state before, state after, metrics, the compiled step)."""
    config, graphdef, state, nets, step = _setup(**{"train.on_nonfinite": "skip"})
    batch = random_batch(config)
    new, metrics = step(state, batch)
    return config, graphdef, nets, batch, state, new, jax.device_get(metrics), step


def test_the_critic_steps_first_and_the_encoders_face_the_updated_critic(one_step):
    """ACME train.py 235-244: the critic's loss is taken with the critic as it was, the
    encoder's alignment term with the critic after its step. Recomputed here from the model's
    embeddings (no dropout in the micro config) and both critics."""
    _, graphdef, nets, batch, state, new, metrics, _ = one_step

    @jax.jit
    def critic_terms(params, model_state, old, new):
        model = nnx.merge(graphdef, params, model_state, copy=True)
        model.train()
        outputs = model(batch)
        old_critic = nnx.merge(nets.disc_graphdef, old.disc_params, old.disc_state).critic
        new_critic = nnx.merge(nets.disc_graphdef, new.disc_params, new.disc_state).critic
        return (
            terms.wgan_critic_loss(
                old_critic(outputs[schema.IMAGE]), old_critic(outputs["recipe"])
            ),
            terms.wgan_generator_loss(new_critic(outputs["recipe"])),
            terms.wgan_generator_loss(old_critic(outputs["recipe"])),
        )

    before = state.adversarial
    expected_critic, expected_align, align_before = critic_terms(
        state.params, state.model_state, before, new.adversarial
    )
    np.testing.assert_allclose(metrics["loss_critic"], expected_critic, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["loss_align"], expected_align, rtol=1e-4, atol=1e-6)
    assert not np.allclose(expected_align, align_before)
    # Both players and the encoders moved, each with its own optimizer.
    assert _changed(state.params, new.params)
    assert _changed(before.gen_params, new.adversarial.gen_params)
    assert _changed(before.disc_params, new.adversarial.disc_params)
    assert _adam_count(new.adversarial.gen_opt_state) == 1
    assert int(metrics[NONFINITE]) == 0
    for name in ("loss_d_image", "loss_d_class", "loss_g_image", "kl", "loss_image_to_recipe"):
        assert np.isfinite(metrics[name]), name
    total = (
        metrics["loss_retrieval"]
        + 0.005 * metrics["loss_align"]
        + 0.002 * 2 * min(metrics["loss_image_to_recipe"], metrics["loss_g_image"])
        + 0.1 * metrics["loss_generated_triplet"]
    )
    np.testing.assert_allclose(metrics["loss"], total, rtol=1e-5)


def test_generated_images_rank_their_recipes_through_the_image_encoder_held_fixed():
    """The generated images' ranking term trains the generator only: with it on or off, one
    step leaves the same image encoder (its weights and its BatchNorm statistics: the generated
    batch is embedded in eval mode), and moves the generator differently."""
    resnet = {"model.image": "resnet", **configs_common.TINY_RESNET, "adversarial.align": 0.0}
    resnet["train.grad_clip"] = 0.0  # the global norm would couple the recipe encoder's update
    results = []
    for weight in (0.0, 0.1):
        config, _, state, _, step = _setup(**resnet, **{"adversarial.generated_triplet": weight})
        new, metrics = step(state, random_batch(config))
        results.append((jax.device_get(new), jax.device_get(metrics)))
    (off, _), (on, metrics) = results
    assert metrics["loss_generated_triplet"] > 0

    def image_side(state):  # weights, and the model state's arrays but its dropout keys
        leaves = jax.tree.leaves((state.params["image_encoder"], state.params["image_proj"]))
        stats = [x for x in jax.tree.leaves(state.model_state) if x.dtype == np.float32]
        assert stats  # the ResNet's BatchNorm statistics
        return leaves + stats

    for a, b in zip(image_side(off), image_side(on), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _changed(off.adversarial.gen_params, on.adversarial.gen_params)


def test_a_stride_judges_every_kth_generated_image_against_its_recipe(one_step):
    """`generated_triplet_stride` k ranks every k-th generated image against the recipes of the
    same examples, a bag of batch / k: with k the batch size the bag is one pair, without a
    negative, and the term is 0 (on the whole batch it is not)."""
    config, _, _, batch, state, _, whole, _ = one_step
    stride = config.train.batch_size
    overrides = {"train.on_nonfinite": "skip", "adversarial.generated_triplet_stride": stride}
    _, _, _, _, step = _setup(**overrides)
    assert float(jax.device_get(step(state, batch)[1])["loss_generated_triplet"]) == 0.0
    assert whole["loss_generated_triplet"] > 0.0


def test_a_non_finite_discriminator_is_flagged_and_skipped_with_the_whole_state(one_step):
    """A critic gone NaN: the step says so, and under 'skip' neither player nor the encoders
    move (only the step counter does)."""
    _, _, _, batch, state, _, _, step = one_step
    poison = lambda path, x: (
        jnp.full_like(x, jnp.nan) if "critic" in jax.tree_util.keystr(path) else x
    )
    disc = jax.tree_util.tree_map_with_path(poison, state.adversarial.disc_params)
    state = state.replace(adversarial=state.adversarial.replace(disc_params=disc))
    new, metrics = step(state, batch)
    assert int(metrics[NONFINITE]) == 1
    assert int(new.step) == 1
    assert not _changed(state.params, new.params)
    assert not _changed(state.adversarial, new.adversarial)


def test_ingredient_targets_are_the_words_of_the_ingredient_lines():
    lines = jnp.array([[[5, 6, 0], [6, 7, 0]], [[1, 9, 0], [0, 0, 0]]], jnp.int32)
    hot = ingredient_words(lines, 12)
    expected = np.zeros((2, 12), np.float32)
    expected[0, [5, 6, 7]] = 1.0
    expected[1, 9] = 1.0  # 1 (the unknown word) and 0 (padding) are not ingredients
    np.testing.assert_array_equal(hot, expected)


def test_ingredient_losses_are_the_documented_terms():
    logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    targets = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    p = 1 / (1 + np.exp(-np.asarray(logits)))
    t = np.asarray(targets)
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(ingredient_loss(logits, targets, "bce"), bce, rtol=1e-6)
    # MultiLabelMarginLoss on the probabilities: row 0 targets {0, 2} vs 1; row 1 {1} vs 0, 2.
    rows = [
        (max(0, 1 - (p[0, 0] - p[0, 1])) + max(0, 1 - (p[0, 2] - p[0, 1]))) / 3,
        (max(0, 1 - (p[1, 1] - p[1, 0])) + max(0, 1 - (p[1, 1] - p[1, 2]))) / 3,
    ]
    margin = ingredient_loss(logits, targets, "margin")
    np.testing.assert_allclose(margin, np.mean(rows), rtol=1e-6)
    with pytest.raises(ValueError, match="ingredient_loss must be one of"):
        ingredient_loss(logits, targets, "hinge")


def test_fsdp_on_8_devices_takes_the_one_device_step(one_step):
    """FSDP on 8 devices (the batch split, the networks' large leaves too) takes the one-device
    step from the same state, every player seeing the global batch: the same losses and
    gradient norms."""
    _, _, _, batch, state, _, reference, _ = one_step
    config = micro_config(**SMALL_ADVERSARIAL, **{"train.fsdp": True, "train.fsdp_min_size": 256})
    mesh = sharding.make_mesh(8)
    layout = state_lib.StateLayout.create(config, VOCAB, mesh)
    specs = [s.spec for s in jax.tree.leaves(layout.shardings.adversarial)]
    assert any(any(axis is not None for axis in spec) for spec in specs)
    placed = jax.device_put(state, layout.shardings), sharding.global_batch(batch, mesh)
    step = compile_train_step(layout, config, mesh).lower(*placed)
    _, metrics = step.compile(compiler_options=QUICK_COMPILE)(*placed)
    # Parameters after one Adam step are lr x sign(gradient) wherever a gradient is ~0 (the
    # critic's last bias: its gradient is 0 in exact arithmetic), so the values compared are
    # the losses and gradient norms, which see every example.
    metrics = jax.device_get(metrics)
    assert set(metrics) == set(reference)
    for name, value in reference.items():
        np.testing.assert_allclose(metrics[name], value, rtol=2e-4, err_msg=name)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.grad_accum_steps": 2}, "does not accumulate gradients"),
        (
            {"adversarial.align": 0.0, "adversarial.translate": 0.0},
            "are all 0",
        ),
        ({"adversarial.critic_steps": 0}, "critic_steps must be >= 1"),
        ({"adversarial.generated_triplet_stride": 0}, "stride must be >= 1 and divide"),
        ({"adversarial.generated_triplet_stride": 5}, r"divide train.batch_size \(16\), got 5"),
        ({"adversarial.ingredient_loss": "hinge"}, "ingredient_loss must be one of"),
        ({"adversarial.image_size": 96}, "image_size must be one of"),
    ],
)
def test_adversarial_settings_that_cannot_work_are_refused(overrides, message):
    config = acme.get_config("tiny")
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        run_lib.check_config(config)


def test_too_few_classes_for_the_dataset_is_refused():
    config = acme.get_config("tiny")
    config.adversarial.num_classes = 3
    with pytest.raises(ValueError, match=r"adversarial.num_classes=3 but the dataset has 31"):
        run_lib.check_data(config, {"num_classes": 31}, "DIR")


def _final_state(workdir, config):
    layout = state_lib.StateLayout.create(config, _vocab(workdir), sharding.make_mesh(1))
    manager = checkpointing.make_manager(workdir, keep=None, read_only=True)
    return checkpointing.restore(manager, manager.latest_step(), layout.abstract)


def _final_arrays(workdir, config):
    state = _final_state(workdir, config)
    return jax.tree.leaves(jax.device_get((state.params, state.adversarial)))


def _vocab(workdir):
    _, record = run_lib.read_record(workdir)
    return record["vocab_size"]


def test_warm_started_from_a_retrieval_run_it_resumes_to_the_uninterrupted_result(acme_runs):
    """acme:tiny starts from a retrieval run's checkpoint (its adversarial networks fresh), and
    a run stopped at step 2 and resumed ends where the uninterrupted one does, both players'
    parameters and optimizer states included."""
    final = acme_runs["config"]
    straight = _final_arrays(acme_runs["straight"], final)
    resumed = _final_arrays(acme_runs["resumed"], final)
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    plain = acme.get_config("tiny")
    plain.adversarial.enabled = False
    retrieval = _final_arrays(acme_runs["retrieval"], plain)
    assert len(straight) > len(retrieval)  # the adversarial networks are in the checkpoint
    # critic_steps = 2: the discriminators stepped twice per step, the generator once.
    adversarial = _final_state(acme_runs["straight"], final).adversarial
    assert _adam_count(adversarial.disc_opt_state) == 8
    assert _adam_count(adversarial.gen_opt_state) == 4


def test_a_constant_learning_rate_is_one_program_for_any_run_length():
    """Without warm-up or decay the schedule is the constant lr, the same lowered program
    whatever train.num_steps (the resumed runs above reuse the straight run's compiled step)."""
    texts = []
    for steps in (2, 4):
        train = micro_config(**{"train.num_steps": steps, "train.min_lr_ratio": 1.0}).train
        schedule = state_lib.learning_rate_schedule(train)
        assert [float(schedule(s)) for s in (0, 1, steps)] == [train.lr] * 3
        texts.append(jax.jit(schedule).lower(jnp.int32(0)).as_text())
    assert texts[0] == texts[1]
