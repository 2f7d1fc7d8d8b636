"""Fixtures shared by the test layers."""
import os

import pytest

import helpers
from helpers import REPO


@pytest.fixture(scope="session")
def vocab_dir():
    """The folder holding GPT-2's real `encoder.json` and `vocab.bpe`.

    CI points GPT2_VOCAB_DIR at ../shared/gpt2-vocab; on a user's machine a downloaded model's
    folder has the same two files. Under CI a missing vocabulary is a failure, never a skip.
    """
    candidates = [os.environ.get("GPT2_VOCAB_DIR", ""), os.path.join(REPO, "models", "124M")]
    for path in candidates:
        if path and all(os.path.isfile(os.path.join(path, f)) for f in ("encoder.json", "vocab.bpe")):
            return path
    message = "GPT-2 vocabulary not found: set GPT2_VOCAB_DIR to a folder with encoder.json and vocab.bpe"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A models/ folder shared by the session's tests; see `tiny_model`."""
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_model(models_dir, vocab_dir):
    """Name of a tiny GPT-2 (real vocabulary, 2 layers of width 32, window 64) in `models_dir`."""
    import checkpoints
    checkpoints.write_checkpoint(os.path.join(models_dir, "tiny"), checkpoints.TINY, vocab_dir)
    return "tiny"


@pytest.fixture(scope="session")
def tiny(models_dir, tiny_model):
    """(hparams, float32 params) of `tiny_model`."""
    return helpers.load(os.path.join(models_dir, tiny_model))
