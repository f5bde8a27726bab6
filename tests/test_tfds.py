"""The TFDS route (xmodal.data.tfds.builder, tfds_records): the builder writes exactly prepare's
records and report, on the built-in data and on a crawl's faults; `config.data.tfds_dir` feeds
training, evaluation and search through the same pipeline; no TensorFlow anywhere."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from array_record.python.array_record_data_source import ArrayRecordDataSource
from conftest import tiny_config
from PIL import Image
from test_prepare_faults import (  # noqa: F401
    EXPECTED_REPAIRED,
    MAX_PIXELS,
    RECIPE_PHOTOS,
    SHORT,
    _photos,
    assert_faults_reported,
    faulty_raw,
)

from xmodal.apps import gallery, search
from xmodal.data import info as data_info
from xmodal.data import pipeline, prepare, records
from xmodal.data.tfds import records as tfds_records
from xmodal.training.loop import train_and_evaluate

SPLITS = {"train", "val", "test", "train_text", "val_text", "test_text"}


def _records(data_dir, split):
    source = pipeline.open_split(data_dir, split)
    return [records.decode_record(source[i]) for i in range(len(source))]


@pytest.fixture(scope="module")
def reference(synthetic_raw, tiny_data, tmp_path_factory):
    """The built-in raw data prepared the usual way (with the tiny run's vocabulary, so a model
    of the tiny preset fits it)."""
    out = str(tmp_path_factory.mktemp("prepared"))
    prepare.prepare(synthetic_raw, out, num_workers=2, tokenizer_from=tiny_data, verbose=False)
    return out


@pytest.fixture(scope="module")
def built(synthetic_raw, tiny_data, tmp_path_factory):
    """The same raw data built as a TFDS dataset by the command line, as a user runs it."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    cmd = [sys.executable, "-m", "xmodal.data.tfds.builder", f"--raw_dir={synthetic_raw}",
           f"--data_dir={data_dir}", f"--tokenizer_from={tiny_data}",
           "--num_workers=2"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"--config.data.tfds_dir={data_dir}" in run.stdout
    return data_dir


def test_tfds_build_holds_exactly_the_prepared_records_and_report(built, reference):
    version = os.path.join(built, "recipe1m", "1.0.0")
    assert tfds_records.dataset_dir(built) == version
    assert not os.path.exists(os.path.join(built, "downloads", "xmodal-prepare"))  # cleaned up
    with open(os.path.join(reference, records.DATASET_INFO)) as f:
        info = json.load(f)
    assert set(info["splits"]) == SPLITS and info["skipped"] == []
    assert data_info.load_info(version) == info  # prepare's report is the TFDS metadata
    name = records.TOKENIZER_FILE
    with open(os.path.join(version, name), "rb") as a, open(f"{reference}/{name}", "rb") as b:
        assert a.read() == b.read()
    for split, counts in info["splits"].items():
        # Every record, field by field (the JPEG bytes included) and in prepare's order.
        want = [records.decode_record(d) for d in ArrayRecordDataSource(
            records.shard_paths(reference, split))]  # fmt: skip
        assert _records(version, split) == want and len(want) == counts["recipes"], split

    # Plain TFDS reads it too, decoding the photos to the pixels of prepare's JPEGs.
    import tensorflow_datasets as tfds

    test = tfds.data_source("recipe1m", data_dir=built)["test"]
    first = _records(reference, "test")[0]
    example = test[0]
    assert example["id"].decode() == first["id"] and len(test) == info["splits"]["test"]["recipes"]
    assert list(example["title_ids"]) == first["title_ids"]
    pixels = np.asarray(Image.open(io.BytesIO(first["images"][0])).convert("RGB"))
    np.testing.assert_array_equal(example["images"][0], pixels)
    assert "tensorflow" not in sys.modules  # built (in-process too) and read without it


def test_tfds_build_of_a_faulty_crawl_keeps_prepares_report(faulty_raw, tmp_path):  # noqa: F811
    from xmodal.data.tfds import builder as tfds_recipe1m

    version = tfds_recipe1m.build(
        faulty_raw,
        str(tmp_path),
        image_short_side=SHORT,
        num_workers=2,
        max_image_pixels=MAX_PIXELS,
        verbose=False,
    )
    info = data_info.load_info(version)
    assert_faults_reported(info)
    import tensorflow_datasets as tfds

    assert tfds.builder_from_directory(version).info.metadata["repaired"] == EXPECTED_REPAIRED
    good = {i: size for i, (_, (kind, size)) in _photos().items() if kind == "ok"}
    assert info["splits"] == {
        "train": {"recipes": 3, "images": len(good)},
        "val": {"recipes": 1, "images": 1},
        "train_text": {"recipes": 1, "images": 0},
        "val_text": {"recipes": 1, "images": 0},
    }
    train = {r["id"]: r for r in _records(version, "train")}
    assert sorted(train) == ["formats", "good", "modes"]
    for rid, rec in train.items():
        assert rec["image_ids"] == [i for i in RECIPE_PHOTOS[rid] if i in good]
        sizes = [Image.open(io.BytesIO(jpeg)).size for jpeg in rec["images"]]
        assert sizes == [good[i] for i in rec["image_ids"]]
    assert train["good"]["title"] == "Café soup ?with rice" and train["good"]["class_id"] == 2
    assert [r["id"] for r in _records(version, "train_text")] == ["allbad"]


def test_training_batches_from_tfds_are_the_prepared_ones(built, reference):
    version = tfds_records.dataset_dir(built)
    data = tiny_config("", **{"data.labelled_fraction": 0.5}).data  # AdaMine's class-aware order
    datasets = (
        lambda d: pipeline.train_dataset(d, data, batch_size=8, seed=3),
        lambda d: pipeline.text_only_dataset(d, data, batch_size=4, seed=3, prefix="t/"),
    )
    for make in datasets:
        ours, theirs = iter(make(version)), iter(make(reference))
        for _ in range(2):
            a, b = next(ours), next(theirs)
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_training_eval_and_search_read_the_tfds_dataset(built, reference, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    # The session's tiny run on TFDS data: the same compiled programs (a shared compile cache).
    every = {f"train.{k}_every": 30 for k in ("log", "eval", "checkpoint")}
    config = tiny_config("", **every, **{"data.tfds_dir": built})
    result = train_and_evaluate(config, workdir)
    version = tfds_records.dataset_dir(built)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["run"]["data_dir"] == version
    test_ids = [r["id"] for r in _records(reference, "test")]
    assert result["test"]["n_pairs"] == len(test_ids) and result["test"]["data_dir"] == version

    # The search index of the run's TFDS data (as recorded) and of the prepared data (named on
    # the command line: it replaces the recorded data.tfds_dir) are the same: one pipeline.
    galleries = {}
    for name, extra in (("tfds", []), ("prepared", [f"--config.data.dir={reference}"])):
        base = str(tmp_path / name)
        search.run(["index", f"--workdir={workdir}", "--split=test", f"--out={base}", *extra])
        galleries[name] = [gallery.Gallery.load(f"{base}-{k}.npz") for k in ("image", "recipe")]
    for i in range(2):  # image, recipe
        tfds_side, prepared_side = galleries["tfds"][i], galleries["prepared"][i]
        assert [it["id"] for it in tfds_side.items] == test_ids
        assert [it["id"] for it in prepared_side.items] == test_ids
        np.testing.assert_array_equal(tfds_side.embeddings, prepared_side.embeddings)
    capsys.readouterr()


def test_data_locations_are_named_once_and_clearly(built, tmp_path):
    both = tiny_config(str(tmp_path), **{"data.tfds_dir": built}).data
    with pytest.raises(ValueError, match=r"data.dir=.* and data.tfds_dir=.* both name the data"):
        data_info.locate(both)
    empty = tiny_config("", **{"data.tfds_dir": str(tmp_path)}).data
    with pytest.raises(FileNotFoundError, match=r"python -m xmodal.data.tfds.builder --raw_dir"):
        data_info.locate(empty)
    with pytest.raises(FileNotFoundError, match=r"holds a TFDS dataset.*--config.data.tfds_dir"):
        data_info.load_info(built)  # given as data.dir
    with pytest.raises(FileNotFoundError, match=r"no split 'nope'.*it has test, test_text"):
        pipeline.open_split(tfds_records.dataset_dir(built), "nope")


def test_a_tfds_build_refuses_png_photos(tmp_path):
    from xmodal.data.tfds.builder import Recipe1M

    with pytest.raises(ValueError, match="photo_resize=torchvision stores PNG photos"):
        Recipe1M(data_dir=str(tmp_path), prepare_options={"photo_resize": "torchvision"})
