"""A restored checkpoint ready for queries: embed the user's own photos and recipes.

`RetrievalModel` restores a checkpoint of a run (best | latest | step) onto the local devices and
exposes jit-compiled, batch-sharded embedders for photos (any size, EXIF orientation honoured),
recipes given as text, and H-T's per-component recipe features (title / ingredients /
instructions), which the qualitative queries of AdaMine Sec. 5.3 recombine. Batches are padded to
a few fixed sizes so a stream of queries does not recompile.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from PIL import Image, ImageOps

from xmodal import checkpointing, evaluate, sharding
from xmodal.data import pipeline, records, tokenizer
from xmodal.models.layers import l2_normalize
from xmodal.models.recipe_encoder import COMPONENTS


def load_run_config(
    workdir: str, config: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
    """The config a run recorded in WORKDIR/config.json (or `config` when given), pointing at the
    prepared data the run used."""
    if config is not None:
        return config
    path = os.path.join(workdir, checkpointing.CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path!r} is missing: {workdir!r} is not a training workdir; pass --config too"
        )
    with open(path) as f:
        raw = json.load(f)
    resolved = raw.get("data", {}).pop("resolved_dir", None)
    config = ml_collections.ConfigDict(raw)
    if not config.data.dir and resolved:
        config.data.dir = resolved
    return config


def read_photo(path: str, image_size: int) -> np.ndarray:
    """A photo file -> uint8 [S, S, 3]: EXIF orientation applied, RGB, eval center crop."""
    with Image.open(path) as img:
        img.draft("RGB", (image_size, image_size))
        img = ImageOps.exif_transpose(img).convert("RGB")
        return pipeline.center_crop(img, image_size)


def _bucket(n: int, multiple: int, cap: int) -> int:
    """Padded batch for `n` rows: a power of two times the device count, at most `cap`."""
    size = multiple
    while size < n and size < cap:
        size *= 2
    return min(size, max(cap, multiple))


class RetrievalModel:
    """Embedders of a restored checkpoint; every output row is a unit-norm float32 vector."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        *,
        which: str | int | None = None,
        mesh: Any = None,
    ):
        self.config = config
        self.mesh = mesh or sharding.make_mesh()
        self.graphdef, self.state, self.data_dir, self.info = evaluate.restore_for_inference(
            config, workdir, which=which, mesh=self.mesh
        )
        self.step = int(self.state.step)
        self.tokenizer = tokenizer.load_tokenizer(self.data_dir)
        self.limits = pipeline.TextLimits.from_config(config.data)
        self.image_size = int(config.data.image_size)
        self.max_batch = max(self.mesh.size, int(config.eval.batch_size))
        rep, data = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
        graphdef = self.graphdef

        def model_of(params: Any, model_state: Any) -> Any:
            model = nnx.merge(graphdef, params, model_state)
            model.eval()
            return model

        def images(params, model_state, image):
            return model_of(params, model_state).embed_image(image)

        def recipes(params, model_state, title, ingredients, instructions):
            model = model_of(params, model_state)
            feats = model.encode_recipe(title, ingredients, instructions)
            emb = l2_normalize(model.recipe_proj(feats["recipe"].astype(jnp.float32)))
            return {"embedding": emb, **{c: feats[c].astype(jnp.float32) for c in COMPONENTS}}

        def components(params, model_state, title, ingredients, instructions):
            model = model_of(params, model_state)
            x = jnp.concatenate([title, ingredients, instructions], axis=-1).astype(model.dtype)
            merged = model.recipe_encoder.merge(x)
            return l2_normalize(model.recipe_proj(merged.astype(jnp.float32)))

        self._images = jax.jit(images, in_shardings=(rep, rep, data), out_shardings=data)
        self._recipes = jax.jit(recipes, in_shardings=(rep, rep, data, data, data))
        self._components = jax.jit(components, in_shardings=(rep, rep, data, data, data))

    def _batched(self, fn: Any, arrays: Sequence[np.ndarray]) -> Any:
        """Run `fn(params, model_state, *arrays)` over rows in padded fixed-size batches."""
        n = len(arrays[0])
        if n == 0:
            raise ValueError("nothing to embed")
        size = _bucket(n, self.mesh.size, self.max_batch)
        outs = []
        for start in range(0, n, size):
            chunk = [a[start : start + size] for a in arrays]
            pad = size - len(chunk[0])
            if pad:
                chunk = [np.concatenate([c, np.zeros((pad, *c.shape[1:]), c.dtype)]) for c in chunk]
            out = fn(self.state.params, self.state.model_state, *chunk)
            outs.append(jax.tree.map(lambda x, m=size - pad: np.asarray(x)[:m], out))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] (S = config.data.image_size) -> [N, D]."""
        images = np.asarray(images, np.uint8)
        if images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"images must be [N, {self.image_size}, {self.image_size}, 3] uint8, got "
                f"{images.shape}; use read_photo() to load files"
            )
        return self._batched(self._images, [images])

    def embed_photos(self, paths: Sequence[str]) -> np.ndarray:
        """Photo files (any size or orientation) -> [N, D]."""
        return self.embed_images(np.stack([read_photo(p, self.image_size) for p in paths]))

    def tokenize(self, recipe: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A recipe {'title': str, 'ingredients': [str], 'instructions': [str]} (missing fields
        are empty) -> padded token ids, exactly as `prepare` + the eval pipeline make them."""
        for field in ("ingredients", "instructions"):
            if isinstance(recipe.get(field), str):
                raise TypeError(f"recipe {field!r} must be a list of strings, one per line")
        lim = self.limits
        rec = records.empty_recipe(
            title_ids=tokenizer.encode(
                self.tokenizer, recipe.get("title", "") or "", lim.title_tokens
            ),
            ingredient_ids=tokenizer.encode_batch(
                self.tokenizer, list(recipe.get("ingredients") or []), lim.ingredient_tokens
            ),
            instruction_ids=tokenizer.encode_batch(
                self.tokenizer, list(recipe.get("instructions") or []), lim.instruction_tokens
            ),
        )
        feats = pipeline.text_features(rec, self.limits)
        return {k: feats[k] for k in COMPONENTS}

    def encode_recipes(self, recipes: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Recipes -> {'embedding': [N, D], 'title'|'ingredients'|'instructions': [N, width]}."""
        toks = [self.tokenize(r) for r in recipes]
        arrays = [np.stack([t[c] for t in toks]) for c in COMPONENTS]
        return self._batched(self._recipes, arrays)

    def embed_recipes(self, recipes: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.encode_recipes(recipes)["embedding"]

    def embed_components(
        self, title: np.ndarray, ingredients: np.ndarray, instructions: np.ndarray
    ) -> np.ndarray:
        """Per-component H-T features [N, width] each -> joint embeddings [N, D]: the recipe
        branch after its encoders (merge + projection), for recombined queries."""
        arrays = [np.asarray(x, np.float32) for x in (title, ingredients, instructions)]
        return self._batched(self._components, arrays)

    def embed_split(self, split: str, *, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(image, recipe) embeddings of the first `limit` pairs of a prepared split."""
        return evaluate.Embedder(self.graphdef, self.mesh).embed_split(
            self.state, self.data_dir, split, self.config, limit=limit
        )
