"""The cross decoder (xmodal.models.cross_decoder), its targets and its decoding
(xmodal.models.decoding)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from xmodal.data import decoder_targets, schema
from xmodal.models import decoding
from xmodal.models.cross_decoder import CrossDecoder, teacher_forcing
from xmodal.training import losses

VOCAB, IMG_W, EMBED, LEN = 23, 12, 10, 9


def _decoder(recipe_drop=0.0, seed=0):
    dec = CrossDecoder(
        VOCAB,
        image_width=IMG_W,
        embed_dim=EMBED,
        width=16,
        depth=1,
        num_heads=2,
        mlp_dim=32,
        max_len=LEN,
        recipe_tokens=2,
        recipe_drop=recipe_drop,
        dropout=0.0,
        rngs=nnx.Rngs(params=seed, dropout=seed + 1),
    )
    return dec


@nnx.jit
def _forward(dec, tokens, image, recipe):
    """Logits of `tokens` over the memory of (image, recipe) — one compiled program per shape."""
    return dec(tokens, *dec.memory(image, recipe))


@nnx.jit
def _photo_forward(dec, tokens, image):
    return dec(tokens, *dec.memory(image, None))


def _inputs(b=3, seed=0):
    rng = np.random.default_rng(seed)
    image = jnp.asarray(rng.normal(size=(b, 5, IMG_W)), jnp.float32)
    recipe = jnp.asarray(rng.normal(size=(b, EMBED)), jnp.float32)
    tokens = jnp.asarray(rng.integers(4, VOCAB, size=(b, LEN)), jnp.int32)
    return image, recipe, tokens


def test_shapes_and_causal_masking():
    dec = _decoder()
    image, recipe, tokens = _inputs()
    memory, valid = nnx.jit(lambda d, i, r: d.memory(i, r))(dec, image, recipe)
    assert memory.shape == (3, 5 + 2, 16) and valid.shape == (3, 7) and bool(valid.all())
    logits = _forward(dec, tokens, image, recipe)
    assert logits.shape == (3, LEN, VOCAB) and logits.dtype == jnp.float32
    changed = tokens.at[:, 5:].set((tokens[:, 5:] + 1) % VOCAB)
    other = _forward(dec, changed, image, recipe)
    np.testing.assert_allclose(np.asarray(other[:, :5]), np.asarray(logits[:, :5]), atol=1e-6)
    assert not np.allclose(np.asarray(other[:, 5:]), np.asarray(logits[:, 5:]))


def test_recipe_drop_one_ignores_the_recipe_and_zero_uses_it():
    image, recipe, tokens = _inputs()
    other_recipe = recipe[::-1] * 3.0
    for p, depends in ((1.0, False), (0.0, True)):
        dec = _decoder(recipe_drop=p)
        a = _forward(dec, tokens, image, recipe)
        b = _forward(dec, tokens, image, other_recipe)
        assert np.allclose(np.asarray(a), np.asarray(b), atol=1e-6) != depends, p
    # Photo-only memory (inference) equals a fully dropped recipe.
    dec = _decoder(recipe_drop=1.0)
    np.testing.assert_allclose(
        np.asarray(_photo_forward(dec, tokens, image)),
        np.asarray(_forward(dec, tokens, image, recipe)),
        atol=1e-5,
    )


def test_recipe_drop_is_per_example_and_off_in_eval():
    dec = _decoder(recipe_drop=0.5)
    keeps = np.stack([np.asarray(dec.memory_drop(64)) for _ in range(4)])
    assert 0.3 < keeps.mean() < 0.7 and not (keeps == keeps[0]).all()
    dec.eval()
    assert bool(dec.memory_drop(64).all())


def test_teacher_forced_loss_falls_on_a_tiny_batch():
    dec = _decoder()
    image, recipe, _ = _inputs(b=4, seed=1)
    target = np.full((4, LEN), schema.PAD_ID, np.int32)
    rng = np.random.default_rng(2)
    for i, n in enumerate((4, 6, 7, 5)):
        target[i, : n + 2] = [schema.BOS_ID, *rng.integers(4, VOCAB, n), schema.EOS_ID]
    inputs, labels = teacher_forcing(jnp.asarray(target))
    graphdef, params, rest = nnx.split(dec, nnx.Param, ...)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        def loss_fn(p):
            model = nnx.merge(graphdef, p, rest)
            return losses.cross_decoder_loss(model(inputs, *model.memory(image, recipe)), labels)

        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    history = []
    for _ in range(40):
        params, opt, loss = step(params, opt)
        history.append(float(loss))
    assert history[-1] < 0.2 * history[0], history


def _greedy_reference(dec, image):
    """Token by token in Python: feed the prefix (PAD-filled to a fixed length; the causal mask
    makes the rest invisible) and append the argmax at the prefix's last position."""
    out = []
    for b in range(image.shape[0]):
        seq = [schema.BOS_ID]
        while len(seq) < LEN and seq[-1] != schema.EOS_ID:
            buf = jnp.asarray([seq + [schema.PAD_ID] * (LEN - len(seq))])
            logits = _photo_forward(dec, buf, image[b : b + 1])
            seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
        out.append(seq + [schema.PAD_ID] * (LEN - len(seq)))
    return np.asarray(out)


def _peaked_decoder():
    """Random decoders rarely emit EOS; bias the head so some sequences end early."""
    dec = _decoder(seed=3)
    dec.eval()
    bias = np.zeros(VOCAB, np.float32)
    bias[schema.EOS_ID] = 2.5
    dec.head.bias[...] = dec.head.bias[...] + bias
    return dec


@nnx.jit(static_argnums=2)
def _decode(dec, image, beam):
    memory, valid = dec.memory(image, None)
    greedy = decoding.greedy_decode(dec, memory, valid, LEN)
    return (greedy, *decoding.beam_decode(dec, memory, valid, LEN, beam))


def test_greedy_decode_equals_stepwise_argmax_and_beam_one_equals_greedy():
    dec = _peaked_decoder()
    image, _, _ = _inputs(b=4, seed=4)
    got, beam1, _ = _decode(dec, image, 1)
    got = np.asarray(got)
    np.testing.assert_array_equal(got, _greedy_reference(dec, image))
    np.testing.assert_array_equal(np.asarray(beam1), got)


def _sequence_logp(dec, image, seq):
    """log p(seq) by teacher forcing, summed up to and including its EOS."""
    logp = jax.nn.log_softmax(_photo_forward(dec, jnp.asarray([seq]), image)[0])
    total = 0.0
    for t in range(1, LEN):
        total += float(logp[t - 1, seq[t]])
        if seq[t] == schema.EOS_ID:
            break
    return total


def test_beam_search_scores_match_and_beat_greedy():
    dec = _peaked_decoder()
    image, _, _ = _inputs(b=3, seed=5)
    greedy, best, scores = _decode(dec, image, 4)
    for b in range(3):
        img = image[b : b + 1]
        seq = np.asarray(best[b]).tolist()
        assert _sequence_logp(dec, img, seq) == pytest.approx(float(scores[b]), abs=1e-3)
        assert float(scores[b]) >= _sequence_logp(dec, img, np.asarray(greedy[b]).tolist()) - 1e-4


def _markov_lm(seed, vocab, length):
    """A fixed random Markov language model as a `LogitsFn`: the logits after position j depend on
    (j, token j), so every sequence's probability is known in closed form."""
    table = jax.random.normal(jax.random.key(seed), (length, vocab, vocab)) * 2.0

    def logits_fn(tokens, memory, valid):
        return table[jnp.arange(tokens.shape[1]), tokens]

    return table, logits_fn


def _best_by_brute_force(table, length, alpha):
    """Every sequence the decoder can write (tokens until EOS, then PAD), scored as beam search
    ranks them: summed log-probability / ((5 + generated tokens) / 6) ** alpha."""
    logp = np.asarray(jax.nn.log_softmax(table, axis=-1))
    vocab = logp.shape[-1]
    best, best_key = None, -np.inf
    for k in range(1, length):  # k generated tokens
        for words in itertools.product(range(vocab), repeat=k):
            if schema.EOS_ID in words[:-1] or (k < length - 1 and words[-1] != schema.EOS_ID):
                continue
            seq = [schema.BOS_ID, *words]
            total = sum(logp[j, seq[j], seq[j + 1]] for j in range(k))
            key = total / ((5 + k) / 6) ** alpha
            if key > best_key:
                best, best_key = seq + [schema.PAD_ID] * (length - 1 - k), key
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_search_finds_the_best_length_normalised_sequence(alpha):
    vocab, length = 5, 4  # 5 ** 3 = 125 sequences: a beam of 125 keeps every one of them
    table, lm = _markov_lm(7, vocab, length)
    memory, valid = jnp.zeros((1, 1, 1)), jnp.ones((1, 1), jnp.bool_)
    best, _ = decoding.beam_decode(lm, memory, valid, length, beam=125, alpha=alpha)
    assert np.asarray(best[0]).tolist() == _best_by_brute_force(table, length, alpha)


def test_a_length_penalty_lets_beam_search_prefer_the_longer_list():
    """After BOS: EOS 0.4, word 0.6; after the word: EOS 0.6. The plain sum prefers stopping at
    once (log 0.4 > 2 log 0.6); divided by ((5 + n) / 6) ** 1 the two-token answer wins."""
    vocab, length, word = 5, 4, 4
    probs = np.full((length, vocab, vocab), 1e-6, np.float32)
    probs[0, schema.BOS_ID, [schema.EOS_ID, word]] = [0.4, 0.6]
    probs[1, word, [schema.EOS_ID, word]] = [0.6, 0.4]
    logits = jnp.log(jnp.asarray(probs))
    lm = lambda tokens, memory, valid: logits[jnp.arange(tokens.shape[1]), tokens]
    memory, valid = jnp.zeros((1, 1, 1)), jnp.ones((1, 1), jnp.bool_)
    short, s_score = decoding.beam_decode(lm, memory, valid, length, beam=3, alpha=0.0)
    longer, l_score = decoding.beam_decode(lm, memory, valid, length, beam=3, alpha=1.0)
    assert np.asarray(short[0]).tolist() == [schema.BOS_ID, schema.EOS_ID, 0, 0]
    assert np.asarray(longer[0]).tolist() == [schema.BOS_ID, word, schema.EOS_ID, 0]
    assert float(s_score[0]) == pytest.approx(np.log(0.4), abs=1e-3)  # plain sums returned
    assert float(l_score[0]) == pytest.approx(2 * np.log(0.6), abs=1e-3)


class _WordTokenizer:
    """Stand-in with the `tokenizers` API used by decoder_targets (word-level, fixed vocab)."""

    def __init__(self, words):
        self.ids = {w: i + 4 for i, w in enumerate(words)}
        self.words = {i: w for w, i in self.ids.items()}

    def encode_batch(self, texts, add_special_tokens=False):
        class E:
            def __init__(self, ids):
                self.ids = ids

        return [E([self.ids.get(w, schema.UNK_ID) for w in t.lower().split()]) for t in texts]

    def encode(self, text, add_special_tokens=False):
        return self.encode_batch([text])[0]

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(self.words.get(i, "[UNK]") for i in ids)


def test_target_encoding_round_trips_and_truncates_with_eos():
    tok = _WordTokenizer(["olive", "oil", "garlic", "tomato", "pasta"])
    vocab = 9
    ids = decoder_targets.encode_target(
        tok, ["Olive Oil", "garlic", " ", "tomato"], "Tomato Pasta", vocab_size=vocab, length=16
    )
    ing, ttl = decoder_targets.ingredient_sep(vocab), decoder_targets.title_sep(vocab)
    assert ids.tolist() == [2, 4, 5, ing, 6, ing, 7, ttl, 7, 8, 3, 0, 0, 0, 0, 0]
    assert decoder_targets.decode_target(tok, ids, vocab_size=vocab) == {
        "ingredients": ["olive oil", "garlic", "tomato"],
        "title": "tomato pasta",
    }
    ordered = decoder_targets.encode_target(
        tok, ["tomato", "Olive Oil", "garlic"], "pasta", vocab_size=vocab, length=16, order="sorted"
    )  # alphabetically: garlic, olive oil, tomato
    assert ordered.tolist()[:8] == [2, 6, ing, 4, 5, ing, 7, ttl]
    with pytest.raises(ValueError, match="decoder_order must be one of"):
        decoder_targets.encode_target(
            tok, ["garlic"], "pasta", vocab_size=vocab, length=9, order="x"
        )
    short = decoder_targets.encode_target(tok, ["olive oil"], "pasta", vocab_size=vocab, length=3)
    assert short.tolist() == [2, 4, 3]
    with pytest.raises(ValueError, match=">= 3"):
        decoder_targets.encode_target(tok, [], "x", vocab_size=vocab, length=2)


def test_decoding_starts_and_stops_with_the_vocabularys_framing():
    """H-T's released vocabulary starts with <start>=1 and ends with <end>=2: decoding stops
    there (with the learned vocabularies' [EOS]=3 it would write past it)."""
    script = jnp.asarray([5, 2, 7, 7, 7, 7])  # the token each step emits; 2 = <end>

    def logits(tokens, memory, valid):  # next-token logits: one-hot at each position
        return jax.nn.one_hot(jnp.broadcast_to(script, tokens.shape), 9) * 10.0

    memory, valid = jnp.zeros((1, 1, 4)), jnp.ones((1, 1), bool)
    released = decoding.Framing(bos=1, eos=2, pad=0)
    greedy = decoding.greedy_decode(logits, memory, valid, 6, released)
    best, _ = decoding.beam_decode(logits, memory, valid, 6, 2, 0.0, released)
    assert greedy.tolist() == best.tolist() == [[1, 5, 2, 0, 0, 0]]
    learned = decoding.greedy_decode(logits, memory, valid, 6)  # [BOS]=2, [EOS]=3
    assert learned.tolist() == [[2, 5, 2, 7, 7, 7]]
