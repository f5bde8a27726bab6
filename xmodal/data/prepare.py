"""Raw Recipe1M layout -> ArrayRecord shards that the input pipeline reads.

    python -m xmodal.data.prepare --raw_dir=RAW --out_dir=DATA

One pass: read and join the raw JSON (`recipe1m`), learn the vocabulary on the train partition
(`tokenizer`), decode/resize/re-encode every photo in a process pool, and write one msgpack record
per recipe (`records`). Recipes with at least one good photo go to the paired splits `train`, `val`,
`test`; recipes without one keep their text in `train_text`, `val_text`, `test_text`. Every skipped
recipe or photo is listed with its reason in `DATA/dataset_info.json`, which is written last and
atomically: its presence means the folder is complete.

The work is organised per recipe chunk and per shard so that resuming and bounded memory at full
Recipe1M scale can be added without changing the layout.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image, ImageOps
from tqdm import tqdm

from xmodal.data import records, tokenizer
from xmodal.data.recipe1m import PARTITIONS, RawRecipe, read_recipe1m

RECORDS_PER_SHARD = 1024  # with --num_shards_per_split=0 (auto)
LARGE_TRAIN_SPLIT = 100_000  # auto min word count: 10 (H-T) above this many train recipes, else 1
JPEG_QUALITY = 90

Image.MAX_IMAGE_PIXELS = 100_000_000  # beyond this a "photo" is a decompression bomb: skip it


def load_image(path: str, short_side: int) -> bytes:
    """Photo at `path` as JPEG bytes: EXIF-upright, RGB, short side <= `short_side`, no upscale."""
    with Image.open(path) as img:
        w, h = img.size
        scale = min(1.0, short_side / min(w, h))
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
        img.draft("RGB", target)  # JPEG: decode at a reduced scale when much larger than needed
        img = ImageOps.exif_transpose(img).convert("RGB")
        if min(img.size) > short_side:
            s = short_side / min(img.size)
            new = (max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s)))
            img = img.resize(new, Image.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


def _load_recipe_images(
    task: tuple[list[str], list[str], int],
) -> list[tuple[str, bytes | None, str]]:
    """Worker: (image id, JPEG bytes or None, reason) for each photo of one recipe."""
    ids, paths, short_side = task
    out: list[tuple[str, bytes | None, str]] = []
    for iid, path in zip(ids, paths, strict=True):
        if not os.path.exists(path):
            out.append((iid, None, f"image file not found: {path}"))
            continue
        try:
            out.append((iid, load_image(path, short_side), ""))
        except Exception as e:  # any decoder failure is a skip, never a crash of the whole run
            out.append((iid, None, f"cannot decode image {path}: {type(e).__name__}: {e}"))
    return out


def _imap(tasks: list, num_workers: int) -> Iterator:
    if num_workers <= 1:
        yield from map(_load_recipe_images, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        yield from pool.imap(_load_recipe_images, tasks, chunksize=8)


class _ShardedWriter:
    """Writes the records of one split round-robin-free: record k of n goes to shard k*S//n."""

    def __init__(self, out_dir: str, split: str, expected: int, num_shards: int):
        self.num_shards = num_shards or max(1, math.ceil(expected / RECORDS_PER_SHARD))
        self.paths = [
            os.path.join(out_dir, records.shard_name(split, i, self.num_shards))
            for i in range(self.num_shards)
        ]
        self.writers = [ArrayRecordWriter(p, "group_size:1") for p in self.paths]
        self.expected, self.count, self.images = max(expected, 1), 0, 0

    def write(self, recipe: records.Recipe) -> None:
        shard = min(self.count * self.num_shards // self.expected, self.num_shards - 1)
        self.writers[shard].write(records.encode_record(recipe))
        self.count += 1
        self.images += len(recipe["images"])

    def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.count == 0:  # an empty split has no shards and no entry in dataset_info
            for p in self.paths:
                os.remove(p)


def _tokenize(tok: Any, recipes: list[RawRecipe], limits: dict) -> list[records.Recipe]:
    """Records (without images) for a chunk of recipes; one batched encode per field."""
    ingredients = [r.ingredients[: limits["max_ingredients"]] for r in recipes]
    instructions = [r.instructions[: limits["max_instructions"]] for r in recipes]
    n = limits["max_tokens"]
    titles = tokenizer.encode_batch(tok, [r.title for r in recipes], limits["max_title_tokens"])
    ingr_ids = iter(tokenizer.encode_batch(tok, [t for ts in ingredients for t in ts], n))
    instr_ids = iter(tokenizer.encode_batch(tok, [t for ts in instructions for t in ts], n))
    return [
        records.empty_recipe(
            id=r.id,
            partition=r.partition,
            title=r.title,
            ingredients=ingr,
            instructions=instr,
            clean_ingredients=r.clean_ingredients,
            class_id=r.class_id,
            title_ids=title,
            ingredient_ids=[next(ingr_ids) for _ in ingr],
            instruction_ids=[next(instr_ids) for _ in instr],
        )
        for r, title, ingr, instr in zip(recipes, titles, ingredients, instructions, strict=True)
    ]


def _clear_outputs(out_dir: str) -> None:
    """Removes a previous run's outputs, dataset_info first: a stale folder never looks complete."""
    info = os.path.join(out_dir, records.DATASET_INFO)
    if os.path.exists(info):
        os.remove(info)
    for name in os.listdir(out_dir):
        if name.endswith(".array_record") or name == records.TOKENIZER_FILE:
            os.remove(os.path.join(out_dir, name))


def prepare(
    raw_dir: str,
    out_dir: str,
    *,
    image_short_side: int = 256,
    num_shards_per_split: int = 0,
    num_workers: int = 0,
    min_word_count: int = 0,
    max_title_tokens: int = 15,
    max_ingredients: int = 20,
    max_instructions: int = 20,
    max_tokens: int = 15,
    source: str | None = None,
) -> dict:
    """Prepares `raw_dir` into `out_dir` and returns the dataset_info dict (0 = auto for counts).

    Auto values: shards of ~1024 records, one worker per core, and min word count 10 (H-T) when the
    train partition has more than 100k recipes, else 1 (the built-in dataset is too small for 10).
    """
    os.makedirs(out_dir, exist_ok=True)
    _clear_outputs(out_dir)
    raw = read_recipe1m(raw_dir)
    skipped = [{"id": i, "reason": why} for i, why in raw.skipped]
    train = [r for r in raw.recipes if r.partition == "train"]
    if not train:
        raise ValueError(
            f"{raw_dir}: no usable recipe in the train partition; nothing to learn from"
        )
    min_count = min_word_count or (10 if len(train) > LARGE_TRAIN_SPLIT else 1)
    tok = tokenizer.build_tokenizer(
        (t for r in train for t in (r.title, *r.ingredients, *r.instructions)), min_count=min_count
    )
    tokenizer.save_tokenizer(tok, out_dir)
    limits = dict(
        max_title_tokens=max_title_tokens,
        max_ingredients=max_ingredients,
        max_instructions=max_instructions,
        max_tokens=max_tokens,
        min_word_count=min_count,
    )

    by_part = {p: [r for r in raw.recipes if r.partition == p] for p in PARTITIONS}
    with_images = [r for p in PARTITIONS for r in by_part[p] if r.image_ids]
    writers = {
        p: _ShardedWriter(
            out_dir, p, sum(bool(r.image_ids) for r in by_part[p]), num_shards_per_split
        )
        for p in PARTITIONS
    }
    text_only = {p: [r for r in by_part[p] if not r.image_ids] for p in PARTITIONS}
    workers = num_workers or os.cpu_count() or 1
    tasks = [(r.image_ids, r.image_paths, image_short_side) for r in with_images]
    chunk = 1024
    with tqdm(total=len(with_images), unit="recipe", desc="photos", mininterval=1.0) as bar:
        results = _imap(tasks, workers)
        for start in range(0, len(with_images), chunk):
            batch = with_images[start : start + chunk]
            for raw_recipe, rec in zip(batch, _tokenize(tok, batch, limits), strict=True):
                for iid, data, why in next(results):
                    if data is None:
                        skipped.append({"id": iid, "reason": f"recipe {raw_recipe.id}: {why}"})
                    else:
                        rec["image_ids"].append(iid)
                        rec["images"].append(data)
                if rec["images"]:
                    writers[raw_recipe.partition].write(rec)
                else:  # no good photo left: keep the text
                    text_only[raw_recipe.partition].append(raw_recipe)
                bar.update(1)

    splits: dict[str, dict[str, int]] = {}
    for p in PARTITIONS:
        writers[p].close()
        if writers[p].count:
            splits[p] = {"recipes": writers[p].count, "images": writers[p].images}
    for p in PARTITIONS:
        recipes = text_only[p]
        if not recipes:
            continue
        split = p + records.TEXT_ONLY_SUFFIX
        writer = _ShardedWriter(out_dir, split, len(recipes), num_shards_per_split)
        for start in range(0, len(recipes), chunk):
            for rec in _tokenize(tok, recipes[start : start + chunk], limits):
                writer.write(rec)
        writer.close()
        splits[split] = {"recipes": writer.count, "images": 0}

    info = {
        "splits": splits,
        "skipped": skipped,
        "vocab_size": tok.get_vocab_size(),
        "num_classes": len(raw.class_names),
        "class_names": raw.class_names,
        "image_short_side": image_short_side,
        "limits": limits,
        "source": source or os.path.abspath(raw_dir),
    }
    tmp = os.path.join(out_dir, records.DATASET_INFO + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)
    os.replace(tmp, os.path.join(out_dir, records.DATASET_INFO))
    return info


def _define_flags() -> None:
    """Flags are defined only when run as a program, so importing this module never collides with
    the flags of `xmodal.main`."""
    from absl import flags

    flags.DEFINE_string("raw_dir", None, "Raw Recipe1M layout (layer1.json, layer2.json, ...).")
    flags.DEFINE_string("out_dir", None, "Where shards, tokenizer and dataset_info.json go.")
    flags.DEFINE_integer("image_short_side", 256, "Photos are downscaled to this short side.")
    flags.DEFINE_string(
        "num_shards_per_split", "auto", "'auto' (~1024 recipes a shard) or a count."
    )
    flags.DEFINE_string(
        "num_workers", "auto", "Image worker processes: 'auto' (one per core) or N."
    )
    flags.DEFINE_string("min_word_count", "auto", "'auto': 10 if train has > 100k recipes, else 1.")
    flags.DEFINE_integer("max_title_tokens", 15, "Title tokens kept.")
    flags.DEFINE_integer("max_ingredients", 20, "Ingredient lines kept.")
    flags.DEFINE_integer("max_instructions", 20, "Instruction sentences kept.")
    flags.DEFINE_integer("max_tokens", 15, "Tokens kept per ingredient / instruction line.")
    flags.mark_flags_as_required(["raw_dir", "out_dir"])


def _auto(value: str, name: str) -> int:
    """'auto' -> 0 (prepare's "choose for me"), else a non-negative integer."""
    if value == "auto":
        return 0
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise SystemExit(f"--{name} must be 'auto' or a non-negative integer, got {value!r}")
    return number


def _main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    info = prepare(
        f.raw_dir,
        f.out_dir,
        image_short_side=f.image_short_side,
        num_shards_per_split=_auto(f.num_shards_per_split, "num_shards_per_split"),
        num_workers=_auto(f.num_workers, "num_workers"),
        min_word_count=_auto(f.min_word_count, "min_word_count"),
        max_title_tokens=f.max_title_tokens,
        max_ingredients=f.max_ingredients,
        max_instructions=f.max_instructions,
        max_tokens=f.max_tokens,
    )
    counts = ", ".join(
        f"{k}: {v['recipes']} recipes / {v['images']} images" for k, v in info["splits"].items()
    )
    n_skipped = len(info["skipped"])
    print(f"wrote {f.out_dir}: {counts}; vocabulary {info['vocab_size']}; skipped {n_skipped}")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(_main)
