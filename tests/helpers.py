"""Helpers the test modules share."""
import glob
import os
import re

import numpy as np
import tensorflow as tf

import model
import reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_DIR = os.path.join(REPO, "tests", "gpt2-vocab")  # OpenAI's encoder.json and vocab.bpe (its README)


def load(path, dtype=tf.float32):
    """(hparams, params) of the model folder at `path`, by the reference loader."""
    hparams = model.load_hparams(path)
    return hparams, model.load_params(model.find_checkpoint(path), hparams, dtype)


def random_tokens(n_vocab, batch, seq, seed=0):
    """[batch, seq] int32 tokens drawn uniformly from the vocabulary."""
    return np.random.RandomState(seed).randint(0, n_vocab, (batch, seq)).astype(np.int32)


def reference_logits(path, tokens):
    """tokens [batch, seq] -> logits [batch, seq, n_vocab] (float64) of the model folder at `path`, by
    the NumPy reference (reference.py)."""
    rh, rw = reference.load(path)
    return np.stack([reference.logits(rh, rw, row) for row in tokens])


def find_vocab_dir(environ):
    """The folder of GPT-2's encoder.json and vocab.bpe the tests use: GPT2_VOCAB_DIR when it is
    set, else the repository's copy. ValueError, saying how to fix it, if the files are missing."""
    path = environ.get("GPT2_VOCAB_DIR") or VOCAB_DIR
    missing = [name for name in ("encoder.json", "vocab.bpe") if not os.path.isfile(os.path.join(path, name))]
    if missing:
        fix = ("point GPT2_VOCAB_DIR at a folder with GPT-2's encoder.json and vocab.bpe, or unset it"
               if environ.get("GPT2_VOCAB_DIR") else "restore them with `git checkout -- tests/gpt2-vocab`")
        raise ValueError(f"GPT-2 vocabulary not found: {path} has no {' or '.join(missing)}: {fix}")
    return path


def speed_tokens(stderr):
    """The tokens counted by the line that says how fast a sampling script ran (cli.Speed), which
    must be all of stderr: no TensorFlow start-up lines, nothing else."""
    found = re.fullmatch(r"([\d,]+) tokens generated in \d+\.\d\d s: \d+\.\d tokens/s"
                         r"(; \d+\.\d tokens/s without the first call of each batch size \(\d+\.\d\d s\), which compiles"
                         r"|, compiling included \(the first call of each batch size compiles\))\n", stderr)
    assert found, stderr
    return int(found.group(1).replace(",", ""))


def summaries(run_dir):
    """(tag, step, value) of each summary in a run folder's TensorBoard event files, in order;
    value is the event's summary value (its .tensor holds a scalar's number)."""
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                yield value.tag, event.step, value


class RecordingBar:
    """Stands in for tqdm and remembers what the bars were told."""

    bars = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.postfixes = kwargs, [], []
        RecordingBar.bars.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.updates.append(n)

    def set_postfix_str(self, text):
        self.postfixes.append(text)

    write = staticmethod(lambda *args, **kwargs: None)
