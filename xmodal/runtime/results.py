"""Result files of a workdir: their names, and their writers.

Every result a command leaves in WORKDIR is named here (`eval_<split>.json` of `--mode=eval`,
`embeddings_<split>.npz` of `--mode=embed`, CCA's `cca_<split>.json`, the cross decoder's
`ingredients_<split>.json`, the generator's `generated_<split>.json`) and goes through
`write_result` (JSON) or `write_arrays` (.npz): written by process 0 only, atomically (a
temporary file, then a rename), so the other processes of a job, a reader or a rerun after a
crash see the old file or the whole new one, never half.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from xmodal.data import jsonio


def eval_file(split: str) -> str:
    """`--mode=eval`'s retrieval scores (the schema of DESIGN.md); CCA writes it too."""
    return f"eval_{split}.json"


def embeddings_file(split: str) -> str:
    """`--mode=embed`'s unit-norm image and recipe embeddings (NumPy .npz)."""
    return f"embeddings_{split}.npz"


def cca_file(split: str) -> str:
    """CCA's scores for every text choice (`xmodal.baselines.cca`)."""
    return f"cca_{split}.json"


def ingredients_file(split: str) -> str:
    """The cross decoder's ingredient and title scores (`xmodal.predict`)."""
    return f"ingredients_{split}.json"


def generated_file(split: str) -> str:
    """The generator's scores on a split's recipes (`xmodal.generation.evaluate_generated`)."""
    return f"generated_{split}.json"


def write_result(workdir: str, name: str, obj: Any) -> str:
    """Write `obj` as JSON (indent 2) to WORKDIR/`name` from process 0, atomically, creating
    WORKDIR if needed; returns the path (on every process)."""
    path = os.path.join(workdir, name)
    if jax.process_index() == 0:
        os.makedirs(workdir or ".", exist_ok=True)
        jsonio.write_json(obj, path, indent=2)
    return path


def write_arrays(workdir: str, name: str, **arrays: Any) -> str:
    """`np.savez` of `arrays` to WORKDIR/`name` (ending .npz) from process 0, atomically, as
    `write_result`; returns the path (on every process)."""
    path = os.path.join(workdir, name)
    if jax.process_index() == 0:
        os.makedirs(workdir or ".", exist_ok=True)
        tmp = path + ".tmp.npz"  # np.savez appends .npz to a name without it
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return path
