"""Conversion throughput of `xmodal.data.prepare`: recipes/s and photos/s, in all and per core.

    PYTHONPATH=. python tools/bench_prepare.py --num_recipes=2000 --image_size=384

Generates the built-in synthetic dataset in the raw Recipe1M layout at a larger size (photos of
`image_size` px, closer to Recipe1M's ~500 px web photos than the default 96 px), then times a full
`prepare` (reading, tokenizer, photos, shards) per worker count. Prints one table and writes the
full numbers as JSON (`--json`). Generation is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

from xmodal.data import prepare
from xmodal.data.builtin import dataset as synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_recipes", type=int, default=2000)
    parser.add_argument("--image_size", type=int, default=384)
    parser.add_argument("--short_side", type=int, default=256)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--json", default="docs/bench/bench_prepare.json")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_prepare-")
    try:
        raw = os.path.join(tmp, "raw")
        stats = synthetic.write_raw_dataset(
            raw, num_recipes=args.num_recipes, image_size=args.image_size
        )
        rows = []
        for workers in [int(w) for w in args.workers.split(",")]:
            out = os.path.join(tmp, f"out{workers}")
            start = time.perf_counter()
            info = prepare.prepare(
                raw, out, image_short_side=args.short_side, num_workers=workers, verbose=False
            )
            seconds = time.perf_counter() - start
            recipes = sum(v["recipes"] for v in info["splits"].values())
            images = sum(v["images"] for v in info["splits"].values())
            cores = min(workers, os.cpu_count() or 1)
            rows.append(
                dict(
                    workers=workers,
                    seconds=seconds,
                    recipes=recipes,
                    images=images,
                    recipes_per_s=recipes / seconds,
                    images_per_s=images / seconds,
                    recipes_per_s_per_core=recipes / seconds / cores,
                    images_per_s_per_core=images / seconds / cores,
                )
            )
            shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"prepare: {stats['recipes']} recipes, {stats['images']} photos of {args.image_size}px"
          f" -> short side {args.short_side}; {os.cpu_count()} cores")  # fmt: skip
    print(f"{'workers':>7} {'seconds':>8} {'recipes/s':>10} {'photos/s':>9} "
          f"{'recipes/s/core':>15} {'photos/s/core':>14}")  # fmt: skip
    for r in rows:
        print(f"{r['workers']:>7} {r['seconds']:>8.1f} {r['recipes_per_s']:>10.1f} "
              f"{r['images_per_s']:>9.1f} {r['recipes_per_s_per_core']:>15.1f} "
              f"{r['images_per_s_per_core']:>14.1f}")  # fmt: skip
    result = dict(
        args=vars(args),
        dataset=stats,
        machine=dict(cpus=os.cpu_count(), system=platform.platform()),
        rows=rows,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
