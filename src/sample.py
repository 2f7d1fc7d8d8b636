"""Sampling from GPT-2: temperature, top-k and top-p (nucleus) filters, one sampling loop.

Randomness is one stream per sample, an integer hash of (seed, sample number, position, token):
the i-th sample of a run depends only on the seed, i, and the model, never on the batch it
happened to be in. So `--batch_size` only affects speed and memory, as the original promised.

This module is the reference: plain filters, one sampling step, and `sample_plain`, which runs
the whole sequence through `model.model` for every token. `fast.Sampler` samples the same
tokens quickly and is what the scripts use; `sample_sequence`, the original's entry point, runs it.
"""
import numpy as np
import tensorflow as tf

import model
from checks import MAX_SEED, bad_argument, is_integer, is_number


def top_k_logits(logits, k):
    """Keeps each row's k largest logits (and ties with the k-th); k = 0 keeps all.

    logits [batch, n_vocab] float32 -> [batch, n_vocab], removed ones set to float32's lowest.
    k may be a scalar tensor (the exported model's runtime input).
    """
    def cut():
        kth = tf.math.top_k(logits, k=k).values[:, -1:]  # [batch, 1]
        return tf.where(logits < kth, logits.dtype.min, logits)
    return branch(k == 0, lambda: logits, cut)


def top_p_logits(logits, p):
    """Nucleus filter, as the original: keeps the most probable tokens whose cumulative
    probability is <= p, and always at least the most probable one; p = 1 keeps all.

    logits [batch, n_vocab] -> [batch, n_vocab]; p may be a scalar tensor. The cumulative
    probabilities are summed in float64 (the original: float32), see `softmax_weights`.
    """
    def cut():
        sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)  # [batch, n_vocab]
        weights, total = softmax_weights(sorted_logits)
        cumulative_probs = tf.cumsum(weights, axis=-1) / total  # [batch, n_vocab] float64
        last = tf.maximum(tf.reduce_sum(tf.cast(cumulative_probs <= tf.cast(p, tf.float64), tf.int32), axis=-1) - 1, 0)
        # [batch, 1]: the original's min_values had no second axis, which broke batch_size > 1.
        min_values = tf.gather(sorted_logits, last, batch_dims=1)[:, tf.newaxis]
        return tf.where(logits < min_values, logits.dtype.min, logits)
    return branch(p >= 1, lambda: logits, cut)


def softmax_weights(logits):
    """logits [batch, n] -> (weights [batch, n], total [batch, 1]), float64: softmax's numerators
    exp(logit - largest) and their sum, so that probabilities are weights / total.

    In float64 a sum of 50,257 of them, in any order, is within 50,257 * 2^-53 (6e-12) of the
    exact sum, relative to it: cumulative probabilities summed in two orders, or with another exp
    (XLA's), agree to twice that, so `fast.top_p_logits` finds the nucleus without sorting, and
    XLA and TensorFlow's kernels keep the same tokens. In float32 their rounding (up to 2e-6)
    decided more often.
    """
    weights = tf.exp(tf.cast(logits - tf.reduce_max(logits, axis=-1, keepdims=True), tf.float64))
    return weights, tf.reduce_sum(weights, axis=-1, keepdims=True)


def branch(condition, if_true, if_false):
    """if_true() or if_false(): chosen now for a Python bool, at run time (tf.cond) for a tensor,
    so that the filters take their settings as Python numbers or as tensors alike."""
    if tf.is_tensor(condition):
        return tf.cond(condition, if_true, if_false)
    return if_true() if condition else if_false()


def fmix32(h):
    """murmur3's finalizer: a bijection of uint32 that spreads every bit over all the others."""
    h = (h ^ tf.bitwise.right_shift(h, 16)) * tf.constant(0x85EBCA6B, tf.uint32)
    h = (h ^ tf.bitwise.right_shift(h, 13)) * tf.constant(0xC2B2AE35, tf.uint32)
    return h ^ tf.bitwise.right_shift(h, 16)


def stream_state(keys, step):
    """keys [batch, 2] int64 (seed, sample number), step -> [batch] uint32: each stream's state
    for this draw. Every bit of the seed counts: seeds 0 and 2**32 are different streams."""
    low = tf.cast(keys, tf.uint32)  # [batch, 2], the low 32 bits
    high = tf.cast(tf.bitwise.right_shift(keys, 32), tf.uint32)
    seed = fmix32(fmix32(low[:, 0]) ^ high[:, 0])
    number = fmix32(low[:, 1] ^ fmix32(high[:, 1]))
    return fmix32(fmix32(seed ^ number) ^ tf.cast(step, tf.uint32))


def gumbel(state, index):
    """state (`stream_state`) and token ids `index`, broadcast together -> float32 Gumbel noise.

    A counter-based hash in integer arithmetic, so the numbers are bit for bit the same on
    every device and under XLA (TensorFlow's own stateless generators differ between the two),
    and the noise of a token does not depend on which other tokens it is drawn for.
    """
    h = fmix32(state ^ tf.cast(index, tf.uint32) * tf.constant(0x9E3779B9, tf.uint32))
    # 23 random bits, in (0, 1): (2**23 - 1 + 0.5) * 2**-23 = 1 - 2**-24 is a float32 below 1, where
    # 24 bits would round their largest value up to 1.0 and give that token infinite noise.
    uniform = (tf.cast(tf.bitwise.right_shift(h, 9), tf.float32) + 0.5) * 2.0 ** -23
    return -tf.math.log(-tf.math.log(uniform))


def sample_logits(logits, keys, step):
    """One token per row drawn from softmax(logits), by the Gumbel-max trick.

    logits [batch, n_vocab], keys [batch, 2] int64 (one random stream per sample), step: which
    draw of each stream this is (the position the new token takes) -> [batch] int32.
    """
    return tf.argmax(logits + draw_noise(keys, step, tf.shape(logits)[1]), axis=-1, output_type=tf.int32)


def draw_noise(keys, step, n_vocab):
    """keys [batch, 2] -> [batch, n_vocab] float32: each row's Gumbel noise for draw `step`, one
    number per token id."""
    return gumbel(stream_state(keys, step)[:, None], tf.range(n_vocab)[None])


def with_temperature(logits, temperature):
    """logits [batch, n_vocab] / temperature, each row's largest first brought to 0: the same
    distribution, and finite for any temperature > 0, so that a tiny one gives its limit, the
    most likely token (a draw among equal ones), rather than an overflow."""
    return (logits - tf.reduce_max(logits, axis=-1, keepdims=True)) / temperature


def next_token(logits, keys, step, temperature, top_k, top_p):
    """The sampling step: temperature, then top-k, then top-p, then a draw.

    logits [batch, n_vocab] float32 -> [batch] int32. `fast.next_token` makes the same draw faster.
    """
    return sample_logits(top_p_logits(top_k_logits(with_temperature(logits, temperature), top_k), top_p), keys, step)


def sample_keys(seed, first_sample, batch_size):
    """[batch, 2] int64 stream keys for samples first_sample .. first_sample + batch_size - 1."""
    if not is_integer(seed) or not 0 <= seed <= MAX_SEED:
        raise bad_argument("seed", "must be an integer from 0 to 2**63 - 1", seed)
    if not is_integer(first_sample) or not 0 <= first_sample <= MAX_SEED - batch_size:
        raise bad_argument("first_sample", "must be a non-negative integer", first_sample)
    return tf.constant([[seed, first_sample + i] for i in range(batch_size)], tf.int64)


# Below float32's smallest normal number TensorFlow's CPU kernels read a temperature as 0.
SMALLEST_TEMPERATURE = float(np.finfo(np.float32).tiny)


def check_sampling(hparams, context_length, length, temperature, top_k, top_p):
    """ValueError naming the bad argument, if any."""
    if not is_integer(length) or length < 1:
        raise bad_argument("length", "must be a positive integer", length)
    if context_length + length - 1 > hparams.n_ctx:
        tokens = f"{context_length} token{'s' if context_length != 1 else ''}"
        raise bad_argument("length", f"and the prompt's {tokens} need {context_length + length - 1} positions, more "
                           f"than the model's window of {hparams.n_ctx} (the last new token needs none): use at most "
                           f"{hparams.n_ctx + 1 - context_length} new tokens or a shorter prompt", length)
    if not is_number(temperature):  # fire passes a word such as 'inf' as a string
        raise bad_argument("temperature", "must be a number greater than 0, such as 0.7 (1: the model's own "
                           "probabilities; higher: more random)", temperature)
    if not temperature >= SMALLEST_TEMPERATURE:
        raise bad_argument("temperature", "must be greater than 0: at least 1.2e-38, float32's smallest normal "
                           "number; for greedy decoding (the most likely token each time) use top_k 1", temperature,
                           mentions=["top_k"])
    if not is_integer(top_k) or top_k < 0:
        raise bad_argument("top_k", "must be an integer >= 0 (0: no top-k filter)", top_k)
    if top_k > hparams.n_vocab:
        raise bad_argument("top_k", f"must be at most the vocabulary size {hparams.n_vocab}", top_k)
    if not is_number(top_p) or not 0 < top_p <= 1:
        raise bad_argument("top_p", "must be in (0, 1] (1: no nucleus filter)", top_p)


def as_context(hparams, context=None, start_token=None, batch_size=None):
    """The original's two ways to start, as an int32 array [batch, n]."""
    if (context is None) == (start_token is None):
        raise ValueError("specify exactly one of start_token and context")
    if context is None:
        context = [[start_token]] * (batch_size or 1)
    context = np.asarray(context)
    if context.ndim != 2 or context.shape[1] == 0 or not np.issubdtype(context.dtype, np.integer):
        raise ValueError(f"context must be [batch, n] integer tokens with n >= 1. Received shape: {context.shape}")
    if context.min() < 0 or context.max() >= hparams.n_vocab:
        raise ValueError(f"context tokens must be in [0, {hparams.n_vocab}). Received: {context.min()}..{context.max()}")
    return context.astype(np.int32)


def as_prompts(hparams, context):
    """Prompts of any lengths -> (tokens int32 [batch, longest], right-padded with 0, lengths
    int32 [batch]). context is [batch, n] tokens (`as_context`) or a list of token lists."""
    if isinstance(context, np.ndarray) or len({np.size(row) for row in context}) <= 1:
        context = as_context(hparams, context)
        return context, np.full([len(context)], context.shape[1], np.int32)
    rows = [as_context(hparams, [row])[0] for row in context]
    lengths = np.array([len(row) for row in rows], np.int32)
    return np.stack([np.pad(row, [0, lengths.max() - len(row)]) for row in rows]), lengths


def sample_sequence(*, params, hparams, length, start_token=None, batch_size=None, context=None,
                    temperature=1, top_k=0, top_p=1, seed=0, end_token=None):
    """The original's entry point: the context (or start_token) followed by `length` sampled
    tokens, [batch, n + length], by the fast path. Builds and traces a `fast.Sampler` each
    call: reuse a Sampler to sample many times."""
    import fast  # here, not above: fast builds on this module's filters and random streams
    context = as_context(hparams, context, start_token, batch_size)
    sampler = fast.Sampler(params, hparams, top_k=top_k, top_p=top_p, end_token=end_token)
    return sampler.sample(context, length, temperature=temperature, seed=seed)


def sample_plain(params, hparams, context, length, *, temperature=1.0, top_k=0, top_p=1.0, seed=0, first_sample=0):
    """The reference sampler: no cache, the whole sequence through `model.model` for every token."""
    tokens = as_context(hparams, context)
    check_sampling(hparams, tokens.shape[1], length, temperature, top_k, top_p)
    keys = sample_keys(seed, first_sample, tokens.shape[0])
    for _ in range(length):
        logits = model.model(params, hparams, tokens)["logits"][:, -1]
        token = next_token(logits, keys, tokens.shape[1], float(temperature), top_k, top_p)
        tokens = np.concatenate([tokens, token.numpy()[:, None]], axis=1)
    return tokens
