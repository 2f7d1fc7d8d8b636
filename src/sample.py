"""Sampling from GPT-2: temperature, top-k and top-p (nucleus) filters, one sampling loop.

Randomness is one stream per sample, an integer hash of (seed, sample number, position, token):
the i-th sample of a run depends only on the seed, i, and the model, never on the batch it
happened to be in. So `--batch_size` only affects speed and memory, as the original promised.

`Sampler` is the fast path: a key/value cache preallocated for the whole sample, a prefill of
the context, then a compiled `tf.while_loop` that costs one position per new token.
`sample_plain` is the reference it is tested against: no cache, the whole sequence each step.
"""
import numpy as np
import tensorflow as tf

import model


def kth_largest(logits, k):
    """[batch, n] float32 -> [batch, 1]: each row's k-th largest logit, found exactly.

    A binary search over the floats' bit patterns (read as integers ordered like the floats):
    at most 32 rounds of compare-and-count, for XLA, whose sort-based top_k is slow on CPU.
    """
    bits = tf.bitcast(logits, tf.int32)
    keys = tf.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # [batch, n], ordered like the logits
    lo = tf.cast(tf.reduce_min(keys, axis=-1, keepdims=True), tf.int64)  # at least k keys are >= lo
    hi = tf.cast(tf.reduce_max(keys, axis=-1, keepdims=True), tf.int64) + 1  # fewer than k are >= hi

    def halve(lo, hi):
        mid = (lo + hi) // 2
        count = tf.reduce_sum(tf.cast(keys >= tf.cast(mid, tf.int32), tf.int32), axis=-1, keepdims=True)
        return tf.where(count >= k, mid, lo), tf.where(count >= k, hi, mid)

    lo, _ = tf.while_loop(lambda lo, hi: tf.reduce_any(hi - lo > 1), halve, [lo, hi])  # at most 32 rounds
    bits = tf.cast(lo, tf.int32)
    return tf.bitcast(tf.where(bits < 0, bits ^ 0x7FFFFFFF, bits), tf.float32)


def top_k_logits(logits, k, xla=False):
    """Keeps each row's k largest logits (and ties with the k-th); k = 0 keeps all.

    logits [batch, n_vocab] float32 -> [batch, n_vocab], removed ones set to float32's lowest.
    With `xla`, the k-th largest is found by `kth_largest`; both ways keep the same logits.
    """
    if k == 0:
        return logits
    return tf.where(logits < kth_value(logits, k, xla), logits.dtype.min, logits)


def kth_value(logits, k, xla=False):
    """[batch, n] -> [batch, 1]: each row's k-th largest logit, by `kth_largest` with `xla`."""
    return kth_largest(logits, k) if xla else tf.math.top_k(logits, k=k).values[:, -1:]


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


def fmix32(h):
    """murmur3's finalizer: a bijection of uint32 that spreads every bit over all the others."""
    h = (h ^ tf.bitwise.right_shift(h, 16)) * tf.constant(0x85EBCA6B, tf.uint32)
    h = (h ^ tf.bitwise.right_shift(h, 13)) * tf.constant(0xC2B2AE35, tf.uint32)
    return h ^ tf.bitwise.right_shift(h, 16)


def stream_state(keys, step):
    """keys [batch, 2] (seed, sample number), step -> [batch] uint32: each stream's state for this draw."""
    seed, number = tf.unstack(tf.cast(keys, tf.uint32), axis=1)  # [batch] each
    return fmix32(fmix32(fmix32(seed) ^ number) ^ tf.cast(step, tf.uint32))


def gumbel(state, index):
    """state (`stream_state`) and token ids `index`, broadcast together -> float32 Gumbel noise.

    A counter-based hash in integer arithmetic, so the numbers are bit for bit the same on
    every device and under XLA (TensorFlow's own stateless generators differ between the two),
    and the noise of a token does not depend on which other tokens it is drawn for.
    """
    h = fmix32(state ^ tf.cast(index, tf.uint32) * tf.constant(0x9E3779B9, tf.uint32))
    uniform = (tf.cast(tf.bitwise.right_shift(h, 8), tf.float32) + 0.5) * 2.0 ** -24  # 24 random bits, in (0, 1)
    return -tf.math.log(-tf.math.log(uniform))


def sample_logits(logits, keys, step):
    """One token per row drawn from softmax(logits), by the Gumbel-max trick.

    logits [batch, n_vocab], keys [batch, 2] int64 (one random stream per sample), step: which
    draw of each stream this is (the position the new token takes) -> [batch] int32.
    """
    noise = gumbel(stream_state(keys, step)[:, None], tf.range(tf.shape(logits)[1])[None])  # [batch, n_vocab]
    return first_argmax(logits + noise)


def sample_kept(logits, keep, keys, step):
    """`sample_logits` for logits a filter has cut to the few where `keep` [batch, n_vocab] is
    True, with noise for those only: a few dozen hashes, not one per vocabulary entry.

    The same token as `sample_logits` on the filtered logits: there a removed logit (float32's
    lowest) plus any noise (at most 17.4) stays float32's lowest, and is never drawn.
    """
    kept = tf.where(keep)  # [m, 2] (row, token), rows in order
    rows, index = kept[:, 0], tf.cast(kept[:, 1], tf.int32)
    scores = tf.gather_nd(logits, kept) + gumbel(tf.gather(stream_state(keys, step), rows), index)  # [m]
    batch = tf.shape(logits)[0]
    best = tf.math.unsorted_segment_max(scores, rows, batch)  # [batch]
    first = tf.where(scores >= tf.gather(best, rows), index, tf.shape(logits)[1])  # the maximum's first token
    return tf.math.unsorted_segment_min(first, rows, batch)


def first_argmax(x):
    """[batch, n] -> [batch] int32: tf.argmax (the first index of each row's maximum), as two
    plain reductions, which XLA runs several times faster than argmax's (value, index) one."""
    top = tf.reduce_max(x, axis=-1, keepdims=True)
    n = tf.shape(x)[1]
    return tf.reduce_min(tf.where(x >= top, tf.range(n)[None], n), axis=-1)


def next_token(logits, keys, step, temperature, top_k, top_p, xla=False):
    """The sampling step both paths share: temperature, then top-k, then top-p, then a draw.

    Drawing among the kept tokens only is quicker without XLA; XLA fuses the whole-vocabulary
    draw into one loop and cannot compile `sample_kept`'s shapes, which depend on the logits.
    """
    logits = logits / temperature
    if xla or (top_k == 0 and top_p >= 1):
        return sample_logits(top_p_logits(top_k_logits(logits, top_k, xla), top_p), keys, step)
    if top_p >= 1:  # top-k alone: what top_k_logits keeps, without making the filtered logits
        return sample_kept(logits, logits >= kth_value(logits, top_k), keys, step)
    return sample_kept(logits, top_p_logits(top_k_logits(logits, top_k), top_p) > logits.dtype.min, keys, step)


def sample_keys(seed, first_sample, batch_size):
    """[batch, 2] int64 stream keys for samples first_sample .. first_sample + batch_size - 1."""
    return tf.constant([[seed, first_sample + i] for i in range(batch_size)], tf.int64)


def check_sampling(hparams, context_length, length, temperature, top_k, top_p):
    """ValueError naming the bad setting, if any."""
    if not is_integer(length) or length < 1:
        raise ValueError(f"--length must be a positive integer. Received: {length!r}")
    if context_length + length - 1 > hparams.n_ctx:
        raise ValueError(f"the prompt ({context_length} tokens) plus --length {length} exceeds the model's "
                         f"window of {hparams.n_ctx} tokens: use at most {hparams.n_ctx + 1 - context_length} "
                         "new tokens or a shorter prompt")
    if not is_number(temperature) or not temperature > 0:
        raise ValueError(f"--temperature must be greater than 0. Received: {temperature!r}")
    if not is_integer(top_k) or top_k < 0:
        raise ValueError(f"--top_k must be an integer >= 0 (0: no top-k filter). Received: {top_k!r}")
    if top_k > hparams.n_vocab:
        raise ValueError(f"--top_k must be at most the vocabulary size {hparams.n_vocab}. Received: {top_k}")
    if not is_number(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"--top_p must be in (0, 1] (1: no nucleus filter). Received: {top_p!r}")


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


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


def cache_size(positions, n_ctx, multiple=128):
    """Positions rounded up to a multiple, so a few compiled shapes serve every length."""
    return min(-(-positions // multiple) * multiple, n_ctx + 1)


class Sampler:
    """Compiled sampling for one model and one choice of filters.

    Traced once per Sampler and batch size: every prompt length and sample length reuses the
    same graphs. A batch size known when tracing lets TensorFlow fold the decode step's shape
    arithmetic away (~10% faster at batch 1 in bfloat16). With `jit` (the default for float32)
    the decode loop is compiled by XLA, once per batch size and cache size (a multiple of 128
    positions). Create a Sampler once and call `generate` (streaming) or `sample` many times.

    Without `jit` (bfloat16, float16) the matmuls run on oneDNN, which by default converts each
    weight matrix to its own layout at every call. With TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 in
    the environment before the first matmul, it converts once and keeps the result (1.1-1.5x the
    speed in bfloat16, one more copy of the weights in memory); the scripts set it. Only set
    it in a process whose graphs always multiply by the same weights: every matmul-plus-bias
    that TensorFlow fuses in a graph keeps the weights of its first call.

    Without `jit` the decode loop also writes each step's keys and values into the cache's own
    memory (`model.write_cache`): the cache is the Sampler's, made by `_prefill` for each call.
    """

    def __init__(self, params, hparams, *, top_k=0, top_p=1.0, end_token=None, jit=None):
        self.params, self.hparams = params, hparams
        self.top_k, self.top_p, self.end_token = top_k, top_p, end_token
        dtype = params["wte"].dtype
        self.jit = dtype == tf.float32 if jit is None else jit  # XLA's bfloat16 matmuls are slow on CPU
        self._zeros = None if self.jit else tf.zeros([hparams.n_vocab], dtype)  # see model.unembed
        self._forward = model.compile_model(params, hparams, logits=False)  # the prefill
        self._decoders = {}  # batch size -> the compiled decode loop

    def _decoder(self, batch):
        """The decode loop (`_decode_fn`) compiled for `batch` rows, traced on first use."""
        if batch not in self._decoders:
            hparams = self.hparams
            cache = [tf.TensorSpec([2, batch, hparams.n_head, None, hparams.head_dim], tf.float32)] * hparams.n_layer
            self._decoders[batch] = tf.function(self._decode_fn, jit_compile=self.jit, autograph=False, input_signature=[
                cache, tf.TensorSpec([batch, None], tf.int32), tf.TensorSpec([batch], tf.bool),
                tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32), tf.TensorSpec([batch, 2], tf.int64),
                tf.TensorSpec([], tf.float32)])
        return self._decoders[batch]

    def _prefill(self, tokens, size):
        """tokens [batch, n] -> a cache of `size` positions holding their keys and values (see model.empty_cache)."""
        batch, n = tokens.shape
        present = model.empty_past(self.hparams, batch, self.params["wte"].dtype)
        if n:  # [batch, n_layer, 2, heads, n, head_dim]
            present = self._forward(tokens, present)["present"]
        layers = tf.transpose(tf.cast(present, tf.float32), [1, 2, 0, 3, 4, 5])  # [n_layer, 2, batch, heads, n, head_dim]
        return [tf.pad(layer, [[0, 0], [0, 0], [0, 0], [0, size - n], [0, 0]]) for layer in layers]

    def _decode_fn(self, cache, tokens, done, position, steps, keys, temperature):
        """Feeds tokens[:, position] and samples up to `steps` tokens into tokens[:, position + 1:].

        tokens [batch, size] holds the whole sequence. Returns (tokens, cache, done, made).
        """
        rows = tf.range(tf.shape(tokens)[0])

        def body(i, tokens, cache, done):
            p = position + i
            h, cache = model.decode(self.params, self.hparams, tf.gather(tokens, [p], axis=1), cache, p,
                                    overwrite=not self.jit)
            logits = model.unembed(self.params, h, self._zeros)[:, -1]  # [batch, n_vocab]
            token = next_token(logits, keys, p + 1, temperature, self.top_k, self.top_p, self.jit)
            if self.end_token is not None:  # a finished sample only repeats end_token
                token = tf.where(done, self.end_token, token)
                done = done | (token == self.end_token)
            tokens = tf.tensor_scatter_nd_update(tokens, tf.stack([rows, tf.fill(tf.shape(rows), p + 1)], 1), token)
            return i + 1, tokens, cache, done

        def cond(i, tokens, cache, done):
            return (i < steps) & ~tf.reduce_all(done)

        made, tokens, cache, done = tf.while_loop(cond, body, [0, tokens, cache, done])
        return tokens, cache, done, made

    def generate(self, context, length, *, temperature=1.0, seed=0, first_sample=0, chunk=None):
        """Yields new tokens as [batch, k] arrays, `chunk` tokens at a time (all at once by default).

        context [batch, n]: row r is sample number first_sample + r. With an end_token, rows
        that have ended repeat it, and generation stops early when every row has ended.
        """
        context = as_context(self.hparams, context)
        batch, n = context.shape
        check_sampling(self.hparams, n, length, temperature, self.top_k, self.top_p)
        size = cache_size(n + length, self.hparams.n_ctx)
        cache = self._prefill(context[:, :-1], size)
        tokens = tf.constant(np.pad(context, [(0, 0), (0, size - n)]))
        done, keys = tf.zeros([batch], tf.bool), sample_keys(seed, first_sample, batch)
        made = 0
        while made < length and not done.numpy().all():
            steps = min(chunk or length, length - made)
            tokens, cache, done, k = self._decoder(batch)(cache, tokens, done, tf.constant(n - 1 + made),
                                                          tf.constant(steps), keys, tf.constant(temperature, tf.float32))
            yield tokens[:, n + made:n + made + int(k)].numpy()
            made += steps

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
    for _ in range(length):
        logits = model.model(params, hparams, tokens)["logits"][:, -1]
        token = next_token(logits, keys, tokens.shape[1], float(temperature), top_k, top_p)
        tokens = np.concatenate([tokens, token.numpy()[:, None]], axis=1)
    return tokens
