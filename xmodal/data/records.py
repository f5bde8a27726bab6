"""The on-disk record of one recipe, shared by `prepare` (writer) and the pipeline (reader).

One ArrayRecord record per recipe, msgpack-encoded, so a reader needs no schema compiler and a
record is self-describing. Token ids are stored truncated to the limits chosen at prepare time;
the pipeline pads or truncates further to the limits of the run.
"""

from __future__ import annotations

import glob
import os
from typing import Any, TypedDict

import msgpack

DATASET_INFO = "dataset_info.json"
TOKENIZER_FILE = "tokenizer.json"


class Recipe(TypedDict):
    id: str
    partition: str
    title: str
    ingredients: list[str]
    instructions: list[str]
    clean_ingredients: list[str]  # det_ingrs names marked valid
    class_id: int  # 0 = background / unlabelled
    title_ids: list[int]
    ingredient_ids: list[list[int]]
    instruction_ids: list[list[int]]
    image_ids: list[str]
    images: list[bytes]  # JPEG bytes, resized at prepare time


def encode_record(recipe: Recipe) -> bytes:
    return msgpack.packb(dict(recipe), use_bin_type=True)


def decode_record(data: bytes | Recipe) -> Recipe:
    """A record as a split source returns it: msgpack bytes of prepared shards, or already the
    dict (a TFDS dataset's split, `xmodal.data.tfds.records.TfdsSplit`)."""
    if isinstance(data, dict):
        return data
    return msgpack.unpackb(data, raw=False)


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.array_record"


def shard_paths(data_dir: str, split: str) -> list[str]:
    """All shards of `split`, in order; raises if there are none."""
    paths = sorted(glob.glob(os.path.join(data_dir, f"{split}-?????-of-?????.array_record")))
    if not paths:
        raise FileNotFoundError(
            f"no shards for split {split!r} in {data_dir!r}; run "
            f"`python -m xmodal.data.prepare --raw_dir=RAW --out_dir={data_dir}` first"
        )
    return paths


def empty_recipe(**fields: Any) -> Recipe:
    """A Recipe with every field present (tests and writers fill in what they have)."""
    base: dict[str, Any] = dict(
        id="",
        partition="train",
        title="",
        ingredients=[],
        instructions=[],
        clean_ingredients=[],
        class_id=0,
        title_ids=[],
        ingredient_ids=[],
        instruction_ids=[],
        image_ids=[],
        images=[],
    )
    base.update(fields)
    return base  # type: ignore[return-value]
