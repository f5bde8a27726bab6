"""A long run survives (xmodal.training.loop, checkpointing, metrics, preemption): a resume logs
no step twice, an unreadable newest checkpoint falls back to the one before, a non-finite step
stops the run without saving it (or is skipped and counted), keep-best never picks a NaN
recall, an unwritable workdir fails before any set-up, and a stop request makes every process of
a job stop at the same step. The resumes start from copies of the session's tiny run."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from tensorboardX.proto.event_pb2 import Event, SessionLog

from xmodal.run import Run
from xmodal.runtime import checkpointing, preemption, sharding
from xmodal.runtime.metrics import MetricWriter, read_metrics
from xmodal.training import loop, losses
from xmodal.training.loop import train_and_evaluate
from xmodal.training.step import NONFINITE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy(trained, tmp_path, *, drop_steps=()):
    """(config, workdir): a copy of the session's tiny run (checkpoints at steps 15 and 30,
    metrics rows every 10 steps) without the checkpoints of `drop_steps`, as if the run had been
    killed after logging those steps but before their checkpoints were written."""
    config, trained_dir, _ = trained
    workdir = str(tmp_path / "copy")
    shutil.copytree(trained_dir, workdir)
    for step in drop_steps:
        shutil.rmtree(os.path.join(checkpointing.checkpoint_dir(workdir), str(step)))
    return tiny_config(config.data.dir, **{"train.eval_at_end": False}), workdir


def _truncate_largest_file(workdir, step):
    """Cut the checkpoint's largest array file in half (a crash or a full disk mid-write)."""
    folder = os.path.join(checkpointing.checkpoint_dir(workdir), str(step), checkpointing.STATE)
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)


def _train_steps(workdir):
    return [r["step"] for r in read_metrics(workdir) if "loss" in r]


def _tfrecords(path):
    """The records of one TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        yield data[offset + 12 : offset + 12 + length]
        offset += 12 + length + 4


def _tensorboard_view(folder):
    """tag -> steps as TensorBoard shows them: event files in name order, where a
    SessionLog.START at step s hides every event of step >= s written before it (TensorBoard's
    rule for a restarted run). tensorboardX writes a tag's "@" as "_"."""
    shown: dict[str, list[int]] = {}
    for name in sorted(os.listdir(folder)):
        for record in _tfrecords(os.path.join(folder, name)):
            event = Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                shown = {tag: [s for s in steps if s < event.step] for tag, steps in shown.items()}
            for value in event.summary.value:
                shown.setdefault(value.tag, []).append(event.step)
    return shown


def test_a_resumed_writer_forgets_what_was_logged_after_its_step(tmp_path):
    """An attempt logged steps 1-4 and died after its checkpoint of step 2: the resumed writer
    keeps rows 1-2 (a line cut short by the crash is dropped) and hides TensorBoard's 3-4."""
    workdir = str(tmp_path)
    first = MetricWriter(workdir)
    for step in (1, 2, 3, 4):
        first.write(step, {"loss": 1.0 / step})
    first.close()
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 5, "lo')
    resumed = MetricWriter(workdir, start_step=2)
    for step in (3, 4, 5):
        resumed.write(step, {"loss": 10.0 * step})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(workdir)] == [
        (1, 1.0),
        (2, 0.5),
        (3, 30.0),
        (4, 40.0),
        (5, 50.0),
    ]
    assert _tensorboard_view(os.path.join(workdir, "tensorboard")) == {"loss": [1, 2, 3, 4, 5]}


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(trained, tmp_path, capsys):
    """Checkpoint 30 cut short: a warning names it, it is moved aside, the run resumes from 15
    and logs steps 16-30 once more, each step once in metrics.jsonl and in TensorBoard."""
    config, workdir = _copy(trained, tmp_path)
    _truncate_largest_file(workdir, 30)
    train_and_evaluate(config, workdir)
    out = capsys.readouterr().out
    checkpoints = checkpointing.checkpoint_dir(workdir)
    assert f"the checkpoint at step 30 in {checkpoints} does not restore" in out
    assert f"resumed from {checkpoints} at step 15" in out
    assert os.path.isdir(os.path.join(workdir, checkpointing.UNREADABLE_DIR, "30"))
    assert checkpointing.make_manager(workdir, keep=None, read_only=True).all_steps() == [15, 30]
    assert _train_steps(workdir) == [10, 20, 30]
    assert [r["step"] for r in read_metrics(workdir) if "val_recall@1" in r] == [15, 30]
    shown = _tensorboard_view(os.path.join(workdir, "tensorboard"))
    assert shown["loss"] == [10, 20, 30] and shown["val_recall_1"] == [15, 30]
    assert all(len(steps) == len(set(steps)) for steps in shown.values())


def test_no_readable_checkpoint_is_an_error_naming_each_step(trained, tmp_path):
    config, workdir = _copy(trained, tmp_path)
    for step in (15, 30):
        _truncate_largest_file(workdir, step)
    with pytest.raises(
        RuntimeError, match=r"(?s)no checkpoint in .* restores.*step 30: .*step 15: "
    ):
        train_and_evaluate(config, workdir)
    assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ["15", "30"]  # as found


def _poison_step_16(monkeypatch):
    """The triplet term (and so the loss and the gradient) is NaN at step 16 only, the first
    step after a resume from checkpoint 15."""
    real = losses.compute_losses

    def poisoned(outputs, batch, loss_config, *, step, total_steps):
        loss, metrics = real(outputs, batch, loss_config, step=step, total_steps=total_steps)
        scale = jnp.where(step == 15, jnp.nan, 1.0)  # state.step 15 runs step 16 (from 1)
        metrics = {**metrics, "loss_triplet": metrics["loss_triplet"] * scale}
        metrics["loss"] = loss * scale
        return loss * scale, metrics

    monkeypatch.setattr(losses, "compute_losses", poisoned)


def _leaves(tree):
    """Leaves as numbers (PRNG keys as their key data)."""
    return [
        jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        for x in jax.tree.leaves(tree)
    ]


def _states(config, workdir, steps):
    run = Run.create(config, workdir, mesh=sharding.make_mesh(1))
    manager = checkpointing.make_manager(workdir, keep=None, read_only=True)
    return [jax.device_get(checkpointing.restore(manager, s, run.layout.abstract)) for s in steps]


def _nan_image_projection(monkeypatch):
    """The resumed state's image projection is NaN (as after a blow-up): from the first step on,
    every loss term of the image embeddings is NaN. Injected at restore: the step compiled for
    the session's run is reused as it is."""
    real = checkpointing.restore_newest

    def poisoned(*args, **kwargs):
        step, state = real(*args, **kwargs)
        nan_proj = lambda path, x: x * jnp.nan if "image_proj" in jax.tree_util.keystr(path) else x
        return step, state.replace(params=jax.tree_util.tree_map_with_path(nan_proj, state.params))

    monkeypatch.setattr(checkpointing, "restore_newest", poisoned)


def test_a_nonfinite_step_stops_the_run_naming_it_and_saves_nothing_after(
    trained, tmp_path, monkeypatch
):
    config, workdir = _copy(trained, tmp_path, drop_steps=[30])
    _nan_image_projection(monkeypatch)
    pattern = r"step 16: non-finite .*loss_triplet=nan.*grad_norm=nan.*\(step 15\) holds the last"
    with pytest.raises(FloatingPointError, match=pattern):
        train_and_evaluate(config, workdir)  # found at the next metrics fetch, step 20
    assert checkpointing.make_manager(workdir, keep=None, read_only=True).all_steps() == [15]
    assert _train_steps(workdir) == [10]  # nothing logged from the bad step on


def test_skip_leaves_a_nonfinite_update_out_and_counts_it(trained, tmp_path, monkeypatch):
    config, workdir = _copy(trained, tmp_path, drop_steps=[30])
    _poison_step_16(monkeypatch)
    # A step program of its own (poisoned, and `skip`): compiled for one device, in half the time.
    all_devices = sharding.make_mesh
    monkeypatch.setattr(sharding, "make_mesh", lambda n=None: all_devices(n or 1))
    config.train.on_nonfinite = "skip"
    config.train.checkpoint_every = 16  # the state after the skipped step: saved at 16
    train_and_evaluate(config, workdir)
    rows = {r["step"]: r for r in read_metrics(workdir) if "loss" in r}
    assert [rows[s]["nonfinite_steps"] for s in (10, 20, 30)] == [0, 1, 0]
    at_15, at_16, at_30 = _states(config, workdir, [15, 16, 30])
    assert int(at_16.step) == 16
    for part in ("params", "opt_state", "model_state"):
        for a, b in zip(_leaves(getattr(at_15, part)), _leaves(getattr(at_16, part)), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=part)
    assert all(np.isfinite(x).all() for x in _leaves(at_30.params))
    assert not all(
        np.array_equal(a, b) for a, b in zip(_leaves(at_16), _leaves(at_30), strict=True)
    )


def test_the_watch_names_the_first_bad_step_and_counts_them_however_long_between_fetches(
    monkeypatch,
):
    """Flags read in batches of 3 (the watch's bound on what it holds) over 10 steps, two bad."""
    monkeypatch.setattr(loop.NonFiniteWatch, "MAX_PENDING", 3)
    manager = types.SimpleNamespace(latest_step=lambda: 3, directory="/run/checkpoints")

    def watched(policy):
        watch = loop.NonFiniteWatch(policy)
        for step in range(1, 11):
            bad = step in (4, 7)
            value = jnp.float32(math.inf if bad else 1.0)
            metrics = {"loss": value, "loss_semantic": value, "loss_triplet": jnp.float32(1.0)}
            watch.add(step, {**metrics, "grad_norm": jnp.float32(2.0), NONFINITE: int(bad)})
        return watch

    pattern = r"step 4: non-finite loss_semantic=inf \(2 non-finite steps .*\(step 3\) holds"
    with pytest.raises(FloatingPointError, match=pattern):
        watched("stop").check(manager)
    skip = watched("skip")
    skip.check(manager)
    assert skip.take_skipped() == 2 and skip.take_skipped() == 0


def test_an_unknown_nonfinite_policy_is_refused():
    with pytest.raises(ValueError, match=r"train\.on_nonfinite must be one of"):
        loop.NonFiniteWatch("ignore")


def test_keep_best_never_picks_a_nonfinite_recall(tmp_path):
    manager = checkpointing.make_manager(str(tmp_path), keep=1)
    recalls = {1: 0.1, 2: 0.3, 3: math.nan, 4: 0.2}
    for step, recall in recalls.items():
        state = {"w": np.full(3, step, np.float32)}
        checkpointing.save(manager, step, state, None, metrics={checkpointing.BEST_METRIC: recall})
    manager.wait_until_finished()
    assert manager.best_step() == 2
    assert checkpointing.select_step(manager, "best") == 2
    assert manager.all_steps() == [2, 4]  # the latest and the best (not the NaN one)
    manager.close()

    only_nan = checkpointing.make_manager(str(tmp_path / "nan"), keep=3)
    checkpointing.save(only_nan, 1, {"w": np.zeros(3)}, None, {checkpointing.BEST_METRIC: math.nan})
    checkpointing.save(only_nan, 2, {"w": np.ones(3)}, None, None)
    only_nan.wait_until_finished()
    assert checkpointing.select_step(only_nan, "best") == 2  # no real recall: the latest
    only_nan.close()


def test_an_unwritable_workdir_fails_before_any_setup(tiny_data, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # fails for root too, unlike permissions
    workdir = str(blocker / "run")

    def no_setup(*args, **kwargs):
        raise AssertionError("the run was set up before the workdir was checked")

    monkeypatch.setattr(Run, "create", no_setup)
    with pytest.raises(OSError, match=re.escape(f"workdir '{workdir}' is not writable")):
        train_and_evaluate(tiny_config(tiny_data), workdir)


def test_sigint_asks_to_stop_after_the_step_and_then_acts_at_once():
    before = signal.getsignal(signal.SIGINT)
    with preemption.StopSignal() as stop:
        assert not stop.reached(1)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.reached(2) and stop.reason() == "SIGINT"
        assert signal.getsignal(signal.SIGINT) is before  # a second Ctrl-C: as before
    assert signal.getsignal(signal.SIGINT) is before


def test_a_repeated_sigterm_does_not_cut_the_checkpoint_short():
    """SLURM's scancel reaches a task directly and through the `srun` that forwards it: the
    second SIGTERM must leave the stop (and its checkpoint) to run, not end the process."""
    with preemption.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # before: the default action, death
        assert stop.reached(1) and stop.reason() == "SIGTERM"


# Two processes of one JAX job count steps at their own pace; process 1 gets the signal.
STOPPER = """
import sys, time
from xmodal.runtime import distributed
distributed.initialize()
from xmodal.runtime.preemption import StopSignal
with StopSignal(start=0) as stop:
    assert stop.synced
    for step in range(1, 6000):
        time.sleep(0.005)
        if step == 50:
            print("counting", flush=True)
        if stop.reached(step):
            print(f"stopped at {step}", flush=True)
            break
"""


def test_every_process_of_a_job_stops_at_the_same_step():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}")
    env.update(JAX_NUM_PROCESSES="2", PYTHONPATH=REPO)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STOPPER],
            cwd=REPO,
            env={**env, "JAX_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for line in procs[1].stdout:  # once process 1 counts, both are past start-up
            if line.strip() == "counting":
                break
        procs[1].send_signal(signal.SIGINT)
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    stops = [[line for line in out.splitlines() if line.startswith("stopped at")] for out in outs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len(stops[0]) == 1 and stops[0] == stops[1], outs
