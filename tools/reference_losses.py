"""Reference loss values from the released PyTorch code, for tests that need no torch.

    python tools/reference_losses.py --released_dir=HT --adamine_dir=ADAMINE --tfood_dir=TFOOD \
        --acme_dir=ACME [--out=tests/data/reference_losses.json]

HT, ADAMINE, TFOOD and ACME are checkouts of amzn/image-to-recipe-transformers (96e257e),
Cadene/recipe1m.bootstrap.pytorch (6ca20a2), mshukor/TFood (466c120) and hwang1996/ACME
(318091b); their code is run from there, never copied here. Needs torch (CPU is enough).
Writes small random inputs and what the released functions return on them (in float64), with
each checkout's commit:

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
- ACME: `train.py` cannot be imported (it parses arguments, builds its networks on the GPU and
  imports `torch.legacy` at the top), so its loss functions (`KL_loss`,
  `compute_gradient_penalty`, `train_Dnet`, `train_Gnet`) are taken out of it by name (`ast`)
  and run with its module-level criteria rebuilt as it builds them (lines 46-59), on the CPU
  (`torch.cuda.FloatTensor` -> `torch.FloatTensor`); the discriminators are small stand-ins
  whose outputs are recorded. `triplet_loss.py`'s `global_loss` runs with `TripletLoss`'s
  `.cuda()` and `torch.cuda.device` removed. In memory only.
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
flags.DEFINE_string("acme_dir", None, "checkout of hwang1996/ACME")
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


ACME_FUNCTIONS = ("KL_loss", "compute_gradient_penalty", "train_Dnet", "train_Gnet")


def _acme_functions(checkout: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """`ACME_FUNCTIONS` out of ACME's train.py, compiled into `namespace` (its globals), on CPU."""
    import ast

    path = Path(checkout) / "train.py"
    source = path.read_text()
    tree = ast.parse(source)
    found = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    missing = [f for f in ACME_FUNCTIONS if f not in found]
    if missing:
        raise SystemExit(f"{path}: no {', '.join(missing)}; another version?")
    for name in ACME_FUNCTIONS:
        code = ast.get_source_segment(source, found[name])
        code = code.replace("torch.cuda.FloatTensor", "torch.FloatTensor")
        exec(compile(code, str(path), "exec"), namespace)  # the released function, run
    return {name: namespace[name] for name in ACME_FUNCTIONS}


def _acme_case(
    checkout: str,
    triplet_module: Any,
    seed: int,
    batch: int,
    width: int,
    classes: int,
    ingredients: int,
) -> dict[str, Any]:
    """One ACME case: random inputs, and what the released functions return on them."""
    import torch
    from torch import nn

    t = torch.from_numpy
    rng = np.random.default_rng(100 + seed)
    # The released module-level objects its functions read (train.py 46-59).
    weights = torch.ones(classes, dtype=torch.float64)
    weights[0] = 0
    outputs: dict[int, tuple[Any, Any]] = {}

    class RecordedD:
        """netsD: (sigmoid real/fake probability, class logits), looked up per input."""

        def __call__(self, imgs: Any, mu: Any) -> tuple[Any, Any]:
            return outputs[id(imgs)]

    namespace: dict[str, Any] = {
        "torch": torch,
        "np": np,
        "netsD": RecordedD(),
        "GAN_criterion": nn.BCELoss(),
        "class_criterion": nn.CrossEntropyLoss(weight=weights),
        "real_labels": torch.ones(batch, dtype=torch.float64),
        "fake_labels": torch.zeros(batch, dtype=torch.float64),
    }
    fns = _acme_functions(checkout, namespace)
    # Modality alignment: a 2-layer critic on embeddings, WGAN-GP.
    image, recipe = _array(rng, batch, width), _array(rng, batch, width)
    w1, b1 = _array(rng, width, 8), _array(rng, 8)
    w2, b2 = _array(rng, 8, 1), _array(rng, 1)
    critic = lambda x: torch.nn.functional.leaky_relu(x @ t(w1) + t(b1), 0.2) @ t(w2) + t(b2)
    np.random.seed(seed)  # compute_gradient_penalty draws alpha from numpy's global stream
    alpha = np.random.random((batch, 1))
    np.random.seed(seed)
    torch.set_default_dtype(torch.float64)
    try:
        penalty = fns["compute_gradient_penalty"](critic, t(image), t(recipe)).item()
    finally:
        torch.set_default_dtype(torch.float32)
    real_scores, fake_scores = critic(t(image)), critic(t(recipe))
    critic_loss = (-torch.mean(real_scores) + torch.mean(fake_scores)).item()  # train.py 238
    # Recipe -> image: recorded discriminator outputs, conditioning augmentation.
    real_logit, fake_logit = _array(rng, batch), _array(rng, batch)
    real_cls, fake_cls = _array(rng, batch, classes), _array(rng, batch, classes)
    labels = rng.integers(0, classes, size=batch)
    labels[:2] = (0, 1)  # a class-0 row weighs nothing
    mu, logvar = _array(rng, batch, width), 0.5 * _array(rng, batch, width)
    real_imgs, fake_imgs = [torch.zeros(batch, 3, 2, 2)], torch.zeros(batch, 3, 2, 2)
    fake_detached = fake_imgs.detach()
    prob = lambda z: torch.sigmoid(t(z))
    outputs[id(real_imgs[0])] = (prob(real_logit), t(real_cls))
    outputs[id(fake_imgs)] = (prob(fake_logit), t(fake_cls))
    fake_imgs.detach = lambda: fake_detached  # train_Dnet detaches the fakes
    outputs[id(fake_detached)] = (prob(fake_logit), t(fake_cls))
    label_t = t(labels)
    loss_d = fns["train_Dnet"](0, real_imgs, [fake_imgs], t(mu), label_t).item()
    loss_g = fns["train_Gnet"](0, real_imgs, [fake_imgs], t(mu), t(logvar), label_t).item()
    kl = fns["KL_loss"](t(mu), t(logvar)).item()
    # Image -> recipe: MultiLabelMarginLoss (targets: class ids ended by -1) and the class.
    scores = _array(rng, batch, ingredients)
    multi_hot = (rng.random((batch, ingredients)) < 0.35).astype(np.int64)
    multi_hot[0] = 0  # a row without targets
    index_lists = np.full((batch, ingredients), -1, np.int64)
    for row, hot in enumerate(multi_hot):
        ids = np.flatnonzero(hot)
        index_lists[row, : len(ids)] = ids
    margin_loss = nn.MultiLabelMarginLoss()(t(scores), t(index_lists)).item()
    # What train.py 266 computes: the 0/1 vector itself as the target (read as class ids).
    margin_as_released = nn.MultiLabelMarginLoss()(t(scores), t(multi_hot)).item()
    class_loss = nn.CrossEntropyLoss(weight=weights)(t(real_cls), label_t).item()
    # Retrieval: batch-hard triplet over images and recipes stacked, labels the pair index.
    features = np.concatenate([image, recipe])
    pair_ids = torch.tensor(list(range(batch)) * 2)
    triplet = triplet_module.TripletLoss([0], margin=0.3)
    hard = triplet_module.global_loss(triplet, t(features), pair_ids)[0].item()
    return {
        "image": image.tolist(),
        "recipe": recipe.tolist(),
        "critic": {
            "w1": w1.tolist(),
            "b1": b1.tolist(),
            "w2": w2.tolist(),
            "b2": b2.tolist(),
            "leaky_relu": 0.2,
        },
        "alpha": alpha.tolist(),
        "gradient_penalty": penalty,
        "critic_loss": critic_loss,
        "generator_loss": (-torch.mean(fake_scores)).item(),
        "real_logit": real_logit.tolist(),
        "fake_logit": fake_logit.tolist(),
        "real_class_logits": real_cls.tolist(),
        "fake_class_logits": fake_cls.tolist(),
        "labels": labels.tolist(),
        "class_weights": weights.tolist(),
        "mu": mu.tolist(),
        "logvar": logvar.tolist(),
        "train_Dnet": loss_d,
        "train_Gnet": loss_g,
        "KL_loss": kl,
        "scores": scores.tolist(),
        "multi_hot": multi_hot.tolist(),
        "multilabel_margin": margin_loss,
        "multilabel_margin_as_released": margin_as_released,
        "class_loss": class_loss,
        "hardest_triplet": hard,
    }


def acme_cases(checkout: str) -> dict[str, Any]:
    triplet_module = _load(
        Path(checkout) / "triplet_loss.py",
        "acme_triplet",
        ("with torch.cuda.device(self.device[0]):\n      y = Variable(dist_an.data.new()"
         ".resize_as_(dist_an.data).fill_(1)).cuda()",
         "y = Variable(dist_an.data.new().resize_as_(dist_an.data).fill_(1))"),
    )  # fmt: skip
    cases = []
    for seed, (batch, width, classes, ingredients) in enumerate(((4, 6, 5, 7), (8, 10, 6, 9))):
        cases.append(_acme_case(checkout, triplet_module, seed, batch, width, classes, ingredients))
    return {"margin": 0.3, "gradient_penalty_weight": 10.0, "kl_weight": 2.0, "cases": cases}


def main(argv: list[str]) -> None:
    del argv
    result: dict[str, Any] = {"generated_by": "tools/reference_losses.py", "sources": {}}
    for key, checkout, make, repo in (
        ("ht", FLAGS.released_dir, ht_cases, "amzn/image-to-recipe-transformers"),
        ("adamine", FLAGS.adamine_dir, adamine_cases, "Cadene/recipe1m.bootstrap.pytorch"),
        ("tfood", FLAGS.tfood_dir, tfood_cases, "mshukor/TFood"),
        ("acme", FLAGS.acme_dir, acme_cases, "hwang1996/ACME"),
    ):
        if checkout:
            result["sources"][key] = {"repository": repo, "commit": _commit(checkout)}
            result[key] = make(checkout)
    if len(result) == 2:
        raise app.UsageError("give --released_dir, --adamine_dir, --tfood_dir or --acme_dir")
    Path(FLAGS.out).write_text(json.dumps(result) + "\n")
    print(f"wrote {FLAGS.out}: {', '.join(result['sources'])}")


if __name__ == "__main__":
    app.run(main)
