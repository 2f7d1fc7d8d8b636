"""Writes GPT-2 checkpoints in OpenAI's exact format, with random weights, for benchmarks and tests.

A model folder gets `hparams.json`, `checkpoint`, `model.ckpt.{index,meta,data-00000-of-00001}`
written by TF1's name-based `tf.compat.v1.train.Saver` (the way OpenAI's were), and the real
`encoder.json` / `vocab.bpe` when a vocabulary folder is given.
"""
import json
import os
import shutil

import tensorflow as tf

import model

# The four released shapes.
OFFICIAL = {
    "124M": dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12),
    "355M": dict(n_vocab=50257, n_ctx=1024, n_embd=1024, n_head=16, n_layer=24),
    "774M": dict(n_vocab=50257, n_ctx=1024, n_embd=1280, n_head=20, n_layer=36),
    "1558M": dict(n_vocab=50257, n_ctx=1024, n_embd=1600, n_head=25, n_layer=48),
}
TINY = dict(n_vocab=50257, n_ctx=64, n_embd=32, n_head=4, n_layer=2)
# GPT-2's encoder.json and vocab.bpe where the bench scripts look when GPT2_VOCAB_DIR is unset.
SHARED_VOCAB_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "..", "..", "shared", "gpt2-vocab"))


def initial_value(name, shape, seed):
    """Random weights with a realistic spread: LayerNorm gains near 1, small biases."""
    if name.endswith("/g"):
        return 1.0 + 0.1 * tf.random.stateless_normal(shape, seed)
    if name.endswith("/b"):
        return 0.1 * tf.random.stateless_normal(shape, seed)
    if name.endswith("wte"):
        return 0.3 * tf.random.stateless_normal(shape, seed)
    fan_in = shape[-2] if len(shape) > 1 else 1
    return tf.random.stateless_normal(shape, seed) / fan_in ** 0.5


def find_vocab_dir(environ):
    """The folder of GPT-2's encoder.json and vocab.bpe: GPT2_VOCAB_DIR when it is set, else
    ../shared/gpt2-vocab beside the repository. ValueError, in one line naming the fix, if either
    file is missing."""
    path = environ.get("GPT2_VOCAB_DIR") or SHARED_VOCAB_DIR
    missing = [name for name in ("encoder.json", "vocab.bpe") if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise ValueError(f"GPT-2 vocabulary not found: {path} has no {' or '.join(missing)}: "
                         "set GPT2_VOCAB_DIR to a folder with GPT-2's encoder.json and vocab.bpe")
    return path


def write_checkpoint(path, hparams, vocab_dir=None, seed=0):
    """Writes a model folder at `path` for the hparams dict; returns `path`."""
    os.makedirs(path, exist_ok=True)
    shapes = model.checkpoint_shapes(model.default_hparams().override_from_dict(hparams))
    with tf.Graph().as_default():
        variables = [tf.compat.v1.Variable(initial_value(name, shape, [seed, i]), name=name)
                     for i, (name, shape) in enumerate(shapes.items())]
        saver = tf.compat.v1.train.Saver(variables, save_relative_paths=True)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, os.path.join(path, "model.ckpt"))
    with open(os.path.join(path, "hparams.json"), "w") as f:
        json.dump(hparams, f, indent=2)
    if vocab_dir:
        for name in ("encoder.json", "vocab.bpe"):
            shutil.copy(os.path.join(vocab_dir, name), os.path.join(path, name))
    return path
