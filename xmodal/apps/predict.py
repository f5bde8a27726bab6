"""Photo -> predicted ingredients and title with the cross decoder (greedy or beam search).

    python -m xmodal.apps.predict --workdir=DIR --image=photo.jpg [--beam=4]
    python -m xmodal.apps.predict --workdir=DIR --split=test   # ingredient P/R/F1

The command line of `xmodal.predict` (the Python API: `Predictor`, `evaluate_ingredients`); the
decoder sees the photo only, and `--split` writes WORKDIR/ingredients_<split>.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from xmodal.apps import cli
from xmodal.predict import Predictor, evaluate_ingredients


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Describe --image photos (one JSON line each), then score --split if given (returned)."""
    p = argparse.ArgumentParser(
        prog="python -m xmodal.apps.predict", description=__doc__.split("\n")[0]
    )
    cli.add_run_arguments(p)
    p.add_argument("--image", action="append", default=[], help="photo file (repeatable)")
    p.add_argument("--beam", type=int, default=1, help="beam width; 1 = greedy")
    p.add_argument(
        "--length_penalty",
        type=float,
        default=0.0,
        help="beam search's alpha: rank beams by log-probability / ((5 + length) / 6) ** alpha",
    )
    p.add_argument("--limit", type=int, default=None, help="score only the first N of --split")
    args = cli.parse_args(p, argv)
    if not args.image and not args.split:
        p.error("give --image=PHOTO (repeatable) or --split=SPLIT")
    predictor = Predictor.from_workdir(args.workdir, cli.run_config(args), which=args.checkpoint)
    outs: list[dict[str, Any]] = []
    if args.image:
        images = np.stack([predictor.load_image(path) for path in args.image])
        outs = predictor.predict(images, beam=args.beam, length_penalty=args.length_penalty)
        for path, out in zip(args.image, outs, strict=True):
            print(json.dumps({"image": path, **out}))
    if args.split:
        results = evaluate_ingredients(
            predictor,
            args.workdir,
            split=args.split,
            beam=args.beam,
            length_penalty=args.length_penalty,
            limit=args.limit,
        )
        print(json.dumps(results, indent=2))
        return results
    return outs


if __name__ == "__main__":
    main()
