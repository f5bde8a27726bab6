"""The one training loop: the sharded jit-compiled step (`xmodal.training.step`), donated state,
Grain input, Orbax saves."""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

import jax
import ml_collections
from tqdm import tqdm

from xmodal import evaluate
from xmodal.data import info as data_info
from xmodal.data import pipeline, schema
from xmodal.generation import SampleGrid
from xmodal.models import gan
from xmodal.run import Run, decoder_trains
from xmodal.runtime import checkpointing, distributed, preemption, sharding
from xmodal.runtime import state as state_lib
from xmodal.runtime.metrics import MetricWriter
from xmodal.training.step import NONFINITE, compile_train_step

NONFINITE_POLICIES = ("stop", "skip")
SAMPLES_TAG = "generated/val"  # TensorBoard: validation photos above their recipes' images


def check_workdir(workdir: str) -> None:
    """Fail before any set-up (data generation, compiles) when WORKDIR cannot hold checkpoints,
    rather than after the first interval of training."""
    path = checkpointing.checkpoint_dir(workdir)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        raise OSError(
            f"the workdir {os.path.abspath(workdir)!r} is not writable: cannot write in "
            f"{path!r} ({e.strerror or e}); pick another --workdir or fix its permissions"
        ) from e


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train to `config.train.num_steps`, resuming from WORKDIR's newest readable checkpoint.

    SIGTERM / SIGINT stop the run after the current step with a checkpoint
    (xmodal.runtime.preemption). Returns the last logged metrics, 'stopped_at' (the step) when
    stopped so, and, when `config.train.eval_at_end` and not stopped, the test results.
    """
    watch = NonFiniteWatch(config.train.on_nonfinite)
    check_workdir(workdir)
    run = Run.create(config, workdir)
    mesh = run.mesh
    run.check_compatible()
    manager = run.manager()
    if manager.latest_step() is not None:
        run.check_same_processes()
    run.write_record()
    host_iter = train_iterator(run)
    resumed = checkpointing.restore_newest(manager, run.layout.abstract, host_iter)
    if resumed is not None:
        state = resumed[1]
        if jax.process_index() == 0:
            print(f"resumed from {manager.directory} at step {resumed[0]}")
    else:
        state = run.init_state()

    batches = sharding.DevicePrefetcher(host_iter, mesh, config.data.prefetch)
    step_fn = compile_train_step(run.layout, config, mesh)
    start, total = int(state.step), config.train.num_steps
    if start < total:  # several processes: all compiled before the first collective
        step_fn = distributed.compile_together(step_fn, "the train step", state, batches.peek())
    writer = MetricWriter(workdir, start_step=start)
    samples = SampleGrid(run) if gan.has_generator(config.adversarial) else None
    progress = tqdm(
        total=total, initial=start, desc="train", unit="step", disable=jax.process_index() != 0
    )
    result: dict[str, Any] = {"train": {}}
    tick = (time.perf_counter(), start)
    try:
        with preemption.StopSignal(start) as stop:
            for step in range(start + 1, total + 1):
                state, metrics = step_fn(state, next(batches))
                watch.add(step, metrics)
                progress.update(1)
                is_last, stopping = step == total, stop.reached(step)
                log_now = step % config.train.log_every == 0 or is_last
                eval_now = step % config.train.eval_every == 0 or is_last
                save_now = (
                    step % config.train.checkpoint_every == 0 or is_last or eval_now or stopping
                )
                if log_now or save_now:  # save_now includes every validation
                    watch.check(manager)  # 'stop' raises before anything is logged or saved
                if log_now:
                    result["train"], tick = _log(
                        step, metrics, tick, config.train.batch_size, watch, writer, progress
                    )
                val = _validate_and_report(run, state, step, writer, progress) if eval_now else None
                if eval_now and samples is not None:
                    writer.write_image(step, SAMPLES_TAG, samples(state))
                saving = time.perf_counter()
                if save_now:
                    checkpointing.save(manager, step, state, batches.get_state(), metrics=val)
                if stopping:  # the time to save bounds a scheduler's grace time (KillWait)
                    manager.wait_until_finished()
                    _say(
                        progress,
                        f"stopped by {stop.reason()} after step {step}: the checkpoint is saved "
                        f"in {manager.directory} ({time.perf_counter() - saving:.1f} s); run the "
                        "same command again to resume",
                    )
                    result["stopped_at"] = step
                    break
    finally:
        progress.close()
        manager.wait_until_finished()  # a good checkpoint in flight completes, error or not
        manager.close()
        writer.close()
    if config.train.eval_at_end and "stopped_at" not in result:
        result["test"] = evaluate.evaluate_state(run, state)
    return result


def _log(step, metrics, tick, batch_size, watch, writer, progress):
    """Write the step's metrics row, with the steps skipped and the throughput since the last
    row (`tick`: its time and step); returns (the row, the new tick)."""
    row = {k: float(v) for k, v in jax.device_get(metrics).items() if k != NONFINITE}
    row["nonfinite_steps"] = watch.take_skipped()
    now, (then, then_step) = time.perf_counter(), tick
    row["examples_per_sec"] = (step - then_step) * batch_size / max(now - then, 1e-9)
    writer.write(step, row)
    progress.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['learning_rate']:.1e}")
    return row, (now, step)


def _say(progress, message: str) -> None:
    """A line for the user from process 0, printed above the progress bar."""
    if jax.process_index() == 0:
        progress.write(message)


def _validate_and_report(run, state, step, writer, progress) -> dict[str, float]:
    val = validate(run, state)
    writer.write(step, val)
    _say(
        progress,
        f"step {step}: val medR {val['val_medR_i2r']:.1f} / {val['val_medR_r2i']:.1f}  "
        f"R@1 {val['val_R@1_i2r']:.1f} / {val['val_R@1_r2i']:.1f} (i2r / r2i, "
        f"{val['val_pairs']:.0f} pairs)",
    )
    return val


class NonFiniteWatch:
    """Reads the steps' `NONFINITE` flags only when the loop fetches from the devices anyway
    (log, validation, save; or every `MAX_PENDING` steps, to bound what it holds): no transfer
    per step. The step already kept the state finite; 'stop' raises naming the first bad step
    and its loss terms, 'skip' counts."""

    MAX_PENDING = 1000

    def __init__(self, policy: str):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(
                f"train.on_nonfinite must be one of {NONFINITE_POLICIES}, got {policy!r}"
            )
        self.policy = policy
        self._pending: list[tuple[int, dict[str, jax.Array]]] = []
        self._first_bad: tuple[int, dict[str, jax.Array]] | None = None
        self._bad = 0  # non-finite steps found since the last check
        self._skipped = 0  # ... since the last metrics row

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self._pending.append((step, metrics))
        if len(self._pending) >= self.MAX_PENDING:
            self._sift()

    def _sift(self) -> None:
        flags = jax.device_get([m[NONFINITE] for _, m in self._pending])
        for entry, flag in zip(self._pending, flags, strict=True):
            if flag:
                self._first_bad = self._first_bad or entry
                self._bad += 1
        self._pending.clear()

    def check(self, manager: Any) -> None:
        self._sift()
        first, count = self._first_bad, self._bad
        self._first_bad, self._bad = None, 0
        if first is not None and self.policy == "stop":
            step, metrics = first
            raise FloatingPointError(
                nonfinite_message(step, jax.device_get(metrics), manager, count)
            )
        self._skipped += count

    def take_skipped(self) -> int:
        """Steps left out since the last call (the `nonfinite_steps` of a metrics row)."""
        skipped, self._skipped = self._skipped, 0
        return skipped


def nonfinite_message(step: int, metrics: dict[str, Any], manager: Any, count: int) -> str:
    """Names the step, the non-finite loss terms (or the gradient) and the checkpoint to go
    back to."""
    values = {k: float(v) for k, v in metrics.items()}
    bad = [k for k, v in values.items() if k.startswith("loss_") and not math.isfinite(v)]
    if not bad and not math.isfinite(values["loss"]):
        bad = ["loss"]
    if not math.isfinite(values["grad_norm"]):
        bad.append("grad_norm")
    latest = manager.latest_step()
    kept = f"step {latest}" if latest is not None else "none yet"
    more = f" ({count} non-finite steps since the last check)" if count > 1 else ""
    return (
        f"step {step}: non-finite "
        + ", ".join(f"{k}={values[k]}" for k in bad)
        + f"{more}. Stopped without saving; the latest checkpoint in {manager.directory} "
        f"({kept}) holds the last good state. Lower train.lr or check the data, or pass "
        "--config.train.on_nonfinite=skip to leave such updates out"
    )


def train_iterator(run: Run) -> Any:
    """This process's training batches: pairs (with the decoder targets when the decoder
    trains), zipped with a batch of recipes without photos when `train.text_only_batch_size`."""
    config, data_dir, info = run.config, run.data_dir, run.info
    targets = None
    if decoder_trains(config):
        targets = pipeline.DecoderTargets(
            data_dir,
            info["vocab_size"],
            config.data.max_decoder_tokens,
            config.data.decoder_order,
        )
    paired = iter(
        pipeline.train_dataset(
            data_dir,
            config.data,
            batch_size=sharding.check_batch_size(config.train.batch_size, run.mesh),
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            decoder_targets=targets,
        )
    )
    text_batch = config.train.text_only_batch_size
    if not text_batch:
        return paired
    split = "train" + schema.TEXT_ONLY_SUFFIX
    if not data_info.split_size(info, split):
        raise ValueError(
            f"train.text_only_batch_size={text_batch} but {data_dir!r} has no {split!r} split "
            "(recipes without photos); set --config.train.text_only_batch_size=0"
        )
    text_only = iter(
        pipeline.text_only_dataset(
            data_dir,
            config.data,
            batch_size=sharding.check_batch_size(text_batch, run.mesh),
            seed=config.seed,
            prefix=schema.TEXT_ONLY_PREFIX,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    return pipeline.ZipIterator(paired, text_only)


def validate(run: Run, state: state_lib.TrainState) -> dict[str, float]:
    """Retrieval on the first `val_pairs` validation pairs, one bag, both directions."""
    image, recipe = run.embed_split(state, "val", limit=run.config.train.val_pairs)
    out: dict[str, float] = {}
    for direction, (queries, candidates) in zip(
        schema.DIRECTIONS, ((image, recipe), (recipe, image)), strict=True
    ):
        tag = schema.DIRECTION_TAGS[direction]
        metrics = evaluate.rank_metrics(evaluate.retrieval_ranks(queries, candidates))
        out.update({f"val_{k}_{tag}": v for k, v in metrics.items()})
    out[checkpointing.BEST_METRIC] = (out["val_R@1_i2r"] + out["val_R@1_r2i"]) / 2
    out["val_pairs"] = float(len(image))
    return out
