"""Command line: `python -m xmodal.main --config=configs/tnlbt.py[:preset] [--workdir=DIR]
[--mode=train|eval|embed] [--checkpoint=best|latest|STEP] [--split=test] [--config.a.b=v ...]`.

Thin on purpose: flags, multi-host start-up, then one call into train or evaluate.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from xmodal.runtime import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and results go (default: runs/<method>-<preset>)."
)
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "embed"],
    "train | eval (bag protocol -> WORKDIR/eval_<split>.json) | embed (embeddings and recipe ids "
    "of a split -> WORKDIR/embeddings_<split>.npz).",
)
_SPLIT = flags.DEFINE_string("split", None, "Eval split (default: config.eval.split).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Eval checkpoint: best | latest | <step> (default: config.eval.checkpoint)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (default: $JAX_COORDINATOR_ADDRESS)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the job (default: $JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's id in [0, num_processes) (default: $JAX_PROCESS_ID)."
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_s",
    distributed.HEARTBEAT_TIMEOUT_S,
    "Several processes: a process silent this long counts as dead and the job stops.",
)
flags.mark_flags_as_required(["config"])


def default_workdir(config) -> str:
    return os.path.join("runs", f"{config.method}-{config.preset}")


def enable_compilation_cache() -> None:
    """Reuse compiled steps across runs (a resumed run skips the compile); JAX's own
    JAX_COMPILATION_CACHE_DIR wins when set."""
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        jax.config.update("jax_compilation_cache_dir", os.path.join(cache, "xmodal", "jax"))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
    enable_compilation_cache()
    distributed.initialize(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value,
    )
    with distributed.failing_together():
        _run(_CONFIG.value, _WORKDIR.value or default_workdir(_CONFIG.value))


def _run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The work `--mode` names (CCA has only one: fit and evaluate)."""
    if config.method == "cca":  # closed form: fit and evaluate in one go, no training loop
        from xmodal.baselines import cca

        cca.run(config, workdir)
    elif _MODE.value == "train":
        from xmodal.training.loop import train_and_evaluate

        train_and_evaluate(config, workdir)
    elif _MODE.value == "eval":
        from xmodal.evaluate import evaluate_checkpoint

        evaluate_checkpoint(config, workdir, split=_SPLIT.value, which=_CHECKPOINT.value)
    else:
        from xmodal.evaluate import embed_checkpoint

        embed_checkpoint(config, workdir, split=_SPLIT.value, which=_CHECKPOINT.value)


if __name__ == "__main__":
    app.run(main)
