"""End to end on the built-in data: train, checkpoint, resume after a kill, evaluate anywhere."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import tiny_config

from configs import tnlbt
from xmodal import evaluate
from xmodal.training import checkpointing, sharding
from xmodal.training.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_writes_metrics_checkpoints_config_and_eval(trained):
    config, workdir, result = trained
    rows = read_metrics(workdir)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [10, 20, 30]
    for r in train_rows:
        assert np.isfinite(r["loss"]) and r["examples_per_sec"] > 0 and r["learning_rate"] > 0
    assert any("val_recall@1" in r for r in rows)
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    saved = _read_json(workdir, "config.json")
    assert saved["model"]["vit"]["width"] == config.model.vit.width
    assert saved["run"]["data_dir"] == config.data.dir

    manager = checkpointing.make_manager(workdir, read_only=True)
    assert manager.latest_step() == 30
    assert manager.best_step() in manager.all_steps()

    results = _read_json(workdir, "eval_test.json")
    assert results["step"] == 30 and results["split"] == "test" and results["n_pairs"] > 0
    for direction in ("image_to_recipe", "recipe_to_image"):
        bag = results[direction]["50"]
        assert set(bag) == {"medR", "R@1", "R@5", "R@10"}
        assert all(set(v) == {"mean", "std"} for v in bag.values())
        assert 1 <= bag["medR"]["mean"] <= 50
    assert result["test"] == results


def test_eval_mode_restores_on_one_device_with_identical_numbers(trained):
    config, workdir, _ = trained
    assert len(jax.devices()) == 8  # the run above used all 8 simulated devices
    on_eight = evaluate.evaluate_checkpoint(config, workdir, which="latest")
    on_one = evaluate.evaluate_checkpoint(
        config, workdir, which="latest", mesh=sharding.make_mesh(1)
    )
    assert on_one == on_eight
    assert on_one["step"] == 30


def test_checkpoint_from_another_model_is_refused_naming_the_fields(trained):
    config, workdir, _ = trained
    other = tiny_config(config.data.dir, **{"model.vit.width": 96, "model.embed_dim": 32})
    with pytest.raises(ValueError, match=r"model\.vit\.width: checkpoint has 64, this run has 96"):
        evaluate.evaluate_checkpoint(other, workdir)


# The kill-and-resume runs compile three times (subprocesses): a smaller model without the decoder
# keeps that cheap; the resume logic does not depend on the model.
SMALL_RESUME_MODEL = {
    "model.vit.depth": 1,
    "model.cross_decoder.enabled": False,
    "loss.cross_decoder": 0.0,
}


def _main(workdir, data_dir, *extra):
    return [
        sys.executable,
        "-m",
        "xmodal.main",
        "--config=configs/tnlbt.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.dir={data_dir}",
        "--config.train.num_steps=40",
        "--config.train.checkpoint_every=10",
        "--config.train.eval_every=1000",
        "--config.train.eval_at_end=False",
        *(f"--config.{k}={v}" for k, v in SMALL_RESUME_MODEL.items()),
        *extra,
    ]


def _final_params(workdir, config):
    from xmodal.training import state as state_lib

    config.train.num_steps = 40
    _, abstract, _ = state_lib.abstract_train_state(config, _vocab(config.data.dir))
    mesh = sharding.make_mesh(1)
    target = state_lib.with_shardings(abstract, state_lib.state_shardings(abstract, mesh))
    manager = checkpointing.make_manager(workdir, read_only=True)
    state = checkpointing.restore(manager, manager.latest_step(), target)
    return jax.tree.leaves(jax.device_get(state.params))


def _read_json(folder, name):
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def _vocab(data_dir):
    return _read_json(data_dir, "dataset_info.json")["vocab_size"]


def test_killed_run_resumes_at_the_right_step_and_data_position(tiny_data, tmp_path):
    env = dict(os.environ)  # one CPU device: the kill and resume, not the sharding, is under test
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # The uninterrupted reference runs beside the killed run: each is mostly single-threaded
    # start-up (imports, tracing), so the two overlap on two cores.
    reference_log = tmp_path / "straight.log"
    with open(reference_log, "w") as log:
        reference = subprocess.Popen(
            _main(straight, tiny_data), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    proc = subprocess.Popen(
        _main(killed, tiny_data),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        steps = os.listdir(killed / "checkpoints") if (killed / "checkpoints").exists() else []
        if any(s.isdigit() and int(s) >= 10 for s in steps):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manager = checkpointing.make_manager(str(killed), read_only=True)
    killed_at = manager.latest_step()
    assert killed_at is not None and 10 <= killed_at < 40

    out = subprocess.run(
        _main(killed, tiny_data), cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resumed from {killed / 'checkpoints'} at step {killed_at}" in out.stdout + out.stderr
    assert reference.wait(timeout=300) == 0, reference_log.read_text()

    steps = [r["step"] for r in read_metrics(str(killed)) if "loss" in r]
    assert steps[-1] == 40 and max(steps) == 40
    config = tiny_config(tiny_data, **SMALL_RESUME_MODEL)
    for a, b in zip(_final_params(straight, config), _final_params(killed, config), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_unknown_config_key_is_a_clear_error(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "xmodal.main",
        "--config=configs/tnlbt.py:tiny",
        f"--workdir={tmp_path}",
        "--config.train.num_stepz=3",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0
    assert "num_stepz" in out.stderr


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        tnlbt.get_config("huge")
