"""The released H-T layout (configs/ht.py:vit, configs.common.RELEASED_HT_MODEL) computes what
amzn/image-to-recipe-transformers' `JointEmbedding` computes with the same weights.

The expected values come from the released code itself (tests/data/released_ht_recipe.npz: the
recipe side and heads; tests/data/released_ht_image.npz: the ViT and ResNet image encoders),
written by `python tools/reference_vectors.py --released_dir=CHECKOUT`; no torch is needed here.
"""

from __future__ import annotations

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common, ht, tnlbt
from xmodal.models.dual_encoder import SSL_PAIRS, abstract_model, build_model
from xmodal.models.layers import (
    BlockLayout,
    attention_with_dropout,
    dot_product_attention,
    key_padding_mask,
)
from xmodal.models.recipe_encoder import HierarchicalRecipeEncoder
from xmodal.models.released_ht import check_released_layout, load_released_ht

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTORS = os.path.join(REPO, "tests", "data", "released_ht_recipe.npz")
COMPONENTS = ("title", "ingredients", "instructions")


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    with np.load(VECTORS) as f:
        return {k: f[k] for k in f.files}


def released_config(sizes: dict[str, int]):
    """configs/ht.py:vit (the released layout) at the reference vectors' sizes."""
    c = ht.get_config("vit")
    c.model.text.update(
        width=int(sizes["width"]),
        depth=int(sizes["layers"]),
        num_heads=int(sizes["heads"]),
        mlp_dim=int(sizes["mlp"]),
    )
    c.model.vit.update(
        patch_size=8, width=int(sizes["image_features"]), depth=1, num_heads=2, mlp_dim=8
    )
    c.model.embed_dim = int(sizes["embed"])
    c.model.dtype = "float32"
    c.model.attention = "xla"
    c.data.image_size = 16
    return c


def released_model(vectors, vocab: int | None = None, *, abstract: bool = False):
    """The model of `released_config`; abstract (shapes only, fast) for the refusal tests."""
    sizes = {k.removeprefix("size/"): v for k, v in vectors.items() if k.startswith("size/")}
    c = released_config(sizes)
    vocab = int(sizes["vocab"]) if vocab is None else vocab
    if abstract:
        return abstract_model(c.model, vocab_size=vocab, image_size=16, decoder_max_len=8)
    return build_model(
        c.model, vocab_size=vocab, image_size=16, rngs=nnx.Rngs(0), decoder_max_len=8
    )


@pytest.fixture(scope="module")
def ported(vectors):
    """The released layout with the reference's weights, in eval mode (built once: ~15 s)."""
    model = released_model(vectors)
    backbone = load_released_ht(model, state_dict(vectors))
    assert backbone == {}  # the reference holds no image backbone
    model.eval()
    return model


def state_dict(vectors) -> dict[str, np.ndarray]:
    return {k.removeprefix("sd/"): v for k, v in vectors.items() if k.startswith("sd/")}


def test_the_vectors_come_from_the_released_commit(vectors):
    assert str(vectors["meta/commit"]).startswith("96e257e")


def test_released_weights_give_the_released_outputs(vectors, ported):
    model = ported
    check_released_layout(model)
    ids = [jnp.asarray(vectors[f"in/{c}"], jnp.int32) for c in COMPONENTS]
    image_features = jnp.asarray(vectors["in/image_features"])

    @jax.jit
    def outputs(ids, image_features):
        feats = model.encode_recipe(*ids)
        return {
            **{c: feats[c] for c in COMPONENTS},
            "recipe": jnp.tanh(model.recipe_proj(feats["recipe"])),
            "embedding": model.embed_recipe(*ids),
            "image": model.image_head(image_features),
            **{f"ssl/{a}/{b}": model.ssl_heads[f"{a}_to_{b}"](feats[a]) for a, b in SSL_PAIRS},
        }

    got = outputs(ids, image_features)
    # Every component, fully padded lines included in the inputs (only real lines count).
    for c in COMPONENTS:
        np.testing.assert_allclose(got[c], vectors[f"out/{c}"], atol=1e-5, rtol=0)
    # The merged embedding: one Linear(3W -> D), tanh; unit norm as retrieval uses it.
    recipe = vectors["out/recipe"]
    np.testing.assert_allclose(got["recipe"], recipe, atol=1e-5, rtol=0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(got["embedding"], unit(recipe), atol=1e-5, rtol=0)
    # The image head: Linear, tanh (then unit norm).
    np.testing.assert_allclose(got["image"], unit(vectors["out/image"]), atol=1e-5, rtol=0)
    # The SSL projections g_ab(e_a) (released projector_recipes[a][b]).
    for a, b in SSL_PAIRS:
        key = f"ssl/{a}/{b}"
        np.testing.assert_allclose(got[key], vectors[f"out/{key}"], atol=1e-5, rtol=0)


def test_this_projects_layout_is_another_function_of_the_same_weights(vectors, ported):
    """The check above can fail: with pre-LN blocks the same weights give other features."""
    title = jnp.asarray(vectors["in/title"], jnp.int32)
    encoder = ported.recipe_encoder
    blocks = encoder.title.encoder.blocks
    for block in blocks:
        block.post_ln = False
    try:
        got = jax.jit(lambda t: encoder.title(encoder.word_embed(t), t != 0))(title)
    finally:
        for block in blocks:
            block.post_ln = True
    assert np.abs(np.asarray(got) - vectors["out/title"]).max() > 0.1


def test_missing_and_unexpected_keys_are_listed_in_one_error(vectors):
    model = released_model(vectors, abstract=True)
    sd = state_dict(vectors)
    del sd["merger_recipe.bias"]
    del sd["text_encoder.tfs.title.tf.layers.1.norm2.weight"]
    sd["text_encoder.tfs.title.tf.layers.2.norm1.weight"] = np.ones(16, np.float32)
    sd["image_encoder.backbone.blocks.0.norm1.weight"] = np.ones(4, np.float32)  # handed back
    with pytest.raises(ValueError) as err:
        load_released_ht(model, sd)
    msg = str(err.value)
    assert "missing from the state dict (2): merger_recipe.bias, text_encoder.tfs.title" in msg
    assert "not in this model (1): text_encoder.tfs.title.tf.layers.2.norm1.weight" in msg
    assert "backbone" not in msg


def test_a_shape_mismatch_names_the_key_and_both_shapes(vectors):
    model = released_model(vectors, vocab=41, abstract=True)
    sd = state_dict(vectors)
    with pytest.raises(ValueError, match=r"word_embedding.weight: .* \(40, 16\), .* \(41, 16\)"):
        load_released_ht(model, sd)
    model = released_model(vectors, abstract=True)
    sd["text_encoder.tfs.title.tf.layers.0.self_attn.in_proj_weight"] = np.zeros((32, 16))
    with pytest.raises(ValueError, match=r"in_proj_weight: .* \(32, 16\), .* \(48, 16\)"):
        load_released_ht(model, sd)
    sd = state_dict(vectors)
    sd["merger_recipe.weight"] = sd["merger_recipe.weight"].T
    with pytest.raises(ValueError, match=r"merger_recipe.weight: .* \(48, 24\), .* \(24, 48\)"):
        load_released_ht(model, sd)


def test_this_projects_layout_is_named_field_by_field():
    c = ht.get_config("tiny")
    model = abstract_model(c.model, vocab_size=20, image_size=32, decoder_max_len=8)
    with pytest.raises(ValueError) as err:
        check_released_layout(model)
    for field in ("recipe_head_activation", "image_head_activation", "merge_linear", "block"):
        assert f"model.{'text.' if field in ('merge_linear', 'block') else ''}{field}" in str(
            err.value
        )
    assert "activation must be 'relu'" in str(err.value) and "final_norm" in str(err.value)


@pytest.mark.parametrize("module, preset", [(ht, "vit"), (ht, "r50"), (tnlbt, "b16")])
def test_paper_presets_are_the_released_layout(module, preset):
    c = module.get_config(preset)
    for key, value in {**common.RELEASED_HT_MODEL, **common.RELEASED_HT_TRAIN}.items():
        section, *rest = key.split(".")
        got = c[section]
        for part in rest:
            got = got[part]
        assert got == value, key
    assert c.model.vit.block == "pre_ln" and c.model.vit.final_norm  # timm's ViT, as released
    assert c.train.text_only_batch_size == (256 if module is ht else 0)


@pytest.mark.parametrize("preset", [None, "extended", "tiny"])
def test_first_run_presets_keep_this_projects_layout(preset):
    c = tnlbt.get_config(preset)
    text = c.model.text
    assert (text.block, text.activation, text.norm_eps, text.final_norm) == (
        "pre_ln",
        "gelu",
        1e-6,
        True,
    )
    assert (text.attention_dropout, text.init, text.merge_linear) == (0.0, "xmodal", True)
    assert (c.model.recipe_head_activation, c.model.image_head_activation) == ("none", "none")
    assert (c.train.weight_decay, c.train.grad_clip) == (1e-4, 1.0)


def test_pytorch_init_has_the_released_distributions():
    """Hand-computed: nn.Embedding N(0, 1); positions xavier-normal std sqrt(2 / (50 + W));
    nn.MultiheadAttention's fused in-projection xavier-uniform, bound sqrt(6 / (W + 3W)), zero
    biases; nn.Linear U(+-1/sqrt(fan_in)); nn.TransformerEncoder's layers copies of one."""
    w, mlp = 64, 256
    layout = BlockLayout(block="post_ln", activation="relu", final_norm=False, init="pytorch")
    enc = HierarchicalRecipeEncoder(
        500, width=w, depth=2, num_heads=4, mlp_dim=mlp, max_len=50, layout=layout,
        merge_linear=False, rngs=nnx.Rngs(0),
    )  # fmt: skip
    emb = np.asarray(enc.word_embed.embedding[...])
    assert abs(emb.std() - 1.0) < 0.02
    pos = np.asarray(enc.title.pos_embed[...])
    assert (
        abs(pos.std() / math.sqrt(2 / (50 + w)) - 1) < 0.05 and np.abs(pos).max() > 2.5 * pos.std()
    )
    blocks = enc.title.encoder.blocks
    q = np.asarray(blocks[0].attn.query.kernel[...])
    bound = math.sqrt(6 / (4 * w))
    assert np.abs(q).max() <= bound and np.abs(q).max() > 0.98 * bound
    assert not np.any(blocks[0].attn.query.bias[...]) and not np.any(blocks[0].attn.out.bias[...])
    assert np.abs(blocks[0].attn.out.kernel[...]).max() <= 1 / math.sqrt(w)
    for layer, fan_in in ((blocks[0].mlp.fc1, w), (blocks[0].mlp.fc2, mlp)):
        for p in (layer.kernel[...], layer.bias[...]):
            assert 0.9 / math.sqrt(fan_in) < np.abs(p).max() <= 1 / math.sqrt(fan_in)
    params = [nnx.state(b, nnx.Param) for b in blocks]
    same = jax.tree.map(np.array_equal, *params)
    assert all(jax.tree.leaves(same))
    assert enc.title.encoder.norm is None and enc.merge is None and enc.width == 3 * w


def _qkv(seed: int = 0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q, k, v = (jax.random.normal(key, (2, 5, 2, 4)) for key in ks)
    valid = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    return q, k, v, key_padding_mask(valid)


def test_attention_dropout_only_while_training():
    q, k, v, mask = _qkv()
    fused = jax.nn.dot_product_attention(q, k, v, mask=jnp.broadcast_to(mask, (2, 1, 5, 5)))
    key = jax.random.key(1)
    # Deterministic (eval): the requested kernel, dropout or not.
    got = dot_product_attention(q, k, v, mask=mask, dropout_rate=0.1, dropout_rng=key)
    np.testing.assert_allclose(got, fused, atol=1e-6)
    # The explicit-softmax path with nothing dropped is the same attention.
    plain = attention_with_dropout(q, k, v, mask=mask, is_causal=False, rate=0.0, rng=key)
    np.testing.assert_allclose(plain, fused, atol=1e-6)
    # Training: probabilities dropped (outputs move), unbiased on average over keys.
    train = lambda key: dot_product_attention(
        q, k, v, mask=mask, dropout_rate=0.5, dropout_rng=key, deterministic=False
    )
    draws = jax.jit(jax.vmap(train))(jax.random.split(key, 4000))
    assert np.abs(np.asarray(draws[0]) - np.asarray(fused)).max() > 0.1
    np.testing.assert_allclose(jnp.mean(draws, axis=0), fused, atol=0.1)
    # Masked keys stay masked: padding never leaks in through the dropout path.
    v_leak = v.at[0, 3:].set(1e3)
    leak = attention_with_dropout(q, k, v_leak, mask=mask, is_causal=False, rate=0.5, rng=key)
    assert np.abs(np.asarray(leak[0])).max() < 100


def test_a_released_block_trains_and_evaluates_deterministically():
    from xmodal.models.layers import TransformerEncoder

    layout = BlockLayout(block="post_ln", activation="relu", attention_dropout=0.1)
    enc = TransformerEncoder(8, 1, 2, 16, dropout=0.1, layout=layout, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    valid = jnp.ones((2, 5), bool)
    run = nnx.jit(lambda enc, x: enc(x, valid))
    a, b = run(enc, x), run(enc, x)
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0  # dropout drew new masks
    enc.eval()
    np.testing.assert_array_equal(run(enc, x), run(enc, x))


def _jax_to_torch(jax_model, torch_model) -> None:
    """Copy the JAX model's parameters into tools/torch_reference.py's (the same module tree:
    Linear kernels [in, out] -> weight [out, in], q/k/v [W, heads, hd] and out [heads, hd, W]
    flattened, the patch conv HWIO -> OIHW, LayerNorm scale -> weight)."""
    import torch

    flat = {
        ".".join(str(p) for p in path): np.asarray(v[...])
        for path, v in nnx.state(jax_model, nnx.Param).flat_state()
    }
    renames = (
        ("image_encoder.proj.", "image_encoder.patch_embed.proj."),
        ("image_encoder.encoder.", "image_encoder."),
    )
    with torch.no_grad():
        for key, param in torch_model.state_dict().items():
            if key in ("mean", "std"):
                continue
            name = key
            for old, new in renames:
                name = name.replace(old, new)
            if name.startswith("ssl_heads."):
                name = name.replace(".weight", ".fc1.weight").replace(".bias", ".fc1.bias")
            prefix, leaf = name.rsplit(".", 1)
            candidates = {"weight": ("kernel", "scale", "embedding")}.get(leaf, (leaf,))
            found = [c for c in candidates if f"{prefix}.{c}" in flat]
            assert found, key
            value = flat[f"{prefix}.{found[0]}"]
            if found[0] == "kernel":
                if value.ndim == 4:
                    value = value.transpose(3, 2, 0, 1)
                else:
                    out = prefix.endswith(".attn.out")
                    value = value.reshape(-1, value.shape[-1]) if out else value
                    value = value.reshape(value.shape[0], -1).T
            param.copy_(torch.from_numpy(np.ascontiguousarray(value).reshape(param.shape)))


def test_torch_reference_follows_the_released_blocks(vectors, ported):
    """tools/torch_reference.py built from the released-layout config has the JAX model's
    parameters and, with them, its recipe and image embeddings (eval mode)."""
    torch = pytest.importorskip("torch", reason="torch is optional (the benchmark's reference)")
    sys.path.insert(0, REPO)
    from tools import torch_reference

    sizes = {k.removeprefix("size/"): v for k, v in vectors.items() if k.startswith("size/")}
    c = released_config(sizes)
    c.model.ssl_head = "linear"
    ref = torch_reference.DualEncoder(c, int(sizes["vocab"])).eval()
    assert torch_reference.count_params(ref) == sum(
        int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(ported, nnx.Param))
    )
    _jax_to_torch(ported, ref)
    batch = {c: torch.from_numpy(vectors[f"in/{c}"]) for c in COMPONENTS}
    batch["image"] = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    )
    with torch.no_grad():
        out = ref(batch)
    recipe = vectors["out/recipe"]  # the released model's, on these weights
    unit = recipe / np.linalg.norm(recipe, axis=-1, keepdims=True)
    np.testing.assert_allclose(out["recipe"].numpy(), unit, atol=1e-5, rtol=0)
    want_image = jax.jit(ported.embed_image)(jnp.asarray(batch["image"].numpy()))
    np.testing.assert_allclose(out["image"].numpy(), want_image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("clip, scale", [(0.0, 1.0), (1.0, 1 / 50)])
def test_grad_clip_zero_is_no_clipping(clip, scale):
    """The released training clips nothing (train.grad_clip=0): Adam's first moment after one
    step is (1 - b1) * g unclipped; with grad_clip=1 it is (1 - b1) * g / |g| (|g| = 50)."""
    import optax

    from xmodal.runtime import state as state_lib

    cfg = ht.get_config("vit").train
    cfg.grad_clip = clip
    tx = state_lib.make_optimizer(cfg)
    params = {"w": jnp.ones((2, 2))}
    grads = {"w": jnp.full((2, 2), 25.0)}  # global norm 50
    opt_state = tx.init(params)
    _, opt_state = tx.update(grads, opt_state, params)
    mu = optax.tree_utils.tree_get(opt_state, "mu")
    np.testing.assert_allclose(mu["w"], 0.1 * 25.0 * scale, rtol=1e-6)


def _timm_backbone(width: int, patch: int, tokens: int, mlp: int) -> dict[str, np.ndarray]:
    """A one-block timm ViT state dict (random values) as the released checkpoint names it."""
    rng = np.random.default_rng(3)
    shapes = {
        "patch_embed.proj.weight": (width, 3, patch, patch),
        "patch_embed.proj.bias": (width,),
        "cls_token": (1, 1, width),
        "pos_embed": (1, tokens, width),
        "blocks.0.norm1.weight": (width,),
        "blocks.0.norm1.bias": (width,),
        "blocks.0.attn.qkv.weight": (3 * width, width),
        "blocks.0.attn.qkv.bias": (3 * width,),
        "blocks.0.attn.proj.weight": (width, width),
        "blocks.0.attn.proj.bias": (width,),
        "blocks.0.norm2.weight": (width,),
        "blocks.0.norm2.bias": (width,),
        "blocks.0.mlp.fc1.weight": (mlp, width),
        "blocks.0.mlp.fc1.bias": (mlp,),
        "blocks.0.mlp.fc2.weight": (width, mlp),
        "blocks.0.mlp.fc2.bias": (width,),
        "norm.weight": (width,),
        "norm.bias": (width,),
        "head.weight": (1000, width),  # timm's ImageNet classifier: not used
        "head.bias": (1000,),
    }
    return {
        f"image_encoder.backbone.{k}": rng.normal(size=s).astype(np.float32)
        for k, s in shapes.items()
    }


def test_a_whole_released_checkpoint_loads_through_the_import_path(vectors):
    """`released_ht.load_into` (what `xmodal.apps.import_checkpoint` calls): the recipe side
    gives the released outputs, the ViT backbone takes timm's names, and what the model cannot
    take is an error naming it."""
    from xmodal.models.released_ht import load_into

    model = released_model(vectors)
    backbone = _timm_backbone(width=12, patch=8, tokens=1 + (16 // 8) ** 2, mlp=8)
    load_into(model, {**state_dict(vectors), **backbone})
    model.eval()
    ids = [jnp.asarray(vectors[f"in/{c}"], jnp.int32) for c in COMPONENTS]
    recipe = jnp.tanh(model.recipe_proj(model.encode_recipe(*ids)["recipe"]))
    np.testing.assert_allclose(recipe, vectors["out/recipe"], atol=1e-5, rtol=0)
    vit = model.image_encoder
    weight = backbone["image_encoder.backbone.patch_embed.proj.weight"]
    np.testing.assert_array_equal(vit.patch_embed.proj.kernel[...], weight.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(vit.cls_token[...], backbone["image_encoder.backbone.cls_token"])
    extra = {"image_encoder.backbone.blocks.0.attn.extra": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"image backbone \(1\): .*blocks\.0\.attn\.extra"):
        load_into(released_model(vectors), {**state_dict(vectors), **backbone, **extra})


def test_load_into_refuses_a_model_of_another_layout(vectors):
    from xmodal.models.released_ht import load_into

    sizes = {k.removeprefix("size/"): v for k, v in vectors.items() if k.startswith("size/")}
    c = released_config(sizes)
    c.model.text.block = "pre_ln"
    model = build_model(c.model, vocab_size=40, image_size=16, rngs=nnx.Rngs(0), decoder_max_len=8)
    with pytest.raises(ValueError, match="does not compute as the released H-T"):
        load_into(model, state_dict(vectors))


def test_the_released_resnet_backbone_is_named_by_position():
    """The released ResNet backbone is torchvision's children in an nn.Sequential."""
    from xmodal.models.released_ht import backbone_names

    x = np.ones(2, np.float32)
    entries = {
        "image_encoder.backbone.0.weight": x,
        "image_encoder.backbone.1.running_mean": x,
        "image_encoder.backbone.4.0.conv1.weight": x,
        "image_encoder.backbone.7.2.downsample.1.bias": x,
    }
    assert sorted(backbone_names(entries, vit=False)) == [
        "bn1.running_mean",
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer4.2.downsample.1.bias",
    ]
    with pytest.raises(ValueError, match=r"backbone\.9\.weight: not a child"):
        backbone_names({"image_encoder.backbone.9.weight": x}, vit=False)


IMAGE_VECTORS = os.path.join(REPO, "tests", "data", "released_ht_image.npz")


@pytest.fixture(scope="module")
def image_vectors() -> dict[str, np.ndarray]:
    with np.load(IMAGE_VECTORS) as f:
        return {k: f[k] for k in f.files}


def released_image_state_dict(image_vectors, name: str) -> dict[str, np.ndarray]:
    """The released image encoder's `image_encoder.*` entries: stored (ViT), or regenerated
    from the stored keys, shapes and seed (the ResNet's 8M values)."""
    if name == "vit":
        return {k.removeprefix("vit/sd/"): v for k, v in image_vectors.items() if "/sd/" in k}
    from tools.reference_vectors import seeded_values

    keys = [str(k) for k in image_vectors["resnet/keys"]]
    shapes = {k: tuple(int(n) for n in image_vectors[f"resnet/shape/{k}"]) for k in keys}
    return seeded_values(shapes, int(image_vectors["resnet/seed"]))


def released_image_model(vectors, image_vectors, name: str):
    """configs/ht.py's released layout with the reference's recipe sizes and its image encoder
    (:vit's ViT, or :r50's ResNet-50 layout with one block per stage)."""
    sizes = {k.removeprefix("size/"): v for k, v in vectors.items() if k.startswith("size/")}
    c = released_config(sizes)
    size = int(image_vectors[f"{name}/size/image_size"])
    if name == "vit":
        prefix = "vit/size/"
        v = {k.removeprefix(prefix): int(x) for k, x in image_vectors.items() if prefix in k}
        c.model.vit.update(
            patch_size=v["patch"], width=v["width"], depth=v["depth"], num_heads=v["heads"]
        )
        c.model.vit.mlp_dim = v["mlp"]
    else:
        c.model.image = "resnet"
        blocks = tuple(int(b) for b in image_vectors["resnet/size/blocks"])
        c.model.resnet.update(depth=50, width=64, blocks=blocks)
    vocab = int(sizes["vocab"])
    return build_model(
        c.model, vocab_size=vocab, image_size=size, rngs=nnx.Rngs(0), decoder_max_len=8
    )


def test_the_image_vectors_come_from_the_released_commit(image_vectors):
    assert str(image_vectors["meta/commit"]).startswith("96e257e")


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_released_image_encoders_give_the_released_embeddings(vectors, image_vectors, name):
    """A released checkpoint with the ViT (timm's names) or the ResNet (torchvision's children
    by position) loads through `released_ht.load_into` (the import path) and embeds the same
    photos as the released `ViTBackbone` / `TorchVisionBackbone` + fc + tanh, from uint8 photos
    normalised as the released eval transform does."""
    from xmodal.models.released_ht import load_into

    recipe_side = {k: v for k, v in state_dict(vectors).items() if not k.startswith("image_")}
    model = released_image_model(vectors, image_vectors, name)
    load_into(model, {**recipe_side, **released_image_state_dict(image_vectors, name)})
    model.eval()
    got = jax.jit(lambda photos: model.embed_image(photos))(image_vectors[f"{name}/in"])
    want = image_vectors[f"{name}/out"]
    unit = want / np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, unit, atol=1e-4, rtol=0)
    # The photos' embeddings differ by far more than the tolerance (a weak check otherwise).
    assert np.abs(unit[0] - unit[1]).max() > 100 * 1e-4


def test_a_layout_option_outside_its_choices_is_one_clear_error():
    """Every place that takes a block, activation or init refuses a value outside its choices
    with the same message, naming the choices."""
    from xmodal.models.layers import Mlp, attention_layer, linear_inits

    rngs = nnx.Rngs(0)
    cases = [
        ("block", "('pre_ln', 'post_ln')", "sandwich", lambda: BlockLayout(block="sandwich")),
        ("activation", "('gelu', 'relu')", "swish", lambda: BlockLayout(activation="swish")),
        (
            "activation",
            "('gelu', 'relu')",
            "swish",
            lambda: Mlp(8, 16, activation="swish", rngs=rngs),
        ),
        ("init", "('xmodal', 'pytorch')", "lecun", lambda: BlockLayout(init="lecun")),
        ("init", "('xmodal', 'pytorch')", "lecun", lambda: linear_inits(8, "lecun")),
        (
            "init",
            "('xmodal', 'pytorch')",
            "lecun",
            lambda: attention_layer(
                8, 2, dtype=jnp.float32, attention="xla", init="lecun", rngs=rngs
            ),
        ),
    ]
    for name, choices, value, make in cases:
        with pytest.raises(ValueError) as err:
            make()
        assert str(err.value) == f"{name} must be one of {choices}, got '{value}'"
