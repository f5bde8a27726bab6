"""Photo -> predicted ingredients and title with a restored model's cross decoder, and scoring
the predictions of a prepared split (the command line is `python -m xmodal.apps.predict`).
`read_photo` turns a photo file into the model's input (search and the tools use it too).

The decoder sees the photo only (the recipe memory tokens are left out, as in the training drop);
decoding is greedy or beam search (`xmodal.models.decoding`), jit-compiled once per (batch size,
beam). Ingredient lists are scored as sets (precision / recall / F1, micro and macro), titles word
by word; `evaluate_ingredients` writes WORKDIR/ingredients_<split>.json.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmodal.data import decoder_targets, pipeline, records
from xmodal.data import tokenizer as tokenizer_lib
from xmodal.models.decoding import Framing, beam_decode, greedy_decode
from xmodal.run import Run
from xmodal.runtime import results as results_lib
from xmodal.runtime import sharding
from xmodal.runtime.state import in_eval_mode


class Predictor:
    """A restored model with its cross decoder: uint8 photos -> ingredients and title."""

    def __init__(self, run: Run, state: Any):
        self.run = run
        self.config = run.config
        self.image_size = run.config.data.image_size
        self.length = run.config.data.max_decoder_tokens
        self.vocab_size = run.vocab_size
        self.tokenizer = tokenizer_lib.load_tokenizer(run.data_dir)
        special = tokenizer_lib.special_ids(self.tokenizer)
        self._framing = Framing(special.bos, special.eos, special.pad)
        nnx.merge(run.graphdef, state.params, state.model_state).check_decoder()
        self._params, self._model_state = state.params, state.model_state  # not the optimizer
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

    def _decode_ids(
        self, params: Any, model_state: Any, images: jax.Array, alpha: jax.Array, *, beam: int
    ) -> jax.Array:
        def decode(model: Any, images: jax.Array, alpha: jax.Array) -> jax.Array:
            memory, valid = model.photo_memory(images)
            if beam == 1:
                return greedy_decode(
                    model.decoder_logits, memory, valid, self.length, self._framing
                )
            return beam_decode(
                model.decoder_logits, memory, valid, self.length, beam, alpha, self._framing
            )[0]

        return in_eval_mode(self.run.graphdef, decode)(params, model_state, images, alpha)

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
        ids = self._decode(self._params, self._model_state, jnp.asarray(images), alpha, beam=beam)
        return np.asarray(ids)

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
        """A photo file (or its bytes) -> the model's uint8 input (`read_photo`: upright,
        centre crop as in eval; a bomb or a non-photo is a ValueError)."""
        return pipeline.read_photo(path_or_bytes, self.image_size)


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
    results_lib.write_result(workdir, results_lib.ingredients_file(split), results)
    return results
