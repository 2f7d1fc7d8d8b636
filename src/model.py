"""GPT-2's transformer in TensorFlow 2: the reference, reading OpenAI's checkpoints unchanged.

The model is a set of pure functions of `(params, hparams, tokens, past)`, function for
function the original's `src/model.py`. `params` is a nested dict keyed exactly like the
checkpoint: `model/h3/attn/c_attn/w` is `params["h"][3]["attn"]["c_attn"]["w"]`, and conv1d
weights are kept as `[nx, nf]` matrices (the checkpoint's `[1, nx, nf]` without its leading 1).

`model()` is the original's forward pass, with its `past`/`present` key/value cache
`[batch, n_layer, 2, n_head, seq, head_dim]`. This file is for reading and for checking: the
fast path that sampling uses (a preallocated cache, compiled decoding, device choices) is
`fast.py`, which the tests hold to this file.
"""
import dataclasses
import json
import logging
import math
import os
import re

import tensorflow as tf

from paths import how_to_get


@dataclasses.dataclass
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
        """Sets the hparams named in `values` and returns self, as the original's HParams did:
        `hparams.override_from_dict(json.load(f))` changes `hparams`. Unknown keys and bad
        values are rejected, and then nothing is changed."""
        if not isinstance(values, dict):
            raise ValueError(f"hparams must be a JSON object of named integers. Received: {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"hparams: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}")
        checked = dataclasses.replace(self, **values)  # validates the result before anything changes
        for name in values:
            setattr(self, name, getattr(checked, name))
        return self

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
    hparams = os.path.join(path, "hparams.json")
    for unreadable in (path, hparams):
        if os.path.exists(unreadable) and not os.access(unreadable, os.R_OK | (os.X_OK * os.path.isdir(unreadable))):
            raise PermissionError(f"{unreadable} is unreadable (permission denied); let this user read it, "
                                  f"e.g. `chmod -R u+rX {path}`")
    if os.path.isdir(path) and not os.path.isfile(hparams):
        raise FileNotFoundError(f"{path} has no hparams.json, which every model folder holds: "
                                f"{how_to_get(model_name, models_dir)}")
    if not os.path.isfile(hparams):
        raise FileNotFoundError(f"model {model_name!r} not found in {models_dir}/: "
                                f"{how_to_get(model_name, models_dir)}")
    return path


def load_hparams(path):
    """Reads `hparams.json` from a model folder."""
    filename = os.path.join(path, "hparams.json")
    try:
        with open(filename, encoding="utf-8") as f:
            values = json.loads(f.read(1 << 16))  # a real one is ~100 bytes
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested or a number too big to read
        reason = "nested too deeply" if isinstance(e, RecursionError) else e
        raise ValueError(f"{filename} is not valid JSON ({reason}); download the model again") from None
    try:
        return default_hparams().override_from_dict(values)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{filename} does not hold GPT-2's hparams ({e}); download the model again") from None


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
    """The checkpoint prefix named by the folder's `checkpoint` file (e.g. `DIR/model.ckpt`).
    `tf.train.latest_checkpoint`'s, looked up without the ERROR line it logs when the files are
    missing, before this error says so."""
    state = checkpoint_state(path)
    prefix = state.model_checkpoint_path if state else None  # made absolute from the folder
    if prefix is None:
        raise FileNotFoundError(f"no checkpoint in {path}: it needs the files `checkpoint`, "
                                "`model.ckpt.index` and `model.ckpt.data-*`; download the model again")
    if not tf.io.gfile.exists(prefix + ".index"):
        raise FileNotFoundError(f"no checkpoint in {path}: its `checkpoint` file names {prefix}, which has no "
                                f"{os.path.basename(prefix)}.index; download the model again, or in a train.py run "
                                "folder make `checkpoint` name a save the folder holds")
    return prefix


def checkpoint_state(path):
    """`tf.train.get_checkpoint_state(path)`: the folder's `checkpoint` file read, its paths made
    absolute from the folder; None where it is missing or TensorFlow cannot read it, without
    the warnings TensorFlow logs then (the callers say what is wrong)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return tf.train.get_checkpoint_state(path)
    except ValueError:  # a file without model_checkpoint_path
        return None
    finally:
        logger.setLevel(level)


def check_checkpoint(found, hparams):
    """Raises a ValueError naming every missing, unexpected or misshaped variable."""
    layers = {int(m.group(1)) for m in map(re.compile(r"model/h(\d+)/").match, found) if m}
    if hparams.n_layer != len(layers):  # before listing n_layer layers, which hparams.json may make huge
        raise ValueError(f"checkpoint does not match hparams.json: n_layer is {hparams.n_layer}, "
                         f"the checkpoint has {len(layers)} layers")
    expected = checkpoint_shapes(hparams)
    problems = [f"missing {name} {shape}" for name, shape in expected.items() if name not in found]
    problems += [f"unexpected {name} {found[name]}" for name in found if name not in expected]
    problems += [f"{name} has shape {found[name]}, expected {shape}"
                 for name, shape in expected.items() if name in found and list(found[name]) != shape]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"checkpoint does not match hparams.json: {shown}")


class UnreadableCheckpoint(ValueError):
    """A checkpoint TensorFlow could not read, in one line; `reason` is TensorFlow's, for callers
    with other advice than the download (a run's own saves, run.py)."""

    def __init__(self, prefix, reason):
        super().__init__(f"cannot read checkpoint {prefix} ({reason}): download the model again")
        self.reason = reason


def checkpoint_error(prefix, error):
    """An `UnreadableCheckpoint` for a checkpoint TensorFlow could not read."""
    return UnreadableCheckpoint(prefix, error_reason(error))


def error_reason(error):
    """TensorFlow's error message, its first line without TensorFlow's decorations."""
    message = getattr(error, "message", None) or str(error)
    reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", message).strip()
    return reason.splitlines()[0] if reason else "unreadable"


def load_params(prefix, hparams, dtype=tf.float32):
    """Reads every variable of the checkpoint at `prefix`, checked against `hparams`, into a
    nested dict of `dtype` tensors (see `nest_params`)."""
    return nest_params(read_checkpoint(prefix, hparams), hparams, dtype)


def read_checkpoint(prefix, hparams):
    """{checkpoint name: array in the checkpoint's shape} of the checkpoint at `prefix`,
    checked against `hparams`."""
    reader = checkpoint_reader(prefix, hparams)
    try:
        return {name: reader.get_tensor(name) for name in checkpoint_shapes(hparams)}
    except (tf.errors.OpError, IndexError, ValueError) as e:  # the reader's translations of TensorFlow's errors
        raise checkpoint_error(prefix, e) from None


def checkpoint_reader(prefix, hparams):
    """A `tf.train.load_checkpoint` reader, after checking the checkpoint's names and shapes."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        found = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, IndexError, ValueError) as e:
        raise checkpoint_error(prefix, e) from None
    check_checkpoint(found, hparams)
    return reader


def nest_params(values, hparams, dtype=tf.float32):
    """{checkpoint name: array} -> params, keyed like the checkpoint, in `dtype`. The norms'
    gains and biases stay float32, the precision `norm` computes in."""
    params = {"h": [{} for _ in range(hparams.n_layer)]}
    for name, value in values.items():
        layer = re.match(r"model/h(\d+)/", name)
        node = params["h"][int(layer.group(1))] if layer else params
        *scopes, leaf = name.split("/")[2 if layer else 1:]
        for scope in scopes:
            node = node.setdefault(scope, {})
        if len(value.shape) == 3:  # conv1d weights [1, nx, nf] -> [nx, nf]
            value = tf.reshape(value, value.shape[1:])
        node[leaf] = value
    return cast_params(params, dtype)


def cast_params(params, dtype):
    """params with every weight in `dtype`, but the norms' gains and biases, which stay float32,
    the precision `norm` computes in."""
    if isinstance(params, list):
        return [cast_params(p, dtype) for p in params]
    return {key: tf.nest.map_structure(lambda v: tf.cast(v, tf.float32), value) if key.startswith("ln_")
            else cast_params(value, dtype) if isinstance(value, (dict, list)) else tf.cast(value, dtype)
            for key, value in params.items()}


def checkpoint_values(params):
    """The inverse of `nest_params`: {checkpoint name: value in the checkpoint's shape}."""
    def walk(node, scope):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{scope}/{key}")
            else:  # conv1d weights [nx, nf] -> the checkpoint's [1, nx, nf]
                yield f"{scope}/{key}", value[None] if key == "w" else value
    values = dict(walk({key: value for key, value in params.items() if key != "h"}, "model"))
    for i, layer in enumerate(params["h"]):
        values.update(walk(layer, f"model/h{i}"))
    return values


# --- The math (the original's, function for function) ---------------------------------------

def gelu(x):
    """GELU with the tanh approximation GPT-2 was trained with."""
    return 0.5 * x * (1 + tf.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))


def norm(x, p, epsilon=1e-5):
    """LayerNorm over the last axis, in float32 whatever x's dtype: [..., n] -> [..., n]."""
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    u = tf.reduce_mean(x, axis=-1, keepdims=True)
    s = tf.reduce_mean(tf.square(x - u), axis=-1, keepdims=True)
    x = (x - u) * tf.math.rsqrt(s + epsilon)
    return tf.cast(x * tf.cast(p["g"], tf.float32) + tf.cast(p["b"], tf.float32), dtype)


def conv1d(x, p):
    """The original's 1x1 convolution, a matmul: [batch, seq, nx] -> [batch, seq, nf]."""
    *start, nx = tf.unstack(tf.shape(x))
    nf = p["w"].shape[-1]
    y = tf.matmul(tf.reshape(x, [-1, nx]), p["w"]) + p["b"]  # [batch * seq, nf]
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


def attention_mask(nd, ns):
    """[nd, ns], True where query i (the last nd of ns positions) may see key j: j <= i + ns - nd."""
    i = tf.range(nd)[:, None]
    j = tf.range(ns)
    return i >= j - ns + nd


def multihead_attn(q, k, v):
    """Causal attention of q [batch, heads, nd, head_dim] over k, v [batch, heads, ns, head_dim]
    -> [batch, heads, nd, head_dim], the queries being the last nd of the ns positions.

    Scores and softmax are float32 whatever the weights' dtype. Masked scores are set to -1e9
    rather than the original's w * b - 1e10 * (1 - b): the same result, with no overflow in float16.
    """
    w = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32)  # [batch, heads, nd, ns]
    w = w * tf.math.rsqrt(float(v.shape[-1]))
    w = tf.where(attention_mask(tf.shape(w)[2], tf.shape(w)[3]), w, -1e9)
    w = tf.nn.softmax(w, axis=-1)
    return tf.matmul(tf.cast(w, v.dtype), v)


def attn(x, p, past, n_head):
    """x [batch, seq, n_embd], past [batch, 2, heads, past_len, head_dim] or None
    -> (a [batch, seq, n_embd], present [batch, 2, heads, seq, head_dim])."""
    c = conv1d(x, p["c_attn"])  # [batch, seq, 3 * n_embd]
    q, k, v = [split_heads(t, n_head) for t in tf.split(c, 3, axis=2)]
    present = tf.stack([k, v], axis=1)
    if past is not None:
        pk, pv = tf.unstack(past, axis=1)
        k = tf.concat([pk, k], axis=-2)  # [batch, heads, past_len + seq, head_dim]
        v = tf.concat([pv, v], axis=-2)
    a = merge_heads(multihead_attn(q, k, v))
    return conv1d(a, p["c_proj"]), present


def mlp(x, p):
    """[batch, seq, n_embd] -> [batch, seq, n_embd]"""
    return conv1d(gelu(conv1d(x, p["c_fc"])), p["c_proj"])


def block(x, p, past, n_head):
    """One transformer block: x [batch, seq, n_embd] -> (x, present)."""
    a, present = attn(norm(x, p["ln_1"]), p["attn"], past, n_head)
    x = x + a
    x = x + mlp(norm(x, p["ln_2"]), p["mlp"])
    return x, present


def past_shape(hparams, batch_size=None, sequence=None):
    """The key/value cache's layout: [batch, n_layer, 2, heads, seq, head_dim]."""
    return [batch_size, hparams.n_layer, 2, hparams.n_head, sequence, hparams.head_dim]


def model(params, hparams, X, past=None):
    """The original's forward pass: X [batch, seq] tokens following `past`.

    Returns {'logits': [batch, seq, n_vocab] float32,
             'present': [batch, n_layer, 2, heads, seq, head_dim]}, the keys and values of X,
    which the caller concatenates onto `past` (axis -2) for the next call.
    """
    h, present = hidden_states(params, hparams, X, past)
    return {"logits": unembed(params, h), "present": present}


def hidden_states(params, hparams, X, past=None):
    """`model` without the output layer: X [batch, seq] following `past` -> (h [batch, seq,
    n_embd], the final norm's output, whose `unembed` is the logits; present). For a caller
    that needs the logits of a few positions only (evaluate.py's targets)."""
    past_length = 0 if past is None else tf.shape(past)[-2]
    h = embed(params, X, past_length)
    pasts = tf.unstack(past, axis=1) if past is not None else [None] * hparams.n_layer
    presents = []
    for p, layer_past in zip(params["h"], pasts):
        h, present = block(h, p, layer_past, hparams.n_head)
        presents.append(present)
    return norm(h, params["ln_f"]), tf.stack(presents, axis=1)


def embed(params, X, past_length=0):
    """Tokens X [batch, seq] at positions past_length.. -> [batch, seq, n_embd]"""
    positions = past_length + tf.range(tf.shape(X)[1])  # [seq]
    return tf.gather(params["wte"], X) + tf.gather(params["wpe"], positions)


def unembed(params, h):
    """The logits of the final hidden states h [batch, seq, n_embd] -> [batch, seq, n_vocab]
    float32: the token embeddings are the output layer too."""
    batch, seq = tf.shape(h)[0], tf.shape(h)[1]
    logits = tf.matmul(tf.reshape(h, [batch * seq, -1]), params["wte"], transpose_b=True)  # [batch * seq, n_vocab]
    return tf.reshape(tf.cast(logits, tf.float32), [batch, seq, -1])


def empty_past(hparams, batch_size, dtype=tf.float32):
    """A past of no positions [batch, n_layer, 2, heads, 0, head_dim]: `model` with it equals
    `model` without one. batch_size may be a tensor."""
    return tf.zeros([batch_size] + past_shape(hparams, sequence=0)[1:], dtype)


def compile_model(params, hparams):
    """`model` as a tf.function traced once for every batch and length:
    forward(X [batch, seq] int32, past [batch, n_layer, 2, heads, past_len, head_dim]) -> dict."""
    signature = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec(past_shape(hparams), params["wte"].dtype)]
    return tf.function(lambda X, past: model(params, hparams, X, past), input_signature=signature)
