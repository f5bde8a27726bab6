from xmodal.data import records, schema, tokenizer

TEXTS = ["Grilled Chicken, and Red Pepper!", "grilled chicken salad", "Bake 10 minutes at 350°F."]


def test_lowercase_and_punctuation_split():
    tok = tokenizer.build_tokenizer(TEXTS, min_count=1)
    ids = tokenizer.encode(tok, "GRILLED Chicken, pepper!", 10)
    assert tokenizer.decode(tok, ids) == "grilled chicken , pepper !"
    assert tok.token_to_id("Grilled") is None and tok.token_to_id("grilled") is not None


def test_min_count_maps_rare_words_to_unk():
    tok = tokenizer.build_tokenizer(TEXTS, min_count=2)
    ids = tokenizer.encode(tok, "grilled red pepper", 10)
    assert ids[0] == tok.token_to_id("grilled") and ids[0] > schema.EOS_ID
    assert ids[1:] == [schema.UNK_ID, schema.UNK_ID]  # seen once each
    assert tokenizer.encode(tok, "zebra", 5) == [schema.UNK_ID]


def test_special_ids_match_records():
    tok = tokenizer.build_tokenizer(TEXTS, min_count=1)
    assert [tok.token_to_id(t) for t in tokenizer.SPECIAL_TOKENS] == [
        schema.PAD_ID,
        schema.UNK_ID,
        schema.BOS_ID,
        schema.EOS_ID,
    ]
    # framing ids are dropped on decode, unknown words stay visible
    word = tok.token_to_id("salad")
    assert tokenizer.decode(tok, [schema.BOS_ID, word, schema.UNK_ID, schema.EOS_ID, 0]) == (
        "salad [UNK]"
    )


def test_truncation_and_batch_agree():
    tok = tokenizer.build_tokenizer(TEXTS, min_count=1)
    text = "grilled chicken and red pepper salad"
    assert len(tokenizer.encode(tok, text, 3)) == 3
    assert tokenizer.encode(tok, text, 3) == tokenizer.encode(tok, text, 100)[:3]
    assert tokenizer.encode_batch(tok, [text, "salad"], 3) == [
        tokenizer.encode(tok, text, 3),
        tokenizer.encode(tok, "salad", 3),
    ]
    assert tokenizer.encode_batch(tok, [], 3) == []


def test_save_load_round_trip(tmp_path):
    tok = tokenizer.build_tokenizer(TEXTS, min_count=1)
    tokenizer.save_tokenizer(tok, str(tmp_path))
    assert (tmp_path / records.TOKENIZER_FILE).exists()
    back = tokenizer.load_tokenizer(str(tmp_path))
    assert back.get_vocab() == tok.get_vocab()
    assert tokenizer.encode(back, TEXTS[2], 20) == tokenizer.encode(tok, TEXTS[2], 20)
