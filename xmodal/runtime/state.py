"""The train state as a plain pytree, its optimizer, and its shardings.

The NNX model is split once into a static graph definition and array state; training, evaluation
and checkpointing only ever see the arrays, so the step is a pure function under `jax.jit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from xmodal.models import gan
from xmodal.models.dual_encoder import build_model
from xmodal.models.layers import resolve_dtype
from xmodal.runtime import sharding

# Dropout keys come from the counter-based 'rbg' generator: threefry's bit generation dominates
# XLA compile time on CPU (about 3x) and costs step time on accelerators (as in big_vision).
RNG_IMPL = "rbg"


@flax.struct.dataclass
class AdversarialState:
    """The adversarial networks' arrays (`config.adversarial`, `gan.build_adversarial`): the
    generative side (generator, image -> recipe heads) and the discriminators, each with its own
    optimizer state. Kept apart from the model's, so `model.init_from` a retrieval run still
    matches parameter for parameter."""

    gen_params: nnx.State
    gen_state: nnx.State  # batch statistics
    gen_opt_state: optax.OptState
    disc_params: nnx.State
    disc_state: nnx.State
    disc_opt_state: optax.OptState


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State  # nnx.Param variables, float32
    model_state: nnx.State  # everything else the model carries (RNG streams, batch statistics)
    opt_state: optax.OptState
    rng: jax.Array  # base key; per-step dropout keys are folded from it, so resumes are exact
    adversarial: AdversarialState | None = None  # with config.adversarial.enabled


@dataclasses.dataclass(frozen=True)
class AdversarialNets:
    """The static half of `AdversarialState`: both sides' graph definitions and optimizers."""

    gen_graphdef: nnx.GraphDef
    disc_graphdef: nnx.GraphDef
    gen_tx: optax.GradientTransformation
    disc_tx: optax.GradientTransformation


def in_eval_mode(graphdef: nnx.GraphDef, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`(params, model_state, *inputs) -> fn(model, *inputs)` with the model merged from the
    state's arrays and switched to eval mode (no dropout): the one spelling of an inference call
    on a train state, for the embed loop, queries, decoding and lowering."""

    def call(params: Any, model_state: Any, *inputs: Any) -> Any:
        model = nnx.merge(graphdef, params, model_state)
        model.eval()
        return fn(model, *inputs)

    return call


def learning_rate_schedule(train_config: Any) -> optax.Schedule:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at `num_steps`; without
    warm-up or decay, the constant `lr` (one compiled step for every `num_steps`)."""
    if train_config.warmup_steps == 0 and train_config.min_lr_ratio == 1.0:
        return optax.constant_schedule(train_config.lr)
    warmup = min(train_config.warmup_steps, max(train_config.num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train_config.lr,
        warmup_steps=warmup,
        decay_steps=max(train_config.num_steps, warmup + 1),
        end_value=train_config.lr * train_config.min_lr_ratio,
    )


def _decay_mask(params: nnx.State) -> Any:
    """Weight decay on matrices and kernels only, not on biases, norms or position tables."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    train_config: Any, *, freeze_image: bool = False
) -> optax.GradientTransformation:
    """Clip + AdamW, with the image backbone optionally frozen.

    `freeze_image` (JE: a fixed ResNet-50) never updates the backbone. `train.freeze_image_steps`
    = N > 0 (AdaMine Sec. 4.4) freezes it for the first N steps and fine-tunes it afterwards:
    its gradients are zeroed (so they do not count in the clipping norm) and its AdamW is not
    stepped while frozen, so its moments and schedule start fresh at step N (a warm-up for the
    unfrozen backbone). All of it is step-dependent inside the jitted update: no recompilation.
    """
    adamw = lambda: optax.adamw(
        learning_rate_schedule(train_config),
        # bf16 first moment halves its memory (DESIGN.md "Precision"); the second moment
        # stays f32 because bf16 cannot hold the small squared gradients.
        mu_dtype=train_config.mu_dtype or None,
        weight_decay=train_config.weight_decay,
        mask=_decay_mask,
    )
    # grad_clip 0: no clipping (the released H-T's training).
    clip = (
        optax.clip_by_global_norm(train_config.grad_clip)
        if train_config.grad_clip > 0
        else optax.identity()
    )
    freeze_steps = train_config.freeze_image_steps
    if freeze_image:
        frozen = optax.set_to_zero()
        return optax.chain(
            optax.multi_transform({"image": frozen, "rest": optax.identity()}, _image_labels),
            clip,
            optax.multi_transform({"image": frozen, "rest": adamw()}, _image_labels),
        )
    if freeze_steps > 0:
        unfrozen = lambda step: step >= freeze_steps
        return optax.chain(
            optax.multi_transform(
                {
                    "image": optax.conditionally_mask(optax.identity(), unfrozen),
                    "rest": optax.identity(),
                },
                _image_labels,
            ),
            clip,
            optax.multi_transform(
                {"image": optax.conditionally_mask(adamw(), unfrozen), "rest": adamw()},
                _image_labels,
            ),
        )
    return optax.chain(clip, adamw())


def _image_labels(params: nnx.State) -> Any:
    """'image' for the image backbone's parameters (not its projection), 'rest' otherwise."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "image" if _first_key(path) == "image_encoder" else "rest", params
    )


def _first_key(path: tuple) -> str:
    entry = path[0]
    return str(getattr(entry, "key", getattr(entry, "name", entry)))


def make_model(config: Any, vocab_size: int, seed: int) -> nnx.Module:
    return build_model(
        config.model,
        vocab_size=vocab_size,
        image_size=config.data.image_size,
        rngs=nnx.Rngs(params=seed, dropout=jax.random.key(seed + 1, impl=RNG_IMPL)),
        decoder_max_len=config.data.max_decoder_tokens,
    )


def adversarial_optimizer(config: Any) -> optax.GradientTransformation:
    """Adam at a constant `adversarial.lr` (ACME's, for each player), no weight decay."""
    a = config.adversarial
    return optax.adam(a.lr, b1=a.b1, b2=a.b2)


def init_adversarial(config: Any, vocab_size: int) -> tuple[AdversarialNets, AdversarialState]:
    """`config.adversarial`'s networks, initialised from a stream of their own (`seed` folded),
    so switching them on leaves the model's initial weights as they were."""
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(config.seed, impl=RNG_IMPL), 1))
    generative, discriminators = gan.build_adversarial(
        config.adversarial,
        embed_dim=config.model.embed_dim,
        vocab_size=vocab_size,
        dtype=resolve_dtype(config.model.dtype),
        rngs=rngs,
    )
    gen_graphdef, gen_params, gen_state = nnx.split(generative, nnx.Param, ...)
    disc_graphdef, disc_params, disc_state = nnx.split(discriminators, nnx.Param, ...)
    gen_tx = disc_tx = adversarial_optimizer(config)
    nets = AdversarialNets(gen_graphdef, disc_graphdef, gen_tx, disc_tx)
    state = AdversarialState(
        gen_params=gen_params,
        gen_state=gen_state,
        gen_opt_state=gen_tx.init(gen_params),
        disc_params=disc_params,
        disc_state=disc_state,
        disc_opt_state=disc_tx.init(disc_params),
    )
    return nets, state


def init_train_state(
    config: Any, vocab_size: int
) -> tuple[nnx.GraphDef, TrainState, optax.GradientTransformation]:
    """Build the model and optimizer; returns (graphdef, state, optimizer). With
    `config.adversarial.enabled` the state carries the adversarial networks too (their static
    half: `adversarial_nets`)."""
    model = make_model(config, vocab_size, config.seed)
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(config.train, freeze_image=config.model.freeze_image)
    adversarial = None
    if config.adversarial.enabled:
        _, adversarial = init_adversarial(config, vocab_size)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        rng=jax.random.key(config.seed, impl=RNG_IMPL),
        adversarial=adversarial,
    )
    return graphdef, state, tx


def adversarial_nets(config: Any, vocab_size: int) -> AdversarialNets | None:
    """The adversarial networks' graph definitions and optimizers (nothing allocated), or None
    when `config.adversarial.enabled` is off: what the train step needs beside the state."""
    if not config.adversarial.enabled:
        return None
    box: list[AdversarialNets] = []

    def init() -> AdversarialState:
        nets, state = init_adversarial(config, vocab_size)
        box.append(nets)
        return state

    jax.eval_shape(init)
    return box[0]


def abstract_train_state(
    config: Any, vocab_size: int
) -> tuple[nnx.GraphDef, TrainState, optax.GradientTransformation]:
    """Shapes and dtypes of the train state without allocating it (for restore and sharding)."""
    graphdef_box: list[nnx.GraphDef] = []
    tx_box: list[optax.GradientTransformation] = []

    def init() -> TrainState:
        graphdef, state, tx = init_train_state(config, vocab_size)
        graphdef_box.append(graphdef)
        tx_box.append(tx)
        return state

    abstract = jax.eval_shape(init)
    return graphdef_box[0], abstract, tx_box[0]


def state_shardings(
    abstract_state: TrainState,
    mesh: Mesh,
    *,
    fsdp: bool,
    fsdp_min_size: int,
) -> TrainState:
    """Data parallel (default): every leaf of the state replicated on every device.

    `fsdp=True` (ZeRO-3 / FSDP, as MaxText's 'fsdp' axis): each large parameter and its optimizer
    moments are split over the data axis along their largest evenly divisible dimension; XLA
    all-gathers a parameter where the forward pass needs it and reduce-scatters its gradient.
    Memory per device for params + Adam drops ~n-fold; the batch stays sharded as before, so the
    losses still see the global batch.
    """
    rep = sharding.replicated(mesh)
    if not fsdp:
        return jax.tree.map(lambda _: rep, abstract_state)

    def leaf(x: Any) -> Any:
        shape = getattr(x, "shape", ())
        return sharding.fsdp_sharding(shape, mesh, fsdp_min_size) if shape else rep

    adversarial = abstract_state.adversarial
    if adversarial is not None:
        adversarial = adversarial.replace(
            gen_params=jax.tree.map(leaf, adversarial.gen_params),
            gen_opt_state=jax.tree.map(leaf, adversarial.gen_opt_state),
            gen_state=jax.tree.map(lambda _: rep, adversarial.gen_state),
            disc_params=jax.tree.map(leaf, adversarial.disc_params),
            disc_opt_state=jax.tree.map(leaf, adversarial.disc_opt_state),
            disc_state=jax.tree.map(lambda _: rep, adversarial.disc_state),
        )
    return abstract_state.replace(
        params=jax.tree.map(leaf, abstract_state.params),
        opt_state=jax.tree.map(leaf, abstract_state.opt_state),
        step=rep,
        model_state=jax.tree.map(lambda _: rep, abstract_state.model_state),
        rng=rep,
        adversarial=adversarial,
    )


def with_shardings(abstract_state: TrainState, shardings: TrainState) -> TrainState:
    """Attach target shardings so Orbax restores straight onto this run's devices."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """What a model's train state is, where each leaf lives, and how to make it: the graph
    definition, the abstract state carrying its target shardings (`config.train.fsdp` picks
    data-parallel or FSDP), and the optimizer. Every jitted function that takes the state uses
    `shardings`, so training, validation and eval agree on one layout."""

    graphdef: nnx.GraphDef
    abstract: TrainState  # jax.ShapeDtypeStruct leaves with `sharding=` (a restore target)
    shardings: TrainState
    tx: optax.GradientTransformation
    config: Any
    vocab_size: int
    adversarial: AdversarialNets | None = None  # with config.adversarial.enabled

    @classmethod
    def create(cls, config: Any, vocab_size: int, mesh: Mesh) -> StateLayout:
        graphdef, abstract, tx = abstract_train_state(config, vocab_size)
        shardings = state_shardings(
            abstract, mesh, fsdp=config.train.fsdp, fsdp_min_size=config.train.fsdp_min_size
        )
        return cls(
            graphdef,
            with_shardings(abstract, shardings),
            shardings,
            tx,
            config,
            vocab_size,
            adversarial_nets(config, vocab_size),
        )

    def init(self) -> TrainState:
        """A freshly initialised state, created directly in its shardings."""
        init = lambda: init_train_state(self.config, self.vocab_size)[1]
        return jax.jit(init, out_shardings=self.shardings)()
