"""Retrieval evaluation exactly as the Recipe1M papers report it.

Bag protocol (Salvador et al. 2017; Carvalho et al. 2018, Sec. 4.2): draw bags of N test pairs
(10 x 1k, 5 x 10k) with a fixed seed; inside a bag every image queries all N recipes and every
recipe all N images by cosine similarity; report medR (median 1-based rank of the true match) and
R@1/5/10 (% of queries ranked <= K), mean and std over bags. Ties count against the model.
Next to the bags, the whole split is ranked at once under the label "full" (std 0: one draw).

A diverged model embeds to NaN, and NaN compares false with everything: counted naively, every
query would rank 0, better than first (medR 0, R@1 100%). So a pair whose true similarity is NaN
ranks last, and the protocol's entry points refuse non-finite embeddings outright
(`check_finite`), naming the split, the side and how many rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from xmodal.data import pipeline
from xmodal.data.schema import DIRECTIONS, IMAGE_TO_RECIPE, RECIPE_TO_IMAGE
from xmodal.run import Run
from xmodal.runtime import results as results_lib

RECALL_AT = (1, 5, 10)
RANK_CHUNK = 16384  # most queries ranked per device call
# Most similarities held on the device at once (f32 + a bool mask: ~5 bytes each, 640 MB): a
# 10k x 10k bag is ranked in one call; larger galleries are ranked in row blocks of this size.
RANK_MAX_SIMILARITIES = 2**27
FULL_SPLIT = "full"  # label of the whole-split numbers next to "1k" / "10k"


class NonFiniteEmbeddings(ValueError):
    """Embeddings holding NaN or Inf: any number scored from them would be meaningless."""


@jax.jit
def _chunk_ranks(queries: jax.Array, candidates: jax.Array, true_index: jax.Array) -> jax.Array:
    sims = jnp.dot(queries, candidates.T, precision=jax.lax.Precision.HIGHEST)
    true_sim = jnp.take_along_axis(sims, true_index[:, None], axis=1)
    # A NaN candidate compares false, so it never counts against a finite match; a NaN match
    # would count nothing and rank 0, so it ranks last instead.
    ranks = jnp.sum(sims >= true_sim, axis=1)
    return jnp.where(jnp.isnan(true_sim[:, 0]), sims.shape[1], ranks).astype(jnp.int32)


def retrieval_ranks(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """1-based rank of candidate i for query i under cosine similarity, ties counted against.

    Inputs need not be normalised. Rank = number of candidates at least as similar as the true
    match (the match itself included), so an all-equal row ranks last. Non-finite rows are not
    refused here (validation during training must still get a number): a query whose true
    similarity is NaN (a NaN or Inf row on either side) ranks last (N), and a NaN candidate never
    counts against another query's finite match. Runs on the default device:
    the whole similarity matrix in one call when it fits `RANK_MAX_SIMILARITIES` (a 10k bag
    does), else in equal query blocks (one compilation per candidate count).
    """
    q = _unit(np.asarray(queries, np.float32))
    c = _unit(np.asarray(candidates, np.float32))
    if q.shape != c.shape:
        raise ValueError(f"queries {q.shape} and candidates {c.shape} must be paired row by row")
    n = q.shape[0]
    chunk = max(1, min(RANK_CHUNK, n, RANK_MAX_SIMILARITIES // max(n, 1)))
    padded = -(-n // chunk) * chunk
    q_pad = np.zeros((padded, q.shape[1]), np.float32)
    q_pad[:n] = q
    idx = np.zeros((padded,), np.int32)
    idx[:n] = np.arange(n)
    c_dev = jnp.asarray(c)
    ranks = [
        _chunk_ranks(jnp.asarray(q_pad[s : s + chunk]), c_dev, jnp.asarray(idx[s : s + chunk]))
        for s in range(0, padded, chunk)
    ]
    return np.asarray(jnp.concatenate(ranks))[:n]


def _unit(x: np.ndarray) -> np.ndarray:
    # Squares summed in float64: in float32 they overflow past ~1e19 and would zero a finite row.
    norm = np.sqrt(np.einsum("...d,...d->...", x, x, dtype=np.float64))[..., None]
    scale = (1.0 / np.maximum(norm, 1e-12)).astype(np.float32)  # no float64 copy of x
    with np.errstate(invalid="ignore"):  # Inf * 0: a NaN row, which the ranks handle
        return x * scale


def nonfinite_rows(x: np.ndarray) -> int:
    """How many rows of `x` [N, D] hold a NaN or an Inf."""
    x = np.asarray(x)
    return int(np.count_nonzero(~np.isfinite(x).all(axis=tuple(range(1, x.ndim)))))


def check_finite(image: np.ndarray, recipe: np.ndarray, *, split: str | None = None) -> None:
    """Refuse to score embeddings holding NaN or Inf (a diverged model or a corrupt checkpoint),
    naming the split, the side and how many rows, instead of reporting a meaningless number."""
    sides = {"image": image, "recipe": recipe}
    bad = [f"{n} of {len(x)} {side} rows" for side, x in sides.items() if (n := nonfinite_rows(x))]
    if bad:
        where = f"the {split!r} split" if split else "the embeddings"
        raise NonFiniteEmbeddings(
            f"non-finite embeddings in {where}: {' and '.join(bad)} hold NaN or Inf (the model "
            "diverged, or its checkpoint is corrupt); refusing to score them"
        )


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    out = {"medR": float(np.median(ranks))}
    for k in RECALL_AT:
        out[f"R@{k}"] = float(100.0 * np.mean(ranks <= k))
    return out


def bag_label(size: int) -> str:
    return f"{size // 1000}k" if size % 1000 == 0 else str(size)


def bag_metrics(
    image: np.ndarray,
    recipe: np.ndarray,
    *,
    bag_sizes: Sequence[int] = (1000, 10000),
    num_bags: Sequence[int] = (10, 5),
    seed: int = 0,
    full: bool = True,
    split: str | None = None,
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{direction: {bag label: {metric: {mean, std}}}}; bags larger than the split are left out.

    Each bag is drawn once (without replacement) and used for both directions. With `full`, the
    whole split is also ranked as one bag under the label "full" (std 0). Non-finite embeddings
    are refused (`check_finite`, naming `split`).
    """
    check_finite(image, recipe, split=split)
    n = len(image)
    if len(bag_sizes) != len(num_bags):
        raise ValueError(f"bag_sizes {bag_sizes} and num_bags {num_bags} differ in length")
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {d: {} for d in DIRECTIONS}
    for size, count in zip(bag_sizes, num_bags, strict=True):
        if size > n:
            continue
        per_bag: dict[str, list[dict[str, float]]] = {d: [] for d in DIRECTIONS}
        for _ in range(count):
            idx = rng.choice(n, size=size, replace=False)
            img, rec = image[idx], recipe[idx]
            per_bag[IMAGE_TO_RECIPE].append(rank_metrics(retrieval_ranks(img, rec)))
            per_bag[RECIPE_TO_IMAGE].append(rank_metrics(retrieval_ranks(rec, img)))
        for d in DIRECTIONS:
            out[d][bag_label(size)] = {
                m: {
                    "mean": float(np.mean([b[m] for b in per_bag[d]])),
                    "std": float(np.std([b[m] for b in per_bag[d]])),
                }
                for m in per_bag[d][0]
            }
    if full and n > 0:
        for d, (a, b) in (
            (IMAGE_TO_RECIPE, (image, recipe)),
            (RECIPE_TO_IMAGE, (recipe, image)),
        ):
            whole = rank_metrics(retrieval_ranks(a, b))
            out[d][FULL_SPLIT] = {m: {"mean": v, "std": 0.0} for m, v in whole.items()}
    return out


def protocol_metrics(
    image: np.ndarray, recipe: np.ndarray, config: Any, *, split: str | None = None
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """`bag_metrics` under the run's `config.eval` protocol (bags, seed, whole split)."""
    return bag_metrics(
        image,
        recipe,
        bag_sizes=tuple(config.eval.bag_sizes),
        num_bags=tuple(config.eval.num_bags),
        seed=config.eval.seed,
        full=config.eval.full_split,
        split=split,
    )


def format_table(results: dict) -> str:
    """A readable table of an eval result (the JSON schema of DESIGN.md)."""
    lines = [
        f"split={results.get('split')}  step={results.get('step')}  pairs={results.get('n_pairs')}",
        f"{'direction':<16}{'bag':>6}{'medR':>14}{'R@1':>14}{'R@5':>14}{'R@10':>14}",
    ]
    for d in DIRECTIONS:
        for label, m in results.get(d, {}).items():
            cells = "".join(
                f"{m[k]['mean']:>8.2f} ±{m[k]['std']:>4.1f}" for k in ("medR", "R@1", "R@5", "R@10")
            )
            lines.append(f"{d:<16}{label:>6}{cells}")
    return "\n".join(lines)


def evaluate_state(run: Run, state: Any, *, split: str | None = None) -> dict[str, Any]:
    """Embed `split` of the run's data with `state`, score it with the bag protocol, write
    WORKDIR/eval_<split>.json (process 0; it names the data dir) and print a table."""
    config = run.config
    split = split or config.eval.split
    image, recipe = run.embed_split(state, split)
    results = {
        "step": int(state.step),
        "split": split,
        "data_dir": run.data_dir,  # the run's own data, or a new test set it was pointed at
        "n_pairs": len(image),
        **protocol_metrics(image, recipe, config, split=split),
    }
    results_lib.write_result(run.workdir, results_lib.eval_file(split), results)
    if jax.process_index() == 0:
        print(format_table(results))
    return results


def evaluate_checkpoint(
    config: Any,
    workdir: str,
    *,
    split: str | None = None,
    which: str | int | None = None,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """`--mode=eval`: restore a checkpoint of WORKDIR (best | latest | step) onto the devices
    of `mesh` (default: all) and score `split` (`evaluate_state`)."""
    run = Run.from_workdir(workdir, config, mesh=mesh)
    return evaluate_state(run, run.restore(which), split=split)


def embed_checkpoint(
    config: Any,
    workdir: str,
    *,
    split: str | None = None,
    which: str | int | None = None,
    mesh: Mesh | None = None,
) -> str:
    """`--mode=embed`: write WORKDIR/embeddings_<split>.npz: `image` and `recipe` [N, D] float32
    (unit norm, row i of both is pair i), `ids` [N] recipe ids (str), `step`, `split`. Plain
    NumPy: load with `np.load(path)` anywhere, no project code needed."""
    run = Run.from_workdir(workdir, config, mesh=mesh)
    split = split or run.config.eval.split
    state = run.restore(which)
    image, recipe = run.embed_split(state, split)
    check_finite(image, recipe, split=split)
    ids = np.array([m["id"] for m in pipeline.split_metadata(run.data_dir, split)], np.str_)
    path = results_lib.write_arrays(
        workdir,
        results_lib.embeddings_file(split),
        image=image.astype(np.float32),
        recipe=recipe.astype(np.float32),
        ids=ids,
        step=np.int64(state.step),
        split=np.str_(split),
    )
    if jax.process_index() == 0:
        print(f"wrote {len(ids)} {split} pairs (step {int(state.step)}) to {path}")
    return path
