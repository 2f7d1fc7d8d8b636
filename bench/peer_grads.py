#!/usr/bin/env python3
"""Holds training's loss and gradients to the peer's (Hugging Face's PyTorch GPT-2) on the very
checkpoint: one JSON line with both losses and the worst relative gradient difference.

    python bench/peer_grads.py --peer ~/.cache/gpt2-peer-venv/bin/python --model_name 124M

The peer is `../shared/peer/hf_generate.py MODEL_DIR grads BATCH_JSON OUT.npz`, never run in CI.
A variable's difference is max |ours - peer| / max |peer| over its elements.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import model  # noqa: E402
import training  # noqa: E402
from bench_generate import ensure_model  # noqa: E402


def our_gradients(path, batch):
    """(loss, {checkpoint name: gradient in the checkpoint's shape}) of the mean loss of batch."""
    hparams = model.load_hparams(path)
    params = tf.nest.map_structure(tf.Variable, model.load_params(model.find_checkpoint(path), hparams))
    with tf.GradientTape() as tape:
        tokens = tf.constant(batch)
        loss = tf.reduce_mean(training.window_losses(params, hparams, tokens, tokens))
    flat = [tf.convert_to_tensor(g) for g in tape.gradient(loss, tf.nest.flatten(params))]
    grads = model.checkpoint_values(tf.nest.pack_sequence_as(params, flat))
    return float(loss), {name: value.numpy() for name, value in grads.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", metavar="PYTHON", required=True, help="the peer venv's python")
    parser.add_argument("--model_name", default="124M")
    parser.add_argument("--models_dir", default=os.path.join(ROOT, "bench", "models"))
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--sequence_length", type=int, default=64)
    args = parser.parse_args()
    path = ensure_model(args.models_dir, args.model_name)
    n_vocab = model.load_hparams(path).n_vocab
    batch = np.random.RandomState(0).randint(0, n_vocab, (args.batch_size, args.sequence_length)).astype(np.int32)
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "grads.npz")
        result = subprocess.run([args.peer, os.path.join(ROOT, "..", "shared", "peer", "hf_generate.py"), path, "grads",
                                 json.dumps(batch.tolist()), out], capture_output=True, text=True, check=True)
        peer_loss = json.loads(result.stdout.splitlines()[-1])["loss"]
        peer = dict(np.load(out))
    loss, ours = our_gradients(path, batch)
    assert set(ours) == set(peer), set(ours) ^ set(peer)
    differences = {name: float(np.abs(ours[name] - peer[name]).max() / np.abs(peer[name]).max()) for name in peer}
    worst = max(differences, key=differences.get)
    print(json.dumps({"model": args.model_name, "batch": args.batch_size, "seq": args.sequence_length,
                      "loss": loss, "peer_loss": peer_loss, "worst_variable": worst,
                      "worst_relative_difference": differences[worst]}))


if __name__ == "__main__":
    main()
