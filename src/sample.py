"""Sampling from GPT-2: temperature, top-k and top-p (nucleus) filters, one sampling loop.

Randomness is one stateless Philox stream per sample: the i-th sample of a run depends only on
the seed, i, and the model, never on the batch it happened to be in. So `--batch_size` only
affects speed and memory, as the original promised.

`Sampler` is the fast path: a key/value cache preallocated for the whole sample, a prefill of
the context, then a compiled `tf.while_loop` that costs one position per new token.
`sample_plain` is the reference it is tested against: no cache, the whole sequence each step.
"""
import numpy as np
import tensorflow as tf

import model


def top_k_logits(logits, k):
    """Keeps each row's k largest logits (and ties with the k-th); k = 0 keeps all.

    logits [batch, n_vocab] -> [batch, n_vocab], removed ones set to the dtype's lowest value.
    """
    if k == 0:
        return logits
    values, _ = tf.math.top_k(logits, k=k)
    min_values = values[:, -1, tf.newaxis]  # [batch, 1]
    return tf.where(logits < min_values, logits.dtype.min, logits)


def top_p_logits(logits, p):
    """Nucleus filter, as the original: keeps the most probable tokens whose cumulative
    probability is <= p, and always at least the most probable one; p = 1 keeps all.

    logits [batch, n_vocab] -> [batch, n_vocab]
    """
    if p >= 1:
        return logits
    sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)  # [batch, n_vocab]
    cumulative_probs = tf.cumsum(tf.nn.softmax(sorted_logits, axis=-1), axis=-1)
    last = tf.maximum(tf.reduce_sum(tf.cast(cumulative_probs <= p, tf.int32), axis=-1) - 1, 0)  # [batch]
    # [batch, 1]: the original's min_values had no second axis, which broke batch_size > 1.
    min_values = tf.gather(sorted_logits, last, batch_dims=1)[:, tf.newaxis]
    return tf.where(logits < min_values, logits.dtype.min, logits)


def sample_logits(logits, keys, step):
    """One token per row drawn from softmax(logits), by the Gumbel-max trick.

    logits [batch, n_vocab], keys [batch, 2] int64 (one random stream per sample), step: which
    draw of each stream this is -> [batch] int32.
    """
    def gumbel(key):
        seed = tf.random.experimental.stateless_fold_in(key, step, alg="philox")
        u = tf.random.stateless_uniform(tf.shape(logits)[1:], seed, minval=np.finfo(np.float32).tiny,
                                        maxval=1.0, alg="philox")
        return -tf.math.log(-tf.math.log(u))
    noise = tf.map_fn(gumbel, keys, fn_output_signature=tf.float32)  # [batch, n_vocab]
    return tf.argmax(logits + noise, axis=-1, output_type=tf.int32)


def next_token(logits, keys, step, temperature, top_k, top_p):
    """The sampling step both paths share: temperature, then top-k, then top-p, then a draw."""
    logits = logits / temperature
    return sample_logits(top_p_logits(top_k_logits(logits, top_k), top_p), keys, step)


def sample_keys(seed, first_sample, batch_size):
    """[batch, 2] int64 stream keys for samples first_sample .. first_sample + batch_size - 1."""
    return tf.constant([[seed, first_sample + i] for i in range(batch_size)], tf.int64)


def check_sampling(hparams, context_length, length, temperature, top_k, top_p):
    """ValueError naming the bad setting, if any."""
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"--length must be a positive integer. Received: {length!r}")
    if context_length + length - 1 > hparams.n_ctx:
        raise ValueError(f"the prompt ({context_length} tokens) plus --length {length} exceeds the model's "
                         f"window of {hparams.n_ctx} tokens: use at most {hparams.n_ctx + 1 - context_length} "
                         "new tokens or a shorter prompt")
    if not temperature > 0:
        raise ValueError(f"--temperature must be greater than 0. Received: {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"--top_k must be an integer >= 0 (0: no top-k filter). Received: {top_k!r}")
    if top_k > hparams.n_vocab:
        raise ValueError(f"--top_k must be at most the vocabulary size {hparams.n_vocab}. Received: {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top_p must be in (0, 1] (1: no nucleus filter). Received: {top_p!r}")


def as_context(hparams, context=None, start_token=None, batch_size=None):
    """The original's two ways to start, as an int32 array [batch, n]."""
    if (context is None) == (start_token is None):
        raise ValueError("specify exactly one of start_token and context")
    if context is None:
        context = [[start_token]] * (batch_size or 1)
    context = np.asarray(context, np.int32)
    if context.ndim != 2 or context.shape[1] == 0:
        raise ValueError(f"context must be [batch, n] tokens with n >= 1. Received shape: {context.shape}")
    if context.min() < 0 or context.max() >= hparams.n_vocab:
        raise ValueError(f"context tokens must be in [0, {hparams.n_vocab}). Received: {context.min()}..{context.max()}")
    return context


class Sampler:
    """Compiled sampling for one model and one choice of filters.

    Traced once per Sampler: every batch size, prompt length and sample length reuses the
    same graphs. Create it once and call `generate` (streaming) or `sample` many times.
    """

    def __init__(self, params, hparams, *, top_k=0, top_p=1.0, end_token=None):
        self.params, self.hparams = params, hparams
        self.top_k, self.top_p, self.end_token = top_k, top_p, end_token
        dtype = params["wte"].dtype
        layer = tf.TensorSpec([None, 2, hparams.n_head, None, hparams.head_dim], dtype)
        cache = [layer] * hparams.n_layer
        self._prefill = tf.function(self._prefill_fn, input_signature=[
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int32)])
        self._decode = tf.function(self._decode_fn, input_signature=[
            cache, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.bool), tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.int32), tf.TensorSpec([None, 2], tf.int64), tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.float32)])

    def _prefill_fn(self, tokens, size):
        """tokens [batch, n] -> a cache of `size` positions holding their keys and values."""
        cache = model.empty_cache(self.hparams, tf.shape(tokens)[0], size, self.params["wte"].dtype)
        _, cache = model.decode(self.params, self.hparams, tokens, cache, 0)
        return cache

    def _decode_fn(self, cache, pending, done, position, steps, keys, first_step, temperature):
        """Feeds `pending` [batch] (the last token so far) at `position` and samples up to
        `steps` tokens. Returns (tokens [batch, k], cache, pending, done)."""
        out = tf.TensorArray(tf.int32, size=0, dynamic_size=True)

        def body(i, cache, pending, done, out):
            h, cache = model.decode(self.params, self.hparams, pending[:, None], cache, position + i)
            logits = model.unembed(self.params, h)[:, -1]  # [batch, n_vocab]
            token = next_token(logits, keys, first_step + i, temperature, self.top_k, self.top_p)
            if self.end_token is not None:  # a finished sample only repeats end_token
                token = tf.where(done, self.end_token, token)
                done = done | (token == self.end_token)
            return i + 1, cache, token, done, out.write(i, token)

        def cond(i, cache, pending, done, out):
            return (i < steps) & ~tf.reduce_all(done)

        _, cache, pending, done, out = tf.while_loop(cond, body, [0, cache, pending, done, out])
        return tf.transpose(out.stack()), cache, pending, done  # tokens [batch, k]

    def generate(self, context, length, *, temperature=1.0, seed=0, first_sample=0, chunk=None):
        """Yields new tokens as [batch, k] arrays, `chunk` tokens at a time (all at once by default).

        context [batch, n]: row r is sample number first_sample + r. With an end_token, rows
        that have ended repeat it, and generation stops early when every row has ended.
        """
        context = as_context(self.hparams, context)
        batch, n = context.shape
        check_sampling(self.hparams, n, length, temperature, self.top_k, self.top_p)
        size = tf.constant(n + length - 1, tf.int32)  # positions fed: context, then all but the last new token
        cache = self._prefill(context[:, :-1], size)
        pending, done = tf.constant(context[:, -1]), tf.zeros([batch], tf.bool)
        keys = sample_keys(seed, first_sample, batch)
        made = 0
        while made < length and not done.numpy().all():
            steps = min(chunk or length, length - made)
            tokens, cache, pending, done = self._decode(
                cache, pending, done, tf.constant(n - 1 + made), tf.constant(steps), keys, tf.constant(made),
                tf.constant(temperature, tf.float32))
            made += steps
            yield tokens.numpy()

    def sample(self, context, length, **kwargs):
        """context [batch, n] -> [batch, n + length]: the context, then the samples (end_token
        repeated after a sample ends)."""
        context = as_context(self.hparams, context)
        tokens = np.concatenate([context] + list(self.generate(context, length, **kwargs)), axis=1)
        return np.pad(tokens, [(0, 0), (0, context.shape[1] + length - tokens.shape[1])],
                      constant_values=self.end_token or 0)


def sample_sequence(*, params, hparams, length, start_token=None, batch_size=None, context=None,
                    temperature=1, top_k=0, top_p=1, seed=0, end_token=None):
    """The original's entry point: the context (or start_token) followed by `length` sampled
    tokens, [batch, n + length]. Builds and traces a Sampler each call: reuse a Sampler to
    sample many times."""
    context = as_context(hparams, context, start_token, batch_size)
    sampler = Sampler(params, hparams, top_k=top_k, top_p=top_p, end_token=end_token)
    return sampler.sample(context, length, temperature=temperature, seed=seed)


def sample_plain(params, hparams, context, length, *, temperature=1.0, top_k=0, top_p=1.0, seed=0, first_sample=0):
    """The reference path: no cache, the whole sequence through `model.model` for every token."""
    tokens = as_context(hparams, context)
    check_sampling(hparams, tokens.shape[1], length, temperature, top_k, top_p)
    keys = sample_keys(seed, first_sample, tokens.shape[0])
    for step in range(length):
        logits = model.model(params, hparams, tokens)["logits"][:, -1]
        token = next_token(logits, keys, step, float(temperature), top_k, top_p)
        tokens = np.concatenate([tokens, token.numpy()[:, None]], axis=1)
    return tokens
