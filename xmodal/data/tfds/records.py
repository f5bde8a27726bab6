"""The TFDS form of prepared data: a dataset built by `xmodal.data.tfds.builder`, found on disk
and read back as the `records.Recipe` dicts the pipeline reads from prepared shards.

Layout (TFDS's own): DATA_DIR/recipe1m/<version>/ holds TFDS's `dataset_info.json` and
`features.json`, the ArrayRecord shards `recipe1m-<split>.array_record-NNNNN-of-NNNNN`,
`metadata.json` (what `prepare` recorded: split counts, skipped and repaired photos, vocabulary
size, class names, text limits) and `tokenizer.json`. That version folder is a run's data dir
(`config.data.tfds_dir` names DATA_DIR, as `tfds.data_source(name, data_dir=DATA_DIR)` does).
TFDS's `dataset_info.json` has the name of prepare's but another content: for a TFDS dataset,
xmodal's dataset info is `metadata.json` (`xmodal.data.info.load_info` picks it).

One recipe is one example. Text stays text; the token ids of the ingredient and instruction lines
are stored flattened with their line lengths (writing a nested ragged sequence needs TensorFlow);
photos are Image features holding the very JPEG bytes `prepare` made. Reading keeps them encoded
(`_keep_encoded`): the pipeline decodes only the photo an example uses, in JPEG draft mode, as it
does for prepared shards (TFDS would decode every photo of the recipe).

TensorFlow Datasets is optional (`pip install 'xmodal[tfds]'`) and imported only when a TFDS
dataset is built or read; TensorFlow is never needed: TFDS reads ArrayRecord into numpy.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

import numpy as np

from xmodal.data import records

BUILDER_NAME = "recipe1m"
FEATURES_FILE = "features.json"  # with TFDS's dataset_info.json: marks a TFDS dataset folder
METADATA_FILE = "metadata.json"  # xmodal's dataset info of a TFDS dataset
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
TEXT_FIELDS = ("id", "partition", "title")
TEXT_LIST_FIELDS = ("ingredients", "instructions", "clean_ingredients", "image_ids")
LINE_FIELDS = ("ingredient", "instruction")  # <name>_ids flattened + <name>_lengths


def import_tfds() -> Any:
    """`tensorflow_datasets`, or an ImportError saying how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "TFDS datasets need tensorflow-datasets (not TensorFlow): pip install 'xmodal[tfds]'"
        ) from e
    return tfds


def is_dataset_dir(path: str) -> bool:
    """Whether `path` is the version folder of a built TFDS dataset."""
    return all(
        os.path.isfile(os.path.join(path, name)) for name in (FEATURES_FILE, records.DATASET_INFO)
    )


def find_dataset(path: str) -> str | None:
    """The version folder of the TFDS dataset `path` names, or None: `path` itself, the newest
    version under `path` (the dataset's folder), or under `path/recipe1m` (a TFDS data_dir)."""
    if is_dataset_dir(path):
        return path
    for folder in (os.path.join(path, BUILDER_NAME), path):
        if not os.path.isdir(folder):
            continue
        versions = [
            v
            for v in os.listdir(folder)  # TFDS's unfinished builds are "<version>.incomplete..."
            if _VERSION.match(v) and is_dataset_dir(os.path.join(folder, v))
        ]
        if versions:
            newest = max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
            return os.path.join(folder, newest)
    return None


def dataset_dir(path: str) -> str:
    """`find_dataset`, or a FileNotFoundError saying how to build one."""
    path = os.path.abspath(os.path.expanduser(path))
    found = find_dataset(path) if os.path.isdir(path) else None
    if found is None:
        raise FileNotFoundError(
            f"no TFDS {BUILDER_NAME} dataset in {path!r}; build one with "
            f"`python -m xmodal.data.tfds.builder --raw_dir=RAW --data_dir={path}`"
        )
    return found


def features() -> Any:
    """The TFDS features of one recipe (`to_example` fills them)."""
    tfds = import_tfds()
    f = tfds.features
    ints = f.Sequence(np.int32)
    spec: dict[str, Any] = {k: f.Text() for k in TEXT_FIELDS}
    spec |= {k: f.Sequence(f.Text()) for k in TEXT_LIST_FIELDS}
    spec |= {"class_id": np.int32, "title_ids": ints}
    spec |= {f"{line}_{part}": ints for line in LINE_FIELDS for part in ("ids", "lengths")}
    spec["images"] = f.Sequence(f.Image(encoding_format="jpeg"))
    return f.FeaturesDict(spec)


def to_example(recipe: records.Recipe) -> dict[str, Any]:
    """A prepared record as a TFDS example: JPEG bytes handed over as file objects (TFDS would
    need TensorFlow to encode pixels), line token ids flattened with their lengths."""
    out: dict[str, Any] = {k: recipe[k] for k in (*TEXT_FIELDS, *TEXT_LIST_FIELDS)}
    out["class_id"] = recipe["class_id"]
    out["title_ids"] = recipe["title_ids"]
    for line in LINE_FIELDS:
        ids = recipe[f"{line}_ids"]  # type: ignore[literal-required]
        out[f"{line}_ids"] = [i for sentence in ids for i in sentence]
        out[f"{line}_lengths"] = [len(sentence) for sentence in ids]
    out["images"] = [io.BytesIO(jpeg) for jpeg in recipe["images"]]  # one file object each
    return out


def to_recipe(example: dict[str, Any]) -> records.Recipe:
    """A TFDS example (read with `_keep_encoded` images) as the prepared record."""
    text = lambda b: b.decode("utf-8")
    out: dict[str, Any] = {k: text(example[k]) for k in TEXT_FIELDS}
    out |= {k: [text(b) for b in example[k]] for k in TEXT_LIST_FIELDS}
    out["class_id"] = int(example["class_id"])
    out["title_ids"] = np.asarray(example["title_ids"], np.int64).tolist()
    for line in LINE_FIELDS:
        ids = np.asarray(example[f"{line}_ids"], np.int64).tolist()
        ends = np.cumsum(np.asarray(example[f"{line}_lengths"], np.int64)).tolist()
        out[f"{line}_ids"] = [ids[a:b] for a, b in zip([0, *ends][:-1], ends, strict=True)]
    out["images"] = [bytes(jpeg) for jpeg in example["images"]]
    return records.empty_recipe(**out)


def _keep_encoded() -> Any:
    """A TFDS decoder that returns a sequence of images as their encoded bytes (TFDS's own
    `SkipDecoding` lacks the numpy path for sequences)."""
    tfds = import_tfds()

    class KeepEncoded(tfds.decode.SkipDecoding):
        def decode_batch_example_np(self, example: Any) -> Any:
            return example

    return KeepEncoded()


class TfdsSplit:
    """Random access to one split of a TFDS dataset as `records.Recipe` dicts: what
    `pipeline.open_split` returns for a TFDS data dir. Pickles as (folder, split), so Grain's
    worker processes reopen it themselves."""

    def __init__(self, dataset_dir: str, split: str):
        self.dataset_dir = dataset_dir
        self.split = split
        self._source: Any = None
        self._length = len(self._open())

    def _open(self) -> Any:
        if self._source is None:
            builder = import_tfds().builder_from_directory(self.dataset_dir)
            if self.split not in builder.info.splits:
                raise FileNotFoundError(
                    f"no split {self.split!r} in the TFDS dataset {self.dataset_dir!r} (it has "
                    f"{', '.join(sorted(builder.info.splits))})"
                )
            decoders = {"images": _keep_encoded()}
            self._source = builder.as_data_source(self.split, decoders=decoders)
        return self._source

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> records.Recipe:
        return to_recipe(self._open()[index])

    def __getitems__(self, indices: list[int]) -> list[records.Recipe]:
        return [to_recipe(e) for e in self._open().__getitems__(list(indices))]

    def __repr__(self) -> str:
        return f"TfdsSplit({self.dataset_dir!r}, {self.split!r})"
