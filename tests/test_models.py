"""Tests for xmodal.models: shapes, unit norm, padding invariance, empty recipes, precision, jit.

Tiny sizes throughout (XLA compiles dominate on CPU); the paper-size model is only built abstractly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.tnlbt import get_config
from xmodal.models.dual_encoder import SSL_PAIRS, abstract_model, build_model, count_params
from xmodal.models.layers import key_padding_mask, l2_normalize, masked_mean
from xmodal.models.vit import VIT_VARIANTS

# These tests are XLA-compile-bound on CPU; unoptimised backend code compiles ~2x faster and is
# plenty fast for tiny models.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
VOCAB = 50
IMAGE = 32  # tiny preset: patch 8 -> 16 patches
B, T, NI, NS = 3, 6, 4, 3


def make_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Random recipes with ragged padding: trailing pad tokens and trailing all-pad sentences."""
    rng = np.random.default_rng(seed)

    def ragged(shape: tuple[int, ...]) -> np.ndarray:
        ids = rng.integers(4, VOCAB, size=shape)
        lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
        return np.where(np.arange(shape[-1]) < lengths[..., None], ids, 0).astype(np.int32)

    ingredients, instructions = ragged((B, NI, T)), ragged((B, NS, T))
    ingredients[0, 2:] = 0  # recipe 0: two ingredients only
    instructions[1, 1:] = 0  # recipe 1: one instruction only
    return {
        "image": rng.integers(0, 256, size=(B, IMAGE, IMAGE, 3), dtype=np.uint8),
        "title": ragged((B, T)),
        "ingredients": ingredients,
        "instructions": instructions,
        "id": np.arange(B),  # extra keys are ignored
    }


def tiny_config(dtype: str = "float32"):
    config = get_config("tiny")
    config.model.dtype = dtype
    config.model.vit.depth = 1  # tests are XLA-compile-bound on CPU: fewer layers, faster
    return config


@pytest.fixture(scope="module")
def split_model():
    # Dropout keys from the 'unsafe_rbg' PRNG: threefry's bit generation triples XLA CPU compile
    # time of a train-mode step, and these tests are compile-bound.
    rngs = nnx.Rngs(params=0, dropout=jax.random.key(0, impl="unsafe_rbg"))
    config = tiny_config()
    model = build_model(
        config.model,
        vocab_size=VOCAB,
        image_size=IMAGE,
        rngs=rngs,
        decoder_max_len=config.data.max_decoder_tokens,
    )
    return nnx.split(model)


def merged(split, *, train: bool) -> nnx.Module:
    model = nnx.merge(*split)
    model.train() if train else model.eval()
    return model


@pytest.fixture(scope="module")
def eval_forward(split_model):
    """The eval-mode forward pass as the trainer runs it: split once, a pure function under jit."""
    graphdef, state = nnx.split(merged(split_model, train=False))
    forward = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b), compiler_options=FAST_COMPILE)
    embed_recipe = jax.jit(
        lambda s, *x: nnx.merge(graphdef, s).embed_recipe(*x), compiler_options=FAST_COMPILE
    )
    return forward, embed_recipe, state


@pytest.fixture(scope="module")
def train_grads(split_model):
    """One jitted train-mode gradient step on the recipe branch, called twice, on a batch with an
    empty recipe: shared by the empty-recipe and dropout tests (one compile)."""
    batch = make_batch(2)
    batch["ingredients"][0] = 0  # no ingredients at all
    batch["instructions"][0] = 0  # no instructions at all
    batch["title"][1] = 0  # no title
    batch["ingredients"][2, :, 1:] = 0  # every ingredient a single word
    args = (batch["title"], batch["ingredients"], batch["instructions"])

    def loss_fn(model):
        feats = model.encode_recipe(*args)
        recipe = l2_normalize(model.recipe_proj(feats["recipe"]))
        ssl = sum(jnp.sum(p * t) for p, t in model.recipe_ssl(feats).values())
        return jnp.sum(recipe @ recipe.T) + ssl, recipe

    model = merged(split_model, train=True)
    step = nnx.jit(nnx.grad(loss_fn, has_aux=True)).lower(model).compile(FAST_COMPILE)
    first = step(model)  # dropout rng counters in `model` advance
    second = step(model)
    return args, first, second


@pytest.fixture(scope="module")
def abstract_b16():
    config = get_config("b16")
    return config, abstract_model(
        config.model,
        vocab_size=16_000,
        image_size=224,
        decoder_max_len=config.data.max_decoder_tokens,
    )


def test_forward_shapes_unit_norm_under_jit_of_split_model(eval_forward):
    forward, _, state = eval_forward
    out = forward(state, make_batch())
    dim = tiny_config().model.embed_dim
    for key in ("image", "recipe"):
        assert out[key].shape == (B, dim) and out[key].dtype == jnp.float32
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1.0, atol=1e-5)
    assert set(out["ssl"]) == {f"{a}->{b}" for a, b in SSL_PAIRS} and len(out["ssl"]) == 6
    for pred, target in out["ssl"].values():
        assert pred.shape == target.shape and pred.shape[0] == B and pred.dtype == jnp.float32
        np.testing.assert_allclose(np.linalg.norm(pred, axis=-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(target, axis=-1), 1.0, atol=1e-5)
    # The image and recipe branches differ between recipes (not a collapsed constant).
    assert np.ptp(np.asarray(out["image"]), axis=0).max() > 1e-3
    assert np.ptp(np.asarray(out["recipe"]), axis=0).max() > 1e-3


def test_recipe_embedding_ignores_padding(eval_forward):
    forward, embed, state = eval_forward
    batch = make_batch()
    title, ingr, instr = batch["title"], batch["ingredients"], batch["instructions"]
    ref = forward(state, batch)["recipe"]  # same shapes as the forward test: no new compile
    pad = lambda x, sent, tok: np.pad(x, [(0, 0), (0, sent), (0, tok)])
    # Extra pad tokens in every sentence and extra all-pad sentences, as a longer batch would have.
    padded = [np.pad(title, [(0, 0), (0, 5)]), pad(ingr, 3, 4), pad(instr, 2, 1)]
    np.testing.assert_allclose(embed(state, *padded), ref, atol=1e-5)
    # ...and the padding really is padding: changing a real token does change the embedding.
    padded[1] = padded[1].copy()
    padded[1][0, 0, 0] = 4 if padded[1][0, 0, 0] != 4 else 5
    assert not np.allclose(embed(state, *padded)[0], ref[0], atol=1e-4)


def test_empty_recipe_gives_finite_embeddings_and_gradients(train_grads):
    _, (grads, recipe), _ = train_grads
    assert np.all(np.isfinite(recipe))
    np.testing.assert_allclose(np.linalg.norm(recipe, axis=-1), 1.0, atol=1e-5)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
    # Gradients reach the sentence-level transformers (they see the empty recipe's masked rows).
    assert np.abs(grads["recipe_encoder"]["ingredients_merge"]["pos_embed"][...]).sum() > 0


def test_masked_mean_and_mask_on_empty_rows():
    x = jnp.arange(12.0).reshape(2, 3, 2)
    valid = jnp.array([[True, False, True], [False, False, False]])
    np.testing.assert_allclose(masked_mean(x, valid, axis=1), [[2.0, 3.0], [0.0, 0.0]])
    grad = jax.grad(lambda x: masked_mean(x, valid, axis=1).sum())(x)
    assert np.all(np.isfinite(grad)) and np.all(grad[1] == 0)
    mask = key_padding_mask(valid)
    assert mask.dtype == jnp.bool_ and mask.shape == (2, 1, 1, 3)
    assert mask[1].all() and not mask[0, 0, 0, 1]  # empty row attends everywhere, finite


def test_vit_b16_has_86m_backbone_params(abstract_b16):
    config, model = abstract_b16
    assert config.model.vit.width == VIT_VARIANTS["B/16"]["width"]
    n = count_params(model.image_encoder)
    # ViT paper (Dosovitskiy et al. 2021, Table 1): ViT-Base has 86M parameters.
    assert 85e6 <= n <= 87e6, n
    # Abstract: nothing was allocated.
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)


def test_b16_ht_text_encoder_builds(abstract_b16):
    config, model = abstract_b16
    encoder = model.recipe_encoder
    assert (config.model.text.width, config.model.text.depth) == (512, 2)
    assert encoder.word_embed.embedding.shape == (16_000, 512)
    assert len(encoder.title.encoder.blocks) == 2
    assert encoder.title.encoder.blocks[0].attn.num_heads == 4
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(
        lambda s, *x: nnx.merge(graphdef, s).embed_recipe(*x),
        state,
        jax.ShapeDtypeStruct((2, 15), jnp.int32),
        jax.ShapeDtypeStruct((2, 20, 15), jnp.int32),
        jax.ShapeDtypeStruct((2, 20, 15), jnp.int32),
    )
    assert out.shape == (2, 1024) and out.dtype == jnp.float32
    # 5 transformers x 2 layers x (4*512^2 attention + 2*512*2048 MLP) ~ 31.5M + 8.2M embedding.
    assert 35e6 < count_params(encoder) < 45e6


def test_bf16_compute_keeps_f32_params_and_embeddings():
    config = tiny_config("bfloat16")
    model = abstract_model(
        config.model,
        vocab_size=VOCAB,
        image_size=IMAGE,
        decoder_max_len=config.data.max_decoder_tokens,
    )
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert params and all(p.dtype == jnp.float32 for p in params)
    graphdef, state = nnx.split(model)
    batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
    forward = lambda s, b: nnx.merge(graphdef, s)(b)
    out = jax.eval_shape(forward, state, batch)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(out))
    # The matmuls really run in bf16: every dot/conv inside the encoders takes bf16 operands.
    jaxpr = jax.make_jaxpr(forward)(state, batch)
    eqns = [
        e
        for e in _all_eqns(jaxpr.jaxpr)
        if e.primitive.name in ("dot_general", "conv_general_dilated")
    ]
    bf16 = [e for e in eqns if all(v.aval.dtype == jnp.bfloat16 for v in e.invars)]
    assert len(bf16) >= 0.8 * len(eqns) and len(bf16) > 10


def _all_eqns(jaxpr):
    """Every equation of a jaxpr, including those inside nested jit / custom_vjp calls."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for p in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(p, "jaxpr", p)
                if hasattr(inner, "eqns"):
                    yield from _all_eqns(inner)


def test_dropout_active_in_train_mode_only(train_grads, eval_forward):
    _, (_, first), (_, second) = train_grads
    assert not np.allclose(first, second, atol=1e-4)  # fresh dropout masks on each call
    forward, _, state = eval_forward
    a, b = forward(state, make_batch())["recipe"], forward(state, make_batch())["recipe"]
    np.testing.assert_array_equal(a, b)  # eval mode: deterministic


def test_count_params_counts_ssl_heads():
    config = tiny_config()
    model = abstract_model(
        config.model,
        vocab_size=VOCAB,
        image_size=IMAGE,
        decoder_max_len=config.data.max_decoder_tokens,
    )
    width = config.model.text.width
    assert count_params(model.ssl_heads) == 6 * (width * width + width)  # six linear heads g_ab
    parts = ("image_encoder", "recipe_encoder", "image_proj", "recipe_proj", "ssl_heads")
    parts += ("cross_decoder",)  # tiny has the cross decoder on
    assert count_params(model) == sum(count_params(getattr(model, p)) for p in parts)


def test_conv_stem_gives_the_patch_grid_and_trains():
    from xmodal.models.vit import ViT

    kwargs = dict(image_size=32, width=16, depth=1, num_heads=2, mlp_dim=32)
    images = jnp.asarray(make_batch()["image"], jnp.float32) / 255.0
    shapes = {}
    for stem in ("patch", "conv"):
        vit = ViT(patch_size=8, stem=stem, rngs=nnx.Rngs(0), **kwargs)
        tokens, pooled = nnx.eval_shape(lambda m: m(images), vit)
        shapes[stem] = (tokens.shape, pooled.shape)
    assert shapes["conv"] == shapes["patch"] == ((B, 1 + 16, 16), (B, 16))
    stem_params = jax.tree.leaves(nnx.state(vit, nnx.Param)["patch_embed"])
    assert len(stem_params) == 3 * 2 + 3 * 2 + 2  # 3 convs (kernel, bias), 3 norms, 1x1 proj

    def loss(model):
        return jnp.sum(model(images)[1] ** 2)

    # The first-run default: no LayerNorm on the first conv's output. Compiled like a train step.
    vit = ViT(patch_size=8, stem="conv", stem_first_norm=False, rngs=nnx.Rngs(0), **kwargs)
    grads = nnx.jit(nnx.grad(loss))(vit)
    stem_grads = jax.tree.leaves(nnx.state(grads, nnx.Param)["patch_embed"])
    assert len(stem_grads) == 3 * 2 + 2 * 2 + 2
    assert all(float(jnp.abs(g).max()) > 0 for g in stem_grads)
    with pytest.raises(ValueError, match="power-of-two patch size, got 12"):
        ViT(patch_size=12, stem="conv", rngs=nnx.Rngs(0), **{**kwargs, "image_size": 48})
    with pytest.raises(ValueError, match="stem must be one of"):
        ViT(patch_size=8, stem="convnext", rngs=nnx.Rngs(0), **kwargs)
