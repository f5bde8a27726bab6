"""Compare methods at equal budget on one dataset with the standard protocol.

Runs each `config[:preset]` for the same number of steps (and, optionally, a wall-clock cap) with
`python -m xmodal.main`, then collects each WORKDIR/eval_test.json into one markdown table
(printed, and written with the raw numbers as JSON next to it).

    python tools/compare_methods.py --out=runs/compare --steps=600 \
        --run=tnlbt=configs/tnlbt.py \
        --run=tnlbt-base=configs/tnlbt.py:base \
        --run="tnlbt-linear=configs/tnlbt.py loss.margin.kind=linear" \
        --run=ht=configs/ht.py --run=adamine=configs/adamine.py --run=je=configs/je.py

A run whose workdir already holds eval_test.json is not repeated (delete it to rerun); extra
`--override=a.b=v` flags are passed to every run (e.g. the data dir). Methods without an iterative
training loop (CCA) are run the same way: their `--mode=train` fits and evaluates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

_RUN = flags.DEFINE_multi_string(
    "run", [], "'name=config_path[:preset] [a.b=v ...]' (overrides for this run only); repeat."
)
_OUT = flags.DEFINE_string("out", "runs/compare", "Folder for the runs and the table.")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps per run (config.train.num_steps).")
_MAX_SECONDS = flags.DEFINE_integer(
    "max_seconds", 0, "Wall-clock cap per run (0: none); a run over it is stopped and reported."
)
_OVERRIDE = flags.DEFINE_multi_string("override", [], "a.b=v config overrides for every run.")

COLUMNS = (("image_to_recipe", "i2r"), ("recipe_to_image", "r2i"))
METRICS = ("medR", "R@1", "R@5", "R@10")


def run_command(config: str, workdir: str, steps: int, overrides: list[str]) -> list[str]:
    """The exact `xmodal.main` command line of one run (written into the table's JSON)."""
    return [
        sys.executable,
        "-m",
        "xmodal.main",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.train.num_steps={steps}",
        *(f"--config.{o}" for o in overrides),
    ]


def run_one(name: str, config: str, out: str, overrides: list[str]) -> dict:
    workdir = os.path.join(out, name)
    result_path = os.path.join(workdir, "eval_test.json")
    cmd = run_command(config, workdir, _STEPS.value, [*_OVERRIDE.value, *overrides])
    record: dict = {"name": name, "config": config, "command": " ".join(cmd)}
    if not os.path.exists(result_path):
        start = time.perf_counter()
        try:
            subprocess.run(cmd, check=True, timeout=_MAX_SECONDS.value or None)
        except subprocess.TimeoutExpired:
            record["error"] = f"stopped after {_MAX_SECONDS.value} s"
            return record
        except subprocess.CalledProcessError as e:
            record["error"] = f"exit status {e.returncode}"
            return record
        record["seconds"] = time.perf_counter() - start
    with open(result_path) as f:
        record["eval"] = json.load(f)
    return record


def bag_size(label: str) -> int:
    """'1k' -> 1000, '50' -> 50 (labels of `xmodal.evaluate.bag_label`)."""
    return int(label[:-1]) * 1000 if label.endswith("k") else int(label)


def markdown_table(records: list[dict]) -> str:
    """One row per run: medR and R@K (mean over bags) of the largest bag, both directions (the
    whole-split 'full' numbers stay in the JSON)."""
    head = ["method", "bag", "pairs"] + [f"{m} {d}" for _, d in COLUMNS for m in METRICS]
    head.append("train s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if "eval" not in r:
            lines.append(f"| {r['name']} | {r.get('error', 'no result')} |")
            continue
        ev = r["eval"]
        bag = max((b for b in ev[COLUMNS[0][0]] if b != "full"), key=bag_size)
        cells = [r["name"], bag, str(ev["n_pairs"])]
        for direction, _ in COLUMNS:
            m = ev[direction][bag]
            cells += [f"{m[k]['mean']:.1f} ± {m[k]['std']:.1f}" for k in METRICS]
        cells.append(f"{r['seconds']:.0f}" if "seconds" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _RUN.value:
        raise app.UsageError("give at least one --run=name=config_path[:preset]")
    os.makedirs(_OUT.value, exist_ok=True)
    records = []
    for spec in _RUN.value:
        name, sep, rest = spec.partition("=")
        if not sep or not rest.split():
            raise app.UsageError(f"--run must be name=config_path[:preset], got {spec!r}")
        config, *overrides = rest.split()
        records.append(run_one(name, config, _OUT.value, overrides))
    table = markdown_table(records)
    print(table)
    with open(os.path.join(_OUT.value, "compare.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(_OUT.value, "compare.json"), "w") as f:
        json.dump({"steps": _STEPS.value, "runs": records}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
