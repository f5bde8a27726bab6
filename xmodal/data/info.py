"""Find the prepared data a config names and read what `prepare` recorded about it. The built-in
dataset is not found here but made by `xmodal.data.builtin.dataset` (the run's set-up decides)."""

from __future__ import annotations

import os
from typing import Any

from xmodal.data import records
from xmodal.data.jsonio import read_json
from xmodal.data.tfds import records as tfds_records

RAW_MARKERS = ("layer1.json", "layer2.json")
INFO_KEYS = ("splits", "vocab_size")  # what every use of prepared data reads


def load_info(data_dir: str) -> dict[str, Any]:
    """`DATA/dataset_info.json` (for a TFDS dataset: the `metadata.json` of its version folder,
    TFDS owning its dataset_info.json), with a clear error when the folder is not prepared data."""
    path = os.path.join(data_dir, records.DATASET_INFO)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data dir {data_dir!r} does not exist")
    if tfds_records.is_dataset_dir(data_dir):
        hint = (
            f"{data_dir!r} is a TFDS dataset not built by xmodal.data.tfds.builder (or its "
            "build did not finish); build it with `python -m xmodal.data.tfds.builder`"
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


def locate(data_config: Any) -> str | None:
    """The data dir the config names: `config.data.dir`, or the version folder of the TFDS
    dataset in `config.data.tfds_dir` (the `--data_dir` it was built into); None when it names
    none (the built-in dataset, which `xmodal.data.builtin.dataset` makes)."""
    if data_config.dir and data_config.tfds_dir:
        raise ValueError(
            f"data.dir={data_config.dir!r} and data.tfds_dir={data_config.tfds_dir!r} both name "
            "the data; set one (data.dir: prepared shards, data.tfds_dir: a TFDS dataset)"
        )
    if data_config.dir:
        return os.path.abspath(os.path.expanduser(data_config.dir))
    if data_config.tfds_dir:
        return tfds_records.dataset_dir(data_config.tfds_dir)
    return None


def split_size(info: dict[str, Any], split: str) -> int:
    return int(info["splits"].get(split, {}).get("recipes", 0))
