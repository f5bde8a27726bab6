"""`python -m xmodal.apps.search`: index a gallery with a trained checkpoint, then query it with a
photo, a recipe, ingredient words, a recipe without an ingredient, or embedding arithmetic
(AdaMine Sec. 5.3; im2recipe Sec. 6.3). Galleries and search live in `xmodal.apps.gallery`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from xmodal.apps import cli
from xmodal.apps.gallery import (
    ApproxIndex,
    Gallery,
    load_recipes,
    photo_gallery,
    print_results,
    recipe_gallery,
    split_galleries,
    top_k,
)


def _parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m xmodal.apps.search",
        description="Index a gallery with a trained checkpoint and query it.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(s: Any, gallery: bool = True) -> None:
        cli.add_run_arguments(s, split=gallery)
        s.add_argument("--limit", type=int, default=None, help="first N pairs of the split")
        if gallery:
            s.add_argument("--index", help="a gallery .npz from `index` (else: --split)")
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
    s.add_argument(
        "--generated",
        help="also write the recipe's generated dish image to this PNG (a run trained with "
        "a generator, config.adversarial; seed 0)",
    )

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
        self.args = args
        if model is None:
            key = (
                os.path.abspath(args.workdir),
                args.checkpoint,
                args.config,
                tuple(sorted(args.overrides.items())),
            )
            if key not in _MODELS:  # repeated run() calls in one process restore and compile once
                _MODELS.clear()
                _MODELS[key] = cli.open_model(args)
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
        from xmodal.apps import qualitative

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
    """Entry point of `python -m xmodal.apps.search`; returns what it printed, as data. `model`: an
    already restored `inference.RetrievalModel` (a notebook's, a test's) to query instead of
    restoring the checkpoint of --workdir."""
    from xmodal.apps import qualitative

    args = cli.parse_args(_parser(), argv)
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
        query = m.embed_recipes([recipe])[0]
        if args.generated:
            from xmodal.apps.generate import write_generated

            print(f"wrote the generated dish image to {write_generated(m, query, args.generated)}")
        return s.show(f"recipe {recipe['title']!r}", s.gallery("image"), query)
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
