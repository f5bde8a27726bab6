"""Find the prepared data of a run and read what `prepare` recorded about it; `read_json` reads
any JSON file the project is handed (dataset info, a run's config, search inputs) with one clear
error naming the file, and `write_json` writes one atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from xmodal.data import records, tfds_records

RAW_MARKERS = ("layer1.json", "layer2.json")
INFO_KEYS = ("splits", "vocab_size")  # what every use of prepared data reads


def parse_json(text: str | bytes, source: str, *, hint: str = "") -> Any:
    """`json.loads(text)`; malformed JSON is a ValueError naming `source`, the line and column
    (not a bare JSONDecodeError traceback), with `hint` (what the file is, how to redo it)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"at line {e.lineno}, column {e.colno}" if e.doc.strip() else "(empty)"
        raise _error(f"{source} is not valid JSON {where}: {e.msg}", hint) from None
    except UnicodeDecodeError as e:
        raise _error(f"{source} is not UTF-8 text: {e.reason}", hint) from None


def read_json(
    path: str, *, kind: type | tuple[type, ...] = dict, keys: Sequence[str] = (), hint: str = ""
) -> Any:
    """The JSON file `path`, checked to be a `kind` (dict: a JSON object) at the top level
    holding `keys`; every fault is one ValueError naming the file."""
    with open(path, "rb") as f:
        data = parse_json(f.read(), path, hint=hint)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(data, kinds):
        want = " or ".join(_json_name(k) for k in kinds)
        raise _error(f"{path} holds a JSON {_json_name(type(data))}, expected a JSON {want}", hint)
    missing = [k for k in keys if k not in data]
    if missing:
        raise _error(f"{path} lacks {', '.join(map(repr, missing))}", hint)
    return data


def write_json(obj: Any, path: str, *, indent: int = 1, default: Any = None) -> None:
    """Atomic JSON write (a temporary file, then a rename): a reader, another process of the job
    or a rerun after a crash sees the old file or the whole new one, never half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, default=default)
    os.replace(tmp, path)


def _json_name(kind: type) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(kind, "number" if kind in (int, float) else kind.__name__)


def _error(message: str, hint: str) -> ValueError:
    return ValueError(f"{message}; {hint}" if hint else message)


def load_info(data_dir: str) -> dict[str, Any]:
    """`DATA/dataset_info.json` (for a TFDS dataset: the `metadata.json` of its version folder,
    TFDS owning its dataset_info.json), with a clear error when the folder is not prepared data."""
    path = os.path.join(data_dir, records.DATASET_INFO)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data dir {data_dir!r} does not exist")
    if tfds_records.is_dataset_dir(data_dir):
        hint = (
            f"{data_dir!r} is a TFDS dataset not built by xmodal.data.tfds_recipe1m (or its "
            "build did not finish); build it with `python -m xmodal.data.tfds_recipe1m`"
        )
        meta = os.path.join(data_dir, tfds_records.METADATA_FILE)
        if not os.path.exists(meta):
            raise FileNotFoundError(f"{meta!r} is missing: {hint}")
        return read_json(meta, keys=INFO_KEYS, hint=hint)
    if not os.path.exists(path):
        if tfds_records.find_dataset(data_dir):
            raise FileNotFoundError(
                f"{data_dir!r} holds a TFDS dataset, not prepared shards; pass "
                f"--config.data.tfds_dir={data_dir} (and no data.dir)"
            )
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
    hint = f"prepare {data_dir!r} again with `python -m xmodal.data.prepare`"
    return read_json(path, keys=INFO_KEYS, hint=hint)


# The two ways a config names its data (`data.<field>`); neither set: the built-in dataset.
DATA_LOCATIONS = ("dir", "tfds_dir")


def names_data(data_config: Any) -> bool:
    """Whether the config names its data (else a reopened run reads the data it recorded)."""
    return any(data_config[k] for k in DATA_LOCATIONS)


def resolve_data_dir(data_config: Any) -> str:
    """`config.data.dir`; else the version folder of the TFDS dataset in `config.data.tfds_dir`
    (the `--data_dir` it was built into); else the built-in synthetic dataset (made and prepared
    on first use)."""
    if data_config.dir and data_config.tfds_dir:
        raise ValueError(
            f"data.dir={data_config.dir!r} and data.tfds_dir={data_config.tfds_dir!r} both name "
            "the data; set one (data.dir: prepared shards, data.tfds_dir: a TFDS dataset)"
        )
    if data_config.dir:
        return os.path.abspath(os.path.expanduser(data_config.dir))
    if data_config.tfds_dir:
        return tfds_records.dataset_dir(data_config.tfds_dir)
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
