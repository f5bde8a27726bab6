"""`python -m xmodal.apps.import_checkpoint --checkpoint=PATH --workdir=W
[--config=configs/ht.py:vit] [--config.a.b=v ...]`: the released H-T weights as an xmodal run.

PATH is the released `.zip` (`MODEL_NAME/args.pkl` + `MODEL_NAME/model-best.ckpt`) or a
`model-best.ckpt` (a `torch.save` of the state_dict; an `args.pkl` beside it is read too). W then
holds what a training run's workdir holds: an Orbax checkpoint (step 0, a fresh optimizer
state) and `config.json`, so that

    python -m xmodal.main --workdir=W --mode=eval --config.data.dir=D    # or --mode=embed
    python -m xmodal.apps.search ... --workdir=W                         # and the report

serve it, and `--config.model.init_from=W` starts a new run from it. The config is `--config`,
else the `ht` preset that `args.pkl` names (`config_from_released_args`). The vocabulary is the
data's when `--config.data.dir=D` is given (prepared with the released vocabulary), else the
released word table's row count. The released key layout is mapped onto the model by
`xmodal.models.released_ht.load_into` (missing, unexpected and mis-shaped keys are its errors,
shown here as one message).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from xmodal.apps import cli
from xmodal.data import info as data_info
from xmodal.models import import_weights
from xmodal.run import IMPORTED, Run, check_config
from xmodal.runtime import checkpointing, sharding
from xmodal.runtime import state as state_lib

LoadInto = Callable[[nnx.Module, Mapping[str, np.ndarray]], Any]
# The released word table (src/models.py RecipeTransformerEncoder.word_embedding): [vocab, hidden].
WORD_TABLE = "text_encoder.word_embedding.weight"
# args.backbone -> (configs/ht.py preset, model overrides) for the image models the presets hold.
VIT_BACKBONES = {"vit_small_patch16_224": "S/16", "vit_base_patch16_224": "B/16"}
VIT_BACKBONES["vit_large_patch16_224"] = "L/16"
RESNET_BACKBONES = {"resnet18": 18, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def released_load_into() -> LoadInto:
    """The mapping of the released H-T key layout onto xmodal's modules."""
    from xmodal.models import released_ht

    return released_ht.load_into


def config_from_released_args(args: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The `configs/ht.py` preset of the released run's `args.pkl`: backbone vit_* -> `:vit`,
    resnet* -> `:r50`, with its sizes (output_size, hidden_recipe, tf_n_heads, tf_n_layers,
    imsize)."""
    from configs import ht
    from xmodal.models.vit import VIT_VARIANTS

    backbone = str(args.get("backbone", ""))
    if backbone in VIT_BACKBONES:
        config = ht.get_config("vit")
        variant = VIT_VARIANTS[VIT_BACKBONES[backbone]]
        config.update_from_flattened_dict({f"model.vit.{k}": v for k, v in variant.items()})
    elif backbone in RESNET_BACKBONES:
        config = ht.get_config("r50")
        config.model.resnet.depth = RESNET_BACKBONES[backbone]
    else:
        known = sorted({*VIT_BACKBONES, *RESNET_BACKBONES})
        raise ValueError(
            f"args.pkl names the backbone {backbone!r}, which no configs/ht.py preset builds "
            f"(known: {', '.join(known)}); pass --config=configs/<method>.py[:preset]"
        )
    sizes = {
        "model.embed_dim": "output_size",
        "model.text.width": "hidden_recipe",
        "model.text.num_heads": "tf_n_heads",
        "model.text.depth": "tf_n_layers",
        "data.image_size": "imsize",
    }
    config.update_from_flattened_dict({k: int(args[a]) for k, a in sizes.items() if a in args})
    return config


def released_args(checkpoint: str) -> dict[str, Any] | None:
    """The released run's arguments: the `args.pkl` in the `.zip`, or beside the `.ckpt`."""
    if checkpoint.endswith(".zip"):
        return import_weights.load_released_args(checkpoint)
    beside = os.path.join(os.path.dirname(checkpoint), import_weights.ARGS_NAME)
    return import_weights.load_released_args(beside) if os.path.exists(beside) else None


def resolve_config(
    checkpoint: str, spec: str | None = None, overrides: Mapping[str, str] | None = None
) -> ml_collections.ConfigDict:
    """`--config` (`spec`), else the preset of the checkpoint's args.pkl; then the overrides."""
    if spec:
        config = cli.load_config_file(spec)
    else:
        args = released_args(checkpoint)
        if args is None:
            raise ValueError(
                f"no args.pkl beside {checkpoint!r} to say which model it is: pass "
                "--config=configs/ht.py:vit (or :r50)"
            )
        config = config_from_released_args(args)
    return cli.with_overrides(config, dict(overrides or {}))


def _vocab_size(state_dict: Mapping[str, np.ndarray]) -> int:
    if WORD_TABLE not in state_dict:
        raise ValueError(
            f"the checkpoint has no {WORD_TABLE!r} (is it the released H-T layout?), so its "
            "vocabulary size is unknown"
        )
    return int(state_dict[WORD_TABLE].shape[0])


def import_checkpoint(
    checkpoint: str,
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    load_into: LoadInto | None = None,
) -> Run:
    """Write the released checkpoint at `checkpoint` into `workdir` as an xmodal run (see the
    module docstring); `load_into(model, state_dict)` maps its keys (default: `released_ht`)."""
    held = checkpointing.checkpoint_dir(workdir)
    if os.path.isdir(held) and any(n.isdigit() for n in os.listdir(held)):
        raise FileExistsError(f"{workdir!r} already holds checkpoints: import into a new --workdir")
    state_dict = import_weights.load_state_dict(checkpoint)
    args = released_args(checkpoint)
    config = config or resolve_config(checkpoint)
    check_config(config)
    vocab_size = _vocab_size(state_dict)
    mesh = sharding.make_mesh()
    if data_info.names_data(config.data):  # recorded with the data's vocabulary fingerprint
        run = Run.create(config, workdir, mesh=mesh, uses_labels=False)
        if run.vocab_size != vocab_size:
            raise ValueError(
                f"the checkpoint's vocabulary has {vocab_size} words ({WORD_TABLE}), the data "
                f"in {run.data_dir!r} {run.vocab_size}: prepare it with the released vocabulary"
            )
    else:
        layout = state_lib.StateLayout.create(config, vocab_size, mesh)
        run = Run(config, workdir, "", {"vocab_size": vocab_size}, mesh, layout)
    load = load_into or released_load_into()
    state = import_weights.replace_model(
        run.layout.init(), run.graphdef, run.layout.shardings, lambda m: load(m, state_dict)
    )
    manager = run.manager()
    try:
        checkpointing.save(manager, 0, state, None)
        manager.wait_until_finished()
    finally:
        manager.close()
    extra = {IMPORTED: os.path.abspath(checkpoint)}
    if args is not None:
        extra["released_args"] = {k: v for k, v in args.items() if _plain(v)}
    run.write_record(**extra)
    return run


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def main(argv: Sequence[str] | None = None, *, load_into: LoadInto | None = None) -> str:
    """The command line; an import that does not fit (keys, shapes, files) exits with one
    message naming what is wrong."""
    p = argparse.ArgumentParser(
        prog="python -m xmodal.apps.import_checkpoint", description=__doc__.split("\n")[0]
    )
    p.add_argument("--checkpoint", required=True, help="model-best.ckpt or the released .zip")
    p.add_argument("--workdir", required=True, help="the new run's folder")
    p.add_argument(
        "--config",
        default=None,
        help="configs/<method>.py[:preset] (default: from args.pkl, configs/ht.py:vit or :r50)",
    )
    args = cli.parse_args(p, argv)
    try:
        config = resolve_config(args.checkpoint, args.config, args.overrides)
        run = import_checkpoint(args.checkpoint, args.workdir, config, load_into=load_into)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        p.exit(2, f"{p.prog}: cannot import {args.checkpoint}: {message}\n")
    print(
        f"imported {args.checkpoint} into {run.workdir} ({run.config.method}:{run.config.preset});"
        f" evaluate it: python -m xmodal.main --workdir={run.workdir} --mode=eval "
        "--config.data.dir=DATA"
    )
    return run.workdir


if __name__ == "__main__":
    main()
