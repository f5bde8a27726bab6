"""Galleries and nearest-neighbour search over them (the library half of `xmodal.apps.search`).

A `Gallery` is unit-norm embeddings of one modality plus what to show for each row (recipe id,
title, ingredients, or a photo path). Galleries come from a prepared split, a folder of photos or a
JSON list of recipes, and are saved as one `.npz` readable without this project.

Search is a dot product (the embeddings are unit norm: cosine similarity). `ExactSearch` keeps the
gallery on the device and runs a jitted matmul + `lax.top_k` over it in blocks; `ApproxIndex`
wraps a FAISS HNSW graph (inner product) for million-scale galleries on CPU, where a query costs
~1 ms instead of a full scan (see docs/search.md for recall@k against exact search and latency).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmodal import evaluate
from xmodal.data import jsonio, pipeline
from xmodal.data.pipeline import read_photo

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SEARCH_BLOCK = 1 << 18  # gallery rows scored per device call (bounds memory for huge galleries)
GALLERY_FIELDS = ("kind", "embeddings", "items", "skipped", "step")  # the arrays of a saved one
ITEM_FIELDS = ("id", "title", "ingredients", "instructions", "clean_ingredients", "class_id")


@dataclasses.dataclass
class Gallery:
    """Embeddings [N, D] of one modality ('image' or 'recipe') and display info per row."""

    kind: str
    embeddings: np.ndarray
    items: list[dict[str, Any]]
    step: int = -1
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ("image", "recipe"):
            raise ValueError(f"gallery kind must be 'image' or 'recipe', got {self.kind!r}")
        if len(self.embeddings) != len(self.items):
            raise ValueError(f"{len(self.embeddings)} embeddings but {len(self.items)} items")
        if bad := evaluate.nonfinite_rows(self.embeddings):  # NaN would outrank every match
            raise evaluate.NonFiniteEmbeddings(
                f"{bad} of {len(self.items)} {self.kind} embeddings hold NaN or Inf (the model "
                "diverged, or its checkpoint is corrupt); refusing to search them"
            )

    def save(self, path: str) -> str:
        np.savez(
            path,
            kind=np.str_(self.kind),
            embeddings=np.asarray(self.embeddings, np.float32),
            items=np.str_(json.dumps(self.items)),
            skipped=np.str_(json.dumps(self.skipped)),
            step=np.int64(self.step),
        )
        return path if path.endswith(".npz") else path + ".npz"

    @classmethod
    def load(cls, path: str) -> Gallery:
        """A gallery `save`d by `search index`; anything else is one ValueError naming `path`."""
        try:
            with np.load(path) as f:
                fields = {k: f[k] for k in GALLERY_FIELDS}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as e:
            raise ValueError(
                f"{path} is not a gallery .npz written by `search index`: {e}"
            ) from None
        items, skipped = (
            jsonio.parse_json(str(fields[k]), f"{k!r} of {path}") for k in ("items", "skipped")
        )
        if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
            raise ValueError(f"'items' of {path} is not a JSON list of objects")
        return cls(str(fields["kind"]), fields["embeddings"], items, int(fields["step"]), skipped)


def split_galleries(model: Any, split: str, *, limit: int | None = None) -> tuple[Gallery, Gallery]:
    """(image gallery, recipe gallery) of a prepared split; row i of both is recipe i (its first
    photo), items carry id, title, ingredients, clean ingredients and class."""
    image, recipe = model.embed_split(split, limit=limit)
    items = pipeline.split_metadata(model.data_dir, split, limit=limit, fields=ITEM_FIELDS)
    for i, item in enumerate(items):
        item["split"], item["index"] = split, i
    return (
        Gallery("image", image, items, step=model.step),
        Gallery("recipe", recipe, [dict(it) for it in items], step=model.step),
    )


def list_photos(folder: str) -> list[str]:
    paths = []
    for root, _, files in os.walk(folder):
        paths += [os.path.join(root, f) for f in files if f.lower().endswith(PHOTO_SUFFIXES)]
    if not paths:
        raise FileNotFoundError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) under {folder!r}")
    return sorted(paths)


def photo_gallery(model: Any, folder: str) -> Gallery:
    """Every photo under `folder`; unreadable files are skipped, counted and reported."""
    images, items, skipped = [], [], []
    for path in list_photos(folder):
        try:
            images.append(read_photo(path, model.image_size))
        except Exception as e:  # PIL raises many types for bad files
            skipped.append({"path": path, "reason": f"{type(e).__name__}: {e}"})
            continue
        items.append({"path": os.path.abspath(path), "title": os.path.basename(path)})
    if skipped:
        print(f"skipped {len(skipped)} unreadable photo(s), e.g. {skipped[0]}")
    if not images:
        raise ValueError(f"none of the photos under {folder!r} could be read")
    return Gallery("image", model.embed_images(np.stack(images)), items, model.step, skipped)


def load_recipes(path: str) -> list[dict[str, Any]]:
    """A JSON recipe or list of recipes: {'title': str, 'ingredients': [str | {'text': str}],
    'instructions': [...]} (Recipe1M's layer1 entries work as they are)."""
    data = jsonio.read_json(path, kind=(dict, list))
    recipes = data if isinstance(data, list) else [data]
    out = []
    for i, r in enumerate(recipes):
        if not isinstance(r, dict) or not any(k in r for k in ("title", "ingredients")):
            raise ValueError(f"{path}: entry {i} is not a recipe (needs title or ingredients)")
        norm = lambda xs: [x["text"] if isinstance(x, dict) else str(x) for x in xs or []]
        out.append(
            {
                "id": str(r.get("id", i)),
                "title": r.get("title", ""),
                "ingredients": norm(r.get("ingredients")),
                "instructions": norm(r.get("instructions")),
            }
        )
    return out


def recipe_gallery(model: Any, path: str) -> Gallery:
    recipes = load_recipes(path)
    return Gallery("recipe", model.embed_recipes(recipes), recipes, step=model.step)


@functools.partial(jax.jit, static_argnames="k")
def _top_k_block(queries: jax.Array, gallery: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    sims = jnp.dot(queries, gallery.T, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.top_k(sims, k)


class ExactSearch:
    """Brute-force cosine top-k on the device; the gallery is copied there once."""

    def __init__(self, embeddings: np.ndarray):
        self.n = len(embeddings)
        self._blocks = [
            jnp.asarray(embeddings[s : s + SEARCH_BLOCK], jnp.float32)
            for s in range(0, self.n, SEARCH_BLOCK)
        ]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], indices [Q, k]) best first; ties go to the lower index."""
        q = jnp.asarray(np.atleast_2d(queries), jnp.float32)
        k = min(k, self.n)
        scores, indices, offset = [], [], 0
        for block in self._blocks:
            s, i = _top_k_block(q, block, min(k, block.shape[0]))
            scores.append(s)
            indices.append(i + offset)
            offset += block.shape[0]
        s, i = jnp.concatenate(scores, 1), jnp.concatenate(indices, 1)
        best_s, pos = jax.lax.top_k(s, k)
        return np.asarray(best_s), np.asarray(jnp.take_along_axis(i, pos, axis=1))


class ApproxIndex:
    """FAISS HNSW graph over unit vectors with inner-product metric (install `xmodal[search]`).

    M (graph degree) and ef_construction trade build time and memory for recall; ef_search
    trades query time for recall at search time.
    """

    def __init__(self, embeddings: np.ndarray, *, m: int = 32, ef_construction: int = 80):
        try:
            import faiss
        except ImportError as e:
            raise ImportError("approximate search needs faiss: pip install 'xmodal[search]'") from e
        x = np.ascontiguousarray(embeddings, np.float32)
        self.index = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(x)

    def search(
        self, queries: np.ndarray, k: int, *, ef_search: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        self.index.hnsw.efSearch = max(ef_search, k)
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        return self.index.search(q, k)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k found by the approximate top-k (mean over queries)."""
    k = exact.shape[1]
    hits = [len(set(a[:k]) & set(e)) for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits) / k)


def top_k(gallery: Gallery, queries: np.ndarray, k: int = 5) -> list[list[dict[str, Any]]]:
    """Per query, the k best gallery items (with 'score' and 'rank') by exact search."""
    scores, indices = ExactSearch(gallery.embeddings).search(queries, k)
    return [
        [
            {**gallery.items[int(i)], "score": float(s), "rank": r + 1, "row": int(i)}
            for r, (s, i) in enumerate(zip(srow, irow, strict=True))
        ]
        for srow, irow in zip(scores, indices, strict=True)
    ]


def describe(result: dict[str, Any]) -> str:
    """One readable line (plus ingredients) for a hit."""
    head = f"{result['rank']:>3}. {result['score']:+.3f}  {result.get('title', '')}"
    if result.get("id"):
        head += f"  [{result['id']}]"
    if result.get("path"):
        head += f"  {result['path']}"
    ingredients = result.get("clean_ingredients") or result.get("ingredients")
    if ingredients:
        head += "\n       " + ", ".join(ingredients[:12])
    return head


def print_results(results: Sequence[dict[str, Any]]) -> None:
    for r in results:
        print(describe(r))
