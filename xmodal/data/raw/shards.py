"""The shards of `prepare`: planned before any photo is read, each written on its own.

A shard is a contiguous run of recipes of one split (recipe order of layer1, ~1024 a shard), so the
output does not depend on the number of workers. It is written to a hidden temporary file and
renamed when complete; its counts, skipped photos, recipes sent to the text-only split and repairs
go to `DATA/.prepare/<shard>.json`, whose presence marks the shard as done (`shard_state`). Photos
are loaded per recipe by `load_recipe_photos` in a process pool, at most two shards in flight.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from xmodal.data import photos, records, tokenizer
from xmodal.data.jsonio import read_json, write_json
from xmodal.data.raw.recipe1m import RawRecipe

RECORDS_PER_SHARD = 1024  # with --num_shards_per_split=0 (auto)
STATE_DIR = ".prepare"


@dataclasses.dataclass
class Shard:
    split: str
    index: int
    num_shards: int
    recipes: list[RawRecipe]
    with_photos: bool

    @property
    def name(self) -> str:
        return records.shard_name(self.split, self.index, self.num_shards)


def plan_shards(
    split: str, recipes: list[RawRecipe], num_shards: int, with_photos: bool
) -> list[Shard]:
    """Contiguous, near-equal shards of `recipes` (0 = auto: ~RECORDS_PER_SHARD each)."""
    n = len(recipes)
    if n == 0:
        return []
    count = min(n, num_shards or math.ceil(n / RECORDS_PER_SHARD))
    return [
        Shard(split, i, count, recipes[i * n // count : (i + 1) * n // count], with_photos)
        for i in range(count)
    ]


PhotoResult = tuple[str, bytes | None, str, list[str]]  # image id, JPEG or None, reason, repairs


def load_recipe_photos(task: tuple[list[str], list[str], photos.PhotoSpec]) -> list[PhotoResult]:
    """Worker: one result per photo of one recipe."""
    ids, paths, spec = task
    out: list[PhotoResult] = []
    for iid, path in zip(ids, paths, strict=True):
        try:
            photo = photos.load_photo(path, spec)
            out.append((iid, photo.jpeg, "", photo.repairs))
        except photos.PhotoError as e:
            out.append((iid, None, f"{e} ({path})", []))
    return out


def photo_batches(
    pool: Any, shards: list[Shard], spec: photos.PhotoSpec
) -> Iterator[Iterator[list[PhotoResult]]]:
    """Per shard, its per-recipe photo results in order; the next shard is already queued while
    one is consumed, so workers never wait on the writer (and at most two shards are in flight)."""

    def submit(shard: Shard) -> Iterator[list[PhotoResult]]:
        tasks = [(r.image_ids, r.image_paths, spec) for r in shard.recipes]
        if pool is None:
            return map(load_recipe_photos, tasks)
        return pool.imap(load_recipe_photos, tasks, chunksize=4)

    todo = iter(shards)
    in_flight = deque(submit(s) for s in [next(todo, None), next(todo, None)] if s is not None)
    while in_flight:
        yield in_flight.popleft()
        nxt = next(todo, None)
        if nxt is not None:
            in_flight.append(submit(nxt))


def tokenize_recipes(tok: Any, recipes: list[RawRecipe], limits: dict) -> list[records.Recipe]:
    """Records (without images) for a chunk of recipes; one batched encode per field."""
    ingredients = [r.ingredients[: limits["max_ingredients"]] for r in recipes]
    instructions = [r.instructions[: limits["max_instructions"]] for r in recipes]
    n = limits["max_tokens"]
    titles = tokenizer.encode_batch(tok, [r.title for r in recipes], limits["max_title_tokens"])
    ingr_ids = iter(
        tokenizer.encode_batch(tok, [t for ts in ingredients for t in ts], n, ingredient=True)
    )
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


def write_shard(
    out_dir: str,
    shard: Shard,
    tok: Any,
    limits: dict,
    photo_results: Iterator[list[PhotoResult]] | None,
    bar: tqdm | None = None,
) -> dict:
    """Writes one shard (temporary file, then rename) and its state file; returns the state:
    record and photo counts, skipped photos, recipes sent to text-only, repairs by kind."""
    final = os.path.join(out_dir, shard.name)
    tmp = os.path.join(out_dir, f".{shard.name}.tmp")
    if os.path.exists(tmp):  # left by an interrupted run
        os.remove(tmp)
    state: dict[str, Any] = dict(recipes=0, images=0, skipped=[], text_only=[], repaired={})
    repaired: Counter[str] = Counter()
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
        for raw, rec in zip(
            shard.recipes, tokenize_recipes(tok, shard.recipes, limits), strict=True
        ):
            if photo_results is not None:
                for iid, data, why, repairs in next(photo_results):
                    if data is None:
                        state["skipped"].append({"id": iid, "reason": f"recipe {raw.id}: {why}"})
                    else:
                        rec["image_ids"].append(iid)
                        rec["images"].append(data)
                        repaired.update(repairs)
                if not rec["images"]:  # no good photo left: the text goes to the text-only split
                    state["text_only"].append(raw.id)
                    if bar is not None:
                        bar.update(1)
                    continue
            writer.write(records.encode_record(rec))
            state["recipes"] += 1
            state["images"] += len(rec["images"])
            if bar is not None:
                bar.update(1)
    finally:
        writer.close()
    state["repaired"] = dict(sorted(repaired.items()))
    os.replace(tmp, final)
    write_json(state, os.path.join(out_dir, STATE_DIR, shard.name + ".json"))
    return state


def shard_state(state_dir: str, shard: Shard) -> dict | None:
    """The state of a finished shard, or None when it still has to be written."""
    path = os.path.join(state_dir, shard.name + ".json")
    return read_json(path) if os.path.exists(path) else None
