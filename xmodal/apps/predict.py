"""Photo -> predicted ingredients and title with the cross decoder (greedy or beam search).

    python -m xmodal.apps.predict --workdir=DIR --image=photo.jpg [--beam=4]
    python -m xmodal.apps.predict --workdir=DIR --split=test   # ingredient P/R/F1

The decoder sees the photo only (the recipe memory tokens are left out, as in the training drop).
Decoding is one jit-compiled `jax.lax.fori_loop` over a fixed-length token buffer, so there is one
compilation per (batch size, beam) and none per token; every step re-runs the small decoder over
the buffer with the causal mask (no KV cache: the decoder is a few layers over <= 64 tokens).
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmodal.apps.retrieval import read_photo
from xmodal.data import decoder_targets, pipeline, records, schema
from xmodal.data import tokenizer as tokenizer_lib
from xmodal.run import Run
from xmodal.runtime import sharding

NEG_INF = -1e9
LogitsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def greedy_decode(
    logits_fn: LogitsFn, memory: jax.Array, memory_valid: jax.Array, length: int
) -> jax.Array:
    """[B, length] ids: BOS, then the argmax token at each step; PAD after EOS.
    `logits_fn(tokens, memory, valid)` gives next-token logits (`DualEncoder.decoder_logits`)."""
    b = memory.shape[0]
    buf = jnp.zeros((b, length), jnp.int32).at[:, 0].set(schema.BOS_ID)

    def step(t, carry):
        buf, done = carry
        logits = logits_fn(buf, memory, memory_valid)[:, t - 1]
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, schema.PAD_ID, nxt)
        return buf.at[:, t].set(nxt), done | (nxt == schema.EOS_ID)

    buf, _ = jax.lax.fori_loop(1, length, step, (buf, jnp.zeros((b,), jnp.bool_)))
    return buf


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
    """GNMT's length normaliser ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, Eq. 14): a beam is ranked
    by its summed log-probability divided by this, so alpha > 0 stops beam search from preferring
    short sequences (every added token lowers the plain sum); alpha = 0 ranks by the plain sum."""
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_decode(
    logits_fn: LogitsFn,
    memory: jax.Array,
    memory_valid: jax.Array,
    length: int,
    beam: int,
    alpha: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Beam search: ([B, length] best sequence, [B] its summed log-probability).

    Each step extends every live beam by every token and keeps the `beam` candidates of the
    B x beam x V with the best summed log-probability divided by `length_penalty(generated tokens,
    alpha)`; a finished beam (EOS emitted) extends only by PAD at no cost, so its score and length
    stay. The returned score is the plain sum. beam=1 is greedy decoding (for any alpha).
    """
    b = memory.shape[0]
    mem = jnp.repeat(memory, beam, axis=0)
    mem_valid = jnp.repeat(memory_valid, beam, axis=0)
    buf = jnp.zeros((b, beam, length), jnp.int32).at[:, :, 0].set(schema.BOS_ID)
    scores = jnp.full((b, beam), NEG_INF).at[:, 0].set(0.0)  # one live beam at the start
    done = jnp.zeros((b, beam), jnp.bool_)
    lengths = jnp.zeros((b, beam), jnp.int32)  # generated tokens, EOS included

    def step(t, carry):
        buf, scores, done, lengths = carry
        logits = logits_fn(buf.reshape(b * beam, length), mem, mem_valid)[:, t - 1]
        vocab = logits.shape[-1]
        pad_only = jnp.full((vocab,), NEG_INF).at[schema.PAD_ID].set(0.0)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, beam, vocab)
        logp = jnp.where(done[..., None], pad_only, logp)
        cand = (scores[..., None] + logp).reshape(b, beam * vocab)
        cand_len = jnp.repeat(jnp.where(done, lengths, lengths + 1), vocab, axis=1)
        _, flat = jax.lax.top_k(cand / length_penalty(cand_len, alpha), beam)
        scores = jnp.take_along_axis(cand, flat, axis=1)
        origin, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        buf = jnp.take_along_axis(buf, origin[..., None], axis=1).at[:, :, t].set(token)
        lengths = jnp.take_along_axis(cand_len, flat, axis=1)
        done = jnp.take_along_axis(done, origin, axis=1) | (token == schema.EOS_ID)
        return buf, scores, done, lengths

    buf, scores, _, _ = jax.lax.fori_loop(1, length, step, (buf, scores, done, lengths))
    return buf[:, 0], scores[:, 0]


class Predictor:
    """A restored model with its cross decoder: uint8 photos -> ingredients and title."""

    def __init__(self, run: Run, state: Any):
        self.run = run
        self.config = run.config
        self.image_size = run.config.data.image_size
        self.length = run.config.data.max_decoder_tokens
        self.vocab_size = run.vocab_size
        self.tokenizer = tokenizer_lib.load_tokenizer(run.data_dir)
        model = nnx.merge(run.graphdef, state.params, state.model_state)
        model.check_decoder()
        model.eval()
        self._graphdef, self._params = nnx.split(model)
        # alpha is traced: a new length penalty reuses the compiled search (beam sets the shapes)
        self._decode = jax.jit(self._decode_ids, static_argnames="beam")

    @classmethod
    def from_workdir(
        cls, workdir: str, config: Any = None, *, which: str | int | None = "best"
    ) -> Predictor:
        """WORKDIR's run (its recorded config unless `config`), its best (or latest, or a given
        step's) checkpoint restored onto one device."""
        run = Run.from_workdir(workdir, config, mesh=sharding.make_mesh(1))
        return cls(run, run.restore(which))

    def _decode_ids(self, params: Any, images: jax.Array, beam: int, alpha: jax.Array) -> jax.Array:
        model = nnx.merge(self._graphdef, params)
        memory, valid = model.photo_memory(images)
        if beam == 1:
            return greedy_decode(model.decoder_logits, memory, valid, self.length)
        return beam_decode(model.decoder_logits, memory, valid, self.length, beam, alpha)[0]

    def predict_ids(
        self, images: np.ndarray, *, beam: int = 1, length_penalty: float = 0.0
    ) -> np.ndarray:
        """uint8 [B, S, S, 3] (S = data.image_size) -> generated ids [B, max_decoder_tokens];
        `length_penalty` is beam search's alpha (`length_penalty`), unused by greedy decoding."""
        images = np.asarray(images)
        want = (self.image_size, self.image_size, 3)
        if images.ndim != 4 or images.shape[1:] != want or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [B, {want}], got {images.dtype} {images.shape}")
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        if not length_penalty >= 0.0:
            raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
        alpha = jnp.float32(length_penalty if beam > 1 else 0.0)
        return np.asarray(self._decode(self._params, jnp.asarray(images), beam=beam, alpha=alpha))

    def predict(
        self, images: np.ndarray, *, beam: int = 1, length_penalty: float = 0.0
    ) -> list[dict[str, Any]]:
        """uint8 photos -> [{'ingredients': [str, ...], 'title': str}, ...]."""
        ids = self.predict_ids(images, beam=beam, length_penalty=length_penalty)
        return [
            decoder_targets.decode_target(self.tokenizer, row, vocab_size=self.vocab_size)
            for row in ids
        ]

    def load_image(self, path_or_bytes: str | bytes) -> np.ndarray:
        """A photo file (or its bytes) -> the model's uint8 input (`retrieval.read_photo`:
        upright, centre crop as in eval; a bomb or a non-photo is a ValueError)."""
        return read_photo(path_or_bytes, self.image_size)


def ingredient_scores(
    predicted: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Ingredient precision / recall / F1 of predicted vs reference lists, compared as sets.

    micro_*: over all recipes pooled (sum of matches / sum of predicted or reference names), as
    inverse-cooking papers report; macro_*: the mean of per-recipe values (a recipe with no
    predictions has precision 0; F1 of P = R = 0 is 0).
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} references")
    hits = n_pred = n_true = 0
    per: list[tuple[float, float, float]] = []
    for pred, ref in zip(predicted, truth, strict=True):
        p, r = set(pred), set(ref)
        h = len(p & r)
        hits, n_pred, n_true = hits + h, n_pred + len(p), n_true + len(r)
        prec = h / len(p) if p else 0.0
        rec = h / len(r) if r else 0.0
        per.append((prec, rec, _f1(prec, rec)))
    micro_p = hits / n_pred if n_pred else 0.0
    micro_r = hits / n_true if n_true else 0.0
    out = {"micro_precision": micro_p, "micro_recall": micro_r, "micro_f1": _f1(micro_p, micro_r)}
    for i, name in enumerate(("precision", "recall", "f1")):
        out[f"macro_{name}"] = float(np.mean([x[i] for x in per])) if per else 0.0
    return out


def title_scores(predicted: Sequence[str], truth: Sequence[str]) -> dict[str, float]:
    """Titles compared word by word: the share predicted exactly, and the mean per-title word F1
    (the words in common counted as a multiset, as SQuAD scores answers; an empty pair scores 1)."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted titles for {len(truth)} references")
    exact, f1s = 0, []
    for pred, ref in zip(predicted, truth, strict=True):
        p, r = pred.split(), ref.split()
        exact += p == r
        common = sum((Counter(p) & Counter(r)).values())
        if not p and not r:
            f1s.append(1.0)
        else:
            f1s.append(_f1(common / len(p) if p else 0.0, common / len(r) if r else 0.0))
    n = len(truth)
    return {
        "title_exact_match": exact / n if n else 0.0,
        "title_word_f1": float(np.mean(f1s)) if n else 0.0,
    }


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def predict_split(
    predictor: Predictor,
    *,
    split: str = "test",
    beam: int = 1,
    length_penalty: float = 0.0,
    batch_size: int = 64,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(predictions, references) for the first `limit` recipes of `split`, each recipe from its
    first photo: `Predictor.predict`'s dicts, and the recipe's clean ingredients and title as the
    decoder writes them (`decoder_targets.normalize_text`), in the same shape."""
    source = pipeline.open_split(predictor.run.data_dir, split)
    n = len(source) if limit is None else min(limit, len(source))
    norm = functools.partial(decoder_targets.normalize_text, predictor.tokenizer)
    predicted: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    batch_size = max(1, min(batch_size, n))
    for start in range(0, n, batch_size):
        recs = [records.decode_record(source[i]) for i in range(start, min(start + batch_size, n))]
        images = np.stack([predictor.load_image(r["images"][0]) for r in recs])
        pad = batch_size - len(recs)  # fixed batch shape: one compilation for the whole split
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.uint8)])
        predicted += predictor.predict(images, beam=beam, length_penalty=length_penalty)[
            : len(recs)
        ]
        references += [
            {"ingredients": [norm(x) for x in r["clean_ingredients"]], "title": norm(r["title"])}
            for r in recs
        ]
    return predicted, references


def evaluate_ingredients(
    predictor: Predictor,
    workdir: str,
    *,
    split: str = "test",
    beam: int = 1,
    length_penalty: float = 0.0,
    batch_size: int = 64,
    limit: int | None = None,
) -> dict[str, Any]:
    """Predict every recipe of `split` from its first photo (`predict_split`); score the
    ingredient lists against the clean ingredients and the titles against the titles.
    Writes WORKDIR/ingredients_<split>.json."""
    predicted, references = predict_split(
        predictor,
        split=split,
        beam=beam,
        length_penalty=length_penalty,
        batch_size=batch_size,
        limit=limit,
    )
    field = lambda rows, key: [r[key] for r in rows]
    results = {
        "split": split,
        "beam": beam,
        "length_penalty": length_penalty if beam > 1 else 0.0,
        "n_recipes": len(references),
        **ingredient_scores(field(predicted, "ingredients"), field(references, "ingredients")),
        **title_scores(field(predicted, "title"), field(references, "title")),
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"ingredients_{split}.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Describe --image photos (one JSON line each), then score --split if given (returned)."""
    import argparse

    from xmodal.apps import cli

    p = argparse.ArgumentParser(prog="python -m xmodal.predict", description=__doc__.split("\n")[0])
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
