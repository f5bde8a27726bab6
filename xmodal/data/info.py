"""Find the prepared data of a run and read what `prepare` recorded about it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from xmodal.data import records

RAW_MARKERS = ("layer1.json", "layer2.json")


def load_info(data_dir: str) -> dict[str, Any]:
    """`DATA/dataset_info.json`, with a clear error when the folder is not prepared data."""
    path = os.path.join(data_dir, records.DATASET_INFO)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data dir {data_dir!r} does not exist")
    if not os.path.exists(path):
        if any(os.path.exists(os.path.join(data_dir, m)) for m in RAW_MARKERS):
            raise FileNotFoundError(
                f"{data_dir!r} holds the raw Recipe1M layout, not prepared data; run "
                f"`python -m xmodal.data.prepare --raw_dir={data_dir} --out_dir=PREPARED` and "
                "pass --config.data.dir=PREPARED"
            )
        raise FileNotFoundError(
            f"{path!r} is missing: {data_dir!r} is not a prepared data dir (or its preparation "
            "did not finish); run `python -m xmodal.data.prepare` into it"
        )
    with open(path) as f:
        return json.load(f)


def resolve_data_dir(data_config: Any) -> str:
    """`config.data.dir`, else the built-in synthetic dataset (made and prepared on first use)."""
    if data_config.dir:
        return os.path.abspath(os.path.expanduser(data_config.dir))
    from xmodal.data import synthetic  # deferred: only the built-in route needs the generator

    syn = data_config.synthetic
    return synthetic.ensure_builtin_dataset(
        data_config.cache_dir,
        num_recipes=syn.num_recipes,
        image_size=syn.image_size,
        seed=syn.seed,
    )


def split_size(info: dict[str, Any], split: str) -> int:
    return int(info["splits"].get(split, {}).get("recipes", 0))


def split_metadata(
    data_dir: str, split: str, *, limit: int | None = None, fields: Sequence[str] = ("id",)
) -> list[dict[str, Any]]:
    """`fields` of the first `limit` records of `split`, in record order (the order in which
    `xmodal.training.embed.Embedder` returns a split). Reads the records without decoding any
    photo."""
    from xmodal.data import pipeline  # deferred: pipeline imports Grain

    source = pipeline.open_split(data_dir, split)
    n = len(source) if limit is None else min(limit, len(source))
    out = []
    for start in range(0, n, 1024):
        for data in source.__getitems__(list(range(start, min(n, start + 1024)))):
            rec = records.decode_record(data)
            out.append({f: rec[f] for f in fields})
    return out
