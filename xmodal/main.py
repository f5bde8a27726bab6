"""Command line: `python -m xmodal.main --config=configs/tnlbt.py[:preset] [--workdir=DIR]
[--mode=train|eval|embed] [--checkpoint=best|latest|STEP] [--split=test] [--config.a.b=v ...]`.

`--config` may be left out with `--mode=eval|embed` and a `--workdir` holding `config.json` (a
trained or imported run): its recorded config is used, `--config.a.b=v` overriding it
(`--config.data.dir=NEW` evaluates it on other data).

Thin on purpose: flags, multi-host start-up, then one call into train or evaluate.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from xmodal.runtime import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file[:preset] (for --mode=eval|embed, default: WORKDIR/config.json).",
)
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
_RECORDED_OVERRIDES: dict[str, str] = {}  # --config.a.b=v given without --config (parse_flags)


def default_workdir(config) -> str:
    return os.path.join("runs", f"{config.method}-{config.preset}")


def enable_compilation_cache() -> None:
    """Reuse compiled steps across runs (a resumed run skips the compile); JAX's own
    JAX_COMPILATION_CACHE_DIR wins when set."""
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        jax.config.update("jax_compilation_cache_dir", os.path.join(cache, "xmodal", "jax"))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, except that `--config.a.b=v` without `--config` are set aside as
    overrides of the workdir's recorded config (absl knows them only once a file is named)."""
    if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        overrides = [a for a in argv[1:] if a.startswith("--config.") and "=" in a]
        _RECORDED_OVERRIDES.update(a[len("--config.") :].split("=", 1) for a in overrides)
        argv = [a for a in argv if a not in overrides]
    return app.parse_flags_with_usage(argv)


def resolve_config(workdir: str | None) -> ml_collections.ConfigDict:
    """`--config`, else (eval and embed only) WORKDIR's recorded config with the overrides."""
    if _CONFIG.value is not None:
        return _CONFIG.value
    if _MODE.value == "train" or not workdir:
        raise app.UsageError(
            "--config is required, except with --mode=eval|embed and a --workdir holding the "
            "config.json of a trained or imported run"
        )
    from xmodal.apps.cli import config_for
    from xmodal.run import read_record

    return config_for(workdir, None, _RECORDED_OVERRIDES) or read_record(workdir)[0]


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = resolve_config(_WORKDIR.value)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
    enable_compilation_cache()
    distributed.initialize(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value,
    )
    with distributed.failing_together():
        _run(config, _WORKDIR.value or default_workdir(config))


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
    app.run(main, flags_parser=parse_flags)
