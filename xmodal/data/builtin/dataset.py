"""The built-in dataset: synthetic recipes and food photos in the raw Recipe1M layout.

A first run on a fresh machine needs data that exercises every real code path (raw reader, prepare,
pipeline, training, bag evaluation) and on which retrieval is learnable but not trivial. So each
photo is *rendered from its recipe* (class -> container, ingredients -> pieces, cooking method ->
colour, cut -> piece size) and then disturbed like a real photo; 1-3 photos per recipe, each with
its own nuisance. A model that only recognises the class ranks the true recipe ~15-30 in a bag of
1,000 (~30 classes); reading ingredients, method and cut narrows it much further.

This module is the cache of the prepared built-in dataset (`ensure_builtin_dataset`) and a command
line that writes the raw layout. The generator is in `recipes` (tables, recipe text),
`photos` (renderer) and `writer` (the raw layout, deterministic by seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from xmodal.data import prepare, records
from xmodal.data.builtin.writer import write_raw_dataset

VERSION = 1  # bump when the generator (synthetic_*) changes: cached built-in datasets are rebuilt


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "xmodal")


def ensure_builtin_dataset(cache_dir: str, *, num_recipes: int, image_size: int, seed: int) -> str:
    """Path of the prepared built-in dataset for these parameters, building it on first use.

    Built in a temporary folder next to the cache entry and renamed into place at the end, so a run
    killed half-way leaves no half-built entry (only a temp folder, cleaned on the next build).
    """
    cache_dir = cache_dir or default_cache_dir()
    key = f"synthetic-v{VERSION}-n{num_recipes}-px{image_size}-seed{seed}"
    final = os.path.join(cache_dir, key)
    data_dir = os.path.join(final, "data")
    if os.path.exists(os.path.join(data_dir, records.DATASET_INFO)):
        return data_dir
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir)
    try:
        print(
            f"[xmodal] building the built-in dataset ({num_recipes} recipes) in {final}", flush=True
        )
        stats = write_raw_dataset(
            os.path.join(tmp, "raw"), num_recipes=num_recipes, image_size=image_size, seed=seed
        )
        print(
            f"[xmodal] wrote {stats['recipes']} recipes, {stats['images']} photos; preparing",
            flush=True,
        )
        prepare.prepare(
            os.path.join(tmp, "raw"),
            os.path.join(tmp, "data"),
            source=(
                f"xmodal.data.builtin.dataset: synthetic({num_recipes=}, {image_size=}, {seed=})"
            ),
        )
        shutil.rmtree(os.path.join(tmp, "raw"))  # regenerable; halves the cache size
        if os.path.exists(final):  # another process finished first, or a stale incomplete entry
            if os.path.exists(os.path.join(data_dir, records.DATASET_INFO)):
                return data_dir
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"[xmodal] built-in dataset ready: {data_dir}", flush=True)
    return data_dir


def ensure_for_config(data_config: Any) -> str:
    """`ensure_builtin_dataset` for `config.data` (its `cache_dir` and `synthetic` fields)."""
    syn = data_config.synthetic
    return ensure_builtin_dataset(
        data_config.cache_dir,
        num_recipes=syn.num_recipes,
        image_size=syn.image_size,
        seed=syn.seed,
    )


def _fingerprint(path: str) -> str:
    """Hash of every file under `path` (names and bytes): used by tests to compare outputs."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--num_recipes", type=int, default=4000)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_workers", type=int, default=None)
    args = parser.parse_args(argv)
    stats = write_raw_dataset(
        args.out_dir,
        num_recipes=args.num_recipes,
        image_size=args.image_size,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    print(json.dumps(stats), file=sys.stdout)


if __name__ == "__main__":
    main()
