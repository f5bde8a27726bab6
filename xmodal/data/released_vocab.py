"""H-T's released vocabulary and tokenisation rule: released weights read the ids they learned.

The released H-T (amzn/image-to-recipe-transformers, commit 96e257e) ships `data/vocab.pkl`: a
pickled dict id -> word, `{0: '<pad>', 1: '<start>', 2: '<end>', 3..: words, last: '<unk>'}`
(`src/dataset.py` also accepts a list as a value and takes its first item). A line becomes ids as
`src/preprocessing.py`, `src/dataset.py` and `src/utils/utils.py:get_token_ids` make them:

1. lower-cased; an ingredient line also gets the quantity fixes of `preprocessing.py`
   (`'12 '` -> `'1/2 '`, then 13, 14, 18, 23, 34 in that order, every occurrence);
2. split by nltk's `word_tokenize` (`xmodal.data.released_words`);
3. wrapped as `<start> words <end>`, a word not in the table read as `<unk>`;
4. cut to the first `max_tokens` ids, markers included (`dataset.py` cuts the title and every
   instruction line to `max_length_instrs=15`, every ingredient line to `max_length_ingrs=15`, and
   keeps the first 20 lines of each: a 20-word line keeps `<start>` and 14 words, no `<end>`).

`prepare --vocabulary=vocab.pkl` stores the table as the data's `tokenizer.json` (`to_json`), so a
run's vocabulary fingerprint, its copy in the workdir and `--tokenizer_from` work as for a learned
vocabulary, and data of another vocabulary is refused.

What `prepare` still does its own way, for every vocabulary: the raw reader's clean-up
(`raw.recipe1m.normalize_text`: NFKC, control characters and runs of whitespace made one space)
and its dropping of empty lines. The released code reads layer1's text as it is and keeps an empty
line as `<start> <end>` (one of its 20). They differ only on text with tabs or newlines next to a
quantity ('12\tcup'), non-ASCII compatibility forms, control characters or empty lines; the
released vocabulary holds only ASCII words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from xmodal.data import released_words, schema
from xmodal.data.safe_pickle import plain_loads

KIND = "released-ht"  # tokenizer.json's `kind` for this rule (learned vocabularies have none)
PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
# preprocessing.py's replace_dict_rawingrs, in its order: (found, replaced by)
QUANTITY_FIXES = (
    ("12 ", "1/2 "),
    ("13 ", "1/3 "),
    ("14 ", "1/4 "),
    ("18 ", "1/8 "),
    ("23 ", "2/3 "),
    ("34 ", "3/4 "),
)


def fix_quantities(line: str) -> str:
    """A lower-cased raw ingredient line with the released quantity fixes ('12 cup' -> '1/2 cup':
    Recipe1M's scrape lost the slash of fractions)."""
    for found, replaced in QUANTITY_FIXES:
        line = line.replace(found, replaced)
    return line


class ReleasedTokenizer:
    """The released id -> word table and its rule (module docstring). `words[i]` is id i's word."""

    def __init__(self, words: Sequence[str], source: str = "the vocabulary"):
        self.words = tuple(words)
        _check_words(self.words, source)
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.pad_id, self.start_id = self.ids[PAD], self.ids[START]
        self.end_id, self.unk_id = self.ids[END], self.ids[UNK]

    def get_vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_tokens: int, *, ingredient: bool = False) -> list[int]:
        """`<start>` word ids `<end>` of one line, cut to `max_tokens` ids (markers counted)."""
        line = text.lower()
        if ingredient:
            line = fix_quantities(line)
        words = released_words.word_tokenize(line)
        ids = [self.start_id, *(self.ids.get(w, self.unk_id) for w in words), self.end_id]
        return ids[:max_tokens]

    def encode_batch(
        self, texts: Iterable[str], max_tokens: int, *, ingredient: bool = False
    ) -> list[list[int]]:
        return [self.encode(t, max_tokens, ingredient=ingredient) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Space-joined words; padding and the line markers dropped, unknown words as `<unk>`."""
        framing = (self.pad_id, self.start_id, self.end_id)
        return " ".join(self.words[i] for i in (int(x) for x in ids) if i not in framing)

    def to_json(self) -> dict[str, Any]:
        """What `tokenizer.json` holds: the rule's name and the words by id."""
        return {"kind": KIND, "words": list(self.words)}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> ReleasedTokenizer:
        words = data.get("words")
        if data.get("kind") != KIND or not isinstance(words, list):
            raise ValueError(f"{source}: not a released vocabulary (kind {KIND!r} with words)")
        return cls(words, source)


def is_released(data: Any) -> bool:
    """Whether a parsed tokenizer.json is a released vocabulary (`ReleasedTokenizer.to_json`)."""
    return isinstance(data, dict) and data.get("kind") == KIND


def read_vocab_pickle(path: str) -> ReleasedTokenizer:
    """The released `vocab.pkl` (id -> word; a list value stands for its first item, as in
    `dataset.py`), read without running code (`safe_pickle.plain_loads`). A file that is not
    such a table is a ValueError naming what is wrong."""
    with open(path, "rb") as f:
        try:
            (table,) = plain_loads(f, 1)
        except Exception as e:  # no code runs here: any failure is the bytes' (truncated, forged)
            raise ValueError(
                f"cannot read {path} as a released vocabulary (a pickled dict id -> word): "
                f"{type(e).__name__}: {e}"
            ) from None
    if not isinstance(table, dict) or not table:
        kind = type(table).__name__
        raise ValueError(f"{path}: expected a non-empty dict id -> word, got {kind}")
    bad_ids = [k for k in table if not isinstance(k, int) or isinstance(k, bool)]
    if bad_ids:
        raise ValueError(f"{path}: ids must be integers, found {bad_ids[:3]!r}")
    if sorted(table) != list(range(len(table))):
        missing = sorted(set(range(len(table))) - set(table))[:5]
        raise ValueError(
            f"{path}: ids must run 0..{len(table) - 1} without gaps (the embedding rows); "
            f"missing {missing}"
        )
    words = []
    for i in range(len(table)):
        value = table[i]
        word = value[0] if isinstance(value, list | tuple) and value else value
        if not isinstance(word, str):
            raise ValueError(f"{path}: id {i} maps to {value!r}, not a word (str)")
        words.append(word)
    return ReleasedTokenizer(words, path)


def _check_words(words: tuple[str, ...], source: str) -> None:
    if not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"{source}: every id must map to a non-empty word")
    if not words or words[schema.PAD_ID] != PAD:
        first = words[schema.PAD_ID] if words else None
        raise ValueError(
            f"{source}: id {schema.PAD_ID} must be {PAD!r} (padding is id {schema.PAD_ID} "
            f"everywhere here), found {first!r}"
        )
    missing = [w for w in (START, END, UNK) if w not in words]
    if missing:
        raise ValueError(f"{source}: the released markers {missing} are missing")
    seen: dict[str, int] = {}
    for i, w in enumerate(words):
        if w in seen:
            raise ValueError(f"{source}: the word {w!r} has two ids, {seen[w]} and {i}")
        seen[w] = i
