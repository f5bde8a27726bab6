"""Writes the built-in dataset in the raw Recipe1M layout: layer1.json, layer2.json,
det_ingrs.json, classes1M.pkl and the photos under <partition>/a/b/c/d/<image id>.

Deterministic by seed: recipes are drawn in the main process from one generator, every photo from
its own generator seeded by (seed, recipe index, photo index), so output is byte-identical for any
number of workers. Photos are rendered in a spawned process pool (`photos.render_photo`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
from typing import Any

from xmodal.data.builtin.photos import render_photo
from xmodal.data.builtin.recipes import CLASSES, generate_recipes


def _dump_json(obj: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def write_raw_dataset(out_dir: str, *, num_recipes: int = 4000, image_size: int = 96, seed: int = 0,
                      num_workers: int | None = None) -> dict:  # fmt: skip
    """Writes the synthetic dataset in the raw Recipe1M layout to `out_dir`; returns counts."""
    if num_recipes < 1 or image_size < 16:
        raise ValueError(
            f"need num_recipes >= 1 and image_size >= 16, got {num_recipes}, {image_size}"
        )
    recipes = generate_recipes(num_recipes, seed)
    os.makedirs(out_dir, exist_ok=True)
    layer1 = [
        dict(id=r["id"], url=f"http://www.example.com/recipe/{r['id']}", partition=r["partition"],
             title=r["title"], ingredients=[{"text": t} for t in r["ingredients"]],
             instructions=[{"text": t} for t in r["instructions"]])
        for r in recipes
    ]  # fmt: skip
    layer2 = [
        dict(
            id=r["id"],
            images=[dict(id=i, url=f"http://img.example.com/{i}") for i in r["image_ids"]],
        )
        for r in recipes
        if r["image_ids"]
    ]
    det = [
        dict(id=r["id"], ingredients=[{"text": t} for t in r["det"]], valid=r["valid"])
        for r in recipes
    ]
    _dump_json(layer1, os.path.join(out_dir, "layer1.json"))
    _dump_json(layer2, os.path.join(out_dir, "layer2.json"))
    _dump_json(det, os.path.join(out_dir, "det_ingrs.json"))
    with open(os.path.join(out_dir, "classes1M.pkl"), "wb") as f:
        pickle.dump({r["id"]: r["class_index"] if r["labelled"] else 0 for r in recipes}, f)
        pickle.dump({0: "background", **{i + 1: c["name"] for i, c in enumerate(CLASSES)}}, f)

    tasks = []
    for k, r in enumerate(recipes):
        for j, iid in enumerate(r["image_ids"]):
            folder = os.path.join(out_dir, r["partition"], *iid[:4])
            os.makedirs(folder, exist_ok=True)
            tasks.append((r["dish"], image_size, [seed, k, j], os.path.join(folder, iid)))
    workers = min(num_workers or os.cpu_count() or 1, max(1, len(tasks) // 200))
    if workers <= 1:
        for task in tasks:
            render_photo(task)
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(render_photo, tasks, chunksize=64):
                pass
    return dict(
        recipes=num_recipes,
        images=len(tasks),
        recipes_with_images=len(layer2),
        labelled=sum(r["labelled"] for r in recipes),
        partitions={p: sum(r["partition"] == p for r in recipes) for p in ("train", "val", "test")},
    )
