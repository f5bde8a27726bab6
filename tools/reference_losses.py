"""Reference loss values from the released PyTorch code, for tests that need no torch.

    python tools/reference_losses.py --released_dir=HT --adamine_dir=ADAMINE --tfood_dir=TFOOD \
        [--out=tests/data/reference_losses.json]

HT, ADAMINE and TFOOD are checkouts of amzn/image-to-recipe-transformers (96e257e),
Cadene/recipe1m.bootstrap.pytorch (6ca20a2) and mshukor/TFood (466c120); their code is run
from there, never copied here. Needs torch (CPU is enough). Writes small random inputs and what
the released functions return on them (in float64), with each checkout's commit:

- H-T: `TripletLoss` (src/utils/loss.py, margin 0.3) on an image/recipe batch, and the recipe
  self-supervised loss as src/train.py `trainIter` forms it (lines 51-71: `TripletLoss(q, v)`
  for q the raw feature of a component and v another component's feature projected into its
  space, summed over the six ordered pairs, `loss_recipe /= c`), and their total
  `loss_paired + recipe_loss_weight * loss_recipe` (weight 1, src/config.py).
- AdaMine: `Triplet.__call__` (recipe1m/models/criterions/triplet.py) with the options of
  recipe1m/options/adamine.yaml, and of avg.yaml (aggregation mean). That file adds boolean
  masks, which current PyTorch refuses; this script runs it with that one expression spelled
  `torch.logical_and(...)` (the fix T-Food's copy of the file made), in memory only.
- T-Food: `Triplet.__call__` with `margin_params.adaptive_margin` (its adaptive margin), IRR and
  RII only, and the margins it chose (`alpha_irr`, `alpha_rii`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

flags.DEFINE_string("released_dir", None, "checkout of amzn/image-to-recipe-transformers")
flags.DEFINE_string("adamine_dir", None, "checkout of Cadene/recipe1m.bootstrap.pytorch")
flags.DEFINE_string("tfood_dir", None, "checkout of mshukor/TFood")
flags.DEFINE_string("out", "tests/data/reference_losses.json", "where to write the values")
FLAGS = flags.FLAGS

COMPONENTS = ("title", "ingredients", "instructions")
BOOL_MASK_SUM = "matrix_mask = ((class1_matrix != 0) + (class2_matrix != 0)) == 2"
BOOL_MASK_AND = "matrix_mask = torch.logical_and(class1_matrix != 0, class2_matrix != 0)"
# (batch size, embedding width, class of each pair; 0 = unlabelled). Every labelled class has
# two members at least (the released semantic loss fails otherwise); the classes of unequal
# sizes make the released code cap each query's negatives.
ADAMINE_CASES = (
    (6, 5, (1, 1, 2, 2, 0, 0)),
    (10, 6, (1, 2, 1, 0, 3, 1, 2, 0, 3, 0)),
    (12, 8, (2, 2, 0, 5, 5, 5, 5, 1, 0, 1, 0, 2)),
)


def _commit(checkout: str) -> str:
    out = subprocess.run(
        ["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown (not a git checkout)"


def _load(path: Path, name: str, replace: tuple[str, str] | None = None) -> types.ModuleType:
    """Run a released source file as module `name`, optionally with one expression replaced."""
    source = path.read_text()
    if replace is not None:
        if replace[0] not in source:
            raise SystemExit(f"{path}: expected {replace[0]!r} to patch; another version?")
        source = source.replace(replace[0], replace[1])
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)  # the released code, run
    return module


def _stub_bootstrap() -> None:
    """The bootstrap.pytorch names triplet.py imports; its loss code only logs through them."""
    logger = types.ModuleType("bootstrap.lib.logger")

    class Logger:
        ERROR, WARNING = "ERROR", "WARNING"

        def __call__(self, *args: Any) -> None:
            if "ERROR" in args:
                raise RuntimeError(" ".join(map(str, args)))

    options = types.ModuleType("bootstrap.lib.options")

    class Options:
        def __getitem__(self, key: str) -> Any:
            return {"misc": {"cuda": False}, "exp": {}}[key]

    logger.Logger, options.Options = Logger, Options
    for name, module in (
        ("bootstrap", types.ModuleType("bootstrap")),
        ("bootstrap.lib", types.ModuleType("bootstrap.lib")),
        ("bootstrap.lib.logger", logger),
        ("bootstrap.lib.options", options),
    ):
        sys.modules.setdefault(name, module)


def _array(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Normal values with 4 decimals: short in the file; float64 here, float32 on the JAX side
    (a relative rounding of 6e-8, far inside the tests' 1e-6)."""
    return np.round(rng.normal(size=shape), 4)


def ht_cases(checkout: str) -> dict[str, Any]:
    import torch

    loss_module = _load(Path(checkout) / "src/utils/loss.py", "ht_loss")
    triplet = loss_module.TripletLoss(margin=0.3)
    cases = []
    for seed, (batch, width) in enumerate(((4, 6), (8, 6), (12, 10))):
        rng = np.random.default_rng(seed)
        image, recipe = _array(rng, batch, width), _array(rng, batch, width)
        raw = {c: _array(rng, batch, width) for c in COMPONENTS}
        # projected[b][a]: component b's feature projected into a's space (src/models.py names
        # it projected_text_features[b][a], from projector_recipes[b][a]).
        projected = {b: {a: _array(rng, batch, width) for a in COMPONENTS if a != b} for b in raw}
        t = torch.from_numpy
        paired = triplet(t(image), t(recipe)).item()
        loss_recipe, count = 0.0, 0
        for raw_name in COMPONENTS:  # src/train.py lines 56-70
            for proj_name in COMPONENTS:
                if proj_name != raw_name:
                    q, v = t(raw[raw_name]), t(projected[proj_name][raw_name])
                    loss_recipe += triplet(q, v).item()
                    count += 1
        loss_recipe /= count
        cases.append(
            {
                "image": image.tolist(),
                "recipe": recipe.tolist(),
                "raw": {c: v.tolist() for c, v in raw.items()},
                "projected": {
                    f"{b}->{a}": v.tolist() for b, row in projected.items() for a, v in row.items()
                },
                "loss_paired": paired,
                "loss_recipe": loss_recipe,
                "loss": paired + 1.0 * loss_recipe,
            }
        )
    return {"margin": 0.3, "recipe_loss_weight": 1.0, "cases": cases}


def _triplet_options(aggregation: str, substrategy: list[str], weights: list[float]) -> dict:
    return {
        "retrieval_strategy": {
            "margin": 0.3,
            "sampling": "max_negative",
            "nb_samples": 9999,
            "aggregation": aggregation,
            "substrategy": substrategy,
            "substrategy_weights": weights,
        }
    }


def _run_triplet(criterion: Any, image: np.ndarray, recipe: np.ndarray, classes) -> dict:
    import torch

    labels = torch.tensor(classes, dtype=torch.long)[:, None]
    out = criterion(
        torch.from_numpy(image),
        torch.from_numpy(recipe),
        torch.ones(len(classes), 1),
        labels,
        labels.clone(),
    )
    return {k: float(v) for k, v in out.items() if k.startswith("loss")}


def adamine_cases(checkout: str) -> dict[str, Any]:
    _stub_bootstrap()
    path = Path(checkout) / "recipe1m/models/criterions/triplet.py"
    module = _load(path, "adamine_triplet", (BOOL_MASK_SUM, BOOL_MASK_AND))
    terms, weights = ["IRR", "RII", "SIRR", "SRII"], [1.0, 1.0, 0.1, 0.1]
    criteria = {
        name: module.Triplet(_triplet_options(aggregation, terms, weights), 1048, 0)
        for name, aggregation in (("adamine", "valid"), ("avg", "mean"))
    }
    cases = []
    for seed, (batch, width, classes) in enumerate(ADAMINE_CASES):
        rng = np.random.default_rng(100 + seed)
        image, recipe = _array(rng, batch, width), _array(rng, batch, width)
        case = {"image": image.tolist(), "recipe": recipe.tolist(), "classes": list(classes)}
        for name, criterion in criteria.items():
            case[name] = _run_triplet(criterion, image, recipe, classes)
        cases.append(case)
    return {"margin": 0.3, "substrategy": terms, "substrategy_weights": weights, "cases": cases}


def tfood_cases(checkout: str) -> dict[str, Any]:
    import torch

    _stub_bootstrap()
    module = _load(Path(checkout) / "recipe1m/models/criterions/triplet.py", "tfood_triplet")
    bounds = {"min_margin": 0.05, "max_margin": 0.7}  # its defaults
    cases = []
    for reference in (0.3, 0.05):
        options = _triplet_options("valid", ["IRR", "RII"], [1.0, 1.0])
        options["retrieval_strategy"]["margin"] = reference
        options["retrieval_strategy"]["margin_params"] = {"adaptive_margin": True, **bounds}
        options["retrieval_strategy.margin_params"] = options["retrieval_strategy"]["margin_params"]
        engine = types.SimpleNamespace(register_hook=lambda *args: None)
        criterion = module.Triplet(options, 1048, 0, engine)
        for seed, batch in enumerate((6, 12)):
            rng = np.random.default_rng(200 + seed)
            image, recipe = _array(rng, batch, 8), _array(rng, batch, 8)
            out = _run_triplet(criterion, image, recipe, [0] * batch)
            cases.append(
                {
                    "reference_margin": reference,
                    "image": image.tolist(),
                    "recipe": recipe.tolist(),
                    "margin_i2r": float(torch.as_tensor(criterion.alpha_irr)),
                    "margin_r2i": float(torch.as_tensor(criterion.alpha_rii)),
                    **out,
                }
            )
    return {**bounds, "cases": cases}


def main(argv: list[str]) -> None:
    del argv
    result: dict[str, Any] = {"generated_by": "tools/reference_losses.py", "sources": {}}
    for key, checkout, make, repo in (
        ("ht", FLAGS.released_dir, ht_cases, "amzn/image-to-recipe-transformers"),
        ("adamine", FLAGS.adamine_dir, adamine_cases, "Cadene/recipe1m.bootstrap.pytorch"),
        ("tfood", FLAGS.tfood_dir, tfood_cases, "mshukor/TFood"),
    ):
        if checkout:
            result["sources"][key] = {"repository": repo, "commit": _commit(checkout)}
            result[key] = make(checkout)
    if len(result) == 2:
        raise app.UsageError("give --released_dir, --adamine_dir or --tfood_dir")
    Path(FLAGS.out).write_text(json.dumps(result) + "\n")
    print(f"wrote {FLAGS.out}: {', '.join(result['sources'])}")


if __name__ == "__main__":
    app.run(main)
