"""Word-level recipe tokenizer (H-T style), built with Hugging Face `tokenizers`.

H-T (Salvador et al. 2021) lower-cases recipe text and splits it into words and punctuation, keeping
words seen at least 10 times in the training recipes (~16k words on Recipe1M). We do the same with a
`WordLevel` model so that encoding a million recipes runs in Rust, in parallel.

Special tokens take the first ids, matching `xmodal.data.records`: [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3.
`encode` adds neither BOS nor EOS: records store plain word ids and the pipeline decides on framing.

A data dir's `tokenizer.json` may instead hold H-T's released vocabulary and rule
(`xmodal.data.released_vocab`, written by `prepare --vocabulary=vocab.pkl`): `load_tokenizer`
returns a `ReleasedTokenizer` then, and `encode`, `encode_batch`, `decode` and `special_ids` follow
that rule (every line wrapped as `<start> ... <end>`, `<pad>=0 <start>=1 <end>=2 <unk>=last`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from xmodal.data import records, schema
from xmodal.data.jsonio import parse_json
from xmodal.data.released_vocab import ReleasedTokenizer, is_released
from xmodal.data.tfds import records as tfds_records

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
DEFAULT_MIN_COUNT = 10  # H-T on Recipe1M
_FRAMING_IDS = frozenset({schema.PAD_ID, schema.BOS_ID, schema.EOS_ID})


class SpecialIds(NamedTuple):
    """The ids a vocabulary reserves: padding, unknown word, start and end of a sequence."""

    pad: int
    unk: int
    bos: int
    eos: int


def special_ids(tok: Any) -> SpecialIds:
    """`tok`'s reserved ids: the learned vocabularies' [PAD] [UNK] [BOS] [EOS] = 0 1 2 3 (`schema`),
    the released H-T one's <pad> <unk> <start> <end> = 0, last, 1, 2."""
    if isinstance(tok, ReleasedTokenizer):
        return SpecialIds(tok.pad_id, tok.unk_id, tok.start_id, tok.end_id)
    return SpecialIds(schema.PAD_ID, schema.UNK_ID, schema.BOS_ID, schema.EOS_ID)


def _empty_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    # NFKC folds full-width forms and ligatures; BERT pre-tokenisation splits on whitespace and
    # puts every punctuation character in its own token ("1/2" -> "1", "/", "2"), like H-T.
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def build_tokenizer(texts: Iterable[str], *, min_count: int = DEFAULT_MIN_COUNT) -> Tokenizer:
    """Vocabulary of `texts` (pass training recipes only): the words seen >= `min_count` times."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    tok = _empty_tokenizer()
    trainer = trainers.WordLevelTrainer(
        vocab_size=2**31 - 1,  # no cap: the vocabulary is limited by min_count only
        min_frequency=min_count,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    for token, want in zip(SPECIAL_TOKENS, range(4), strict=True):
        got = tok.token_to_id(token)
        if got != want:  # guards the contract with records.py against library changes
            raise RuntimeError(f"special token {token} got id {got}, expected {want}")
    return tok


def save_tokenizer(tok: Tokenizer | ReleasedTokenizer, data_dir: str) -> str:
    """Writes `data_dir/tokenizer.json` and returns its path."""
    path = os.path.join(data_dir, records.TOKENIZER_FILE)
    if isinstance(tok, ReleasedTokenizer):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(tok.to_json(), f, ensure_ascii=False)
    else:
        tok.save(path)
    return path


def _read_tokenizer_json(data_dir: str) -> tuple[str, bytes, Any]:
    path = os.path.join(data_dir, records.TOKENIZER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no tokenizer at {path!r}; run xmodal.data.prepare first")
    with open(path, "rb") as f:
        text = f.read()
    return path, text, parse_json(text, path)


def load_tokenizer(data_dir: str) -> Tokenizer | ReleasedTokenizer:
    """The vocabulary of a prepared data dir (or a run's workdir): learned, or the released H-T
    table when `prepare --vocabulary` made the data."""
    path, text, data = _read_tokenizer_json(data_dir)
    if is_released(data):
        return ReleasedTokenizer.from_json(data, path)
    return Tokenizer.from_str(text.decode("utf-8"))


def fingerprint(data_dir: str) -> str:
    """sha256 of `data_dir/tokenizer.json` read as JSON and written canonically (sorted keys, no
    spaces): equal fingerprints mean every word has the same id (and text is split the same
    way), whatever the file's formatting. A run records the one it trained with."""
    return fingerprint_of(_read_tokenizer_json(data_dir)[2])


def fingerprint_of(data: Any) -> str:
    """`fingerprint` of a tokenizer.json's parsed content (a `ReleasedTokenizer.to_json()`)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def vocabulary_dir(path: str) -> str:
    """The folder holding the tokenizer that `prepare --tokenizer_from=PATH` reuses: a prepared
    data dir, a training workdir (a run keeps a copy of its data's tokenizer next to its
    config.json), or a TFDS dataset built by `xmodal.data.tfds.builder` (the `--data_dir` it was
    built into, or its version folder)."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(os.path.join(path, records.TOKENIZER_FILE)):
        return path
    if os.path.isdir(path) and tfds_records.find_dataset(path):
        return tfds_records.dataset_dir(path)
    what = "does not exist" if not os.path.isdir(path) else f"has no {records.TOKENIZER_FILE}"
    raise FileNotFoundError(
        f"--tokenizer_from={path!r} {what}: pass a prepared data dir, a TFDS dataset built by "
        "xmodal.data.tfds.builder, or the workdir of a run trained since runs keep their "
        "tokenizer (for an older run, its data dir: `run.data_dir` in WORKDIR/config.json)"
    )


def encode(
    tok: Tokenizer | ReleasedTokenizer, text: str, max_tokens: int, *, ingredient: bool = False
) -> list[int]:
    """Ids of `text`, truncated to `max_tokens`: word ids (no BOS/EOS) for a learned vocabulary;
    for the released one, `<start> ... <end>` cut after framing, an `ingredient` line with the
    released quantity fixes (`xmodal.data.released_vocab`)."""
    if isinstance(tok, ReleasedTokenizer):
        return tok.encode(text, max_tokens, ingredient=ingredient)
    return tok.encode(text, add_special_tokens=False).ids[:max_tokens]


def encode_batch(
    tok: Tokenizer | ReleasedTokenizer,
    texts: Sequence[str],
    max_tokens: int,
    *,
    ingredient: bool = False,
) -> list[list[int]]:
    """`encode` over many texts at once (learned vocabularies: parallel in Rust, much faster
    than a Python loop); `ingredient`: the texts are ingredient lines."""
    if not texts:
        return []
    if isinstance(tok, ReleasedTokenizer):
        return tok.encode_batch(texts, max_tokens, ingredient=ingredient)
    return [e.ids[:max_tokens] for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def decode(tok: Tokenizer | ReleasedTokenizer, ids: Iterable[int]) -> str:
    """Space-joined words; padding and start/end markers are dropped, unknown words read as
    [UNK] (`<unk>` for the released vocabulary)."""
    if isinstance(tok, ReleasedTokenizer):
        return tok.decode(ids)
    kept = [int(i) for i in ids if int(i) not in _FRAMING_IDS]
    return tok.decode(kept, skip_special_tokens=False)
