"""Search with a trained model: index a gallery, then query it with a photo or a recipe.

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
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmodal import evaluate

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SEARCH_BLOCK = 1 << 18  # gallery rows scored per device call (bounds memory for huge galleries)
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
        with np.load(path) as f:
            return cls(
                kind=str(f["kind"]),
                embeddings=f["embeddings"],
                items=json.loads(str(f["items"])),
                step=int(f["step"]),
                skipped=json.loads(str(f["skipped"])),
            )


def split_galleries(model: Any, split: str, *, limit: int | None = None) -> tuple[Gallery, Gallery]:
    """(image gallery, recipe gallery) of a prepared split; row i of both is recipe i (its first
    photo), items carry id, title, ingredients, clean ingredients and class."""
    image, recipe = model.embed_split(split, limit=limit)
    items = evaluate.split_metadata(model.data_dir, split, limit=limit, fields=ITEM_FIELDS)
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
    from xmodal.inference import read_photo

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
    with open(path) as f:
        data = json.load(f)
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


# ----------------------------------------------------------------------------- command line


def _parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m xmodal.search",
        description="Index a gallery with a trained checkpoint and query it.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(s: Any, gallery: bool = True) -> None:
        s.add_argument("--workdir", required=True, help="training workdir (holds config.json)")
        s.add_argument("--checkpoint", default=None, help="best | latest | STEP")
        s.add_argument("--limit", type=int, default=None, help="first N pairs of the split")
        if gallery:
            s.add_argument("--index", help="a gallery .npz from `index` (else: --split)")
            s.add_argument("--split", default=None, help="gallery split (default: eval split)")
            s.add_argument("-k", type=int, default=5)
            s.add_argument("--approx", action="store_true", help="FAISS HNSW instead of exact")
            s.add_argument("--json", action="store_true", help="print results as JSON")

    s = sub.add_parser("index", help="embed a split, a folder of photos or a JSON of recipes")
    common(s, gallery=False)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--split")
    src.add_argument("--photos", help="folder of photos (searched recursively)")
    src.add_argument("--recipes", help="JSON recipe or list of recipes")
    s.add_argument(
        "--out", required=True, help="output .npz (a split writes OUT-image.npz and OUT-recipe.npz)"
    )

    s = sub.add_parser("image", help="photo -> top-k recipes")
    common(s)
    s.add_argument("photo")

    s = sub.add_parser("recipe", help="recipe (JSON file or fields) -> top-k photos")
    common(s)
    s.add_argument("--recipe", help="JSON file with one recipe")
    s.add_argument("--title", default="")
    s.add_argument("--ingredients", action="append", default=[], help="repeat, or ';'-separated")
    s.add_argument("--instructions", action="append", default=[], help="repeat, or ';'-separated")

    s = sub.add_parser("ingredient", help="AdaMine 5.3: ingredient word(s) -> photos")
    common(s)
    s.add_argument("words", nargs="+")
    s.add_argument("--class_id", type=int, default=None, help="only photos of this class")

    s = sub.add_parser("remove", help="AdaMine 5.3: a recipe with and without an ingredient")
    common(s)
    s.add_argument("--recipe", help="JSON file with one recipe (else --recipe_id of the split)")
    s.add_argument("--recipe_id")
    s.add_argument("--word", required=True)

    s = sub.add_parser("arithmetic", help="v(a) - v(b) + v(c) -> photos or recipes")
    common(s)
    for name in ("plus", "minus"):
        s.add_argument(
            f"--{name}",
            action="append",
            default=[],
            help="recipe:ID (of the split) | ingredient:WORD | photo:PATH | title:TEXT",
        )
    s.add_argument("--target", choices=("image", "recipe"), default="image")
    return p


def _fields(values: list[str]) -> list[str]:
    return [x.strip() for v in values for x in v.split(";") if x.strip()]


_MODELS: dict[tuple[str, Any], Any] = {}


class _Session:
    """The model and the galleries a command needs, built lazily."""

    def __init__(self, args: Any, model: Any = None):
        from xmodal.inference import RetrievalModel, load_run_config

        self.args = args
        if model is None:
            config = load_run_config(args.workdir)
            key = (os.path.abspath(args.workdir), args.checkpoint)
            if key not in _MODELS:  # repeated run() calls in one process restore and compile once
                _MODELS.clear()
                _MODELS[key] = RetrievalModel(config, args.workdir, which=args.checkpoint)
            model = _MODELS[key]
        self.model = model
        self.split = getattr(args, "split", None) or model.config.eval.split
        self._galleries: dict[str, Gallery] = {}

    def gallery(self, kind: str) -> Gallery:
        if getattr(self.args, "index", None):
            g = Gallery.load(self.args.index)
            if g.kind != kind:
                raise ValueError(f"{self.args.index} indexes {g.kind}s; this query needs {kind}s")
            return g
        if kind not in self._galleries:
            img, rec = split_galleries(self.model, self.split, limit=self.args.limit)
            self._galleries = {"image": img, "recipe": rec}
        return self._galleries[kind]

    def split_recipe(self, recipe_id: str) -> dict[str, Any]:
        for item in self.gallery("recipe").items:
            if item.get("id") == recipe_id:
                return item
        raise KeyError(f"no recipe {recipe_id!r} in the {self.split} gallery")

    def term(self, spec: str) -> np.ndarray:
        from xmodal import qualitative

        kind, _, value = spec.partition(":")
        if kind == "recipe":
            return self.model.embed_recipes([self.split_recipe(value)])[0]
        if kind == "ingredient":
            means = qualitative.mean_components(self.model)
            return qualitative.ingredient_queries(self.model, [value], means)[0]
        if kind == "photo":
            return self.model.embed_photos([value])[0]
        if kind == "title":
            return self.model.embed_recipes([{"title": value}])[0]
        raise ValueError(f"term {spec!r}: use recipe:ID, ingredient:WORD, photo:PATH or title:TEXT")

    def show(self, title: str, gallery: Gallery, query: np.ndarray, keep: Any = None) -> list:
        k = self.args.k
        if keep is not None:
            rows = np.flatnonzero(keep)
            if len(rows) == 0:
                raise ValueError("no gallery item matches the filter")
            gallery = Gallery(
                gallery.kind,
                gallery.embeddings[rows],
                [gallery.items[i] for i in rows],
                gallery.step,
            )
        if self.args.approx:
            _, idx = ApproxIndex(gallery.embeddings).search(query[None], min(k, len(gallery.items)))
            hits = [int(i) for i in idx[0] if i >= 0]
            sims = gallery.embeddings[hits] @ query
            results = [
                {**gallery.items[i], "score": float(sc), "rank": r + 1, "row": i}
                for r, (i, sc) in enumerate(zip(hits, sims, strict=True))
            ]
        else:
            results = top_k(gallery, query[None], k)[0]
        if self.args.json:
            print(json.dumps({"query": title, "results": results}, indent=1))
        else:
            print(f"== {title}")
            print_results(results)
        return results


def run(argv: Sequence[str] | None = None, *, model: Any = None) -> Any:
    """Entry point of `python -m xmodal.search`; returns what it printed, as data. `model`: an
    already restored `inference.RetrievalModel` (a notebook's, a test's) to query instead of
    restoring the checkpoint of --workdir."""
    from xmodal import qualitative

    args = _parser().parse_args(argv)
    s = _Session(args, model)
    m = s.model
    if args.command == "index":
        if args.split:
            img, rec = split_galleries(m, args.split, limit=args.limit)
            base = args.out[:-4] if args.out.endswith(".npz") else args.out
            paths = [img.save(f"{base}-image.npz"), rec.save(f"{base}-recipe.npz")]
        elif args.photos:
            paths = [photo_gallery(m, args.photos).save(args.out)]
        else:
            paths = [recipe_gallery(m, args.recipes).save(args.out)]
        print("wrote " + " ".join(paths))
        return paths
    if args.command == "image":
        return s.show(f"photo {args.photo}", s.gallery("recipe"), m.embed_photos([args.photo])[0])
    if args.command == "recipe":
        if args.recipe:
            recipe = load_recipes(args.recipe)[0]
        else:
            recipe = {
                "title": args.title,
                "ingredients": _fields(args.ingredients),
                "instructions": _fields(args.instructions),
            }
        return s.show(
            f"recipe {recipe['title']!r}", s.gallery("image"), m.embed_recipes([recipe])[0]
        )
    if args.command == "ingredient":
        gallery = s.gallery("image")
        keep = None
        if args.class_id is not None:
            keep = np.array([it.get("class_id") == args.class_id for it in gallery.items])
        queries = qualitative.ingredient_queries(m, args.words, qualitative.mean_components(m))
        return [
            s.show(f"ingredient {w!r}", gallery, q, keep)
            for w, q in zip(args.words, queries, strict=True)
        ]
    if args.command == "remove":
        recipe = load_recipes(args.recipe)[0] if args.recipe else s.split_recipe(args.recipe_id)
        (orig, mod), _ = qualitative.remove_ingredient_queries(m, recipe, args.word)
        gallery = s.gallery("image")
        return [
            s.show(f"{recipe['title']!r}", gallery, orig),
            s.show(f"{recipe['title']!r} without {args.word!r}", gallery, mod),
        ]
    query = qualitative.arithmetic([s.term(t) for t in args.plus], [s.term(t) for t in args.minus])
    name = " + ".join(args.plus) + "".join(f" - {t}" for t in args.minus)
    return s.show(name, s.gallery(args.target), query)


if __name__ == "__main__":
    run()
