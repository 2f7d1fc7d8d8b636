"""An independent GPT-2 in NumPy (float64), read straight from an OpenAI checkpoint.

Written from the paper's and the original code's equations, sharing nothing with src/model.py,
so that the tests can hold the TensorFlow model against it.
"""
import json
import math
import os

import numpy as np
import tensorflow as tf


def load(model_dir):
    """(hparams dict, {checkpoint name: float64 array})"""
    with open(os.path.join(model_dir, "hparams.json")) as f:
        hparams = json.load(f)
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt"))
    weights = {name: reader.get_tensor(name).astype(np.float64)
               for name in reader.get_variable_to_shape_map()}
    return hparams, weights


def layer_norm(x, g, b):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * g + b


def gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def linear(x, w, b):
    return x @ w[0] + b  # w is the checkpoint's [1, nx, nf]


def attention(x, w, layer, n_head):
    """x [seq, n_embd] -> [seq, n_embd]: causal self-attention, one head at a time."""
    seq, n_embd = x.shape
    q, k, v = np.split(linear(x, w[layer + "attn/c_attn/w"], w[layer + "attn/c_attn/b"]), 3, axis=-1)
    d = n_embd // n_head
    heads = []
    for h in range(n_head):
        s = slice(h * d, (h + 1) * d)
        scores = q[:, s] @ k[:, s].T / math.sqrt(d)
        scores[np.triu(np.ones((seq, seq), bool), 1)] = -np.inf
        heads.append(softmax(scores) @ v[:, s])
    return linear(np.concatenate(heads, -1), w[layer + "attn/c_proj/w"], w[layer + "attn/c_proj/b"])


def logits(hparams, w, tokens):
    """tokens [seq] -> logits [seq, n_vocab] (float64)."""
    x = w["model/wte"][tokens] + w["model/wpe"][: len(tokens)]
    for i in range(hparams["n_layer"]):
        layer = f"model/h{i}/"
        x = x + attention(layer_norm(x, w[layer + "ln_1/g"], w[layer + "ln_1/b"]), w, layer, hparams["n_head"])
        h = layer_norm(x, w[layer + "ln_2/g"], w[layer + "ln_2/b"])
        h = gelu(linear(h, w[layer + "mlp/c_fc/w"], w[layer + "mlp/c_fc/b"]))
        x = x + linear(h, w[layer + "mlp/c_proj/w"], w[layer + "mlp/c_proj/b"])
    x = layer_norm(x, w["model/ln_f/g"], w["model/ln_f/b"])
    return x @ w["model/wte"].T


def logprobs(hparams, w, tokens):
    """Natural-log probability of tokens[1:], each given the ones before it."""
    z = logits(hparams, w, tokens)[:-1]
    z = z - z.max(-1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return lp[np.arange(len(tokens) - 1), tokens[1:]]
