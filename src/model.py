"""GPT-2's transformer in TensorFlow 2, reading OpenAI's checkpoints unchanged.

The model is a set of pure functions of `(params, hparams, tokens, past)`. `params` is a nested
dict keyed exactly like the checkpoint: `model/h3/attn/c_attn/w` is `params["h"][3]["attn"]
["c_attn"]["w"]`, and conv1d weights are kept as `[nx, nf]` matrices (the checkpoint's
`[1, nx, nf]` without its leading 1).

Two forward passes share every piece of math:
- `model()`: the original's, with the `past`/`present` cache in the original layout
  `[batch, n_layer, 2, n_head, seq, head_dim]` grown by concatenation. Plain and easy to check;
  `compile_model()` wraps it in a `tf.function` traced once for every batch and length.
- `decode()`: the fast path used for sampling, writing into a preallocated cache at a position.
"""
import dataclasses
import json
import os
import re

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class HParams:
    """The shape of a GPT-2 model, as `hparams.json` gives it."""
    n_vocab: int = 0     # tokens in the vocabulary (50257 for every released model)
    n_ctx: int = 1024    # the window: how many positions the model can attend over
    n_embd: int = 768    # width of the residual stream
    n_head: int = 12     # attention heads; each is n_embd // n_head wide
    n_layer: int = 12    # transformer blocks

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            least = 0 if field.name == "n_vocab" else 1  # the original's defaults have no vocabulary yet
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"hparams: {field.name} must be an integer >= {least}. Received: {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"hparams: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    def override_from_dict(self, values):
        """Returns new HParams with `values` replacing these; unknown keys are rejected.

        HParams are immutable, so use the result: `hparams = hparams.override_from_dict(d)`.
        """
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"hparams: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}")
        return dataclasses.replace(self, **values)

    def override_from_json(self, text):
        """Like `override_from_dict`, from the text of an `hparams.json`."""
        return self.override_from_dict(json.loads(text))


def default_hparams():
    """The original's defaults (124M's shape, no vocabulary yet)."""
    return HParams()


# --- Loading OpenAI's files -----------------------------------------------------------------

def model_dir(model_name, models_dir="models"):
    """The folder of a downloaded model, or a FileNotFoundError saying how to download it."""
    path = os.path.join(models_dir, model_name)
    if not os.path.isfile(os.path.join(path, "hparams.json")):
        flag = "" if os.path.normpath(models_dir) == "models" else f" --models_dir {models_dir}"
        raise FileNotFoundError(f"model {model_name!r} not found in {models_dir}/: "
                                f"download it with `python3 download_model.py {model_name}{flag}`")
    return path


def load_hparams(path):
    """Reads `hparams.json` from a model folder."""
    filename = os.path.join(path, "hparams.json")
    try:
        with open(filename, encoding="utf-8") as f:
            return default_hparams().override_from_json(f.read())
    except json.JSONDecodeError as e:
        raise ValueError(f"{filename} is not valid JSON ({e}); download the model again") from None
    except TypeError as e:
        raise ValueError(f"{filename} does not hold hparams ({e})") from None


def checkpoint_shapes(hparams):
    """Every variable of an OpenAI checkpoint, by name, with its shape."""
    e, s = hparams.n_embd, {}
    s["model/wte"] = [hparams.n_vocab, e]
    s["model/wpe"] = [hparams.n_ctx, e]
    for i in range(hparams.n_layer):
        for name, shape in [("ln_1/g", [e]), ("ln_1/b", [e]),
                            ("attn/c_attn/w", [1, e, 3 * e]), ("attn/c_attn/b", [3 * e]),
                            ("attn/c_proj/w", [1, e, e]), ("attn/c_proj/b", [e]),
                            ("ln_2/g", [e]), ("ln_2/b", [e]),
                            ("mlp/c_fc/w", [1, e, 4 * e]), ("mlp/c_fc/b", [4 * e]),
                            ("mlp/c_proj/w", [1, 4 * e, e]), ("mlp/c_proj/b", [e])]:
            s[f"model/h{i}/{name}"] = shape
    s["model/ln_f/g"] = [e]
    s["model/ln_f/b"] = [e]
    return s


def find_checkpoint(path):
    """The checkpoint prefix named by the folder's `checkpoint` file (e.g. `DIR/model.ckpt`)."""
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
        raise FileNotFoundError(f"no checkpoint in {path}: it needs the files `checkpoint`, "
                                "`model.ckpt.index` and `model.ckpt.data-*`; download the model again")
    return prefix


def check_checkpoint(found, hparams):
    """Raises a ValueError naming every missing, unexpected or misshaped variable."""
    expected = checkpoint_shapes(hparams)
    problems = [f"missing {name} {shape}" for name, shape in expected.items() if name not in found]
    problems += [f"unexpected {name} {found[name]}" for name in found if name not in expected]
    problems += [f"{name} has shape {found[name]}, expected {shape}"
                 for name, shape in expected.items() if name in found and list(found[name]) != shape]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"checkpoint does not match hparams.json: {shown}")


def load_params(prefix, hparams, dtype=tf.float32):
    """Reads every variable of the checkpoint at `prefix` into a nested dict of `dtype` tensors;
    the norms' gains and biases stay float32, the dtype `norm` computes in."""
    names = list(checkpoint_shapes(hparams))
    try:
        check_checkpoint(tf.train.load_checkpoint(prefix).get_variable_to_shape_map(), hparams)
        # One op reads them all, straight into tensors: several times faster than via NumPy.
        values = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                                      dtypes=[tf.float32] * len(names))
    except tf.errors.OpError as e:
        reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", e.message)  # TensorFlow's decorations
        raise ValueError(f"cannot read checkpoint {prefix} ({reason}): download the model again") from None
    params = {"h": [{} for _ in range(hparams.n_layer)]}
    for name, value in zip(names, values):
        if value.shape.rank == 3:  # conv1d weights [1, nx, nf] -> [nx, nf]
            value = value[0]
        layer = re.match(r"model/h(\d+)/", name)
        node = params["h"][int(layer.group(1))] if layer else params
        *scopes, leaf = name.split("/")[2 if layer else 1:]
        for scope in scopes:
            node = node.setdefault(scope, {})
        norm_param = bool(scopes) and scopes[-1].startswith("ln_")
        node[leaf] = tf.cast(value, tf.float32 if norm_param else dtype)
    return params


# --- The math (the original's, function for function) ---------------------------------------

def gelu(x):
    """GELU with the tanh approximation GPT-2 was trained with: TensorFlow's is the original's
    formula, 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x ** 3))), and one that oneDNN
    fuses into the matmul before it (see `conv1d`)."""
    return tf.nn.gelu(x, approximate=True)


def norm(x, p, epsilon=1e-5):
    """LayerNorm over the last axis, statistics in float32."""
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    u = tf.reduce_mean(x, axis=-1, keepdims=True)
    s = tf.reduce_mean(tf.square(x - u), axis=-1, keepdims=True)
    x = (x - u) * tf.math.rsqrt(s + epsilon)
    return tf.cast(x * tf.cast(p["g"], tf.float32) + tf.cast(p["b"], tf.float32), dtype)


def conv1d(x, p, activation=None):
    """The original's 1x1 convolution, a matmul: [batch, seq, nx] -> [batch, seq, nf].

    The activation, if any, is applied before the reshape back, where oneDNN can fuse it and
    the bias into the matmul (MatMul, BiasAdd, then GELU: one kernel, one pass over the output).
    """
    *start, nx = tf.unstack(tf.shape(x))
    nf = p["w"].shape[-1]
    y = tf.nn.bias_add(tf.matmul(tf.reshape(x, [-1, nx]), p["w"]), p["b"])  # [batch * seq, nf]
    if activation is not None:
        y = activation(y)
    return tf.reshape(y, start + [nf])


def split_heads(x, n_head):
    """[batch, seq, n_embd] -> [batch, heads, seq, head_dim]"""
    batch, seq = tf.shape(x)[0], tf.shape(x)[1]
    x = tf.reshape(x, [batch, seq, n_head, x.shape[-1] // n_head])
    return tf.transpose(x, [0, 2, 1, 3])


def merge_heads(x):
    """[batch, heads, seq, head_dim] -> [batch, seq, n_embd]"""
    batch, seq = tf.shape(x)[0], tf.shape(x)[2]
    x = tf.transpose(x, [0, 2, 1, 3])  # [batch, seq, heads, head_dim]
    return tf.reshape(x, [batch, seq, x.shape[-2] * x.shape[-1]])


def causal_mask(query_positions, key_positions):
    """[nd] and [ns] absolute positions -> [nd, ns], True where a query may see a key."""
    return query_positions[:, None] >= key_positions[None, :]


def softmax(w):
    """Softmax of attention scores [batch, heads, nd, ns] over the keys.

    For one query (a sampling step) the original's own: oneDNN's, which tf.nn.softmax runs,
    costs ~50 µs a call at those tiny shapes. For many (a prompt) oneDNN's one pass is faster.
    """
    if w.shape[-2] != 1:
        return tf.nn.softmax(w, axis=-1)
    w = w - tf.reduce_max(w, axis=-1, keepdims=True)
    ew = tf.exp(w)
    return ew / tf.reduce_sum(ew, axis=-1, keepdims=True)


def attention_matmul(a, b, transpose_b=False):
    """a @ b over [batch, heads] as float32, for attention: in b's dtype, or in float32 for one query.

    One query (a sampling step) goes to Eigen's float32 BatchMatMulV3: oneDNN's BatchMatMulV2
    costs ~50 µs a call whatever the work, 1.4-3 times Eigen's at 128 to 1024 keys. With many
    queries (a prompt) oneDNN is up to twice as fast, and stays.
    """
    if a.shape[-2] == 1:
        return tf.raw_ops.BatchMatMulV3(x=tf.cast(a, tf.float32), y=tf.cast(b, tf.float32), adj_y=transpose_b,
                                        Tout=tf.float32)
    return tf.cast(tf.matmul(tf.cast(a, b.dtype), b, transpose_b=transpose_b), tf.float32)


def multihead_attn(q, k, v, mask):
    """Attention of q [batch, heads, nd, head_dim] over k, v [batch, heads, ns, head_dim] -> q's shape and dtype.

    mask [nd, ns] is True where a query may attend. Scores and softmax are float32 whatever
    the weights' dtype, and masked scores are set to -1e9 rather than the original's
    w * b - 1e10 * (1 - b): the same result, with no overflow in float16.
    """
    w = attention_matmul(q, k, transpose_b=True) * tf.math.rsqrt(float(v.shape[-1]))  # [batch, heads, nd, ns]
    w = softmax(tf.where(mask, w, -1e9))
    return tf.cast(attention_matmul(w, v), q.dtype)


def qkv(x, p, n_head):
    """[batch, seq, n_embd] -> q, k, v, each [batch, heads, seq, head_dim]"""
    c = conv1d(x, p["c_attn"])  # [batch, seq, 3 * n_embd]
    return [split_heads(t, n_head) for t in tf.split(c, 3, axis=2)]


def mlp(x, p):
    """[batch, seq, n_embd] -> [batch, seq, n_embd]"""
    return conv1d(conv1d(x, p["c_fc"], activation=gelu), p["c_proj"])


def embed(params, tokens, positions):
    """tokens [batch, seq] at positions [seq] -> [batch, seq, n_embd]"""
    return tf.gather(params["wte"], tokens) + tf.gather(params["wpe"], positions)[None]


def unembed(params, h, zeros=None):
    """h [batch, seq, n_embd] -> float32 logits [batch, seq, n_vocab], through the tied wte.

    `zeros` [n_vocab], a bias that changes no logit, is for oneDNN: it fuses only a matmul with
    a bias, and only a fused one can keep wte in its own layout between calls (see `Sampler`).
    """
    h = norm(h, params["ln_f"])
    batch, seq = tf.shape(h)[0], tf.shape(h)[1]
    logits = tf.matmul(tf.reshape(h, [batch * seq, -1]), params["wte"], transpose_b=True)
    if zeros is not None:
        logits = tf.nn.bias_add(logits, zeros)
    return tf.reshape(tf.cast(logits, tf.float32), [batch, seq, -1])


# --- The original forward pass, with a growing past ------------------------------------------

def block(x, p, past, positions, n_head):
    """x [batch, seq, n_embd], past [batch, 2, heads, past_len, head_dim] -> x, present."""
    q, k, v = qkv(norm(x, p["ln_1"]), p["attn"], n_head)
    present = tf.stack([k, v], axis=1)  # [batch, 2, heads, seq, head_dim]
    k = tf.concat([past[:, 0], k], axis=2)  # [batch, heads, past_len + seq, head_dim]
    v = tf.concat([past[:, 1], v], axis=2)
    return finish_block(x, p, q, k, v, causal_mask(positions, tf.range(tf.shape(k)[2]))), present


def finish_block(x, p, q, k, v, mask):
    """The rest of a block once its keys and values are known: attention, the projection, the
    MLP, and both residuals. x [batch, seq, n_embd] -> [batch, seq, n_embd]."""
    a = merge_heads(multihead_attn(q, k, v, mask))
    x = x + conv1d(a, p["attn"]["c_proj"])
    return x + mlp(norm(x, p["ln_2"]), p["mlp"])


def past_shape(hparams, batch_size=None, sequence=None):
    """The original's key/value cache layout: [batch, n_layer, 2, heads, seq, head_dim]."""
    return [batch_size, hparams.n_layer, 2, hparams.n_head, sequence, hparams.head_dim]


def empty_past(hparams, batch_size, dtype):
    """A past of no positions, for a first call of `model`; batch_size may be a tensor."""
    return tf.zeros([batch_size] + past_shape(hparams, sequence=0)[1:], dtype)


def transformer(params, hparams, X, past):
    """X [batch, seq] after past -> (hidden [batch, seq, n_embd], present)."""
    past_length = tf.shape(past)[4]
    positions = past_length + tf.range(tf.shape(X)[1])
    h = embed(params, X, positions)
    presents = []
    for i, p in enumerate(params["h"]):
        h, present = block(h, p, past[:, i], positions, hparams.n_head)
        presents.append(present)
    return h, tf.stack(presents, axis=1)


def model(params, hparams, X, past=None):
    """The original's forward pass: X [batch, seq] tokens following `past`.

    Returns {'logits': [batch, seq, n_vocab] float32,
             'present': [batch, n_layer, 2, heads, seq, head_dim]}, the keys and values of X,
    which the caller concatenates onto `past` (axis 4) for the next call.
    """
    if past is None:
        past = empty_past(hparams, tf.shape(X)[0], params["wte"].dtype)
    h, present = transformer(params, hparams, X, past)
    return {"logits": unembed(params, h), "present": present}


def compile_model(params, hparams, logits=True):
    """`model` as a tf.function traced once: forward(X [batch, seq] int32, past) -> dict.
    Without `logits`, only 'present' (for filling a cache, at a third less work)."""
    dtype = params["wte"].dtype
    signature = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec(past_shape(hparams), dtype)]
    if logits:
        return tf.function(lambda X, past: model(params, hparams, X, past), input_signature=signature)
    return tf.function(lambda X, past: {"present": transformer(params, hparams, X, past)[1]}, input_signature=signature)


# --- The fast path: a preallocated cache written at a position -------------------------------

def empty_cache(hparams, batch_size, size):
    """A key/value cache for `size` positions: one [2, batch, heads, size, head_dim] per layer,
    keys then values (leading, so that either is a slice TensorFlow need not copy).

    float32 whatever the weights' dtype: a sampling step's attention is float32 (see
    `attention_matmul`), and casting a half-precision cache there would cost more than reading it.
    """
    return [tf.zeros([2, batch_size, hparams.n_head, size, hparams.head_dim]) for _ in range(hparams.n_layer)]


def cache_rows(cache, positions):
    """[2 * batch * heads * seq]: the rows that positions [seq] take in a layer's cache seen as
    rows of head_dim, [2 * batch * heads * size, head_dim]; the same in every layer."""
    size = tf.shape(cache)[3]
    blocks = tf.size(cache) // (size * cache.shape[-1])  # 2 * batch * heads
    return tf.reshape(tf.range(blocks)[:, None] * size + positions[None], [-1])


def write_cache(cache, rows, k, v, overwrite=False):
    """cache [2, batch, heads, size, head_dim] with k, v [batch, heads, seq, head_dim] at `rows`.

    A scatter makes a new cache: XLA does it in place, TensorFlow copies the whole cache. With
    `overwrite`, InplaceUpdate writes the rows into the given cache's own memory, which it
    aliases; only for a caller that owns the cache, outside XLA (which has no InplaceUpdate).
    """
    rows_shape = [-1, cache.shape[-1]]
    flat = tf.reshape(cache, rows_shape)  # [2 * batch * heads * size, head_dim], the same memory
    values = tf.reshape(tf.cast(tf.stack([k, v]), cache.dtype), rows_shape)  # [2 * batch * heads * seq, head_dim]
    if overwrite:
        written = tf.raw_ops.InplaceUpdate(x=flat, i=rows, v=values)
    else:
        written = tf.tensor_scatter_nd_update(flat, rows[:, None], values)
    return tf.reshape(written, tf.shape(cache))


def cached_block(x, p, cache, rows, mask, n_head, overwrite=False):
    """Like `block`, writing this step's keys and values into `cache` (see `write_cache`).

    x [batch, seq, n_embd], cache [2, batch, heads, size, head_dim] -> x, cache. Attention covers
    the whole cache: mask [seq, size] hides the positions not yet written.
    """
    q, k, v = qkv(norm(x, p["ln_1"]), p["attn"], n_head)
    cache = write_cache(cache, rows, k, v, overwrite)
    return finish_block(x, p, q, cache[0], cache[1], mask), cache


def decode(params, hparams, X, cache, start, overwrite=False):
    """X [batch, seq] at positions start.. -> (hidden [batch, seq, n_embd], updated cache).

    `overwrite`: write into the given cache tensors (see `write_cache`) rather than new ones.
    """
    positions = start + tf.range(tf.shape(X)[1])
    h = embed(params, X, positions)
    rows = cache_rows(cache[0], positions)
    mask = causal_mask(positions, tf.range(tf.shape(cache[0])[3]))  # [seq, size]
    new_cache = []
    for p, layer_cache in zip(params["h"], cache):
        h, layer_cache = cached_block(h, p, layer_cache, rows, mask, hparams.n_head, overwrite)
        new_cache.append(layer_cache)
    return h, new_cache
