"""Evaluation-only and gallery data: raw data without a train split, prepared with a trained run's
vocabulary (`prepare --tokenizer_from`), evaluated and searched by that run; data of another
vocabulary is refused, naming both."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config

from xmodal import evaluate
from xmodal.apps import gallery, search
from xmodal.data import pipeline, prepare, records, tokenizer
from xmodal.run import CONFIG_FILE, Run


def _write_raw(raw, layer1, layer2, det):
    os.makedirs(raw, exist_ok=True)
    for name, data in (("layer1.json", layer1), ("layer2.json", layer2), ("det_ingrs.json", det)):
        with open(os.path.join(raw, name), "w") as f:
            json.dump(data, f)


@pytest.fixture(scope="module")
def test_only_raw(synthetic_raw, tmp_path_factory):
    """The test partition of the built-in raw data alone, without classes: someone's own test
    set or photo collection in the raw layout."""
    raw = str(tmp_path_factory.mktemp("own") / "raw")
    with open(os.path.join(synthetic_raw, "layer1.json")) as f:
        layer1 = [r for r in json.load(f) if r["partition"] == "test"]
    ids = {r["id"] for r in layer1}
    kept = {}
    for name in ("layer2.json", "det_ingrs.json"):
        with open(os.path.join(synthetic_raw, name)) as f:
            kept[name] = [e for e in json.load(f) if e["id"] in ids]
    _write_raw(raw, layer1, kept["layer2.json"], kept["det_ingrs.json"])
    os.symlink(os.path.join(synthetic_raw, "test"), os.path.join(raw, "test"))
    return raw


@pytest.fixture
def workdir(trained, tmp_path):
    """A copy of the session's trained run (its own eval_test.json stays as training wrote it)."""
    _, trained_dir, _ = trained
    shutil.copytree(trained_dir, tmp_path / "run")
    return str(tmp_path / "run")


def test_a_test_only_set_is_prepared_with_the_runs_vocabulary_evaluated_and_searched(
    trained, test_only_raw, workdir, tmp_path, capsys
):
    config, _, _ = trained
    with pytest.raises(ValueError, match=r"no usable recipe in the train partition.*--tokenizer_"):
        prepare.prepare(test_only_raw, str(tmp_path / "refused"), verbose=False)

    new = str(tmp_path / "new")
    cmd = [sys.executable, "-m", "xmodal.data.prepare", f"--raw_dir={test_only_raw}",
           f"--out_dir={new}", f"--tokenizer_from={workdir}", "--num_workers=1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(new, records.DATASET_INFO)) as f:
        info = json.load(f)
    assert set(info["splits"]) == {"test", "test_text"} and info["tokenizer_from"] == workdir
    for vocab in (workdir, config.data.dir):  # the run's very tokenizer
        with open(f"{vocab}/tokenizer.json", "rb") as a, open(f"{new}/tokenizer.json", "rb") as b:
            assert a.read() == b.read()
    source = pipeline.open_split(new, "test")
    recipes = [records.decode_record(source[i]) for i in range(len(source))]
    tok = tokenizer.load_tokenizer(config.data.dir)  # the ids are the run's words
    for r in recipes[:5]:
        assert r["title_ids"] == tokenizer.encode(tok, r["title"], 15)
        assert r["ingredient_ids"][0] == tokenizer.encode(tok, r["ingredients"][0], 15)

    # --mode=eval --config.data.dir=NEW
    results = evaluate.evaluate_checkpoint(tiny_config(new), workdir, which="latest")
    assert results["n_pairs"] == info["splits"]["test"]["recipes"] == len(recipes)
    assert results["data_dir"] == new and "full" in results["image_to_recipe"]
    with open(os.path.join(workdir, "eval_test.json")) as f:
        assert json.load(f) == results

    base, photo = str(tmp_path / "own"), str(tmp_path / "photo.jpg")
    with open(photo, "wb") as f:
        f.write(recipes[3]["images"][0])
    args = [f"--workdir={workdir}", f"--config.data.dir={new}"]
    search.run(["index", *args, "--split=test", f"--out={base}"])
    index = gallery.Gallery.load(f"{base}-recipe.npz")
    assert [it["id"] for it in index.items] == [r["id"] for r in recipes]
    hits = search.run(["image", *args, f"--index={base}-recipe.npz", "-k", "3", photo])
    assert len(hits) == 3 and {h["id"] for h in hits} <= {r["id"] for r in recipes}
    images = gallery.Gallery.load(f"{base}-image.npz")
    np.testing.assert_allclose(np.linalg.norm(images.embeddings, axis=1), 1, rtol=1e-5)

    # The same set as a TFDS dataset with the run's vocabulary, named instead of the recorded data.
    from xmodal.data.tfds import builder as tfds_recipe1m

    tfds_dir = str(tmp_path / "tfds")
    tfds_recipe1m.build(test_only_raw, tfds_dir, tokenizer_from=workdir, verbose=False)
    named = f"--config.data.tfds_dir={tfds_dir}"
    search.run(["index", f"--workdir={workdir}", named, "--split=test", f"--out={base}-tfds"])
    again = gallery.Gallery.load(f"{base}-tfds-recipe.npz")
    assert [it["id"] for it in again.items] == [r["id"] for r in recipes]
    np.testing.assert_array_equal(again.embeddings, index.embeddings)
    capsys.readouterr()


@pytest.fixture(scope="module")
def other_vocabulary(tmp_path_factory):
    """Data prepared with its own, different vocabulary (a few recipes, no photos needed)."""
    raw, out = (str(tmp_path_factory.mktemp(n)) for n in ("other_raw", "other"))
    layer1 = [
        dict(id=f"r{i}", url="u", partition=p, title=f"Quince tart {i}",
             ingredients=[{"text": "2 quinces"}], instructions=[{"text": "Bake the quinces."}])
        for i, p in enumerate(["train", "train", "test"])
    ]  # fmt: skip
    _write_raw(raw, layer1, [], [])
    with open(os.path.join(raw, "classes1M.pkl"), "wb") as f:
        pickle.dump({}, f)
        pickle.dump({0: "background"}, f)
    info = prepare.prepare(raw, out, verbose=False)
    return out, info["vocab_size"]


def test_data_of_another_vocabulary_is_refused_naming_both(trained, other_vocabulary, workdir):
    config, _, _ = trained
    other, other_size = other_vocabulary
    with open(os.path.join(config.data.dir, records.DATASET_INFO)) as f:
        run_size = json.load(f)["vocab_size"]
    assert other_size != run_size
    said = (
        f"vocabulary mismatch: the run in '{workdir}' was trained on '{config.data.dir}' with a "
        f"vocabulary of {run_size} tokens, but '{other}' has another vocabulary of {other_size} "
        "tokens"
    )
    message = f"(?s){re.escape(said)}.*{re.escape(f'--tokenizer_from={workdir}')}"
    with pytest.raises(ValueError, match=message):
        evaluate.evaluate_checkpoint(tiny_config(other), workdir)
    with pytest.raises(ValueError, match=message):
        search.run(["index", f"--workdir={workdir}", f"--config.data.dir={other}",
                    "--split=test", f"--out={workdir}/x"])  # fmt: skip

    # A run recorded before fingerprints and data.tfds_dir: its recorded data's tokenizer decides.
    path = os.path.join(workdir, CONFIG_FILE)
    with open(path) as f:
        record = json.load(f)
    del record["run"]["vocab_fingerprint"], record["data"]["tfds_dir"]
    os.remove(os.path.join(workdir, records.TOKENIZER_FILE))
    with open(path, "w") as f:
        json.dump(record, f)
    with pytest.raises(ValueError, match=message):
        Run.from_workdir(workdir, tiny_config(other))
    assert Run.from_workdir(workdir).data_dir == config.data.dir  # its own data reopens
