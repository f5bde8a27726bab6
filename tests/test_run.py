"""The run context (xmodal.run) and the one config schema: every method's tiny checkpoint serves
every use (eval, embed, search, report, predict), FSDP trains through the real loop with its
validations, and switches are accepted or refused by name."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import tiny_config

from configs import adamine, cca, common, ht, je, tnlbt
from xmodal import evaluate
from xmodal.apps import predict, report, search
from xmodal.data import pipeline, records
from xmodal.run import Run, check_config, model_fields, read_record
from xmodal.runtime import sharding
from xmodal.runtime.metrics import read_metrics
from xmodal.training.loop import train_and_evaluate

METHODS = {"tnlbt": tnlbt, "ht": ht, "adamine": adamine, "je": je, "cca": cca}
SWITCHES = {
    "train.fsdp": True,
    "model.remat": "dots",
    "train.grad_accum_steps": 2,
    "train.mu_dtype": "bfloat16",
    "model.image_init": "weights.safetensors",
}


def _flat_keys(c) -> set[str]:
    out = set()
    for k, v in c.items():
        out |= {f"{k}.{x}" for x in _flat_keys(v)} if hasattr(v, "items") else {k}
    return out


def test_every_method_config_has_exactly_the_schema_fields():
    schema = _flat_keys(common.base_config("x"))
    for name, module in METHODS.items():
        for preset in ("tiny", None):
            assert _flat_keys(module.get_config(preset)) == schema, name
    with pytest.raises(AttributeError, match="cannot be added"):
        ht.get_config("tiny").train.no_such_field = 1


@pytest.mark.parametrize("method", ["tnlbt", "ht", "adamine", "je"])
def test_switches_are_accepted_by_every_trained_method(method):
    config = METHODS[method].get_config("tiny")
    config.update_from_flattened_dict(SWITCHES)
    check_config(config)


def test_switches_that_cannot_apply_are_refused_naming_the_method():
    config = cca.get_config("tiny")
    config.train.fsdp = True
    with pytest.raises(ValueError, match=r"cca .*train\.fsdp"):
        check_config(config)
    for method in ("adamine", "je"):
        config = METHODS[method].get_config("tiny")
        config.train.text_only_batch_size = 8
        with pytest.raises(ValueError, match=f"{method}: train.text_only_batch_size"):
            check_config(config)
    config = ht.get_config("tiny")
    config.loss.cross_decoder = 1.0
    with pytest.raises(ValueError, match=r"ht: loss.cross_decoder=1.0 but model\.cross_decoder"):
        check_config(config)


def test_text_limits_beyond_the_prepared_data_are_refused(tiny_data, tmp_path):
    config = tiny_config(tiny_data, **{"data.max_ingredients": 500})
    with pytest.raises(ValueError, match=r"data.max_ingredients=500 > \d+"):
        Run.create(config, str(tmp_path))


@pytest.fixture(params=["tnlbt", "ht", "adamine", "je"])
def method_checkpoint(request, method_run):
    """(config, workdir): the session's tiny TNLBT run (conftest.trained), or the method's tiny
    run (conftest.method_run, shared with test_methods.py)."""
    if request.param == "tnlbt":
        config, workdir, _ = request.getfixturevalue("trained")
        return config, workdir
    return method_run(request.param)


def test_each_method_checkpoint_serves_every_use(method_checkpoint, tmp_path, capsys):
    config, workdir = method_checkpoint
    results = evaluate.evaluate_checkpoint(config, workdir, which="latest")
    path = evaluate.embed_checkpoint(config, workdir, which="latest")
    with np.load(path) as f:
        assert f["image"].shape == f["recipe"].shape and len(f["ids"]) == results["n_pairs"]
        image, recipe = f["image"].astype(np.float64), f["recipe"].astype(np.float64)
    # The whole-split scores, brute force from the embeddings of the same checkpoint.
    n = results["n_pairs"]
    assert n == len(pipeline.split_metadata(config.data.dir, "test")) > 50
    for direction, (q, c) in (
        ("image_to_recipe", (image, recipe)),
        ("recipe_to_image", (recipe, image)),
    ):
        sims = q @ c.T
        ranks = np.array([np.sum(sims[i] >= sims[i, i]) for i in range(n)])
        full = results[direction]["full"]
        assert full["medR"]["mean"] == pytest.approx(np.median(ranks), abs=1)
        for k in (1, 5, 10):  # one pair's near-tie may fall either way in float32
            assert full[f"R@{k}"]["mean"] == pytest.approx(100 * np.mean(ranks <= k), abs=100 / n)

    base, photo = str(tmp_path / "test"), _photo(config, str(tmp_path))
    search.run(["index", f"--workdir={workdir}", "--split=test", f"--out={base}"])
    photo_hits = search.run(
        ["image", f"--workdir={workdir}", f"--index={base}-recipe.npz", "-k", "3", photo]
    )
    recipe_hits = search.run(
        [
            "recipe",
            f"--workdir={workdir}",
            f"--index={base}-image.npz",
            "--title=tomato soup",
            "--ingredients=tomato;onion",
            "--instructions=simmer the tomato",
        ]
    )
    assert len(photo_hits) == 3 and len(recipe_hits) == 5
    ingredient = search.run(
        ["ingredient", f"--workdir={workdir}", f"--index={base}-image.npz", "tomato"]
    )
    assert len(ingredient[0]) == 5

    html_path = report.main([f"--workdir={workdir}", "--queries=2", "--map_points=40"])
    with open(html_path) as f:
        assert "<svg" in f.read()

    if config.model.cross_decoder.enabled:
        outs = predict.main([f"--workdir={workdir}", f"--image={photo}"])
        assert isinstance(outs[0]["ingredients"], list)
    else:
        with pytest.raises(ValueError, match="no cross decoder"):
            predict.main([f"--workdir={workdir}", f"--image={photo}"])
    capsys.readouterr()


def _photo(config, folder) -> str:
    """A photo file: the first test recipe's JPEG from the prepared data."""
    path = os.path.join(folder, "photo.jpg")
    record = records.decode_record(pipeline.open_split(config.data.dir, "test")[0])
    with open(path, "wb") as f:
        f.write(record["images"][0])
    return path


def test_fsdp_trains_through_validation_resume_and_eval(tiny_data, tmp_path):
    """FSDP on 8 simulated devices through the real loop: validations and the final eval run
    on the sharded state, a resume continues, and the checkpoint evaluates on one device."""
    workdir = str(tmp_path / "fsdp")
    overrides = {
        "train.fsdp": True,
        "train.fsdp_min_size": 512,
        "train.num_steps": 4,
        "train.eval_every": 2,
        "train.checkpoint_every": 2,
        "train.log_every": 2,
        "train.val_pairs": 32,
        # A constant learning rate: the longer run's step is the same program (a schedule's
        # shape depends on train.num_steps), served by the compilation cache.
        "train.warmup_steps": 0,
        "train.min_lr_ratio": 1.0,
    }
    config = tiny_config(tiny_data, **overrides)
    first = train_and_evaluate(config, workdir)
    vals = [r for r in read_metrics(workdir) if "val_recall@1" in r]
    assert [r["step"] for r in vals] == [2, 4]
    assert first["test"]["step"] == 4
    longer = tiny_config(tiny_data, **{**overrides, "train.num_steps": 6})
    resumed = train_and_evaluate(longer, workdir)
    assert resumed["test"]["step"] == 6
    on_one = evaluate.evaluate_checkpoint(
        longer, workdir, which="latest", mesh=sharding.make_mesh(1)
    )
    assert on_one == resumed["test"]
    with open(os.path.join(workdir, "config.json")) as f:
        record = json.load(f)
    assert record["run"]["data_dir"] == tiny_data and record["train"]["fsdp"] is True


# WORKDIR/config.json as the first-run command wrote it before the schema retired
# data.num_classes (README's first run, configs/tnlbt.py default preset).
RECORDED_V1 = os.path.join(os.path.dirname(__file__), "data", "config_recorded_v1.json")


def _recorded_workdir(tmp_path, edit=None) -> str:
    with open(RECORDED_V1) as f:
        raw = json.load(f)
    if edit:
        edit(raw)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(raw, f)
    return str(tmp_path)


def test_a_config_recorded_by_an_earlier_version_reopens_locked(tmp_path):
    config, record = read_record(_recorded_workdir(tmp_path))
    assert _flat_keys(config) == _flat_keys(common.base_config("x"))  # data.num_classes retired
    assert (config.method, config.preset, config.train.num_steps) == ("tnlbt", "default", 1500)
    assert config.data.max_instruction_tokens == 12 and record["vocab_size"] > 0
    assert model_fields(config) == model_fields(tnlbt.get_config())  # its checkpoints still fit
    with pytest.raises(AttributeError, match="cannot be added"):
        config.data.num_classes = 31


def test_fields_added_since_a_run_was_recorded_take_their_schema_defaults(tmp_path):
    config, _ = read_record(
        _recorded_workdir(tmp_path, lambda raw: raw["train"].pop("on_nonfinite"))
    )
    assert config.train.on_nonfinite == common.base_config("tnlbt").train.on_nonfinite == "stop"


def test_a_recorded_field_the_schema_never_had_is_refused_naming_it(tmp_path):
    workdir = _recorded_workdir(tmp_path, lambda raw: raw["model"].update(no_such_switch=True))
    with pytest.raises(ValueError, match=r"config\.json has fields .*model\.no_such_switch"):
        read_record(workdir)
