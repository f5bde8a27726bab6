"""The seed papers' qualitative queries on the joint space (AdaMine, Carvalho et al. 2018, Sec. 5.3;
im2recipe, Salvador et al. 2017, Sec. 6.3 "arithmetic").

- Ingredient -> image: the recipe query has a single word as its ingredient list and, for the
  instructions, the mean instruction feature of training recipes. The recipe encoder here (H-T) also
  has a title branch; it gets the mean training title feature, so only the ingredient varies.
- Removing an ingredient: a recipe, and the same recipe without the ingredient lines and the
  instruction lines naming the word; compare the photos each retrieves.
- Arithmetic: unit-normalised sum of "plus" embeddings minus "minus" embeddings, e.g.
  v(recipe of a chicken pizza) - v(ingredient 'chicken') + v(ingredient 'pineapple').
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xmodal.data import pipeline


def mean_components(
    model: Any, *, split: str = "train", limit: int = 2000
) -> dict[str, np.ndarray]:
    """Mean feature of each of the model's recipe components (H-T: title / ingredients /
    instructions) over the first `limit` recipes of `split` (text only: no photo is read)."""
    recipes = pipeline.split_metadata(
        model.data_dir, split, limit=limit, fields=("title", "ingredients", "instructions")
    )
    feats = model.encode_recipes(recipes)
    return {c: feats[c].mean(axis=0) for c in model.components}


def ingredient_queries(
    model: Any, words: Sequence[str], means: Mapping[str, np.ndarray]
) -> np.ndarray:
    """AdaMine Sec. 5.3 queries [len(words), D]: one ingredient word each; every other component
    of the model's recipe branch (instructions, and H-T's title) is its training mean."""
    if not words:
        raise ValueError("give at least one ingredient word")
    if "ingredients" not in model.components:
        raise ValueError(
            f"ingredient queries need an ingredient branch; this model encodes {model.components}"
        )
    feats = model.encode_recipes([{"ingredients": [w]} for w in words])
    n = len(words)
    parts = {c: np.repeat(means[c][None], n, 0) for c in model.components}
    parts["ingredients"] = feats["ingredients"]
    return model.embed_components(parts)


def without_ingredient(recipe: Mapping[str, Any], word: str) -> dict[str, Any]:
    """The recipe minus every ingredient line and instruction line that names `word` (whole
    word, case-insensitive, plural 's'/'es' allowed)."""
    pattern = re.compile(rf"\b{re.escape(word.lower())}(e?s)?\b")
    ingredients = [x for x in recipe.get("ingredients", []) if not pattern.search(x.lower())]
    if len(ingredients) == len(recipe.get("ingredients", [])):
        raise ValueError(f"no ingredient of {recipe.get('title', 'the recipe')!r} names {word!r}")
    return {
        **recipe,
        "ingredients": ingredients,
        "instructions": [
            x for x in recipe.get("instructions", []) if not pattern.search(x.lower())
        ],
    }


def remove_ingredient_queries(
    model: Any, recipe: Mapping[str, Any], word: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings [2, D] of (original, modified) and the modified recipe."""
    modified = without_ingredient(recipe, word)
    return model.embed_recipes([dict(recipe), modified]), modified


def arithmetic(plus: Sequence[np.ndarray], minus: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Unit-norm sum(plus) - sum(minus) of embeddings [D] (or [1, D])."""
    if not plus:
        raise ValueError("arithmetic needs at least one 'plus' term")
    v = np.sum([np.ravel(x) for x in plus], axis=0)
    if minus:
        v = v - np.sum([np.ravel(x) for x in minus], axis=0)
    norm = np.linalg.norm(v)
    if norm < 1e-12:
        raise ValueError("the terms cancel out: the result has no direction")
    return (v / norm).astype(np.float32)
