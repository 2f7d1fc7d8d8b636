"""GPT-2 as a SavedModel that runs without this project's code: TF Serving, or any TensorFlow
(`tf.saved_model.load(dir)`), runs its two signatures.

- `generate` (also `serving_default`): context int32 [batch, n] (right-padded),
  context_length int32 [batch], length, temperature, top_k (0: none), top_p (1: none), seed
  -> tokens int32 [batch, length], the new tokens of each row. Row i is sample i of the seed:
  the tokens `fast.Sampler` gives for that prompt alone, with those filters.
- `score`: tokens int32 [batch, n] (right-padded), lengths int32 [batch] -> logprobs float32
  [batch, n - 1], each token's natural-log probability given the ones before it (0 past a row's
  length).

The signatures are plain TensorFlow by default, so that any server runs them, a GPU's too; the
decode loop is one `tf.while_loop`, which `export(..., xla=True)` has XLA compile (see there).
Bad requests end in an InvalidArgumentError naming the input.
"""
import os

import numpy as np
import tensorflow as tf

import fast
import model
import paths
import sample
import scoring
from checks import MAX_SEED

WARMUP = os.path.join("assets.extra", "tf_serving_warmup_requests")

GENERATE_SIGNATURE = [
    tf.TensorSpec([None, None], tf.int32, name="context"),
    tf.TensorSpec([None], tf.int32, name="context_length"),
    tf.TensorSpec([], tf.int32, name="length"),
    tf.TensorSpec([], tf.float32, name="temperature"),
    tf.TensorSpec([], tf.int32, name="top_k"),
    tf.TensorSpec([], tf.float32, name="top_p"),
    tf.TensorSpec([], tf.int64, name="seed"),
]
SCORE_SIGNATURE = [tf.TensorSpec([None, None], tf.int32, name="tokens"),
                   tf.TensorSpec([None], tf.int32, name="lengths")]


# --- Checking a request ---------------------------------------------------------------------

def require(condition, message, received):
    """An assertion op: InvalidArgumentError 'message' with the value received, unless condition."""
    return tf.debugging.Assert(condition, [message + ". Received:", received], summarize=8)


def check_rows(hparams, tokens, lengths, tokens_name, lengths_name):
    """Assertions that tokens [batch, n] has a row or more, that lengths [batch] gives, for each
    row, a length from 1 to n, and that the tokens within it are ids of the vocabulary."""
    n = tf.shape(tokens)[1]
    shapes = [require(tf.shape(tokens)[0] >= 1, f"{tokens_name} must have a row or more", tf.shape(tokens)),
              require(tf.equal(tf.size(lengths), tf.shape(tokens)[0]),
                      f"{lengths_name} must have one entry for each row of {tokens_name}", tf.shape(lengths))]
    with tf.control_dependencies(shapes):
        checks = [require(tf.reduce_all((lengths >= 1) & (lengths <= n)),
                          f"{lengths_name} must be from 1 to the width of {tokens_name}", lengths)]
    with tf.control_dependencies(checks):
        inside = tf.range(n)[None] < lengths[:, None]  # [batch, n]
        bad = inside & ((tokens < 0) | (tokens >= hparams.n_vocab))
        checks.append(require(~tf.reduce_any(bad), f"{tokens_name} must hold ids from 0 to {hparams.n_vocab - 1}",
                              tf.boolean_mask(tokens, bad)))
    return checks


def check_generate(hparams, context, context_length, length, temperature, top_k, top_p, seed):
    """The assertions of a `generate` request, as `sample.check_sampling` checks arguments."""
    checks = check_rows(hparams, context, context_length, "context", "context_length")
    with tf.control_dependencies(checks):
        longest = tf.reduce_max(context_length)
        checks += [
            require(length >= 1, "length must be a positive integer", length),
            require(tf.cast(longest, tf.int64) + tf.cast(length, tf.int64) - 1 <= hparams.n_ctx,  # no int32 wrap
                    f"length must be at most {hparams.n_ctx + 1} less the longest context_length: the model's "
                    f"window is {hparams.n_ctx} tokens (length, context_length)", tf.stack([length, longest])),
            require(temperature >= sample.SMALLEST_TEMPERATURE,
                    "temperature must be greater than 0: at least 1.2e-38, float32's smallest normal number; for "
                    "greedy decoding (the most likely token each time) use top_k 1",
                    temperature),
            require((top_k >= 0) & (top_k <= hparams.n_vocab),
                    f"top_k must be from 0 (no top-k filter) to the vocabulary size {hparams.n_vocab}", top_k),
            require((top_p > 0) & (top_p <= 1), "top_p must be in (0, 1] (1: no nucleus filter)", top_p),
            require((seed >= 0) & (seed <= MAX_SEED), "seed must be an integer from 0 to 2**63 - 1", seed),
        ]
    return checks


# --- The computations -------------------------------------------------------------------------

def generate_tokens(params, hparams, context, lengths, length, temperature, top_k, top_p, seed, xla=False):
    """context [batch, n] right-padded, lengths [batch] -> [batch, length]: row r's new tokens,
    sample r of `seed`, as the prompt context[r, :lengths[r]] alone gives them.

    The prompts' common prefix is fed at once, then one position a step for every row: a row
    still inside its prompt takes its next prompt token rather than the one drawn. So each row
    sees the positions, and draws the random numbers, of its prompt alone (see sample.py).
    With xla the decode loop is compiled by XLA, once for each batch size and cache size.
    """
    batch = tf.shape(context)[0]
    shortest, total = tf.reduce_min(lengths), tf.reduce_max(lengths) + length
    size = fast.cache_size(total, hparams.n_ctx)  # >= total: a few shapes for XLA
    tokens = tf.pad(context[:, :total - length], [[0, 0], [0, size - total + length]])  # [batch, size]
    tokens = tf.where(tf.range(size)[None] < lengths[:, None], tokens, 0)  # padding need not be ids
    cache = fast.empty_cache(hparams, batch, size, params["wte"].dtype)
    _, cache = fast.decode(params, hparams, tokens[:, :shortest - 1], cache, 0)
    keys = tf.stack([tf.fill([batch], seed), tf.range(batch, dtype=tf.int64)], 1)  # sample.sample_keys(seed, 0, batch)

    def decode_loop(params, wte_t, tokens, cache, start, end, keys, temperature, top_k, top_p, lengths):
        """Feeds positions start..end - 1 of tokens [batch, size], filling start + 1..end.
        wte_t: `fast.transposed_wte`, an input so that XLA does not fold it back."""
        rows = tf.range(tf.shape(tokens)[0])

        def body(p, tokens, cache):  # feeds position p, fills position p + 1
            # tf.gather, not tokens[:, p:p + 1]: XLA (TF 2.20) reads a slice with a traced start wrongly.
            h, cache = fast.decode(params, hparams, tf.gather(tokens, [p], axis=1), cache, p)
            drawn = fast.next_token(fast.last_logits(params, h, wte_t), keys, p + 1, temperature, top_k, top_p, xla)
            token = tf.where(p + 1 < lengths, tf.gather(tokens, p + 1, axis=1), drawn)
            return p + 1, tf.tensor_scatter_nd_update(tokens, tf.stack([rows, tf.fill(tf.shape(rows), p + 1)], 1),
                                                      token), cache

        return tf.while_loop(lambda p, tokens, cache: p < end, body, [start, tokens, cache])[1]

    if xla:
        decode_loop = tf.function(decode_loop, jit_compile=True, autograph=False)
    tokens = decode_loop(params, fast.transposed_wte(params), tokens, cache, shortest - 1, total - 1, keys, temperature,
                         top_k, top_p, lengths)
    new = tf.gather(tokens, lengths[:, None] + tf.range(length)[None], batch_dims=1)  # [batch, length]
    drawn = require(tf.reduce_all(new < hparams.n_vocab), fast.NAN_LOGITS, tf.reduce_max(new))  # ids, not NaN's
    with tf.control_dependencies([drawn]):
        return tf.identity(new)


def token_logprobs(params, hparams, tokens, lengths):
    """tokens [batch, n] right-padded, lengths [batch] -> [batch, n - 1] float32: the natural-log
    probability of tokens[:, 1:], each given the ones before it; 0 past a row's length."""
    n = tf.shape(tokens)[1]
    inside = tf.range(n)[None] < lengths[:, None]  # [batch, n]
    tokens = tf.where(inside, tokens, 0)  # padding need not be ids; causal attention never sees it
    logits = model.model(params, hparams, tokens)["logits"][:, :-1]  # [batch, n - 1, n_vocab]
    logp = tf.gather(tf.nn.log_softmax(logits), tokens[:, 1:, None], batch_dims=2)[..., 0]  # [batch, n - 1]
    return tf.where(inside[:, 1:], logp, 0.0)


class Servable(tf.Module):
    """The weights, as variables, and the two signatures' functions; with xla, `generate`'s
    decode loop is compiled by XLA (see `export`)."""

    def __init__(self, params, hparams, xla=False):
        super().__init__()
        self._xla = xla
        self.params = tf.nest.map_structure(lambda w: tf.Variable(w, trainable=False), params)
        fast.check_weights_can_change(self.params)  # variables: see there
        self._hparams = hparams
        self.generate = tf.function(self._generate, input_signature=GENERATE_SIGNATURE, autograph=False)
        self.score = tf.function(self._score, input_signature=SCORE_SIGNATURE, autograph=False)

    def _weights(self):
        """The weights' values, read once, before the decode loop: variables read in the loop, at
        every step, slow it down (bench_serving.py --weights_in_loop)."""
        return tf.nest.map_structure(tf.convert_to_tensor, self.params)

    def _generate(self, *inputs):  # GENERATE_SIGNATURE's: context, context_length, length, ..., seed
        inputs = checked(check_generate(self._hparams, *inputs), inputs)
        return {"tokens": generate_tokens(self._weights(), self._hparams, *inputs, self._xla)}

    def _score(self, tokens, lengths):
        checks = check_rows(self._hparams, tokens, lengths, "tokens", "lengths")
        checks.append(require(tf.shape(tokens)[1] <= self._hparams.n_ctx,
                              f"tokens must be at most the model's window of {self._hparams.n_ctx} wide",
                              tf.shape(tokens)))
        return {"logprobs": token_logprobs(self._weights(), self._hparams, *checked(checks, (tokens, lengths)))}


def checked(checks, inputs):
    """The inputs, as values that exist only once the assertions `checks` have passed: nothing
    computed from them runs on a bad request (tf.range(length) of a length of 2**31 - 1, say)."""
    with tf.control_dependencies(checks):
        return [tf.identity(value) for value in inputs]


# --- Writing the export -------------------------------------------------------------------------

def warmup_requests(n_vocab):
    """(signature name, inputs) of the requests TF Serving runs once before serving: from GPT-2's
    <|endoftext|>, 50256, or the last id of a model with a smaller vocabulary of its own."""
    token = min(scoring.END_OF_TEXT, n_vocab - 1)
    generate = dict(context=np.array([[token]], np.int32), context_length=np.array([1], np.int32),
                    length=np.int32(2), temperature=np.float32(1), top_k=np.int32(40), top_p=np.float32(1),
                    seed=np.int64(0))
    score = dict(tokens=np.array([[token, token]], np.int32), lengths=np.array([2], np.int32))
    return [("generate", generate), ("score", score)]


def write_warmup(export_dir, n_vocab, model_name="gpt2"):
    """Writes assets.extra/tf_serving_warmup_requests; False, writing nothing, when the
    tensorflow-serving-api package (which has the request's format) is not installed."""
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:
        return False
    os.makedirs(os.path.join(export_dir, os.path.dirname(WARMUP)), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(export_dir, WARMUP)) as writer:
        for name, inputs in warmup_requests(n_vocab):
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name))
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return True


def export(params, hparams, export_dir, xla=False):
    """Writes the SavedModel to export_dir, which must not exist: into a temporary folder beside
    it, renamed when complete, so that no server ever sees half an export. Returns whether the
    TF Serving warmup file was written (see `write_warmup`).

    xla compiles `generate`'s decode loop with XLA: faster on a CPU at small batches
    (bench_serving.py --xla), but TF Serving then needs --xla_cpu_compilation_enabled=true on a
    CPU, and compiles the loop at the first request of each batch size and cache size."""
    with paths.new_folder(export_dir, fix="remove it, or export to a new version folder") as temporary:
        servable = Servable(params, hparams, xla)
        signatures = {"serving_default": servable.generate, "generate": servable.generate, "score": servable.score}
        tf.saved_model.save(servable, temporary, signatures=signatures)
        warmup = write_warmup(temporary, hparams.n_vocab)
    return warmup
