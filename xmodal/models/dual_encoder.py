"""The dual encoder of every trained method: an image branch (ViT for TNLBT, ResNet for
im2recipe / AdaMine / H-T) and a recipe branch (H-T's hierarchical transformer, im2recipe's
LSTMs, or a flat transformer), chosen by `config.model.image` / `config.model.recipe`.

Both branches end in a linear projection to a shared `embed_dim` space (`image_proj`,
`recipe_proj`), optionally followed by tanh (`model.image_head_activation`,
`model.recipe_head_activation`: the released H-T's `ViTBackbone.fc` / `merger_recipe` heads), and
L2 normalisation, so retrieval is a dot product. H-T's recipe self-supervision (Salvador et al.,
CVPR 2021, Sec. 3.2) adds one small head g_ab per ordered pair of recipe components (a != b):
the loss pulls the normalised g_ab(e_a) towards the normalised e_b of the same recipe (see
`xmodal.training.losses`).

Precision: encoders compute in `config.model.dtype` with float32 parameters; the projections and
normalisation run in float32 so embeddings (and the losses on them) are float32.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from xmodal.data import decoder_targets
from xmodal.data.schema import COMPONENTS, DECODER_TOKENS, IMAGE, TEXT_ONLY_PREFIX
from xmodal.models.cross_decoder import CrossDecoder, teacher_forcing
from xmodal.models.layers import (
    BlockLayout,
    Dtype,
    count_params,
    l2_normalize,
    linear_inits,
    resolve_dtype,
    set_remat,
)
from xmodal.models.recipe_encoder import HierarchicalRecipeEncoder
from xmodal.models.resnet import ResNet
from xmodal.models.text_rnn import LSTMRecipeEncoder, TransformerRecipeEncoder
from xmodal.models.vit import ViT

__all__ = [
    "SSL_PAIRS",
    "DualEncoder",
    "abstract_model",
    "build_image_encoder",
    "build_model",
    "build_recipe_encoder",
    "count_params",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_ENCODERS = ("vit", "resnet")
RECIPE_ENCODERS = ("hierarchical", "lstm", "transformer")

# What follows each branch's linear head, before L2 normalisation (released H-T: tanh on both).
HEAD_ACTIVATIONS = {"none": lambda x: x, "tanh": jnp.tanh}

# Ordered component pairs (a, b), a != b, and the key each gets in the model's 'ssl' output.
SSL_PAIRS: tuple[tuple[str, str], ...] = tuple(itertools.permutations(COMPONENTS, 2))


def ssl_key(a: str, b: str) -> str:
    return f"{a}->{b}"


def normalize_images(images: jax.Array, dtype: Dtype) -> jax.Array:
    """uint8 [B, H, W, 3] -> ImageNet-normalised `dtype`. Done on device so the host sends uint8."""
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    return x.astype(dtype)


class SSLHead(nnx.Module):
    """g_ab: Linear (H-T: the released `projector_recipes[a][b]`, Linear(W, W) with bias) or a
    2-layer GELU MLP from component a's feature to b's space."""

    def __init__(self, width: int, *, kind: str = "linear", init: str = "xmodal", rngs: nnx.Rngs):
        if kind not in ("linear", "mlp"):
            raise ValueError(f"ssl head must be 'linear' or 'mlp', got {kind!r}")
        self.fc1 = nnx.Linear(width, width, rngs=rngs, **linear_inits(width, init))
        self.fc2 = (
            nnx.Linear(width, width, rngs=rngs, **linear_inits(width, init))
            if kind == "mlp"
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.fc1(x)
        return x if self.fc2 is None else self.fc2(nnx.gelu(x, approximate=False))


class DualEncoder(nnx.Module):
    """Image and recipe encoders mapped into one unit-norm embedding space."""

    def __init__(
        self,
        image_encoder: nnx.Module,
        recipe_encoder: nnx.Module,
        *,
        image_width: int,
        recipe_width: int,
        embed_dim: int,
        ssl_head: str | None = "linear",
        num_classes: int = 0,
        freeze_image: bool = False,
        cross_decoder: CrossDecoder | None = None,
        image_head_activation: str = "none",
        recipe_head_activation: str = "none",
        head_init: str = "xmodal",
        ssl_width: int | None = None,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        for name, value in (
            ("image_head_activation", image_head_activation),
            ("recipe_head_activation", recipe_head_activation),
        ):
            if value not in HEAD_ACTIVATIONS:
                raise ValueError(f"{name} must be one of {tuple(HEAD_ACTIVATIONS)}, got {value!r}")
        self.image_head_activation = image_head_activation
        self.recipe_head_activation = recipe_head_activation
        ssl_width = ssl_width or recipe_width
        self.dtype = dtype
        self.freeze_image = freeze_image
        self.cross_decoder = cross_decoder
        self.image_encoder = image_encoder
        self.recipe_encoder = recipe_encoder
        # float32 projections: cheap, and keep the embeddings the losses see in full precision.
        # head_init 'pytorch': nn.Linear's default, as the released H-T's heads get it.
        self.image_proj = nnx.Linear(
            image_width, embed_dim, rngs=rngs, **linear_inits(image_width, head_init)
        )
        self.recipe_proj = nnx.Linear(
            recipe_width, embed_dim, rngs=rngs, **linear_inits(recipe_width, head_init)
        )
        self.ssl_heads = (
            nnx.Dict(
                {
                    f"{a}_to_{b}": SSLHead(ssl_width, kind=ssl_head, init=head_init, rngs=rngs)
                    for a, b in SSL_PAIRS
                }
            )
            if ssl_head
            else None
        )
        # im2recipe's semantic regularisation (Salvador 2017, Sec. 5.2): one linear classifier
        # shared by both embeddings, so the two modalities are tied to the same class directions.
        self.class_head = (
            nnx.Linear(embed_dim, num_classes, rngs=rngs, **linear_inits(embed_dim, "xmodal"))
            if num_classes
            else None
        )

    def image_head(self, pooled: jax.Array) -> jax.Array:
        """Pooled image feature -> unit-norm embedding [B, D] float32: Linear, activation, L2."""
        x = self.image_proj(pooled.astype(jnp.float32))
        return l2_normalize(HEAD_ACTIVATIONS[self.image_head_activation](x))

    def recipe_head(self, recipe: jax.Array) -> jax.Array:
        """Recipe feature -> unit-norm embedding [B, D] float32: Linear, activation, L2."""
        x = self.recipe_proj(recipe.astype(jnp.float32))
        return l2_normalize(HEAD_ACTIVATIONS[self.recipe_head_activation](x))

    def encode_image(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """uint8 [B, H, W, 3] -> (ViT tokens [B, 1+N, width], pooled [B, width]), compute dtype."""
        return self.image_encoder(normalize_images(images, self.dtype))

    def encode_recipe(
        self, title: jax.Array, ingredients: jax.Array, instructions: jax.Array
    ) -> dict[str, jax.Array]:
        """Token ids -> {'title', 'ingredients', 'instructions', 'recipe'} features [B, width]."""
        return self.recipe_encoder(title, ingredients, instructions)

    def embed_image(self, images: jax.Array) -> jax.Array:
        """uint8 [B, H, W, 3] -> [B, embed_dim] float32, unit norm."""
        _, pooled = self.encode_image(images)
        if self.freeze_image:  # a fixed feature extractor (JE): no backbone gradients computed
            pooled = jax.lax.stop_gradient(pooled)
        return self.image_head(pooled)

    def embed_recipe(
        self, title: jax.Array, ingredients: jax.Array, instructions: jax.Array
    ) -> jax.Array:
        """title [B, T], ingredients [B, Ni, T], instructions [B, Ns, T] -> [B, embed_dim] f32."""
        feats = self.encode_recipe(title, ingredients, instructions)
        return self.recipe_head(feats["recipe"])

    @property
    def recipe_components(self) -> tuple[str, ...]:
        """The recipe parts the text branch has features for (H-T: all three; the LSTM and flat
        transformer encoders: the configured subset)."""
        return tuple(self.recipe_encoder.components)

    def embed_pairs(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """A batch of pairs -> {'image': [B, D], 'recipe': [B, D]} unit-norm float32."""
        return {
            IMAGE: self.embed_image(batch[IMAGE]),
            "recipe": self.embed_recipe(*(batch[c] for c in COMPONENTS)),
        }

    def branch_features(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """A batch of pairs -> the encoders' features before projection, float32: 'image'
        (pooled [B, image width]) and one [B, width] per recipe component (CCA's inputs)."""
        _, pooled = self.encode_image(batch[IMAGE])
        feats = self.encode_recipe(*(batch[c] for c in COMPONENTS))
        out = {c: feats[c].astype(jnp.float32) for c in self.recipe_components}
        out[IMAGE] = pooled.astype(jnp.float32)
        return out

    def recipe_parts(
        self, title: jax.Array, ingredients: jax.Array, instructions: jax.Array
    ) -> dict[str, jax.Array]:
        """Token ids -> {'embedding': [B, D]} plus each component's feature, float32 (the
        pieces recombined queries are built from; see `embed_components`)."""
        feats = self.encode_recipe(title, ingredients, instructions)
        out = {c: feats[c].astype(jnp.float32) for c in self.recipe_components}
        out["embedding"] = self.recipe_head(feats["recipe"])
        return out

    def embed_components(self, parts: Mapping[str, jax.Array]) -> jax.Array:
        """Component features (as `recipe_parts` returns them, possibly recombined) -> joint
        embeddings [B, D]: the recipe branch after its encoders (merge + projection)."""
        missing = [c for c in self.recipe_components if c not in parts]
        if missing:
            raise ValueError(f"component features missing: {missing}")
        feats = {c: parts[c].astype(self.dtype) for c in self.recipe_components}
        return self.recipe_head(self.recipe_encoder.merge_components(feats))

    def check_decoder(self) -> None:
        """A clear error for a model trained without the cross decoder."""
        self._decoder()

    def _decoder(self) -> CrossDecoder:
        if self.cross_decoder is None:
            raise ValueError(
                "this model has no cross decoder (model.cross_decoder.enabled=False): train "
                "with the decoder to predict ingredients from photos"
            )
        return self.cross_decoder

    def photo_memory(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """uint8 photos -> the cross decoder's memory from the photo alone (no recipe tokens, as
        in the training drop) and its validity mask."""
        tokens, _ = self.encode_image(images)
        return self._decoder().memory(tokens, None)

    def decoder_logits(
        self, tokens: jax.Array, memory: jax.Array, memory_valid: jax.Array
    ) -> jax.Array:
        """Decoder tokens [B, L] over a memory -> next-token logits [B, L, V] float32."""
        return self._decoder()(tokens, memory, memory_valid)

    def recipe_ssl(self, feats: Mapping[str, jax.Array]) -> dict[str, tuple[jax.Array, jax.Array]]:
        """H-T Sec. 3.2: {'a->b': (normalised g_ab(e_a), normalised e_b)} for all ordered pairs
        (empty without SSL heads)."""
        if self.ssl_heads is None:
            return {}
        f32 = {c: feats[c].astype(jnp.float32) for c in COMPONENTS}
        return {
            ssl_key(a, b): (
                l2_normalize(self.ssl_heads[f"{a}_to_{b}"](f32[a])),
                l2_normalize(f32[b]),
            )
            for a, b in SSL_PAIRS
        }

    def __call__(self, batch: Mapping[str, jax.Array]) -> dict[str, Any]:
        """A batch (`xmodal.data.schema`: IMAGE and the COMPONENTS; others ignored) -> what the
        model computes: {'image': [B, D], 'recipe': [B, D], 'ssl': {'title->ingredients':
        (pred, target), ...}}, plus 'image_logits' / 'recipe_logits' [B, classes] with a class
        head. Labels stay in the batch: the losses read them there.

        With a cross decoder and DECODER_TOKENS [B, L] in the batch, also 'decoder_logits'
        [B, L-1, V] (teacher forcing: `teacher_forcing` gives the inputs and the loss's labels).
        With the text-only batch (TEXT_ONLY_PREFIX + component: recipes without photos), also
        'ssl_text_only'.
        """
        feats = self.encode_recipe(*(batch[c] for c in COMPONENTS))
        recipe = self.recipe_head(feats["recipe"])
        tokens, pooled = self.encode_image(batch[IMAGE])
        if self.freeze_image:  # a fixed feature extractor (JE): no backbone gradients computed
            tokens, pooled = jax.lax.stop_gradient((tokens, pooled))
        outputs: dict[str, Any] = {
            IMAGE: self.image_head(pooled),
            "recipe": recipe,
            "ssl": self.recipe_ssl(feats),
        }
        if self.class_head is not None:
            outputs["image_logits"] = self.class_head(outputs[IMAGE])
            outputs["recipe_logits"] = self.class_head(recipe)
        if self.cross_decoder is not None and DECODER_TOKENS in batch:
            inputs, _ = teacher_forcing(batch[DECODER_TOKENS])
            memory, valid = self.cross_decoder.memory(tokens, recipe)
            outputs["decoder_logits"] = self.cross_decoder(inputs, memory, valid)
        if TEXT_ONLY_PREFIX + COMPONENTS[0] in batch:
            text = self.encode_recipe(*(batch[TEXT_ONLY_PREFIX + c] for c in COMPONENTS))
            outputs["ssl_text_only"] = self.recipe_ssl(text)
        return outputs


def _as_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def build_image_encoder(
    model_config: ml_collections.ConfigDict,
    *,
    image_size: int,
    dtype: Dtype,
    attention: str,
    rngs: nnx.Rngs,
) -> tuple[nnx.Module, int]:
    """`config.model.image`: 'vit' (config.model.vit) | 'resnet' (config.model.resnet).
    Returns (encoder, pooled feature width)."""
    if model_config.image == "vit":
        vit_cfg = _as_dict(model_config.vit)
        encoder = ViT(image_size=image_size, dtype=dtype, attention=attention, rngs=rngs, **vit_cfg)
        return encoder, vit_cfg["width"]
    if model_config.image == "resnet":
        encoder = ResNet(dtype=dtype, rngs=rngs, **_as_dict(model_config.resnet))
        return encoder, encoder.num_features
    raise ValueError(f"model.image must be one of {IMAGE_ENCODERS}, got {model_config.image!r}")


def text_layout(text_config: Any) -> BlockLayout:
    """`config.model.text`'s block fields -> the recipe transformers' `BlockLayout`."""
    return BlockLayout(
        block=text_config.block,
        activation=text_config.activation,
        norm_eps=text_config.norm_eps,
        final_norm=text_config.final_norm,
        attention_dropout=text_config.attention_dropout,
        init=text_config.init,
    )


def build_recipe_encoder(
    model_config: ml_collections.ConfigDict,
    *,
    vocab_size: int,
    dtype: Dtype,
    attention: str,
    rngs: nnx.Rngs,
) -> tuple[nnx.Module, int]:
    """`config.model.recipe`: 'hierarchical' (H-T, config.model.text) | 'lstm' (im2recipe /
    AdaMine, config.model.lstm) | 'transformer' (JE's flat variant, config.model.text).
    Returns (encoder, recipe feature width)."""
    kind = model_config.recipe
    if kind in ("hierarchical", "transformer"):
        text = _as_dict(model_config.text)
        transformer = dict(
            width=text["width"],
            depth=text["depth"],
            num_heads=text["num_heads"],
            mlp_dim=text["mlp_dim"],
            dropout=text["dropout"],
            max_len=text["max_len"],
            dtype=dtype,
            attention=attention,
            layout=text_layout(model_config.text),
            rngs=rngs,
        )
    if kind == "hierarchical":
        packed = {
            "ingredients": text["packed_ingredient_tokens"],
            "instructions": text["packed_instruction_tokens"],
        }
        encoder = HierarchicalRecipeEncoder(
            vocab_size, packed_tokens=packed, merge_linear=text["merge_linear"], **transformer
        )
        return encoder, encoder.width
    if kind == "lstm":
        encoder = LSTMRecipeEncoder(
            vocab_size, dtype=dtype, rngs=rngs, **_as_dict(model_config.lstm)
        )
        return encoder, encoder.width
    if kind == "transformer":
        components = tuple(text["components"])
        encoder = TransformerRecipeEncoder(vocab_size, components=components, **transformer)
        return encoder, encoder.width
    raise ValueError(f"model.recipe must be one of {RECIPE_ENCODERS}, got {kind!r}")


def build_model(
    model_config: ml_collections.ConfigDict,
    *,
    vocab_size: int,
    image_size: int,
    rngs: nnx.Rngs,
    decoder_max_len: int,
) -> DualEncoder:
    """The dual encoder described by `config.model` (see configs/*.py).

    `model.image` and `model.recipe` choose the encoders (`build_image_encoder`,
    `build_recipe_encoder`; standard ViT sizes: `VIT_VARIANTS`, e.g. configs.common.VIT_B16).
    Each transformer's wiring (`model.text.block`, ... and `model.vit.block`, ...) and the heads
    (`model.image_head_activation`, `model.recipe_head_activation`, `model.head_init`,
    `model.text.merge_linear`) default to this project's layout; configs/ht.py:vit sets the
    released H-T's. H-T's SSL heads exist
    for the hierarchical encoder when `model.ssl_head` is set; `model.num_classes` > 0 adds the
    shared class head; `model.freeze_image` stops gradients into the image backbone for the whole
    run. The model starts in train mode (dropout on, BatchNorm on batch statistics).

    With `model.cross_decoder.enabled`, it carries a `CrossDecoder` over the tokenizer's vocabulary
    plus the target separators, reading up to `decoder_max_len` tokens (`data.max_decoder_tokens`).
    """
    dtype = resolve_dtype(model_config.dtype)
    attention = model_config.attention
    image_encoder, image_width = build_image_encoder(
        model_config, image_size=image_size, dtype=dtype, attention=attention, rngs=rngs
    )
    recipe_encoder, recipe_width = build_recipe_encoder(
        model_config, vocab_size=vocab_size, dtype=dtype, attention=attention, rngs=rngs
    )
    ssl_head = model_config.ssl_head or None
    ssl_width = None
    if model_config.recipe != "hierarchical":
        ssl_head = None  # H-T's component SSL needs equal-width component features
    else:
        ssl_width = model_config.text.width
    dec = model_config.cross_decoder
    cross_decoder = None
    if dec.enabled:
        cross_decoder = CrossDecoder(
            decoder_targets.decoder_vocab_size(vocab_size),
            image_width=image_width,
            embed_dim=model_config.embed_dim,
            width=dec.width,
            depth=dec.depth,
            num_heads=dec.num_heads,
            mlp_dim=dec.mlp_dim,
            max_len=decoder_max_len,
            recipe_tokens=dec.recipe_tokens,
            recipe_drop=dec.recipe_drop,
            dropout=dec.dropout,
            dtype=dtype,
            attention=attention,
            rngs=rngs,
        )
    model = DualEncoder(
        image_encoder,
        recipe_encoder,
        image_width=image_width,
        recipe_width=recipe_width,
        embed_dim=model_config.embed_dim,
        ssl_head=ssl_head,
        num_classes=model_config.num_classes,
        freeze_image=model_config.freeze_image,
        cross_decoder=cross_decoder,
        image_head_activation=model_config.image_head_activation,
        recipe_head_activation=model_config.recipe_head_activation,
        head_init=model_config.head_init,
        ssl_width=ssl_width,
        dtype=dtype,
        rngs=rngs,
    )
    set_remat(model, model_config.remat)
    return model


def abstract_model(
    model_config: ml_collections.ConfigDict,
    *,
    vocab_size: int,
    image_size: int,
    decoder_max_len: int,
    seed: int = 0,
) -> DualEncoder:
    """The model with `jax.ShapeDtypeStruct` leaves (nothing allocated): for parameter counts and
    for building restore targets."""
    return nnx.eval_shape(
        lambda: build_model(
            model_config,
            vocab_size=vocab_size,
            image_size=image_size,
            rngs=nnx.Rngs(seed),
            decoder_max_len=decoder_max_len,
        )
    )
