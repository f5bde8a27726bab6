"""Where the cross decoder's ingredient errors are, on the built-in dataset: how many of the
ingredients drawn in the photo it names, how many of the pantry ones (salt, oil, ...: in the text
only, never drawn, `xmodal.data.synthetic_recipes.PANTRY_NAMES`), and how long its lists are.

    python tools/decoder_errors.py --workdir=W [--split=test] [--limit=256] [--beam=1]

Prints one JSON object; the F1 a decoder naming every drawn ingredient and nothing else would
score (`ceiling_f1`) bounds what the photos allow.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from xmodal.apps.predict import Predictor, ingredient_scores, predict_split
from xmodal.data import decoder_targets
from xmodal.data.synthetic_recipes import PANTRY_NAMES


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


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--beam", type=int, default=1)
    args = p.parse_args(argv)
    predictor = Predictor.from_workdir(args.workdir)
    predicted, references = predict_split(
        predictor, split=args.split, beam=args.beam, limit=args.limit
    )
    norm = functools.partial(decoder_targets.normalize_text, predictor.tokenizer)
    result = error_breakdown(
        [p["ingredients"] for p in predicted],
        [r["ingredients"] for r in references],
        frozenset(norm(x) for x in PANTRY_NAMES),  # as the decoder writes names
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
