"""Token budgets for H-T line packing: how many tokens a split's recipes need per component.

    python tools/packing_budget.py --config=configs/tnlbt.py [--split=train] [--json=out.json]

Packing (`model.text.packed_ingredient_tokens` / `packed_instruction_tokens`) lays a recipe's
ingredient or instruction lines end to end in a row of that many tokens; a line that does not fit
is left out with every line after it. This reads the split's records through the pipeline's own
text features (the config's line and token limits applied) and prints, per component, the
distribution of tokens per recipe and how many recipes and lines the configured budget leaves out,
so a budget can be chosen from the data (docs/methods.md).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from xmodal.data import pipeline, records, schema
from xmodal.run import resolve_data_dir

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].")
_SPLIT = flags.DEFINE_string("split", "train", "Prepared split to read.")
_JSON = flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")
flags.mark_flags_as_required(["config"])

COMPONENTS = {
    "ingredients": "packed_ingredient_tokens",
    "instructions": "packed_instruction_tokens",
}


def line_lengths(data_dir: str, split: str, data_config: Any) -> dict[str, np.ndarray]:
    """Component -> [recipes, lines] tokens per line, as the pipeline pads them for the model."""
    limits = pipeline.TextLimits.from_config(data_config)
    source = pipeline.open_split(data_dir, split)
    rows: dict[str, list[np.ndarray]] = {c: [] for c in COMPONENTS}
    for i in range(len(source)):
        feats = pipeline.text_features(records.decode_record(source[i]), limits)
        for c in COMPONENTS:
            rows[c].append(np.sum(feats[c] != schema.PAD_ID, axis=-1))
    return {c: np.stack(r) for c, r in rows.items()}


def budget_report(lengths: np.ndarray, budget: int) -> dict[str, Any]:
    """Tokens per recipe and what `budget` (0 = no packing) leaves out of [recipes, lines]."""
    per_recipe = lengths.sum(axis=-1)
    report: dict[str, Any] = {
        "recipes": len(lengths),
        "tokens_per_recipe": {
            "mean": float(per_recipe.mean()),
            **{f"p{q}": float(np.percentile(per_recipe, q)) for q in (50, 90, 99)},
            "max": int(per_recipe.max()),
        },
        "budget": budget,
    }
    if budget:
        left_out = (np.cumsum(lengths, axis=-1) > budget) & (lengths > 0)
        report["recipes_losing_lines"] = int(left_out.any(axis=-1).sum())
        report["lines_left_out"] = int(left_out.sum())
    return report


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    data_dir = resolve_data_dir(config.data)
    lengths = line_lengths(data_dir, _SPLIT.value, config.data)
    out = {
        c: budget_report(lengths[c], int(config.model.text.get(field, 0)))
        for c, field in COMPONENTS.items()
    }
    for c, r in out.items():
        t = r["tokens_per_recipe"]
        line = (
            f"{c:12s} {r['recipes']} recipes, tokens per recipe: mean {t['mean']:.1f}  "
            f"p50 {t['p50']:.0f}  p90 {t['p90']:.0f}  p99 {t['p99']:.0f}  max {t['max']}"
        )
        if r["budget"]:
            line += (
                f" | budget {r['budget']}: {r['recipes_losing_lines']} recipes lose "
                f"{r['lines_left_out']} lines"
            )
        print(line)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"split": _SPLIT.value, "data_dir": data_dir, **out}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
