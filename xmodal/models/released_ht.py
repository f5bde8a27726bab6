"""The released H-T's parameters in this project's model (Salvador et al., CVPR 2021; code:
amzn/image-to-recipe-transformers @ 96e257e, src/models.py, `JointEmbedding`).

The released checkpoint is a `torch.save`d state dict of `JointEmbedding`. This module maps its
recipe side and heads onto a `DualEncoder` built with the released layout
(configs/ht.py:vit / :r50: `configs.common.RELEASED_HT_MODEL`):

    text_encoder.word_embedding.weight                  recipe_encoder.word_embed.embedding
    text_encoder.tfs.<c>.pos_encoder.weight             recipe_encoder.<c>.pos_embed
    text_encoder.tfs.<c>.tf.layers.<i>.*                recipe_encoder.<c>.encoder.blocks[i]
    text_encoder.merger.<c>.*                           recipe_encoder.<c>_merge
    merger_recipe.{weight,bias}                         recipe_proj (Linear(3W -> D), then tanh)
    projector_recipes.<a>.<b>.{weight,bias}             ssl_heads['<a>_to_<b>'].fc1
    image_encoder.fc.{weight,bias}                      image_proj (then tanh)

Inside a layer (`nn.TransformerEncoderLayer`): `self_attn.in_proj_{weight,bias}` (q, k, v
stacked) -> `attn.{query,key,value}`, `self_attn.out_proj` -> `attn.out`, `linear1`/`linear2` ->
`mlp.fc1`/`mlp.fc2`, `norm1`/`norm2` -> `norm1`/`norm2`. Linear weights are [out, in] in PyTorch
and [in, out] here. The image backbone (`image_encoder.backbone.*`: timm's ViT or torchvision's
ResNet children by position) is returned untouched for `xmodal.models.import_weights`.

Parameters only: the layout (post-LN, ReLU, eps, no final norm, tanh heads) is the config's, and
`check_released_layout` says where a model differs from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

BACKBONE_PREFIX = "image_encoder.backbone."
# The released ResNet backbone is torchvision's children but the last two, in an nn.Sequential,
# so its parameters are named by position: `backbone.4.0.conv1` is `layer1.0.conv1`.
RESNET_CHILDREN = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}
# Backbone entries the model has no use for: timm's ImageNet classifier, BatchNorm's step count.
UNUSED_BACKBONE = ("head.", "num_batches_tracked")
COMPONENT_NAMES = ("title", "ingredients", "instructions")
SENTENCE_COMPONENTS = ("ingredients", "instructions")

# One planned copy: (the model's variable, how the released array becomes its value).
Target = tuple[Any, Callable[[np.ndarray], np.ndarray]]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return x.T


def _linear(plan: dict[str, Target], prefix: str, layer: Any) -> None:
    plan[f"{prefix}.weight"] = (layer.kernel, _transpose)
    plan[f"{prefix}.bias"] = (layer.bias, _same)


def _layer_norm(plan: dict[str, Target], prefix: str, layer: Any) -> None:
    plan[f"{prefix}.weight"] = (layer.scale, _same)
    plan[f"{prefix}.bias"] = (layer.bias, _same)


def _attention(plan: dict[str, Target], prefix: str, attn: Any) -> None:
    """`nn.MultiheadAttention` (fused in-projection, rows q then k then v) -> nnx's separate
    q/k/v [W, heads, head_dim] kernels and out [heads, head_dim, W]."""
    heads, head_dim = attn.num_heads, attn.head_dim
    width = heads * head_dim
    for j, part in enumerate((attn.query, attn.key, attn.value)):
        plan[f"{prefix}.in_proj_weight#{j}"] = (
            part.kernel,
            lambda w, j=j: _fused_slice(w, j, width).T.reshape(width, heads, head_dim),
        )
        plan[f"{prefix}.in_proj_bias#{j}"] = (
            part.bias,
            lambda b, j=j: _fused_slice(b, j, width).reshape(heads, head_dim),
        )
    plan[f"{prefix}.out_proj.weight"] = (
        attn.out.kernel,
        lambda w: w.T.reshape(heads, head_dim, width),
    )
    plan[f"{prefix}.out_proj.bias"] = (attn.out.bias, _same)


def _fused_slice(x: np.ndarray, j: int, width: int) -> np.ndarray:
    if x.shape[0] != 3 * width:
        raise ValueError(f"expected {3 * width} fused q/k/v rows, got {x.shape[0]}")
    return x[j * width : (j + 1) * width]


def _pooled(plan: dict[str, Target], prefix: str, pooled: Any) -> None:
    """`SingleTransformerEncoder` -> `PooledTransformer`."""
    plan[f"{prefix}.pos_encoder.weight"] = (pooled.pos_embed, _same)
    for i, block in enumerate(pooled.encoder.blocks):
        p = f"{prefix}.tf.layers.{i}"
        _attention(plan, f"{p}.self_attn", block.attn)
        _linear(plan, f"{p}.linear1", block.mlp.fc1)
        _linear(plan, f"{p}.linear2", block.mlp.fc2)
        _layer_norm(plan, f"{p}.norm1", block.norm1)
        _layer_norm(plan, f"{p}.norm2", block.norm2)
    if pooled.encoder.norm is not None:  # the released stack has none: its scale is "missing"
        _layer_norm(plan, f"{prefix}.tf.norm", pooled.encoder.norm)


def released_plan(model: Any) -> dict[str, Target]:
    """The released key of every parameter of `model` this module fills (fused attention
    in-projections appear as 'KEY#0..2', one per q/k/v)."""
    rec = model.recipe_encoder
    if not hasattr(rec, "title") or not hasattr(rec, "ingredients_merge"):
        raise ValueError(
            "the released H-T has the hierarchical recipe encoder: build the model with "
            "model.recipe='hierarchical' (configs/ht.py:vit or :r50)"
        )
    plan: dict[str, Target] = {}
    plan["text_encoder.word_embedding.weight"] = (rec.word_embed.embedding, _same)
    for c in COMPONENT_NAMES:
        _pooled(plan, f"text_encoder.tfs.{c}", getattr(rec, c))
    for c in SENTENCE_COMPONENTS:
        _pooled(plan, f"text_encoder.merger.{c}", getattr(rec, f"{c}_merge"))
    if rec.merge is not None:  # a Linear the released model does not have
        _linear(plan, "text_encoder.merge", rec.merge)
    _linear(plan, "merger_recipe", model.recipe_proj)
    if model.ssl_heads is not None:
        for a in COMPONENT_NAMES:
            for b in COMPONENT_NAMES:
                if a != b:
                    head = model.ssl_heads[f"{a}_to_{b}"]
                    _linear(plan, f"projector_recipes.{a}.{b}", head.fc1)
                    if head.fc2 is not None:
                        _linear(plan, f"projector_recipes.{a}.{b}.fc2", head.fc2)
    _linear(plan, "image_encoder.fc", model.image_proj)
    return plan


def load_released_ht(model: Any, state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Copy a released H-T state dict's recipe side and heads into `model` (a `DualEncoder`,
    in place); returns the image backbone's entries (`image_encoder.backbone.*`, prefix
    kept) for the image-weight import.

    Everything is checked before anything is copied: keys the model needs that the state dict
    lacks and keys it has that the model cannot take are listed in one error; a shape mismatch
    names the key and both shapes. A 'module.' prefix (nn.DataParallel) is dropped.
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    backbone = {k: np.asarray(v) for k, v in sd.items() if k.startswith(BACKBONE_PREFIX)}
    plan = released_plan(model)
    needed = {k.split("#")[0] for k in plan}
    given = set(sd) - set(backbone)
    missing, unexpected = sorted(needed - given), sorted(given - needed)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the state dict ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(
                f"not in this model ({len(unexpected)}): {', '.join(unexpected)}"
                " (is the model built with the released layout, configs/ht.py:vit or :r50, "
                "and the checkpoint's depth?)"
            )
        raise ValueError("the released H-T state dict does not fit the model: " + "; ".join(parts))
    values = {}
    for name, (var, transform) in plan.items():
        key = name.split("#")[0]
        array = np.asarray(sd[key], np.float32)
        want = tuple(var.shape)
        try:
            value = transform(array)
            fits = tuple(value.shape) == want
        except ValueError:  # a reshape, or the fused q/k/v slice, refused the array
            fits = False
        if not fits:
            raise ValueError(
                f"{key}: the state dict has shape {array.shape}, the model needs "
                f"{_released_shape(key, want)}"
            )
        values[name] = value
    for name, (var, _) in plan.items():
        var[...] = jnp.asarray(values[name], var[...].dtype)
    return backbone


def _released_shape(key: str, want: tuple[int, ...]) -> tuple[int, ...]:
    """The model's shape for `key` written in PyTorch's convention (what the key should hold)."""
    if key.endswith("in_proj_weight"):
        return (3 * want[0], want[0])
    if key.endswith("in_proj_bias"):
        return (3 * want[0] * want[1],)
    if key.endswith("out_proj.weight"):
        return (want[2], want[0] * want[1])
    table = key.endswith(("word_embedding.weight", "pos_encoder.weight"))
    if key.endswith(".weight") and len(want) == 2 and not table:
        return want[::-1]  # Linear: [out, in]
    return want


def check_released_layout(model: Any) -> None:
    """Raise naming every way `model` computes differently from the released H-T with the same
    parameters (the config fields to set are configs.common.RELEASED_HT_MODEL's)."""
    problems = []
    rec = model.recipe_encoder
    if model.recipe_head_activation != "tanh":
        problems.append("model.recipe_head_activation must be 'tanh'")
    if model.image_head_activation != "tanh":
        problems.append("model.image_head_activation must be 'tanh'")
    if getattr(rec, "merge", None) is not None:
        problems.append("model.text.merge_linear must be False")
    pooled = rec.title.encoder
    block = pooled.blocks[0]
    if not block.post_ln:
        problems.append("model.text.block must be 'post_ln'")
    if block.mlp.activation != "relu":
        problems.append("model.text.activation must be 'relu'")
    if not np.isclose(block.norm1.epsilon, 1e-5):
        problems.append(f"model.text.norm_eps must be 1e-05 (is {block.norm1.epsilon})")
    if pooled.norm is not None:
        problems.append("model.text.final_norm must be False")
    if problems:
        raise ValueError("the model does not compute as the released H-T: " + "; ".join(problems))


def backbone_names(entries: Mapping[str, Any], vit: bool) -> dict[str, np.ndarray]:
    """The released `image_encoder.backbone.*` entries under timm's ViT names (`vit`) or
    torchvision's ResNet names (positions in the released nn.Sequential -> `layerN`)."""
    sd = {k.removeprefix(BACKBONE_PREFIX): np.asarray(v) for k, v in entries.items()}
    if vit:
        return sd
    named = {}
    for key, value in sd.items():
        child, _, rest = key.partition(".")
        if child not in RESNET_CHILDREN:
            raise ValueError(
                f"{BACKBONE_PREFIX}{key}: not a child of the released ResNet backbone "
                f"(positions {', '.join(RESNET_CHILDREN)})"
            )
        named[f"{RESNET_CHILDREN[child]}.{rest}"] = value
    return named


def load_into(model: Any, state_dict: Mapping[str, Any]) -> None:
    """A released H-T checkpoint's state dict into `model` (a `DualEncoder` built with the
    released layout), in place: the recipe side and heads (`load_released_ht`), then the image
    backbone through `xmodal.models.import_weights`. A model of another layout, missing or
    unexpected keys and shape mismatches are errors naming them."""
    from xmodal.models import import_weights  # the image importers; not needed otherwise

    check_released_layout(model)
    entries = load_released_ht(model, state_dict)
    encoder = model.image_encoder
    vit = hasattr(encoder, "patch_embed")
    unused = import_weights.load_image_encoder(encoder, backbone_names(entries, vit))
    unexpected = [k for k in unused if not any(u in k for u in UNUSED_BACKBONE)]
    if unexpected:
        raise ValueError(
            f"not in this model's image backbone ({len(unexpected)}): "
            + ", ".join(BACKBONE_PREFIX + k for k in unexpected)
        )
