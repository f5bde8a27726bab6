"""Train input pipeline throughput: batches/s and images/s per Grain worker count.

    PYTHONPATH=. python tools/bench_input.py --workers=0,1,2 --batch_size=64 --num_batches=30
        [--cache_dir=DIR]

Prepares the built-in synthetic dataset with photos rendered at `--image_size` px and stored at
short side 256 (as `prepare` stores Recipe1M) in a temporary folder, or with `--cache_dir` reads
it from (or builds it into) that cache, the data `bench_train --mode=pipeline` reads with
`data.cache_dir` and the same recipes and photo size, then runs `pipeline.train_dataset` at the b16
preset's resolution (224) and times `--num_batches` batches after `--warmup` batches. Also times
the per-image stages in one process (record decode, JPEG decode, crop + resize, flip + to numpy).
Prints one table and writes the full numbers as JSON (`--json`), including images/s per core and
the worker count needed for `--target` images/s, extrapolated linearly from the best per-worker
rate (each worker is one core's worth of decode).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

from configs import tnlbt
from xmodal.data import pipeline, prepare, records
from xmodal.data.builtin import dataset as synthetic

flags.DEFINE_string("workers", "0,1,2", "Comma-separated Grain worker counts.")
flags.DEFINE_integer("batch_size", 64, "Per-process batch size.")
flags.DEFINE_integer("num_batches", 30, "Timed batches per worker count.")
flags.DEFINE_integer("warmup", 5, "Untimed batches first (worker start-up, first reads).")
flags.DEFINE_integer("num_recipes", 1000, "Synthetic recipes generated.")
flags.DEFINE_integer("image_size", 384, "Rendered photo size before prepare stores short side 256.")
flags.DEFINE_integer("target", 3000, "Images/s the pipeline must reach (a fast GPU's appetite).")
flags.DEFINE_string("json", "docs/bench/bench_input.json", "Where the full numbers go.")
flags.DEFINE_string(
    "cache_dir", "", "Built-in dataset cache to read or fill (default: a temp dir)."
)
FLAGS = flags.FLAGS


def _stages(data_dir: str, image_size: int, n: int = 200) -> dict[str, float]:
    """Milliseconds per image of each stage of TrainExample, in this process."""
    source = pipeline.open_split(data_dir, "train")
    datas = [source[i % len(source)] for i in range(n)]
    rng = np.random.default_rng(0)
    t = {}
    start = time.perf_counter()
    recs = [records.decode_record(d) for d in datas]
    t["record_decode_ms"] = (time.perf_counter() - start) / n * 1e3
    draft = math.ceil(image_size / math.sqrt(pipeline.CROP_SCALE[0]))
    start = time.perf_counter()
    imgs = [pipeline.open_image(r["images"][0], draft) for r in recs]
    for img in imgs:
        img.load()
    t["jpeg_decode_ms"] = (time.perf_counter() - start) / n * 1e3
    start = time.perf_counter()
    for img in imgs:
        pipeline.random_resized_crop(img, image_size, rng)
    t["crop_resize_flip_ms"] = (time.perf_counter() - start) / n * 1e3
    t["total_ms"] = sum(t.values())
    t["stored_size"] = list(imgs[0].size)
    return t


def _run(data_dir: str, config, workers: int) -> dict[str, float]:
    config.data.num_workers = str(workers)
    ds = pipeline.train_dataset(data_dir, config.data, batch_size=FLAGS.batch_size, seed=0)
    it = iter(ds)
    for _ in range(FLAGS.warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(FLAGS.num_batches):
        batch = next(it)
    seconds = time.perf_counter() - start
    assert batch["image"].shape == (FLAGS.batch_size, 224, 224, 3)
    if hasattr(it, "close"):
        it.close()
    cores = max(1, workers)  # 0 workers: decoding in the main process, one core
    images = FLAGS.num_batches * FLAGS.batch_size / seconds
    return dict(
        workers=workers,
        batches_per_s=FLAGS.num_batches / seconds,
        images_per_s=images,
        images_per_s_per_core=images / cores,
    )


def main(argv: list[str]) -> None:
    del argv
    config = tnlbt.get_config("b16")
    image_size = config.data.image_size
    tmp = tempfile.mkdtemp(prefix="bench_input-")
    try:
        if FLAGS.cache_dir:
            data_dir = synthetic.ensure_builtin_dataset(
                FLAGS.cache_dir, num_recipes=FLAGS.num_recipes, image_size=FLAGS.image_size, seed=0
            )
        else:
            raw = os.path.join(tmp, "raw")
            synthetic.write_raw_dataset(
                raw, num_recipes=FLAGS.num_recipes, image_size=FLAGS.image_size
            )
            data_dir = os.path.join(tmp, "data")
            prepare.prepare(raw, data_dir, image_short_side=256, verbose=False)
        stages = _stages(data_dir, image_size)
        rows = [_run(data_dir, config, int(w)) for w in FLAGS.workers.split(",")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = max(r["images_per_s_per_core"] for r in rows)
    needed = math.ceil(FLAGS.target / best)
    print(f"train pipeline at {image_size}px, batch {FLAGS.batch_size}, {os.cpu_count()} cores; "
          f"stored photos {stages['stored_size']}")  # fmt: skip
    print(f"{'workers':>7} {'batches/s':>10} {'images/s':>9} {'images/s/core':>14}")
    for r in rows:
        print(f"{r['workers']:>7} {r['batches_per_s']:>10.2f} {r['images_per_s']:>9.1f} "
              f"{r['images_per_s_per_core']:>14.1f}")  # fmt: skip
    print(f"per image, one process: record {stages['record_decode_ms']:.2f} ms, JPEG decode "
          f"{stages['jpeg_decode_ms']:.2f} ms, crop+resize+flip {stages['crop_resize_flip_ms']:.2f}"
          f" ms; workers for {FLAGS.target} images/s: {needed}")  # fmt: skip
    result = dict(
        flags={
            k: FLAGS[k].value
            for k in (
                "workers",
                "batch_size",
                "num_batches",
                "warmup",
                "num_recipes",
                "image_size",
                "target",
                "cache_dir",
            )
        },
        image_size=image_size,
        machine=dict(cpus=os.cpu_count(), system=platform.platform()),
        stages=stages,
        rows=rows,
        workers_for_target=needed,
    )
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    app.run(main)
