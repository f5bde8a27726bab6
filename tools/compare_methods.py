"""Compare methods at equal budget on one dataset with the standard protocol.

Runs each `config[:preset]` for the same number of steps (and, optionally, a wall-clock cap) with
`python -m xmodal.main`, then collects each WORKDIR/eval_test.json into one markdown table
(printed, and written with the raw numbers as JSON next to it).

    python tools/compare_methods.py --out=runs/compare --steps=600 \
        --run=tnlbt=configs/tnlbt.py \
        --run=tnlbt-base=configs/tnlbt.py:base \
        --run="tnlbt-linear=configs/tnlbt.py loss.margin.kind=linear" \
        --run=ht=configs/ht.py --run=adamine=configs/adamine.py --run=je=configs/je.py

A run whose workdir already holds eval_test.json is not repeated (delete it to rerun; its
wall-clock time is kept in WORKDIR/compare_run.json for the tables); extra
`--override=a.b=v` flags are passed to every run (e.g. the data dir). Methods without an iterative
training loop (CCA) are run the same way: their `--mode=train` fits and evaluates.

`--seeds=0,1,2` runs every --run once per seed (OUT/NAME/seedS, `seed=S` appended to its overrides)
and adds a second table: each metric's bag mean, averaged over the seeds ± its standard deviation
across seeds (the spread that decides whether two configs differ). `--predict` also scores each
run's cross decoder from the photo alone (`python -m xmodal.apps.predict --split=test`, greedy)
and adds its ingredient micro F1 and title word F1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from xmodal.data.jsonio import read_json, write_json
from xmodal.run import CONFIG_FILE
from xmodal.runtime import results

_RUN = flags.DEFINE_multi_string(
    "run", [], "'name=config_path[:preset] [a.b=v ...]' (overrides for this run only); repeat."
)
_OUT = flags.DEFINE_string("out", "runs/compare", "Folder for the runs and the table.")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps per run (config.train.num_steps).")
_MAX_SECONDS = flags.DEFINE_integer(
    "max_seconds", 0, "Wall-clock cap per run (0: none); a run over it is stopped and reported."
)
_OVERRIDE = flags.DEFINE_multi_string("override", [], "a.b=v config overrides for every run.")
_SEEDS = flags.DEFINE_list("seeds", [], "Run each --run once per seed; adds a table over seeds.")
_PREDICT = flags.DEFINE_bool(
    "predict",
    False,
    "Score each run's cross decoder too (xmodal.apps.predict --split=test, greedy).",
)

COLUMNS = (("image_to_recipe", "i2r"), ("recipe_to_image", "r2i"))
RUN_TIME = "compare_run.json"  # WORKDIR/compare_run.json: the run's wall-clock seconds, command
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


def run_one(
    name: str, config: str, out: str, overrides: list[str], seed: str | None = None
) -> dict:
    workdir = os.path.join(out, name) if seed is None else os.path.join(out, name, f"seed{seed}")
    result_path = os.path.join(workdir, results.eval_file("test"))
    run_time = os.path.join(workdir, RUN_TIME)
    seeded = overrides if seed is None else [*overrides, f"seed={seed}"]
    cmd = run_command(config, workdir, _STEPS.value, [*_OVERRIDE.value, *seeded])
    record: dict = {"name": name, "config": config, "command": " ".join(cmd)}
    if seed is not None:
        record["seed"] = int(seed)
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
        seconds = time.perf_counter() - start
        write_json({"seconds": seconds, "command": record["command"]}, run_time)
    if os.path.exists(run_time):  # kept for tables collected later
        record["seconds"] = read_json(run_time)["seconds"]
    record["eval"] = read_json(result_path)
    if _PREDICT.value and has_decoder(workdir):
        record.update(score_decoder(workdir))
    return record


def has_decoder(workdir: str) -> bool:
    return bool(read_json(os.path.join(workdir, CONFIG_FILE))["model"]["cross_decoder"]["enabled"])


def is_greedy_test_score(path: str, workdir: str) -> bool:
    """Whether `path` holds what `score_decoder` reports: greedy over every test-split pair."""
    if not os.path.exists(path):
        return False
    scores = read_json(path)
    pairs = read_json(os.path.join(workdir, results.eval_file("test")))["n_pairs"]
    return scores["beam"] == 1 and scores["n_recipes"] == pairs


def score_decoder(workdir: str) -> dict:
    """{'predict_command', 'ingredients'}: the decoder's test-split scores (greedy, photo only)."""
    path = os.path.join(workdir, results.ingredients_file("test"))
    cmd = [sys.executable, "-m", "xmodal.apps.predict", f"--workdir={workdir}", "--split=test"]
    if not is_greedy_test_score(path, workdir):  # any other predict run overwrites the file
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return {"predict_command": " ".join(cmd), "ingredients": read_json(path)}


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
        bag = largest_bag(ev)
        cells = [r["name"], bag, str(ev["n_pairs"])]
        for direction, _ in COLUMNS:
            m = ev[direction][bag]
            cells += [f"{m[k]['mean']:.1f} ± {m[k]['std']:.1f}" for k in METRICS]
        cells.append(f"{r['seconds']:.0f}" if "seconds" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def largest_bag(ev: dict) -> str:
    return max((b for b in ev[COLUMNS[0][0]] if b != "full"), key=bag_size)


def seed_table(records: list[dict]) -> str:
    """One row per --run name: each metric's bag mean averaged over that name's seeds, ± the
    standard deviation across seeds (ddof=1; none shown for one seed); with --predict, the
    decoder's F1 the same way."""
    names = list(dict.fromkeys(r["name"] for r in records))
    metrics = [(d, k, f"{k} {short}") for d, short in COLUMNS for k in METRICS]
    decoder = [("micro_f1", "ingredient F1"), ("title_word_f1", "title word F1")]
    with_decoder = any("ingredients" in r for r in records)
    head = ["method", "seeds", *(label for *_, label in metrics)]
    head += [label for _, label in decoder] if with_decoder else []
    head.append("run s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        done = [r for r in records if r["name"] == name and "eval" in r]
        if not done:
            lines.append(f"| {name} | no result |")
            continue
        columns = [  # (values over seeds, scale): F1 in percent like the recalls
            ([r["eval"][d][largest_bag(r["eval"])][k]["mean"] for r in done], 1.0)
            for d, k, _ in metrics
        ]
        if with_decoder:
            columns += [
                ([r["ingredients"][k] for r in done if "ingredients" in r], 100.0)
                for k, _ in decoder
            ]
        cells = [name, ",".join(str(r.get("seed", "-")) for r in done)]
        for values, scale in columns:
            if not values:
                cells.append("-")
                continue
            mean = f"{scale * float(np.mean(values)):.1f}"
            if len(values) == 1:  # one seed: no spread to show
                cells.append(mean)
                continue
            cells.append(f"{mean} ± {scale * float(np.std(values, ddof=1)):.1f}")
        seconds = [r["seconds"] for r in done if "seconds" in r]
        cells.append(f"{np.mean(seconds):.0f}" if seconds else "-")
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
        for seed in _SEEDS.value or [None]:
            records.append(run_one(name, config, _OUT.value, overrides, seed))
    table = markdown_table(records)
    if _SEEDS.value:
        table += "\n\nOver seeds " + ",".join(_SEEDS.value) + ":\n\n" + seed_table(records)
    print(table)
    with open(os.path.join(_OUT.value, "compare.md"), "w") as f:
        f.write(table + "\n")
    results.write_result(_OUT.value, "compare.json", {"steps": _STEPS.value, "runs": records})


if __name__ == "__main__":
    app.run(main)
