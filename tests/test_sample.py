"""sample.py: the filters on hand-computed examples, and the sampler on a tiny model."""
import os

import numpy as np
import pytest
import tensorflow as tf

import model
import sample

LOW = np.finfo(np.float32).min


def test_top_k_keeps_the_k_largest_and_ties():
    logits = tf.constant([[1.0, 3.0, 2.0, 3.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(sample.top_k_logits(logits, 2), [[LOW, 3, LOW, 3, LOW], [5, 4, LOW, LOW, LOW]])
    np.testing.assert_array_equal(sample.top_k_logits(logits, 3), [[LOW, 3, 2, 3, LOW], [5, 4, 3, LOW, LOW]])
    assert sample.top_k_logits(logits, 0) is logits


@pytest.mark.parametrize("decimals", [1, 6], ids=["many-ties", "few-ties"])
def test_binary_search_keeps_what_top_k_keeps(decimals):
    rng = np.random.RandomState(decimals)
    compiled = tf.function(lambda logits, k: sample.top_k_logits(logits, k, xla=True), jit_compile=True)
    for k in [1, 2, 40, 299, 300]:
        logits = tf.constant(np.round(rng.randn(4, 300) * 3, decimals), tf.float32)
        want = sample.top_k_logits(logits, k).numpy()
        np.testing.assert_array_equal(sample.top_k_logits(logits, k, xla=True), want)
        np.testing.assert_array_equal(compiled(logits, k), want)


def test_first_argmax_is_argmax():
    x = tf.constant(np.round(np.random.RandomState(0).randn(16, 50), 1), tf.float32)  # with ties
    np.testing.assert_array_equal(sample.first_argmax(x), tf.argmax(x, -1))


@pytest.mark.parametrize("top_k, top_p", [(1, 1.0), (3, 1.0), (40, 1.0), (0, 0.5), (40, 0.9)])
def test_drawing_among_kept_tokens_equals_the_whole_vocabulary_draw(top_k, top_p):
    # Logits rounded to bfloat16's 8 bits, as a bfloat16 model gives them: many ties at the k-th.
    logits = tf.cast(tf.cast(np.random.RandomState(top_k).randn(5, 1000) * 4, tf.bfloat16), tf.float32)
    if top_k == 40 and top_p == 1:
        kept = sample.top_k_logits(logits, top_k) > LOW
        assert (tf.reduce_sum(tf.cast(kept, tf.int32), -1) > top_k).numpy().any()  # ties kept
    keys = sample.sample_keys(3, 10, 5)
    for step in range(20):
        whole = sample.next_token(logits, keys, step, 0.8, top_k, top_p, xla=True)  # as under XLA
        np.testing.assert_array_equal(sample.next_token(logits, keys, step, 0.8, top_k, top_p), whole)


def test_top_p_keeps_the_originals_prefix_for_every_row():
    # Sorted probabilities 0.5, 0.25, 0.15, 0.1: cumulative 0.5, 0.75, 0.9, 1.0.
    probs = np.array([[0.15, 0.5, 0.1, 0.25], [0.25, 0.1, 0.5, 0.15], [0.1, 0.15, 0.25, 0.5]])
    logits = tf.constant(np.log(probs), tf.float32)
    keep = lambda p: (sample.top_p_logits(logits, p).numpy() > LOW).astype(int)
    np.testing.assert_array_equal(keep(0.8), [[0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 1, 1]])  # 2 tokens
    np.testing.assert_array_equal(keep(0.3), [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # at least one
    np.testing.assert_array_equal(keep(0.95), [[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]])  # 3 tokens
    assert sample.top_p_logits(logits, 1.0) is logits


def draws(probs, n, temperature=1.0, top_k=0, top_p=1.0):
    """n draws from probs, one from each of n sample streams, in one call."""
    logits = tf.constant(np.log(np.tile(probs, (n, 1))), tf.float32)
    next_token = tf.function(sample.next_token)  # compiled, as the sampler runs it
    return next_token(logits, sample.sample_keys(7, 0, n), 0, temperature, top_k, top_p).numpy()


def test_filtered_tokens_are_never_drawn_and_draws_follow_softmax():
    probs = np.array([0.6, 0.25, 0.1, 0.05])
    np.testing.assert_allclose(np.bincount(draws(probs, 6000), minlength=4) / 6000, probs, atol=0.02)
    assert set(draws(probs, 600, top_k=2)) == {0, 1}
    assert set(draws(probs, 600, top_p=0.9)) == {0, 1}


def test_temperature_sharpens():
    probs = np.array([np.e, 1.0]) / (np.e + 1)
    assert draws(probs, 1000, temperature=0.1).mean() < 0.01  # P(token 1) = 0.00005
    assert 0.22 < draws(probs, 1000).mean() < 0.32  # P(token 1) = 0.27


@pytest.fixture(scope="module")
def tiny(models_dir, tiny_model):
    path = os.path.join(models_dir, tiny_model)
    hparams = model.load_hparams(path)
    return hparams, model.load_params(model.find_checkpoint(path), hparams)


def contexts(hparams, batch, n, seed=0):
    return np.random.RandomState(seed).randint(0, hparams.n_vocab, (batch, n)).astype(np.int32)


def test_top_k_1_is_the_plain_models_argmax(tiny):
    hparams, params = tiny
    tokens = contexts(hparams, 2, 5)
    out = sample.Sampler(params, hparams, top_k=1).sample(tokens, 12, seed=5)
    for _ in range(12):
        logits = model.model(params, hparams, tokens)["logits"][:, -1]
        tokens = np.concatenate([tokens, np.argmax(logits, -1)[:, None].astype(np.int32)], 1)
    np.testing.assert_array_equal(out, tokens)


@pytest.mark.parametrize("jit", [True, False], ids=["xla", "no-xla"])
@pytest.mark.parametrize("top_k, top_p, temperature", [(0, 1.0, 1.0), (40, 1.0, 0.7), (0, 0.9, 1.3), (10, 0.8, 1.0)])
def test_cached_sampler_equals_plain_path(tiny, top_k, top_p, temperature, jit):
    hparams, params = tiny
    context = contexts(hparams, 3, 6, seed=top_k)
    kwargs = dict(temperature=temperature, seed=11, first_sample=2)
    fast = sample.Sampler(params, hparams, top_k=top_k, top_p=top_p, jit=jit).sample(context, 16, **kwargs)
    plain = sample.sample_plain(params, hparams, context, 16, top_k=top_k, top_p=top_p, **kwargs)
    np.testing.assert_array_equal(fast, plain)


def test_ith_sample_is_the_same_whatever_the_batch(tiny):
    hparams, params = tiny
    sampler = sample.Sampler(params, hparams, top_p=0.9)
    context = contexts(hparams, 1, 4)
    together = sampler.sample(np.repeat(context, 4, 0), 10, seed=3)
    pairs = np.concatenate([sampler.sample(np.repeat(context, 2, 0), 10, seed=3, first_sample=i) for i in (0, 2)])
    alone = np.concatenate([sampler.sample(context, 10, seed=3, first_sample=i) for i in range(4)])
    np.testing.assert_array_equal(together, pairs)
    np.testing.assert_array_equal(together, alone)
    assert len({tuple(row) for row in together}) == 4  # different samples, not one repeated


def test_seed_decides_the_samples(tiny):
    hparams, params = tiny
    context = contexts(hparams, 2, 3)
    a = sample.Sampler(params, hparams).sample(context, 10, seed=1)
    b = sample.Sampler(params, hparams).sample(context, 10, seed=1)
    c = sample.Sampler(params, hparams).sample(context, 10, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


@pytest.mark.parametrize("jit", [True, False], ids=["xla", "no-xla"])
def test_streamed_chunks_equal_one_call(tiny, jit):
    hparams, params = tiny
    sampler = sample.Sampler(params, hparams, top_k=20, jit=jit)
    context = contexts(hparams, 2, 5)
    chunks = list(sampler.generate(context, 11, seed=4, chunk=3))
    assert [c.shape for c in chunks] == [(2, 3)] * 3 + [(2, 2)]
    np.testing.assert_array_equal(np.concatenate([context] + chunks, 1), sampler.sample(context, 11, seed=4))


def test_end_token_ends_each_sample(tiny):
    hparams, params = tiny
    context = contexts(hparams, 3, 2)
    free = sample.Sampler(params, hparams).sample(context, 12, seed=9)
    end = int(free[0, 2 + 4])  # row 0's fifth new token
    stopped = sample.Sampler(params, hparams, end_token=end).sample(context, 12, seed=9)
    for row_free, row_stopped in zip(free, stopped):
        hits = np.flatnonzero(row_free[2:] == end)
        cut = 2 + (hits[0] + 1 if len(hits) else 12)
        np.testing.assert_array_equal(row_stopped[:cut], row_free[:cut])
        assert (row_stopped[cut:] == end).all()
    assert (stopped[0, 7:] == end).all()


def test_sampler_is_traced_once_per_batch_size(tiny):
    hparams, params = tiny
    sampler = sample.Sampler(params, hparams, top_k=3)
    runs = [(1, 1, 5, 0), (2, 9, 3, 1), (2, 30, 20, 2), (1, 64, 1, 3), (1, 2, 63, 4), (2, 5, 50, 5)]
    for batch, n, length, seed in runs:
        assert sampler.sample(contexts(hparams, batch, n), length, seed=seed).shape == (batch, n + length)
    assert sampler._forward.experimental_get_tracing_count() == 1  # prefill
    assert sorted(sampler._decoders) == [1, 2]
    assert [decoder.experimental_get_tracing_count() for decoder in sampler._decoders.values()] == [1, 1]


def test_sample_sequence_keeps_the_originals_arguments(tiny):
    hparams, params = tiny
    out = sample.sample_sequence(params=params, hparams=hparams, length=6, start_token=50256, batch_size=3,
                                 temperature=1, top_k=0, top_p=0.9, seed=1)
    assert out.shape == (3, 7) and (out[:, 0] == 50256).all()
    out = sample.sample_sequence(params=params, hparams=hparams, length=4, context=[[1, 2, 3]])
    assert out.shape == (1, 7) and out[0, :3].tolist() == [1, 2, 3]


@pytest.mark.parametrize("kwargs, message", [
    (dict(length=64), "the prompt (3 tokens) plus --length 64 exceeds the model's window of 64 tokens: use at most 62"),
    (dict(length=0), "--length must be a positive integer. Received: 0"),
    (dict(length=True), "--length must be a positive integer. Received: True"),
    (dict(temperature=0), "--temperature must be greater than 0. Received: 0"),
    (dict(temperature=-1.0), "--temperature must be greater than 0"),
    (dict(top_k=-1), "--top_k must be an integer >= 0 (0: no top-k filter). Received: -1"),
    (dict(top_k=60000), "--top_k must be at most the vocabulary size 50257"),
    (dict(top_p=0), "--top_p must be in (0, 1]"),
    (dict(top_p=1.5), "--top_p must be in (0, 1] (1: no nucleus filter). Received: 1.5"),
    (dict(top_p="high"), "--top_p must be in (0, 1] (1: no nucleus filter). Received: 'high'"),
    (dict(temperature="warm"), "--temperature must be greater than 0. Received: 'warm'"),
    (dict(context=[[50257]]), "context tokens must be in [0, 50257)"),
    (dict(context=[[]]), "context must be [batch, n] tokens with n >= 1"),
])
def test_bad_settings_are_named(tiny, kwargs, message):
    hparams, params = tiny
    kwargs = {"length": 5, "context": [[1, 2, 3]], **kwargs}
    with pytest.raises(ValueError) as e:
        sample.sample_sequence(params=params, hparams=hparams, **kwargs)
    assert message in str(e.value)
