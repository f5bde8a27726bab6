"""Word-level recipe tokenizer (H-T style), built with Hugging Face `tokenizers`.

H-T (Salvador et al. 2021) lower-cases recipe text and splits it into words and punctuation, keeping
words seen at least 10 times in the training recipes (~16k words on Recipe1M). We do the same with a
`WordLevel` model so that encoding a million recipes runs in Rust, in parallel.

Special tokens take the first ids, matching `xmodal.data.records`: [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3.
`encode` adds neither BOS nor EOS: records store plain word ids and the pipeline decides on framing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from xmodal.data import records, schema
from xmodal.data.jsonio import parse_json
from xmodal.data.tfds import records as tfds_records

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
DEFAULT_MIN_COUNT = 10  # H-T on Recipe1M
_FRAMING_IDS = frozenset({schema.PAD_ID, schema.BOS_ID, schema.EOS_ID})


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


def save_tokenizer(tok: Tokenizer, data_dir: str) -> str:
    """Writes `data_dir/tokenizer.json` and returns its path."""
    path = os.path.join(data_dir, records.TOKENIZER_FILE)
    tok.save(path)
    return path


def load_tokenizer(data_dir: str) -> Tokenizer:
    path = os.path.join(data_dir, records.TOKENIZER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no tokenizer at {path!r}; run xmodal.data.prepare first")
    return Tokenizer.from_file(path)


def fingerprint(data_dir: str) -> str:
    """sha256 of `data_dir/tokenizer.json` read as JSON and written canonically (sorted keys, no
    spaces): equal fingerprints mean every word has the same id (and text is split the same
    way), whatever the file's formatting. A run records the one it trained with."""
    path = os.path.join(data_dir, records.TOKENIZER_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no tokenizer at {path!r}; run xmodal.data.prepare first")
    with open(path, "rb") as f:
        data = parse_json(f.read(), path)
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


def encode(tok: Tokenizer, text: str, max_tokens: int) -> list[int]:
    """Word ids of `text`, truncated to `max_tokens` (no BOS/EOS)."""
    return tok.encode(text, add_special_tokens=False).ids[:max_tokens]


def encode_batch(tok: Tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """`encode` over many texts at once (parallel in Rust; much faster than a Python loop)."""
    if not texts:
        return []
    return [e.ids[:max_tokens] for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
    """Space-joined words; PAD/BOS/EOS are dropped, unknown words read as [UNK]."""
    kept = [int(i) for i in ids if int(i) not in _FRAMING_IDS]
    return tok.decode(kept, skip_special_tokens=False)
