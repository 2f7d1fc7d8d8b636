"""Helpers the test modules share."""
import os

import numpy as np
import tensorflow as tf

import model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path, dtype=tf.float32):
    """(hparams, params) of the model folder at `path`, by the reference loader."""
    hparams = model.load_hparams(path)
    return hparams, model.load_params(model.find_checkpoint(path), hparams, dtype)


def random_tokens(n_vocab, batch, seq, seed=0):
    """[batch, seq] int32 tokens drawn uniformly from the vocabulary."""
    return np.random.RandomState(seed).randint(0, n_vocab, (batch, seq)).astype(np.int32)
