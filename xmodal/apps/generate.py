"""Dish images generated from recipes by a run trained with ACME's generator.

    python -m xmodal.apps.generate --workdir=W --split=test --out=DIR [--limit=32] [--seed=S]
    python -m xmodal.apps.generate --workdir=W --recipe=recipe.json --out=DIR [--seed=S]
    python -m xmodal.apps.generate --workdir=W --split=test --score [--probe_from=W2]
        [--fid_inception=pt_inception-2015-12-05-6726825d.pth]

Writes one PNG per recipe (DIR/<recipe id>.png, or recipe_<i>.png for --recipe), DIR/grid.png
(for a split: each recipe's real photo above its generated image) and DIR/generated.json (which
file is which recipe). The same seed gives the same images (`xmodal.generation`). `--score`
measures generation on the whole split (generated image <-> recipe retrieval in bags, the class
probe, the FID against the split's real photos) and writes WORKDIR/generated_<split>.json. The FID
uses Inception-v3 features when --fid_inception names pytorch-fid's weights file, else the frozen
image encoder of the probe (named so in the output: not comparable with published FIDs).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from xmodal.apps import cli
from xmodal.apps.retrieval import RetrievalModel
from xmodal.data import pipeline
from xmodal.generation import DishGenerator, evaluate_generated, real_photos, side_by_side
from xmodal.runtime import sharding


def write_images(out: str, names: Sequence[str], images: np.ndarray) -> list[str]:
    os.makedirs(out, exist_ok=True)
    files = []
    for name, image in zip(names, images, strict=True):
        path = os.path.join(out, f"{name}.png")
        Image.fromarray(image).save(path)
        files.append(os.path.basename(path))
    return files


def write_generated(model: RetrievalModel, embedding: np.ndarray, path: str, seed: int = 0) -> str:
    """The dish image generated from one recipe embedding [D] (the seed's row 0) as a PNG."""
    images, _ = DishGenerator(model.run, model.state).generate(embedding[None], seed=seed)
    Image.fromarray(images[0]).save(path)
    return path


def _safe_name(recipe_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in recipe_id) or "recipe"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m xmodal.apps.generate", description=__doc__.split("\n")[0]
    )
    cli.add_run_arguments(p)
    p.add_argument("--recipe", help="JSON file: one recipe or a list of recipes")
    p.add_argument("--out", help="folder for the images")
    p.add_argument("--limit", type=int, default=32, help="recipes of --split to draw (grid)")
    p.add_argument("--seed", type=int, default=0, help="the draws' seed")
    p.add_argument("--score", action="store_true", help="measure generation on all of --split")
    p.add_argument(
        "--probe_from",
        default=None,
        help="the class probe reads images with this run's image encoder (same data), one the "
        "generator was not trained against (default: the run's own)",
    )
    p.add_argument(
        "--fid_inception",
        default=None,
        help="pytorch-fid's Inception weights (pt_inception-2015-12-05-*.pth, or .safetensors): "
        "the FID on Inception features (default: on the frozen image encoder's)",
    )
    args = cli.parse_args(p, argv)
    if not args.recipe and not args.split:
        p.error("give --split=SPLIT or --recipe=FILE")
    if not args.out and not args.score:
        p.error("give --out=DIR for the images, or --score")
    if args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    model = RetrievalModel.from_workdir(
        args.workdir, cli.run_config(args), which=args.checkpoint, mesh=sharding.make_mesh(1)
    )
    generator = DishGenerator(model.run, model.state)
    written: dict[str, Any] = {"seed": args.seed, "step": generator.step, "images": []}
    if args.recipe:
        with open(args.recipe) as f:
            recipes = json.load(f)
        recipes = [recipes] if isinstance(recipes, dict) else recipes
        if not isinstance(recipes, list) or not all(isinstance(r, dict) for r in recipes):
            raise ValueError(f"{args.recipe}: expected a recipe object or a list of them")
        images, _ = generator.generate(model.embed_recipes(recipes), seed=args.seed)
        if args.out:
            names = [f"recipe_{i}" for i in range(len(recipes))]
            files = write_images(args.out, names, images)
            picture = side_by_side([images], images.shape[1])
            Image.fromarray(picture).save(os.path.join(args.out, "grid.png"))
            written["images"] += [
                {"file": f, "title": r.get("title", "")}
                for f, r in zip(files, recipes, strict=True)
            ]
    if args.split and args.out:
        _, recipe = model.embed_split(args.split, limit=args.limit)
        images, _ = generator.generate(recipe, seed=args.seed)
        meta = pipeline.split_metadata(
            model.data_dir, args.split, limit=args.limit, fields=("id", "title")
        )
        real = real_photos(model.data_dir, args.split, model.config.data, len(images))
        files = write_images(args.out, [_safe_name(m["id"]) for m in meta], images)
        Image.fromarray(side_by_side([real, images], images.shape[1])).save(
            os.path.join(args.out, "grid.png")
        )
        written["split"] = args.split
        written["images"] += [
            {"file": f, "id": m["id"], "title": m["title"]}
            for f, m in zip(files, meta, strict=True)
        ]
    if args.out:
        with open(os.path.join(args.out, "generated.json"), "w") as f:
            json.dump(written, f, indent=2)
        print(f"wrote {len(written['images'])} generated images and grid.png to {args.out}")
    if args.score:
        written["score"] = evaluate_generated(
            generator,
            split=args.split,
            seed=args.seed,
            probe_from=args.probe_from,
            fid_inception=args.fid_inception,
        )
    return written


if __name__ == "__main__":
    main()
