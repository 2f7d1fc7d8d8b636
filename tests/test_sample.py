"""sample.py: the filters on hand-computed examples, and the sampler on a tiny model."""

import numpy as np
import pytest
import tensorflow as tf

import sample

LOW = np.finfo(np.float32).min


def test_top_k_keeps_the_k_largest_and_ties():
    logits = tf.constant([[1.0, 3.0, 2.0, 3.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(sample.top_k_logits(logits, 2), [[LOW, 3, LOW, 3, LOW], [5, 4, LOW, LOW, LOW]])
    np.testing.assert_array_equal(sample.top_k_logits(logits, 3), [[LOW, 3, 2, 3, LOW], [5, 4, 3, LOW, LOW]])
    assert sample.top_k_logits(logits, 0) is logits


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


def test_every_bit_of_the_seed_counts():
    keys = lambda seed: sample.sample_keys(seed, 0, 3)
    states = [sample.stream_state(keys(seed), 5).numpy().tolist() for seed in (0, 2 ** 32, 2 ** 62, 2 ** 63 - 1, 1)]
    assert len({tuple(s) for s in states}) == len(states)  # 2**32 no longer aliases 0
    numbers = sample.stream_state(tf.constant([[7, 0], [7, 2 ** 32]], tf.int64), 5).numpy()
    assert numbers[0] != numbers[1]


@pytest.mark.parametrize("temperature", [sample.SMALLEST_TEMPERATURE, 1e-30, 1e-12])
def test_tiny_temperature_is_greedy(temperature):
    logits = tf.constant(np.random.RandomState(0).randn(6, 500) * 30, tf.float32)
    keys = sample.sample_keys(1, 0, 6)
    for step in range(5):
        token = sample.next_token(logits, keys, step, temperature, 0, 1.0)
        np.testing.assert_array_equal(token, tf.argmax(logits, -1))


def test_top_k_1_is_always_the_argmax():
    """One draw in 2**24 used to get infinite noise and beat the filters: 2,048 streams over the
    whole vocabulary make that about 0.3% of draws likely to show."""
    logits = tf.constant(np.random.RandomState(0).randn(2048, 50257), tf.float32)
    keys = sample.sample_keys(0, 0, 2048)
    np.testing.assert_array_equal(sample.next_token(logits, keys, 1, 1.0, 1, 1.0), tf.argmax(logits, -1))


def test_huge_temperature_draws_uniformly_without_nan():
    probs = np.array([0.97, 0.01, 0.01, 0.01])
    counts = np.bincount(draws(probs, 4000, temperature=1e38), minlength=4) / 4000
    np.testing.assert_allclose(counts, 0.25, atol=0.03)


def test_sample_sequence_keeps_the_originals_arguments(tiny):
    hparams, params = tiny
    out = sample.sample_sequence(params=params, hparams=hparams, length=6, start_token=50256, batch_size=3,
                                 temperature=1, top_k=0, top_p=0.9, seed=1)
    assert out.shape == (3, 7) and (out[:, 0] == 50256).all()
    out = sample.sample_sequence(params=params, hparams=hparams, length=4, context=[[1, 2, 3]])
    assert out.shape == (1, 7) and out[0, :3].tolist() == [1, 2, 3]


@pytest.mark.parametrize("kwargs, message", [
    (dict(length=64), "length and the prompt's 3 tokens need 66 positions, more than the model's window of 64 (the "
                      "last new token needs none): use at most 62 new tokens or a shorter prompt. Received: 64"),
    (dict(length=0), "length must be a positive integer. Received: 0"),
    (dict(length=True), "length must be a positive integer. Received: True"),
    (dict(temperature=0), "temperature must be greater than 0: at least 1.2e-38, float32's smallest normal number; "
                          "for greedy decoding (the most likely token each time) use top_k 1. Received: 0"),
    (dict(temperature=1e-39), "temperature must be greater than 0: at least 1.2e-38"),
    (dict(temperature=float("nan")), "temperature must be greater than 0"),
    (dict(seed=2 ** 63), "seed must be an integer from 0 to 2**63 - 1. Received: 9223372036854775808"),
    (dict(seed=-1), "seed must be an integer from 0 to 2**63 - 1"),
    (dict(temperature=-1.0), "temperature must be greater than 0"),
    (dict(top_k=-1), "top_k must be an integer >= 0 (0: no top-k filter). Received: -1"),
    (dict(top_k=60000), "top_k must be at most the vocabulary size 50257"),
    (dict(top_p=0), "top_p must be in (0, 1]"),
    (dict(top_p=1.5), "top_p must be in (0, 1] (1: no nucleus filter). Received: 1.5"),
    (dict(top_p="high"), "top_p must be in (0, 1] (1: no nucleus filter). Received: 'high'"),
    (dict(temperature="warm"), "temperature must be a number greater than 0, such as 0.7 (1: the model's own "
                               "probabilities; higher: more random). Received: 'warm'"),
    (dict(temperature="inf"), "temperature must be a number greater than 0, such as 0.7"),
    (dict(context=[[50257]]), "context tokens must be in [0, 50257)"),
    (dict(context=[[]]), "context must be [batch, n] integer tokens with n >= 1"),
])
def test_bad_settings_are_named(tiny, kwargs, message):
    hparams, params = tiny
    kwargs = {"length": 5, "context": [[1, 2, 3]], **kwargs}
    with pytest.raises(ValueError) as e:
        sample.sample_sequence(params=params, hparams=hparams, **kwargs)
    assert message in str(e.value)
    name = message.split()[0]
    flags = ("length", "temperature", "top_k", "top_p", "seed")  # the scripts say --length, ...
    assert getattr(e.value, "argument", None) == (name if name in flags else None)
