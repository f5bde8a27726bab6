"""The command-line shape every use of a trained model shares (search, predict, report), in the
trainer's spelling: `--workdir=DIR` (required), `--config=configs/<method>.py[:preset]` (default:
the config the run recorded in WORKDIR/config.json) with `--config.a.b=v` overrides,
`--checkpoint=best|latest|STEP` and `--split`."""

from __future__ import annotations

import argparse
import ast
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

# The parser behind absl `--config` flags (`config_flags.DEFINE_config_file`), not re-exported.
from ml_collections.config_flags.config_flags import ConfigFileFlagParser


def add_run_arguments(parser: argparse.ArgumentParser, *, split: bool = True) -> None:
    parser.add_argument("--workdir", required=True, help="the trained run's folder")
    parser.add_argument(
        "--config",
        default=None,
        help="configs/<method>.py[:preset] (default: the run's WORKDIR/config.json)",
    )
    parser.add_argument("--checkpoint", default=None, help="best | latest | STEP")
    if split:
        parser.add_argument("--split", default=None, help="a prepared split (default: eval.split)")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:preset]` -> its `get_config(preset)`, read by the very parser of the
    trainer's absl `--config` flag (`config_flags.DEFINE_config_file`), so every command and
    tool loads a config one way."""
    path = spec.partition(":")[0]
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise FileNotFoundError(f"--config={spec!r}: {path!r} is not a Python config file")
    return ConfigFileFlagParser("config").parse(spec)


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """`parser`'s arguments plus `--config.a.b=v` overrides (in `args.overrides`)."""
    args, rest = parser.parse_known_args(argv)
    unknown = [r for r in rest if not (r.startswith("--config.") and "=" in r)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = dict(r[len("--config.") :].split("=", 1) for r in rest)
    return args


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a plain string, as absl's config flags read it


def with_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, str]
) -> ml_collections.ConfigDict:
    """`config` with `parse_args`'s `--config.a.b=v` overrides applied (values read as Python
    literals, else as plain strings)."""
    config.update_from_flattened_dict({k: _value(v) for k, v in overrides.items()})
    return config


def run_config(args: argparse.Namespace) -> ml_collections.ConfigDict | None:
    """`config_for` the arguments' --workdir, --config and overrides."""
    return config_for(args.workdir, args.config, args.overrides)


def config_for(
    workdir: str, config_file: str | None, overrides: dict[str, str]
) -> ml_collections.ConfigDict | None:
    """The config `config_file` names (else, with overrides, WORKDIR's recorded one) with the
    overrides applied; None = the run's recorded config as it is. Data named by an override
    (`--config.data.dir=NEW`: a new test set or gallery) replaces the recorded data location,
    whichever of `data_info.DATA_LOCATIONS` the run was trained with."""
    from xmodal.data import info as data_info
    from xmodal.run import read_record

    config = load_config_file(config_file) if config_file else None
    if overrides:
        config = config or read_record(workdir)[0]
        locations = [f"data.{k}" for k in data_info.DATA_LOCATIONS]
        if any(k in overrides for k in locations):
            config.update_from_flattened_dict(dict.fromkeys(locations, ""))
        config = with_overrides(config, overrides)
    return config


def open_model(args: argparse.Namespace) -> Any:
    """The `RetrievalModel` the arguments name: WORKDIR's run, restored at --checkpoint."""
    from xmodal.apps.retrieval import RetrievalModel

    return RetrievalModel.from_workdir(args.workdir, run_config(args), which=args.checkpoint)
