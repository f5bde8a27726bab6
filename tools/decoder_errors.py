"""Where the cross decoder's ingredient errors are, on the built-in dataset: how many of the
ingredients drawn in the photo it names, how many of the pantry ones (salt, oil, ...: in the text
only, never drawn, `xmodal.data.builtin.recipes.PANTRY_NAMES`), and how long its lists are.

    python tools/decoder_errors.py --workdir=W [--split=test] [--limit=256] [--beam=1]

Prints one JSON object with two references for the decoder's F1: `ceiling_f1`, a decoder naming
every drawn ingredient and nothing else (perfect sight of every piece, however small), and
`class_pool_f1` (with its precision and recall), one naming every ingredient its dish class
draws from (the class's pool, `xmodal.data.builtin.recipes.CLASSES`) — what knowing the dish
class exactly, and not which of its ingredients are on the plate, scores. (The built-in dataset
only: the recipes are regenerated from the run's `data.synthetic` to find each one's class.)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from xmodal.data import decoder_targets, pipeline, records
from xmodal.data.builtin.recipes import CLASSES, PANTRY_NAMES, generate_recipes
from xmodal.predict import Predictor, ingredient_scores, predict_split


def error_breakdown(
    predicted: list[list[str]], truth: list[list[str]], pantry: frozenset[str]
) -> dict[str, float]:
    """Recall of drawn and of pantry ingredients, list lengths, and the drawn-only ceiling F1."""
    drawn_hits = drawn = pantry_hits = in_pantry = 0
    for pred, ref in zip(predicted, truth, strict=True):
        names = set(pred)
        for x in set(ref):
            if x in pantry:
                in_pantry, pantry_hits = in_pantry + 1, pantry_hits + (x in names)
            else:
                drawn, drawn_hits = drawn + 1, drawn_hits + (x in names)
    drawn_only = [[x for x in set(ref) if x not in pantry] for ref in truth]
    return {
        "recipes": len(truth),
        "drawn_recall": drawn_hits / drawn if drawn else 0.0,
        "pantry_recall": pantry_hits / in_pantry if in_pantry else 0.0,
        "pantry_share": in_pantry / (drawn + in_pantry) if drawn + in_pantry else 0.0,
        "predicted_per_recipe": float(np.mean([len(set(p)) for p in predicted])),
        "true_per_recipe": float(np.mean([len(set(r)) for r in truth])),
        "pantry_predicted_per_recipe": float(np.mean([len(set(p) & pantry) for p in predicted])),
        "ceiling_f1": ingredient_scores(drawn_only, truth)["micro_f1"],
        **ingredient_scores(predicted, truth),
    }


def class_pools(num_recipes: int, seed: int) -> dict[str, list[str]]:
    """Built-in recipe id -> the ingredient pool of its dish class."""
    return {
        r["id"]: CLASSES[r["class_index"] - 1]["pool"] for r in generate_recipes(num_recipes, seed)
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--beam", type=int, default=1)
    args = p.parse_args(argv)
    predictor = Predictor.from_workdir(args.workdir)
    # The class pools come from regenerating the built-in recipes (`data.synthetic`): a split
    # holding other recipes is refused before anything is predicted.
    synthetic = predictor.config.data.synthetic
    pools = class_pools(synthetic.num_recipes, synthetic.seed)
    source = pipeline.open_split(predictor.run.data_dir, args.split)
    n = len(source) if args.limit is None else min(args.limit, len(source))
    ids = [records.decode_record(source[i])["id"] for i in range(n)]
    foreign = sum(i not in pools for i in ids)
    if foreign:
        raise SystemExit(
            f"{foreign} of {n} recipes of {args.workdir}'s {args.split!r} split are not the "
            f"built-in dataset's ({synthetic.num_recipes} recipes, seed {synthetic.seed})"
        )
    predicted, references = predict_split(
        predictor, split=args.split, beam=args.beam, limit=args.limit
    )
    norm = functools.partial(decoder_targets.normalize_text, predictor.tokenizer)
    truth = [r["ingredients"] for r in references]
    result = error_breakdown(
        [p["ingredients"] for p in predicted],
        truth,
        frozenset(norm(x) for x in PANTRY_NAMES),  # as the decoder writes names
    )
    pool = ingredient_scores([[norm(x) for x in pools[i]] for i in ids], truth)
    for k in ("precision", "recall", "f1"):
        result[f"class_pool_{k}"] = pool[f"micro_{k}"]
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
