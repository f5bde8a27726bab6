"""The cross decoder's target sequence: a recipe's clean ingredient list, then its title.

    [BOS] olive oil <ing> garlic <ing> tomato <title> garlic tomato pasta [EOS] [PAD] ...

BOS, EOS and PAD are the vocabulary's own (`tokenizer.special_ids`): [BOS]=2 [EOS]=3 [PAD]=0 for
a learned one, H-T's <start>=1 <end>=2 <pad>=0 for the released one (whose per-line <start> and
<end> markers are left out of the target's words).

Words are the dataset tokenizer's ids (`xmodal.data.tokenizer`); two separators are appended to
its vocabulary: <ing> = vocab_size between ingredients and <title> = vocab_size + 1 before the
title, so a generated sequence splits back into ingredients and title unambiguously (a comma token
would collide with commas inside names). The decoder's output vocabulary is `vocab_size + 2`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xmodal.data import tokenizer as tokenizer_lib

EXTRA_TOKENS = 2  # <ing>, <title>
# data.decoder_order: the order the target lists a recipe's ingredients in. "recipe" keeps the
# author's; "sorted" lists them alphabetically, so the decoder learns one order for a set instead
# of guessing each author's (an ingredient list is scored as a set: `xmodal.predict`).
ORDERS = ("recipe", "sorted")


def ingredient_sep(vocab_size: int) -> int:
    return vocab_size


def title_sep(vocab_size: int) -> int:
    return vocab_size + 1


def decoder_vocab_size(vocab_size: int) -> int:
    return vocab_size + EXTRA_TOKENS


def encode_target(
    tok: Any,
    clean_ingredients: Sequence[str],
    title: str,
    *,
    vocab_size: int,
    length: int,
    order: str = "recipe",
) -> np.ndarray:
    """[length] int32: BOS, ingredients separated by <ing>, <title>, title words, EOS, PAD.

    Ingredients come in `order` (`ORDERS`; "sorted": alphabetically by their normalised names).
    Too long a sequence is cut to `length` and keeps its EOS last, so every target ends.
    """
    if length < 3:
        raise ValueError(f"decoder target length must be >= 3 (BOS, EOS, a token), got {length}")
    check_order(order)
    special = tokenizer_lib.special_ids(tok)
    framing = (special.bos, special.eos)
    texts = [t for t in clean_ingredients if t.strip()]
    encoded = [
        [i for i in words if i not in framing]  # the released rule's per-line markers
        for words in tokenizer_lib.encode_batch(tok, [*texts, title], length + 2)
    ]
    names = encoded[:-1]
    if order == "sorted":
        names = sorted(names, key=lambda words: tokenizer_lib.decode(tok, words))
    ids: list[int] = [special.bos]
    for i, words in enumerate(names):
        if i:
            ids.append(ingredient_sep(vocab_size))
        ids.extend(words)
    ids.append(title_sep(vocab_size))
    ids.extend(encoded[-1])
    ids = [*ids[: length - 1], special.eos]
    out = np.full((length,), special.pad, np.int32)
    out[: len(ids)] = ids
    return out


def check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"data.decoder_order must be one of {ORDERS}, got {order!r}")


def decode_target(tok: Any, ids: Sequence[int], *, vocab_size: int) -> dict[str, Any]:
    """Generated ids -> {'ingredients': [str, ...], 'title': str}; stops at the first EOS."""
    special = tokenizer_lib.special_ids(tok)
    ingredients: list[list[int]] = [[]]
    title: list[int] = []
    in_title = False
    for i in (int(x) for x in ids):
        if i == special.eos:
            break
        if i in (special.pad, special.bos):
            continue
        if i == title_sep(vocab_size):
            in_title = True
        elif i == ingredient_sep(vocab_size):
            if not in_title:
                ingredients.append([])
        elif in_title:
            title.append(i)
        else:
            ingredients[-1].append(i)
    names = [tokenizer_lib.decode(tok, words) for words in ingredients if words]
    return {"ingredients": names, "title": tokenizer_lib.decode(tok, title)}


def normalize_text(tok: Any, name: str) -> str:
    """An ingredient name or a title as the decoder can write it: tokenised and joined ("Olive Oil"
    -> "olive oil"), so predictions and references compare word for word."""
    return tokenizer_lib.decode(tok, tokenizer_lib.encode(tok, name, 10_000))
