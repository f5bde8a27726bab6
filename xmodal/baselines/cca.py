"""CCA baseline (Hotelling 1936; on Recipe1M: im2recipe's and AdaMine's CCA rows, and the seed
CCA study papers/001): fixed image and text features, a linear map of each into a shared space
fitted in closed form on the training pairs, then the standard retrieval protocol.

Features come from a dual encoder's branches in eval mode: the image encoder's pooled feature and
the recipe encoder's component features (title / ingredients / instructions, and 'all' = their
concatenation). The encoder is either freshly initialised from this config (`config.model`) or
restored from another run (`config.cca.features_from` = its WORKDIR; its config.json picks the
architecture). CCA maximises the correlation of the projections; with whitening,

    Cxx^-1/2 Cxy Cyy^-1/2 = U S V^T,   Wx = Cxx^-1/2 U_k,   Wy = Cyy^-1/2 V_k,

the canonical correlations are S_k and each side's projections have identity covariance. Ridge
regularisation C + r * mean(diag C) * I keeps the inverse square roots stable when features are
correlated or outnumber the pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from xmodal import evaluate
from xmodal.data import info as data_info
from xmodal.data.schema import COMPONENTS
from xmodal.models.dual_encoder import DualEncoder
from xmodal.run import Run, check_config, read_record, resolve_data_dir
from xmodal.runtime import results as results_lib
from xmodal.runtime import sharding

TEXTS = (*COMPONENTS, "all")
# Data fields that fix the input shapes the feature encoders were trained on.
TEXT_AND_IMAGE_SHAPE_FIELDS = (
    "image_size",
    "max_title_tokens",
    "max_ingredients",
    "max_instructions",
    "max_ingredient_tokens",
    "max_instruction_tokens",
)


@dataclasses.dataclass(frozen=True)
class CCA:
    """A fitted CCA: centre with the means, project with the weights, (k,) correlations."""

    mean_x: np.ndarray
    mean_y: np.ndarray
    w_x: np.ndarray  # [dx, k]
    w_y: np.ndarray  # [dy, k]
    correlations: np.ndarray  # [k], descending

    def project_x(self, x: np.ndarray, power: float = 0.0) -> np.ndarray:
        """Centre and project; `power` > 0 scales dimension i by correlation_i ** power
        (Gong et al., IJCV 2014), weighting well-aligned directions more in retrieval."""
        return ((x - self.mean_x) @ self.w_x) * self.correlations**power

    def project_y(self, y: np.ndarray, power: float = 0.0) -> np.ndarray:
        return ((y - self.mean_y) @ self.w_y) * self.correlations**power


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(c)
    return (vecs / np.sqrt(np.maximum(vals, 1e-12))) @ vecs.T


def fit_cca(x: np.ndarray, y: np.ndarray, dim: int, reg: float = 1e-3) -> CCA:
    """Closed-form regularised CCA of paired rows x [n, dx], y [n, dy] into `dim` dimensions."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"CCA needs >= 2 paired rows, got {len(x)} and {len(y)}")
    if not 0 < dim <= min(x.shape[1], y.shape[1]):
        raise ValueError(f"CCA dim must be in [1, {min(x.shape[1], y.shape[1])}], got {dim}")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n = len(x) - 1
    cxx, cyy, cxy = xc.T @ xc / n, yc.T @ yc / n, xc.T @ yc / n
    cxx += reg * np.mean(np.diag(cxx)) * np.eye(len(cxx)) + 1e-12 * np.eye(len(cxx))
    cyy += reg * np.mean(np.diag(cyy)) * np.eye(len(cyy)) + 1e-12 * np.eye(len(cyy))
    kx, ky = _inv_sqrt(cxx), _inv_sqrt(cyy)
    u, s, vt = np.linalg.svd(kx @ cxy @ ky, full_matrices=False)
    return CCA(mx, my, kx @ u[:, :dim], ky @ vt[:dim].T, s[:dim])


def text_features(feats: dict[str, np.ndarray], text: str) -> np.ndarray:
    if text == "all":
        return np.concatenate([feats[c] for c in COMPONENTS], axis=-1)
    if text not in COMPONENTS:
        raise ValueError(f"cca text must be one of {TEXTS}, got {text!r}")
    return feats[text]


def feature_run(config: ml_collections.ConfigDict, workdir: str, mesh: Any) -> tuple[Run, Any]:
    """(the run whose encoders give the features, its state): this config's model freshly
    initialised, or the trained run in `cca.features_from` reopened (`Run.from_workdir`: its
    config is checked to fit, and the data's vocabulary) with its architecture and text / image
    sizes and this config's data location and eval settings, restored at `eval.checkpoint`."""
    source = config.cca.features_from
    if not source:
        run = Run.create(config, workdir, mesh=mesh)
        return run, run.init_state()
    other, _ = read_record(source)
    fconfig = ml_collections.ConfigDict(config.to_dict())
    fconfig.method, fconfig.model = other.method, other.model
    for key in TEXT_AND_IMAGE_SHAPE_FIELDS:
        fconfig.data[key] = other.data[key]
    fconfig.cca.features_from = ""
    if not data_info.names_data(config.data):  # the built-in dataset, not the data run recorded
        fconfig.data.dir = resolve_data_dir(config.data)
    run = Run.from_workdir(source, fconfig, mesh=mesh)
    return run, run.restore(config.eval.checkpoint)


def extract_features(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[Run, Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(feature run, its state, training-pair features, `eval.split` features)."""
    check_config(config)
    features, state = feature_run(config, workdir, sharding.make_mesh())
    extract = features.embedder(DualEncoder.branch_features)
    limit = config.cca.max_train_pairs or None
    train = extract.split(state, features.data_dir, "train", config, limit=limit)
    test = extract.split(state, features.data_dir, config.eval.split, config)
    return features, state, train, test


def evaluate_cca(
    train: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    *,
    text: str,
    dim: int,
    reg: float,
    power: float,
    eval_config: Any,
) -> dict[str, Any]:
    """Fit on the training pairs with `text` features, score the test pairs (bag protocol)."""
    cca = fit_cca(train["image"], text_features(train, text), dim, reg)
    image = cca.project_x(test["image"], power)
    recipe = cca.project_y(text_features(test, text), power)
    return {
        "dim": int(dim),
        "train_correlations": [float(c) for c in cca.correlations[: min(dim, 10)]],
        **evaluate.bag_metrics(
            image,
            recipe,
            bag_sizes=tuple(eval_config.bag_sizes),
            num_bags=tuple(eval_config.num_bags),
            seed=eval_config.seed,
        ),
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """`python -m xmodal.main --config=configs/cca.py`: extract, fit per text choice, evaluate;
    writes WORKDIR/cca_<split>.json (every text) and eval_<split>.json (`cca.text`)."""
    features, state, train, test = extract_features(config, workdir)
    split = config.eval.split
    texts = tuple(config.cca.texts)
    if config.cca.text not in texts:
        texts = (*texts, config.cca.text)
    ablation = {
        text: evaluate_cca(
            train,
            test,
            text=text,
            dim=min(config.cca.dim, train["image"].shape[1], text_features(train, text).shape[1]),
            reg=config.cca.reg,
            power=config.cca.power,
            eval_config=config.eval,
        )
        for text in texts
    }
    step = int(state.step)
    results = {"step": step, "split": split, "n_pairs": len(test["image"])}
    results.update({k: ablation[config.cca.text][k] for k in evaluate.DIRECTIONS})
    dataclasses.replace(features, workdir=workdir).write_record(config)
    sweep = {**results, "train_pairs": len(train["image"]), "texts": ablation}
    results_lib.write_result(workdir, results_lib.cca_file(split), sweep)
    results_lib.write_result(workdir, results_lib.eval_file(split), results)
    if jax.process_index() == 0:
        for text, r in ablation.items():
            print(f"CCA text={text} dim={r['dim']}")
            print(evaluate.format_table({**results, **r}))
    return {"test": results, "texts": ablation}
