"""End to end on the built-in data: train, checkpoint, resume after a kill, evaluate anywhere."""

import json
import os
import re
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
from xmodal.runtime import checkpointing, sharding
from xmodal.runtime.metrics import read_metrics

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

    manager = checkpointing.make_manager(workdir, keep=None, read_only=True)
    assert manager.latest_step() == 30
    assert manager.best_step() in manager.all_steps()

    results = _read_json(workdir, "eval_test.json")
    assert results["step"] == 30 and results["split"] == "test" and results["n_pairs"] > 0
    for direction in ("image_to_recipe", "recipe_to_image"):
        bag = results[direction]["50"]
        assert set(bag) == {"medR", "R@1", "R@5", "R@10"}
        assert all(set(v) == {"mean", "std"} for v in bag.values())
        # Better than chance on 50-pair bags (medR 25.5, R@10 20%): measured 15.7 and 28.7% for
        # image -> recipe (30 steps of the tiny preset).
        assert bag["medR"]["mean"] < 25.5 and bag["R@10"]["mean"] > 20
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
    from xmodal.runtime import state as state_lib

    config.train.num_steps = 40
    _, abstract, _ = state_lib.abstract_train_state(config, _vocab(config.data.dir))
    mesh = sharding.make_mesh(1)
    target = state_lib.with_shardings(
        abstract,
        state_lib.state_shardings(
            abstract, mesh, fsdp=False, fsdp_min_size=config.train.fsdp_min_size
        ),
    )
    manager = checkpointing.make_manager(workdir, keep=None, read_only=True)
    state = checkpointing.restore(manager, manager.latest_step(), target)
    return jax.tree.leaves(jax.device_get(state.params))


def _read_json(folder, name):
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def _vocab(data_dir):
    return _read_json(data_dir, "dataset_info.json")["vocab_size"]


def _start(workdir, data_dir, out=subprocess.PIPE):
    """`python -m xmodal.main` training to step 40 in `workdir` on one CPU device (the resume,
    not the sharding, is under test)."""
    return subprocess.Popen(
        _main(workdir, data_dir), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True
    )


def _checkpointed_step_10(workdir):
    folder = workdir / "checkpoints"
    steps = os.listdir(folder) if folder.exists() else []
    return any(s.isdigit() and int(s) >= 10 for s in steps)


def _logged_step_10(workdir):
    metrics = workdir / "metrics.jsonl"
    return metrics.exists() and metrics.stat().st_size > 0


def _signal_when(cases):
    """Send each (process, condition, signal) its signal (None: none, just wait) once its
    condition holds; each process must still be running then."""
    pending = list(cases)
    deadline = time.time() + 300
    while pending and time.time() < deadline:
        for case in list(pending):
            proc, condition, sig = case
            if condition():
                if sig is not None:
                    assert proc.poll() is None, f"the run finished before it got {sig.name}"
                    proc.send_signal(sig)
                pending.remove(case)
            else:
                assert proc.poll() is None, f"the run ended early: {proc.communicate()[0]}"
        time.sleep(0.05)
    assert not pending, "timed out waiting for the runs to train"


def test_killed_and_preempted_runs_resume_to_the_uninterrupted_result(tiny_data, tmp_path):
    """SIGKILL (a crash) once checkpoint 10 exists, and SIGTERM (a scheduler's preemption
    notice) once step 10 is logged. The killed run resumes at its last checkpoint; the
    preempted one finishes its step, saves it, exits 0 and resumes exactly there. Rerunning the
    same command, both end with the uninterrupted run's parameters and log each step once.
    The interrupted runs start once the reference has compiled its step (they load it from the
    compilation cache) and overlap with it: each is mostly single-threaded start-up."""
    straight, killed, stopped = tmp_path / "straight", tmp_path / "killed", tmp_path / "stopped"
    with open(tmp_path / "straight.log", "w") as log:
        reference = _start(straight, tiny_data, out=log)
    _signal_when([(reference, lambda: _logged_step_10(straight), None)])
    crashing, preempted = _start(killed, tiny_data), _start(stopped, tiny_data)
    _signal_when(
        [
            (crashing, lambda: _checkpointed_step_10(killed), signal.SIGKILL),
            (preempted, lambda: _logged_step_10(stopped), signal.SIGTERM),
        ]
    )
    crashing.wait()
    killed_at = checkpointing.make_manager(str(killed), keep=None, read_only=True).latest_step()
    assert killed_at is not None and 10 <= killed_at < 40
    out = preempted.communicate(timeout=300)[0]
    assert preempted.returncode == 0, out
    found = re.search(
        rf"stopped by SIGTERM after step (\d+): the checkpoint is saved in {stopped}/checkpoints",
        out,
    )
    assert found, out
    stopped_at = int(found[1])
    assert 10 < stopped_at < 40
    assert (
        checkpointing.make_manager(str(stopped), keep=None, read_only=True).latest_step()
        == stopped_at
    )

    reruns = {workdir: _start(workdir, tiny_data) for workdir in (killed, stopped)}
    for (workdir, proc), step in zip(reruns.items(), (killed_at, stopped_at), strict=True):
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, out
        assert f"resumed from {workdir / 'checkpoints'} at step {step}" in out
        assert [r["step"] for r in read_metrics(str(workdir)) if "loss" in r] == [10, 20, 30, 40]
    assert reference.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()
    config = tiny_config(tiny_data, **SMALL_RESUME_MODEL)
    reference_params = _final_params(straight, config)
    for workdir in (killed, stopped):
        for a, b in zip(reference_params, _final_params(workdir, config), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(workdir))


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
