"""A restored checkpoint ready for queries: embed the user's own photos and recipes.

`RetrievalModel` reopens a run (`xmodal.run.Run`), restores a checkpoint (best | latest | step)
onto the local devices and exposes jit-compiled, batch-sharded embedders for photos (any size,
EXIF orientation honoured), recipes given as text, and the recipe branch's per-component features
(which the qualitative queries of AdaMine Sec. 5.3 recombine). What is computed is the model's
own API (`DualEncoder.embed_image`, `recipe_parts`, `embed_components`); batches are padded to a
few fixed sizes so a stream of queries does not recompile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from xmodal.data import pipeline, records, tokenizer
from xmodal.data.schema import COMPONENTS
from xmodal.run import Run
from xmodal.runtime.embed import eval_jit, in_fixed_batches


def _bucket(n: int, multiple: int, cap: int) -> int:
    """Padded batch for `n` rows: a power of two times the device count, at most `cap`."""
    size = multiple
    while size < n and size < cap:
        size *= 2
    return min(size, max(cap, multiple))


def recipe_token_ids(
    tok: Any, limits: pipeline.TextLimits, recipe: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """A recipe {'title': str, 'ingredients': [str], 'instructions': [str]} (missing fields are
    empty) -> padded token ids per component, exactly as `prepare` + the eval pipeline make them
    (ingredient lines as ingredient lines: the released vocabulary's quantity fixes)."""
    for field in ("ingredients", "instructions"):
        if isinstance(recipe.get(field), str):
            raise TypeError(f"recipe {field!r} must be a list of strings, one per line")
    rec = records.empty_recipe(
        title_ids=tokenizer.encode(tok, recipe.get("title", "") or "", limits.title_tokens),
        ingredient_ids=tokenizer.encode_batch(
            tok, list(recipe.get("ingredients") or []), limits.ingredient_tokens, ingredient=True
        ),
        instruction_ids=tokenizer.encode_batch(
            tok, list(recipe.get("instructions") or []), limits.instruction_tokens
        ),
    )
    feats = pipeline.text_features(rec, limits)
    return {k: feats[k] for k in COMPONENTS}


class RetrievalModel:
    """Embedders of a restored checkpoint; every output row is a unit-norm float32 vector."""

    def __init__(self, run: Run, *, which: str | int | None = None):
        self.run = run
        self.config = run.config
        self.mesh = run.mesh
        self.data_dir = run.data_dir
        self.state = run.restore(which)
        self.step = int(self.state.step)
        self.tokenizer = tokenizer.load_tokenizer(self.data_dir)
        self.limits = pipeline.TextLimits.from_config(self.config.data)
        self.image_size = int(self.config.data.image_size)
        self.max_batch = max(self.mesh.size, int(self.config.eval.batch_size))
        abstract = run.layout.abstract
        self.components = nnx.merge(
            run.graphdef, abstract.params, abstract.model_state
        ).recipe_components
        self._images = self._jit(lambda m, image: m.embed_image(image), 1)
        self._recipes = self._jit(lambda m, *parts: m.recipe_parts(*parts), len(COMPONENTS))
        self._components = self._jit(
            lambda m, *feats: m.embed_components(dict(zip(self.components, feats, strict=True))),
            len(self.components),
        )

    @classmethod
    def from_workdir(
        cls,
        workdir: str,
        config: ml_collections.ConfigDict | None = None,
        *,
        which: str | int | None = None,
        mesh: Any = None,
    ) -> RetrievalModel:
        """The run in WORKDIR (its recorded config unless `config` is given)."""
        return cls(Run.from_workdir(workdir, config, mesh=mesh), which=which)

    def _jit(self, fn: Callable[..., Any], num_inputs: int) -> Callable[..., Any]:
        """fn(model in eval mode, *row-sharded inputs), with the state's own shardings."""
        return eval_jit(self.run.layout, self.mesh, fn, num_inputs)

    def _batched(self, fn: Any, arrays: Sequence[np.ndarray]) -> Any:
        """Run `fn(params, model_state, *arrays)` over rows in padded fixed-size batches."""
        n = len(arrays[0])
        if n == 0:
            raise ValueError("nothing to embed")
        size = _bucket(n, self.mesh.size, self.max_batch)
        state = self.state
        run = lambda *chunk: fn(state.params, state.model_state, *chunk)
        return in_fixed_batches(run, arrays, size)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] (S = config.data.image_size) -> [N, D]."""
        images = np.asarray(images, np.uint8)
        if images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"images must be [N, {self.image_size}, {self.image_size}, 3] uint8, got "
                f"{images.shape}; use xmodal.data.pipeline.read_photo() to load files"
            )
        return self._batched(self._images, [images])

    def embed_photos(self, paths: Sequence[str]) -> np.ndarray:
        """Photo files (any size or orientation) -> [N, D]."""
        return self.embed_images(np.stack([pipeline.read_photo(p, self.image_size) for p in paths]))

    def tokenize(self, recipe: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """`recipe_token_ids` with this run's vocabulary and text limits."""
        return recipe_token_ids(self.tokenizer, self.limits, recipe)

    def encode_recipes(self, recipes: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Recipes -> {'embedding': [N, D]} plus [N, width] per component of the model
        (`self.components`: H-T has all three, the LSTM encoders their configured subset)."""
        toks = [self.tokenize(r) for r in recipes]
        arrays = [np.stack([t[c] for t in toks]) for c in COMPONENTS]
        return self._batched(self._recipes, arrays)

    def embed_recipes(self, recipes: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.encode_recipes(recipes)["embedding"]

    def embed_components(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-component features {component: [N, width]} (as `encode_recipes` returns them,
        possibly recombined) -> joint embeddings [N, D]."""
        missing = [c for c in self.components if c not in parts]
        if missing:
            raise ValueError(f"the recipe branch needs {self.components}; missing {missing}")
        arrays = [np.asarray(parts[c], np.float32) for c in self.components]
        return self._batched(self._components, arrays)

    def embed_split(self, split: str, *, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(image, recipe) embeddings of the first `limit` pairs of a prepared split."""
        return self.run.embed_split(self.state, split, limit=limit)
