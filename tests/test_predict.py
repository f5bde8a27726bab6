"""Photo -> ingredients (xmodal.predict; its command line xmodal.apps.predict) on a trained tiny
checkpoint, ingredient P/R/F1, and the extra text-only training batches (xmodal.data.pipeline /
xmodal.training.loop)."""

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config

from xmodal import predict
from xmodal.data import decoder_targets, pipeline, records, schema
from xmodal.data.schema import TEXT_ONLY_PREFIX
from xmodal.run import Run, check_config
from xmodal.training import loop as train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def decoder_run(trained, tiny_data, tmp_path_factory):
    """A tiny run with the cross decoder: the shared `trained` run when the tiny preset has the
    decoder on (the default), else a run of its own."""
    config, workdir, _ = trained
    if config.model.cross_decoder.enabled and config.loss.cross_decoder:
        return config, workdir
    from xmodal.training.loop import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("decoder_run"))
    config = tiny_config(
        tiny_data,
        **{"model.cross_decoder.enabled": True, "loss.cross_decoder": 1.0},
        **{"train.eval_at_end": False},
    )
    train_and_evaluate(config, workdir)
    return config, workdir


def _brute_prf(pred, ref):
    """Per-recipe and pooled precision / recall / F1 by counting names one by one."""
    tp = fp = fn = 0
    per = []
    for p, r in zip(pred, ref, strict=True):
        p, r = sorted(set(p)), sorted(set(r))
        t = sum(1 for x in p if x in r)
        tp, fp, fn = tp + t, fp + len(p) - t, fn + len(r) - t
        pr = t / len(p) if p else 0.0
        rc = t / len(r) if r else 0.0
        per.append((pr, rc, 0.0 if pr + rc == 0 else 2 * pr * rc / (pr + rc)))
    mp = tp / (tp + fp) if tp + fp else 0.0
    mr = tp / (tp + fn) if tp + fn else 0.0
    return {
        "micro_precision": mp,
        "micro_recall": mr,
        "micro_f1": 0.0 if mp + mr == 0 else 2 * mp * mr / (mp + mr),
        "macro_precision": sum(x[0] for x in per) / len(per),
        "macro_recall": sum(x[1] for x in per) / len(per),
        "macro_f1": sum(x[2] for x in per) / len(per),
    }


def test_ingredient_scores_match_brute_force():
    rng = np.random.default_rng(0)
    names = [f"ing{i}" for i in range(8)]
    for _ in range(20):
        n = int(rng.integers(1, 6))
        pred = [list(rng.choice(names, int(rng.integers(0, 5)))) for _ in range(n)]
        ref = [list(rng.choice(names, int(rng.integers(0, 5)))) for _ in range(n)]
        got = predict.ingredient_scores(pred, ref)
        for k, v in _brute_prf(pred, ref).items():
            assert got[k] == pytest.approx(v), k
    perfect = predict.ingredient_scores([["a", "b"]], [["b", "a"]])
    assert perfect["micro_f1"] == perfect["macro_f1"] == 1.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        predict.ingredient_scores([["a"], ["b"]], [["a"]])


def test_title_scores_count_shared_words():
    got = predict.title_scores(
        ["tomato pasta", "garlic garlic soup", "", "green salad"],
        ["tomato pasta", "garlic soup", "", "fruit tart"],
    )
    assert got["title_exact_match"] == pytest.approx(2 / 4)
    # per title: 1; P 2/3 R 1 -> 0.8; empty pair 1; nothing shared 0
    assert got["title_word_f1"] == pytest.approx((1 + 0.8 + 1 + 0) / 4)
    with pytest.raises(ValueError, match="1 predicted titles for 2"):
        predict.title_scores(["a"], ["a", "b"])


def _test_photo(data_dir, path):
    source = pipeline.open_split(data_dir, "test")
    recipe = records.decode_record(source[0])
    with open(path, "wb") as f:
        f.write(recipe["images"][0])
    return recipe


def test_predictor_python_api_and_bad_images(decoder_run, tmp_path):
    config, workdir = decoder_run
    photo = str(tmp_path / "photo.jpg")
    _test_photo(config.data.dir, photo)
    p = predict.Predictor.from_workdir(workdir, config, which="latest")
    image = p.load_image(photo)
    assert image.shape == (config.data.image_size, config.data.image_size, 3)
    pair = np.stack([image, image[::-1]])  # one batch shape: one compiled decoder
    out = p.predict(pair)
    assert len(out) == 2
    for o in out:
        assert set(o) == {"ingredients", "title"}
        assert isinstance(o["title"], str) and all(isinstance(x, str) for x in o["ingredients"])
    ids = p.predict_ids(pair)
    assert ids.shape == (2, config.data.max_decoder_tokens) and (ids[:, 0] == schema.BOS_ID).all()
    p.predict_ids(pair, beam=2, length_penalty=0.6)
    compiled = p._decode._cache_size()
    p.predict_ids(pair, beam=2, length_penalty=1.0)  # another penalty: the same compiled search
    assert p._decode._cache_size() == compiled
    bad = tmp_path / "not_a_photo.jpg"
    bad.write_bytes(b"hello")
    with pytest.raises(ValueError, match=r"cannot read .* as an image"):
        p.load_image(str(bad))
    with pytest.raises(ValueError, match="images must be uint8"):
        p.predict(pair.astype(np.float32))


def test_cli_describes_a_photo_and_scores_the_test_split(decoder_run, tmp_path):
    config, workdir = decoder_run
    photo = str(tmp_path / "photo.jpg")
    _test_photo(config.data.dir, photo)
    cmd = [
        sys.executable,
        "-m",
        "xmodal.apps.predict",
        "--config=configs/tnlbt.py:tiny",
        f"--config.data.dir={config.data.dir}",
        f"--workdir={workdir}",
        f"--image={photo}",
        "--split=test",
        "--limit=8",
        "--beam=2",
        "--length_penalty=0.6",
    ]
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads(proc.stdout.splitlines()[0])
    assert first["image"] == photo and isinstance(first["ingredients"], list)
    with open(os.path.join(workdir, "ingredients_test.json")) as f:
        scores = json.load(f)
    assert scores["split"] == "test" and scores["n_recipes"] == 8 and scores["beam"] == 2
    assert scores["length_penalty"] == 0.6
    # The command scores as the Python API does on the same checkpoint and recipes.
    predictor = predict.Predictor.from_workdir(workdir, config, which=None)
    api = predict.evaluate_ingredients(
        predictor, str(tmp_path), split="test", beam=2, length_penalty=0.6, limit=8
    )
    for k in (
        "micro_precision",
        "micro_recall",
        "micro_f1",
        "macro_f1",
        "title_exact_match",
        "title_word_f1",
    ):
        assert 0.0 <= scores[k] <= 1.0 and scores[k] == pytest.approx(api[k]), k


def test_text_only_batches_resume_where_they_were(tiny_data):
    config = tiny_config(tiny_data, **{"train.text_only_batch_size": 8})
    with open(os.path.join(tiny_data, records.DATASET_INFO)) as f:
        info = json.load(f)
    from xmodal.runtime import sharding

    run = Run.create(config, "", mesh=sharding.make_mesh())
    assert run.info == info
    make = lambda: train.train_iterator(run)
    it = make()
    assert isinstance(it, pipeline.ZipIterator)
    first = next(it)
    assert first["image"].shape[0] == 16 and first[TEXT_ONLY_PREFIX + "title"].shape[0] == 8
    assert first["decoder_tokens"].shape == (16, config.data.max_decoder_tokens)
    next(it)
    saved = json.dumps(it.get_state()).encode()  # what the checkpoint handler stores
    expected = [next(it) for _ in range(2)]
    resumed = make()
    resumed.set_state(saved)
    for want, got in zip(expected, itertools.islice(resumed, 2), strict=True):
        assert set(want) == set(got)
        for k in want:
            np.testing.assert_array_equal(want[k], got[k])


def test_text_only_batches_need_the_split(tiny_data, tmp_path):
    config = tiny_config(tiny_data, **{"train.text_only_batch_size": 8})
    info = {"splits": {"train": {"recipes": 10}}, "vocab_size": 10}

    run = dataclasses.replace(Run.create(config, str(tmp_path)), info=info)
    with pytest.raises(ValueError, match="has no 'train_text' split"):
        train.train_iterator(run)
    off = tiny_config(
        tiny_data, **{"loss.cross_decoder": 1.0, "model.cross_decoder.enabled": False}
    )
    with pytest.raises(ValueError, match=r"model\.cross_decoder\.enabled is False"):
        check_config(off)


def test_training_batches_list_the_ingredients_in_the_configured_order(tiny_data):
    from xmodal.data import tokenizer as tokenizer_lib
    from xmodal.runtime import sharding

    def first_targets(order):
        config = tiny_config(  # long enough that no target is cut
            tiny_data, **{"data.decoder_order": order, "data.max_decoder_tokens": 64}
        )
        run = Run.create(config, "", mesh=sharding.make_mesh())
        tokens = next(train.train_iterator(run))["decoder_tokens"]
        tok = tokenizer_lib.load_tokenizer(tiny_data)
        vocab = run.info["vocab_size"]
        return [decoder_targets.decode_target(tok, row, vocab_size=vocab) for row in tokens]

    written, ordered = first_targets("recipe"), first_targets("sorted")
    assert [t["title"] for t in written] == [t["title"] for t in ordered]  # the same recipes
    assert all(t["ingredients"] == sorted(t["ingredients"]) for t in ordered)
    assert any(t["ingredients"] != sorted(t["ingredients"]) for t in written)
    assert [sorted(t["ingredients"]) for t in written] == [t["ingredients"] for t in ordered]
